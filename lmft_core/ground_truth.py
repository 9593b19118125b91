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
- :func:`roc_auc`: the probability that a random actor token has higher energy than a random other
  token (ties count 1/2): 1 = energy ranks every actor token first, 0.5 = chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmft_core.config import ClipConfig
from lmft_core.demo_data import load_actor_mask
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
