"""The adaptation run on the driver: check inputs, fit on Ray Train, log everything to MLflow.

:class:`TrainingRun` is one training run, the component every training goes through (``pipelines/train.py``,
each sweep trial, the sweep's best-trial logging, the workflow's adapting and baseline trainings):
:meth:`TrainingRun.prepare` -> :meth:`TrainingRun.mlflow_run` -> :meth:`TrainingRun.fit` (with callbacks) ->
:meth:`TrainingRun.log_artifacts` -> :class:`~lmft_core.train.artifacts.TrainResult`; :meth:`TrainingRun.run`
strings them together (:func:`run_training`: for one training of a profile).

:func:`prepare` turns a profile and a preprocessing output into a :class:`TrainJob`, checking before
any compute: the shards' schema version and clip geometry against the profile's ``[clip]``, one stored
row's shapes against ``metadata.json`` and every shard file's footer, that
source-train, target-train and target-test have clips, the class map of the flip, pretrained weights;
it calibrates thresholds given as keep ratios on source-train energies, and counts the target-train
clips above gamma_c (none: L_t is 0 throughout, said in the log and the run).

:func:`run_training` fits the job with ``TorchTrainer`` and records one MLflow run: the resolved
configuration as params, step and epoch metrics (from rank 0), and at the end the artifacts (resolved
configuration, the policy with tau_hat, the evaluation and efficiency table, plots) and the model
(``mlflow.pytorch``; ``lmft_core.model_store.load_model(uri, tracking_uri).predict(frames, energy)``
classifies clips with tau_hat). Files under ``<workdir>/train/<run name>/``; Ray Train's checkpoints under
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lmft_core.augment import check_hflip, label_map_tensor
from lmft_core.model import SelectorConfig
from lmft_core.model.pretrained import CheckpointError, check_pretrained
from lmft_core.run_config import RunConfig
from lmft_core.shards.format import unpack_array
from lmft_core.shards.reader import ShardError, ShardSet
from lmft_core.tracking import NOTE, Run, check_tracking_server, start_run
from lmft_core.train.artifacts import RESULT_FILE, RUN_ID_FILE, TrainResult, log_artifacts, logged_model_name
from lmft_core.train.config import TrainConfig
from lmft_core.train.loop import TrainJob
from lmft_core.train.names import checkpoint_dir

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    """The run cannot start or did not finish; the message says why and what to do."""


def _energy_of(shards: ShardSet, domain: str, split: str) -> torch.Tensor:
    table = shards.read(domain, split, ["energy", "energy_shape"])
    return torch.tensor(unpack_array(table, "energy", np.float32))  # a copy: the Arrow buffer is read-only


def resolved_config(profile: RunConfig, parts: dict, evaluate: tuple[SelectorConfig, ...], shards: ShardSet) -> dict:
    """The configuration a run resolves to (JSON-able): every component's config, the evaluation
    selectors (calibrated) and the shards' identity."""
    out = {name: dataclasses.asdict(cfg) for name, cfg in parts.items()}
    out["evaluate"] = [dataclasses.asdict(s) for s in evaluate]
    out["profile"] = profile.name
    out["shards"] = {"root": str(shards.root), "config_hash": shards.metadata.get("config_hash", ""),
                     "classes": list(shards.classes), "untrained_clip": bool(shards.metadata.get("untrained_clip", False))}
    return json.loads(json.dumps(out))  # tuples -> lists: the form checkpoints and MLflow store


def prepare(profile: RunConfig, shards: str | Path | ShardSet, workdir: str | Path) -> tuple[TrainJob, str]:
    """The job of ``profile`` on ``shards`` (a preprocessing output, or one opened) and its run name; every
    input checked (module docstring)."""
    try:
        if not isinstance(shards, ShardSet):
            shards = ShardSet.open(shards)
        shards.check_geometry(profile.clip)
        shards.check_stored()
    except ShardError as e:
        raise TrainError(str(e)) from None
    cfg, selector, policy = profile.train, profile.selector, profile.policy  # policy kind, segments: resolved at load
    model = replace(profile.model, num_classes=shards.num_classes)  # the class count: the shards'
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
        check_hflip(shards.classes, cfg.hflip, cfg.hflip_label_map, "the shards' classes")
        counts = {key: shards.require(*key, what) for key, what in (
            (("source", "train"), "training (L_s)"), (("target", "train"), "training (adaptation)"),
            (("target", "test"), "the evaluation"))}
    except ValueError as e:  # ShardError, or a flip map naming no class
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
    t, s = shards.clip.num_frames, shards.clip.image_size
    cfg = cfg.resolve_ingest((counts[("source", "train")] + counts[("target", "train")]) * t * s * s * 3 / 2**20)
    energy = _energy_of(shards, "source", "train")
    selector = selector.calibrated(energy)
    evaluate = tuple(s.calibrated(energy) for s in cfg.evaluate_for(selector))  # checked when the profile loaded
    config = resolved_config(profile, {"clip": profile.clip, "model": model, "policy": policy, "selector": selector,
                                       "train": cfg}, evaluate, shards)
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "profile"}, sort_keys=True).encode()).hexdigest()[:10]
    name = cfg.run_name or f"{profile.name}-{selector.label}-s{cfg.seed}-{digest}"
    job = TrainJob(shards=str(shards.root), classes=shards.classes, model=model, policy=policy, selector=selector,
                   train=cfg, evaluate=evaluate, steps_per_epoch=steps, config=config,
                   tracking_uri=profile.tracking.resolve_uri(Path(workdir)))
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


@dataclass
class TrainingRun:
    """One training run: its job, name and folders; opened in MLflow, fitted on Ray Train, logged.

    ``storage``: Ray Train's folder of runs (the run's checkpoints are ``storage/<name>/epoch_NNNN``,
    :func:`~lmft_core.train.names.checkpoint_dir`); ``run_dir``: the run's own files (artifacts, ``result.json``).
    """

    profile: RunConfig
    shards: ShardSet
    job: TrainJob
    name: str
    workdir: Path
    storage: Path
    run_dir: Path
    started: float = 0.0  # time.perf_counter() when it was prepared (its elapsed time counts from here)

    @classmethod
    def prepare(cls, profile: RunConfig, shards_path: str | Path, workdir: str | Path, name: str = "",
                storage: str | Path | None = None, run_dir: str | Path | None = None) -> TrainingRun:
        """The run of ``profile`` on ``shards_path``, every input checked (:func:`prepare`); ``name`` defaults
        to the prepared name, ``storage`` to ``<workdir>/ray_train``, ``run_dir`` to ``<workdir>/train/<name>``."""
        started = time.perf_counter()
        workdir = Path(workdir).resolve()
        try:
            shards = ShardSet.open(shards_path)
        except ShardError as e:
            raise TrainError(str(e)) from None
        job, prepared = prepare(profile, shards, workdir)
        name = name or prepared
        return cls(profile=profile, shards=shards, job=job, name=name, workdir=workdir,
                   storage=Path(storage) if storage else workdir / "ray_train",
                   run_dir=Path(run_dir) if run_dir else workdir / "train" / name, started=started)

    @property
    def outputs(self) -> list[Path]:
        """What the run writes: its files and its Ray Train folder (removed by ``--force``)."""
        return [self.run_dir, self.storage / self.name]

    def final_checkpoint(self) -> Path:
        """The folder of the last epoch's checkpoint."""
        return self.storage / self.name / checkpoint_dir(self.job.train.epochs)

    @contextmanager
    def mlflow_run(self, run_name: str = "", parent_run_id: str | None = None, resume_run_id: str | None = None,
                   tags: dict | None = None, id_file: Path | None = None) -> Iterator[Run]:
        """Open the run's MLflow run (``run_name``, default its name), or reopen ``resume_run_id`` (or the one
        ``id_file`` names: :func:`~lmft_core.tracking.start_run`); a new one gets the resolved configuration as
        params and ``tags``. The job logs into it from here on."""
        with start_run(self.profile.tracking, self.workdir, run_name=run_name or self.name, parent_run_id=parent_run_id,
                       resume_run_id=resume_run_id, id_file=id_file) as run:
            if not run.resumed:
                run.log_params(self.job.config)
                run.set_tags(tags or {})
            self.job = replace(self.job, mlflow_run_id=run.run_id)
            yield run

    def fit(self, gpus: float | None = None, callbacks: list | None = None, title: str = ""):
        """Fit the job with Ray Train (resuming the run if it ran before), ``gpus`` per worker (None: connect
        to Ray and take ``train.gpus_per_worker``, else 1 when the cluster has GPUs); ``callbacks`` are Ray
        Train callbacks (a sweep trial's report to Tune); ``title``: print one line per epoch under that name
        (none printed without). Returns Ray's ``Result`` (its ``checkpoint`` is the last epoch's)."""
        from lmft_core.console import EpochPrinter
        from lmft_core.train.ray_train import train_datasets

        printer = EpochPrinter(title, self.job.train.epochs, show_tau=self.job.selector.uses_policy) if title else None
        ray_data = self.job.train.ingest == "ray_data"
        return fit_job(self.job, self.name, self.workdir, self.storage,
                       lambda: train_datasets(self.shards, self.job.train) if ray_data else {}, gpus, callbacks=callbacks,
                       printer=printer)

    def log_artifacts(self, run: Run, checkpoint: Path, elapsed_s: float) -> TrainResult:
        """Log the artifacts and the model of ``checkpoint`` into ``run``; returns the run's result."""
        return log_artifacts(self.job, self.shards, run, self.name, self.run_dir, checkpoint, self.profile.path, elapsed_s)


    def description(self, role: str) -> str:
        """The run's description on its MLflow page (Markdown); ``role`` says what it is for (e.g. "Baseline")."""
        job = self.job
        return (f"**{role}**: adaptation training with the `{job.selector.label}` token selector, {job.train.epochs} epochs "
                f"on {job.train.workers} Ray Train worker(s), shards `{job.shards}`.\n\n"
                "Its result is `target_test/*`: this selector on target-test, under the names every lmft training uses "
                "(so charts overlay trainings; the selector is the tag `lmft.selector`). `eval_target/<selector>/*` "
                "evaluate the same model with other selectors; the model is logged as "
                f"`{logged_model_name(job.selector.label)}`.")

    def run(self, parent_run_id: str | None = None, role: str = "Training", title: str = "") -> TrainResult:
        """The whole run: the MLflow run (a child of ``parent_run_id``; reopened when the run ran before; ``role``
        in its tags and description), the fit (resumed from the last checkpoint; one line per epoch printed under
        ``title``, default ``train <selector>``), the artifacts and ``result.json``; a finished run (``result.json``
        exists) is not trained again and its result is returned."""
        job, run_dir, shards = self.job, self.run_dir, self.shards
        if (done := finished(run_dir, TrainResult, "training")) is not None:
            return done
        passing, n_target, clip_report = clip_label_report(shards, job.train)
        if passing == 0 and job.train.pseudo_labels == "clip":
            log.warning("no target-train clip has a CLIP confidence above train.gamma_c=%s: L_t is 0 throughout and "
                        "the adaptation is source-only (untrained CLIP: %s); train.pseudo_labels='self' or 'clip+self' "
                        "trains on the model's own confident predictions instead", job.train.gamma_c,
                        shards.metadata.get("untrained_clip"))
        elif passing == 0:
            log.warning("no target-train clip has a CLIP confidence above train.gamma_c=%s: L_t comes from the "
                        "model's own labels only (train.pseudo_labels=%r), from the first refresh after epoch %d on",
                        job.train.gamma_c, job.train.pseudo_labels, job.train.self_refresh_epochs)
        check_tracking_server(job.tracking_uri)  # an unreachable or refusing server fails here, before any compute
        tags = {"lmft.stage": "train", "lmft.shards": job.shards, "lmft.selector": job.selector.label,
                "lmft.untrained_clip": shards.metadata.get("untrained_clip", False),
                "lmft.pretrained": job.model.pretrained or "none (random init)", "lmft.role": role.lower(),
                NOTE: self.description(role)}
        with self.mlflow_run(parent_run_id=parent_run_id, tags=tags, id_file=run_dir / RUN_ID_FILE) as run:
            if not run.resumed:
                run.log_metrics({"setup/target_train_clips": n_target, "setup/target_train_pseudo_pass": passing,
                                 "setup/target_train_pseudo_pass_rate": passing / n_target,
                                 "setup/steps_per_epoch": job.steps_per_epoch, **clip_report})
            checkpoint = Path(self.fit(title=title or f"train {job.selector.label}").checkpoint.path)
            result = self.log_artifacts(run, checkpoint, time.perf_counter() - self.started)
        result.save(run_dir / RESULT_FILE)
        return result


def finished(run_dir: Path, result: type, what: str):
    """The ``result`` (a class with ``load``) of the finished ``what`` run in ``run_dir``, said on stdout; or
    None, the folder made, when it has not finished."""
    if (run_dir / RESULT_FILE).is_file():
        print(f"[lmft] {what} run {run_dir.name} already finished: {run_dir / RESULT_FILE}")
        return result.load(run_dir / RESULT_FILE)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def fit_job(job, name: str, workdir: Path, storage: Path, datasets, gpus: float | None = None, printer=None,
            **trainer_options):
    """Fit ``job`` (a training or pretraining job: its ``train`` section says the workers) with Ray Train as run
    ``name`` under ``storage`` (resuming it if it ran before); ``datasets()`` gives the Ray Datasets once Ray is
    connected; ``gpus`` per worker (None: ``train.gpus_per_worker``, else 1 when the cluster has GPUs);
    ``trainer_options`` go to :func:`~lmft_core.train.ray_train.build_trainer` (callbacks, a pretraining's ``fn``
    and ``split``); ``printer``: a :class:`~lmft_core.console.EpochPrinter` that prints rank 0's epoch reports as
    they come (:class:`~lmft_core.train.ray_train.EpochLog`). Returns Ray's ``Result`` (its ``checkpoint`` is the
    last epoch's)."""
    from lmft_core.ray_cluster import connect, forwarded_env
    from lmft_core.train.ray_train import (
        AttemptErrorRecorder,
        EpochLog,
        build_trainer,
        last_line,
        read_attempt_errors,
        read_epoch_log,
        send_backlog,
    )

    if gpus is None:  # not inside a sweep trial, which is on Ray already and passes its GPUs
        ray = connect(shared_paths=[workdir])  # checkpoints and run files: storage every node sees
        gpus = worker_gpus(job.train, ray.cluster_resources())
    errors_file = Path(storage) / name / ATTEMPT_ERRORS_FILE
    errors_file.parent.mkdir(parents=True, exist_ok=True)
    errors_file.unlink(missing_ok=True)  # this fit's attempts only
    callbacks = [AttemptErrorRecorder(errors_file), *(trainer_options.pop("callbacks", None) or [])]
    epoch_file, read = errors_file.parent / EPOCH_LOG_FILE, {"offset": 0}
    if printer is not None:
        epoch_file.unlink(missing_ok=True)  # this fit's epochs only
        callbacks.append(EpochLog(epoch_file))

    def print_epochs() -> None:
        lines, read["offset"] = read_epoch_log(epoch_file, read["offset"])
        for metrics in lines:
            printer.report(metrics)

    trainer = build_trainer(job, datasets(), name, storage, gpus, worker_env=forwarded_env(), callbacks=callbacks,
                            **trainer_options)
    try:
        result = fit_interruptible(trainer, print_epochs if printer is not None else None)
    except Exception as e:
        attempts = read_attempt_errors(errors_file) or [{-1: last_line(e)}]
        raise TrainError(failure_message(name, job.train.max_failures, attempts, latest_checkpoint(Path(storage) / name),
                                         ShardSet.open(job.shards).unreadable_files(read_all=True))) from e
    finally:
        if printer is not None:
            printer.close()
    if result.checkpoint is None:
        raise TrainError(f"run {name} finished without a checkpoint")
    if job.mlflow_run_id:
        send_backlog(job, Path(storage) / name)  # what the controller could not send (the server was away)
    return result


def worker_gpus(cfg: TrainConfig, resources: dict) -> float:
    """GPUs per Train worker: ``train.gpus_per_worker``, else 1 when the cluster (``resources``) has GPUs."""
    if cfg.gpus_per_worker is not None:
        return cfg.gpus_per_worker
    return 1.0 if resources.get("GPU", 0) > 0 else 0.0


def run_training(profile: RunConfig, shards_path: str | Path, workdir: str | Path,
                 parent_run_id: str | None = None) -> TrainResult:
    """Adapt on ``shards_path`` with ``profile`` (module docstring); returns the finished run's result."""
    return TrainingRun.prepare(profile, shards_path, workdir).run(parent_run_id)


ATTEMPT_ERRORS_FILE = "attempt_errors.jsonl"
EPOCH_LOG_FILE = "epochs.jsonl"  # rank 0's report per epoch, for the console (ray_train.EpochLog)


def fit_interruptible(trainer, while_waiting=None):
    """``trainer.fit()`` where Ctrl-C raises ``KeyboardInterrupt`` in the caller at once; ``while_waiting()`` (if
    given) is called every half second while the fit runs, and once after it.

    Ray Train's ``fit`` in the main thread installs its own SIGINT handler, which asks the controller to abort and,
    when Ctrl-C also reached the controller's process (a terminal signals the whole process group), ends the process
    with ``sys.exit`` (seen here: exit code 1, no message, the MLflow run FAILED). In another thread ``fit`` installs
    none; the caller waits, and Ctrl-C leaves the run to resume from its last checkpoint (a daemon thread: the process
    exits without waiting for it, and the driver's Ray actors end with it)."""
    import threading

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e

    from lmft_core import interrupt

    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        interrupt.check()  # a Ctrl-C swallowed on its way (lmft_core.interrupt)
        if while_waiting is not None:
            while_waiting()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest ``epoch_NNNN`` checkpoint folder holding a checkpoint file under ``folder`` (None: none)."""
    from lmft_core.train.checkpoint import CHECKPOINT_FILE

    found = sorted(d for d in folder.glob("epoch_*") if (d / CHECKPOINT_FILE).is_file())
    return found[-1] if found else None


def failure_message(name: str, max_failures: int, attempts: list[dict[int, str]], checkpoint: Path | None,
                    unreadable: list[str]) -> str:
    """What a training run that failed after its retries tells the user: what failed (the first worker error's
    last line, with its rank), whether every attempt failed the same way (then a re-run will too), which shard
    files cannot be read, and whether a checkpoint exists for a re-run to resume from.

    ``attempts``: per failed attempt, ``{rank: last line of its error}`` (rank -1: unknown)."""
    rank, first = next(iter(attempts[0].items()))
    who = f"rank {rank}" if rank >= 0 else "a worker"
    lines = [f"training run {name} failed on {len(attempts)} attempt(s) (train.max_failures={max_failures}); "
             f"{who}: {first}"]
    same = all(first in a.values() for a in attempts)
    if len(attempts) > 1 and same:
        lines.append(f"The same error on every attempt ({len(attempts)} of {len(attempts)}): it is not transient, and "
                     "re-running the same command fails the same way until its cause is fixed.")
    elif len(attempts) > 1:
        lines.append("The attempts failed differently: " + "; ".join(
            f"attempt {i + 1}: {next(iter(a.values()))}" for i, a in enumerate(attempts)))
    if unreadable:
        lines.append("Shard file(s) that cannot be read: " + "; ".join(unreadable) + ": preprocess the manifest again.")
    if checkpoint is not None:
        lines.append(f"Last checkpoint: {checkpoint}; re-running the same command resumes from it.")
    else:
        lines.append("No checkpoint was written: a re-run starts from the beginning.")
    return "\n".join(lines)
