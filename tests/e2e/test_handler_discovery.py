"""`ember deploy DIR` finds the handler where RunPod's worker projects keep it (`rp_handler.py`,
`src/handler.py`, …) or where `--handler` / the API's `handler` field says, shows which file runs, and
runs it from its own directory (sibling imports, relative reads); a missing directory, a directory
without a handler and a bad `handler` each get their own clear error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import LiveServer

# RunPod's own example, unchanged but for what it returns: the real `runpod` SDK, `rp_handler.py`.
RP_HANDLER = """\
import os
import runpod


def handler(job):
    return {"ran": os.path.basename(__file__), "cwd": os.getcwd(), "input": job["input"]}


runpod.serverless.start({"handler": handler})
"""

# RunPod's worker template: src/handler.py imports its siblings and reads files next to it (its
# Dockerfile does `ADD src .` and `CMD python -u /handler.py`).
SRC_HANDLER = """\
import os
import runpod
from greeting import greet


def handler(job):
    with open("motd.txt") as f:
        motd = f.read().strip()
    return {"ran": "src/" + os.path.basename(__file__), "cwd": os.getcwd(), "greeting": greet(job["input"]),
            "motd": motd}


runpod.serverless.start({"handler": handler})
"""

# Ember's SDK, for a file that only `--handler` finds.
NAMED_HANDLER = """\
import os
import ember.serverless as serverless


def handler(job):
    return {"ran": os.path.basename(__file__), "cwd": os.getcwd()}


serverless.start({"handler": handler})
"""


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _runsync(server: LiveServer, endpoint: str, job_input: Any) -> dict[str, Any]:
    resp = server.api("POST", f"/v2/{endpoint}/runsync", json={"input": job_input}, timeout=120)
    body: dict[str, Any] = resp.json()
    assert body.get("status") == "COMPLETED", (body, server.log()[-3000:])
    return dict(body["output"])


def test_rp_handler_py_is_found_shown_and_run_with_the_runpod_sdk(server: LiveServer, tmp_path: Path) -> None:
    source = _write(tmp_path / "rp-example", {"rp_handler.py": RP_HANDLER, "README.md": "RunPod example\n"})
    shown = server.cli("deploy", str(source), "--name", "rp-example", "--workers-max", "1")
    assert shown.returncode == 0, shown.stderr
    assert f"runs {source}/rp_handler.py" in shown.stdout
    record = _json(server.cli("endpoints", "--json"))
    assert {e["name"]: e.get("handler") for e in record}["rp-example"] == "rp_handler.py"
    output = _runsync(server, "rp-example", {"n": 1})
    assert output["ran"] == "rp_handler.py" and output["input"] == {"n": 1}
    assert Path(output["cwd"], "rp_handler.py").is_file()  # the snapshot's root: the file's own directory


def test_src_handler_py_runs_from_src_so_siblings_import_and_relative_files_open(
    server: LiveServer, tmp_path: Path
) -> None:
    source = _write(
        tmp_path / "worker-template",
        {
            "src/handler.py": SRC_HANDLER,
            "src/greeting.py": "def greet(data):\n    return 'Hello, ' + data['name'] + '!'\n",
            "src/motd.txt": "from src/\n",
            "test_input.json": '{"input": {"name": "test"}}\n',
            "Dockerfile": "FROM python:3.11-slim\nADD src .\nCMD python -u /handler.py\n",
        },
    )
    record = _json(server.cli("deploy", str(source), "--name", "worker-template", "--json"))
    assert record["handler"] == "src/handler.py"
    output = _runsync(server, record["id"], {"name": "Ada"})
    assert output == {
        "ran": "src/handler.py",
        "cwd": output["cwd"],
        "greeting": "Hello, Ada!",
        "motd": "from src/",
    }
    assert Path(output["cwd"]).name == "src" and Path(output["cwd"], "greeting.py").is_file()
    # Deploying the unchanged directory again keeps its release (the handler is found the same way).
    again = _json(server.cli("deploy", str(source), "--name", "worker-template", "--json"))
    assert again["release"] == record["release"] and again["handler"] == "src/handler.py"


def test_handler_option_names_any_file_and_wins_over_discovery(server: LiveServer, tmp_path: Path) -> None:
    source = _write(
        tmp_path / "named",
        {"handler.py": NAMED_HANDLER, "workers/main.py": NAMED_HANDLER},
    )
    args = ("deploy", str(source), "--name", "named", "--handler", "./workers/main.py")
    shown = server.cli(*args)
    assert shown.returncode == 0, shown.stderr
    assert f"runs {source}/workers/main.py" in shown.stdout
    output = _runsync(server, "named", {})
    assert output["ran"] == "main.py" and Path(output["cwd"]).name == "workers"
    # Without --handler, the directory is searched again: handler.py comes first.
    plain = _json(server.cli("deploy", str(source), "--name", "named", "--json"))
    assert plain["handler"] == "handler.py" and plain["release"] > 1
    output = _runsync(server, "named", {})
    assert output["ran"] == "handler.py" and Path(output["cwd"], "workers").is_dir()


def test_a_template_s_handler_applies_to_the_endpoint_made_from_it(
    server: LiveServer, tmp_path: Path
) -> None:
    source = _write(tmp_path / "from-template", {"handler.py": "", "workers/main.py": NAMED_HANDLER})
    resp = server.api("POST", "/v1/templates", json={"name": "tpl-handler", "handler": "workers/main.py"})
    assert resp.status_code == 201, resp.text
    assert resp.json()["handler"] == "workers/main.py"
    body = {"name": "from-template", "templateId": resp.json()["id"], "sourceDir": str(source)}
    created = server.api("POST", "/v1/endpoints", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["handler"] == "workers/main.py"
    assert _runsync(server, created.json()["id"], {})["ran"] == "main.py"


@pytest.mark.parametrize(
    ("files", "args", "message", "not_in"),
    [
        ({}, ("--name", "x"), "does not exist", "handler"),
        ({"README.md": "no code\n"}, ("--name", "x"), "has no handler", "does not exist"),
        ({"handler.py": ""}, ("--name", "x", "--handler", "../handler.py"), "must not contain '..'", ""),
        ({"handler.py": ""}, ("--name", "x", "--handler", "/etc/passwd.py"), "relative", ""),
        ({"handler.py": ""}, ("--name", "x", "--handler", "nope.py"), "is not a file", ""),
        ({"handler.py": ""}, ("--name", "x", "--handler", ".venv/h.py"), "leaves out", ""),
    ],
)
def test_a_directory_deploy_mistake_is_one_clear_line(
    server: LiveServer,
    tmp_path: Path,
    files: dict[str, str],
    args: tuple[str, ...],
    message: str,
    not_in: str,
) -> None:
    source = _write(tmp_path / "d", files) if files else tmp_path / "missing"
    proc = server.cli("deploy", str(source), *args)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if not_in:
        assert not_in not in proc.stderr, proc.stderr
    assert "x" not in {e["name"] for e in _json(server.cli("endpoints", "--json"))}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"handler": "../outside.py"}, "handler", "must not contain '..'"),
        ({"handler": "/abs/handler.py"}, "handler", "relative"),
        ({"handler": "missing.py"}, "handler", "no such file"),
        ({"handler": "notes.txt"}, "handler", ".py file"),
        ({"handler": 7}, "handler", "must be str or null"),
        ({"sourceDir": "/nonexistent/ember-dir"}, "sourceDir", "does not exist"),
    ],
)
def test_the_api_refuses_a_bad_handler_with_a_400_naming_the_field(
    server: LiveServer, tmp_path: Path, body: dict[str, Any], field: str, message: str
) -> None:
    source = _write(tmp_path / "api", {"handler.py": "", "notes.txt": ""})
    resp = server.api("POST", "/v1/endpoints", json={"name": "bad-handler", "sourceDir": str(source), **body})
    assert resp.status_code == 400, resp.text
    problems = resp.json()["problems"]
    assert problems[0]["field"] == field and message in problems[0]["message"], problems
    template = server.api("POST", "/v1/templates", json={"name": "bad", **body})
    if field == "handler" and message != "no such file":  # a template has no source to look in
        assert template.status_code == 400, template.text
        assert template.json()["problems"][0]["field"] == "handler"
