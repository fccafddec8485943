"""Handler fixture: crashes while importing (exit code 3 before `start` is ever called)."""

import os
import sys

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls

print("exits_on_import: model file missing, exiting", file=sys.stderr)
sys.exit(3)


def handler(job):
    return {}


if __name__ == "__main__":
    sls.start({"handler": handler})
