"""Handler fixture: returns {} (job-done body `{}`: COMPLETED without output)."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {}


if __name__ == "__main__":
    sls.start({"handler": handler})
