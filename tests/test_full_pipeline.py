"""The main job end to end on a tiny demo set: outputs, the MLflow run, and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lmft_core.config import load_profile
from lmft_core.workflow import run_full

REPO = Path(__file__).resolve().parents[1]
TINY = ["demo_data.classes=['wave', 'jump']", "demo_data.videos_per_class=2", "demo_data.num_frames=16",
        "demo_data.width=64", "demo_data.height=48"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, ray_local):
    workdir = tmp_path_factory.mktemp("full")
    return workdir, run_full(load_profile("demo", TINY), workdir)


def test_outputs_and_mlflow_run(full_run):
    workdir, result = full_run
    assert result.manifest == workdir / "data" / "manifest.csv"
    run = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "full-demo"
    assert run.data.params["demo_data.videos_per_class"] == "2"
    assert run.data.params["clip.num_frames"] == "16"
    assert run.data.metrics["data/videos"] == 8 and run.data.metrics["data/classes"] == 2
    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert {a.path for a in client.list_artifacts(result.run_id, "inputs")} == {"inputs/manifest.csv", "inputs/demo.toml"}
    assert {a.path for a in client.list_artifacts(result.run_id, "preprocess")} == {"preprocess/metadata.json", "preprocess/rejects.csv"}
    # every manifest row is in the shards (the demo videos are all good) and the summary says so
    assert run.data.metrics["preprocess/shard_rows"] == 8 and run.data.metrics["preprocess/rejects"] == 0
    assert run.data.metrics["preprocess/videos_per_s"] > 0
    assert run.data.tags["lmft.untrained_clip"] == "True"
    assert result.preprocess.output_dir.parent == workdir / "shards"


def test_bad_manifest_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,domain,split\nmissing.mp4,,source,train\n")
    workdir = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "full.py"), "--manifest", str(bad), "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "line 2: source row without a label" in proc.stderr and "line 2: file not found" in proc.stderr
    assert not workdir.exists()


def test_bad_profile_setting_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "full.py"), "--workdir", str(tmp_path / "w"),
                           "--set", "demo_data.videos_per_clas=3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown key(s) ['videos_per_clas']" in proc.stderr


def test_artifacts_beside_the_embedded_store_only(tmp_path, monkeypatch):
    from lmft_core.tracking import TrackingConfig, artifact_location

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    embedded = TrackingConfig().resolve_uri(tmp_path)
    assert embedded == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert artifact_location(embedded, tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert artifact_location("http://mlflow.internal:5000", tmp_path) is None  # the server stores them
    assert TrackingConfig(uri="http://x:5000").resolve_uri(tmp_path) == "http://x:5000"
