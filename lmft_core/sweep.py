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
import time
from dataclasses import dataclass
from pathlib import Path

from lmft_core.console import verbose
from lmft_core.files import atomic_write
from lmft_core.run_config import SWEPT, TARGET_METRIC, RunConfig, SweepConfig
from lmft_core.train.names import EVAL_SOURCE_VAL, EVAL_TARGET, TAU_HAT, eval_metric

TRIAL_DRIVER_CPUS = 0.1  # the Tune function itself only waits for its TorchTrainer


class SweepError(RuntimeError):
    """The sweep cannot start or produced no usable trial."""


def param_space(cfg: SweepConfig) -> dict:
    """Tune's search space of ``cfg``: a grid, or a choice per swept value list."""
    from ray import tune

    pick = tune.grid_search if cfg.search == "grid" else tune.choice
    return {key: pick(list(getattr(cfg, key))) for key in SWEPT}


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
    """The Tune function of one trial: its training run, fitted with a report to Tune (module docstring)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lmft_core.train.run import TrainingRun

    ctx = config["ctx"]
    params = {k: config[k] for k in SWEPT}
    trial_id = tune.get_context().get_trial_id()
    training = TrainingRun.prepare(ctx["profile"].with_overrides(trial_overrides(params)), ctx["shards"], ctx["workdir"],
                                   name=trial_id, storage=Path(ctx["workdir"]) / "sweeps" / ctx["name"])
    tags = {"lmft.stage": "sweep-trial", "lmft.trial": trial_id} | {f"lmft.{k}": v for k, v in params.items()}
    with training.mlflow_run(run_name=f"{ctx['name']}-{trial_id}", parent_run_id=ctx["parent_run_id"], tags=tags):
        training.fit(ctx["gpus"], callbacks=[TuneReportCallback()])


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


def run_sweep(profile: RunConfig, shards_path: str | Path, workdir: str | Path, parent_run_id: str | None = None) -> SweepResult:
    """Sweep ``profile``'s ``[sweep]`` space on ``shards_path`` (module docstring); returns the best trial."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from lmft_core.ray_cluster import connect
    from lmft_core.tracking import check_tracking_server, start_run
    from lmft_core.train.run import TrainError, TrainingRun, worker_gpus

    t0 = time.perf_counter()
    workdir = Path(workdir).resolve()
    cfg: SweepConfig = profile.sweep
    base = TrainingRun.prepare(profile, shards_path, workdir)  # checks the shards and the configuration once
    job, base_name = base.job, base.name
    metric, mode = cfg.selection_metric
    if metric.startswith(f"{EVAL_SOURCE_VAL}/") and not base.shards.counts().get(("source", "val")):
        raise SweepError(f"sweep.metric={metric!r} needs source-val clips and the shards have none: choose another "
                         "label-free metric (e.g. sweep.metric='eval_target/lmft/entropy_nats', sweep.mode='min')")
    if job.selector.name != "lmft":
        raise SweepError(f"a sweep tunes the learned threshold: selector.name must be 'lmft', not {job.selector.name!r}")
    name = cfg.name or f"sweep-{base_name}-{cfg.search}{cfg.trials()}"
    ray = connect(shared_paths=[workdir])
    resources = ray.cluster_resources()
    concurrent = max_concurrent(cfg, job.train, resources)
    gpus = worker_gpus(job.train, resources)
    check_tracking_server(job.tracking_uri)
    with start_run(profile.tracking, workdir, run_name=name, parent_run_id=parent_run_id) as parent:
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
            param_space=param_space(cfg) | {"ctx": ctx},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=1 if cfg.search == "grid" else cfg.num_samples,
                                        search_alg=searcher, scheduler=scheduler, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(workdir / "tune"), verbose=2 if verbose() else 1,
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
                     TARGET_METRIC: m.get(TARGET_METRIC), "discard_rate": m.get(eval_metric(EVAL_TARGET, "lmft", "discard_rate")),
                     "gflops_per_clip": m.get(eval_metric(EVAL_TARGET, "lmft", "gflops_per_clip")), "tau_hat": m.get(TAU_HAT),
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


def _log_best(profile: RunConfig, best: dict, shards: str, workdir: Path, name: str) -> str:
    """Log the best trial's artifacts and model (from its last checkpoint) into its MLflow run; returns
    the model URI."""
    from lmft_core.train.run import TrainingRun

    training = TrainingRun.prepare(profile.with_overrides(trial_overrides(best)), shards, workdir, name=best["trial"],
                                   storage=workdir / "sweeps" / name, run_dir=workdir / "sweeps" / name / "best")
    checkpoint = training.final_checkpoint()
    if not checkpoint.is_dir():
        raise SweepError(f"the best trial {best['trial']} has no final checkpoint at {checkpoint}")
    with training.mlflow_run(run_name=f"{name}-{best['trial']}", resume_run_id=best["run_id"] or None) as run:
        result = training.log_artifacts(run, checkpoint, 0.0)
    return result.model_uri
