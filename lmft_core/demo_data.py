"""A synthetic domain-shift video set: classes defined by motion, domains by appearance.

Every video shows one moving "actor" (a striped disc) over a static scene. The **class** is how the
actor moves (:data:`MOTIONS`); the actor's look is drawn from the same distribution in both domains.
The **domain** is the scene's appearance (:data:`APPEARANCES`): source videos have smooth bright
backgrounds with little clutter and little noise; target videos have textured, darker, colour-cast
backgrounds, more static clutter and more sensor noise. So the background tokens carry the domain
shift and the moving tokens carry the class: the situation LMFT is built for.
Further looks make hard backgrounds for camera compensation (:class:`Appearance`): periodic stripes and
tilted checkerboards at drawn periods and angles, blocky noise, and a nearly uniform scene.

A second, differently built shift (:data:`DIRECTION_CLASSES`, looks ``source_blocks`` -> ``target_haze``;
the ``results-directions`` profile): direction-dependent motions (slide left/right, rise/fall, orbit
clockwise/anticlockwise: a horizontal flip swaps left and right and the two orbits), a blocky source
scene, and a target of stripes seen through blur and haze (:func:`degrade`) with a blue cast.

Each domain can also have a moving camera (:class:`CameraMotion`: pan, shake, zoom, each optional):
the frames are then windows onto a larger scene, and the actor moves with the scene as a real camera
sees it (:func:`camera_path` gives its path per frame). Beside every video, ``<video>.actor.npz`` holds its **actor mask**: a boolean per pixel and
frame, true where the actor's disc covers at least half the pixel (:func:`load_actor_mask`;
:mod:`lmft_core.ground_truth` brings it to token resolution).

Videos are real H.264 mp4 files written with PyAV, listed in ``DIR/manifest.csv`` (the manifest
format of :mod:`lmft_core.manifest`). Source videos split into ``train``/``val``; target videos into
``train`` (used unlabelled) and ``test``; target rows carry labels for evaluation only. The output
is a deterministic function of :class:`DemoDataConfig` (frames are bit-identical for a seed, and a
static camera renders exactly what it rendered before camera motion existed).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmft_core.files import atomic_write
from lmft_core.manifest import DOMAINS, write_manifest

MARKER = ".lmft_demo_data.json"

# --- motions: one per class --------------------------------------------------------------------
# A motion maps (time s in seconds, unit-scale params) to the actor's centre (x, y) in [0, 1]
# frame coordinates and its radius scale (1 = base radius).
Motion = Callable[[float, dict], tuple[float, float, float]]


def _wave(s: float, p: dict) -> tuple[float, float, float]:
    return p["cx"] + 0.28 * math.sin(2 * math.pi * p["freq"] * s + p["phase"]), p["cy"], 1.0


def _jump(s: float, p: dict) -> tuple[float, float, float]:
    return p["cx"], p["cy"] + 0.25 - 0.5 * abs(math.sin(math.pi * p["freq"] * s + p["phase"])), 1.0


def _spin(s: float, p: dict) -> tuple[float, float, float]:
    a = 2 * math.pi * p["freq"] * s + p["phase"]
    return p["cx"] + 0.22 * math.cos(a), p["cy"] + 0.22 * math.sin(a), 1.0


def _walk(s: float, p: dict) -> tuple[float, float, float]:
    u = (p["freq"] * s / 2 + p["phase"] / (2 * math.pi)) % 1.0
    q = 2 * min(u, 1 - u)  # back and forth along a diagonal
    return 0.2 + 0.6 * q, 0.7 - 0.4 * q, 1.0


def _clap(s: float, p: dict) -> tuple[float, float, float]:
    return p["cx"], p["cy"], 1.0 + 0.6 * math.sin(2 * math.pi * p["freq"] * s + p["phase"])


def _slide(direction: float) -> Motion:
    """Across the frame at a constant speed, ``direction`` +1 rightwards, -1 leftwards (a small vertical bob);
    mid-way at 1.6 s (the middle of the default 48 frames at 15 fps)."""
    def motion(s: float, p: dict) -> tuple[float, float, float]:
        return (p["cx"] + direction * 0.18 * p["freq"] * (s - 1.6),
                p["cy"] + 0.03 * math.sin(2 * math.pi * s + p["phase"]), 1.0)
    return motion


def _lift(direction: float) -> Motion:
    """Up (``direction`` -1: y decreases) or down the frame at a constant speed, mid-way at 1.6 s."""
    def motion(s: float, p: dict) -> tuple[float, float, float]:
        return p["cx"] + 0.03 * math.sin(2 * math.pi * s + p["phase"]), p["cy"] + direction * 0.14 * p["freq"] * (s - 1.6), 1.0
    return motion


def _orbit(direction: float) -> Motion:
    """Round a circle at 0.5 turns/s, ``direction`` +1 clockwise on screen (y points down), -1 anticlockwise."""
    def motion(s: float, p: dict) -> tuple[float, float, float]:
        a = direction * math.pi * p["freq"] * s + p["phase"]
        return p["cx"] + 0.2 * math.cos(a), p["cy"] + 0.2 * math.sin(a), 1.0
    return motion


MOTIONS: dict[str, Motion] = {"wave": _wave, "jump": _jump, "spin": _spin, "walk": _walk, "clap": _clap,
                              # direction-dependent classes: a horizontal flip turns left into right, cw into ccw
                              "slide_left": _slide(-1.0), "slide_right": _slide(1.0), "rise": _lift(-1.0),
                              "fall": _lift(1.0), "orbit_cw": _orbit(1.0), "orbit_ccw": _orbit(-1.0)}
# the second generated shift (lmft_core/profiles/results-directions.toml): its classes and looks
DIRECTION_CLASSES = ("slide_left", "slide_right", "rise", "fall", "orbit_cw", "orbit_ccw")


# --- appearances: one per domain ---------------------------------------------------------------
PATTERNS = ("gradient", "checker", "stripes", "tilted_checker", "blocks", "flat")


@dataclass(frozen=True)
class Appearance:
    """How a domain's scenes look. ``pattern`` (:data:`PATTERNS`) is the background, between two
    colours drawn per video:

    - ``gradient``: a smooth vertical blend; ``flat``: the same at 4% of the contrast (low texture);
    - ``checker``: an axis-aligned checkerboard of 6-13 px cells;
    - ``stripes``: square-wave stripes, period 6-24 px, at a random angle (periodic along one direction);
    - ``tilted_checker``: a checkerboard of 4-12 px cells at a random angle (periodic along two);
    - ``blocks``: blocky noise: a random level per cell of an axis-aligned 4-10 px grid.

    Sizes are in the video's pixels; the periodic patterns' period and angle are drawn per video.
    """

    pattern: str  # background, one of PATTERNS
    brightness: float  # global gain
    clutter: int  # static shapes in the background
    noise_std: float  # per-frame Gaussian sensor noise, in [0, 1] units
    color_cast: tuple[float, float, float]  # per-channel gain
    blur: float = 0.0  # optics: Gaussian blur of the whole frame, sigma in pixels (0: none)
    haze: float = 0.0  # fog: the frame blended towards grey 0.6 with this weight (0: none), before the noise

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"appearance pattern {self.pattern!r} unknown; known: {list(PATTERNS)}")


_HARD = {"brightness": 0.8, "clutter": 3, "noise_std": 0.03, "color_cast": (1.0, 1.0, 1.0)}
APPEARANCES: dict[str, Appearance] = {
    "source": Appearance(pattern="gradient", brightness=1.0, clutter=2, noise_std=0.01, color_cast=(1.0, 1.0, 1.0)),
    "target": Appearance(pattern="checker", brightness=0.6, clutter=8, noise_std=0.05, color_cast=(1.1, 0.9, 0.75)),
    # a milder target look: no texture, half the darkening, cast and noise (the results' preset)
    "target_mild": Appearance(pattern="gradient", brightness=0.8, clutter=5, noise_std=0.03, color_cast=(1.05, 0.95, 0.87)),
    # hard backgrounds for camera compensation: periodic (many equally good shifts), blocky, nearly uniform
    "stripes": Appearance(pattern="stripes", **_HARD),
    "tilted_checker": Appearance(pattern="tilted_checker", **_HARD),
    "blocks": Appearance(pattern="blocks", **_HARD),
    "flat": Appearance(pattern="flat", **(_HARD | {"clutter": 0})),
    # the second shift's looks: a blocky, cool source; a striped, warm-to-blue cast, blurred and hazy target
    "source_blocks": Appearance(pattern="blocks", brightness=1.0, clutter=3, noise_std=0.01, color_cast=(0.95, 1.0, 1.05)),
    "target_haze": Appearance(pattern="stripes", brightness=0.75, clutter=6, noise_std=0.04, color_cast=(0.85, 0.95, 1.15),
                              blur=1.0, haze=0.3),
}


def degrade(frame: np.ndarray, app: Appearance) -> np.ndarray:
    """Frames (..., H, W, 3) float in [0, 1] through ``app``'s optics: Gaussian blur (separable, per frame,
    edges repeated), then haze. Unchanged when both are 0."""
    if app.blur > 0:
        r = max(1, math.ceil(3 * app.blur))
        k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * app.blur**2))
        k /= k.sum()
        for axis in (frame.ndim - 3, frame.ndim - 2):
            pad = np.pad(frame, [(r, r) if a == axis else (0, 0) for a in range(frame.ndim)], mode="edge")
            frame = sum(k[i] * np.take(pad, range(i, i + frame.shape[axis]), axis=axis) for i in range(2 * r + 1))
    if app.haze > 0:
        frame = (1 - app.haze) * frame + app.haze * 0.6
    return frame


@dataclass(frozen=True)
class CameraMotion:
    """How the camera moves in one domain's videos; all zero (the default) is a static camera.

    Magnitudes are in the video's own pixels and seconds; directions are drawn per video:

    - ``pan_px_per_s``: a constant-velocity pan in a random direction, through the rest position at
      mid-video (so the actor, near the scene centre, stays mostly in view).
    - ``shake_px``: hand-held shake: per axis a smooth random offset (three sinusoids of 1.5-4 Hz with
      random phases), at most ``shake_px`` from the path.
    - ``zoom_per_s``: a zoom in or out: the image scale is ``exp(±zoom_per_s * (s - s_mid))`` about
      the frame centre, ``s`` a frame's time and ``s_mid`` midway between the first and last frame.
    """

    pan_px_per_s: float = 0.0
    shake_px: float = 0.0
    zoom_per_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pan_px_per_s", "shake_px", "zoom_per_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"camera motion {name} must be >= 0 (directions are drawn per video), got {getattr(self, name)}")

    @property
    def static(self) -> bool:
        return self.pan_px_per_s == 0 and self.shake_px == 0 and self.zoom_per_s == 0


@dataclass(frozen=True)
class DemoDataConfig:
    """What :func:`generate_demo_data` writes. ``videos_per_class`` counts per class and domain;
    ``source_camera`` and ``target_camera`` are each domain's camera motion (static by default);
    ``source_appearance`` and ``target_appearance`` name each domain's look in :data:`APPEARANCES`."""

    seed: int = 0
    classes: tuple[str, ...] = ("wave", "jump", "spin", "walk", "clap")
    videos_per_class: int = 12
    num_frames: int = 48
    width: int = 160
    height: int = 128
    fps: int = 15
    source_val_fraction: float = 0.25
    target_test_fraction: float = 0.5
    source_camera: CameraMotion = CameraMotion()
    target_camera: CameraMotion = CameraMotion()
    source_appearance: str = "source"
    target_appearance: str = "target"
    actor_radius: float = 0.11  # the actor disc's radius as a fraction of the frame height (drawn within +-10%)

    def __post_init__(self) -> None:
        for domain in DOMAINS:
            if self.appearance(domain) not in APPEARANCES:
                raise ValueError(f"demo_data.{domain}_appearance: unknown appearance {self.appearance(domain)!r}; "
                                 f"known: {sorted(APPEARANCES)}")
        unknown = [c for c in self.classes if c not in MOTIONS]
        if unknown:
            raise ValueError(f"demo_data.classes: unknown motion(s) {unknown}; known: {sorted(MOTIONS)}")
        if self.width % 2 or self.height % 2:
            raise ValueError(f"demo_data: width and height must be even for H.264, got {self.width}x{self.height}")
        if not 0.0 < self.actor_radius <= 0.5:
            raise ValueError(f"demo_data.actor_radius must be in (0, 0.5], got {self.actor_radius}")
        if self.videos_per_class < 2:
            raise ValueError("demo_data.videos_per_class must be >= 2 (each domain needs two splits)")
        for key, fraction in (("source_val_fraction", self.source_val_fraction), ("target_test_fraction", self.target_test_fraction)):
            held = max(1, round(self.videos_per_class * fraction))
            if not 0.0 < fraction < 1.0 or held >= self.videos_per_class:
                raise ValueError(f"demo_data.{key}={fraction} holds back {held} of demo_data.videos_per_class="
                                 f"{self.videos_per_class} videos per class, leaving none for training: use a fraction "
                                 "in (0, 1) that leaves at least one")

    def appearance(self, domain: str) -> str:
        return self.source_appearance if domain == "source" else self.target_appearance

    def camera(self, domain: str) -> CameraMotion:
        return self.source_camera if domain == "source" else self.target_camera

    @classmethod
    def preset(cls, name: str) -> "DemoDataConfig":
        """Named presets: ``tiny`` (tests, a few seconds) and ``demo`` (the default)."""
        presets = {
            "tiny": cls(classes=("wave", "jump", "walk"), videos_per_class=4, num_frames=16, width=64, height=48),
            "demo": cls(),
        }
        if name not in presets:
            raise ValueError(f"unknown demo-data preset {name!r}; known: {sorted(presets)}")
        return presets[name]


def _split_of(domain: str, index: int, n: int, cfg: DemoDataConfig) -> str:
    if domain == "source":
        n_val = max(1, round(n * cfg.source_val_fraction))
        return "val" if index >= n - n_val else "train"
    n_test = max(1, round(n * cfg.target_test_fraction))
    return "test" if index >= n - n_test else "train"


def _camera_path(cam: CameraMotion, cfg: DemoDataConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the camera's offset (T, 2) in pixels (x, y) and its image scale (T,).

    Every random draw happens whatever is switched on, so enabling shake keeps a video's pan direction.
    """
    s = np.arange(cfg.num_frames) / cfg.fps
    s = s - s.mean()  # the camera passes its rest position mid-video
    angle, zoom_sign = rng.uniform(0, 2 * math.pi), rng.choice([-1.0, 1.0])
    freqs, phases = rng.uniform(1.5, 4.0, (2, 3)), rng.uniform(0, 2 * math.pi, (2, 3))
    shake = np.sin(2 * math.pi * freqs[:, :, None] * s + phases[:, :, None]).sum(1).T  # (T, 2)
    shake *= cam.shake_px / max(np.abs(shake).max(), 1e-9)
    offset = cam.pan_px_per_s * s[:, None] * [math.cos(angle), math.sin(angle)] + shake
    return offset, np.exp(zoom_sign * cam.zoom_per_s * s)


def _camera_rng(cfg: DemoDataConfig, domain: str, label: str, index: int) -> np.random.Generator:
    """The random stream of one video's camera (its path first, then the clutter around the frame)."""
    return np.random.default_rng([cfg.seed, DOMAINS.index(domain), list(MOTIONS).index(label), index, 1])


def camera_path(cfg: DemoDataConfig, domain: str, label: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The camera of one video as :func:`render_video_and_mask` films it: per frame, the offset (T, 2)
    in pixels (x, y) and the image scale (T,). Frame t's pixel p shows the scene point
    ``c + (p - c) / scale[t] + offset[t]`` (c the frame centre, in the static camera's pixels)."""
    return _camera_path(cfg.camera(domain), cfg, _camera_rng(cfg, domain, label, index))


def _pattern(name: str, cell: int, rng: np.random.Generator) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """The periodic or blocky background pattern ``name`` (:class:`Appearance`): a function of pixel
    coordinates (x, y) -> levels in [0, 1] (float32); None for the smooth patterns. ``cell``: the
    ``checker`` cell; the other patterns draw their period and angle from ``rng``."""
    angle = rng.uniform(0, math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    if name == "checker":
        return lambda x, y: ((np.floor(y / cell) + np.floor(x / cell)) % 2).astype(np.float32)
    if name == "stripes":
        period = rng.uniform(6, 24)
        return lambda x, y: (np.floor((x * cos + y * sin) * (2 / period)) % 2).astype(np.float32)
    if name == "tilted_checker":
        side = rng.uniform(4, 12)
        return lambda x, y: ((np.floor((x * cos + y * sin) / side) + np.floor((y * cos - x * sin) / side)) % 2).astype(np.float32)
    if name == "blocks":
        side, levels = rng.integers(4, 11), rng.uniform(0, 1, (64, 64)).astype(np.float32)
        return lambda x, y: levels[(np.floor(y / side) % 64).astype(int), (np.floor(x / side) % 64).astype(int)]
    return None


def render_video_and_mask(cfg: DemoDataConfig, domain: str, label: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 (num_frames, height, width, 3) and actor mask bool (num_frames, height, width) of
    one video (the mask is true where the actor's disc covers at least half a pixel). Deterministic."""
    d_idx, c_idx = DOMAINS.index(domain), list(MOTIONS).index(label)
    rng = np.random.default_rng([cfg.seed, d_idx, c_idx, index])
    app, cam = APPEARANCES[cfg.appearance(domain)], cfg.camera(domain)
    h, w = cfg.height, cfg.width
    py, px = np.mgrid[0:h, 0:w].astype(np.float32)  # pixel coordinates; the scene is a function of them

    # The scene, in pixel coordinates of the static camera's frame (it extends beyond the frame).
    c0, c1 = rng.uniform(0.55, 0.95, 3), rng.uniform(0.55, 0.95, 3)
    cell = rng.integers(6, 14) if app.pattern == "checker" else 0
    boxes = [(rng.uniform(0, 0.85), rng.uniform(0, 0.85), rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2),
              rng.uniform(0.1, 0.9, 3)) for _ in range(app.clutter)]
    if not cam.static:  # a moving camera sees around the frame: more clutter there, from its own stream
        cam_rng = _camera_rng(cfg, domain, label, index)
        offset, zoom = _camera_path(cam, cfg, cam_rng)
        margin = [(cam_rng.uniform(-0.5, 1.35), cam_rng.uniform(-0.5, 1.35), cam_rng.uniform(0.05, 0.2),
                   cam_rng.uniform(0.05, 0.2), cam_rng.uniform(0.1, 0.9, 3)) for _ in range(3 * app.clutter)]

    pattern = _pattern(app.pattern, cell, np.random.default_rng([cfg.seed, d_idx, c_idx, index, 2]))

    def scene_at(px: np.ndarray, py: np.ndarray) -> np.ndarray:
        xx, yy = px / w, py / h
        if app.pattern in ("gradient", "flat"):
            scene = c0 * (1 - yy[..., None]) + c1 * yy[..., None]
            if app.pattern == "flat":
                scene = 0.96 * c0.mean() + 0.04 * scene
        else:
            level = pattern(px, py)[..., None]
            scene = c0 * level + (c1 * 0.6) * (1 - level)
        if not cam.static:
            outside = (xx < 0) | (xx >= 1) | (yy < 0) | (yy >= 1)
            for x0, y0, bw, bh, colour in margin:
                scene[outside & (xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)] = colour
        for x0, y0, bw, bh, colour in boxes:
            scene[(xx >= x0) & (xx < x0 + bw) & (yy >= y0) & (yy < y0 + bh)] = colour
        return scene * app.brightness * np.asarray(app.color_cast, dtype=np.float32)

    # The actor.
    actor_color = rng.uniform(0.0, 1.0, 3)
    light, dark = 0.3 + 0.7 * actor_color, 0.15 * actor_color  # stripes: visible on any scene
    radius = cfg.actor_radius * rng.uniform(0.9, 1.1)
    params = {"cx": rng.uniform(0.4, 0.6), "cy": rng.uniform(0.4, 0.6), "freq": rng.uniform(0.8, 1.2),
              "phase": rng.uniform(0, 2 * math.pi), "seed": int(rng.integers(1 << 31))}
    motion = MOTIONS[label]
    path = np.array([motion(t / cfg.fps, params) for t in range(cfg.num_frames)])  # (T, 3): cx, cy, scale
    # All frames at once, (T, H, W). The actor's per-frame numbers (Python floats in a frame loop) enter in
    # the dtype of the scene coordinates, as NumPy promotes a Python float against them (float32 for a static
    # camera, float64 for a moving one), so every pixel is computed with the same operations in the same
    # precision: the frames are bit-identical to rendering frame by frame.
    if cam.static:  # one scene for every frame, (1, H, W, 3); x varies along W only and y along H only
        fx, fy, z = px[:1], py[:, :1], np.float32(1.0)
        scene = scene_at(px, py)[None]
    else:  # the scene point each pixel sees: zoom about the frame centre, then offset
        z = zoom[:, None, None]
        fx, fy = w / 2 + (px - w / 2) / z + offset[:, 0, None, None], h / 2 + (py - h / 2) / z + offset[:, 1, None, None]
        scene = scene_at(fx, fy)
    xx, yy = fx / w, fy / h
    cx, cy, r = (v.astype(xx.dtype)[:, None, None] for v in (path[:, 0], path[:, 1], radius * path[:, 2]))
    dx, dy = (xx - cx) * xx.dtype.type(w / h), yy - cy
    dist = np.sqrt(dx * dx + dy * dy)
    disc = np.clip((r - dist) * h * z, 0.0, 1.0)  # anti-aliased edge (one pixel wide on screen)
    masks = disc >= 0.5  # (T, H, W)
    # Blend the actor in where it covers anything (elsewhere scene * (1 - 0) + colour * 0 is the scene).
    covered = disc > 0
    d, scene_shape = disc[covered][:, None], (cfg.num_frames, h, w, 3)
    stripe = np.sin(np.broadcast_to(dx, masks.shape)[covered] / np.broadcast_to(r, masks.shape)[covered] * xx.dtype.type(3)
                    * xx.dtype.type(math.pi)) > 0
    actor = np.broadcast_to(scene, scene_shape)[covered] * (1 - d) + np.where(stripe[:, None], light, dark) * d
    noise = rng.normal(0.0, app.noise_std, scene_shape)  # the same draws, in the same order, as frame by frame
    if app.blur > 0 or app.haze > 0:  # the optics act on whole frames: the actor blended in, then degraded
        clean = np.array(np.broadcast_to(scene, scene_shape), dtype=actor.dtype)
        clean[covered] = actor
        frames = noise + degrade(clean, app)
    else:
        frames = noise + scene
        frames[covered] = actor + noise[covered]
    frames *= 255.0
    frames += 0.5
    return np.clip(frames, 0, 255, out=frames).astype(np.uint8), masks


def render_video(cfg: DemoDataConfig, domain: str, label: str, index: int) -> np.ndarray:
    """Frames of one video, uint8 (num_frames, height, width, 3). Deterministic for its arguments."""
    return render_video_and_mask(cfg, domain, label, index)[0]


def write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    """Encode uint8 frames (T, H, W, 3) as an H.264 mp4 (yuv420p, near-lossless)."""
    import av
    from av.video.reformatter import Interpolation

    bit_exact = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
    with atomic_write(path, "wb") as f, av.open(f, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "veryfast"}
        stream.codec_context.thread_count = 1
        for frame in frames:
            # converted here, bit-exact, not by the encoder: its own conversion gave bytes that varied with where the
            # frame's buffer lies in memory (2-3 different files from 13 offsets). The encoded bytes can still differ
            # in rare runs (measured: 1 encode in 60, 0.35 grey levels apart on average), so the files are the same
            # video within the codec's rounding, not byte for byte.
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", threads=1,
                                                                                 interpolation=bit_exact)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def actor_mask_path(video: str | Path) -> Path:
    """Where the actor mask of a demo video lies: ``<video without suffix>.actor.npz``."""
    return Path(video).with_suffix(".actor.npz")


def write_actor_mask(mask: np.ndarray, video: str | Path) -> None:
    """Store a bool (T, H, W) actor mask beside ``video`` (bit-packed along W, compressed)."""
    with atomic_write(actor_mask_path(video), "wb") as f:
        np.savez_compressed(f, packed=np.packbits(mask, axis=-1), shape=np.asarray(mask.shape))


def load_actor_mask(video: str | Path) -> np.ndarray:
    """The actor mask of a demo video: bool (T, H, W), T = the video's frames, H x W its size."""
    path = actor_mask_path(video)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no actor mask for {video} (only generated demo videos have one)")
    with np.load(path) as f:
        t, h, w = f["shape"].tolist()
        return np.unpackbits(f["packed"], axis=-1, count=w).astype(bool).reshape(t, h, w)


# Rendered frame-pixels (videos x frames x height x width) below which generating in one process beats a
# process pool, whose workers take about half a second to start (Python, NumPy, PyAV).
POOL_MIN_PIXELS = 20_000_000


def _write_video(cfg: DemoDataConfig, output: Path, domain: str, label: str, index: int) -> dict:
    """Render one video, write it and its actor mask under ``output``; its manifest row."""
    rel = Path(domain) / label / f"{label}_{index:03d}.mp4"
    frames, mask = render_video_and_mask(cfg, domain, label, index)
    write_mp4(frames, output / rel, cfg.fps)
    write_actor_mask(mask, output / rel)
    return {"path": output.resolve() / rel, "label": label, "domain": domain,
            "split": _split_of(domain, index, cfg.videos_per_class, cfg)}


def generate_demo_data(cfg: DemoDataConfig, output: str | Path, workers: int | None = None) -> Path:
    """Write the video set, each video's actor mask and ``output/manifest.csv``; return the manifest path.

    A non-empty ``output`` that is not an earlier output of this function is refused. An earlier
    output made with the same config is reused as it is; one made with another config is replaced.
    ``workers``: processes rendering and encoding videos in parallel (None: one per usable core when there
    are at least :data:`POOL_MIN_PIXELS` to render, else 1). Every video depends only on ``cfg`` and its
    place in the set, so the frames, masks and manifest are the same whatever the number of workers (the videos
    within the codec's rounding: :func:`write_mp4`). The workers are spawned processes: a script that calls this
    with more than one must guard its entry point (``if __name__ == "__main__":``), as ``pipelines/`` and
    ``benchmarks/`` do.
    """
    output = Path(output)
    marker = output / MARKER
    config_json = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    manifest_path = output / "manifest.csv"
    if output.exists() and any(output.iterdir()):
        if not marker.is_file():
            raise FileExistsError(f"{output} is not empty and is not an lmft demo-data folder (no {MARKER}); "
                                  "choose an empty or new folder")
        if marker.read_text() == config_json and manifest_path.is_file():
            return manifest_path
        for child in output.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    output.mkdir(parents=True, exist_ok=True)
    marker.write_text(config_json)  # claim the folder first; the manifest, written last, marks completion
    videos = [(domain, label, i) for domain in DOMAINS for label in cfg.classes for i in range(cfg.videos_per_class)]
    if workers is None:
        big = len(videos) * cfg.num_frames * cfg.height * cfg.width >= POOL_MIN_PIXELS
        workers = len(os.sched_getaffinity(0)) if big else 1
    if workers < 1:
        raise ValueError(f"demo data: workers must be >= 1, got {workers}")
    write = functools.partial(_write_video, cfg, output)
    if workers == 1:
        rows = [write(*v) for v in videos]
    else:  # spawned, not forked: the caller may hold threads (Ray, torch)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = list(pool.map(write, *zip(*videos)))
    return write_manifest(rows, manifest_path)
