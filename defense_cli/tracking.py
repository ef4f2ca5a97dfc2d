"""The only module that talks to MLflow.

Runs are written through `MlflowClient` to a SQLite store (`sqlite:///<home>/mlflow.db` unless
`mlflow.tracking_uri` or `MLFLOW_TRACKING_URI` says otherwise). A run is opened only after the
config and inputs are validated, and any exception inside it marks it FAILED with the error as a
tag (KILLED on Ctrl-C). A Hydra sweep gets one parent run, created by `SweepParentRunCallback`,
and every job becomes its child.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

PARENT_RUN_FILE = "mlflow_parent_run.json"
MAX_PARAM_LENGTH = 6000
BATCH_SIZE = 100


def home_dir(cfg: DictConfig) -> Path:
    """The project home: `paths.home`, else $DEFENSE_CLI_HOME, else the working directory."""
    home = cfg.paths.get("home") or os.environ.get("DEFENSE_CLI_HOME") or os.getcwd()
    return Path(home).expanduser().resolve()


def tracking_uri(cfg: DictConfig) -> str:
    """`mlflow.tracking_uri`, else $MLFLOW_TRACKING_URI, else a SQLite file in the home folder."""
    explicit = cfg.mlflow.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    return explicit or f"sqlite:///{home_dir(cfg) / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live in `mlruns/` beside the database file (None: MLflow's default)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").resolve().as_uri()


def flatten(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"attack.eps": "0.03", ...}, values as strings cut to MLflow's limit."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def git_commit() -> str:
    """The commit of the checkout this package runs from, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


class Tracker:
    """Writes runs of one experiment to one tracking store."""

    def __init__(self, uri: str, experiment_name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = self._experiment_id(experiment_name)

    def _experiment_id(self, name: str) -> str:
        """The experiment's id, creating it; a sweep's parallel jobs may race to create it."""
        existing = self.client.get_experiment_by_name(name)
        if existing is not None:
            return existing.experiment_id
        try:
            return self.client.create_experiment(name, artifact_root(self.uri))
        except Exception:
            existing = self.client.get_experiment_by_name(name)
            if existing is None:
                raise
            return existing.experiment_id

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Tracker:
        return cls(tracking_uri(cfg), cfg.mlflow.experiment_name)

    @contextmanager
    def run(self, name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> Iterator[RunLog]:
        """Open a run; close it FINISHED, or FAILED / KILLED with the error when the body raises."""
        from defense_cli.environment import environment_tags, installed_distributions, process_tags

        all_tags = {"mlflow.runName": name, **environment_tags(), **process_tags(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        log = RunLog(self.client, run.info.run_id)
        log.text(installed_distributions(), "environment.txt")
        try:
            yield log
        except KeyboardInterrupt:
            log.fail("interrupted (KeyboardInterrupt)", status="KILLED")
            raise
        except BaseException as err:
            log.fail(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
            if parent_run_id:
                self.client.set_terminated(parent_run_id, status="FAILED")
            raise
        self.client.set_terminated(log.run_id, status="FINISHED")

    def finished_runs(self, tags: Mapping[str, str], metric: str) -> dict[str, tuple[dict[str, str], float]]:
        """FINISHED runs of this experiment carrying all `tags`: run id -> (its tags, its `metric`)."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        clauses.append("attributes.status = 'FINISHED'")
        runs = self.client.search_runs([self.experiment_id], " and ".join(clauses), max_results=1000)
        return {run.info.run_id: (dict(run.data.tags), run.data.metrics[metric])
                for run in runs if metric in run.data.metrics}


class RunLog:
    """Params, metrics, tags and artifacts of one open run."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), BATCH_SIZE):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH_SIZE])

    def metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.series({name: [value] for name, value in metrics.items()}, first_step=step)

    def series(self, series: Mapping[str, Sequence[float]], first_step: int = 1) -> None:
        """Per-step metrics: value i of each series is logged at step first_step + i."""
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        items = [Metric(name, float(v), now, first_step + i) for name, values in series.items()
                 for i, v in enumerate(values)]
        for start in range(0, len(items), BATCH_SIZE):
            self.client.log_batch(self.run_id, metrics=items[start : start + BATCH_SIZE])

    def tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def text(self, text: str, filename: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / filename
            target.write_text(text)
            self.client.log_artifact(self.run_id, str(target))

    def json(self, data: Mapping[str, Any], filename: str) -> None:
        self.text(json.dumps(data, indent=2, sort_keys=True, default=str), filename)

    def fail(self, error: str, status: str = "FAILED") -> None:
        self.client.set_tag(self.run_id, "error", error[:5000])
        self.client.set_terminated(self.run_id, status=status)


# --- Hydra multirun: one parent run per sweep -------------------------------------------------

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[misc,assignment]


class SweepParentRunCallback(Callback):
    """Creates the sweep's parent run before the jobs start and finishes it after they end.

    The parent run id is written to `<sweep dir>/mlflow_parent_run.json`, which each job (in this
    process or in a launcher's worker process) reads to attach itself as a child.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from defense_cli.errors import ConfigError

        try:
            tracker = Tracker.from_config(config)
        except Exception as err:
            raise ConfigError(f"mlflow.tracking_uri={tracking_uri(config)!r} cannot be opened: {err}") from err
        sweep_dir = Path(config.hydra.sweep.dir)
        overrides = " ".join(config.hydra.overrides.task)
        run = tracker.client.create_run(
            tracker.experiment_id,
            tags={"mlflow.runName": f"sweep {overrides}"[:250], "sweep": "parent",
                  "sweep_dir": str(sweep_dir.resolve()), "git_commit": git_commit()},
        )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps({"run_id": run.info.run_id, "uri": tracker.uri}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        record = read_parent_run(Path(config.hydra.sweep.dir))
        if record is None:
            return
        tracker = Tracker.from_config(config)
        if tracker.client.get_run(record).info.status == "RUNNING":
            tracker.client.set_terminated(record, status="FINISHED")


def read_parent_run(sweep_dir: Path) -> str | None:
    """The parent run id recorded for the sweep in `sweep_dir`, if any."""
    path = sweep_dir / PARENT_RUN_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())["run_id"]


def current_parent_run() -> str | None:
    """The parent run of the current Hydra multirun job, or None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return read_parent_run(Path(HydraConfig.get().sweep.dir))
