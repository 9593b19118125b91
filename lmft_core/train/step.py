"""One training step of LMFT adaptation, runnable in a plain process (no Ray): :class:`Learner`.

A step takes ``accum_steps`` micro-batches, each a (source, target) pair of :class:`ClipBatch`, and:

1. selects the tokens of every clip of the step in **one** selector call (source and target, all
   micro-batches), so one threshold tau (one per temporal segment with ``lmft-segment``) serves the
   whole step; tau is drawn from a generator seeded by ``(seed, step)``, the same on every rank;
2. runs the packed forward of the source clips and the target clips whose label passes (the others
   add nothing to the loss, so they are selected but not forwarded), per micro-batch, and back-propagates
   ``(L_s + lambda_t * L_t) / accum_steps``, where ``L_t`` is the cross-entropy against the target
   clips' pseudo-labels on the clips whose label passes its threshold: ``sum / max(count, 1)``, so a
   micro-batch with no such clip contributes exactly 0 (never 0/0 = NaN). Which labels and thresholds is
   ``train.pseudo_labels`` (:mod:`lmft_core.train.pseudo`): CLIP's above ``gamma_c`` (the paper's), the
   model's own (:attr:`Learner.self_labels`, refreshed by the loop) above ``self_gamma``, or both. The
   labels are resolved before augmentation, so a flip maps them as it maps CLIP's. The target batches'
   true ``label`` is set to -1 first: target labels can never reach a loss;
3. sums the step's losses and discard rates over micro-batches and ranks (one all-reduce), computes
   the reward ``R = sum_d (-lambda_L * L_d - (1 - rho_d))`` from those global means, identical on
   every rank, and back-propagates the REINFORCE surrogate ``-(R - b) * log pi(tau)``;
4. clips the model's gradients, takes one optimizer step (model and policy groups), then commits the
   policy's step (baseline update and step count, once per step index: a retried step cannot
   update the baseline twice) and synchronises the policy (below).

**The policy is identical on every worker after every step** by one mechanism: rank 0's policy is the
policy. After each step rank 0 broadcasts all of the policy's parameters and buffers (mu, log sigma,
baseline, step, tau_hat and what it was computed from; vectors for a per-segment policy) as one float64
tensor and every rank copies them.
(Every rank also computes the same update from the same tau and the same all-reduced reward, so the
broadcast changes nothing where floating point agrees; it makes agreement exact where it would not,
e.g. across GPU models.) The policy lives outside DDP and stays in fp32: it is never under autocast.

A step whose losses are not finite on any rank is skipped on all ranks (no optimizer step, no policy
update; counted in ``skipped_steps``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from lmft_core.augment import background_mix, color_jitter, hflip
from lmft_core.model import ThresholdPolicy, flat_metrics
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.batch import ClipBatch, model_input
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.pseudo import PSEUDO_LABEL_SOURCES, SelfLabels, TargetLabels, target_labels


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that is a function of ``(seed, step, stream)`` only (resume-safe, rank-free)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7919 + stream)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on ``device`` (None: fp32, no autocast)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def decay_groups(module: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups of ``module``: weight matrices (decay), other parameters (no decay)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr, "name": "model_decay"},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": "model_no_decay"}]


def param_groups(adapter: LMFTClassifier, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: model weight matrices (decay), other model parameters (no decay), the policy."""
    return decay_groups(adapter.model, cfg.lr, cfg.weight_decay) + [
        {"params": list(adapter.policy.parameters()), "weight_decay": 0.0, "lr": cfg.policy_lr, "name": "policy"}]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Model learning-rate multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sync_policy(policy: ThresholdPolicy, dist: Dist) -> None:
    """Copy rank 0's policy (every parameter and buffer, any shape) to every rank in one broadcast of
    a flat float64 tensor (exact for fp32 values and for the int64 step count below 2^53)."""
    if not dist.active:
        return
    with torch.no_grad():
        tensors = [*policy.parameters(), *policy.buffers()]
        state = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.broadcast(state, src=0)
        for t, part in zip(tensors, state.split([t.numel() for t in tensors])):
            part = part.view_as(t)
            t.copy_(part if t.is_floating_point() else part.round())


class Learner:
    """The model, policy, optimizer and schedule of one training process, and its :meth:`step`.

    ``steps_per_epoch`` and the config's epochs fix the schedule (warm-up, cosine); ``dist`` gives this
    process's rank and world size (a plain ``Dist()`` for one process); ``label_map`` (K,) pairs the
    classes a horizontal flip swaps (:func:`lmft_core.augment.hflip`).
    """

    def __init__(self, adapter: LMFTClassifier, cfg: TrainConfig, steps_per_epoch: int, dist: Dist = Dist(),
                 device: torch.device | str = "cpu", label_map: Tensor | None = None):
        self.cfg, self.dist, self.device = cfg, dist, torch.device(device)
        self.adapter = adapter.to(self.device)
        self.model = dist.wrap(self.adapter.model, self.device)  # DDP wraps the model only
        self.label_map = None if label_map is None else label_map.to(self.device)
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = max(1, steps_per_epoch * cfg.epochs)
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.optimizer = torch.optim.AdamW(param_groups(self.adapter, cfg), betas=(0.9, 0.999))

        def model_lambda(s: int) -> float:
            return lr_factor(s, warmup, self.total_steps, cfg.min_lr / cfg.lr)

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [model_lambda, model_lambda, lambda s: 1.0])
        self.learns_policy = adapter.selector_config.learns_policy  # lmft, lmft-segment
        self.skipped_steps = 0
        self.pseudo_source = PSEUDO_LABEL_SOURCES[cfg.pseudo_labels]
        self.self_labels: SelfLabels | None = None  # the model's own target labels, once refreshed (loop)

    @property
    def step(self) -> int:
        """Optimizer steps taken (the policy counts the same)."""
        return int(self.adapter.policy.step)

    def _prepare(self, batch: ClipBatch, stream: int) -> ClipBatch:
        """Move a batch to the device and augment it (flip, colour jitter: :mod:`lmft_core.augment`)."""
        batch = batch.to(self.device, non_blocking=True)
        g = step_generator(self.cfg.seed, self.step, stream * 4099 + 1 + self.dist.rank)
        if self.cfg.hflip:
            flip = (torch.rand(len(batch), generator=g) < 0.5).to(self.device)
            batch = hflip(batch, flip, self.label_map)
        if self.cfg.color_jitter > 0:
            batch = replace(batch, frames=color_jitter(batch.frames, self.cfg.color_jitter, g))
        return batch

    def _targets(self, tgt: ClipBatch) -> tuple[ClipBatch, TargetLabels]:
        """The target batch with its true labels blanked (-1) and ``pseudo_label`` set to the label it trains
        on (``train.pseudo_labels``), and which clips use it."""
        labels = target_labels(self.pseudo_source, tgt, self.self_labels, self.cfg.gamma_c, self.cfg.self_gamma)
        return replace(tgt, label=torch.full_like(tgt.label, -1), pseudo_label=labels.label), labels

    def _mix(self, src: ClipBatch, tgt: ClipBatch, i: int) -> tuple[ClipBatch, ClipBatch]:
        """Background mixing of the source clips with the target clips' scenes (``train.background_mix``)."""
        if self.cfg.background_mix > 0:
            g = step_generator(self.cfg.seed, self.step, 8191 + 2 * i + self.dist.rank)
            src = replace(src, frames=background_mix(src.frames, tgt.frames, self.cfg.background_mix, g))
        return src, tgt

    def step_once(self, micro_batches: Sequence[tuple[ClipBatch, ClipBatch]]) -> dict[str, float]:
        """One optimizer step over ``micro_batches`` (module docstring); returns its metrics (floats)."""
        cfg, policy, step = self.cfg, self.adapter.policy, self.step
        if len(micro_batches) != cfg.accum_steps:
            raise ValueError(f"a step takes train.accum_steps={cfg.accum_steps} micro-batches, got {len(micro_batches)}")
        self.adapter.train()
        targets = [self._targets(t) for _, t in micro_batches]
        pairs = [self._mix(self._prepare(s, 2 * i), self._prepare(targets[i][0], 2 * i + 1), i)
                 for i, (s, _) in enumerate(micro_batches)]
        energy = torch.cat([b.energy for pair in pairs for b in pair])
        sel = self.adapter.selection(energy, step_generator(cfg.seed, step))  # one call: one tau for the step
        keeps = sel.keep.split([len(b) for pair in pairs for b in pair])
        rho = sel.discard_rate.split([len(b) for pair in pairs for b in pair])

        # what the step sums over its micro-batches, then over ranks (one all-reduce), by name
        sums: dict[str, Tensor] = {}
        self.optimizer.zero_grad(set_to_none=True)
        for i, (src, tgt) in enumerate(pairs):
            last = i == len(pairs) - 1
            sync = nullcontext() if last or not self.dist.active else self.model.no_sync()
            with sync:
                tl = targets[i][1]
                passing = tl.use.to(self.device)
                # only the target clips whose label passes are forwarded: the others add nothing to the loss,
                # and their discard rate (the reward's) comes from the selection alone
                fwd = passing.nonzero().squeeze(1)
                video = model_input(torch.cat([src.frames, tgt.frames[fwd]]))
                keep = torch.cat([keeps[2 * i], keeps[2 * i + 1][fwd]])
                amp = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
                with amp:
                    logits = self.model(video, keep)
                logits = logits.float()
                ce_s = F.cross_entropy(logits[: len(src)], src.label, ignore_index=-1, reduction="none",
                                       label_smoothing=cfg.label_smoothing)
                labelled = src.label >= 0
                ce_t = F.cross_entropy(logits[len(src):], tgt.pseudo_label[fwd], reduction="none",
                                       label_smoothing=cfg.label_smoothing)
                loss_s = ce_s.sum() / labelled.sum().clamp(min=1)
                loss_t = ce_t.sum() / passing.sum().clamp(min=1)  # exactly 0 when no target clip passes
                ((loss_s + cfg.lambda_t * loss_t) / cfg.accum_steps).backward()
            with torch.no_grad():
                parts = {"ce_source": ce_s.sum(), "labelled": labelled.sum(), "ce_target": ce_t.sum(),
                         "passing": passing.sum(), "discard_source": rho[2 * i].sum(),
                         "source_clips": src.label.new_tensor(len(src)), "discard_target": rho[2 * i + 1].sum(),
                         "target_clips": src.label.new_tensor(len(tgt)), "non_finite": ~torch.isfinite(logits).all(),
                         "clip_passing": tl.clip_pass.sum(), "self_passing": tl.self_pass.sum(),
                         "conflicts": tl.conflict.sum()}
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + value.double().to(self.device)
        names = list(sums)
        s = dict(zip(names, self.dist.all_reduce_sum(torch.stack([sums[n] for n in names]))))
        loss_s, loss_t = s["ce_source"] / s["labelled"].clamp(min=1), s["ce_target"] / s["passing"].clamp(min=1)
        rho_s, rho_t = s["discard_source"] / s["source_clips"], s["discard_target"] / s["target_clips"]
        metrics = {"loss_source": float(loss_s), "loss_target": float(loss_t),
                   "loss": float(loss_s + cfg.lambda_t * loss_t), "discard_rate_source": float(rho_s),
                   "discard_rate_target": float(rho_t), "pseudo_label_pass_rate": float(s["passing"] / s["target_clips"]),
                   "pseudo_clip_pass_rate": float(s["clip_passing"] / s["target_clips"]),
                   "pseudo_self_pass_rate": float(s["self_passing"] / s["target_clips"]),
                   "pseudo_conflict_rate": float(s["conflicts"] / s["target_clips"]),
                   "clips": float(s["source_clips"] + s["target_clips"])}
        if s["non_finite"] > 0 or not (math.isfinite(metrics["loss_source"]) and math.isfinite(metrics["loss_target"])):
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            return metrics | {"skipped_steps": float(self.skipped_steps)}

        reward = policy.reward([loss_s.float(), loss_t.float()], [rho_s.float(), rho_t.float()])
        advantage = policy.advantage(reward)
        if self.learns_policy:
            policy.surrogate(sel.tau, advantage).backward()
        params = [p for p in self.adapter.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        policy.commit(reward, step)
        sync_policy(policy, self.dist)
        # tau, mu, sigma, tau_hat: floats; per segment, their mean and tau/seg1, ... (flat_metrics)
        values = policy.values()
        tau = float("nan") if sel.tau is None else sel.tau.detach().cpu().tolist()
        threshold = {  # only for a selector that draws on the threshold (not full, nor random at a fixed rate)
            "reward": float(reward), "advantage": float(advantage), "baseline": float(policy.baseline),
            **flat_metrics({"tau": tau, "mu": values["mu"], "sigma": values["sigma"], "tau_hat": values["tau_hat"]}),
        } if self.adapter.selector_config.uses_policy else {}
        return metrics | threshold | {"lr": lr, "grad_norm": float(grad_norm), "skipped_steps": float(self.skipped_steps)}

    def state_dict(self) -> dict:
        """LMFTClassifier (model and policy), optimizer, scheduler, counters and the self-training labels (None
        before the first refresh), for a checkpoint."""
        return {"adapter": self.adapter.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "skipped_steps": self.skipped_steps,
                "self_labels": None if self.self_labels is None else self.self_labels.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adapter.load_state_dict(state["adapter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped_steps = int(state["skipped_steps"])
        self.self_labels = SelfLabels.from_state(state.get("self_labels"))
