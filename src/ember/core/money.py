"""Money as integer micro-dollars (1 USD = 1,000,000), and strict conversion to and from decimal text.

Never floats: six decimals keep sub-cent usage (one second of a cheap GPU) visible in every total.
"""

from __future__ import annotations

import re

from ember.core.errors import InvalidInput, Problem

MICROS_PER_DOLLAR = 1_000_000
DECIMALS = 6
# Up to 12 integer digits (below a trillion dollars) and up to 6 decimals; an optional sign. ASCII
# digits only: `\d` (and `int()`) also read Arabic-Indic and other scripts' digits, so "١" was $1.
_DOLLARS = re.compile(r"([+-]?)([0-9]{1,12})(?:\.([0-9]{1,6}))?")


def parse_dollars(text: object, *, field: str = "amount") -> int:
    """Micro-dollars from a decimal dollar string such as "150", "150.00", "-0.25" or "0.000001".

    Strict: ASCII digits with an optional sign and at most 6 decimals; no exponent, separators, spaces or
    currency symbols. Raises InvalidInput (naming `field`) for anything else, including non-strings,
    so that no amount is ever rounded silently.
    """
    if not isinstance(text, str):
        raise InvalidInput(
            f"{field} must be a decimal string", [Problem(field, "must be a decimal string", text)]
        )
    match = _DOLLARS.fullmatch(text)
    if match is None:
        message = "must be a decimal amount in dollars with at most 6 decimals, e.g. 150.00"
        raise InvalidInput(f"{field} {message}", [Problem(field, message, text)])
    sign, whole, frac = match.groups()
    micros = int(whole) * MICROS_PER_DOLLAR + int((frac or "").ljust(DECIMALS, "0"))
    return -micros if sign == "-" else micros


def format_dollars(micros: int) -> str:
    """The exact decimal dollar string of `micros` with 6 decimals: 150_000_000 -> "150.000000"."""
    if isinstance(micros, bool) or not isinstance(micros, int):
        raise TypeError(f"money must be an int of micro-dollars, not {type(micros).__name__}")
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_DOLLAR)
    return f"{sign}{whole}.{frac:06d}"


def dollars(amount: int) -> int:
    """Micro-dollars of a whole number of dollars (for tables and tests)."""
    return amount * MICROS_PER_DOLLAR
