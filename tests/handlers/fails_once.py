"""Handler fixture: fails a job's first attempt and succeeds on its retry (a marker file per job id
in the directory named by input "dir" remembers the first attempt)."""

import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


def handler(job):
    marker = os.path.join(job["input"]["dir"], job["id"])
    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write("attempt 1\n")
        raise RuntimeError("first attempt fails")
    return {"attempt": 2}


if __name__ == "__main__":
    sls.start({"handler": handler})
