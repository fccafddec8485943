"""GPU inventory of this host: real devices from `nvidia-smi`, or virtual slots from a declaration.

Returns plain `{gpu type name: [device index, …]}` maps; placement decisions live in `ember.core`.
"""

from __future__ import annotations

import shutil
import subprocess

from ember.core.errors import InvalidInput, Problem

NVIDIA_SMI_QUERY = ["--query-gpu=index,name", "--format=csv,noheader"]
MAX_SLOTS_PER_TYPE = 1024


def parse_nvidia_smi(text: str) -> dict[str, list[str]]:
    """Group the CSV lines `index, name` of `nvidia-smi --query-gpu=index,name` by name.

    Lines that do not have both an index and a name (warnings, blank lines) are skipped. Indices keep
    the order nvidia-smi printed them in.
    """
    gpus: dict[str, list[str]] = {}
    for raw in text.splitlines():
        index, sep, name = raw.partition(",")
        index, name = index.strip(), name.strip()
        if not sep or not index.isdigit() or not name:
            continue
        gpus.setdefault(name, []).append(index)
    return gpus


def detect_gpus(nvidia_smi: str | None = None, *, timeout_s: float = 10.0) -> dict[str, list[str]]:
    """The NVIDIA GPUs of this host by type name (as nvidia-smi names them, e.g. "NVIDIA H200").

    `nvidia_smi` is the binary to run (default: found on PATH). Returns {} when there is no
    nvidia-smi, when it fails (no driver loaded) or when it does not answer within `timeout_s`:
    a host without usable GPUs is a normal case, not an error.
    """
    binary = nvidia_smi or shutil.which("nvidia-smi")
    if not binary:
        return {}
    try:
        done = subprocess.run(
            [binary, *NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if done.returncode != 0:
        return {}
    return parse_nvidia_smi(done.stdout)


def parse_gpu_decl(decl: str) -> dict[str, list[str]]:
    """Virtual GPU slots from a declaration like "TEST_GPU:4,A100:2".

    Each `TYPE:COUNT` gives that type the device ids "0".."COUNT-1". An empty declaration means no
    GPUs. Raises InvalidInput naming every bad entry at once (missing colon, empty type, a count that
    is not a positive integer up to 1024, a type declared twice).
    """
    slots: dict[str, list[str]] = {}
    problems: list[Problem] = []
    entries = [e.strip() for e in decl.split(",")] if decl.strip() else []
    for position, entry in enumerate(entries):
        where = f"gpus[{position}]"
        name, sep, count_text = entry.rpartition(":")
        name, count_text = name.strip(), count_text.strip()
        if not sep:
            problems.append(Problem(where, "expected TYPE:COUNT, e.g. A100:2", entry))
            continue
        if not name:
            problems.append(Problem(where, "the GPU type name is empty", entry))
            continue
        if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_SLOTS_PER_TYPE:
            problems.append(
                Problem(where, f"the count must be an integer from 1 to {MAX_SLOTS_PER_TYPE}", entry)
            )
            continue
        if name in slots:
            problems.append(Problem(where, f"GPU type {name!r} is declared twice", entry))
            continue
        slots[name] = [str(i) for i in range(int(count_text))]
    if problems:
        detail = "; ".join(f"{p.value!r}: {p.message}" for p in problems)
        raise InvalidInput(f"bad GPU declaration {decl!r}: {detail}", problems)
    return slots
