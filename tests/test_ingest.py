"""Memory ingest (``train.ingest = "memory"``): batches indexed from frames decoded once equal the rows decoded
batch by batch (the slow reference), ranks split each epoch's permutation, and ``auto`` picks by size."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.shards.reader import BATCH_COLUMNS, ShardSet, batch_from_table
from lmft_core.shards.synthetic import write_synthetic_shards
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.loop import MemoryEpochData

CLIP = ClipConfig(num_frames=4, image_size=16, patch=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> ShardSet:
    root = write_synthetic_shards(tmp_path_factory.mktemp("ingest"), CLIP, ("a", "b", "c"),
                                  {("source", "train"): 23, ("target", "train"): 17, ("target", "test"): 2})
    return ShardSet.open(root)


def test_memory_batches_equal_the_rows_decoded_batch_by_batch(shards):
    bs, seed, world = 3, 5, 2
    tables = [shards.read(d, "train", BATCH_COLUMNS) for d in ("source", "target")]
    for rank in range(world):
        data = MemoryEpochData(shards, bs, seed, Dist(rank, world))
        for epoch in (0, 1):
            for stream, table in enumerate(tables):
                n = table.num_rows
                order = np.random.default_rng([seed, epoch, stream]).permutation(n)
                mine = order[rank * (n // world):(rank + 1) * (n // world)]
                expected = [batch_from_table(table.take(pa.array(mine[i:i + bs])))
                            for i in range(0, len(mine) - bs + 1, bs)]
                got = list(data.batches(epoch, stream))
                assert len(got) == len(expected) == (n // world) // bs
                for g, e in zip(got, expected):
                    for k, v in e.as_tensors().items():
                        assert torch.equal(g.as_tensors()[k], v), k


def test_ranks_take_disjoint_rows_and_epochs_reshuffle(shards):
    keys = [{int(k) for b in MemoryEpochData(shards, 1, 0, Dist(r, 2)).batches(0, 0) for k in b.key} for r in range(2)]
    assert not keys[0] & keys[1] and len(keys[0]) == len(keys[1]) == 23 // 2
    data = MemoryEpochData(shards, 23, 0)
    first, second = (next(data.batches(e, 0)).key.tolist() for e in (0, 1))
    assert sorted(first) == sorted(second) and first != second
    fixed = MemoryEpochData(shards, 23, 0, shuffle=False)
    assert next(fixed.batches(0, 0)).key.tolist() == next(fixed.batches(1, 0)).key.tolist()


def test_auto_ingest_is_memory_when_the_decoded_splits_fit():
    cfg = TrainConfig(materialize_max_mb=100)
    assert cfg.resolve_ingest(100.0).ingest == "memory"
    assert cfg.resolve_ingest(100.5).ingest == "ray_data"
    assert TrainConfig(ingest="ray_data").resolve_ingest(1.0).ingest == "ray_data"
    assert TrainConfig(ingest="memory").resolve_ingest(1e9).ingest == "memory"
    with pytest.raises(ConfigError, match="train.ingest"):
        TrainConfig(ingest="disk")
