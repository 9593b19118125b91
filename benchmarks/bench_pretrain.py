"""Pretraining cost against the mask ratio: step time, clips/s and activation memory of masked video pretraining.

    python benchmarks/bench_pretrain.py [--setup tiny small] [--rounds 4] [--no-write]

Writes section ``pretrain`` of docs/benchmarks.md. For each setup it builds the pretraining learner
(:class:`lmft_core.pretrain.learner.PretrainLearner`: encoder on the visible tokens, packed; light decoder;
AdamW) at every mask ratio and masking strategy of the table and times whole steps (``step_once``: masking,
forward, backward, optimizer) on the same synthetic clips, configurations in turn for several rounds (so that
whatever else runs on the machine slows all of them alike), best round. *activation MB*: the bytes of the
tensors autograd saves for the backward pass during one step's forward (``saved_tensors_hooks``), the part of
training memory that falls with the visible tokens (weights and optimizer state do not). Target: at mask
ratio 0.9 a step costs at most half of one at 0.5 (the encoder sees a fifth of the tokens; the decoder sees all).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.config import ClipConfig
from lmft_core.model import ModelConfig
from lmft_core.pretrain.config import PretrainConfig, visible_count
from lmft_core.pretrain.worker import PretrainJob
from lmft_core.shards.batch import ClipBatch
from lmft_core.train.config import TrainConfig

CONFIGS = [("tube", 0.5), ("tube", 0.75), ("tube", 0.9), ("tube", 0.95), ("motion", 0.9), ("learned", 0.9)]


@dataclass(frozen=True)
class Setup:
    model: str
    image_size: int
    batch_size: int
    threads: int = 2


SETUPS = {"tiny": Setup("vit_tiny", 64, 16), "small": Setup("vit_s16", 112, 4)}


def synthetic_batch(clip: ClipConfig, n: int) -> ClipBatch:
    g = torch.Generator().manual_seed(0)
    energy = torch.rand(n, *clip.grid, generator=g)
    energy[:, 0] = 1.0
    frames = torch.randint(0, 256, (n, clip.num_frames, clip.image_size, clip.image_size, 3), dtype=torch.uint8, generator=g)
    return ClipBatch(frames=frames, energy=energy, label=torch.full((n,), -1), pseudo_label=torch.full((n,), -1),
                     pseudo_confidence=torch.zeros(n), clip_probs=torch.zeros(n, 2), key=torch.arange(n))


def activation_mb(learner, batch: ClipBatch) -> float:
    """MB saved for backward during one step's forward (the step is taken: the learner moves on)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        learner.step_once(batch)
    return total / 2**20


def run_setup(name: str, setup: Setup, rounds: int) -> str:
    torch.set_num_threads(setup.threads)
    clip = ClipConfig(num_frames=16, image_size=setup.image_size)
    model = ModelConfig(size=setup.model, num_classes=2, clip=clip, drop_path=0.0)
    batch = synthetic_batch(clip, setup.batch_size)
    learners, memory = {}, {}
    for masking, ratio in CONFIGS:
        cfg = PretrainConfig(masking=masking, mask_ratio=ratio, batch_size=setup.batch_size, warmup_epochs=0.0)
        learners[masking, ratio] = PretrainJob("", model, cfg, TrainConfig(precision="fp32"), 100).build()
        memory[masking, ratio] = activation_mb(learners[masking, ratio], batch)  # also the warm-up step
    best = {k: float("inf") for k in learners}
    for _ in range(rounds):
        for key, learner in learners.items():
            t0 = time.perf_counter()
            learner.step_once(batch)
            best[key] = min(best[key], time.perf_counter() - t0)
    base = best["tube", 0.5]
    rows = []
    for (masking, ratio), t in best.items():
        visible = visible_count(ratio, clip)[0]
        rows.append([masking, f"{ratio:.2f}", f"{visible} / {clip.num_tokens}", f"{t:.3f}", f"{setup.batch_size / t:.1f}",
                     f"{base / t:.2f}", f"{memory[masking, ratio]:.0f}"])
        print(name, rows[-1], flush=True)
    header = ["masking", "mask ratio", "visible tokens / clip", "step s (best)", "clips/s", "speed-up vs 0.5", "activation MB"]
    ratio_09 = best["tube", 0.9] / base
    verdict = f"at 0.9 a step costs {ratio_09:.2f} of one at 0.5: target (<= 0.5) {'met' if ratio_09 <= 0.5 else 'missed'}"
    return (f"**{name}**: {setup.model} encoder, 16x{setup.image_size}x{setup.image_size}, batch {setup.batch_size}, decoder "
            f"2 blocks of half the width, fp32, {setup.threads} threads; best of {rounds} rounds; {verdict}.\n\n"
            + markdown_table(header, rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", nargs="+", default=["tiny"], choices=sorted(SETUPS))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    parts = [run_setup(s, SETUPS[s], args.rounds) for s in args.setup]
    load = os.getloadavg()[1]  # the 5-minute load average at the end: how shared the machine was
    if not args.no_write:
        write_section("pretrain", "\n\n".join([
            "## Pretraining cost against the mask ratio (`benchmarks/bench_pretrain.py`)",
            f"`python benchmarks/bench_pretrain.py --setup {' '.join(args.setup)}` on {machine_description()}. "
            f"Load average {load:.1f} at the end, on {os.cpu_count()} cores; configurations were timed in turn, so all of "
            "them saw the same contention"
            + (": at a load far above the core count the step times are dominated by waiting for a core and say little. "
               if load > 2 * os.cpu_count() else ". ")
            + "The activation memory does not depend on the load. *step s*: one whole pretraining step (masking, encoder on the visible tokens, "
            "decoder on all, loss on the masked ones, backward, AdamW). *activation MB*: tensors saved for backward in "
            "one step. Peak process memory of real runs is logged per epoch (`epoch/peak_memory_mb`).",
            *parts]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
