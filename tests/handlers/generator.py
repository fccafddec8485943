"""Handler fixture: a sync generator yielding {"i": 0..n-1} (n from input, default 3), aggregated."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    for i in range(int((job["input"] or {}).get("n", 3))):
        yield {"i": i}


if __name__ == "__main__":
    sls.start({"handler": handler, "return_aggregate_stream": True})
