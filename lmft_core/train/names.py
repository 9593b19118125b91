"""Names that a training's writers and its readers share, each defined once: metric names and checkpoint folders.

Evaluation metrics are ``<split>/<selector label>/<key>``: :data:`EVAL_TARGET` (every evaluated selector on
target-test, each evaluation epoch), :data:`EVAL_SOURCE_VAL` (the training selector on source-val) and
:data:`FINAL_TARGET` (target-test at the end, in the run's final metrics), with the keys :data:`EVAL_KEYS`.

The metric-name contract: every training also logs its own selector's target-test evaluation under names that
carry no selector, ``target_test/<key>`` (:func:`result_metric`), at each evaluation epoch; the selector is the
run's tag ``lmft.selector``. So MLflow's charts overlay an adapted training and its baselines, and the workflow's
parent run carries the adapted model's under the same names (its baselines' as ``baseline/<selector>/<key>``).
"""

from __future__ import annotations

EVAL_TARGET = "eval_target"
EVAL_SOURCE_VAL = "eval_source_val"
FINAL_TARGET = "final/target"
EVAL_KEYS = ("top1", "mean_class_accuracy", "discard_rate", "gflops_per_clip", "clips_per_s", "entropy_nats", "exit_rate")
RESULT = "target_test"  # the run's own selector on target-test: the same names in every training
POLICY = "policy"  # the learned threshold's values after each epoch: policy/mu, policy/tau_hat, ...
TAU_HAT = f"{POLICY}/tau_hat"


def eval_metric(split: str, selector: str, key: str) -> str:
    """The metric name of ``key`` (one of :data:`EVAL_KEYS`) for ``selector`` on ``split``, e.g.
    ``eval_target/lmft/top1``."""
    return f"{split}/{selector}/{key}"


def result_metric(key: str) -> str:
    """The selector-free name of ``key`` (one of :data:`EVAL_KEYS`) of a run's own selector on target-test, e.g.
    ``target_test/top1``: the same in every training (module docstring)."""
    return f"{RESULT}/{key}"


def checkpoint_dir(epoch: int) -> str:
    """The folder name of the checkpoint reported after ``epoch`` (1-based) in a run's Ray Train storage."""
    return f"epoch_{epoch:04d}"
