"""VideoMAE weights: parity with transformers through both checkpoint formats, round trips, reports."""

from __future__ import annotations

import argparse

import pytest
import torch
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification

from lmft_core.model import (
    CheckpointError,
    ModelConfig,
    VideoViT,
    build_model,
    load_videomae,
    model_config_from_hf,
    read_state_dict,
)

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")

HF_GEOMETRY = dict(image_size=32, patch_size=16, num_channels=3, num_frames=8, tubelet_size=2)
HF_WIDTHS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=160)


def hf_config(**kw) -> VideoMAEConfig:
    return VideoMAEConfig(**HF_GEOMETRY, **HF_WIDTHS, use_mean_pooling=True, **kw)


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random (biases, norms, q/v biases included), so no mapping can hide behind zeros or ones."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.dim() == 1 and p.shape[0] == 64 else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def hf_model() -> VideoMAEForVideoClassification:
    torch.manual_seed(0)
    return randomise(VideoMAEForVideoClassification(hf_config(num_labels=7)), seed=1)


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    """(B, C, T, H, W): this model's layout; transformers takes (B, T, C, H, W)."""
    return torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))


def hf_logits(hf_model, clips) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(pixel_values=clips.transpose(1, 2)).logits


def ours_from(path, **overrides) -> tuple[VideoViT, object]:
    model = VideoViT(model_config_from_hf(path.parent if path.is_file() else path, drop_path=0.0, **overrides)).eval()
    return model, load_videomae(model, path)


def assert_parity(model, hf_model, clips):
    ref = hf_logits(hf_model, clips)
    with torch.no_grad():
        for backend in ("sdpa_split", "sdpa_nested", "padded"):
            keep_all = torch.ones(clips.shape[0], 4, 2, 2, dtype=torch.bool)
            torch.testing.assert_close(model(clips, keep_all, attention=backend), ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(model(clips), ref, atol=1e-4, rtol=0)


def test_parity_hf_save_pretrained_q_bias_form(hf_model, clips, tmp_path):
    hf_model.save_pretrained(tmp_path)  # safetensors; transformers writes q_bias / v_bias
    keys = read_state_dict(tmp_path)
    assert "videomae.encoder.layer.0.attention.attention.q_bias" in keys
    model, report = ours_from(tmp_path)
    assert report.format == "hf" and not report.missing and not report.unexpected and not report.fresh_head
    assert model.config.num_classes == 7 and model.config.norm_eps == hf_model.config.layer_norm_eps
    assert_parity(model, hf_model, clips)


def test_parity_hf_state_dict_query_bias_form(hf_model, clips, tmp_path):
    state = hf_model.state_dict()  # in memory transformers 5 names them query.bias / value.bias
    assert "videomae.encoder.layer.0.attention.attention.query.bias" in state
    hf_model.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, report = ours_from(tmp_path)
    assert not report.missing and not report.unexpected
    assert_parity(model, hf_model, clips)


@pytest.mark.parametrize("key", ["model", "module"])
def test_parity_through_the_original_videomae_format(hf_model, clips, tmp_path, key):
    """HF -> ours -> saved as an original fine-tuning checkpoint -> loaded into a fresh model."""
    hf_model.save_pretrained(tmp_path / "hf")
    converted, _ = ours_from(tmp_path / "hf")
    ckpt = tmp_path / "checkpoint-best.pth"
    torch.save({key: converted.state_dict(), "epoch": 3, "args": argparse.Namespace(lr=1e-3)}, ckpt)
    fresh = VideoViT(converted.config).eval()
    report = load_videomae(fresh, ckpt)
    assert report.format == "videomae" and not report.missing and not report.unexpected
    assert sorted(report.loaded) == sorted(fresh.state_dict())
    assert_parity(fresh, hf_model, clips)


def test_original_pretraining_checkpoint_drops_the_decoder(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(size="vit_tiny", num_classes=4, clip=model_config_from_hf(hf_config().to_dict()).clip,
                      embed_dim=64, depth=2, num_heads=4, drop_path=0.0)
    source = randomise(VideoViT(cfg), seed=3)
    encoder = {f"encoder.{k}": v for k, v in source.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
    encoder["encoder.norm.weight"] = torch.ones(64)
    encoder["encoder.norm.bias"] = torch.zeros(64)
    decoder = {"decoder.blocks.0.mlp.fc1.weight": torch.zeros(8, 4), "encoder_to_decoder.weight": torch.zeros(4, 64),
               "mask_token": torch.zeros(1, 1, 4)}
    path = tmp_path / "pretrain.pth"
    torch.save({"model": {**encoder, **decoder}, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(model="pretrain_videomae_base_patch16_224")}, path)
    target = VideoViT(cfg)
    report = load_videomae(target, path)
    assert report.format == "videomae_pretrain"
    assert report.unexpected == ["norm.bias", "norm.weight"]
    assert set(decoder) <= set(report.dropped)
    assert report.fresh_head and set(report.missing) == {"fc_norm.weight", "fc_norm.bias"}
    for k, v in source.state_dict().items():
        if k.startswith("blocks.") or k.startswith("patch_embed."):
            assert torch.equal(target.state_dict()[k], v), k
    assert "freshly initialised" in report.summary() and "unexpected (2): norm.bias, norm.weight" in report.summary()


def test_hf_pretraining_checkpoint_loads_the_encoder(tmp_path):
    torch.manual_seed(0)
    pre = randomise(VideoMAEForPreTraining(hf_config(decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                                     decoder_num_attention_heads=2, decoder_intermediate_size=64)), 4)
    pre.save_pretrained(tmp_path)
    model, report = ours_from(tmp_path, num_classes=5)
    assert report.format == "hf" and report.fresh_head
    assert any(k.startswith("decoder.") for k in report.dropped) and "encoder_to_decoder.weight" in report.dropped
    assert set(report.missing) == {"fc_norm.weight", "fc_norm.bias"} and not report.unexpected
    assert torch.equal(model.blocks[1].attn.v_bias, pre.videomae.encoder.layer[1].attention.attention.value.bias)


def test_fresh_head_when_the_class_count_differs(hf_model, clips, tmp_path):
    hf_model.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = build_model(model_config_from_hf(tmp_path, num_classes=3, drop_path=0.0, pretrained=str(tmp_path)))
    report = model.load_report
    assert report.fresh_head and "head.weight (7, 64)" in report.dropped and not report.missing
    assert model.head.weight.shape == (3, 64) and model.head.weight.abs().max() < 0.001 * 0.02 * 5  # init std 0.02, scaled by 0.001
    assert torch.equal(model.fc_norm.weight, hf_model.fc_norm.weight)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="neither model.safetensors"):
        read_state_dict(tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_state_dict(junk)
    torch.save({"epoch": 1}, tmp_path / "nostate.pth")
    with pytest.raises(CheckpointError, match="no state dict"):
        read_state_dict(tmp_path / "nostate.pth")


def test_shape_mismatch_is_an_error(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)
    wrong = VideoViT(model_config_from_hf(tmp_path, embed_dim=96, num_heads=4))
    with pytest.raises(CheckpointError, match=r"shape mismatch .*patch_embed.proj.weight"):
        load_videomae(wrong, tmp_path)


def test_load_report_is_logged_at_warning_unless_everything_loaded(hf_model, tmp_path, caplog):
    """A complete load logs at INFO; a fresh head, a missing or an unexpected tensor at WARNING."""
    import logging

    hf_model.save_pretrained(tmp_path / "hf")
    caplog.set_level(logging.INFO, logger="lmft_core.model.pretrained")

    def levels_of(config) -> list[int]:
        caplog.clear()
        build_model(config)
        return [r.levelno for r in caplog.records if r.name == "lmft_core.model.pretrained" and str(config.pretrained) in r.getMessage()]

    complete = model_config_from_hf(tmp_path / "hf", pretrained=str(tmp_path / "hf"))
    assert levels_of(complete) == [logging.INFO]
    fresh = model_config_from_hf(tmp_path / "hf", num_classes=3, pretrained=str(tmp_path / "hf"))
    assert levels_of(fresh) == [logging.WARNING]

    own = VideoViT(model_config_from_hf(tmp_path / "hf")).state_dict()
    extra = dict(own, **{"blocks.0.attn.extra": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pth")
    assert levels_of(model_config_from_hf(tmp_path / "hf", pretrained=str(tmp_path / "extra.pth"))) == [logging.WARNING]
    partial = {k: v for k, v in own.items() if k != "fc_norm.weight"}
    torch.save(partial, tmp_path / "partial.pth")
    config = model_config_from_hf(tmp_path / "hf", pretrained=str(tmp_path / "partial.pth"))
    assert levels_of(config) == [logging.WARNING]
    assert "missing (1): fc_norm.weight" in caplog.text
