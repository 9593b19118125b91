"""Global camera motion: known zooms and translations are recovered from images rendered in closed form,
a moving actor does not mislead the estimate, a static or unexplained pair gets no motion, a periodic
scene's shift is found, and the fast steps agree with naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmft_core.camera_motion import (
    ESTIMATED,
    REFUSED,
    _candidates,
    _from_neighbours,
    _residual,
    _select,
    blur,
    estimate_motion,
    no_motion,
    source_index,
)

SIZE = 64


def scene(y: np.ndarray, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A random scene in closed form at (fractional) pixel coordinates: 300 overlapping discs of
    random grey levels, anti-aliased over one pixel (edges everywhere, as in real footage)."""
    rng = np.random.default_rng(seed)
    out = np.zeros(np.broadcast(y, x).shape)
    for cy, cx, r, level in zip(*rng.uniform([-20, -20, 2, -1], [SIZE + 20, SIZE + 20, 8, 1], (300, 4)).T):
        cover = np.clip(r - np.sqrt((y - cy) ** 2 + (x - cx) ** 2) + 0.5, 0, 1)
        out = out * (1 - cover) + level * cover
    return out


def view(s: float, ty: float, tx: float, actor_at: tuple[float, float] | None = None) -> np.ndarray:
    """The scene at c + s (p - c) + t for pixel centres p (the model of camera_motion), with an
    optional bright disc of radius 7 px (an actor, ~4% of the image) at ``actor_at`` in the image."""
    p = np.arange(SIZE) + 0.5
    y = SIZE / 2 + s * (p[:, None] - SIZE / 2) + ty - 0.5
    x = SIZE / 2 + s * (p[None, :] - SIZE / 2) + tx - 0.5
    img = scene(y, x)
    if actor_at is not None:
        img = np.where((p[:, None] - actor_at[0]) ** 2 + (p[None, :] - actor_at[1]) ** 2 < 49, 1.0, img)
    return img


def pair(motion: tuple[float, float, float], actor: bool = True, noise: float = 0.01, seed: int = 1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    a = view(1.0, 0.0, 0.0, (20.0, 22.0) if actor else None)
    b = view(*motion, (30.0, 40.0) if actor else None)  # the actor moved on its own
    return torch.tensor(np.stack([a, b]) + rng.normal(0, noise, (2, SIZE, SIZE)), dtype=torch.float32)


@pytest.mark.parametrize("motion", [(1.0, 4.3, -6.7), (1.04, -2.2, 3.1), (0.97, 0.0, 0.0), (1.0, -9.6, 0.4)])
def test_recovers_zoom_and_translation_despite_a_moving_actor(motion):
    got = estimate_motion(pair(motion), zoom=True).motion[0].numpy()
    assert abs(got[0] - motion[0]) < 0.004 and np.abs(got[1:] - motion[1:]).max() < 0.15, (got, motion)


def test_translation_model_recovers_a_pan():
    got = estimate_motion(pair((1.0, 4.3, -6.7)), zoom=False).motion[0].numpy()
    assert got[0] == 1.0 and np.abs(got[1:] - [4.3, -6.7]).max() < 0.15, got


def test_each_consecutive_pair_gets_its_own_motion():
    moved = pair((1.0, 4.3, -6.7))
    frames = torch.cat([moved, pair((1.0, 4.3, -6.7), seed=2)[1:]])  # a, b, b again (other noise)
    found = estimate_motion(frames)
    got = found.motion
    assert got.shape == (2, 3) and torch.equal(got[1], no_motion(1)[0]) and found.status.tolist() == [ESTIMATED, REFUSED]
    np.testing.assert_allclose(got[0].numpy(), [1.0, 4.3, -6.7], atol=0.15)


def test_static_pair_gets_exactly_no_motion():
    assert torch.equal(estimate_motion(pair((1.0, 0.0, 0.0), noise=0.05)).motion, no_motion(1))


def test_motion_beyond_the_limits_or_without_gain_is_refused():
    assert torch.equal(estimate_motion(pair((1.0, 4.3, -6.7)), max_shift=0.05).motion, no_motion(1))  # 6.7 px > 3.2 px
    assert torch.equal(estimate_motion(pair((1.15, 0.0, 0.0)), max_zoom=0.05).motion, no_motion(1))
    rng = np.random.default_rng(3)
    unrelated = torch.tensor(rng.normal(0, 1, (2, SIZE, SIZE)), dtype=torch.float32)
    assert torch.equal(estimate_motion(unrelated).motion, no_motion(1))


def test_source_index_is_the_nearest_pixel_under_the_motion():
    idx, inside = source_index(8, 1.0, 2.4)
    assert idx.tolist() == [2, 3, 4, 5, 6, 7, 7, 7] and inside.tolist() == [True] * 6 + [False] * 2
    idx, inside = source_index(8, 0.5, 0.0)  # zoomed in 2x about the centre: pixel centres 2.25 .. 5.75
    assert idx.tolist() == [2, 2, 3, 3, 4, 4, 5, 5] and inside.all()


def test_nearest_pixel_residual_matches_a_pixel_loop():
    rng = np.random.default_rng(4)
    a, b = torch.tensor(rng.uniform(0, 1, (2, 2, 20, 24)), dtype=torch.float32)
    motions = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 2.6, -3.4]], [[1.1, -1.2, 0.7], [0.93, 5.5, 9.0]]])
    got = _residual(a, b, motions).numpy()
    ys, xs = range(2, 20 - 2, 2), range(3, 24 - 3, 2)  # every other pixel, a border of 1/8 (at least 1)
    for p in range(2):
        for k in range(2):
            s, ty, tx = motions[p, k].tolist()
            expected = []
            for y in ys:
                for x in xs:
                    sy = min(max(round(10 + s * (y + 0.5 - 10) + ty - 0.5), 0), 19)
                    sx = min(max(round(12 + s * (x + 0.5 - 12) + tx - 0.5), 0), 23)
                    expected.append(abs(float(b[p, y, x]) - float(a[p, sy, sx])))
            np.testing.assert_allclose(got[p, k], expected, atol=1e-6)


def test_phase_correlation_candidates_find_what_a_naive_integer_search_finds():
    """The selection among phase-correlation peaks matches a brute-force search over every integer shift
    within the limit (the lowest median residual) on small images (32 x 32) of a non-periodic scene."""
    for shift in [(3, -5), (-7, 2), (0, 6), (4, 4)]:
        full = np.stack([view(1.0, 0.0, 0.0), view(1.0, -2.0 * shift[0], -2.0 * shift[1])])
        a, b = blur(torch.tensor(full[:, ::2, ::2].copy(), dtype=torch.float32))
        an, bn, limit = a.numpy(), b.numpy(), 8
        best, best_cost = None, np.inf
        for dy in range(-limit, limit + 1):
            for dx in range(-limit, limit + 1):
                cost = np.median([abs(bn[y, x] - an[min(max(y - dy, 0), 31), min(max(x - dx, 0), 31)])
                                  for y in range(4, 28, 2) for x in range(4, 28, 2)])
                if cost < best_cost:
                    best, best_cost = (dy, dx), cost
        got = _select(a[None], b[None], _candidates(torch.stack([a, b])), torch.tensor([limit, limit]))[0]
        assert tuple(got.long().tolist()) == best == shift, (got, best, shift)


def stripes_view(tx: float, period: float = 8.0, size: int = 64) -> np.ndarray:
    """Vertical stripes of ``period`` px (smooth edges) with three grey squares, seen by a camera shifted
    ``tx`` px along x: a periodic scene with a little clutter, as fences and tiles are."""
    x = np.arange(size)[None, :] + 0.5 + tx
    y = np.arange(size)[:, None] + 0.5
    img = 0.5 + 0.4 * np.tanh(3 * np.sin(2 * np.pi * x / period)) + 0 * y
    for cy, cx, side, level in [(12, 10, 9, 0.1), (40, 30, 11, 0.95), (22, 50, 7, 0.3)]:
        cover = np.clip(side / 2 - np.maximum(np.abs(y - cy), np.abs(x - cx)) + 0.5, 0, 1)
        img = img * (1 - cover) + level * cover
    return img


def test_periodic_scene_with_a_known_pan():
    """A camera panning 3 px per image over 8 px stripes, one step of 5 px: past half the period that
    step matches a shift of -3 px as well as 5 px on the stripes (the smallest shift would be -3); the
    clip's consensus picks 5. Every pair is within 0.2 px of the truth."""
    steps = [3.0, 3.0, 5.0, 3.0, 3.0, 3.0]
    positions = np.concatenate([[0.0], np.cumsum(steps)])
    rng = np.random.default_rng(5)
    images = torch.tensor(np.stack([stripes_view(p) for p in positions]) + rng.normal(0, 0.01, (7, 64, 64)), dtype=torch.float32)
    found = estimate_motion(images, zoom=False)
    assert (found.status == ESTIMATED).all(), found
    np.testing.assert_allclose(found.motion[:, 2].numpy(), steps, atol=0.2)
    np.testing.assert_allclose(found.motion[:, 1].numpy(), 0.0, atol=0.2)


def test_neighbours_motion_is_the_mean_of_the_nearest_accepted_pairs():
    motion = torch.tensor([[1.0, k, -k] for k in range(7)])
    for ok in ([0, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 1, 0]):
        got = _from_neighbours(motion, torch.tensor(ok, dtype=torch.bool))
        good = [i for i in range(7) if ok[i]]
        for i in range(7):
            before = [j for j in good if j <= i]
            after = [j for j in good if j >= i]
            lo, hi = (before or after)[-1] if before else after[0], after[0] if after else before[-1]
            torch.testing.assert_close(got[i], (motion[lo] + motion[hi]) / 2)


def test_bad_images_are_refused_with_a_note():
    assert "below 32" in estimate_motion(torch.rand(3, 24, 40)).note
    constant = estimate_motion(torch.full((3, 40, 40), 0.5))
    assert "constant" in constant.note and (constant.status == REFUSED).all() and torch.equal(constant.motion, no_motion(2))
    assert "constant" in estimate_motion(torch.rand(1, 40, 40).expand(3, 40, 40)).note  # a still image
    assert "uniform" in estimate_motion(torch.arange(3.0)[:, None, None].expand(3, 40, 40)).note  # a fade
    assert "non-finite" in estimate_motion(torch.full((2, 40, 40), float("nan"))).note
    assert estimate_motion(pair((1.0, 4.3, -6.7))).note == ""
