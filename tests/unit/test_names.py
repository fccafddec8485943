"""Names (accounts, templates, volumes, registry logins): 1-128 printable characters of any script;
control and invisible characters and over-long names are refused, every problem at once."""

from __future__ import annotations

import pytest

from ember.core.names import NAME_MAX_CHARS, name_problems


@pytest.mark.parametrize(
    "name", ["a", "my-template_v2.1", "Team A (prod)", "modèle", "模型", "x" * NAME_MAX_CHARS, "a:b/c@d"]
)
def test_printable_names_of_any_script_are_fine(name: str) -> None:
    assert name_problems(name) == []


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("x" * (NAME_MAX_CHARS + 1), "at most"),
        ("x" * 100_000, "at most"),
        ("a\x00b", "U+0000"),
        ("line\nbreak", "U+000A"),
        ("tab\there", "U+0009"),
        ("zero\u200bwidth", "U+200B"),
        ("para\u2029sep", "U+2029"),
        ("lone\ud800", "U+D800"),
        (5, "string"),
        (None, "string"),
        (["a"], "string"),
    ],
)
def test_empty_long_invisible_or_non_string_names_are_refused(name: object, words: str) -> None:
    problems = name_problems(name, "templateName")
    assert problems and all(p.field == "templateName" for p in problems)
    assert any(words.lower() in p.message.lower() for p in problems), problems


def test_every_problem_is_reported_and_bad_values_are_not_echoed() -> None:
    problems = name_problems("\x00" * 200)
    assert len(problems) == 2  # too long and not printable
    assert all(p.value is None for p in problems)
    assert name_problems("ok", max_chars=1)[0].message == "must be at most 1 characters (got 2)"
