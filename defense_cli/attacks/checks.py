"""Constructor-argument checks shared by the attacks: each raises ValueError naming the parameter."""

from __future__ import annotations

import math
from typing import Any

NORMS = ("linf", "l2")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_eps(eps: Any, allow_unbounded: bool = False) -> float | None:
    """eps >= 0 in pixel scale; None (unbounded) only where the attack minimises its perturbation."""
    if eps is None and allow_unbounded:
        return None
    if not (_number(eps) and eps >= 0):
        allowed = "a number >= 0 (pixel scale)" + (" or null (unbounded)" if allow_unbounded else "")
        raise ValueError(f"eps={eps!r} is not allowed: eps must be {allowed}")
    return float(eps)


def check_norm(norm: Any, allowed: tuple[str, ...] = NORMS) -> str:
    if norm not in allowed:
        raise ValueError(f"norm={norm!r} is not allowed; use one of {', '.join(allowed)}")
    return norm


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; use one of {', '.join(allowed)}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return value


def check_positive(name: str, value: Any) -> float:
    if not (_number(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a number > 0")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    if not (_number(value) and value >= 0):
        raise ValueError(f"{name}={value!r} must be a number >= 0")
    return float(value)


def eps_text(eps: float | None) -> str:
    """eps for describe(): 'unbounded' for None."""
    return "unbounded" if eps is None else f"{eps:.4g}"
