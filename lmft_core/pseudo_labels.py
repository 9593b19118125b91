"""Zero-shot CLIP pseudo-labels for video clips, through open_clip.

For a clip of T frames (uint8 (T, S, S, 3), see :mod:`lmft_core.video`) and K classes:

1. frames -> CLIP input: resized to the model's input size when S differs (bicubic, antialiased),
   scaled to [0, 1] and normalised with the model's mean and std;
2. ``f_i = normalize(encode_image(frame_i))`` for each frame, ``v = normalize(mean_i f_i)``
   (image embeddings averaged over time);
3. ``w_k = normalize(encode_text(template.format(action=prompt_name(class_k))))``;
4. ``probs = softmax(logit_scale.exp() * v @ w.T)`` over the K classes; the pseudo-label is the
   argmax and its confidence the max probability.

The confidence filter (gamma_c) is applied at training time, so sweeping it never re-runs this.

Weights: ``pretrained`` is an open_clip tag (``"openai"``: downloaded and cached by open_clip), a
local checkpoint file, or empty for **random initialisation** (seeded by ``init_seed`` so every
worker builds the same model). Random weights give meaningless labels; :func:`weights_identity`
says so (``untrained: true``) and the preprocessing metadata and summary repeat it.

Offline: a tag's checkpoint already in the cache is used without any network access; otherwise the
download host (or the proxy for it) is probed first, so that without a network the run fails within
seconds (:data:`NETWORK_PROBE_TIMEOUT_S`) with instructions to pass a local file, instead of after the hub
client's retries. Only download failures are reported that way: an error while building the model or
loading the checkpoint (out of memory, a corrupt file, weights of another architecture) keeps its own
type, message and traceback, with a note naming the model and the weights.
Architectures that open_clip does not ship are given as a model-config JSON file (``model_config``;
the model name is then the file's stem).

Activation: OpenAI's CLIP weights were trained with QuickGELU (``x * sigmoid(1.702 x)``), but
open_clip builds ``ViT-B-16`` with standard GELU (and only warns when the tag says otherwise).
:func:`uses_quick_gelu` decides: the model config's ``quick_gelu`` (``ViT-B-16-quickgelu``) or the
pretrained tag's; :func:`build_clip_model` then forces QuickGELU. A local checkpoint file carries no
tag, so OpenAI weights given as a file need a ``-quickgelu`` model name (the ``paper`` profile uses
``ViT-B-16-quickgelu``).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmft_core.config import ConfigError
from lmft_core.files import file_sha256
from lmft_core.manifest import prompt_name
from lmft_core.video import sample_frame_indices

PRECISIONS = ("fp32", "bf16")
NETWORK_PROBE_TIMEOUT_S = 5.0


class WeightsError(RuntimeError):
    """CLIP weights could not be loaded; the message says how to pass a local checkpoint."""


@dataclass(frozen=True)
class PseudoLabelConfig:
    """The ``[pseudo_labels]`` profile section.

    ``model``: open_clip model name (``ViT-B-16-quickgelu``: ViT-B/16 with the QuickGELU activation
    OpenAI's weights need; ``lmft-tiny-clip``: lmft's built-in tiny CLIP, for offline demos and tests).
    ``pretrained``: open_clip tag (``openai``), path
    to a local checkpoint, or ``""`` for random initialisation (untrained: for offline demos and
    tests only). ``model_config``: optional open_clip model-config JSON for an architecture open_clip
    does not ship (its stem must equal ``model``). ``cache_dir``: where open_clip caches downloaded
    weights (``""``: its default). ``prompt_template`` must contain ``{action}``. ``precision``:
    ``bf16`` (autocast, on CPU and GPU) or ``fp32``; bf16 is the default because it keeps the labels (on seeded
    random ViT-B/16 and tiny CLIPs: probabilities within 0.004 of fp32's, the same argmax but for near-ties;
    docs/preprocessing.md) at 1.5-3x the speed on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs;
    elsewhere fp32 may be faster. ``init_seed`` seeds random initialisation. ``num_frames``: how many
    of the clip's frames CLIP sees, evenly spaced (:func:`~lmft_core.video.sample_frame_indices`); absent:
    all ``clip.num_frames`` of them (the paper's 16). At most ``clip.num_frames`` (checked at profile load).
    """

    model: str = "ViT-B-16-quickgelu"
    pretrained: str = "openai"
    model_config: str = ""
    cache_dir: str = ""
    prompt_template: str = "a video of a person {action}"
    precision: str = "bf16"
    init_seed: int = 0
    num_frames: int | None = None

    def __post_init__(self) -> None:
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"pseudo_labels.num_frames must be >= 1 (the frames CLIP sees per clip), got {self.num_frames}")
        if "{action}" not in self.prompt_template:
            raise ConfigError(f"pseudo_labels.prompt_template {self.prompt_template!r} has no {{action}} placeholder")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"pseudo_labels.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.model_config and Path(self.model_config).stem != self.model:
            raise ConfigError(f"pseudo_labels.model_config {self.model_config!r}: its file stem must equal pseudo_labels.model={self.model!r}")

    @property
    def untrained(self) -> bool:
        return not self.pretrained

    @property
    def tiny(self) -> bool:
        """Whether the model is lmft's built-in tiny CLIP (:data:`TINY_CLIP_MODEL`)."""
        return self.model == TINY_CLIP_MODEL and not self.model_config

    def check_clip(self, clip_num_frames: int) -> None:
        """Raise :class:`ConfigError` when CLIP would see more frames than a clip has (``[clip] num_frames``)."""
        if self.num_frames is not None and self.num_frames > clip_num_frames:
            raise ConfigError(f"pseudo_labels.num_frames={self.num_frames} is more than the clip has "
                              f"(clip.num_frames={clip_num_frames}); CLIP sees at most every frame of the clip")

    def frames_seen(self, clip_num_frames: int) -> int:
        """How many frames of a ``clip_num_frames``-frame clip CLIP sees."""
        self.check_clip(clip_num_frames)
        return self.num_frames or clip_num_frames

    def prompts(self, classes: Sequence[str]) -> list[str]:
        return [self.prompt_template.format(action=prompt_name(c)) for c in classes]


# lmft's own CLIP architectures (open_clip model configs), known to open_clip by name once a config uses them:
# ``lmft-tiny-clip`` (about 1.6 M parameters, nearly all in the token embedding; 32 px input) lets the offline
# demo and the tests label clips in milliseconds. Untrained, its labels carry no information.
BUILTIN_MODELS_DIR = Path(__file__).resolve().parent / "clip_models"
TINY_CLIP_MODEL = "lmft-tiny-clip"
TINY_CLIP_CONFIG: dict = json.loads((BUILTIN_MODELS_DIR / f"{TINY_CLIP_MODEL}.json").read_text())


def _register_model_config(cfg: PseudoLabelConfig) -> None:
    import open_clip

    builtin = BUILTIN_MODELS_DIR / f"{cfg.model}.json"
    if not cfg.model_config and builtin.is_file() and open_clip.get_model_config(cfg.model) != json.loads(builtin.read_text()):
        open_clip.add_model_config(builtin)
    if cfg.model_config:
        path = Path(cfg.model_config)
        if not path.is_file():
            raise ConfigError(f"pseudo_labels.model_config: file not found: {path}")
        if open_clip.get_model_config(cfg.model) != json.loads(path.read_text()):
            open_clip.add_model_config(path)
    if cfg.model not in open_clip.list_models():
        raise ConfigError(f"pseudo_labels.model: open_clip has no model {cfg.model!r} (open_clip.list_models(); or give pseudo_labels.model_config)")


def uses_quick_gelu(cfg: PseudoLabelConfig) -> bool:
    """Whether the model of ``cfg`` must use QuickGELU: its open_clip model config says so
    (``*-quickgelu``) or the pretrained tag's config does (``ViT-B-16`` + ``openai``). No download."""
    import open_clip

    _register_model_config(cfg)
    model_cfg = open_clip.get_model_config(cfg.model) or {}
    tag_cfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) if cfg.pretrained else {}
    return bool(model_cfg.get("quick_gelu", False) or (tag_cfg or {}).get("quick_gelu", False))


def _is_path(pretrained: str) -> bool:
    return os.sep in pretrained or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors", ".npz")


def weights_identity(cfg: PseudoLabelConfig) -> dict[str, object]:
    """Which CLIP weights ``cfg`` names, for metadata and the output's config hash.

    ``kind`` is ``tag`` (open_clip tag, with its download source), ``file`` (with its sha256) or
    ``untrained`` (random init); ``quick_gelu`` the activation (:func:`uses_quick_gelu`). Raises :class:`ConfigError` for an
    unknown model, tag or missing file.
    """
    import open_clip

    _register_model_config(cfg)
    ident: dict[str, object] = {"model": cfg.model, "pretrained": cfg.pretrained, "untrained": cfg.untrained,
                                "quick_gelu": uses_quick_gelu(cfg), "tiny": cfg.tiny,
                                "architecture": open_clip.get_model_config(cfg.model)}
    if cfg.tiny:
        ident["tiny_note"] = (f"{TINY_CLIP_MODEL}: lmft's built-in tiny CLIP (one transformer block of width 32 per tower, "
                              "32 px input), for offline demos and tests, not a real labeller")
    if cfg.model_config:
        ident["model_config_sha256"] = file_sha256(cfg.model_config)
    pcfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) if cfg.pretrained else None
    if cfg.untrained:
        ident.update(kind="untrained", init_seed=cfg.init_seed,
                     note="random initialisation: the pseudo-labels come from an untrained CLIP and carry no information")
    elif pcfg:
        ident.update(kind="tag", source=pcfg.get("hf_hub") or pcfg.get("url") or "")
    elif _is_path(cfg.pretrained):
        path = Path(cfg.pretrained)
        if not path.is_file():
            raise ConfigError(f"pseudo_labels.pretrained: checkpoint file not found: {path}")
        ident.update(kind="file", path=str(path.resolve()), sha256=file_sha256(path))
    else:
        raise ConfigError(
            f"pseudo_labels.pretrained={cfg.pretrained!r} is neither an open_clip tag of {cfg.model!r} "
            f"{open_clip.list_pretrained_tags_by_model(cfg.model)} nor a checkpoint path")
    return ident


def _weights_error(cfg: PseudoLabelConfig, error: BaseException | str) -> WeightsError:
    import open_clip

    pcfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained) if cfg.pretrained else {}
    where = f" (hf-hub: {pcfg['hf_hub']})" if pcfg and pcfg.get("hf_hub") else (f" ({pcfg['url']})" if pcfg and pcfg.get("url") else "")
    return WeightsError(
        f"could not download open_clip weights for model {cfg.model!r} with pretrained={cfg.pretrained!r}{where}: {error}\n"
        f"Without network access, fetch the checkpoint on a machine that has it{where} and pass the local file: "
        f"--set pseudo_labels.pretrained=/path/to/open_clip_pytorch_model.bin "
        f"(or pseudo_labels.pretrained=\"\" for an untrained CLIP, demo only){_file_advice(cfg)}")


def _file_advice(cfg: PseudoLabelConfig) -> str:
    """A file carries no tag: weights that need QuickGELU need a model name that builds it."""
    import open_clip

    if not uses_quick_gelu(cfg) or (open_clip.get_model_config(cfg.model) or {}).get("quick_gelu", False):
        return ""
    name = f"{cfg.model}-quickgelu"
    model = name if name in open_clip.list_models() else "a model config with quick_gelu=true"
    return (f". These weights need the QuickGELU activation, which a local file cannot tell open_clip: "
            f"also pass --set pseudo_labels.model={model}")


def _cached_checkpoint(pcfg: dict, cache_dir: str | None) -> str | None:
    """The tag's checkpoint when open_clip's download cache already holds it, found without the network
    (the hub client would first ask the hub whether the file changed, retrying when it cannot)."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    if pcfg.get("hf_hub"):  # open_clip prefers the hub, and tries the safetensors files first
        from huggingface_hub import try_to_load_from_cache

        model_id, filename = os.path.split(pcfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        for name in (*_get_safe_alternatives(filename), filename):
            hit = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
            if isinstance(hit, str):
                return hit
        return None
    path = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(pcfg.get("url", ""))
    return str(path) if pcfg.get("url") and path.is_file() else None


def _network_problem(pcfg: dict) -> str | None:
    """Why the tag's download host (or the proxy for it) cannot be reached within
    :data:`NETWORK_PROBE_TIMEOUT_S`; None when it can."""
    from huggingface_hub import constants

    if pcfg.get("hf_hub"):
        if constants.HF_HUB_OFFLINE:
            return "HF_HUB_OFFLINE is set"
        url = constants.ENDPOINT
    else:
        url = pcfg.get("url", "")
    target = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urllib.parse.urlsplit(proxy)
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{host}:{port} cannot be reached ({type(e).__name__}: {e})"
    return None


def fetch_pretrained(cfg: PseudoLabelConfig) -> str:
    """The local path of a pretrained tag's checkpoint: from open_clip's cache, else downloaded.

    Raises :class:`WeightsError` (saying how to pass a local checkpoint) when it cannot be had; without a
    network that takes at most :data:`NETWORK_PROBE_TIMEOUT_S` plus name resolution.
    """
    import open_clip
    from open_clip.pretrained import download_pretrained

    pcfg = open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained)
    cached = _cached_checkpoint(pcfg, cfg.cache_dir or None)
    if cached:
        return cached
    problem = _network_problem(pcfg)
    if problem:
        raise _weights_error(cfg, f"it is not in the download cache and {problem}")
    try:
        return download_pretrained(pcfg, cache_dir=cfg.cache_dir or None)
    except Exception as e:  # noqa: BLE001 - network and hub errors of many kinds
        raise _weights_error(cfg, e) from None


def build_clip_model(cfg: PseudoLabelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The open_clip model of ``cfg`` in eval mode, weights loaded through open_clip's own API.

    A tag's checkpoint is fetched first (:func:`fetch_pretrained`: download failures raise
    :class:`WeightsError`), then loaded as a file with the tag's preprocessing settings. Errors while
    building or loading propagate as they are, with a note naming the model and weights. QuickGELU is
    forced when :func:`uses_quick_gelu` says so (open_clip itself only warns).
    """
    import open_clip

    _register_model_config(cfg)
    quick_gelu = uses_quick_gelu(cfg)
    pretrained, tag_cfg = cfg.pretrained or None, None
    if cfg.pretrained and open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained):
        pretrained, tag_cfg = fetch_pretrained(cfg), open_clip.get_pretrained_cfg(cfg.model, cfg.pretrained)
    try:
        with torch.random.fork_rng(devices=[]):  # seeded random init that leaves the caller's RNG alone
            torch.manual_seed(cfg.init_seed)
            model = open_clip.create_model(cfg.model, pretrained=pretrained, device=device, force_preprocess_cfg=tag_cfg,
                                           cache_dir=cfg.cache_dir or None, force_quick_gelu=quick_gelu)
    except Exception as e:
        e.add_note(f"lmft: while building open_clip model {cfg.model!r} with weights {pretrained or 'untrained'!r}")
        raise
    return model.eval()


class ClipZeroShot:
    """Zero-shot classifier of clips over ``classes`` (see the module docstring for the maths)."""

    def __init__(self, cfg: PseudoLabelConfig, classes: Sequence[str], device: str | torch.device = "cpu"):
        import open_clip

        self.cfg, self.classes, self.device = cfg, tuple(classes), torch.device(device)
        self.model = build_clip_model(cfg, self.device)
        pp = open_clip.get_model_preprocess_cfg(self.model)
        size = pp["size"]
        self.input_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        self.mean = torch.tensor(pp["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], device=self.device).view(1, 3, 1, 1)
        tokenizer = open_clip.get_tokenizer(cfg.model)
        with torch.no_grad(), self._autocast():
            text = self.model.encode_text(tokenizer(cfg.prompts(self.classes)).to(self.device))
        self.text = F.normalize(text.float(), dim=-1)  # (K, D)
        self.logit_scale = float(self.model.logit_scale.detach().exp())

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def image_inputs(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, S, S, 3) -> normalised float (N, 3, *input_size)."""
        x = torch.as_tensor(frames, device=self.device).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def probs(self, clips: np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 clips (B, T, S, S, 3) -> float32 class probabilities (B, K), rows summing to 1.

        CLIP sees ``cfg.num_frames`` of the T frames, evenly spaced (all T when it is absent)."""
        seen = self.cfg.frames_seen(clips.shape[1])
        if seen < clips.shape[1]:
            clips = clips[:, sample_frame_indices(clips.shape[1], seen)[0]]
        b, t = clips.shape[:2]
        x = self.image_inputs(clips.reshape(b * t, *clips.shape[2:]))
        with self._autocast():
            f = self.model.encode_image(x)
        f = F.normalize(f.float(), dim=-1).view(b, t, -1)
        v = F.normalize(f.mean(dim=1), dim=-1)
        return torch.softmax(self.logit_scale * v @ self.text.T, dim=-1).cpu().numpy().astype(np.float32)


def save_random_checkpoint(directory: str | Path, name: str = TINY_CLIP_MODEL, model_config: dict | None = None,
                           seed: int = 0) -> PseudoLabelConfig:
    """Write a randomly initialised open_clip model as a checkpoint a user would pass.

    Writes ``directory/<name>.json`` (the architecture, default :data:`TINY_CLIP_CONFIG`) and
    ``directory/<name>.pt`` (its state dict); returns the config that loads them through the same
    ``pretrained=<path>`` option used for real weights. For tests and offline benchmarks.
    """
    import open_clip

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path, weights_path = directory / f"{name}.json", directory / f"{name}.pt"
    config_path.write_text(json.dumps(model_config or TINY_CLIP_CONFIG))
    open_clip.add_model_config(config_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
    torch.save(model.state_dict(), weights_path)
    return PseudoLabelConfig(model=name, pretrained=str(weights_path), model_config=str(config_path))
