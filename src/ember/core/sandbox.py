"""Whether a local worker runs in the sandbox: the rule of EMBER_SANDBOX, as a pure decision.

Modes: `auto` (the default) sandboxes every worker when the sandbox tool (bubblewrap) is installed;
without it the admin's workers run unsandboxed (a one-person dev box) and other accounts' workers are
refused. `required` sandboxes every worker and refuses any worker without the tool. `off` runs the
admin's workers unsandboxed; it is honoured for the admin only (on a server with the admin account
alone that is every worker): another account's worker is still sandboxed, or refused without the tool.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

INSTALL_HINT = "install bubblewrap (apt-get install bubblewrap) on this host"


class SandboxMode(StrEnum):
    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


@dataclass(frozen=True)
class SandboxChoice:
    sandboxed: bool
    refusal: str | None = None  # set when the worker must not start at all


def parse_mode(value: str) -> SandboxMode:
    """The mode named by `value` (case and surrounding space ignored); ValueError for anything else."""
    try:
        return SandboxMode(value.strip().lower())
    except ValueError:
        names = ", ".join(m.value for m in SandboxMode)
        raise ValueError(f"EMBER_SANDBOX must be one of {names}, not {value!r}") from None


def choose(mode: SandboxMode, *, available: bool, admin: bool) -> SandboxChoice:
    """Sandbox a worker or not, or refuse it: `available` says the tool is installed, `admin` that the
    worker belongs to the admin account (who runs the machine and may run unsandboxed)."""
    if admin and mode is SandboxMode.OFF:
        return SandboxChoice(sandboxed=False)
    if available:
        return SandboxChoice(sandboxed=True)
    if admin and mode is SandboxMode.AUTO:
        return SandboxChoice(sandboxed=False)
    why = "EMBER_SANDBOX=required" if mode is SandboxMode.REQUIRED else "it belongs to another account"
    return SandboxChoice(
        sandboxed=False,
        refusal=f"this worker must run in a sandbox ({why}), and bubblewrap (bwrap) is missing: "
        + INSTALL_HINT,
    )


def startup_warning(mode: SandboxMode, *, available: bool) -> str | None:
    """The one line a server logs at start-up when some workers will run unsandboxed or be refused."""
    if mode is SandboxMode.OFF:
        return "EMBER_SANDBOX=off: the admin's local workers run unsandboxed, as the server's own user"
    if available:
        return None
    if mode is SandboxMode.REQUIRED:
        return (
            "EMBER_SANDBOX=required but bubblewrap (bwrap) is missing: no local worker will start; "
            + INSTALL_HINT
        )
    return (
        "bubblewrap (bwrap) is missing: the admin's local workers run unsandboxed, as the server's own "
        f"user, and other accounts' workers will not start; {INSTALL_HINT}"
    )
