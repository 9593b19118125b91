"""The synthetic domain-shift set: decodable, classes separable by motion, domains by appearance."""

from __future__ import annotations

import decord
import numpy as np
import pytest

from lmft_core.demo_data import MARKER, DemoDataConfig, generate_demo_data, render_video
from lmft_core.manifest import load_manifest

CFG = DemoDataConfig(videos_per_class=4, num_frames=32, width=64, height=48)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return load_manifest(generate_demo_data(CFG, tmp_path_factory.mktemp("demo")))


def _decode(path: str) -> np.ndarray:
    """All frames as float gray (T, H, W) in [0, 1], decoded with decord."""
    vr = decord.VideoReader(path)
    return vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.float32).mean(-1) / 255.0


def motion_footprint_stats(gray: np.ndarray) -> np.ndarray:
    """(spread x, spread y, x-y correlation) of where the video moves.

    The footprint is the fraction of frame pairs in which a pixel's |difference| exceeds 0.15
    (well above the noise), kept where it is over 0.1.
    """
    fp = (np.abs(np.diff(gray, axis=0)) > 0.15).mean(0)
    fp = fp * (fp > 0.1)
    h, w = fp.shape
    yy, xx = np.mgrid[0:h, 0:w]
    xx, yy, m = xx / w, yy / h, fp.sum()
    x, y = (fp * xx).sum() / m, (fp * yy).sum() / m
    sx, sy = np.sqrt((fp * (xx - x) ** 2).sum() / m), np.sqrt((fp * (yy - y) ** 2).sum() / m)
    return np.array([sx, sy, (fp * (xx - x) * (yy - y)).sum() / m / (sx * sy)])


def appearance_stats(gray: np.ndarray) -> tuple[float, float]:
    """(brightness, texture) of the static scene: mean and mean |spatial gradient| of the median frame."""
    still = np.median(gray, axis=0)
    return float(still.mean()), float(np.abs(np.diff(still, axis=1)).mean())


def test_manifest_splits_and_labels(demo):
    assert demo.classes == tuple(sorted(CFG.classes))
    counts = demo.counts()
    n = CFG.videos_per_class
    assert sum(counts[("source", "train")].values()) == len(CFG.classes) * (n - 1)
    assert sum(counts[("source", "val")].values()) == len(CFG.classes)
    assert sum(counts[("target", "train")].values()) == sum(counts[("target", "test")].values()) == len(CFG.classes) * n // 2
    assert all(r.label is not None for r in demo.rows)  # target labels kept for evaluation


def test_videos_decode_with_decord_at_requested_size(demo):
    for r in demo.rows[:: len(CFG.classes)]:
        vr = decord.VideoReader(r.path)
        assert len(vr) == CFG.num_frames
        assert vr[0].shape == (CFG.height, CFG.width, 3)


def test_decoded_frames_match_rendered_frames(demo):
    r = demo.rows[0]
    rendered = render_video(CFG, r.domain, r.label, int(r.path.rsplit("_", 1)[1][:3])).astype(np.float32)
    decoded = decord.VideoReader(r.path).get_batch(list(range(CFG.num_frames))).asnumpy().astype(np.float32)
    assert np.abs(decoded - rendered).mean() < 4.0  # near-lossless H.264 (crf 12) in 8-bit levels


def test_classes_are_separable_by_motion_across_domains(demo):
    """Nearest class mean of motion statistics, fitted on source, classifies the target videos."""
    feats = {r.video_id: motion_footprint_stats(_decode(r.path)) * [1, 1, 0.25] for r in demo.rows}
    means = {c: np.mean([feats[r.video_id] for r in demo.rows if r.domain == "source" and r.label == c], 0) for c in demo.classes}
    target = [r for r in demo.rows if r.domain == "target"]
    pred = [min(means, key=lambda c: np.linalg.norm(feats[r.video_id] - means[c])) for r in target]
    accuracy = np.mean([p == r.label for p, r in zip(pred, target)])
    assert accuracy >= 0.9, accuracy


def test_domains_differ_in_appearance(demo):
    stats = {d: np.array([appearance_stats(_decode(r.path)) for r in demo.rows if r.domain == d]) for d in ("source", "target")}
    assert stats["source"][:, 0].min() > stats["target"][:, 0].max()  # source scenes are brighter
    assert stats["target"][:, 1].min() > stats["source"][:, 1].max()  # target scenes are textured


def test_deterministic_for_a_seed():
    a = render_video(CFG, "target", "spin", 1)
    assert np.array_equal(a, render_video(CFG, "target", "spin", 1))
    other = DemoDataConfig(**{**CFG.__dict__, "seed": 1})
    assert not np.array_equal(a, render_video(other, "target", "spin", 1))


def test_refuses_foreign_folder_and_reuses_or_replaces_its_own(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not an lmft demo-data folder"):
        generate_demo_data(DemoDataConfig.preset("tiny"), foreign)
    assert (foreign / "thesis.tex").read_text() == "precious"

    out = tmp_path / "demo"
    manifest = generate_demo_data(DemoDataConfig.preset("tiny"), out)
    mtime = manifest.stat().st_mtime_ns
    assert generate_demo_data(DemoDataConfig.preset("tiny"), out).stat().st_mtime_ns == mtime  # reused
    bigger = DemoDataConfig(**{**DemoDataConfig.preset("tiny").__dict__, "videos_per_class": 2})
    assert len(load_manifest(generate_demo_data(bigger, out)).rows) == 2 * 3 * 2  # replaced
    assert (out / MARKER).is_file()


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="unknown motion"):
        DemoDataConfig(classes=("fly",))
    with pytest.raises(ValueError, match="even"):
        DemoDataConfig(width=63)
