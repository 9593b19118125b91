"""Reading a preprocessing output: what training and prediction import (no Ray Data preprocessing, no CLIP).

:class:`ShardSet` opens an output folder (``<output>/<hash>/`` or ``<output>`` with its ``LATEST``),
reads ``metadata.json`` (classes, clip geometry, schema version: an unknown version is an error) and
gives the rows of one ``(domain, split)`` as a pyarrow table (:meth:`ShardSet.read`) or a lazy Ray
Dataset (:meth:`ShardSet.dataset`). :func:`batch_from_table` and :func:`read_batches` turn rows into
:class:`~lmft_core.shards.batch.ClipBatch` tensors (frames uint8 ``(B, T, S, S, 3)`` as stored, motion
energy ``(B, N_t, N_h, N_w)``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from lmft_core.config import ClipConfig
from lmft_core.shards.batch import ClipBatch
from lmft_core.shards.format import SCHEMA_VERSION, resolve_output, unpack_array

# The columns a training or evaluation batch needs (the binary frames are decoded by ShardCollate).
BATCH_COLUMNS = ("label_index", "energy", "energy_shape", "clip_probs", "pseudo_label", "pseudo_confidence",
                 "frames", "frames_shape", "video_id")


def video_key(video_id: str) -> int:
    """A stable int64 key (>= 0) of a ``video_id``: the first 8 bytes of its BLAKE2b hash, top bit cleared.

    Batches carry it as :attr:`ClipBatch.key`, so per-clip state kept outside the shards (the self-training
    labels, :mod:`lmft_core.train.pseudo`) is looked up by the clip's identity whatever order, split over
    workers or shuffle the rows arrive in. The same id gives the same key in every process and run.
    """
    return int.from_bytes(hashlib.blake2b(video_id.encode("utf-8"), digest_size=8).digest(), "little") & (2**63 - 1)


class ShardError(ValueError):
    """A preprocessing output cannot be used as asked; the message names the folder and field."""


@dataclass(frozen=True)
class ShardSet:
    """An opened preprocessing output folder (see :mod:`lmft_core.shards.format` for its layout)."""

    root: Path
    metadata: dict
    classes: tuple[str, ...]
    clip: ClipConfig
    files: tuple[Path, ...]

    @classmethod
    def open(cls, path: str | Path) -> ShardSet:
        """Open ``path``: a folder with ``metadata.json``, or a preprocessing output root with ``LATEST``."""
        try:
            root = resolve_output(path).resolve()
        except FileNotFoundError as e:
            raise ShardError(str(e)) from None
        meta_path = root / "metadata.json"
        try:
            metadata = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ShardError(f"{meta_path}: cannot read the preprocessing metadata: {e}") from None
        version = metadata.get("schema_version", metadata.get("resolved_config", {}).get("content", {}).get("schema_version"))
        if version != SCHEMA_VERSION:
            raise ShardError(f"{meta_path}: shard schema version {version!r}, this lmft reads version {SCHEMA_VERSION}; "
                             "preprocess the manifest again with this version")
        try:
            clip = ClipConfig(**metadata["resolved_config"]["clip"])
            classes = tuple(metadata["classes"])
        except (KeyError, TypeError) as e:
            raise ShardError(f"{meta_path}: metadata lacks {e}") from None
        files = tuple(sorted((root / "shards").glob("*.parquet")))
        if not files:
            raise ShardError(f"{root}: no shard files in shards/")
        if not metadata.get("resolved_config", {}).get("content", {}).get("store_frames", True):
            raise ShardError(f"{root}: preprocessed with store_frames=false: training needs the frames in the shards")
        return cls(root=root, metadata=metadata, classes=classes, clip=clip, files=files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def check_geometry(self, clip: ClipConfig) -> None:
        """Raise :class:`ShardError` naming every ``[clip]`` field where the profile and the shards differ."""
        diffs = [f"clip.{f.name}: profile {getattr(clip, f.name)}, shards {getattr(self.clip, f.name)}"
                 for f in fields(ClipConfig) if getattr(clip, f.name) != getattr(self.clip, f.name)]
        if diffs:
            raise ShardError(f"{self.root}: the profile's clip geometry differs from the shards' ("
                             + "; ".join(diffs) + "): preprocess with this profile, or set the profile's [clip] to the shards'")

    def _filter(self, domain: str, split: str) -> pads.Expression:
        return (pads.field("domain") == domain) & (pads.field("split") == split)

    def read(self, domain: str, split: str, columns: Sequence[str] | None = None) -> pa.Table:
        """Rows of ``(domain, split)`` in file order as one table (for data that fits in memory)."""
        ds = pads.dataset([str(f) for f in self.files], format="parquet")
        return ds.to_table(columns=list(columns) if columns else None, filter=self._filter(domain, split))

    def counts(self) -> dict[tuple[str, str], int]:
        """Rows per ``(domain, split)``."""
        t = pads.dataset([str(f) for f in self.files], format="parquet").to_table(columns=["domain", "split"])
        keys = zip(t.column("domain").to_pylist(), t.column("split").to_pylist())
        out: dict[tuple[str, str], int] = {}
        for key in keys:
            out[key] = out.get(key, 0) + 1
        return out

    def require(self, domain: str, split: str, what: str) -> int:
        """Row count of ``(domain, split)``; a :class:`ShardError` saying ``what`` needs it when there is none."""
        n = self.counts().get((domain, split), 0)
        if n == 0:
            raise ShardError(f"{self.root}: no {domain}-{split} clips in the shards, and {what} needs them")
        return n

    def dataset(self, domain: str, split: str, columns: Sequence[str] = BATCH_COLUMNS, num_cpus: float | None = None):
        """A lazy Ray Dataset of ``(domain, split)`` rows with ``columns`` (the filter is pushed to the scan);
        ``num_cpus`` per read task (default: Ray Data's, one)."""
        import ray.data
        from ray.data.expressions import col, lit

        ds = ray.data.read_parquet([str(f) for f in self.files], num_cpus=num_cpus)
        return ds.filter(expr=(col("domain") == lit(domain)) & (col("split") == lit(split))).select_columns(list(columns))


def batch_from_table(table: pa.Table) -> ClipBatch:
    """Shard rows (with :data:`BATCH_COLUMNS`) -> a CPU :class:`ClipBatch`."""
    def column(name: str, dtype) -> torch.Tensor:  # a writable copy (Arrow's zero-copy arrays are read-only)
        return torch.from_numpy(np.array(table.column(name).fill_null(-1).to_numpy(zero_copy_only=False), dtype=dtype))

    return ClipBatch(
        frames=torch.from_numpy(unpack_array(table, "frames", np.uint8)),
        energy=torch.from_numpy(np.array(unpack_array(table, "energy", np.float32))),
        label=column("label_index", np.int64), pseudo_label=column("pseudo_label", np.int64),
        pseudo_confidence=column("pseudo_confidence", np.float32),
        clip_probs=torch.from_numpy(np.array(unpack_array(table, "clip_probs", np.float32))),
        key=torch.tensor([video_key(v) for v in table.column("video_id").to_pylist()], dtype=torch.int64),
    )


def read_batches(shards: ShardSet, domain: str, split: str, batch_size: int,
                 video_ids: Sequence[str] | None = None) -> Iterator[ClipBatch]:
    """Batches of ``(domain, split)`` rows (only those of ``video_ids`` when given) read straight from the
    Parquet files in file order, all of ``batch_size`` clips but the last (evaluation, self-training labels)."""
    ds = pads.dataset([str(f) for f in shards.files], format="parquet")
    flt = shards._filter(domain, split)
    if video_ids is not None:
        if not video_ids:
            return
        flt = flt & pads.field("video_id").isin(list(video_ids))
    pending: list[pa.RecordBatch] = []
    rows = 0
    for rb in ds.to_batches(columns=list(BATCH_COLUMNS), filter=flt, batch_size=batch_size):
        pending.append(rb)
        rows += rb.num_rows
        while rows >= batch_size:
            table = pa.Table.from_batches(pending)
            yield batch_from_table(table.slice(0, batch_size))
            rest = table.slice(batch_size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield batch_from_table(pa.Table.from_batches(pending))
