"""Sources for tenants: a non-admin account cannot name a host path (`sourceDir` is a 403); `ember deploy
DIR` packs the directory (its .gitignore and .emberignore respected) and uploads it, and the endpoint
runs it; an archive with `../x`, `/etc/x` or a link to `/` is a 400 that writes nothing outside its
directory; an archive past the limit is a 413; another account's upload is not found."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ember.build.archive import pack
from tests.support.live import LiveServer, handler_dir, live_server

UPLOAD_LIMIT = 256 * 1024

# RunPod's SDK, as a tenant's handler would use it: reports the files it was deployed with.
LISTS_FILES = """\
import os
import runpod


def handler(job):
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(
        os.path.relpath(os.path.join(d, f), here) for d, _, names in os.walk(here) for f in names
    )
    return {"files": found, "input": job["input"]}


runpod.serverless.start({"handler": handler})
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {"EMBER_SOURCE_UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT)}
    with live_server(tmp_path_factory.mktemp("ember-home"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def tenant(server: LiveServer) -> str:
    return server.new_account("tenant", "20.00")


def _post_archive(server: LiveServer, key: str, data: bytes) -> Any:
    return server.api("POST", "/v1/sources", key, content=data, headers={"Content-Type": "application/gzip"})


def _tar(*members: tuple[str, bytes | None, str]) -> bytes:
    """(name, data, link target): a file when data is given, else a symlink to the target."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, target
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def test_a_tenant_s_source_dir_is_a_403_that_says_to_upload(
    server: LiveServer, tenant: str, tmp_path: Path
) -> None:
    source = handler_dir(tmp_path, "echo")
    resp = server.api("POST", "/v1/endpoints", tenant, json={"name": "by-path", "sourceDir": str(source)})
    assert resp.status_code == 403, resp.text
    assert resp.json()["code"] == "forbidden" and "ember deploy" in resp.json()["error"]
    assert server.api("GET", "/v1/endpoints", tenant).json() == []
    # Nor by a later update of an endpoint made from an upload.
    made = server.deploy("by-upload", source, tenant, workersMax=0)
    assert made["sourceId"].startswith("src-") and made["sourceDir"] is None
    patch = server.api("PATCH", f"/v1/endpoints/{made['id']}", tenant, json={"sourceDir": str(source)})
    assert patch.status_code == 403, patch.text
    # The admin keeps sourceDir for local development.
    assert server.deploy("admin-by-path", source, workersMax=0)["sourceDir"] == str(source.resolve())


def test_ember_deploy_uploads_the_directory_less_what_is_ignored_and_runs_it(
    server: LiveServer, tenant: str, tmp_path: Path
) -> None:
    source = tmp_path / "tenant-worker"
    files = {
        "rp_handler.py": LISTS_FILES,
        "helper.py": "",
        ".gitignore": "*.log\nscratch/\n",
        ".emberignore": "notes.txt\n",
        "run.log": "",
        "scratch/tmp.py": "",
        "notes.txt": "",
        ".venv/lib/x.py": "",
    }
    for name, text in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text)
    done = server.cli(
        "deploy", str(source), "--name", "uploaded", "--workers-max", "1", "--wait", "--wait-timeout", "120",
        key=tenant,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"runs {source}/rp_handler.py" in done.stdout and "Uploaded" in done.stderr
    record = next(e for e in server.api("GET", "/v1/endpoints", tenant).json() if e["name"] == "uploaded")
    assert record["sourceId"].startswith("src-") and record["sourceDir"] is None
    assert record["handler"] == "rp_handler.py"
    resp = server.api("POST", f"/v2/{record['id']}/runsync", tenant, json={"input": {"n": 1}}, timeout=120)
    body = resp.json()
    assert body["status"] == "COMPLETED", (body, server.log()[-3000:])
    assert body["output"] == {
        "files": [".emberignore", ".gitignore", "helper.py", "rp_handler.py"],
        "input": {"n": 1},
    }
    # The same directory again (as JSON): the same content, so the same release.
    again = server.cli("deploy", str(source), "--name", "uploaded", "--json", key=tenant)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["release"] == record["release"]


@pytest.mark.parametrize(
    "members",
    [
        [("../x", b"escaped", "")],
        [("/etc/x", b"escaped", "")],
        [("root", None, "/")],
        [("up", None, "../../../x")],
    ],
    ids=["dotdot", "absolute", "link-to-root", "link-out"],
)
def test_a_bad_archive_is_a_400_and_writes_nothing(
    server: LiveServer, tenant: str, members: list[tuple[str, bytes | None, str]]
) -> None:
    uploads = server.home / "uploads"
    before = sorted(p.name for p in uploads.iterdir()) if uploads.exists() else []
    around = sorted(p.name for p in server.home.iterdir())
    resp = _post_archive(server, tenant, _tar(("handler.py", b"x = 1\n", ""), *members))
    assert resp.status_code == 400, resp.text
    assert resp.json()["problems"][0]["field"] == "archive"
    assert members[0][0] in resp.json()["error"]
    assert sorted(p.name for p in uploads.iterdir()) == before  # nothing kept, no temporary left
    assert sorted(p.name for p in server.home.iterdir()) == around
    assert not (server.home / "x").exists() and not Path("/etc/x").exists()


def test_an_archive_over_the_limit_is_a_413_and_not_a_tar_is_a_400(server: LiveServer, tenant: str) -> None:
    big = _tar(("handler.py", b"x = 1\n", ""), ("blob.bin", os.urandom(UPLOAD_LIMIT), ""))
    assert len(big) > UPLOAD_LIMIT
    resp = _post_archive(server, tenant, big)
    assert resp.status_code == 413 and resp.json()["code"] == "payload_too_large", resp.text
    resp = _post_archive(server, tenant, b"not an archive")
    assert resp.status_code == 400 and resp.json()["problems"][0]["field"] == "archive", resp.text
    resp = server.api("POST", "/v1/sources", tenant, json={"not": "a tar"})
    assert resp.status_code == 400 and resp.json()["problems"][0]["field"] == "Content-Type", resp.text


def test_another_account_cannot_see_or_deploy_an_upload(
    server: LiveServer, tenant: str, tmp_path: Path
) -> None:
    mine = _post_archive(server, tenant, pack(handler_dir(tmp_path, "echo")))
    assert mine.status_code == 201, mine.text
    upload = mine.json()
    assert upload["files"] == 1 and upload["id"].startswith("src-")
    assert server.api("GET", f"/v1/sources/{upload['id']}", tenant).json() == upload
    other = server.new_account("other", "20.00")
    assert server.api("GET", f"/v1/sources/{upload['id']}", other).status_code == 404
    resp = server.api("POST", "/v1/endpoints", other, json={"name": "stolen", "sourceId": upload["id"]})
    assert resp.status_code == 404 and resp.json()["code"] == "not_found", resp.text
    assert server.api("GET", "/v1/endpoints", other).json() == []
    # Its owner deploys it; the server's paths stay out of what the owner is told.
    resp = server.api(
        "POST", "/v1/endpoints", tenant, json={"name": "mine", "sourceId": upload["id"], "workersMax": 0}
    )
    assert resp.status_code == 201 and resp.json()["handler"] == "handler.py", resp.text
    bad = server.api(
        "POST",
        "/v1/endpoints",
        tenant,
        json={"name": "nohandler", "sourceId": upload["id"], "handler": "x.py"},
    )
    assert bad.status_code == 400 and str(server.home) not in bad.text and upload["id"] in bad.text, bad.text


def test_the_upload_route_is_in_the_openapi_document(server: LiveServer) -> None:
    doc = server.api("GET", "/openapi.json").json()
    op = doc["paths"]["/v1/sources"]["post"]
    assert "application/gzip" in op["requestBody"]["content"]
    assert "201" in op["responses"] and op["tags"] == ["sources"]
