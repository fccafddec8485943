"""`query_param` reads the job path's plain queries itself and agrees with Starlette's parser."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from ember.api.deps import query_param

words = st.text(alphabet="ab1_=&%+.", max_size=12)


def _request(query: bytes) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query, "headers": []})


@given(words, st.sampled_from(["a", "b", "a1", "take"]))
def test_it_agrees_with_starlette(query: str, name: str) -> None:
    raw = query.encode()
    assert query_param(_request(raw), name) == _request(raw).query_params.get(name)


def test_plain_queries() -> None:
    assert query_param(_request(b""), "take") is None
    assert query_param(_request(b"take=1"), "take") == "1"
    assert query_param(_request(b"take=1&take=2"), "take") == "2"
    assert query_param(_request(b"job_in_progress=1&take"), "take") == ""
    assert query_param(_request(b"wait=%31%30"), "wait") == "10"
