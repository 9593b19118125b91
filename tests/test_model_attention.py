"""Attention backends: flex block mask from offsets, dtype-aware ``auto`` dispatch, GPU packed == per-video."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from lmft_core.model import ATTENTION_BACKENDS, TokenLayout, resolve_attention
from lmft_core.model.attention import AUTO_ORDER, choose_backend, compute_dtype, document_block_mask

pytestmark = [
    pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage"),
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
]

# videos of every kind of block boundary: shorter than a block, exactly a block, spanning blocks,
# length 1, many videos in one block, L a multiple of the block size and not
LENGTHS = [[5, 3, 9], [128, 128], [130, 1, 260, 7], [300], [64, 64, 128, 1], [1] * 40, [200, 56, 128]]


def layout(lengths: list[int], device: str = "cpu") -> TokenLayout:
    """Packed layout of videos with the given kept-token counts."""
    keep = torch.zeros(len(lengths), max(lengths), dtype=torch.bool, device=device)
    for i, n in enumerate(lengths):
        keep[i, :n] = True
    return TokenLayout.from_keep(keep, "packed")


def block_sets(num: torch.Tensor, idx: torch.Tensor) -> list[list[int]]:
    """kv block indices of every q block row (the first ``num`` entries of each row), sorted."""
    return [sorted(idx[0, 0, i, : num[0, 0, i]].tolist()) for i in range(num.shape[-1])]


@pytest.mark.parametrize("block_size", [4, 16, 128])
@pytest.mark.parametrize("lengths", LENGTHS, ids=[str(n) for n in range(len(LENGTHS))])
def test_document_block_mask_equals_create_block_mask_and_the_naive_mask(lengths, block_size):
    tokens = layout(lengths)
    video = tokens.token_video
    n = video.numel()
    ours = document_block_mask(tokens, block_size)
    ref = create_block_mask(lambda b, h, q, k: video[q] == video[k], None, None, n, n, device="cpu", BLOCK_SIZE=block_size)
    assert block_sets(ours.kv_num_blocks, ours.kv_indices) == block_sets(ref.kv_num_blocks, ref.kv_indices)
    assert block_sets(ours.full_kv_num_blocks, ours.full_kv_indices) == block_sets(ref.full_kv_num_blocks, ref.full_kv_indices)
    assert block_sets(ours.q_num_blocks, ours.q_indices) == block_sets(ref.q_num_blocks, ref.q_indices)  # backward tables
    assert ours.seq_lengths == (n, n)
    # naive reference: the (L, L) token mask, reduced per block pair (any entry allowed -> block visited)
    dense = video[:, None] == video[None, :]
    nb = math.ceil(n / block_size)
    padded = torch.zeros(nb * block_size, nb * block_size, dtype=torch.bool)
    padded[:n, :n] = dense
    visited = padded.view(nb, block_size, nb, block_size).any(3).any(1)
    assert torch.equal(ours.to_dense()[0, 0].bool(), visited)
    # and the mask_mod on real tokens is the dense block-diagonal mask
    q_idx, kv_idx = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert torch.equal(ours.mask_mod(0, 0, q_idx, kv_idx), dense)


def test_document_block_mask_does_not_build_the_token_mask():
    """Block tables only: for L = 50,000 tokens they hold (L / 128)^2 ~ 1.5e5 entries, not L^2 = 2.5e9."""
    tokens = layout([1563] * 32)  # ViT-B batch 32 at ~the full 1568 tokens per clip
    mask = document_block_mask(tokens)
    nb = math.ceil(tokens.token_video.numel() / 128)
    assert mask.kv_indices.shape == (1, 1, nb, nb) and mask.full_kv_indices.shape == (1, 1, nb, nb)
    # each q block meets only the blocks of the (at most two) videos it holds: <= 14 blocks each
    assert int((mask.kv_num_blocks + mask.full_kv_num_blocks).max()) <= 2 * (math.ceil(1563 / 128) + 1)
    assert float(mask.sparsity()) > 90.0  # percent of block pairs skipped


@pytest.mark.parametrize("lengths", [[5, 3, 9], [130, 1, 260, 7], [300]])
def test_flex_forward_on_cpu_equals_the_dense_mask_reference(lengths):
    tokens = layout(lengths)
    n = tokens.token_video.numel()
    g = torch.Generator().manual_seed(len(lengths))
    q, k, v = (torch.randn(n, 2, 16, generator=g) for _ in range(3))
    out = ATTENTION_BACKENDS["flex"](q, k, v, tokens)
    ref = ATTENTION_BACKENDS["dense_mask"](q, k, v, layout(lengths))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # small blocks: many full and partial block pairs, L not a multiple of the block size
    small = flex_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), block_mask=document_block_mask(tokens, 16))
    torch.testing.assert_close(small[0].transpose(0, 1), ref, atol=1e-5, rtol=1e-5)


ALL = set(ATTENTION_BACKENDS)


@pytest.mark.parametrize(
    "device_type,dtype,available,expected",
    [
        ("cuda", torch.bfloat16, ALL, "varlen"),
        ("cuda", torch.float16, ALL, "varlen"),
        ("cuda", torch.float32, ALL, "flex"),  # varlen would compute in bf16: never picked for fp32
        ("cuda", torch.bfloat16, ALL - {"varlen"}, "flex"),  # e.g. compute capability < 8.0
        ("cuda", torch.float32, {"sdpa_nested", "sdpa_split"}, "sdpa_nested"),
        ("cpu", torch.float32, ALL, "sdpa_split"),
        ("cpu", torch.bfloat16, ALL, "sdpa_split"),
        ("cpu", torch.float32, {"sdpa_nested"}, "sdpa_nested"),
        ("mps", torch.float32, ALL, "sdpa_nested"),  # device types without an order
    ],
)
def test_auto_choice_is_a_function_of_device_dtype_and_availability(device_type, dtype, available, expected):
    assert choose_backend(device_type, dtype, available.__contains__) == expected


def test_auto_choice_errors_and_real_cpu_resolution():
    with pytest.raises(RuntimeError, match=r"no attention backend .* cuda for torch.float32"):
        choose_backend("cuda", torch.float32, {"varlen"}.__contains__)
    assert AUTO_ORDER["cuda"][0] == "varlen"
    assert resolve_attention("auto", "cpu", torch.bfloat16).name == "sdpa_split"
    assert ATTENTION_BACKENDS["varlen"].supports(torch.bfloat16) and not ATTENTION_BACKENDS["varlen"].supports(torch.float32)
    assert all(ATTENTION_BACKENDS[n].supports(torch.float32) for n in ALL - {"varlen"})


def test_compute_dtype_follows_autocast():
    x = torch.zeros(2, 3)
    assert compute_dtype(x) == torch.float32
    assert compute_dtype(x.bfloat16()) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype(x) == torch.bfloat16
    assert compute_dtype(x) == torch.float32


def test_varlen_refuses_fp32_instead_of_casting():
    tokens = layout([3, 4])
    q = torch.randn(7, 2, 16)
    with pytest.raises(TypeError, match="fp16/bf16 only, got q/k/v torch.float32"):
        ATTENTION_BACKENDS["varlen"](q, q, q, tokens)


# ---------------------------------------------------------------- GPU (run where CUDA is present)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
GPU_LENGTHS = [100, 1, 300, 37, 128]


def per_video_reference(q, k, v, lengths):
    """Independent reference in float64: softmax(q k^T / sqrt(d)) v written out, one video at a time."""
    outs = []
    for qi, ki, vi in zip(*(t.double().split(lengths) for t in (q, k, v))):
        scores = torch.einsum("qhd,khd->hqk", qi, ki) / math.sqrt(q.shape[-1])
        outs.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vi))
    return torch.cat(outs)


def check_packed_equals_per_video(name: str, dtype: torch.dtype, atol: float):
    tokens = layout(GPU_LENGTHS, "cuda")
    n = sum(GPU_LENGTHS)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(n, 4, 64, device="cuda", generator=g).to(dtype).requires_grad_() for _ in range(3))
    out = ATTENTION_BACKENDS[name](q, k, v, tokens)
    assert out.dtype == dtype and out.shape == q.shape
    grad_out = torch.randn(out.shape, device="cuda", generator=g).to(dtype)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = per_video_reference(*refs, GPU_LENGTHS)
    ref_grads = torch.autograd.grad(ref, refs, grad_out.double())
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=atol * 4, rtol=0)


@cuda
def test_flex_on_gpu_packed_equals_per_video_fp32():
    check_packed_equals_per_video("flex", torch.float32, atol=2e-3)  # compiled kernel, fp32 throughout


@cuda
@pytest.mark.skipif(torch.cuda.is_available() and ATTENTION_BACKENDS["varlen"].unavailable(torch.device("cuda")) is not None,
                    reason="FlashAttention varlen needs compute capability 8.0")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_varlen_on_gpu_packed_equals_per_video(dtype):
    check_packed_equals_per_video("varlen", dtype, atol=3e-2 if dtype == torch.bfloat16 else 5e-3)


@cuda
def test_auto_on_gpu_picks_by_compute_dtype():
    device = torch.device("cuda")
    varlen_ok = ATTENTION_BACKENDS["varlen"].unavailable(device) is None
    assert resolve_attention("auto", device, torch.float32).name == "flex"
    assert resolve_attention("auto", device, torch.bfloat16).name == ("varlen" if varlen_ok else "flex")
    with pytest.raises(TypeError, match="fp16/bf16 only"):
        q = torch.randn(5, 2, 64, device="cuda")
        ATTENTION_BACKENDS["varlen"](q, q, q, layout([2, 3], "cuda"))
