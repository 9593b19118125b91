"""The pretraining run on the driver: check inputs, fit on Ray Train, log to MLflow, export the encoder.

:func:`prepare_pretrain` turns a profile and a preprocessing output into a :class:`PretrainJob`, checking
before any compute: the shards (frames stored, schema, the profile's ``[clip]``), that the ``train`` split
of every ``pretrain.domains`` has clips, that a worker gets at least one batch, and ``model.pretrained``
when set (pretraining then continues from those weights).

:func:`run_pretrain` fits the job with ``TorchTrainer`` (the unlabelled clips as one Ray Dataset split
over the workers; DDP; a checkpoint every epoch; the same command resumes from the last one) and records
one MLflow run: the resolved configuration, step and epoch metrics (loss, clips/s, peak memory) from rank 0,
and at the end ``pretrain/encoder.pth`` and ``plots/reconstruction.png`` (original, visible tokens,
reconstruction of a few target-train clips). Files under ``<workdir>/pretrain/<run name>/``: ``encoder.pth``
(pass it as ``model.pretrained``) and ``result.json``; checkpoints under ``<workdir>/ray_train/<run name>/``.
The run name holds the profile, strategy, mask ratio, seed and a hash of the configuration and shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lmft_core.console import EpochPrinter
from lmft_core.files import JsonRecord
from lmft_core.model import CheckpointError, ModelConfig
from lmft_core.model.pretrained import check_pretrained
from lmft_core.pretrain.config import PretrainConfig
from lmft_core.pretrain.mae import reconstruct
from lmft_core.pretrain.worker import DATASET, ENCODER_FILE, PretrainJob, load_pretrain_checkpoint, pretrain_fn
from lmft_core.run_config import RunConfig
from lmft_core.shards.reader import ShardError, ShardSet, read_batches
from lmft_core.tracking import check_tracking_server
from lmft_core.train import plots
from lmft_core.train.artifacts import RUN_ID_FILE
from lmft_core.train.config import TrainConfig
from lmft_core.train.run import RESULT_FILE, TrainError, finished, fit_job

FIGURE_FILE = "reconstruction.png"
# the [train] keys a pretraining uses (how it runs), recorded in its configuration and hashed into its name
RUN_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker", "threads_per_worker", "precision", "prefetch_batches",
            "keep_checkpoints", "max_failures", "shuffle", "materialize_max_mb", "seed")


@dataclass(frozen=True)
class PretrainResult(JsonRecord):
    """A finished pretraining: its name and folder, MLflow run, the encoder checkpoint (``model.pretrained``),
    the last checkpoint folder, the last epoch's mean loss, mean clips/s over epochs, peak memory, wall-clock."""

    run_name: str
    run_dir: str
    mlflow_run_id: str
    tracking_uri: str
    encoder: str
    checkpoint: str
    final_loss: float
    clips_per_s: float
    peak_memory_mb: float
    elapsed_s: float


def prepare_pretrain(profile: RunConfig, shards_path: str | Path, workdir: str | Path) -> tuple[PretrainJob, str]:
    """The job of ``profile`` on ``shards_path`` and its run name; every input checked (module docstring)."""
    cfg: PretrainConfig = profile.pretrain
    try:
        shards = ShardSet.open(shards_path)  # refuses shards stored without frames, naming the folder
        shards.check_geometry(profile.clip)
        rows = sum(shards.require(d, "train", "pretraining") for d in cfg.domains)
    except ShardError as e:
        raise TrainError(str(e)) from None
    run: TrainConfig = profile.train  # workers, precision, checkpoints, failures, seed
    model: ModelConfig = replace(profile.model, num_classes=shards.num_classes)  # clip: the profile's [clip]
    if model.pretrained:
        try:
            check_pretrained(model)  # continued pretraining from these weights
        except CheckpointError as e:
            raise TrainError(f"model.pretrained: {e}") from None
    steps = rows // run.workers // cfg.batch_size
    if steps == 0:
        raise TrainError(f"{rows} pretraining clips ({' and '.join(cfg.domains)} train) over train.workers={run.workers} is "
                         f"less than one batch of pretrain.batch_size={cfg.batch_size} per worker: lower it")
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    config = json.loads(json.dumps({
        "clip": dataclasses.asdict(profile.clip), "model": dataclasses.asdict(model), "pretrain": dataclasses.asdict(cfg),
        "train": {k: getattr(run, k) for k in RUN_KEYS},
        "shards": {"root": str(shards.root), "config_hash": shards.metadata.get("config_hash", "")}}))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    name = cfg.run_name or f"{profile.name}-pretrain-{cfg.masking}-r{cfg.mask_ratio:g}-s{run.seed}-{digest}"
    tracking = profile.tracking
    return PretrainJob(shards=str(shards.root), model=model, pretrain=cfg, train=run, steps_per_epoch=steps, config=config,
                       tracking_uri=tracking.resolve_uri(Path(workdir))), name


def pretrain_datasets(job: PretrainJob) -> dict:
    """The unlabelled ``train`` clips of ``job.pretrain.domains`` as one Ray Dataset (materialised, reshuffled)."""
    from lmft_core.train.ray_train import INGEST_TASK_CPUS, ingest

    shards = ShardSet.open(job.shards)
    parts = [shards.dataset(d, "train", num_cpus=INGEST_TASK_CPUS) for d in job.pretrain.domains]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    rows = sum(shards.counts().get((d, "train"), 0) for d in job.pretrain.domains)
    return {DATASET: ingest(ds, rows, shards, job.train, 0)}


def run_pretrain(profile: RunConfig, shards_path: str | Path, workdir: str | Path,
                 parent_run_id: str | None = None) -> PretrainResult:
    """Pretrain on ``shards_path`` with ``profile`` (module docstring); returns the finished run's result
    (a finished run is not trained again: its ``result.json`` is returned)."""
    from lmft_core.tracking import start_run

    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()
    job, name = prepare_pretrain(profile, shards_path, workdir)
    run_dir = workdir / "pretrain" / name
    if (done := finished(run_dir, PretrainResult, "pretraining")) is not None:
        return done
    check_tracking_server(job.tracking_uri)
    with start_run(profile.tracking, workdir, run_name=name, parent_run_id=parent_run_id,
                   id_file=run_dir / RUN_ID_FILE) as run:
        if not run.resumed:
            run.log_params(job.config)
            run.set_tags({"lmft.stage": "pretrain", "lmft.shards": job.shards, "lmft.masking": job.pretrain.masking})
        run.set_tags({"lmft.encoder": run_dir / ENCODER_FILE})
        job = replace(job, mlflow_run_id=run.run_id)
        printer = EpochPrinter("pretrain", job.pretrain.epochs, show_tau=False)
        checkpoint = Path(fit_job(job, name, workdir, workdir / "ray_train", lambda: pretrain_datasets(job), fn=pretrain_fn,
                                  split=(DATASET,), printer=printer).checkpoint.path)
        encoder = Path(shutil.copy2(checkpoint / ENCODER_FILE, run_dir / ENCODER_FILE))
        figure = reconstruction_figure(job, checkpoint, run_dir / FIGURE_FILE)
        run.log_artifact(encoder, "pretrain")
        run.log_artifact(figure, "plots")
        history = {k: [m.value for m in run.client.get_metric_history(run.run_id, k)]
                   for k in ("epoch/loss", "epoch/clips_per_s", "epoch/peak_memory_mb")}
        result = PretrainResult(
            run_name=name, run_dir=str(run_dir), mlflow_run_id=run.run_id, tracking_uri=job.tracking_uri,
            encoder=str(encoder), checkpoint=str(checkpoint), final_loss=history["epoch/loss"][-1],
            clips_per_s=float(np.mean(history["epoch/clips_per_s"])), peak_memory_mb=max(history["epoch/peak_memory_mb"]),
            elapsed_s=time.perf_counter() - t0)
        run.log_metrics({"final/loss": result.final_loss, "final/clips_per_s": result.clips_per_s,
                         "final/peak_memory_mb": result.peak_memory_mb, "final/elapsed_s": result.elapsed_s})
    result.save(run_dir / RESULT_FILE)
    return result


def reconstruction_figure(job: PretrainJob, checkpoint: Path, path: Path) -> Path:
    """Original, visible tokens and reconstruction of the first ``figure_clips`` target-train clips with the
    trained autoencoder of ``checkpoint`` and the run's masking (seeded)."""
    learner = job.build()
    learner.load_state_dict(load_pretrain_checkpoint(checkpoint)["learner"])
    learner.mae.eval()
    batch = next(read_batches(ShardSet.open(job.shards), "target", "train", job.pretrain.figure_clips))
    visible = learner.draw(batch, batch.video()).visible
    out = reconstruct(learner.mae, batch.frames, visible)
    clip = job.model.clip
    title = f"{job.pretrain.masking} masking, ratio {job.pretrain.mask_ratio:g}: target-train clips"
    return plots.save(plots.reconstruction(batch.frames.numpy(), visible.numpy(), out.numpy(), clip.tubelet, clip.patch,
                                           title), path)
