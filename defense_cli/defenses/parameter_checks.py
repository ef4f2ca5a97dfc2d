"""Constructor-argument checks shared by defenses: each raises ValueError naming the parameter."""

from __future__ import annotations

from typing import Any, Sequence


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {tuple(choices)}")
    return value


def check_int(name: str, value: Any, minimum: int) -> int:
    """An integer >= minimum (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


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
