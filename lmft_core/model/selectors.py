"""Token selectors: which tokens of each clip the model computes.

Every selector is called as ``selector(energy, generator=None, video=None) -> Selection`` with motion
energies ``energy`` (B, N_t, N_h, N_w) in [0, 1] and returns a keep mask of the same shape; ``video``
(B, 3, T, S, S), the ViT's input, is read by ``adafocus`` only (its glance).

The first temporal segment has no preceding tubelet, so no motion energy of its own; the **first-segment
rule** (``selector.first_segment``, registered in :data:`FIRST_SEGMENT_RULES`) says what happens to it:

- ``keep`` (the paper's): its energy is 1 and it is always kept, whatever the threshold or budget;
- ``next``: it takes the energy of the difference that follows it (``energy[:, 0] := energy[:, 1]``)
  and competes like any other segment; a clip that would keep no token keeps its highest-energy one.

At a keep ratio of 0.25 with 8 segments, ``keep`` spends half the kept tokens on the first frames'
full background; ``next`` keeps only the first segment's moving parts.

Selectors registered by name (:data:`SELECTORS`):

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
- ``adafocus``: a learned, content-based window (:mod:`lmft_core.model.focus`): a glance network on
  downsampled frames scores the tokens, and each temporal segment keeps the ``window`` = (w_h, w_w)
  tokens of one window, placed by a policy trained with the policy gradient (drawn in training, the
  best in eval); optionally only the ``segments`` segments the glance is most confident on, and, in
  eval, an early exit on the glance's answer when its confidence reaches ``exit_threshold``. It
  ignores motion energy and the first-segment rule.
- ``topk``: a fixed budget of ``round(keep_ratio * N)`` tokens per clip, highest energy first (with
  ``keep``, the first segment counts in the budget and is kept even when it exceeds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.model.focus import GlanceNet, glance_flops, place_windows, top_segments, window_keep, window_logits
from lmft_core.model.policy import POLICIES, PolicyConfig, ThresholdPolicy
from lmft_core.registry import Registry


@dataclass
class Selection:
    """A selector's output: ``keep`` (B, N_t, N_h, N_w) bool and the threshold ``tau`` it used
    (a scalar tensor for ``lmft`` and ``threshold``, (N_t - 1,) for ``lmft-segment``, with a leading (B,) when
    given per clip, else None).

    ``adafocus`` adds ``log_prob`` (B,), the log-probability of its window placements (differentiable in
    the glance), ``glance_logits`` (B, K), ``exited`` (B,) bool (clips answered by the glance alone: no
    token kept) and ``glance_flops``, the glance's forward FLOPs per clip."""

    keep: Tensor
    tau: Tensor | None = None
    log_prob: Tensor | None = None
    glance_logits: Tensor | None = None
    exited: Tensor | None = None
    glance_flops: int = 0

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
    selector whose per-video discard rate to copy), ``keep_ratio`` (topk, calibrated threshold);
    ``first_segment`` the first-segment rule (module docstring), for every selector but ``adafocus``.
    ``adafocus`` reads ``window`` (w_h, w_w) tokens, ``segments`` (temporal segments kept; None: all),
    ``exit_threshold`` (in (0, 1]; None: no early exit) and ``glance_channels`` (the glance's width).
    A learned selector (``lmft``, ``lmft-segment``) fixes the kind of threshold policy the run builds
    (:attr:`policy_kind`); it is never set separately."""

    name: str = "lmft"
    tau: float | None = None
    drop_rate: float = 0.5
    keep_ratio: float = 0.5
    match: str = ""
    calibrate: bool = False
    first_segment: str = "keep"
    window: tuple[int, int] = (2, 2)
    segments: int | None = None
    exit_threshold: float | None = None
    glance_channels: int = 16

    def __post_init__(self) -> None:
        SELECTORS.check(self.name, "selector.name")
        FIRST_SEGMENT_RULES.check(self.first_segment, "selector.first_segment")
        if self.match and (self.name != "random" or self.match not in SELECTORS or self.match == "random"):
            raise ConfigError(f"selector.match={self.match!r} needs name='random' and another registered selector")
        for key in ("tau", "drop_rate", "keep_ratio"):
            if getattr(self, key) is not None and not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"selector.{key} must be in [0, 1], got {getattr(self, key)}")
        if self.name == "threshold" and self.tau is None and not self.calibrate:
            raise ConfigError("selector 'threshold' needs tau, or calibrate = true with keep_ratio")

        if self.calibrate and self.name != "threshold":
            raise ConfigError(f"selector.calibrate applies to name='threshold' only, not {self.name!r}")
        if len(self.window) != 2 or min(self.window) < 1:
            raise ConfigError(f"selector.window must be two sizes >= 1 (rows, columns of tokens), got {list(self.window)}")
        if self.segments is not None and self.segments < 1:
            raise ConfigError(f"selector.segments must be >= 1 (temporal segments kept), got {self.segments}: "
                              "a clip of zero segments keeps no token; leave it unset to keep them all")
        if self.exit_threshold is not None and not 0.0 < self.exit_threshold <= 1.0:
            raise ConfigError(f"selector.exit_threshold must be in (0, 1] (the glance's confidence), got "
                              f"{self.exit_threshold}; leave it unset for no early exit")
        if self.glance_channels < 1:
            raise ConfigError(f"selector.glance_channels must be >= 1, got {self.glance_channels}")

    def check_grid(self, clip: ClipConfig) -> None:
        """ConfigError naming the key when ``adafocus``'s window or segment count does not fit ``clip``'s grid."""
        if not self.focus:
            return
        n_t, n_h, n_w = clip.grid
        if self.window[0] > n_h or self.window[1] > n_w:
            raise ConfigError(f"selector.window={list(self.window)} is larger than the token grid {n_h} x {n_w} "
                              f"([clip] image_size / patch = {clip.image_size} / {clip.patch})")
        if self.segments is not None and self.segments > n_t:
            raise ConfigError(f"selector.segments={self.segments} is more than the clip's {n_t} temporal segments "
                              f"([clip] num_frames / tubelet)")

    @property
    def focus(self) -> bool:
        """Whether this selector needs the AdaFocus glance network: ``adafocus``, or ``random`` matched to it."""
        return (self.match or self.name) == "adafocus"

    @property
    def label(self) -> str:
        """A short name for tables, metric names and run names: ``lmft``, ``lmft-segment``, ``random-match-lmft``,
        ``random-drop0.50``, ``threshold-tau0.3``, ``threshold-keep0.50`` (to calibrate), ``topk-keep0.50``,
        ``adafocus-w2x2`` (``-seg4`` with 4 segments kept, ``-exit0.9`` with an early exit);
        ``.first-next`` appended under the ``next`` first-segment rule (not to ``full`` and ``adafocus``: the rule
        does not touch them)."""
        base = self.name
        if self.name == "random":
            base = f"random-match-{self.match}" if self.match else f"random-drop{self.drop_rate:.2f}"
        elif self.name == "threshold":
            base = f"threshold-keep{self.keep_ratio:.2f}" if self.calibrate else f"threshold-tau{self.tau:.3g}"
        elif self.name == "topk":
            base = f"topk-keep{self.keep_ratio:.2f}"
        elif self.name == "adafocus":
            base = f"adafocus-w{self.window[0]}x{self.window[1]}" + (f"-seg{self.segments}" if self.segments else "") + (
                f"-exit{self.exit_threshold:g}" if self.exit_threshold else "")
        untouched = self.first_segment == "keep" or self.name in ("full", "adafocus")  # they take no first-segment rule
        return base + ("" if untouched else f".first-{self.first_segment}")

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

    def resolve_policy(self, policy: PolicyConfig, clip: ClipConfig) -> PolicyConfig:
        """``policy`` with its derived fields set: ``kind`` = :attr:`policy_kind`, ``num_segments`` = N_t of ``clip``."""
        return replace(policy, kind=self.policy_kind, num_segments=clip.grid[0])

    def calibrated(self, energy: Tensor) -> SelectorConfig:
        """A threshold to calibrate: this config with ``tau`` fitted on ``energy`` (:func:`calibrate_tau`);
        any other config as it is."""
        if not self.calibrate:
            return self
        rule = FIRST_SEGMENT_RULES[self.first_segment]
        return replace(self, tau=calibrate_tau(rule.energy(energy), self.keep_ratio, forced_first=rule.forced))

    def build(self, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
        """The selector named by ``name`` (``lmft`` and ``lmft-segment`` need a ``policy`` of their kind,
        :attr:`policy_kind`, ``adafocus`` a ``glance`` network; a threshold to calibrate needs :meth:`calibrated` first)."""
        if self.name == "threshold" and self.tau is None:
            raise ValueError(f"selector {self.label}: calibrate tau first (SelectorConfig.calibrated(energy))")
        return SELECTORS[self.name](self, policy, glance)


@dataclass(frozen=True)
class FirstSegmentRule:
    """A first-segment rule: ``forced``, the first segment is always kept (the paper's); else it is
    selected like the others, on the energy of the segment after it."""

    forced: bool

    def energy(self, energy: Tensor) -> Tensor:
        """The energies the selector compares, (B, N_t, N_h, N_w) (a copy when changed)."""
        if self.forced or energy.shape[1] < 2:
            return energy
        energy = energy.clone()
        energy[:, 0] = energy[:, 1]
        return energy


FIRST_SEGMENT_RULES: Registry[FirstSegmentRule] = Registry("first-segment rule")
FIRST_SEGMENT_RULES.register("keep", FirstSegmentRule(forced=True))
FIRST_SEGMENT_RULES.register("next", FirstSegmentRule(forced=False))

# the adafocus settings (a random selector matched to adafocus takes the run's)
FOCUS_KEYS = ("window", "segments", "exit_threshold", "glance_channels")
Selector = Callable[..., Selection]
SELECTORS: Registry[Callable[[SelectorConfig, ThresholdPolicy | None, GlanceNet | None], Selector]] = Registry("selector")
# learned selectors: name -> the kind of threshold policy it draws from and trains
SELECTOR_POLICY: dict[str, str] = {}


def register_selector(name: str, policy: str | None = None):
    """Decorator registering ``factory(config, policy, glance) -> selector`` under ``name``; ``policy`` names the
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


def keep_above(energy: Tensor, tau: Tensor | float, forced_first: bool = True, per_clip: bool = False) -> Tensor:
    """Keep tokens with energy > tau: (B, N_t, N_h, N_w) bool. With ``forced_first`` the first temporal
    segment is kept too; without, a clip with no token above tau keeps its highest-energy token.

    ``tau`` is one threshold (a float or 0-d tensor) or one per temporal segment: (N_t - 1,) for
    segments 1..N_t-1 (segment 0, when not forced, compares with segment 1's: under the ``next`` rule it
    carries segment 1's energy). With ``per_clip``, each clip has its own: ``tau`` (B,) or (B, N_t - 1).
    """
    _check_energy(energy)
    if per_clip:
        b, n_t = energy.shape[:2]
        if not isinstance(tau, Tensor) or tau.shape[:1] != (b,) or tau.dim() > 2 or (tau.dim() == 2 and tau.shape[1] != n_t - 1):
            got = tuple(tau.shape) if isinstance(tau, Tensor) else tau
            raise ValueError(f"per-clip tau must be ({b},) or ({b}, {n_t - 1}) for {b} clips of {n_t} segments, got {got}")
        tau = tau.to(energy.device)
        tau = tau.view(b, 1, 1, 1) if tau.dim() == 1 else torch.cat([tau[:, :1], tau], 1).view(b, n_t, 1, 1)
    elif isinstance(tau, Tensor) and tau.dim() > 0:
        n_t = energy.shape[1]
        if tau.dim() != 1 or tau.numel() != n_t - 1:
            raise ValueError(f"tau of shape {tuple(tau.shape)} for {n_t} temporal segments: give one threshold, "
                             f"or one per segment 1..{n_t - 1}: ({n_t - 1},)")
        tau = tau.to(energy.device)
        tau = torch.cat([tau[:1], tau]).view(1, n_t, 1, 1)  # segment 0 compares with segment 1's threshold
    keep = energy > tau
    if forced_first:
        keep[:, 0] = True
    else:
        empty = ~keep.flatten(1).any(1)
        if empty.any():
            flat = keep.flatten(1)
            flat[empty, energy.flatten(1)[empty].argmax(1)] = True
            keep = flat.view_as(energy)
    return keep


def keep_highest(scores: Tensor, num_keep: Tensor, forced_first: bool = True) -> Tensor:
    """Keep the ``num_keep[b]`` highest-scoring tokens of each video (at least one); with
    ``forced_first`` the first segment is always kept, ranked first.

    ``scores`` (B, N_t, N_h, N_w), ``num_keep`` (B,) int -> keep (B, N_t, N_h, N_w) bool.
    """
    _check_energy(scores)
    flat = scores.flatten(1).clone()
    first = scores[0, 0].numel() if forced_first else 1
    if forced_first:
        flat[:, :first] = float("inf")
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return (rank < num_keep.clamp(min=first)[:, None]).view_as(scores)


def calibrate_tau(energy: Tensor, keep_ratio: float, forced_first: bool = True) -> float:
    """The threshold whose mean keep ratio over the clips of ``energy`` (B, N_t, N_h, N_w) is
    ``keep_ratio`` (up to ties). With ``forced_first``, keep_above keeps the first segment plus the
    tokens above tau, so tau is the k-th largest energy outside the first segment with
    k = B * (keep_ratio * N - N_first) (ratios below the first segment's share give tau = 1, nothing
    else kept); without, tau is the k-th largest of all energies, k = B * keep_ratio * N."""
    _check_energy(energy)
    n, first = energy[0].numel(), (energy[0, 0].numel() if forced_first else 0)
    rest = (energy[:, 1:] if forced_first else energy).flatten().float()
    k = round(energy.shape[0] * (keep_ratio * n - first))
    if k <= 0:
        return 1.0
    if k >= rest.numel():
        return 0.0
    return float(torch.topk(rest, k + 1).values[-1].clamp(0.0, 1.0))


@register_selector("full")
def full(config: SelectorConfig, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
    def select(energy: Tensor, generator: torch.Generator | None = None, video: Tensor | None = None) -> Selection:
        _check_energy(energy)
        return Selection(torch.ones_like(energy, dtype=torch.bool))

    return select


@register_selector("threshold")
def threshold(config: SelectorConfig, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
    rule = FIRST_SEGMENT_RULES[config.first_segment]

    def select(energy: Tensor, generator: torch.Generator | None = None, video: Tensor | None = None) -> Selection:
        tau = torch.tensor(config.tau, device=energy.device)
        return Selection(keep_above(rule.energy(energy), tau, rule.forced), tau)

    return select


@register_selector("lmft", policy="scalar")
@register_selector("lmft-segment", policy="segment")
def learned(config: SelectorConfig, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
    """keep_above(energy, the policy's threshold) under the first-segment rule: sampled in training,
    tau_hat in eval, or each clip's own ``tau`` when given; the policy's kind is the one the selector is
    registered with."""
    name, rule, kind = config.name, FIRST_SEGMENT_RULES[config.first_segment], SELECTOR_POLICY[config.name]
    if policy is None or policy.kind != kind:
        got = "none" if policy is None else f"a {policy.kind!r} one ({type(policy).__name__})"
        raise ValueError(f"the {name!r} selector needs a {POLICIES[kind].__name__} (policy kind {kind!r}), got {got}")

    def select(energy: Tensor, generator: torch.Generator | None = None, video: Tensor | None = None,
               tau: Tensor | None = None) -> Selection:
        if tau is not None:  # given per clip, (B, *policy.shape): the rloo estimator's draws
            return Selection(keep_above(rule.energy(energy), tau, rule.forced, per_clip=True), tau)
        tau = policy.threshold(generator)
        return Selection(keep_above(rule.energy(energy), tau, rule.forced), tau)

    return select


@register_selector("topk")
def topk(config: SelectorConfig, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
    rule = FIRST_SEGMENT_RULES[config.first_segment]

    def select(energy: Tensor, generator: torch.Generator | None = None, video: Tensor | None = None) -> Selection:
        _check_energy(energy)
        budget = round(config.keep_ratio * energy[0].numel())
        num_keep = torch.full((energy.shape[0],), budget, device=energy.device)
        return Selection(keep_highest(rule.energy(energy), num_keep, rule.forced))

    return select


def random_keep(energy: Tensor, num_drop: Tensor, generator: torch.Generator | None = None,
                forced_first: bool = True) -> Tensor:
    """Drop ``num_drop[b]`` tokens of video b chosen uniformly (outside the first segment with
    ``forced_first``) -> keep mask."""
    _check_energy(energy)
    scores = torch.rand(energy.shape, generator=generator, device=generator.device if generator else energy.device)
    scores = scores.to(energy.device)
    return keep_highest(scores, energy[0].numel() - num_drop, forced_first)


@register_selector("random")
def random(config: SelectorConfig, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
    other = replace(config, name=config.match, match="").build(policy, glance) if config.match else None

    def select(energy: Tensor, generator: torch.Generator | None = None, video: Tensor | None = None) -> Selection:
        _check_energy(energy)
        n = energy[0].numel()
        if other is not None:
            num_drop = n - other(energy, generator, video).num_kept
        else:
            num_drop = torch.full((energy.shape[0],), round(config.drop_rate * n), device=energy.device)
        return Selection(random_keep(energy, num_drop, generator, FIRST_SEGMENT_RULES[config.first_segment].forced))

    return select


@register_selector("adafocus")
def adafocus(config: SelectorConfig, policy: ThresholdPolicy | None = None, glance: GlanceNet | None = None) -> Selector:
    """One window of ``config.window`` tokens per kept temporal segment, placed by the glance's policy
    (:mod:`lmft_core.model.focus`): drawn in training (``generator``), the most likely in eval; in eval a
    clip whose glance confidence reaches ``exit_threshold`` keeps no token (``exited``)."""
    if glance is None:
        raise ValueError("the 'adafocus' selector needs its glance network (LMFTClassifier.build makes it)")
    flops = glance_flops(glance.clip, glance.num_classes, glance.channels)

    def select(energy: Tensor, generator: torch.Generator | None = None, video: Tensor | None = None) -> Selection:
        _check_energy(energy)
        if video is None:
            raise ValueError("the 'adafocus' selector reads the clips: pass video (B, 3, T, S, S)")
        g = glance(video)
        position, log_prob = place_windows(window_logits(g.scores, config.window), glance.training, generator)
        segments = torch.ones(energy.shape[:2], dtype=torch.bool, device=energy.device)
        if config.segments is not None:
            segments = top_segments(g.segment_logits, config.segments)
        keep = window_keep(position, config.window, energy.shape[2:]) & segments[..., None, None]
        weights = segments.float()
        logits = (g.segment_logits * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)
        exited = torch.zeros(len(keep), dtype=torch.bool, device=keep.device)
        if config.exit_threshold is not None and not glance.training:
            exited = logits.detach().float().softmax(-1).amax(-1) >= config.exit_threshold
            keep = keep & ~exited[:, None, None, None]
        return Selection(keep, log_prob=(log_prob * weights).sum(1), glance_logits=logits, exited=exited,
                         glance_flops=flops)

    return select
