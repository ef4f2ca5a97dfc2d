"""The `compress` task: classifier -> decomposition -> fine-tuning -> cost and accuracy -> MLflow.

The compressed model is cached under `<cache>/models/compressed-<model>-<dataset>-<key>.pt` (key:
the classifier's key, the `compress` config but its latency settings, and the test subset); `run`
uses it with `model=compressed model.entry=<that file>`. FLOPs and latency are measured afresh
on every call (they depend on the machine, not on the entry).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from defense_cli.compression.cost import count_flops, median_latency, parameter_count
from defense_cli.compression.decompose import LayerReport, chosen_layers, decompose_model, structure_of
from defense_cli.compression.plots import error_plot, macs_plot, residual_plot
from defense_cli.compression.settings import CompressSettings
from defense_cli.compression.stored import compressed_backbone, entry_path
from defense_cli.data import ImageSet
from defense_cli.tasks.prepare import Prepared, prepare, run_tags
from defense_cli.models import Classifier, build_classifier
from defense_cli.results_table import print_table, results_table
from defense_cli.tracking import RunLog, current_parent_run, flatten
from defense_cli.artifact_cache import cache_key, cached
from defense_cli.training.classifiers import obtain_classifier
from defense_cli.training.trainer import train_classifier

TOP5_MIN_CLASSES = 6


def compress(cfg: DictConfig) -> dict[str, float]:
    """The `compress` task. Returns the whole-model metrics it logged."""
    settings = CompressSettings.from_config(cfg.compress)
    p = prepare(cfg)
    chosen_layers(build_classifier(cfg.model, cfg.dataset), p.splits.test.shape, settings)  # fails before the run
    name = cfg.mlflow.run_name or f"compress-{cfg.dataset.name}-{cfg.model.name}-{settings.method}-r{settings.rank}"
    tags = {**run_tags(cfg, "compress"), "compress_method": settings.method}
    with p.tracker.run(name, tags, current_parent_run()) as run:
        run.params(flatten(cfg))
        run.text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        trained = obtain_classifier(cfg.dataset, cfg.model, cfg.train, p.splits, p.cache, p.device)
        key = cache_key({"classifier": trained.key, "limit": cfg.dataset.limit,
                         "compress": {k: v for k, v in OmegaConf.to_container(cfg.compress).items() if k != "latency"}})
        path = entry_path(p.cache, cfg.model.name, cfg.dataset.name, key)
        payload, hit = cached(path, key, lambda: _build_entry(p, settings, trained.model))
        compressed = Classifier(compressed_backbone(cfg.dataset.channels, cfg.dataset.num_classes, str(path)),
                                cfg.dataset.mean, cfg.dataset.std).to(p.device).eval()
        reports = [LayerReport(**row) for row in payload["reports"]]
        metrics = {**_prefixed(topk_accuracy(trained.model, p.splits.test, p.device), "original"),
                   **payload["accuracy"], **_cost(trained.model, compressed, p, settings)}
        _log(run, reports, metrics)
        run.tags({"compressed_entry": str(path), "compressed_cache_hit": str(hit), "classifier_key": trained.key})
    print_table(layer_table(reports))
    context = {"data": f"{cfg.dataset.name} ({len(p.splits.test)} test images)", "model": cfg.model.name,
               "method": f"{settings.method}, rank {settings.rank}, {settings.procedure}",
               "mlflow run": run.run_id}
    print_table(results_table("defense-cli compress", metrics, context))
    print(f"compressed model (whole path, to copy):\n{path}\nuse it: defense-cli run model=compressed "
          f"model.entry={path}")
    return metrics


def _build_entry(p: Prepared, settings: CompressSettings, model: Classifier) -> dict:
    cfg = p.cfg
    order = torch.randperm(len(p.splits.train), generator=torch.Generator().manual_seed(settings.seed))
    images = p.splits.train.float_images(order[: settings.images])
    finetune_cfg = OmegaConf.merge(cfg.train, {"epochs": settings.finetune["epochs"], "lr": settings.finetune["lr"],
                                               "schedule": "step", "step_size": settings.finetune["step_size"],
                                               "batch_size": settings.finetune["batch_size"]})

    def finetune(target: torch.nn.Module) -> None:
        train_classifier(target, p.splits.train, finetune_cfg, p.device, desc="fine-tune")

    tuning = finetune if settings.finetune["epochs"] > 0 else None
    decomposition = decompose_model(model, images, settings, tuning)
    accuracy = _prefixed(topk_accuracy(decomposition.model, p.splits.test, p.device), "decomposed")
    if tuning is not None and settings.procedure == "sequential":
        finetune(decomposition.model)
        accuracy.update(_prefixed(topk_accuracy(decomposition.model, p.splits.test, p.device), "finetuned"))
    return {"base_model": OmegaConf.to_container(cfg.model, resolve=True),
            "dataset": {"name": cfg.dataset.name, "channels": cfg.dataset.channels,
                        "num_classes": cfg.dataset.num_classes},
            "structure": structure_of(decomposition),
            "state_dict": {k: v.cpu() for k, v in decomposition.model.backbone.state_dict().items()},
            "reports": [asdict(report) for report in decomposition.reports], "accuracy": accuracy}


@torch.no_grad()
def topk_accuracy(model: torch.nn.Module, data: ImageSet, device: torch.device, batch_size: int = 512) -> dict[str, float]:
    """Top-1 accuracy, and top-5 when there are more than 5 classes."""
    model.eval()
    hits, classes = {1: 0, 5: 0}, 0
    for images, labels in data.batches(batch_size, device=device):
        logits = model(images)
        ranked = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits[1] += (ranked[:, 0] == labels).sum().item()
        hits[5] += (ranked == labels[:, None]).any(dim=1).sum().item()
        classes = logits.shape[1]
    result = {"accuracy_top1": hits[1] / max(1, len(data))}
    if len(data) and classes >= TOP5_MIN_CLASSES:
        result["accuracy_top5"] = hits[5] / len(data)
    return result


def _prefixed(values: dict[str, float], suffix: str) -> dict[str, float]:
    return {f"{key}_{suffix}": value for key, value in values.items()}


def _cost(original: torch.nn.Module, compressed: torch.nn.Module, p: Prepared,
          settings: CompressSettings) -> dict[str, float]:
    """Params, FLOPs and MACs per image, and median latency per batch size and device, before and after."""
    shape = (1, *p.splits.test.shape)
    metrics: dict[str, float] = {}
    for label, model in (("original", original), ("compressed", compressed)):
        flops = count_flops(model, shape)
        metrics.update({f"params_{label}": parameter_count(model), f"flops_{label}": flops,
                        f"macs_{label}": flops / 2})
    metrics["flops_remain_ratio"] = metrics["flops_compressed"] / metrics["flops_original"]
    devices = [torch.device("cpu")] + ([p.device] if p.device.type == "cuda" else [])
    for device in devices:
        for batch in settings.latency["batch_sizes"]:
            times = {}
            for label, model in (("original", original), ("compressed", compressed)):
                times[label] = median_latency(model.to(device), (batch, *shape[1:]), device,
                                              settings.latency["repeats"], settings.latency["warmup"])
                metrics[f"latency_ms_{device.type}_b{batch}_{label}"] = 1000 * times[label]
            metrics[f"speedup_{device.type}_b{batch}"] = times["original"] / times["compressed"]
        original.to(p.device), compressed.to(p.device)
    return metrics


def _log(run: RunLog, reports: list[LayerReport], metrics: dict[str, float]) -> None:
    run.metrics(metrics)
    for r in reports:
        run.metrics({f"layer.{r.name}.macs_before": r.macs_before, f"layer.{r.name}.macs_after": r.macs_after,
                     f"layer.{r.name}.remain_ratio": r.remain_ratio, f"layer.{r.name}.rank": r.rank,
                     f"layer.{r.name}.linear_error": r.linear_error,
                     f"layer.{r.name}.nonlinear_error": r.nonlinear_error})
        if r.residuals:
            run.series({f"solver_residual.{r.name}": r.residuals}, first_step=0)
    run.json({"layers": [{**asdict(r), "remain_ratio": r.remain_ratio} for r in reports]}, "layers.json")
    with tempfile.TemporaryDirectory() as tmp:
        for plot in (error_plot, macs_plot, residual_plot):
            run.artifact(plot(reports, Path(tmp) / f"{plot.__name__.removesuffix('_plot')}.png"), "plots")


def layer_table(reports: list[LayerReport]) -> Table:
    """Per layer: MACs before/after and remain ratio (Table 2.6), error ratios (Table 2.7)."""
    table = Table(title="decomposed layers (MACs = FLOPs / 2, the thesis's FLOPs)")
    for column in ("layer", "n", "m", "MACs orig", "MACs approx", "remain", "lin. err", "nonlin. err", "iters"):
        table.add_column(column, justify="right")
    for r in reports:
        table.add_row(r.name, str(r.filters), str(r.rank), f"{r.macs_before:.2e}", f"{r.macs_after:.2e}",
                      f"{r.remain_ratio:.2f}", f"{r.linear_error:.3f}", f"{r.nonlinear_error:.3f}",
                      str(len(r.residuals)))
    return table
