"""Ray Data's writer of shard files: :class:`ShardSink`, each write task's rows in one complete Parquet file.

Ray Data's own ``write_parquet`` writes a file in place, so a task that fails mid-write (a full disk) leaves part of
a file behind, and says only Arrow's "Error writing bytes to file". Here each file is written under a temporary
name and renamed when complete (:func:`~lmft_core.preprocess.store.write_shard`): a folder never holds part of a
shard, and a write that runs out of space is an ``OSError`` naming the shard, the bytes written and the space left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
from ray.data import Datasink
from ray.data.block import BlockAccessor

from lmft_core.preprocess.store import write_shard


class ShardSink(Datasink):
    """Shard files in ``folder``: one per write task, of at least ``min_rows`` rows (Ray Data bundles them; the last
    file may hold fewer), named ``<write id>-<task index>.parquet`` (the write id: unique per sink)."""

    def __init__(self, folder: str | Path, min_rows: int):
        self.folder, self.min_rows, self.write_id = str(folder), min_rows, uuid.uuid4().hex[:16]

    @property
    def min_rows_per_write(self) -> int:
        return self.min_rows

    def on_write_start(self, schema=None) -> None:
        Path(self.folder).mkdir(parents=True, exist_ok=True)

    def write(self, blocks: Iterable, ctx) -> None:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if tables:
            write_shard(pa.concat_tables(tables), Path(self.folder) / f"{self.write_id}-{ctx.task_idx:06d}.parquet")
