"""Sweeps on Ray Tune: trials as Ray Train fits, ASHA, the parent and child MLflow runs, the best trial's
model, label-free selection by default, and resources fitted to the cluster."""

from __future__ import annotations

import csv

import pytest
from mlflow import MlflowClient

from conftest import TINY_CLIP_GEOMETRY, TINY_TRAIN
from lmft_core.config import ConfigError
from lmft_core.run_config import load_profile
from lmft_core.sweep import SweepConfig, SweepError, max_concurrent, run_sweep
from lmft_core.train.config import TrainConfig

SWEEP = ["sweep.search='random'", "sweep.num_samples=3", "sweep.gamma_c=[0.2, 0.9]", "sweep.lambda_l=[1.0, 10.0]",
         "sweep.lambda_t=[0.5]", "sweep.grace_period=1", "train.epochs=2", "train.workers=1", "train.batch_size=2"]
# 2 CPUs: a trial (one worker, 0.5 CPU, and the Tune function) fits once beside the CPU kept for Ray Data


@pytest.fixture(scope="module")
def swept(tiny_shards, tmp_path_factory):
    import ray

    from conftest import start_local_ray

    # a new Ray instance for the sweep: nothing left over from earlier tests of the session
    # (a sweep once waited for ever here for a trial that Ray had started, after the whole suite before it);
    # the sweep logs into the work directory's own store, which the tests read
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        ray.shutdown()
        start_local_ray()
        workdir = tmp_path_factory.mktemp("sweep")
        return run_sweep(load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + SWEEP), tiny_shards, workdir), workdir


def test_trials_parent_and_child_runs_and_the_best_model(swept):
    result, workdir = swept
    assert len(result.table) == 3
    for row in result.table:
        assert row["gamma_c"] in (0.2, 0.9) and row["lambda_l"] in (1.0, 10.0) and row["lambda_t"] == 0.5
        assert row["status"] in ("completed", "stopped early") and row["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.selection_metric"] == "eval_source_val/lmft/top1"
    assert parent.data.params["best.trial"] == result.best_trial
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3 and all(c.data.tags["lmft.stage"] == "sweep-trial" for c in children)
    trial_runs = {c.info.run_id: c for c in children}
    best = trial_runs[result.best_run_id]
    assert float(best.data.params["train.gamma_c"]) == result.best_params["gamma_c"]
    assert "eval_source_val/lmft/top1" in best.data.metrics  # rank 0 logged the epochs into the trial's run
    assert {"sweep/results.csv", "sweep/accuracy_vs_discard.png"} <= {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert result.model_uri.startswith("models:/m-")
    import mlflow

    from lmft_core.tracking import using_tracking_uri

    with using_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}"):
        assert mlflow.models.get_model_info(result.model_uri).metadata["classes"] == ["jump", "walk", "wave"]
    with open(result.results_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"trial", "gamma_c", "eval_source_val/lmft/top1", "eval_target/lmft/top1"} <= set(rows[0])


def test_selection_by_target_labels_is_an_explicit_choice():
    with pytest.raises(ConfigError, match="select_on_target_labels = true"):
        SweepConfig(metric="eval_target/lmft/top1")
    assert SweepConfig(select_on_target_labels=True).selection_metric == ("eval_target/lmft/top1", "max")
    assert SweepConfig().selection_metric == ("eval_source_val/lmft/top1", "max")
    assert SweepConfig(search="grid", gamma_c=(0.5, 0.8), lambda_l=(1.0, 10.0), lambda_t=(0.5,)).trials() == 4


def test_concurrency_leaves_cpus_for_ray_data():
    cfg = SweepConfig()  # one whole CPU kept for Ray Data's tasks
    train = TrainConfig(workers=1, cpus_per_worker=0.5)  # 0.6 CPU per trial with the Tune function
    assert max_concurrent(cfg, train, {"CPU": 2.0}) == 1  # (2 - 1) // 0.6
    assert max_concurrent(cfg, train, {"CPU": 8.0}) == 11
    assert max_concurrent(SweepConfig(max_concurrent=3), train, {"CPU": 16.0}) == 3
    gpu = TrainConfig(workers=2, cpus_per_worker=1.0, gpus_per_worker=1.0)
    assert max_concurrent(cfg, gpu, {"CPU": 32.0, "GPU": 4.0}) == 2  # GPUs bound it
    with pytest.raises(SweepError, match="one trial needs 1.1 CPUs"):
        max_concurrent(cfg, TrainConfig(workers=2, cpus_per_worker=0.5), {"CPU": 2.0})
    with pytest.raises(ConfigError, match="sweep.data_cpus must be >= 1"):
        SweepConfig(data_cpus=0.5)


def test_an_adafocus_sweep_selects_on_its_own_selector_label():
    from lmft_core.run_config import load_profile

    profile = load_profile("demo", ['selector.name="adafocus"', "selector.window=[2, 4]"])
    assert profile.sweep.metric_for(profile.selector.label) == ("eval_source_val/adafocus-w2x4/top1", "max")
    assert SweepConfig(select_on_target_labels=True).metric_for("adafocus-w2x2") == ("eval_target/adafocus-w2x2/top1", "max")
    assert SweepConfig(metric="train/loss", mode="min").metric_for("adafocus-w2x2") == ("train/loss", "min")
    assert SweepConfig().metric_for("lmft") == SweepConfig().selection_metric
