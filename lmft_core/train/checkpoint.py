"""Training checkpoints: written by rank 0 every epoch, read with ``torch.load(weights_only=True)``.

A checkpoint is a folder holding ``checkpoint.pt``: the learner's state (adapter = model and policy,
optimizer, scheduler, and under ``self_labels`` the self-training labels: None unless
``train.pseudo_labels`` uses them and they have been refreshed), the completed ``epoch`` and ``step``,
rank 0's RNG states, the resolved configuration, the classes and the clip geometry, and the policy's
values (mu, log sigma, sigma, baseline, step, tau_hat) in plain numbers (lists, one entry per segment 1..N_t-1,
for a per-segment policy). Beside it ``unsent_metrics.json``: the epoch's step and epoch metrics, sent
to MLflow once Ray has registered the checkpoint (:func:`save_unsent_metrics`,
:class:`lmft_core.train.ray_train.MetricSender`), so every step holds one value. The last epoch's checkpoint also holds ``evaluation.json``
(every selector's results on target-test). Only tensors, numbers, strings, lists and dicts are
stored, so ``weights_only=True`` loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmft_core.files import out_of_space
from lmft_core.model import ThresholdPolicy

CHECKPOINT_FILE = "checkpoint.pt"
UNSENT_METRICS_FILE = "unsent_metrics.json"
FORMAT = "lmft-train-checkpoint-v1"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: str | Path, learner_state: dict, policy: ThresholdPolicy, epoch: int, config: dict,
                    classes: list[str], clip: dict) -> Path:
    """Write ``folder/checkpoint.pt``; returns its path. A failed write is an ``OSError`` saying how much was written
    and how much space is free (torch's own message, "unexpected pos", says neither)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CHECKPOINT_FILE
    try:
        torch.save({"format": FORMAT, "learner": learner_state, "epoch": int(epoch), "step": int(policy.step),
                    "rng": rng_state(), "config": config, "classes": list(classes), "clip": dict(clip),
                    "policy": policy.values()}, path)
    except (RuntimeError, OSError) as e:  # torch's writer turns a failed write into "unexpected pos ..."
        raise out_of_space(path, "the checkpoint", path.stat().st_size if path.exists() else 0, e) from None
    return path


def save_unsent_metrics(folder: str | Path, rows: list[list]) -> None:
    """Write ``folder/unsent_metrics.json``: ``[key, value, timestamp_ms, step]`` rows not yet sent to MLflow."""
    (Path(folder) / UNSENT_METRICS_FILE).write_text(json.dumps(rows))


def resume(learner, checkpoint: dict | None, rank: int) -> int:
    """Load ``checkpoint`` (None: nothing to resume) into ``learner`` (its ``load_state_dict`` takes
    ``checkpoint["learner"]``) and restore rank 0's RNG; returns the epoch to start from."""
    if checkpoint is None:
        return 0
    learner.load_state_dict(checkpoint["learner"])
    if rank == 0:
        set_rng_state(checkpoint["rng"])
    return int(checkpoint["epoch"])


def load_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The contents of ``folder/checkpoint.pt`` (or of the file itself), loaded with ``weights_only=True``."""
    path = Path(folder)
    path = path / CHECKPOINT_FILE if path.is_dir() else path
    state = torch.load(path, map_location=map_location, weights_only=True)
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an lmft training checkpoint (format {state.get('format')!r}, expected {FORMAT!r})")
    return state
