"""Git deploys against a bare repository on disk, the real Docker engine and the loopback registry: a
deploy builds and serves release 1; a push plus a signed GitHub webhook builds release 2 while release-1
workers finish their jobs as Outdated; a bad signature changes nothing; a broken commit leaves release 2
serving with a FAILED release and its log; `ember rollback` returns to release 1."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.build.scaffold import init_project
from tests.e2e.test_docker_deploy import FINAL, docker_server, ember, ok, remove_containers, runsync, status
from tests.support.live import LiveServer, wait_for
from tests.support.terminal import run_on_terminal

pytestmark = pytest.mark.docker
EMBER = [sys.executable, "-m", "ember.cli.main"]

HANDLER = """\
import time

from ember import serverless

RELEASE = {release!r}


def handler(job):
    time.sleep(float(job["input"].get("seconds", 0)))
    return {{"release": RELEASE}}


if __name__ == "__main__":
    serverless.start({{"handler": handler}})
"""


class Repo:
    """A bare repository (the remote Ember builds from) and a working clone that commits and pushes."""

    def __init__(self, root: Path, base_image: str) -> None:
        self.bare = root / "demo.git"
        self.work = root / "work"
        self.git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=root)
        self.git("clone", "--quiet", str(self.bare), str(self.work), cwd=root)
        for key, value in (("user.name", "Ember Test"), ("user.email", "test@ember.invalid")):
            self.git("config", key, value)
        init_project(self.work, base_image=base_image)
        shutil.rmtree(self.work / "vendor")  # Ember vendors its SDK when the repository has none

    def git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            ["git", *args], cwd=cwd or self.work, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def commit(self, message: str, files: dict[str, str], branch: str = "main") -> str:
        for name, text in files.items():
            (self.work / name).write_text(text)
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", message)
        self.git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        return self.git("rev-parse", "HEAD")

    def push_event(self, branch: str = "main") -> bytes:
        """A GitHub push event body for this repository (the fields Ember reads, and some it doesn't)."""
        event = {
            "ref": f"refs/heads/{branch}",
            "after": self.git("rev-parse", "HEAD"),
            "repository": {
                "full_name": "ember-test/demo",
                "clone_url": str(self.bare),
                "ssh_url": "git@example.invalid:ember-test/demo.git",
                "html_url": "https://example.invalid/ember-test/demo",
            },
            "pusher": {"name": "ember-test"},
        }
        return json.dumps(event).encode()


def signed(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-Hub-Signature-256": f"sha256={digest}",
        "X-GitHub-Event": "push",
        "Content-Type": "application/json",
    }


def webhook(server: LiveServer, body: bytes, headers: dict[str, str]) -> Any:
    # No API key: the signature is the proof.
    import httpx

    return httpx.post(server.url + "/v1/git/webhook", content=body, headers=headers, timeout=30)


def releases(server: LiveServer, endpoint_id: str) -> list[dict[str, Any]]:
    resp = server.api("GET", f"/v1/endpoints/{endpoint_id}/releases")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def serving(
    server: LiveServer, endpoint_id: str, number: int, timeout_s: float = 180
) -> list[dict[str, Any]]:
    """Wait until release `number` is READY and serving."""
    return wait_for(
        lambda: (
            (rs := releases(server, endpoint_id))
            and any(r["release"] == number and r["serving"] and r["status"] == "READY" for r in rs)
            and rs
        ),
        timeout_s,
        interval_s=0.25,
        what=f"release {number} of {endpoint_id} to serve (log: {server.log_path})",
    )


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, registry: str
) -> Iterator[LiveServer]:
    s = docker_server(tmp_path_factory.mktemp("ember-git-home"), registry)
    try:
        yield s
    finally:
        s.stop()
        remove_containers(docker_client, s)


def test_git_endpoint_builds_redeploys_on_signed_push_survives_a_broken_build_and_rolls_back(
    server: LiveServer, tmp_path: Path, base_image: str, registry: str
) -> None:
    repo = Repo(tmp_path, base_image)
    first = repo.commit("release one", {"handler.py": HANDLER.format(release="one")})
    record = json.loads(
        ok(
            ember(
                server, "deploy", "--git", str(repo.bare), "--name", "gitdemo", "--workers-max", "1",
                "--idle-timeout", "120", "--json",
            )
        )
    )  # fmt: skip
    ep, secret = record["id"], record["git"]["webhookSecret"]
    assert record["git"]["branch"] == "main" and len(secret) >= 32 and record["release"] == 0

    # Release 1: built from the bare repository, pushed to Ember's registry, served.
    (r1,) = serving(server, ep, 1)
    assert r1["commit"] == first and r1["image"] == f"{registry}/ember/{ep}:r1"
    assert runsync(server, ep, {})["output"] == {"release": "one"}
    build_log = server.api("GET", f"/v1/endpoints/{ep}/releases/1/log").json()["log"]
    assert "vendored Ember's worker SDK" in build_log and "pushed" in build_log, build_log

    # A long job on a release-1 worker, then a new commit: a forged webhook changes nothing.
    slow = server.api("POST", f"/v2/{ep}/run", json={"input": {"seconds": 12}}).json()["id"]
    old_worker = wait_for(
        lambda: (r := status(server, ep, slow))["status"] == "IN_PROGRESS" and r["workerId"],
        60,
        what="the long job to start on release 1",
    )
    second = repo.commit("release two", {"handler.py": HANDLER.format(release="two")})
    body = repo.push_event()
    for headers in (signed(body, "not-the-secret"), {"Content-Type": "application/json"}):
        refused = webhook(server, body, headers)
        assert refused.status_code == 401 and "error" in refused.json(), refused.text
    assert [r["release"] for r in releases(server, ep)] == [1]

    # A push to another branch is acknowledged and builds nothing.
    other = webhook(server, repo.push_event("feature"), signed(repo.push_event("feature"), secret))
    assert other.status_code == 200 and other.json()["redeployed"] == [], other.text

    # The signed webhook builds release 2; the release-1 worker goes Outdated and finishes its job.
    accepted = webhook(server, body, signed(body, secret))
    assert accepted.status_code == 200 and accepted.json()["redeployed"] == [ep], accepted.text
    serving(server, ep, 2)
    assert next(r for r in releases(server, ep) if r["release"] == 2)["commit"] == second
    wait_for(
        lambda: any(w["id"] == old_worker and w["state"] == "OUTDATED" for w in server.workers(ep)),
        30,
        what="the release-1 worker to be Outdated while its job runs",
    )
    assert status(server, ep, slow)["status"] == "IN_PROGRESS"
    assert runsync(server, ep, {})["output"] == {"release": "two"}
    done = wait_for(lambda: (r := status(server, ep, slow))["status"] in FINAL and r, 60, what="the long job")
    assert done["status"] == "COMPLETED" and done["output"] == {"release": "one"}, done

    # Changing only the scaling of a git endpoint builds nothing.
    patched = server.api("PATCH", f"/v1/endpoints/{ep}", json={"workersMax": 2})
    assert patched.status_code == 200 and patched.json()["release"] == 2, patched.text
    assert [r["release"] for r in releases(server, ep)] == [1, 2]

    # A commit that breaks the build: release 3 FAILED with its log; release 2 keeps serving.
    repo.commit("break the build", {"Dockerfile": (repo.work / "Dockerfile").read_text() + "RUN exit 3\n"})
    body = repo.push_event()
    assert webhook(server, body, signed(body, secret)).json()["redeployed"] == [ep]
    failed = wait_for(
        lambda: next(
            (r for r in releases(server, ep) if r["release"] == 3 and r["status"] == "FAILED"), None
        ),
        180,
        interval_s=0.25,
        what="release 3 to fail",
    )
    assert "RUN exit 3" in failed["logTail"] or "exit 3" in failed["logTail"], failed["logTail"]
    endpoint = server.api("GET", f"/v1/endpoints/{ep}").json()
    assert endpoint["release"] == 2
    assert (
        "build of release 3 failed" in endpoint["status"] and "release 2 keeps serving" in endpoint["status"]
    )
    listing = ok(ember(server, "releases", "gitdemo"))
    assert "FAILED" in listing and "release 3 failed" in listing, listing
    whole_log = ok(ember(server, "releases", "gitdemo", "--log", "3"))
    assert "==> build failed" in whole_log and "release 3: FAILED" in whole_log, whole_log
    assert runsync(server, ep, {})["output"] == {"release": "two"}

    # Rollback returns to release 1's image.
    assert "release 1" in ok(ember(server, "rollback", "gitdemo", "1"))
    assert runsync(server, ep, {})["output"] == {"release": "one"}
    assert [
        r["release"] for r in json.loads(ok(ember(server, "releases", "gitdemo", "--json"))) if r["serving"]
    ] == [1]


def test_deploy_wait_and_releases_follow_show_git_builds_as_they_run(
    server: LiveServer, tmp_path: Path, base_image: str
) -> None:
    repo = Repo(tmp_path, base_image)
    repo.commit("first", {"handler.py": HANDLER.format(release="first")})
    # Through a pipe: the build's lines, its outcome, then the worker's start until it is ready.
    deploy = [
        "deploy",
        "--git",
        str(repo.bare),
        "--name",
        "followed",
        "--workers-min",
        "1",
        "--workers-max",
        "1",
    ]
    out = ok(ember(server, *deploy, "--idle-timeout", "120", "--json", "--wait", "--wait-timeout", "240"))
    record = json.loads(out.splitlines()[0])
    ep, secret = record["id"], record["git"]["webhookSecret"]
    assert "Step 1/" in out and "release 1: READY" in out and "is ready" in out, out
    assert "\x1b" not in out

    # On a terminal: a deploy that builds again (another branch) follows the build step by step, then
    # the new release's worker.
    repo.commit("second", {"handler.py": HANDLER.format(release="second")}, branch="second")
    argv = [*EMBER, *deploy, "--branch", "second", "--wait", "--wait-timeout", "240"]
    drawn = run_on_terminal(argv, server.cli_env(), timeout_s=300)
    assert drawn.returncode == 0, drawn.text + drawn.stderr
    assert "✓ step 1/" in drawn.text and "release 2: READY" in drawn.text, drawn.text
    assert " steps, " in drawn.text and "is ready" in drawn.text, drawn.text

    # `ember releases -f` joins a build under way (held by a slow step) and follows it to its end: the
    # step's output, the failure, exit 1.
    dockerfile = (repo.work / "Dockerfile").read_text()
    slow_failure = "RUN echo broken-on-purpose && sleep 15 && exit 3\n"
    repo.commit("break", {"Dockerfile": dockerfile + slow_failure}, branch="second")
    body = repo.push_event("second")
    assert webhook(server, body, signed(body, secret)).json()["redeployed"] == [ep]
    wait_for(
        lambda: "broken-on-purpose" in server.api("GET", f"/v1/endpoints/{ep}/releases/3/log").json()["log"],
        120,
        interval_s=0.25,
        what="release 3's slow step to start",
    )
    broken = ember(server, "releases", "followed", "-f")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "Step 1/" in broken.stdout and "broken-on-purpose" in broken.stdout, broken.stdout
    assert "release 3: FAILED" in broken.stdout, broken.stdout
    nothing = ember(server, "releases", "followed", "-f")  # nothing building: the list alone
    assert nothing.returncode == 0 and nothing.stdout.startswith("RELEASE\tSTATUS"), nothing.stdout
    assert server.api("DELETE", f"/v1/endpoints/{ep}").status_code == 200
