"""Handler fixture: returns a dict with an `error` key plus a partial output (job FAILED, output kept)."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"error": "bad input", "partial": 1}


if __name__ == "__main__":
    sls.start({"handler": handler})
