"""Plots a person reads faster than tables: the threshold over training, kept tokens over frames, confusion.

Each function returns a matplotlib figure (Agg backend, no display needed); :func:`save` writes PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def threshold_over_training(history: Mapping[str, Sequence[tuple[int, float]]]):
    """Top: sampled tau and tau_hat per step (with a per-segment policy: their means over segments and
    tau_hat of each segment, thin); bottom: discard rate per domain per step.

    ``history`` maps metric names (``train/tau``, ``train/tau_hat``, ``train/tau_hat/seg<t>``,
    ``train/mu``, ``train/discard_rate_source``, ``train/discard_rate_target``) to (step, value) pairs.
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    segments = sorted((k for k in history if k.startswith("train/tau_hat/seg") and history[k]),
                      key=lambda k: int(k.rsplit("seg", 1)[1]))
    for key, label, style in (("train/tau", "sampled τ", dict(alpha=0.35, lw=0.8)), ("train/tau_hat", "τ̂ (test time)", dict(lw=2))):
        pts = history.get(key) or []
        if pts:
            if segments:
                label = label[:-1] + ", mean of segments)" if label.endswith(")") else label + " (mean of segments)"
            top.plot(*zip(*pts), label=label, **style)
    for key in segments:
        top.plot(*zip(*history[key]), label=f"τ̂ segment {key.rsplit('seg', 1)[1]}", lw=0.9)
    top.set_ylabel("threshold")
    top.set_ylim(0, 1)
    top.legend(loc="best")
    for key, label in (("train/discard_rate_source", "source"), ("train/discard_rate_target", "target")):
        pts = history.get(key) or []
        if pts:
            bottom.plot(*zip(*pts), label=label)
    bottom.set_ylabel("discard rate")
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("optimizer step")
    bottom.legend(loc="best")
    fig.suptitle("Learned threshold and discard rate over training")
    return fig


def clip_title(video_id: str, predicted: str, confidence: float, keep_ratio: float, true: str | None = None) -> str:
    """The label of one clip in a kept-token picture: id, prediction with its confidence, keep ratio (and the
    true class where known)."""
    truth = "" if true is None else f"   true: {true}"
    return f"{video_id}   predicted: {predicted} ({confidence:.2f})   kept {keep_ratio:.0%} of tokens{truth}"


def overlay(frame: np.ndarray, keep: np.ndarray, patch: int) -> np.ndarray:
    """``frame`` uint8 (S, S, 3) as floats in [0, 1] with the dropped tokens' pixels darkened to 35%;
    ``keep`` bool (N_h, N_w) with N_h * patch = S."""
    up = np.kron(keep.astype(np.float32), np.ones((patch, patch), np.float32))[..., None]
    return frame.astype(np.float32) / 255.0 * (0.35 + 0.65 * up)


def kept_tokens(frames: np.ndarray, energy: np.ndarray, keep: np.ndarray, titles: Sequence[str], patch: int, tubelet: int,
                title: str = "Motion energy (heat) and kept tokens (outlined)"):
    """One row per clip (``titles[i]`` above it: :func:`clip_title`), one column per temporal segment: the
    segment's first frame, its motion energy as a heat overlay, dropped tokens darkened (:func:`overlay`) and
    kept tokens outlined in cyan; a colour bar of the energy on the right.

    ``frames`` uint8 (B, T, S, S, 3), ``energy`` (B, N_t, N_h, N_w), ``keep`` bool (B, N_t, N_h, N_w).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    b, n_t = energy.shape[:2]
    fig, axes = plt.subplots(b, n_t, figsize=(1.6 * n_t + 1.2, 1.95 * b + 0.5), squeeze=False)
    for i in range(b):
        for t in range(n_t):
            ax = axes[i][t]
            ax.imshow(overlay(frames[i, t * tubelet], keep[i, t], patch))
            ax.imshow(np.kron(energy[i, t], np.ones((patch, patch))), cmap="inferno", alpha=0.35, vmin=0, vmax=1)
            for (h, w) in zip(*np.nonzero(keep[i, t])):
                ax.add_patch(plt.Rectangle((w * patch - 0.5, h * patch - 0.5), patch, patch, fill=False, ec="cyan", lw=0.6))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == b - 1:
                ax.set_xlabel(f"segment {t}", fontsize=7)
        axes[i][0].text(0, 1.04, titles[i], transform=axes[i][0].transAxes, fontsize=7, ha="left", va="bottom")
    fig.colorbar(ScalarMappable(Normalize(0, 1), "inferno"), ax=axes, fraction=0.025, pad=0.02, label="motion energy")
    fig.suptitle(title)
    return fig


def reconstruction(original: np.ndarray, visible: np.ndarray, reconstructed: np.ndarray, tubelet: int, patch: int,
                   title: str):
    """Three rows per clip (original; visible tokens, the masked ones grey; reconstruction), one column per
    temporal segment (its first frame). ``original``/``reconstructed`` uint8 (B, T, S, S, 3), ``visible`` bool
    (B, N_t, N_h, N_w)."""
    b, n_t = visible.shape[:2]
    fig, axes = plt.subplots(3 * b, n_t, figsize=(1.4 * n_t, 1.45 * 3 * b), squeeze=False)
    for i in range(b):
        for t in range(n_t):
            up = np.kron(visible[i, t].astype(np.float32), np.ones((patch, patch)))[..., None]
            img = original[i, t * tubelet].astype(np.float32) / 255.0
            rows = (img, img * up + 0.5 * (1 - up), reconstructed[i, t * tubelet].astype(np.float32) / 255.0)
            for r, picture in enumerate(rows):
                ax = axes[3 * i + r][t]
                ax.imshow(picture)
                ax.set_xticks([])
                ax.set_yticks([])
        for r, label in enumerate(("original", "visible", "reconstructed")):
            axes[3 * i + r][0].set_ylabel(f"clip {i}: {label}", fontsize=7)
    for t in range(n_t):
        axes[0][t].set_title(f"t={t}", fontsize=8)
    fig.suptitle(title)
    return fig


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str):
    """Confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    m = np.asarray(matrix)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.55 * k))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def sweep_scatter(table: Sequence[Mapping], params: Sequence[str], accuracy_key: str, best: str):
    """Target-test accuracy against discard rate, one point per sweep trial (the selected one starred),
    labelled with its swept settings ``params`` (their keys without the section); trials stopped early are hollow."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in table:
        if row.get(accuracy_key) is None or row.get("discard_rate") is None:
            continue
        done = row["status"] == "completed"
        ax.scatter(row["discard_rate"], row[accuracy_key], s=160 if row["trial"] == best else 50,
                   marker="*" if row["trial"] == best else "o", facecolors=None if done else "none",
                   edgecolors="C0" if not done else None, color="C1" if row["trial"] == best else "C0")
        label = " ".join(f"{p.partition('.')[2]}={row[p]}" for p in params)
        ax.annotate(label, (row["discard_rate"], row[accuracy_key]),
                    fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("discard rate on target-test (τ̂)")
    ax.set_ylabel("target-test top-1 (reading only, not used to select)")
    ax.set_title("Sweep: target accuracy against discard rate (★ selected trial; hollow: stopped early)")
    return fig


def accuracy_vs_discard(points: Sequence[Mapping]):
    """Target-test top-1 against discard rate. ``points``: ``training`` (the run: ``adapted`` or ``baseline``),
    ``selector`` (the selector it was evaluated with), ``own`` (whether that is the run's training selector),
    ``discard_rate``, ``top1``. Each training's own result is a large filled marker; the same model evaluated
    with other selectors, small hollow ones."""
    fig, ax = plt.subplots(figsize=(7, 5))
    colours = {}
    for p in points:
        colour = colours.setdefault(p["training"], f"C{len(colours)}")
        own = p["own"]
        ax.scatter(p["discard_rate"], p["top1"], s=120 if own else 40, color=colour if own else "none", edgecolors=colour,
                   marker="o", zorder=3 if own else 2)
        ax.annotate(p["selector"], (p["discard_rate"], p["top1"]),
                    fontsize=7 if own else 6, xytext=(4, 4), textcoords="offset points")
    for training, colour in colours.items():
        ax.scatter([], [], color=colour, label=f"{training} (filled: trained with; hollow: other selectors at test)")
    ax.set_xlim(-0.05, 1.0)
    ax.set_xlabel("discard rate on target-test (fraction of tokens dropped)")
    ax.set_ylabel("target-test top-1")
    ax.legend(loc="best", fontsize=7)
    ax.set_title("Accuracy against discarded tokens, per training of this workflow")
    return fig
