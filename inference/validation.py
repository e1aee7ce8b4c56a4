"""The validators every option bundle and entry point uses: a bad value is refused by name, with the value."""

from __future__ import annotations

import math
from typing import Any


def positive_int(value: Any, name: str = "num_samples") -> int:
    """``value`` as an ``int`` if it is an integer >= 1 (``True`` is not), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def nonnegative_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` if it is an integer >= 0 (``True`` is not), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or int(value) != value or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def positive_number(value: Any, name: str) -> float:
    """``value`` as a ``float`` if it is finite and > 0, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def nonnegative_number(value: Any, name: str) -> float:
    """``value`` as a ``float`` if it is finite and >= 0, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


#: Seeds are what NumPy accepts (Pyro seeds NumPy too): integers from 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1


def seed(value: Any, name: str = "seed") -> int:
    """``value`` as an ``int`` if it is an integer in [0, :data:`MAX_SEED`], else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to {MAX_SEED}, got {value!r}")
    return value
