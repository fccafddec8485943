"""deploy/grafana/ember-dashboard.json: every query names only metrics the app's `/metrics` exports (read
from a real app's exposition, so a renamed metric breaks this test, not the dashboard), and every metric
the app exports is on some panel."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import ADMIN_KEY, build

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ember-dashboard.json"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}
METRIC_NAME = re.compile(r"\bember_[a-z0-9_]+\b")


def exported(tmp_path: Path) -> dict[str, set[str]]:
    """Family name -> the sample names the app's /metrics may carry for it."""

    async def scrape() -> str:
        h = build(tmp_path)
        resp = await h.api.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        await h.api.aclose()
        assert resp.status_code == 200, resp.text
        return resp.text

    return {
        f.name: {f.name + suffix for suffix in SUFFIXES[f.type]}
        for f in text_string_to_metric_families(asyncio.run(scrape()))
        if f.name.startswith("ember_") and not f.name.endswith("_created")  # a counter's start time
    }


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets' `expr` and template variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield value if isinstance(value, str) else str(value.get("query", ""))
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_dashboard_queries_name_only_exported_metrics_and_cover_them_all(tmp_path: Path) -> None:
    families = exported(tmp_path)
    assert len(families) >= 14, sorted(families)
    samples = set().union(*families.values())
    dashboard = json.loads(DASHBOARD.read_text())
    texts = list(queries(dashboard))
    assert len(texts) > 20
    used = {name for text in texts for name in METRIC_NAME.findall(text)}
    assert used <= samples, f"not exported: {sorted(used - samples)}"
    unused = {family for family, names in families.items() if not names & used}
    assert not unused, f"exported but on no panel: {sorted(unused)}"


def test_dashboard_panels_have_unique_ids_and_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
            assert panel["targets"], panel["title"]
