"""`ember build` and `ember push` as a person and as a script see them, with the real Docker engine and
the loopback registry: on a terminal, the build's steps (each one ticked off, cached or not) and layers
with the running step's output, and a bar per layer while pushing; through a pipe, every build line and
one line per pushed layer, no escape sequences. A failed build leaves its last lines on the screen."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.support.terminal import run_on_terminal

EMBER = [sys.executable, "-m", "ember.cli.main"]
pytestmark = pytest.mark.docker


@pytest.fixture
def refs(docker_client: Any) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for ref in created:
        try:
            docker_client.images.remove(ref, force=True)
        except docker.errors.ImageNotFound:
            pass


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "HF_TOKEN")}
    out["EMBER_HOME"] = str(tmp_path / "home")
    return out


def project(root: Path, base_image: str, nonce: str, *lines: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "payload.txt").write_text(nonce * 1000)
    (root / "Dockerfile").write_text("\n".join((f"FROM {base_image}", *lines)) + "\n")
    return root


def test_build_and_push_on_a_terminal_show_steps_layers_and_each_layer(
    tmp_path: Path, base_image: str, registry: str, refs: list[str], env: dict[str, str]
) -> None:
    nonce = uuid.uuid4().hex[:12]  # new steps each run: the cache would skip them (and their output)
    directory = project(
        tmp_path / "w",
        base_image,
        nonce,
        "WORKDIR /app",
        f"RUN echo output-of-{nonce} && head -c 3000000 /dev/urandom > /app/blob",
        "COPY payload.txt /app/",
    )
    ref = f"{registry}/ember-test/progress-{nonce}:v1"
    refs.append(ref)
    built = run_on_terminal([*EMBER, "build", str(directory), "-t", ref], env)
    assert built.returncode == 0, built.text + built.stderr
    assert "\x1b[" in built.raw, "a terminal gets live output"
    text = built.text
    assert "✓ step 1/4 FROM" in text and "✓ step 3/4 RUN echo output-of" in text, text
    assert "✓ step 4/4 COPY payload.txt" in text
    assert f"output-of-{nonce}" in text, "the running step's output is shown"
    assert "4/4 steps, " in text and "layers built" in text and "from the cache" in text, text
    assert f"image {ref}" in text and "largest layers:" in text

    again = run_on_terminal([*EMBER, "build", str(directory), "-t", ref], env)
    assert again.returncode == 0 and "(cached)" in again.text, again.text

    pushed = run_on_terminal([*EMBER, "push", ref], env)
    assert pushed.returncode == 0, pushed.text + pushed.stderr
    assert " layers pushed, " in pushed.text and "already in the registry" in pushed.text, pushed.text
    assert f"pushed {ref}@sha256:" in pushed.text


def test_build_and_push_through_a_pipe_print_plain_lines(
    tmp_path: Path, base_image: str, registry: str, refs: list[str], env: dict[str, str]
) -> None:
    nonce = uuid.uuid4().hex[:12]
    directory = project(tmp_path / "w", base_image, nonce, f"RUN echo piped-{nonce}", "COPY payload.txt /")
    ref = f"{registry}/ember-test/piped-{nonce}:v1"
    refs.append(ref)
    built = subprocess.run(
        [*EMBER, "build", str(directory), "-t", ref], env=env, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert "\x1b" not in built.stdout
    assert "Step 2/3 : RUN echo piped-" in built.stdout and f"\npiped-{nonce}\n" in built.stdout
    pushed = subprocess.run([*EMBER, "push", ref], env=env, capture_output=True, text=True)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert "\x1b" not in pushed.stdout
    layer_lines = [
        ln for ln in pushed.stdout.splitlines() if ln.endswith((": pushed", ": layer already exists"))
    ]
    assert layer_lines and any(ln.endswith(": pushed") for ln in layer_lines), pushed.stdout
    assert f"pushed {ref}@sha256:" in pushed.stdout


def test_a_failed_build_on_a_terminal_leaves_its_last_lines(
    tmp_path: Path, base_image: str, refs: list[str], env: dict[str, str]
) -> None:
    nonce = uuid.uuid4().hex[:12]
    directory = project(tmp_path / "w", base_image, nonce, f"RUN echo why-it-broke-{nonce} && exit 3")
    ref = f"ember-test/broken-{nonce}:v1"
    refs.append(ref)
    failed = run_on_terminal([*EMBER, "build", str(directory), "-t", ref], env)
    assert failed.returncode == 1
    assert f"why-it-broke-{nonce}" in failed.text, failed.text
    assert "building" in failed.stderr and "failed" in failed.stderr, failed.stderr


def test_a_buildkit_build_on_a_terminal_shows_its_steps(
    tmp_path: Path, base_image: str, refs: list[str], env: dict[str, str]
) -> None:
    nonce = uuid.uuid4().hex[:12]
    step = f"RUN --mount=type=secret,id=hf_token echo kit-{nonce}"
    directory = project(tmp_path / "w", base_image, nonce, "WORKDIR /app", step)
    ref = f"ember-test/kit-{nonce}:v1"
    refs.append(ref)
    built = run_on_terminal([*EMBER, "build", str(directory), "-t", ref], {**env, "HF_TOKEN": "t0ken"})
    assert built.returncode == 0, built.text + built.stderr
    assert "✓ step 2/3 WORKDIR /app" in built.text and "✓ step 3/3 RUN --mount" in built.text, built.text
    assert "3/3 steps, " in built.text
