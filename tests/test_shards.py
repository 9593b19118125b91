"""Reading preprocessing output for training: metadata checks, typed batches, the Ray collate path."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from lmft_core.config import ClipConfig
from lmft_core.shards.batch import IMAGENET_MEAN, IMAGENET_STD
from lmft_core.shards.format import SCHEMA_VERSION, unpack_array
from lmft_core.shards.reader import BATCH_COLUMNS, ShardError, ShardSet, batch_from_table


def test_reader_imports_neither_preprocessing_nor_clip_nor_ray():
    code = ("import sys, lmft_core.shards.reader; "
            "print(sorted(m for m in ('lmft_core.preprocess', 'open_clip', 'lmft_core.pseudo_labels', 'ray') if m in sys.modules))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_open_metadata_splits_and_typed_batches(tiny_shards):
    shards = ShardSet.open(tiny_shards)
    assert shards.clip == ClipConfig(num_frames=8, image_size=32, tubelet=2, patch=8)
    assert shards.classes == ("jump", "walk", "wave") and shards.num_classes == 3
    assert shards.counts() == {("source", "train"): 9, ("source", "val"): 3, ("target", "train"): 6, ("target", "test"): 6}
    table = shards.read("target", "test", BATCH_COLUMNS)
    b = batch_from_table(table)
    assert b.frames.dtype == torch.uint8 and b.frames.shape == (6, 8, 32, 32, 3)
    assert b.energy.shape == (6, 4, 4, 4) and b.clip_probs.shape == (6, 3)
    assert b.label.tolist() == table.column("label_index").to_pylist()
    np.testing.assert_array_equal(b.frames.numpy(), unpack_array(table, "frames", np.uint8))
    # model input: naive per-element normalisation, channels first
    video = b.video()
    assert video.shape == (6, 3, 8, 32, 32)
    f = b.frames[1, 3, 5, 7].double() / 255.0
    ref = (f - torch.tensor(IMAGENET_MEAN, dtype=torch.float64)) / torch.tensor(IMAGENET_STD, dtype=torch.float64)
    torch.testing.assert_close(video[1, :, 3, 5, 7].double(), ref, atol=1e-6, rtol=0)


def test_unlabelled_target_rows_get_label_minus_one(tiny_shards):
    table = ShardSet.open(tiny_shards).read("target", "train", BATCH_COLUMNS)
    table = table.set_column(0, "label_index", pa.array([None] * table.num_rows, pa.int64()))
    assert batch_from_table(table).label.tolist() == [-1] * table.num_rows


def test_ray_collate_gives_the_same_batch(tiny_shards, ray_local):
    from lmft_core.shards.batch import ClipBatch
    from lmft_core.train.ray_train import ShardCollate

    shards = ShardSet.open(tiny_shards)
    ds = shards.dataset("source", "val")
    (got,) = list(ds.iter_torch_batches(batch_size=3, collate_fn=ShardCollate()))
    got = ClipBatch.from_tensors(got)
    ref = batch_from_table(shards.read("source", "val", BATCH_COLUMNS))
    a, b = got.pseudo_confidence.argsort(), ref.pseudo_confidence.argsort()  # Ray may read rows in another order
    for name in ("frames", "energy", "label", "pseudo_label", "pseudo_confidence", "clip_probs"):
        torch.testing.assert_close(getattr(got, name)[a], getattr(ref, name)[b])


def test_bad_outputs_are_clear_errors(tiny_shards, tmp_path):
    src = ShardSet.open(tiny_shards).root
    with pytest.raises(ShardError, match="no preprocessing output"):
        ShardSet.open(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ShardError, match=f"shard schema version {SCHEMA_VERSION + 1}, this lmft reads version {SCHEMA_VERSION}"):
        ShardSet.open(copy)
    shards = ShardSet.open(tiny_shards)
    with pytest.raises(ShardError, match=r"clip.image_size: profile 64, shards 32; clip.patch: profile 16, shards 8"):
        shards.check_geometry(ClipConfig(num_frames=8, image_size=64, patch=16))
