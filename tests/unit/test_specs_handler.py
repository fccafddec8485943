"""The endpoint's `handler` field: a relative path to a .py file inside the source directory, without
`..`; normalised on the way in; left out of the release key while it is the default handler.py."""

from __future__ import annotations

import pytest

from ember.core.specs import EndpointSpec, from_wire, handler_problems, normalise_handler, release_key


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        ("handler.py", None),
        ("rp_handler.py", None),
        ("src/handler.py", None),
        ("a/b/c/main.py", None),
        ("", "must name a file"),
        ("/etc/handler.py", "relative"),
        ("~/handler.py", "relative"),
        ("src\\handler.py", "relative"),
        ("../handler.py", "'..'"),
        ("src/../../handler.py", "'..'"),
        ("handler.txt", ".py file"),
        ("src/", ".py file"),
    ],
)
def test_handler_problems_name_what_is_wrong(handler: str, problem: str | None) -> None:
    found = handler_problems(handler)
    if problem is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].field == "handler" and problem in found[0].message
        assert found[0].value == handler


def test_the_wire_form_is_normalised_then_validated() -> None:
    assert normalise_handler("./src//handler.py") == "src/handler.py"
    spec, problems = from_wire({"name": "a", "sourceDir": "/x", "handler": "./src/handler.py"})
    assert problems == [] and spec is not None and spec.handler == "src/handler.py"
    spec, problems = from_wire({"name": "a", "sourceDir": "/x", "handler": "../x.py"})
    assert spec is None and [p.field for p in problems] == ["handler"]
    spec, problems = from_wire({"name": "a", "handler": 3})
    assert spec is None and problems[0].field == "handler" and "str or null" in problems[0].message


def test_the_default_handler_keeps_the_release_key_of_a_spec_stored_before_the_field() -> None:
    before = EndpointSpec(name="a", source_dir="/x", source_digest="d1")
    assert release_key(before.with_changes(handler="handler.py")) == release_key(before)
    assert release_key(before.with_changes(handler="rp_handler.py")) != release_key(before)
    assert release_key(before.with_changes(handler="src/handler.py")) != release_key(
        before.with_changes(handler="rp_handler.py")
    )
