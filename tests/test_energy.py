"""Motion energy against a naive per-token loop, and its defining properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmft_core.energy import motion_energy


def naive_energy(frames: np.ndarray, tubelet: int, patch: int) -> np.ndarray:
    """The definition, one token at a time, in float64."""
    x = frames.astype(np.float64) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float64)
    t, h, w, _ = x.shape
    n_t, n_h, n_w = t // tubelet, h // patch, w // patch
    means = [x[s * tubelet:(s + 1) * tubelet].mean(axis=0) for s in range(n_t)]
    e = np.zeros((n_t - 1, n_h, n_w))
    for s in range(n_t - 1):
        for i in range(n_h):
            for j in range(n_w):
                cur = means[s][i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
                nxt = means[s + 1][i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
                e[s, i, j] = np.abs(nxt - cur).mean()
    if e.size and e.max() > e.min():
        e = (e - e.min()) / (e.max() - e.min())
    else:
        e = np.zeros_like(e)
    return np.concatenate([np.ones((1, n_h, n_w)), e])


@pytest.mark.parametrize("shape,tubelet,patch", [((16, 64, 48, 3), 2, 16), ((8, 32, 32, 3), 4, 8), ((6, 24, 40, 3), 3, 8)])
def test_matches_naive_loop(shape, tubelet, patch):
    frames = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = naive_energy(frames, tubelet, patch)
    got = motion_energy(frames, tubelet, patch)
    assert got.shape == (shape[0] // tubelet, shape[1] // patch, shape[2] // patch) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # float32 input in [0, 1] (float32 rounding) and a torch tensor give the same numbers
    np.testing.assert_allclose(motion_energy(frames.astype(np.float32) / 255, tubelet, patch), expected, atol=2e-5)
    t = motion_energy(torch.from_numpy(frames), tubelet, patch)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), expected, atol=2e-6)


def test_batch_dimension_normalises_each_clip_alone():
    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, (3, 8, 32, 32, 3), dtype=np.uint8)
    clips[1] //= 4  # a dimmer clip: smaller raw energies, still normalised to [0, 1] on its own
    got = motion_energy(clips, 2, 8)
    assert got.shape == (3, 4, 4, 4)
    for b in range(3):
        np.testing.assert_allclose(got[b], naive_energy(clips[b], 2, 8), atol=2e-6)


def test_static_video_is_zero_after_the_first_segment():
    frame = np.random.default_rng(2).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    e = motion_energy(np.repeat(frame, 8, axis=0), 2, 16)
    assert e.shape == (4, 2, 3)
    assert np.all(e[0] == 1.0) and np.all(e[1:] == 0.0) and not np.isnan(e).any()


def test_first_segment_is_ones_and_range_is_unit():
    frames = np.random.default_rng(3).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    e = motion_energy(frames, 2, 16)
    assert np.all(e[0] == 1.0)
    assert e[1:].min() == 0.0 and e[1:].max() == pytest.approx(1.0)


def test_moving_square_lights_the_tokens_it_crosses():
    frames = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    frames[2:, 0:8, 8:16] = 255  # a square appears in the second tubelet at patch (0, 1)
    e = motion_energy(frames, 2, 8)
    assert e[1, 0, 1] == 1.0 and e[1].sum() == 1.0


def test_single_segment_clip_is_all_ones():
    e = motion_energy(np.zeros((2, 16, 16, 3), dtype=np.uint8), 2, 8)
    assert e.shape == (1, 2, 2) and np.all(e == 1.0)


def test_indivisible_shape_is_refused():
    with pytest.raises(ValueError, match="not divisible"):
        motion_energy(np.zeros((5, 32, 32, 3), dtype=np.uint8), 2, 16)
