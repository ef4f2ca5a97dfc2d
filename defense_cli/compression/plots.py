"""PNG plots of a decomposition: error ratios per layer (Figures 2.5-2.8), MACs per layer
(Figure 2.4) and the solver's residual per iteration (eq. 2.20)."""

from __future__ import annotations

from pathlib import Path

from defense_cli.compression.decompose import LayerReport


def _axes(title: str, ylabel: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 3.5))
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    return plt, figure, axes


def _save(plt, figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def error_plot(reports: list[LayerReport], path: Path) -> Path:
    """Linear and nonlinear approximation error ratio per layer."""
    plt, figure, axes = _axes(f"approximation error ratio ({reports[0].method})", "error ratio")
    names = [r.name for r in reports]
    axes.plot(names, [r.linear_error for r in reports], "o-", label="linear ||Y-Y'||/||Y||")
    axes.plot(names, [r.nonlinear_error for r in reports], "s-", label="nonlinear (after ReLU)")
    axes.legend()
    return _save(plt, figure, path)


def macs_plot(reports: list[LayerReport], path: Path) -> Path:
    """MACs of each decomposed layer before and after."""
    plt, figure, axes = _axes("MACs per layer", "MACs")
    positions = range(len(reports))
    axes.bar([p - 0.2 for p in positions], [r.macs_before for r in reports], 0.4, label="original")
    axes.bar([p + 0.2 for p in positions], [r.macs_after for r in reports], 0.4, label="decomposed")
    axes.set_xticks(list(positions), [r.name for r in reports])
    axes.legend()
    return _save(plt, figure, path)


def residual_plot(reports: list[LayerReport], path: Path) -> Path:
    """The solver's residual per iteration, one line per layer (log scale)."""
    plt, figure, axes = _axes("solver residual per iteration", "residual")
    for report in reports:
        if report.residuals:
            axes.semilogy(range(1, len(report.residuals) + 1), report.residuals, label=report.name)
    axes.set_xlabel("iteration")
    if any(report.residuals for report in reports):
        axes.legend(fontsize="small")
    return _save(plt, figure, path)
