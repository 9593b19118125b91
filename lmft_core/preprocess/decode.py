"""The decode task: a batch of manifest rows -> decoded clips and their motion energy (Ray Data CPU tasks).

Each Ray worker process keeps one isolated decoder child (:class:`~lmft_core.video.IsolatedDecoder`)
across tasks, so a decoder crash or hang costs one video. Videos that fail are left out of the
returned table and written to a rejects CSV with their reason. Every row and reject carries the
identity of the file it was made from (:mod:`lmft_core.preprocess.identity`), taken before decoding.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from lmft_core.config import ClipConfig
from lmft_core.energy import EnergyConfig
from lmft_core.files import atomic_write
from lmft_core.preprocess.identity import FileIdentity
from lmft_core.shards.format import DECODE_FIELDS, ENERGY_FIELDS, FRAME_FIELDS, IDENTITY_FIELDS, REJECT_COLUMNS, ROW_FIELDS, list_column, pack_frames
from lmft_core.video import DecodeError, IsolatedDecoder, one_line


class PreprocessError(RuntimeError):
    """The run failed as a whole (too many rejects, accounting mismatch, concurrent run)."""


def decoded_schema(energy: bool) -> pa.Schema:
    """Columns of the decode task's output: the row, the file's identity, decode facts, (energy), frames."""
    return pa.schema(ROW_FIELDS + IDENTITY_FIELDS + DECODE_FIELDS + (ENERGY_FIELDS if energy else []) + FRAME_FIELDS)


_DECODER: IsolatedDecoder | None = None


def _decoder(timeout_s: float) -> IsolatedDecoder:
    """The decoder child of this worker process (kept across tasks; Ray reuses worker processes)."""
    global _DECODER
    if _DECODER is None:
        _DECODER = IsolatedDecoder(timeout_s=timeout_s)
        atexit.register(_DECODER.close)
    _DECODER.timeout_s = timeout_s
    return _DECODER


def write_rejects_csv(rows: Sequence[dict], path: Path) -> None:
    """Reject records (:data:`REJECT_COLUMNS`) written atomically."""
    with atomic_write(path, newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=REJECT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def decode_batch(batch: pa.Table, clip: ClipConfig, timeout_s: float, rejects_dir: str | None,
                 energy: bool = True, energy_config: EnergyConfig = EnergyConfig()) -> pa.Table:
    """Decode the videos of a batch of manifest rows (and their motion energy when ``energy``, of the
    variant ``energy_config`` names).

    Failed videos are left out of the returned table and written to ``rejects_dir`` (a CSV named
    after the batch's video ids, so a retried task rewrites the same file) with their reason.
    """
    dec = _decoder(timeout_s)
    rows = batch.to_pylist()
    ok, clips, rejects = [], [], []
    for row in rows:
        try:
            identity = FileIdentity.of(row["path"]).columns()
        except OSError as e:  # says nothing about the video: tried again on the next run
            reason = f"The file cannot be read: check that it exists and its permissions. {one_line(e)}"
            rejects.append(row | {"reason": DecodeError(reason, transient=True).reason})
            continue
        try:
            clips.append(dec.decode(row["path"], clip.num_frames, clip.image_size))
            ok.append(row | identity)
        except DecodeError as e:
            rejects.append(row | identity | {"decoder": e.decoder, "reason": e.reason})
    if rejects:
        if rejects_dir is None:
            raise PreprocessError(f"{len(rejects)} video(s) failed to decode: {rejects}")
        name = hashlib.sha1("\n".join(r["video_id"] for r in rows).encode()).hexdigest()
        write_rejects_csv(rejects, Path(rejects_dir) / f"{name}.csv")
    cols = {f.name: [r[f.name] for r in ok] for f in ROW_FIELDS + IDENTITY_FIELDS}
    frames = [c.frames for c in clips]
    cols |= {
        "num_video_frames": [c.num_video_frames for c in clips],
        "frame_indices": list_column([c.frame_indices for c in clips], pa.int64()),
        "short_video": [c.short for c in clips],
        "decoder": [c.decoder for c in clips],
        "decode_note": [c.note for c in clips],
    }
    if energy:
        maps, notes = zip(*(energy_config.compute_noted(f, clip.tubelet, clip.patch) for f in frames)) if frames else ((), ())
        cols["energy"] = list_column(maps, pa.float32())
        cols["energy_shape"] = [list(clip.grid)] * len(ok)
        cols["energy_note"] = [n for (n,) in notes]
    cols["frames"] = pack_frames(frames)
    cols["frames_shape"] = [list(f.shape) for f in frames]
    return pa.table(cols, schema=decoded_schema(energy))
