"""Model step time and peak memory against keep ratio: packed kept tokens vs a padded baseline.

For each keep ratio (1.0, 0.75, 0.5, 0.25) one forward+backward step (cross-entropy, no optimizer
step) is timed for

- **packed**: the kept tokens of all clips in one sequence, block-diagonal attention (backend ``auto``
  unless ``--attention``), no padding;
- **padded**: each clip padded to the batch's longest kept sequence, SDPA with a key-padding mask;
  at keep ratio 1.0 this is the plain batched ViT (no mask, no gather): the full-token reference.

Clips keep different numbers of tokens, as with a threshold on motion energy: clip b keeps
``ratio + w * s_b`` of its tokens, ``s_b`` evenly spaced in [-1, 1], ``w = min(spread * ratio,
1 - ratio)`` (tokens chosen uniformly, first temporal segment always kept). Step times are the best of several rounds in which
every configuration takes one step in turn (so a busy machine slows all of them alike). Peak memory
is measured for each configuration in its own process, over one step after a warm-up step: on GPU
``torch.cuda.max_memory_allocated`` above the memory allocated before the step; on CPU the peak
resident memory of the step (``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident
memory before it, with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``) so freed tensors
leave the resident set: activations and their gradients; parameters, their gradients and inputs
excluded.

    python benchmarks/bench_model.py                   # CPU: vit_tiny and vit_s16, 16x112x112, batch 8
    python benchmarks/bench_model.py --setup gpu       # GPU: vit_b16, 16x224x224, batch 32, bf16 autocast

Results go to the ``model`` (CPU) or ``model-gpu`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from lmft_core.benchmarking import best_time_s, machine_description, markdown_table, model_flops_utilisation, write_section
from lmft_core.config import ClipConfig
from lmft_core.model import ATTENTION_BACKENDS, ModelConfig, VideoViT, random_keep, resolve_attention, selection_flops

KEEP_RATIOS = (1.0, 0.75, 0.5, 0.25)
TARGET_SLACK = 0.10  # target: step-time ratio to full tokens <= keep ratio + 0.10 (ViT-B on GPU)


@dataclass(frozen=True)
class Setup:
    """One benchmarked model and clip geometry."""

    size: str
    num_frames: int
    image_size: int
    batch: int
    device: str
    spread: float = 0.3
    repeats: int = 7
    warmup: int = 1
    bf16: bool = False

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype attention sees (bf16 under autocast), which ``auto`` dispatches on."""
        return torch.bfloat16 if self.bf16 else torch.float32

    def model_config(self) -> ModelConfig:
        clip = ClipConfig(num_frames=self.num_frames, image_size=self.image_size)
        return ModelConfig(size=self.size, num_classes=100, clip=clip, drop_path=0.0)


SETUPS = {
    "cpu": [Setup("vit_tiny", 16, 112, 8, "cpu"), Setup("vit_s16", 16, 112, 8, "cpu", repeats=5)],
    "gpu": [Setup("vit_b16", 16, 224, 32, "cuda", repeats=5, warmup=3, bf16=True)],
}


def keep_masks(setup: Setup, ratio: float, seed: int = 0) -> torch.Tensor:
    """(B, N_t, N_h, N_w) keep masks with per-clip keep ratios spread around ``ratio``."""
    clip = setup.model_config().clip
    n = clip.num_tokens
    half_width = min(setup.spread * ratio, 1.0 - ratio)  # symmetric, so the mean stays at ratio
    ratios = ratio + half_width * torch.linspace(-1.0, 1.0, setup.batch)
    num_drop = ((1.0 - ratios) * n).round().long()
    energy = torch.zeros(setup.batch, *clip.grid)
    return random_keep(energy, num_drop, torch.Generator().manual_seed(seed))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def _reset_peak_rss() -> None:
    """Reset the kernel's peak resident set size (VmHWM) of this process (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


@dataclass
class Case:
    """One (keep ratio, path) configuration of a setup, ready to step."""

    ratio: float
    path: str
    backend: str
    keep: torch.Tensor | None  # None: the plain ViT (every token, no gather)
    kept: torch.Tensor  # per-clip keep ratio (B,)
    gflops: float  # mean analytic forward GFLOPs per clip


def build(setup: Setup, ratios: tuple[float, ...], attention: str):
    """Model, inputs and the cases (every ratio x packed/padded) of ``setup`` on its device."""
    torch.manual_seed(0)
    device = torch.device(setup.device)
    config = setup.model_config()
    model = VideoViT(config).to(device).train()
    video = torch.randn(setup.batch, 3, setup.num_frames, setup.image_size, setup.image_size, device=device)
    labels = torch.randint(0, config.num_classes, (setup.batch,), device=device)
    cases = []
    for ratio in ratios:
        keep = keep_masks(setup, ratio).to(device)
        kept = keep.flatten(1).float().mean(1).cpu()
        gflops = selection_flops(config, keep).double().mean().item() / 1e9
        for path in ("packed", "padded"):
            backend = "padded" if path == "padded" else resolve_attention(attention, device, setup.dtype).name
            plain = path == "padded" and bool(keep.all())
            cases.append(Case(ratio, path, backend, None if plain else keep, kept, gflops))
    return model, video, labels, cases


def make_step(setup: Setup, model: VideoViT, video: torch.Tensor, labels: torch.Tensor, case: Case):
    """One forward+backward step of ``case`` (synchronised on GPU)."""
    device = video.device

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.bf16):
            logits = model(video, case.keep, attention=case.backend)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def round_robin(setup: Setup, model, video, labels, cases: list[Case]) -> list[float]:
    """Best step seconds of every case, measured round-robin so all see the same machine load."""
    steps = [make_step(setup, model, video, labels, c) for c in cases]
    best = [float("inf")] * len(cases)
    for _ in range(setup.warmup):
        for step in steps:
            step()
    for _ in range(setup.repeats):
        for i, step in enumerate(steps):
            best[i] = min(best[i], best_time_s(step, repeats=1, warmup=0))
    return best


def time_cases(setup: Setup, ratios: tuple[float, ...], attention: str) -> dict[tuple[float, str], tuple[Case, float]]:
    """Best step seconds of every (ratio, path) case of ``setup``."""
    model, video, labels, cases = build(setup, ratios, attention)
    return {(c.ratio, c.path): (c, t) for c, t in zip(cases, round_robin(setup, model, video, labels, cases))}


def compare_backends(setup: Setup, ratios: tuple[float, ...]) -> str:
    """Step seconds of every packed attention backend that trains on the setup's device."""
    device = torch.device(setup.device)
    # dense_mask (the tests' reference) builds (L, L) scores over the whole batch's sequence: at ViT-B's 32 x 1568
    # tokens, 60 GB per layer on GPU; it is compared on CPU only
    names = [n for n, b in ATTENTION_BACKENDS.items() if b.layout == "packed" and b.unavailable(device) is None
             and b.supports(setup.dtype) and not (n == "dense_mask" and device.type == "cuda")]
    model, video, labels, cases = build(setup, ratios, "auto")
    packed = [c for c in cases if c.path == "packed"]
    failed = {}
    for name in names:  # a backend that cannot train this setup is reported, not fatal to the others
        try:
            make_step(setup, model, video, labels, replace(packed[0], backend=name))()
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    names = [n for n in names if n not in failed]
    runs = [replace(c, backend=name) for c in packed for name in names]
    best = round_robin(setup, model, video, labels, runs)
    per_case = [best[i : i + len(names)] for i in range(0, len(runs), len(names))]
    rows = [[f"{c.ratio:.2f}", *(f"{t:.3f}" for t in times)] for c, times in zip(packed, per_case)]
    auto = resolve_attention("auto", device, setup.dtype).name
    title = (f"Packed attention backends, **{setup.size}** (same clips and masks; s/step; `auto` picks `{auto}` "
             f"on {device.type}):")
    table = markdown_table(["keep ratio", *names], rows)
    table += "".join(f"\n\n`{n}` failed: {why}" for n, why in failed.items())
    print(title + "\n" + table + "\n", flush=True)
    return title + "\n\n" + table


def peak_memory_mib(setup: Setup, ratio: float, path: str, attention: str) -> float:
    """Peak step memory of one case, measured in this process (run it in a fresh one)."""
    model, video, labels, cases = build(setup, (ratio,), attention)
    step = make_step(setup, model, video, labels, next(c for c in cases if c.path == path))
    if video.is_cuda:
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    step()  # warm-up: gradients and allocator pools exist from here on, as in training
    before = _status_kib("VmRSS")
    _reset_peak_rss()
    step()
    return (_status_kib("VmHWM") - before) / 2**10


def isolated_peak_memory_mib(setup: Setup, ratio: float, path: str, attention: str) -> float:
    """:func:`peak_memory_mib` in a fresh Python process, so the peak belongs to this case alone."""
    args = json.dumps({"setup": asdict(setup), "ratio": ratio, "path": path, "attention": attention})
    # a fixed mmap threshold makes glibc return every large freed block to the kernel at once, so
    # resident memory follows the live tensors instead of what malloc keeps cached
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, __file__, "--worker", args], capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"memory worker failed for {setup} ratio {ratio} {path}:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def bench_setup(setup: Setup, ratios: tuple[float, ...], attention: str) -> str:
    """Time and measure every (ratio, path) of ``setup``; print and return a markdown table."""
    t0 = time.perf_counter()
    timed = time_cases(setup, ratios, attention)
    print(f"{setup.size}: timed {len(timed)} cases in {time.perf_counter() - t0:.0f} s", flush=True)
    memory = {key: isolated_peak_memory_mib(setup, *key, attention) for key in timed}
    full = timed[1.0, "padded"][1] if 1.0 in ratios else None
    gpu = torch.cuda.get_device_name(0) if setup.device == "cuda" else ""

    def mfu(case: Case, seconds: float) -> str:  # useful (kept-token) FLOPs of fwd + bwd over the bf16 peak
        value = model_flops_utilisation(3 * case.gflops * 1e9 * setup.batch, seconds, gpu) if gpu else None
        return "-" if value is None else f"{value:.0%}"

    rows = []
    for ratio in ratios:
        (packed, t_packed), (_, t_padded) = timed[ratio, "packed"], timed[ratio, "padded"]
        rows.append([
            f"{ratio:.2f}",
            f"{packed.kept.mean():.3f} / {packed.kept.max():.3f}",
            f"{packed.gflops:.2f}",
            f"{t_packed:.3f}",
            f"{t_padded:.3f}",
            f"{t_packed / full:.2f}" if full else "-",
            f"{t_padded / full:.2f}" if full else "-",
            f"{ratio + TARGET_SLACK:.2f}",
            f"{memory[ratio, 'packed']:.0f}",
            f"{memory[ratio, 'padded']:.0f}",
        ] + ([mfu(packed, t_packed), mfu(packed, t_padded)] if gpu else []))
    header = ["keep ratio", "kept mean / max", "GFLOPs/clip (fwd)", "packed s/step", "padded s/step",
              "packed / full", "padded / full", "target", "packed peak MiB", "padded peak MiB"]
    header += ["packed MFU", "padded MFU"] if gpu else []
    table = markdown_table(header, rows)
    backend = timed[ratios[0], "packed"][0].backend
    title = (f"**{setup.size}**, {setup.num_frames}x{setup.image_size}x{setup.image_size} clips, batch {setup.batch}, "
             f"{setup.device}{', bf16 autocast' if setup.bf16 else ''}; packed attention `{backend}`; "
             f"per-clip keep ratios spread up to +-{setup.spread:.0%} around the target; best of "
             f"{setup.repeats} round-robin rounds")
    print(title + "\n" + table + "\n", flush=True)
    return title + "\n\n" + table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", choices=sorted(SETUPS), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--attention", default="auto", help="packed-path attention backend (default: auto)")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(KEEP_RATIOS))
    parser.add_argument("--sizes", nargs="+", help="only these model sizes of the setup")
    parser.add_argument("--no-backends", action="store_true", help="skip the packed attention backend comparison")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        print(peak_memory_mib(Setup(**spec["setup"]), spec["ratio"], spec["path"], spec["attention"]))
        return
    setups = [s for s in SETUPS[args.setup] if not args.sizes or s.size in args.sizes]
    if args.setup == "gpu" and not torch.cuda.is_available():
        sys.exit("--setup gpu needs CUDA")
    tables = [bench_setup(s, tuple(args.ratios), args.attention) for s in setups]
    if not args.no_backends:
        tables.append(compare_backends(setups[-1], (1.0, 0.5)))
    load = os.getloadavg()[0]
    text = "\n\n".join([
        "## Model: step time and peak memory against keep ratio",
        f"`python benchmarks/bench_model.py --setup {args.setup}` on {machine_description()} "
        f"(load average {load:.1f} at the end of the run; other jobs may share the cores).",
        "One forward+backward step (cross-entropy, no optimizer step); best of several rounds in which every "
        "configuration takes one step in turn, after a warm-up round. "
        "*packed*: kept tokens of all clips in one sequence, block-diagonal attention. *padded*: clips padded "
        "to the longest kept sequence with a key-padding mask; at keep 1.0 it is the plain batched ViT, the "
        "full-token reference of the ratio columns. *target*: keep ratio + 0.10, the goal for ViT-B on GPU. "
        "GFLOPs: analytic forward FLOPs per clip (`lmft_core.model.flops`, 2 per multiply-add). "
        + ("*MFU*: model FLOPs utilisation, the kept tokens' forward and backward FLOPs (3x forward) per second "
           "over the GPU's dense bf16 peak (`lmft_core.benchmarking.BF16_PEAK_TFLOPS`); padding's wasted work is not "
           "counted. " if args.setup == "gpu" else "")
        + ("Peak memory: `torch.cuda.max_memory_allocated` above what was allocated before the first step."
           if args.setup == "gpu" else
           "Peak memory: a fresh process per configuration; after a warm-up step the kernel's peak resident "
           "memory (`VmHWM`, reset via `/proc/self/clear_refs`) is reset and one step is run; the table gives "
           "that peak minus the resident memory before the step, with glibc's mmap threshold fixed "
           "(`MALLOC_MMAP_THRESHOLD_=131072`) so freed tensors leave the resident set: activations and their "
           "gradients, not parameters, parameter gradients or inputs."),
        *tables,
    ])
    if not args.no_write:
        path = write_section("model" if args.setup == "cpu" else "model-gpu", text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
