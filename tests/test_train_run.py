"""Adaptation on Ray Train end to end: the MLflow run, the logged model, checkpoints, resuming after a
killed worker, finished runs not retrained, bad input caught before any compute, and self-training labels
refreshed on two Ray Train workers."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import TINY_CLIP_GEOMETRY, TINY_TRAIN, entry_main
from lmft_core.run_config import load_profile
from lmft_core.shards.reader import BATCH_COLUMNS, ShardSet, batch_from_table
from lmft_core.train.checkpoint import load_checkpoint
from lmft_core.train.run import TrainError, prepare, run_training


def profile(*extra: str):
    return load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + list(extra))


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


def test_run_logs_params_metrics_artifacts_and_a_model_that_predicts(trained, tiny_shards):
    workdir, result = trained
    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_name
    params = run.data.params
    assert params["train.gamma_c"] == "0.3" and params["model.clip.image_size"] == "32" and params["model.num_classes"] == "3"
    assert params["selector.name"] == "lmft" and params["shards.classes"] == "['jump', 'walk', 'wave']"
    metrics = run.data.metrics
    for key in ("train/loss", "train/loss_source", "train/loss_target", "train/reward", "train/baseline", "train/tau",
                "train/mu", "train/sigma", "train/tau_hat", "train/discard_rate_source", "train/discard_rate_target",
                "train/pseudo_label_pass_rate", "train/lr", "train/clips_per_s", "train/data_wait_s", "train/step_time_s",
                "epoch/clips_per_s", "epoch/data_wait_fraction", "eval_target/lmft/top1", "eval_target/full/top1",
                "eval_target/random-match-lmft/discard_rate", "eval_target/threshold-keep0.50/gflops_per_clip",
                "eval_target/topk-keep0.50/mean_class_accuracy", "eval_source_val/lmft/top1", "final/tau_hat"):
        assert key in metrics, key
    steps = client.get_metric_history(result.mlflow_run_id, "train/tau")
    # 9 source / 6 target train clips, 2 workers x batch 2: one step per epoch, 3 epochs
    assert [m.step for m in steps] == [1, 2, 3]
    ev = result.evaluation
    assert ev["full"]["discard_rate"] == 0.0 and ev["topk-keep0.50"]["discard_rate"] == pytest.approx(0.5)
    assert ev["random-match-lmft"]["discard_rate"] == pytest.approx(ev["lmft"]["discard_rate"])
    assert ev["full"]["gflops_per_clip"] > ev["topk-keep0.50"]["gflops_per_clip"]
    assert sum(map(sum, ev["lmft"]["confusion"])) == 6 == ev["lmft"]["clips"]
    arts = {a.path for folder in ("config", "policy", "evaluation", "plots")
            for a in client.list_artifacts(result.mlflow_run_id, folder)}
    assert {"config/resolved.json", "config/demo.toml", "policy/policy.json", "evaluation/evaluation.json",
            "evaluation/efficiency.md", "plots/threshold.png", "plots/kept_tokens.png", "plots/confusion.png"} <= arts
    policy = json.loads((Path(result.run_dir) / "artifacts" / "policy.json").read_text())
    assert policy["tau_hat"] == pytest.approx(result.tau_hat) and policy["step"] == 3

    # the logged model: mlflow.pytorch.load_model gives the adapter with tau_hat inside
    import mlflow.pytorch

    from lmft_core.tracking import using_tracking_uri

    with using_tracking_uri(result.tracking_uri):
        model = mlflow.pytorch.load_model(result.model_uri)
    b = batch_from_table(ShardSet.open(tiny_shards).read("target", "test", BATCH_COLUMNS))
    out = model.predict(b.frames, b.energy)
    assert out["probs"].shape == (6, 3) and torch.allclose(out["probs"].sum(-1), torch.ones(6))
    assert float(model.policy.inference_tau()) == pytest.approx(result.tau_hat)
    assert (out["label"] == out["probs"].argmax(-1)).all()
    expected_keep = 1.0 - torch.tensor(ev["lmft"]["discard_rate"])
    assert float(out["keep_ratio"].mean()) == pytest.approx(float(expected_keep), abs=1e-6)


def test_a_run_with_one_threshold_per_segment(tiny_shards, tmp_path):
    """``--set selector.name=lmft-segment``: a segment policy (N_t - 1 = 3 thresholds) trained, evaluated
    (with random matched to it), checkpointed, logged with tau_hat per segment, and predicting."""
    import mlflow.pytorch

    from lmft_core.model_store import resolve

    result = run_training(profile("selector.name=lmft-segment", "train.epochs=2"), tiny_shards, tmp_path)
    assert "-lmft-segment-" in result.run_name
    assert isinstance(result.tau_hat, list) and len(result.tau_hat) == 3
    ev = result.evaluation
    assert list(ev)[0] == "lmft-segment" and "random-match-lmft-segment" in ev and "lmft" not in ev
    assert ev["random-match-lmft-segment"]["discard_rate"] == pytest.approx(ev["lmft-segment"]["discard_rate"])
    client = MlflowClient(tracking_uri=result.tracking_uri)
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    for key in ("train/tau", "train/tau/seg1", "train/mu/seg3", "train/sigma/seg2", "train/tau_hat", "train/tau_hat/seg3",
                "policy/tau_hat/seg1", "final/tau_hat", "final/tau_hat/seg2", "eval_target/lmft-segment/top1",
                "eval_source_val/lmft-segment/top1"):
        assert key in metrics, key
    assert metrics["final/tau_hat"] == pytest.approx(sum(result.tau_hat) / 3)
    state = load_checkpoint(result.checkpoint)
    assert state["config"]["policy"]["kind"] == "segment" and state["config"]["policy"]["num_segments"] == 4
    assert state["learner"]["adapter"]["policy.mu"].shape == (3,) and state["policy"]["tau_hat"] == result.tau_hat
    assert state["policy"]["step"] == 2 and len(state["policy"]["mu"]) == 3
    info = resolve(result.model_uri, result.tracking_uri)
    assert info.tau_hat == pytest.approx(tuple(result.tau_hat)) and json.loads(info.tags()["lmft.tau_hat"]) == \
        pytest.approx(result.tau_hat, abs=1e-6)
    from lmft_core.tracking import NOTE, using_tracking_uri

    # the model's page in MLflow describes it: its result, its thresholds, and the command that uses it
    description = client.get_logged_model(result.model_uri.removeprefix("models:/")).tags[NOTE]
    own = ev["lmft-segment"]
    assert f"top-1 **{own['top1']:.3f}**" in description and f"{own['discard_rate']:.1%} of tokens discarded" in description
    assert json.dumps(result.tau_hat) in description and "`lmft-segment`" in description
    assert f"--model {result.model_uri} --tracking-uri {result.tracking_uri} --folder" in description

    with using_tracking_uri(result.tracking_uri):
        model = mlflow.pytorch.load_model(result.model_uri)
    assert model.policy.inference_tau().tolist() == pytest.approx(result.tau_hat)
    b = batch_from_table(ShardSet.open(tiny_shards).read("target", "test", BATCH_COLUMNS))
    out = model.predict(b.frames, b.energy)
    assert float(out["keep_ratio"].mean()) == pytest.approx(1.0 - ev["lmft-segment"]["discard_rate"], abs=1e-6)


def test_an_adafocus_run_logs_its_glance_and_kept_tokens_and_no_threshold(tiny_shards, tmp_path):
    """adafocus on Ray Train: the kept-token figure draws its windows from the clips, and the run logs the
    glance's loss but none of the threshold's metrics, policy file or plot (it draws on no threshold)."""
    result = run_training(profile('selector.name="adafocus"', "train.epochs=1"), tiny_shards, tmp_path)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    plots = {a.path for a in client.list_artifacts(result.mlflow_run_id, "plots")}
    assert plots == {"plots/confusion.png", "plots/kept_tokens.png"}
    assert not client.list_artifacts(result.mlflow_run_id, "policy")
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    assert "train/glance_loss" in metrics and "target_test/top1" in metrics
    assert not {"train/tau", "train/tau_hat", "train/reward", "train/baseline", "final/tau_hat"} & set(metrics)
    from lmft_core.tracking import NOTE

    assert "threshold" not in client.get_logged_model(result.model_uri.removeprefix("models:/")).tags[NOTE]


def test_checkpoint_holds_everything_and_loads_weights_only(trained):
    _, result = trained
    state = load_checkpoint(result.checkpoint)  # torch.load(weights_only=True) inside
    assert state["epoch"] == 3 and state["step"] == 3
    assert {"adapter", "optimizer", "scheduler"} <= set(state["learner"])
    assert any(k.startswith("model.") for k in state["learner"]["adapter"]) and "policy.mu" in state["learner"]["adapter"]
    assert state["classes"] == ["jump", "walk", "wave"] and state["clip"]["image_size"] == 32
    assert state["config"]["train"]["gamma_c"] == 0.3 and "torch" in state["rng"]
    assert state["policy"]["tau_hat"] == pytest.approx(result.tau_hat)
    assert torch.load(Path(result.checkpoint) / "checkpoint.pt", weights_only=True)["format"] == "lmft-train-checkpoint-v1"


def test_a_finished_run_is_not_trained_again(trained, tiny_shards):
    workdir, result = trained
    t0 = time.perf_counter()
    again = run_training(profile(), tiny_shards, workdir)
    assert again == result and time.perf_counter() - t0 < 10
    client = MlflowClient(tracking_uri=result.tracking_uri)
    exp = client.get_run(result.mlflow_run_id).info.experiment_id
    assert len(client.search_runs([exp], f"tags.mlflow.runName = '{result.run_name}'")) == 1


def _kill_a_worker_after(checkpoint: Path, killed: dict, timeout_s: float = 240) -> None:
    from ray._private import state

    deadline = time.time() + timeout_s
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.2)
    for actor in state.actors().values():
        if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE":
            os.kill(actor["Pid"], signal.SIGKILL)
            killed["pid"] = actor["Pid"]
            return


def test_a_killed_worker_resumes_from_the_last_checkpoint(tiny_shards, tmp_path):
    p = profile("train.epochs=8", "train.keep_checkpoints=10", "train.max_failures=2", "train.run_name='killed'")
    killed: dict = {}
    watcher = threading.Thread(target=_kill_a_worker_after, args=(tmp_path / "ray_train" / "killed" / "epoch_0003", killed))
    watcher.start()
    result = run_training(p, tiny_shards, tmp_path)
    watcher.join()
    assert killed, "no worker was killed"
    client = MlflowClient(tracking_uri=result.tracking_uri)
    resumed = client.get_metric_history(result.mlflow_run_id, "train/resumed_from_step")
    assert resumed and resumed[-1].value > 0  # restarted from a checkpoint, not from scratch
    epoch = int(client.get_metric_history(result.mlflow_run_id, "train/resumed_from_epoch")[-1].value)
    saved = load_checkpoint(tmp_path / "ray_train" / "killed" / f"epoch_{epoch:04d}")["policy"]
    assert resumed[-1].value == saved["step"]
    for key in ("mu", "log_sigma", "baseline", "step", "tau_hat"):
        restored = client.get_metric_history(result.mlflow_run_id, f"train/resumed_policy_{key}")[-1].value
        assert restored == pytest.approx(saved[key], rel=1e-6), key
    assert load_checkpoint(result.checkpoint)["epoch"] == 8  # and it finished
    for key in ("train/tau", "train/loss", "train/mu", "epoch/steps", "policy/mu"):  # one value per step, no repeats
        assert sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, key)) == list(range(1, 9)), key


def test_bad_input_is_caught_before_any_compute(tiny_shards, tmp_path):
    with pytest.raises(TrainError, match=r"clip.image_size: profile 64, shards 32"):
        prepare(load_profile("demo", TINY_TRAIN), tiny_shards, tmp_path)
    with pytest.raises(TrainError, match="less than one step of train.batch_size x accum_steps = 64"):
        prepare(profile("train.batch_size=64"), tiny_shards, tmp_path)
    with pytest.raises(TrainError, match="train.hflip_label_map: 'left' is not a class"):
        prepare(profile("train.hflip_label_map={left='right'}"), tiny_shards, tmp_path)
    with pytest.raises(TrainError, match="model.pretrained is empty"):
        prepare(profile("train.require_pretrained=true"), tiny_shards, tmp_path)
    # a preprocessing output without target-test clips
    root = ShardSet.open(tiny_shards).root
    copy = tmp_path / "no_test"
    shutil.copytree(root, copy)
    import pyarrow.parquet as pq

    for f in (copy / "shards").glob("*.parquet"):
        t = pq.read_table(f)
        keep = [not (d == "target" and s == "test") for d, s in zip(t.column("domain").to_pylist(), t.column("split").to_pylist())]
        pq.write_table(t.filter(keep), f)
    with pytest.raises(TrainError, match="no target-test clips in the shards, and the evaluation needs them"):
        prepare(profile(), copy, tmp_path)
    main = entry_main("train")
    assert main(["--shards", str(tmp_path / "nothing"), "--workdir", str(tmp_path)]) == 2


def test_job_has_geometry_from_clip_and_classes_from_the_shards(tiny_shards, tmp_path):
    job, name = prepare(profile(), tiny_shards, tmp_path)
    assert job.model.clip.image_size == 32 and job.model.num_classes == 3
    assert job.steps_per_epoch == 1 and name.startswith("demo-lmft-s0-")
    assert prepare(profile(), tiny_shards, tmp_path)[1] == name  # the same command names the same run
    assert prepare(profile("train.seed=1"), tiny_shards, tmp_path)[1] != name
    calibrated = {s.label: s for s in job.evaluate}["threshold-keep0.50"]
    assert calibrated.tau is not None and 0.0 <= calibrated.tau <= 1.0



def test_self_training_runs_on_ray_train(tiny_shards, tmp_path):
    """clip+self on 2 Ray Train workers (gloo DDP, Ray Data shards) for 2 epochs: one refresh, after epoch 1
    (none after the last); its metrics reach Ray, and the table in the checkpoint is checked against the
    shards' CLIP labels. (Fit only: the MLflow side is the same sink as for every other metric.)"""
    from lmft_core.shards.reader import video_key
    from lmft_core.train.run import TrainingRun

    result = TrainingRun.prepare(profile("train.pseudo_labels='clip+self'", "train.self_gamma=0.0", "train.epochs=2",
                                         "train.evaluate=[]", "train.run_name='selftrain'"), tiny_shards, tmp_path).fit()
    reports = result.metrics_dataframe.sort_values("epoch").to_dict("records")
    assert [r["epoch"] for r in reports] == [1.0, 2.0]
    refresh = reports[0]
    assert refresh["pseudo/self_refresh_epoch"] == 1.0 and refresh["pseudo/self_pass_rate"] == 1.0  # self_gamma 0
    assert math.isnan(reports[1]["pseudo/self_pass_rate"])  # not reported: no refresh after the last epoch

    table = load_checkpoint(result.checkpoint.path)["learner"]["self_labels"]
    assert table["epoch"] == 1
    rows = ShardSet.open(tiny_shards).read("target", "train", ["video_id", "label_index", "pseudo_label", "pseudo_confidence"])
    keys = [video_key(v) for v in rows.column("video_id").to_pylist()]
    assert table["keys"].tolist() == sorted(keys)  # every target-train clip, predicted by one of the two ranks
    at = {k: i for i, k in enumerate(table["keys"].tolist())}
    self_label = [int(table["label"][at[k]]) for k in keys]
    clip_label, clip_conf = rows.column("pseudo_label").to_pylist(), rows.column("pseudo_confidence").to_pylist()
    truth = rows.column("label_index").to_pylist()
    conflicts = [c > 0.3 and c_l != s_l for c, c_l, s_l in zip(clip_conf, clip_label, self_label)]
    assert refresh["pseudo/conflict_rate"] == pytest.approx(sum(conflicts) / 6)
    assert refresh["pseudo/used_pass_rate"] == pytest.approx(1 - sum(conflicts) / 6)
    assert refresh["pseudo/self_accuracy_all"] == pytest.approx(sum(s == t for s, t in zip(self_label, truth)) / 6)
    assert refresh["pseudo/self_clip_agreement"] == pytest.approx(sum(a == b for a, b in zip(self_label, clip_label)) / 6)


def _zero_frames_page(path: Path) -> None:
    """Overwrite the start of the first ``frames`` data page of ``path`` with zeros (the footer still reads)."""
    import pyarrow.parquet as pq

    group = pq.ParquetFile(path).metadata.row_group(0)
    column = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema.startswith("frames."))
    data = bytearray(path.read_bytes())
    data[column.data_page_offset:column.data_page_offset + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _copy_shards(tiny_shards, dest: Path) -> Path:
    shutil.copytree(ShardSet.open(tiny_shards).root, dest)
    return dest


def test_stored_rows_disagreeing_with_the_metadata_fail_at_start(tiny_shards, tmp_path):
    """metadata.json of other shards (the frames are 8 x 32 x 32, the metadata says 16 px), a truncated shard file,
    class probabilities over another class list: each fails in prepare, in seconds, naming the file."""
    copy = _copy_shards(tiny_shards, tmp_path / "meta")
    meta = json.loads((copy / "metadata.json").read_text())
    meta["resolved_config"]["clip"]["image_size"] = 16
    (copy / "metadata.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(TrainError, match=r"shards/.*\.parquet: the stored rows disagree with .*meta/metadata.json \("
                                         r"frames_shape \[8, 32, 32, 3\], metadata.json's clip geometry gives \[8, 16, 16, 3\]; "
                                         r"energy_shape \[4, 4, 4\], metadata.json's clip geometry gives \[4, 2, 2\]\)"):
        prepare(profile("clip.image_size=16"), copy, tmp_path)
    assert time.perf_counter() - t0 < 10
    copy = _copy_shards(tiny_shards, tmp_path / "classes")
    meta = json.loads((copy / "metadata.json").read_text())
    meta["classes"] = meta["classes"] + ["extra"]
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(TrainError, match="clip_probs has 3 classes, metadata.json lists 4"):
        prepare(profile(), copy, tmp_path)
    copy = _copy_shards(tiny_shards, tmp_path / "cut")
    victim = sorted((copy / "shards").glob("*.parquet"))[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(TrainError, match=rf"shard file\(s\) cannot be read: {victim}: ArrowInvalid: .*preprocess the manifest again"):
        prepare(profile(), copy, tmp_path)


def test_failure_message_says_what_failed_whether_it_repeats_and_what_a_rerun_does(tmp_path):
    from lmft_core.train.run import failure_message

    same = failure_message("r", 1, [{1: "ValueError: bad row", 0: "ValueError: bad row"}, {0: "ValueError: bad row"}], None, [])
    assert same == ("training run r failed on 2 attempt(s) (train.max_failures=1); rank 1: ValueError: bad row\n"
                    "The same error on every attempt (2 of 2): it is not transient, and re-running the same command "
                    "fails the same way until its cause is fixed.\nNo checkpoint was written: a re-run starts from the beginning.")
    differ = failure_message("r", 1, [{0: "ActorDiedError: killed"}, {1: "OSError: disk full"}], tmp_path / "epoch_0002",
                             ["/s/a.parquet: ArrowInvalid: magic bytes"])
    assert "same error" not in differ and "attempt 1: ActorDiedError: killed; attempt 2: OSError: disk full" in differ
    assert "Shard file(s) that cannot be read: /s/a.parquet: ArrowInvalid: magic bytes" in differ
    assert differ.endswith(f"Last checkpoint: {tmp_path / 'epoch_0002'}; re-running the same command resumes from it.")


def test_a_shard_damaged_after_the_checks_fails_with_an_honest_message(tiny_shards, tmp_path):
    """A data page of every shard file zeroed after prepare (the footers still read): every attempt fails the same
    way; the message says so, names the files and says there is no checkpoint (nothing promises a resume)."""
    from lmft_core.train.run import TrainingRun

    copy = _copy_shards(tiny_shards, tmp_path / "shards")
    run = TrainingRun.prepare(profile("train.max_failures=1", "train.materialize_max_mb=0", "train.run_name='cut'",
                                      "train.workers=1", "train.cpus_per_worker=1.0"), copy, tmp_path)
    for victim in (copy / "shards").glob("*.parquet"):
        _zero_frames_page(victim)
    t0 = time.perf_counter()
    with pytest.raises(TrainError) as e:
        run.fit()
    message = str(e.value)
    print(f"failed after {time.perf_counter() - t0:.1f} s:\n{message}")
    assert message.startswith("training run cut failed on 2 attempt(s) (train.max_failures=1); rank ")
    assert "The same error on every attempt (2 of 2)" in message
    assert f"Shard file(s) that cannot be read: {copy / 'shards'}" in message
    assert message.endswith("No checkpoint was written: a re-run starts from the beginning.")
    assert "resumes" not in message


def test_metrics_reach_mlflow_once_their_checkpoint_is_registered_so_a_resume_leaves_one_value_per_step(tiny_shards, tmp_path):
    """Ray's controller registers epoch 1's checkpoint but the send fails (the store cannot be opened): the rows wait
    in the backlog file. Epoch 2's checkpoint is never registered (the worker group dies first): its metrics are never
    sent. The run resumed from epoch 1's checkpoint re-runs epoch 2 and sends its own values with the backlog. Every
    step of every metric holds exactly one value; epoch 2's are the resumed run's."""
    from ray.train import Checkpoint

    from lmft_core.tracking import MetricBuffer, TrackingConfig, start_run
    from lmft_core.train.checkpoint import UNSENT_METRICS_FILE
    from lmft_core.train.dist import Dist
    from lmft_core.train.loop import MemoryEpochData, run_worker
    from lmft_core.train.ray_train import METRIC_BACKLOG_FILE, MetricSender

    job, _ = prepare(profile("train.workers=1", "train.evaluate=[]"), tiny_shards, tmp_path)
    shards = ShardSet.open(job.shards)
    uri = TrackingConfig().resolve_uri(tmp_path)
    with start_run(TrackingConfig(experiment="resume"), tmp_path, "resume") as run:
        client = MlflowClient(tracking_uri=uri)
        backlog = tmp_path / METRIC_BACKLOG_FILE
        sender = MetricSender(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}", run.run_id, backlog)
        sent: dict[int, dict] = {}  # epoch -> {(key, step): value} as its checkpoint held them
        registered: list[dict] = []

        def controller(metrics, folder, register_until: int):
            epoch = int(metrics["epoch"])
            rows = json.loads((folder / UNSENT_METRICS_FILE).read_text())
            if epoch > register_until:
                raise RuntimeError("worker group lost before Ray registered the checkpoint")
            sent[epoch] = {(k, st): v for k, v, _, st in rows}
            registered.append(load_checkpoint(folder))
            sender.after_report(None, [metrics], Checkpoint.from_directory(str(folder)))
            sender.tracking_uri = uri  # the store can be opened from now on

        def data():
            return MemoryEpochData(shards, job.train.batch_size, job.train.seed)

        with pytest.raises(RuntimeError, match="worker group lost"):
            run_worker(job, Dist(), data(), None, lambda m, f: controller(m, f, 1), sink=MetricBuffer(client, run.run_id))
        assert client.get_metric_history(run.run_id, "train/tau") == [] and backlog.is_file()  # the send failed
        n = job.steps_per_epoch  # epoch e ends at step e * n
        assert ("train/tau", 1) in sent[1] and ("epoch/steps", n) in sent[1]
        run_worker(job, Dist(), data(), registered[0], lambda m, f: controller(m, f, 3), sink=MetricBuffer(client, run.run_id))
        assert not backlog.exists()
    for key in {k for k, _ in sent[1]} | {k for k, _ in sent[2]}:
        steps = [m.step for m in client.get_metric_history(run.run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    history = {m.step: m.value for m in client.get_metric_history(run.run_id, "train/tau")}
    assert sorted(history) == list(range(1, 3 * n + 1))
    assert history[n] == pytest.approx(sent[1][("train/tau", n)]) and history[2 * n] == pytest.approx(sent[2][("train/tau", 2 * n)])
