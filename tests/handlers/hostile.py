"""Handler fixture: a hostile tenant. Input {"read": [paths], "write": [paths], "volume": text}: tries
to read each path (a directory is listed), to write into each of "write", lists the processes it can
see with their environments, and writes "volume" to /runpod-volume/x and reads it back. Returns what it
could read and which writes succeeded (errors as strings), so a test can check that nothing leaked."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def _read(path):
    try:
        if os.path.isdir(path):
            return {"listed": sorted(os.listdir(path))}
        with open(path, "rb") as f:
            return {"read": f.read(4096).decode("utf-8", "replace")}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc.strerror}"}


def _write(path):
    try:
        with open(path, "w") as f:
            f.write("owned")
        return {"wrote": True}
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc.strerror}"}


def handler(job):
    inp = job["input"] or {}
    out = {
        "uid": os.getuid(),
        "reads": {p: _read(p) for p in inp.get("read", [])},
        "writes": {p: _write(p) for p in inp.get("write", [])},
        "processes": {p: _read(f"/proc/{p}/environ") for p in os.listdir("/proc") if p.isdigit()},
        "volume_path": os.environ.get("RUNPOD_VOLUME_PATH"),
    }
    if "volume" in inp:
        with open("/runpod-volume/x", "w") as f:
            f.write(inp["volume"])
        with open("/runpod-volume/x") as f:
            out["volume"] = f.read()
    return out


if __name__ == "__main__":
    sls.start({"handler": handler})
