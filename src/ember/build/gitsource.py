"""Check out a branch of a git repository for building, with the `git` command; failures are `BuildError`.

Credentials embedded in a URL (https://user:token@host/…) are masked in every message.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from ember.core.errors import BuildError

GIT_TIMEOUT_S = 600.0
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def mask_url(text: str) -> str:
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def _git(args: list[str], cwd: Path | None = None, timeout_s: float = GIT_TIMEOUT_S) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError:
        raise BuildError("the `git` command is not installed")
    except subprocess.TimeoutExpired:
        raise BuildError(f"git {mask_url(' '.join(args[:2]))} took longer than {timeout_s:g}s")
    if done.returncode != 0:
        output = mask_url((done.stderr or done.stdout).strip())
        last = output.splitlines()[-1] if output else f"exit code {done.returncode}"
        raise BuildError(f"git {args[0]} failed: {last}", "\n".join(output.splitlines()[-20:]))
    return done.stdout.strip()


def checkout(url: str, branch: str, dest: str | Path, *, timeout_s: float = GIT_TIMEOUT_S) -> str:
    """Make `dest` hold the tip of `branch` of `url` (shallow) and return that commit's sha.

    A missing or empty `dest` is cloned; an existing checkout is fetched and hard-reset, with untracked
    files removed, so a rebuild sees exactly the pushed tree. Raises BuildError when git fails (unknown
    repository or branch, no network, `dest` is something else).
    """
    if not branch or branch.startswith("-") or url.startswith("-"):
        raise BuildError(f"refusing to check out branch {branch!r} of {mask_url(url)!r}")
    target = Path(dest)
    if target.is_dir() and (target / ".git").exists():
        _git(["remote", "set-url", "origin", url], cwd=target, timeout_s=timeout_s)
        _git(["fetch", "--depth", "1", "origin", f"refs/heads/{branch}"], cwd=target, timeout_s=timeout_s)
        _git(["checkout", "--force", "-B", branch, "FETCH_HEAD"], cwd=target, timeout_s=timeout_s)
        _git(["clean", "-ffdx"], cwd=target, timeout_s=timeout_s)
    else:
        if target.exists() and any(target.iterdir()):
            raise BuildError(f"{target} exists and is not a git checkout")
        target.parent.mkdir(parents=True, exist_ok=True)
        _git(
            [
                "clone",
                "--quiet",
                "--depth",
                "1",
                "--single-branch",
                "--branch",
                branch,
                "--",
                url,
                str(target),
            ],
            timeout_s=timeout_s,
        )
    return _git(["rev-parse", "HEAD"], cwd=target, timeout_s=timeout_s)
