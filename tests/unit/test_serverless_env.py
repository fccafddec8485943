"""URL templates and environment reading of the worker SDK, against spec §1.2-1.3."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from ember.serverless import env

TAKE = "http://cp:8000/v2/ep1/job-take/$ID?gpu=NVIDIA+TEST"
DONE = "http://cp:8000/v2/ep1/job-done/$RUNPOD_POD_ID/$ID?gpu=NVIDIA+TEST"
PING = "http://cp:8000/v2/ep1/ping/$RUNPOD_POD_ID?gpu=NVIDIA+TEST"


def test_single_take_when_one_slot_is_free():
    assert env.take_url(TAKE, "wk-1", free_slots=1, holding_jobs=False) == (
        "http://cp:8000/v2/ep1/job-take/wk-1?gpu=NVIDIA+TEST&job_in_progress=0"
    )
    assert env.take_url(TAKE, "wk-1", free_slots=1, holding_jobs=True).endswith("&job_in_progress=1")


def test_batch_take_when_more_slots_are_free():
    assert env.take_url(TAKE, "wk-1", free_slots=3, holding_jobs=True) == (
        "http://cp:8000/v2/ep1/job-take-batch/wk-1?gpu=NVIDIA+TEST&batch_size=3&job_in_progress=1"
    )


def test_stop_url_keeps_the_query_and_needs_the_job_take_segment():
    assert env.stop_url(TAKE, "wk-1") == "http://cp:8000/v2/ep1/job-stop/wk-1?gpu=NVIDIA+TEST"
    assert env.stop_url("http://cp/take/$ID?", "wk-1") is None


def test_result_urls_substitute_worker_then_job():
    assert env.result_url(DONE, "wk-1", "job-9", is_stream=False) == (
        "http://cp:8000/v2/ep1/job-done/wk-1/job-9?gpu=NVIDIA+TEST&isStream=false"
    )
    assert env.result_url(DONE, "wk-1", "job-9", is_stream=True).endswith("&isStream=true")


def test_with_take_appends_the_piggy_back_request_to_a_job_done_url():
    url = env.result_url(DONE, "wk-1", "job-9", is_stream=False)
    assert env.with_take(url, 1) == url + "&take=1"
    assert parse_qs(urlsplit(env.with_take(url, 2)).query) == {
        "gpu": ["NVIDIA TEST"],
        "isStream": ["false"],
        "take": ["2"],
    }


def test_ping_url_lists_held_jobs_as_csv_and_omits_them_when_idle():
    busy = urlsplit(env.ping_url(PING, "wk-1", ["a", "b"], version="0.1.0"))
    assert busy.path == "/v2/ep1/ping/wk-1"
    assert parse_qs(busy.query) == {"gpu": ["NVIDIA TEST"], "job_id": ["a,b"], "ember_version": ["0.1.0"]}
    idle = urlsplit(env.ping_url(PING, "wk-1", [], version="0.1.0"))
    assert "job_id" not in parse_qs(idle.query)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("http://cp/ping/$RUNPOD_POD_ID", "http://cp/ping/w?ember_version=1"),
        ("http://cp/ping/$RUNPOD_POD_ID?", "http://cp/ping/w?ember_version=1"),
        ("http://cp/ping/$RUNPOD_POD_ID?a=1&", "http://cp/ping/w?a=1&ember_version=1"),
    ],
)
def test_ping_url_joins_the_query_cleanly(template, expected):
    assert env.ping_url(template, "w", [], version="1") == expected


def test_ping_job_ids_are_cut_at_a_comma_boundary():
    ids = [f"job-{i:06d}" for i in range(10_000)]
    csv = env.truncate_csv(ids, env.PING_JOB_IDS_MAX_BYTES)
    assert len(csv.encode()) <= env.PING_JOB_IDS_MAX_BYTES
    assert all(part in ids for part in csv.split(","))
    assert env.truncate_csv(["ab", "cd"], 4) == "ab"


@pytest.mark.parametrize(
    ("raw", "interval_s"),
    [
        (None, 10.0),
        ("", 10.0),
        ("junk", 10.0),
        ("0", 10.0),
        ("500", 1.0),
        ("1000", 1.0),
        ("2500", 2.0),
        ("10000", 10.0),
    ],
)
def test_ping_interval_is_milliseconds_and_at_least_one_second(raw, interval_s):
    assert env.parse_ping_interval_s(raw) == interval_s


def test_from_environ_reads_the_runpod_variables():
    worker_env = env.WorkerEnv.from_environ(
        {
            "RUNPOD_WEBHOOK_GET_JOB": TAKE,
            "RUNPOD_WEBHOOK_POST_OUTPUT": DONE,
            "RUNPOD_WEBHOOK_PING": PING,
            "RUNPOD_AI_API_KEY": "wk-secret",
            "RUNPOD_POD_ID": "wk-1",
            "RUNPOD_PING_INTERVAL": "3000",
            "RUNPOD_ENDPOINT_ID": "ep1",
            "RUNPOD_POD_HOSTNAME": "node-a",
        }
    )
    assert worker_env.take_template == TAKE and worker_env.done_template == DONE
    assert worker_env.stream_template is None
    assert (worker_env.api_key, worker_env.worker_id, worker_env.hostname) == ("wk-secret", "wk-1", "node-a")
    assert worker_env.ping_interval_s == 3.0 and worker_env.endpoint_id == "ep1"
    assert worker_env.pings_enabled


@pytest.mark.parametrize("missing", ["RUNPOD_AI_API_KEY", "RUNPOD_POD_ID", "RUNPOD_WEBHOOK_PING"])
def test_pings_need_key_pod_id_and_url(missing):
    environ = {"RUNPOD_AI_API_KEY": "k", "RUNPOD_POD_ID": "wk-1", "RUNPOD_WEBHOOK_PING": PING}
    del environ[missing]
    assert not env.WorkerEnv.from_environ(environ).pings_enabled


def test_unset_take_url_means_no_production_mode():
    assert env.WorkerEnv.from_environ({}).take_template is None
