"""The pretraining loop of one worker, and its Ray Train wrapper.

:func:`run_pretrain_worker` runs in any process: under Ray Train (:func:`pretrain_fn` hands it this
worker's split of the unlabelled clips and ``ray.train.report``) or in a plain process (tests:
:class:`TableBatches` and a callback). Every rank takes the same number of steps: before each step the
ranks agree (one all-reduce of a flag) that every one of them has a batch, and stop together otherwise.
Rank 0 logs to MLflow and writes a checkpoint every epoch: a folder with ``checkpoint.pt`` (the
learner's state, epoch, RNG: resume) and ``encoder.pth`` (the initialisation adaptation reads,
:func:`~lmft_core.pretrain.mae.save_encoder`). ``epoch/peak_memory_mb`` is rank 0's peak: the device's
allocated memory on GPU, the process's resident set on CPU.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmft_core.model import ModelConfig
from lmft_core.pretrain.config import PretrainConfig
from lmft_core.pretrain.learner import PretrainLearner
from lmft_core.pretrain.mae import MaskedAutoencoder, save_encoder
from lmft_core.pretrain.masking import MASKINGS, TokenSampler
from lmft_core.shards.batch import ClipBatch
from lmft_core.shards.reader import ShardSet
from lmft_core.train.checkpoint import CHECKPOINT_FILE, resume, rng_state, save_unsent_metrics
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.loop import MemoryEpochData, MetricSink

FORMAT = "lmft-pretrain-checkpoint-v1"
ENCODER_FILE = "encoder.pth"
DATASET = "pretrain"


@dataclass(frozen=True)
class PretrainJob:
    """Everything a worker needs, as plain data: the shards, the encoder's ``model`` config (clip and class
    count set), the ``[pretrain]`` section, the ``[train]`` section (workers, precision, checkpoints, seed:
    what Ray Train's glue reads), steps per epoch, the resolved configuration (JSON-able) and the MLflow
    run rank 0 logs to (empty: none)."""

    shards: str
    model: ModelConfig
    pretrain: PretrainConfig
    train: TrainConfig
    steps_per_epoch: int
    config: dict = field(default_factory=dict)
    tracking_uri: str = ""
    mlflow_run_id: str = ""

    def build_mae(self) -> tuple[MaskedAutoencoder, TokenSampler | None]:
        """The autoencoder and (for a learned strategy) the sampler, initialised from ``train.seed``."""
        torch.manual_seed(self.train.seed)
        mae = MaskedAutoencoder(self.model, self.pretrain)
        sampler = None
        if MASKINGS[self.pretrain.masking].learned:
            sampler = TokenSampler(self.model.clip, self.model.in_chans, self.pretrain.sampler_hidden)
        return mae, sampler

    def build(self, dist: Dist | None = None, device: torch.device | str = "cpu") -> PretrainLearner:
        return PretrainLearner(*self.build_mae(), self.pretrain, self.steps_per_epoch, dist or Dist(), device,
                               self.train.seed, self.train.precision)


class TableBatches(MemoryEpochData):
    """Epochs of batches from the in-memory ``train`` rows of ``domains`` (one stream), no Ray."""

    def __init__(self, shards: ShardSet, batch_size: int, seed: int, dist: Dist | None = None,
                 domains: tuple[str, ...] = ("source", "target"), shuffle: bool = True):
        super().__init__(shards, batch_size, seed, dist or Dist(), shuffle, tuple(d for d in ("source", "target") if d in domains))
        self.clips = [ClipBatch.cat(self.clips)]


def save_pretrain_checkpoint(folder: Path, learner: PretrainLearner, epoch: int, job: PretrainJob) -> Path:
    """Write ``folder/checkpoint.pt`` and ``folder/encoder.pth``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "learner": learner.state_dict(), "epoch": int(epoch), "rng": rng_state(),
                "config": job.config}, folder / CHECKPOINT_FILE)
    save_encoder(learner.mae, folder / ENCODER_FILE, {"epochs": int(epoch), "masking": job.pretrain.masking,
                                                       "mask_ratio": job.pretrain.mask_ratio})
    return folder


def load_pretrain_checkpoint(folder: str | Path) -> dict:
    path = Path(folder) / CHECKPOINT_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an lmft pretraining checkpoint (format {state.get('format')!r}, expected {FORMAT!r})")
    return state


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_pretrain_worker(job: PretrainJob, dist: Dist, batches: Callable[[int], Iterator[ClipBatch]],
                        checkpoint: dict | None, report: Callable[[dict[str, float], Path | None], None],
                        device: torch.device | str = "cpu", sink: MetricSink | None = None,
                        stop_after_epochs: int | None = None) -> None:
    """Pretrain ``job`` on this rank from ``checkpoint`` (or from scratch) to its last epoch.

    ``batches(epoch)`` yields this rank's batches; ``report(metrics, folder)`` is called once per epoch on
    every rank (the checkpoint folder only on rank 0; deleted after the call); ``sink`` collects rank 0's
    step and epoch metrics, which travel in each checkpoint (``unsent_metrics.json``) to MLflow, as
    adaptation's do; ``stop_after_epochs`` ends early after that many epochs of this call (tests).
    """
    cfg, device = job.pretrain, torch.device(device)
    learner = job.build(dist, device)
    start = resume(learner, checkpoint, dist.rank)
    end = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start + stop_after_epochs)
    for epoch in range(start, end):
        limit = cfg.max_steps_per_epoch or job.steps_per_epoch
        it, losses, clips, steps, t0 = iter(batches(epoch)), [], 0.0, 0, time.perf_counter()
        while steps < limit:
            batch = next(it, None)
            if not dist.all_true(batch is not None, device):  # some rank has run out: all stop here
                break
            m = learner.step_once(batch)
            losses.append(m["loss"])
            clips, steps = clips + m["clips"], steps + 1
            if sink is not None:
                sink.add({f"pretrain/{k}": v for k, v in m.items() if k != "clips"}, learner.step)
        if steps == 0:
            raise RuntimeError("an epoch took no step: a rank has fewer clips than pretrain.batch_size")
        elapsed = time.perf_counter() - t0
        metrics = {"epoch": float(epoch + 1), "step": float(learner.step), "epoch/loss": float(np.mean(losses)),
                   "epoch/steps": float(steps), "epoch/time_s": elapsed, "epoch/clips_per_s": clips / elapsed,
                   "epoch/peak_memory_mb": peak_memory_mb(device)}
        if sink is not None:
            sink.add({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, learner.step)
        with tempfile.TemporaryDirectory(prefix="lmft-pretrain-ckpt-") as tmp:
            folder = save_pretrain_checkpoint(Path(tmp), learner, epoch + 1, job) if dist.is_main else None
            if folder is not None and sink is not None:  # sent by the controller once Ray has registered it
                save_unsent_metrics(folder, sink.take())
            report(metrics, folder)


def pretrain_fn(config: dict) -> None:
    """Ray Train's per-worker function of a :class:`PretrainJob` (``config["job"]``)."""
    import ray.train
    import ray.train.torch

    from lmft_core.train.ray_train import ShardCollate, report_to_ray, worker_context

    job: PretrainJob = config["job"]
    dist, state, sink = worker_context(job, load_pretrain_checkpoint)
    shard = ray.train.get_dataset_shard(DATASET)

    def batches(epoch: int) -> Iterator[ClipBatch]:
        it = shard.iter_torch_batches(batch_size=job.pretrain.batch_size, collate_fn=ShardCollate(), drop_last=True,
                                      prefetch_batches=job.train.prefetch_batches)
        return (ClipBatch.from_tensors(b) for b in it)

    run_pretrain_worker(job, dist, batches, state, report_to_ray, ray.train.torch.get_device(), sink)
