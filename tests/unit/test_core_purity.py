"""`ember.core` is pure: no module imports or calls the clock, randomness, the environment, logging,
asyncio or other I/O. Checked on the source with `ast`, so a violation is found without running it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ember.core

CORE = Path(ember.core.__file__).parent
MODULES = sorted(CORE.rglob("*.py"))

FORBIDDEN_MODULES = {
    "time", "random", "logging", "asyncio", "secrets", "uuid", "os", "sys", "subprocess", "socket",
    "threading", "multiprocessing", "shutil", "tempfile", "pathlib", "io",
}  # fmt: skip
# Names that read the clock, randomness or the environment, or do I/O, wherever they come from.
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter", "uuid4", "uuid1",
                   "getenv", "urandom", "open", "print", "input", "sleep", "token_hex"}  # fmt: skip
FORBIDDEN_ATTRIBUTES = {"environ"}


def violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"from {node.module} import …")
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name in FORBIDDEN_CALLS]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in FORBIDDEN_CALLS:
                found.append(f"call {name}() at line {node.lineno}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            found.append(f"use of .{node.attr} at line {node.lineno}")
    return found


def test_core_has_modules_to_check() -> None:
    names = {m.stem for m in MODULES}
    assert {"scaler", "billing", "reconcile", "placement", "limits", "backoff", "money"} <= names


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_core_module_is_pure(module: Path) -> None:
    assert violations(module.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from random import choice",
        "import logging",
        "import asyncio",
        "from uuid import uuid4",
        "import secrets",
        "from datetime import datetime\nx = datetime.now()",
        "import datetime\nx = datetime.datetime.utcnow()",
        "x = something.environ['HOME']",
        "x = uuid4()",
        "open('f')",
    ],
)
def test_the_checker_catches_impure_code(source: str) -> None:
    assert violations(source)


def test_the_checker_allows_pure_stdlib() -> None:
    source = "import math\nimport re\nfrom dataclasses import dataclass\nfrom datetime import timedelta\n"
    assert violations(source) == []
