"""CLIP zero-shot pseudo-labels against a direct open_clip computation, and weights handling."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from lmft_core.config import ConfigError
from lmft_core.pseudo_labels import (
    TINY_CLIP_CONFIG,
    TINY_CLIP_MODEL,
    ClipZeroShot,
    PseudoLabelConfig,
    WeightsError,
    build_clip_model,
    fetch_pretrained,
    save_random_checkpoint,
    uses_quick_gelu,
    weights_identity,
)
from lmft_core.run_config import load_profile

CLASSES = ("ride_bike", "jump", "wave")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> PseudoLabelConfig:
    return save_random_checkpoint(tmp_path_factory.mktemp("clip"), seed=0)


def direct_probs(weights_path: str, model_name: str, clips: np.ndarray, prompts: list[str]) -> np.ndarray:
    """The same maths written straight against open_clip, with its own preprocessing transform."""
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights_path)
    model.eval()
    tok = open_clip.get_tokenizer(model_name)
    with torch.no_grad():
        text = model.encode_text(tok(prompts))
        text = text / text.norm(dim=-1, keepdim=True)
        out = []
        for clip in clips:
            imgs = torch.stack([preprocess(Image.fromarray(f)) for f in clip])
            f = model.encode_image(imgs)
            f = f / f.norm(dim=-1, keepdim=True)
            v = f.mean(dim=0)
            v = v / v.norm()
            out.append((model.logit_scale.exp() * v @ text.T).softmax(dim=-1).numpy())
    return np.stack(out)


def test_probabilities_equal_a_direct_open_clip_computation(tiny_clip):
    clips = np.random.default_rng(0).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)  # at CLIP's input size
    zs = ClipZeroShot(dataclasses.replace(tiny_clip, precision="fp32"), CLASSES)
    got = zs.probs(clips)
    prompts = ["a video of a person ride bike", "a video of a person jump", "a video of a person wave"]
    assert zs.cfg.prompts(CLASSES) == prompts
    expected = direct_probs(tiny_clip.pretrained, tiny_clip.model, clips, prompts)
    assert got.shape == (3, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_checkpoint_weights_are_the_ones_loaded(tiny_clip):
    saved = torch.load(tiny_clip.pretrained, weights_only=True)
    model = build_clip_model(tiny_clip)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    other = save_random_checkpoint(tiny_clip.pretrained.rsplit("/", 1)[0] + "/other", seed=1)
    assert not torch.equal(build_clip_model(other).state_dict()["text_projection"], saved["text_projection"])


def test_frames_of_another_size_are_resized_for_clip(tiny_clip):
    zs = ClipZeroShot(tiny_clip, CLASSES)
    clips = np.random.default_rng(1).integers(0, 256, (2, 4, 64, 64, 3), dtype=np.uint8)
    x = zs.image_inputs(clips[0])
    assert x.shape == (4, 3, 32, 32)
    ref = F.interpolate(torch.from_numpy(clips[0]).permute(0, 3, 1, 2).float() / 255, size=(32, 32), mode="bicubic",
                        antialias=True).clamp(0, 1)
    torch.testing.assert_close(x, (ref - zs.mean) / zs.std)
    assert zs.probs(clips).shape == (2, 3)


def test_untrained_clip_is_said_plainly_and_seeded():
    cfg = PseudoLabelConfig(model="ViT-S-32", pretrained="")
    ident = weights_identity(cfg)
    assert ident["untrained"] is True and ident["kind"] == "untrained" and "untrained CLIP" in ident["note"]
    assert ident["tiny"] is False and ident["architecture"]["vision_cfg"]["width"] == 384
    cfg = PseudoLabelConfig(model=TINY_CLIP_MODEL, pretrained="")
    torch.manual_seed(123)
    before = torch.rand(1)
    a = build_clip_model(cfg).state_dict()["text_projection"]
    b = build_clip_model(cfg).state_dict()["text_projection"]
    torch.manual_seed(123)
    assert torch.equal(a, b) and torch.equal(torch.rand(1), before)  # same model every time; caller's RNG untouched


def test_the_demo_labels_with_the_builtin_tiny_clip_and_says_so():
    labels = load_profile("demo").pseudo_labels
    ident = weights_identity(labels)
    assert (labels.model, labels.untrained, labels.tiny) == (TINY_CLIP_MODEL, True, True)
    assert ident["tiny"] is True and ident["kind"] == "untrained" and "tiny CLIP" in ident["tiny_note"]
    assert ident["architecture"] == TINY_CLIP_CONFIG
    model = build_clip_model(labels)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000 and model.visual.image_size == (32, 32)
    paper = load_profile("paper")
    assert not paper.pseudo_labels.tiny and paper.pseudo_labels.frames_seen(paper.clip.num_frames) == 16  # the paper's


def test_clip_sees_the_configured_number_of_evenly_spaced_frames(tiny_clip):
    clips = np.random.default_rng(2).integers(0, 256, (3, 16, 32, 32, 3), dtype=np.uint8)
    every = ClipZeroShot(tiny_clip, CLASSES)
    four = ClipZeroShot(dataclasses.replace(tiny_clip, num_frames=4), CLASSES)
    # the middle frame of each quarter of the clip: floor((i + 0.5) * 16 / 4)
    np.testing.assert_allclose(four.probs(clips), every.probs(clips[:, [2, 6, 10, 14]]), atol=1e-6)
    assert not np.allclose(four.probs(clips), every.probs(clips), atol=1e-4)
    np.testing.assert_allclose(ClipZeroShot(dataclasses.replace(tiny_clip, num_frames=16), CLASSES).probs(clips),
                               every.probs(clips), atol=0)
    with pytest.raises(ConfigError, match="pseudo_labels.num_frames=4 is more than the clip has"):
        four.probs(clips[:, :3])


@pytest.mark.parametrize("override, message", [
    ("pseudo_labels.num_frames=0", r"--set pseudo_labels.num_frames=0: \[pseudo_labels\]: pseudo_labels.num_frames must be >= 1"),
    ("pseudo_labels.num_frames=17", r"pseudo_labels.num_frames=17 is more than the clip has \(clip.num_frames=16\)"),
])
def test_a_labeller_frame_count_the_clip_cannot_give_fails_at_profile_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("demo", [override])
    with pytest.raises(ConfigError, match=r"pseudo_labels.num_frames=8 is more than the clip has \(clip.num_frames=4\)"):
        load_profile("demo", ["pseudo_labels.num_frames=8", "clip.num_frames=4"])
    assert load_profile("demo", ["pseudo_labels.num_frames=4", "clip.num_frames=4"]).pseudo_labels.num_frames == 4


def test_bf16_autocast_keeps_the_pseudo_labels_and_confidences_of_fp32():
    """Seeded random CLIPs, 10 classes, 16 random clips each: bf16 autocast moves no probability by 0.01 and
    keeps every pseudo-label whose fp32 top-2 margin exceeds 0.01 (measured: at most 0.004)."""
    classes = ("wave", "jump", "spin", "walk", "clap", "ride_bike", "swim", "climb", "run", "throw")
    clips = np.random.default_rng(3).integers(0, 256, (16, 8, 32, 32, 3), dtype=np.uint8)
    agree, clear_total = [], 0
    for seed in range(3):
        fp32, bf16 = (ClipZeroShot(PseudoLabelConfig(model=TINY_CLIP_MODEL, pretrained="", precision=p, init_seed=seed),
                                   classes).probs(clips) for p in ("fp32", "bf16"))
        assert np.abs(fp32 - bf16).max() < 0.01 and np.abs(fp32.max(1) - bf16.max(1)).max() < 0.01
        top2 = np.sort(fp32, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 0.01
        assert np.array_equal(fp32.argmax(1)[clear], bf16.argmax(1)[clear])
        agree.append((fp32.argmax(1) == bf16.argmax(1)).mean())
        clear_total += clear.sum()
    assert clear_total >= 24  # the property is tested on most clips (one seed's CLIP sees all clips alike: near-ties)
    assert np.mean(agree) >= 0.9  # near-ties may flip


def test_weights_identity_hashes_checkpoint_files(tiny_clip):
    ident = weights_identity(tiny_clip)
    assert ident["kind"] == "file" and len(ident["sha256"]) == 64 and ident["untrained"] is False
    assert weights_identity(dataclasses.replace(tiny_clip))["sha256"] == ident["sha256"]
    tag = weights_identity(PseudoLabelConfig())
    assert tag["kind"] == "tag" and "openai" in str(tag["source"])


def test_bad_weights_and_configs_fail_clearly(tiny_clip, tmp_path, monkeypatch, network_up):
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        weights_identity(dataclasses.replace(tiny_clip, pretrained=str(tmp_path / "missing.pt")))
    with pytest.raises(ConfigError, match="neither an open_clip tag"):
        weights_identity(PseudoLabelConfig(pretrained="no-such-tag"))
    with pytest.raises(ConfigError, match="no model"):
        weights_identity(PseudoLabelConfig(model="no-such-model"))
    with pytest.raises(ConfigError, match="action"):
        PseudoLabelConfig(prompt_template="a photo of {}")

    def hub_error(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr("open_clip.pretrained.download_pretrained", hub_error)
    for attempt in (fetch_pretrained, build_clip_model):
        with pytest.raises(WeightsError, match=r"pseudo_labels.pretrained=/path/to/open_clip_pytorch_model.bin") as e:
            attempt(PseudoLabelConfig(cache_dir=str(tmp_path)))
        assert "timm/vit_base_patch16_clip_224.openai" in str(e.value) and "Name or service not known" in str(e.value)


@pytest.fixture
def network_up(monkeypatch):
    """The download host answers: a listening local socket stands in for the hub."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
        monkeypatch.setattr("urllib.request.getproxies", dict)
        yield


def network_down(monkeypatch) -> None:
    """The download host refuses connections at once (nothing listens on port 9 of the loopback)."""
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("urllib.request.getproxies", dict)


def test_without_network_a_tag_fails_within_seconds_with_instructions(tmp_path, monkeypatch):
    network_down(monkeypatch)

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub client must not be called without a network")

    monkeypatch.setattr("open_clip.pretrained.download_pretrained", no_hub)
    for attempt in (fetch_pretrained, build_clip_model):
        t0 = time.perf_counter()
        with pytest.raises(WeightsError) as e:
            attempt(PseudoLabelConfig(cache_dir=str(tmp_path)))
        assert time.perf_counter() - t0 < 5
        assert "not in the download cache and 127.0.0.1:9 cannot be reached (ConnectionRefusedError" in str(e.value)
        assert "--set pseudo_labels.pretrained=/path/to/open_clip_pytorch_model.bin" in str(e.value)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set"):
        fetch_pretrained(PseudoLabelConfig(cache_dir=str(tmp_path)))


def test_a_cached_tag_needs_no_network(tmp_path, monkeypatch):
    """A checkpoint in the hub cache layout open_clip downloads into is used as it is, without the network."""
    network_down(monkeypatch)
    snapshot = tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    (tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "refs").mkdir()
    (tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "refs" / "main").write_text("abc123")
    t0 = time.perf_counter()
    assert fetch_pretrained(PseudoLabelConfig(cache_dir=str(tmp_path))) == str(snapshot / "open_clip_pytorch_model.bin")
    assert time.perf_counter() - t0 < 1
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")  # preferred, as open_clip does
    assert fetch_pretrained(PseudoLabelConfig(cache_dir=str(tmp_path))) == str(snapshot / "open_clip_model.safetensors")


def test_errors_that_are_not_downloads_keep_their_own_message_and_traceback(tiny_clip, tmp_path, monkeypatch):
    # a corrupt local checkpoint: torch's own error, raised from torch's loader
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint" * 100)
    with pytest.raises(Exception) as e:
        build_clip_model(dataclasses.replace(tiny_clip, pretrained=str(corrupt)))
    assert not isinstance(e.value, WeightsError) and "download" not in str(e.value)
    assert any("torch" in entry.path.parts and entry.name == "load" for entry in e.traceback)
    assert any(str(corrupt) in note for note in e.value.__notes__)
    # weights of another architecture: the size mismatch as load_state_dict reports it
    wide = save_random_checkpoint(tmp_path / "wide", name="lmft-wide-clip",
                                  model_config={**TINY_CLIP_CONFIG, "embed_dim": 48})
    with pytest.raises(RuntimeError, match="size mismatch") as e:
        build_clip_model(dataclasses.replace(tiny_clip, pretrained=wide.pretrained))
    assert not isinstance(e.value, WeightsError)
    # out of memory while building: the same exception, with a note naming the model
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("open_clip.create_model", oom)
    with pytest.raises(torch.OutOfMemoryError, match="Tried to allocate 2.00 GiB") as e:
        build_clip_model(tiny_clip)
    assert e.value.__notes__ == [f"lmft: while building open_clip model {tiny_clip.model!r} with weights {tiny_clip.pretrained!r}"]


def activations(model: torch.nn.Module) -> set[str]:
    """Class names of the MLP activations of ``model``'s transformer blocks."""
    return {type(m.mlp.gelu).__name__ for m in model.modules() if hasattr(m, "mlp") and hasattr(m.mlp, "gelu")}


def test_quick_gelu_decision_for_tags_and_model_names():
    # OpenAI weights were trained with QuickGELU; open_clip's plain ViT-B-16 config says GELU.
    assert open_clip.get_model_config("ViT-B-16").get("quick_gelu", False) is False
    assert uses_quick_gelu(PseudoLabelConfig(model="ViT-B-16", pretrained="openai"))
    assert uses_quick_gelu(PseudoLabelConfig(model="ViT-B-16-quickgelu", pretrained="openai"))
    assert uses_quick_gelu(PseudoLabelConfig(model="ViT-B-16-quickgelu", pretrained=""))  # from the model config
    assert not uses_quick_gelu(PseudoLabelConfig(model="ViT-B-16", pretrained="laion2b_s34b_b88k"))
    assert not uses_quick_gelu(PseudoLabelConfig(model="ViT-B-16", pretrained=""))
    assert weights_identity(PseudoLabelConfig(model="ViT-B-16", pretrained="openai"))["quick_gelu"] is True
    # the paper profile names the QuickGELU architecture, so a local OpenAI file also gets it
    paper = load_profile("paper").pseudo_labels
    assert paper.model == "ViT-B-16-quickgelu" and paper.pretrained == "openai"
    assert open_clip.get_model_config(paper.model)["quick_gelu"] is True


def test_a_quick_gelu_tag_builds_quick_gelu_modules(tiny_clip, monkeypatch):
    """A pretrained tag whose config says quick_gelu (as ``openai`` does) gets QuickGELU in every block,
    though the model config says GELU; loaded through open_clip's tag path from a local checkpoint."""
    from open_clip import pretrained as pretrained_registry
    from open_clip.transformer import QuickGELU

    assert activations(build_clip_model(tiny_clip)) == {"GELU"}  # the tiny config itself: standard GELU
    tag = {"url": "https://example.invalid/tiny.pt", "hf_hub": "", "quick_gelu": True, "mean": None, "std": None}
    monkeypatch.setitem(pretrained_registry._PRETRAINED, tiny_clip.model, {"quickgelu_tag": tag})
    monkeypatch.setattr("lmft_core.pseudo_labels.fetch_pretrained", lambda cfg: tiny_clip.pretrained)
    cfg = dataclasses.replace(tiny_clip, pretrained="quickgelu_tag")
    assert uses_quick_gelu(cfg)
    model = build_clip_model(cfg)
    assert activations(model) == {"QuickGELU"}
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(model.visual.transformer.resblocks[0].mlp.gelu(x), x * torch.sigmoid(1.702 * x))
    saved = torch.load(tiny_clip.pretrained, weights_only=True)
    torch.testing.assert_close(model.state_dict()["text_projection"], saved["text_projection"])


def test_offline_advice_for_a_plain_vit_b_16_with_openai_names_the_quickgelu_model(tmp_path, monkeypatch):
    network_down(monkeypatch)
    with pytest.raises(WeightsError, match="pseudo_labels.model=ViT-B-16-quickgelu"):
        fetch_pretrained(PseudoLabelConfig(model="ViT-B-16", pretrained="openai", cache_dir=str(tmp_path)))
    with pytest.raises(WeightsError) as e:
        fetch_pretrained(PseudoLabelConfig(cache_dir=str(tmp_path)))  # already the QuickGELU model: no model advice
    assert "pseudo_labels.model=" not in str(e.value)
