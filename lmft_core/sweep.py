"""Sweeps over gamma_c, lambda_L and lambda_t on Ray Tune, each trial a Ray Train fit.

A trial is a Tune function that builds and fits a ``TorchTrainer`` (named after the trial) with
``TuneReportCallback``, so every epoch's report reaches Tune and ASHA can stop poor trials early.
gamma_c acts at training time on the stored CLIP probabilities, so a sweep never re-runs preprocessing.

**Selection without target labels.** The default metric is ``eval_source_val/lmft/top1``: the trained
selector's accuracy on labelled, held-out source clips. Target labels do not exist in a real
adaptation, so choosing by them would report an accuracy no user could have reached; source accuracy
is the standard label-free criterion ("source risk"). It does not see the domain shift, so the sweep
reports each trial's target-test accuracy beside it, for reading only. Choosing by target accuracy
needs ``sweep.select_on_target_labels = true`` (say so when reporting such a result).

Resources: each trial takes ``train.workers x train.cpus_per_worker`` CPUs (and GPUs) for its workers
plus :data:`TRIAL_DRIVER_CPUS` for the Tune function; at least ``sweep.data_cpus`` CPUs of the cluster
stay free for Ray Data's ingest, and the trials that fit in the rest run at once (``sweep.max_concurrent``
caps it). Ray Data's read and shuffle tasks take :data:`~lmft_core.train.ray_train.INGEST_TASK_CPUS`
each, and ``data_cpus`` is at least 1: with less, concurrent trials wait for each other's ingest for
ever (seen here: two trials on 2 CPUs with 0.5 kept for Data hung).

MLflow: one parent run per sweep with a child run per trial (params, the epochs' metrics from rank 0);
at the end the parent holds the best trial (``best/*`` params and metrics), the results table and a plot
of target accuracy against discard rate over the trials, and the best trial's run gets its artifacts and
model (:func:`lmft_core.train.artifacts.log_artifacts`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lmft_core.config import ConfigError, Profile
from lmft_core.files import atomic_write

SEARCHES = ("grid", "random", "optuna")
SWEPT = {"gamma_c": "train.gamma_c", "lambda_l": "policy.loss_weight", "lambda_t": "train.lambda_t"}
TRIAL_DRIVER_CPUS = 0.1  # the Tune function itself only waits for its TorchTrainer
TARGET_METRIC = "eval_target/lmft/top1"


class SweepError(RuntimeError):
    """The sweep cannot start or produced no usable trial."""


@dataclass(frozen=True)
class SweepConfig:
    """The ``[sweep]`` profile section.

    ``search``: ``grid`` (every combination of the value lists), ``random`` (``num_samples`` draws) or
    ``optuna`` (TPE over the same values, ``num_samples`` trials). ``gamma_c``, ``lambda_l``,
    ``lambda_t``: the values tried. ``metric``/``mode``: the selection metric (module docstring; a
    metric the epochs report). ``asha``: early stopping with ``grace_period`` epochs and
    ``reduction_factor``. ``data_cpus``: CPUs kept free for Ray Data; ``max_concurrent``: trials at once
    (0: as many as fit). ``name``: the sweep's name (empty: derived from its configuration).
    """

    search: str = "random"
    num_samples: int = 8
    gamma_c: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    lambda_l: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0)
    lambda_t: tuple[float, ...] = (0.25, 0.5, 1.0)
    metric: str = "eval_source_val/lmft/top1"
    mode: str = "max"
    select_on_target_labels: bool = False
    asha: bool = True
    grace_period: int = 1
    reduction_factor: int = 2
    data_cpus: float = 1.0
    max_concurrent: int = 0
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"sweep.search must be one of {list(SEARCHES)}, got {self.search!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"sweep.mode must be 'max' or 'min', got {self.mode!r}")
        for key in SWEPT:
            if not getattr(self, key):
                raise ConfigError(f"sweep.{key} needs at least one value")
        if any(not 0.0 <= g <= 1.0 for g in self.gamma_c):
            raise ConfigError(f"sweep.gamma_c values must be in [0, 1], got {self.gamma_c}")
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError("sweep.num_samples and grace_period must be >= 1, reduction_factor >= 2")
        if self.data_cpus < 1 or self.max_concurrent < 0:
            raise ConfigError(f"sweep.data_cpus must be >= 1 (with less, concurrent trials wait for each other's ingest: "
                              f"module docstring) and max_concurrent >= 0, "
                              f"got {self.data_cpus} and {self.max_concurrent}")
        if self.metric.startswith("eval_target/") and not self.select_on_target_labels:
            raise ConfigError(f"sweep.metric={self.metric!r} selects by target labels: set "
                              "sweep.select_on_target_labels = true to do so knowingly")

    @property
    def selection_metric(self) -> tuple[str, str]:
        return (TARGET_METRIC, "max") if self.select_on_target_labels else (self.metric, self.mode)

    def param_space(self) -> dict:
        from ray import tune

        pick = tune.grid_search if self.search == "grid" else tune.choice
        return {key: pick(list(getattr(self, key))) for key in SWEPT}

    def trials(self) -> int:
        return math.prod(len(getattr(self, k)) for k in SWEPT) if self.search == "grid" else self.num_samples


def trial_overrides(params: dict) -> list[str]:
    """A trial's hyperparameters as profile overrides."""
    return [f"{SWEPT[k]}={params[k]}" for k in SWEPT]


def max_concurrent(cfg: SweepConfig, train, resources: dict) -> int:
    """Trials that fit at once: CPUs left after ``data_cpus`` over each trial's CPUs, and GPUs."""
    per_trial = train.workers * train.cpus_per_worker + TRIAL_DRIVER_CPUS
    fit = int((resources.get("CPU", 0) - cfg.data_cpus) // per_trial)
    gpus = resources.get("GPU", 0)
    per_trial_gpus = train.workers * (train.gpus_per_worker if train.gpus_per_worker is not None else (1.0 if gpus else 0.0))
    if per_trial_gpus:
        fit = min(fit, int(gpus // per_trial_gpus))
    if fit < 1:
        raise SweepError(f"one trial needs {per_trial:g} CPUs ({train.workers} workers x {train.cpus_per_worker:g} + "
                         f"{TRIAL_DRIVER_CPUS}) and {per_trial_gpus:g} GPUs with {cfg.data_cpus:g} CPUs kept for Ray Data, "
                         f"but the cluster has {resources.get('CPU', 0):g} CPUs and {gpus:g} GPUs: lower train.workers "
                         "or train.cpus_per_worker")
    return min(fit, cfg.max_concurrent) if cfg.max_concurrent else fit


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run_id: str
    best_trial: str
    best_params: dict
    best_metrics: dict
    best_run_id: str
    model_uri: str
    table: list[dict]
    results_csv: str
    elapsed_s: float


def _trial(config: dict) -> None:
    """The Tune function of one trial: build and fit its TorchTrainer (module docstring)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lmft_core.ray_cluster import forwarded_env
    from lmft_core.shards import ShardSet
    from lmft_core.tracking import start_run
    from lmft_core.train.ray_train import build_trainer, train_datasets
    from lmft_core.train.run import prepare

    ctx = config["ctx"]
    params = {k: config[k] for k in SWEPT}
    trial_id = tune.get_context().get_trial_id()
    profile = ctx["profile"].with_overrides(trial_overrides(params))
    job, _ = prepare(profile, ctx["shards"], ctx["workdir"])
    tracking = profile.section("tracking")
    with start_run(tracking, ctx["workdir"], run_name=f"{ctx['name']}-{trial_id}", parent_run_id=ctx["parent_run_id"]) as run:
        run.log_params(job.config)
        run.set_tags({"lmft.stage": "sweep-trial", "lmft.trial": trial_id} | {f"lmft.{k}": v for k, v in params.items()})
        job = replace(job, mlflow_run_id=run.run_id)
        storage = Path(ctx["workdir"]) / "sweeps" / ctx["name"]
        trainer = build_trainer(job, train_datasets(ShardSet.open(job.shards), job.train), trial_id, storage, ctx["gpus"],
                                callbacks=[TuneReportCallback()], worker_env=forwarded_env())
        trainer.fit()


def _release_callback(storage: Path):
    """A Tune callback that frees a finished or failed trial's Train worker placement group.

    Tune stops a trial's actor as soon as the trial reports its last epoch (or ASHA stops it), before
    Train's controller inside it has shut its worker group down, so the group's CPUs stay reserved
    (ray issue #54305) and later trials and Ray Data's ingest wait for them for ever (seen here: a
    2-CPU sweep stalled from its third trial on). The workers record their placement group
    (:func:`lmft_core.train.ray_train.record_placement_group`); this callback removes it.
    """
    from ray import tune

    from lmft_core.train.ray_train import release_placement_group

    class ReleaseTrialPlacementGroup(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            release_placement_group(storage / trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info):
            release_placement_group(storage / trial.trial_id)

    return ReleaseTrialPlacementGroup()


def run_sweep(profile: Profile, shards_path: str | Path, workdir: str | Path, parent_run_id: str | None = None) -> SweepResult:
    """Sweep ``profile``'s ``[sweep]`` space on ``shards_path`` (module docstring); returns the best trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from lmft_core.ray_cluster import connect
    from lmft_core.shards import ShardSet
    from lmft_core.tracking import check_tracking_server, start_run
    from lmft_core.train.run import TrainError, prepare

    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()
    cfg: SweepConfig = profile.section("sweep")
    job, base_name = prepare(profile, shards_path, workdir)  # checks the shards and the configuration once
    metric, mode = cfg.selection_metric
    if metric.startswith("eval_source_val/") and not ShardSet.open(job.shards).counts().get(("source", "val")):
        raise SweepError(f"sweep.metric={metric!r} needs source-val clips and the shards have none: choose another "
                         "label-free metric (e.g. sweep.metric='eval_target/lmft/entropy_nats', sweep.mode='min')")
    if job.selector.name != "lmft":
        raise SweepError(f"a sweep tunes the learned threshold: selector.name must be 'lmft', not {job.selector.name!r}")
    name = cfg.name or f"sweep-{base_name}-{cfg.search}{cfg.trials()}"
    ray = connect(shared_paths=[workdir])
    resources = ray.cluster_resources()
    concurrent = max_concurrent(cfg, job.train, resources)
    gpus = job.train.gpus_per_worker if job.train.gpus_per_worker is not None else (1.0 if resources.get("GPU") else 0.0)
    tracking = profile.section("tracking")
    check_tracking_server(job.tracking_uri)
    with start_run(tracking, workdir, run_name=name, parent_run_id=parent_run_id) as parent:
        parent.log_params({"sweep": dataclasses.asdict(cfg), "sweep.concurrent_trials": concurrent,
                           "sweep.selection_metric": metric, **{k: v for k, v in job.config.items() if k != "evaluate"}})
        parent.set_tags({"lmft.stage": "sweep", "lmft.selection_uses_target_labels": cfg.select_on_target_labels})
        searcher = None
        if cfg.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(metric=metric, mode=mode, seed=cfg.seed)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=job.train.epochs, grace_period=cfg.grace_period,
                                  reduction_factor=cfg.reduction_factor) if cfg.asha else None
        ctx = {"profile": profile, "shards": job.shards, "workdir": str(workdir), "name": name,
               "parent_run_id": parent.run_id, "gpus": gpus}
        tuner = tune.Tuner(
            tune.with_resources(_trial, {"cpu": TRIAL_DRIVER_CPUS}),
            param_space=cfg.param_space() | {"ctx": ctx},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=1 if cfg.search == "grid" else cfg.num_samples,
                                        search_alg=searcher, scheduler=scheduler, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(workdir / "tune"),
                                      callbacks=[_release_callback(workdir / "sweeps" / name)]),
        )
        grid = tuner.fit()
        table = _results_table(grid, metric, job.train.epochs, parent, name)
        finished = [r for r in table if r["epochs"] == job.train.epochs and r.get(metric) is not None]
        if not finished:
            raise SweepError(f"no trial of sweep {name} finished its {job.train.epochs} epochs with {metric}: see {workdir / 'tune' / name}")
        best = max(finished, key=lambda r: r[metric] if mode == "max" else -r[metric])
        results_csv = _write_table(table, workdir / "sweeps" / name / "results.csv")
        plot = _plot(table, workdir / "sweeps" / name / "accuracy_vs_discard.png", best["trial"])
        parent.log_artifact(results_csv, "sweep")
        parent.log_artifact(plot, "sweep")
        parent.log_params({f"best.{k}": best[k] for k in SWEPT} | {"best.trial": best["trial"]})
        parent.log_metrics({f"best/{k}": v for k, v in best.items() if isinstance(v, float)})
        model_uri = _log_best(profile, best, job.shards, workdir, name)
    if not model_uri:
        raise TrainError(f"the best trial {best['trial']} left no checkpoint")
    return SweepResult(name=name, parent_run_id=parent.run_id, best_trial=best["trial"],
                       best_params={k: best[k] for k in SWEPT}, best_metrics={k: v for k, v in best.items() if isinstance(v, float)},
                       best_run_id=best["run_id"], model_uri=model_uri, table=table, results_csv=str(results_csv),
                       elapsed_s=time.perf_counter() - t0)


def _results_table(grid, metric: str, epochs: int, parent, name: str) -> list[dict]:
    """One row per trial: its hyperparameters, the epochs it reached, the selection metric, target-test
    accuracy (reading only), discard rate, GFLOPs, tau_hat, status and its MLflow run."""
    runs = parent.client.search_runs([parent.client.get_run(parent.run_id).info.experiment_id],
                                     f"tags.mlflow.parentRunId = '{parent.run_id}'")
    run_ids = {r.info.run_name: r.info.run_id for r in runs}
    rows = []
    for result in grid:
        m = result.metrics or {}
        cfg = {k: result.config[k] for k in SWEPT}
        trial = m.get("trial_id") or Path(result.path).name
        rows.append({"trial": trial, **cfg, "epochs": int(m.get("epoch", 0)), metric: m.get(metric),
                     TARGET_METRIC: m.get(TARGET_METRIC), "discard_rate": m.get("eval_target/lmft/discard_rate"),
                     "gflops_per_clip": m.get("eval_target/lmft/gflops_per_clip"), "tau_hat": m.get("policy/tau_hat"),
                     "status": "completed" if int(m.get("epoch", 0)) == epochs else "stopped early",
                     "error": str(result.error)[:200] if result.error else "", "path": result.path,
                     "run_id": run_ids.get(f"{name}-{trial}", "")})
    return rows


def _write_table(table: list[dict], path: Path) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    keys = [k for k in table[0] if k not in ("path", "run_id")]
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(table)
    return path


def _plot(table: list[dict], path: Path, best: str) -> Path:
    from lmft_core.train import plots

    return plots.save(plots.sweep_scatter(table, TARGET_METRIC, best), path)


def _log_best(profile: Profile, best: dict, shards: str, workdir: Path, name: str) -> str:
    """Log the best trial's artifacts and model (from its last checkpoint) into its MLflow run; returns
    the model URI."""
    from lmft_core.tracking import start_run
    from lmft_core.train.artifacts import log_artifacts
    from lmft_core.train.run import prepare

    trial_profile = profile.with_overrides(trial_overrides(best))
    job, _ = prepare(trial_profile, shards, workdir)
    checkpoint = workdir / "sweeps" / name / best["trial"] / f"epoch_{job.train.epochs:04d}"
    if not checkpoint.is_dir():
        raise SweepError(f"the best trial {best['trial']} has no final checkpoint at {checkpoint}")
    with start_run(trial_profile.section("tracking"), workdir, run_name=f"{name}-{best['trial']}",
                   resume_run_id=best["run_id"] or None) as run:
        job = replace(job, mlflow_run_id=run.run_id)
        result = log_artifacts(job, run, best["trial"], workdir / "sweeps" / name / "best", checkpoint,
                               trial_profile.path, 0.0)
    return result.model_uri


