"""`checkout` against real bare repositories made with the git command in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ember.build.gitsource import checkout, mask_url
from ember.core.errors import BuildError, OutboundRefused
from ember.core.outbound import parse_allow
from tests.conftest import need

LOOPBACK = parse_allow("127.0.0.1/32,::1/128")
LOCAL = {"allow": LOOPBACK, "local": True}  # the admin's endpoints may name repositories on the server

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> tuple[str, Path]:
    """A bare repository (as a file:// URL) with branch `main`, and a work tree that pushes to it."""
    need("git", shutil.which("git") is not None, "the git command is not installed")
    bare = tmp_path / "origin.git"
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    git("clone", "--quiet", str(bare), str(work), cwd=tmp_path)
    git("checkout", "--quiet", "-b", "main", cwd=work)
    (work / "handler.py").write_text("VERSION = 1\n")
    git("add", "handler.py", cwd=work)
    git("commit", "--quiet", "-m", "one", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return bare.as_uri(), work


def test_clone_returns_the_branch_tip_sha(origin: tuple[str, Path], tmp_path: Path) -> None:
    url, work = origin
    sha = checkout(url, "main", tmp_path / "build" / "src", **LOCAL)
    assert sha == git("rev-parse", "HEAD", cwd=work)
    assert (tmp_path / "build" / "src" / "handler.py").read_text() == "VERSION = 1\n"


def test_existing_checkout_follows_a_new_push_and_drops_stray_files(
    origin: tuple[str, Path], tmp_path: Path
) -> None:
    url, work = origin
    dest = tmp_path / "src"
    checkout(url, "main", dest, **LOCAL)
    (dest / "stray.txt").write_text("left over from a previous build")
    (dest / "handler.py").write_text("edited locally\n")
    (work / "handler.py").write_text("VERSION = 2\n")
    git("commit", "--quiet", "-am", "two", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    sha = checkout(url, "main", dest, **LOCAL)
    assert sha == git("rev-parse", "HEAD", cwd=work)
    assert (dest / "handler.py").read_text() == "VERSION = 2\n"
    assert not (dest / "stray.txt").exists()


def test_other_branches_check_out_by_name(origin: tuple[str, Path], tmp_path: Path) -> None:
    url, work = origin
    git("checkout", "--quiet", "-b", "feature", cwd=work)
    (work / "extra.py").write_text("x = 1\n")
    git("add", "extra.py", cwd=work)
    git("commit", "--quiet", "-m", "feature", cwd=work)
    git("push", "--quiet", "origin", "feature", cwd=work)
    assert checkout(url, "feature", tmp_path / "f", **LOCAL) == git("rev-parse", "HEAD", cwd=work)
    assert (tmp_path / "f" / "extra.py").exists()


def test_unknown_branch_and_unknown_repository_raise_build_errors(
    origin: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = origin
    with pytest.raises(BuildError, match="git clone failed") as caught:
        checkout(url, "no-such-branch", tmp_path / "a", **LOCAL)
    assert "no-such-branch" in caught.value.log_tail
    with pytest.raises(BuildError, match="git clone failed"):
        checkout((tmp_path / "missing.git").as_uri(), "main", tmp_path / "b", **LOCAL)
    checkout(url, "main", tmp_path / "c", **LOCAL)
    with pytest.raises(BuildError, match="git fetch failed"):
        checkout(url, "no-such-branch", tmp_path / "c", **LOCAL)


def test_a_non_empty_directory_that_is_not_a_checkout_is_refused(
    origin: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = origin
    dest = tmp_path / "occupied"
    dest.mkdir()
    (dest / "file").write_text("mine")
    with pytest.raises(BuildError, match="not a git checkout"):
        checkout(url, "main", dest, **LOCAL)
    assert (dest / "file").read_text() == "mine"


def test_credentials_in_urls_are_masked_in_errors(tmp_path: Path) -> None:
    assert mask_url("https://bob:s3cret@example.invalid/r.git") == "https://***@example.invalid/r.git"
    with pytest.raises(BuildError) as caught:
        checkout(
            "https://bob:s3cret@127.0.0.1:9/r.git",
            "main",
            tmp_path / "x",
            allow=LOOPBACK,
            local=False,
            timeout_s=30,
        )
    assert "s3cret" not in caught.value.message + caught.value.log_tail


# ---- where git may connect (core.outbound): addresses are loopback ones, refused or allowed by LOOPBACK


@pytest.mark.parametrize("local_url", ["file", "path"])
def test_repositories_on_the_server_are_refused_unless_local_sources_are_allowed(
    origin: tuple[str, Path], tmp_path: Path, local_url: str
) -> None:
    url, _ = origin
    if local_url == "path":
        url = url.removeprefix("file://")
    with pytest.raises(BuildError, match="for the admin only"):
        checkout(url, "main", tmp_path / "x", allow=LOOPBACK, local=False)
    assert not (tmp_path / "x").exists()


def test_a_remote_on_a_refused_address_is_refused_before_git_connects(tmp_path: Path) -> None:
    for url in ("https://127.0.0.2:9/r.git", "ssh://git@127.0.0.2:9/r.git", "git@127.0.0.2:r.git"):
        with pytest.raises(OutboundRefused, match=r"git remote refused: 127\.0\.0\.2 is a loopback address"):
            checkout(url, "main", tmp_path / "x", allow=LOOPBACK, local=False)
    assert not (tmp_path / "x").exists()


def test_a_name_is_judged_by_the_addresses_it_resolves_to(tmp_path: Path) -> None:
    """`localhost` resolves to loopback addresses that this allow list leaves out."""
    with pytest.raises(OutboundRefused, match="localhost resolves to .*a loopback address"):
        checkout(
            "https://localhost:9/r.git",
            "main",
            tmp_path / "x",
            allow=parse_allow("127.0.0.2/32"),
            local=False,
        )


def test_git_connects_to_the_address_that_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is pinned to the checked address (curl's resolve list), so a DNS answer that changes
    between the check and git's connect is not used."""
    need("git", shutil.which("git") is not None, "the git command is not installed")
    monkeypatch.setenv("GIT_CURL_VERBOSE", "1")
    with pytest.raises(BuildError) as caught:
        checkout(
            "https://localhost:9/r.git", "main", tmp_path / "x", allow=LOOPBACK, local=False, timeout_s=30
        )
    tail = caught.value.log_tail
    assert (
        "Added localhost:9:127.0.0.1 to DNS cache" in tail or "Added localhost:9:[::1] to DNS cache" in tail
    ), tail
