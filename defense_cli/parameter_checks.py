"""Constructor-argument checks shared by every component (datasets, threat models, defenses,
attacks): each returns the value it accepts or raises ValueError naming the parameter and what is
allowed. `build_from_config` turns that ValueError into the one-paragraph ConfigError of the CLI."""

from __future__ import annotations

import math
from typing import Any, Sequence

NORMS = ("linf", "l2")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed; use one of {', '.join(map(str, choices))}")
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer >= minimum (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def check_optional_int(name: str, value: Any, minimum: int) -> int | None:
    """None, or an integer >= minimum."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be null or an integer >= {minimum}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    return check_int(name, value, 1)


def check_real(name: str, value: Any, low: float, high: float, low_open: bool = False,
               high_open: bool = False) -> float:
    """A finite real number in the interval [low, high] (ends open where asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name}={value!r} must be a real number")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} must lie in {interval}")
    return float(value)


def check_probability(name: str, value: Any) -> float:
    """A keep/observation probability in (0, 1]."""
    return check_real(name, value, 0.0, 1.0, low_open=True)


def check_positive(name: str, value: Any) -> float:
    if not (_finite_number(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a number > 0")
    return float(value)


def check_nonnegative(name: str, value: Any) -> float:
    if not (_finite_number(value) and value >= 0):
        raise ValueError(f"{name}={value!r} must be a number >= 0")
    return float(value)


def check_eps(eps: Any, allow_unbounded: bool = False) -> float | None:
    """An attack's eps >= 0 in pixel scale; None (unbounded) only where the attack minimises its
    perturbation."""
    if eps is None and allow_unbounded:
        return None
    if not (_finite_number(eps) and eps >= 0):
        allowed = "a number >= 0 (pixel scale)" + (" or null (unbounded)" if allow_unbounded else "")
        raise ValueError(f"eps={eps!r} is not allowed: eps must be {allowed}")
    return float(eps)


def check_norm(norm: Any, allowed: tuple[str, ...] = NORMS) -> str:
    return check_choice("norm", norm, allowed)
