"""Handler fixture: prints one line naming the job's input `marker` (flushed, for log tails), sleeps
`seconds` (input; default 0), and returns the marker."""

import os
import time

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    job_input = job["input"] or {}
    marker = job_input.get("marker", "")
    print(f"handled {marker}", flush=True)
    time.sleep(float(job_input.get("seconds", 0)))
    return {"marker": marker}


if __name__ == "__main__":
    sls.start({"handler": handler})
