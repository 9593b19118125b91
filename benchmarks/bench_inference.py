"""Inference throughput of the two models that run after decoding: the zero-shot CLIP labeller of preprocessing
and the adapted classifier of prediction, in fp32 and under bf16 autocast.

    python benchmarks/bench_inference.py [--setup cpu | gpu] [--no-write]

Both take decoded clips, uint8 (B, T, S, S, 3) as the shards and the decoder give them (decoding stays on CPU
workers and is measured by ``bench_preprocess.py``), here seeded random clips and uniform random motion energies:

- **labeller**: :class:`lmft_core.pseudo_labels.ClipZeroShot` (seeded random weights; speed does not depend on
  them) over the clip's frames, the paper's ViT-B/16 on GPU;
- **classifier**: :meth:`lmft_core.model.classifier.LMFTClassifier.predict`, the call prediction's actors make
  (``lmft_core.predict.Predictor``), with full tokens and with LMFT at tau_hat (its policy set so tau_hat keeps
  about half the tokens).

Videos/s are the best of several timed batches after a warm-up (synchronised on GPU). bf16 is compared with
fp32 on the same clips: the largest class-probability difference and the share of clips whose argmax agrees.
Writes section ``inference`` (``inference-gpu``) of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from lmft_core.benchmarking import best_time_s, machine_description, markdown_table, write_section
from lmft_core.config import ClipConfig
from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.pseudo_labels import TINY_CLIP_MODEL, ClipZeroShot, PseudoLabelConfig

CLASSES = tuple(f"class {i}" for i in range(51))  # HMDB51's class count
KEEP = 0.5


@dataclass(frozen=True)
class Setup:
    device: str
    model: str  # classifier size
    image_size: int
    labeller: str  # open_clip model name
    batch: int
    repeats: int


SETUPS = {
    "cpu": Setup("cpu", "vit_tiny", 64, TINY_CLIP_MODEL, 8, 3),
    "gpu": Setup("cuda", "vit_b16", 224, "ViT-B-16-quickgelu", 32, 5),
}


def clips(setup: Setup, clip: ClipConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded uint8 clips (B, T, S, S, 3) and uniform energies (B, N_t, N_h, N_w)."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (setup.batch, clip.num_frames, clip.image_size, clip.image_size, 3), generator=g,
                           dtype=torch.uint8)
    return frames, torch.rand(setup.batch, *clip.grid, generator=g)


def timed(setup: Setup, fn) -> float:
    """Best seconds of ``fn()`` (synchronised on GPU)."""
    def call():
        fn()
        if setup.device == "cuda":
            torch.cuda.synchronize()

    return best_time_s(call, repeats=setup.repeats, warmup=2)


def agreement(p32: torch.Tensor, p16: torch.Tensor) -> tuple[float, float]:
    """Largest probability difference and the share of equal argmaxes of two (B, K) probability tables."""
    p32, p16 = torch.as_tensor(p32).float().cpu(), torch.as_tensor(p16).float().cpu()
    return float((p32 - p16).abs().max()), float((p32.argmax(1) == p16.argmax(1)).float().mean())


def labeller_rows(setup: Setup, frames: torch.Tensor) -> list[list[str]]:
    rows, probs = [], {}
    for precision in ("fp32", "bf16"):
        cfg = PseudoLabelConfig(model=setup.labeller, pretrained="", precision=precision)
        labeller = ClipZeroShot(cfg, CLASSES, setup.device)
        inputs = frames.to(setup.device)
        probs[precision] = torch.from_numpy(labeller.probs(inputs))
        seconds = timed(setup, lambda labeller=labeller: labeller.probs(inputs))
        rows.append([f"labeller {setup.labeller}", precision, "-", f"{setup.batch / seconds:.1f}",
                     f"{setup.batch * frames.shape[1] / seconds:.0f}"])
    diff, agree = agreement(probs["fp32"], probs["bf16"])
    rows[-1] += [f"{diff:.4f}", f"{agree:.0%}"]
    rows[0] += ["", ""]
    return rows


def classifier_rows(setup: Setup, clip: ClipConfig, frames: torch.Tensor, energy: torch.Tensor) -> list[list[str]]:
    # an unscaled head (head_init_scale 1): the fine-tuning scale 0.001 makes every probability 1/K, which
    # would hide what bf16 changes
    config = ModelConfig(size=setup.model, num_classes=len(CLASSES), clip=clip, drop_path=0.0, head_init_scale=1.0)
    first = 1 / clip.grid[0]  # tau_hat near the threshold keeping KEEP of uniform energies' tokens (first segment kept)
    tau = 1 - (KEEP - first) / (1 - first)
    policy = PolicyConfig(mu=math.log(tau / (1 - tau)), log_sigma=-5.0)
    rows = []
    for selector in ("full", "lmft"):
        torch.manual_seed(0)
        model = LMFTClassifier.build(config, policy, SelectorConfig(name=selector), CLASSES).to(setup.device)
        x, e = frames.to(setup.device), energy.to(setup.device)
        out = {}
        for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
            with torch.no_grad():
                out[name] = model.predict(x, e, amp_dtype=amp)
                seconds = timed(setup, lambda amp=amp: model.predict(x, e, amp_dtype=amp))
            keep = float(out[name]["keep_ratio"].mean())
            rows.append([f"classifier {setup.model}, {selector}", name, f"{keep:.2f}", f"{setup.batch / seconds:.1f}", "-"])
        diff, agree = agreement(out["fp32"]["probs"], out["bf16"]["probs"])
        rows[-2] += ["", ""]
        rows[-1] += [f"{diff:.4f}", f"{agree:.0%}"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setup", choices=sorted(SETUPS), default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    setup = SETUPS[args.setup]
    if setup.device == "cuda" and not torch.cuda.is_available():
        print("error: --setup gpu needs a CUDA device", file=sys.stderr)
        return 2
    clip = ClipConfig(num_frames=16, image_size=setup.image_size)
    frames, energy = clips(setup, clip)
    rows = labeller_rows(setup, frames) + classifier_rows(setup, clip, frames, energy)
    header = ["model", "precision", "keep ratio", "videos/s", "frames/s", "bf16: max prob diff", "bf16: same argmax"]
    table = markdown_table(header, rows)
    print(table, flush=True)
    if not args.no_write:
        write_section("inference" if args.setup == "cpu" else "inference-gpu", "\n\n".join([
            "## Inference: the CLIP labeller and the classifier after decoding (`benchmarks/bench_inference.py`)",
            f"`python benchmarks/bench_inference.py --setup {args.setup}` on {machine_description()}.",
            f"Batches of {setup.batch} decoded clips of 16x{setup.image_size}x{setup.image_size} (seeded random pixels, "
            f"uniform energies, {len(CLASSES)} classes), already in memory: decoding is not included "
            "(`bench_preprocess.py` measures it). *labeller*: `ClipZeroShot.probs` with seeded random weights, "
            "every frame of the clip. *classifier*: `LMFTClassifier.predict` (what prediction's actors call; seeded "
            "random weights, head unscaled so the probabilities differ between classes), full tokens and LMFT with "
            f"tau_hat set to keep about {KEEP:.0%} of the tokens. Best of {setup.repeats} batches "
            "after 2 warm-ups. *bf16* columns: against fp32 on the same clips.",
            table]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
