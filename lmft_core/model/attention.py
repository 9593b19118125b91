"""Attention over the kept tokens of a batch of videos, with no attention across videos.

The kept tokens of B videos are held in one of two layouts (:class:`TokenLayout`):

- **packed**: one sequence of ``L = sum(lengths)`` tokens, video after video, with ``offsets``
  (``cu_seqlens``, shape ``(B + 1,)``); attention is block-diagonal, nothing is padded;
- **padded**: ``(B, L_max)`` with a key mask (the baseline that packing is measured against); with
  every token kept and no mask this is the plain batched ViT.

Attention backends are registered by name (:data:`ATTENTION_BACKENDS`); each takes ``q, k, v`` of
shape ``(L, H, d)`` (packed) or ``(B, L_max, H, d)`` (padded) and returns the same shape.

=============== ====== ============================================================================
name            layout where it runs
=============== ====== ============================================================================
``sdpa_split``  packed CPU and GPU, forward and backward: one fused SDPA call per video
``sdpa_nested`` packed CPU and GPU, forward and backward: SDPA over nested jagged tensors
``flex``        packed GPU under ``torch.compile`` (document mask); CPU runs forward only, eagerly
``varlen``      packed GPU only, fp16/bf16 only: FlashAttention varlen kernels (``torch.nn.attention.varlen``)
``dense_mask``  packed reference: one SDPA over all L tokens with an (L, L) block-diagonal mask
``padded``      padded baseline: SDPA over (B, L_max) with a key-padding mask
=============== ====== ============================================================================

``auto`` resolves to the first backend of :data:`AUTO_ORDER` for the device type that is available
there and supports the compute dtype (:func:`choose_backend`): on GPU ``varlen`` (only for fp16/bf16,
e.g. under autocast), then ``flex``, ``sdpa_nested``; on CPU ``sdpa_split`` (measured faster there
than nested tensors, whose CPU path is the unfused math kernel; see docs/benchmarks.md). fp32
training on GPU therefore runs ``flex`` in fp32. ``varlen`` never casts: called with fp32 inputs it
raises instead of silently computing in bf16.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lmft_core.registry import Registry

Layout = Literal["packed", "padded"]

# SDPA on jagged tensors without a fused CPU kernel converts them to the older strided layout
# internally, which warns on every call; the warning is about that internal step, not our use.
warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")


@dataclass
class TokenLayout:
    """Where the kept tokens of B videos sit in the token tensor the blocks run on.

    ``lengths`` (B,) and ``offsets`` (B + 1,) are int64 on the tokens' device; ``token_video`` (L,)
    is the video index of each packed token; ``pad_mask`` (B, L_max) marks the real tokens of the
    padded layout (None when no token is dropped: the plain batched ViT). ``cache`` holds per-batch
    objects a backend builds once and reuses in every block (a block mask, a dense mask).
    """

    layout: Layout
    lengths: Tensor
    offsets: Tensor
    max_len: int
    token_video: Tensor
    pad_mask: Tensor | None = None
    cache: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.lengths.numel()

    def cached(self, key: str, build: Callable[[], object]):
        """``build()`` once per batch, then the same object in every block."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    @classmethod
    def from_keep(cls, keep: Tensor, layout: Layout) -> TokenLayout:
        """Layout for keep mask ``keep`` (B, N) bool; every video must keep at least one token."""
        if keep.dim() != 2 or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a (B, N) bool tensor, got {tuple(keep.shape)} {keep.dtype}")
        lengths = keep.sum(1)
        if bool((lengths == 0).any()):
            empty = torch.nonzero(lengths == 0).flatten().tolist()
            raise ValueError(f"video(s) {empty} keep no token; the first temporal segment must always be kept")
        offsets = F.pad(lengths.cumsum(0), (1, 0))
        token_video = torch.repeat_interleave(torch.arange(len(lengths), device=keep.device), lengths)
        max_len = int(lengths.max())
        pad_mask = None
        if layout == "padded" and not bool(keep.all()):
            pad_mask = torch.arange(max_len, device=keep.device)[None, :] < lengths[:, None]
        return cls(layout, lengths, offsets, max_len, token_video, pad_mask)

    def gather(self, x: Tensor, keep: Tensor) -> Tensor:
        """Kept tokens of ``x`` (B, N, D) in this layout: (L, D) packed or (B, L_max, D) padded."""
        return self.place(x[keep])  # row-major: video after video, each in token order

    def place(self, packed: Tensor) -> Tensor:
        """Kept tokens given packed (L, D), video after video -> this layout: (L, D) or (B, L_max, D)."""
        if self.layout == "packed":
            return packed
        if self.pad_mask is None:  # every token kept: the plain batch
            return packed.view(self.batch_size, self.max_len, packed.shape[-1])
        out = packed.new_zeros(self.batch_size, self.max_len, packed.shape[-1])
        out[self.pad_mask] = packed
        return out

    def mean(self, tokens: Tensor) -> Tensor:
        """Per-video mean of ``tokens`` ((L, D) or (B, L_max, D)) over its kept tokens -> (B, D)."""
        if self.layout == "padded":
            if self.pad_mask is None:
                return tokens.mean(1)
            return (tokens * self.pad_mask[..., None]).sum(1) / self.lengths[:, None]
        sums = tokens.new_zeros(self.batch_size, tokens.shape[-1]).index_add_(0, self.token_video, tokens)
        return sums / self.lengths[:, None]

    def per_video(self, values: Tensor) -> Tensor:
        """Broadcast per-video ``values`` (B,) onto the token tensor: (L, 1) or (B, 1, 1)."""
        if self.layout == "packed":
            return values[self.token_video][:, None]
        return values[:, None, None]


AttentionFn = Callable[[Tensor, Tensor, Tensor, TokenLayout], Tensor]


@dataclass(frozen=True)
class AttentionBackend:
    """A registered attention implementation.

    ``unavailable(device)`` returns why the backend cannot train (forward and backward) on that
    device, or None when it can; ``dtypes`` are the input dtypes it computes in (None: any);
    ``auto`` only picks available backends that support the compute dtype.
    """

    name: str
    layout: Layout
    fn: AttentionFn
    unavailable: Callable[[torch.device], str | None]
    dtypes: tuple[torch.dtype, ...] | None = None

    def supports(self, dtype: torch.dtype) -> bool:
        return self.dtypes is None or dtype in self.dtypes

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
        return self.fn(q, k, v, tokens)


ATTENTION_BACKENDS: Registry[AttentionBackend] = Registry("attention backend", reserved=("auto",))
AUTO_ORDER = {"cuda": ("varlen", "flex", "sdpa_nested"), "cpu": ("sdpa_split", "sdpa_nested")}


def _everywhere(device: torch.device) -> str | None:
    return None


def register_attention(
    name: str,
    layout: Layout,
    unavailable: Callable[[torch.device], str | None] = _everywhere,
    dtypes: tuple[torch.dtype, ...] | None = None,
):
    """Decorator registering an attention function ``fn(q, k, v, tokens) -> out`` under ``name``."""

    def wrap(fn: AttentionFn) -> AttentionFn:
        ATTENTION_BACKENDS.register(name, AttentionBackend(name, layout, fn, unavailable, dtypes))
        return fn

    return wrap


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype attention will see for activations ``x``: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def choose_backend(device_type: str, dtype: torch.dtype, available: Callable[[str], bool]) -> str:
    """Name ``auto`` resolves to: the first of :data:`AUTO_ORDER` [device_type] that is ``available``
    (a predicate on backend names) and supports ``dtype``. A pure function of its arguments."""
    order = AUTO_ORDER.get(device_type, ("sdpa_nested",))
    for candidate in order:
        if ATTENTION_BACKENDS[candidate].supports(dtype) and available(candidate):
            return candidate
    raise RuntimeError(f"no attention backend of {order} is available on {device_type} for {dtype}")


def resolve_attention(name: str, device: torch.device | str, dtype: torch.dtype = torch.float32) -> AttentionBackend:
    """The backend called ``name``; ``"auto"`` is :func:`choose_backend` for ``device`` and the
    compute ``dtype`` (see :func:`compute_dtype`)."""
    device = torch.device(device)
    if name == "auto":
        chosen = choose_backend(device.type, dtype, lambda n: ATTENTION_BACKENDS[n].unavailable(device) is None)
        return ATTENTION_BACKENDS[chosen]
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; registered: {sorted(ATTENTION_BACKENDS)} or 'auto'")
    return ATTENTION_BACKENDS[name]


def _heads_first_nested(x: Tensor, offsets: Tensor, max_len: int) -> Tensor:
    """(L, H, d) -> nested jagged (B, H, j, d); the values must be contiguous (see NOTES.md)."""
    nested = torch.nested.nested_tensor_from_jagged(x.contiguous(), offsets, min_seqlen=1, max_seqlen=max_len)
    return nested.transpose(1, 2)


@register_attention("sdpa_nested", "packed")
def sdpa_nested(q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
    """Block-diagonal attention as SDPA over nested jagged tensors; (L, H, d) -> (L, H, d)."""
    nq, nk, nv = (_heads_first_nested(t, tokens.offsets, tokens.max_len) for t in (q, k, v))
    return F.scaled_dot_product_attention(nq, nk, nv).transpose(1, 2).values()


@register_attention("sdpa_split", "packed")
def sdpa_split(q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
    """Block-diagonal attention as one fused SDPA call per video on views of the packed tensors.

    (L, H, d) -> (L, H, d). On CPU this reaches the fused flash kernel (nested tensors fall back to
    the unfused math path there); B small calls per block.
    """
    sizes = tokens.cached("split_sizes", tokens.lengths.tolist)
    parts = [
        F.scaled_dot_product_attention(*(t.transpose(0, 1) for t in qkv)).transpose(0, 1)
        for qkv in zip(q.split(sizes), k.split(sizes), v.split(sizes))
    ]
    return torch.cat(parts)


def _cuda_only(device: torch.device) -> str | None:
    return None if device.type == "cuda" else f"needs a CUDA device, got {device}"


@functools.cache
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


FLEX_BLOCK_SIZE = 128  # flex_attention's default sparse block size (tokens per q and kv block)


def document_block_mask(tokens: TokenLayout, block_size: int = FLEX_BLOCK_SIZE):
    """flex_attention ``BlockMask`` of the block-diagonal (document) mask, built from the offsets.

    Never materialises the (L, L) token mask: with ``n = ceil(L / block_size)`` blocks it builds
    (n, n) block tables. q block i (tokens ``[i*bs, min((i+1)*bs, L))``) spans videos ``v0..v1``
    and so meets exactly the kv blocks overlapping tokens ``[offsets[v0], offsets[v1 + 1])``; a
    pair of blocks is *full* (no mask needed) when both are complete and lie in the same single
    video, otherwise *partial* (``mask_mod`` decides per token). Equals ``create_block_mask`` with
    the same mask_mod (tested), which evaluates all L x L entries.
    """
    from torch.nn.attention.flex_attention import BlockMask

    video, offsets = tokens.token_video, tokens.offsets
    n_tokens = video.numel()
    n = -(-n_tokens // block_size)
    starts = torch.arange(n, device=video.device) * block_size
    ends = (starts + block_size).clamp(max=n_tokens)
    first, last = video[starts], video[ends - 1]
    lo = offsets[first] // block_size  # first kv block meeting q block i
    hi = (offsets[last + 1] - 1) // block_size  # last kv block meeting q block i
    j = torch.arange(n, device=video.device)
    touch = (j[None] >= lo[:, None]) & (j[None] <= hi[:, None])
    whole = (first == last) & ((ends - starts) == block_size)  # complete block inside one video
    full = whole[:, None] & whole[None] & (first[:, None] == first[None])
    partial = touch & ~full

    def tables(m: Tensor) -> tuple[Tensor, Tensor]:
        num = m.sum(-1, dtype=torch.int32)
        idx = torch.argsort(m.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
        return num[None, None], idx[None, None]

    def same_video(b, h, q_idx, kv_idx):  # the kernels bound indices to the sequence (modulo L)
        return video[q_idx] == video[kv_idx]

    num, idx = tables(partial)
    full_num, full_idx = tables(full)
    return BlockMask.from_kv_blocks(
        num, idx, full_num, full_idx, BLOCK_SIZE=block_size, mask_mod=same_video, seq_lengths=(n_tokens, n_tokens)
    )


@register_attention("flex", "packed", _cuda_only)
def flex(q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
    """flex_attention with a document mask, compiled on GPU and eager (forward only) on CPU.

    (L, H, d) -> (L, H, d). The block mask is built once per batch from the offsets
    (:func:`document_block_mask`, O((L / 128)^2) entries). A new L re-specialises the compiled
    kernel once; torch.compile's automatic dynamic shapes then treat L as dynamic, so later
    lengths reuse it.
    """
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = tokens.cached("block_mask", lambda: document_block_mask(tokens))
    attend = _compiled_flex() if q.is_cuda else flex_attention
    out = attend(*(t.transpose(0, 1)[None] for t in (q, k, v)), block_mask=block_mask)
    return out[0].transpose(0, 1)


def _varlen_unavailable(device: torch.device) -> str | None:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401 - only whether this torch has it
    except ImportError:
        return "torch.nn.attention.varlen is not in this torch"
    if device.type != "cuda":
        return f"FlashAttention varlen needs a CUDA device, got {device}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "FlashAttention varlen needs compute capability 8.0 or newer"
    return None


HALF_DTYPES = (torch.float16, torch.bfloat16)


@register_attention("varlen", "packed", _varlen_unavailable, dtypes=HALF_DTYPES)
def varlen(q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
    """FlashAttention varlen over cu_seqlens; (L, H, d) -> (L, H, d), fp16/bf16 only.

    fp32 inputs raise (no silent cast to bf16): train under autocast, or use ``flex``/``auto``.
    """
    from torch.nn.attention.varlen import varlen_attn

    if q.dtype not in HALF_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"attention backend 'varlen' computes in fp16/bf16 only, got q/k/v {q.dtype}/{k.dtype}/{v.dtype}; "
            "use autocast, or attention 'flex' or 'auto' for fp32"
        )
    reason = _varlen_unavailable(q.device)
    if reason:
        raise RuntimeError(f"attention backend 'varlen': {reason}")
    cu = tokens.offsets.to(torch.int32)
    return varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, tokens.max_len, tokens.max_len)


@register_attention("dense_mask", "packed")
def dense_mask(q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
    """Reference: SDPA over all L tokens with an (L, L) block-diagonal mask; cost grows as L^2."""
    video = tokens.token_video
    mask = tokens.cached("dense_mask", lambda: video[:, None] == video[None, :])
    out = F.scaled_dot_product_attention(*(t.transpose(0, 1) for t in (q, k, v)), attn_mask=mask)
    return out.transpose(0, 1)


@register_attention("padded", "padded")
def padded(q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout) -> Tensor:
    """Baseline: SDPA over (B, L_max, H, d) with a key-padding mask (none when all tokens are kept)."""
    mask = None if tokens.pad_mask is None else tokens.pad_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2)
