"""The whole workflow on a tiny demo set: nested MLflow runs, the registered model, predictions, re-runs
that skip finished stages, forcing a stage, and bad input at start."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from live_servers import TINY_WORKFLOW
from lmft_core.config import ConfigError
from lmft_core.run_config import load_profile
from lmft_core.tracking import NOTE, using_tracking_uri
from lmft_core.workflow import run_full, where_everything_is

REPO = Path(__file__).resolve().parents[1]
# the tiny workflow with a full-token baseline training in the evaluate stage, after one epoch of pretraining
TINY = TINY_WORKFLOW + ["workflow.baselines=['full']", "workflow.pretrain=true", "pretrain.epochs=1",
                        "pretrain.batch_size=1", "pretrain.decoder_depth=1"]


# The workflow logs into its work directory's own store, for the module's run and every re-run in a test alike.
pytestmark = pytest.mark.usefixtures("embedded_store")


@pytest.fixture(scope="module")
def console_run(tmp_path_factory, ray_local):
    """The tiny workflow run as a user runs it, ``pipelines/full.py`` (on the tests' Ray instance): its work
    directory, its console (stdout and stderr, no terminal) and its wall-clock time."""
    workdir = tmp_path_factory.mktemp("full")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["RAY_ADDRESS"] = ray_local.get_runtime_context().gcs_address
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "full.py"), "--workdir", str(workdir),
                           *(a for o in TINY for a in ("--set", o))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd=REPO, env=env)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout
    return workdir, proc.stdout, elapsed


@pytest.fixture(scope="module")
def full_run(console_run):
    """The same workflow's result, from a re-run in this process (every stage finished: all are reused)."""
    workdir, _, elapsed = console_run
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = run_full(load_profile("demo", TINY), workdir)
    return workdir, result, elapsed


# What Ray, Ray Data, Ray Train and MLflow print themselves (kept in Ray's log files unless --verbose): their log
# lines (a timestamp, a level), worker output ("(pid=...)", "(RayTrainWorker pid=...)"), reports, progress bars
FOREIGN = re.compile(r"^\[?\d{4}[-/]\d\d[-/]\d\d|\bINFO\b|\bWARNING\b|\(\w* ?pid=|TrainingReport|Dataset|it/s\]|row/s\]"
                     r"|Successfully registered|Created version")
# Ray's C++ logger on every Ray Data actor pool the driver starts; no Python setting reaches it (docs/console.md)
RAY_53727 = "has constructor arguments in the object store and max_restarts > 0"


def test_console_of_the_tiny_workflow_is_lmfts_own_and_short(console_run):
    _, console, _ = console_run
    lines = console.rstrip("\n").splitlines()
    assert not [line for line in lines if not line.startswith("[lmft]") and FOREIGN.search(line) and RAY_53727 not in line], \
        console
    stages = [line for line in lines if line.startswith("[lmft] ── ") and "elapsed)" in line]
    assert [s.split()[2] for s in stages] == [f"{i}/7" for i in range(1, 8)], stages  # data + six stages, each once
    epochs = {title: [line for line in lines if line.startswith(f"[lmft] {title}") and "epoch 1/1" in line]
              for title in ("pretrain", "adapted (lmft)", "baseline (full)")}
    assert all(len(found) == 1 for found in epochs.values()), epochs  # one line per epoch (1 here) per training
    assert all(re.search(r" loss \d+\.\d{3} ", found[0]) and " clips/s " in found[0] and found[0].endswith("done")
               for found in epochs.values()), epochs
    assert "τ̂ 0." in epochs["adapted (lmft)"][0] and "τ̂" not in epochs["baseline (full)"][0]
    # the final summary comes last: the comparison table, the adapted model and the baseline
    assert lines[-4].split() == ["training", "target", "top-1", "discard", "rate", "GFLOPs/clip", "train", "time"]
    assert lines[-2].startswith("adapted (lmft)") and lines[-1].startswith("baseline (full)") and "0.0%" in lines[-1]
    # the default demo differs in its epochs (30 per training, a line for every third) and has no pretraining stage, whose banner, epoch line
    # and encoder load reports (a warning line and its indented lines, per training that starts from the encoder) go
    from lmft_core.console import plain_epochs

    demo = load_profile("demo")
    assert not demo.workflow.pretrain
    reports = [i for i, line in enumerate(lines) if line.startswith("[lmft] warning: ") and "encoder.pth" in line]
    report_lines = sum(1 + next((k for k, line in enumerate(lines[i + 1:]) if not line.startswith("  ")), len(lines) - i - 1)
                       for i in reports)
    default_lines = (len(lines) - sum(map(len, epochs.values())) - 1 - report_lines
                     + len(plain_epochs(demo.train.epochs)) * (1 + len(demo.workflow.baselines)))
    assert default_lines <= 60, (len(lines), default_lines, console)


def test_parent_run_with_a_nested_run_per_stage(full_run):
    workdir, result, _ = full_run
    assert result.manifest == workdir / "data" / "manifest.csv"
    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("workflow-demo-")
    assert run.data.params["demo_data.videos_per_class"] == "2" and run.data.params["clip.num_frames"] == "8"
    assert run.data.metrics["data/videos"] == 8 and run.data.metrics["preprocess/shard_rows"] == 8
    assert {a.path for a in client.list_artifacts(result.run_id, "inputs")} == {"inputs/manifest.csv", "inputs/demo.toml"}
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")
    # the fixture's in-process re-run reopens the parent and adds the runs of the stages that always run again
    stages = sorted({(c.data.tags["lmft.stage"], c.data.tags.get("lmft.selector", "")) for c in children})
    assert [s for s, _ in stages] == ["evaluate", "predict", "preprocess", "pretrain", "register", "train", "train"]  # lmft, full
    trained = {c.data.tags["lmft.selector"]: c for c in children if c.data.tags["lmft.stage"] == "train"}
    assert set(trained) == {"lmft", "full"} and trained["lmft"].info.run_id == result.adapted_run
    encoder = next(c for c in children if c.data.tags["lmft.stage"] == "pretrain").data.tags["lmft.encoder"]
    assert all(t.data.tags["lmft.pretrained"] == encoder for t in trained.values())  # both start from its encoder
    assert encoder.startswith(str(workdir / "pretrain")) and Path(encoder).is_file()
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert result.experiment_url.endswith(f"/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")


def test_each_stage_is_timed_and_the_times_reach_the_parent_run(full_run):
    from lmft_core.workflow import STAGE_NAMES

    _, result, _ = full_run
    assert list(result.stage_seconds) == ["generate", *(n for n in STAGE_NAMES if n in result.stage_seconds)]
    assert {"preprocess", "adapt", "evaluate", "register", "predict"} <= set(result.stage_seconds)
    assert all(s >= 0 for s in result.stage_seconds.values())
    metrics = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id).data.metrics
    assert {f"time/{name}_s" for name in result.stage_seconds} <= set(metrics)


def test_evaluate_compares_the_adapted_model_with_the_baseline_training(full_run):
    workdir, result, _ = full_run
    rows = {r["selector"]: r for r in result.comparison}
    assert set(rows) == {"lmft", "full"}
    assert rows["full"]["discard_rate"] == 0.0 and rows["lmft"]["gflops_per_clip"] <= rows["full"]["gflops_per_clip"]
    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert {"evaluation/comparison.md", "evaluation/accuracy_vs_discard.png"} <= \
        {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    # the metric-name contract: each training's own result under the same names; the parent carries the headline
    parent = client.get_run(result.run_id)
    adapted, baseline = (client.get_run(rows[s]["run_id"]).data.metrics for s in ("lmft", "full"))
    for key in ("top1", "mean_class_accuracy", "discard_rate", "gflops_per_clip"):
        assert adapted[f"target_test/{key}"] == pytest.approx(adapted[f"eval_target/lmft/{key}"])
        assert baseline[f"target_test/{key}"] == pytest.approx(baseline[f"eval_target/full/{key}"])
        assert parent.data.metrics[f"target_test/{key}"] == pytest.approx(adapted[f"target_test/{key}"])
        assert parent.data.metrics[f"baseline/full/{key}"] == pytest.approx(baseline[f"target_test/{key}"])
    # the full-token baseline logs nothing about a threshold, and no kept-token figure
    assert not [k for k in baseline if "tau" in k or k.startswith(("policy/", "train/reward", "train/mu"))]
    assert "final/tau_hat" in adapted and "policy/tau_hat" in adapted
    assert {a.path for a in client.list_artifacts(rows["full"]["run_id"], "plots")} == {"plots/confusion.png"}
    assert not client.list_artifacts(rows["full"]["run_id"], "policy")
    # descriptions, logged models with distinct names, a signature and their result
    assert "| adapted | `lmft` |" in parent.data.tags[NOTE] and "| baseline | `full` |" in parent.data.tags[NOTE]
    assert all(NOTE in client.get_run(r["run_id"]).data.tags for r in result.comparison)
    models = {m.name: m for m in client.search_logged_models([parent.info.experiment_id])}
    assert {"classifier-lmft", "classifier-full"} <= set(models)
    on_model = {m.key: m.value for m in models["classifier-lmft"].metrics}
    assert on_model["target_test/top1"] == pytest.approx(rows["lmft"]["top1"]) and "final/tau_hat" in on_model
    assert models["classifier-lmft"].params["selector"] == "lmft" and "tau_hat" not in models["classifier-full"].params
    import mlflow.models

    with using_tracking_uri(result.tracking_uri):
        info = mlflow.models.get_model_info(result.model_uri)
    assert info.signature.inputs.input_names() == ["frames", "energy"] and info.saved_input_example_info is not None


def test_model_is_registered_with_an_alias_and_predicts_the_held_back_videos(full_run):
    workdir, result, _ = full_run
    client = MlflowClient(tracking_uri=result.tracking_uri)
    version = client.get_model_version_by_alias("lmft-demo", "best")
    assert str(version.version) == result.model_version and version.source == result.model_uri
    tags = version.tags
    assert json.loads(tags["lmft.classes"]) == ["jump", "wave"] and json.loads(tags["lmft.clip"])["image_size"] == 32
    assert 0.0 < float(tags["lmft.tau_hat"]) < 1.0 and json.loads(tags["lmft.energy"]) == {"variant": "diff"}
    table = pq.read_table(result.predictions)
    assert sorted(table.column("video_id").to_pylist()) == ["target/jump/jump_001", "target/wave/wave_001"]
    for col in ("predicted_label", "p_jump", "p_wave", "keep_ratio", "confidence"):
        assert col in table.column_names
    probs = table.column("p_jump").to_numpy() + table.column("p_wave").to_numpy()
    assert abs(probs - 1.0).max() < 1e-5
    assert result.prediction_summary["predicted"] == 2 and result.prediction_summary["rejected"] == 0
    predicts = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                  f"tags.lmft.stage = 'predict' and tags.mlflow.parentRunId = '{result.run_id}'")
    predict = min(predicts, key=lambda r: r.info.start_time)  # the run that predicted (the fixture's re-run reuses it)
    assert '"type": "table"' in predict.data.tags["mlflow.loggedArtifacts"] and NOTE in predict.data.tags
    with using_tracking_uri(result.tracking_uri):
        logged = client.load_table(predict.info.experiment_id, "predict/predictions.json", run_ids=[predict.info.run_id])
    assert sorted(logged["video_id"]) == sorted(table.column("video_id").to_pylist())
    pictures = {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(predict.info.run_id, "predict/pictures")}
    assert pictures == set(table.column("picture").to_pylist()) and len(pictures) == 2  # the demo profile draws them


def test_rerun_skips_every_finished_stage_and_force_redoes_one(full_run, capsys):
    workdir, first, elapsed = full_run
    t0 = time.perf_counter()
    again = run_full(load_profile("demo", TINY), workdir)
    rerun_s = time.perf_counter() - t0
    assert again.run_id == first.run_id and again.model_uri == first.model_uri  # the same parent run and model
    assert again.model_version == first.model_version and again.predictions == first.predictions
    assert rerun_s < 0.6 * elapsed, (rerun_s, elapsed)
    out = capsys.readouterr().out
    assert "already finished" in out and "predictions of this model on these videos exist" in out
    before = Path(first.predictions).stat().st_mtime_ns
    forced = run_full(load_profile("demo", TINY), workdir, force=("predict",))
    assert Path(forced.predictions).stat().st_mtime_ns != before and forced.model_uri == first.model_uri
    text = where_everything_is(forced)
    assert "models:/lmft-demo@best" in text and "mlflow ui --backend-store-uri" in text and "workflowType=machine_learning" in text


def test_bad_manifest_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,domain,split\nmissing.mp4,,source,train\n")
    workdir = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "full.py"), "--manifest", str(bad), "--workdir", str(workdir)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "line 2: source row without a label" in proc.stderr and "line 2: file not found" in proc.stderr
    assert not (workdir / "data").exists() and not (workdir / "shards").exists()


def test_bad_profile_setting_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "full.py"), "--workdir", str(tmp_path / "w"),
                           "--set", "demo_data.videos_per_clas=3"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "unknown key(s) ['videos_per_clas']" in proc.stderr
    with pytest.raises(ConfigError, match="workflow.adapt must be one of"):
        load_profile("demo", ["workflow.adapt='tune'"])
    with pytest.raises(ConfigError, match="--force: unknown stage"):
        run_full(load_profile("demo"), tmp_path / "w2", force=("train",))


def test_artifacts_beside_the_embedded_store_only(tmp_path):
    from lmft_core.tracking import TrackingConfig, artifact_location

    embedded = TrackingConfig().resolve_uri(tmp_path)
    assert embedded == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert artifact_location(embedded, tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert artifact_location("http://mlflow.internal:5000", tmp_path) is None  # the server stores them
    assert TrackingConfig(uri="http://x:5000").resolve_uri(tmp_path) == "http://x:5000"
