"""/v1 records give RunPod's integer fields as JSON integers (a typed client such as RunPod's Go CLI
refuses `5.0` where it expects an int), take whole-number floats (`30.0`) as integers, and refuse a
fraction with a 400 that names the field and says it must be an integer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ember.core.specs import EndpointSpec, ScalingSpec, spec_from_json, spec_to_json
from ember.store.schema import endpoints as endpoints_table
from tests.support.harness import Harness, build

# RunPod's REST API types each of these as an integer.
ENDPOINT_INTS = (
    "gpuCount",
    "workersMin",
    "workersMax",
    "idleTimeout",
    "scalerValue",
    "executionTimeoutMs",
    "containerDiskInGb",
    "release",
)


def run(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        h = build(tmp_path)
        try:
            await scenario(h)
        finally:
            await h.api.aclose()

    asyncio.run(main())


def _all_ints(record: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The fields of `names` that are not JSON integers (bool is not one)."""
    return {n: record.get(n) for n in names if type(record.get(n)) is not int}


def test_endpoint_records_give_integers_by_default_and_after_an_update(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        ep = await h.deploy("ints")
        assert ep["idleTimeout"] == 5 and ep["scalerValue"] == 4
        for record in (
            ep,
            (await h.api.get(f"/v1/endpoints/{ep['id']}")).json(),
            *(await h.api.get("/v1/endpoints")).json(),
        ):
            assert _all_ints(record, ENDPOINT_INTS) == {}, record
            assert type(record["scaling"]["desiredWorkers"]) is int
        changed = await h.api.patch(
            f"/v1/endpoints/{ep['id']}",
            json={"idleTimeout": 30.0, "scalerValue": 2, "workersMax": 4.0, "gpuCount": 1},
        )
        assert changed.status_code == 200, changed.text
        again = (await h.api.get(f"/v1/endpoints/{ep['id']}")).json()
        assert _all_ints(again, ENDPOINT_INTS) == {}, again
        assert (again["idleTimeout"], again["scalerValue"], again["workersMax"]) == (30, 2, 4)

    run(tmp_path, scenario)


def test_a_fraction_in_an_integer_field_is_a_400_saying_integer(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        ep = await h.deploy("fractions")
        src = str(h.home / "src" / "fractions")
        for field, value in (("idleTimeout", 2.5), ("scalerValue", 0.5), ("workersMax", 1.5)):
            for resp in (
                await h.api.post("/v1/endpoints", json={"name": "frac", "sourceDir": src, field: value}),
                await h.api.patch(f"/v1/endpoints/{ep['id']}", json={field: value}),
            ):
                assert resp.status_code == 400, resp.text
                body = resp.json()
                [problem] = body["problems"]
                assert problem["field"] == field and "integer" in problem["message"], body
                assert problem["value"] == value
        names = {e["name"] for e in (await h.api.get("/v1/endpoints")).json()}
        assert "frac" not in names
        unchanged = (await h.api.get(f"/v1/endpoints/{ep['id']}")).json()
        assert (unchanged["idleTimeout"], unchanged["scalerValue"]) == (5, 4)

    run(tmp_path, scenario)


def test_worker_release_usage_and_account_records_give_integers(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        ep = await h.deploy("counted", gpuTypeIds=["TEST_GPU"], workersMin=1, workersMax=1)
        await h.tick()
        [worker] = await h.workers(ep["id"])
        assert _all_ints(worker, ("gpuCount", "release", "failures")) == {}, worker
        h.clock.advance(3)
        await h.ping(ep["id"], worker["id"])
        await h.meter()
        usage = (await h.api.get("/v1/billing/usage", params={"endpointId": ep["id"]})).json()
        assert usage["items"] and all(type(i["seconds"]) is int for i in usage["items"]), usage
        [release] = (await h.api.get(f"/v1/endpoints/{ep['id']}/releases")).json()
        assert type(release["release"]) is int
        me = (await h.api.get("/v1/accounts/me")).json()
        assert _all_ints(me, ("maxWorkers", "workers")) == {}, me
        tpl = await h.api.post(
            "/v1/templates", json={"name": "t", "imageName": "x", "containerDiskInGb": 20.0}
        )
        assert tpl.status_code == 201 and type(tpl.json()["containerDiskInGb"]) is int, tpl.text

    run(tmp_path, scenario)


def test_a_spec_stored_with_float_scaling_reads_back_as_integers(tmp_path: Path) -> None:
    legacy = spec_to_json(EndpointSpec(name="old")).replace('"idle_timeout_s": 5', '"idle_timeout_s": 2.5')
    legacy = legacy.replace('"scaler_value": 4', '"scaler_value": 4.0')
    assert '"idle_timeout_s": 2.5' in legacy and '"scaler_value": 4.0' in legacy
    assert spec_from_json(legacy).scaling == ScalingSpec(idle_timeout_s=3, scaler_value=4)

    async def scenario(h: Harness) -> None:
        ep = await h.deploy("stored-floats")
        with h.store.db.engine.begin() as conn:  # a row as an earlier Ember wrote it
            row = conn.execute(sa.select(endpoints_table.c.spec).where(endpoints_table.c.id == ep["id"]))
            spec = row.scalar_one().replace('"idle_timeout_s": 5', '"idle_timeout_s": 5.0')
            conn.execute(sa.update(endpoints_table).where(endpoints_table.c.id == ep["id"]).values(spec=spec))
        record = (await h.api.get(f"/v1/endpoints/{ep['id']}")).json()
        assert type(record["idleTimeout"]) is int and record["idleTimeout"] == 5, record

    run(tmp_path, scenario)
