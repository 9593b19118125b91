"""Ground truth for motion energy on demo videos: which tokens show the actor, and how well energy finds them.

**Actor coverage** of a token: the fraction of its tubelet (``tubelet`` frames x ``patch`` x
``patch`` clip pixels) that the actor covers. The video's pixel mask
(:func:`lmft_core.demo_data.load_actor_mask`) is sampled and resized exactly as preprocessing samples
and resizes the frames (:func:`~lmft_core.video.sample_frame_indices`, then
:func:`~lmft_core.video.resize_frames`: short side to ``image_size``, bilinear and antialiased,
centre crop), as values in [0, 1], and averaged over each tubelet. An **actor token** is a token
whose actor coverage is at least ``min_coverage`` (default :data:`MIN_COVERAGE` = 0.1: about 51 of a
2x16x16 tubelet's 512 pixels), so a token that the actor's edge only grazes does not count.

How well an energy map finds the actor, per clip, over the tokens of segments 1..N_t-1 (the first
segment is always kept, with energy 1, so it carries no ranking):

- :func:`recall_at_keep`: **actor-token recall at keep ratio k**: keep the ``round(k * N')``
  highest-energy of the ``N'`` tokens; the fraction of actor tokens kept. Tokens tied at the cut
  share the remaining places in proportion (the expectation over random tie breaking).
- :func:`r_precision`: **R-precision**: keep exactly as many tokens as there are actor tokens; the
  fraction of them that are actor tokens (1 = perfect whatever the actor's size; recall at a fixed
  keep ratio has a ceiling below 1 when the actor covers more tokens than kept).
- :func:`roc_auc`: the probability that a random actor token has higher energy than a random other
  token (ties count 1/2): 1 = energy ranks every actor token first, 0.5 = chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmft_core.config import ClipConfig
from lmft_core.demo_data import DemoDataConfig, camera_path, load_actor_mask
from lmft_core.video import resize_frames, sample_frame_indices

MIN_COVERAGE = 0.1


def token_coverage(mask: np.ndarray, clip: ClipConfig) -> np.ndarray:
    """Actor coverage per token: bool (T_video, H, W) pixel mask -> float32 (N_t, N_h, N_w) in [0, 1]."""
    indices, _ = sample_frame_indices(mask.shape[0], clip.num_frames)
    gray = mask[indices].astype(np.uint8) * 255
    resized = resize_frames(np.repeat(gray[..., None], 3, axis=-1), clip.image_size)[..., 0]
    n_t, n_h, n_w = clip.grid
    tubelets = resized.reshape(n_t, clip.tubelet, n_h, clip.patch, n_w, clip.patch)
    return (tubelets.mean(axis=(1, 3, 5), dtype=np.float64) / 255.0).astype(np.float32)


def actor_tokens(video: str | Path, clip: ClipConfig, min_coverage: float = MIN_COVERAGE) -> np.ndarray:
    """bool (N_t, N_h, N_w): the actor tokens of a demo video's clip (module docstring)."""
    return token_coverage(load_actor_mask(video), clip) >= min_coverage


def _ranked(energy: np.ndarray, actor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy and actor flags of the tokens after the first segment, flattened."""
    if energy.shape != actor.shape:
        raise ValueError(f"energy {energy.shape} and actor mask {actor.shape} differ in shape")
    return energy[1:].ravel().astype(np.float64), actor[1:].ravel().astype(bool)


def recall_at_keep(energy: np.ndarray, actor: np.ndarray, keep: float) -> float:
    """Actor-token recall when the ``keep`` fraction of tokens with the highest energy is kept.

    ``energy`` float (N_t, N_h, N_w), ``actor`` bool (N_t, N_h, N_w); segment 0 is left out (module
    docstring). NaN when no token after the first segment is an actor token.
    """
    e, a = _ranked(energy, actor)
    if not a.any():
        return float("nan")
    k = int(round(keep * e.size))
    if k == 0:
        return 0.0
    cut = np.sort(e)[::-1][k - 1]
    above, tied = e > cut, e == cut
    places = k - above.sum()
    kept = (a & above).sum() + (a & tied).sum() * places / tied.sum()
    return float(kept / a.sum())


def r_precision(energy: np.ndarray, actor: np.ndarray) -> float:
    """Precision when keeping as many highest-energy tokens as there are actor tokens (ties shared, as
    :func:`recall_at_keep`); same inputs. NaN when no token after the first segment is an actor token."""
    e, a = _ranked(energy, actor)
    return recall_at_keep(energy, actor, a.sum() / e.size) if a.any() else float("nan")


def camera_motion_truth(cfg: DemoDataConfig, domain: str, label: str, index: int, clip: ClipConfig) -> np.ndarray:
    """The camera's motion between adjacent tubelets of a demo video's clip, as
    :mod:`lmft_core.camera_motion` models it: float32 (N_t - 1, 3) rows (s, t_y, t_x), translations
    in clip pixels. A tubelet stands at the mean offset and scale of its frames
    (:func:`lmft_core.demo_data.camera_path`); exact for a steady camera, an approximation where the
    camera moves unevenly within a tubelet (its mean then blurs)."""
    offset, scale = camera_path(cfg, domain, label, index)
    indices, _ = sample_frame_indices(cfg.num_frames, clip.num_frames)
    offset = offset[indices].reshape(-1, clip.tubelet, 2).mean(1)
    scale = scale[indices].reshape(-1, clip.tubelet).mean(1)
    t = (clip.image_size / min(cfg.height, cfg.width)) * scale[:-1, None] * (offset[1:] - offset[:-1])  # (x, y)
    return np.stack([scale[:-1] / scale[1:], t[:, 1], t[:, 0]], 1).astype(np.float32)


def roc_auc(energy: np.ndarray, actor: np.ndarray) -> float:
    """ROC AUC of energy as a score for actor tokens (Mann-Whitney U with tie-averaged ranks).

    Same inputs as :func:`recall_at_keep`; NaN when the tokens after segment 0 are all actor or all not.
    """
    e, a = _ranked(energy, actor)
    n_pos, n_neg = a.sum(), (~a).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(e, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # ranks 1..n; a tie group shares its mean rank
    ranks = (first_rank + (counts - 1) / 2.0)[inverse]
    return float((ranks[a].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
