"""The adaptation run on the driver: check inputs, fit on Ray Train, log everything to MLflow.

:func:`prepare` turns a profile and a preprocessing output into a :class:`TrainJob`, checking before
any compute: the shards' schema version and clip geometry against the profile's ``[clip]``, that
source-train, target-train and target-test have clips, the class map of the flip, pretrained weights;
it calibrates thresholds given as keep ratios on source-train energies, and counts the target-train
clips above gamma_c (none: L_t is 0 throughout, said in the log and the run).

:func:`run_training` fits the job with ``TorchTrainer`` and records one MLflow run: the resolved
configuration as params, step and epoch metrics (from rank 0), and at the end the artifacts (resolved
configuration, the policy with tau_hat, the evaluation and efficiency table, plots) and the model
(``mlflow.pytorch``; ``mlflow.pytorch.load_model(uri).predict(frames, energy)`` classifies clips with
tau_hat). Files under ``<workdir>/train/<run name>/``; Ray Train's checkpoints under
``<workdir>/ray_train/<run name>/``.

The run name defaults to the profile name, the selector and a hash of the resolved configuration and
the shards, so the same command resumes the same run (from its last checkpoint) and a finished run
is not trained again (its ``result.json`` is returned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lmft_core.config import Profile
from lmft_core.files import atomic_write
from lmft_core.model import CheckpointError, ModelConfig, PolicyConfig, SelectorConfig
from lmft_core.model.checkpoints import check_pretrained
from lmft_core.shard_format import unpack_array
from lmft_core.shards import ShardError, ShardSet, label_map_tensor
from lmft_core.tracking import TrackingConfig, check_tracking_server
from lmft_core.train.config import TrainConfig
from lmft_core.train.loop import TrainJob

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"


class TrainError(RuntimeError):
    """The run cannot start or did not finish; the message says why and what to do."""


@dataclass(frozen=True)
class TrainResult:
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

    @classmethod
    def load(cls, path: Path) -> TrainResult:
        return cls(**json.loads(path.read_text()))


def _energy_of(shards: ShardSet, domain: str, split: str) -> torch.Tensor:
    table = shards.read(domain, split, ["energy", "energy_shape"])
    return torch.tensor(unpack_array(table, "energy", np.float32))  # a copy: the Arrow buffer is read-only


def resolved_config(profile: Profile, parts: dict, evaluate: tuple[SelectorConfig, ...], shards: ShardSet) -> dict:
    """The configuration a run resolves to (JSON-able): every component's config, the evaluation
    selectors (calibrated) and the shards' identity."""
    out = {name: dataclasses.asdict(cfg) for name, cfg in parts.items()}
    out["evaluate"] = [dataclasses.asdict(s) for s in evaluate]
    out["profile"] = profile.name
    out["shards"] = {"root": str(shards.root), "config_hash": shards.metadata.get("config_hash", ""),
                     "classes": list(shards.classes), "untrained_clip": bool(shards.metadata.get("untrained_clip", False))}
    return json.loads(json.dumps(out))  # tuples -> lists: the form checkpoints and MLflow store


def prepare(profile: Profile, shards_path: str | Path, workdir: str | Path) -> tuple[TrainJob, str]:
    """The job of ``profile`` on ``shards_path`` and its run name; every input checked (module docstring)."""
    try:
        shards = ShardSet.open(shards_path)
        shards.check_geometry(profile.clip)
    except ShardError as e:
        raise TrainError(str(e)) from None
    cfg: TrainConfig = profile.section("train")
    model: ModelConfig = replace(profile.section("model"), clip=profile.clip, num_classes=shards.num_classes)
    selector: SelectorConfig = profile.section("selector")
    policy: PolicyConfig = profile.section("policy").resolve(selector, profile.clip)  # kind, num_segments
    if cfg.require_pretrained and not model.pretrained:
        raise TrainError(f"{profile.path}: train.require_pretrained is set but model.pretrained is empty: pass the "
                         "VideoMAE checkpoint with --set model.pretrained=/path/to/checkpoint.pth")
    if model.pretrained and not Path(model.pretrained).exists():
        raise TrainError(f"model.pretrained: {model.pretrained} does not exist")
    if model.pretrained:
        try:
            check_pretrained(model)
        except CheckpointError as e:
            raise TrainError(f"model.pretrained: {e}") from None
    try:
        label_map_tensor(shards.classes, cfg.hflip_label_map)
        counts = {key: shards.require(*key, what) for key, what in (
            (("source", "train"), "training (L_s)"), (("target", "train"), "training (adaptation)"),
            (("target", "test"), "the evaluation"))}
    except ShardError as e:
        raise TrainError(str(e)) from None
    per_rank = min(counts[("source", "train")], counts[("target", "train")]) // cfg.workers
    steps = per_rank // (cfg.batch_size * cfg.accum_steps)
    if steps == 0:
        raise TrainError(f"{per_rank} clips per worker and domain (the smaller of source-train "
                         f"{counts[('source', 'train')]} and target-train {counts[('target', 'train')]}, over "
                         f"{cfg.workers} workers) is less than one step of train.batch_size x accum_steps = "
                         f"{cfg.batch_size * cfg.accum_steps}: lower them")
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    energy = _energy_of(shards, "source", "train")
    selector = selector.calibrated(energy)
    evaluate = tuple(s.calibrated(energy) for s in cfg.evaluate_for(selector))  # checked when the profile loaded
    config = resolved_config(profile, {"clip": profile.clip, "model": model, "policy": policy, "selector": selector,
                                       "train": cfg}, evaluate, shards)
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "profile"}, sort_keys=True).encode()).hexdigest()[:10]
    name = cfg.run_name or f"{profile.name}-{selector.label}-s{cfg.seed}-{digest}"
    tracking = profile.section("tracking", TrackingConfig)
    job = TrainJob(shards=str(shards.root), classes=shards.classes, model=model, policy=policy, selector=selector,
                   train=cfg, evaluate=evaluate, steps_per_epoch=steps, config=config,
                   tracking_uri=tracking.resolve_uri(Path(workdir)))
    return job, name


def clip_label_report(shards: ShardSet, cfg: TrainConfig) -> tuple[int, int, dict[str, float]]:
    """CLIP's pseudo-labels of target-train before training: (clips whose confidence exceeds gamma_c,
    target-train clips, metrics). The metrics: ``pseudo/clip_pass_rate`` and, where target labels exist,
    ``pseudo/clip_accuracy`` (clips above gamma_c) and ``pseudo/clip_accuracy_all`` (for monitoring only:
    :func:`lmft_core.train.pseudo.pseudo_label_report`)."""
    from lmft_core.train.pseudo import PSEUDO_LABEL_SOURCES, label_columns, pseudo_label_report, target_train_rows

    clip_label, clip_conf, true_label = label_columns(target_train_rows(shards))
    report = pseudo_label_report(PSEUDO_LABEL_SOURCES[cfg.pseudo_labels], clip_label, clip_conf, cfg.gamma_c, true_label)
    return int((clip_conf > cfg.gamma_c).sum()), len(clip_conf), report


def run_training(profile: Profile, shards_path: str | Path, workdir: str | Path,
                 parent_run_id: str | None = None) -> TrainResult:
    """Adapt on ``shards_path`` with ``profile`` (module docstring); returns the finished run's result."""
    from lmft_core.tracking import start_run
    from lmft_core.train.artifacts import log_artifacts

    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()
    job, name = prepare(profile, shards_path, workdir)
    run_dir = workdir / "train" / name
    if (done := finished(run_dir, TrainResult, "training")) is not None:
        return done
    shards = ShardSet.open(job.shards)
    passing, n_target, clip_report = clip_label_report(shards, job.train)
    if passing == 0 and job.train.pseudo_labels == "clip":
        log.warning("no target-train clip has a CLIP confidence above train.gamma_c=%s: L_t is 0 throughout and the "
                    "adaptation is source-only (untrained CLIP: %s); train.pseudo_labels='self' or 'clip+self' "
                    "trains on the model's own confident predictions instead", job.train.gamma_c,
                    shards.metadata.get("untrained_clip"))
    elif passing == 0:
        log.warning("no target-train clip has a CLIP confidence above train.gamma_c=%s: L_t comes from the model's "
                    "own labels only (train.pseudo_labels=%r), from the first refresh after epoch %d on",
                    job.train.gamma_c, job.train.pseudo_labels, job.train.self_refresh_epochs)
    tracking = profile.section("tracking", TrackingConfig)
    check_tracking_server(job.tracking_uri)  # an unreachable or refusing server fails here, before any compute
    with start_run(tracking, workdir, run_name=name, parent_run_id=parent_run_id, id_file=run_dir / "mlflow_run_id") as run:
        if not run.resumed:
            run.log_params(job.config)
            run.set_tags({"lmft.stage": "train", "lmft.shards": job.shards, "lmft.selector": job.selector.label,
                          "lmft.untrained_clip": shards.metadata.get("untrained_clip", False),
                          "lmft.pretrained": job.model.pretrained or "none (random init)"})
            run.log_metrics({"data/target_train_clips": n_target, "data/target_train_pseudo_pass": passing,
                             "data/target_train_pseudo_pass_rate": passing / n_target, "data/steps_per_epoch": job.steps_per_epoch,
                             **clip_report})
        job = replace(job, mlflow_run_id=run.run_id)
        checkpoint = Path(fit(job, name, workdir).checkpoint.path)
        result = log_artifacts(job, run, name, run_dir, checkpoint, profile.path, time.perf_counter() - t0)
    with atomic_write(run_dir / RESULT_FILE) as f:
        f.write(json.dumps(dataclasses.asdict(result), indent=2))
    return result


def finished(run_dir: Path, result: type, what: str):
    """The ``result`` (a class with ``load``) of the finished ``what`` run in ``run_dir``, said on stdout; or
    None, the folder made, when it has not finished."""
    if (run_dir / RESULT_FILE).is_file():
        print(f"[lmft] {what} run {run_dir.name} already finished: {run_dir / RESULT_FILE}")
        return result.load(run_dir / RESULT_FILE)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def fit(job: TrainJob, name: str, workdir: Path, datasets=None, **trainer_options):
    """Fit ``job`` with Ray Train (resuming ``name`` if it ran before); returns Ray's ``Result`` (its
    ``checkpoint`` is the last epoch's). ``datasets()`` (after Ray is connected) gives the Ray Datasets
    (default: adaptation's :func:`~lmft_core.train.ray_train.train_datasets`); ``trainer_options`` go to
    :func:`~lmft_core.train.ray_train.build_trainer` (a pretraining job passes its ``fn`` and ``split``)."""
    from lmft_core.ray_cluster import connect, forwarded_env
    from lmft_core.train.ray_train import build_trainer, train_datasets

    ray = connect(shared_paths=[workdir])  # checkpoints and run files: storage every node sees
    gpus = job.train.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    data = datasets() if datasets is not None else train_datasets(ShardSet.open(job.shards), job.train)
    trainer = build_trainer(job, data, name, workdir / "ray_train", gpus, worker_env=forwarded_env(), **trainer_options)
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; keep the cause in the message
        raise TrainError(f"training run {name} failed after its retries (train.max_failures={job.train.max_failures}): "
                         f"{e}\nRe-running the same command resumes from the last checkpoint.") from e
    if result.checkpoint is None:
        raise TrainError(f"training run {name} finished without a checkpoint")
    return result

