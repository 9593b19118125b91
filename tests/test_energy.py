"""Motion energy against naive per-token loops, and the defining properties of each variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmft_core.config import ConfigError
from lmft_core.energy import ENERGY_VARIANTS, EnergyConfig, camera_motion_of, motion_energy
from lmft_core.run_config import load_profile


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


# --- variants -----------------------------------------------------------------------------------

def naive_compensated(frames: np.ndarray, tubelet: int, patch: int, motion: np.ndarray, min_gain: float) -> np.ndarray:
    """The camera-compensated definition for given motions (N_t - 1, 3) rows (s, t_y, t_x), one pixel
    at a time in float64: pixel p of segment t+1 is compared with the nearest pixel of segment t at
    c + s (p - c) + t (pixel centres); a token averages over its pixels that segment t saw, and a token
    with none keeps the uncompensated difference; a pair whose median token change does not drop by
    the fraction ``min_gain`` keeps the uncompensated differences."""
    x = frames.astype(np.float64) / 255.0
    t, h, w, _ = x.shape
    n_t, n_h, n_w = t // tubelet, h // patch, w // patch
    means = [x[s * tubelet:(s + 1) * tubelet].mean(axis=0) for s in range(n_t)]
    e = np.zeros((n_t - 1, n_h, n_w))
    for s in range(n_t - 1):
        zoom, ty, tx = (float(v) for v in motion[s])
        plain, compensated = np.zeros((n_h, n_w)), np.zeros((n_h, n_w))
        for i in range(n_h):
            for j in range(n_w):
                total, count = 0.0, 0
                for y in range(i * patch, (i + 1) * patch):
                    for xx in range(j * patch, (j + 1) * patch):
                        sy = round(h / 2 + zoom * (y + 0.5 - h / 2) + ty - 0.5)
                        sx = round(w / 2 + zoom * (xx + 0.5 - w / 2) + tx - 0.5)
                        if 0 <= sy < h and 0 <= sx < w:
                            total += np.abs(means[s + 1][y, xx] - means[s][sy, sx]).mean()
                            count += 1
                plain[i, j] = np.abs(means[s + 1] - means[s])[i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].mean()
                compensated[i, j] = total / count if count else plain[i, j]
        lower_median = np.sort(compensated.ravel())[(compensated.size - 1) // 2] < (1 - min_gain) * np.sort(plain.ravel())[(plain.size - 1) // 2]
        e[s] = compensated if lower_median else plain
    e = (e - e.min()) / (e.max() - e.min()) if e.max() > e.min() else np.zeros_like(e)
    return np.concatenate([np.ones((1, n_h, n_w)), e])


def textured_pan(n_frames: int = 8, size: int = 48, step: int = 3, actor: bool = True, seed: int = 0) -> np.ndarray:
    """uint8 (n_frames, size, size, 3): a smooth random texture seen by a camera panning ``step`` px
    right per frame, with (optionally) a bright 8x8 square moving down 4 px per frame in the image."""
    rng = np.random.default_rng(seed)
    big = rng.uniform(0, 255, (size // 4 + 8, (size + step * n_frames) // 4 + 8, 3))
    big = np.kron(big, np.ones((4, 4, 1)))  # 4x4 blocks: texture with edges a camera shift shows
    frames = np.stack([big[8:8 + size, 8 + k * step:8 + k * step + size] for k in range(n_frames)])
    if actor:
        for k in range(n_frames):
            frames[k, 4 + 4 * k:12 + 4 * k, 20:28] = 255
    return np.clip(frames + rng.normal(0, 2, frames.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("variant", ["translate", "translate_zoom"])
def test_compensated_variants_match_naive_loop_given_their_motion(variant):
    frames = textured_pan(step=3)
    cfg = EnergyConfig(variant=variant)
    motion = camera_motion_of(frames, 2, 8, cfg, zoom=variant == "translate_zoom").motion.numpy()
    assert (np.abs(motion[:, 2] - 6) < 0.5).all()  # 3 px per frame: 6 px between tubelet means of 2 frames
    got = cfg.compute(frames, 2, 8)
    assert got.shape == (4, 6, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, naive_compensated(frames, 2, 8, motion, cfg.min_gain), atol=2e-6)


def test_compensated_energy_finds_the_actor_that_diff_loses_to_the_pan():
    frames = textured_pan(step=3)
    square = np.zeros((8, 48, 48), dtype=bool)  # where the square is in each frame
    for k in range(8):
        square[k, 4 + 4 * k:12 + 4 * k, 20:28] = True
    now = square.reshape(4, 2, 6, 8, 6, 8).any(axis=(1, 3, 5))
    # where segment t-1's square lands in segment t once the 6 px pan between tubelet means is undone
    before = np.roll(square, -6, axis=2).reshape(4, 2, 6, 8, 6, 8).any(axis=(1, 3, 5))
    changed = (now[1:] | before[:-1]).ravel()
    found = {}
    for variant in ("diff", "translate", "translate_zoom"):
        e = EnergyConfig(variant=variant).compute(frames, 2, 8)[1:].ravel()
        found[variant] = changed[np.argsort(-e)[:changed.sum()]].mean()  # of the top energies, the share there
    assert found["diff"] < 0.6 and found["translate"] == found["translate_zoom"] == 1.0, found


def test_static_camera_gives_exactly_diff():
    frames = textured_pan(step=0)
    for variant in ("translate", "translate_zoom"):
        np.testing.assert_array_equal(EnergyConfig(variant=variant).compute(frames, 2, 8), motion_energy(frames, 2, 8))


@pytest.mark.parametrize("variant", sorted(ENERGY_VARIANTS))
def test_every_variant_keeps_the_contract(variant):
    cfg = EnergyConfig(variant=variant)
    clips = np.stack([textured_pan(step=2, seed=1), textured_pan(step=0, seed=2)])
    batch = cfg.compute(clips, 2, 8)
    assert batch.shape == (2, 4, 6, 6) and batch.dtype == np.float32
    for b in range(2):
        np.testing.assert_array_equal(batch[b], cfg.compute(clips[b], 2, 8))  # each clip on its own
        assert np.all(batch[b, 0] == 1.0) and batch[b, 1:].min() == 0.0 and batch[b, 1:].max() == pytest.approx(1.0)
    tensor = cfg.compute(torch.from_numpy(clips[0]), 2, 8)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), batch[0], atol=1e-6)
    assert np.all(cfg.compute(clips[0, :2], 2, 8) == 1.0)  # a single segment
    with pytest.raises(ValueError, match="not divisible"):
        cfg.compute(clips[0, :5], 2, 8)


def test_energy_config_validates_and_names_what_it_reads():
    assert EnergyConfig().identity() == {"variant": "diff"}
    assert EnergyConfig(variant="translate").identity() == {"variant": "translate", "estimate_size": 48,
                                                            "max_shift": 0.25, "min_gain": 0.2}
    assert set(EnergyConfig(variant="translate_zoom").identity()) == {"variant", "estimate_size", "max_shift", "min_gain", "max_zoom"}
    with pytest.raises(ConfigError,
                       match=r"energy.variant 'flow' is not a registered energy variant; known: \['diff', 'translate', 'translate_zoom'\]"):
        EnergyConfig(variant="flow")
    with pytest.raises(ConfigError, match="energy.max_shift must be in"):
        EnergyConfig(max_shift=2.0)
    assert load_profile("demo", ["energy.variant=translate_zoom"]).energy == EnergyConfig(variant="translate_zoom")


@pytest.mark.parametrize("variant", ["translate", "translate_zoom"])
def test_bad_clips_fall_back_to_diff_with_a_note(variant, tmp_path):
    """Frames too small to estimate motion on, constant frames and a single-frame video: the compensated
    variant gives diff's energy for that clip, says why, and never NaN; other clips of a batch go on."""
    from lmft_core.demo_data import write_mp4
    from lmft_core.video import decode_clip

    cfg = EnergyConfig(variant=variant)
    small = textured_pan(size=16)  # 16 x 16 pixels: below the estimate's smallest image
    constant = np.full((8, 48, 48, 3), 77, dtype=np.uint8)
    write_mp4(textured_pan()[:1], tmp_path / "one_frame.mp4", fps=15)
    single = decode_clip(str(tmp_path / "one_frame.mp4"), 8, 48).frames  # one frame, sampled 8 times
    for frames, why in ((small, "below 32"), (constant, "constant"), (single, "constant")):
        energy, notes = cfg.compute_noted(frames, 2, 8)
        assert len(notes) == 1 and why in notes[0], notes
        assert not np.isnan(energy).any()
        np.testing.assert_array_equal(energy, motion_energy(frames, 2, 8))
    energy, notes = cfg.compute_noted(np.stack([textured_pan(), constant]), 2, 8)
    assert notes[0] == "" and "constant" in notes[1] and not np.array_equal(energy[0], motion_energy(textured_pan(), 2, 8))
    assert EnergyConfig().compute_noted(constant, 2, 8)[1] == [""]  # diff itself has nothing to fall back from
