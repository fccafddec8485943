"""Handler fixture: imports torch (CPU; a heavy import, about 1.5 s) and returns a small computation.
For the FlashBoot benchmark; torch is not a dependency of Ember (the benchmark skips it without)."""

import os

import torch

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    return {"sum": int(torch.arange(10).sum().item())}


if __name__ == "__main__":
    sls.start({"handler": handler})
