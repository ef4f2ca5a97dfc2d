"""The package's imports point one way: no module imports a module of a higher layer, and there is
no import circle. Every import statement counts, also the ones inside functions (a lazy import is
still a dependency) and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "defense_cli"

#: Units (top-level modules and subpackages of defense_cli) from the bottom layer up. A unit may
#: import units of lower layers and modules of its own unit, never one of its own layer or above.
LAYERS = [
    {"errors", "environment", "termination", "progress", "classifier_evaluations"},
    {"artifact_cache", "instantiate", "parameter_checks", "config", "tracking", "run_search", "results_table",
     "image_quality", "metrics", "indicators", "visualize", "tracking_server"},
    {"data", "models", "table_spec"},
    {"defenses"},
    {"attacks"},
    {"training", "compression", "evaluation", "validity"},
    {"results", "paper_table", "run_report", "report_plots", "sweep_summary"},
    {"tasks", "bench"},
    {"hydra_app"},
    {"cli"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every defense_cli module `path` imports (`from defense_cli import x` counts as defense_cli.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("defense_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("defense_cli"):
            if node.module == "defense_cli":
                found |= {f"defense_cli.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
    return found


GRAPH = {module_name(path): imported_modules(path) for path in PACKAGE.rglob("*.py")}


def unit(module: str) -> str:
    return module.split(".")[1] if "." in module else "defense_cli"


def test_every_unit_has_a_layer():
    assert {unit(m) for m in GRAPH if m != "defense_cli"} - set(LAYER_OF) == set()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_from_a_lower_layer_to_a_higher_one(module):
    if module == "defense_cli":
        return
    upward = [imported for imported in GRAPH[module] if unit(imported) != unit(module)
              and LAYER_OF[unit(imported)] >= LAYER_OF[unit(module)]]
    assert upward == [], f"{module} imports {upward} of its own layer or above"


def test_no_import_circle_between_modules():
    """Depth-first search for a cycle; a package's __init__ importing its own submodules is the
    package's public face, so an edge from a submodule to its own package's __init__ counts too."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(GRAPH.get(module, ())):
            if imported not in GRAPH:
                continue
            if state.get(imported) == "open":
                return path[path.index(imported):] + [imported]
            if imported not in state:
                cycle = visit(imported)
                if cycle:
                    return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


def test_the_check_would_catch_an_upward_import():
    """The walk sees imports inside functions: a known case of the project's own code."""
    assert "defense_cli.compression.decompose" in GRAPH["defense_cli.compression.stored"]
    assert LAYER_OF["models"] < LAYER_OF["compression"]
