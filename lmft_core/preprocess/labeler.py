"""The CLIP pseudo-labeler: a Ray Data actor that adds zero-shot class probabilities to decoded rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from lmft_core.pseudo_labels import PseudoLabelConfig
from lmft_core.shards.format import CLIP_FIELDS, list_column, shard_schema, unpack_array


class ClipLabeler:
    """Ray Data actor: adds ``clip_probs``, ``pseudo_label`` and ``pseudo_confidence`` to decoded rows."""

    def __init__(self, cfg: PseudoLabelConfig, classes: Sequence[str], store_frames: bool, num_threads: int = 1):
        import torch

        from lmft_core.pseudo_labels import ClipZeroShot

        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = ClipZeroShot(cfg, classes, device)
        self.schema = shard_schema(store_frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        probs = self.model.probs(unpack_array(batch, "frames", np.uint8)) if batch.num_rows else np.zeros((0, len(self.model.classes)), np.float32)
        batch = batch.append_column(CLIP_FIELDS[0], list_column(list(probs), pa.float32()))
        batch = batch.append_column(CLIP_FIELDS[1], pa.array(probs.argmax(axis=1).astype(np.int64)))
        batch = batch.append_column(CLIP_FIELDS[2], pa.array(probs.max(axis=1, initial=0.0).astype(np.float32)))
        return batch.select(self.schema.names).cast(self.schema)
