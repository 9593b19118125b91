"""The learned threshold policy of LMFT.

The threshold is ``tau = sigmoid(u)`` with ``u ~ N(mu, sigma^2)``; ``mu`` and ``log_sigma`` are
trained by REINFORCE. With the logit-normal density,

    log pi(tau) = log N(logit(tau); mu, sigma^2) - log(tau) - log(1 - tau),

the surrogate loss ``-(R - b) * log pi(tau)`` has the policy gradient as its gradient, ``b`` being
a moving baseline ``b <- m*b + (1 - m)*R`` (m = 0.9). The paper does not state b's start: here the
first reward initialises it (``b = R_1``), so the first advantage ``R_1 - b`` is 0 and the first
step leaves mu and sigma unchanged. The reward of one step sums over the domains
d in {source, target}: ``R = sum_d (-lambda_L * loss_d - (1 - rho_d))`` with ``rho_d`` the mean
discard rate of domain d's batch. At test time the threshold is the deterministic
``tau_hat = mean_k sigmoid(mu + sigma * eps_k)`` over K = 100 seeded normal samples, computed once
per parameter value and kept as a buffer (it travels with the state dict).

Policy variants are registered by name (:data:`POLICIES`, the ``kind``):

- ``scalar`` (:class:`ThresholdPolicy`, the paper's): one threshold for every token of a step.
- ``segment`` (:class:`SegmentThresholdPolicy`): one logit-normal threshold per temporal segment
  t = 1..N_t-1 (segment 0 is always kept and has none), drawn independently; ``log pi`` of a draw
  is the sum of the segments' log densities, so the same REINFORCE surrogate trains every segment.

How the policy gradient is estimated is ``policy.estimator`` (:data:`ESTIMATORS`):

- ``paper`` (default): one tau per step (shared by every clip of the step, on every rank), one reward R
  from the step's global mean losses and discard rates, the moving baseline b: ``-(R - b) log pi(tau)``.
  One noisy scalar per step moves mu; Adam normalises that noise into a steady drift.
- ``rloo`` (REINFORCE leave-one-out; Kool et al., 2019; Ahmadian et al., 2024): one tau per **clip pair**
  (source clip i and target clip i of a micro-batch share tau_i), drawn for every pair of the step on every
  rank from the step's generator; per pair the paper's reward ``R_i = sum_d (-lambda_L * loss_{d,i} -
  (1 - rho_{d,i}))`` from that pair's own cross-entropies (a target clip whose label does not pass adds no
  loss) and discard rates; advantage ``A_i = R_i - mean_{j != i} R_j`` over the n pairs of the step (all
  ranks); surrogate ``-(1/n) sum_i A_i log pi(tau_i)`` (:func:`rloo_advantage`, :meth:`ThresholdPolicy.surrogate`).
  n draws per step and a baseline that removes the step's common loss level (which every tau shares):
  far less variance than the paper's one draw. Needs n >= 2 pairs per step (checked at profile load).

The kind is not a profile key: it follows from the selector (``lmft`` draws from a ``scalar`` policy,
``lmft-segment`` from a ``segment`` one: :attr:`~lmft_core.model.selectors.SelectorConfig.policy_kind`),
and ``num_segments`` from the clip geometry (``[clip]``: N_t = num_frames // tubelet), both filled in
by :meth:`~lmft_core.model.selectors.SelectorConfig.resolve_policy`, so a profile cannot contradict itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lmft_core.config import DERIVED, ConfigError
from lmft_core.registry import Registry

# policy variants by name (the ``kind``): "scalar" and "segment", registered below their classes
POLICIES: Registry[type[ThresholdPolicy]] = Registry("threshold policy")


@dataclass(frozen=True)
class Estimator:
    """A policy-gradient estimator (``policy.estimator``): ``per_clip``, one tau and one reward per clip
    pair (else one per step); ``advantage(policy, rewards)``, the advantages of the step's rewards (a scalar
    for one reward, (n,) for n)."""

    per_clip: bool
    advantage: Callable[[ThresholdPolicy, Tensor], Tensor]


ESTIMATORS: Registry[Estimator] = Registry("threshold estimator")


def rloo_advantage(rewards: Tensor) -> Tensor:
    """Leave-one-out advantages of rewards (n,), n >= 2: ``A_i = R_i - (sum_j R_j - R_i) / (n - 1)``,
    detached (n,)."""
    n = rewards.numel()
    if rewards.dim() != 1 or n < 2:
        raise ValueError(f"a leave-one-out baseline needs rewards of shape (n,) with n >= 2, got {tuple(rewards.shape)}")
    rewards = rewards.detach()
    return rewards - (rewards.sum() - rewards) / (n - 1)


ESTIMATORS.register("paper", Estimator(per_clip=False, advantage=lambda policy, reward: policy.advantage(reward)))
ESTIMATORS.register("rloo", Estimator(per_clip=True, advantage=lambda policy, rewards: rloo_advantage(rewards)))


@dataclass(frozen=True)
class PolicyConfig:
    """Learned threshold policy (TOML section ``[policy]``); defaults are the paper's.

    ``loss_weight`` is lambda_L of the reward; ``tau_hat_samples``/``tau_hat_seed`` fix tau_hat.
    ``estimator`` (:data:`ESTIMATORS`) is how the policy gradient is estimated: ``paper`` (one tau per
    step, moving baseline) or ``rloo`` (one tau per clip pair, leave-one-out baseline; module docstring).
    ``mu`` and ``log_sigma`` initialise every segment's parameters alike in a ``segment`` policy.
    ``kind`` (a :data:`POLICIES` name) and ``num_segments`` (N_t) are derived, never profile keys
    (:meth:`~lmft_core.model.selectors.SelectorConfig.resolve_policy`); ``num_segments`` = 0 means unset, which only a ``scalar`` policy accepts.
    """

    mu: float = 0.01
    log_sigma: float = -1.0
    baseline_momentum: float = 0.9
    loss_weight: float = 10.0
    tau_hat_samples: int = 100
    tau_hat_seed: int = 0
    estimator: str = "paper"
    kind: str = field(default="scalar", metadata={
        DERIVED: "the selector: [selector] name 'lmft-segment' learns a 'segment' policy, any other a 'scalar' one"})
    num_segments: int = field(default=0, metadata={DERIVED: "the profile's [clip] section (num_frames // tubelet)"})

    def __post_init__(self) -> None:
        POLICIES.check(self.kind, "policy.kind")
        ESTIMATORS.check(self.estimator, "policy.estimator")
        if self.num_segments < 0:
            raise ConfigError(f"policy.num_segments must be >= 0, got {self.num_segments}")
        if not 0.0 <= self.baseline_momentum < 1.0:
            raise ConfigError(f"policy.baseline_momentum must be in [0, 1), got {self.baseline_momentum}")
        if self.tau_hat_samples <= 0:
            raise ConfigError(f"policy.tau_hat_samples must be positive, got {self.tau_hat_samples}")

    def build(self) -> ThresholdPolicy:
        """The policy of ``kind`` (:data:`POLICIES`)."""
        return POLICIES[self.kind](self)


class ThresholdPolicy(nn.Module):
    """Logit-normal distribution over the threshold tau, trained by REINFORCE (kind ``scalar``).

    Parameters ``mu`` and ``log_sigma`` of shape :attr:`shape` (``()`` here: scalars). Buffers:
    ``baseline`` (NaN until the first reward, which initialises it: ``b = R_1``, so the first
    advantage is 0), ``step`` (REINFORCE updates committed so far, int64), ``tau_hat`` (shape
    :attr:`shape`) and ``tau_hat_at`` (2, *shape): the (mu, log_sigma) it was computed from.
    Subclasses change the shape and :meth:`log_prob` (:class:`SegmentThresholdPolicy`).

    A training step uses :meth:`advantage` and :meth:`surrogate` for the gradient and, once its
    optimizer step has succeeded, :meth:`commit` (the baseline update and ``step + 1``, together and
    once per step index: a retried step cannot update the baseline twice). :meth:`reinforce_loss`
    does all three at once.
    """

    kind = "scalar"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__()
        config = PolicyConfig(kind=self.kind) if config is None else config
        if config.kind != self.kind:
            raise ValueError(f"{type(self).__name__} is the {self.kind!r} policy, but its config says kind={config.kind!r}: "
                             "build policies with PolicyConfig.build()")
        self.config = config
        shape = self.param_shape(config)
        self.mu = nn.Parameter(torch.full(shape, float(config.mu)))
        self.log_sigma = nn.Parameter(torch.full(shape, float(config.log_sigma)))
        self.register_buffer("baseline", torch.tensor(float("nan")))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("tau_hat", torch.full(shape, float("nan")))
        self.register_buffer("tau_hat_at", torch.full((2, *shape), float("nan")))

    @classmethod
    def param_shape(cls, config: PolicyConfig) -> tuple[int, ...]:
        """The shape of mu, log_sigma, a sampled tau and tau_hat: ``()`` for one threshold."""
        return ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mu.shape)

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def sample(self, generator: torch.Generator | None = None, n: int | None = None) -> Tensor:
        """One threshold draw tau in (0, 1), detached, of shape :attr:`shape` (a scalar here); with ``n``,
        n independent draws (n, *shape).

        In data-parallel training give every rank a generator with the same seed so all share tau.
        """
        shape = self.shape if n is None else (n, *self.shape)
        eps = torch.randn(shape, generator=generator, device=generator.device if generator else self.mu.device)
        eps = eps.to(self.mu.device)
        return torch.sigmoid(self.mu + self.sigma * eps).detach().clamp(1e-6, 1 - 1e-6)  # finite log pi

    def log_prob(self, tau: Tensor) -> Tensor:
        """log pi(tau) of thresholds ``tau`` (any shape, values in (0, 1)), elementwise, broadcast against mu:
        ``log N(logit(tau); mu, sigma^2) - log(tau) - log(1 - tau)``; differentiable in mu, log_sigma."""
        u = torch.logit(tau)
        normal = -0.5 * ((u - self.mu) / self.sigma) ** 2 - self.log_sigma - 0.5 * math.log(2 * math.pi)
        return normal - torch.log(tau) - torch.log1p(-tau)

    def reward(self, losses: Sequence[Tensor | float], discard_rates: Sequence[Tensor | float]) -> Tensor:
        """R = sum_d (-lambda_L * loss_d - (1 - rho_d)); one loss and one mean discard rate per domain.

        A detached scalar; average it over ranks before :meth:`reinforce_loss` in data-parallel runs.
        """
        if len(losses) != len(discard_rates):
            raise ValueError(f"{len(losses)} losses but {len(discard_rates)} discard rates: give one of each per domain")
        total = torch.zeros((), device=self.mu.device)
        for loss, rho in zip(losses, discard_rates):
            total = total - self.config.loss_weight * torch.as_tensor(loss).detach().float().mean()
            total = total - (1.0 - torch.as_tensor(rho).detach().float().mean())
        return total

    def advantage(self, reward: Tensor | float) -> Tensor:
        """``R - b`` with the current baseline, a detached scalar; 0 before the first reward (b = R_1)."""
        reward = torch.as_tensor(reward, dtype=self.baseline.dtype, device=self.baseline.device).detach()
        if torch.isnan(self.baseline):
            return torch.zeros_like(reward)
        return reward - self.baseline

    def surrogate(self, tau: Tensor, advantage: Tensor) -> Tensor:
        """``-(R - b) * log pi(tau)``: its gradient in (mu, log_sigma) is the policy gradient estimate. With n
        draws ``tau`` (n, *shape) and advantages (n,): the mean over draws, ``-(1/n) sum_i A_i log pi(tau_i)``."""
        return (-advantage.detach() * self.log_prob(tau)).mean()

    @torch.no_grad()
    def commit(self, reward: Tensor | float, step: int | None = None) -> bool:
        """Update the baseline ``b <- m*b + (1 - m)*R`` (``b = R`` at the first) and count the step.

        With ``step`` given, the update happens only when ``step`` is the next uncommitted index
        (``self.step``); a retried step (already committed) changes nothing. Returns whether it updated.
        """
        if step is not None and step != int(self.step):
            if step < int(self.step):
                return False
            raise RuntimeError(f"policy commit for step {step}, but {int(self.step)} steps are committed")
        reward = torch.as_tensor(reward, dtype=self.baseline.dtype, device=self.baseline.device)
        if torch.isnan(self.baseline):
            self.baseline.copy_(reward)
        m = self.config.baseline_momentum
        self.baseline.mul_(m).add_((1.0 - m) * reward)
        self.step.add_(1)
        return True

    def reinforce_loss(self, tau: Tensor, reward: Tensor | float) -> Tensor:
        """Surrogate ``-(R - b) * log pi(tau)`` with the baseline before this step; then commits R.

        The first reward initialises the baseline (so the first advantage is 0).
        """
        loss = self.surrogate(tau, self.advantage(reward))
        self.commit(reward)
        return loss

    @torch.no_grad()
    def inference_tau(self) -> Tensor:
        """tau_hat = mean of sigmoid(mu + sigma * eps) over K seeded samples eps (cached per parameter
        value), of shape :attr:`shape`. Every segment of a segment policy uses the same K draws eps_k."""
        at = torch.stack([self.mu, self.log_sigma]).detach()
        if not torch.equal(at, self.tau_hat_at):
            gen = torch.Generator(device="cpu").manual_seed(self.config.tau_hat_seed)
            eps = torch.randn(self.config.tau_hat_samples, generator=gen).to(self.mu.device)
            eps = eps.view(-1, *([1] * self.mu.dim()))  # (K, 1, ...) against mu (*shape)
            self.tau_hat.copy_(torch.sigmoid(self.mu + self.sigma * eps).mean(0))
            self.tau_hat_at.copy_(at)
        return self.tau_hat.clone()

    def threshold(self, generator: torch.Generator | None = None) -> Tensor:
        """A sampled tau in training mode, tau_hat in eval mode (shape :attr:`shape`)."""
        return self.sample(generator) if self.training else self.inference_tau()

    @torch.no_grad()
    def values(self) -> dict[str, float | list[float]]:
        """mu, log_sigma, sigma, baseline, step and tau_hat (computed if needed) as plain numbers: floats
        for a scalar policy; for a segment policy mu, log_sigma, sigma and tau_hat are lists, entry i
        for temporal segment i + 1 (:func:`flat_metrics` turns them into metrics)."""
        plain = lambda t: t.detach().cpu().tolist()  # noqa: E731 - float for a 0-d tensor, list otherwise
        return {"mu": plain(self.mu), "log_sigma": plain(self.log_sigma), "sigma": plain(self.sigma),
                "baseline": float(self.baseline), "step": int(self.step), "tau_hat": plain(self.inference_tau())}


class SegmentThresholdPolicy(ThresholdPolicy):
    """One logit-normal threshold per temporal segment (kind ``segment``), trained by the same REINFORCE.

    ``mu``, ``log_sigma``, a sampled tau and ``tau_hat`` have shape (N_t - 1,): entry i is the threshold
    of temporal segment i + 1 (segment 0 is always kept, so it has no parameters). A draw samples every
    segment independently; :meth:`log_prob` is the sum over segments of the logit-normal log densities,
    so ``-(R - b) * log pi(tau)`` gives each segment's policy gradient from the one reward of the step.
    ``config.num_segments`` is N_t (>= 2).
    """

    kind = "segment"

    @classmethod
    def param_shape(cls, config: PolicyConfig) -> tuple[int, ...]:
        if config.num_segments < 2:
            raise ConfigError(f"a 'segment' policy needs policy.num_segments = N_t >= 2 (it comes from [clip]: "
                              f"num_frames // tubelet; a library user passes SelectorConfig.resolve_policy(policy, clip) "
                              f"or num_segments=N_t), got {config.num_segments}")
        return (config.num_segments - 1,)

    def log_prob(self, tau: Tensor) -> Tensor:
        """log pi(tau) of draws ``tau`` (..., N_t - 1): the sum over segments of the logit-normal log
        densities -> (...); a scalar for one draw."""
        if tau.shape[-1:] != self.mu.shape:
            raise ValueError(f"tau must end in {tuple(self.mu.shape)} (one threshold per segment 1..N_t-1), "
                             f"got shape {tuple(tau.shape)}")
        return super().log_prob(tau).sum(-1)


POLICIES.register("scalar", ThresholdPolicy)
POLICIES.register("segment", SegmentThresholdPolicy)


def flat_metrics(values: dict[str, float | int | Sequence[float]]) -> dict[str, float]:
    """Metrics (floats) from policy values (:meth:`ThresholdPolicy.values`, or tau): a number stays under
    its name; a per-segment list becomes its mean under the name plus ``<name>/seg<t>`` for temporal
    segment t = 1..N_t-1 (entry t - 1). E.g. ``{"tau_hat": [0.2, 0.4]}`` -> ``tau_hat`` 0.3,
    ``tau_hat/seg1`` 0.2, ``tau_hat/seg2`` 0.4."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (list, tuple)):
            out[key] = float(sum(value) / len(value)) if value else float("nan")
            out.update({f"{key}/seg{i + 1}": float(v) for i, v in enumerate(value)})
        else:
            out[key] = float(value)
    return out


def tau_text(tau: float | Sequence[float], digits: int = 3) -> str:
    """A threshold for messages: ``0.412`` or, per segment, ``[0.38, 0.41, ...]`` at ``digits`` decimals."""
    if isinstance(tau, (list, tuple)):
        return "[" + ", ".join(f"{float(v):.{digits}f}" for v in tau) + "]"
    return f"{float(tau):.{digits}f}"
