"""Training throughput: whole training steps with full tokens against LMFT at keep ratios near 0.75/0.5/0.25.

    python benchmarks/bench_train.py [--setup cpu tiny | gpu] [--epochs 4] [--steps 6] [--no-ray] [--no-write]

Writes section ``train`` (``train-gpu``) of docs/benchmarks.md. For each setup and each configuration it runs
the real training path, a Ray Train fit (``lmft_core.train.run.TrainingRun.fit``: Ray Data ingest from Parquet shards,
selection, packed forward and backward, optimizer, REINFORCE policy update) on synthetic shards of the
setup's geometry, and reads the epochs' ``clips/s`` (source + target clips over data wait + step time) and
data-wait fraction, the first epoch left out as warm-up; the median of the others is reported. LMFT runs the
``lmft`` selector with its policy pinned near the threshold that keeps the wanted share of tokens (uniform
random energies; sigma ~0.007, policy learning rate 0, so the update runs but tau stays), so its whole step
is what a training at that keep ratio costs. Target: LMFT clips/s >= full clips/s / (keep ratio + 0.05).

A second table times the step alone (``Learner.step_once``, no Ray, no data loading), every configuration in
turn for several rounds (best round), to separate compute from ingest; on a GPU it also gives the model FLOPs
utilisation of the step (the model's forward and backward FLOPs over the GPU's bf16 peak). ``--no-ray`` measures
that table alone (a machine without Ray).

Setups: ``cpu`` ViT-S/16 at 16x112x112 (compute dominates on CPU), ``tiny`` the demo's vit_tiny at 16x64x64
(per-step overhead dominates), ``gpu`` ViT-B/16 at 16x224x224 in bf16 (needs a CUDA device).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmft_core.benchmarking import machine_description, markdown_table, model_flops_utilisation, write_section
from lmft_core.config import ClipConfig
from lmft_core.run_config import load_profile
from lmft_core.shards.synthetic import write_synthetic_shards

KEEPS = (0.75, 0.5, 0.25)
CLASSES = ("a", "b", "c", "d", "e")


@dataclass(frozen=True)
class Setup:
    model: str
    image_size: int
    batch_size: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0
    precision: str = "fp32"
    threads: int = 0


SETUPS = {  # CPU: the worker reserves 1 of the 2 cores (Ray Data needs the other) and computes with 2 threads
    "cpu": Setup("vit_s16", 112, 8, 1.0, threads=2),
    "tiny": Setup("vit_tiny", 64, 16, 1.0, threads=2),
    "gpu": Setup("vit_b16", 224, 32, 4.0, 1.0, "bf16", threads=4),
}


def tau_for_keep(keep: float, clip: ClipConfig) -> float:
    """The threshold keeping ``keep`` of the tokens of clips with energies uniform in [0, 1] (the first
    segment always kept): keep = 1/N_t + (1 - 1/N_t) (1 - tau)."""
    first = 1.0 / clip.grid[0]
    return 1.0 - (keep - first) / (1.0 - first)


def overrides(setup: Setup, keep: float | None, epochs: int, steps: int) -> list[str]:
    clip = ClipConfig(num_frames=16, image_size=setup.image_size)
    sets = [f"clip.image_size={setup.image_size}", "clip.patch=16", f"model.size='{setup.model}'", "model.drop_path=0.0",
            f"train.epochs={epochs}", f"train.batch_size={setup.batch_size}", "train.workers=1",
            f"train.cpus_per_worker={setup.cpus_per_worker}", f"train.gpus_per_worker={setup.gpus_per_worker}",
            f"train.threads_per_worker={setup.threads}",
            f"train.precision='{setup.precision}'", f"train.max_steps_per_epoch={steps}", "train.evaluate=[]",
            f"train.eval_every_epochs={epochs}", f"train.keep_checkpoints={epochs}", "train.warmup_epochs=0.0",
            "train.hflip=false", "train.shuffle=true",
            "train.gamma_c=0.0"]  # every target clip's pseudo-label passes: each step forwards source and target
    if keep is None:
        return sets + ["selector.name='full'"]
    tau = tau_for_keep(keep, clip)
    return sets + ["selector.name='lmft'", f"policy.mu={math.log(tau / (1 - tau))}", "policy.log_sigma=-5.0",
                   "train.policy_lr=0.0"]


def ray_throughput(shards: Path, workdir: Path, setup: Setup, keep: float | None, epochs: int, steps: int) -> dict:
    from lmft_core.train.run import TrainingRun

    training = TrainingRun.prepare(load_profile("demo", overrides(setup, keep, epochs, steps)), shards, workdir)
    result = dataclasses.replace(training, name=f"bench-{training.name}").fit()
    df = result.metrics_dataframe.sort_values("epoch")
    later = df[df["epoch"] > 1]  # the first epoch warms up (worker start, first reads, allocations)
    return {"clips_per_s": statistics.median(later["epoch/clips_per_s"]),
            "data_wait": statistics.median(later["epoch/data_wait_fraction"]),
            "step_s": statistics.median(later["epoch/step_time_s"])}


def step_only(shards: Path, setup: Setup, configs: list[float | None], rounds: int) -> tuple[dict, dict]:
    """Best step time per configuration, configurations in turn each round, no Ray; and the model FLOPs of a
    full-token step (forward and backward: 3x the forward FLOPs of every clip it forwarded)."""
    import torch

    from lmft_core.model import clip_flops
    from lmft_core.shards.reader import ShardSet
    from lmft_core.train.loop import MemoryEpochData
    from lmft_core.train.run import prepare
    from lmft_core.train.step import Learner

    torch.set_num_threads(setup.threads)
    device = "cuda" if setup.gpus_per_worker else "cpu"
    learners, pairs = {}, None
    for keep in configs:
        job, _ = prepare(load_profile("demo", overrides(setup, keep, 1, 1)), shards, Path(tempfile.mkdtemp()))
        torch.manual_seed(0)
        learners[keep] = Learner(job.build_classifier(), job.train, job.steps_per_epoch, device=device)
        if pairs is None:
            pairs = list(MemoryEpochData(ShardSet.open(shards), setup.batch_size, 0).pairs(0))
    best, flops = {k: float("inf") for k in configs}, {}
    for r in range(rounds + 1):  # round 0 warms up
        for keep, learner in learners.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m = learner.step_once([pairs[r % len(pairs)]])
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                best[keep] = min(best[keep], time.perf_counter() - t0)
            if keep is None:
                config = learner.adapter.model.config
                flops[keep] = 3 * m["clips"] * clip_flops(config, config.clip.num_tokens)
    return best, flops


def run_setup(name: str, setup: Setup, epochs: int, steps: int, rounds: int, root: Path, use_ray: bool = True) -> str:
    import torch

    clip = ClipConfig(num_frames=16, image_size=setup.image_size)
    n = steps * setup.batch_size
    shards = write_synthetic_shards(root / f"shards-{name}", clip, CLASSES,
                                    {("source", "train"): n, ("target", "train"): n, ("target", "test"): 4})
    configs: list[float | None] = [None, *KEEPS]
    ray_rows = {}
    if use_ray:
        import ray

        from lmft_core.ray_cluster import connect

        connect()
        ray_rows = {keep: ray_throughput(shards, root / f"work-{name}", setup, keep, epochs, steps) for keep in configs}
        ray.shutdown()
    step_rows, flops = step_only(shards, setup, configs, rounds)
    full_step = step_rows[None]
    gpu = torch.cuda.get_device_name(0) if setup.gpus_per_worker else ""
    mfu = model_flops_utilisation(flops[None], full_step, gpu) if gpu else None
    rows = []
    for keep in configs:
        target = "" if keep is None else f">= {1 / (keep + 0.05):.2f}"
        row = ["full" if keep is None else f"lmft, keep {keep:.2f}"]
        if use_ray:
            r, full = ray_rows[keep], ray_rows[None]["clips_per_s"]
            row += [f"{r['clips_per_s']:.2f}", f"{r['clips_per_s'] / full:.2f}", target, f"{r['data_wait']:.2f}"]
        row += [f"{step_rows[keep]:.3f}", f"{2 * setup.batch_size / step_rows[keep]:.1f}", f"{full_step / step_rows[keep]:.2f}"]
        row += [] if use_ray else [target]
        row += [f"{mfu:.0%}" if keep is None and mfu is not None else "-"] if gpu else []
        rows.append(row)
        print(name, rows[-1], flush=True)
    header = (["configuration"] + (["clips/s (whole step)", "speed-up vs full", "target", "data-wait fraction"] if use_ray else [])
              + ["step only s (no Ray)", "step-only clips/s", "step-only speed-up"] + ([] if use_ray else ["target"])
              + (["MFU"] if gpu else []))
    epochs_text = f"{epochs} epochs of {steps} steps, median of epochs 2-{epochs}; " if use_ray else ""
    return (f"**{name}**: {setup.model}, 16x{setup.image_size}x{setup.image_size}, batch {setup.batch_size} source + "
            f"{setup.batch_size} target clips per step, 1 worker ({setup.threads} threads"
            f"{', 1 GPU' if setup.gpus_per_worker else ''}), {setup.precision}; {epochs_text}"
            f"step only: best of {rounds} rounds\n\n" + markdown_table(header, rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", nargs="+", default=["cpu", "tiny"], choices=sorted(SETUPS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-ray", action="store_true", help="only the step-only table (no Ray Train fit)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if "gpu" in args.setup:
        import torch

        if not torch.cuda.is_available():
            print("error: --setup gpu needs a CUDA device", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="lmft-bench-train-") as tmp:
        parts = [run_setup(s, SETUPS[s], args.epochs, args.steps, args.rounds, Path(tmp), not args.no_ray) for s in args.setup]
    if not args.no_write:
        section = "train-gpu" if args.setup == ["gpu"] else "train"
        write_section(section, "\n\n".join([
            "## Training throughput: whole steps, full tokens against LMFT (`benchmarks/bench_train.py`)",
            f"`python benchmarks/bench_train.py --setup {' '.join(args.setup)}{' --no-ray' if args.no_ray else ''}` "
            f"on {machine_description()}.",
            *(["Without Ray (`--no-ray`): the step alone, no Ray Train fit and no ingest."] if args.no_ray else []),
            "*clips/s (whole step)*: source + target clips per second of a Ray Train epoch (data wait + step), on "
            "synthetic shards at the setup's geometry, every target clip pseudo-labelled (`gamma_c` 0), so every step "
            "forwards all its source and target clips. *data-wait fraction*: time blocked on the next batch over the "
            "epoch. LMFT's policy is pinned near the threshold that keeps the stated share of tokens; the REINFORCE "
            "update still runs. *target*: the speed-up LMFT must reach, 1 / (keep ratio + 0.05). *step only*: "
            "`Learner.step_once` alone (no Ray, no data), configurations in turn, best round; its clips/s counts source "
            "and target clips. *MFU* (GPU): a full-token step's model FLOPs (3x the analytic forward FLOPs of every "
            "clip it forwards) per second over the GPU's dense bf16 peak (`lmft_core.benchmarking.BF16_PEAK_TFLOPS`).",
            *parts]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
