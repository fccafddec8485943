"""The server's log format (`ember.logs`): with EMBER_LOG_FORMAT=json each record is one JSON object with
ts, level, logger, message and the ids passed as `extra=`; uvicorn's access lines get the ids their path
names; a bad format value is refused naming the choices."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from ember.logs import ids_in_path, logging_config, parse_log_format
from ember.settings import Settings

EP, WK = "ep-0123456789ab", "wk-ba9876543210"
JOB, SYNC = "job-" + "a1" * 16, "sync-" + "b2" * 16


@pytest.fixture
def json_lines() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through the formatter `logging_config("json")` configures, into a buffer."""
    formatter_spec = logging_config("json")["formatters"]["ember"]
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter_spec["()"]())
    logger = logging.getLogger("ember.test_logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, out
    logger.removeHandler(handler)


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_carries_ts_level_logger_message_and_the_ids(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, out = json_lines
    ids = {"job_id": "job-1", "worker_id": "wk-2", "endpoint_id": "ep-3"}
    logger.info("job_timed_out job=%s worker=%s", "job-1", "wk-2", extra=ids)
    logger.warning("no ids here")
    first, second = records(out)
    assert first["level"] == "INFO" and first["logger"] == "ember.test_logs"
    assert first["message"] == "job_timed_out job=job-1 worker=wk-2"
    assert {k: first[k] for k in ids} == ids
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert second["message"] == "no ids here" and not set(ids) & set(second)


def test_an_exception_is_kept_in_its_line(json_lines: tuple[logging.Logger, io.StringIO]) -> None:
    logger, out = json_lines
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("loop_crash loop=%s", "reaper", extra={"endpoint_id": "ep-1"})
    [line] = out.getvalue().splitlines()  # one line: the traceback is escaped inside the object
    record = json.loads(line)
    assert record["level"] == "ERROR" and "ValueError: boom" in record["exc_info"]
    assert record["endpoint_id"] == "ep-1"


def test_an_access_line_names_the_request_and_the_ids_in_its_path() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging_config("json")["formatters"]["ember"]["()"]())
    access = logging.getLogger("uvicorn.access")
    saved = (access.handlers[:], access.level, access.propagate)
    access.handlers, access.propagate = [handler], False
    access.setLevel(logging.INFO)
    try:
        path = f"/v2/{EP}/job-done/{WK}/{SYNC}?isStream=false"
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", path, "1.1", 200)
    finally:
        access.handlers, access.propagate = saved[0], saved[2]
        access.setLevel(saved[1])
    [record] = records(out)
    assert record["method"] == "POST" and record["path"] == path and record["status"] == 200
    assert (record["endpoint_id"], record["worker_id"], record["job_id"]) == (EP, WK, SYNC)


def test_ids_in_path_recognise_prefixed_ids_only() -> None:
    assert ids_in_path(f"/v2/{EP}/status/{JOB}") == {"endpoint_id": EP, "job_id": JOB}
    assert ids_in_path(f"/v1/workers/{WK}/history") == {"worker_id": WK}
    assert ids_in_path(f"/v2/{EP}/job-take/{WK}") == {"endpoint_id": EP, "worker_id": WK}
    assert ids_in_path("/v2/my-endpoint/run") == {}
    assert ids_in_path("/v2/ep-hello/job-done/wk-x/job-done") == {}


def test_the_text_format_is_one_plain_line_and_uvicorn_writes_through_the_root_handler() -> None:
    cfg = logging_config("text", "debug", access_log=True)
    assert cfg["formatters"]["ember"] == {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    assert cfg["root"] == {"level": "DEBUG", "handlers": ["stderr"]}
    assert cfg["loggers"]["uvicorn.access"] == {"level": "INFO", "handlers": [], "propagate": True}
    assert logging_config("json")["loggers"]["uvicorn.access"]["propagate"] is False


@pytest.mark.parametrize("raw, value", [("json", "json"), ("TEXT", "text"), (" Json ", "json")])
def test_log_format_values_are_normalised(raw: str, value: str) -> None:
    assert parse_log_format(raw) == value
    assert Settings(log_format=raw).log_format == value


def test_a_bad_log_format_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="must be one of text, json, got 'xml'"):
        parse_log_format("xml")
    with pytest.raises(ValidationError) as info:
        Settings(log_format="logfmt")
    [error] = info.value.errors()
    assert error["loc"] == ("log_format",) and "text, json" in error["msg"]
