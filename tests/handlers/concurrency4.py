"""Handler fixture: async, sleeps `sleep_s` (default 1) and runs up to 4 jobs at once."""

import asyncio
import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


async def handler(job):
    sleep_s = float((job["input"] or {}).get("sleep_s", 1))
    await asyncio.sleep(sleep_s)
    return {"slept_s": sleep_s}


if __name__ == "__main__":
    sls.start({"handler": handler, "concurrency_modifier": lambda current: 4})
