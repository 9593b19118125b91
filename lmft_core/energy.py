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
"""

from __future__ import annotations

import numpy as np
import torch


def motion_energy(frames: np.ndarray | torch.Tensor, tubelet: int = 2, patch: int = 16) -> np.ndarray | torch.Tensor:
    """Motion energy of one clip or a batch of clips.

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
    as_numpy = isinstance(frames, np.ndarray)
    x = torch.from_numpy(frames) if as_numpy else frames
    *lead, t, h, w, c = x.shape
    if t % tubelet or h % patch or w % patch:
        raise ValueError(f"clip shape (T={t}, H={h}, W={w}) is not divisible by tubelet={tubelet}, patch={patch}")
    n_t, n_h, n_w = t // tubelet, h // patch, w // patch
    if n_t == 1:  # a single segment: nothing to compare with, the first segment is all ones
        ones = torch.ones((*lead, 1, n_h, n_w), dtype=torch.float32, device=x.device)
        return ones.numpy() if as_numpy else ones
    x = x.reshape(-1, n_t, tubelet, h, w, c)
    if x.dtype == torch.uint8:
        # Exact integer arithmetic on tubelet sums; one scale at the end (the same numbers, faster).
        sums = x.sum(dim=2, dtype=torch.int16 if 255 * tubelet < 2**15 else torch.int32)  # (B, N_t, H, W, C)
        diff = (sums[:, 1:] - sums[:, :-1]).abs_()
        scale = 1.0 / (255.0 * tubelet * patch * patch * c)
    else:
        means = x.float().mean(dim=2)
        diff = (means[:, 1:] - means[:, :-1]).abs_()
        scale = 1.0 / (patch * patch * c)
    pooled = diff.reshape(-1, n_t - 1, n_h, patch, n_w, patch * c).sum(dim=(3, 5), dtype=torch.float32 if x.dtype != torch.uint8 else torch.int32)
    e = pooled.float() * scale  # (B, N_t - 1, N_h, N_w)
    flat = e.reshape(e.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - lo
    flat = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(flat))
    e = torch.cat([torch.ones_like(e[:, :1]), flat.reshape(e.shape)], dim=1).reshape(*lead, n_t, n_h, n_w)
    return e.numpy() if as_numpy else e
