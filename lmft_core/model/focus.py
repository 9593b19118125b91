"""The AdaFocus selector's parts: a glance network on downsampled frames, window placement on the token grid.

AdaFocus (Wang et al., AdaFocus V1/V2, Uni-AdaFocus) glances at every frame cheaply, picks the most
task-relevant region of each frame and lets the large network see only that region. Here the region is a
window of ``window = (w_h, w_w)`` tokens of each temporal segment's (N_h, N_w) token grid, and **the
window's tokens are the kept tokens**: the ViT, packing and attention backends see an ordinary keep mask.

The window is placed as AdaFocusV1 does, by a policy trained with the policy gradient, not by V2's
differentiable crop: V2 interpolates the patch embeddings at a continuous window location, which needs
every token embedded (full embedding cost in training) and tokens between grid positions, which the
packed ViT on kept tubelets does not have. A discrete window keeps the ViT untouched and training cost
proportional to the window.

:class:`GlanceNet` (video (B, 3, T, S, S) -> :class:`Glance`):

- per temporal segment, the tubelet's mean frame and its last-minus-first difference (6 channels),
  average-pooled by :data:`GLANCE_DOWNSAMPLE`;
- two 3x3 convolutions (stride 2, then 1; ``channels`` wide, ReLU), adaptive-average-pooled to the
  token grid (N_h, N_w): features (B, N_t, C, N_h, N_w);
- a 1x1 convolution to one score per token, (B, N_t, N_h, N_w); the logit of a window position is the
  sum of its tokens' scores (:func:`window_logits`), so the window goes where the scores are high;
- a linear head on each segment's mean feature: segment logits (B, N_t, K); the clip's glance logits are
  their mean over the segments kept. They rank segments (temporal selection: the ``segments`` most
  confident are kept) and decide the early exit (eval: a clip whose glance confidence reaches
  ``exit_threshold`` is answered by the glance alone, no ViT).

Its forward FLOPs per clip (:func:`glance_flops`) count as :mod:`torch.utils.flop_counter` does
(convolutions and the linear head; pooling and activations not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft_core.config import ClipConfig

GLANCE_DOWNSAMPLE = 2  # the glance sees frames at 1/2 of the clip's side (AdaFocus: 96-128 px of 224)
GLANCE_IN = 6  # mean frame and temporal difference of a tubelet, 3 channels each


@dataclass
class Glance:
    """The glance of a batch: ``scores`` (B, N_t, N_h, N_w) per token, ``segment_logits`` (B, N_t, K)."""

    scores: Tensor
    segment_logits: Tensor


class GlanceNet(nn.Module):
    """``forward(video)``: video float (B, 3, T, S, S) normalised as the ViT's input -> :class:`Glance`."""

    def __init__(self, clip: ClipConfig, num_classes: int, channels: int = 16):
        super().__init__()
        self.clip, self.num_classes, self.channels = clip, num_classes, channels
        self.conv1 = nn.Conv2d(GLANCE_IN, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1)
        self.score = nn.Conv2d(channels, 1, 1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, video: Tensor) -> Glance:
        b, c, t, s, _ = video.shape
        n_t, n_h, n_w = self.clip.grid
        x = video.float().view(b, c, n_t, t // n_t, s, s).permute(0, 2, 3, 1, 4, 5)  # (B, N_t, tubelet, 3, S, S)
        x = torch.cat([x.mean(2), x[:, :, -1] - x[:, :, 0]], dim=2).flatten(0, 1)  # (B N_t, 6, S, S)
        x = F.avg_pool2d(x, GLANCE_DOWNSAMPLE)
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.adaptive_avg_pool2d(x, (n_h, n_w))  # (B N_t, C, N_h, N_w)
        scores = self.score(x).view(b, n_t, n_h, n_w)
        segment_logits = self.head(x.mean((2, 3))).view(b, n_t, -1)
        return Glance(scores, segment_logits)


def glance_flops(clip: ClipConfig, num_classes: int, channels: int) -> int:
    """Forward FLOPs of :class:`GlanceNet` on one clip (multiply-add = 2 FLOPs; convolutions and head)."""
    n_t, n_h, n_w = clip.grid
    side = clip.image_size // GLANCE_DOWNSAMPLE
    out = (side - 1) // 2 + 1  # conv1: 3x3, stride 2, padding 1
    conv = 2 * 9 * out * out * (GLANCE_IN * channels + channels * channels)
    return n_t * (conv + 2 * channels * n_h * n_w + 2 * channels * num_classes)


def window_logits(scores: Tensor, window: tuple[int, int]) -> Tensor:
    """Logit of each window position: the sum of the token scores it covers.

    ``scores`` (B, N_t, N_h, N_w) -> (B, N_t, N_h - w_h + 1, N_w - w_w + 1); position (i, j) covers rows
    i..i+w_h-1 and columns j..j+w_w-1."""
    b, n_t, n_h, n_w = scores.shape
    pooled = F.avg_pool2d(scores.reshape(b * n_t, 1, n_h, n_w), window, stride=1)
    return pooled.view(b, n_t, *pooled.shape[-2:]) * (window[0] * window[1])


def window_keep(position: Tensor, window: tuple[int, int], grid_hw: tuple[int, int]) -> Tensor:
    """The tokens of the windows at ``position`` (..., 2) long (top row, left column) -> (..., N_h, N_w) bool."""
    rows = torch.arange(grid_hw[0], device=position.device)
    cols = torch.arange(grid_hw[1], device=position.device)
    top, left = position[..., 0, None], position[..., 1, None]
    in_rows = (rows >= top) & (rows < top + window[0])  # (..., N_h)
    in_cols = (cols >= left) & (cols < left + window[1])  # (..., N_w)
    return in_rows[..., :, None] & in_cols[..., None, :]


def place_windows(logits: Tensor, sample: bool, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Choose one window position per segment from ``logits`` (B, N_t, P_h, P_w): drawn from their softmax
    (``sample``, training) or the argmax (eval). Returns ``position`` (B, N_t, 2) long and ``log_prob``
    (B, N_t), the log-probability of the choice, differentiable in ``logits`` (the policy gradient's)."""
    b, n_t, p_h, p_w = logits.shape
    log_p = logits.float().flatten(2).log_softmax(-1)  # (B, N_t, P)
    if sample:
        u = torch.rand(log_p.shape, generator=generator, device=generator.device if generator else log_p.device)
        flat = (log_p.detach() - (-u.to(log_p.device).clamp_min(1e-20).log()).log()).argmax(-1)  # Gumbel-max draw
    else:
        flat = log_p.argmax(-1)
    position = torch.stack([flat // p_w, flat % p_w], dim=-1)
    return position, log_p.gather(-1, flat[..., None]).squeeze(-1)


def top_segments(segment_logits: Tensor, k: int) -> Tensor:
    """Keep mask (B, N_t) bool of each clip's ``k`` segments whose glance is most confident (largest max
    softmax probability; ties to the earlier segment) from ``segment_logits`` (B, N_t, K)."""
    confidence = segment_logits.detach().float().softmax(-1).amax(-1)
    order = confidence.argsort(dim=1, descending=True, stable=True)[:, :k]
    return torch.zeros_like(confidence, dtype=torch.bool).scatter_(1, order, True)
