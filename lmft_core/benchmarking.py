"""Helpers for benchmark scripts: timing and writing results into ``docs/benchmarks.md``.

Each benchmark owns one section of ``docs/benchmarks.md`` between ``<!-- BEGIN name -->`` and
``<!-- END name -->`` markers, so scripts rewrite their own results and leave the others alone.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_description() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def best_time_s(fn: Callable[[], object], repeats: int = 3, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Best seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs, by ``clock`` (wall clock by
    default; ``time.process_time``: CPU time of this process, all its threads)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


BENCHMARKS_HEADER = "# Benchmarks\n\nWritten by the scripts in `benchmarks/`; rerun a script to refresh its section.\n"


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD, header: str = BENCHMARKS_HEADER) -> Path:
    """Replace (or append) the section ``name`` of ``path`` (``docs/benchmarks.md``) with ``markdown``;
    a new file starts with ``header``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else header
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_synthetic_shards(root: str | Path, clip, classes: Sequence[str], counts: dict[tuple[str, str], int],
                           seed: int = 0, rows_per_file: int = 64) -> Path:
    """A valid preprocessing output (``root/<name>/`` with shards, metadata.json, rejects.csv and
    ``root/LATEST``) of random clips: frames (stored as the shards store them), energy uniform in [0, 1]
    with the first segment 1,
    random CLIP probabilities. ``counts`` gives the clips per (domain, split). For benchmarks that time
    training without decoding videos; the content carries no signal.
    """
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmft_core.shard_format import SCHEMA_VERSION, SHARD_PARQUET_OPTIONS, list_column, pack_frames, shard_schema

    rng = np.random.default_rng(seed)
    out = Path(root) / f"synthetic-{clip.num_frames}x{clip.image_size}-p{clip.patch}-s{seed}"
    (out / "shards").mkdir(parents=True, exist_ok=True)
    rows = [(d, s) for (d, s), n in counts.items() for _ in range(n)]
    k, grid = len(classes), clip.grid
    for start in range(0, len(rows), rows_per_file):
        part = rows[start:start + rows_per_file]
        n = len(part)
        energy = rng.random((n, *grid), dtype=np.float32)
        energy[:, 0] = 1.0
        probs = rng.dirichlet(np.ones(k), n).astype(np.float32)
        labels = rng.integers(0, k, n)
        # smooth content (8 x 8 random colours upsampled, mild noise): JPEG costs what it costs on video frames
        cells = rng.integers(0, 256, (n, clip.num_frames, 8, 8, 3)).astype(np.float32)
        scale = clip.image_size // 8
        frames = np.repeat(np.repeat(cells, scale, axis=2), scale, axis=3)
        frames = np.clip(frames + rng.normal(0, 4, frames.shape), 0, 255).astype(np.uint8)
        table = pa.table({
            "video_id": [f"synthetic/{start + i}" for i in range(n)], "path": [""] * n,
            "domain": [d for d, _ in part], "split": [s for _, s in part],
            "label": [classes[y] for y in labels], "label_index": labels.astype(np.int64),
            "file_size": [0] * n, "file_mtime_ns": [0] * n, "file_sha256": [""] * n,
            "num_video_frames": [clip.num_frames] * n,
            "frame_indices": list_column([np.arange(clip.num_frames)] * n, pa.int64()),
            "short_video": [False] * n, "decoder": ["synthetic"] * n, "decode_note": [""] * n,
            "energy": list_column(list(energy), pa.float32()), "energy_shape": [list(grid)] * n, "energy_note": [""] * n,
            "clip_probs": list_column(list(probs), pa.float32()), "pseudo_label": probs.argmax(1).astype(np.int64),
            "pseudo_confidence": probs.max(1), "frames": pack_frames(list(frames)),
            "frames_shape": [list(frames.shape[1:])] * n,
        }, schema=shard_schema(True))
        pq.write_table(table, out / "shards" / f"part-{start // rows_per_file:05d}.parquet", **SHARD_PARQUET_OPTIONS)
    clip_dict = {"num_frames": clip.num_frames, "image_size": clip.image_size, "tubelet": clip.tubelet, "patch": clip.patch}
    metadata = {"schema_version": SCHEMA_VERSION, "config_hash": out.name, "classes": list(classes),
                "untrained_clip": True, "synthetic": True,
                "resolved_config": {"clip": clip_dict, "content": {"schema_version": SCHEMA_VERSION, "store_frames": True}}}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (out / "rejects.csv").write_text("video_id,path,domain,split,label,reason\n")
    (Path(root) / "LATEST").write_text(out.name + "\n")
    return out
