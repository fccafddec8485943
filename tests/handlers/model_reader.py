"""Handler fixture: loads the endpoint's cached model the way an unchanged handler would, at import.

It resolves the snapshot with `huggingface_hub.snapshot_download(repo, local_files_only=True)` (the hub
cache and offline mode come from the worker's environment) and checks it against EMBER_MODEL_PATH;
appends "loaded <worker> <model_type>" to EMBER_TEST_RECORD (if set) once loaded; each job returns the
config, the file list and the environment the worker saw."""

import json
import os
from pathlib import Path

from huggingface_hub import snapshot_download

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls

REPO = os.environ["EMBER_MODEL_ID"]
HUB_PATH = snapshot_download(REPO, local_files_only=True)
MODEL_PATH = os.environ.get("EMBER_MODEL_PATH", HUB_PATH)
CONFIG = json.loads((Path(HUB_PATH) / "config.json").read_text())
FILES = sorted(str(p.relative_to(HUB_PATH)) for p in Path(HUB_PATH).rglob("*") if p.is_file())

if os.environ.get("EMBER_TEST_RECORD"):
    fd = os.open(os.environ["EMBER_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"loaded {os.environ.get('RUNPOD_POD_ID')} {CONFIG.get('model_type')}\n".encode())
    finally:
        os.close(fd)


def handler(job):
    return {
        "config": CONFIG,
        "files": FILES,
        "same_path": os.path.realpath(HUB_PATH) == os.path.realpath(MODEL_PATH),
        "offline": os.environ.get("HF_HUB_OFFLINE"),
        "worker": os.environ.get("RUNPOD_POD_ID"),
        "token_env": sorted(k for k in os.environ if "TOKEN" in k),
    }


if __name__ == "__main__":
    sls.start({"handler": handler})
