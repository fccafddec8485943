"""Where calls that a tenant chooses may go (webhooks, git remotes): the shape of their URLs, and which
addresses they may reach.

By default only public addresses: loopback, link-local, private, carrier-grade NAT, multicast,
unspecified and other reserved ranges are refused, unless the operator's allow list (the setting
`EMBER_OUTBOUND_ALLOW`, CIDR ranges) opens them. The rule is applied by the caller to the address it is
about to connect to, after resolving the name, so a DNS answer cannot point a call somewhere else.
An IPv6 address that carries an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by the IPv4 address too.

Pure: names are resolved by the callers (`control.outbound` for webhooks, `build.gitsource` for git).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ember.core.errors import Problem

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

URL_MAX_CHARS = 2048


def _nets(*cidrs: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# (ranges, why they are refused), first match wins; anything else that is not globally routable is
# "a reserved address" (documentation, benchmarking, protocol assignments, 240/4, broadcast).
_REFUSED: tuple[tuple[tuple[Network, ...], str], ...] = (
    (_nets("0.0.0.0/8", "::/128"), "an unspecified address"),
    (_nets("127.0.0.0/8", "::1/128"), "a loopback address"),
    (_nets("169.254.0.0/16", "fe80::/10"), "a link-local address"),
    (_nets("100.64.0.0/10"), "a carrier-grade NAT (CGNAT) address"),
    (_nets("224.0.0.0/4", "ff00::/8"), "a multicast address"),
    (_nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fec0::/10"), "a private address"),
    (_nets("::/96", "100::/64", "2001:db8::/32"), "a reserved address"),  # IPv4-compatible, discard, docs
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REMOTE_HELPER = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCP_LIKE = re.compile(r"(?:[^@/:\[\]]+@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@/:\[\]]+):(?!//)")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def parse_allow(text: str) -> tuple[Network, ...]:
    """The allow list from its setting: comma-separated CIDR ranges (a bare address is a /32 or /128).
    Raises ValueError naming the entry that is not a range."""
    out: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            out.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"EMBER_OUTBOUND_ALLOW: {entry!r} is not a CIDR range like 127.0.0.0/8 or ::1/128"
            )
    return tuple(out)


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def _category(address: Address, *, carrier: bool = False) -> str | None:
    """Why `address` is refused by default, or None. A `carrier` (an IPv6 address holding an IPv4 one,
    judged by that one) is looked up in the table only: Python versions disagree on its `is_global`."""
    for networks, why in _REFUSED:
        if any(address.version == n.version and address in n for n in networks):
            return why
    if not carrier and not address.is_global:
        return "a reserved address"
    return None


def refusal(address: str | Address, allow: Sequence[Network] = ()) -> str | None:
    """None when a call may connect to `address`; else why not ("a loopback address", …).

    An address inside an allowed range is always allowed; an IPv6 address carrying an IPv4 one is
    refused when either is refused (and allowed when either is on the list)."""
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    inner = _embedded_ipv4(addr)
    candidates: list[Address] = [addr] if inner is None else [inner, addr]
    if any(c.version == n.version and c in n for c in candidates for n in allow):
        return None
    for c in candidates:
        why = _category(c, carrier=inner is not None and c is addr)
        if why is not None:
            return why if c is addr else f"{why} ({c} inside {addr})"
    return None


def first_refusal(
    addresses: Iterable[str | Address], allow: Sequence[Network] = ()
) -> tuple[str, str] | None:
    """The first of `addresses` that is refused, with why; None when every one is allowed."""
    for a in addresses:
        why = refusal(a, allow)
        if why is not None:
            return str(a), why
    return None


def refused_message(what: str, host: str, address: str, why: str) -> str:
    """The one line a refused call records (on the job, in the build log)."""
    named = f"{host} resolves to {address}, " if host != address.strip("[]") else f"{address} is "
    return (
        f"{what} refused: {named}{why}; outbound calls go to public addresses only "
        "unless the server's EMBER_OUTBOUND_ALLOW opens the range"
    )


# ---- URL shapes --------------------------------------------------------------------------------------
def _host_ok(host: str) -> bool:
    """A DNS name (letters of any script, digits, '-', '_', '.') or an IP literal; nothing else, so a
    host cannot read differently to two URL parsers."""
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return all(ch.isalnum() or ch in "-_." for ch in host) and not host.startswith(("-", "."))


def _common(url: object, field: str, schemes: tuple[str, ...]) -> tuple[list[Problem], str, str]:
    """Problems of a URL's text, its scheme and its host ('' when it has none)."""
    if not isinstance(url, str):
        return [Problem(field, f"must be a URL ({' or '.join(schemes)})", url)], "", ""
    if len(url) > URL_MAX_CHARS:
        return [Problem(field, f"must be at most {URL_MAX_CHARS} characters", len(url))], "", ""
    if any(ch.isspace() or not ch.isprintable() or ch == "\\" for ch in url):
        return [Problem(field, "must not contain spaces, control characters or backslashes", url)], "", ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return [Problem(field, "is not a valid URL (bad port or IPv6 address)", url)], "", ""
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        return [Problem(field, f"must be a URL with scheme {' or '.join(schemes)}", url)], scheme, ""
    host = parts.hostname or ""
    problems: list[Problem] = []
    if not host:
        problems.append(Problem(field, "has no host", url))
    elif not _host_ok(host) or parts.netloc.count("@") > 1:
        problems.append(Problem(field, "has a host that is not a DNS name or an IP address", url))
    if port == 0:
        problems.append(Problem(field, "has port 0", url))
    return problems, scheme, host


def webhook_problems(url: object, field: str = "webhook") -> list[Problem]:
    """Problems of a job's webhook URL: an http or https URL with a host. (Where it may go is decided
    when it is called, on the address it resolves to.)"""
    return _common(url, field, ("http", "https"))[0]


@dataclass(frozen=True)
class GitRemote:
    """Where a git URL points: `https`, `ssh` (`ssh://…` or scp-like `user@host:path`) with a host and
    port, or `file` (a `file://` URL or a path on the server's disk, which only the admin may name)."""

    scheme: str
    host: str = ""
    port: int = 0


def git_remote(url: str) -> GitRemote | None:
    """The remote a well-formed git URL names, or None (see `git_url_problems` for why not)."""
    problems, remote = _git(url, "git.url")
    return None if problems else remote


def git_url_problems(url: object, *, admin: bool, field: str = "git.url") -> list[Problem]:
    """Problems of a git URL: `https://host/…`, `ssh://[user@]host[:port]/…` or `user@host:path`; the
    admin may also name `file://…` or a path on the server's disk."""
    problems, remote = _git(url, field)
    if remote is not None and remote.scheme == "file" and not admin:
        return [
            Problem(
                field,
                "file:// URLs and paths on the server are for the admin only; use an https or ssh URL",
                url,
            )
        ]
    return problems


def _git(url: object, field: str) -> tuple[list[Problem], GitRemote | None]:
    if not isinstance(url, str) or not url:
        return [Problem(field, "must be a git URL (https://…, ssh://… or user@host:path)", url)], None
    if url.startswith("-") or _REMOTE_HELPER.match(url):  # an option, or a remote helper (ext::cmd)
        return [Problem(field, "must be a git URL (https://…, ssh://… or user@host:path)", url)], None
    if "://" in url:
        if url.lower().startswith("file://"):
            return [], GitRemote("file")
        problems, scheme, host = _common(url, field, ("https", "ssh"))
        if problems:
            return problems, None
        port = urlsplit(url).port or (443 if scheme == "https" else 22)
        return [], GitRemote(scheme, host.lower(), port)
    scp = _SCP_LIKE.match(url)
    if scp is not None:  # [user@]host:path, as git reads it (a colon before any slash)
        host = scp.group("host")
        literal = host.startswith("[")
        problems, _, _ = _common(f"ssh://{host}/", field, ("ssh",))
        if problems or any(ch.isspace() or not ch.isprintable() for ch in url) or ("@" in host):
            return [Problem(field, "has a host that is not a DNS name or an IP address", url)], None
        return [], GitRemote("ssh", (host[1:-1] if literal else host).lower(), 22)
    return [], GitRemote("file")  # a path: git reads it from the server's disk
