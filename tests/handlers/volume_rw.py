"""Handler fixture: reads and writes files on the network volume (RUNPOD_VOLUME_PATH for local
processes, /runpod-volume in containers). Input: {"write": name, "text": str} | {"read": name} |
{"fill_mb": n} (writes 1 MiB chunks until n MiB or an OSError, and reports the errno)."""

import errno
import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls

ROOT = os.environ.get("RUNPOD_VOLUME_PATH", "/runpod-volume")


def handler(job):
    inp = job["input"] or {}
    out = {"root": ROOT, "worker": os.environ.get("RUNPOD_POD_ID")}
    if "write" in inp:
        with open(os.path.join(ROOT, inp["write"]), "w") as f:
            f.write(inp["text"])
        out["written"] = inp["write"]
    if "read" in inp:
        path = os.path.join(ROOT, inp["read"])
        out["text"] = None
        if os.path.exists(path):
            with open(path) as f:
                out["text"] = f.read()
    if "fill_mb" in inp:
        chunk = b"\xa5" * (1024 * 1024)
        written, code = 0, None
        path = os.path.join(ROOT, "fill.bin")
        try:
            with open(path, "wb") as f:
                while written < inp["fill_mb"] * len(chunk):
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
                    written += len(chunk)
        except OSError as exc:
            code = exc.errno
        finally:
            if os.path.exists(path):
                os.unlink(path)
        out.update(filled_bytes=written, errno=code, enospc=code == errno.ENOSPC)
    return out


if __name__ == "__main__":
    sls.start({"handler": handler})
