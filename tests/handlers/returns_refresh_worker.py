"""Handler fixture: every result carries `refresh_worker` (RunPod's documented way to ask for a fresh
worker after a job), so the worker sends stopPod and keeps polling; the platform must replace it."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"pid": os.getpid(), "refresh_worker": True}


if __name__ == "__main__":
    sls.start({"handler": handler})
