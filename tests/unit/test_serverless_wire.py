"""Result wrapping and job-take validation of the worker SDK, against spec §1.5-1.6."""

from __future__ import annotations

import json

import pytest

from ember.serverless import wire


@pytest.mark.parametrize(
    ("returned", "body"),
    [
        ({"a": 1}, {"output": {"a": 1}}),
        ({"error": "bad input", "partial": 1}, {"output": {"partial": 1}, "error": "bad input"}),
        ({"error": "bad input"}, {"error": "bad input"}),
        ({"x": 1, "refresh_worker": True}, {"output": {"x": 1}, "stopPod": True}),
        ({"error": None, "a": 1}, {"output": {"a": 1}}),
        ({"refresh_worker": False}, {}),
        ({}, {}),
        (None, {"output": None}),
        ("hello", {"output": "hello"}),
        (False, {"output": False}),
        (0, {"output": 0}),
        ([], {"output": []}),
        ([1, 2], {"output": [1, 2]}),
    ],
)
def test_wrap_return_matches_runpods_table(returned, body):
    assert wire.wrap_return(returned) == body


def test_wrap_return_leaves_the_handlers_dict_untouched():
    returned = {"error": "e", "refresh_worker": True, "k": 1}
    wire.wrap_return(returned)
    assert returned == {"error": "e", "refresh_worker": True, "k": 1}


def test_exception_error_is_a_json_string_with_runpods_fields():
    body = wire.exception_error(
        ValueError("boom"), "Traceback…", hostname="h1", worker_id="wk-1", version="9"
    )
    assert list(body) == ["error"]
    info = json.loads(body["error"])
    assert info == {
        "error_type": "<class 'ValueError'>",
        "error_message": "boom",
        "error_traceback": "Traceback…",
        "hostname": "h1",
        "worker_id": "wk-1",
        "ember_version": "9",
    }


def test_generator_exception_error_is_a_plain_string():
    body = wire.generator_exception_error(RuntimeError("gen boom"), "TB")
    assert body == {"error": "handler: gen boom \ntraceback: TB"}


@pytest.mark.parametrize(
    ("chunk", "error"),
    [({"error": "chunk err"}, "chunk err"), ({"error": 7, "x": 1}, "7"), ({"error": ""}, None), ("e", None)],
)
def test_stream_chunk_error_only_for_dicts_with_a_truthy_error(chunk, error):
    assert wire.stream_chunk_error(chunk) == error


def test_encode_body_is_raw_utf8():
    assert wire.encode_body({"output": {"t": "héllo ✓"}}) == '{"output": {"t": "héllo ✓"}}'.encode()


def test_encode_body_turns_an_unserializable_output_into_an_error():
    body = json.loads(wire.encode_body({"output": {1, 2}, "stopPod": True}))
    assert "not JSON-serializable" in body["error"]
    assert body["stopPod"] is True


JSON = "application/json"


@pytest.mark.parametrize("status", [204, 400])
def test_take_204_and_400_mean_no_job_silently(status):
    assert wire.parse_take_response(status, "", b"") == wire.TakeAnswer()


def test_take_429_asks_for_a_pause():
    answer = wire.parse_take_response(429, JSON, b"")
    assert answer.jobs == [] and answer.retry_after_s == 5.0


@pytest.mark.parametrize("status", [401, 404, 500, 503])
def test_take_errors_are_failures(status):
    answer = wire.parse_take_response(status, JSON, b"{}")
    assert answer.failed and answer.jobs == [] and str(status) in answer.problems[0]


def test_take_single_job_object_passes_whole():
    job = {"id": "j1", "input": {"a": 1}, "webhook": "http://x", "s3Config": {"k": 1}, "extra": 2}
    answer = wire.parse_take_response(200, "application/json; charset=utf-8", json.dumps(job).encode())
    assert answer.jobs == [job] and answer.problems == []


def test_take_accepts_null_input():
    assert wire.parse_take_response(200, JSON, b'{"id": "j", "input": null}').jobs == [
        {"id": "j", "input": None}
    ]


def test_take_batch_keeps_good_jobs_and_skips_malformed_ones():
    body = json.dumps(
        [
            {"id": "a", "input": 1},
            {"input": 2},
            "x",
            {"id": 5, "input": 3},
            {"id": "", "input": 4},
            {"id": "b"},
            {"id": "c", "input": None},
        ]
    ).encode()
    answer = wire.parse_take_response(200, JSON, body)
    assert [job["id"] for job in answer.jobs] == ["a", "c"]
    assert len(answer.problems) == 5
    assert not answer.failed


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b'{"id": "j", "input": 1}'),
        (JSON, b"not json"),
        (JSON, b'"just a string"'),
        (JSON, b"42"),
    ],
)
def test_take_unusable_answers_give_no_job_and_a_problem(content_type, body):
    answer = wire.parse_take_response(200, content_type, body)
    assert answer.jobs == [] and len(answer.problems) == 1


@pytest.mark.parametrize("body", [b"", b"[]", b"  "])
def test_take_empty_answers_give_no_job_and_no_problem(body):
    assert wire.parse_take_response(200, JSON, body) == wire.TakeAnswer()


def test_stop_answer_keeps_string_ids_only():
    assert wire.parse_stop_response(200, JSON, b'{"jobsToStop": ["a", 3, null, "b"]}') == ["a", "b"]


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (204, "", b""),
        (200, "text/plain", b'{"jobsToStop": ["a"]}'),
        (200, JSON, b'["a"]'),
        (200, JSON, b"{"),
        (500, JSON, b'{"jobsToStop": ["a"]}'),
        (200, JSON, b'{"jobsToStop": "a"}'),
    ],
)
def test_stop_answer_anything_else_means_none(status, content_type, body):
    assert wire.parse_stop_response(status, content_type, body) == []


def test_done_answer_with_piggy_backed_jobs_gives_them_whole():
    jobs = [{"id": "j1", "input": {"a": 1}, "webhook": "http://h"}, {"id": "j2", "input": None}]
    body = json.dumps({"status": "ok", "jobs": jobs}).encode()
    assert wire.parse_done_response(200, JSON, body) == wire.TakeAnswer(jobs=jobs)


def test_done_answer_skips_malformed_piggy_backed_jobs_with_a_problem_each():
    body = b'{"status": "ok", "jobs": [{"id": "good", "input": 1}, {"input": 2}, {"id": 7, "input": 3}, "x"]}'
    answer = wire.parse_done_response(200, JSON, body)
    assert answer.jobs == [{"id": "good", "input": 1}]
    assert len(answer.problems) == 3


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, JSON, b'{"status": "ok"}'),  # an Ember server with no queued job, or one ignoring take
        (200, JSON, b'{"status": "ok", "jobs": []}'),
        (200, JSON, b'{"status": "ignored"}'),
        (200, JSON, b""),
        (200, "text/plain", b"OK"),  # RunPod-like answers that are not JSON at all
        (200, JSON, b'{"jobs": '),
        (200, JSON, b'[{"jobs": [{"id": "j", "input": 1}]}]'),
        (200, JSON, b'{"jobs": {"id": "j", "input": 1}}'),
        (200, JSON, b'{"jobs": null}'),
        (204, "", b""),
        (500, JSON, b'{"jobs": [{"id": "j", "input": 1}]}'),
    ],
)
def test_done_answer_anything_else_means_no_job_and_no_problem(status, content_type, body):
    assert wire.parse_done_response(status, content_type, body) == wire.TakeAnswer()
