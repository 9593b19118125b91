"""Sweeps on Ray Tune: trials as Ray Train fits running at once, ASHA, the parent and child MLflow runs, the
best trial's model and the summary table, label-free selection by default with its standard error, the
search space checked at profile load, and resources fitted to the cluster."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import TINY_CLIP_GEOMETRY, TINY_TRAIN
from lmft_core.config import ConfigError
from lmft_core.run_config import load_profile
from lmft_core.shards.reader import ShardSet
from lmft_core.sweep import SweepConfig, SweepError, binomial_se, fit_trials, indistinguishable, run_sweep, selection_clips, summary, trial_overrides
from lmft_core.train.config import TrainConfig

SPACE = '{"train.gamma_c" = [0.2, 0.9], "policy.loss_weight" = [1.0, 10.0], "train.lambda_t" = [0.5]}'
SWEEP = ["sweep.search='random'", "sweep.num_samples=3", f"sweep.space={SPACE}", "sweep.grace_period=1", "train.epochs=2",
         "train.workers=1", "train.batch_size=2",
         "train.eval_every_epochs=2"]  # as the demo evaluates once, at the end: trials must still report the metric every epoch
# 4 CPUs: a trial (one worker, 0.5 CPU, and the Tune function) fits 5 times beside the CPU kept for Ray Data,
# so the 3 trials run at once


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
        start_local_ray(num_cpus=4)  # the 3 trials fit at once (SWEEP)
        workdir = tmp_path_factory.mktemp("sweep")
        yield run_sweep(load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + SWEEP), tiny_shards, workdir), workdir
    ray.shutdown()
    start_local_ray()  # the session's 2-CPU instance for the tests after these


def test_trials_parent_and_child_runs_and_the_best_model(swept, tiny_shards):
    result, workdir = swept
    assert len(result.table) == 3
    for row in result.table:
        assert row["train.gamma_c"] in (0.2, 0.9) and row["policy.loss_weight"] in (1.0, 10.0) and row["train.lambda_t"] == 0.5
        assert row["status"] in ("completed", "stopped early") and row["run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.selection_metric"] == "eval_source_val/lmft/top1"
    assert parent.data.params["best.trial"] == result.best_trial
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 3 and all(c.data.tags["lmft.stage"] == "sweep-trial" for c in children)
    for row in result.table:  # evaluated after every epoch it reached, whatever the profile's schedule (TRIAL_EVALUATION)
        history = client.get_metric_history(row["run_id"], "eval_source_val/lmft/top1")
        assert row["epochs"] >= 1 and len(history) == row["epochs"], (row, history)
    trial_runs = {c.info.run_id: c for c in children}
    best = trial_runs[result.best_run_id]
    assert float(best.data.params["train.gamma_c"]) == result.best_params["train.gamma_c"]
    assert "eval_source_val/lmft/top1" in best.data.metrics  # rank 0 logged the epochs into the trial's run
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "sweep")}
    assert {"sweep/results.csv", "sweep/results.md", "sweep/accuracy_vs_discard.png"} <= artifacts
    table = Path(client.download_artifacts(result.parent_run_id, "sweep/results.md", str(workdir / "dl"))).read_text()
    assert table.strip() == result.summary  # the parent run carries the table the sweep printed
    clips = ShardSet.open(tiny_shards).counts()[("source", "val")]  # the selection metric's clips (3)
    assert parent.data.metrics["best/selection_se"] == pytest.approx(binomial_se(result.best_metrics["eval_source_val/lmft/top1"], clips))
    assert result.model_uri.startswith("models:/m-")
    import mlflow

    from lmft_core.tracking import using_tracking_uri

    with using_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}"):
        assert mlflow.models.get_model_info(result.model_uri).metadata["classes"] == ["jump", "walk", "wave"]
    with open(result.results_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"trial", "train.gamma_c", "eval_source_val/lmft/top1", "eval_target/lmft/top1", "selection_se"} <= set(rows[0])
    lines = result.summary.splitlines()
    assert lines[0].startswith(f"| trial | train.gamma_c | policy.loss_weight | eval_source_val/lmft/top1 ± SE (n={clips}) |")
    assert lines[2].startswith(f"| {result.best_trial} |")  # best first; train.lambda_t has one value: no column


def test_trials_run_at_once_when_the_cluster_has_room(swept):
    """On 4 CPUs the 3 trials (0.6 CPU each, 1 CPU kept for Ray Data) run concurrently: their
    [start, end] intervals, read from Tune's per-trial result files, overlap."""
    result, _ = swept
    spans = []
    for row in result.table:
        last = json.loads((Path(row["path"]) / "result.json").read_text().splitlines()[-1])
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_selection_by_target_labels_is_an_explicit_choice():
    with pytest.raises(ConfigError, match="select_on_target_labels = true"):
        SweepConfig(metric="eval_target/lmft/top1")
    assert SweepConfig(select_on_target_labels=True).selection_metric == ("eval_target/lmft/top1", "max")
    assert SweepConfig().selection_metric == ("eval_source_val/lmft/top1", "max")
    space = {"train.gamma_c": [0.5, 0.8], "policy.loss_weight": [1.0, 10.0], "train.lambda_t": [0.5]}
    assert SweepConfig(search="grid", space=space).trials() == 4
    assert SweepConfig(search="random", num_samples=3, space=space | {"train.lambda_t": {"grid": [0.5, 1.0]}}).trials() == 6
    assert trial_overrides({"train.lambda_t": 0.5, "train.pseudo_labels": "self"}) == ["train.lambda_t=0.5",
                                                                                        'train.pseudo_labels="self"']


def test_optuna_cannot_search_a_grid_and_inert_settings_are_refused():
    grid = 'sweep.space={"train.lambda_t" = {grid = [0.5, 1.0]}}'
    with pytest.raises(ConfigError, match=r"sweep.space\['train.lambda_t'\]: Optuna cannot search a grid"):
        load_profile("demo", ["sweep.search='optuna'", grid])
    assert load_profile("demo", ["sweep.search='random'", grid]).sweep.grid_axes() == ["train.lambda_t"]
    # self_gamma acts only on self pseudo-labels, gamma_c only on CLIP's: sweeping them otherwise tunes nothing
    with pytest.raises(ConfigError, match=r"sweep.space\['train.self_gamma'\]: train.self_gamma acts only when "
                                          r"train.pseudo_labels uses 'self'"):
        load_profile("demo", ['sweep.space={"train.self_gamma" = [0.5, 0.9]}'])  # the demo trains on CLIP's
    with pytest.raises(ConfigError, match=r"sweep.space\['train.gamma_c'\]: .*uses 'clip'"):
        load_profile("demo", ['sweep.space={"train.gamma_c" = [0.5, 0.9], "train.pseudo_labels" = ["self"]}'])
    assert load_profile("demo", ['train.pseudo_labels="clip+self"', 'sweep.space={"train.self_gamma" = [0.5]}'])


def test_the_demo_space_holds_only_knobs_that_act_offline():
    """The demo's CLIP is untrained, so gamma_c passes nothing: its trials self-train and tune self_gamma."""
    demo = load_profile("demo")
    assert "train.gamma_c" not in demo.sweep.space and demo.sweep.space["train.pseudo_labels"] == ["self"]
    assert set(demo.sweep.varied()) == {"train.self_gamma", "train.lambda_t", "policy.loss_weight"}
    assert "train.gamma_c" in load_profile("paper").sweep.space


def test_trials_fit_the_cluster_with_fewer_workers_when_one_does_not():
    cfg = SweepConfig()  # one whole CPU kept for Ray Data's tasks
    one = TrainConfig(workers=1, cpus_per_worker=0.5)  # 0.6 CPU per trial with the Tune function
    fit = fit_trials(cfg, one, {"CPU": 2.0})
    assert (fit.workers, fit.concurrent, fit.note) == (1, 1, "")  # (2 - 1) // 0.6
    assert fit_trials(cfg, one, {"CPU": 8.0}).concurrent == 11
    assert fit_trials(SweepConfig(max_concurrent=3), one, {"CPU": 16.0}).concurrent == 3
    gpu = TrainConfig(workers=2, cpus_per_worker=1.0, gpus_per_worker=1.0)
    assert fit_trials(cfg, gpu, {"CPU": 32.0, "GPU": 4.0}).concurrent == 2  # GPUs bound it
    # the demo on a 2-core laptop: 2 workers need 1.1 CPUs, 1 is left: one worker per trial, said in one line
    laptop = fit_trials(cfg, TrainConfig(workers=2, cpus_per_worker=0.5, batch_size=4), {"CPU": 2.0})
    assert (laptop.workers, laptop.concurrent, laptop.overrides) == (1, 1, ["train.workers=1"])
    assert laptop.note == ("a trial at train.workers=2 needs 1.1 CPUs (2 workers x 0.5 + 0.1) and 0 GPUs with 1 CPUs kept "
                           "for Ray Data, but the cluster has 2 CPUs and 0 GPUs: trials run with 1 worker each "
                           "(global batch 4 instead of 8 clips per domain)")
    # 4 workers of 1 CPU on 4 CPUs: 3 left for trials, 2 workers (2.1 CPUs) is the most that fits
    assert fit_trials(cfg, TrainConfig(workers=4, cpus_per_worker=1.0), {"CPU": 4.0}).workers == 2
    # GPUs: 4 workers of 1 GPU on a 2-GPU cluster run as 2
    assert fit_trials(cfg, TrainConfig(workers=4, cpus_per_worker=1.0, gpus_per_worker=1.0), {"CPU": 32.0, "GPU": 2.0}).workers == 2
    # the fit against a brute-force reference: the largest w <= workers with w * c + 0.1 <= CPU - data_cpus
    for cpus in (1.5, 2.0, 3.0, 4.0, 6.5):
        for workers in (1, 2, 3, 5):
            for c in (0.25, 0.5, 1.0):
                train = TrainConfig(workers=workers, cpus_per_worker=c)
                ok = [w for w in range(1, workers + 1) if w * c + 0.1 <= cpus - 1.0 + 1e-9]
                if not ok:
                    with pytest.raises(SweepError, match="one trial needs at least"):
                        fit_trials(cfg, train, {"CPU": cpus})
                    continue
                got = fit_trials(cfg, train, {"CPU": cpus})
                assert got.workers == max(ok) and got.concurrent == math.floor((cpus - 1.0 + 1e-9) / (max(ok) * c + 0.1))
                assert (got.note == "") == (max(ok) == workers)
    with pytest.raises(SweepError, match=r"one trial needs at least 0.6 CPUs .* but the cluster has 1.5 CPUs"):
        fit_trials(cfg, one, {"CPU": 1.5})
    with pytest.raises(ConfigError, match="sweep.data_cpus must be >= 1"):
        SweepConfig(data_cpus=0.5)
    # memory ingest runs no Ray Data task: no CPU is kept for it
    memory = fit_trials(cfg, TrainConfig(workers=2, cpus_per_worker=1.0, batch_size=32, ingest="memory"), {"CPU": 2.0})
    assert (memory.workers, memory.concurrent) == (1, 1)
    assert memory.note == ("a trial at train.workers=2 needs 2.1 CPUs (2 workers x 1 + 0.1) and 0 GPUs, but the cluster "
                           "has 2 CPUs and 0 GPUs: trials run with 1 worker each (global batch 32 instead of 64 clips per domain)")
    assert fit_trials(cfg, TrainConfig(workers=1, cpus_per_worker=1.0, ingest="memory"), {"CPU": 2.0}).note == ""


def test_an_adafocus_sweep_selects_on_its_own_selector_label():
    from lmft_core.run_config import load_profile

    profile = load_profile("demo", ['selector.name="adafocus"', "selector.window=[2, 4]"])
    assert profile.selector.label == "adafocus-w2x4"  # the demo's first-segment rule does not touch adafocus' window
    assert profile.sweep.metric_for(profile.selector.label) == ("eval_source_val/adafocus-w2x4/top1", "max")
    assert SweepConfig(select_on_target_labels=True).metric_for("adafocus-w2x2") == ("eval_target/adafocus-w2x2/top1", "max")
    assert SweepConfig(metric="train/loss", mode="min").metric_for("adafocus-w2x2") == ("train/loss", "min")
    assert SweepConfig().metric_for("lmft") == SweepConfig().selection_metric


def test_binomial_standard_error_matches_the_spread_of_simulated_accuracies():
    """sqrt(p (1 - p) / n) against the standard deviation of accuracies over 20,000 simulated evaluations
    of n clips each (a sampled SD has relative SE about 1/sqrt(2 * 20000) = 0.5%: 3% tolerance)."""
    rng = np.random.default_rng(0)
    for p, n in ((0.5, 15), (0.2, 60), (0.9, 200)):
        simulated = rng.binomial(n, p, size=20_000) / n
        assert binomial_se(p, n) == pytest.approx(simulated.std(), rel=0.03)
    assert binomial_se(1.0, 10) == 0.0
    counts = {("source", "val"): 60, ("target", "test"): 30}
    assert selection_clips("eval_source_val/lmft/top1", counts) == 60
    assert selection_clips("eval_target/lmft/top1", counts) == 30
    assert selection_clips("eval_target/lmft/entropy_nats", counts) is None  # not a proportion: no binomial SE


def test_the_summary_says_when_the_best_trial_is_not_distinguishable_from_the_second():
    metric = "eval_source_val/lmft/top1"

    def row(trial, value, n=60):
        return {"trial": trial, "train.lambda_t": 0.5, metric: value, "selection_se": binomial_se(value, n),
                "eval_target/lmft/top1": 0.4, "discard_rate": 0.3, "gflops_per_clip": 1.234}

    close = [row("a", 0.60), row("b", 0.55)]  # SE of 0.60 on 60 clips: 0.063 > 0.05
    assert "a (eval_source_val/lmft/top1 0.600 ± 0.063) is not distinguishable from the second, b" in indistinguishable(close, metric)
    assert indistinguishable([row("a", 0.80), row("b", 0.60)], metric) == ""  # 0.2 apart, SE 0.052
    assert indistinguishable([row("a", 0.60)], metric) == ""
    text = summary(close, ["train.lambda_t"], metric, 60)
    assert text.splitlines()[2] == "| a | 0.5 | 0.600 ± 0.063 | 0.400 | 0.300 | 1.23 |"
    assert text.splitlines()[-1].startswith("note: the best trial a ")
    unlabelled = dict(row("c", 0.7), selection_se=None, **{"eval_target/lmft/top1": None})
    assert summary([unlabelled], ["train.lambda_t"], metric, None).splitlines()[2] == "| c | 0.5 | 0.700 | — | 0.300 | 1.23 |"


def test_bench_sweep_reads_trials_against_seeds_and_the_selection_against_one_standard_error():
    import runpy

    verdicts = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sweep.py"))["verdicts"]
    target = "eval_target/lmft/top1"
    trials = [{"trial": t, target: v} for t, v in (("a", 0.50), ("b", 0.60), ("c", 0.70))]  # sd 0.1
    # best 0.70 on 100 clips: SE sqrt(0.7 * 0.3 / 100) = 0.0458; the selected b is 0.10 below: not within
    spread, selection = verdicts(trials, trials[1], [0.60, 0.62, 0.64], target, 100)
    assert "sd 0.100 (range 0.500–0.700)" in spread and "0.620 ± 0.020 (sd)" in spread and "spread more than seeds" in spread
    assert "0.700 ± 0.046 (binomial SE over 100 target-test clips)" in selection and "not within one standard error" in selection
    spread, selection = verdicts(trials, {"trial": "d", target: 0.68}, [0.40, 0.60, 0.80], target, 100)
    assert "no more than seeds do" in spread and "is within one standard error of the best (0.020 below it)" in selection
