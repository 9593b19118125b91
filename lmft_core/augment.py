"""Training augmentations of shard batches that keep the stored motion energy valid.

The energy of a clip is computed once, at preprocessing; an augmentation of the frames must therefore
either move the energy map with them or leave it unchanged:

- **horizontal flip** (:func:`hflip`): frames along W and energy along N_w together (the energy of a
  flipped clip is the flipped energy map: tested); a flip turns "slide left" into "slide right", so
  direction-dependent classes need a label map (``train.hflip_label_map``) or no flip, and a training
  refuses to flip classes whose names say a direction (:func:`check_hflip`) unless the map pairs them;
- **colour jitter** (:func:`color_jitter`): per clip, one brightness gain, one contrast factor and one
  gain per channel for all frames. A gain scales every tubelet difference by the same factor and the
  per-video min-max normalisation of the energy cancels it; contrast about the clip's mean is a gain
  on differences too; per-channel gains reweight the channels' share of the mean (a small change).
  Clipping to [0, 255] is the only other deviation;
- **background mixing** (:func:`background_mix`, after CoMix, Sahoo et al., NeurIPS 2021): each source
  clip is blended with the static background of an unlabelled target clip, ``(1 - lam) * x + lam * bg``
  with ``bg`` that clip's per-pixel temporal median. A static term adds nothing to a tubelet difference
  and the factor ``(1 - lam)`` cancels in the min-max normalisation, so the stored energy is exactly that
  of the mixed clip (rounding aside), while the classifier sees source motion over target-looking scenes
  and has to rely on the motion rather than on the source's appearance.

Random crops are not offered: the energy grid is fixed at preprocessing (one scalar per patch of the
stored clip), so a crop that is not a multiple of the patch would have no energy map, and one that is
would cut tokens from the grid that the model's positional table expects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from lmft_core.config import ConfigError
from lmft_core.shards.batch import ClipBatch

# words of a class name that a horizontal flip mirrors ("slide_left" becomes "slide right")
DIRECTION_WORDS = frozenset({"left", "right", "leftward", "rightward", "leftwards", "rightwards", "clockwise",
                             "counterclockwise", "anticlockwise", "cw", "ccw", "east", "west"})


def hflip(batch: ClipBatch, flip: Tensor, label_map: Tensor | None = None) -> ClipBatch:
    """Flip the clips where ``flip`` (B,) bool is set: frames along W, energy along N_w, together.

    ``label_map`` (K,) int64 maps a class to its mirror image (``slide_left`` -> ``slide_right``) for
    direction-dependent classes; it is applied to ``label``, ``pseudo_label`` and ``clip_probs`` of the
    flipped clips. None: every class is its own mirror image.
    """
    f5, f4 = flip.view(-1, 1, 1, 1, 1), flip.view(-1, 1, 1, 1)
    out = replace(batch, frames=torch.where(f5, batch.frames.flip(3), batch.frames),
                  energy=torch.where(f4, batch.energy.flip(3), batch.energy))
    if label_map is not None:
        mapped = torch.where(batch.label >= 0, label_map[batch.label.clamp(min=0)], batch.label)
        out.label = torch.where(flip, mapped, batch.label)
        out.pseudo_label = torch.where(flip, label_map[batch.pseudo_label], batch.pseudo_label)
        inverse = torch.argsort(label_map)  # probs of mirrored class k come from class label_map^-1(k)
        out.clip_probs = torch.where(flip[:, None], batch.clip_probs[:, inverse], batch.clip_probs)
    return out


def color_jitter(frames: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Per-clip photometric jitter of uint8 frames (B, T, S, S, 3) -> uint8, same shape and device.

    Each clip draws a brightness gain and a contrast factor in [1 - strength, 1 + strength] and a gain
    per channel in [1 - strength / 2, 1 + strength / 2] (uniform), the same for all its frames.
    """
    b = frames.shape[0]
    u = torch.rand((b, 5), generator=generator).to(frames.device)
    brightness = 1.0 + strength * (2 * u[:, 0] - 1)
    contrast = 1.0 + strength * (2 * u[:, 1] - 1)
    channel = 1.0 + 0.5 * strength * (2 * u[:, 2:] - 1)  # (B, 3)
    x = frames.float()
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    x = (x - mean) * contrast.view(b, 1, 1, 1, 1) + mean
    x = x * (brightness.view(b, 1, 1, 1, 1) * channel.view(b, 1, 1, 1, 3))
    return x.round_().clamp_(0, 255).to(torch.uint8)


def background_mix(frames: Tensor, backgrounds_from: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Blend each clip of ``frames`` (uint8 (B, T, S, S, 3)) with the temporal-median background of a
    random clip of ``backgrounds_from`` (uint8 (B', T, S, S, 3)): ``(1 - lam) x + lam bg``, ``lam``
    uniform in [0, ``strength``] per clip. Returns uint8 frames of the same shape and device."""
    b = frames.shape[0]
    pick = torch.randint(0, backgrounds_from.shape[0], (b,), generator=generator).to(frames.device)
    lam = (strength * torch.rand(b, generator=generator)).to(frames.device).view(b, 1, 1, 1, 1)
    bg = backgrounds_from[pick].median(dim=1, keepdim=True).values.float()  # (B, 1, S, S, 3)
    return ((1 - lam) * frames.float() + lam * bg).round_().clamp_(0, 255).to(torch.uint8)


def label_map_tensor(classes: Sequence[str], mirror: Mapping[str, str]) -> Tensor | None:
    """(K,) int64 class -> mirrored class from a name mapping (made symmetric); None for an empty one.

    Raises ValueError for a name that is not a class or a mapping that is not a pairing.
    """
    if not mirror:
        return None
    index = {c: i for i, c in enumerate(classes)}
    out = torch.arange(len(classes))
    for a, b in mirror.items():
        for name in (a, b):
            if name not in index:
                raise ValueError(f"train.hflip_label_map: {name!r} is not a class of the shards {list(classes)}")
        if mirror.get(b, a) != a:
            raise ValueError(f"train.hflip_label_map: {a!r} -> {b!r} but {b!r} -> {mirror[b]!r}: a flip pairs classes")
        out[index[a]], out[index[b]] = index[b], index[a]
    return out


def name_words(name: str) -> list[str]:
    """The lower-case words of a class name, split at non-letters and camel case: ``"SlideLeft_2"`` ->
    ``["slide", "left"]``."""
    return [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", name)]


def check_hflip(classes: Sequence[str], hflip: bool, mirror: Mapping[str, str], where: str) -> None:
    """Refuse a horizontal flip that would silently mislabel: with ``hflip`` on, every class whose name has a
    direction word (:data:`DIRECTION_WORDS`) must be paired in ``mirror`` (``train.hflip_label_map``).
    ``where`` says where ``classes`` come from (for the message). Raises ConfigError."""
    if not hflip:
        return
    mapped = set(mirror) | set(mirror.values())
    unpaired = [c for c in classes if DIRECTION_WORDS.intersection(name_words(c)) and c not in mapped]
    if unpaired:
        raise ConfigError(f"train.hflip = true, but the classes {unpaired} ({where}) name a direction that a "
                          "horizontal flip mirrors, and train.hflip_label_map does not pair them: set "
                          "train.hflip_label_map (e.g. {slide_left = \"slide_right\", slide_right = \"slide_left\"}) "
                          "or train.hflip = false")
