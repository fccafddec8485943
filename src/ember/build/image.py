"""Build and push worker images with visible progress, then say how big the image is and why.

Docker's exceptions and build errors become `BuildError` (with the log tail) here. Builds use the engine's
API; a Dockerfile with BuildKit secret mounts is built with the `docker` CLI and BuildKit instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.utils import parse_repository_tag

from ember.build.docker_api import DockerClient, HistoryEntry
from ember.core.errors import BuildError

LogFn = Callable[[str], None]
# (layer id, Docker's status for it, bytes sent so far, layer size): every event of a push about a layer.
PushProgressFn = Callable[[str, str, int | None, int | None], None]
DEFAULT_SIZE_BUDGET_BYTES = 2_000_000_000
TAIL_LINES = 40
_LARGE_COPY_BYTES = 50_000_000
_LARGE_LAYER_BYTES = 1_000_000_000
_BUILD_TIMEOUT_S = 3600
_SECRET_MOUNT = re.compile(r"--mount=type=secret\b")
# ANSI escape sequences: CSI (colours, cursor moves: ESC [ … final byte), OSC (ESC ] … BEL or ESC \\),
# charset and other nF ones (ESC, intermediate bytes, a final byte), and the two-byte ones.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]+[0-~]|[@-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Layer:
    size_bytes: int
    created_by: str


@dataclass(frozen=True)
class BuildReport:
    """What a build produced: the image, its size, its largest layers, and what to do about its size."""

    tag: str
    image_id: str
    size_bytes: int
    largest_layers: list[Layer]
    size_budget_bytes: int
    warnings: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    @property
    def over_budget(self) -> bool:
        return self.size_bytes > self.size_budget_bytes

    def lines(self) -> list[str]:
        """The report as printable lines."""
        out = [f"image {self.tag} ({self.image_id[:19]}): {human_bytes(self.size_bytes)}", "largest layers:"]
        out += [
            f"  {human_bytes(layer.size_bytes):>9}  {_short(layer.created_by)}"
            for layer in self.largest_layers
        ]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"advice: {a}" for a in self.advice]
        return out


def plain_log_line(line: str) -> str:
    """A build log line as plain text: ANSI escape sequences (the classic builder colours a step's
    stderr red; pip and apt colour and redraw their progress) removed, and of a line redrawn with
    carriage returns only what a terminal would end up showing, its last part."""
    line = _ANSI.sub("", line).rstrip("\r\n")
    if "\r" in line:
        line = line.rsplit("\r", 1)[-1]
    return _CONTROL.sub("", line)


def human_bytes(size_bytes: int) -> str:
    value = float(size_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _short(created_by: str, width: int = 90) -> str:
    text = re.sub(r"^/bin/sh -c (#\(nop\)\s*)?", "", created_by).strip() or "(base image)"
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= width else text[: width - 1] + "…"


def analyse(
    history: Iterable[HistoryEntry], env: Iterable[str], size_bytes: int, budget_bytes: int
) -> tuple[list[str], list[str]]:
    """Warnings and advice for an image, from its history (`docker history`) and its environment."""
    env_names = {item.split("=", 1)[0] for item in env}
    warnings, advice = [], []
    if size_bytes > budget_bytes:
        warnings.append(
            f"the image is {human_bytes(size_bytes)}, above the {human_bytes(budget_bytes)} budget: "
            "workers on a new host pull all of it before their first job"
        )
    for entry in history:
        command, size = entry.get("CreatedBy") or "", int(entry.get("Size") or 0)
        pip_cache = "--no-cache-dir" in command or "PIP_NO_CACHE_DIR" in env_names
        if re.search(r"\bpip3? install\b", command) and not pip_cache:
            advice.append(
                f"pip keeps its download cache in a layer: add --no-cache-dir ({_short(command, 60)})"
            )
        if re.search(r"\bapt(-get)? install\b", command):
            if "/var/lib/apt/lists" not in command:
                advice.append(
                    "apt's package lists stay in the layer: end the same RUN with "
                    f"`rm -rf /var/lib/apt/lists/*` ({_short(command, 60)})"
                )
            if "--no-install-recommends" not in command:
                advice.append(
                    "apt installs recommended packages too: add --no-install-recommends "
                    f"({_short(command, 60)})"
                )
        if re.search(r"\b(COPY|ADD) (dir:|\. |\./)", command) and size > _LARGE_COPY_BYTES:
            advice.append(
                f"a COPY from the build context adds {human_bytes(size)}: keep data, model files, .git and "
                "virtualenvs out of it with .dockerignore"
            )
        if size > _LARGE_LAYER_BYTES and re.search(
            r"snapshot_download|huggingface|\.safetensors|\.bin\b", command
        ):
            advice.append(
                f"a baked model adds {human_bytes(size)}: a cached model (endpoint `model`) keeps the image "
                "small and starts workers faster"
            )
    return warnings, list(dict.fromkeys(advice))


def _client(client_factory: Callable[[], DockerClient]) -> DockerClient:
    try:
        return client_factory()
    except docker.errors.DockerException as exc:
        raise BuildError(f"the Docker engine is not reachable: {exc}")


def _build_with_api(
    client: DockerClient,
    context: Path,
    tag: str,
    dockerfile: str,
    on_log: LogFn,
    build_args: dict[str, str] | None = None,
    network: str | None = None,
) -> None:
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        for event in client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=build_args or None,
            network_mode=network,
        ):
            if "error" in event:
                error = plain_log_line(str(event["error"]).strip())
                tail.append(error)
                on_log(error)
                raise BuildError(f"building {tag} failed: {error}", "\n".join(tail))
            for raw in str(event.get("stream", "")).split("\n"):
                line = plain_log_line(raw)
                if line.strip():
                    tail.append(line)
                    on_log(line)
    except docker.errors.DockerException as exc:
        raise BuildError(f"building {tag} failed: {exc}", "\n".join(tail))


def _buildkit_command() -> tuple[list[str], dict[str, str]]:
    """A `docker` CLI on PATH that builds with BuildKit: one with buildx, or a pre-23 one (built in)."""
    seen: set[str] = set()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        cli = shutil.which("docker", path=directory)
        if cli is None or os.path.realpath(cli) in seen:
            continue
        seen.add(os.path.realpath(cli))
        probe = subprocess.run([cli, "buildx", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return [cli, "buildx", "build", "--load"], {}
        version = subprocess.run(
            [cli, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, timeout=30
        ).stdout
        major = re.match(r"(\d+)\.", version.strip())
        if major and int(major.group(1)) < 23:
            return [cli, "build"], {"DOCKER_BUILDKIT": "1"}
    raise BuildError(
        "this Dockerfile uses BuildKit secrets, which need a `docker` command with BuildKit "
        "(the buildx plugin, e.g. `apt-get install docker-buildx`, or Debian's docker.io); none is on PATH"
    )


def _build_with_buildkit(
    context: Path,
    tag: str,
    dockerfile: str,
    secrets: dict[str, str],
    on_log: LogFn,
    build_args: dict[str, str] | None = None,
    network: str | None = None,
) -> None:
    command, extra_env = _buildkit_command()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with tempfile.TemporaryDirectory(prefix="ember-secrets-") as secret_dir:
        argv = [*command, "--progress=plain", "-f", str(context / dockerfile), "-t", tag]
        for name, value in (build_args or {}).items():
            argv += ["--build-arg", f"{name}={value}"]
        if network:
            argv += ["--network", network]
        for secret_id, value in secrets.items():
            path = Path(secret_dir) / secret_id
            path.touch(mode=0o600)
            path.write_text(value, encoding="utf-8")
            argv += ["--secret", f"id={secret_id},src={path}"]
        argv.append(str(context))
        with subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **extra_env},
            errors="replace",
        ) as process:
            assert process.stdout is not None
            for raw in process.stdout:
                line = plain_log_line(raw).rstrip()
                tail.append(line)
                on_log(line)
            code = process.wait(timeout=_BUILD_TIMEOUT_S)
    if code != 0:
        raise BuildError(f"building {tag} failed (docker build exited {code})", "\n".join(tail))


def build_image(
    context_dir: str | Path,
    tag: str,
    *,
    dockerfile: str = "Dockerfile",
    on_log: LogFn = print,
    secrets: dict[str, str] | None = None,
    size_budget_bytes: int = DEFAULT_SIZE_BUDGET_BYTES,
    top_layers: int = 5,
    client_factory: Callable[[], DockerClient] = docker.from_env,
    build_args: dict[str, str] | None = None,
    network: str | None = None,
) -> BuildReport:
    """Build `context_dir` into `tag`, streaming every build line to `on_log`, and report the image size.

    `secrets` (id -> value) reach `RUN --mount=type=secret,id=…` steps and never a layer. Raises BuildError
    (with the last lines of the build log) when the build fails or the engine is unreachable.
    """
    context = Path(context_dir)
    dockerfile_path = context / dockerfile
    if not dockerfile_path.is_file():
        raise BuildError(f"no {dockerfile} in {context}; run `ember init` to create one")
    client = _client(client_factory)
    try:
        if _SECRET_MOUNT.search(dockerfile_path.read_text(encoding="utf-8")):
            _build_with_buildkit(context, tag, dockerfile, dict(secrets or {}), on_log, build_args, network)
        else:
            _build_with_api(client, context, tag, dockerfile, on_log, build_args, network)
        try:
            image = client.images.get(tag)
            history = image.history()
        except docker.errors.DockerException as exc:
            raise BuildError(f"cannot inspect the built image {tag}: {exc}")
        size_bytes = int(image.attrs.get("Size") or 0)
        env = image.attrs.get("Config", {}).get("Env") or []
        warnings, advice = analyse(history, env, size_bytes, size_budget_bytes)
        layers = sorted(
            (Layer(int(h.get("Size") or 0), h.get("CreatedBy") or "") for h in history),
            key=lambda layer: layer.size_bytes,
            reverse=True,
        )
        return BuildReport(
            tag, image.id, size_bytes, layers[:top_layers], size_budget_bytes, warnings, advice
        )
    finally:
        client.close()


def push_image(
    ref: str,
    *,
    auth: dict[str, str] | None = None,
    on_log: LogFn = print,
    client_factory: Callable[[], DockerClient] = docker.from_env,
    on_progress: PushProgressFn | None = None,
) -> str:
    """Push the local image `ref` to its registry, reporting each layer; return the pushed digest.

    `on_log` gets a line when a layer is done and for the push's other messages; `on_progress`, when
    given, every layer event with its byte counts (for per-layer progress bars).

    Raises BuildError when the image is missing, the registry refuses, or the engine is unreachable.
    """
    repository, tag = parse_repository_tag(ref)
    client = _client(client_factory)
    digest = ""
    try:
        stream = client.api.push(repository, tag or "latest", stream=True, decode=True, auth_config=auth)
        for event in stream:
            if "error" in event:
                raise BuildError(f"pushing {ref} failed: {event['error'].strip()}")
            digest = event.get("aux", {}).get("Digest", digest)
            layer, status = event.get("id"), event.get("status", "")
            if on_progress is not None and layer and status:
                detail = event.get("progressDetail") or {}
                on_progress(str(layer), str(status), detail.get("current"), detail.get("total"))
            if status in ("Pushed", "Layer already exists", "Mounted from"):
                on_log(f"{layer}: {status.lower()}")
            elif (
                status
                and not event.get("progressDetail")
                and status not in ("Preparing", "Waiting", "Pushing")
            ):
                on_log(f"{layer}: {status}" if layer else status)
    except docker.errors.DockerException as exc:
        raise BuildError(f"pushing {ref} failed: {exc}")
    finally:
        client.close()
    if not digest:
        raise BuildError(f"pushing {ref} failed: the registry returned no digest")
    return digest
