"""Sweeps over the settings of ``[sweep] space`` (gamma_c, lambda_L, lambda_t, ...) on Ray Tune, each trial a Ray Train fit.

A trial is a Tune function that builds and fits a ``TorchTrainer`` (named after the trial) with
``TuneReportCallback``, so every epoch's report reaches Tune and ASHA can stop poor trials early.
gamma_c acts at training time on the stored CLIP probabilities, so a sweep never re-runs preprocessing.
The space names settings (``"train.lambda_t" = [...]``); a trial is the profile with its values as overrides.

**Selection without target labels.** The default metric is ``eval_source_val/lmft/top1``: the trained
selector's accuracy on labelled, held-out source clips. Target labels do not exist in a real
adaptation, so choosing by them would report an accuracy no user could have reached; source accuracy
is the standard label-free criterion ("source risk"). It does not see the domain shift, so the sweep
reports each trial's target-test accuracy beside it, for reading only. Choosing by target accuracy
needs ``sweep.select_on_target_labels = true`` (say so when reporting such a result).
A top-1 selection metric comes with its binomial standard error over the selection clips,
sqrt(p (1 - p) / n): when the best trial leads the second by at most one standard error, the sweep says
the two are not distinguishable on this metric.

A sweep trains ``lmft`` or ``adafocus`` (:mod:`lmft_core.model.focus`); with ``adafocus`` every metric named
for ``lmft`` reads the run's selector label instead (``eval_source_val/adafocus-w2x2/top1``:
:meth:`~lmft_core.run_config.SweepConfig.metric_for`), and ``lambda_l`` (the threshold's reward weight) has no effect.

Resources (:func:`fit_trials`): each trial takes ``train.workers x train.cpus_per_worker`` CPUs (and GPUs)
for its workers plus :data:`TRIAL_DRIVER_CPUS` for the Tune function; at least ``sweep.data_cpus`` CPUs of
the cluster stay free for Ray Data's ingest, and the trials that fit in the rest run at once
(``sweep.max_concurrent`` caps it). When one trial does not fit at ``train.workers``, trials run with the
most workers that fit (the global batch shrinks with them), and the sweep says so in one line. Ray
Data's read and shuffle tasks take :data:`~lmft_core.train.ray_train.INGEST_TASK_CPUS` each, and
``data_cpus`` is at least 1: with less, concurrent trials wait for each other's ingest for ever (seen
here: two trials on 2 CPUs with 0.5 kept for Data hung).

MLflow: one parent run per sweep with a child run per trial (params, the epochs' metrics from rank 0);
at the end the parent holds the best trial (``best/*`` params and metrics), the results table (CSV, and
the top trials as markdown, the table printed at the end) and a plot of target accuracy against discard
rate over the trials (the selected trial starred), and the best trial's run gets its artifacts and
model (:func:`lmft_core.train.artifacts.log_artifacts`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from lmft_core import interrupt
from lmft_core.console import PREFIX, quiet_tune, verbose
from lmft_core.files import atomic_write
from lmft_core.run_config import TARGET_METRIC, RunConfig, SweepConfig, metric_of
from lmft_core.train.config import TrainConfig
from lmft_core.train.names import EVAL_SOURCE_VAL, EVAL_TARGET, TAU_HAT, eval_metric

TRIAL_DRIVER_CPUS = 0.1  # the Tune function itself only waits for its TorchTrainer
# Every trial evaluates each epoch: Tune checks that each report holds the selection metric, and ASHA compares trials
# on it at its rungs. The baseline selectors (train.evaluate) are left out of a trial: a sweep selects among trainings
# of one selector (the workflow's evaluate stage trains the baselines).
TRIAL_EVALUATION = ("train.eval_every_epochs=1", "train.evaluate=[]")


class SweepError(RuntimeError):
    """The sweep cannot start or produced no usable trial."""


def param_space(cfg: SweepConfig) -> dict:
    """Tune's search space of ``cfg``: a grid axis or a choice per swept setting (:meth:`SweepConfig.grid_axes`)."""
    from ray import tune

    grid = cfg.grid_axes()
    return {key: (tune.grid_search if key in grid else tune.choice)(cfg.values(key)) for key in cfg.space}


def trial_overrides(params: dict) -> list[str]:
    """A trial's settings (``{"train.lambda_t": 0.5}``) as profile overrides (values written as TOML)."""
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


@dataclass(frozen=True)
class TrialFit:
    """How trials fit the cluster: ``workers`` Ray Train workers each, ``concurrent`` trials at once, and
    ``note``, one line saying why ``workers`` is below ``train.workers`` (empty when it is not)."""

    workers: int
    concurrent: int
    note: str

    @property
    def overrides(self) -> list[str]:
        return [f"train.workers={self.workers}"]


def fit_trials(cfg: SweepConfig, train: TrainConfig, resources: dict) -> TrialFit:
    """Fit trials to a cluster of ``resources`` (``{"CPU": 2.0, "GPU": 0.0}``; module docstring).

    A trial of ``w`` workers needs ``w x train.cpus_per_worker + TRIAL_DRIVER_CPUS`` CPUs and ``w x
    train.gpus_per_worker`` GPUs (absent: 1 per worker when the cluster has GPUs); ``sweep.data_cpus`` CPUs
    stay free for Ray Data when the trials ingest through it (``train.ingest`` ``ray_data``, or ``auto`` not yet
    decided; memory ingest runs no Ray Data task). ``workers`` is the largest ``w <= train.workers`` with which
    one trial fits; a SweepError when even one worker does not fit."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    data_cpus = 0.0 if train.ingest == "memory" else cfg.data_cpus
    gpus_per_worker = train.gpus_per_worker if train.gpus_per_worker is not None else (1.0 if gpus else 0.0)

    def at_once(workers: int) -> int:  # trials of ``workers`` workers that fit at once (1e-9: float sums)
        fit = int((cpus - data_cpus + 1e-9) // (workers * train.cpus_per_worker + TRIAL_DRIVER_CPUS))
        return min(fit, int((gpus + 1e-9) // (workers * gpus_per_worker))) if gpus_per_worker else fit

    def needs(workers: int) -> str:
        return (f"{workers * train.cpus_per_worker + TRIAL_DRIVER_CPUS:g} CPUs ({workers} workers x {train.cpus_per_worker:g} + "
                f"{TRIAL_DRIVER_CPUS}) and {workers * gpus_per_worker:g} GPUs"
                + (f" with {data_cpus:g} CPUs kept for Ray Data" if data_cpus else ""))

    workers = next((w for w in range(train.workers, 0, -1) if at_once(w) >= 1), 0)
    has = f"the cluster has {cpus:g} CPUs and {gpus:g} GPUs"
    if not workers:
        raise SweepError(f"one trial needs at least {needs(1)}, but {has}: lower train.cpus_per_worker, "
                         "train.gpus_per_worker or sweep.data_cpus, or add nodes")
    concurrent = min(at_once(workers), cfg.max_concurrent) if cfg.max_concurrent else at_once(workers)
    note = "" if workers == train.workers else (
        f"a trial at train.workers={train.workers} needs {needs(train.workers)}, but {has}: trials run with {workers} "
        f"worker{'s' if workers > 1 else ''} each (global batch {workers * train.batch_size} instead of "
        f"{train.workers * train.batch_size} clips per domain)")
    return TrialFit(workers=workers, concurrent=concurrent, note=note)


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` clips: sqrt(p (1 - p) / n)."""
    return math.sqrt(p * (1.0 - p) / n)


def selection_clips(metric: str, counts: dict[tuple[str, str], int]) -> int | None:
    """The clips a top-1 metric is measured on (source-val or target-test rows of the shards), or None when
    ``metric`` is not a top-1 accuracy (no binomial standard error)."""
    split = {EVAL_SOURCE_VAL: ("source", "val"), EVAL_TARGET: ("target", "test")}.get(metric.split("/")[0])
    return counts.get(split) if split and metric.endswith("/top1") else None


def indistinguishable(rows: list[dict], metric: str) -> str:
    """A note when the best of ``rows`` (sorted best first, with ``metric`` and ``selection_se``) leads the second by
    at most its standard error; empty otherwise."""
    if len(rows) < 2 or rows[0].get("selection_se") is None:
        return ""
    best, second = rows[0], rows[1]
    gap = abs(best[metric] - second[metric])
    if gap > best["selection_se"]:
        return ""
    return (f"the best trial {best['trial']} ({metric} {best[metric]:.3f} ± {best['selection_se']:.3f}) is not distinguishable "
            f"from the second, {second['trial']} ({second[metric]:.3f}): they differ by {gap:.3f}, within one standard error")


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
    summary: str  # the top trials as a markdown table, and the notes (:func:`summary`)
    fit: TrialFit  # how the trials fitted the cluster
    fixed: tuple[str, ...]  # the overrides every trial had besides its sampled settings (workers, evaluation schedule)


def _trial(config: dict, ctx: dict) -> None:
    """The Tune function of one trial: its training run, fitted with a report to Tune (module docstring). ``config``:
    the trial's sampled settings; ``ctx``: what every trial shares (``tune.with_parameters``: not in the config, so
    Tune neither prints nor stores the profile per trial)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lmft_core.train.run import TrainingRun

    params = {k: config[k] for k in ctx["space"]}
    trial_id = tune.get_context().get_trial_id()
    profile = ctx["profile"].with_overrides(ctx["fit"] + trial_overrides(params))
    training = TrainingRun.prepare(profile, ctx["shards"], ctx["workdir"],
                                   name=trial_id, storage=Path(ctx["workdir"]) / "sweeps" / ctx["name"])
    tags = {"lmft.stage": "sweep-trial", "lmft.trial": trial_id} | {f"lmft.{k}": v for k, v in params.items()}
    with training.mlflow_run(run_name=f"{ctx['name']}-{trial_id}", parent_run_id=ctx["parent_run_id"], tags=tags):
        training.fit(ctx["gpus"], callbacks=[TuneReportCallback()])


def _trial_end_callback(storage: Path, space: list[str], metric: str, target: str, trials: int):
    """A Tune callback for each trial's end: it prints one line (the trial's settings, how many epochs it reached and
    its selection metric, target top-1 for reading) and frees the trial's Train worker placement group.

    Tune stops a trial's actor as soon as the trial reports its last epoch (or ASHA stops it), before
    Train's controller inside it has shut its worker group down, so the group's CPUs stay reserved
    (ray issue #54305) and later trials and Ray Data's ingest wait for them for ever (seen here: a
    2-CPU sweep stalled from its third trial on). The workers record their placement group
    (:func:`lmft_core.train.ray_train.record_placement_group`); this callback removes it.
    """
    from ray import tune

    from lmft_core.train.ray_train import release_placement_group

    ended: list[str] = []

    def say(trial, outcome: str) -> None:
        try:  # Tune marks a trial failed when a callback raises: a line must never cost a finished trial
            ended.append(trial.trial_id)
            settings = "  ".join(f"{k.split('.')[-1]} {trial.config.get(k)}" for k in space)
            print(f"{PREFIX} trial {len(ended)}/{trials} {trial.trial_id}  {settings}  {outcome}", flush=True)
        except Exception:  # noqa: BLE001 - the line is only a report
            pass

    class TrialEnd(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            release_placement_group(storage / trial.trial_id)
            r = trial.last_result or {}
            if not r:  # never started (the sweep was stopped)
                return
            value, reading = r.get(metric), r.get(target)
            say(trial, f"epochs {int(r.get('epoch', 0))}: {metric.split('/')[0]} top-1 "
                       + ("-" if value is None else f"{value:.3f}") + ("" if reading is None else f", target {reading:.3f}"))

        def on_trial_error(self, iteration, trials, trial, **info):
            release_placement_group(storage / trial.trial_id)
            say(trial, "failed (its MLflow run and the Tune folder have the error)")

    return TrialEnd()


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
    metric, mode = cfg.metric_for(job.selector.label)
    if metric.startswith(f"{EVAL_SOURCE_VAL}/") and not base.shards.counts().get(("source", "val")):
        raise SweepError(f"sweep.metric={metric!r} needs source-val clips and the shards have none: choose another "
                         "label-free metric (e.g. sweep.metric='eval_target/lmft/entropy_nats', sweep.mode='min')")
    if job.selector.name not in ("lmft", "adafocus"):
        raise SweepError(f"a sweep tunes a learned selector: selector.name must be 'lmft' or 'adafocus', not {job.selector.name!r}")
    name = cfg.name or f"sweep-{base_name}-{cfg.search}{cfg.trials()}"
    ray = connect(shared_paths=[workdir])
    resources = ray.cluster_resources()
    fit = fit_trials(cfg, job.train, resources)
    if fit.note:
        print(f"[lmft] sweep: {fit.note}", flush=True)
    fixed = [*fit.overrides, *TRIAL_EVALUATION]  # what every trial sets besides its sampled settings
    if job.train.eval_every_epochs != 1 or job.train.evaluate:
        print(f"[lmft] sweep: trials evaluate every epoch (train.eval_every_epochs={job.train.eval_every_epochs} in the "
              "profile), the trained selector only: Tune and ASHA read the selection metric from each epoch's report",
              flush=True)
    gpus = worker_gpus(job.train, resources)
    check_tracking_server(job.tracking_uri)
    with start_run(profile.tracking, workdir, run_name=name, parent_run_id=parent_run_id) as parent:
        parent.log_params({"sweep": dataclasses.asdict(cfg), "sweep.concurrent_trials": fit.concurrent,
                           "sweep.workers_per_trial": fit.workers,
                           "sweep.selection_metric": metric, **{k: v for k, v in job.config.items() if k != "evaluate"}})
        parent.set_tags({"lmft.stage": "sweep", "lmft.selection_uses_target_labels": cfg.select_on_target_labels})
        searcher = None
        if cfg.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            searcher = OptunaSearch(metric=metric, mode=mode, seed=cfg.seed)
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=job.train.epochs, grace_period=cfg.grace_period,
                                  reduction_factor=cfg.reduction_factor) if cfg.asha else None
        ctx = {"profile": profile, "shards": job.shards, "workdir": str(workdir), "name": name,
               "parent_run_id": parent.run_id, "gpus": gpus, "space": list(cfg.space), "fit": fixed}
        print(f"{PREFIX} sweep {name}: {cfg.trials()} trials ({cfg.search}), {fit.concurrent} at a time, selected by {metric}"
              + (" (ASHA stops poor trials early)" if cfg.asha else ""), flush=True)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trial, ctx=ctx), {"cpu": TRIAL_DRIVER_CPUS}),
            param_space=param_space(cfg),
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=1 if cfg.search == "grid" else cfg.num_samples,
                                        search_alg=searcher, scheduler=scheduler, max_concurrent_trials=fit.concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(workdir / "tune"), verbose=2 if verbose() else 0,
                                      callbacks=[_trial_end_callback(workdir / "sweeps" / name, list(cfg.space), metric,
                                                                     metric_of(TARGET_METRIC, job.selector.label),
                                                                     cfg.trials())]),
        )
        with quiet_tune(), interrupt.keep_handler():
            grid = tuner.fit()
        interrupt.check()  # a Ctrl-C during the sweep stops it here (lmft_core.interrupt)
        label = job.selector.label
        target = metric_of(TARGET_METRIC, label)
        table = _results_table(grid, cfg, metric, job.train.epochs, parent, name, label)
        finished = [r for r in table if r["epochs"] == job.train.epochs and r.get(metric) is not None]
        if not finished:
            raise SweepError(f"no trial of sweep {name} finished its {job.train.epochs} epochs with {metric}: see {workdir / 'tune' / name}")
        n = selection_clips(metric, base.shards.counts())
        for row in table:
            row["selection_se"] = binomial_se(row[metric], n) if n and row.get(metric) is not None else None
        ranked = sorted(finished, key=lambda r: -r[metric] if mode == "max" else r[metric])
        best = ranked[0]
        folder = workdir / "sweeps" / name
        results_csv = _write_table(table, folder / "results.csv")
        text = summary(ranked[:cfg.top], cfg.varied(), metric, n, target)
        with atomic_write(folder / "results.md") as f:
            f.write(text + "\n")
        plot = _plot(table, cfg.varied(), folder / "accuracy_vs_discard.png", best["trial"], target)
        for artifact in (results_csv, folder / "results.md", plot):
            parent.log_artifact(artifact, "sweep")
        parent.log_params({f"best.{k}": best[k] for k in cfg.space} | {"best.trial": best["trial"]})
        parent.log_metrics({f"best/{k}": v for k, v in best.items() if isinstance(v, float)})  # best/selection_se too
        # the best model evaluated as a single training is, with the baseline selectors (not the trials' schedule)
        model_uri = _log_best(profile, fit.overrides + trial_overrides({k: best[k] for k in cfg.space}), best, job.shards,
                              workdir, name)
    if not model_uri:
        raise TrainError(f"the best trial {best['trial']} left no checkpoint")
    return SweepResult(name=name, parent_run_id=parent.run_id, best_trial=best["trial"],
                       best_params={k: best[k] for k in cfg.space}, best_metrics={k: v for k, v in best.items() if isinstance(v, float)},
                       best_run_id=best["run_id"], model_uri=model_uri, table=table, results_csv=str(results_csv),
                       elapsed_s=time.perf_counter() - t0, summary=text, fit=fit, fixed=tuple(fixed))


def summary(rows: list[dict], params: list[str], metric: str, clips: int | None, target: str = TARGET_METRIC) -> str:
    """The top trials ``rows`` (best first) as a markdown table: their settings, the selection metric ±
    its standard error, target-test top-1 (``target``, the trained selector's), discard rate and GFLOPs/clip; then the note of
    :func:`indistinguishable`, if any."""
    def num(v, fmt=".3f"):
        return "—" if v is None else format(v, fmt)

    se_note = f" ± SE (n={clips})" if clips else ""
    head = ["trial", *params, f"{metric}{se_note}", f"{target} (reading only)", "discard rate", "GFLOPs/clip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        selected = f"{num(r[metric])}" + (f" ± {r['selection_se']:.3f}" if r.get("selection_se") is not None else "")
        cells = [r["trial"], *(f"{r[p]:g}" if isinstance(r[p], float) else str(r[p]) for p in params), selected,
                 num(r.get(target)), num(r.get("discard_rate")), num(r.get("gflops_per_clip"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    note = indistinguishable(rows, metric)
    return "\n".join(lines + ([f"note: {note}"] if note else []))


def _results_table(grid, cfg: SweepConfig, metric: str, epochs: int, parent, name: str, label: str) -> list[dict]:
    """One row per trial: its hyperparameters, the epochs it reached, the selection metric, target-test
    accuracy (reading only), discard rate and GFLOPs of the trained selector ``label``, tau_hat, status and its MLflow run."""
    target = metric_of(TARGET_METRIC, label)
    runs = parent.client.search_runs([parent.client.get_run(parent.run_id).info.experiment_id],
                                     f"tags.mlflow.parentRunId = '{parent.run_id}'")
    run_ids = {r.info.run_name: r.info.run_id for r in runs}
    rows = []
    for result in grid:
        m = result.metrics or {}
        params = {k: result.config[k] for k in cfg.space}
        trial = m.get("trial_id") or Path(result.path).name
        rows.append({"trial": trial, **params, "epochs": int(m.get("epoch", 0)), metric: m.get(metric),
                     target: m.get(target), "discard_rate": m.get(eval_metric(EVAL_TARGET, label, "discard_rate")),
                     "gflops_per_clip": m.get(eval_metric(EVAL_TARGET, label, "gflops_per_clip")), "tau_hat": m.get(TAU_HAT),
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


def _plot(table: list[dict], params: list[str], path: Path, best: str, target: str) -> Path:
    from lmft_core.train import plots

    return plots.save(plots.sweep_scatter(table, params, target, best), path)


def _log_best(profile: RunConfig, overrides: list[str], best: dict, shards: str, workdir: Path, name: str) -> str:
    """Log the best trial's artifacts and model (from its last checkpoint) into its MLflow run; returns
    the model URI. ``overrides``: the trial's settings and fitted workers."""
    from lmft_core.train.run import TrainingRun

    training = TrainingRun.prepare(profile.with_overrides(overrides), shards, workdir, name=best["trial"],
                                   storage=workdir / "sweeps" / name, run_dir=workdir / "sweeps" / name / "best")
    checkpoint = training.final_checkpoint()
    if not checkpoint.is_dir():
        raise SweepError(f"the best trial {best['trial']} has no final checkpoint at {checkpoint}")
    with training.mlflow_run(run_name=f"{name}-{best['trial']}", resume_run_id=best["run_id"] or None) as run:
        result = training.log_artifacts(run, checkpoint, 0.0)
    return result.model_uri
