"""`ember simulate`: replay a trace through the real scaler on a virtual clock (`core.simulate`) for an
endpoint's settings and a grid of alternatives, and print cost, queue delay and worker-seconds; with
--suggest, the cheapest settings that meet a p99 queue-delay target. The trace is a CSV file, a
synthetic one, or the endpoint's own recent traffic (GET /v1/endpoints/{ref}/traffic)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import typer

from ember.cli.answers import EndpointRecord, Traffic
from ember.cli.http import call, err, fail, print_json
from ember.cli.output import console, print_table
from ember.core.billing import PriceTable
from ember.core.errors import InvalidInput
from ember.core.money import format_dollars
from ember.core.scaler import DEFAULT_COLD_START_S
from ember.core.simgrid import Grid, alternatives, cheapest, frontier
from ember.core.simulate import SimConfig, SimResult
from ember.core.simulate import simulate as replay
from ember.core.specs import ScalingSpec, from_wire
from ember.core.traces import SYNTHETIC, Shape, Trace, parse_csv, synthetic, trace_from_jobs

STATES = ("INITIALIZING", "IDLE", "RUNNING")
SCALING_FIELDS = ("workersMin", "workersMax", "idleTimeout", "scalerType", "scalerValue")


@dataclass(frozen=True)
class Setup:
    """What is simulated: the settings, where they came from, the worker's price and cold start."""

    scaling: ScalingSpec
    label: str
    endpoint_id: str | None
    cfg: SimConfig
    cold_note: str


def simulate(
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        help="An endpoint (id or name) whose settings, traffic and cold starts are used, or a spec.json "
        "file with the endpoint's fields (workersMin, workersMax, idleTimeout, scalerType, "
        "scalerValue, gpuTypeIds, gpuCount)",
    ),
    trace_file: Path | None = typer.Option(
        None, "--trace", help="CSV trace: one job a line, arrival_s,execution_s (arrival from the start)"
    ),
    kind: str | None = typer.Option(
        None, "--synthetic", help=f"Use a synthetic trace instead: {', '.join(SYNTHETIC)}"
    ),
    duration: float = typer.Option(600.0, "--duration", help="Synthetic: seconds of arrivals"),
    rate: float = typer.Option(
        2.0, "--rate", help="Synthetic: jobs per second (bursty: while on; diurnal: the mean)"
    ),
    execution: float = typer.Option(1.0, "--execution", help="Synthetic: mean execution time, seconds"),
    on_s: float = typer.Option(30.0, "--on", help="Bursty: seconds of each burst"),
    off_s: float = typer.Option(90.0, "--off", help="Bursty: seconds between bursts"),
    off_rate: float = typer.Option(0.05, "--off-rate", help="Bursty: jobs per second between bursts"),
    seed: int = typer.Option(1, "--seed", help="Synthetic: the seed (the same seed, the same trace)"),
    since: int = typer.Option(
        3600, "--since", help="With an endpoint and no trace: replay its jobs of the last SECONDS"
    ),
    cold_start: float | None = typer.Option(
        None, "--cold-start", help="Seconds from launch to ready (default: the endpoint's median on record)"
    ),
    tick: float | None = typer.Option(
        None, "--tick", help="The lifecycle tick simulated, seconds (default: the server's, else 0.5)"
    ),
    suggest: bool = typer.Option(False, "--suggest", help="Name the cheapest settings that meet --p99"),
    p99: float | None = typer.Option(None, "--p99", help="With --suggest: the p99 queue delay to meet, s"),
    apply: bool = typer.Option(False, "--apply", help="With --suggest and an endpoint: set the suggestion"),
    show_all: bool = typer.Option(False, "--all", help="Print every alternative, not the best at each p99"),
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Also simulate the grid of alternatives"),
    workers: int = typer.Option(0, "--jobs", help="Processes for the grid (default: one per CPU)"),
    save_trace: Path | None = typer.Option(None, "--save-trace", help="Write the trace replayed as CSV"),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON"),
) -> None:
    """Replay a trace through Ember's scaler on a virtual clock: cost, queue delay and worker-seconds
    for the current settings and a grid of alternatives."""
    if suggest and p99 is None:
        fail("--suggest needs --p99 SECONDS, the p99 queue delay to meet")
    if apply and not suggest:
        fail("--apply sets the suggestion: give --suggest --p99 SECONDS too")
    if (tick is not None and tick <= 0) or (cold_start is not None and cold_start < 0):
        fail("--tick must be > 0 and --cold-start >= 0")
    shape = Shape(
        kind=kind or "steady",
        duration_s=duration,
        rate_per_s=rate,
        execution_s=execution,
        on_s=on_s,
        off_s=off_s,
        off_rate_per_s=off_rate,
        seed=seed,
    )
    setup, traffic = _setup(endpoint, cold_start, tick, need_traffic=not (trace_file or kind), since=since)
    trace = _trace(trace_file, shape if kind else None, traffic, since)
    if not trace.jobs:
        fail("the trace has no job to replay")
    if save_trace is not None:
        save_trace.write_text(trace.to_csv())
    mean_exec = sum(j.execution_s for j in trace.jobs) / len(trace.jobs)
    cfg = replace(setup.cfg, known_execution_s=mean_exec)
    specs = alternatives(setup.scaling, Grid()) if grid else [setup.scaling]
    results = _run_all(specs, trace, cfg, workers)
    current, others = results[0], results[1:]
    pick = cheapest(results, p99) if suggest and p99 is not None else None
    if as_json:
        print_json(
            {
                "settings": setup.label,
                "trace": {
                    "jobs": len(trace.jobs),
                    "durationS": trace.duration_s,
                    "meanExecutionS": mean_exec,
                },
                "coldStartS": cfg.cold_start_s,
                "current": _result_json(current),
                "grid": [_result_json(r) for r in others],
                "suggestion": _result_json(pick) if pick is not None else None,
            }
        )
    else:
        _print_header(setup, trace, mean_exec, cfg)
        _print_results(current, others, show_all)
        if suggest and p99 is not None:
            _print_suggestion(pick, current, p99)
    if apply and pick is not None:
        if setup.endpoint_id is None:
            fail("--apply needs --endpoint to name an endpoint on the server, not a spec file")
        call("PATCH", f"/v1/endpoints/{setup.endpoint_id}", json_body=_wire(pick.scaling))
        if not as_json:
            console.print(f"Applied to {setup.endpoint_id}.")


def _setup(
    endpoint: str | None, cold_start: float | None, tick: float | None, *, need_traffic: bool, since: int
) -> tuple[Setup, Traffic | None]:
    base = SimConfig(
        tick_s=tick or SimConfig.tick_s,
        cold_start_s=DEFAULT_COLD_START_S if cold_start is None else cold_start,
    )
    given = "given" if cold_start is not None else "assumed (none on record; set --cold-start)"
    if endpoint is None or endpoint.endswith(".json") or Path(endpoint).is_file():
        scaling, gpu_type, gpu_count, label = _spec_file(endpoint)
        cfg = replace(base, gpu_type=gpu_type, gpu_count=gpu_count)
        if need_traffic:
            fail("give --trace FILE or --synthetic KIND: a spec file has no traffic of its own")
        return Setup(scaling, label, None, cfg, given), None
    record: EndpointRecord = call("GET", f"/v1/endpoints/{endpoint}")
    scaling = ScalingSpec(
        workers_min=record["workersMin"],
        workers_max=record["workersMax"],
        idle_timeout_s=record["idleTimeout"],
        scaler_type=record["scalerType"],
        scaler_value=record["scalerValue"],
    )
    traffic: Traffic = call(
        "GET", f"/v1/endpoints/{record['id']}/traffic", params={"seconds": since, "limit": 100_000}
    )
    price = traffic["price"]
    # The server's price of this worker, whatever its GPU: priced as a worker without one.
    prices = PriceTable(
        gpu_micros_per_s={},
        cpu_micros_per_s=int(price["flexMicrosPerS"]),
        active_discount_pct=int(price["activeDiscountPct"]),
    )
    server = traffic.get("server")
    hold_s, tick_s = (server["takeHoldS"], server["tickS"]) if server is not None else (None, None)
    cfg = replace(base, prices=prices, take_hold_s=float(hold_s or base.take_hold_s))
    if tick is None and tick_s:
        cfg = replace(cfg, tick_s=float(tick_s))
    note = given
    measured = traffic.get("coldStartMedianS")
    if cold_start is None and measured is not None:
        cfg = replace(cfg, cold_start_s=float(measured))
        note = f"the median of {len(traffic['coldStartsS'])} on record"
    label = f"endpoint {record['name']} ({record['id']}), worker {price['gpuTypeId'] or 'CPU'}"
    return Setup(scaling, label, record["id"], cfg, note), traffic


def _spec_file(path: str | None) -> tuple[ScalingSpec, str | None, int, str]:
    if path is None:
        return ScalingSpec(), None, 1, "the default settings"
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except ValueError as exc:
        fail(f"{path} is not JSON: {exc}")
    if not isinstance(data, dict):
        fail(f"{path} must hold a JSON object of endpoint fields")
    data.setdefault("name", "simulated")
    spec, problems = from_wire(data)
    if spec is None:
        fail(f"{path}: " + "; ".join(f"{p.field} {p.message}" for p in problems))
    assert spec is not None
    gpu_type = spec.gpu_type_ids[0] if spec.gpu_type_ids else None
    return spec.scaling, gpu_type, spec.gpu_count, f"{path}, worker {gpu_type or 'CPU'}"


def _trace(file: Path | None, shape: Shape | None, traffic: Traffic | None, since: int) -> Trace:
    try:
        if file is not None:
            try:
                return parse_csv(file.read_text())
            except OSError as exc:
                fail(f"cannot read {file}: {exc.strerror or exc}")
        if shape is not None:
            return synthetic(shape)
    except InvalidInput as exc:
        fail(exc.message)
    assert traffic is not None
    rows = [(j["createdAt"], j["startedAt"], j["completedAt"]) for j in traffic["jobs"]]
    trace = trace_from_jobs(rows)
    if not trace.jobs:
        fail(f"the endpoint finished no job in the last {since} s: give --trace FILE or --synthetic KIND")
    return trace


def _run_all(specs: list[ScalingSpec], trace: Trace, cfg: SimConfig, processes: int) -> list[SimResult]:
    count = processes or min(len(specs), os.cpu_count() or 1)
    if count <= 1 or len(specs) == 1:
        return [replay(s, trace, cfg) for s in specs]
    if console.is_terminal:
        err.print(f"simulating {len(specs)} settings on {count} processes…")
    with ProcessPoolExecutor(count) as pool:
        futures = [pool.submit(replay, s, trace, cfg) for s in specs]
        return [f.result() for f in futures]


def _describe(s: ScalingSpec) -> str:
    return (
        f"{s.scaler_type} {s.scaler_value}, idleTimeout {s.idle_timeout_s} s, "
        f"workersMin {s.workers_min}, workersMax {s.workers_max}"
    )


def _figures(r: SimResult) -> str:
    spent = ", ".join(f"{st.lower()} {r.worker_s.get(st, 0.0):.0f}" for st in STATES)
    return (
        f"cost ${format_dollars(r.cost_micros)} · queue delay p50 {r.delay_p(50):.2f} s, "
        f"p95 {r.delay_p(95):.2f} s, p99 {r.delay_p(99):.2f} s · worker-seconds {spent} · "
        f"{r.cold_starts} cold starts"
    )


def _print_header(setup: Setup, trace: Trace, mean_exec: float, cfg: SimConfig) -> None:
    console.print(f"Settings of {setup.label}", markup=False)
    console.print(
        f"Trace: {len(trace.jobs)} jobs over {trace.duration_s:.0f} s, mean execution {mean_exec:.2f} s; "
        f"cold start {cfg.cold_start_s:.2f} s ({setup.cold_note}); tick {cfg.tick_s} s",
        markup=False,
    )


def _print_results(current: SimResult, others: list[SimResult], show_all: bool) -> None:
    console.print(f"Current: {_describe(current.scaling)}", markup=False)
    console.print(f"  {_figures(current)}", markup=False)
    if not others:
        return
    rows = sorted(others, key=lambda r: (r.cost_micros, r.delay_p(99))) if show_all else frontier(others)
    title = "every alternative" if show_all else "the cheapest alternative at each p99 (--all for all)"
    console.print(f"Grid: {len(others)} alternatives; {title}:", markup=False)
    print_table(
        (
            "SCALER",
            "VALUE",
            "IDLE S",
            "MIN",
            "COST $",
            "P50 S",
            "P95 S",
            "P99 S",
            "INIT S",
            "IDLE S",
            "RUN S",
            "STARTS",
        ),
        (
            (
                r.scaling.scaler_type,
                r.scaling.scaler_value,
                r.scaling.idle_timeout_s,
                r.scaling.workers_min,
                format_dollars(r.cost_micros),
                f"{r.delay_p(50):.2f}",
                f"{r.delay_p(95):.2f}",
                f"{r.delay_p(99):.2f}",
                *(f"{r.worker_s.get(st, 0.0):.0f}" for st in STATES),
                r.cold_starts,
            )
            for r in rows
        ),
    )


def _print_suggestion(pick: SimResult | None, current: SimResult, p99: float) -> None:
    if pick is None:
        console.print(f"No setting simulated meets a p99 queue delay of {p99:g} s.", markup=False)
        return
    saving = ""
    if current.cost_micros:
        change = (pick.cost_micros - current.cost_micros) / current.cost_micros * 100
        saving = f" ({change:+.0f} % against the current settings)"
    console.print(f"Suggested for p99 <= {p99:g} s: {_describe(pick.scaling)}", markup=False)
    console.print(f"  {_figures(pick)}{saving}", markup=False)
    console.print(f"  PATCH /v1/endpoints/{{id}} {json.dumps(_wire(pick.scaling))}", markup=False)


def _wire(s: ScalingSpec) -> dict[str, int | str]:
    values = (s.workers_min, s.workers_max, s.idle_timeout_s, s.scaler_type, s.scaler_value)
    return dict(zip(SCALING_FIELDS, values, strict=True))


def _result_json(r: SimResult) -> dict[str, object]:
    return {
        **_wire(r.scaling),
        "cost": format_dollars(r.cost_micros),
        "costMicros": r.cost_micros,
        "delayP50S": r.delay_p(50),
        "delayP95S": r.delay_p(95),
        "delayP99S": r.delay_p(99),
        "workerSeconds": {k: round(v, 3) for k, v in sorted(r.worker_s.items())},
        "billedSeconds": r.billed_s,
        "coldStarts": r.cold_starts,
        "peakWorkers": r.peak_workers,
        "reasons": dict(sorted(r.reasons.items())),
    }
