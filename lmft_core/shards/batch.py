"""A batch of clips as tensors, and the model input made from its frames.

Layouts: frames uint8 ``(B, T, S, S, 3)`` as stored; the model input float ``(B, 3, T, S, S)``
normalised with VideoMAE's ImageNet mean and std; motion energy ``(B, N_t, N_h, N_w)``. Augmentations
of these batches live in :mod:`lmft_core.augment`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor

# VideoMAE (and timm, CLIP-free) input normalisation: ImageNet's mean and std, RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClipBatch:
    """A batch of clips from the shards, as tensors on one device.

    ``frames`` uint8 (B, T, S, S, 3); ``energy`` float32 (B, N_t, N_h, N_w); ``label`` int64 (B,), -1
    where unlabelled (target rows without a label); ``pseudo_label`` int64 (B,) and
    ``pseudo_confidence`` float32 (B,), CLIP's argmax and its probability; ``clip_probs`` float32 (B, K);
    ``key`` int64 (B,), :func:`~lmft_core.shards.reader.video_key` of the row's ``video_id``.
    """

    frames: Tensor
    energy: Tensor
    label: Tensor
    pseudo_label: Tensor
    pseudo_confidence: Tensor
    clip_probs: Tensor
    key: Tensor

    def __len__(self) -> int:
        return self.frames.shape[0]

    @classmethod
    def from_tensors(cls, d: Mapping[str, Tensor]) -> ClipBatch:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def as_tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def select(self, index: Tensor) -> ClipBatch:
        """The clips at ``index`` (int64 (b,)), in that order, as a new batch."""
        return ClipBatch(**{k: v.index_select(0, index) for k, v in self.as_tensors().items()})

    @classmethod
    def cat(cls, batches: list[ClipBatch]) -> ClipBatch:
        """One batch of the clips of ``batches``, in order."""
        return cls(**{f.name: torch.cat([getattr(b, f.name) for b in batches]) for f in fields(cls)})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ClipBatch:
        return ClipBatch(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.as_tensors().items()})

    def video(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Model input (B, 3, T, S, S) of the frames (:func:`model_input`)."""
        return model_input(self.frames, dtype)


def model_input(frames: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 frames (B, T, S, S, 3) -> float (B, 3, T, S, S) in [0, 1], normalised with ImageNet mean/std,
    on the frames' device."""
    x = frames.permute(0, 4, 1, 2, 3).to(dtype).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean).div_(std)
