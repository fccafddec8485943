"""Handler fixture for benchmarks: returns {} at once, up to 8 jobs at a time (concurrency_modifier 8)."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {}


if __name__ == "__main__":
    sls.start({"handler": handler, "concurrency_modifier": lambda current: 8})
