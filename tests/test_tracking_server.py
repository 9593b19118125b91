"""The main job against a real MLflow tracking server with basic authentication on 127.0.0.1, and the
start-up check of the tracking URI (unreachable server, refused credentials)."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from mlflow import MlflowClient

from conftest import entry_main
from live_servers import TINY_WORKFLOW, free_port, stop_session, wait_for
from lmft_core.run_config import load_profile
from lmft_core.tracking import EXPERIMENT_KIND, TrackingError, check_tracking_server, experiment_url, ui_command
from lmft_core.workflow import run_full

ADMIN_PASSWORD = "admin-Pass-1"
USER, PASSWORD = "runner", "runner-Pass-1"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server --app-name basic-auth`` on a free loopback port, with its own stores; a user
    ``runner`` (not an admin) created through the server's API. Yields the tracking URI."""
    root = tmp_path_factory.mktemp("mlflow_server")
    ini = root / "basic_auth.ini"  # the installed default points its user database at ./basic_auth.db
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   "auth_cache_ttl_seconds = 60\n")  # as in cluster/kubernetes/mlflow-server.yaml
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-secret",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # as in the cluster definition: no GenAI job workers
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        print(f"mlflow server with basic auth ready after {wait_for(healthy, 90, 'mlflow server', proc, log):.1f} s")
        from mlflow.server import get_app_client

        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
            get_app_client("basic-auth", tracking_uri=uri).create_user(USER, PASSWORD)
        yield uri
    finally:
        stop_session(proc)


@pytest.fixture
def as_user(monkeypatch, mlflow_server):
    """The environment a user sets to log to the server: the URI and the credentials."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    return mlflow_server


def test_main_job_logs_to_the_server_with_credentials_from_the_environment(as_user, tmp_path, ray_local):
    workdir = tmp_path / "work"
    result = run_full(load_profile("demo", TINY_WORKFLOW), workdir)
    assert result.tracking_uri == as_user
    assert not (workdir / "mlflow.db").exists() and not (workdir / "mlartifacts").exists()  # nothing embedded

    client = MlflowClient(tracking_uri=as_user)  # credentials from the environment, as the job had them
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["demo_data.videos_per_class"] == "2" and run.data.metrics["data/videos"] == 8
    assert run.data.metrics["preprocess/shard_rows"] == 8
    # every stage logged there too, the model included (workers and prediction actors had the credentials)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert {c.data.tags["lmft.stage"] for c in children} == {"preprocess", "train", "evaluate", "register", "predict"}
    assert str(client.get_model_version_by_alias("lmft-demo", "best").version) == result.model_version
    assert result.prediction_summary["predicted"] + result.prediction_summary["rejected"] == 2
    assert {a.path for a in client.list_artifacts(result.run_id, "inputs")} == {"inputs/manifest.csv", "inputs/demo.toml"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "lmft-demo" and experiment.tags.items() >= EXPERIMENT_KIND.items()
    url = experiment_url(as_user, experiment.experiment_id)
    assert url == f"{as_user}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert ui_command(as_user) is None  # the server serves its own UI
    page = url.split("#")[0]  # the UI itself asks for the same credentials (the browser prompts for them)
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(page, timeout=10)
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(page, headers={"Authorization": f"Basic {auth}"}), timeout=10) as r:
        assert r.status == 200


@pytest.mark.parametrize("password", ["wrong-password", None], ids=["wrong_password", "none"])
def test_refused_credentials_fail_at_start(mlflow_server, password, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    if password:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    workdir = tmp_path / "work"
    t0 = time.monotonic()
    assert entry_main("full")(["--workdir", str(workdir)]) == 2
    assert time.monotonic() - t0 < 20  # seconds, not MLflow's minutes of retries
    err = capsys.readouterr().err
    assert f"MLflow tracking server {mlflow_server} refused the credentials (HTTP 401" in err
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in err
    assert ("as user 'runner'" if password else "without credentials") in err
    assert not workdir.exists()


def test_unreachable_server_fails_at_start(tmp_path, capsys):
    port = free_port()  # nothing listens there
    workdir = tmp_path / "work"
    t0 = time.monotonic()
    assert entry_main("full")(["--workdir", str(workdir), "--set", f"tracking.uri=http://127.0.0.1:{port}"]) == 2
    assert time.monotonic() - t0 < 20  # seconds, not MLflow's minutes of retries
    err = capsys.readouterr().err
    assert f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err and "MLFLOW_TRACKING_URI" in err
    assert not workdir.exists()


def test_a_silent_server_times_out_in_the_preflight_bound():
    """A server that accepts connections and never answers: one request, no retries, the given bound
    (MLflow's client alone would retry for minutes)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match=r"is unreachable \(no answer within 1 s\)"):
            check_tracking_server(uri, timeout_s=1)
        assert time.monotonic() - t0 < 5


def test_embedded_store_links_and_command(tmp_path):
    uri = f"sqlite:///{tmp_path / 'my work' / 'mlflow.db'}"
    check_tracking_server(uri)  # nothing to check: no server
    assert ui_command(uri) == f"mlflow ui --backend-store-uri 'sqlite:///{tmp_path}/my work/mlflow.db' --port 5000"
    assert experiment_url(uri, "7") == "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
