"""A gated model baked into an image by `ember init --model` + `ember build`, against the local hub
server: the files land in the image (and in the size report), the token in no layer, history or log."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakehub import FakeHub, HubRepo

EMBER = [sys.executable, "-m", "ember.cli.main"]
TOKEN = "hf_baked_" + uuid.uuid4().hex


@pytest.fixture
def tag(docker_client: Any) -> Iterator[str]:
    name = f"ember-baked-test:{uuid.uuid4().hex[:8]}"
    yield name
    subprocess.run(["docker", "rmi", "-f", name], capture_output=True, check=False)


def test_a_baked_gated_model_is_in_the_image_and_its_token_in_no_layer(
    tmp_path: Path, base_image: str, tag: str
) -> None:
    weights = os.urandom(200_000)
    repo = HubRepo(
        {"config.json": b'{"model_type": "tiny"}', "model.safetensors": weights}, gated=True, token=TOKEN
    )
    project = tmp_path / "baked"
    init = subprocess.run(
        [*EMBER, "init", str(project), "--model", "org/tiny", "--base-image", base_image],
        capture_output=True,
        text=True,
    )
    assert init.returncode == 0, init.stderr
    with FakeHub({"org/tiny": repo}) as hub:
        env = dict(os.environ, HF_TOKEN=TOKEN, HF_ENDPOINT=hub.url)
        build = subprocess.run(
            [*EMBER, "build", str(project), "--tag", tag],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-2000:]
        assert hub.gets("org/tiny", "model.safetensors") == 1  # the build downloaded it, once
    log = build.stdout + build.stderr
    assert TOKEN not in log
    assert "largest layers:" in log and "200.0 kB" in log  # the model's layer shows in the size report
    history = subprocess.run(["docker", "history", "--no-trunc", tag], capture_output=True, text=True).stdout
    assert TOKEN not in history
    listing = subprocess.run(
        ["docker", "run", "--rm", tag, "cat", "/models/org/tiny/config.json"], capture_output=True, text=True
    )
    assert listing.returncode == 0 and "tiny" in listing.stdout
    saved = subprocess.run(["docker", "save", tag], capture_output=True).stdout
    assert weights[:64] in saved and TOKEN.encode() not in saved
