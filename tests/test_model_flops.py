"""Analytic FLOPs per clip against torch.utils.flop_counter, and the ViT-B/16 closed form.

The reference is torch's FLOP counter, whose coverage moves with the torch version: torch 2.14 has no
formula for the CPU SDPA kernel (``aten._scaled_dot_product_flash_attention_for_cpu``), 2.15 has one. So
the counter used here gets the attention formula for that kernel where the installed torch lacks it, and
that formula is itself checked against attention written as explicit matmuls, which every version counts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from lmft_core.config import ClipConfig
from lmft_core.model import ModelConfig, VideoViT, clip_flops, selection_flops

CFG = ModelConfig(size="vit_tiny", num_classes=6, clip=ClipConfig(num_frames=8, image_size=48), embed_dim=48,
                  depth=2, num_heads=3, drop_path=0.0)


CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def attention_matmul_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``softmax(q kᵀ) v`` for q (B, H, S_q, D), k (B, H, S_k, D), v (B, H, S_k, D_v): the two
    batched matmuls at 2 FLOPs per multiply-add, as the counter counts ``bmm`` (softmax and scale: 0)."""
    b, h, s_q, d = query_shape
    s_k, d_v = key_shape[2], value_shape[3]
    return 2 * b * h * s_q * s_k * d + 2 * b * h * s_q * s_k * d_v


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, with the CPU SDPA kernel's formula added where the installed torch lacks it."""
    missing = {} if CPU_SDPA in flop_registry else {CPU_SDPA: attention_matmul_flops}
    return FlopCounterMode(display=False, custom_mapping=missing)


def counted_flops(model: VideoViT, video: torch.Tensor, keep: torch.Tensor | None) -> int:
    with flop_counter() as counter, torch.no_grad():
        model(video, keep, attention="padded")
    return counter.get_total_flops()


def test_analytic_flops_equal_the_flop_counter_per_clip():
    torch.manual_seed(0)
    model = VideoViT(CFG).eval()
    video = torch.randn(1, 3, 8, 48, 48)
    n = CFG.clip.num_tokens  # 4 x 3 x 3 = 36
    assert counted_flops(model, video, None) == clip_flops(CFG, n)
    g = torch.Generator().manual_seed(1)
    for p in (0.2, 0.5, 0.8):
        keep = torch.rand(1, *CFG.clip.grid, generator=g) < p
        keep[:, 0] = True
        assert counted_flops(model, video, keep) == clip_flops(CFG, int(keep.sum())), p


def test_attention_formula_equals_explicit_matmuls():
    """The counter's SDPA count (torch's own formula, or the one added above) equals the count of the same
    attention written as matmuls, with and without a boolean mask and with unequal query/key lengths."""
    g = torch.Generator().manual_seed(0)
    for s_q, s_k, mask in ((36, 36, False), (36, 36, True), (5, 17, True)):
        q, k, v = (torch.randn(2, 3, s, 16, generator=g) for s in (s_q, s_k, s_k))
        attn_mask = torch.rand(2, 1, s_q, s_k, generator=g) < 0.7 if mask else None
        if attn_mask is not None:
            attn_mask[..., 0] = True  # no fully masked row
        with flop_counter() as sdpa:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        with FlopCounterMode(display=False) as matmuls:
            scores = (q @ k.transpose(-1, -2)) / 16**0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            reference = scores.softmax(-1) @ v
        torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
        assert sdpa.get_total_flops() == matmuls.get_total_flops() == 2 * 2 * 3 * s_q * s_k * 16 * 2


def test_selection_flops_per_video_and_monotone():
    keep = torch.zeros(3, *CFG.clip.grid, dtype=torch.bool)
    keep[:, 0] = True
    keep[1, 1] = True
    keep[2] = True
    flops = selection_flops(CFG, keep)
    assert flops.tolist() == [clip_flops(CFG, 9), clip_flops(CFG, 18), clip_flops(CFG, 36)]
    assert flops[0] < flops[1] < flops[2]


def test_vit_b16_full_clip_closed_form():
    cfg = ModelConfig(size="vit_b16", num_classes=400, clip=ClipConfig())
    n, d = 1568, 768
    expected = 2 * n * d * 3 * 2 * 16 * 16 + 12 * (2 * n * 12 * d * d + 4 * n * n * d) + 2 * d * 400
    assert clip_flops(cfg, n) == expected
    # VideoMAE reports 180 G for ViT-B/16 16x224x224, counted by fvcore in multiply-adds (1 each)
    assert 355e9 < expected < 365e9
    # keeping half the tokens removes more than half of the FLOPs: the embedding and the linear layers
    # halve (only kept tubelets are embedded) and attention, quadratic, falls to a quarter
    head = 2 * d * 400
    assert clip_flops(cfg, n // 2) - head < 0.5 * (expected - head)


def test_model_flops_utilisation_over_the_data_sheet_peak():
    """MFU = FLOPs / seconds / the GPU's dense bf16 peak, the peak looked up by the device's name (the more
    specific name first: an H100 PCIe is not an SXM H100)."""
    from lmft_core.benchmarking import bf16_peak_tflops, model_flops_utilisation

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bf16_peak_tflops("a GPU nobody listed") is None
    assert model_flops_utilisation(2 * 989.4e12, 4.0, "NVIDIA H100 80GB HBM3") == 0.5
    assert model_flops_utilisation(1e12, 1.0, "a GPU nobody listed") is None
