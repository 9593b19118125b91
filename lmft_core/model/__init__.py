"""Model core of LMFT: video ViT on kept tokens, token selectors, learned threshold, VideoMAE weights.

Typical use::

    from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig, build_model, build_selector

    model = build_model(ModelConfig(size="vit_b16", num_classes=101, pretrained="videomae_k400.pth"))
    policy = PolicyConfig().build()
    select = build_selector(SelectorConfig(name="lmft"), policy)
    sel = select(energy)                      # energy (B, N_t, N_h, N_w) -> Selection
    logits = model(video, sel.keep)           # video (B, C, T, H, W) -> (B, num_classes)

Terms (tubelet, token, threshold, keep ratio, discard rate) are defined in :mod:`lmft_core.config`.
"""

from __future__ import annotations

import logging

from lmft_core.model.attention import (
    ATTENTION_BACKENDS,
    AttentionBackend,
    TokenLayout,
    register_attention,
    resolve_attention,
)
from lmft_core.model.checkpoints import (
    CheckpointError,
    LoadReport,
    convert_state_dict,
    load_videomae,
    model_config_from_hf,
    read_state_dict,
)
from lmft_core.model.flops import clip_flops, selection_flops
from lmft_core.model.policy import PolicyConfig, ThresholdPolicy
from lmft_core.model.selectors import (
    SELECTORS,
    Selection,
    SelectorConfig,
    build_selector,
    keep_above,
    random_keep,
    register_selector,
)
from lmft_core.model.vit import MODEL_SIZES, ModelConfig, VideoViT, ViTSize, num_params, register_size

log = logging.getLogger(__name__)


def build_model(config: ModelConfig) -> VideoViT:
    """Build the model; with ``config.pretrained`` set, load those VideoMAE weights and log the report.

    The report is logged at WARNING when a tensor is missing or unexpected or the head is fresh,
    at INFO when everything loaded. The :class:`LoadReport` is kept as ``model.load_report`` (None
    without weights).
    """
    model = VideoViT(config)
    model.load_report = None
    if config.pretrained:
        report = model.load_report = load_videomae(model, config.pretrained)
        log.log(logging.INFO if report.complete else logging.WARNING, "%s", report.summary())
    return model


__all__ = [
    "ATTENTION_BACKENDS",
    "MODEL_SIZES",
    "SELECTORS",
    "AttentionBackend",
    "CheckpointError",
    "LoadReport",
    "ModelConfig",
    "PolicyConfig",
    "Selection",
    "SelectorConfig",
    "ThresholdPolicy",
    "TokenLayout",
    "VideoViT",
    "ViTSize",
    "build_model",
    "build_selector",
    "clip_flops",
    "convert_state_dict",
    "keep_above",
    "load_videomae",
    "model_config_from_hf",
    "num_params",
    "random_keep",
    "read_state_dict",
    "register_attention",
    "register_selector",
    "register_size",
    "resolve_attention",
    "selection_flops",
]
