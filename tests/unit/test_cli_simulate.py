"""`ember simulate` on a spec.json file and a CSV or synthetic trace: no server needed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ember.cli.main import app
from ember.core.billing import DEFAULT_GPU_MICROS_PER_S

runner = CliRunner()
L4 = DEFAULT_GPU_MICROS_PER_S["NVIDIA L4"]


def spec_file(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "spec.json"
    body = {"workersMin": 0, "workersMax": 3, "idleTimeout": 5, "scalerType": "QUEUE_DELAY", "scalerValue": 4}
    path.write_text(json.dumps({**body, **fields}))
    return path


def simulate(*args: str) -> Any:
    return runner.invoke(app, ["simulate", *args])


def test_a_spec_file_and_a_csv_trace_replay_to_figures_worked_out_by_hand(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    trace.write_text("arrival_s,execution_s\n0,2\n")
    spec = spec_file(tmp_path, gpuTypeIds=["NVIDIA L4"])
    out = simulate("--endpoint", str(spec), "--trace", str(trace), "--cold-start", "3", "--no-grid", "--json")
    assert out.exit_code == 0, out.output
    body = json.loads(out.output)
    current = body["current"]
    # Cold start 3 s, running 2 s, idle 5 s until the idle timeout; billed 5 s of an L4.
    assert current["delayP99S"] == 3.0
    assert current["workerSeconds"] == {"IDLE": 5.0, "INITIALIZING": 3.0, "RUNNING": 2.0}
    assert current["costMicros"] == 5 * L4 and current["coldStarts"] == 1
    assert body["grid"] == [] and body["coldStartS"] == 3.0


def test_the_grid_and_a_suggestion_on_a_synthetic_trace(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, workersMax=6)
    saved = tmp_path / "saved.csv"
    args = ["--endpoint", str(spec), "--synthetic", "bursty", "--duration", "240", "--rate", "3"]
    out = simulate(
        *args, "--cold-start", "2", "--suggest", "--p99", "30", "--jobs", "1", "--save-trace", str(saved)
    )
    assert out.exit_code == 0, out.output
    assert "Current: QUEUE_DELAY 4, idleTimeout 5 s, workersMin 0, workersMax 6" in out.output
    assert "Suggested for p99 <= 30 s:" in out.output and '"scalerType":' in out.output
    assert saved.read_text().startswith("arrival_s,execution_s\n")
    as_json = json.loads(
        simulate(*args, "--cold-start", "2", "--suggest", "--p99", "30", "--jobs", "1", "--json").output
    )
    kinds = {g["scalerType"] for g in as_json["grid"]}
    assert kinds == {"QUEUE_DELAY", "REQUEST_COUNT", "PREDICTIVE"}
    pick = as_json["suggestion"]
    costs = [g["costMicros"] for g in [as_json["current"], *as_json["grid"]] if g["delayP99S"] <= 30]
    assert pick["costMicros"] == min(costs) and pick["delayP99S"] <= 30


def test_bad_input_is_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    spec = spec_file(tmp_path, scalerType="GUESS")
    out = simulate("--endpoint", str(spec), "--synthetic", "steady")
    assert out.exit_code == 1 and "scalerType must be one of" in out.output
    good = spec_file(tmp_path)
    out = simulate("--endpoint", str(good))
    assert out.exit_code == 1 and "give --trace FILE or --synthetic KIND" in out.output
    bad_trace = tmp_path / "bad.csv"
    bad_trace.write_text("0,1\nsoon,1\n")
    out = simulate("--endpoint", str(good), "--trace", str(bad_trace))
    assert out.exit_code == 1 and "line 2" in out.output
    out = simulate("--endpoint", str(good), "--synthetic", "spiky")
    assert out.exit_code == 1 and "synthetic must be one of" in out.output
    out = simulate("--endpoint", str(good), "--synthetic", "steady", "--suggest")
    assert out.exit_code == 1 and "--p99" in out.output
