"""The synthetic domain-shift set: decodable, classes separable by motion, domains by appearance; camera
motion as configured (measured on the actor masks against a static camera); masks that mark the actor."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import decord
import numpy as np
import pytest

from conftest import entry_main
from lmft_core.config import ConfigError
from lmft_core.demo_data import (
    APPEARANCES,
    DIRECTION_CLASSES,
    MARKER,
    CameraMotion,
    DemoDataConfig,
    _pattern,
    camera_path,
    degrade,
    generate_demo_data,
    load_actor_mask,
    render_video,
    render_video_and_mask,
)
from lmft_core.manifest import load_manifest
from lmft_core.run_config import load_profile

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


# --- camera motion and actor masks ----------------------------------------------------------------

STATIC_SHA256 = {  # render_video(CFG, ...) before camera motion existed: a static camera must not change it
    ("source", "wave", 0): "0d8da56c7f0ac1abd441073d6dde3eaec7c0aa7845610981b73564dd1cb731d6",
    ("target", "spin", 1): "2779d6a645b7e2a5c192fc3d46d92d02e226fb8a8d1f74baaa6834ecc67f44db",
    ("target", "clap", 3): "6fd4a2122a80baf5790e039cdbe4cd53570e90ed15b643f3745eacda1c8a70ac",
}
CAM = DemoDataConfig(num_frames=16, width=160, height=128)  # 15 fps: frame t is at t / 15 s


def test_static_camera_renders_bit_identical_frames():
    for (domain, label, index), digest in STATIC_SHA256.items():
        assert hashlib.sha256(render_video(CFG, domain, label, index).tobytes()).hexdigest() == digest


# sha256 of frames + masks rendered frame by frame (the renderer before it was vectorised over frames): moving
# cameras (float64 scene coordinates) and every background pattern, so each dtype path is pinned bit for bit
RENDERED_SHA256 = {
    ("camera", "target", "spin", 1): "ecf00e2474463871deb67ff0c68fe39959a4d1b384eb5bc358abc9e448100a16",
    ("camera", "target", "clap", 0): "63cc9dd16074e3411d4e0063e2b96b66e8908b67803e051451337735e71b6b27",
    ("hard", "source", "walk", 1): "e26b3157a290262ac9ca24411762da5f0e584ab1a26d9fce6696d2fb897b0615",
    ("hard", "target", "wave", 2): "8da819aba209c76acf6b77e1a5b49a347b92e2e9012f2c0120657ccaa0a3f693",
    ("hard2", "source", "clap", 1): "28af1c8efffbb1aec2a988ad094f09ad5203634d8bd0e98a98ff93e390f2d5d4",
    ("hard2", "target", "spin", 0): "bf4fdc51e2576b5a4be8461628b588c564222be0d971e821cd95f72903695975",
    ("static", "target", "jump", 2): "a888f3aa30328866f56a5bd92452a09c8ff3d99deb4c2ca8df3415177773d66e",
    # the second shift's looks: blocks, and stripes through blur and haze (whole-frame optics), static and moving
    ("directions", "source", "orbit_cw", 1): "ba5bbd2dd91ff2466cb0ddc4b57cebf94d31743e09d804b25f209a83a81ced77",
    ("directions", "target", "slide_left", 0): "687c46095cf6c93563ce0ea319e2b5bfa5b65a09a2934c2f67ca2e413925e2de",
    ("directions_moving", "target", "rise", 1): "3e91d9c0eeb610a2f48769cd1e9e99030b593ad4f5a53ef7eafd8644922bf510",
}
DIRS = DemoDataConfig(classes=DIRECTION_CLASSES, videos_per_class=2, num_frames=48, width=64, height=48,
                      source_appearance="source_blocks", target_appearance="target_haze")  # the second shift
LOOKS = {
    "camera": dataclasses.replace(CFG, target_camera=CameraMotion(pan_px_per_s=20.0, shake_px=2.0, zoom_per_s=0.1)),
    "hard": dataclasses.replace(CFG, source_appearance="stripes", target_appearance="blocks",
                                target_camera=CameraMotion(pan_px_per_s=15.0)),
    "hard2": dataclasses.replace(CFG, source_appearance="tilted_checker", target_appearance="flat"),
    "static": CFG,
    "directions": DIRS,
    "directions_moving": dataclasses.replace(DIRS, target_camera=CameraMotion(pan_px_per_s=15.0, zoom_per_s=0.1)),
}


def test_vectorised_renderer_is_bit_identical_to_the_frame_loop():
    for (look, domain, label, index), digest in RENDERED_SHA256.items():
        frames, mask = render_video_and_mask(LOOKS[look], domain, label, index)
        assert hashlib.sha256(frames.tobytes() + mask.tobytes()).hexdigest() == digest, (look, domain, label, index)


def test_parallel_generation_writes_what_one_process_writes(tmp_path):
    cfg = dataclasses.replace(DemoDataConfig.preset("tiny"), videos_per_class=2, num_frames=8)
    one, two = (load_manifest(generate_demo_data(cfg, tmp_path / f"w{n}", workers=n)) for n in (1, 2))
    assert [(r.label, r.domain, r.split) for r in one.rows] == [(r.label, r.domain, r.split) for r in two.rows]
    for a, b in zip(one.rows, two.rows):
        index = int(a.path.rsplit("_", 1)[1][:3])
        rendered, mask = render_video_and_mask(cfg, a.domain, a.label, index)
        assert np.array_equal(load_actor_mask(a.path), mask) and np.array_equal(load_actor_mask(b.path), mask)
        # H.264 bytes can differ from encode to encode (write_mp4: measured 0.35-0.6 grey levels apart on average, in
        # rare runs), so compare pictures: both decode to the rendered video within the codec's loss (target videos:
        # about 3.7 levels of the sensor noise the encoder smooths), and to each other within 2 levels (another
        # video: tens of levels)
        gray = rendered.astype(np.float32).mean(-1) / 255.0
        assert np.abs(_decode(a.path) - gray).mean() < 6 / 255 and np.abs(_decode(b.path) - gray).mean() < 6 / 255
        assert np.abs(_decode(a.path) - _decode(b.path)).mean() < 2 / 255, a.video_id
    with pytest.raises(ValueError, match="workers must be >= 1"):
        generate_demo_data(cfg, tmp_path / "w0", workers=0)


def centroids(mask: np.ndarray) -> np.ndarray:
    """(T, 2) (y, x) centre of the mask in each frame."""
    yy, xx = np.mgrid[0:mask.shape[1], 0:mask.shape[2]]
    n = mask.sum(axis=(1, 2))
    return np.stack([(mask * yy).sum(axis=(1, 2)) / n, (mask * xx).sum(axis=(1, 2)) / n], 1)


def camera_displacement(camera: CameraMotion, index: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The actor's masks with and without ``camera`` (a ``clap`` actor stays in place in the scene):
    (static masks, moving masks, seconds from mid-video per frame)."""
    static = render_video_and_mask(CAM, "target", "clap", index)[1]
    moving = render_video_and_mask(dataclasses.replace(CAM, target_camera=camera), "target", "clap", index)[1]
    s = np.arange(CAM.num_frames) / CAM.fps
    return static, moving, s - s.mean()


def test_pan_moves_the_scene_and_the_actor_at_the_configured_speed():
    static, moving, s = camera_displacement(CameraMotion(pan_px_per_s=20.0))
    shift = np.linalg.norm(centroids(moving) - centroids(static), axis=1)
    np.testing.assert_allclose(shift, 20.0 * np.abs(s), atol=0.3)  # the camera passes its rest mid-video


def test_zoom_scales_the_view_at_the_configured_rate():
    static, moving, s = camera_displacement(CameraMotion(zoom_per_s=0.2), index=1)
    log_zoom = np.abs(0.5 * np.log(moving.sum(axis=(1, 2)) / static.sum(axis=(1, 2))))  # area scales by zoom^2
    assert (log_zoom * np.abs(s)).sum() / (s * s).sum() == pytest.approx(0.2, abs=0.01)  # fitted rate
    np.testing.assert_allclose(log_zoom, 0.2 * np.abs(s), atol=0.02)  # each frame (small discs: coarse areas)


def test_shake_reaches_its_amplitude_and_no_further():
    static, moving, _ = camera_displacement(CameraMotion(shake_px=3.0), index=2)
    offset = centroids(moving) - centroids(static)
    assert np.abs(offset).max() == pytest.approx(3.0, abs=0.25)
    assert np.abs(np.diff(offset, axis=0)).max() < 3.0  # smooth: 1.5-4 Hz at 15 fps, not a jump per frame


def test_camera_motion_leaves_the_actor_path_and_other_domain_alone():
    cfg = dataclasses.replace(CFG, target_camera=CameraMotion(pan_px_per_s=10.0, shake_px=1.0, zoom_per_s=0.05))
    assert np.array_equal(render_video(cfg, "source", "wave", 0), render_video(CFG, "source", "wave", 0))
    assert not np.array_equal(render_video(cfg, "target", "wave", 0), render_video(CFG, "target", "wave", 0))


def test_actor_mask_covers_the_pixels_that_move():
    frames, mask = render_video_and_mask(CAM, "target", "wave", 0)
    gray = frames.astype(np.float32).mean(-1)
    moved = np.abs(gray - np.median(gray, axis=0)) > 60  # far above the sensor noise: the actor passing
    grown = mask | np.roll(mask, 1, 1) | np.roll(mask, -1, 1) | np.roll(mask, 1, 2) | np.roll(mask, -1, 2)
    assert moved.sum() > 1000 and grown[moved].mean() > 0.98
    assert 0.02 < mask.mean() < 0.08  # a disc of radius ~0.11 of the height


def test_masks_are_written_beside_the_videos(demo):
    for r in demo.rows[:: len(CFG.classes)]:
        index = int(r.path.rsplit("_", 1)[1][:3])
        assert np.array_equal(load_actor_mask(r.path), render_video_and_mask(CFG, r.domain, r.label, index)[1])
    with pytest.raises(FileNotFoundError, match=r"no_such\.actor\.npz: no actor mask"):
        load_actor_mask("/tmp/no_such.mp4")


def test_camera_motion_is_configured_per_domain_from_profiles_and_the_command_line(tmp_path):
    profile = load_profile("demo", ["demo_data.target_camera={pan_px_per_s=20, zoom_per_s=0.1}"])
    cam = profile.demo_data
    assert cam.target_camera == CameraMotion(pan_px_per_s=20.0, zoom_per_s=0.1) and cam.source_camera.static
    with pytest.raises(ConfigError, match=r"target_camera: unknown key\(s\) \['pan'\]"):
        load_profile("demo", ["demo_data.target_camera={pan=20}"])
    with pytest.raises(ConfigError, match="shake_px must be >= 0"):
        load_profile("demo", ["demo_data.source_camera={shake_px=-1}"])
    main = entry_main("make_demo_data")
    assert main(["--output", str(tmp_path / "bad"), "--preset", "tiny", "--target-camera", "pan_px_per_s"]) == 2
    assert main(["--output", str(tmp_path / "ok"), "--preset", "tiny", "--target-camera", "shake_px=2,zoom_per_s=0.1"]) == 0
    marker = json.loads((tmp_path / "ok" / MARKER).read_text())
    assert marker["target_camera"] == {"pan_px_per_s": 0.0, "shake_px": 2.0, "zoom_per_s": 0.1}
    assert len(list((tmp_path / "ok").rglob("*.actor.npz"))) == len(list((tmp_path / "ok").rglob("*.mp4"))) == 24


def test_appearances_are_chosen_per_domain():
    cfg = DemoDataConfig(classes=("wave",), videos_per_class=2, num_frames=8, width=64, height=48)
    mild = dataclasses.replace(cfg, target_appearance="target_mild")
    src, _ = render_video_and_mask(cfg, "source", "wave", 0)
    hard, mask = render_video_and_mask(cfg, "target", "wave", 0)
    soft, mask_mild = render_video_and_mask(mild, "target", "wave", 0)
    assert mask.any() and mask_mild.any()  # an actor in both (its draws follow the scene's, so its path differs)
    assert np.array_equal(render_video_and_mask(mild, "source", "wave", 0)[0], src)  # the other domain is untouched
    bright = [float(f.mean()) for f in (src, soft, hard)]
    assert bright[0] > bright[1] > bright[2]  # the mild look sits between the source and the full target look
    with pytest.raises(ValueError, match="demo_data.target_appearance: unknown appearance 'night'"):
        dataclasses.replace(cfg, target_appearance="night")


def test_camera_path_is_what_the_frames_show():
    """A clap actor stays put in the scene, so on screen it moves by minus the camera's offset."""
    cfg = dataclasses.replace(CAM, target_camera=CameraMotion(pan_px_per_s=20.0, shake_px=3.0))
    offset, scale = camera_path(cfg, "target", "clap", 0)
    assert offset.shape == (cfg.num_frames, 2) and np.all(scale == 1.0)
    static, moving = (render_video_and_mask(c, "target", "clap", 0)[1] for c in (CAM, cfg))
    np.testing.assert_allclose(centroids(moving) - centroids(static), -offset[:, ::-1], atol=0.3)
    assert np.all(camera_path(CAM, "target", "clap", 0)[0] == 0.0)  # a static camera


def test_hard_looks_are_periodic_blocky_or_flat():
    """The periodic patterns repeat at their drawn period and flip at half of it (stripes along their
    normal; the tilted checkerboard along both of its axes); blocks hold one level per grid cell; the
    flat look's background has a third of the texture of the others at most (what is left: noise)."""
    xy = np.random.default_rng(0).uniform(-100, 300, (2, 5000))
    for name, low, high in (("stripes", 6, 24), ("tilted_checker", 4, 12)):
        draws = np.random.default_rng(7)
        angle, size = draws.uniform(0, np.pi), draws.uniform(low, high)
        axes = [(np.cos(angle), np.sin(angle))] + ([(-np.sin(angle), np.cos(angle))] if name == "tilted_checker" else [])
        period = size if name == "stripes" else 2 * size  # stripes: a light and a dark band per period
        f = _pattern(name, 0, np.random.default_rng(7))
        for ux, uy in axes:
            assert (f(xy[0] + period * ux, xy[1] + period * uy) == f(*xy)).mean() > 0.99
            assert (f(xy[0] + period / 2 * ux, xy[1] + period / 2 * uy) != f(*xy)).mean() > 0.97
    draws = np.random.default_rng(7)
    draws.uniform(0, np.pi)
    side = draws.integers(4, 11)
    blocks = _pattern("blocks", 0, np.random.default_rng(7))
    corner = np.floor(xy / side) * side
    np.testing.assert_array_equal(blocks(*xy), blocks(corner[0] + 0.5, corner[1] + 0.5))
    textures = {look: background_texture(dataclasses.replace(CFG, target_appearance=look))
                for look in ("flat", "target", "stripes", "tilted_checker", "blocks")}
    assert textures["flat"] < min(textures[look] for look in ("target", "stripes", "tilted_checker", "blocks")) / 3, textures


def background_texture(cfg: DemoDataConfig) -> float:
    """Mean |spatial gradient| (both axes) of the median frame of a target video, away from the actor."""
    frames, mask = render_video_and_mask(cfg, "target", "clap", 0)
    still = np.median(frames.astype(np.float32).mean(-1) / 255, axis=0)
    away = ~mask.any(0)
    return float((np.abs(np.diff(still, axis=0))[:, :-1] + np.abs(np.diff(still, axis=1))[:-1])[away[:-1, :-1] & away[1:, 1:]].mean())


# ----------------------------------------------------------------------------- the second shift: directions


def test_direction_classes_move_their_way_and_a_flip_mirrors_left_right_and_the_orbits():
    tracks = {label: centroids(render_video_and_mask(DIRS, "source", label, 0)[1])[:, ::-1] for label in DIRECTION_CLASSES}
    step = {label: np.diff(t, axis=0).mean(0) for label, t in tracks.items()}  # mean (dx, dy) per frame, pixels
    assert step["slide_right"][0] > 0.4 > -0.4 > step["slide_left"][0]
    assert step["fall"][1] > 0.3 > -0.3 > step["rise"][1]  # y points down: rise is upwards on screen
    assert abs(step["slide_left"][1]) < 0.1 and abs(step["rise"][0]) < 0.1

    def turning(track: np.ndarray) -> float:  # the mean cross product of successive steps: > 0 clockwise on screen
        d = np.diff(track, axis=0)
        return float((d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0]).mean())

    assert turning(tracks["orbit_cw"]) > 0 > turning(tracks["orbit_ccw"])
    mirrored = tracks["orbit_cw"] * [-1, 1]  # a horizontal flip: x -> -x
    assert turning(mirrored) < 0  # what hflip_label_map = {orbit_cw = "orbit_ccw"} says
    assert (np.diff(tracks["slide_left"] * [-1, 1], axis=0).mean(0)[0]) > 0.4


def test_blur_and_haze_degrade_the_target_and_leave_a_clear_look_alone():
    frame = np.random.default_rng(0).uniform(0, 1, (24, 32, 3))
    assert degrade(frame, APPEARANCES["source"]) is frame  # no optics: the very array, so old looks are bit-identical
    blurred = degrade(frame, dataclasses.replace(APPEARANCES["source"], blur=1.0))
    np.testing.assert_allclose(blurred.mean(), frame.mean(), atol=0.01)  # a normalised kernel keeps the level
    assert np.abs(np.diff(blurred, axis=1)).mean() < 0.5 * np.abs(np.diff(frame, axis=1)).mean()
    # a naive 2-D convolution with the same kernel, away from the edges
    k = np.exp(-np.arange(-3, 4) ** 2 / 2.0)
    k2 = np.outer(k, k) / k.sum() ** 2
    y, x = 10, 12
    np.testing.assert_allclose(blurred[y, x], (frame[y - 3:y + 4, x - 3:x + 4] * k2[..., None]).sum((0, 1)), rtol=1e-10)
    hazy = degrade(frame, dataclasses.replace(APPEARANCES["source"], haze=0.3))
    np.testing.assert_allclose(hazy, 0.7 * frame + 0.18)
    src, _ = render_video_and_mask(DIRS, "source", "rise", 0)
    tgt, _ = render_video_and_mask(DIRS, "target", "rise", 0)
    assert float(tgt.std()) < float(src.std())  # the hazy target has less contrast


def test_the_directions_profile_pairs_its_mirrored_classes_and_an_unpaired_flip_is_refused():
    from lmft_core.augment import check_hflip, label_map_tensor

    profile = load_profile("results-directions")
    assert profile.demo_data.classes == DIRECTION_CLASSES and profile.train.hflip
    mirror = label_map_tensor(DIRECTION_CLASSES, profile.train.hflip_label_map)
    assert [DIRECTION_CLASSES[i] for i in mirror] == ["slide_right", "slide_left", "rise", "fall", "orbit_ccw", "orbit_cw"]
    with pytest.raises(ConfigError, match=r"--set train.hflip_label_map=\{\}: train.hflip = true, but the classes "
                                          r"\['slide_left', 'slide_right', 'orbit_cw', 'orbit_ccw'\]"):
        load_profile("results-directions", ["train.hflip_label_map={}"])
    load_profile("results-directions", ["train.hflip_label_map={}", "train.hflip=false"])  # no flip: nothing to pair
    with pytest.raises(ConfigError, match=r"the classes \['orbit_ccw'\] \(demo_data.classes\)"):  # half a pair is no pair
        load_profile("results-directions", ["train.hflip_label_map={slide_left='slide_right'}",
                                            "demo_data.classes=['slide_left', 'slide_right', 'orbit_ccw']"])
    # names split at camel case and separators; words inside others ("bright", "upright") are no direction
    check_hflip(["Bright", "upright", "TurnAround"], True, {}, "test")
    for name in ("TurnLeft", "spin-CCW", "walk_west", "RotateClockwise"):
        with pytest.raises(ConfigError, match=f"the classes \\['{name}'\\] \\(test\\)"):
            check_hflip([name], True, {}, "test")
