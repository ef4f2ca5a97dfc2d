"""The only module that talks to MLflow.

Runs are written through `MlflowClient` to a SQLite store (`sqlite:///<home>/mlflow.db` unless
`mlflow.tracking_uri` or `MLFLOW_TRACKING_URI` says otherwise). A run is opened only after the
config and inputs are validated, and any exception inside it marks it FAILED with the error as a
tag; Ctrl-C, SIGTERM and SIGHUP (`defense_cli.termination`) mark it KILLED with the signal's name
in the tag `signal`. A Hydra sweep gets one parent run, created by `SweepParentRunCallback`
(or given as `mlflow.parent_run_id`, as `defense-cli table` does), and every job becomes its
child; a signal marks the parent KILLED too (`close_open_runs`).

Against SIGKILL and lost machines, which no handler sees, every run records its host, process id
and process start time, and a thread refreshes its `heartbeat` tag (Unix seconds) every
`mlflow.heartbeat_seconds`. `Tracker.stale_runs` finds RUNNING runs whose process is gone (same
host) or whose heartbeat is too old (any host); `Tracker.mark_stale` closes them FAILED with the
reason in the tag `stale_reason`. Opening a run first does this for the dead processes of its own
host (never by heartbeat age: a slow store must not fail a live run of another machine).
Reads through MLflow's search API are in `defense_cli.run_search`.

An HTTP tracking URI (a server started by `defense-cli server`) is probed before anything else, so
an unreachable server fails in seconds; MLflow's HTTP retries are cut down (unless the user's
MLFLOW_HTTP_REQUEST_* variables say otherwise) so that a server that goes away fails the job within
a minute instead of retrying for many.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import tempfile
import threading
import time
import traceback
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from defense_cli.environment import git_commit, process_alive
from defense_cli.errors import TrackingUnavailable
from defense_cli.termination import TerminatedBySignal, signals_deferred

log = logging.getLogger(__name__)

PARENT_RUN_FILE = "mlflow_parent_run.json"
RESULTS_FILE = "results.json"
MAX_PARAM_LENGTH = 6000
BATCH_SIZE = 100
HEARTBEAT_TAG = "heartbeat"
DEFAULT_HEARTBEAT_SECONDS = 60.0
#: runs of this process not yet closed: run id -> the client that opened it (see `close_open_runs`)
_OPEN_RUNS: dict[str, Any] = {}
PROBE_TIMEOUT_S = 5.0
#: MLflow's HTTP client settings for a tracking server (its defaults retry for minutes)
HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


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


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless the tracking server at `uri` answers its health check."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
            response.read()
    except OSError as err:  # URLError, refused, timed out
        raise TrackingUnavailable(
            f"mlflow.tracking_uri={uri!r} does not answer ({err}; waited at most {timeout:g} s). Start a server with "
            f"`defense-cli server` and export the MLFLOW_TRACKING_URI it prints, or leave mlflow.tracking_uri "
            f"and MLFLOW_TRACKING_URI unset to use the local SQLite store (sqlite:///<home>/mlflow.db)."
        ) from err


def flatten(cfg: DictConfig | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"attack.eps": "0.03", ...}, values as strings cut to MLflow's limit."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            text = f"{value:.15g}" if isinstance(value, float) else str(value)  # range(): 0.15, not 0.15000000000000002
            flat[name] = text[:MAX_PARAM_LENGTH]
    return flat


class StoreWritesFinish:
    """An MlflowClient whose calls finish before a termination signal is raised in the main thread.

    A signal raised in the middle of a SQLite write would leave its transaction open and its lock
    held, and the clean-up that marks the run KILLED would then wait on that lock.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        if name == "_client":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            with signals_deferred():
                return attribute(*args, **kwargs)
        return call


#: The columns `defense-cli ui` shows in the runs table: what tells runs apart, then the headline metrics
RUNS_TABLE_COLUMNS = (("params", "dataset.name"), ("params", "model.name"), ("params", "defense.name"),
                      ("params", "attack.name"), ("params", "attack.eps"), ("params", "threat_model.name"),
                      ("metrics", "clean_accuracy"), ("metrics", "defended_clean_accuracy"),
                      ("metrics", "robust_accuracy"), ("metrics", "n_images"))
#: the share key of that view (`mlflow.sharedViewState.<key>`)
RUNS_VIEW_KEY = "defense-cli-key-columns"


def runs_table_url(server: str, experiment_id: str) -> str:
    """The address of the experiment's runs table with the key columns (`Tracker.open_on_runs`)."""
    return f"{server}/#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW_KEY}"


class Tracker:
    """Writes runs of one experiment to one tracking store."""

    def __init__(self, uri: str, experiment_name: str,
                 heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS) -> None:
        from mlflow.tracking import MlflowClient

        if is_server(uri):
            check_server(uri)
            for name, value in HTTP_SETTINGS.items():
                os.environ.setdefault(name, value)
        self.uri = uri
        self.client = StoreWritesFinish(MlflowClient(tracking_uri=uri))
        self.experiment_id = self._experiment_id(experiment_name)
        self.heartbeat_seconds = heartbeat_seconds

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

    def open_on_runs(self) -> str:
        """Tag the experiment as model development, so that the MLflow 3 UI opens on its runs
        table (not the GenAI traces page), and store a shared view of that table with the key
        columns (RUNS_TABLE_COLUMNS); returns the experiment id. The view is MLflow's own "share"
        mechanism: an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON,
        opened by the URL parameter `viewStateShareKey=<key>` (see `runs_table_url`)."""
        self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")
        view = {"selectedColumns": [f"{kind}.`{name}`" for kind, name in RUNS_TABLE_COLUMNS],
                "orderByKey": "attributes.start_time", "orderByAsc": False}
        self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{RUNS_VIEW_KEY}", json.dumps(view))
        return self.experiment_id

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Tracker:
        heartbeat = float(cfg.mlflow.get("heartbeat_seconds") or DEFAULT_HEARTBEAT_SECONDS)
        return cls(tracking_uri(cfg), cfg.mlflow.experiment_name, heartbeat)

    @contextmanager
    def run(self, name: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> Iterator[RunLog]:
        """Open a run; close it FINISHED, FAILED with the error, or KILLED with the signal."""
        from defense_cli.environment import environment_tags, installed_distributions, process_tags

        self.mark_stale(self.stale_runs(max_age_seconds=None))
        all_tags = {"mlflow.runName": name, **environment_tags(), **process_tags(), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        log = RunLog(self.client, run.info.run_id)
        with LiveRun(self.client, log.run_id, self.heartbeat_seconds):
            try:
                log.text(installed_distributions(), "environment.txt")
                yield log
            except KeyboardInterrupt as err:
                signal_name = err.signal_name if isinstance(err, TerminatedBySignal) else "SIGINT"
                log.tags({"signal": signal_name})
                log.fail(f"stopped by {signal_name}", status="KILLED")
                raise
            except BaseException as err:
                try:
                    log.fail(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
                    if parent_run_id:
                        self.client.set_terminated(parent_run_id, status="FAILED")
                except Exception as store_err:
                    self._raise_unavailable(log.run_id, store_err, err)
                raise
            self.client.set_terminated(log.run_id, status="FINISHED")

    def _raise_unavailable(self, run_id: str, store_err: Exception, cause: BaseException) -> None:
        """The store stopped answering while a run was open: say so, and where the results are."""
        raise TrackingUnavailable(
            f"the tracking store {self.uri} stopped answering ({type(store_err).__name__}: {store_err}); run "
            f"{run_id} could not be closed and stays RUNNING there (`defense-cli runs --stale` closes it once the "
            f"server is back). Results this job computed are kept in its Hydra output folder ({RESULTS_FILE})."
        ) from cause

    def finished_runs(self, tags: Mapping[str, str], metric: str) -> dict[str, tuple[dict[str, str], float]]:
        """FINISHED runs of this experiment carrying all `tags`: run id -> (its tags, its `metric`)."""
        clauses = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        clauses.append("attributes.status = 'FINISHED'")
        runs = self.client.search_runs([self.experiment_id], " and ".join(clauses), max_results=1000)
        return {run.info.run_id: (dict(run.data.tags), run.data.metrics[metric])
                for run in runs if metric in run.data.metrics}

    def runs(self, status: str | None = None, max_results: int = 1000) -> list:
        """Runs of this experiment, newest first, optionally only those in `status` (e.g. RUNNING)."""
        query = f"attributes.status = '{status}'" if status else ""
        return self.client.search_runs([self.experiment_id], query, max_results=max_results,
                                       order_by=["attributes.start_time DESC"])

    def stale_runs(self, max_age_seconds: float | None) -> list[tuple[Any, str]]:
        """RUNNING runs that cannot still be running, each with the reason.

        A run of this host whose process is gone is stale; with `max_age_seconds`, so is a run of
        any host whose heartbeat (or, with none recorded, whose start) is older than that.
        """
        now, host = time.time(), socket.gethostname()
        found = []
        for run in self.runs(status="RUNNING"):
            reason = stale_reason(run, now, host, max_age_seconds)
            if reason:
                found.append((run, reason))
        return found

    def mark_stale(self, stale: Sequence[tuple[Any, str]]) -> None:
        """Close each stale run FAILED with its reason in the tag `stale_reason`."""
        for run, reason in stale:
            self.client.set_tag(run.info.run_id, "stale_reason", reason)
            self.client.set_terminated(run.info.run_id, status="FAILED")


def stale_reason(run: Any, now: float, this_host: str, max_age_seconds: float | None) -> str | None:
    """Why `run` (RUNNING) cannot be alive, or None: its process is gone, or its heartbeat is too old."""
    tags = run.data.tags
    pid, host = tags.get("pid", ""), tags.get("host")
    if host == this_host and pid.isdigit() and not process_alive(int(pid), tags.get("process_start") or None):
        return f"process {pid} on {host} is gone"
    if max_age_seconds is None:
        return None
    beat = tags.get(HEARTBEAT_TAG)
    last = float(beat) if beat else run.info.start_time / 1000
    age = now - last
    if age > max_age_seconds:
        what = "heartbeat" if beat else "heartbeat recorded; started"
        return f"no {what} for {age:.0f} s (limit {max_age_seconds:g} s), host {host or 'unknown'}"
    return None


class Heartbeat:
    """A daemon thread that sets the run's `heartbeat` tag to the current Unix time every `seconds`."""

    def __init__(self, client: Any, run_id: str, seconds: float) -> None:
        self.client, self.run_id, self.seconds = client, run_id, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def start(self) -> Heartbeat:
        self._send()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds):
            self._send()

    def _send(self) -> None:
        try:
            self.client.set_tag(self.run_id, HEARTBEAT_TAG, f"{time.time():.0f}")
        except Exception as err:  # a missed beat must not stop the work; a long gap shows in `runs --stale`
            log.warning("heartbeat of run %s not recorded: %s", self.run_id, err)


class LiveRun:
    """A run this process works on: it has a heartbeat and `close_open_runs` finds it."""

    def __init__(self, client: Any, run_id: str, heartbeat_seconds: float) -> None:
        self.client, self.run_id = client, run_id
        self.heartbeat = Heartbeat(client, run_id, heartbeat_seconds)

    def start(self) -> LiveRun:
        self.heartbeat.start()
        _OPEN_RUNS[self.run_id] = self.client
        return self

    def stop(self) -> None:
        _OPEN_RUNS.pop(self.run_id, None)
        self.heartbeat.stop()

    def __enter__(self) -> LiveRun:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def close_open_runs(status: str, signal_name: str | None = None) -> None:
    """Mark every run this process still has open (a sweep's parent) `status` (KILLED, FAILED),
    with a `signal` tag when a signal stopped it."""
    for run_id, client in list(_OPEN_RUNS.items()):
        try:
            if client.get_run(run_id).info.status == "RUNNING":
                if signal_name:
                    client.set_tag(run_id, "signal", signal_name)
                client.set_terminated(run_id, status=status)
        except Exception as err:
            log.warning("run %s could not be marked %s: %s", run_id, status, err)
        _OPEN_RUNS.pop(run_id, None)


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
        """Open the parent run, or adopt `mlflow.parent_run_id` (a run its owner closes)."""
        from defense_cli.environment import process_tags
        from defense_cli.errors import ConfigError

        try:
            tracker = Tracker.from_config(config)
        except TrackingUnavailable:
            raise
        except Exception as err:
            raise ConfigError(f"mlflow.tracking_uri={tracking_uri(config)!r} cannot be opened: {err}") from err
        sweep_dir = Path(config.hydra.sweep.dir)
        run_id = config.mlflow.get("parent_run_id")
        if not run_id:
            overrides = " ".join(config.hydra.overrides.task)
            run_id = tracker.client.create_run(
                tracker.experiment_id,
                tags={"mlflow.runName": f"sweep {overrides}"[:250], "sweep": "parent",
                      "sweep_dir": str(sweep_dir.resolve()), "git_commit": git_commit(), **process_tags()},
            ).info.run_id
            self._live = LiveRun(tracker.client, run_id, tracker.heartbeat_seconds).start()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_RUN_FILE).write_text(json.dumps({"run_id": run_id, "uri": tracker.uri}))

    def __getstate__(self) -> dict[str, Any]:
        """Launchers (joblib, Ray, submitit) pickle the callbacks to their workers; the parent run's
        heartbeat thread cannot be pickled and stays in the process that started the sweep."""
        return {key: value for key, value in self.__dict__.items() if key != "_live"}

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        live = getattr(self, "_live", None)
        if live is not None:
            live.stop()
        record = read_parent_run(Path(config.hydra.sweep.dir))
        if record is None or config.mlflow.get("parent_run_id"):
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


def keep_results(data: Mapping[str, Any]) -> Path | None:
    """Write `data` to the Hydra job's output folder as results.json (None outside Hydra), so that
    what a job computed survives a tracking store that stops answering."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    path = Path(HydraConfig.get().runtime.output_dir) / RESULTS_FILE
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


def current_parent_run() -> str | None:
    """The parent run of the current Hydra multirun job, or None outside a sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return read_parent_run(Path(HydraConfig.get().sweep.dir))
