"""Prefixed ids: URL-path-safe; a job's token sorts by creation time and is otherwise random."""

from __future__ import annotations

import os

import pytest

from ember.core.ids import is_safe_id, job_token, make_id


def test_job_tokens_sort_by_time_and_are_32_hex_digits() -> None:
    earlier = job_token(1_700_000_000.001, os.urandom(10))
    later = job_token(1_700_000_000.002, os.urandom(10))
    assert earlier < later
    for token in (earlier, later):
        assert len(token) == 32 and int(token, 16) >= 0
    assert job_token(5.0, bytes(10)) == "000000001388" + "00" * 10  # a test clock's small times work
    assert job_token(-1.0, bytes(10)).startswith("000000000000")
    assert is_safe_id(make_id("sync_job", earlier))


def test_a_job_token_takes_ten_random_bytes() -> None:
    with pytest.raises(ValueError):
        job_token(1.0, os.urandom(16))
