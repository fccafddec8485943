"""Handler fixture: a slow start made deterministic. At start it prints a line and waits (at most two
minutes) for the file EMBER_TEST_GATE names; it imports the module EMBER_TEST_IMPORT names (a package
from the endpoint's requirements.txt) and returns that module's VALUE, printing each job's message."""

import importlib
import os
import time

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls

VALUE = (
    importlib.import_module(os.environ["EMBER_TEST_IMPORT"]).VALUE
    if "EMBER_TEST_IMPORT" in os.environ
    else None
)


def handler(job):
    print(f"handling {job['input'].get('message')}", flush=True)
    return {"value": VALUE}


if __name__ == "__main__":
    gate = os.environ.get("EMBER_TEST_GATE")
    print("waiting for the gate", flush=True)
    deadline = time.monotonic() + 120
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    print("the gate is open", flush=True)
    sls.start({"handler": handler})
