"""Pretrained VideoMAE weights: loading them into :class:`~lmft_core.model.vit.VideoViT`, and the model built with them.

Formats read (detected from the keys):

- ``videomae``: the original MCG-NJU/VideoMAE ``modeling_finetune.py`` names, which are this model's
  own; files keep the weights under ``model`` or ``module`` (DeepSpeed) or are a bare state dict.
- ``videomae_pretrain``: original pre-training checkpoints, ``encoder.`` prefixed (``backbone.`` also
  accepted); ``decoder.*``, ``encoder_to_decoder`` and ``mask_token`` are dropped. ``encoder.norm``
  has no counterpart with mean pooling and is reported as unexpected (``fc_norm`` stays fresh), as the
  official fine-tuning script does.
- ``hf``: Hugging Face transformers VideoMAE (``VideoMAEForVideoClassification``, ``VideoMAEModel``,
  ``VideoMAEForPreTraining``): split q/k/v fused into ``qkv``, q and v biases either as ``q_bias``/
  ``v_bias`` (older checkpoints) or ``query.bias``/``value.bias`` (transformers 5).

Paths: a ``.safetensors`` file, a ``torch.save`` file (read with ``weights_only=True``), or a
directory holding ``model.safetensors`` or ``pytorch_model.bin`` (a Hugging Face save).
A head whose class count differs from the model's is dropped and the model's head is freshly
initialised. :class:`LoadReport` lists what was loaded, missing, unexpected and dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lmft_core.config import ClipConfig
from lmft_core.model.vit import ModelConfig, VideoViT

log = logging.getLogger(__name__)

HEAD_KEYS = ("head.weight", "head.bias")
DECODER_PREFIXES = ("decoder.", "encoder_to_decoder.", "mask_token")

# Hugging Face name -> original name (after the "videomae." prefix is stripped)
_HF_RENAMES = [
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.weight$", r"blocks.\1.attn.\2.weight"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(q_bias|query\.bias)$", r"blocks.\1.attn.q_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.(v_bias|value\.bias)$", r"blocks.\1.attn.v_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.bias$", r"blocks.\1.attn.k_bias"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or converted; the message names the file."""


@dataclass
class LoadReport:
    """What :func:`load_videomae` did. Key names are the model's (original VideoMAE) names."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    fresh_head: bool = False

    @property
    def complete(self) -> bool:
        """Every model tensor loaded, none unexpected, head kept (dropped decoder keys are expected)."""
        return not (self.missing or self.unexpected or self.fresh_head)

    def summary(self, max_keys: int = 20) -> str:
        """Readable report; each key list shows at most ``max_keys`` names."""
        lines = [f"{self.path}: {self.format} checkpoint, {len(self.loaded)} tensors loaded"]
        if self.fresh_head:
            lines.append("  head: freshly initialised (class count differs or head absent)")
        for name in ("missing", "unexpected", "dropped"):
            keys = getattr(self, name)
            if keys:
                more = f", ... and {len(keys) - max_keys} more" if len(keys) > max_keys else ""
                lines.append(f"  {name} ({len(keys)}): {', '.join(keys[:max_keys])}{more}")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The raw tensors of a checkpoint file or Hugging Face directory (see the module docstring)."""
    return _read(path)[0]


def _read(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """(the raw tensors, the ``lmft`` entry of a torch checkpoint lmft wrote or {}) of ``path``."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                return _read(path / name)
        raise CheckpointError(f"{path}: directory has neither model.safetensors nor pytorch_model.bin")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch checkpoint: {e}") from e
    meta = obj.get("lmft") if isinstance(obj, dict) and isinstance(obj.get("lmft"), dict) else {}
    for key in ("model", "module", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (expected tensors at the top or under 'model'/'module')")
    return dict(obj), meta


def detect_format(state: dict[str, Tensor]) -> str:
    """``hf``, ``videomae_pretrain`` or ``videomae`` from the key names."""
    keys = list(state)
    if any(k.startswith(("videomae.", "embeddings.patch_embeddings", "encoder.layer.")) for k in keys):
        return "hf"
    if any(k.startswith(("encoder.", "backbone.")) for k in keys):
        return "videomae_pretrain"
    return "videomae"


def convert_state_dict(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str, list[str]]:
    """Rename ``state`` to the model's names -> (converted, format, dropped decoder keys)."""
    fmt = detect_format(state)
    dropped = sorted(k for k in state if k.startswith(DECODER_PREFIXES))
    state = {k: v for k, v in state.items() if k not in dropped}
    if fmt == "videomae_pretrain":
        return {re.sub(r"^(encoder|backbone)\.", "", k): v for k, v in state.items()}, fmt, dropped
    if fmt == "videomae":
        return state, fmt, dropped
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("videomae.")
        for pattern, repl in _HF_RENAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return _fuse_qkv(out), fmt, dropped


def _fuse_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``blocks.i.attn.{query,key,value}.weight`` -> ``blocks.i.attn.qkv.weight`` (rows q, k, v)."""
    blocks = sorted({m.group(1) for k in state if (m := re.match(r"blocks\.(\d+)\.attn\.query\.weight$", k))}, key=int)
    for i in blocks:
        parts = [state.pop(f"blocks.{i}.attn.{p}.weight", None) for p in ("query", "key", "value")]
        if any(p is None for p in parts):
            raise CheckpointError(f"layer {i}: query, key and value weights must all be present")
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(parts, 0)
    return state


def load_videomae(model: nn.Module, path: str | Path | None = None, state: dict[str, Tensor] | None = None) -> LoadReport:
    """Load VideoMAE weights (file/directory ``path`` or an in-memory ``state``) into ``model``.

    Tensors whose name the model lacks are ``unexpected``; model tensors the checkpoint lacks are
    ``missing`` (they keep their current values); a shape mismatch outside the head is an error.
    A head of another class count (or none) leaves a freshly initialised head.
    """
    if (path is None) == (state is None):
        raise ValueError("give exactly one of path and state")
    raw = read_state_dict(path) if path is not None else state
    converted, fmt, dropped = convert_state_dict(raw)
    report = LoadReport(str(path) if path is not None else "<state dict>", fmt, dropped=dropped)
    own = model.state_dict()
    head_shape_ok = all(k in converted and converted[k].shape == own[k].shape for k in HEAD_KEYS if k in own)
    if not head_shape_ok:
        for k in HEAD_KEYS:
            if k in converted:
                report.dropped.append(f"{k} {tuple(converted.pop(k).shape)}")
        report.fresh_head = True
        model.reset_head()
    report.unexpected = sorted(k for k in converted if k not in own)
    usable = {k: v for k, v in converted.items() if k in own}
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in usable.items() if v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{report.path}: shape mismatch (is the model config right?): " + "; ".join(bad))
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = sorted(k for k in own if k not in usable and not (report.fresh_head and k in HEAD_KEYS))
    return report


def model_config_from_hf(config: dict | str | Path, **overrides) -> ModelConfig:
    """A :class:`ModelConfig` matching a Hugging Face ``VideoMAEConfig`` (dict, config.json or its folder).

    Takes the geometry, widths and LayerNorm epsilons (``layer_norm_eps``; ``fc_norm`` uses 1e-5);
    ``overrides`` set any other field (``num_classes`` defaults to the checkpoint's label count).
    """
    if not isinstance(config, dict):
        p = Path(config)
        p = p / "config.json" if p.is_dir() else p
        config = json.loads(p.read_text())
    fields = dict(
        size="vit_b16",
        num_classes=len(config.get("id2label") or {}) or 1,
        clip=ClipConfig(
            num_frames=config["num_frames"], image_size=config["image_size"], tubelet=config["tubelet_size"], patch=config["patch_size"]
        ),
        in_chans=config.get("num_channels", 3),
        embed_dim=config["hidden_size"],
        depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_ratio=config["intermediate_size"] / config["hidden_size"],
        norm_eps=config.get("layer_norm_eps", 1e-12),
        fc_norm_eps=1e-5,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def build_model(config: ModelConfig) -> VideoViT:
    """The model of ``config``; with ``config.pretrained`` set, those VideoMAE weights loaded and the report logged.

    The report is logged at WARNING when a tensor is missing or unexpected or the head is fresh,
    at INFO when everything loaded, and kept as ``model.load_report`` (None without weights).
    """
    model = config.build()
    model.load_report = None
    if config.pretrained:
        report = model.load_report = load_videomae(model, config.pretrained)
        log.log(logging.INFO if report.complete else logging.WARNING, "%s", report.summary())
    return model


def check_pretrained(config: ModelConfig) -> None:
    """Raise :class:`CheckpointError` naming ``config.pretrained`` and the key when its weights cannot
    initialise ``config``'s model: a tensor of another shape (another width, tubelet or patch) or, for a
    checkpoint lmft's pretraining wrote (it records its geometry under ``lmft``), another ``[clip]``.
    Builds the model once on the CPU to know its shapes (about a second for ViT-B)."""
    path = Path(config.pretrained)
    raw, meta = _read(path)
    converted, _, _ = convert_state_dict(raw)
    own = VideoViT(config).state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in converted.items() if k in own and k not in HEAD_KEYS and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: weights of another shape than model.size={config.size!r} at this clip "
                              "geometry (another width, tubelet or patch?): " + "; ".join(bad))
    clip = meta.get("clip")
    if clip:
        diffs = [f"clip.{k}: checkpoint {v}, model {getattr(config.clip, k)}" for k, v in clip.items()
                 if getattr(config.clip, k, v) != v]
        if diffs:
            raise CheckpointError(f"{path}: pretrained at another clip geometry (" + "; ".join(diffs)
                                  + "): pretrain with this profile's [clip], or adapt at the checkpoint's")
