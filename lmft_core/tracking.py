"""MLflow tracking: one place that knows where runs are stored and how they are logged.

By default runs go to an embedded store inside the work directory: ``<workdir>/mlflow.db``
(SQLite) with artifacts under ``<workdir>/mlartifacts``. Browse them with
``mlflow ui --backend-store-uri sqlite:///<workdir>/mlflow.db``. Set ``[tracking] uri`` (or the
``MLFLOW_TRACKING_URI`` environment variable) to log to a tracking server instead.

Logging uses :class:`mlflow.MlflowClient` with explicit run ids (no per-thread "active run"), so
a run id can be passed to Ray workers; only rank 0 logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrackingConfig:
    """``uri``: MLflow tracking URI ("" = ``$MLFLOW_TRACKING_URI`` or the embedded store in the workdir)."""

    uri: str = ""
    experiment: str = "lmft"

    def resolve_uri(self, workdir: Path) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for logging nested configs as MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def artifact_location(uri: str, workdir: Path) -> str | None:
    """Where a new experiment keeps artifacts: beside an embedded store, else the server's default."""
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return (Path(workdir).resolve() / "mlartifacts").as_uri() if local else None


class Run:
    """An open MLflow run; log params, metrics (names carry units) and artifacts to it."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested params flattened (``a.b``), values as strings, in batches (one call per 100)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        buffer = MetricBuffer(self.client, self.run_id)
        buffer.add(metrics, step)
        buffer.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))


class MetricBuffer:
    """Metrics collected with :meth:`add` and sent with :meth:`flush` in ``log_batch`` calls (MLflow
    takes at most 1000 metrics per call). Non-finite values are dropped (MLflow rejects NaN in some stores)."""

    MAX_PER_CALL = 1000

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id
        self.pending: list = []

    def add(self, metrics: Mapping[str, float], step: int) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if math.isfinite(float(v))]

    def flush(self) -> None:
        while self.pending:
            chunk, self.pending = self.pending[:self.MAX_PER_CALL], self.pending[self.MAX_PER_CALL:]
            self.client.log_batch(self.run_id, metrics=chunk)


@contextmanager
def start_run(cfg: TrackingConfig, workdir: str | Path, run_name: str, parent_run_id: str | None = None,
              resume_run_id: str | None = None) -> Iterator[Run]:
    """Open a run in ``cfg.experiment`` (created on first use), or reopen ``resume_run_id`` when that run
    exists (a resumed job continues its run); FINISHED at the end, FAILED if the body raises."""
    from mlflow import MlflowClient

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    uri = cfg.resolve_uri(workdir)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=artifact_location(uri, workdir))
    else:
        experiment_id = experiment.experiment_id
    run_id = None
    if resume_run_id:
        from mlflow.exceptions import MlflowException

        try:
            run_id = client.get_run(resume_run_id).info.run_id
            client.update_run(run_id, status="RUNNING")
        except MlflowException:
            run_id = None  # gone (another store?): start a new run
    if run_id is None:
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    status = "FAILED"
    try:
        yield Run(client, run_id)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status=status)
