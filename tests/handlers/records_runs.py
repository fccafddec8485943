"""Handler fixture: async, up to 8 jobs at once; appends "S <job id> <run>" on start and "E <job id> <run>"
just before returning to the file named by env EMBER_TEST_RECORD, and returns {"run": <run>}, so a test
can tell which run's result the server accepted and whether a job ran again after that."""

import asyncio
import os
import uuid

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def _record(kind, job_id, run):
    fd = os.open(os.environ["EMBER_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{kind} {job_id} {run}\n".encode())
    finally:
        os.close(fd)


async def handler(job):
    run = uuid.uuid4().hex[:12]
    _record("S", job["id"], run)
    await asyncio.sleep(float((job["input"] or {}).get("sleep_s", 0.01)))
    _record("E", job["id"], run)
    return {"run": run}


if __name__ == "__main__":
    sls.start({"handler": handler, "concurrency_modifier": lambda current: 8})
