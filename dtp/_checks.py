"""Checks of values users pass in (settings, limits, timeouts), shared by the modules
that take them: a number made a finite float without the exceptions Python raises on
the way, and a value shown in an error message without raising one of its own."""

from __future__ import annotations

import math

__all__ = ["finite_float", "shown"]


def finite_float(value: object) -> float | None:
    """``value`` as a finite float, or None for a bool (``True`` is a mistake, not 1), a
    non-number, NaN, infinity, or an int beyond the float range (``float()`` raised
    OverflowError for it, and ``math.isfinite`` too, where the caller wanted its own
    error naming the setting)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def shown(value: object) -> str:
    """``value``'s repr for an error message, cut short: an int past Python's 4300-digit
    limit has no repr (a ValueError of its own, naming no setting), and one of hundreds
    of digits says nothing more than its first few."""
    try:
        text = repr(value)
    except ValueError:
        return "an integer of more than 4300 digits"
    return text if len(text) <= 40 else text[:37] + "..."
