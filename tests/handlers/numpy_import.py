"""Handler fixture: imports numpy at start (a realistic import cost) and returns a small computation."""

import os

import numpy as np

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"sum": int(np.arange(10).sum())}


if __name__ == "__main__":
    sls.start({"handler": handler})
