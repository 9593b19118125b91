"""Faults from outside the product, tried as they happen to a user: the driver killed (SIGKILL) or interrupted
(Ctrl-C: SIGINT to its process group) mid-training and the same command run again; the MLflow tracking server
stopping mid-training and coming back. Each test prints what it measured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from conftest import REPO, TINY_CLIP_GEOMETRY, TINY_TRAIN
from live_servers import free_port, stop_session, wait_for
from lmft_core.config import INTERRUPTED, INTERRUPTED_EXIT
from lmft_core.train.checkpoint import load_checkpoint


def _train_command(shards: Path, workdir: Path, *extra: str) -> list[str]:
    sets = [a for s in TINY_CLIP_GEOMETRY + TINY_TRAIN + list(extra) for a in ("--set", s)]
    return [sys.executable, str(REPO / "pipelines" / "train.py"), "--shards", str(shards), "--workdir", str(workdir), *sets]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")} | {"RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _signal_when(proc: subprocess.Popen, ready: Path, sig: int, timeout_s: float = 300) -> None:
    """Send ``sig`` to ``proc``'s process group (as Ctrl-C does to a terminal's foreground group) once ``ready`` exists."""
    deadline = time.monotonic() + timeout_s
    while not ready.exists():
        assert proc.poll() is None, f"the driver ended (code {proc.returncode}) before {ready} appeared"
        assert time.monotonic() < deadline, f"{ready} did not appear within {timeout_s} s"
        time.sleep(0.2)
    os.killpg(proc.pid, sig)


def _reap(proc: subprocess.Popen, timeout_s: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its process group is left (its local Ray)
        except ProcessLookupError:
            pass


def test_driver_killed_then_interrupted_then_rerun_finishes_in_one_mlflow_run(tiny_shards, tmp_path):
    """The same ``pipelines/train.py`` command three times: SIGKILL to the driver's group once epoch 2's checkpoint
    exists, Ctrl-C once epoch 4's exists (a clean stop: exit 130, the message, the MLflow run KILLED), then to the end.
    The third run resumes from a checkpoint (not from scratch), the run finishes its 6 epochs in ONE MLflow run, and
    every step of the metric history holds one value."""
    command = _train_command(tiny_shards, tmp_path, "train.epochs=6", "train.keep_checkpoints=10", "train.run_name='faults'")
    checkpoints = tmp_path / "ray_train" / "faults"
    t0 = time.monotonic()
    killed = _start(command, tmp_path / "killed.log")
    _signal_when(killed, checkpoints / "epoch_0002" / "checkpoint.pt", signal.SIGKILL)
    assert _reap(killed) == -signal.SIGKILL
    t_kill = time.monotonic() - t0

    interrupted = _start(command, tmp_path / "interrupted.log")
    _signal_when(interrupted, checkpoints / "epoch_0004" / "checkpoint.pt", signal.SIGINT)
    code = _reap(interrupted)
    log = (tmp_path / "interrupted.log").read_text()
    assert code == INTERRUPTED_EXIT, log[-3000:]
    assert INTERRUPTED in log, log[-3000:]
    run_id = (tmp_path / "train" / "faults" / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_id).info.status == "KILLED"
    t_int = time.monotonic() - t0 - t_kill

    finished = _start(command, tmp_path / "finished.log")
    assert _reap(finished, timeout_s=600) == 0, (tmp_path / "finished.log").read_text()[-3000:]
    print(f"killed after {t_kill:.0f} s, interrupted after {t_int:.0f} s more, finished after {time.monotonic() - t0:.0f} s in all")

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id], "tags.mlflow.runName = 'faults'")) == 1  # one run, not three
    resumed = [int(m.value) for m in client.get_metric_history(run_id, "train/resumed_from_epoch")]
    assert len(resumed) == 2 and 1 <= resumed[0] < resumed[1], resumed  # each re-run from a later checkpoint
    assert load_checkpoint(checkpoints / "epoch_0006")["epoch"] == 6
    for key in ("train/tau", "train/loss", "epoch/steps"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, 7)), key


def _mlflow_server(store: Path, port: int, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                             "--artifacts-destination", str(store / "artifacts")],
                            env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _healthy(f"http://127.0.0.1:{port}"), 120, "mlflow server", proc, log)
    return proc


def _healthy(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_tracking_server_down_mid_training_and_back(tiny_shards, tmp_path):
    """The MLflow server stops once epoch 1's checkpoint exists and comes back 15 s later on the same port and
    store: rank 0's sends during the outage wait in MLflow's client retries, training carries on without a restart,
    and the run ends FINISHED with every step's metrics, one value each."""
    import threading

    from lmft_core.run_config import load_profile
    from lmft_core.train.run import run_training

    port, store, log = free_port(), tmp_path / "server", tmp_path / "server.log"
    store.mkdir()
    server = {"proc": _mlflow_server(store, port, log)}
    uri = f"http://127.0.0.1:{port}"
    outage: dict = {}

    def stop_and_restart():
        ready = tmp_path / "work" / "ray_train" / "outage" / "epoch_0001" / "checkpoint.pt"
        deadline = time.monotonic() + 300
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_session(server["proc"])
        outage["stopped"] = time.monotonic()
        time.sleep(15)
        server["proc"] = _mlflow_server(store, port, log)
        outage["back"] = time.monotonic()

    profile = load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + [
        "train.epochs=5", "train.run_name='outage'", f"tracking.uri='{uri}'", "train.evaluate=[]"])
    watcher = threading.Thread(target=stop_and_restart)
    watcher.start()
    try:
        t0 = time.monotonic()
        result = run_training(profile, tiny_shards, tmp_path / "work")
        watcher.join()
        print(f"server down {outage['back'] - outage['stopped']:.0f} s; training took {time.monotonic() - t0:.0f} s")
        assert outage and result.checkpoint
        client = MlflowClient(tracking_uri=uri)
        assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
        for key in ("train/tau", "train/loss", "epoch/steps"):
            assert sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, key)) == list(range(1, 6)), key
        assert client.get_metric_history(result.mlflow_run_id, "train/resumed_from_step") == []  # no worker restart
    finally:
        watcher.join()
        stop_session(server["proc"])


def test_disk_full_while_a_checkpoint_is_written(tiny_shards, tmp_path):
    """Once epoch 1's checkpoint is stored, the Ray Train workers' file-size limit (RLIMIT_FSIZE, set from outside
    with prlimit) drops to half its size: the next checkpoint write fails as on a full disk (EFBIG; torch reports it as
    "unexpected pos", lmft as an OSError saying the checkpoint could not be written and the space left). The worker
    group restarts (new processes, the space back), resumes from the last stored checkpoint and finishes; no
    half-written checkpoint is visible, the error is recorded, one value per step."""
    import resource
    import threading

    from ray._private import state

    from lmft_core.run_config import load_profile
    from lmft_core.train.run import run_training

    limited: dict = {}

    def fill_the_disk():
        first = tmp_path / "ray_train" / "diskfull" / "epoch_0001" / "checkpoint.pt"
        deadline = time.monotonic() + 300
        while not first.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the copy into storage finishes
        limit = first.stat().st_size // 2
        for actor in state.actors().values():
            if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE":
                resource.prlimit(actor["Pid"], resource.RLIMIT_FSIZE, (limit, limit))
                limited[actor["Pid"]] = limit

    profile = load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + [
        "train.epochs=4", "train.keep_checkpoints=10", "train.max_failures=2", "train.run_name='diskfull'",
        "train.evaluate=[]"])
    watcher = threading.Thread(target=fill_the_disk)
    watcher.start()
    t0 = time.monotonic()
    result = run_training(profile, tiny_shards, tmp_path)
    watcher.join()
    print(f"file size limit {set(limited.values())} B on {len(limited)} workers; finished in {time.monotonic() - t0:.0f} s")
    assert limited, "no worker was limited"
    errors = (tmp_path / "ray_train" / "diskfull" / "attempt_errors.jsonl").read_text()
    assert "the checkpoint could not be written" in errors and "a full disk or a file-size limit" in errors, errors
    for folder in sorted((tmp_path / "ray_train" / "diskfull").glob("epoch_*")):  # each stored checkpoint whole
        assert load_checkpoint(folder)["epoch"] == int(folder.name.split("_")[1]), folder
    client = MlflowClient(tracking_uri=result.tracking_uri)
    assert client.get_metric_history(result.mlflow_run_id, "train/resumed_from_step")  # restarted from a checkpoint
    assert load_checkpoint(result.checkpoint)["epoch"] == 4
    for key in ("train/tau", "epoch/steps"):
        assert sorted(m.step for m in client.get_metric_history(result.mlflow_run_id, key)) == list(range(1, 5)), key


def test_a_checkpoint_write_that_runs_out_of_space_says_so(tmp_path):
    """torch.save on a full disk says only "unexpected pos ..."; save_checkpoint says what failed: the file, the
    bytes written, the space left (a subprocess with a 64 KiB file-size limit, EFBIG as a full disk's ENOSPC)."""
    code = f"""
import resource, torch
from lmft_core.model import ThresholdPolicy
from lmft_core.train.checkpoint import save_checkpoint
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
try:
    save_checkpoint({str(tmp_path)!r}, {{"w": torch.zeros(100_000)}}, ThresholdPolicy(), 1, {{}}, [], {{}})
except OSError as e:
    print("OSError:", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"OSError: {tmp_path / 'checkpoint.pt'}: the checkpoint could not be written (65536 bytes "
                                 "written, "), out.stdout
    assert "bytes free on its disk: a full disk or a file-size limit?): [enforce fail" in out.stdout, out.stdout
