"""Ray Train glue: the shards as Ray Datasets, the per-worker function, the ``TorchTrainer``.

The per-worker function :func:`train_fn` is a few lines around :func:`lmft_core.train.loop.run_worker`:
it reads the rank and world size, the device, this worker's dataset shards and the checkpoint to
resume from, and hands ``ray.train.report`` to the loop.

Data (``train.ingest``): either every worker decodes both training splits into its memory once
(:class:`~lmft_core.train.loop.MemoryEpochData`), or source-train and target-train are split over the workers with ``streaming_split(equal=True)``
(Ray Train's ``DataConfig``), so every rank gets as many rows; batches are full (``drop_last``), and
the two domains are zipped, so every rank takes the same number of steps. Shuffling is upstream
(``random_shuffle`` with a seed that moves on every epoch), never ``local_shuffle_buffer_size``
(it can yield short batches mid-stream and hang DDP: ray issue #66085). Batches travel as uint8 frames
and are made model input on the worker's device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import ray.train
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from lmft_core.shards.batch import ClipBatch
from lmft_core.shards.reader import ShardSet, batch_from_table
from lmft_core.train.config import TrainConfig
from lmft_core.train.loop import MemoryEpochData, Pair, TrainJob, run_worker
from lmft_core.train.names import checkpoint_dir

TRAIN_DATASETS = ("source_train", "target_train")
# CPUs each ingest task (Parquet read, per-epoch shuffle) asks for. Ray Data's default is a whole CPU;
# with fractional Train workers on a small machine, or Tune trials whose finished predecessors still
# hold their last half CPU for a while, no whole CPU may be free and the ingest would wait for ever
# (seen here in a 2-CPU sweep). The tasks are short: a quarter CPU each is plenty.
INGEST_TASK_CPUS = 0.25


class ShardCollate(ArrowBatchCollateFn):
    """A pyarrow batch of shard rows -> the tensors of a :class:`ClipBatch` (moved to the device by Ray)."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return batch_from_table(batch).as_tensors()


class RayEpochData:
    """Epochs of (source, target) micro-batches from this worker's Ray Data shards."""

    def __init__(self, source, target, cfg: TrainConfig):
        self.source, self.target, self.cfg = source, target, cfg

    def pairs(self, epoch: int) -> Iterator[Pair]:
        kw = dict(batch_size=self.cfg.batch_size, collate_fn=ShardCollate(), drop_last=True,
                  prefetch_batches=self.cfg.prefetch_batches)
        s, t = self.source.iter_torch_batches(**kw), self.target.iter_torch_batches(**kw)
        return ((ClipBatch.from_tensors(a), ClipBatch.from_tensors(b)) for a, b in zip(s, t))


def train_datasets(shards: ShardSet, cfg: TrainConfig) -> dict:
    """Ray Datasets of source-train and target-train, reshuffled every epoch when ``cfg.shuffle``.

    A split whose frames take at most ``train.materialize_max_mb`` is read once into Ray's object store
    (``materialize``): an epoch then costs a shuffle of blocks in memory, not a new Parquet scan
    (measured: 0.1-0.2 s against 1-5 s per epoch for the demo data on 2 cores).
    """
    counts = shards.counts()
    return {name: ingest(shards.dataset(domain, "train", num_cpus=INGEST_TASK_CPUS), counts.get((domain, "train"), 0),
                         shards, cfg, i)
            for i, (name, domain) in enumerate(zip(TRAIN_DATASETS, ("source", "target")))}


def ingest(ds, rows: int, shards: ShardSet, cfg, stream: int):
    """``ds`` (``rows`` clips of ``shards``) held in the object store when its frames take at most
    ``cfg.materialize_max_mb``, and reshuffled every epoch with a seed of ``(cfg.seed, stream)`` when
    ``cfg.shuffle`` (``cfg``: a ``[train]`` or ``[pretrain]`` section)."""
    from ray.data import DataContext, RandomSeedConfig

    DataContext.get_current().enable_progress_bars = False
    t, s = shards.clip.num_frames, shards.clip.image_size
    if rows * t * s * s * 3 <= cfg.materialize_max_mb * 2**20:
        ds = ds.materialize()
    if cfg.shuffle:
        ds = ds.random_shuffle(seed=RandomSeedConfig(seed=cfg.seed * 2 + stream, reseed_after_execution=True),
                               num_cpus=INGEST_TASK_CPUS)
    return ds


def report_to_ray(metrics: dict[str, float], folder: Path | None) -> None:
    import ray.train

    checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder is not None else None
    ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir(int(metrics["epoch"])))


def train_fn(config: dict) -> None:
    """Ray Train's per-worker function."""
    import ray.train
    import ray.train.torch

    from lmft_core.train.checkpoint import load_checkpoint

    job: TrainJob = config["job"]
    dist, state, sink = worker_context(job, load_checkpoint)
    if job.train.ingest == "memory":
        data = MemoryEpochData(ShardSet.open(job.shards), job.train.batch_size, job.train.seed, dist, job.train.shuffle)
    else:
        data = RayEpochData(*(ray.train.get_dataset_shard(n) for n in TRAIN_DATASETS), job.train)
    run_worker(job, dist, data, state, report_to_ray, ray.train.torch.get_device(), sink)


def worker_context(job, load: Callable[[str], dict]):
    """On a Ray Train worker of ``job`` (a training or pretraining job: ``train`` section, MLflow run):
    torch threads set, and (rank and world size, the checkpoint to resume from read with ``load`` or None,
    rank 0's MLflow sink or None); rank 0 records the run's placement group."""
    import ray.train

    from lmft_core.train.dist import from_ray_context

    torch.set_num_threads(job.train.threads)
    dist = from_ray_context()
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load(folder)
    if dist.is_main:
        record_placement_group(ray.train.get_context())
    return dist, state, mlflow_sink(job) if dist.is_main else None


PLACEMENT_GROUP_FILE = "placement_group"


def record_placement_group(ctx) -> None:
    """Write the id of the placement group this worker group runs in to the run's storage folder.

    Under Ray Tune, Train V2 can leave a finished run's worker placement group reserved (ray issue
    #54305), and every later trial then finds that much less of the cluster free (seen here: a 2-CPU
    sweep stalled from its third trial on). :func:`release_placement_group` removes it after the fit.
    """
    import ray.util

    pg = ray.util.get_current_placement_group()
    if pg is not None:
        folder = Path(ctx.get_storage().experiment_fs_path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PLACEMENT_GROUP_FILE).write_text(pg.id.hex())


def release_placement_group(run_folder: str | Path) -> bool:
    """Remove the placement group a finished run recorded (:func:`record_placement_group`) if it is still
    reserved; returns whether one was removed."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    path = Path(run_folder) / PLACEMENT_GROUP_FILE
    if not path.is_file():
        return False
    pg_id = path.read_text().strip()
    entry = ray.util.placement_group_table().get(pg_id)
    if entry is None or entry["state"] == "REMOVED":
        return False
    remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
    return True


def last_line(error: BaseException) -> str:
    """``Type: message`` of the error at the bottom of ``error``'s chain (Ray wraps a worker's error, and Ray Data
    a read task's, with their own text around it): the last line of the worker's traceback."""
    seen = error
    while (inner := getattr(seen, "cause", None) or seen.__cause__) is not None and inner is not seen:
        seen = inner
    text = str(seen).strip()
    first = text.splitlines()[0].strip() if text else ""
    return f"{type(seen).__name__}: {first}" if first else type(seen).__name__


class AttemptErrorRecorder(ray.train.UserCallback):
    """Ray Train callback (it runs in the controller): one JSON line per failed attempt of the worker group,
    appended to ``path`` (on storage the driver sees), ``{"time": ..., "errors": {rank: last line}}``; read
    back with :func:`read_attempt_errors`. ``fit`` gives only the last attempt's errors."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        import json
        import time

        errors = {int(rank): last_line(e) for rank, e in sorted(worker_exceptions.items())}
        with open(self.path, "a") as f:
            f.write(json.dumps({"time": time.time(), "errors": errors}) + "\n")


class EpochLog(ray.train.UserCallback):
    """Ray Train callback (it runs in the controller, on the driver's node): rank 0's metrics of every report,
    one JSON line each, appended to ``path``; the driver reads them while it waits for the fit and prints one
    line per epoch (:class:`lmft_core.console.EpochPrinter`). Only numbers are kept."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        import json

        rank0 = {k: float(v) for k, v in (metrics[0] if metrics else {}).items() if isinstance(v, (int, float))}
        with open(self.path, "a") as f:
            f.write(json.dumps(rank0) + "\n")


def read_epoch_log(path: str | Path, offset: int) -> tuple[list[dict], int]:
    """The complete lines of an :class:`EpochLog` file from byte ``offset`` on, parsed, and the offset after them."""
    import json

    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()], offset + end


class MetricSender(ray.train.UserCallback):
    """Ray Train callback (it runs in the controller): once Ray has registered a checkpoint, send the metrics rank 0
    kept in it (``unsent_metrics.json``, :func:`lmft_core.train.checkpoint.save_unsent_metrics`) to the MLflow run.

    Metrics of an epoch whose checkpoint Ray never registered (the worker group died first) are never sent; the
    resumed run re-runs those steps and sends its own, so every step holds one value. A failed send (the tracking
    server away for longer than MLflow's client retries) is kept, written to ``backlog_file`` and tried again at
    the next checkpoint; the driver sends what is left after the fit (:func:`send_backlog`). The backlog file is
    written before each send, so a driver killed during a send leaves it; the next fit's sender sends the rows of it
    that MLflow lacks."""

    def __init__(self, tracking_uri: str, run_id: str, backlog_file: str | Path, env: dict[str, str] | None = None):
        import json

        self.tracking_uri, self.run_id, self.backlog_file, self.env = tracking_uri, run_id, str(backlog_file), env or {}
        path = Path(backlog_file)  # an earlier driver's, killed during or before a send: those rows MLflow lacks
        self.backlog: list[list] = not_logged(tracking_uri, run_id, json.loads(path.read_text())) if path.is_file() else []

    def after_report(self, run_context, metrics, checkpoint) -> None:
        import json
        import os

        from lmft_core.files import atomic_write
        from lmft_core.train.checkpoint import UNSENT_METRICS_FILE

        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            path = Path(folder) / UNSENT_METRICS_FILE
            self.backlog += json.loads(path.read_text()) if path.is_file() else []
        with atomic_write(self.backlog_file) as f:  # first: a process killed during the send leaves them here
            f.write(json.dumps(self.backlog))
        os.environ.update(self.env)  # the tracking server's credentials, as the workers get them
        try:
            send_rows(self.tracking_uri, self.run_id, self.backlog)
            self.backlog = []
            Path(self.backlog_file).unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001 - keep training; the rows are kept and sent later
            print(f"[lmft] could not send {len(self.backlog)} metric values to MLflow ({type(e).__name__}: {e}); "
                  "kept, sent with the next checkpoint's or at the end")


def not_logged(tracking_uri: str, run_id: str, rows: list[list]) -> list[list]:
    """Those ``[key, value, timestamp_ms, step]`` rows whose key has no value at their step in the run (one history
    request per key)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    logged = {key: {m.step for m in client.get_metric_history(run_id, key)} for key in {r[0] for r in rows}}
    return [r for r in rows if int(r[3]) not in logged[r[0]]]


def send_rows(tracking_uri: str, run_id: str, rows: list[list]) -> None:
    """Send ``[key, value, timestamp_ms, step]`` rows to MLflow run ``run_id``."""
    from mlflow import MlflowClient

    from lmft_core.tracking import MetricBuffer

    buffer = MetricBuffer(MlflowClient(tracking_uri=tracking_uri), run_id)
    buffer.add_rows(rows)
    buffer.flush()


def send_backlog(job: TrainJob, run_folder: str | Path) -> int:
    """Send the metrics a :class:`MetricSender` could not (its backlog file in ``run_folder``); returns how many."""
    import json

    path = Path(run_folder) / METRIC_BACKLOG_FILE
    if not path.is_file():
        return 0
    rows = not_logged(job.tracking_uri, job.mlflow_run_id, json.loads(path.read_text()))
    send_rows(job.tracking_uri, job.mlflow_run_id, rows)
    path.unlink()
    return len(rows)


METRIC_BACKLOG_FILE = "unsent_metrics_backlog.json"


def read_attempt_errors(path: str | Path) -> list[dict[int, str]]:
    """Per failed attempt (oldest first), ``{rank: the last line of its error}`` (:class:`AttemptErrorRecorder`)."""
    import json

    path = Path(path)
    if not path.is_file():
        return []
    return [{int(k): v for k, v in json.loads(line)["errors"].items()} for line in path.read_text().splitlines() if line.strip()]


def mlflow_sink(job: TrainJob):
    """Rank 0's batched MLflow metric logger for ``job`` (None when the job logs nowhere)."""
    if not job.mlflow_run_id:
        return None
    from mlflow import MlflowClient

    from lmft_core.tracking import MetricBuffer

    return MetricBuffer(MlflowClient(tracking_uri=job.tracking_uri), job.mlflow_run_id)


def build_trainer(job: TrainJob, datasets: dict, name: str, storage_path: str | Path, num_gpus: float,
                  callbacks: list | None = None, worker_env: dict[str, str] | None = None,
                  fn: Callable[[dict], None] = train_fn, split: tuple[str, ...] = TRAIN_DATASETS):
    """The ``TorchTrainer`` of ``job``: ``job.train.workers`` workers, each with ``cpus_per_worker`` CPUs and
    ``num_gpus`` GPUs, running ``fn`` (adaptation's :func:`train_fn` unless given) with the ``split``
    datasets split over the workers; resumes when ``(storage_path, name)`` holds an earlier run of the same name. With an MLflow
    run, a :class:`MetricSender` comes first among the ``callbacks``."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = job.train
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": num_gpus} if num_gpus else {})
    if job.mlflow_run_id:  # first: a Tune callback after it may end the trial
        backlog = Path(storage_path) / name / METRIC_BACKLOG_FILE
        callbacks = [MetricSender(job.tracking_uri, job.mlflow_run_id, backlog, worker_env), *(callbacks or [])]
    return TorchTrainer(
        fn,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=num_gpus > 0, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=str(storage_path), failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints), callbacks=callbacks or None,
            worker_runtime_env={"env_vars": worker_env} if worker_env else None),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(split)),
    )
