"""How long the control plane's event loop keeps polling for its next event after it answers a request,
before it lets its CPU sleep (`api.serving.IdlePoll`).

A sleeping CPU takes tens of microseconds to wake (on a virtual machine, about 20 µs: more than a job
request's whole Python work), and comes back with cold caches. On the job path the next event most
often follows an answer closely: a job handed to a worker comes back as its result, an answered client
sends its next request. The window adapts as a hypervisor's halt polling does: it doubles (from a first
step of an eighth of the longest) each time the next event came within the longest window after an
answer, and halves each time it came later (a poll that only burnt CPU), down to none; so a server
that answers now and then stops polling after a few answers, and one on a busy job path keeps it."""

from __future__ import annotations

STEPS = 8  # the smallest window, as a fraction of the longest


def next_window(window_s: float, waited_s: float, longest_s: float) -> float:
    """The window after an event that came `waited_s` after the last answer, the window having been
    `window_s`; `longest_s` is the most it may be (0: never poll)."""
    if longest_s <= 0:
        return 0.0
    smallest = longest_s / STEPS
    if waited_s <= longest_s:
        return min(longest_s, max(smallest, window_s * 2))
    half = window_s / 2
    return half if half >= smallest else 0.0
