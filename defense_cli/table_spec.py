"""A paper-table spec (`experiments/*.yaml`) and its cells as a Hydra config group.

A spec names its `caption` and `threat_model`, optionally the `paper` (seed file) and its
`table` number, common `overrides`, `attacks` and `defenses` (label -> overrides), the table's
`cells` count (attacks x defenses) and, optionally, `paper_results` (attack -> defense -> % as
printed) and a `reduced` setup for a machine without a GPU (`overrides` that replace the spec's
keys, and a `note`). Each cell becomes one `# @package _global_` config of the group
`table_cell` (group choices as `override /group@package: option` defaults, values as keys), so
the whole table is ONE Hydra multirun, `+table_cell=<cell>,<cell>,...`, that any launcher runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from defense_cli.config import conf_dir
from defense_cli.errors import ConfigError

CELL_GROUP = "table_cell"
#: the row label of a spec's defenses under the adaptive suite (`defense-cli table --adaptive`)
ADAPTIVE_ROW = "Adaptive (white-box)"
REQUIRED_KEYS = ("caption", "threat_model", "overrides", "attacks", "defenses", "cells")


@dataclass(frozen=True)
class Cell:
    """One (attack, defense) cell: its labels as printed, its overrides and the published %."""

    attack: str
    defense: str
    overrides: tuple[str, ...]
    published: float | None

    @property
    def choice(self) -> str:
        """The cell's option name in the `table_cell` group (letters, digits, underscores)."""
        return re.sub(r"[^a-z0-9]+", "_", f"{self.attack}__{self.defense}".lower()).strip("_")


@dataclass(frozen=True)
class TableSpec:
    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> TableSpec:
        """Read and check a spec; a missing file or key is a ConfigError naming it."""
        if not path.is_file():
            raise ConfigError(f"table spec {str(path)!r} does not exist; specs are the YAML files in experiments/.")
        data = yaml.safe_load(path.read_text()) or {}
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise ConfigError(f"table spec {path.name} lacks {', '.join(missing)}; a spec needs "
                              f"{', '.join(REQUIRED_KEYS)} (see experiments/README.md).")
        spec = cls(path, data)
        if len(spec.cells) != data["cells"]:
            raise ConfigError(f"table spec {path.name} declares cells: {data['cells']} but its "
                              f"{len(data['attacks'])} attacks x {len(data['defenses'])} defenses make {len(spec.cells)}.")
        return spec

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def cells(self) -> list[Cell]:
        published = self.data.get("paper_results") or {}
        return [Cell(attack, defense, (*attack_overrides, *defense_overrides),
                     published.get(attack, {}).get(defense))
                for attack, attack_overrides in self.data["attacks"].items()
                for defense, defense_overrides in self.data["defenses"].items()]

    @property
    def clean_attacks(self) -> set[str]:
        """Attack labels that are no attack (`attack=none`): the table's clean-accuracy rows."""
        return {label for label, overrides in self.data["attacks"].items() if "attack=none" in overrides}

    @property
    def reduced(self) -> dict[str, Any] | None:
        return self.data.get("reduced")

    def with_defenses(self, labels: list[str]) -> TableSpec:
        """The spec restricted to the defense columns `labels` (in the spec's order)."""
        return self._restricted("defenses", "defense", labels)

    def with_attacks(self, labels: list[str]) -> TableSpec:
        """The spec restricted to the attack rows `labels` (in the spec's order)."""
        return self._restricted("attacks", "attack", labels)

    def _restricted(self, axis: str, noun: str, labels: list[str]) -> TableSpec:
        known = self.data[axis]
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ConfigError(f"table spec {self.path.name} has no {noun} {unknown[0]!r}; its {axis} are "
                              f"{', '.join(map(repr, known))}.")
        data = {**self.data, axis: {label: overrides for label, overrides in known.items() if label in labels}}
        return TableSpec(self.path, {**data, "cells": len(data["attacks"]) * len(data["defenses"])})

    def under_adaptive_suite(self) -> TableSpec:
        """The spec's defenses, one row: the `adaptive` attack suite, white-box (BPDA, EOT for random
        defenses, APGD-CE through the defense's surrogate where it has one, the indicators of attack
        failure). The published numbers are not beside it: no paper ran this attack."""
        overrides = [o for o in self.data["overrides"] if _key(o).split("@")[-1].split(".")[0] != "threat_model"]
        return TableSpec(self.path, {**self.data, "threat_model": "white_box", "paper_results": {},
                                     "caption": f"{self.data['caption']}, under the adaptive attack suite",
                                     "overrides": [*overrides, "threat_model=white_box"],
                                     "attacks": {ADAPTIVE_ROW: ["attack=adaptive"]},
                                     "cells": len(self.data["defenses"])})

    def common_overrides(self, reduced: bool, limit: int | None, user: list[str] = ()) -> list[str]:
        """The spec's overrides, with the reduced setup's keys replacing its own, then the user's
        (a key the user sets replaces the spec's; `experiment=NAME` replaces the spec's choice of
        every group that preset chooses, e.g. `experiment=cifar10_cpu` its dataset and model, and
        gives the preset's option to every other place the spec chooses that group, e.g. a black-box
        source model `model@threat_model.source.model`), then `--limit`."""
        if reduced and not self.reduced:
            raise ConfigError(f"table spec {self.path.name} names no reduced setup; run it without --reduced.")
        merged = {_key(o): o for o in self.data["overrides"]}
        merged.update({_key(o): o for o in (self.reduced["overrides"] if reduced else [])})
        for override in user:
            for preset in experiment_presets([override]):
                merged = _under_preset(merged, preset_choices(preset))
            merged[_key(override)] = override
        return [*merged.values(), *([f"dataset.limit={limit}"] if limit else [])]


def _key(override: str) -> str:
    return override.split("=", 1)[0]


def experiment_presets(overrides: list[str]) -> list[str]:
    """The experiment presets that `overrides` choose (`experiment=NAME`, `+experiment=NAME`)."""
    return [o.split("=", 1)[1] for o in overrides if _key(o).lstrip("+") == "experiment"]


def _under_preset(overrides: dict[str, str], choices: dict[str, str]) -> dict[str, str]:
    """`overrides` (by key) less the choices of the groups in `choices` (the preset's defaults make
    them), with `GROUP@PACKAGE` choices of those groups set to the preset's option."""
    kept = {}
    for key, override in overrides.items():
        group, at, _ = key.partition("@")
        if group not in choices:
            kept[key] = override
        elif at:
            kept[key] = f"{key}={choices[group]}"
    return kept


def preset_choices(name: str) -> dict[str, str]:
    """The option the experiment preset `name` chooses for each config group (its
    `override /GROUP: OPTION` defaults); empty for an unknown name, which composing the config then
    reports."""
    path = conf_dir() / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return {}
    defaults = yaml.safe_load(path.read_text()).get("defaults") or []
    return {key.removeprefix("override /"): option for entry in defaults if isinstance(entry, dict)
            for key, option in entry.items() if key.startswith("override /")}


def cell_config(overrides: tuple[str, ...]) -> str:
    """A cell's overrides as a `_global_` config: group choices become defaults, the rest values."""
    groups = {path.name for path in conf_dir().iterdir() if path.is_dir()}
    defaults, values = [], []
    for override in overrides:
        key, _, value = override.partition("=")
        if key.split("@")[0] in groups:
            defaults.append({f"override /{key}": value})
        else:
            values.append(override)
    body = OmegaConf.to_container(OmegaConf.from_dotlist(values))
    text = yaml.safe_dump({"defaults": defaults, **body}, sort_keys=False) if defaults else yaml.safe_dump(body)
    return "# @package _global_\n" + text


def write_cell_group(cells: list[Cell], search_dir: Path) -> None:
    """Write `<search_dir>/table_cell/<choice>.yaml` for every cell."""
    folder = search_dir / CELL_GROUP
    folder.mkdir(parents=True, exist_ok=True)
    for cell in cells:
        (folder / f"{cell.choice}.yaml").write_text(cell_config(cell.overrides))


def cell_overrides(search_dir: Path, choices: list[str]) -> list[str]:
    """The overrides that pick cells from the written group (a sweep when there are several)."""
    return [f"hydra.searchpath=[file://{search_dir.resolve()}]", f"+{CELL_GROUP}={','.join(choices)}"]
