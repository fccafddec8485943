"""Handler fixture: says which worker runs it (its id, a digest of its key, its GPUs) and which
container it is in (a mark its first run leaves in the container's own filesystem)."""

import hashlib
import os
import uuid

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls

MARK = "/tmp/ember-test-container-mark"


def container_mark():
    if not os.path.exists(MARK):
        with open(MARK, "w") as f:
            f.write(uuid.uuid4().hex)
    with open(MARK) as f:
        return f.read()


def handler(job):
    return {
        "worker": os.environ.get("RUNPOD_POD_ID"),
        "key_digest": hashlib.sha256(os.environ.get("RUNPOD_AI_API_KEY", "").encode()).hexdigest()[:16],
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "container": container_mark(),
        "input": job["input"],
    }


if __name__ == "__main__":
    sls.start({"handler": handler})
