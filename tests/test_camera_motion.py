"""Global camera motion: known zooms and translations are recovered from images rendered in closed form,
a moving actor does not mislead the estimate, and a static or unexplained pair gets no motion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmft_core.camera_motion import estimate_motion, no_motion, source_index

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
    got = estimate_motion(pair(motion), zoom=True)[0].numpy()
    assert abs(got[0] - motion[0]) < 0.004 and np.abs(got[1:] - motion[1:]).max() < 0.15, (got, motion)


def test_translation_model_recovers_a_pan():
    got = estimate_motion(pair((1.0, 4.3, -6.7)), zoom=False)[0].numpy()
    assert got[0] == 1.0 and np.abs(got[1:] - [4.3, -6.7]).max() < 0.15, got


def test_each_consecutive_pair_gets_its_own_motion():
    moved = pair((1.0, 4.3, -6.7))
    frames = torch.cat([moved, pair((1.0, 4.3, -6.7), seed=2)[1:]])  # a, b, b again (other noise)
    got = estimate_motion(frames)
    assert got.shape == (2, 3) and torch.equal(got[1], no_motion(1)[0])
    np.testing.assert_allclose(got[0].numpy(), [1.0, 4.3, -6.7], atol=0.15)


def test_static_pair_gets_exactly_no_motion():
    assert torch.equal(estimate_motion(pair((1.0, 0.0, 0.0), noise=0.05)), no_motion(1))


def test_motion_beyond_the_limits_or_without_gain_is_refused():
    assert torch.equal(estimate_motion(pair((1.0, 4.3, -6.7)), max_shift=0.05), no_motion(1))  # 6.7 px > 3.2 px
    assert torch.equal(estimate_motion(pair((1.15, 0.0, 0.0)), max_zoom=0.05), no_motion(1))
    rng = np.random.default_rng(3)
    unrelated = torch.tensor(rng.normal(0, 1, (2, SIZE, SIZE)), dtype=torch.float32)
    assert torch.equal(estimate_motion(unrelated), no_motion(1))


def test_source_index_is_the_nearest_pixel_under_the_motion():
    idx, inside = source_index(8, 1.0, 2.4)
    assert idx.tolist() == [2, 3, 4, 5, 6, 7, 7, 7] and inside.tolist() == [True] * 6 + [False] * 2
    idx, inside = source_index(8, 0.5, 0.0)  # zoomed in 2x about the centre: pixel centres 2.25 .. 5.75
    assert idx.tolist() == [2, 2, 3, 3, 4, 4, 5, 5] and inside.all()
