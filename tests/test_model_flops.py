"""Analytic FLOPs per clip against torch.utils.flop_counter, and the ViT-B/16 closed form."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from lmft_core.config import ClipConfig
from lmft_core.model import ModelConfig, VideoViT, clip_flops, selection_flops

CFG = ModelConfig(size="vit_tiny", num_classes=6, clip=ClipConfig(num_frames=8, image_size=48), embed_dim=48,
                  depth=2, num_heads=3, drop_path=0.0)


def counted_flops(model: VideoViT, video: torch.Tensor, keep: torch.Tensor | None) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
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
