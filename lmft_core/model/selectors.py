"""Token selectors: which tokens of each clip the model computes.

Every selector is called as ``selector(energy, generator=None) -> Selection`` with motion energies
``energy`` (B, N_t, N_h, N_w) in [0, 1] and returns a keep mask of the same shape. The first temporal
segment is always kept. Selectors registered by name (:data:`SELECTORS`):

- ``lmft``: learned threshold (:class:`~lmft_core.model.policy.ThresholdPolicy`): keep energy > tau,
  tau sampled per call in training, tau_hat in eval. One call draws one tau: select the source and
  target batches of a step in one call (concatenated along B) so both share it, as the reward assumes.
- ``full``: keep every token.
- ``random``: drop ``drop_rate`` of each clip's tokens (``round(drop_rate * N)``, at most the tokens
  outside the first segment), chosen uniformly; or, with ``match``, drop as many per clip as another
  selector does.
- ``threshold``: a fixed tau (the run-length tokenization rule on motion energy).
- ``topk``: a fixed budget of ``round(keep_ratio * N)`` tokens per clip, highest energy first (the
  first segment counts in the budget and is kept even when it exceeds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lmft_core.config import ConfigError
from lmft_core.model.policy import ThresholdPolicy
from lmft_core.registry import Registry


@dataclass
class Selection:
    """A selector's output: ``keep`` (B, N_t, N_h, N_w) bool and the threshold ``tau`` it used
    (a scalar tensor for ``lmft`` and ``threshold``, else None)."""

    keep: Tensor
    tau: Tensor | None = None

    @property
    def discard_rate(self) -> Tensor:
        """Per-video discard rate (B,) float: 1 - kept tokens / all tokens."""
        return 1.0 - self.keep.flatten(1).float().mean(1)

    @property
    def num_kept(self) -> Tensor:
        """Kept tokens per video (B,) int64."""
        return self.keep.flatten(1).sum(1)


@dataclass(frozen=True)
class SelectorConfig:
    """Builds a selector (TOML section ``[selector]``): ``name`` and the settings the named one uses:
    ``tau`` (threshold), ``drop_rate`` and ``match`` (random; ``match`` names another selector whose
    per-video discard rate to copy), ``keep_ratio`` (topk)."""

    name: str = "lmft"
    tau: float = 0.5
    drop_rate: float = 0.5
    keep_ratio: float = 0.5
    match: str = ""

    def __post_init__(self) -> None:
        SELECTORS.check(self.name, "selector.name")
        if self.match and (self.name != "random" or self.match not in SELECTORS or self.match == "random"):
            raise ConfigError(f"selector.match={self.match!r} needs name='random' and another registered selector")
        for key in ("tau", "drop_rate", "keep_ratio"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"selector.{key} must be in [0, 1], got {getattr(self, key)}")

    def build(self, policy: ThresholdPolicy | None = None) -> Selector:
        """The selector named by ``name`` (``lmft`` needs the ``policy``)."""
        return SELECTORS[self.name](self, policy)


Selector = Callable[..., Selection]
SELECTORS: Registry[Callable[[SelectorConfig, ThresholdPolicy | None], Selector]] = Registry("selector")


def register_selector(name: str):
    """Decorator registering ``factory(config, policy) -> selector`` under ``name``."""
    return SELECTORS.register(name)


def _check_energy(energy: Tensor) -> None:
    if energy.dim() != 4:
        raise ValueError(f"energy must be (B, N_t, N_h, N_w), got shape {tuple(energy.shape)}")


def keep_above(energy: Tensor, tau: Tensor | float) -> Tensor:
    """Keep tokens with energy > tau, and the first temporal segment: (B, N_t, N_h, N_w) bool."""
    _check_energy(energy)
    keep = energy > tau
    keep[:, 0] = True
    return keep


def keep_highest(scores: Tensor, num_keep: Tensor) -> Tensor:
    """Keep the ``num_keep[b]`` highest-scoring tokens of each video, first segment always first.

    ``scores`` (B, N_t, N_h, N_w), ``num_keep`` (B,) int -> keep (B, N_t, N_h, N_w) bool.
    """
    _check_energy(scores)
    flat = scores.flatten(1).clone()
    first = scores[0, 0].numel()
    flat[:, :first] = float("inf")
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return (rank < num_keep.clamp(min=first)[:, None]).view_as(scores)


@register_selector("full")
def full(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    def select(energy: Tensor, generator: torch.Generator | None = None) -> Selection:
        _check_energy(energy)
        return Selection(torch.ones_like(energy, dtype=torch.bool))

    return select


@register_selector("threshold")
def threshold(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    def select(energy: Tensor, generator: torch.Generator | None = None) -> Selection:
        tau = torch.tensor(config.tau, device=energy.device)
        return Selection(keep_above(energy, tau), tau)

    return select


@register_selector("lmft")
def lmft(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    if policy is None:
        raise ValueError("the 'lmft' selector needs a ThresholdPolicy")

    def select(energy: Tensor, generator: torch.Generator | None = None) -> Selection:
        tau = policy.threshold(generator)
        return Selection(keep_above(energy, tau), tau)

    return select


@register_selector("topk")
def topk(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    def select(energy: Tensor, generator: torch.Generator | None = None) -> Selection:
        _check_energy(energy)
        budget = round(config.keep_ratio * energy[0].numel())
        return Selection(keep_highest(energy, torch.full((energy.shape[0],), budget, device=energy.device)))

    return select


def random_keep(energy: Tensor, num_drop: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Drop ``num_drop[b]`` tokens of video b chosen uniformly outside the first segment -> keep mask."""
    _check_energy(energy)
    scores = torch.rand(energy.shape, generator=generator, device=generator.device if generator else energy.device)
    scores = scores.to(energy.device)
    return keep_highest(scores, energy[0].numel() - num_drop)


@register_selector("random")
def random(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    other = replace(config, name=config.match, match="").build(policy) if config.match else None

    def select(energy: Tensor, generator: torch.Generator | None = None) -> Selection:
        _check_energy(energy)
        n = energy[0].numel()
        if other is not None:
            num_drop = n - other(energy, generator).num_kept
        else:
            num_drop = torch.full((energy.shape[0],), round(config.drop_rate * n), device=energy.device)
        return Selection(random_keep(energy, num_drop, generator))

    return select
