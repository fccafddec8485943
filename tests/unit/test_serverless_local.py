"""Local test mode (`--test_input`, `test_input.json`): argument parsing and real handler subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember.serverless.local import load_job, parse_args
from ember.serverless.worker import WorkerConfig

HANDLERS = Path(__file__).resolve().parents[1] / "handlers"
RUN_TIMEOUT_S = 60


def run_handler(name: str, *args: str, cwd: Path, sdk: str = "ember", extra_env: dict | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env["EMBER_TEST_SDK"] = sdk
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, str(HANDLERS / f"{name}.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=RUN_TIMEOUT_S,
    )


def lines(stdout: str) -> list:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# ---- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "test_input", "serve_api"),
    [
        ([], None, False),
        (["--test_input", '{"input": 1}'], '{"input": 1}', False),
        (["--other", "x", '--test_input={"input": 2}'], '{"input": 2}', False),
        (["--rp_serve_api"], None, True),
        (["--test_input"], None, False),
    ],
)
def test_parse_args_finds_the_flags_and_ignores_others(argv, test_input, serve_api):
    args = parse_args(argv)
    assert (args.test_input, args.serve_api) == (test_input, serve_api)


def test_load_job_defaults_the_id_and_keeps_other_keys(tmp_path):
    job, _ = load_job('{"input": {"a": 1}, "webhook": "http://x"}', str(tmp_path))
    assert job == {"id": "local_test", "input": {"a": 1}, "webhook": "http://x"}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"x": 1}', "no 'input' key"),
        ('{"input": 1, "id": 5}', "'id' must be a string"),
    ],
)
def test_load_job_refuses_unusable_input(tmp_path, text, why):
    job, message = load_job(text, str(tmp_path))
    assert job is None and why in message


def test_load_job_reads_test_input_json_from_the_directory(tmp_path):
    (tmp_path / "test_input.json").write_text('{"input": "x", "id": "my-id"}')
    job, source = load_job(None, str(tmp_path))
    assert job == {"input": "x", "id": "my-id"} and source.endswith("test_input.json")


def test_load_job_without_flag_or_file_explains(tmp_path):
    job, message = load_job(None, str(tmp_path))
    assert job is None and "test_input.json not found" in message


@pytest.mark.parametrize("config", [{}, {"handler": 1}, {"handler": print, "concurrency_modifier": 3}, "x"])
def test_worker_config_refuses_a_bad_config(config):
    with pytest.raises(TypeError):
        WorkerConfig.from_dict(config)


# ---- real handler scripts --------------------------------------------------------------------------


def test_echo_with_test_input_prints_the_result_and_exits_0(tmp_path):
    proc = run_handler("echo", "--test_input", '{"input": {"mode": "echo"}}', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout)[-1] == {"output": {"echo": {"mode": "echo"}, "keys": ["id", "input"]}}


def test_test_input_wins_even_when_the_take_url_is_set(tmp_path):
    proc = run_handler(
        "echo",
        "--test_input",
        '{"input": 1}',
        cwd=tmp_path,
        extra_env={"RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:9/v2/ep/job-take/$ID?"},
    )
    assert proc.returncode == 0 and lines(proc.stdout)[-1] == {"output": {"echo": 1, "keys": ["id", "input"]}}


def test_test_input_json_in_the_working_directory_is_used(tmp_path):
    (tmp_path / "test_input.json").write_text(json.dumps({"input": {"q": "é"}, "id": "my-id", "extra": 1}))
    proc = run_handler("echo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout)[-1] == {"output": {"echo": {"q": "é"}, "keys": ["extra", "id", "input"]}}


def test_missing_test_input_json_exits_1_with_a_message(tmp_path):
    proc = run_handler("echo", cwd=tmp_path)
    assert proc.returncode == 1 and "test_input.json not found" in proc.stderr and proc.stdout == ""


def test_test_input_without_input_key_exits_1(tmp_path):
    proc = run_handler("echo", "--test_input", '{"prompt": "x"}', cwd=tmp_path)
    assert proc.returncode == 1 and "no 'input' key" in proc.stderr


def test_raising_handler_exits_1_with_the_exception_on_stderr(tmp_path):
    proc = run_handler("raises", "--test_input", '{"input": {}}', cwd=tmp_path)
    assert proc.returncode == 1
    assert "ValueError" in proc.stderr and "boom" in proc.stderr and "raises.py" in proc.stderr
    assert json.loads(lines(proc.stdout)[-1]["error"])["error_message"] == "boom"


def test_returned_error_exits_1_and_keeps_the_output(tmp_path):
    proc = run_handler("returns_error", "--test_input", '{"input": {}}', cwd=tmp_path)
    assert proc.returncode == 1 and "bad input" in proc.stderr
    assert lines(proc.stdout)[-1] == {"output": {"partial": 1}, "error": "bad input"}


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("returns_none", {"output": None}),
        ("returns_empty_dict", {}),
        ("returns_empty_list", {"output": []}),
        ("returns_str", {"output": "hello"}),
        ("noop", {}),
        ("refresh_worker", {"output": {"ok": True}, "stopPod": True}),
    ],
)
def test_plain_results_are_wrapped_like_runpod(tmp_path, name, body):
    proc = run_handler(name, "--test_input", '{"input": null}', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout)[-1] == body


def test_generator_chunks_are_printed_then_the_aggregate(tmp_path):
    proc = run_handler("generator", "--test_input", '{"input": {"n": 2}}', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [
        {"stream": {"i": 0}},
        {"stream": {"i": 1}},
        {"output": [{"i": 0}, {"i": 1}]},
    ]


def test_async_generator_chunks_are_printed_and_not_aggregated(tmp_path):
    proc = run_handler("async_generator", "--test_input", '{"input": {"n": 3}}', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [{"stream": 0}, {"stream": 1}, {"stream": 2}, {"output": []}]


def test_generator_raising_prints_its_chunks_and_exits_1(tmp_path):
    proc = run_handler("generator_raises", "--test_input", '{"input": {}}', cwd=tmp_path)
    assert proc.returncode == 1 and "gen boom" in proc.stderr
    out = lines(proc.stdout)
    assert out[:2] == [{"stream": {"i": 0}}, {"stream": {"i": 1}}]
    assert out[2]["error"].startswith("handler: gen boom")


def test_progress_updates_are_printed_locally(tmp_path):
    proc = run_handler("progress", "--test_input", '{"input": {}}', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [{"progress": {"step": 1}}, {"output": {"done": True}}]


def test_async_concurrency_handler_runs_locally(tmp_path):
    proc = run_handler("concurrency4", "--test_input", '{"input": {"sleep_s": 0}}', cwd=tmp_path)
    assert proc.returncode == 0 and lines(proc.stdout)[-1] == {"output": {"slept_s": 0.0}}


def test_non_ascii_output_is_printed_as_utf8(tmp_path):
    proc = run_handler("non_ascii", "--test_input", '{"input": "ü"}', cwd=tmp_path)
    assert proc.returncode == 0
    assert lines(proc.stdout)[-1] == {"output": {"t": "héllo ✓ 日本", "echo": "ü"}}


def test_handler_output_is_not_lost_among_its_own_prints(tmp_path):
    proc = run_handler("prints_a_lot", "--test_input", '{"input": {"lines": 2000}}', cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.count("stdout line") == 2000 and proc.stderr.count("stderr line") == 2000
    assert lines(proc.stdout)[-1] == {"output": {"lines": 2000}}


def test_rp_serve_api_is_refused_with_a_pointer_to_ember_dev(tmp_path):
    proc = run_handler("echo", "--rp_serve_api", cwd=tmp_path)
    assert proc.returncode == 2 and "ember dev" in proc.stderr


@pytest.mark.parametrize(
    ("name", "code"), [("echo", 0), ("raises", 1), ("returns_error", 1), ("exits_on_import", 3)]
)
@pytest.mark.parametrize("sdk", ["ember", "runpod"])
def test_exit_codes_are_the_same_under_both_sdks(tmp_path, name, code, sdk):
    proc = run_handler(name, "--test_input", '{"input": {}}', cwd=tmp_path, sdk=sdk)
    assert proc.returncode == code, proc.stderr[-2000:]
