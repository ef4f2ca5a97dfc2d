"""Runs read back from the MLflow store through MLflow's search API, as pandas frames.

`tracking` writes runs; this module only reads them. A frame has one row per run and MLflow's
columns: `run_id`, `status`, `start_time`, `params.<flattened config key>`, `metrics.<name>` and
`tags.<name>` (among them `config_hash`, `attack_strength` and the `check.<name>` outcomes).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import pandas as pd

#: Runs of the `run` task (not classifier training, not sweep or table parents) that ended well.
EVALUATION_RUNS = "attributes.status = 'FINISHED' and tags.stage = 'run'"


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def search_frame(uri: str, experiment_names: Sequence[str], filter_string: str) -> pd.DataFrame:
    """`mlflow.search_runs` on the store at `uri`, newest first; an unknown experiment is empty."""
    import mlflow

    with _store(uri):
        known = [name for name in experiment_names if mlflow.get_experiment_by_name(name) is not None]
        if not known:
            return pd.DataFrame(columns=["run_id", "status", "start_time"])
        return mlflow.search_runs(experiment_names=known, filter_string=filter_string, output_format="pandas",
                                  order_by=["attributes.start_time DESC"], max_results=50000)


@contextmanager
def _store(uri: str) -> Iterator[None]:
    """MLflow's search API reads the global tracking URI, which also sets $MLFLOW_TRACKING_URI:
    both are put back afterwards, so a later `tracking_uri(cfg)` in this process is unaffected."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def newest_finished_run(uri: str, experiment_name: str, config_hash: str) -> pd.Series | None:
    """The newest FINISHED evaluation run with this config hash (one frame row), or None."""
    frame = search_frame(uri, [experiment_name], f"{EVALUATION_RUNS} and tags.config_hash = '{config_hash}'")
    return None if frame.empty else frame.iloc[0]


def runs_by_hash(uri: str, experiment_name: str, hashes: Iterable[str]) -> dict[str, str]:
    """The newest FINISHED evaluation run of each config hash that has one: hash -> run id.

    One search per hash: MLflow's filter language has no IN for tags."""
    found = {}
    for value in sorted(set(hashes)):
        run = newest_finished_run(uri, experiment_name, value)
        if run is not None:
            found[value] = run["run_id"]
    return found


def runs_frame(uri: str, experiment_names: Sequence[str], parent_run_id: str | None = None,
               run_ids: Sequence[str] = ()) -> pd.DataFrame:
    """FINISHED evaluation runs of the experiments, optionally only a parent's children or given ids."""
    clauses = [EVALUATION_RUNS]
    if parent_run_id:
        clauses.append(f"tags.mlflow.parentRunId = '{parent_run_id}'")
    if run_ids:
        clauses.append(f"attributes.run_id IN ({_quoted(run_ids)})")
    return search_frame(uri, experiment_names, " and ".join(clauses))


def experiment_names(uri: str) -> list[str]:
    """Names of every experiment in the store."""
    from mlflow.tracking import MlflowClient

    return [experiment.name for experiment in MlflowClient(tracking_uri=uri).search_experiments()]


def linked_runs(uri: str, parent_run_id: str) -> list[str]:
    """Runs a parent links without being their parent: a table's cells (tags `cell.<cell>`, reused
    ones included) and the runs a resumed sweep reused (tags `reused.<run id>`)."""
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(tracking_uri=uri).get_run(parent_run_id).data.tags
    return ([run_id for key, run_id in tags.items() if key.startswith("cell.")]
            + [key.removeprefix("reused.") for key in tags if key.startswith("reused.")])


def sweep_jobs(uri: str, experiment_name: str, parent_run_id: str) -> pd.DataFrame:
    """Every evaluation run of a sweep, whatever its status: the parent's children, then the runs it
    reused (column `reused` True), oldest first."""
    children = search_frame(uri, [experiment_name],
                            f"tags.stage = 'run' and tags.mlflow.parentRunId = '{parent_run_id}'")
    reused_ids = linked_runs(uri, parent_run_id)
    reused = runs_frame(uri, [experiment_name], run_ids=reused_ids) if reused_ids else children.iloc[0:0]
    frame = pd.concat([children.assign(reused=False), reused.assign(reused=True)], ignore_index=True)
    return frame.sort_values("start_time", kind="stable", ignore_index=True)


def run_flags(run: pd.Series) -> list[str]:
    """The validity checks a run (one frame row) failed, as "name: message"."""
    return [f"{name.removeprefix('tags.check.')}: {value.removeprefix('FLAG: ')}" for name, value in run.items()
            if name.startswith("tags.check.") and isinstance(value, str) and value.startswith("FLAG")]
