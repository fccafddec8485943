"""Handler discovery and snapshots of a source directory, on the real filesystem."""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.build.source import HANDLER_CANDIDATES, find_handler, snapshot
from ember.core.errors import InvalidInput


def _touch(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")
    return root


def test_discovery_takes_the_first_candidate_in_order(tmp_path: Path) -> None:
    present = list(HANDLER_CANDIDATES)
    while present:
        root = _touch(tmp_path / str(len(present)), *present)
        assert find_handler(root) == present[0]
        present.pop(0)


def test_a_named_handler_wins_and_must_be_a_file_inside_the_directory(tmp_path: Path) -> None:
    root = _touch(tmp_path / "p", "handler.py", "workers/main.py", ".venv/lib/x.py")
    (tmp_path / "outside.py").write_text("")
    (root / "link.py").symlink_to(tmp_path / "outside.py")
    assert find_handler(root, "./workers/main.py") == "workers/main.py"
    for bad, message in [
        ("workers/missing.py", "not a file"),
        ("workers", "a .py file"),
        ("link.py", "not a file"),  # a symlink out of the directory
        (".venv/lib/x.py", "leaves out"),
        ("../outside.py", "'..'"),
    ]:
        with pytest.raises(InvalidInput, match=message) as caught:
            find_handler(root, bad)
        assert caught.value.problems[0].field == "handler"


def test_a_missing_directory_and_one_without_a_handler_are_different_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist") as missing:
        find_handler(tmp_path / "nope")
    assert missing.value.problems[0].field == "sourceDir"
    with pytest.raises(InvalidInput, match="has no handler: looked for handler.py, rp_handler.py") as empty:
        find_handler(_touch(tmp_path / "empty", "README.md"))
    assert empty.value.problems[0].field == "handler"


def test_snapshot_returns_the_handler_it_found_and_copies_it(tmp_path: Path) -> None:
    root = _touch(tmp_path / "worker", "src/handler.py", "src/utils.py")
    digest, path, handler = snapshot(str(root), tmp_path / "sources")
    assert handler == "src/handler.py" and (path / handler).is_file() and path.name == digest
