"""Forward FLOPs of one clip for a given number of kept tokens (a multiply-add counts 2 FLOPs).

Counted as :mod:`torch.utils.flop_counter` counts (tests check the two agree): the tubelet embedding
of the ``n`` kept tokens (only kept tubelets are embedded), and for each block the linear layers
``2 n (3D^2 + D^2 + 2 D M)`` and attention ``4 n^2 D`` (QK^T and AV), then the head ``2 D C``. Norms, activations, softmax and
pooling are not counted. The ``adafocus`` glance network's FLOPs
(:func:`lmft_core.model.focus.glance_flops`) are added per clip where it runs. A training step costs
about three times the forward. ViT-B/16 on a full 16x224x224 clip: 361 GFLOPs, the "180 G" that
VideoMAE reports counted in multiply-adds (fvcore's convention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmft_core.model.vit import ModelConfig


def clip_flops(config: ModelConfig, num_kept: int | Tensor) -> int | Tensor:
    """Forward FLOPs of one clip that keeps ``num_kept`` tokens (an int, or a tensor of counts)."""
    w = config.widths
    clip = config.clip
    d, m = w.embed_dim, int(w.embed_dim * w.mlp_ratio)
    n = num_kept.to(torch.int64) if isinstance(num_kept, Tensor) else int(num_kept)
    embed = 2 * n * d * config.in_chans * clip.tubelet * clip.patch * clip.patch
    per_block = 2 * n * (4 * d * d + 2 * d * m) + 4 * n * n * d
    return embed + w.depth * per_block + 2 * d * config.num_classes


def selection_flops(config: ModelConfig, keep: Tensor, exited: Tensor | None = None, glance: int = 0) -> Tensor:
    """Forward FLOPs per clip (B,) int64 for keep masks ``keep`` (B, N_t, N_h, N_w) bool; with ``adafocus``,
    plus its ``glance`` FLOPs per clip, and none of the ViT's for clips that ``exited`` (B,) bool after the glance."""
    vit = clip_flops(config, keep.flatten(1).sum(1))
    if exited is not None:
        vit = torch.where(exited, torch.zeros_like(vit), vit)
    return vit + glance
