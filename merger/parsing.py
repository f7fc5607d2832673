"""Small text-parsing helpers shared by the weight, preset and Adjust parsers."""
from __future__ import annotations

import math

from .errors import AlloyError


def finite_float(token: str, subject: str) -> float:
    """`token` as a finite float, else AlloyError "<subject> ('<token>') is not a (finite) number."."""
    try:
        v = float(token)
    except ValueError:
        raise AlloyError(f"{subject} ('{token}') is not a number.") from None
    if not math.isfinite(v):
        raise AlloyError(f"{subject} ('{token}') is not a finite number.")
    return v
