"""Handler fixture: config `refresh_worker`: the result carries stopPod and the worker exits after one job."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"ok": True}


if __name__ == "__main__":
    sls.start({"handler": handler, "refresh_worker": True})
