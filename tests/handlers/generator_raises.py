"""Handler fixture: a generator that yields {"i": 0} and {"i": 1}, then raises RuntimeError."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    yield {"i": 0}
    yield {"i": 1}
    raise RuntimeError("gen boom")


if __name__ == "__main__":
    sls.start({"handler": handler, "return_aggregate_stream": True})
