"""The adapted classifier: the video ViT, the learned threshold policy and the selector that joins them.

One module holds the learned parts, so that ``.train()`` / ``.eval()`` alone switches the learned
selectors (``lmft``, ``lmft-segment``) between a sampled tau and tau_hat (``adafocus`` between a drawn
and the best window), and one ``state_dict()`` (keys ``model.*``, ``policy.*`` and, for ``adafocus``,
``glance.*``) holds them. Data-parallel training wraps only ``adapter.model`` in DDP (the policy and the
glance are kept identical across workers by :mod:`lmft_core.train.step`); inference uses the adapter itself.
Clips that ``adafocus`` lets exit early (eval) take the glance's logits and never reach the ViT.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from lmft_core.model.focus import GlanceNet
from lmft_core.model.policy import PolicyConfig, ThresholdPolicy
from lmft_core.model.pretrained import build_model
from lmft_core.model.selectors import Selection, SelectorConfig
from lmft_core.model.vit import ModelConfig, VideoViT
from lmft_core.shards.batch import model_input


class LMFTClassifier(nn.Module):
    """``forward(video, energy)``: video float (B, 3, T, S, S), energy (B, N_t, N_h, N_w) ->
    (logits (B, K), :class:`Selection`). ``classes`` name the K outputs."""

    def __init__(self, model: VideoViT, policy: ThresholdPolicy, selector: SelectorConfig, classes: Sequence[str],
                 glance: GlanceNet | None = None):
        super().__init__()
        if len(classes) != model.config.num_classes:
            raise ValueError(f"{len(classes)} classes but the model has {model.config.num_classes} outputs")
        self.model = model
        self.policy = policy
        self.glance = glance
        self.selector_config = selector
        selector.build(policy, glance)  # fail now, not at the first batch, if the selector cannot be built
        self.classes = tuple(classes)

    @classmethod
    def build(cls, model: ModelConfig, policy: PolicyConfig, selector: SelectorConfig, classes: Sequence[str]) -> LMFTClassifier:
        """The adapter of these configs; the policy's kind and segment count come from ``selector`` and
        ``model.clip`` (:meth:`SelectorConfig.resolve_policy`); an ``adafocus`` selector adds its glance network."""
        model.require_derived()
        glance = GlanceNet(model.clip, model.num_classes, selector.glance_channels) if selector.focus else None
        return cls(build_model(model), selector.resolve_policy(policy, model.clip).build(), selector, classes, glance)

    def selection(self, energy: Tensor, generator: torch.Generator | None = None,
                  selector: SelectorConfig | None = None, video: Tensor | None = None,
                  tau: Tensor | None = None) -> Selection:
        """Keep mask of ``energy`` with the adapter's selector (or ``selector``, built on this policy and
        glance); ``video`` (B, 3, T, S, S) is what ``adafocus`` glances at; ``tau`` (B, *policy shape): each
        clip's own threshold, for a learned selector only."""
        select = (selector or self.selector_config).build(self.policy, self.glance)
        return select(energy, generator, video) if tau is None else select(energy, generator, video, tau=tau)

    def forward(self, video: Tensor, energy: Tensor, generator: torch.Generator | None = None,
                selector: SelectorConfig | None = None) -> tuple[Tensor, Selection]:
        sel = self.selection(energy, generator, selector, video)
        if sel.exited is None or not bool(sel.exited.any()):
            return self.model(video, sel.keep), sel
        logits = sel.glance_logits.float().clone()
        run = (~sel.exited).nonzero().squeeze(1)
        if len(run):
            logits[run] = self.model(video[run], sel.keep[run]).float()
        return logits, sel

    @torch.no_grad()
    def predict(self, frames: Tensor, energy: Tensor, generator: torch.Generator | None = None,
                amp_dtype: torch.dtype | None = None) -> dict[str, Tensor]:
        """Class probabilities of clips as stored in the shards, with tau_hat (eval mode).

        ``frames`` uint8 (B, T, S, S, 3), ``energy`` float (B, N_t, N_h, N_w) -> ``probs`` (B, K),
        ``label`` (B,) argmax, ``keep_ratio`` (B,) fraction of tokens kept; on the adapter's device.
        ``generator`` drives random selectors; ``amp_dtype`` runs the forward under autocast.
        """
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                logits, sel = self(model_input(frames.to(device)), energy.to(device).float(), generator)
            probs = logits.float().softmax(-1)
            return {"probs": probs, "label": probs.argmax(-1), "keep_ratio": 1.0 - sel.discard_rate}
        finally:
            self.train(was_training)
