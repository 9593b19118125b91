"""Shard storage at paper geometry: bytes per clip on disk and read rate, for frame layouts, against what training consumes.

    python benchmarks/bench_shards.py [--videos DIR ...] [--repeats 5] [--no-write]

A stored clip is 16 x 224 x 224 x 3 uint8 frames (2.41 MB raw). Clips come from real videos (the decodable
files of ../shared/videos with at least 64 frames, plus any ``--videos`` folders), decoded as preprocessing
does, 4 clips per video (every 4th of 64 sampled frames). Each layout writes the clips into one Parquet file
the way preprocessing writes shards, then it is read back on one core (pyarrow with one thread, one torch
thread) into uint8 tensors (B, 16, 224, 224, 3): ``frames`` column -> numpy -> ``torch.from_numpy``, best of
``--repeats`` reads from the page cache (a read from disk adds the storage's time for the bytes on disk).

Layouts: the frames column as raw bytes with Parquet's snappy (what shards used until now), uncompressed, or
zstd (levels 1 and 3, Parquet column compression); or each frame as a JPEG (Pillow / libjpeg-turbo, 4:2:0) at
quality 95 and 90, with the pixel error against the raw frames. The consumption side: a GPU estimate from
the model's analytic FLOPs (:func:`lmft_core.model.clip_flops`) and the CPU training rates measured in the
``model`` section of docs/benchmarks.md. Writes section ``shards`` of docs/benchmarks.md, including the disk
size of UCF-HMDB_full and Daily-DA at paper geometry in the chosen layout.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.shards.format import FRAMES_JPEG_QUALITY, FRAMES_JPEG_SUBSAMPLING, SHARD_PARQUET_OPTIONS, pack_frames, unpack_array
from lmft_core.video import decode_clip

REAL_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
T, S = 16, 224
CLIPS_PER_VIDEO = 4
# Clips per benchmark (train + test lists of each domain): UCF-HMDB_full from TA3N's lists (UCF101 1,438 + 571,
# HMDB51 840 + 360; the same counts as ATCoN's ucf101_hmdb51_*_da.txt / hmdb51_ucf101_*_da.txt); Daily-DA from
# ATCoN's dataset/*/raw/list_cvt/*_msda_{train,test}.txt.
UCF_HMDB = {"ucf101": 1438 + 571, "hmdb51": 840 + 360}
DAILY_DA = {"arid": 2776 + 1289, "hmdb51": 560 + 240, "mit": 4000 + 400, "kinetics": 8959 + 725}
# GPU estimate: H100 SXM dense bf16 peak, and the fraction of it a ViT-B training step achieves (assumed).
H100_BF16_FLOPS = 989e12
MFU = (0.2, 0.4)
STEP_OVER_FORWARD = 3.0


@dataclass(frozen=True)
class Layout:
    name: str
    encode: Callable[[np.ndarray], pa.Table]  # uint8 (B, T, S, S, 3) -> table
    decode: Callable[[pa.Table], np.ndarray]  # table -> uint8 (B, T, S, S, 3)
    parquet: dict  # pq.write_table options


def raw_table(clips: np.ndarray) -> pa.Table:
    return pa.table({"frames": [c.tobytes() for c in clips], "frames_shape": [list(c.shape) for c in clips]})


def raw_frames(table: pa.Table) -> np.ndarray:
    """The binary column's bytes as one array, copied once out of Arrow's buffer (the fastest way to a writable array)."""
    col = table.column("frames").combine_chunks()
    offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset: col.offset + len(col) + 1]
    data = np.frombuffer(col.buffers()[2], np.uint8)[offsets[0]: offsets[-1]].copy()
    return data.reshape(len(col), *table.column("frames_shape")[0].as_py())


def jpeg_layout(quality: int, subsampling: str) -> Layout:
    def encode(clips: np.ndarray) -> pa.Table:
        return pa.table({"frames": pack_frames(clips, quality, subsampling), "frames_shape": [list(c.shape) for c in clips]})

    return Layout(f"JPEG q{quality} {subsampling} per frame", encode, lambda t: unpack_array(t, "frames", np.uint8),
                  SHARD_PARQUET_OPTIONS)


CHOSEN = jpeg_layout(FRAMES_JPEG_QUALITY, FRAMES_JPEG_SUBSAMPLING)  # what lmft_core.shards.format writes
RAW = Layout("raw bytes, uncompressed", raw_table, raw_frames, {"compression": "none", "use_dictionary": False})
LAYOUTS = [
    Layout("raw bytes, snappy (shards until now)", raw_table, raw_frames, {"compression": "snappy"}),
    RAW,
    Layout("raw bytes, zstd level 1", raw_table, raw_frames, {"compression": "zstd", "compression_level": 1, "use_dictionary": False}),
    Layout("raw bytes, zstd level 3", raw_table, raw_frames, {"compression": "zstd", "compression_level": 3, "use_dictionary": False}),
    CHOSEN,
    jpeg_layout(95, "4:2:0"),
    jpeg_layout(90, "4:2:0"),
]


def real_clips(folders: list[Path]) -> tuple[np.ndarray, int]:
    """uint8 (N, T, S, S, 3) clips of the real videos with at least T * CLIPS_PER_VIDEO frames; number of videos."""
    clips, videos = [], 0
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".md"):
            try:
                clip = decode_clip(str(path), T * CLIPS_PER_VIDEO, S)
            except Exception:  # noqa: BLE001 - broken files are the reliability run's business
                continue
            if clip.short or clip.note:
                continue
            clips += [clip.frames[k::CLIPS_PER_VIDEO] for k in range(CLIPS_PER_VIDEO)]
            videos += 1
    return np.stack(clips), videos


def measure(clips: np.ndarray, folder: Path, repeats: int) -> dict[str, dict]:
    """Per layout: bytes per clip, read clips/s (best of ``repeats`` rounds in which every layout reads once in
    turn, after a warm-up round, so that a busy moment of the machine hits all layouts alike), encode clips/s,
    pixel error."""
    import torch

    results, paths = {}, {}
    for k, layout in enumerate(LAYOUTS):
        t0 = time.perf_counter()
        table = layout.encode(clips)
        results[layout.name] = {"encode_clips_s": len(clips) / (time.perf_counter() - t0), "read_s": float("inf")}
        paths[layout.name] = folder / f"layout{k}.parquet"
        pq.write_table(table, paths[layout.name], **layout.parquet)
    for round_ in range(repeats + 1):
        for layout in LAYOUTS:
            t0 = time.perf_counter()
            read = pq.read_table(paths[layout.name], columns=["frames", "frames_shape"], use_threads=False)
            tensor = torch.from_numpy(layout.decode(read))
            if round_:
                results[layout.name]["read_s"] = min(results[layout.name]["read_s"], time.perf_counter() - t0)
            assert tensor.shape == clips.shape and tensor.dtype == torch.uint8
            error = np.abs(tensor.numpy().astype(np.int16) - clips)
            mse = float(np.mean(error.astype(np.float64) ** 2))
            results[layout.name] |= {"mean_abs": float(error.mean()), "max_abs": int(error.max()),
                                     "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)}
    for layout in LAYOUTS:
        r = results[layout.name]
        r |= {"bytes_per_clip": paths[layout.name].stat().st_size / len(clips), "read_clips_s": len(clips) / r["read_s"]}
        print(layout.name, r, flush=True)
    return results


def gpu_rows() -> list[list]:
    """Clips/s one H100 consumes in training at each keep ratio (estimate), ViT-B/16, 16x224x224."""
    from lmft_core.model import ModelConfig, clip_flops

    config = ModelConfig(size="vit_b16", num_classes=12)
    tokens = config.clip.num_tokens
    rows = []
    for keep in (1.0, 0.75, 0.5, 0.25):
        forward = clip_flops(config, round(keep * tokens))
        rates = [mfu * H100_BF16_FLOPS / (STEP_OVER_FORWARD * forward) for mfu in MFU]
        rows.append([f"{keep:.2f}", forward / 1e9, *rates])
    return rows


def cpu_training_rates() -> str:
    """The packed CPU training rates of the ``model`` section of docs/benchmarks.md, as clips/s (batch / s per step)."""
    from lmft_core.benchmarking import BENCHMARKS_MD

    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    if "<!-- BEGIN model -->" not in text:
        return "the `model` section of docs/benchmarks.md is not written yet"
    section = text.split("<!-- BEGIN model -->", 1)[1].split("<!-- END model -->", 1)[0]
    rates = []
    for name, clip, batch, table in re.findall(r"\*\*(vit_\w+)\*\*, (\S+) clips, batch (\d+)[^\n]*\n\n((?:\|[^\n]*\n)+)", section):
        for row in table.splitlines()[2:]:
            keep, _, _, packed_s = (c.strip() for c in row.strip("|").split("|")[:4])
            if keep in ("1.00", "0.25"):
                rates.append(f"{name} ({clip}) keep {keep}: {int(batch) / float(packed_s):.1f} clips/s")
    return "; ".join(rates) or "no table found in the `model` section"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, nargs="*", default=[], help="more folders of real videos")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    clips, videos = real_clips([REAL_VIDEOS, *args.videos])
    raw_mb = clips[0].nbytes / 1e6
    print(f"{len(clips)} clips from {videos} videos, {raw_mb:.2f} MB each raw", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(clips, Path(tmp), args.repeats)
    rows = [[name, r["bytes_per_clip"] / 1e6, f"{r['bytes_per_clip'] / clips[0].nbytes:.2f}", r["read_clips_s"],
             r["read_clips_s"] * r["bytes_per_clip"] / 1e6, r["encode_clips_s"],
             "exact" if r["max_abs"] == 0 else f"{r['mean_abs']:.2f} / {r['max_abs']} / {r['psnr_db']:.1f} dB"]
            for name, r in results.items()]
    chosen = CHOSEN
    per_clip = results[chosen.name]["bytes_per_clip"]
    gpu = gpu_rows()

    def gb(n: int) -> str:
        return f"{n * per_clip / 1e9:.1f} GB"

    daily_pairs = [(a, b) for a in DAILY_DA for b in DAILY_DA if a != b]
    disk_rows = [
        ["UCF-HMDB_full", "one direction (both data sets)", sum(UCF_HMDB.values()), gb(sum(UCF_HMDB.values()))],
        ["UCF-HMDB_full", "both directions", 2 * sum(UCF_HMDB.values()), gb(2 * sum(UCF_HMDB.values()))],
        ["Daily-DA", "one direction: smallest (hmdb51 <-> arid) / largest (mit <-> kinetics)",
         f"{min(DAILY_DA[a] + DAILY_DA[b] for a, b in daily_pairs)} / {max(DAILY_DA[a] + DAILY_DA[b] for a, b in daily_pairs)}",
         f"{gb(min(DAILY_DA[a] + DAILY_DA[b] for a, b in daily_pairs))} / {gb(max(DAILY_DA[a] + DAILY_DA[b] for a, b in daily_pairs))}"],
        ["Daily-DA", "all 12 directions (each domain in 6)", 6 * sum(DAILY_DA.values()), gb(6 * sum(DAILY_DA.values()))],
    ]
    raw = results[RAW.name]

    def feed(r: dict, rate: float) -> str:
        return f"{rate / r['read_clips_s']:.1f} cores, {rate * r['bytes_per_clip'] / 1e9:.2f} GB/s"

    slow, fast = gpu[0][2], gpu[-1][3]  # full tokens at the low MFU; keep 0.25 at the high MFU
    feed_rows = [[name, feed(r, slow), feed(r, fast)] for name, r in ((RAW.name, raw), (chosen.name, results[chosen.name]))]
    md = "\n\n".join([
        "## Shard storage at paper geometry (`benchmarks/bench_shards.py`)",
        f"Machine: {machine_description()}. {len(clips)} clips of 16x224x224x3 ({raw_mb:.2f} MB raw) from {videos} real "
        f"videos ({CLIPS_PER_VIDEO} per video). Read: one core (pyarrow one thread, torch one thread), Parquet file -> uint8 "
        f"tensor (B, 16, 224, 224, 3), best of {args.repeats} round-robin reads from the page cache (from disk, add the storage's time "
        "for the bytes on disk). Encode: what preprocessing adds per clip to store it. Pixel error against the raw "
        "frames: mean / max absolute error (0-255) / PSNR. On a shared machine other jobs can slow single rows.",
        markdown_table(["frames layout", "MB/clip on disk", "of raw", "read clips/s (1 core)", "read MB/s from disk",
                        "encode clips/s (1 core)", "pixel error"], rows),
        "What one GPU consumes in training (ESTIMATE, no GPU measured): ViT-B/16 on 16x224x224 clips, training step "
        f"= {STEP_OVER_FORWARD:g} x the analytic forward FLOPs (`lmft_core.model.clip_flops`), H100 SXM dense bf16 peak "
        f"{H100_BF16_FLOPS / 1e12:.0f} TFLOP/s at an assumed {MFU[0]:.0%} and {MFU[1]:.0%} model FLOPs utilisation; "
        "LMFT's packed tokens make a step cost about its keep ratio:",
        markdown_table(["keep ratio", "GFLOPs/clip (fwd)", f"clips/s at {MFU[0]:.0%} MFU", f"clips/s at {MFU[1]:.0%} MFU"], gpu),
        f"Measured CPU training here (`model` section): {cpu_training_rates()}; any layout above feeds that from one core.",
        "Feeding one GPU at the lowest and the highest estimate: reader cores (at the rates measured here) and bytes/s "
        "from storage:",
        markdown_table(["frames layout", f"{slow:.0f} clips/s (keep 1.00, {MFU[0]:.0%} MFU)",
                        f"{fast:.0f} clips/s (keep 0.25, {MFU[1]:.0%} MFU)"], feed_rows),
        f"Chosen layout: **{chosen.name}** (`lmft_core.shards.format.pack_frames`), by these numbers: "
        f"{raw['bytes_per_clip'] / per_clip:.1f}x less disk and storage bandwidth than raw bytes, for "
        f"{raw['read_clips_s'] / results[chosen.name]['read_clips_s']:.1f}x the reader CPU, at a mean pixel error of "
        f"{results[chosen.name]['mean_abs']:.2f} of 255 (PSNR {results[chosen.name]['psnr_db']:.0f} dB). Training reads the shards every "
        f"epoch, on a cluster from storage every node shares: at the highest estimate raw bytes need "
        f"{fast * raw['bytes_per_clip'] / 1e9:.1f} GB/s per GPU from it, JPEG {fast * per_clip / 1e9:.1f} GB/s and "
        f"{fast / results[chosen.name]['read_clips_s']:.0f} reader cores (an 8-GPU H100 server such as a DGX H100 has 14 "
        "CPU cores per GPU). No chroma subsampling: 4:2:0 saves little and its colour edges err far more (max error "
        "above). Raw bytes read cheapest where the shards fit a machine's page cache and CPUs are scarce; zstd and "
        "snappy shrink raw frames too little and read slower. Disk at paper "
        "geometry in the chosen layout (each direction is its own preprocessing output: the manifest is part of its "
        "identity):",
        markdown_table(["benchmark", "what", "clips", "disk"], disk_rows),
    ])
    print(md)
    if not args.no_write:
        print(f"wrote {write_section('shards', md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
