"""The shard format: what a preprocessing output folder holds and how its columns pack arrays.

Read by training and prediction, written by preprocessing; this module imports neither Ray nor torch
nor CLIP. A preprocessing output folder (``<output>/<config hash>/``) holds::

    shards/*.parquet   one row per decoded clip (columns: :func:`shard_schema`)
    rejects.csv        :data:`REJECT_COLUMNS` for every video that could not be decoded
    metadata.json      classes, resolved config (clip geometry among it), schema_version, counts

and ``<output>/LATEST`` names the newest such folder (:func:`resolve_output`).

Array columns: ``energy`` (N_t, N_h, N_w) float32 flattened in C order with ``energy_shape``;
``frames`` the raw bytes of uint8 (T, S, S, 3) RGB with ``frames_shape``; ``clip_probs`` (K,) over the
metadata's class list; ``frame_indices`` (T,) int64.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
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
]
CLIP_FIELDS = [
    pa.field("clip_probs", pa.list_(pa.float32()), nullable=False),
    pa.field("pseudo_label", pa.int64(), nullable=False),
    pa.field("pseudo_confidence", pa.float32(), nullable=False),
]
FRAME_FIELDS = [
    pa.field("frames", pa.binary(), nullable=False),
    pa.field("frames_shape", pa.list_(pa.int64()), nullable=False),
]
ROW_SCHEMA = pa.schema(ROW_FIELDS)


def shard_schema(store_frames: bool = True) -> pa.Schema:
    """Columns of a shard row (one decoded clip); see the module docstring and the README's table."""
    return pa.schema(ROW_FIELDS + IDENTITY_FIELDS + DECODE_FIELDS + ENERGY_FIELDS + CLIP_FIELDS + (FRAME_FIELDS if store_frames else []))


def list_column(arrays: Sequence[np.ndarray], dtype: pa.DataType) -> pa.Array:
    """Same-typed arrays (any shapes) -> a list column of their flattened values."""
    flat = [np.asarray(a).ravel() for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, dtype))


def unpack_array(table: pa.Table, column: str, dtype: np.dtype | type) -> np.ndarray:
    """A list or binary column of same-shaped arrays -> one ndarray (B, *shape).

    ``column`` is ``energy`` (float32, shape from ``energy_shape``), ``frames`` (uint8, from
    ``frames_shape``), ``clip_probs`` (float32 (B, K)) or ``frame_indices`` (int64 (B, T)).
    """
    col = table.column(column).combine_chunks()
    n = len(col)
    if pa.types.is_binary(col.type):
        data = np.frombuffer(bytearray(b"".join(v.as_py() for v in col)), dtype=dtype) if n else np.zeros(0, dtype)
    else:
        data = col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    shape_col = f"{column}_shape"
    shape = tuple(table.column(shape_col)[0].as_py()) if shape_col in table.column_names and n else (-1,)
    return data.reshape(n, *shape)


def resolve_output(output: str | Path) -> Path:
    """The folder holding shards: ``output`` itself when it has metadata, else ``output/LATEST``'s."""
    output = Path(output)
    if (output / "metadata.json").is_file():
        return output
    latest = output / "LATEST"
    if latest.is_file():
        return output / latest.read_text().strip()
    raise FileNotFoundError(f"{output}: no preprocessing output (no metadata.json, no LATEST)")
