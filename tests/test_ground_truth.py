"""Actor tokens line up with the clip's token grid (against an area-overlap reference and against the
energy of real decoded demo clips), and the metrics match naive definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmft_core.config import ClipConfig
from lmft_core.demo_data import CameraMotion, DemoDataConfig
from lmft_core.energy import motion_energy
from lmft_core.ground_truth import actor_tokens, camera_motion_truth, r_precision, recall_at_keep, roc_auc, token_coverage
from lmft_core.manifest import load_manifest
from lmft_core.video import decode_clip


def overlap_matrix(n_out: int, n_in: int, offset: int, scale: float) -> np.ndarray:
    """(n_out, n_in): the fraction of output pixel i's footprint (after resizing by ``scale`` and
    cropping ``offset`` resized pixels) that input pixel k covers (a box filter)."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (offset + i) / scale, (offset + i + 1) / scale
        for k in range(math.floor(lo), min(n_in, math.ceil(hi))):
            m[i, k] = min(hi, k + 1) - max(lo, k)
    return m / m.sum(axis=1, keepdims=True)


def area_reference(mask: np.ndarray, clip: ClipConfig) -> np.ndarray:
    """Actor coverage per token from the geometry as written in docs/data.md: frame floor((i + 0.5) n / T),
    short side scaled to image_size, centre crop; each clip pixel averages the mask over its footprint."""
    n, h, w = mask.shape
    s = clip.image_size
    frames = [min(n - 1, math.floor((i + 0.5) * n / clip.num_frames)) for i in range(clip.num_frames)]
    scale = s / min(h, w)
    wy = overlap_matrix(s, h, (round(h * scale) - s) // 2, scale)
    wx = overlap_matrix(s, w, (round(w * scale) - s) // 2, scale)
    pixels = np.stack([wy @ mask[f] @ wx.T for f in frames])
    n_t, n_h, n_w = clip.grid
    return pixels.reshape(n_t, clip.tubelet, n_h, clip.patch, n_w, clip.patch).mean(axis=(1, 3, 5))


def blobs(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """bool (n, h, w): a few discs that move from frame to frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros((n, h, w), dtype=bool)
    for cy, cx, vy, vx, r in rng.uniform([0, 0, -2, -2, 3], [h, w, 2, 2, 0.2 * min(h, w)], (4, 5)):
        for t in range(n):
            out[t] |= (yy - cy - vy * t) ** 2 + (xx - cx - vx * t) ** 2 < r * r
    return out


@pytest.mark.parametrize("n,h,w,clip", [
    (30, 60, 80, ClipConfig(num_frames=8, image_size=64, tubelet=2, patch=16)),  # upscaled, crop in x
    (40, 150, 200, ClipConfig(num_frames=8, image_size=64, tubelet=2, patch=8)),  # downscaled, crop in x
    (12, 96, 72, ClipConfig(num_frames=16, image_size=48, tubelet=4, patch=8)),  # portrait: crop in y, frames repeat
])
def test_token_coverage_matches_an_area_overlap_reference(n, h, w, clip):
    mask = blobs(n, h, w, seed=n)
    got = token_coverage(mask, clip)
    assert got.shape == clip.grid and got.dtype == np.float32
    np.testing.assert_allclose(got, area_reference(mask, clip), atol=0.03)  # bilinear vs box filter at edges


def test_actor_tokens_line_up_with_the_energy_of_decoded_clips(tiny_demo):
    """On static-camera demo clips decoded as preprocessing decodes them, diff energy ranks the actor
    tokens first; the same masks one token or one segment off do far worse."""
    clip = ClipConfig(num_frames=16, image_size=64, tubelet=2, patch=8)
    aligned, shifted, late = [], [], []
    for r in load_manifest(tiny_demo).rows:
        energy = motion_energy(decode_clip(r.path, clip.num_frames, clip.image_size).frames, clip.tubelet, clip.patch)
        actor = actor_tokens(r.path, clip)
        aligned.append(roc_auc(energy, actor))
        shifted.append(roc_auc(energy, np.roll(actor, 2, axis=2)))
        late.append(roc_auc(energy, np.roll(actor, 2, axis=0)))
    assert np.mean(aligned) > 0.9 and np.mean(aligned) > np.mean(shifted) + 0.15 and np.mean(aligned) > np.mean(late) + 0.1


def naive_auc(energy: np.ndarray, actor: np.ndarray) -> float:
    pos, neg = energy[1:][actor[1:]], energy[1:][~actor[1:]]
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


def test_auc_and_recall_match_naive_definitions():
    rng = np.random.default_rng(0)
    for levels in (None, 4):  # continuous energies, then few levels (many ties)
        energy = rng.uniform(0, 1, (4, 5, 5))
        if levels:
            energy = np.round(energy * levels) / levels
        actor = rng.uniform(0, 1, (4, 5, 5)) < 0.3 + 0.4 * energy  # energy is informative
        energy[0], actor[0] = 1.0, True  # the first segment is left out of both
        assert roc_auc(energy, actor) == pytest.approx(naive_auc(energy, actor), abs=1e-12)
        e, a = energy[1:].ravel(), actor[1:].ravel()
        for keep in (0.25, 0.5, 0.75):
            k = round(keep * e.size)
            draws = [a[np.lexsort((rng.permutation(e.size), -e))[:k]].sum() / a.sum() for _ in range(3000)]
            if levels is None:
                assert recall_at_keep(energy, actor, keep) == draws[0]  # no ties: the top k exactly
            else:  # ties broken at random: the expectation, within 4 standard errors
                assert recall_at_keep(energy, actor, keep) == pytest.approx(np.mean(draws), abs=4 * np.std(draws) / np.sqrt(3000))


def test_metric_edge_cases():
    energy = np.random.default_rng(1).uniform(0, 1, (3, 2, 2))
    nobody = np.zeros((3, 2, 2), dtype=bool)
    assert math.isnan(recall_at_keep(energy, nobody, 0.5)) and math.isnan(roc_auc(energy, nobody))
    assert recall_at_keep(energy, ~nobody, 0.0) == 0.0 and recall_at_keep(energy, ~nobody, 1.0) == 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        roc_auc(energy, nobody[:2])


def test_r_precision_is_the_precision_of_the_top_as_many_tokens_as_actor_tokens():
    rng = np.random.default_rng(3)
    for _ in range(20):
        energy, actor = rng.uniform(0, 1, (4, 3, 5)), rng.uniform(0, 1, (4, 3, 5)) < 0.3
        e, a = energy[1:].ravel(), actor[1:].ravel()
        top = np.argsort(-e)[:a.sum()]
        assert r_precision(energy, actor) == pytest.approx(a[top].mean())
    tied = np.ones((2, 2, 2))
    actor = np.zeros((2, 2, 2), dtype=bool)
    actor[1, 0, 0] = True
    assert r_precision(tied, actor) == pytest.approx(0.25)  # one place shared by four tied tokens
    assert math.isnan(r_precision(tied, np.zeros_like(actor)))


def test_camera_motion_truth_of_a_steady_pan_and_a_zoom():
    """A pan of 20 px/s moves the scene 20 x 0.4 s between tubelets (6 video frames of 15 fps), times
    the resize factor 224 / 128; a zoom of 0.1/s scales by exp(0.1 x 0.4) per pair (either sign)."""
    clip = ClipConfig()
    pan = camera_motion_truth(DemoDataConfig(target_camera=CameraMotion(pan_px_per_s=20.0)), "target", "wave", 0, clip)
    assert pan.shape == (7, 3) and np.all(pan[:, 0] == 1.0)
    np.testing.assert_allclose(np.hypot(pan[:, 1], pan[:, 2]), 20.0 * 0.4 * 224 / 128, rtol=1e-5)
    zoom = camera_motion_truth(DemoDataConfig(target_camera=CameraMotion(zoom_per_s=0.1)), "target", "wave", 0, clip)
    np.testing.assert_allclose(np.abs(np.log(zoom[:, 0])), 0.04, rtol=1e-4)
    np.testing.assert_allclose(zoom[:, 1:], 0.0, atol=1e-6)
    assert np.all(camera_motion_truth(DemoDataConfig(), "target", "wave", 0, clip) == [1.0, 0.0, 0.0])
