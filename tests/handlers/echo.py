"""Handler fixture: returns the input and the sorted keys of the job dict it was given."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"echo": job["input"], "keys": sorted(job)}


if __name__ == "__main__":
    sls.start({"handler": handler})
