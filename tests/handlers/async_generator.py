"""Handler fixture: an async generator yielding 0..n-1 (n from input, default 3), not aggregated."""

import asyncio
import os

if os.environ.get("EMBER_TEST_SDK") == "runpod":
    import runpod.serverless as sls
else:
    import ember.serverless as sls


async def handler(job):
    for i in range(int((job["input"] or {}).get("n", 3))):
        await asyncio.sleep(0)
        yield i


if __name__ == "__main__":
    sls.start({"handler": handler})
