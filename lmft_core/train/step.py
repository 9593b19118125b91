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
   every rank, and back-propagates the REINFORCE surrogate ``-(R - b) * log pi(tau)``. Under
   ``policy.estimator = "rloo"`` instead, step 1 draws one tau per (source, target) clip pair for every
   rank's pairs from the step's generator (each rank selects with its own slice; packed attention takes
   each clip's own keep mask as always), each rank's per-pair rewards travel in the same all-reduce (a
   zero table, one row per rank), and every rank back-propagates the same leave-one-out surrogate over
   all pairs (:mod:`lmft_core.model.policy`), so the policy gradient is identical on every rank;
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

With the ``adafocus`` selector the selection of step 1 also glances at the clips (its glance network,
outside DDP, fp32) and places a window per segment by a draw from the step's generator. After the
micro-batches, :func:`focus_loss` back-propagates the glance classifier's ``L_s + lambda_t * L_t`` (on the
same labels and pseudo-labels as the ViT's) and the windows' policy-gradient surrogate, whose reward is
each clip's ViT cross-entropy against its domain's mean in the step. The glance's gradients are averaged
over ranks, it takes the model's learning rate, and rank 0's glance is broadcast after every step like
the policy. The threshold policy is then unused (its reward, baseline and tau are not logged); its
``policy.estimator`` must be ``paper`` (``rloo`` with ``adafocus`` is refused at profile load).

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
from lmft_core.config import autocast_dtype
from lmft_core.model import ESTIMATORS, Selection, flat_metrics
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.batch import ClipBatch, model_input
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.pseudo import PSEUDO_LABEL_SOURCES, SelfLabels, TargetLabels, target_labels


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that is a function of ``(seed, step, stream)`` only (resume-safe, rank-free)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7919 + stream)


def decay_groups(module: torch.nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups of ``module``: weight matrices (decay), other parameters (no decay)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr, "name": "model_decay"},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": "model_no_decay"}]


def param_groups(adapter: LMFTClassifier, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: model weight matrices (decay), other model parameters (no decay), the policy. The
    ``adafocus`` glance network, when there is one, trains with the model's groups (its learning rate)."""
    learned = torch.nn.ModuleList([m for m in (adapter.model, adapter.glance) if m is not None])
    return decay_groups(learned, cfg.lr, cfg.weight_decay) + [
        {"params": list(adapter.policy.parameters()), "weight_decay": 0.0, "lr": cfg.policy_lr, "name": "policy"}]


def average_grads(module: torch.nn.Module, dist: Dist) -> None:
    """Average the gradients of ``module`` (outside DDP) over ranks, in one all-reduce (a parameter without a
    gradient on a rank counts as zero there, so every rank reduces the same tensor)."""
    params = list(module.parameters())
    if not dist.active or not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    flat = dist.all_reduce_sum(flat) / dist.world_size
    for p, part in zip(params, flat.split([p.numel() for p in params])):
        p.grad = part.view_as(p).clone()


def focus_loss(sel: Selection, clip_ce: Tensor, labels: Tensor, target: Tensor, lambda_t: float) -> tuple[Tensor, Tensor]:
    """The ``adafocus`` glance's loss: its classifier's L_s + lambda_t L_t and the policy-gradient surrogate.

    Over the step's clips in selection order: ``clip_ce`` (B,) the ViT's cross-entropy of each clip under
    its windows (NaN where the clip has no training label), ``labels`` (B,) the label each clip trains on
    (-1: none), ``target`` (B,) bool (target-domain clips). The surrogate is
    ``-sum_b w_b (b_d - ce_b) log pi(windows_b) / n`` over the n labelled clips, with b_d the mean
    cross-entropy of clip b's domain in this step (the baseline) and w_b = 1 for source, lambda_t for
    target clips: its gradient is the policy gradient of -(L_s + lambda_t L_t). Returns (glance classifier
    loss, surrogate), scalars."""
    labelled = labels >= 0
    ce = F.cross_entropy(sel.glance_logits.float(), labels.clamp(min=0), reduction="none")
    glance, advantage = ce.new_zeros(()), torch.zeros_like(clip_ce)
    for domain, weight in ((False, 1.0), (True, lambda_t)):
        valid = labelled & (target == domain)
        glance = glance + weight * ce[valid].sum() / valid.sum().clamp(min=1)
        if valid.any():
            advantage[valid] = weight * (clip_ce[valid].mean() - clip_ce[valid])
    surrogate = -(advantage * sel.log_prob)[labelled].sum() / labelled.sum().clamp(min=1)
    return glance, surrogate


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Model learning-rate multiplier: linear warm-up to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def sync_policy(policy: torch.nn.Module, dist: Dist) -> None:
    """Copy rank 0's policy (every parameter and buffer, any shape; also the ``adafocus`` glance network)
    to every rank in one broadcast of a flat float64 tensor (exact for fp32 values and for the int64 step
    count below 2^53)."""
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
        self.estimator = ESTIMATORS[adapter.policy.config.estimator]
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

    def _pair_taus(self, pairs: Sequence[tuple[ClipBatch, ClipBatch]], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """rloo's thresholds: (every rank's pair draws (world * n, *shape), rank-major, the same on every rank;
        this rank's per clip, in the selection's order (micro-batch source, then target), (2n, *shape)).
        Source clip i and target clip i of a micro-batch are pair i and share its tau."""
        sizes = [len(src) for src, _ in pairs]
        if any(len(src) != len(tgt) for src, tgt in pairs):
            raise ValueError(f"policy.estimator='rloo' pairs source and target clips: a micro-batch has "
                             f"{[(len(s), len(t)) for s, t in pairs]} (source, target) clips")
        n = sum(sizes)
        tau_all = self.adapter.policy.sample(generator, n=self.dist.world_size * n)
        mine = tau_all[self.dist.rank * n:(self.dist.rank + 1) * n].split(sizes)
        return tau_all, torch.cat([t for part in mine for t in (part, part)])

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
        focus = self.adapter.glance is not None  # adafocus: the selection glances at the clips
        video = torch.cat([model_input(b.frames) for pair in pairs for b in pair]) if focus else None
        per_clip = self.learns_policy and self.estimator.per_clip  # never with adafocus (checked at profile load)
        if per_clip:  # rloo: a tau per clip pair, every rank's draws from the step's generator
            tau_all, tau = self._pair_taus(pairs, step_generator(cfg.seed, step))
            sel = self.adapter.selection(energy, tau=tau)
        else:  # one call: one tau for the step
            sel = self.adapter.selection(energy, step_generator(cfg.seed, step), video=video)
        keeps = sel.keep.split([len(b) for pair in pairs for b in pair])
        rho = sel.discard_rate.split([len(b) for pair in pairs for b in pair])
        clip_ce, focus_labels = [], []  # adafocus: per clip in selection order, the ViT's CE and the label it trains on
        pair_rewards = []  # rloo: per pair, sum_d (-lambda_L * loss_{d,i} - (1 - rho_{d,i}))

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
            if focus:
                clip_ce += [torch.where(labelled, ce_s.detach(), float("nan")),
                            torch.full((len(tgt),), float("nan"), device=self.device).index_put((fwd,), ce_t.detach())]
                focus_labels += [src.label, torch.where(passing, tgt.pseudo_label, -1)]
            if per_clip:
                with torch.no_grad():
                    ce_pair = ce_s.detach().clone()
                    ce_pair[fwd] += ce_t.detach()  # a target clip whose label does not pass adds no loss
                    lam = policy.config.loss_weight
                    pair_rewards.append(-lam * ce_pair - (1.0 - rho[2 * i]) - (1.0 - rho[2 * i + 1]))
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
        flat = torch.stack([sums[n] for n in names])
        if per_clip:  # every rank's pair rewards in the same all-reduce: rank r fills row r of a zero table
            table = torch.zeros(self.dist.world_size, len(tau_all) // self.dist.world_size, dtype=torch.float64, device=self.device)
            table[self.dist.rank] = torch.cat(pair_rewards).double()
            flat = torch.cat([flat, table.flatten()])
        reduced = self.dist.all_reduce_sum(flat)
        s = dict(zip(names, reduced[:len(names)]))
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
        extra: dict[str, float] = {}
        if per_clip:
            rewards = reduced[len(names):].float()  # (world * pairs,), rank-major like tau_all
            advantages = self.estimator.advantage(policy, rewards)
            policy.surrogate(tau_all, advantages).backward()
            advantage = advantages.abs().mean()  # logged: the mean |A_i| (the A_i sum to 0)
            extra = {"reward_pair_mean": float(rewards.mean()), "reward_pair_sd": float(rewards.std())}
        elif self.learns_policy:
            policy.surrogate(sel.tau, advantage).backward()
        if focus:
            is_target = torch.cat([torch.full((len(b),), d == 1, device=self.device) for pair in pairs for d, b in enumerate(pair)])
            glance_loss, surrogate = focus_loss(sel, torch.cat(clip_ce), torch.cat(focus_labels), is_target, cfg.lambda_t)
            (glance_loss + surrogate).backward()
            average_grads(self.adapter.glance, self.dist)
            metrics["glance_loss"] = float(glance_loss.detach())
        params = [p for p in self.adapter.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        policy.commit(reward, step)
        sync_policy(policy, self.dist)
        if focus:
            sync_policy(self.adapter.glance, self.dist)
        # tau, mu, sigma, tau_hat: floats; per segment, their mean and tau/seg1, ... (flat_metrics)
        values = policy.values()
        tau = tau_all.mean(0) if per_clip else sel.tau  # rloo: the mean of the step's draws
        tau = float("nan") if tau is None else tau.detach().cpu().tolist()
        threshold = {  # only for a selector that draws on the threshold (not full, random at a fixed rate, adafocus)
            "reward": float(reward), "advantage": float(advantage), "baseline": float(policy.baseline),
            **flat_metrics({"tau": tau, "mu": values["mu"], "sigma": values["sigma"], "tau_hat": values["tau_hat"]}),
        } if self.adapter.selector_config.uses_policy else {}
        return metrics | extra | threshold | {"lr": lr, "grad_norm": float(grad_norm), "skipped_steps": float(self.skipped_steps)}

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
