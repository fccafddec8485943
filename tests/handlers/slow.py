"""Handler fixture: a sync handler that sleeps `seconds` (input; default 1), uninterruptible."""

import os
import time

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    seconds = float((job["input"] or {}).get("seconds", 1))
    time.sleep(seconds)
    return {"slept_s": seconds}


if __name__ == "__main__":
    sls.start({"handler": handler})
