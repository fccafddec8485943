"""GPU inventory: nvidia-smi parsing and detection, and virtual slot declarations."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from ember.backends.gpus import detect_gpus, parse_gpu_decl, parse_nvidia_smi
from ember.core.errors import InvalidInput
from tests.conftest import need


def _script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_nvidia_smi_lines_are_grouped_by_type_in_index_order() -> None:
    text = "0, NVIDIA H200\n1, NVIDIA A100-SXM4-80GB\n2, NVIDIA H200\n"
    assert parse_nvidia_smi(text) == {"NVIDIA H200": ["0", "2"], "NVIDIA A100-SXM4-80GB": ["1"]}


def test_nvidia_smi_noise_lines_are_skipped() -> None:
    text = "\nWARNING: infoROM is corrupted\n0, Tesla T4\n, nameless\nx, bad index\n"
    assert parse_nvidia_smi(text) == {"Tesla T4": ["0"]}


def test_detect_gpus_runs_the_binary_with_the_csv_query(tmp_path: Path) -> None:
    binary = _script(tmp_path, 'echo "$@" > "$(dirname "$0")/args"; printf "0, NVIDIA L4\\n1, NVIDIA L4\\n"')
    assert detect_gpus(binary) == {"NVIDIA L4": ["0", "1"]}
    assert (tmp_path / "args").read_text().split() == ["--query-gpu=index,name", "--format=csv,noheader"]


def test_detect_gpus_is_empty_when_nvidia_smi_fails(tmp_path: Path) -> None:
    binary = _script(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert detect_gpus(binary) == {}


def test_detect_gpus_is_empty_when_the_binary_is_missing(tmp_path: Path) -> None:
    assert detect_gpus(str(tmp_path / "no-such-nvidia-smi")) == {}


def test_detect_gpus_is_empty_when_nvidia_smi_hangs(tmp_path: Path) -> None:
    binary = _script(tmp_path, "exec sleep 30")
    assert detect_gpus(binary, timeout_s=0.2) == {}


def test_detect_gpus_finds_the_real_gpus_of_this_host() -> None:
    need("gpu", shutil.which("nvidia-smi") is not None, "nvidia-smi is not on PATH")
    gpus = detect_gpus()
    assert gpus, "nvidia-smi is present but no GPU was detected"
    assert all(index.isdigit() for indices in gpus.values() for index in indices)


def test_gpu_declaration_gives_each_type_slots_from_zero() -> None:
    assert parse_gpu_decl("TEST_GPU:4,A100:2") == {"TEST_GPU": ["0", "1", "2", "3"], "A100": ["0", "1"]}


def test_gpu_declaration_tolerates_spaces_and_names_with_spaces() -> None:
    assert parse_gpu_decl(" NVIDIA H200 : 1 , L4:1 ") == {"NVIDIA H200": ["0"], "L4": ["0"]}


def test_empty_gpu_declaration_means_no_gpus() -> None:
    assert parse_gpu_decl("") == {}
    assert parse_gpu_decl("   ") == {}


@pytest.mark.parametrize(
    ("decl", "fragment"),
    [
        ("A100", "expected TYPE:COUNT"),
        (":2", "type name is empty"),
        ("A100:", "count must be an integer"),
        ("A100:0", "count must be an integer"),
        ("A100:-1", "count must be an integer"),
        ("A100:two", "count must be an integer"),
        ("A100:5000", "count must be an integer"),
        ("A100:1,A100:2", "declared twice"),
        ("A100:1,,L4:1", "expected TYPE:COUNT"),
    ],
)
def test_bad_gpu_declarations_are_refused_with_a_clear_message(decl: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_gpu_decl(decl)
    assert fragment in caught.value.message
    assert decl in caught.value.message
    assert caught.value.problems


def test_every_bad_entry_is_reported_at_once() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_gpu_decl("A100,L4:x,T4:1")
    assert [p.field for p in caught.value.problems] == ["gpus[0]", "gpus[1]"]
