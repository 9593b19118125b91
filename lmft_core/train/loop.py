"""The training loop of one worker: epochs of steps, evaluation, checkpoints, reports.

:func:`run_worker` runs in any process: under Ray Train (:mod:`lmft_core.train.ray_train` hands it
Ray Data shards or :class:`MemoryEpochData`, and ``ray.train.report``) or in a plain process (tests:
:class:`MemoryEpochData` and a callback). Every rank takes the same number of steps: before each step the ranks agree (one
all-reduce of a flag) that every one of them has a batch, and stop together otherwise.

Time is split into **data wait** (blocked waiting for the next batch) and **step time** (selection,
forward, backward, optimizer, policy); ``clips/s`` counts source and target clips over both.
Rank 0 alone collects metrics, evaluates and writes checkpoints; every rank reports. An epoch's step and epoch
metrics travel in its checkpoint (``unsent_metrics.json``) and reach MLflow only once Ray has registered that
checkpoint (:class:`lmft_core.train.ray_train.MetricSender`, in the controller), so a run resumed from a checkpoint
re-runs only steps MLflow has never seen and every step keeps one value, the resumed run's.

With a ``train.pseudo_labels`` source that uses the model's own labels (``self``, ``clip+self``), every
rank refreshes them together after every ``train.self_refresh_epochs``-th epoch but the last
(:func:`lmft_core.train.pseudo.refresh_self_labels`), before the evaluation and the checkpoint, which
holds them; the refresh's ``pseudo/*`` metrics join the epoch's.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lmft_core.augment import label_map_tensor
from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig, flat_metrics
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.batch import ClipBatch
from lmft_core.shards.reader import BATCH_COLUMNS, ShardSet, batch_from_table, read_batches
from lmft_core.train.checkpoint import resume, save_checkpoint, save_unsent_metrics
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.evaluate import EvalResult, evaluate
from lmft_core.train.names import EVAL_SOURCE_VAL, EVAL_TARGET, POLICY
from lmft_core.train.pseudo import refresh_self_labels
from lmft_core.train.step import Learner

EVALUATION_FILE = "evaluation.json"
Pair = tuple[ClipBatch, ClipBatch]


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs, as plain data (it travels to Ray workers).

    ``model`` has its clip geometry and class count set, ``policy`` its kind and segment count
    (:meth:`PolicyConfig.resolve`); ``evaluate`` are the selectors of the final evaluation, thresholds
    already calibrated; ``config`` is the resolved configuration (JSON-able) saved
    in checkpoints; ``mlflow_run_id`` (empty: no logging) the run rank 0 logs to at ``tracking_uri``.
    """

    shards: str
    classes: tuple[str, ...]
    model: ModelConfig
    policy: PolicyConfig
    selector: SelectorConfig
    train: TrainConfig
    evaluate: tuple[SelectorConfig, ...]
    steps_per_epoch: int
    config: dict = field(default_factory=dict)
    tracking_uri: str = ""
    mlflow_run_id: str = ""

    def build_classifier(self) -> LMFTClassifier:
        return LMFTClassifier.build(self.model, self.policy, self.selector, self.classes)


class EpochData(Protocol):
    def pairs(self, epoch: int) -> Iterator[Pair]:
        """(source, target) micro-batches of ``epoch`` for this rank (equally many on every rank)."""


class MemoryEpochData:
    """Epochs from the ``train`` rows of each domain decoded once into this process's memory (no Ray Data):
    each epoch a seeded permutation of each domain's rows, split equally over ranks (the remainder dropped),
    in batches (the last short one dropped). A batch is an index into the decoded frames, so a step never
    waits on JPEG decoding or on an ingest pipeline (``train.ingest = "memory"``)."""

    def __init__(self, shards: ShardSet, batch_size: int, seed: int, dist: Dist = Dist(), shuffle: bool = True,
                 domains: tuple[str, ...] = ("source", "target")):
        self.clips = [batch_from_table(shards.read(d, "train", BATCH_COLUMNS)) for d in domains]
        self.batch_size, self.seed, self.dist, self.shuffle = batch_size, seed, dist, shuffle

    def batches(self, epoch: int, stream: int = 0) -> Iterator[ClipBatch]:
        """This rank's batches of the ``stream``-th domain in ``epoch``."""
        n = len(self.clips[stream])
        order = np.random.default_rng([self.seed, epoch, stream]).permutation(n) if self.shuffle else np.arange(n)
        per_rank = n // self.dist.world_size
        mine = torch.from_numpy(order[self.dist.rank * per_rank:(self.dist.rank + 1) * per_rank])
        for i in range(0, per_rank - self.batch_size + 1, self.batch_size):
            yield self.clips[stream].select(mine[i:i + self.batch_size])

    def pairs(self, epoch: int) -> Iterator[Pair]:
        return zip(self.batches(epoch, 0), self.batches(epoch, 1))


class MetricSink(Protocol):
    """Rank 0's metrics (:class:`lmft_core.tracking.MetricBuffer`): ``add`` queues, ``take`` hands the queue over
    (to the checkpoint)."""

    def add(self, metrics: dict[str, float], step: int) -> None: ...
    def take(self) -> list[list]: ...


def _take(it: Iterator[Pair], n: int) -> list[Pair]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def run_worker(job: TrainJob, dist: Dist, data: EpochData, checkpoint: dict | None,
               report: Callable[[dict[str, float], Path | None], None], device: torch.device | str = "cpu",
               sink: MetricSink | None = None, stop_after_epochs: int | None = None) -> None:
    """Train ``job`` on this rank from ``checkpoint`` (or from scratch) to its last epoch.

    ``report(metrics, checkpoint_folder)`` is called once per epoch on every rank (the folder only on
    rank 0; it is deleted after the call). ``sink`` collects rank 0's step and epoch metrics; each checkpoint
    takes them (module docstring).
    ``stop_after_epochs`` ends early after that many epochs of this call (tests).
    """
    cfg, device = job.train, torch.device(device)
    torch.manual_seed(cfg.seed)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    adapter = job.build_classifier()
    shards = ShardSet.open(job.shards)
    learner = Learner(adapter, cfg, job.steps_per_epoch, dist, device, label_map_tensor(job.classes, cfg.hflip_label_map))
    start_epoch = resume(learner, checkpoint, dist.rank)
    if checkpoint is None or not dist.is_main:  # per-rank randomness (drop path); rank 0 resumes its saved RNG
        torch.manual_seed(cfg.seed * 7919 + dist.rank * 104729 + learner.step)
    policy = job.selector.uses_policy  # a run without a threshold (full, random at a fixed rate) logs none
    resumed = {"resumed_from_epoch": float(start_epoch), "resumed_from_step": float(learner.step),
               **{f"resumed_policy_{k}": v for k, v in flat_metrics(adapter.policy.values()).items() if policy}}
    if learner.pseudo_source.uses_self:  # the epoch whose self labels the checkpoint held (-1: none yet)
        resumed["resumed_self_labels_epoch"] = float(-1 if learner.self_labels is None else learner.self_labels.epoch)
    if checkpoint is not None and dist.is_main and sink is not None:
        sink.add({f"train/{k}": v for k, v in resumed.items()}, learner.step)

    end_epoch = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        epoch_metrics = _train_epoch(learner, data.pairs(epoch), dist, sink)
        last = epoch == cfg.epochs - 1
        metrics = {"epoch": float(epoch + 1), "step": float(learner.step), **epoch_metrics,
                   **{f"{POLICY}/{k}": v for k, v in flat_metrics(adapter.policy.values()).items() if policy}}
        if learner.pseudo_source.uses_self and not last and (epoch + 1) % cfg.self_refresh_epochs == 0:
            learner.self_labels, pseudo = refresh_self_labels(
                adapter, shards, dist, source=learner.pseudo_source, gamma_c=cfg.gamma_c, self_gamma=cfg.self_gamma,
                epoch=epoch + 1, batch_size=cfg.eval_batch_size, device=device, amp_dtype=learner.amp_dtype,
                selection=cfg.self_selection, fraction=cfg.self_fraction(epoch + 1))
            metrics.update(pseudo)
        if checkpoint is not None and epoch == start_epoch:
            metrics.update(resumed)
        results: dict[str, EvalResult] = {}
        if dist.is_main and (last or (epoch + 1) % cfg.eval_every_epochs == 0):
            results = _evaluate(adapter, shards, job, device, learner.amp_dtype, final=last)
            metrics.update({k: v for r in results.values() for k, v in r.metrics(EVAL_TARGET).items()})
            metrics.update(results[job.selector.label].result_metrics())  # the same names in every training
            if shards.counts().get(("source", "val"), 0):
                val = evaluate(adapter, read_batches(shards, "source", "val", cfg.eval_batch_size), [job.selector],
                               device, learner.amp_dtype)
                metrics.update(next(iter(val.values())).metrics(EVAL_SOURCE_VAL))
        if dist.is_main and sink is not None:
            sink.add({k: v for k, v in metrics.items() if k not in ("epoch", "step")}, learner.step)
        with tempfile.TemporaryDirectory(prefix="lmft-ckpt-") as tmp:
            folder = None
            if dist.is_main:
                folder = Path(tmp)
                save_checkpoint(folder, learner.state_dict(), adapter.policy, epoch + 1, job.config, list(job.classes),
                                dataclasses.asdict(job.model.clip))
                if sink is not None:
                    save_unsent_metrics(folder, sink.take())
                if last:
                    (folder / EVALUATION_FILE).write_text(json.dumps({k: r.as_dict() for k, r in results.items()}, indent=2))
            report(metrics, folder)


def _train_epoch(learner: Learner, pairs: Iterator[Pair], dist: Dist, sink: MetricSink | None) -> dict[str, float]:
    cfg = learner.cfg
    limit = cfg.max_steps_per_epoch or learner.steps_per_epoch
    wait = compute = clips = loss = discard = 0.0
    steps = 0
    while steps < limit:
        t0 = time.perf_counter()
        micro = _take(pairs, cfg.accum_steps)
        t1 = time.perf_counter()
        if not dist.all_true(len(micro) == cfg.accum_steps, learner.device):  # some rank has run out: all stop here
            break
        m = learner.step_once(micro)
        t2 = time.perf_counter()
        wait, compute, clips, steps = wait + (t1 - t0), compute + (t2 - t1), clips + m["clips"], steps + 1
        loss += m["loss"]
        discard += (m["discard_rate_source"] + m["discard_rate_target"]) / 2
        if dist.is_main and sink is not None:
            timing = {"step_time_s": t2 - t1, "data_wait_s": t1 - t0, "clips_per_s": m["clips"] / (t2 - t0)}
            sink.add({f"train/{k}": v for k, v in (m | timing).items() if k != "clips"}, learner.step)
    if steps == 0:
        raise RuntimeError("an epoch took no step: a rank has fewer clips than one batch (train.batch_size x accum_steps)")
    total = wait + compute
    return {"epoch/steps": float(steps), "epoch/time_s": total, "epoch/clips_per_s": clips / total,
            "epoch/data_wait_fraction": wait / total, "epoch/step_time_s": compute / steps,
            "epoch/loss": loss / steps, "epoch/discard_rate": discard / steps}


def _evaluate(adapter: LMFTClassifier, shards: ShardSet, job: TrainJob, device: torch.device, amp_dtype,
              final: bool) -> dict[str, EvalResult]:
    """Target-test: the training selector every time, every selector of ``job.evaluate`` at the end."""
    selectors = [job.selector] + ([s for s in job.evaluate if s.label != job.selector.label] if final else [])
    batches = read_batches(shards, "target", "test", job.train.eval_batch_size)
    return evaluate(adapter, batches, selectors, device, amp_dtype)
