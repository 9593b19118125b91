"""MLflow tracking: one place that knows where runs are stored and how they are logged.

By default runs go to an embedded store inside the work directory: ``<workdir>/mlflow.db``
(SQLite) with artifacts under ``<workdir>/mlartifacts``. Browse them with :func:`ui_command`
(``mlflow ui --backend-store-uri sqlite:///<workdir>/mlflow.db --port 5000``). Set ``[tracking] uri``
(or the ``MLFLOW_TRACKING_URI`` environment variable) to log to a tracking server instead; a server
with authentication takes the credentials from ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``). :func:`check_tracking_server` checks a
server before any work: MLflow's own client retries an unreachable server for minutes.

Experiments that lmft creates are tagged as model training (:data:`EXPERIMENT_KIND`) and described
(:data:`EXPERIMENT_DESCRIPTION`, MLflow's ``mlflow.note.content``). MLflow 3.17's UI ignores that tag: it
shows every experiment in its GenAI view (traces) unless the page's address carries
``?workflowType=machine_learning`` or the browser's sidebar switch was set to model training once (kept in
the browser's local storage, ``mlflow.workflowType_v1``); docs/tracking.md says how this was found.
:func:`experiment_url` links straight to the model-training view, and ``python -m lmft_core.tracking ui``
serves an embedded store and opens that page (:func:`main`).

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

# What the experiment is; MLflow 3.17's UI does not read it (module docstring), other clients may.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
NOTE = "mlflow.note.content"  # the description MLflow's UI shows on a run's or experiment's page (Markdown)
UI_VIEW = "workflowType=machine_learning"  # the address parameter that opens MLflow's model-training view
EXPERIMENT_DESCRIPTION = (
    "Runs of lmft (Learnable Motion-Focused Tokenization): one `workflow-...` parent run per `pipelines/full.py` run, "
    "carrying the headline result (`target_test/*` of the adapted model, `baseline/<selector>/*`) and the "
    "accuracy-vs-discard figure, with each stage's run nested under it. Every training logs its own selector's "
    "target-test evaluation under the same names (`target_test/top1`, `target_test/discard_rate`, ...; the selector in "
    "the tag `lmft.selector`), so the charts overlay adapted and baseline trainings.\n\n"
    "**This UI opens in its GenAI view (traces)**: switch the sidebar to *Model training* (the browser remembers "
    f"it), add `?{UI_VIEW}` to the address, or run `python -m lmft_core.tracking ui`, which opens the right page.")
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


def experiment_url(uri: str, experiment_id: str, local_ui: str = LOCAL_UI) -> str:
    """Link to the experiment's runs in the MLflow UI's model-training view: on the server for an
    HTTP(S) tracking URI, else on a local ``mlflow ui`` at ``local_ui`` (:func:`ui_command`)."""
    base = uri.rstrip("/") if is_server(uri) else local_ui
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_VIEW}"


def ui_command(uri: str, port: int = 5000) -> str | None:
    """The one-line command that serves the MLflow UI on ``port`` (default: :data:`LOCAL_UI`) for an embedded
    store (None for a tracking server: it serves its own UI)."""
    if is_server(uri):
        return None
    import shlex

    return f"mlflow ui --backend-store-uri {shlex.quote(uri)} --port {port}"


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

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, model_id: str | None = None) -> None:
        """``model_id``: also the metrics of that logged model (MLflow 3 shows them on the model's page)."""
        buffer = MetricBuffer(self.client, self.run_id)
        buffer.add(metrics, step, model_id)
        buffer.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's files under ``artifact_path``."""
        if Path(path).is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, table, artifact_file: str) -> None:
        """``table`` (a pandas DataFrame or a dict of columns) as an MLflow table artifact (JSON), which the UI
        shows as a table (the run's Artifacts tab) and lists in the experiment's "Evaluation" view."""
        self.client.log_table(self.run_id, data=table, artifact_file=artifact_file)

    def describe(self, text: str) -> None:
        """The run's description (Markdown) on its page in MLflow's UI."""
        self.client.set_tag(self.run_id, NOTE, text)

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

    def add(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, int(step), model_id=model_id)
                         for k, v in metrics.items() if math.isfinite(float(v))]

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
                                                 tags=EXPERIMENT_KIND | {NOTE: EXPERIMENT_DESCRIPTION})
    else:
        experiment_id = experiment.experiment_id
        if NOTE not in experiment.tags:  # made by an older lmft
            client.set_experiment_tag(experiment_id, NOTE, EXPERIMENT_DESCRIPTION)
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


def main(argv: list[str] | None = None) -> int:
    """``python -m lmft_core.tracking ui``: serve the MLflow UI of a work directory's embedded store (or point at
    the tracking server) and open the experiment in the model-training view (see the module docstring)."""
    import argparse
    import shlex
    import subprocess
    import sys
    import time
    import urllib.request
    import webbrowser

    p = argparse.ArgumentParser(prog="python -m lmft_core.tracking", description=main.__doc__)
    p.add_argument("command", choices=["ui"])
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="the work directory whose store to serve")
    p.add_argument("--tracking-uri", default="", help="default: MLFLOW_TRACKING_URI, else <workdir>/mlflow.db")
    p.add_argument("--experiment", default="", help="the experiment to open (default: the newest one)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--no-browser", action="store_true", help="print the address only")
    args = p.parse_args(argv)
    uri = TrackingConfig(uri=args.tracking_uri).resolve_uri(args.workdir)
    if not is_server(uri) and not Path(uri.removeprefix("sqlite:///")).is_file():
        print(f"error: no MLflow store at {uri} (run a pipeline first, or pass --workdir / --tracking-uri)", file=sys.stderr)
        return 2
    from mlflow import MlflowClient

    experiments = MlflowClient(tracking_uri=uri).search_experiments(order_by=["creation_time DESC"])
    chosen = [e for e in experiments if e.name == args.experiment] if args.experiment else experiments[:1]
    if not chosen:
        print(f"error: no experiment {args.experiment!r} in {uri}; experiments: {[e.name for e in experiments]}", file=sys.stderr)
        return 2
    url = experiment_url(uri, chosen[0].experiment_id, f"http://127.0.0.1:{args.port}")
    server = None
    if not is_server(uri):
        # this Python's MLflow (its `mlflow` script need not be on PATH)
        server = subprocess.Popen([sys.executable, "-m", "mlflow", *shlex.split(ui_command(uri, args.port))[1:]])
        for _ in range(120):  # the UI answers within a few seconds
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{args.port}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    return server.returncode or 1
                time.sleep(0.5)
    print(f"[lmft] experiment {chosen[0].name!r} in MLflow's model-training view: {url}", flush=True)
    if not args.no_browser:
        webbrowser.open(url)
    if server is not None:
        try:
            return server.wait()
        except KeyboardInterrupt:
            server.terminate()
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
