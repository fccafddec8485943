"""init → build → size report → push → pull, against the real Docker engine and the loopback registry."""

# ruff: noqa: F401, F811

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import typer
from typer.testing import CliRunner

from ember.build.image import analyse, build_image, human_bytes, push_image
from ember.build.registry import CredentialStore, registry_host, verify_login
from ember.build.scaffold import init_project, render_dockerfile
from ember.cli import build_cmds
from ember.core.errors import BuildError, InvalidInput

# The fixtures are imported by name until tests/conftest.py lists tests.support.docker_env in pytest_plugins.
from tests.support.docker_env import AuthRegistry, auth_registry, base_image, docker_client, registry


@pytest.fixture
def tags(docker_client: Any) -> Iterator[list[str]]:
    """Image tags a test creates; removed afterwards."""
    created: list[str] = []
    yield created
    for tag in created:
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass


def unique(name: str) -> str:
    return f"ember-test/{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.docker
def test_init_build_report_push_and_pull_back(
    tmp_path: Path, base_image: str, registry: str, docker_client: Any, tags: list[str]
) -> None:
    project = tmp_path / "worker"
    init_project(project, base_image=base_image)
    ref = f"{registry}/{unique('hello')}:v1"
    tags.append(ref)
    lines: list[str] = []
    report = build_image(project, ref, on_log=lines.append)
    assert any("COPY requirements.txt" in line for line in lines), "the build output was not streamed"
    base_size = docker_client.images.get(base_image).attrs["Size"]
    assert report.size_bytes >= base_size and report.size_bytes - base_size < 5_000_000
    assert report.largest_layers[0].size_bytes >= report.largest_layers[-1].size_bytes
    assert not report.over_budget and report.warnings == [] and report.advice == []
    assert report.lines()[0].startswith(f"image {ref}")

    # The image runs its handler on test_input.json with no network and nothing but the vendored SDK.
    output = docker_client.containers.run(ref, network_mode="none", remove=True)
    assert json.loads(output.decode().strip().splitlines()[-1]) == {"output": {"greeting": "Hello, Ember!"}}

    pushed: list[str] = []
    digest = push_image(ref, on_log=pushed.append)
    assert digest.startswith("sha256:") and pushed
    docker_client.images.remove(ref, force=True)
    pulled = docker_client.images.pull(ref)
    assert pulled.id == report.image_id


@pytest.mark.docker
def test_size_report_warns_above_the_budget_and_names_a_large_copy(
    tmp_path: Path, base_image: str, tags: list[str]
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nCOPY . /app\n")
    with open(tmp_path / "data.bin", "wb") as handle:
        handle.write(os.urandom(60_000_000))
    tag = unique("big") + ":v1"
    tags.append(tag)
    report = build_image(tmp_path, tag, on_log=lambda _line: None, size_budget_bytes=100_000_000)
    assert report.over_budget
    assert "above the 100.0 MB budget" in report.warnings[0]
    assert any("COPY from the build context adds 60.0 MB" in a for a in report.advice)
    assert any(
        layer.size_bytes >= 60_000_000 and "COPY" in layer.created_by for layer in report.largest_layers
    )


@pytest.mark.docker
def test_a_failing_build_raises_build_error_with_the_log_tail(tmp_path: Path, base_image: str) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nRUN echo about-to-fail && exit 3\n")
    with pytest.raises(BuildError) as caught:
        build_image(tmp_path, unique("broken") + ":v1", on_log=lambda _line: None)
    assert "about-to-fail" in caught.value.log_tail
    assert "returned a non-zero code: 3" in caught.value.message


@pytest.mark.docker
def test_build_output_reaches_the_log_as_plain_text(tmp_path: Path, base_image: str, tags: list[str]) -> None:
    # The step writes colour codes, a carriage-return progress line and stderr (which the engine's
    # classic builder wraps in red); the log gets what a terminal would show, without escapes.
    nonce = uuid.uuid4().hex[:8]
    step = (
        f"RUN printf '\\033[1;32mgreen-{nonce}\\033[0m\\n' && printf '10%%\\r100%%-{nonce}\\n' "
        f"&& echo stderr-{nonce} >&2"
    )
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\n{step}\n")
    tag = unique("ansi") + ":v1"
    tags.append(tag)
    lines: list[str] = []
    build_image(tmp_path, tag, on_log=lines.append)
    assert f"green-{nonce}" in lines and f"100%-{nonce}" in lines and f"stderr-{nonce}" in lines, lines
    assert not [line for line in lines if "\x1b" in line or "\r" in line]


@pytest.mark.docker
def test_buildkit_secrets_reach_the_build_but_not_the_image(
    tmp_path: Path, base_image: str, tags: list[str], docker_client: Any
) -> None:
    nonce = uuid.uuid4().hex  # a new step every run: BuildKit's cache would skip the RUN and its output
    step = f"RUN --mount=type=secret,id=token echo {nonce} && tr a-z A-Z < /run/secrets/token"
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\n{step}\n")
    tag = unique("secret") + ":v1"
    tags.append(tag)
    lines: list[str] = []
    build_image(tmp_path, tag, on_log=lines.append, secrets={"token": "s3cret"})
    assert any("S3CRET" in line for line in lines), "the secret did not reach the RUN step"
    assert "s3cret" not in json.dumps(docker_client.images.get(tag).history())


@pytest.mark.docker
def test_push_to_an_unreachable_registry_is_a_build_error(
    base_image: str, docker_client: Any, tags: list[str]
) -> None:
    ref = f"127.0.0.1:9/{unique('nowhere')}:v1"
    docker_client.images.get(base_image).tag(ref)
    tags.append(ref)
    with pytest.raises(BuildError, match="pushing 127.0.0.1:9/"):
        push_image(ref, on_log=lambda _line: None)


def test_missing_dockerfile_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="no Dockerfile"):
        build_image(tmp_path, "x:y", client_factory=lambda: pytest.fail("no engine should be needed"))


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    written = init_project(tmp_path)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"handler.py", "requirements.txt", "test_input.json", ".dockerignore", "Dockerfile"} <= names
    assert "vendor/ember/serverless/__init__.py" in names
    (tmp_path / "handler.py").write_text("mine")
    with pytest.raises(InvalidInput, match="handler.py") as caught:
        init_project(tmp_path)
    assert {p.field for p in caught.value.problems} >= {"handler.py", "Dockerfile"}
    assert (tmp_path / "handler.py").read_text() == "mine"
    init_project(tmp_path, force=True)
    assert "serverless.start" in (tmp_path / "handler.py").read_text()


def test_dockerfile_installs_requirements_before_copying_code_without_caches() -> None:
    text = render_dockerfile("python:3.11-slim")
    assert text.index("COPY requirements.txt") < text.index("pip install") < text.index("COPY . .")
    assert "--no-cache-dir" in text and "FROM python:3.11-slim" in text


def test_model_option_writes_a_download_step_with_a_build_secret() -> None:
    text = render_dockerfile("python:3.11-slim", model="acme/tiny-model")
    assert "--mount=type=secret,id=hf_token" in text
    assert "snapshot_download('acme/tiny-model'" in text and "EMBER_MODEL_DIR=/models/acme/tiny-model" in text
    assert text.index("snapshot_download") < text.index("COPY . .")
    with pytest.raises(InvalidInput) as caught:
        render_dockerfile("python:3.11-slim", model="not a model; rm -rf /")
    assert caught.value.problems[0].field == "model"


def test_analyse_gives_concrete_advice_from_the_history() -> None:
    history = [
        {"CreatedBy": "/bin/sh -c apt-get update && apt-get install -y ffmpeg", "Size": 300_000_000},
        {"CreatedBy": "/bin/sh -c pip install torch", "Size": 2_500_000_000},
        {"CreatedBy": "/bin/sh -c python -c \"snapshot_download('a/b')\"", "Size": 4_000_000_000},
    ]
    warnings, advice = analyse(history, ["PATH=/usr/bin"], 7_000_000_000, 2_000_000_000)
    assert warnings and "7.0 GB" in warnings[0]
    text = "\n".join(advice)
    assert "--no-cache-dir" in text and "/var/lib/apt/lists" in text and "--no-install-recommends" in text
    assert "cached model" in text
    assert analyse(history[1:2], ["PIP_NO_CACHE_DIR=1"], 1, 2_000_000_000) == ([], [])
    assert human_bytes(999) == "999 B" and human_bytes(1_500_000) == "1.5 MB"


def test_credentials_are_stored_0600_and_never_shown(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "home")
    credential = store.save("https://ghcr.io/", "bob", "hunter2")
    assert "hunter2" not in repr(credential) and "hunter2" not in str(credential)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "hunter2" not in store.path.read_text()  # encrypted at rest
    assert stat.S_IMODE((store.path.parent / "secret.key").stat().st_mode) == 0o600
    assert CredentialStore(tmp_path / "home").get("ghcr.io").password == "hunter2"  # a new instance reads it
    assert store.auth_for("ghcr.io/bob/worker:v1") == {
        "username": "bob",
        "password": "hunter2",
        "serveraddress": "ghcr.io",
    }
    assert store.auth_for("bob/worker:v1") is None  # docker.io: not logged in
    store.save("index.docker.io", "bob", "pw2")
    assert store.auth_for("bob/worker") is not None
    assert registry_host("localhost:5000/x") == "localhost:5000" and registry_host("ubuntu") == "docker.io"
    assert store.remove("ghcr.io") and not store.remove("ghcr.io")
    assert store.hosts() == ["docker.io"]
    with pytest.raises(InvalidInput):
        store.save("ghcr.io", "bob", "")


def cli_app() -> typer.Typer:
    """The build commands on an app of their own, as the main CLI registers them."""
    app = typer.Typer()
    app.command("init")(build_cmds.init)
    app.command("build")(build_cmds.build)
    app.command("push")(build_cmds.push)
    app.command("login")(build_cmds.registry_login)
    return app


def test_cli_init_writes_the_project_and_refuses_a_second_time(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(cli_app(), ["init", str(tmp_path / "w")])
    assert first.exit_code == 0, first.output
    assert "handler.py" in first.output and (tmp_path / "w" / "Dockerfile").exists()
    second = runner.invoke(cli_app(), ["init", str(tmp_path / "w")])
    assert second.exit_code == 1
    assert "already has" in second.output and "--force" in second.output


@pytest.mark.docker
def test_cli_login_build_and_push_through_the_local_registry(
    tmp_path: Path, base_image: str, registry: str, tags: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMBER_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    app = cli_app()
    login = runner.invoke(app, ["login", registry, "-u", "ci", "--password-stdin"], input="pa55word\n")
    assert login.exit_code == 0, login.output
    assert "pa55word" not in login.output
    saved = tmp_path / "home" / "registries.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert CredentialStore(tmp_path / "home").auth_for(f"{registry}/x") is not None

    assert runner.invoke(app, ["init", str(tmp_path / "w"), "--base-image", base_image]).exit_code == 0
    ref = f"{registry}/{unique('cli')}:v1"
    tags.append(ref)
    built = runner.invoke(app, ["build", str(tmp_path / "w"), "-t", ref])
    assert built.exit_code == 0, built.output
    assert f"image {ref}" in built.output and "largest layers:" in built.output
    pushed = runner.invoke(app, ["push", ref])
    assert pushed.exit_code == 0, pushed.output
    assert f"pushed {ref}@sha256:" in pushed.output

    (tmp_path / "w" / "Dockerfile").write_text(f"FROM {base_image}\nRUN exit 5\n")
    failed = runner.invoke(app, ["build", str(tmp_path / "w"), "-t", ref])
    assert failed.exit_code == 1 and "error: building" in failed.output


@pytest.mark.docker
def test_push_and_login_against_a_password_protected_registry(
    base_image: str, auth_registry: AuthRegistry, docker_client: Any, tags: list[str]
) -> None:
    ref = f"{auth_registry.host}/{unique('private')}:v1"
    docker_client.images.get(base_image).tag(ref)
    tags.append(ref)
    with pytest.raises(BuildError, match="pushing"):
        push_image(ref, on_log=lambda _line: None)
    assert push_image(ref, auth=auth_registry.auth_config(), on_log=lambda _line: None).startswith("sha256:")
    verify_login(auth_registry.host, auth_registry.username, auth_registry.password)
    with pytest.raises(BuildError, match="refused the login"):
        verify_login(auth_registry.host, auth_registry.username, "wrong-password")
