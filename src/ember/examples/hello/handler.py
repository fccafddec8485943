"""Ember's example endpoint: greets, echoes its input, and shows progress updates and streaming.

Run it locally: python handler.py --test_input '{"input": {"name": "Ada"}}'
"""

from typing import Any

import ember.serverless as serverless


def handler(job: dict[str, Any]) -> dict[str, Any]:
    data = job["input"] or {}
    name = data.get("name", "world") if isinstance(data, dict) else "world"
    return {"greeting": f"Hello, {name}!", "input": data}


if __name__ == "__main__":
    serverless.start({"handler": handler})
