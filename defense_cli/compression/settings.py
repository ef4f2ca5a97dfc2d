"""The `compress` config node, checked: every bad value is a ConfigError naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from defense_cli.errors import ConfigError

METHODS = ("l1_lrar", "nl2a", "vh2")
PROCEDURES = ("sequential", "iterative")


@dataclass(frozen=True)
class CompressSettings:
    """What to decompose, how, and how to fine-tune afterwards (see conf/compress/*.yaml)."""

    method: str
    rank: float
    layer_ranks: dict[str, float | int]
    layers: list[str] | None
    stage: int | None
    procedure: str
    images: int
    samples: int
    batch_size: int
    seed: int
    solver: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, node: DictConfig) -> CompressSettings:
        plain = OmegaConf.to_container(node, resolve=True)
        settings = cls(
            method=plain["method"], rank=plain["rank"], layer_ranks=dict(plain.get("layer_ranks") or {}),
            layers=None if plain.get("layers") is None else [str(x) for x in plain["layers"]],
            stage=plain.get("stage"), procedure=plain["procedure"], images=plain["images"],
            samples=plain["samples"], batch_size=plain["batch_size"], seed=plain["seed"],
            solver=dict(plain.get("solver") or {}), finetune=dict(plain["finetune"]), latency=dict(plain["latency"]),
        )
        settings.check()
        return settings

    def check(self) -> None:
        _require(self.method in METHODS, "compress.method", self.method, f"one of {', '.join(METHODS)}")
        _require(_is_ratio(self.rank), "compress.rank", self.rank, "a ratio of the filters in (0, 1], e.g. 0.5")
        for name, value in self.layer_ranks.items():
            _require(_is_count(value) or _is_ratio(value), f"compress.layer_ranks.{name}", value,
                     "an integer number of filters >= 1 or a ratio in (0, 1]")
        _require(self.stage is None or _is_count(self.stage), "compress.stage", self.stage, "null or an integer >= 1")
        _require(self.procedure in PROCEDURES, "compress.procedure", self.procedure, f"one of {', '.join(PROCEDURES)}")
        for key in ("images", "samples", "batch_size"):
            _require(_is_count(getattr(self, key)), f"compress.{key}", getattr(self, key), "an integer >= 1")
        _require(_is_count(self.finetune["epochs"] + 1), "compress.finetune.epochs", self.finetune["epochs"],
                 "an integer >= 0")
        _require(_is_count(self.latency["repeats"]), "compress.latency.repeats", self.latency["repeats"],
                 "an integer >= 1")
        if self.method == "l1_lrar":
            _require(_is_count(self.solver.get("max_iter")), "compress.solver.max_iter", self.solver.get("max_iter"),
                     "an integer >= 1")

    def rank_for(self, name: str, filters: int) -> int:
        """m for a layer: `layer_ranks[name]` (a count, or a ratio of n) else round(rank * n), at least 1."""
        value = self.layer_ranks.get(name, self.rank)
        if _is_count(value) and name in self.layer_ranks:
            if value > filters:
                raise ConfigError(f"compress.layer_ranks.{name}={value} exceeds the layer's {filters} filters")
            return int(value)
        return max(1, round(value * filters))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_ratio(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {key} must be {allowed}.")
