"""After a fit, on the driver: the run's artifacts, final metrics and logged model.

Artifacts of a training run (MLflow paths):

- ``config/resolved.json`` (every component's configuration as the run used it) and the profile file;
- ``policy/policy.json``: mu, log sigma, sigma, baseline, step and tau_hat of the learned threshold
  (lists, one entry per temporal segment 1..N_t-1, for ``lmft-segment``; the model's metadata likewise);
- ``evaluation/evaluation.json`` (every selector on target-test) and ``evaluation/efficiency.md``;
- ``plots/threshold.png`` (tau and discard rates over training; tau_hat per segment for ``lmft-segment``), ``plots/kept_tokens.png`` (energy and
  kept tokens over the frames of target-test clips of several classes, each with its id, prediction, confidence and
  keep ratio), ``plots/confusion.png``; a run without a threshold (``full``, ``random`` at a fixed rate) has no
  policy, tau_hat or threshold plot, and a full-token run no kept-token figure;
- the logged model ``classifier-<selector>``: the classifier (model and policy, tau_hat inside), ``mlflow.pytorch``
  pickle format with the lmft_core package as code, a signature (``frames``, ``energy`` -> ``probs``), one target-test
  clip as input example, its selector and tau_hat as params and its result (``target_test/*``) as its metrics, so
  ``lmft_core.model_store.load_model(uri, tracking_uri)`` gives a module whose
  ``predict(frames uint8 (B, T, S, S, 3), energy (B, N_t, N_h, N_w))`` returns class probabilities.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import lmft_core
from lmft_core.files import JsonRecord
from lmft_core.model import flat_metrics
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.reader import ShardSet, read_batches
from lmft_core.tracking import NOTE
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


def log_model(adapter: LMFTClassifier, run_id: str, tracking_uri: str, metadata: dict, example: dict[str, np.ndarray],
              params: dict) -> tuple[str, str]:
    """Log ``adapter`` in run ``run_id`` as the logged model ``classifier-<selector label>`` (distinct per training
    of a workflow) with a signature and ``example`` (``frames``, ``energy`` of one clip) as its input example and
    ``params`` shown on its page; returns its ``models:/`` URI and model id. The pytorch flavour's pyfunc serves
    one array only, so MLflow's check that serves the example at logging fails; its warning is dropped (the model's
    API is ``predict(frames, energy)``, module docstring)."""
    import logging

    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from lmft_core.tracking import using_tracking_uri

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *example["frames"].shape[1:]), "frames"),
                       TensorSpec(np.dtype(np.float32), (-1, *example["energy"].shape[1:]), "energy")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(adapter.classes)), "probs")]))
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
    serving_check = logging.getLogger("mlflow.models.model")
    drop = logging.Filter()
    drop.filter = lambda record: not record.getMessage().startswith("Failed to validate serving input example")
    serving_check.addFilter(drop)
    try:
        with using_tracking_uri(tracking_uri), mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(adapter, name=logged_model_name(adapter.selector_config.label),
                                            serialization_format="pickle", code_paths=[str(Path(lmft_core.__file__).parent)],
                                            pip_requirements=reqs, metadata=metadata, signature=signature,
                                            input_example=example, params={k: str(v) for k, v in params.items()})
    finally:
        serving_check.removeFilter(drop)
    return info.model_uri, info.model_id


def logged_model_name(label: str) -> str:
    """The logged model's name for a selector ``label``: ``classifier-<label>``, with the characters MLflow refuses in a
    logged model's name (``/ : . % " '``) as ``-`` (``lmft.first-next`` -> ``classifier-lmft-first-next``)."""
    return "classifier-" + re.sub(r"[/:.%\"']", "-", label)


def picture_clips(shards: ShardSet, classes: tuple[str, ...], n: int) -> list[str]:
    """Up to ``n`` target-test video ids covering as many classes as there are: the first clip of each class in
    turn (unlabelled clips last)."""
    table = shards.read("target", "test", ["video_id", "label_index"])
    by_class: dict[int, list[str]] = {}
    for vid, y in zip(table.column("video_id").to_pylist(), table.column("label_index").to_pylist()):
        by_class.setdefault(-1 if y is None else int(y), []).append(vid)
    order = sorted(by_class, key=lambda y: (y < 0, y))
    chosen: list[str] = []
    for rank in range(max((len(v) for v in by_class.values()), default=0)):
        chosen += [by_class[y][rank] for y in order if rank < len(by_class[y])]
    return chosen[:n]


def kept_tokens_figure(adapter: LMFTClassifier, shards: ShardSet, classes: tuple[str, ...], clip, n: int = 6):
    """The kept-token figure of ``n`` target-test clips of several classes (:func:`picture_clips`), each labelled with
    its id, the model's prediction and confidence, its keep ratio and true class; also returns one clip as the model's
    input example (``frames`` uint8 (1, T, S, S, 3), ``energy`` float32 (1, N_t, N_h, N_w))."""
    from lmft_core.shards.reader import video_key
    from lmft_core.train import plots

    ids = picture_clips(shards, classes, n)
    batch = next(read_batches(shards, "target", "test", len(ids), video_ids=ids))
    by_key = {video_key(v): v for v in ids}
    with torch.no_grad():
        out = adapter.predict(batch.frames, batch.energy)
        keep = adapter.selection(batch.energy.float(), video=batch.video()).keep  # adafocus reads the clips
    titles = [plots.clip_title(by_key[int(k)], classes[int(p)], float(c[int(p)]), float(r), classes[int(y)] if y >= 0 else None)
              for k, p, c, r, y in zip(batch.key, out["label"], out["probs"], out["keep_ratio"], batch.label)]
    fig = plots.kept_tokens(batch.frames.numpy(), batch.energy.numpy(), keep.numpy(), titles, clip.patch, clip.tubelet,
                            f"Target-test clips: motion energy (heat) and kept tokens (outlined), {adapter.selector_config.label}")
    return fig, {"frames": batch.frames[:1].numpy(), "energy": batch.energy[:1].numpy().astype(np.float32)}


def log_artifacts(job: TrainJob, shards: ShardSet, run, name: str, run_dir: Path, checkpoint: Path, profile_path: Path,
                  elapsed_s: float) -> TrainResult:
    """Write and log the artifacts of the finished run ``name`` of ``job`` on ``shards`` (opened); returns its result.
    A run whose selector draws on no threshold (``full``, ``random`` at a fixed rate) logs no policy, tau_hat or
    threshold plot, and a full-token run no kept-token figure."""
    from lmft_core.train import plots

    adapter = load_classifier(job, checkpoint)
    evaluation = json.loads((checkpoint / EVALUATION_FILE).read_text())
    results = {k: EvalResult(**v) for k, v in evaluation.items()}
    policy = adapter.policy.values()
    threshold = job.selector.uses_policy
    out = run_dir / "artifacts"
    files = {
        "config": [_write(out / "resolved.json", json.dumps(job.config, indent=2)), profile_path],
        "policy": [_write(out / "policy.json", json.dumps(policy, indent=2))] if threshold else [],
        "evaluation": [_write(out / "evaluation.json", json.dumps(evaluation, indent=2)),
                       _write(out / "efficiency.md", efficiency_table(results, _efficiency_note(job)))],
    }
    tau_hat = flat_metrics({"tau_hat": policy["tau_hat"]}) if threshold else {}  # tau_hat, or tau_hat/seg<t> per segment
    main = results[job.selector.label]
    figure, example = kept_tokens_figure(adapter, shards, job.classes, job.model.clip)
    files["plots"] = [plots.save(plots.confusion(main.confusion, job.classes,
                                                 f"target-test, {main.selector} (top-1 {main.top1:.3f})"), out / "confusion.png")]
    if job.selector.name != "full":
        files["plots"].append(plots.save(figure, out / "kept_tokens.png"))
    else:
        plots.plt.close(figure)
    if threshold:
        keys = HISTORY_KEYS + tuple(f"train/{k}" for k in tau_hat if k != "tau_hat")
        history = {k: [(m.step, m.value) for m in run.client.get_metric_history(run.run_id, k)] for k in keys}
        files["plots"].append(plots.save(plots.threshold_over_training(history), out / "threshold.png"))
    for folder, paths in files.items():
        for p in paths:
            run.log_artifact(p, folder)
    epochs = [m.value for m in run.client.get_metric_history(run.run_id, "epoch/clips_per_s")]
    clips_per_s = float(np.mean(epochs)) if epochs else float("nan")
    step = int(policy["step"])
    run.log_metrics({k: v for r in results.values() for k, v in r.metrics(FINAL_TARGET).items()}, step=step)
    metadata = {"classes": list(job.classes), "clip": dataclasses.asdict(job.model.clip), "tau_hat": policy["tau_hat"],
                "selector": dataclasses.asdict(job.selector), "shards": job.shards,
                "energy": shards.metadata.get("energy", {"variant": "diff"})}
    model_uri, model_id = log_model(adapter, run.run_id, job.tracking_uri, metadata, example,
                                    {"selector": job.selector.label, "classes": ", ".join(job.classes), "run": name,
                                     **({"tau_hat": json.dumps(policy["tau_hat"])} if threshold else {})})
    # the model's page shows its result: the run's own selector on target-test, tau_hat, training speed
    run.log_metrics({**main.result_metrics(), **{f"final/{k}": v for k, v in tau_hat.items()},
                     "final/train_clips_per_s": clips_per_s, "final/train_elapsed_s": elapsed_s}, step=step, model_id=model_id)
    run.client.set_logged_model_tags(model_id, {NOTE: model_description(main, policy["tau_hat"] if threshold else None,
                                                                        name, job.classes, model_uri, job.tracking_uri)})
    return TrainResult(run_name=name, run_dir=str(run_dir), mlflow_run_id=run.run_id, tracking_uri=job.tracking_uri,
                       checkpoint=str(checkpoint), model_uri=model_uri, tau_hat=policy["tau_hat"], evaluation=evaluation,
                       train_clips_per_s=clips_per_s, elapsed_s=elapsed_s)


def model_description(main: EvalResult, tau_hat, run_name: str, classes: tuple[str, ...], model_uri: str,
                      tracking_uri: str) -> str:
    """The logged model's description on its page in MLflow's UI (Markdown): what it is, its result, how to use it."""
    tau = "" if tau_hat is None else f", learned threshold τ̂ {json.dumps(tau_hat)}"
    return (f"Video classifier of {len(classes)} classes ({', '.join(classes)}), token selector `{main.selector}`, "
            f"trained in run `{run_name}`.\n\nTarget-test top-1 **{main.top1:.3f}** (mean class accuracy "
            f"{main.mean_class_accuracy:.3f}) with {main.discard_rate:.1%} of tokens discarded{tau}, "
            f"{main.gflops_per_clip:.3f} GFLOPs/clip.\n\nPredict on a folder of videos: "
            f"`python pipelines/predict.py --model {model_uri} --tracking-uri {tracking_uri} --folder VIDEOS --output OUT`")


def _efficiency_note(job: TrainJob) -> str:
    return (f"Target-test clips, each selector on the same trained model (trained with `{job.selector.label}`); "
            "LMFT uses tau_hat. GFLOPs: analytic forward FLOPs per clip (2 per multiply-add); clips/s: forward only.")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
