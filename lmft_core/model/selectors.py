"""Token selectors: which tokens of each clip the model computes.

Every selector is called as ``selector(energy, generator=None) -> Selection`` with motion energies
``energy`` (B, N_t, N_h, N_w) in [0, 1] and returns a keep mask of the same shape. The first temporal
segment is always kept. Selectors registered by name (:data:`SELECTORS`):

- ``lmft``: learned threshold (:class:`~lmft_core.model.policy.ThresholdPolicy`): keep energy > tau,
  tau sampled per call in training, tau_hat in eval. One call draws one tau: select the source and
  target batches of a step in one call (concatenated along B) so both share it, as the reward assumes.
- ``lmft-segment``: learned threshold per temporal segment
  (:class:`~lmft_core.model.policy.SegmentThresholdPolicy`): keep token (t, h, w) when its energy
  is > tau[t - 1], tau (N_t - 1,) drawn per call like ``lmft``'s.
- ``full``: keep every token.
- ``random``: drop ``drop_rate`` of each clip's tokens (``round(drop_rate * N)``, at most the tokens
  outside the first segment), chosen uniformly; or, with ``match``, drop as many per clip as another
  selector does.
- ``threshold``: a fixed tau (the run-length tokenization rule on motion energy); or, with
  ``calibrate``, the tau whose mean keep ratio on given energies (source-train) is ``keep_ratio``
  (:func:`calibrate_tau`, :meth:`SelectorConfig.calibrated`).
- ``topk``: a fixed budget of ``round(keep_ratio * N)`` tokens per clip, highest energy first (the
  first segment counts in the budget and is kept even when it exceeds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lmft_core.config import ConfigError
from lmft_core.model.policy import POLICIES, ThresholdPolicy
from lmft_core.registry import Registry


@dataclass
class Selection:
    """A selector's output: ``keep`` (B, N_t, N_h, N_w) bool and the threshold ``tau`` it used
    (a scalar tensor for ``lmft`` and ``threshold``, (N_t - 1,) for ``lmft-segment``, else None)."""

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
    ``tau`` (threshold), or ``calibrate`` (threshold: tau is fitted to ``keep_ratio`` on given energies
    by :meth:`calibrated` before building), ``drop_rate`` and ``match`` (random; ``match`` names another
    selector whose per-video discard rate to copy), ``keep_ratio`` (topk, calibrated threshold).
    A learned selector (``lmft``, ``lmft-segment``) fixes the kind of threshold policy the run builds
    (:attr:`policy_kind`); it is never set separately."""

    name: str = "lmft"
    tau: float | None = None
    drop_rate: float = 0.5
    keep_ratio: float = 0.5
    match: str = ""
    calibrate: bool = False

    def __post_init__(self) -> None:
        SELECTORS.check(self.name, "selector.name")
        if self.match and (self.name != "random" or self.match not in SELECTORS or self.match == "random"):
            raise ConfigError(f"selector.match={self.match!r} needs name='random' and another registered selector")
        for key in ("tau", "drop_rate", "keep_ratio"):
            if getattr(self, key) is not None and not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"selector.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.name == "threshold" and self.tau is None and not self.calibrate:
            raise ConfigError("selector 'threshold' needs tau, or calibrate = true with keep_ratio")

        if self.calibrate and self.name != "threshold":
            raise ConfigError(f"selector.calibrate applies to name='threshold' only, not {self.name!r}")

    @property
    def label(self) -> str:
        """A short name for tables, metric names and run names: ``lmft``, ``lmft-segment``, ``random-match-lmft``,
        ``random-drop0.50``, ``threshold-tau0.3``, ``threshold-keep0.50`` (to calibrate), ``topk-keep0.50``."""
        if self.name == "random":
            return f"random-match-{self.match}" if self.match else f"random-drop{self.drop_rate:.2f}"
        if self.name == "threshold":
            return f"threshold-keep{self.keep_ratio:.2f}" if self.calibrate else f"threshold-tau{self.tau:.3g}"
        if self.name == "topk":
            return f"topk-keep{self.keep_ratio:.2f}"
        return self.name

    @property
    def learns_policy(self) -> bool:
        """Whether training with this selector trains the threshold policy (``lmft``, ``lmft-segment``)."""
        return self.name in SELECTOR_POLICY

    @property
    def uses_policy(self) -> bool:
        """Whether this selector draws on the threshold policy: a learned one, or ``random`` matched to one."""
        return (self.match or self.name) in SELECTOR_POLICY

    @property
    def policy_kind(self) -> str:
        """The kind of threshold policy (:data:`~lmft_core.model.policy.POLICIES`) this selector draws on:
        a learned selector's own, a ``random`` one's matched selector's, else ``scalar`` (unused)."""
        return SELECTOR_POLICY.get(self.match or self.name, "scalar")

    def calibrated(self, energy: Tensor) -> SelectorConfig:
        """A threshold to calibrate: this config with ``tau`` fitted on ``energy`` (:func:`calibrate_tau`);
        any other config as it is."""
        if not self.calibrate:
            return self
        return replace(self, tau=calibrate_tau(energy, self.keep_ratio))

    def build(self, policy: ThresholdPolicy | None = None) -> Selector:
        """The selector named by ``name`` (``lmft`` and ``lmft-segment`` need a ``policy`` of their kind,
        :attr:`policy_kind`; a threshold to calibrate needs :meth:`calibrated` first)."""
        if self.name == "threshold" and self.tau is None:
            raise ValueError(f"selector {self.label}: calibrate tau first (SelectorConfig.calibrated(energy))")
        return SELECTORS[self.name](self, policy)


Selector = Callable[..., Selection]
SELECTORS: Registry[Callable[[SelectorConfig, ThresholdPolicy | None], Selector]] = Registry("selector")
# learned selectors: name -> the kind of threshold policy it draws from and trains
SELECTOR_POLICY: dict[str, str] = {}


def register_selector(name: str, policy: str | None = None):
    """Decorator registering ``factory(config, policy) -> selector`` under ``name``; ``policy`` names the
    kind of threshold policy (:data:`~lmft_core.model.policy.POLICIES`) a learned selector trains."""
    if policy is not None:
        POLICIES.check(policy, f"policy of selector {name!r}")
    register = SELECTORS.register(name)

    def decorate(factory):
        register(factory)
        if policy is not None:
            SELECTOR_POLICY[name] = policy
        return factory

    return decorate


def _check_energy(energy: Tensor) -> None:
    if energy.dim() != 4:
        raise ValueError(f"energy must be (B, N_t, N_h, N_w), got shape {tuple(energy.shape)}")


def keep_above(energy: Tensor, tau: Tensor | float) -> Tensor:
    """Keep tokens with energy > tau, and the first temporal segment: (B, N_t, N_h, N_w) bool.

    ``tau`` is one threshold (a float or 0-d tensor) or one per temporal segment: (N_t - 1,) for
    segments 1..N_t-1, or (N_t,) whose entry 0 is unused (segment 0 is kept whatever it says).
    """
    _check_energy(energy)
    if isinstance(tau, Tensor) and tau.dim() > 0:
        n_t = energy.shape[1]
        if tau.dim() != 1 or tau.numel() not in (n_t - 1, n_t):
            raise ValueError(f"tau of shape {tuple(tau.shape)} for {n_t} temporal segments: give one threshold, "
                             f"or one per segment ({n_t - 1},) or ({n_t},)")
        tau = tau.to(energy.device)
        if tau.numel() == n_t - 1:
            tau = torch.cat([tau.new_zeros(1), tau])  # segment 0: kept below, its entry never used
        tau = tau.view(1, n_t, 1, 1)
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


def calibrate_tau(energy: Tensor, keep_ratio: float) -> float:
    """The threshold whose mean keep ratio over the clips of ``energy`` (B, N_t, N_h, N_w) is
    ``keep_ratio`` (up to ties): keep_above keeps the first segment plus the tokens above tau, so tau
    is the k-th largest energy outside the first segment with k = B * (keep_ratio * N - N_first).
    Ratios below the first segment's share give tau = 1 (nothing else kept)."""
    _check_energy(energy)
    rest = energy[:, 1:].flatten().float()
    n, first = energy[0].numel(), energy[0, 0].numel()
    k = round(energy.shape[0] * (keep_ratio * n - first))
    if k <= 0:
        return 1.0
    if k >= rest.numel():
        return 0.0
    return float(torch.topk(rest, k + 1).values[-1].clamp(0.0, 1.0))


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


def _learned(name: str, kind: str, policy: ThresholdPolicy | None) -> Selector:
    """keep_above(energy, the policy's threshold): sampled in training, tau_hat in eval."""
    if policy is None or policy.kind != kind:
        got = "none" if policy is None else f"a {policy.kind!r} one ({type(policy).__name__})"
        raise ValueError(f"the {name!r} selector needs a {POLICIES[kind].__name__} (policy kind {kind!r}), got {got}")

    def select(energy: Tensor, generator: torch.Generator | None = None) -> Selection:
        tau = policy.threshold(generator)
        return Selection(keep_above(energy, tau), tau)

    return select


@register_selector("lmft", policy="scalar")
def lmft(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    return _learned("lmft", "scalar", policy)


@register_selector("lmft-segment", policy="segment")
def lmft_segment(config: SelectorConfig, policy: ThresholdPolicy | None = None) -> Selector:
    return _learned("lmft-segment", "segment", policy)


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
