"""The final record a runsync answers with: built as text around the stored output, it is the same
JSON, with its fields in the same order, as the record built as a dict."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ember.core.json_body import dump
from ember.core.wire import final_text, record

outputs = st.none() | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.characters(codec="utf-8")),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    outputs,
    st.sampled_from(["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]),
    st.floats(0, 1e9),
    st.none() | st.floats(0, 10),
    st.floats(0, 10),
    st.none() | st.text(max_size=5),
    st.none() | st.text(max_size=5),
    st.integers(0, 3),
)
def test_the_text_written_from_a_finished_jobs_facts_is_its_record(
    output: Any,
    state: str,
    created: float,
    started_after: float | None,
    ran: float,
    worker: str | None,
    error: str | None,
    retried: int,
) -> None:
    started = None if started_after is None else created + started_after
    completed = created + (started_after or 0.0) + ran
    row = {
        "id": "sync-1",
        "state": state,
        "created_at": created,
        "started_at": started,
        "completed_at": completed,
        "worker_id": worker,
        "output": None if output is None else dump(output),
        "error": error,
        "retried": retried,
    }
    text = final_text("sync-1", state, created, started, completed, worker, row["output"], error, retried)
    assert json.loads(text) == record(row)
    assert list(json.loads(text)) == list(record(row))  # the same fields in the same order
    assert text == dump(record(row))  # and the same text as the record encoded whole
