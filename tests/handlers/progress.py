"""Handler fixture: reports progress {"step": 1}, waits `pause_s` (default 0), then returns {"done": true}."""

import os
import time

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    sls.progress_update(job, {"step": 1})
    time.sleep(float((job["input"] or {}).get("pause_s", 0)))
    return {"done": True}


if __name__ == "__main__":
    sls.start({"handler": handler})
