"""After a fit, on the driver: the run's artifacts, final metrics and logged model.

Artifacts of a training run (MLflow paths):

- ``config/resolved.json`` (every component's configuration as the run used it) and the profile file;
- ``policy/policy.json``: mu, log sigma, sigma, baseline, step and tau_hat of the learned threshold
  (lists, one entry per temporal segment 1..N_t-1, for ``lmft-segment``; the model's metadata likewise);
- ``evaluation/evaluation.json`` (every selector on target-test) and ``evaluation/efficiency.md``;
- ``plots/threshold.png`` (tau and discard rates over training; tau_hat per segment for ``lmft-segment``), ``plots/kept_tokens.png`` (energy and
  kept tokens over the frames of a few target-test clips), ``plots/confusion.png``;
- ``model``: the classifier (model and policy, tau_hat inside), ``mlflow.pytorch`` pickle format with the
  lmft_core package as code, so ``lmft_core.model_store.load_model(uri, tracking_uri)`` gives a module whose
  ``predict(frames uint8 (B, T, S, S, 3), energy (B, N_t, N_h, N_w))`` returns class probabilities.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lmft_core
from lmft_core.files import JsonRecord
from lmft_core.model import flat_metrics
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.reader import ShardSet, read_batches
from lmft_core.train.checkpoint import load_checkpoint
from lmft_core.train.evaluate import EvalResult, efficiency_table
from lmft_core.train.loop import EVALUATION_FILE, TrainJob
from lmft_core.train.names import FINAL_TARGET

RESULT_FILE = "result.json"  # a finished run's TrainResult, in its run folder
RUN_ID_FILE = "mlflow_run_id"  # the id of the MLflow run a training or pretraining logs into, in its run folder
HISTORY_KEYS = ("train/tau", "train/tau_hat", "train/mu", "train/discard_rate_source", "train/discard_rate_target")


@dataclass(frozen=True)
class TrainResult(JsonRecord):
    """What a finished run left: its name and folder, MLflow run, final checkpoint, logged model, evaluation."""

    run_name: str
    run_dir: str
    mlflow_run_id: str
    tracking_uri: str
    checkpoint: str
    model_uri: str
    tau_hat: float | list[float]  # per temporal segment 1..N_t-1 for lmft-segment
    evaluation: dict
    train_clips_per_s: float
    elapsed_s: float



def load_classifier(job: TrainJob, checkpoint: str | Path) -> LMFTClassifier:
    """The adapter of ``job`` with the weights of ``checkpoint``, on CPU, in eval mode."""
    state = load_checkpoint(checkpoint)
    adapter = job.build_classifier()
    adapter.load_state_dict(state["learner"]["adapter"])
    return adapter.eval()


def log_model(adapter: LMFTClassifier, run_id: str, tracking_uri: str, metadata: dict) -> str:
    """Log ``adapter`` as the run's ``model``; returns its ``models:/`` URI."""
    import mlflow

    from lmft_core.tracking import using_tracking_uri

    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(adapter, name="model", serialization_format="pickle",
                                        code_paths=[str(Path(lmft_core.__file__).parent)], pip_requirements=reqs,
                                        metadata=metadata)
    return info.model_uri


def log_artifacts(job: TrainJob, shards: ShardSet, run, name: str, run_dir: Path, checkpoint: Path, profile_path: Path,
                  elapsed_s: float) -> TrainResult:
    """Write and log the artifacts of the finished run ``name`` of ``job`` on ``shards`` (opened); returns its result."""
    from lmft_core.train import plots

    adapter = load_classifier(job, checkpoint)
    evaluation = json.loads((checkpoint / EVALUATION_FILE).read_text())
    results = {k: EvalResult(**v) for k, v in evaluation.items()}
    policy = adapter.policy.values()
    out = run_dir / "artifacts"
    files = {
        "config": [_write(out / "resolved.json", json.dumps(job.config, indent=2)), profile_path],
        "policy": [_write(out / "policy.json", json.dumps(policy, indent=2))],
        "evaluation": [_write(out / "evaluation.json", json.dumps(evaluation, indent=2)),
                       _write(out / "efficiency.md", efficiency_table(results, _efficiency_note(job)))],
    }
    tau_hat = flat_metrics({"tau_hat": policy["tau_hat"]})  # tau_hat, or tau_hat/seg<t> per segment
    per_segment = [k for k in tau_hat if k != "tau_hat"]
    keys = HISTORY_KEYS + tuple(f"train/{k}" for k in per_segment)
    history = {k: [(m.step, m.value) for m in run.client.get_metric_history(run.run_id, k)] for k in keys}
    sample = next(read_batches(shards, "target", "test", 4))
    with torch.no_grad():
        keep = adapter.selection(sample.energy, video=sample.video()).keep
    titles = [f"{job.classes[y]}" if y >= 0 else "?" for y in sample.label.tolist()]
    main = results[job.selector.label]
    files["plots"] = [
        plots.save(plots.threshold_over_training(history), out / "threshold.png"),
        plots.save(plots.kept_tokens(sample.frames.numpy(), sample.energy.numpy(), keep.numpy(), titles,
                                     job.model.clip.patch, job.model.clip.tubelet), out / "kept_tokens.png"),
        plots.save(plots.confusion(main.confusion, job.classes, f"target-test, {main.selector} (top-1 {main.top1:.3f})"),
                   out / "confusion.png"),
    ]
    for folder, paths in files.items():
        for p in paths:
            run.log_artifact(p, folder)
    epochs = [m.value for m in run.client.get_metric_history(run.run_id, "epoch/clips_per_s")]
    clips_per_s = float(np.mean(epochs)) if epochs else float("nan")
    run.log_metrics({**{f"final/{k}": v for k, v in tau_hat.items()},
                     "final/train_clips_per_s": clips_per_s,
                     **{k: v for r in results.values() for k, v in r.metrics(FINAL_TARGET).items()}}, step=int(policy["step"]))
    metadata = {"classes": list(job.classes), "clip": dataclasses.asdict(job.model.clip), "tau_hat": policy["tau_hat"],
                "selector": dataclasses.asdict(job.selector), "shards": job.shards,
                "energy": shards.metadata.get("energy", {"variant": "diff"})}
    model_uri = log_model(adapter, run.run_id, job.tracking_uri, metadata)
    return TrainResult(run_name=name, run_dir=str(run_dir), mlflow_run_id=run.run_id, tracking_uri=job.tracking_uri,
                       checkpoint=str(checkpoint), model_uri=model_uri, tau_hat=policy["tau_hat"], evaluation=evaluation,
                       train_clips_per_s=clips_per_s, elapsed_s=elapsed_s)


def _efficiency_note(job: TrainJob) -> str:
    return (f"Target-test clips, each selector on the same trained model (trained with `{job.selector.label}`); "
            "LMFT uses tau_hat. GFLOPs: analytic forward FLOPs per clip (2 per multiply-add); clips/s: forward only.")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
