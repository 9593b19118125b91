"""Random, valid preprocessing outputs (shards of synthetic clips) for benchmarks that time training
without decoding videos."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmft_core.config import ClipConfig
from lmft_core.shards.format import SCHEMA_VERSION, SHARD_PARQUET_OPTIONS, list_column, pack_frames, shard_schema


def write_synthetic_shards(root: str | Path, clip: ClipConfig, classes: Sequence[str], counts: dict[tuple[str, str], int],
                           seed: int = 0, rows_per_file: int = 64) -> Path:
    """A valid preprocessing output (``root/<name>/`` with shards, metadata.json, rejects.csv and
    ``root/LATEST``) of random clips: frames (stored as the shards store them), energy uniform in [0, 1]
    with the first segment 1,
    random CLIP probabilities. ``counts`` gives the clips per (domain, split). For benchmarks that time
    training without decoding videos; the content carries no signal.
    """
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
