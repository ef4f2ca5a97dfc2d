"""The `defense-cli` command line (Typer). The only module that parses arguments."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from typing import Callable, Optional, TypeVar

import typer
from omegaconf import DictConfig, OmegaConf

from defense_cli.config import COMPRESS_CONFIG_NAME, GROUPS, compose, group_options
from defense_cli.errors import ConfigError, TrackingUnavailable
from defense_cli.results_table import console as report_console
from defense_cli.termination import TerminatedBySignal

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True)
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": ["--help"]}
#: Hydra's own flags that `run`, `train` and `compress` pass through (the value of --cfg etc. follows)
HYDRA_FLAGS = ("-m", "--multirun", "--cfg", "-c", "--resolve", "--package", "-p", "--info", "-i",
               "--config-name", "-cn", "--config-dir", "-cd", "--hydra-help", "--experimental-rerun")
#: defense-cli's own flags of `run`: each stands for a root config override
OWN_FLAGS = {"--quiet": "quiet=true", "-q": "quiet=true"}
EXIT_BAD_INPUT = 2
EXIT_TRACKING_UNAVAILABLE = 3


def _dispatch(task: Callable[[DictConfig], object], args: list[str]) -> None:
    """Run a Hydra task; config mistakes exit 2 with one paragraph, crashes exit 1."""
    from defense_cli.hydra_app import launch

    unknown = [a for a in args if a.startswith("-") and a.split("=")[0] not in HYDRA_FLAGS]
    if unknown:
        _fail(f"unknown option {unknown[0]!r}. Arguments are Hydra overrides (GROUP=OPTION, KEY=VALUE, "
              f"+KEY=VALUE) and these options: {', '.join(HYDRA_FLAGS[:6])}, --info, --config-name, "
              "--config-dir (run: --quiet); see --help.")
    _reported(lambda: launch(task, args), args)


def _reported(call: Callable[[], T], args: list[str]) -> T:
    """`call()`, with its failures turned into exits: config mistakes 2 with one paragraph, an
    unreachable store its own code, a signal its shell code (128 + signal), crashes 1."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return call()
    except ConfigError as err:
        _fail(str(err))
    except TrackingUnavailable as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_TRACKING_UNAVAILABLE)
    except (HydraException, OmegaConfBaseException) as err:
        _fail(explain_config_error(err, args))
    except TerminatedBySignal as stopped:
        typer.echo(f"stopped by {stopped.signal_name}; the open MLflow runs are marked KILLED", err=True)
        raise typer.Exit(stopped.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)
    except Exception:
        traceback.print_exc()
        raise typer.Exit(1)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def explain_config_error(err: Exception, args: list[str]) -> str:
    """One paragraph for a Hydra/OmegaConf error: what is wrong, and what is allowed there."""
    text = " ".join(str(err).split()).split(" Config search path:")[0]
    match = re.search(r"Could not override '([\w.]+)'", text)
    if match and "+" + match.group(1) in text:
        full_key = match.group(1)
        parent = full_key.rpartition(".")[0]
        allowed = _allowed_keys(parent, args)
        return (f"unknown config key '{full_key}'. Allowed keys in '{parent or 'the root config'}': "
                f"{', '.join(allowed)}. (To add a new key on purpose, write +{full_key}=VALUE.)")
    return text


def _allowed_keys(parent: str, args: list[str]) -> list[str]:
    group_choices = [a for a in args if re.fullmatch(r"[\w/]+=[^,=]+", a)]
    try:
        cfg = compose(group_choices)
    except Exception:
        cfg = compose()
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _run_task(cfg: DictConfig) -> float:
    """One experiment; returns its search score (what a Hydra sweeper such as Optuna maximises).

    Termination signals raise here too when a launcher runs the job in a worker process of its own
    (Ray, submitit), so that a job stopped by SIGTERM closes its run KILLED there as well.
    """
    from defense_cli.tasks.run import run_experiment
    from defense_cli.termination import signals_raise

    with signals_raise():
        return run_experiment(cfg)["search_score"]


def _train_task(cfg: DictConfig) -> None:
    from defense_cli.tasks.train import train_only

    train_only(cfg)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"defense-cli {version('defense-cli')}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="print the version and exit")) -> None:
    """Run, sweep and compare adversarial defenses, attacks and CNN compressions from Hydra
    configs; results go to MLflow."""


@app.command(context_settings=HYDRA_ARGS)
def run(ctx: typer.Context) -> None:
    """Run one experiment (or a sweep with -m) and log it to MLflow.

    Arguments are Hydra overrides: GROUP=OPTION picks a config file (`defense-cli list GROUP` shows the options), KEY=VALUE sets a value (attack.eps=0.05), +KEY=VALUE adds a new key.

    -m / --multirun sweeps every combination of comma-separated values (a,b) or range(start,stop,step), one MLflow child run per job, and prints one table of the jobs at the end. --quiet (-q) prints one line per job instead of its results table. resume=true reuses the FINISHED run of a job's config instead of running it again. --cfg job prints the composed config and stops (--cfg hydra, --cfg all; --resolve resolves interpolations).

    Examples:

      defense-cli run defense=jpeg attack=pgd attack.eps=0.0313 threat_model=gray_box

      defense-cli run -m defense=none,jpeg attack.eps=0.01,0.03 dataset.limit=200

      defense-cli run defense=splic defense@train.preprocess=splic attack=bpda

      defense-cli run --cfg job defense=menet
    """
    _dispatch(_run_task, [OWN_FLAGS.get(arg, arg) for arg in ctx.args])


@app.command(context_settings=HYDRA_ARGS)
def train(ctx: typer.Context) -> None:
    """Train the classifier alone (or reuse the cached one) and report its test accuracy.

    Example: defense-cli train model=lenet train.epochs=5
    """
    _dispatch(_train_task, list(ctx.args))


def _compress_task(cfg: DictConfig) -> None:
    from defense_cli.tasks.compress import compress

    compress(cfg)


@app.command("compress", context_settings=HYDRA_ARGS)
def compress_command(ctx: typer.Context) -> None:
    """Decompose the classifier's conv layers (L1-LRAR, NL2A or VH2), fine-tune, and report
    per-layer FLOPs and errors, accuracy, params and measured latency to MLflow.

    Arguments are Hydra overrides on conf/compress_config.yaml (the run config + a compress option).

    Examples:

      defense-cli compress model=vgg16_bn dataset=cifar10 compress.rank=0.25

      defense-cli compress compress=nl2a compress.procedure=iterative compress.finetune.epochs=1

      defense-cli run model=compressed model.entry=<the file compress printed>
    """
    _dispatch(_compress_task, ["--config-name", COMPRESS_CONFIG_NAME, *ctx.args])


@app.command("table")
def table_command(
    spec: str = typer.Argument(..., help="a table spec, e.g. experiments/000_table4_2_white_box_cifar10.yaml"),
    overrides: Optional[list[str]] = typer.Argument(None, help="extra overrides (hydra/launcher=joblib, ...)"),
    limit: Optional[int] = typer.Option(None, min=1, help="test images per cell (dataset.limit)"),
    reduced: bool = typer.Option(False, help="the spec's reduced setup for a machine without a GPU"),
    rerun: bool = typer.Option(False, help="run every cell again, even those with a FINISHED run"),
    metric: str = typer.Option("robust_accuracy", help="the metric in the cells"),
    defenses: Optional[str] = typer.Option(None, help="comma-separated defense labels: run only these columns "
                                           "(the table shows every cell with a run)"),
    attacks: Optional[str] = typer.Option(None, help="comma-separated attack labels: run only these rows "
                                          "(the table shows every cell with a run)"),
    adaptive: bool = typer.Option(False, help="the spec's defenses under the adaptive attack suite (white-box)"),
) -> None:
    """Run a paper-table spec as one Hydra multirun (one MLflow parent, one child per cell,
    FINISHED cells reused) and write the table, measured (published), to
    experiments/results/<spec>/[<setup>/] (setup: the experiment preset, reduced, adaptive).

    Example: defense-cli table experiments/000_table4_2_white_box_cifar10.yaml --reduced --limit 200

    Example: defense-cli table experiments/000_table4_3_gray_box_cifar10.yaml experiment=cifar10_cpu --adaptive
    """
    from pathlib import Path

    from defense_cli.hydra_app import launch
    from defense_cli.tasks.table import TableOptions, run_table

    options = TableOptions(limit, reduced, rerun, metric, list(overrides or []), _labels(defenses), _labels(attacks),
                           adaptive)
    # the cells' launch raises through run_table, so a signal closes the table's parent run too
    result = _reported(lambda: run_table(Path(spec), options, lambda args: launch(_run_task, args)),
                       options.overrides)
    typer.echo(result.markdown)
    typer.echo(f"cells run: {result.ran}, reused: {result.reused}; written to {result.folder}; "
               f"MLflow parent run {result.parent_run_id}")


def _labels(listed: Optional[str]) -> list[str]:
    return [label.strip() for label in listed.split(",")] if listed else []


@app.command("report")
def report_command(
    overrides: Optional[list[str]] = typer.Argument(None, help="overrides that choose the store (paths.home=...)"),
    rows: str = typer.Option("defense", help="config key, group or metric of the rows"),
    cols: str = typer.Option("attack.eps", help="config key, group or metric of the columns"),
    value: str = typer.Option("robust_accuracy", help="the metric in the cells"),
    experiment: Optional[str] = typer.Option(None, help="MLflow experiment (default: mlflow.experiment_name)"),
    parent: Optional[str] = typer.Option(None, help="a sweep's or a table's parent run id"),
    run_id: Optional[list[str]] = typer.Option(None, "--run", help="run id(s) to report on"),
    out: str = typer.Option("report", help="output folder"),
) -> None:
    """Pivot, curves, CSV, RobustBench-layout JSON and a self-contained Markdown/HTML report over
    the FINISHED runs of an experiment, a sweep or table parent, or given runs.

    Example: defense-cli report --parent <sweep parent run id> --rows defense --cols attack.eps
    """
    from pathlib import Path

    from defense_cli.tasks.report import ReportOptions, build_report

    options = ReportOptions(rows, cols, value, experiment, parent, list(run_id or []), Path(out))
    try:
        result = build_report(compose(overrides or []), options)
    except ConfigError as err:
        _fail(str(err))
    report_console().print(result.table.to_markdown(stralign="right", disable_numparse=True))
    typer.echo(f"{result.n_runs} runs; report, CSV, JSON and {len(result.figures)} figures in {result.folder}")


@app.command("list")
def list_options(group: Optional[str] = typer.Argument(None, help="a config group, e.g. defense")) -> None:
    """List the options of each config group with a one-line description.

    Example: defense-cli list defense
    """
    groups = [group] if group else list(GROUPS)
    for name in groups:
        try:
            options = group_options(name)
        except ConfigError as err:
            _fail(str(err))
        typer.echo(f"{name}:")
        for option, description in options.items():
            typer.echo(f"  {option:<16} {description}")


@app.command()
def ui(port: int = typer.Option(5000, help="port on 127.0.0.1"),
       overrides: Optional[list[str]] = typer.Argument(None, help="overrides that choose the store")) -> None:
    """Start the MLflow UI on 127.0.0.1 against the project's tracking store.

    Example: defense-cli ui --port 5001
    """
    import signal

    from defense_cli.tracking import Tracker, is_server, runs_table_url, tracking_uri

    cfg = compose(overrides or [])
    uri = tracking_uri(cfg)
    if is_server(uri):
        typer.echo(f"The tracking server serves its own UI: open {uri} in a browser.")
        return
    experiment = Tracker.from_config(cfg).open_on_runs()
    typer.echo(f"MLflow UI for {uri}: the runs of experiment {cfg.mlflow.experiment_name!r}, with the key "
               f"columns, are at\n{runs_table_url(f'http://127.0.0.1:{port}', experiment)}")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
               "--port", str(port)]
    server = subprocess.Popen(command, start_new_session=True)  # its own group: the server's workers stop with it

    def stop(signum, frame) -> None:
        os.killpg(server.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    code = server.wait()
    raise typer.Exit(0 if code < 0 else code)  # < 0: stopped by the signal passed on


@app.command()
def runs(
    stale: bool = typer.Option(False, "--stale", help="mark RUNNING runs that cannot be alive FAILED"),
    max_age: float = typer.Option(900.0, "--max-age", help="seconds without a heartbeat before a run of "
                                                          "any host counts as stale"),
    status: Optional[str] = typer.Option(None, help="only runs in this state: RUNNING, FINISHED, FAILED, KILLED"),
    limit: int = typer.Option(50, help="at most this many runs, newest first"),
    overrides: Optional[list[str]] = typer.Argument(None, help="overrides that choose the store"),
) -> None:
    """List the project's runs; with --stale, close the ones whose process died.

    A RUNNING run is stale when its process is gone (a run of this host) or its heartbeat is older
    than --max-age (any host: a SIGKILLed job, a lost node). Stale runs are marked FAILED with the
    reason in the tag `stale_reason`. `defense-cli run` does this by itself for dead processes of
    its own host.

    Examples:

      defense-cli runs --status RUNNING

      defense-cli runs --stale --max-age 600
    """
    from defense_cli.tasks.runs import list_runs

    allowed = ("RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED")
    if status is not None and status.upper() not in allowed:
        _fail(f"--status {status!r} is not allowed; use one of {', '.join(allowed)}.")
    if max_age <= 0:
        _fail(f"--max-age {max_age:g} is not allowed: it must be a positive number of seconds.")
    try:
        list_runs(compose(overrides or []), stale, max_age, status and status.upper(), limit)
    except ConfigError as err:
        _fail(str(err))


@app.command()
def server(
    backend_store_uri: Optional[str] = typer.Option(
        None, help="where runs are stored: a database URI (sqlite:///..., postgresql://...); "
                   "default: the project's SQLite store"),
    artifacts: Optional[str] = typer.Option(
        None, help="where artifacts are stored: a folder or an object store URI (s3://...); "
                   "default: mlartifacts/ beside the SQLite store"),
    host: str = typer.Option("127.0.0.1", help="address to bind; name one (or 0.0.0.0) for other machines"),
    port: int = typer.Option(5000, min=1, max=65535, help="port"),
    workers: int = typer.Option(2, min=1, help="web worker processes"),
    overrides: Optional[list[str]] = typer.Argument(None, help="overrides that choose the default store"),
) -> None:
    """Start an MLflow tracking server that many processes and machines can write to, and print the
    MLFLOW_TRACKING_URI to export for the jobs. Ctrl-C or SIGTERM stops it.

    Examples:

      defense-cli server --port 5000

      defense-cli server --host 0.0.0.0 --backend-store-uri postgresql://db/mlflow --artifacts s3://bucket/runs
    """
    from defense_cli.tracking import is_server, tracking_uri
    from defense_cli.tracking_server import client_uri, default_artifacts, serve, server_command

    store = backend_store_uri or tracking_uri(compose(overrides or []))
    if is_server(store):
        _fail(f"--backend-store-uri {store!r} is a tracking server, not a store: give a database URI "
              "(sqlite:///<path>, postgresql://..., mysql://...).")
    artifact_store = artifacts or default_artifacts(store)
    uri = client_uri(host, port)
    typer.echo(f"MLflow tracking server for {store} (artifacts: {artifact_store}) at {uri}")
    typer.echo(f"export MLFLOW_TRACKING_URI={uri}")
    raise typer.Exit(serve(server_command(store, artifact_store, host, port, workers)))


bench_app = typer.Typer(help="Benchmarks that print speed and quality figures (never timed tests).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def _bench_setup(device: str, cache: Optional[str]):
    from pathlib import Path

    from defense_cli.tasks.prepare import cache_dir, resolve_device

    try:
        dev = resolve_device(device)
    except ConfigError as err:
        _fail(str(err))
    return dev, Path(cache) if cache else cache_dir(compose())


def _print_bench(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]], device) -> None:
    """A benchmark's figures as a right-aligned table, followed by the machine they were taken on."""
    from rich.table import Table

    from defense_cli.bench.machine import describe_machine

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    console = report_console()
    console.print(table)
    console.print(f"machine: {describe_machine(device)}")


def _or_dash(value: float | None, spec: str, suffix: str = "") -> str:
    """`value` formatted with `spec` and `suffix`, or "-" when there is none."""
    return "-" if value is None else format(value, spec) + suffix


@bench_app.command("defenses")
def bench_defenses_command(
    defense: Optional[list[str]] = typer.Option(None, "--defense", "-d", help="defense option(s); default: all"),
    images: int = typer.Option(512, help="CIFAR-10 test images in the batch"),
    reference_images: int = typer.Option(64, help="images given to the slow per-image reference"),
    repeats: int = typer.Option(1, help="timed repeats after one warm-up, the reference taking turns "
                                        "(best of each is kept)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    reference: bool = typer.Option(True, help="also time the simple per-image reference versions"),
    cache: Optional[str] = typer.Option(None, help="cache folder (default: the project's)"),
) -> None:
    """Images/s, PSNR and SSIM of each defense on CIFAR-10 (JPEG copy) test images, with the
    speed-up over a simple per-image reference measured in the same run.

    Example: defense-cli bench defenses -d jpeg -d splic --images 512
    """
    from defense_cli.bench.defenses import bench_defenses

    dev, cache_path = _bench_setup(device, cache)
    try:
        rows = bench_defenses(defense, images, dev, cache_path, repeats, reference, reference_images)
    except ConfigError as err:
        _fail(str(err))
    _print_bench(
        f"defenses on {images} CIFAR-10 (JPEG copy) test images, {dev}",
        ("defense", "images/s", "PSNR dB", "SSIM", "reference images/s", "speed-up", "max |diff| to ref",
         "RMSE to ref"),
        [(row.name, f"{row.images_per_second:,.1f}", f"{row.psnr:.2f}", f"{row.ssim:.4f}",
          _or_dash(row.reference_images_per_second, ",.1f"), _or_dash(row.speedup, ".1f", "x"),
          _or_dash(row.max_abs_diff_to_reference, ".2e"), _or_dash(row.rmse_to_reference, ".2e")) for row in rows],
        dev)


@bench_app.command("attacks")
def bench_attacks_command(
    model: Optional[list[str]] = typer.Option(None, "--model", "-m", help="small_cnn and/or resnet18; default: both"),
    images: int = typer.Option(128, help="images in the batch"),
    steps: int = typer.Option(10, help="PGD steps"),
    repeats: int = typer.Option(1, help="timed repeats after one warm-up (best is kept)"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
    eot_defense: Optional[list[str]] = typer.Option(None, "--eot-defense", help="random defenses for the EOT rows; default: splic, menet"),
    eot_samples: int = typer.Option(10, help="EOT samples per gradient in the EOT rows"),
    eot_images: int = typer.Option(4, help="images in the EOT rows' batch"),
    eot_steps: int = typer.Option(1, help="BPDA-PGD steps in the EOT rows"),
) -> None:
    """PGD steps/s through the foolbox adapter and through a minimal torch PGD loop on the same
    (untrained) model and batch: small_cnn on MNIST-sized and resnet18 on 32x32 images. Then
    white-box BPDA-PGD + EOT against random defenses: the draws batched into one defense call
    against the same draws in a Python loop.

    Example: defense-cli bench attacks --images 128 --steps 10 --eot-samples 10
    """
    from defense_cli.bench.attacks import bench_attacks, bench_eot

    dev, _ = _bench_setup(device, None)
    try:
        rows = bench_attacks(model, images, steps, dev, repeats)
        eot_rows = bench_eot(eot_defense or ["splic", "menet"], eot_images, eot_steps, eot_samples, dev, repeats)
    except ValueError as err:
        _fail(str(err))
    _print_bench(
        f"Linf PGD, {images} images, {steps} steps, {dev}",
        ("model", "input", "foolbox steps/s", "torch loop steps/s", "time ratio", "max |diff|"),
        [(row.model, "x".join(map(str, row.input_shape)), f"{row.foolbox_steps_per_second:,.2f}",
          f"{row.loop_steps_per_second:,.2f}", f"{row.time_ratio:.2f}x", f"{row.max_abs_diff:.1e}") for row in rows],
        dev)
    _print_bench(
        f"BPDA-PGD + EOT on small_cnn, {eot_images} images, {eot_steps} steps, {eot_samples} EOT samples, {dev}",
        ("defense", "batched draws s", "Python loop of draws s", "speed-up"),
        [(row.defense, f"{row.batched_seconds:.3f}", f"{row.loop_seconds:.3f}", f"{row.speedup:.2f}x")
         for row in eot_rows], dev)


@bench_app.command("compression")
def bench_compression_command(
    rank: Optional[list[float]] = typer.Option(None, "--rank", "-r", help="rank ratios; default 1, 1/2, 1/4"),
    batch_size: int = typer.Option(1, help="images per forward pass (latency is reported per image)"),
    repeats: int = typer.Option(20, help="timed passes after warm-up (the median is kept)"),
    warmup: int = typer.Option(3, help="untimed passes first"),
    device: str = typer.Option("cpu", help="cpu, cuda or auto"),
) -> None:
    """VGG16-BN (CIFAR) at full, 1/2 and 1/4 rank: MACs, params and measured latency per image,
    next to the thesis's Table 2.2 speed-ups (1.76x, 2.78x).

    Example: defense-cli bench compression --repeats 20
    """
    from defense_cli.bench.compression import bench_compression

    ranks = rank or [1.0, 0.5, 0.25]
    if not all(0 < r <= 1 for r in ranks):
        _fail(f"--rank {ranks} is not allowed: every rank must be a ratio in (0, 1].")
    dev, _ = _bench_setup(device, None)
    rows = bench_compression(ranks, dev, batch_size, repeats, warmup)
    _print_bench(
        f"VGG16-BN (CIFAR-10 input), batch {batch_size}, {dev}, median of {repeats}",
        ("rank", "params", "MACs", "FLOPs ratio", "ms / image", "speed-up", "thesis speed-up"),
        [(f"{row.rank:g}", f"{row.params:,}", f"{row.macs:.3e}", f"{row.flops_ratio:.2f}x", f"{row.latency_ms:.2f}",
          f"{row.speedup:.2f}x", _or_dash(row.thesis_speedup, ".2f", "x")) for row in rows],
        dev)


if __name__ == "__main__":
    app()
