"""Handler fixture: raises ValueError("boom") (reported as a JSON-encoded error string)."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    raise ValueError("boom")


if __name__ == "__main__":
    sls.start({"handler": handler})
