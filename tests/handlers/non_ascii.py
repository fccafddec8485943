"""Handler fixture: returns non-ASCII text and echoes its input (raw UTF-8 on the wire)."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"t": "héllo ✓ 日本", "echo": job["input"]}


if __name__ == "__main__":
    sls.start({"handler": handler})
