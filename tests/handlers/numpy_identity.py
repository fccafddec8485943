"""Handler fixture: imports numpy (a realistic import cost) and returns who runs it: its worker id, a
digest of its worker key, its GPU devices, its pid and parent pid, the release it was deployed as
(env RELEASE), a computation, and with {"tmp": true} the marker files in its temp dir after writing
its own there. For the FlashBoot tests: a forked worker is its own worker, with its own key and GPU."""

import hashlib
import os
import tempfile
import time

import numpy as np

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    inp = job["input"] or {}
    worker = os.environ.get("RUNPOD_POD_ID", "")
    out = {
        "sum": int(np.arange(10).sum()),
        "worker": worker,
        "key_sha": hashlib.sha256(os.environ.get("RUNPOD_AI_API_KEY", "").encode()).hexdigest(),
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "release": os.environ.get("RELEASE"),
    }
    if inp.get("tmp"):
        tmp = tempfile.gettempdir()
        with open(os.path.join(tmp, f"ember-mark-{worker}"), "w") as f:
            f.write(worker)
        out["tmp"] = sorted(n for n in os.listdir(tmp) if n.startswith("ember-mark-"))
    if inp.get("seconds"):
        time.sleep(float(inp["seconds"]))
    return out


if __name__ == "__main__":
    sls.start({"handler": handler})
