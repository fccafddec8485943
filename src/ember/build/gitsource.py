"""Check out a branch of a git repository for building, with the `git` command; failures are `BuildError`.

Credentials embedded in a URL (https://user:token@host/…) are masked in every message.

Where git may connect (`core.outbound`): only https and ssh remotes (git enforces that itself through
GIT_ALLOW_PROTOCOL, for redirects and submodules too), plus `file://` and server paths when the caller
allows local sources (the admin's endpoints). Right before git runs, the remote's host is resolved and
every address checked; git is then pinned to the first one (https: `http.curloptResolve`; ssh: `HostName`
with `HostKeyAlias` keeping the name for host keys), and https redirects are not followed. What remains
is git's own behaviour beyond the first connection (none for a clone of one repository) and an ssh
configuration (ProxyCommand, ProxyJump) that the server's operator set up.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ember.core.errors import BuildError, OutboundRefused
from ember.core.outbound import (
    GitRemote,
    Network,
    first_refusal,
    git_remote,
    git_url_problems,
    refused_message,
)

GIT_TIMEOUT_S = 600.0
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def mask_url(text: str) -> str:
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, in the resolver's order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise BuildError(f"cannot resolve the git host {host}: {exc}")
    out: list[str] = []
    for info in infos:
        if str(info[4][0]) not in out:
            out.append(str(info[4][0]))
    if not out:
        raise BuildError(f"the git host {host} resolves to no address")
    return out


def remote_env(url: str, *, allow: Sequence[Network], local: bool) -> dict[str, str]:
    """The environment that confines git to `url`'s remote, after checking where it points (raises
    BuildError for a URL that is not allowed, OutboundRefused for a refused address)."""
    problems = git_url_problems(url, admin=local)
    remote = git_remote(url)
    if problems or remote is None:
        raise BuildError(
            f"git URL {mask_url(url)!r} refused: {problems[0].message if problems else 'invalid'}"
        )
    env = {"GIT_ALLOW_PROTOCOL": "file" if remote.scheme == "file" else "https:ssh"}
    if remote.scheme != "file":
        env.update(_pinned(remote, allow))
    return env


def _pinned(remote: GitRemote, allow: Sequence[Network]) -> dict[str, str]:
    addresses = resolve(remote.host, remote.port)
    refused = first_refusal(addresses, allow)
    if refused is not None:
        raise OutboundRefused(refused_message("git remote", remote.host, *refused))
    address = addresses[0]
    config = [("http.followRedirects", "false")]
    env: dict[str, str] = {}
    if remote.scheme == "https":
        pin = f"[{address}]" if ":" in address else address
        config.append(("http.curloptResolve", f"{remote.host}:{remote.port}:{pin}"))
    else:
        ssh = os.environ.get("GIT_SSH_COMMAND") or "ssh"
        env["GIT_SSH_COMMAND"] = (
            f"{ssh} -o HostName={shlex.quote(address)} -o HostKeyAlias={shlex.quote(remote.host)}"
        )
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value
    return env


def _git(
    args: list[str],
    cwd: Path | None = None,
    timeout_s: float = GIT_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
) -> str:
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "LC_ALL": "C",
        **(extra_env or {}),
    }
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


def checkout(
    url: str,
    branch: str,
    dest: str | Path,
    *,
    allow: Sequence[Network],
    local: bool,
    timeout_s: float = GIT_TIMEOUT_S,
) -> str:
    """Make `dest` hold the tip of `branch` of `url` (shallow) and return that commit's sha.

    `url` is an https or ssh URL whose host resolves to public addresses or ones in `allow`; with
    `local`, also `file://` or a path on this machine. A missing or empty `dest` is cloned; an existing
    checkout is fetched and hard-reset, with untracked files removed, so a rebuild sees exactly the
    pushed tree. Raises BuildError when git fails (unknown repository or branch, no network, `dest` is
    something else) or the URL is not allowed, OutboundRefused when its host's address is refused.
    """
    if not branch or branch.startswith("-") or url.startswith("-"):
        raise BuildError(f"refusing to check out branch {branch!r} of {mask_url(url)!r}")
    env = remote_env(url, allow=allow, local=local)
    target = Path(dest)
    if target.is_dir() and (target / ".git").exists():
        _git(["remote", "set-url", "origin", url], cwd=target, timeout_s=timeout_s)
        _git(
            ["fetch", "--depth", "1", "origin", f"refs/heads/{branch}"],
            cwd=target,
            timeout_s=timeout_s,
            extra_env=env,
        )
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
            extra_env=env,
        )
    return _git(["rev-parse", "HEAD"], cwd=target, timeout_s=timeout_s)
