"""Masking strategies of masked video pretraining, registered by name (:data:`MASKINGS`).

A strategy chooses the **visible** tokens of every clip of a batch: ``visible`` (B, N_t, N_h, N_w) bool
with exactly ``count`` True per clip (:func:`lmft_core.pretrain.config.visible_count`). All but ``tube``
draw ``count`` tokens without replacement from a Plackett-Luce distribution over per-token logits with the
Gumbel-top-k trick (Kool et al. 2019): the next token is drawn with probability proportional to
``exp(logit)`` among the tokens not drawn yet.

=========== =====================================================================================
``tube``    VideoMAE's: ``per_segment`` positions of the N_h x N_w grid drawn uniformly, visible in
            every temporal segment (a tube through time)
``random``  ``count`` tokens uniformly (all logits 0)
``motion``  logits ``motion_score / temperature`` (the energy; segment 0, all ones by LMFT's convention,
            takes segment 1's): moving tokens are more likely visible (TATS' motion prior)
``learned`` logits from a :class:`TokenSampler` on each token's pixels and energy, trained jointly with
            the autoencoder by policy gradient (:mod:`lmft_core.pretrain.learner`); its draw carries the
            log-probability (with gradient) of the ordered sample
=========== =====================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft_core.config import ClipConfig
from lmft_core.model.vit import tubelet_view
from lmft_core.registry import Registry


@dataclass
class MaskInput:
    """What a strategy draws from: ``energy`` (B, N_t, N_h, N_w) motion energy, ``video`` (B, C, T, H, W)
    model input, ``count`` visible tokens per clip (``per_segment`` of them per temporal segment for
    ``tube``), the ``motion`` ``temperature``, the learned ``sampler`` (None for the others) and the
    ``generator`` (CPU) of the draw's randomness."""

    energy: Tensor
    video: Tensor
    count: int
    per_segment: int
    temperature: float
    sampler: TokenSampler | None = None
    generator: torch.Generator | None = None


@dataclass
class MaskDraw:
    """``visible`` (B, N_t, N_h, N_w) bool; ``log_prob`` (B,) of the draw under the learned sampler
    (differentiable; None for the fixed strategies)."""

    visible: Tensor
    log_prob: Tensor | None = None


@dataclass(frozen=True)
class Masking:
    """A registered strategy: ``draw(MaskInput) -> MaskDraw``; ``learned`` strategies need a sampler."""

    draw: Callable[[MaskInput], MaskDraw]
    learned: bool = False


MASKINGS: Registry[Masking] = Registry("masking strategy")


def gumbel_top_k(logits: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """An ordered draw of ``k`` of the M columns of ``logits`` (B, M) without replacement (Plackett-Luce)
    -> indices (B, k), first drawn first. The noise comes from ``generator`` on the CPU."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1.0 - 1e-12)
    gumbel = (-torch.log(-torch.log(u))).to(device=logits.device, dtype=logits.dtype)
    return (logits.detach() + gumbel).topk(k, dim=1).indices


def plackett_luce_log_prob(logits: Tensor, order: Tensor) -> Tensor:
    """log P(order) (B,) of the ordered draw ``order`` (B, k) under ``logits`` (B, M):
    ``sum_j logit[o_j] - logsumexp(logits of the tokens not among o_1..o_{j-1})``."""
    chosen = F.one_hot(order, logits.shape[1]).bool()  # (B, k, M)
    before = (chosen.cumsum(1) - chosen.long()).bool()  # drawn at an earlier position
    remaining = torch.logsumexp(logits[:, None, :].masked_fill(before, float("-inf")), dim=-1)  # (B, k)
    return (logits.gather(1, order) - remaining).sum(1)


def _scatter(order: Tensor, shape: torch.Size) -> Tensor:
    """Indices (B, k) into the flattened token grid -> bool mask of ``shape`` (B, ...)."""
    visible = torch.zeros(order.shape[0], shape[1:].numel(), dtype=torch.bool, device=order.device)
    return visible.scatter_(1, order, True).view(shape)


def draw_by_logits(logits: Tensor, x: MaskInput, learned: bool = False) -> MaskDraw:
    """``x.count`` tokens drawn by Plackett-Luce over ``logits`` (B, N); with ``learned`` the draw's log-prob."""
    order = gumbel_top_k(logits, x.count, x.generator)
    return MaskDraw(_scatter(order, x.energy.shape), plackett_luce_log_prob(logits, order) if learned else None)


def register_masking(name: str, learned: bool = False):
    """Decorator registering ``draw(MaskInput) -> MaskDraw`` as the strategy ``name``."""

    def wrap(draw: Callable[[MaskInput], MaskDraw]) -> Callable[[MaskInput], MaskDraw]:
        MASKINGS.register(name, Masking(draw, learned))
        return draw

    return wrap


@register_masking("tube")
def tube(x: MaskInput) -> MaskDraw:
    b, n_t, n_h, n_w = x.energy.shape
    order = gumbel_top_k(x.energy.new_zeros(b, n_h * n_w), x.per_segment, x.generator)
    spatial = _scatter(order, torch.Size((b, 1, n_h, n_w)))
    return MaskDraw(spatial.expand(b, n_t, n_h, n_w).contiguous())


@register_masking("random")
def uniform(x: MaskInput) -> MaskDraw:
    return draw_by_logits(x.energy.new_zeros(x.energy.shape[0], x.energy[0].numel()), x)


def motion_score(energy: Tensor) -> Tensor:
    """(B, N_t, N_h, N_w) -> (B, N) per-token motion: the energy, but segment 0 (all ones by LMFT's
    convention: always kept) scored by the change to segment 1, which it shares (the selectors' ``next``
    first-segment rule)."""
    score = energy.float().clone()
    if score.shape[1] > 1:
        score[:, 0] = score[:, 1]
    return score.flatten(1)


@register_masking("motion")
def motion(x: MaskInput) -> MaskDraw:
    return draw_by_logits(motion_score(x.energy) / x.temperature, x)


@register_masking("learned", learned=True)
def learned(x: MaskInput) -> MaskDraw:
    if x.sampler is None:
        raise ValueError("masking 'learned' needs its TokenSampler")
    return draw_by_logits(x.sampler(x.video, x.energy), x, learned=True)


class TokenSampler(nn.Module):
    """The ``learned`` strategy's per-token logits: ``forward(video (B, C, T, H, W), energy (B, N_t, N_h, N_w))
    -> (B, N)``, a two-layer MLP on each tubelet's pixels and its :func:`motion_score`. The output layer starts at zero,
    so an untrained sampler draws as ``random`` does."""

    def __init__(self, clip: ClipConfig, in_chans: int, hidden: int):
        super().__init__()
        self.clip = clip
        self.fc1 = nn.Linear(in_chans * clip.tubelet * clip.patch**2 + 1, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, video: Tensor, energy: Tensor) -> Tensor:
        b = video.shape[0]
        pixels = tubelet_view(video.detach(), self.clip).reshape(b, self.clip.num_tokens, -1)
        x = torch.cat([pixels, motion_score(energy)[..., None].to(pixels.dtype)], -1)
        return self.fc2(F.gelu(self.fc1(x))).squeeze(-1)
