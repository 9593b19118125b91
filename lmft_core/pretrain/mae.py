"""The masked autoencoder of video pretraining (VideoMAE's recipe at lmft's geometry) and its export.

:class:`MaskedAutoencoder`: the encoder is lmft's :class:`~lmft_core.model.vit.VideoViT` run on the
visible tokens only (packed, through the registered attention backends: its cost falls with the mask
ratio), followed by a LayerNorm (``encoder.norm``); a light decoder (``encoder_to_decoder``, a learned
``mask_token``, fixed sinusoid positions, ``decoder.blocks``, ``decoder.norm``, ``decoder.head``) sees
every token, visible ones from the encoder and masked ones as the mask token, and predicts the pixels of
the masked tubelets only. Parameter names are VideoMAE's pre-training names, so :func:`save_encoder`
writes a checkpoint in VideoMAE's pre-training format, which :func:`lmft_core.model.load_videomae` reads
(``model.pretrained``): the encoder's blocks and tubelet embedding load; ``encoder.norm`` is reported
unexpected and ``fc_norm`` and the head start fresh, as in VideoMAE's own fine-tuning.

Target (:func:`patch_targets`): each tubelet's pixels in [0, 1], normalised per channel by the tubelet's
own mean and (unbiased) standard deviation, flattened pixel-major and channel-minor, as VideoMAE's
``normlize_target``; the loss is the mean squared error over the masked tokens' targets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from lmft_core.config import ClipConfig
from lmft_core.model import ModelConfig, TokenLayout, VideoViT, load_videomae, resolve_attention
from lmft_core.model.attention import compute_dtype
from lmft_core.model.vit import Block, sinusoid_table, tubelet_view
from lmft_core.pretrain.config import PretrainConfig
from lmft_core.shards.batch import model_input

TARGET_EPS = 1e-6  # VideoMAE's: (x - mean) / (std + eps)
ENCODER_FORMAT = "lmft-pretrained-encoder-v1"


def tubelet_pixels(frames: Tensor, clip: ClipConfig) -> tuple[Tensor, Tensor, Tensor]:
    """uint8 frames (B, T, S, S, C) -> (pixels (B, N, t * p * p, C) in [0, 1], their per-tubelet, per-channel
    mean and unbiased std (B, N, 1, C))."""
    video = frames.permute(0, 4, 1, 2, 3).float().div(255.0)  # (B, C, T, S, S)
    b, c = video.shape[:2]
    pixels = tubelet_view(video, clip).reshape(b, clip.num_tokens, c, -1).transpose(2, 3)
    return pixels, pixels.mean(dim=2, keepdim=True), pixels.var(dim=2, unbiased=True, keepdim=True).sqrt()


def patch_targets(frames: Tensor, model: ModelConfig) -> Tensor:
    """uint8 frames (B, T, S, S, C) -> per-tubelet normalised pixels (B, N, t * p * p * C) (module docstring)."""
    pixels, mean, std = tubelet_pixels(frames, model.clip)
    return ((pixels - mean) / (std + TARGET_EPS)).flatten(2)


@torch.no_grad()
def reconstruct(mae: MaskedAutoencoder, frames: Tensor, visible: Tensor) -> Tensor:
    """uint8 frames (B, T, S, S, C) with the masked tubelets replaced by their reconstruction, un-normalised
    with each tubelet's own mean and std (as VideoMAE's visualisation) -> uint8 (B, T, S, S, C)."""
    clip = mae.model_config.clip
    pixels, mean, std = tubelet_pixels(frames, clip)
    masked = ~visible.reshape(frames.shape[0], -1)
    pred = mae(model_input(frames), visible).float().view(-1, *pixels.shape[2:])
    out = pixels.clone()
    out[masked] = (pred * (std[masked] + TARGET_EPS) + mean[masked]).clamp(0.0, 1.0)
    (n_t, n_h, n_w), t, p = clip.grid, clip.tubelet, clip.patch
    folded = out.view(frames.shape[0], n_t, n_h, n_w, t, p, p, -1).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return folded.reshape(frames.shape).mul(255.0).round().to(torch.uint8)


class Decoder(nn.Module):
    """The light decoder: every token's (B, N, D_dec) -> pixels of the tokens asked for (M, t * p * p * C)."""

    def __init__(self, model: ModelConfig, dim: int, depth: int, heads: int):
        super().__init__()
        clip = model.clip
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0, 0.0, model.norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=model.norm_eps)
        self.head = nn.Linear(dim, model.in_chans * clip.tubelet * clip.patch**2)

    def forward(self, x: Tensor, tokens: TokenLayout, backend, wanted: Tensor) -> Tensor:
        """``x`` in ``tokens``' layout (every token of every clip), ``wanted`` (B, N) bool -> (M, out)."""
        for block in self.blocks:
            x = block(x, tokens, backend)
        b, n = wanted.shape
        return self.head(self.norm(x.reshape(b, n, -1)[wanted]))


class MaskedAutoencoder(nn.Module):
    """``forward(video, visible) -> predictions (M, t * p * p * C)`` of the masked tokens, clip after clip in
    token order (M = B x masked tokens per clip); ``video`` (B, C, T, H, W), ``visible`` (B, N_t, N_h, N_w)
    bool. The encoder's classification parts (``fc_norm``, ``head``) are not used in pretraining and are
    removed (Identity), so every parameter gets a gradient (DDP needs that). With ``model.pretrained`` set
    the encoder starts from those VideoMAE weights (continued pretraining; ``load_report`` says what loaded)."""

    def __init__(self, model: ModelConfig, cfg: PretrainConfig):
        super().__init__()
        model.require_derived()
        self.model_config = replace(model, drop_path=cfg.drop_path)
        self.encoder = VideoViT(self.model_config)
        self.encoder.fc_norm, self.encoder.head = nn.Identity(), nn.Identity()
        width = self.model_config.widths
        dim = cfg.decoder_dim or width.embed_dim // 2
        heads = cfg.decoder_heads or width.num_heads
        if dim % heads:
            raise ValueError(f"pretrain.decoder_dim {dim} is not a multiple of pretrain.decoder_heads {heads}")
        self.encoder.norm = nn.LayerNorm(width.embed_dim, eps=model.norm_eps)
        self.encoder_to_decoder = nn.Linear(width.embed_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sinusoid_table(model.clip.num_tokens, dim), persistent=False)
        self.decoder = Decoder(self.model_config, dim, cfg.decoder_depth, heads)
        for m in [*self.decoder.modules(), self.encoder_to_decoder, self.encoder.norm]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)  # VideoMAE pre-training's init
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.load_report = load_videomae(self.encoder, model.pretrained) if model.pretrained else None

    def forward(self, video: Tensor, visible: Tensor, attention: str | None = None) -> Tensor:
        h, tokens = self.encoder.encode(video, visible, attention)
        flat = visible.reshape(video.shape[0], -1)
        latent = self.encoder_to_decoder(self.encoder.norm(h))
        if tokens.layout == "padded":  # back to packed: video after video, in token order
            latent = latent[tokens.pad_mask] if tokens.pad_mask is not None else latent.flatten(0, 1)
        b, n = flat.shape
        x = self.mask_token.to(latent.dtype).expand(b, n, -1).clone()
        x[flat] = latent
        x = x + self.pos_embed.to(x.dtype)
        backend = resolve_attention(attention or self.model_config.attention, video.device, compute_dtype(video))
        every = torch.ones_like(flat)
        layout = TokenLayout.from_keep(every, backend.layout)
        return self.decoder(layout.gather(x, every), layout, backend, ~flat)


def save_encoder(mae: MaskedAutoencoder, path: str | Path, meta: dict) -> Path:
    """Write ``path``: ``{"model": VideoMAE pre-training state (encoder, decoder), "lmft": meta}`` (the
    loader reads ``model``; ``meta`` records the format, the clip geometry and the widths, which
    :func:`lmft_core.model.checkpoints.check_pretrained` compares with an adaptation's model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in mae.state_dict().items()}
    meta = {"format": ENCODER_FORMAT, "clip": dataclasses.asdict(mae.model_config.clip),
            "widths": dataclasses.asdict(mae.model_config.widths), **meta}
    torch.save({"model": state, "lmft": meta}, path)
    return path
