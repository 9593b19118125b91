"""Where training waits for data: the parts of the Ray Data ingest, and memory ingest against it.

    python benchmarks/bench_ingest.py [--profiles demo results] [--workers 1 2] [--epochs 3] [--steps 8] [--no-write]

Writes section ``ingest`` of docs/benchmarks.md. For each profile (its clip geometry, model, batch size and
threads, on synthetic shards holding exactly the clips the measured epochs use):

1. **The parts, one at a time** (driver process, no training): JPEG decoding of one batch (``batch_from_table``,
   what ``ShardCollate`` does per batch on the worker); one epoch of Ray Data's pipeline as a worker reads it
   (reshuffle of the materialized split, streaming to the consumer, collate) with the real collate and with a
   collate that decodes nothing; one epoch of memory ingest (index into frames decoded once); the one-off
   decode of memory ingest.
2. **Whole trainings** (Ray Train, the real path, ``train.ingest`` = ``ray_data`` against ``memory``, with 1
   and 2 workers): data-wait fraction, clips/s and step time, median of the epochs after the first.
3. **Evaluation passes**: clips/s of an evaluation over target-test (Parquet read + JPEG decoding + forward),
   and of the forward alone on the same batches decoded beforehand.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.run_config import RunConfig, load_profile
from lmft_core.shards.synthetic import write_synthetic_shards

CLASSES = ("a", "b", "c", "d", "e")


def settings(profile: RunConfig, workers: int, epochs: int, steps: int, ingest: str) -> list[str]:
    """Overrides of a short training of ``profile`` with ``workers`` workers (``cpus_per_worker`` split so that
    one CPU is left to Ray Data, as the profiles do)."""
    cpus = 0.5 if workers == 2 else profile.train.cpus_per_worker
    return [f"train.workers={workers}", f"train.cpus_per_worker={cpus}", f"train.epochs={epochs}",
            f"train.max_steps_per_epoch={steps}", f"train.ingest='{ingest}'", "train.evaluate=[]",
            f"train.eval_every_epochs={epochs}", f"train.keep_checkpoints={epochs}", "train.warmup_epochs=0.0"]


def parts(profile: RunConfig, shards: Path, epochs: int) -> list[list[str]]:
    """Section 1's rows: seconds of each part of the ingest, no training."""
    import pyarrow as pa
    import torch
    from ray.data.collate_fn import ArrowBatchCollateFn

    from lmft_core.shards.reader import BATCH_COLUMNS, ShardSet, batch_from_table
    from lmft_core.train.loop import MemoryEpochData
    from lmft_core.train.ray_train import ShardCollate, train_datasets

    class CountOnly(ArrowBatchCollateFn):  # Ray Data's pipeline without the JPEG decoding
        def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
            return {"rows": torch.tensor([batch.num_rows])}

    cfg = dataclasses.replace(profile.train, ingest="ray_data")
    s = ShardSet.open(shards)
    bs = cfg.batch_size
    table = s.read("source", "train", BATCH_COLUMNS).slice(0, bs)
    decode = min(_timed(lambda: batch_from_table(table)) for _ in range(5))
    datasets = train_datasets(s, cfg)
    source = datasets["source_train"]
    rows = []
    for label, collate in (("Ray Data epoch, JPEGs decoded (ShardCollate)", None), ("Ray Data epoch, nothing decoded", CountOnly())):
        times, firsts = [], []
        for _ in range(epochs):
            t0 = time.perf_counter()
            first = None
            for _ in source.iter_torch_batches(batch_size=bs, collate_fn=collate or ShardCollate(), drop_last=True,
                                               prefetch_batches=cfg.prefetch_batches):
                first = first or time.perf_counter() - t0
            times.append(time.perf_counter() - t0)
            firsts.append(first)
        batches = source.count() // bs
        rows.append([label, f"{statistics.median(times):.3f}", f"{statistics.median(firsts):.3f}",
                     f"{statistics.median(times) / batches * 1000:.1f}"])
    t0 = time.perf_counter()
    memory = MemoryEpochData(s, bs, cfg.seed)
    load = time.perf_counter() - t0
    times = [_timed(lambda e=e: sum(1 for _ in memory.batches(e))) for e in range(epochs)]
    n = len(memory.clips[0]) // bs
    rows.append(["memory ingest epoch (index into decoded frames)", f"{statistics.median(times):.4f}", "",
                 f"{statistics.median(times) / n * 1000:.2f}"])
    rows.append(["memory ingest, one-off decode of both splits", f"{load:.3f}", "", ""])
    rows.append([f"JPEG decoding of one batch of {bs} clips", "", "", f"{decode * 1000:.1f}"])
    return rows


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def trainings(name: str, profile: RunConfig, shards: Path, workdir: Path, workers: tuple[int, ...], epochs: int, steps: int) -> list[list[str]]:
    """Section 2's rows: whole Ray Train trainings with either ingest."""
    from lmft_core.train.run import TrainingRun

    rows = []
    for n in workers:
        for ingest in ("ray_data", "memory"):
            sets = settings(profile, n, epochs, steps, ingest)
            training = TrainingRun.prepare(load_profile(name, sets), shards, workdir)
            result = dataclasses.replace(training, name=f"bench-ingest-{training.name}").fit()
            later = result.metrics_dataframe.sort_values("epoch")
            later = later[later["epoch"] > 1]
            rows.append([str(n), ingest, f"{statistics.median(later['epoch/data_wait_fraction']):.3f}",
                         f"{statistics.median(later['epoch/clips_per_s']):.1f}",
                         f"{statistics.median(later['epoch/step_time_s']):.3f}"])
            print(name, rows[-1], flush=True)
    return rows


def evaluation(profile: RunConfig, shards: Path) -> list[list[str]]:
    """Section 3's rows: an evaluation pass as training runs it, and its forward alone."""
    import torch

    from lmft_core.shards.reader import ShardSet, read_batches
    from lmft_core.train.evaluate import evaluate
    from lmft_core.train.run import prepare

    torch.set_num_threads(profile.train.threads)
    s = ShardSet.open(shards)
    job, _ = prepare(profile, s, Path(tempfile.mkdtemp()))
    torch.manual_seed(0)
    model = job.build_classifier()
    bs = job.train.eval_batch_size
    n = s.counts()[("target", "test")]
    full = min(_timed(lambda: evaluate(model, read_batches(s, "target", "test", bs), [job.selector])) for _ in range(3))
    decoded = list(read_batches(s, "target", "test", bs))
    forward = min(_timed(lambda: evaluate(model, decoded, [job.selector])) for _ in range(3))
    return [["evaluation pass (read + decode + forward)", f"{n / full:.1f}"], ["forward alone (frames decoded)", f"{n / forward:.1f}"]]


def run_profile(name: str, workers: tuple[int, ...], epochs: int, steps: int, root: Path) -> str:
    import ray

    from lmft_core.ray_cluster import connect

    profile = load_profile(name)
    per_epoch = steps * profile.train.batch_size * max(workers)
    shards = write_synthetic_shards(root / f"shards-{name}", profile.clip, CLASSES,
                                    {("source", "train"): per_epoch, ("target", "train"): per_epoch,
                                     ("target", "test"): 4 * profile.train.eval_batch_size})
    connect()
    part_rows = parts(profile, shards, epochs)
    train_rows = trainings(name, profile, shards, root / f"work-{name}", workers, epochs, steps)
    ray.shutdown()
    eval_rows = evaluation(profile, shards)
    c = profile.clip
    return "\n\n".join([
        f"**{name}**: {profile.model.size}, {c.num_frames}x{c.image_size}x{c.image_size}, batch {profile.train.batch_size} "
        f"source + {profile.train.batch_size} target clips per worker and step, {profile.train.threads} threads per worker, "
        f"{steps} steps per epoch, {epochs} epochs (median of epochs 2-{epochs})",
        markdown_table(["part (driver, no training)", "s per epoch", "s to the first batch", "ms per batch"], part_rows),
        markdown_table(["workers", "ingest", "data-wait fraction", "clips/s", "step s"], train_rows),
        markdown_table(["evaluation over target-test", "clips/s"], eval_rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", nargs="+", default=["demo", "results"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lmft-bench-ingest-") as tmp:
        blocks = [run_profile(n, tuple(args.workers), args.epochs, args.steps, Path(tmp)) for n in args.profiles]
    if not args.no_write:
        write_section("ingest", "\n\n".join([
            "## Where training waits for data (`benchmarks/bench_ingest.py`)",
            f"`python benchmarks/bench_ingest.py --profiles {' '.join(args.profiles)}` on {machine_description()}.",
            "*Parts*: each piece of the Ray Data ingest timed alone in the driver: one epoch as a worker reads it "
            "(the per-epoch reshuffle of the materialized split re-executes, then rows stream to the consumer and are "
            "collated), with and without JPEG decoding, against memory ingest (`train.ingest = \"memory\"`: both "
            "splits decoded once, a batch is an index). *Trainings*: the real Ray Train path with either ingest; "
            "*data-wait fraction* is the time a step waits for its batch over the epoch. *Evaluation*: an evaluation "
            "pass over target-test as training runs it, against its forward alone. With 2 workers each keeps the profile's "
            "2 torch threads on the 2 cores (4 threads on 2 cores), so their step time says little about compute; those rows "
            "are there for the data-wait fraction.",
            *blocks]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
