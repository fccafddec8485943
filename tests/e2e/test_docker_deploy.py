"""Registry deploys on the real Docker engine and loopback registries, as a user does them: `ember init`
→ `ember build` → `ember push` → `ember deploy --image` → runsync through a container worker, its logs and
`ember exec`; the unmodified runpod SDK in an image; a private registry through a stored login; a
control-plane SIGKILL adopting its containers; a container killed mid-job re-queuing its job."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.backends.docker import LABEL_ENDPOINT, LABEL_INSTANCE, worker_of
from ember.build.image import build_image
from ember.build.scaffold import vendor_sdk
from tests.support.agents import LiveAgent
from tests.support.docker_env import AuthRegistry
from tests.support.live import HANDLERS, LiveServer, wait_for

pytestmark = pytest.mark.docker
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
WAIT = {"wait": "120000"}


# ---- plumbing ------------------------------------------------------------------------------------------
def ember(server: LiveServer, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """The `ember` CLI against `server`, with time for builds and pushes."""
    return server.cli(*args, timeout_s=300, **kw)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


def all_containers(docker_client: Any, server: LiveServer, endpoint_id: str | None = None) -> list[Any]:
    """This server's containers (optionally of one endpoint): its workers' and its parked ones."""
    labels = [f"{LABEL_INSTANCE}={(server.home / 'instance_id').read_text().strip()}"]
    if endpoint_id:
        labels.append(f"{LABEL_ENDPOINT}={endpoint_id}")
    return list(docker_client.containers.list(all=True, filters={"label": labels}))


def containers(docker_client: Any, server: LiveServer, endpoint_id: str | None = None) -> dict[str, str]:
    """worker id -> container id of this server's workers' containers (optionally of one endpoint);
    a container's name says whose it is (one resumed from the warm pool serves a new worker)."""
    found = all_containers(docker_client, server, endpoint_id)
    return {wid: c.id for c in found if (wid := worker_of(c.name, c.labels)) is not None}


def runsync(server: LiveServer, endpoint_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    resp = server.api("POST", f"/v2/{endpoint_id}/runsync", json={"input": payload}, params=WAIT, timeout=150)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def status(server: LiveServer, endpoint_id: str, job_id: str) -> dict[str, Any]:
    resp = server.api("GET", f"/v2/{endpoint_id}/status/{job_id}")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def create(server: LiveServer, **body: Any) -> dict[str, Any]:
    resp = server.api("POST", "/v1/endpoints", json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def ready_workers(server: LiveServer, endpoint_id: str, count: int) -> list[dict[str, Any]]:
    return wait_for(
        lambda: (
            (ws := [w for w in server.workers(endpoint_id) if w["state"] in ("IDLE", "RUNNING")])
            and len(ws) >= count
            and ws
        ),
        120,
        interval_s=0.2,
        what=f"{count} ready worker(s) on {endpoint_id}",
    )


def docker_server(home: Path, registry: str) -> LiveServer:
    return LiveServer(home, args=["--backend", "docker", "--registry", registry]).start()


def remove_containers(docker_client: Any, server: LiveServer) -> None:
    for container in all_containers(docker_client, server):
        try:
            container.remove(force=True)
        except Exception:  # already gone
            pass


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str
) -> Iterator[LiveServer]:
    s = docker_server(tmp_path_factory.mktemp("ember-docker-home"), registry)
    try:
        yield s
    finally:
        s.stop()
        remove_containers(docker_client, s)


def runpod_site_packages(dest: Path) -> None:
    """Copy the host's runpod package and everything its worker imports (same Python minor version as
    the base image) into `dest`, with their dist-info, so an image can run the unmodified SDK offline."""
    probe = (
        "import importlib, pkgutil, sys, runpod, runpod.serverless, runpod.serverless.modules as m\n"
        "for i in pkgutil.iter_modules(m.__path__):\n"
        "    try: importlib.import_module('runpod.serverless.modules.' + i.name)\n"
        "    except Exception: pass\n"
        "files = {getattr(v, '__file__', None) or '' for v in list(sys.modules.values())}\n"
        "print('\\n'.join(sorted(files)))\n"
    )
    files = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    site = Path(importlib.metadata.distribution("runpod").locate_file("")).resolve()
    tops = {Path(f).resolve().relative_to(site).parts[0] for f in files.split() if f.startswith(str(site))}
    dest.mkdir(parents=True)
    for top in tops:
        src = site / top
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / top)  # type: ignore[operator]
    providers = importlib.metadata.packages_distributions()
    for name in {d for top in tops for d in providers.get(top.split(".")[0], [])}:
        info = importlib.metadata.distribution(name)._path  # type: ignore[attr-defined]
        shutil.copytree(info, dest / Path(info).name, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def fixture_image(
    tmp_path_factory: pytest.TempPathFactory, base_image: str, docker_client: Any
) -> Iterator[str]:
    """An image with every handler fixture under /app, Ember's SDK and the unmodified runpod SDK."""
    context = tmp_path_factory.mktemp("fixture-image")
    runpod_site_packages(context / "site")
    vendor_sdk(context)
    shutil.copytree(HANDLERS, context / "handlers")
    (context / "Dockerfile").write_text(
        f"FROM {base_image}\n"
        "ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=/opt/ember-sdk:/opt/site\n"
        "COPY site/ /opt/site/\nCOPY vendor/ /opt/ember-sdk/\nCOPY handlers/ /app/\n"
        'WORKDIR /app\nCMD ["python3", "-u", "echo.py"]\n'
    )
    tag = f"ember-test/fixtures-{uuid.uuid4().hex[:8]}:v1"
    build_image(context, tag, on_log=lambda _line: None)
    yield tag
    docker_client.images.remove(tag, force=True)


# ---- the tests -----------------------------------------------------------------------------------------
def test_init_build_push_deploy_image_then_runsync_logs_and_exec(
    server: LiveServer, tmp_path: Path, base_image: str, registry: str, docker_client: Any
) -> None:
    project = tmp_path / "demo"
    ok(ember(server, "init", str(project), "--base-image", base_image))
    ref = f"{registry}/ember-test/demo-{uuid.uuid4().hex[:8]}:v1"
    assert "built" in ok(ember(server, "build", str(project), "-t", ref))
    assert "pushed" in ok(ember(server, "push", ref))
    docker_client.images.remove(ref)  # the worker has to pull it from the registry

    record = json.loads(
        ok(ember(server, "deploy", "--image", ref, "--name", "demo", "--idle-timeout", "120", "--json"))
    )
    assert record["imageName"] == ref and record["release"] == 1
    result = runsync(server, record["id"], {"name": "Ada"})
    assert result["status"] == "COMPLETED", result
    assert result["output"] == {"greeting": "Hello, Ada!"}

    (worker,) = ready_workers(server, record["id"], 1)
    assert set(containers(docker_client, server, record["id"])) == {worker["id"]}
    logs = ok(ember(server, "logs", "demo"))
    assert f"[{worker['id']}]" in logs and "worker_started" in logs, logs
    os_release = ok(ember(server, "exec", worker["id"], "--", "cat", "/etc/os-release"))
    assert "VERSION_CODENAME=bookworm" in os_release, os_release


def test_a_host_s_agent_runs_an_image_worker_on_its_own_engine(
    tmp_path: Path, fixture_image: str, docker_client: Any
) -> None:
    """A control plane with no engine and no workers of its own; a host whose agent has one: the
    image's worker is the agent's container (labelled with the agent's installation id), and runsync,
    exec and logs reach it through the agent."""
    server = LiveServer(tmp_path / "cp", env={"EMBER_LOCAL_WORKERS": "false", "EMBER_DOCKER": "0"}).start()
    agent = LiveAgent(server, "docker-host", tmp_path / "agent", docker=True)
    agent_instance = ""
    try:
        agent.start()
        ep = create(
            server,
            name="on-a-host",
            imageName=fixture_image,
            dockerStartCmd="python3 -u echo.py",
            workersMax=1,
            idleTimeout=120,
        )
        result = runsync(server, ep["id"], {"via": "host"})
        assert result["status"] == "COMPLETED" and result["output"]["echo"] == {"via": "host"}, result
        (worker,) = ready_workers(server, ep["id"], 1)
        assert worker["hostId"] == agent.host_id
        agent_instance = (agent.home / "instance_id").read_text().strip()
        mine = docker_client.containers.list(filters={"label": [f"{LABEL_INSTANCE}={agent_instance}"]})
        assert [worker_of(c.name, c.labels) for c in mine] == [worker["id"]]
        resp = server.api(
            "POST", f"/v1/workers/{worker['id']}/exec", json={"command": ["cat", "/etc/os-release"]}
        )
        assert resp.status_code == 200 and "VERSION_CODENAME=bookworm" in resp.json()["output"], resp.text
        logs = ok(ember(server, "logs", "on-a-host"))
        assert f"[{worker['id']}]" in logs and "worker_started" in logs, logs
    finally:
        agent.kill()
        server.stop()
        if agent_instance:
            for c in docker_client.containers.list(
                all=True, filters={"label": [f"{LABEL_INSTANCE}={agent_instance}"]}
            ):
                c.remove(force=True)


def test_an_image_with_the_unmodified_runpod_sdk_runs_as_a_worker(
    server: LiveServer, fixture_image: str
) -> None:
    ep = create(
        server,
        name="runpod-image",
        imageName=fixture_image,
        dockerStartCmd="python3 -u echo.py",
        env={"EMBER_TEST_SDK": "runpod"},
        workersMax=1,
    )
    result = runsync(server, ep["id"], {"via": "runpod"})
    assert result["status"] == "COMPLETED", result
    assert result["output"]["echo"] == {"via": "runpod"}
    assert {"id", "input"} <= set(result["output"]["keys"])


def test_a_container_workers_logs_stay_readable_after_it_scales_down(
    server: LiveServer, fixture_image: str, docker_client: Any
) -> None:
    ep = create(
        server,
        name="kept-logs",
        imageName=fixture_image,
        dockerStartCmd="python3 -u echo.py",
        env={"EMBER_TEST_SDK": "runpod"},
        workersMax=1,
        idleTimeout=1,
    )
    assert runsync(server, ep["id"], {"kept": "yes"})["status"] == "COMPLETED"
    (worker,) = ready_workers(server, ep["id"], 1)
    prefix = f"[{worker['id']}] "
    before = [line for line in ok(ember(server, "logs", "kept-logs")).splitlines() if line.startswith(prefix)]
    assert before, "the runpod SDK prints its start"

    # Idle past its timeout, the flex worker stops and its container is removed (or parked for the next
    # worker, no longer its own); its logs stay.
    wait_for(
        lambda: not server.workers(ep["id"]) and worker["id"] not in containers(docker_client, server),
        120,
        interval_s=0.2,
        what="the idle worker to stop and its container to go",
    )
    after = ok(ember(server, "logs", "kept-logs")).splitlines()
    assert "has no container" not in "\n".join(after) and "logs unavailable" not in "\n".join(after), after
    assert after[: len(before)] == before, after
    assert ok(ember(server, "logs", "kept-logs", "--tail", "1")).splitlines() == after[-1:]
    assert ok(ember(server, "logs", "kept-logs", "--tail", "0")) == ""


def test_an_image_endpoint_update_is_a_new_release_and_rollback_returns_to_the_first(
    server: LiveServer, fixture_image: str, docker_client: Any
) -> None:
    first = create(
        server,
        name="image-releases",
        imageName=fixture_image,
        dockerStartCmd="python3 -u echo.py",
        env={"EMBER_TEST_SDK": "ember"},
        workersMax=1,
    )
    assert runsync(server, first["id"], {"n": 1})["output"]["echo"] == {"n": 1}
    second_ref = fixture_image.replace(":v1", ":v2")
    docker_client.images.get(fixture_image).tag(second_ref)
    patch = {"imageName": second_ref, "dockerStartCmd": "python3 -u returns_str.py"}
    updated = server.api("PATCH", f"/v1/endpoints/{first['id']}", json=patch).json()
    assert updated["release"] == 2, updated
    assert runsync(server, first["id"], {"n": 2})["output"] == "hello"
    assert "release 1" in ok(ember(server, "rollback", "image-releases"))
    assert runsync(server, first["id"], {"n": 3})["output"]["echo"] == {"n": 3}
    listing = json.loads(ok(ember(server, "releases", "image-releases", "--json")))
    assert [(r["release"], r["image"], r["serving"]) for r in listing] == [
        (1, fixture_image, True),
        (2, second_ref, False),
    ]
    docker_client.images.remove(second_ref)


def test_a_private_registry_image_is_pulled_with_the_stored_login(
    server: LiveServer, fixture_image: str, auth_registry: AuthRegistry, docker_client: Any
) -> None:
    ref = f"{auth_registry.host}/ember-test/private-{uuid.uuid4().hex[:8]}:v1"
    docker_client.images.get(fixture_image).tag(ref)
    # Without a login the push is refused; the login is stored under the server's home, never printed.
    assert ember(server, "push", ref, home=server.home).returncode == 1
    login = ember(
        server,
        "registry",
        "login",
        auth_registry.host,
        "-u",
        auth_registry.username,
        "--password-stdin",
        home=server.home,
        stdin=auth_registry.password + "\n",
    )
    assert auth_registry.password not in ok(login) + login.stderr
    ok(ember(server, "push", ref, home=server.home))
    docker_client.images.remove(ref)
    ep = create(
        server,
        name="private-image",
        imageName=ref,
        dockerStartCmd="python3 -u echo.py",
        env={"EMBER_TEST_SDK": "ember"},
        workersMax=1,
    )
    result = runsync(server, ep["id"], {"private": True})
    assert result["status"] == "COMPLETED", result
    assert result["output"]["echo"] == {"private": True}


def test_restart_adopts_running_containers_and_a_killed_container_requeues_its_job(
    server: LiveServer, fixture_image: str, docker_client: Any
) -> None:
    ep = create(
        server,
        name="slow-docker",
        imageName=fixture_image,
        dockerStartCmd="python3 -u slow.py",
        env={"EMBER_TEST_SDK": "ember"},
        workersMin=2,
        workersMax=2,
        idleTimeout=120,
    )
    workers = {w["id"] for w in ready_workers(server, ep["id"], 2)}
    before = containers(docker_client, server, ep["id"])
    assert set(before) == workers

    server.kill()
    server.start()
    done = runsync(server, ep["id"], {"seconds": 0})
    assert done["status"] == "COMPLETED", done
    ready_workers(server, ep["id"], 2)
    after_restart = server.workers(ep["id"], include_stopped=True)
    assert {w["id"] for w in after_restart} == workers, after_restart  # no duplicates, none replaced
    assert containers(docker_client, server, ep["id"]) == before  # the very same containers
    for wid in workers:
        history = server.api("GET", f"/v1/workers/{wid}/history").json()
        assert not any(h["state"] == "UNHEALTHY" for h in history), history

    job = server.api("POST", f"/v2/{ep['id']}/run", json={"input": {"seconds": 4}}).json()["id"]
    victim = wait_for(
        lambda: (r := status(server, ep["id"], job))["status"] == "IN_PROGRESS" and r.get("workerId"),
        60,
        interval_s=0.1,
        what="the job to start on a container",
    )
    docker_client.containers.get(before[victim]).kill()
    final = wait_for(
        lambda: (r := status(server, ep["id"], job))["status"] in FINAL and r,
        120,
        interval_s=0.2,
        what="the job of the killed container to finish elsewhere",
    )
    assert final["status"] == "COMPLETED" and final["output"] == {"slept_s": 4.0}, final
    history = server.api("GET", f"/v1/workers/{victim}/history").json()
    assert any(h["state"] == "UNHEALTHY" for h in history), history
    # The endpoint heals to two workers, each with one container, and no stray container is left.
    ready_workers(server, ep["id"], 2)
    live = {w["id"] for w in server.workers(ep["id"])}
    wait_for(
        lambda: set(containers(docker_client, server, ep["id"])) == live,
        60,
        what="one container per live worker",
    )
