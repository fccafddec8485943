"""Handler fixture: prints `lines` lines (default 5000) to stdout and to stderr, then returns the count."""

import os
import sys

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    lines = int((job["input"] or {}).get("lines", 5000))
    for i in range(lines):
        print(f"stdout line {i} " + "x" * 60)
        print(f"stderr line {i} " + "y" * 60, file=sys.stderr)
    return {"lines": lines}


if __name__ == "__main__":
    sls.start({"handler": handler})
