"""The JSON value checks every reader of an edgekd file uses (JSON's true/false are never numbers here)."""

from __future__ import annotations

import math
from typing import Any

from edgekd.errors import EdgeKDError


def is_number(value: Any) -> bool:
    """An int or float."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_count(value: Any, most: float = float("inf")) -> bool:
    """A whole number from 1 to ``most``."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= most


def is_number_list(value: Any, length: int) -> bool:
    """A list of ``length`` finite numbers."""
    return isinstance(value, list) and len(value) == length and all(is_number(v) and math.isfinite(v) for v in value)


def csv_list(text: str) -> list[str]:
    """A comma-separated command-line value as its non-empty items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str, flag: str, *, allow_empty: bool = False) -> list[int]:
    """A comma-separated list of whole numbers >= 1 given to ``flag``."""
    try:
        values = [int(t) for t in csv_list(text)]
    except ValueError:
        raise EdgeKDError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values and allow_empty:
        return values
    if not values or min(values) < 1:
        raise EdgeKDError(f"{flag} values must be >= 1, got {text!r}")
    return values
