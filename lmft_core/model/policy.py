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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmft_core.config import ConfigError


@dataclass(frozen=True)
class PolicyConfig:
    """Learned threshold policy (TOML section ``[policy]``); defaults are the paper's.

    ``loss_weight`` is lambda_L of the reward; ``tau_hat_samples``/``tau_hat_seed`` fix tau_hat.
    """

    mu: float = 0.01
    log_sigma: float = -1.0
    baseline_momentum: float = 0.9
    loss_weight: float = 10.0
    tau_hat_samples: int = 100
    tau_hat_seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.baseline_momentum < 1.0:
            raise ConfigError(f"policy.baseline_momentum must be in [0, 1), got {self.baseline_momentum}")
        if self.tau_hat_samples <= 0:
            raise ConfigError(f"policy.tau_hat_samples must be positive, got {self.tau_hat_samples}")

    def build(self) -> ThresholdPolicy:
        return ThresholdPolicy(self)


class ThresholdPolicy(nn.Module):
    """Logit-normal distribution over the threshold tau, trained by REINFORCE.

    Parameters ``mu`` and ``log_sigma`` (scalars). Buffers: ``baseline`` (NaN until the first
    reward, which initialises it: ``b = R_1``, so the first advantage is 0), ``step`` (REINFORCE
    updates committed so far, int64), ``tau_hat`` and ``tau_hat_at`` (the (mu, log_sigma) it was
    computed from).

    A training step uses :meth:`advantage` and :meth:`surrogate` for the gradient and, once its
    optimizer step has succeeded, :meth:`commit` (the baseline update and ``step + 1``, together and
    once per step index: a retried step cannot update the baseline twice). :meth:`reinforce_loss`
    does all three at once.
    """

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        super().__init__()
        self.config = config
        self.mu = nn.Parameter(torch.tensor(float(config.mu)))
        self.log_sigma = nn.Parameter(torch.tensor(float(config.log_sigma)))
        self.register_buffer("baseline", torch.tensor(float("nan")))
        self.register_buffer("step", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("tau_hat", torch.tensor(float("nan")))
        self.register_buffer("tau_hat_at", torch.full((2,), float("nan")))

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One threshold tau in (0, 1), a detached scalar tensor.

        In data-parallel training give every rank a generator with the same seed so all share tau.
        """
        eps = torch.randn((), generator=generator, device=generator.device if generator else self.mu.device)
        eps = eps.to(self.mu.device)
        return torch.sigmoid(self.mu + self.sigma * eps).detach().clamp(1e-6, 1 - 1e-6)  # finite log pi

    def log_prob(self, tau: Tensor) -> Tensor:
        """log pi(tau) of thresholds ``tau`` (any shape, values in (0, 1)); differentiable in mu, log_sigma."""
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
        """``-(R - b) * log pi(tau)``: its gradient in (mu, log_sigma) is the policy gradient estimate."""
        return -advantage.detach() * self.log_prob(tau)

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
        """tau_hat = mean of sigmoid(mu + sigma * eps) over K seeded samples (cached per parameter value)."""
        at = torch.stack([self.mu, self.log_sigma]).detach()
        if not torch.equal(at, self.tau_hat_at):
            gen = torch.Generator(device="cpu").manual_seed(self.config.tau_hat_seed)
            eps = torch.randn(self.config.tau_hat_samples, generator=gen).to(self.mu.device)
            self.tau_hat.copy_(torch.sigmoid(self.mu + self.sigma * eps).mean())
            self.tau_hat_at.copy_(at)
        return self.tau_hat.clone()

    def threshold(self, generator: torch.Generator | None = None) -> Tensor:
        """A sampled tau in training mode, tau_hat in eval mode."""
        return self.sample(generator) if self.training else self.inference_tau()
