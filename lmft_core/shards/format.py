"""The shard format: what a preprocessing output folder holds and how its columns pack arrays.

Read by training and prediction, written by preprocessing; this module imports neither Ray nor torch
nor CLIP. A preprocessing output folder (``<output>/<config hash>/``) holds::

    shards/*.parquet   one row per decoded clip (columns: :func:`shard_schema`)
    rejects.csv        :data:`REJECT_COLUMNS` for every video that could not be decoded
    metadata.json      classes, resolved config (clip geometry among it), schema_version, counts

and ``<output>/LATEST`` names the newest such folder (:func:`resolve_output`).

Array columns: ``energy`` (N_t, N_h, N_w) float32 flattened in C order with ``energy_shape``;
``frames`` uint8 (T, S, S, 3) RGB with ``frames_shape``, stored as one JPEG per frame (:func:`pack_frames`:
quality 95, no chroma subsampling; chosen by the numbers in docs/benchmarks.md, section ``shards``: about
8x smaller than raw bytes, mean absolute pixel error below 1 of 255); ``clip_probs`` (K,) over the
metadata's class list; ``frame_indices`` (T,) int64. :func:`unpack_array` rebuilds any of them.
Shard files are written with :data:`SHARD_PARQUET_OPTIONS`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 3
# A reject: the manifest row, the identity of the file it was made from, the decoders that tried it, why.
REJECT_COLUMNS = ("video_id", "path", "domain", "split", "label", "file_size", "file_mtime_ns", "file_sha256", "decoder", "reason")

# Which version of the file a row was made from (lmft_core.preprocess.identity): size, modification time, sha256.
IDENTITY_FIELDS = [
    pa.field("file_size", pa.int64(), nullable=False),
    pa.field("file_mtime_ns", pa.int64(), nullable=False),
    pa.field("file_sha256", pa.string(), nullable=False),
]
ROW_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("label_index", pa.int64()),
]
DECODE_FIELDS = [
    pa.field("num_video_frames", pa.int64(), nullable=False),
    pa.field("frame_indices", pa.list_(pa.int64()), nullable=False),
    pa.field("short_video", pa.bool_(), nullable=False),
    pa.field("decoder", pa.string(), nullable=False),
    pa.field("decode_note", pa.string(), nullable=False),
]
ENERGY_FIELDS = [
    pa.field("energy", pa.list_(pa.float32()), nullable=False),
    pa.field("energy_shape", pa.list_(pa.int64()), nullable=False),
    # why a camera-compensated energy variant fell back to diff's energy for this clip; empty otherwise
    pa.field("energy_note", pa.string(), nullable=False),
]
CLIP_FIELDS = [
    pa.field("clip_probs", pa.list_(pa.float32()), nullable=False),
    pa.field("pseudo_label", pa.int64(), nullable=False),
    pa.field("pseudo_confidence", pa.float32(), nullable=False),
]
FRAME_FIELDS = [
    pa.field("frames", pa.list_(pa.binary()), nullable=False),  # one JPEG per frame
    pa.field("frames_shape", pa.list_(pa.int64()), nullable=False),
]
ROW_SCHEMA = pa.schema(ROW_FIELDS)
FRAMES_JPEG_QUALITY = 95
FRAMES_JPEG_SUBSAMPLING = "4:4:4"
# JPEG bytes do not compress further, and Parquet's codecs would cost read time for nothing.
SHARD_PARQUET_OPTIONS = {"compression": "none", "use_dictionary": False}


def shard_schema(store_frames: bool = True) -> pa.Schema:
    """Columns of a shard row (one decoded clip); see the module docstring and the table in docs/preprocessing.md."""
    return pa.schema(ROW_FIELDS + IDENTITY_FIELDS + DECODE_FIELDS + ENERGY_FIELDS + CLIP_FIELDS + (FRAME_FIELDS if store_frames else []))


def list_column(arrays: Sequence[np.ndarray], dtype: pa.DataType) -> pa.Array:
    """Same-typed arrays (any shapes) -> a list column of their flattened values."""
    flat = [np.asarray(a).ravel() for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, dtype))


def pack_frames(clips: Sequence[np.ndarray], quality: int = FRAMES_JPEG_QUALITY,
                subsampling: str = FRAMES_JPEG_SUBSAMPLING) -> pa.Array:
    """uint8 RGB clips, each (T, S, S, 3) -> the ``frames`` column: list<binary>, one JPEG per frame."""
    from PIL import Image

    def jpeg(frame: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
        return buf.getvalue()

    return pa.array([[jpeg(frame) for frame in clip] for clip in clips], pa.list_(pa.binary()))


def _unpack_jpeg_frames(col: pa.ListArray, shape: tuple[int, ...]) -> np.ndarray:
    """A ``frames`` column (list<binary>, one JPEG per frame) -> uint8 (B, *shape)."""
    from PIL import Image

    lengths = np.diff(col.offsets.to_numpy())
    if (lengths != shape[0]).any():
        raise ValueError(f"frames: rows hold {sorted(set(lengths.tolist()))} frames, frames_shape says {shape[0]}")
    out = np.empty((len(col), *shape), np.uint8)
    flat = out.reshape(-1, *shape[1:])
    for k, data in enumerate(col.flatten().to_pylist()):
        image = Image.open(io.BytesIO(data))
        flat[k] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    return out


def unpack_array(table: pa.Table, column: str, dtype: np.dtype | type) -> np.ndarray:
    """A list column of same-shaped arrays -> one ndarray (B, *shape).

    ``column`` is ``energy`` (float32, shape from ``energy_shape``), ``frames`` (uint8 (B, T, S, S, 3), from
    ``frames_shape``; its JPEGs decoded), ``clip_probs`` (float32 (B, K)) or ``frame_indices`` (int64 (B, T)).
    """
    col = table.column(column).combine_chunks()
    n = len(col)
    shape_col = f"{column}_shape"
    shape = tuple(table.column(shape_col)[0].as_py()) if shape_col in table.column_names and n else (-1,)
    if pa.types.is_binary(col.type.value_type):
        return _unpack_jpeg_frames(col, shape).astype(dtype, copy=False)
    return col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, *shape)


def resolve_output(output: str | Path) -> Path:
    """The folder holding shards: ``output`` itself when it has metadata, else ``output/LATEST``'s."""
    output = Path(output)
    if (output / "metadata.json").is_file():
        return output
    latest = output / "LATEST"
    if latest.is_file():
        return output / latest.read_text().strip()
    raise FileNotFoundError(f"{output}: no preprocessing output (no metadata.json, no LATEST)")
