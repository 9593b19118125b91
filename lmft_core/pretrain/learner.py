"""One step of masked video pretraining, runnable in a plain process (no Ray): :class:`PretrainLearner`.

A step takes one batch of unlabelled clips (``ClipBatch``; labels are never read) and:

1. draws the visible tokens of every clip with the configured strategy (:mod:`lmft_core.pretrain.masking`;
   the draw's randomness is a function of the seed, the step and the rank, so a resumed run draws the same);
2. runs the autoencoder (DDP-wrapped) on the visible tokens and back-propagates the mean squared error of
   the masked tokens' per-tubelet normalised pixels (:func:`~lmft_core.pretrain.mae.patch_targets`);
3. with the ``learned`` strategy, trains its sampler by **REINFORCE with a leave-one-out baseline** (RLOO):
   the reward of clip i is its own reconstruction loss ``r_i`` (its masked complement was hard to
   reconstruct: TATS' reward), the advantage ``A_i = r_i - mean_{j != i} r_j`` over the rank's batch, the
   surrogate ``-mean_i A_i * log pi(visible_i)`` (Plackett-Luce log-probability of the ordered draw). Why
   not PPO: each draw is used for exactly one update, so PPO's ratio is 1 and its clipping never acts; it
   would add a value network or stored old log-probabilities for nothing. RLOO is unbiased, needs no
   value function, and a per-clip baseline from the same batch does not lag a falling loss as a moving
   average does (``../shared/NOTES.md``). The sampler lives outside DDP; its gradients are averaged over
   ranks by one all-reduce, so every rank's sampler stays identical;
4. clips the gradients (``grad_clip``; 0: off), steps AdamW (betas 0.9, 0.95 as VideoMAE's pretraining)
   and the schedule (warm-up then cosine; the sampler's rate is constant).

A step whose loss is not finite on any rank is skipped on every rank (counted in ``skipped_steps``).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn

from lmft_core.config import autocast_dtype
from lmft_core.pretrain.config import PretrainConfig, visible_count
from lmft_core.pretrain.mae import MaskedAutoencoder, patch_targets
from lmft_core.pretrain.masking import MASKINGS, MaskDraw, MaskInput, TokenSampler
from lmft_core.shards.batch import ClipBatch
from lmft_core.train.dist import Dist
from lmft_core.train.step import decay_groups, lr_factor, step_generator


def rloo_surrogate(reward: torch.Tensor, log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE with a leave-one-out baseline over a batch: rewards (B,) (no gradient) and the draws'
    log-probabilities (B,) -> (the surrogate ``-mean_i A_i log pi_i`` whose gradient ascends the expected
    reward, the advantages ``A_i = r_i - mean_{j != i} r_j`` (B,)). Needs B >= 2."""
    advantage = reward - (reward.sum() - reward) / (len(reward) - 1)
    return -(advantage * log_prob).mean(), advantage


class PretrainLearner:
    """The autoencoder, the learned sampler (None for fixed strategies), optimizer and schedule of one
    process, and its :meth:`step_once`. ``steps_per_epoch`` and ``cfg.epochs`` fix the schedule; ``seed``
    and ``precision`` are ``[train]``'s."""

    def __init__(self, mae: MaskedAutoencoder, sampler: TokenSampler | None, cfg: PretrainConfig,
                 steps_per_epoch: int, dist: Dist, device: torch.device | str = "cpu", seed: int = 0,
                 precision: str = "auto"):
        self.cfg, self.dist, self.device, self.seed = cfg, dist, torch.device(device), seed
        self.mae = mae.to(self.device)
        self.sampler = sampler.to(self.device) if sampler is not None else None
        self.net = dist.wrap(self.mae, self.device)
        self.masking = MASKINGS[cfg.masking]
        self.count, self.per_segment = visible_count(cfg.mask_ratio, mae.model_config.clip)
        self.amp_dtype = autocast_dtype(precision, self.device)
        groups = decay_groups(self.mae, cfg.lr, cfg.weight_decay)
        if self.sampler is not None:
            groups.append({"params": list(self.sampler.parameters()), "weight_decay": 0.0, "lr": cfg.sampler_lr,
                           "name": "sampler"})
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.95))
        total, warmup = max(1, steps_per_epoch * cfg.epochs), round(cfg.warmup_epochs * steps_per_epoch)
        factor = lambda s: lr_factor(s, warmup, total, cfg.min_lr / cfg.lr)  # noqa: E731
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [factor, factor] + ([lambda s: 1.0] if self.sampler is not None else []))
        self.step = 0
        self.skipped_steps = 0

    def draw(self, batch: ClipBatch, video: torch.Tensor) -> MaskDraw:
        """The visible tokens of ``batch`` at this step (``video`` its model input on the device)."""
        g = step_generator(self.seed, self.step, 1 + self.dist.rank)
        return self.masking.draw(MaskInput(batch.energy.float(), video, self.count, self.per_segment,
                                           self.cfg.temperature, self.sampler, g))

    def step_once(self, batch: ClipBatch) -> dict[str, float]:
        """One optimizer step on ``batch`` (module docstring); returns its metrics (floats, global over ranks)."""
        cfg = self.cfg
        self.mae.train()
        batch = batch.to(self.device, non_blocking=True)
        video, b = batch.video(), len(batch)
        draw = self.draw(batch, video)
        masked = ~draw.visible.reshape(b, -1)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            pred = self.net(video, draw.visible)
        target = patch_targets(batch.frames, self.mae.model_config)[masked]
        per_clip = (pred.float() - target).pow(2).mean(-1).view(b, -1).mean(1)  # (B,)
        energy = batch.energy.float().reshape(b, -1)
        sums = torch.stack([per_clip.detach().sum().double(), torch.tensor(float(b), dtype=torch.float64, device=self.device),
                            (~torch.isfinite(per_clip.detach())).any().double(),
                            (energy * ~masked).sum().double() / self.count, energy.mean(1).sum().double()])
        loss_sum, clips, non_finite, visible_energy, energy_sum = self.dist.all_reduce_sum(sums).tolist()
        metrics = {"loss": loss_sum / clips, "clips": clips, "visible_energy": visible_energy / clips,
                   "mean_energy": energy_sum / clips}
        if non_finite > 0 or not math.isfinite(metrics["loss"]):
            self.skipped_steps += 1
            return metrics | {"skipped_steps": float(self.skipped_steps)}
        per_clip.mean().backward()
        if draw.log_prob is not None:
            surrogate, advantage = rloo_surrogate(per_clip.detach(), draw.log_prob)
            surrogate.backward()
            self._average_sampler_grads()
            metrics["sampler_advantage_abs"] = float(advantage.abs().mean())
        params = [p for p in self.mae.parameters() if p.grad is not None]
        grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return metrics | {"lr": lr, "grad_norm": float(grad_norm), "skipped_steps": float(self.skipped_steps)}

    def _average_sampler_grads(self) -> None:
        grads = [p.grad for p in self.sampler.parameters()]
        flat = self.dist.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads])) / self.dist.world_size
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def state_dict(self) -> dict:
        """Autoencoder, sampler (None for fixed strategies), optimizer, scheduler and counters."""
        return {"mae": self.mae.state_dict(), "sampler": None if self.sampler is None else self.sampler.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "step": self.step, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.mae.load_state_dict(state["mae"])
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.skipped_steps = int(state["step"]), int(state["skipped_steps"])
