"""Model core of LMFT: video ViT on kept tokens, token selectors, learned threshold, VideoMAE weights.

Typical use::

    from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig

    model = ModelConfig(size="vit_b16", num_classes=101, clip=ClipConfig(), pretrained="videomae_k400.pth")
    model = build_model(model)                # VideoViT with those weights (ModelConfig.build(): fresh)
    policy = PolicyConfig().build()
    select = SelectorConfig(name="lmft").build(policy)
    sel = select(energy)                      # energy (B, N_t, N_h, N_w) -> Selection
    logits = model(video, sel.keep)           # video (B, C, T, H, W) -> (B, num_classes)

    # one threshold per temporal segment: the selector fixes the policy kind, the clip N_t
    selector = SelectorConfig(name="lmft-segment")
    policy = selector.resolve_policy(PolicyConfig(), ClipConfig()).build()   # SegmentThresholdPolicy, tau (N_t - 1,)

Terms (tubelet, token, threshold, keep ratio, discard rate) are defined in :mod:`lmft_core.config`.
"""

from __future__ import annotations

from lmft_core.model.attention import (
    ATTENTION_BACKENDS,
    AttentionBackend,
    TokenLayout,
    register_attention,
    resolve_attention,
)
from lmft_core.model.flops import clip_flops, selection_flops
from lmft_core.model.policy import ESTIMATORS, POLICIES, PolicyConfig, SegmentThresholdPolicy, ThresholdPolicy, flat_metrics, tau_text
from lmft_core.model.pretrained import (
    CheckpointError,
    LoadReport,
    build_model,
    convert_state_dict,
    load_videomae,
    model_config_from_hf,
    read_state_dict,
)
from lmft_core.model.selectors import (
    FIRST_SEGMENT_RULES,
    SELECTOR_POLICY,
    SELECTORS,
    Selection,
    SelectorConfig,
    keep_above,
    random_keep,
    register_selector,
)
from lmft_core.model.vit import MODEL_SIZES, ModelConfig, VideoViT, ViTSize, num_params, register_size

__all__ = [
    "ATTENTION_BACKENDS",
    "FIRST_SEGMENT_RULES",
    "MODEL_SIZES",
    "ESTIMATORS",
    "POLICIES",
    "SELECTORS",
    "SELECTOR_POLICY",
    "AttentionBackend",
    "CheckpointError",
    "LoadReport",
    "ModelConfig",
    "PolicyConfig",
    "SegmentThresholdPolicy",
    "Selection",
    "SelectorConfig",
    "ThresholdPolicy",
    "TokenLayout",
    "VideoViT",
    "ViTSize",
    "build_model",
    "clip_flops",
    "convert_state_dict",
    "flat_metrics",
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
    "tau_text",
]
