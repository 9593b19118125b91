"""Global camera motion between consecutive images: a zoom about the image centre and a translation.

**Model.** Image ``b`` was taken after image ``a`` by a camera that moved:
``b(p) ≈ a(c + s * (p - c) + t)`` for pixel centres ``p``, the image centre ``c``, a zoom factor ``s``
(``s < 1``: the camera zoomed in) and a translation ``t = (t_y, t_x)`` in pixels. A motion is the row
``(s, t_y, t_x)``; no motion is ``(1, 0, 0)``. With ``zoom=False`` the model is a translation (``s = 1``).

**Estimation** (:func:`estimate_motion`; every consecutive pair of a clip at once, on small
grayscale images, e.g. tubelet means pooled to about 48 px; blurred first with sigma of about 1 px;
residuals ``|b(p) - a(source of p)|`` compare each pixel with the nearest pixel of ``a`` (as the
compensated energy does; interpolating would average noise away and favour any fractional motion) at
every other pixel of the image minus a border of 1/8):

1. Coarse candidates, on the images averaged 2 x 2 (a fine periodic texture averages out there): no
   motion and the 3 highest peaks of the phase correlation, each also with one of its components set
   to 0 (a scene that varies along one direction only, e.g. a vertical gradient, cannot show motion
   along the other).
2. Selection: the lowest median residual; among the candidates within 5% of it (a periodic scene's
   equal peaks), those within 5% of the lowest mean residual (what the median leaves out: clutter, the
   border a shift reveals), and among those the smallest shift (what the scene cannot show stays at
   rest). The median ignores an actor that covers less than half the image. Then the same choice
   among the 3 x 3 full-resolution shifts around the coarse one.
3. Refinement: 2 Gauss-Newton steps on the residual (bilinear sampling), weighted by a Cauchy
   function with a median-based scale (a moving actor barely counts), with a weak pull toward no
   motion.
4. Acceptance: the motion is kept only when it lowers the median residual by at least ``min_gain``
   and stays within ``max_shift`` (fraction of the image side) and ``max_zoom`` (``|log s|``).
5. The clip's consensus (a camera moves smoothly): the median of the accepted motions, refined on
   each pair that was refused or lies more than :data:`CONSENSUS_PX` from it, replaces that pair's
   motion when its median residual is within 5% of it (a periodic scene's equal peak, chosen like its
   neighbours) or the pair was refused; the acceptance test applies again.
6. Neighbours: a pair still refused takes the mean of the nearest accepted motions before and after it
   where that passes the acceptance test; otherwise it gets no motion.

Images too small (:data:`MIN_SIZE`), constant over the clip (a still image, a single-frame video),
uniform or not finite give no motion, with a note saying why (:class:`ClipMotion`).

Limits: one global motion per pair (no parallax, no rotation); an actor that covers most of the
image, or that outweighs a textureless scene, can be taken for the camera; a periodic scene whose
every pair moves past half its period the same way, with too little clutter to tell, is taken to
move the other way (on the demo's tilted checkerboards under a fast pan).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_PEAKS = 3
NEAR_BEST = 0.05  # candidates within 5% of the best median residual count as ties
GN_STEPS = 2
PRIOR = 1e-3  # pull toward no motion, relative to the curvature of each parameter
STRIDE = 2  # residuals and Gauss-Newton equations at every other pixel (4x cheaper, as accurate here)


def no_motion(n: int, device: torch.device | None = None) -> Tensor:
    """(n, 3) rows (s, t_y, t_x) = (1, 0, 0)."""
    return torch.tensor([1.0, 0.0, 0.0], device=device).repeat(n, 1)


def sample(images: Tensor, motion: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """``images`` (P, C, h, w) seen through ``motion`` (P, 3) at the pixels ``ys`` x ``xs`` (integer
    indices): ``out(p) = images(c + s (p - c) + t)``, bilinear, the border pixel outside.
    Returns (P, C, len(ys), len(xs))."""
    p, _, h, w = images.shape
    s, ty, tx = motion[:, :, None].unbind(1)
    gx = s * _normalised(xs, w) + tx * (2.0 / w)  # grid_sample's coordinates: -1 and 1 are the image edges
    gy = s * _normalised(ys, h) + ty * (2.0 / h)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="border")


def _normalised(index: Tensor, n: int) -> Tensor:
    """Centres of pixels ``index`` of an axis of n pixels in grid_sample's coordinates."""
    return (index + 0.5) * (2.0 / n) - 1.0


def _grid(n: int, device: torch.device, margin: int = 0) -> Tensor:
    """Every other pixel of an axis of n pixels, leaving out ``margin`` pixels at each end."""
    return torch.arange(margin, n - margin, STRIDE, device=device, dtype=torch.float32)


def _source(index: Tensor, n: int, s: Tensor | float, t: Tensor | float) -> Tensor:
    """Where pixel ``index`` of an axis of n pixels of ``b`` lies in ``a`` (pixel index coordinates)
    under the zoom ``s`` and translation ``t``: c + s (p - c) + t for the pixel centre p = index + 0.5."""
    return n / 2 + s * (index + 0.5 - n / 2) + t - 0.5


def _inside(motion: Tensor, ys: Tensor, xs: Tensor, h: int, w: int) -> Tensor:
    """(P, len(ys), len(xs)) float: 1 where the pixel's source under ``motion`` (P, 3) lies inside the image."""
    s, ty, tx = motion[:, :, None].unbind(1)
    y, x = _source(ys, h, s, ty), _source(xs, w, s, tx)
    return (((y >= 0) & (y <= h - 1))[:, :, None] & ((x >= 0) & (x <= w - 1))[:, None, :]).float()


def _residual(a: Tensor, b: Tensor, motions: Tensor) -> Tensor:
    """|b(p) - a(source of p)| for images (P, h, w) and K motions (P, K, 3) per pair, each pixel compared
    with the nearest pixel of ``a`` (as the compensated energy compares them; the border pixel outside),
    at :func:`_cost_pixels`: (P, K, n). Nearest pixels, not interpolation: interpolating ``a`` would
    average its noise away and lower the residual of any fractional motion, even on a static scene."""
    p, h, w = a.shape
    k = motions.shape[1]
    ys, xs = _cost_pixels(h, w, a.device)
    s, ty, tx = motions[..., :, None].unbind(2)  # (P, K, 1) each
    rows = _source(ys, h, s, ty).round().clamp(0, h - 1).long()  # (P, K, ny)
    cols = _source(xs, w, s, tx).round().clamp(0, w - 1).long()  # (P, K, nx)
    index = (rows[..., :, None] * w + cols[..., None, :]).reshape(p, k, -1)
    seen = torch.gather(a.reshape(p, 1, -1).expand(-1, k, -1), 2, index)
    return (_take(b, ys, xs).reshape(p, 1, -1) - seen).abs()


def _cost_pixels(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Where residuals are compared: every other pixel, leaving out a border of 1/8 of the image."""
    return _grid(h, device, max(1, h // 8)), _grid(w, device, max(1, w // 8))


def _take(images: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
    """images (P, h, w) at the integer pixels ys x xs: (P, len(ys), len(xs))."""
    return images[:, ys.long()][:, :, xs.long()]


def _phase_peaks(images: Tensor, k: int) -> Tensor:
    """Integer shifts d (N-1, k, 2) (d_y, d_x) with ``images[i+1](p) ≈ images[i](p - d)``: the k
    highest peaks of the phase correlation of each consecutive pair (Hann-windowed)."""
    n, h, w = images.shape
    window = torch.outer(torch.hann_window(h, periodic=False, device=images.device),
                         torch.hann_window(w, periodic=False, device=images.device))
    spec = torch.fft.rfft2((images - images.mean((1, 2), keepdim=True)) * window)
    cross = spec[1:] * spec[:-1].conj()
    corr = torch.fft.irfft2(cross / (cross.abs() + 1e-12), s=(h, w))
    top = torch.topk(corr.reshape(n - 1, -1), k, dim=1).indices
    dy, dx = top // w, top % w
    return torch.stack([torch.where(dy > h // 2, dy - h, dy), torch.where(dx > w // 2, dx - w, dx)], -1).float()


def _refine(a: Tensor, b: Tensor, motion: Tensor, zoom: bool) -> Tensor:
    """Robust Gauss-Newton steps from ``motion`` (P, 3) on images ``a``, ``b`` (P, h, w)."""
    p, h, w = a.shape
    gy, gx = torch.gradient(a, dim=(1, 2))
    stack = torch.stack([a, gx, gy], 1)
    ys, xs = _grid(h, a.device), _grid(w, a.device)
    b = _take(b, ys, xs)
    y, x = (ys + 0.5 - h / 2)[:, None], (xs + 0.5 - w / 2)[None, :]
    free = [0, 1, 2] if zoom else [1, 2]
    rest = no_motion(1, a.device)
    scale = None
    for _ in range(GN_STEPS):
        warped, sx, sy = sample(stack, motion, ys, xs).unbind(1)
        inside = _inside(motion, ys, xs, h, w)
        r = (b - warped) * inside
        if scale is None:  # robust scale of the starting residual: a moving actor lies far outside it
            scale = 1.4826 * r.abs().reshape(p, -1).median(1).values[:, None, None] + 1e-6
        weight = (inside / (1.0 + (r / scale) ** 2)).reshape(p, -1, 1)
        cols = ([sx * x + sy * y] if zoom else []) + [sy, sx]  # d warped / d (s), t_y, t_x
        jac = torch.stack(cols, -1).reshape(p, -1, len(cols))
        hess = jac.transpose(1, 2) @ (jac * weight)
        grad = jac.transpose(1, 2) @ (r.reshape(p, -1, 1) * weight)
        diag = hess.diagonal(dim1=1, dim2=2)
        shift_curv = diag[:, -2:].mean(1, keepdim=True).expand(p, 2)  # one scale for both shift axes
        lam = PRIOR * (torch.cat([diag[:, :1], shift_curv], 1) if zoom else shift_curv) + 1e-12
        grad = grad - (lam * (motion - rest)[:, free])[..., None]
        step = torch.linalg.solve(hess + torch.diag_embed(lam), grad)[..., 0]
        motion = motion.clone()
        motion[:, free] += step
    return motion


def blur(images: Tensor) -> Tensor:
    """Binomial blur [1, 4, 6, 4, 1] / 16 along both axes (about a Gaussian of sigma 1 px; edges
    replicated) of (N, h, w) images."""
    x = F.pad(images[:, None], (2, 2, 2, 2), mode="replicate")[:, 0]
    for _ in range(2):  # [1, 2, 1] twice per axis
        x = x[:, :, :-2] + 2 * x[:, :, 1:-1] + x[:, :, 2:]
        x = x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]
    return x * (1.0 / 256)


def _translations(shifts: Tensor) -> Tensor:
    """Integer shifts d (..., 2) (``b(p) = a(p - d)``) as motions (..., 3): (1, -d_y, -d_x)."""
    return torch.cat([torch.ones_like(shifts[..., :1]), -shifts], -1)


def _select(a: Tensor, b: Tensor, shifts: Tensor, limit: Tensor) -> Tensor:
    """Per pair of images (P, h, w), the candidate shift (of ``shifts`` (P, K, 2)) with the lowest median
    residual; among those within :data:`NEAR_BEST` of it (a periodic scene's equal peaks), those
    within :data:`NEAR_BEST` of the lowest mean residual (the rest of the scene: clutter, the border
    a shift reveals), and among those the smallest (what the scene cannot show stays at rest).
    Shifts beyond ``limit`` (2,) are out. Returns (P, 2)."""
    residual = _residual(a, b, _translations(shifts))
    near_best = torch.ones_like(shifts[..., 0], dtype=torch.bool)
    for cost in (residual.median(2).values, residual.mean(2)):
        cost = cost.masked_fill(~(shifts.abs() <= limit).all(-1) | ~near_best, float("inf"))
        near_best = cost <= (1 + NEAR_BEST) * cost.min(1, keepdim=True).values
    size = shifts.abs().sum(-1).masked_fill(~near_best, float("inf"))
    return shifts[torch.arange(len(shifts)), size.argmin(1)]


def _candidates(images: Tensor) -> Tensor:
    """Candidate shifts (N-1, K, 2) for the consecutive pairs of images (N, h, w): none, and the
    :data:`NUM_PEAKS` highest phase-correlation peaks, each also with one component set to 0."""
    peaks = _phase_peaks(images, NUM_PEAKS)
    only_y, only_x = peaks * peaks.new_tensor([1.0, 0.0]), peaks * peaks.new_tensor([0.0, 1.0])
    return torch.cat([torch.zeros_like(peaks[:, :1]), peaks, only_y, only_x], 1)


def _accept(a: Tensor, b: Tensor, motion: Tensor, limit: Tensor, max_zoom: float, min_gain: float) -> Tensor:
    """(P,) bool: the motions (P, 3) lower the median residual of images (P, h, w) by ``min_gain``
    and stay within the limits."""
    rest = no_motion(len(a), a.device)
    before, after = _residual(a, b, torch.stack([rest, motion], 1)).median(2).values.unbind(1)
    return (after <= (1 - min_gain) * before) & (motion[:, 1:].abs() <= limit).all(1) & (motion[:, 0].log().abs() <= max_zoom)


@dataclass(frozen=True)
class ClipMotion:
    """The camera's motion between consecutive images (:func:`estimate_motion`).

    ``motion`` (N-1, 3) rows (s, t_y, t_x), (1, 0, 0) where refused; ``status`` (N-1,) int64 per pair:
    :data:`ESTIMATED`, :data:`FROM_NEIGHBOURS` or :data:`REFUSED`; ``note``: why every pair was
    refused without trying (images too small, constant, uniform, not finite), empty otherwise."""

    motion: Tensor
    status: Tensor
    note: str = ""


ESTIMATED, FROM_NEIGHBOURS, REFUSED = 0, 1, 2
_NEIGHBOURHOOD = torch.tensor([[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], dtype=torch.float32)
CONSENSUS_PX = 1.5  # a pair further than this from the clip's median motion is refined from it too (shake stays within)
MIN_SIZE = 32  # smallest image side estimated on (the coarse level's residual then has 6 x 6 pixels)


def estimate_motion(images: Tensor, zoom: bool = True, max_shift: float = 0.25, max_zoom: float = 0.2,
                    min_gain: float = 0.2) -> ClipMotion:
    """Camera motion between consecutive images of one clip (module docstring).

    Args:
        images: (N, h, w) float grayscale, N >= 2 (e.g. a clip's tubelet means).
        zoom: estimate a zoom as well as a translation.
        max_shift: largest accepted translation, as a fraction of the image side (per axis).
        max_zoom: largest accepted ``|log s|``.
        min_gain: the motion must lower the median absolute residual by at least this fraction.

    Returns:
        :class:`ClipMotion` of N-1 rows (s, t_y, t_x) in pixels of ``images``; row i takes
        ``images[i]`` to ``images[i+1]``. Every pair is refused, with a note, when the images are
        smaller than :data:`MIN_SIZE` on a side, all equal, each uniform, or not finite.
    """
    n, h, w = images.shape
    refused = ClipMotion(no_motion(n - 1, images.device), torch.full((n - 1,), REFUSED, dtype=torch.long))
    if min(h, w) < MIN_SIZE:
        return dataclasses.replace(refused, note=f"images of {h}x{w} px to estimate camera motion on, below {MIN_SIZE}")
    if not images.isfinite().all():
        return dataclasses.replace(refused, note="images with non-finite values")
    if (images == images[:1]).all():
        return dataclasses.replace(refused, note="constant images: nothing moves (a still image or a single-frame video)")
    if (images.amax((1, 2)) == images.amin((1, 2))).all():
        return dataclasses.replace(refused, note="uniform images: no texture to see motion in")
    fine = blur(images.float())
    a, b = fine[:-1], fine[1:]
    limit = max_shift * fine.new_tensor([h, w])
    coarse = F.avg_pool2d(fine[:, None], 2)[:, 0]  # fine periodic texture averages out here
    search = fine.new_tensor([h, w]) / 2  # any shift is searched; the acceptance applies the limits
    guess = 2 * _select(coarse[:-1], coarse[1:], _candidates(coarse), search / 2)
    start = _translations(_select(a, b, guess[:, None] + _NEIGHBOURHOOD.to(guess), search))  # the nearest pixel
    motion = _refine(a, b, start, zoom)
    ok = _accept(a, b, motion, limit, max_zoom, min_gain)
    if ok.any():  # the clip's consensus, refined, for pairs it fits as well or that were refused
        centre = motion[ok].median(0).values
        other = ~ok | ((motion[:, 1:] - centre[1:]).abs() > CONSENSUS_PX).any(1)
        if other.any():
            alt = _refine(a[other], b[other], centre.expand(int(other.sum()), 3).contiguous(), zoom)
            cost = _residual(a[other], b[other], torch.stack([motion[other], alt], 1)).median(2).values
            take = ~ok[other] | (cost[:, 1] <= (1 + NEAR_BEST) * cost[:, 0])
            motion[other] = torch.where(take[:, None], alt, motion[other])
            ok[other] = _accept(a[other], b[other], motion[other], limit, max_zoom, min_gain)
    status = torch.where(ok, ESTIMATED, REFUSED)
    if ok.any() and not ok.all():  # a refused pair takes its neighbours' motion where that fits
        fill = _from_neighbours(motion, ok)
        filled = ~ok & _accept(a, b, fill, limit, max_zoom, min_gain)
        motion, status = torch.where(filled[:, None], fill, motion), torch.where(filled, FROM_NEIGHBOURS, status)
    return ClipMotion(torch.where((status == REFUSED)[:, None], no_motion(n - 1, images.device), motion), status)


def _from_neighbours(motion: Tensor, ok: Tensor) -> Tensor:
    """Per pair, the mean of the nearest accepted motion before and after it (or the one there is):
    motion (P, 3), ok (P,) bool with at least one true -> (P, 3)."""
    index = torch.arange(len(ok), device=ok.device)
    good = index[ok]
    before = torch.searchsorted(good, index, right=True) - 1  # last accepted at or before i
    after = torch.searchsorted(good, index)  # first accepted at or after i
    lo, hi = good[before.clamp(min=0)], good[after.clamp(max=len(good) - 1)]
    lo, hi = torch.where(before >= 0, lo, hi), torch.where(after < len(good), hi, lo)
    return (motion[lo] + motion[hi]) / 2


def source_index(n: int, s: Tensor | float, t: Tensor | float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Along an axis of n pixels, the nearest pixel of ``a`` that each pixel of ``b`` sees under the
    motion (zoom ``s``, translation ``t`` px; floats, or (P, 1) tensors for P motions at once):
    (int64 indices (n,) or (P, n), clamped; bool, same shape: inside ``a``)."""
    u = _source(torch.arange(n, device=device), n, s, t).round()
    return u.clamp(0, n - 1).long(), (u >= 0) & (u <= n - 1)
