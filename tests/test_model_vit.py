"""VideoViT on kept tokens: packed == plain == per-video, backends agree, isolation, gradients, golden losses."""

from __future__ import annotations

import pytest
import torch

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.model import (
    MODEL_SIZES,
    ModelConfig,
    PolicyConfig,
    SelectorConfig,
    TokenLayout,
    VideoViT,
    resolve_attention,
)
from lmft_core.model.vit import sinusoid_table

# torch's own notices: jagged SDPA on CPU converts to the strided layout internally; flex runs eagerly on CPU
pytestmark = [
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage"),
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]

CLIP = ClipConfig(num_frames=8, image_size=32, tubelet=2, patch=16)  # grid (4, 2, 2): 16 tokens


def tiny_config(**kw) -> ModelConfig:
    base = dict(size="vit_tiny", num_classes=5, clip=CLIP, embed_dim=48, depth=2, num_heads=3, drop_path=0.0)
    return ModelConfig(**{**base, **kw})


def make(seed: int = 0, **kw) -> VideoViT:
    torch.manual_seed(seed)
    model = VideoViT(tiny_config(**kw))
    with torch.no_grad():  # non-trivial biases and norms, and a head that is not ~0
        for name, p in model.named_parameters():
            if name.endswith(("q_bias", "v_bias", "norm1.weight", "norm2.weight", "fc_norm.bias", "head.weight")):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def random_keep_mask(b: int, seed: int, p: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand((b, *CLIP.grid), generator=g) < p
    keep[:, 0] = True
    return keep


def videos(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 8, 32, 32, generator=torch.Generator().manual_seed(seed))


PACKED = ["sdpa_split", "sdpa_nested", "dense_mask", "flex"]


@pytest.mark.parametrize("backend", PACKED + ["padded"])
def test_keep_all_equals_plain_vit(backend):
    model, x = make(), videos(3)
    with torch.no_grad():
        plain = model(x, None, attention="padded")  # the ordinary batched ViT, no mask, no gather
        kept = model(x, torch.ones(3, *CLIP.grid, dtype=torch.bool), attention=backend)
    torch.testing.assert_close(kept, plain, atol=1e-5, rtol=1e-5)


def test_plain_vit_against_naive_loop():
    """An independent per-token reference: explicit softmax attention written out here."""
    model, x = make(), videos(2)
    with torch.no_grad():
        h = model.embed(x)
        for blk in model.blocks:
            a = blk.attn
            y = blk.norm1(h)
            d = y.shape[-1]
            q = y @ a.qkv.weight[:d].T + a.q_bias
            k = y @ a.qkv.weight[d : 2 * d].T
            v = y @ a.qkv.weight[2 * d :].T + a.v_bias
            heads = []
            for hh in range(a.num_heads):
                s = slice(hh * d // a.num_heads, (hh + 1) * d // a.num_heads)
                w = torch.softmax(q[..., s] @ k[..., s].transpose(-1, -2) / (d // a.num_heads) ** 0.5, -1)
                heads.append(w @ v[..., s])
            h = h + a.proj(torch.cat(heads, -1))
            h = h + blk.mlp(blk.norm2(h))
        ref = model.head(model.fc_norm(h.mean(1)))
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", PACKED + ["padded"])
def test_packed_equals_per_video_loop(backend):
    model, x, keep = make(), videos(4), random_keep_mask(4, seed=3)
    assert len(set(keep.flatten(1).sum(1).tolist())) > 1  # lengths differ: the packing is exercised
    with torch.no_grad():
        loop = torch.cat([model(x[i : i + 1], keep[i : i + 1], attention="padded") for i in range(4)])
        packed = model(x, keep, attention=backend)
    torch.testing.assert_close(packed, loop, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["auto", "varlen", "flex", "sdpa_nested", "sdpa_split", "padded"])
def test_on_a_gpu_under_bf16_packed_equals_the_cpu_per_video_loop(backend):
    """The model on a GPU under bf16 autocast (``auto``: varlen where the GPU has it) against the per-video loop on
    the CPU in fp32: equal to bf16's precision, with kept lengths that differ."""
    from lmft_core.model import ATTENTION_BACKENDS

    if backend != "auto" and ATTENTION_BACKENDS[backend].unavailable(torch.device("cuda")):
        pytest.skip(ATTENTION_BACKENDS[backend].unavailable(torch.device("cuda")))
    model, x, keep = make(), videos(4), random_keep_mask(4, seed=3)
    with torch.no_grad():
        loop = torch.cat([model(x[i : i + 1], keep[i : i + 1], attention="padded") for i in range(4)])
        gpu = make().cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = gpu(x.cuda(), keep.cuda(), attention=backend)
    torch.testing.assert_close(out.float().cpu(), loop, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend", PACKED)
def test_packed_without_the_first_segment_and_with_single_tokens(backend):
    """Masks of the ``next`` first-segment rule: segment 0 partly dropped, a clip down to one token."""
    model, x = make(), videos(3)
    keep = torch.rand((3, *CLIP.grid), generator=torch.Generator().manual_seed(5)) < 0.4
    keep[0, 0] = False
    keep[1] = False
    keep[1, 2, 1, 0] = True  # one token, not in the first segment
    keep[2].flatten()[0] = True
    with torch.no_grad():
        loop = torch.cat([model(x[i : i + 1], keep[i : i + 1], attention="padded") for i in range(3)])
        packed = model(x, keep, attention=backend)
    torch.testing.assert_close(packed, loop, atol=1e-5, rtol=1e-5)


def test_dropped_tokens_do_not_matter_and_kept_positions_do():
    model, x, keep = make(), videos(2), random_keep_mask(2, seed=5)
    y = x.clone()
    # change the pixels of one dropped tubelet of video 0: output must not move
    t, hh, ww = torch.nonzero(~keep[0])[0].tolist()
    y[0, :, 2 * t : 2 * t + 2, 16 * hh : 16 * hh + 16, 16 * ww : 16 * ww + 16] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(model(y, keep), model(x, keep), atol=0, rtol=0)
        # same kept content at other positions gives another output: positions are the token's own
        shifted = keep.roll(1, dims=3)
        shifted[:, 0] = True
        assert not torch.allclose(model(x, shifted), model(x, keep))


@pytest.mark.parametrize("backend", PACKED + ["padded"])
def test_changing_video_j_never_changes_video_i(backend):
    model, x, keep = make(), videos(3), random_keep_mask(3, seed=7)
    x2, keep2 = x.clone(), keep.clone()
    x2[1] = torch.randn_like(x2[1]) * 3
    keep2[1] = True  # video 1 now keeps all its tokens: the packed sequence changes length too
    with torch.no_grad():
        a, b = model(x, keep, attention=backend), model(x2, keep2, attention=backend)
    torch.testing.assert_close(a[[0, 2]], b[[0, 2]], atol=1e-6, rtol=1e-6)
    assert (a[1] - b[1]).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["sdpa_split", "sdpa_nested", "dense_mask", "padded"])
def test_every_parameter_gets_a_gradient(backend):
    model = make(drop_path=0.0).train()
    loss = torch.nn.functional.cross_entropy(model(videos(3), random_keep_mask(3, 9), attention=backend), torch.tensor([0, 1, 2]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_gradients_match_between_packed_and_padded():
    x, keep, target = videos(3), random_keep_mask(3, 11), torch.tensor([4, 0, 2])
    grads = {}
    for backend in ("sdpa_split", "sdpa_nested", "padded"):
        model = make().train()
        torch.nn.functional.cross_entropy(model(x, keep, attention=backend), target).backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    for name, g in grads["padded"].items():
        for backend in ("sdpa_split", "sdpa_nested"):
            torch.testing.assert_close(grads[backend][name], g, atol=1e-5, rtol=1e-4, msg=f"{backend} {name}")


def test_drop_path_is_per_video_and_preserves_expectation():
    from lmft_core.model.vit import Block

    block = Block(8, 2, 4.0, drop_path=0.3, eps=1e-6).train()
    keep = torch.tensor([[True, True, False], [True, True, True]])
    tokens = TokenLayout.from_keep(keep, "packed")  # 2 + 3 tokens
    torch.manual_seed(0)
    scales = torch.stack([block._residual(torch.ones(5, 8), tokens) for _ in range(4000)])  # (R, 5, 8)
    for video, rows in ((0, slice(0, 2)), (1, slice(2, 5))):
        s = scales[:, rows]
        assert (s == s[:, :1, :1]).all(), "one draw per video, shared by all its tokens"
        torch.testing.assert_close(s.unique(), torch.tensor([0.0, 1 / 0.7]))
        # expectation kept at 1: mean of 4000 draws, std sqrt(0.3/0.7)=0.65 -> 4 standard errors = 0.041
        assert abs(s[:, 0, 0].mean().item() - 1.0) < 0.041
    assert (scales[:, 0, 0] != scales[:, 2, 0]).any(), "videos are dropped independently"
    block.eval()
    assert torch.equal(block._residual(torch.ones(5, 8), tokens), torch.ones(5, 8))


def test_layout_mean_and_per_video():
    keep = torch.tensor([[True, False, True], [False, True, False]])
    x = torch.arange(12.0).view(2, 3, 2)
    for layout in ("packed", "padded"):
        tokens = TokenLayout.from_keep(keep, layout)
        h = tokens.gather(x, keep)
        torch.testing.assert_close(tokens.mean(h), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
        assert tokens.per_video(torch.tensor([1.0, 2.0])).expand_as(h).shape == h.shape
    assert TokenLayout.from_keep(keep, "packed").offsets.tolist() == [0, 2, 3]


def test_bad_inputs_name_the_problem():
    model = make()
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        model(torch.randn(1, 8, 3, 32, 32))
    with pytest.raises(ValueError, match="keep must be"):
        model(videos(1), torch.ones(1, 4, 4, dtype=torch.bool))
    empty = torch.zeros(2, *CLIP.grid, dtype=torch.bool)
    empty[0, 0] = True
    with pytest.raises(ValueError, match=r"video\(s\) \[1\] keep no token"):
        model(videos(2), empty)
    with pytest.raises(ConfigError, match="model.size"):
        ModelConfig(size="vit_huge")
    with pytest.raises(ConfigError, match="model.attention"):
        ModelConfig(attention="xformers")
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_attention("nope", "cpu")


def test_registries_and_auto_backend():
    assert {"vit_b16", "vit_s16", "vit_tiny"} <= set(MODEL_SIZES)
    b16 = ModelConfig(size="vit_b16")
    assert (b16.widths.embed_dim, b16.widths.depth, b16.widths.num_heads) == (768, 12, 12)
    assert resolve_attention("auto", "cpu").name == "sdpa_split"  # trains on CPU
    assert resolve_attention("flex", "cpu").unavailable(torch.device("cpu"))
    assert resolve_attention("varlen", "cpu").unavailable(torch.device("cpu"))
    with pytest.raises(TypeError, match="attention backend 'varlen' computes in fp16/bf16 only"):
        make()(videos(1), attention="varlen")  # fp32: refused on every device, never cast
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="attention backend 'varlen'.*CUDA device"):
            make().bfloat16()(videos(1).bfloat16(), attention="varlen")


def test_vit_b16_parameter_count_matches_videomae():
    # counted from the widths: patch embed, 12 blocks (2 norms, qkv + q/v biases, proj, mlp), fc_norm, head
    model = VideoViT(ModelConfig(size="vit_b16", num_classes=400, clip=ClipConfig()))
    d, m, n = 768, 3072, 12
    block = 2 * 2 * d + (3 * d * d + 2 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    expected = (3 * 2 * 16 * 16 * d + d) + n * block + 2 * d + (d * 400 + 400)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.pos_embed.shape == (1568, 768)
    assert 86e6 < expected < 88e6  # VideoMAE's model zoo lists ViT-B at 87M parameters


def test_sinusoid_table_closed_form():
    table = sinusoid_table(7, 6)
    for pos in (0, 3, 6):
        for j in range(6):
            angle = pos / 10000 ** (2 * (j // 2) / 6)
            expected = torch.sin(torch.tensor(angle)) if j % 2 == 0 else torch.cos(torch.tensor(angle))
            assert abs(table[pos, j].item() - expected.item()) < 1e-6


def test_golden_losses_of_a_tiny_seeded_run():
    """Habit 5: the first losses of a seeded LMFT run (model + learned threshold) are pinned."""
    torch.manual_seed(0)
    model = VideoViT(tiny_config(drop_path=0.1, head_init_scale=1.0)).train()
    policy = PolicyConfig().build()
    select = SelectorConfig(name="lmft").build(policy)
    opt = torch.optim.AdamW([*model.parameters(), *policy.parameters()], lr=1e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 32, 32, generator=g)
    energy = torch.rand(4, *CLIP.grid, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    losses, taus = [], []
    for _ in range(4):
        sel = select(energy, generator=g)
        loss = torch.nn.functional.cross_entropy(model(x, sel.keep), labels)
        reward = policy.reward([loss], [sel.discard_rate])
        opt.zero_grad()
        (loss + policy.reinforce_loss(sel.tau, reward)).backward()
        opt.step()
        losses.append(loss.item())
        taus.append(sel.tau.item())
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=2e-4)
    assert taus == pytest.approx(GOLDEN_TAUS, abs=1e-5)
    assert losses[-1] < losses[0]  # it learns the 4 random clips


# recorded on CPU (torch 2.15, 1 and 2 threads agree to 2e-7)
GOLDEN_LOSSES = [1.5855629, 1.3399618, 1.0797240, 0.9542182]
GOLDEN_TAUS = [0.6609043, 0.2987276, 0.4989401, 0.5479982]


def test_clip_geometry_and_class_count_are_never_silent_defaults():
    """A model's geometry comes from [clip] and its classes from the shards: no default decides a run."""
    with pytest.raises(ConfigError, match="model.num_classes is not set"):
        ModelConfig(size="vit_tiny", clip=CLIP).build()
    with pytest.raises(ConfigError, match=r"model.clip is not set: a training run takes it from the profile's \[clip\]"):
        VideoViT(ModelConfig(size="vit_tiny", num_classes=3))
    from lmft_core.run_config import load_profile

    with pytest.raises(ConfigError, match=r"\[model\]: 'num_classes' is not set in a profile section: it comes from the shards"):
        load_profile("demo", ["model.num_classes=101"])
    with pytest.raises(ConfigError, match=r"\[model\]: 'clip' is not set in a profile section: it comes from the profile's \[clip\]"):
        load_profile("demo", ["model.clip={image_size=224}"])


def test_kept_tubelet_embedding_equals_the_conv_then_gather():
    """The fast path embeds only kept tubelets (gather + matmul); the reference runs the Conv3d on every
    token and gathers. Same values, same weight gradients, also for a channels-last clip (model input
    made from (B, T, S, S, 3) frames)."""
    model = make()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 32, 32, 3, generator=g).permute(0, 4, 1, 2, 3)  # non-contiguous, as model_input makes it
    keep = torch.rand(3, *CLIP.grid, generator=g) < 0.4
    pe = model.patch_embed
    fast = pe.kept(x, keep)
    ref = pe(x.contiguous())[keep.flatten(1)]
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    (gw_fast,) = torch.autograd.grad(fast.square().sum(), pe.proj.weight)
    (gw_ref,) = torch.autograd.grad(ref.square().sum(), pe.proj.weight)
    torch.testing.assert_close(gw_fast, gw_ref, atol=1e-4, rtol=1e-4)
