"""Validators shared by every public entry point: bad input gets the same
clear InvalidArgument everywhere, naming the value and what was expected,
before anything is touched."""

from __future__ import annotations

import math

from .errors import InvalidArgument


def seconds(value: object, name: str = "timeout", *, where: str | None = None,
            positive: bool = False, none_ok: bool = False) -> float | None:
    """A duration in seconds: a real number >= 0 (> 0 when ``positive``),
    not a bool, not NaN; None only when ``none_ok``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        also = " or None" if none_ok else ""
        origin = f" (from {where})" if where else ""
        raise InvalidArgument(f"{name} must be seconds {bound}{also}, got {value!r}{origin}")
    return float(value)
