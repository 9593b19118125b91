"""Motion energy: one scalar per token saying how much its tubelet changes from the previous one.

Definition (terms in :mod:`lmft_core.config`), for a clip of T frames, RGB in [0, 1] after resizing,
tubelets of ``tubelet`` frames by ``patch`` x ``patch`` pixels, ``N_t = T / tubelet`` temporal
segments and an ``N_h`` x ``N_w`` grid of patches (``N_h = H / patch``, ``N_w = W / patch``):

1. ``P̄_t`` = mean of the ``tubelet`` frames of segment t  -> (N_t, H, W, C)
2. ``D_t = |P̄_{t+1} - P̄_t|``                           -> (N_t - 1, H, W, C)
3. ``E_t`` = mean of ``D_t`` over channels and each patch's pixels -> (N_t - 1, N_h, N_w)
4. min-max normalise the ``N_t - 1`` maps together over the whole video; all values equal -> zeros
5. prepend a map of ones for the first temporal segment (it is always kept)  -> (N_t, N_h, N_w)

Token ``(t, h, w)`` is kept by the threshold rule when ``energy[t, h, w] > tau``.

**Variants** (:data:`ENERGY_VARIANTS`, chosen by ``[energy] variant``; :class:`EnergyConfig`). Each
replaces steps 2 and 3 (the change per token); steps 4 and 5 are shared, so every variant keeps the
contract of :func:`motion_energy` (:meth:`EnergyConfig.compute`): frames (..., T, H, W, C) -> float32
(..., N_t, N_h, N_w) in [0, 1], segment 0 all ones, segment t >= 1 the change from segment t-1 to t.

- ``diff``: the paper's definition above (:func:`motion_energy`).
- ``translate``, ``translate_zoom``: camera-compensated. For each pair of adjacent tubelet means the
  camera's motion (a translation; or a zoom about the centre and a translation) is estimated on
  grayscale tubelet means pooled to about ``estimate_size`` pixels
  (:func:`lmft_core.camera_motion.estimate_motion`: coarse-to-fine, with the clip's consensus for
  periodic scenes and neighbours' motion for refused pairs), and step 2 compares each pixel of
  ``P̄_{t+1}`` with the pixel of ``P̄_t`` that showed the same scene point (the nearest pixel). Step 3
  averages over the pixels that ``P̄_t`` saw; a token that ``P̄_t`` did not see at all (revealed by the
  camera's motion) keeps the uncompensated difference. A pair keeps ``diff``'s step 2 and 3 when no
  motion is accepted (no gain in the median residual, or beyond ``max_shift`` / ``max_zoom``) or
  when compensating does not lower its median token change by ``min_gain`` (a background token's:
  on a scene without texture, a motion fitted to the actor does not); so a static camera gives
  exactly ``diff``'s energy. A clip whose motion cannot be estimated at all (frames too small,
  constant or uniform) gets ``diff``'s energy and a note (:meth:`EnergyConfig.compute_noted`), which
  preprocessing stores per row (``energy_note``) and counts in its summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from lmft_core.camera_motion import ClipMotion, estimate_motion, no_motion, source_index
from lmft_core.config import ConfigError
from lmft_core.registry import Registry

Frames = np.ndarray | Tensor


@dataclass(frozen=True)
class EnergyConfig:
    """The ``[energy]`` profile section: which motion-energy variant preprocessing computes.

    ``variant``: a name in :data:`ENERGY_VARIANTS` (``diff``, the paper's, by default). The
    camera-compensated variants read ``estimate_size`` (the motion is estimated on tubelet means
    averaged over f x f pixel blocks, f the largest divisor of the patch that leaves at least this
    many pixels on the short side), ``max_shift`` (largest camera translation per segment, a
    fraction of the frame side), ``max_zoom`` (largest ``|log zoom|`` per segment, ``translate_zoom``
    only) and ``min_gain`` (the compensation must lower the median absolute difference by at least
    this fraction).
    """

    variant: str = "diff"
    estimate_size: int = 48
    max_shift: float = 0.25
    max_zoom: float = 0.2
    min_gain: float = 0.2

    def __post_init__(self) -> None:
        ENERGY_VARIANTS.check(self.variant, "energy.variant")
        if self.estimate_size < 8:
            raise ConfigError(f"energy.estimate_size must be >= 8, got {self.estimate_size}")
        for name in ("max_shift", "max_zoom", "min_gain"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"energy.{name} must be in [0, 1], got {getattr(self, name)}")

    def identity(self) -> dict:
        """What determines the energy values: the variant and the settings it reads (recorded in the
        shards' metadata and hashed into their output folder)."""
        return {"variant": self.variant} | {k: getattr(self, k) for k in ENERGY_VARIANTS[self.variant].reads}

    def compute(self, frames: Frames, tubelet: int, patch: int) -> Frames:
        """Motion energy of one clip or a batch of clips with this variant (contract of :func:`motion_energy`)."""
        return self.compute_noted(frames, tubelet, patch)[0]

    def compute_noted(self, frames: Frames, tubelet: int, patch: int) -> tuple[Frames, list[str]]:
        """:meth:`compute`, and per clip (flattened leading dimensions) why a compensated variant fell
        back to ``diff`` for the whole clip (frames too small to estimate motion on, constant frames);
        empty where it did not."""
        x, lead, as_numpy = _clips(frames, tubelet, patch)
        if x.shape[1] == tubelet:  # a single segment: nothing to compare with, the first segment is all ones
            e = torch.ones((x.shape[0], 1, x.shape[2] // patch, x.shape[3] // patch), device=x.device)
            notes = [""] * x.shape[0]
        else:
            change, notes = ENERGY_VARIANTS[self.variant].change(x, tubelet, patch, self)
            e = _normalise(change)
        e = e.reshape(*lead, *e.shape[1:])
        return (e.numpy() if as_numpy else e), notes

    def token_change(self, frames: Frames, tubelet: int, patch: int) -> Tensor:
        """The un-normalised change per token, before steps 4 and 5: the mean absolute difference per
        pixel and channel (values in [0, 1]) of segments t-1 and t: (B, N_t - 1, N_h, N_w) for frames
        (..., T, H, W, C) flattened to B clips."""
        x, _, _ = _clips(frames, tubelet, patch)
        return ENERGY_VARIANTS[self.variant].change(x, tubelet, patch, self)[0]


ChangeFn = Callable[[Tensor, int, int, EnergyConfig], tuple[Tensor, list[str]]]


@dataclass(frozen=True)
class EnergyVariant:
    """A registered variant: ``change(clips, tubelet, patch, cfg)`` maps clips (B, T, H, W, C) (uint8,
    or floats in [0, 1]) to the change per token (B, N_t - 1, N_h, N_w) (mean absolute difference per
    pixel and channel) and a note per clip (why it fell back to ``diff``'s change, or empty);
    ``reads``: the :class:`EnergyConfig` fields it uses. The variant's motion energy is that change
    normalised by steps 4 and 5 (:meth:`EnergyConfig.compute`)."""

    change: ChangeFn
    reads: tuple[str, ...] = ()


ENERGY_VARIANTS: Registry[EnergyVariant] = Registry("energy variant")


def motion_energy(frames: Frames, tubelet: int = 2, patch: int = 16) -> Frames:
    """Motion energy (the paper's, variant ``diff``) of one clip or a batch of clips.

    Args:
        frames: (..., T, H, W, C) RGB, channels last, either uint8 (0..255, scaled by 1/255) or
            floating point in [0, 1]; numpy array or torch tensor (any device). Leading dimensions
            are independent clips, each normalised on its own.
        tubelet: frames per tubelet; T must be a multiple of it.
        patch: patch side in pixels; H and W must be multiples of it.

    Returns:
        float32 (..., N_t, N_h, N_w) with values in [0, 1], the first segment all ones; a numpy
        array for numpy input, else a tensor on the input's device.
    """
    return EnergyConfig("diff").compute(frames, tubelet, patch)


def _clips(frames: Frames, tubelet: int, patch: int) -> tuple[Tensor, list[int], bool]:
    """frames as a tensor (B, T, H, W, C), the leading shape, and whether the input was numpy."""
    as_numpy = isinstance(frames, np.ndarray)
    x = torch.from_numpy(frames) if as_numpy else frames
    *lead, t, h, w, c = x.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"clip shape (T={t}, H={h}, W={w}) is not divisible by tubelet={tubelet}, patch={patch}")
    return x.reshape(-1, t, h, w, c), lead, as_numpy


def _segment_sums(x: Tensor, tubelet: int) -> tuple[Tensor, float]:
    """Tubelet sums (B, N_t, H, W, C) of clips (B, T, H, W, C) and the factor that turns them into
    means in [0, 1]: exact integers (int16 while they fit) for uint8 frames, floats otherwise."""
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // tubelet, tubelet, h, w, c)
    if x.dtype == torch.uint8:
        return x.sum(dim=2, dtype=torch.int16 if 255 * tubelet < 2**15 else torch.int32), 1.0 / (255.0 * tubelet)
    return x.float().sum(dim=2), 1.0 / tubelet


def _pool(diff: Tensor, patch: int) -> Tensor:
    """Sums of absolute differences (..., H, W, C) over each patch's pixels and channels -> float (..., N_h, N_w)."""
    *lead, h, w, c = diff.shape
    acc = torch.float32 if diff.is_floating_point() else torch.int32
    return diff.reshape(*lead, h // patch, patch, w // patch, patch * c).sum(dim=(-3, -1), dtype=acc).float()


def _normalise(change: Tensor) -> Tensor:
    """Steps 4 and 5: (B, N_t - 1, N_h, N_w) -> min-max per clip, segment 0 of ones -> (B, N_t, N_h, N_w)."""
    flat = change.reshape(change.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    flat = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(flat))
    return torch.cat([torch.ones_like(change[:, :1]), flat.reshape(change.shape)], dim=1)


def _diff_change(sums: Tensor, unit: float, patch: int) -> Tensor:
    """Steps 2 and 3 of the paper, from tubelet sums (B, N_t, H, W, C) (times ``unit``: means in [0, 1])."""
    return _pool((sums[:, 1:] - sums[:, :-1]).abs_(), patch) * (unit / (patch * patch * sums.shape[-1]))


def _diff(x: Tensor, tubelet: int, patch: int, cfg: EnergyConfig) -> tuple[Tensor, list[str]]:
    return _diff_change(*_segment_sums(x, tubelet), patch), [""] * x.shape[0]


ENERGY_VARIANTS.register("diff", EnergyVariant(_diff))


def _estimate_pool(side: int, patch: int, estimate_size: int) -> int:
    """Block size f for motion estimation: the largest divisor of ``patch`` leaving ``side / f >= estimate_size``."""
    return max([f for f in range(1, patch + 1) if patch % f == 0 and side // f >= estimate_size], default=1)


def camera_motion_of(frames: Frames, tubelet: int, patch: int, cfg: EnergyConfig, zoom: bool = True) -> ClipMotion:
    """The camera motion the compensated variants estimate between adjacent tubelets of one clip
    (``zoom``: as ``translate_zoom``, else as ``translate``): frames (T, H, W, C) -> a
    :class:`~lmft_core.camera_motion.ClipMotion` of N_t - 1 rows (s, t_y, t_x) (translations in clip
    pixels; (1, 0, 0) where none is accepted)."""
    if frames.ndim != 4:
        raise ValueError(f"camera_motion_of takes one clip (T, H, W, C), got shape {tuple(frames.shape)}")
    x, _, _ = _clips(frames, tubelet, patch)
    return _camera_motion(x[0], tubelet, patch, cfg, zoom)


def _camera_motion(frames: Tensor, tubelet: int, patch: int, cfg: EnergyConfig, zoom: bool) -> ClipMotion:
    """:func:`camera_motion_of` of frames (T, H, W, C): :func:`lmft_core.camera_motion.estimate_motion`
    on grayscale tubelet means averaged over f x f pixel blocks (:func:`_estimate_pool`)."""
    sums, unit = _segment_sums(frames[None], tubelet)
    return _motion_of_sums(sums[0], unit, patch, cfg, zoom)


def _motion_of_sums(sums: Tensor, unit: float, patch: int, cfg: EnergyConfig, zoom: bool) -> ClipMotion:
    """:func:`_camera_motion` from tubelet sums (N_t, H, W, C) (times ``unit``: means in [0, 1])."""
    n_t, h, w, c = sums.shape
    f = _estimate_pool(min(h, w), patch, cfg.estimate_size)
    gray = sums.reshape(n_t, h // f, f, w // f, f * c).sum(-1, dtype=None if sums.is_floating_point() else torch.int32)
    gray = gray.sum(2).float() * (unit / (f * f * c))  # (N_t, H / f, W / f) means in [0, 1]
    found = estimate_motion(gray, zoom, cfg.max_shift, cfg.max_zoom, cfg.min_gain)
    return dataclasses.replace(found, motion=found.motion * found.motion.new_tensor([1.0, f, f]))


def _compensated(x: Tensor, tubelet: int, patch: int, cfg: EnergyConfig, zoom: bool) -> tuple[Tensor, list[str]]:
    """Steps 2 and 3 after compensating the camera's motion (variants ``translate``, ``translate_zoom``)."""
    sums, unit = _segment_sums(x, tubelet)
    change = _diff_change(sums, unit, patch)  # pairs without camera motion, and unseen tokens, keep it
    notes = []
    for k in range(x.shape[0]):
        found = _motion_of_sums(sums[k], unit, patch, cfg, zoom)
        change[k] = compensate(sums[k], unit, patch, found.motion, change[k], cfg.min_gain)
        notes.append(found.note)
    return change, notes


def compensate(sums: Tensor, unit: float, patch: int, motion: Tensor, change: Tensor, min_gain: float = 0.0) -> Tensor:
    """Steps 2 and 3 of one clip given the camera's motion: tubelet sums (N_t, H, W, C) (times ``unit``:
    means in [0, 1]), ``motion`` (N_t - 1, 3) rows (s, t_y, t_x) in clip pixels, and ``change``
    (N_t - 1, N_h, N_w), diff's change, which pairs without motion, pairs whose median token change
    compensation does not lower by at least the fraction ``min_gain``, and tokens that segment t-1
    did not see keep. Returns the change (N_t - 1, N_h, N_w) (``change`` updated in place).

    The median token change is a background token's (an actor covers few tokens) and, averaged over
    a patch, nearly free of noise: on a scene without texture, where a motion fitted to the actor
    alone lowers the median pixel residual, it does not drop."""
    n_t, h, w, c = sums.shape
    moving = torch.nonzero((motion != no_motion(1, sums.device)).any(dim=1)).flatten()
    if len(moving) == 0:
        return change
    s, ty, tx = motion[moving, :, None].unbind(1)  # (P, 1) each
    rows, seen_y = source_index(h, s, ty, sums.device)  # (P, H)
    cols, seen_x = source_index(w, s, tx, sums.device)  # (P, W)
    pooled = []
    for k, i in enumerate(moving.tolist()):
        diff = (sums[i + 1] - sums[i].index_select(0, rows[k]).index_select(1, cols[k])).abs_()
        for axis, seen in ((0, seen_y[k]), (1, seen_x[k])):  # pixels that P̄_t did not see count 0: runs at the edges
            inside = torch.nonzero(seen).flatten()
            first, last = (int(inside[0]), int(inside[-1]) + 1) if len(inside) else (0, 0)
            diff.narrow(axis, 0, first).zero_()
            diff.narrow(axis, last, diff.shape[axis] - last).zero_()
        pooled.append(_pool(diff, patch))
    seen = seen_y.reshape(-1, h // patch, patch).sum(2)[:, :, None] * seen_x.reshape(-1, w // patch, patch).sum(2)[:, None, :]
    compensated = torch.where(seen > 0, torch.stack(pooled) * (unit / c) / seen.clamp(min=1), change[moving])
    # kept where it removed change from most tokens, as it should
    better = compensated.flatten(1).median(1).values < (1 - min_gain) * change[moving].flatten(1).median(1).values
    change[moving[better]] = compensated[better]
    return change


_COMPENSATION = ("estimate_size", "max_shift", "min_gain")
ENERGY_VARIANTS.register("translate", EnergyVariant(partial(_compensated, zoom=False), _COMPENSATION))
ENERGY_VARIANTS.register("translate_zoom", EnergyVariant(partial(_compensated, zoom=True), (*_COMPENSATION, "max_zoom")))
