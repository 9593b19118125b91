"""Video ViT in the VideoMAE fine-tuning form, running on the kept tokens only.

Layout: videos are ``(B, C, T, H, W)`` (VideoMAE's layout; Hugging Face's VideoMAE takes
``(B, T, C, H, W)``). A Conv3d with kernel = stride = ``tubelet x patch x patch`` turns a clip into
``N = N_t * N_h * N_w`` tokens (order t, h, w: the order of :attr:`ClipConfig.grid`), a fixed
sinusoid table adds positions, and the kept tokens of all videos (each with its own positional
embedding) go through pre-norm blocks (qkv without bias plus separate q and v biases; k has none),
are mean-pooled per video, normalised (``fc_norm``) and classified (``head``). Parameter names are
those of the original VideoMAE ``modeling_finetune.py``, so its fine-tuned checkpoints load as they
are (see :mod:`lmft_core.model.pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmft_core.config import DERIVED, ClipConfig, ConfigError
from lmft_core.model.attention import ATTENTION_BACKENDS, AttentionBackend, TokenLayout, compute_dtype, resolve_attention
from lmft_core.registry import Registry


@dataclass(frozen=True)
class ViTSize:
    """Transformer widths of a registered model size."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


MODEL_SIZES: Registry[ViTSize] = Registry("model size")


def register_size(name: str, size: ViTSize) -> ViTSize:
    """Register a model size under ``name`` (an error if the name is taken)."""
    return MODEL_SIZES.register(name, size)


register_size("vit_b16", ViTSize(embed_dim=768, depth=12, num_heads=12))  # VideoMAE ViT-B/16
register_size("vit_s16", ViTSize(embed_dim=384, depth=12, num_heads=6))  # VideoMAE ViT-S/16
register_size("vit_tiny", ViTSize(embed_dim=192, depth=4, num_heads=3))  # trains on a CPU in seconds


@dataclass(frozen=True)
class ModelConfig:
    """Builds a :class:`VideoViT` (TOML section ``[model]``).

    ``num_classes`` and ``clip`` have no usable default and are not profile keys: a training run takes
    the clip geometry from the profile's ``[clip]`` and the classes from the shards' metadata, and a
    library user passes both; :meth:`build` refuses a config without them.
    ``size`` names a registered :class:`ViTSize`; ``embed_dim``/``depth``/``num_heads``/``mlp_ratio``
    override its fields when set. ``attention`` is a registered backend name or ``"auto"``.
    ``drop_path`` is the stochastic-depth rate of the last block (linear from 0 at the first).
    ``head_init_scale`` scales the freshly initialised head (VideoMAE fine-tuning: 0.001).
    LayerNorm epsilons: 1e-6 in VideoMAE; Hugging Face uses ``layer_norm_eps`` (1e-12) and 1e-5 for
    ``fc_norm``. ``pretrained``: a VideoMAE checkpoint loaded by :func:`~lmft_core.model.pretrained.build_model` (empty: none).
    """

    size: str = "vit_b16"
    num_classes: int = field(default=0, metadata={DERIVED: "the shards' metadata (their classes)"})
    clip: ClipConfig | None = field(default=None, metadata={DERIVED: "the profile's [clip] section"})
    attention: str = "auto"
    drop_path: float = 0.1
    head_dropout: float = 0.0
    head_init_scale: float = 0.001
    in_chans: int = 3
    norm_eps: float = 1e-6
    fc_norm_eps: float = 1e-6
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    pretrained: str = ""

    def __post_init__(self) -> None:
        MODEL_SIZES.check(self.size, "model.size")
        ATTENTION_BACKENDS.check(self.attention, "model.attention", extra=("auto",))
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes must be positive, got {self.num_classes}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"model.drop_path must be in [0, 1), got {self.drop_path}")
        if self.widths.embed_dim % self.widths.num_heads:
            raise ConfigError(f"model embed_dim {self.widths.embed_dim} is not a multiple of num_heads {self.widths.num_heads}")

    @property
    def widths(self) -> ViTSize:
        """The registered size with this config's overrides applied."""
        overrides = {k: getattr(self, k) for k in ("embed_dim", "depth", "num_heads", "mlp_ratio") if getattr(self, k) is not None}
        return replace(MODEL_SIZES[self.size], **overrides)

    def require_derived(self) -> None:
        """Raise unless ``num_classes`` and ``clip`` are set (see the class docstring)."""
        if self.num_classes <= 0:
            raise ConfigError("model.num_classes is not set: a training run takes it from the shards' classes; "
                              "a library user passes ModelConfig(num_classes=...)")
        if self.clip is None:
            raise ConfigError("model.clip is not set: a training run takes it from the profile's [clip]; "
                              "a library user passes ModelConfig(clip=ClipConfig(...))")

    def build(self) -> VideoViT:
        """The model, freshly initialised (:func:`lmft_core.model.pretrained.build_model` also loads
        ``pretrained``)."""
        self.require_derived()
        return VideoViT(self)


def sinusoid_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's fixed positional table (num_positions, dim): sin on even, cos on odd channels."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2) / dim
    angle = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)[None, :]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, N, D) tokens by a Conv3d with kernel = stride = tubelet x patch x patch."""

    def __init__(self, clip: ClipConfig, in_chans: int, dim: int):
        super().__init__()
        self.clip = clip
        kernel = (clip.tubelet, clip.patch, clip.patch)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=kernel, stride=kernel)

    def check(self, video: Tensor) -> None:
        expected = (self.proj.in_channels, self.clip.num_frames, self.clip.image_size, self.clip.image_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video must be (B, C, T, H, W) = (B, {', '.join(map(str, expected))}), got {tuple(video.shape)}"
            )

    def forward(self, video: Tensor) -> Tensor:
        """Every token: (B, C, T, H, W) -> (B, N, D)."""
        self.check(video)
        return self.proj(video).flatten(2).transpose(1, 2)

    def kept(self, video: Tensor, keep: Tensor) -> Tensor:
        """Only the kept tokens: (B, C, T, H, W) and keep (B, N_t, N_h, N_w) bool -> (L, D), video after video.

        The kept tubelets' pixels are gathered (a view splits the clip into its tubelets; indexing copies
        only the kept ones) and multiplied by the Conv3d's weights as a matrix: the same numbers as
        :meth:`forward` followed by a gather, at the cost of the kept tokens only (forward and backward).
        """
        self.check(video)
        pixels = tubelet_view(video, self.clip)[keep].flatten(1)  # (L, C * t * p * p)
        return F.linear(pixels, self.proj.weight.flatten(1), self.proj.bias)


def tubelet_view(video: Tensor, clip: ClipConfig) -> Tensor:
    """A view of ``video`` (B, C, T, H, W) split into its tubelets: (B, N_t, N_h, N_w, C, t, p, p), no copy."""
    b, c = video.shape[:2]
    (n_t, n_h, n_w), t, p = clip.grid, clip.tubelet, clip.patch
    return video.view(b, c, n_t, t, n_h, p, n_w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)


class Attention(nn.Module):
    """Multi-head self-attention over the kept tokens; qkv has no bias, q and v have their own."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, tokens: TokenLayout, attend: AttentionBackend) -> Tensor:
        """``x`` (L, D) packed or (B, L_max, D) padded -> same shape."""
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).unflatten(-1, (3, self.num_heads, -1))
        q, k, v = qkv.unbind(-3)
        return self.proj(attend(q, k, v, tokens).flatten(-2))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with per-video stochastic depth."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = drop_path

    def _residual(self, branch: Tensor, tokens: TokenLayout) -> Tensor:
        """Stochastic depth: in training each video's branch is dropped with probability drop_path."""
        if not self.training or self.drop_path == 0.0:
            return branch
        keep = 1.0 - self.drop_path
        alive = torch.rand(tokens.batch_size, device=branch.device).lt(keep).to(branch.dtype) / keep
        return branch * tokens.per_video(alive)

    def forward(self, x: Tensor, tokens: TokenLayout, attend: AttentionBackend) -> Tensor:
        """``x`` (L, D) packed or (B, L_max, D) padded -> same shape."""
        x = x + self._residual(self.attn(self.norm1(x), tokens, attend), tokens)
        return x + self._residual(self.mlp(self.norm2(x)), tokens)


class VideoViT(nn.Module):
    """VideoMAE-style ViT classifier computing only the kept tokens.

    ``forward(video, keep)``: ``video`` (B, C, T, H, W) float, ``keep`` (B, N_t, N_h, N_w) bool or
    None (every token) -> logits (B, num_classes). The tokens kept are gathered with their own
    positional embeddings; in the packed layout all videos form one sequence with block-diagonal
    attention, in the padded layout each video is padded to the longest.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.require_derived()
        self.config = config
        w = config.widths
        clip = config.clip
        self.patch_embed = PatchEmbed(clip, config.in_chans, w.embed_dim)
        self.register_buffer("pos_embed", sinusoid_table(clip.num_tokens, w.embed_dim), persistent=False)
        rates = torch.linspace(0, config.drop_path, w.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(w.embed_dim, w.num_heads, w.mlp_ratio, rate, config.norm_eps) for rate in rates
        )
        self.fc_norm = nn.LayerNorm(w.embed_dim, eps=config.fc_norm_eps)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(w.embed_dim, config.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VideoMAE fine-tuning init: truncated normal (std 0.02) linears, zero biases, scaled head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_head()

    def reset_head(self, num_classes: int | None = None) -> None:
        """A fresh head (optionally with a new class count), initialised as in VideoMAE fine-tuning."""
        if num_classes is not None and num_classes != self.head.out_features:
            self.head = nn.Linear(self.head.in_features, num_classes).to(self.head.weight)
            self.config = replace(self.config, num_classes=num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(self.config.head_init_scale)

    @property
    def num_tokens(self) -> int:
        """Tokens per clip, N = N_t * N_h * N_w."""
        return self.config.clip.num_tokens

    def embed(self, video: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N, D) embeddings of every token with positions added (a reference;
        :meth:`features` embeds only the kept tokens)."""
        return self.patch_embed(video) + self.pos_embed.to(video.dtype)

    def features(self, video: Tensor, keep: Tensor | None = None, attention: str | None = None) -> Tensor:
        """Pooled, normalised features (B, D) of the kept tokens (see :meth:`forward`)."""
        h, tokens = self.encode(video, keep, attention)
        return self.fc_norm(tokens.mean(h))

    def encode(self, video: Tensor, keep: Tensor | None = None, attention: str | None = None) -> tuple[Tensor, TokenLayout]:
        """The last block's output for the kept tokens and their layout: (L, D) packed, video after video
        in token order, or (B, L_max, D) padded (as the backend's layout). ``keep`` as in :meth:`forward`.

        Only the kept tokens are embedded (:meth:`PatchEmbed.kept`), so every layer's cost, the
        tubelet embedding's included, scales with the tokens kept.
        """
        self.patch_embed.check(video)
        b, grid = video.shape[0], self.config.clip.grid
        backend = resolve_attention(attention or self.config.attention, video.device, compute_dtype(video))
        if keep is None:
            keep = torch.ones((b, *grid), dtype=torch.bool, device=video.device)
        elif tuple(keep.shape) != (b, *grid):
            raise ValueError(f"keep must be (B, N_t, N_h, N_w) = {(b, *grid)}, got {tuple(keep.shape)}")
        flat = keep.reshape(b, -1)
        tokens = TokenLayout.from_keep(flat, backend.layout)
        positions = flat.nonzero(as_tuple=True)[1]  # token index of each kept token, video after video
        x = self.patch_embed.kept(video, keep) + self.pos_embed[positions].to(video.dtype)
        h = tokens.place(x)
        for block in self.blocks:
            h = block(h, tokens, backend)
        return h, tokens

    def forward(self, video: Tensor, keep: Tensor | None = None, attention: str | None = None) -> Tensor:
        """``video`` (B, C, T, H, W), ``keep`` (B, N_t, N_h, N_w) bool or None -> logits (B, num_classes).

        Every video must keep at least one token (the selectors always keep the first temporal
        segment). ``attention`` overrides the configured backend for this call (for tests and benchmarks).
        """
        return self.head(self.head_dropout(self.features(video, keep, attention)))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

