"""MLflow tracking: one place that knows where runs are stored and how they are logged.

By default runs go to an embedded store inside the work directory: ``<workdir>/mlflow.db``
(SQLite) with artifacts under ``<workdir>/mlartifacts``. Browse them with :func:`ui_command`
(``mlflow ui --backend-store-uri sqlite:///<workdir>/mlflow.db --port 5000``). Set ``[tracking] uri``
(or the ``MLFLOW_TRACKING_URI`` environment variable) to log to a tracking server instead; a server
with authentication takes the credentials from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``). :func:`check_tracking_server` checks a
server before any work: MLflow's own client retries an unreachable server for minutes.

Experiments that lmft creates are tagged as model training (:data:`EXPERIMENT_KIND`), so that
MLflow 3's UI shows them with the runs table, charts and models rather than its GenAI view;
:func:`experiment_url` links straight to that view.

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

from lmft_core.config import ConfigError

# MLflow 3's UI opens an experiment in its GenAI view unless the experiment is tagged as model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
PREFLIGHT_TIMEOUT_S = 30.0  # the start-up check of a tracking server: one request, no retries, this long at most
CREDENTIALS_HELP = ("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the "
                    "environment that starts lmft (on a Ray cluster: the driver's; lmft passes them on to the workers)")


class TrackingError(ConfigError):
    """The tracking URI cannot be used: the server is unreachable or refuses the credentials."""


@dataclass(frozen=True)
class TrackingConfig:
    """``uri``: MLflow tracking URI ("" = ``$MLFLOW_TRACKING_URI`` or the embedded store in the workdir)."""

    uri: str = ""
    experiment: str = "lmft"

    def resolve_uri(self, workdir: Path) -> str:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_tracking_server(uri: str, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Fail fast (one request, no retries, ``timeout_s``) when the tracking server at ``uri`` is
    unreachable or refuses this process's credentials; a clear :class:`TrackingError` says what to set.

    Only HTTP(S) URIs are checked; the embedded store needs no server. Credentials come from the
    environment as MLflow's client reads them (``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``, ``_TOKEN``, TLS settings).
    """
    if not is_server(uri):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    try:
        response = http_request(creds, "/api/2.0/mlflow/experiments/search", "GET", max_retries=0, backoff_factor=0,
                                timeout=timeout_s, raise_on_status=False, params={"max_results": 1})
    except MlflowException as e:
        reason = f"no answer within {timeout_s:g} s" if _timed_out(e) else e.message
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}). Check the URI ([tracking] uri or "
            "MLFLOW_TRACKING_URI), that the server runs and that this machine can reach it") from None
    sent = f"as user {creds.username!r}" if creds.username and creds.password else "with a token" if creds.token else "without credentials"
    if response.status_code == 401:
        raise TrackingError(f"MLflow tracking server {uri} refused the credentials (HTTP 401; request sent {sent}): "
                            f"{CREDENTIALS_HELP}")
    if response.status_code == 403:
        raise TrackingError(f"MLflow tracking server {uri} forbids this request (HTTP 403; request sent {sent}): "
                            f"{response.text.strip()[:200]!r}. Ask its administrator for access, or {CREDENTIALS_HELP}")
    if response.status_code != 200:
        raise TrackingError(f"{uri} does not answer as an MLflow tracking server (HTTP {response.status_code} for "
                            f"experiments/search: {response.text.strip()[:200]!r}); check the URI")


def _timed_out(error: BaseException) -> bool:
    """Whether a timeout caused ``error`` (MLflow wraps requests' errors, which wrap urllib3's)."""
    import requests
    from urllib3.exceptions import MaxRetryError
    from urllib3.exceptions import TimeoutError as Urllib3Timeout

    seen = error
    while seen is not None:
        if isinstance(seen, (requests.Timeout, Urllib3Timeout)):
            return True
        for arg in seen.args:
            if isinstance(arg, MaxRetryError) and isinstance(arg.reason, Urllib3Timeout):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def experiment_url(uri: str, experiment_id: str) -> str:
    """Link to the experiment's runs in the MLflow UI's model-training view: on the server for an
    HTTP(S) tracking URI, else on a local ``mlflow ui`` (:func:`ui_command`)."""
    base = uri.rstrip("/") if is_server(uri) else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_command(uri: str) -> str | None:
    """The one-line command that serves the MLflow UI at :data:`LOCAL_UI` for an embedded store
    (None for a tracking server: it serves its own UI)."""
    if is_server(uri):
        return None
    import shlex

    return f"mlflow ui --backend-store-uri {shlex.quote(uri)} --port 5000"


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
    """An open MLflow run; log params, metrics (names carry units) and artifacts to it. ``resumed``: an
    earlier run reopened (its params are logged already)."""

    def __init__(self, client, run_id: str, resumed: bool = False):
        self.client, self.run_id, self.resumed = client, run_id, resumed

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

    def take(self) -> list[list]:
        """The metrics added and not yet sent, as JSON-able ``[key, value, timestamp_ms, step]`` rows; the buffer
        forgets them (whoever takes them sends them: :class:`lmft_core.train.ray_train.MetricSender`)."""
        rows, self.pending = [[m.key, m.value, m.timestamp, m.step] for m in self.pending], []
        return rows

    def add_rows(self, rows: list[list]) -> None:
        """Queue ``[key, value, timestamp_ms, step]`` rows (:meth:`take`)."""
        from mlflow.entities import Metric

        self.pending += [Metric(k, float(v), int(t), int(s)) for k, v, t, s in rows]


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's module-level functions (``log_model``, ``get_model_info``, ``load_model``) read the global
    tracking URI, and ``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` for the whole process.
    Set ``uri`` for the block only; the previous URI and environment come back afterwards, so one call
    never redirects what the process logs next (``set_tracking_uri`` keeps the global and the variable in
    step; ``None`` unsets both)."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@contextmanager
def start_run(cfg: TrackingConfig, workdir: str | Path, run_name: str, parent_run_id: str | None = None,
              resume_run_id: str | None = None, id_file: Path | None = None) -> Iterator[Run]:
    """Open a run in ``cfg.experiment`` (created on first use), or reopen ``resume_run_id`` when that run
    exists (a resumed job continues its run); FINISHED at the end, FAILED if the body raises, KILLED on Ctrl-C. With
    ``id_file``, the run id it holds (if any) is the one to resume, and the open run's id is written there."""
    from mlflow import MlflowClient

    if id_file is not None and id_file.is_file():
        resume_run_id = id_file.read_text().strip()

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    uri = cfg.resolve_uri(workdir)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        experiment_id = client.create_experiment(cfg.experiment, artifact_location=artifact_location(uri, workdir),
                                                 tags=EXPERIMENT_KIND)
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
    if id_file is not None:
        id_file.write_text(run_id)
    status = "FAILED"
    try:
        yield Run(client, run_id, resumed=run_id == resume_run_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"  # Ctrl-C: stopped by the user, not failed
        raise
    finally:
        client.set_terminated(run_id, status=status)
