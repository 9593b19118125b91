"""A real two-node Ray cluster with token authentication on 127.0.0.1: the main job submitted with
`ray job submit --working-dir`, lmft's connection (environment forwarded to workers, shared-storage
check) and the errors without the token.

The cluster: `ray start --head --block` (its own temp dir, free ports, dashboard and job server on
127.0.0.1, 1 CPU) and a second `ray start --address ... --block` (1 CPU) joining it, each in its own
process group, stopped by signalling that group (never `ray stop`, which stops every Ray on the machine).
The dashboard (job server) listens on 127.0.0.1 and the tests address only 127.0.0.1; Ray's own gRPC
servers (GCS, raylets, object managers) listen on all interfaces, as in any Ray 2.60 instance (the
`ray_local` fixture's too), and Ray names the nodes by the host's IP even with --node-ip-address 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO
from live_servers import TINY_WORKFLOW, free_port, stop_session, wait_for

BIN = Path(sys.executable).parent  # this environment's python and ray: the nodes and the job's driver use them


@dataclass
class Cluster:
    gcs: str  # host:port for drivers (RAY_ADDRESS)
    dashboard: str  # http://host:port, the job server
    token: str
    env: dict  # what a user's shell holds: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH

    def api(self, path: str) -> dict:
        request = urllib.request.Request(f"{self.dashboard}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def alive_nodes(self) -> int:
        try:
            return sum(n["raylet"]["state"] == "ALIVE" for n in self.api("/nodes?view=summary")["data"]["summary"])
        except OSError:
            return 0


def _node_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    return {**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", **extra}  # SIGTERM stops a node at once, without draining


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--num-cpus", "1",
                                 "--node-ip-address", "127.0.0.1", "--object-store-memory", str(200 * 2**20),
                                 "--dashboard-agent-listen-port", str(free_port()), *args],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_cluster")
    temp_dir = tempfile.mkdtemp(prefix="lmft-ray-")  # short: Ray's socket paths live under it
    # The second node gets its own temp dir, as on separate machines: nodes sharing one unpack a job's
    # working_dir into the same folder, and the second node's unpack deletes the driver's cwd.
    worker_temp_dir = tempfile.mkdtemp(prefix="lmft-ray2-")
    token_file = root / "auth_token"
    token = secrets.token_hex(32)
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = _node_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
    port, dashboard_port = free_port(), free_port()
    c = Cluster(gcs=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dashboard_port}", token=token, env=env)
    nodes = []
    try:
        nodes.append(_start(["--head", "--port", str(port), "--temp-dir", temp_dir, "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(free_port())],
                            env, root / "head.log"))
        head_s = wait_for(lambda: c.alive_nodes() == 1, 180, "ray head", nodes[0], root / "head.log")
        nodes.append(_start(["--address", c.gcs, "--temp-dir", worker_temp_dir], env, root / "worker.log"))
        worker_s = wait_for(lambda: c.alive_nodes() == 2, 180, "second ray node", nodes[1], root / "worker.log")
        print(f"ray head up after {head_s:.1f} s, second node after {worker_s:.1f} s more")
        yield c
    finally:
        for proc in reversed(nodes):
            stop_session(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(worker_temp_dir, ignore_errors=True)


def _ray(args: list[str], env: dict, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def _submit(cluster, script: str, args: list[str]) -> str:
    """Submit ``python pipelines/<script> <args>`` as a job, wait for it and return its console output; the job
    must succeed."""
    job_id = f"lmft-test-{uuid.uuid4().hex[:8]}"
    proc = _ray(["job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, "--working-dir", str(REPO),
                 "--", "python", f"pipelines/{script}", *args], cluster.env, timeout_s=480)
    log = proc.stdout + proc.stderr
    assert cluster.api(f"/api/jobs/{job_id}")["status"] == "SUCCEEDED", log[-4000:]
    return log


@pytest.fixture(scope="module")
def main_job(cluster, tmp_path_factory):
    """(console output, workdir) of the main job submitted to the cluster."""
    workdir = tmp_path_factory.mktemp("main_job") / "work"
    return _submit(cluster, "full.py", ["--workdir", str(workdir), *(a for s in TINY_WORKFLOW for a in ("--set", s))]), workdir


def test_job_submit_runs_the_main_job_on_the_cluster(main_job):
    log, workdir = main_job
    assert "visible from all 2 Ray nodes" in log  # preprocessing checked its output folder from both nodes
    assert (workdir / "data" / "manifest.csv").is_file()
    latest = (workdir / "shards" / "LATEST").read_text().strip()
    assert (workdir / "shards" / latest / "metadata.json").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lmft-demo").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    (parent,) = [r for r in runs if r.data.tags.get("lmft.stage") == "workflow"]
    assert parent.data.metrics["preprocess/shard_rows"] == 8
    stages = {r.data.tags.get("lmft.stage") for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert stages == {"preprocess", "train", "evaluate", "register", "predict"}
    assert (workdir / "predictions").is_dir()


def test_a_submitted_sweep_fits_its_trials_to_the_cluster(cluster, main_job):
    """The cluster has 2 CPUs (one per node): with 1 kept for Ray Data (the trials ingest through it), a trial of 2
    half-CPU workers (1.1 CPUs) does not fit, so the sweep's trials run with one worker each, say so, and finish
    with the table."""
    _, workdir = main_job
    sweep = [*TINY_WORKFLOW, "train.workers=2", "train.ingest='ray_data'", "sweep.num_samples=2",
             'sweep.space={"policy.loss_weight" = [1.0, 10.0]}']
    log = _submit(cluster, "sweep.py", ["--shards", str(workdir / "shards"), "--workdir", str(workdir),
                                        *(a for s in sweep for a in ("--set", s))])
    assert ("[lmft] sweep: a trial at train.workers=2 needs 1.1 CPUs (2 workers x 0.5 + 0.1) and 0 GPUs with 1 CPUs kept "
            "for Ray Data, but the cluster has 2 CPUs and 0 GPUs: trials run with 1 worker each") in log
    assert "| trial | policy.loss_weight | eval_source_val/lmft/top1 ± SE (n=" in log  # the table at the end
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("lmft-demo").experiment_id], "tags.`lmft.stage` = 'sweep'")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.workers_per_trial"] == "1"
DRIVER = """
import json, os, ray
from lmft_core.ray_cluster import check_shared_storage, connect

def env_on_every_node():
    probe = ray.remote(num_cpus=0)(lambda: (ray.get_runtime_context().get_node_id(), os.environ.get("MLFLOW_TRACKING_USERNAME")))
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy
    return [ray.get(probe.options(scheduling_strategy=strategy(n["NodeID"], soft=False)).remote())[1]
            for n in ray.nodes() if n["Alive"]]

ray.init()  # plain Ray: the driver's variables stay on the driver
plain = env_on_every_node()
ray.shutdown()
connect()
print(json.dumps({"plain": plain, "lmft": env_on_every_node(), "checked": check_shared_storage(os.environ["SHARED"])}))
"""


def test_connect_forwards_mlflow_env_to_workers_and_checks_shared_storage(cluster, tmp_path):
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs, "MLFLOW_TRACKING_USERNAME": "alice", "SHARED": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", DRIVER], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["plain"] == [None, None]  # Ray does not forward it by itself
    assert out["lmft"] == ["alice", "alice"]
    assert len(out["checked"]) == 2  # both nodes' addresses (Ray names a node by the host's IP, even on loopback)
    assert not list(tmp_path.iterdir())  # the marker file is gone


@pytest.mark.parametrize("auth", ["no_token", "wrong_token"])
def test_submission_without_the_token_is_refused(cluster, auth, tmp_path):
    env = _node_env(HOME=str(tmp_path))  # no ~/.ray/auth_token either
    if auth == "wrong_token":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    proc = _ray(["job", "submit", "--address", cluster.dashboard, "--", "python", "-c", "print('never')"], env, 60)
    assert proc.returncode != 0
    expected = {"no_token": "Authentication required: Unauthorized: Missing authentication token",
                "wrong_token": "Authentication failed: Forbidden: Invalid authentication token"}[auth]
    assert expected in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr


def test_driver_without_the_token_gets_a_clear_error(cluster, tmp_path):
    env = _node_env(HOME=str(tmp_path), RAY_ADDRESS=cluster.gcs, RAY_gcs_server_port_wait_time_s="2",
                    PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    code = "from lmft_core.ray_cluster import connect\ntry:\n    connect()\nexcept Exception as e:\n    print(type(e).__name__, e)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith(f"RayConnectionError cannot connect to the Ray cluster at RAY_ADDRESS={cluster.gcs}"), \
        proc.stdout + proc.stderr[-2000:]
    assert "set RAY_AUTH_MODE=token" in proc.stdout and "(now: RAY_AUTH_MODE=<unset>, token: none found)" in proc.stdout


def test_forwarded_env_leaves_the_jobs_own_variables_to_the_job(monkeypatch):
    from lmft_core.ray_cluster import JOB_CONFIG_ENV, forwarded_env

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    monkeypatch.setenv("OTHER", "x")
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    assert forwarded_env() == {"MLFLOW_TRACKING_PASSWORD": "secret", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    # a job submitted with --runtime-env-json '{"env_vars": {"MLFLOW_TRACKING_URI": ...}}': Ray refuses a second value
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps({"runtime_env": {"env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}}}))
    assert forwarded_env() == {"MLFLOW_TRACKING_PASSWORD": "secret"}


def test_ray_address_decides_where_drivers_connect(monkeypatch):
    from lmft_core.ray_cluster import RayConnectionError, cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address() == ""  # a new local instance
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address() == "10.0.0.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    with pytest.raises(RayConnectionError, match=r"RAY_ADDRESS=http://127.0.0.1:8265 is a dashboard .* `ray job submit --address"):
        cluster_address()


def _descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` (children, their children, ...): {pid: command line}."""
    parents, commands = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            commands[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError, UnicodeDecodeError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {}, [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier and p not in found]
        found |= {p: commands[p] for p in frontier}
    return found


# Last in this module: the node it adds is lost, and Ray takes a while to mark it dead.
def test_a_node_lost_mid_preprocessing_loses_no_video(cluster, tiny_demo, tiny_clip_weights, tmp_path):
    """A third node (1 CPU) joins the cluster and ``pipelines/preprocess.py`` runs on it (24 videos, Ray Data spreads
    the tasks over the nodes); once a task of the job runs on the new node, the whole node is killed (SIGKILL to its
    raylet, its workers and their decoder children: a machine lost). Ray Data runs the lost tasks again on the nodes
    left and the job finishes; every video of the manifest is in exactly one of the shards or the rejects."""
    from conftest import TINY_CLIP_GEOMETRY, tiny_clip_overrides

    temp_dir = tempfile.mkdtemp(prefix="lmft-ray3-")
    node = _start(["--address", cluster.gcs, "--temp-dir", temp_dir], cluster.env, tmp_path / "node3.log")
    try:
        wait_for(lambda: cluster.alive_nodes() == 3, 180, "third ray node", node, tmp_path / "node3.log")
        sets = [a for s in TINY_CLIP_GEOMETRY + tiny_clip_overrides(tiny_clip_weights) + [
            "preprocess.rows_per_shard=2", "preprocess.decode_batch_size=2", "preprocess.labeler_batch_size=2"]
                for a in ("--set", s)]
        env = {**cluster.env, "RAY_ADDRESS": cluster.gcs,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        log = tmp_path / "preprocess.log"
        t0 = time.monotonic()
        driver = subprocess.Popen([sys.executable, str(REPO / "pipelines" / "preprocess.py"), "--manifest", str(tiny_demo),
                                   "--output", str(tmp_path / "out"), *sets], env=env, stdout=log.open("w"),
                                  stderr=subprocess.STDOUT, cwd=REPO)
        busy: list[str] = []

        def a_task_runs_on_the_node() -> bool:
            # the job's decode tasks and CLIP actors are titled ray::MapBatches(...), ray::MapWorker(MapBatches(...))
            busy[:] = [c for c in _descendants(node.pid).values() if c.startswith("ray::") and "MapBatches(" in c]
            return bool(busy)

        wait_for(a_task_runs_on_the_node, 300, "a task of the job on the third node", driver, log)
        lost = _descendants(node.pid)
        for pid in [node.pid, *lost]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        t_kill = time.monotonic() - t0
        code = driver.wait(timeout=600)
        print(f"node lost after {t_kill:.0f} s while it ran {busy}; the job ended {time.monotonic() - t0 - t_kill:.0f} s "
              f"later with exit code {code}")
        assert code == 0, log.read_text()[-4000:]
    finally:
        stop_session(node)
        shutil.rmtree(temp_dir, ignore_errors=True)
    (out,) = (tmp_path / "out").glob("*/metadata.json")
    counts = json.loads(out.read_text())["counts"]
    assert counts["shard_rows"] + counts["rejects"] == counts["manifest_rows"] == 24, counts  # and check_accounting passed
    assert not list((tmp_path / "out").glob("*/_staging"))
