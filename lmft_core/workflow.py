"""The main job: data -> preprocess -> (pretrain) -> adapt (train or sweep) -> evaluate -> register -> predict.

The job is a list of stages (:data:`STAGES`), each a :class:`Stage` with its ``outputs`` and its ``run``
over a shared :class:`Flow`; adding a stage is one new class. Every stage's output is keyed by its inputs and
configuration, so a re-run skips what is finished and a failed run resumes where it stopped (``--force
STAGE`` removes a stage's outputs first, those its ``run`` computes from, with no extra preparation):

===========  ===============================================================  ==========================
stage        output (keyed by)                                                 skipped when
===========  ===============================================================  ==========================
data         ``data/`` demo videos and manifest (the demo settings)            the same settings exist
preprocess   ``shards/<hash>/`` (manifest, geometry, CLIP, energy variant)     every video is done
pretrain     ``pretrain/<run>/encoder.pth`` (``[pretrain]``, model, shards)    its result exists
adapt        ``train/<run>/`` or ``sweeps/<sweep>/`` (resolved config, shards)  its result exists
evaluate     ``train/<run>/`` of each baseline training (``[workflow]``)       their results exist
register     a registry version of the adapted model (its source URI)          that version exists
predict      ``predictions/<hash>/`` (model version, input rows)               its summary exists
===========  ===============================================================  ==========================

``pretrain`` runs only with ``[workflow] pretrain = true`` (masked video pretraining on the unlabelled
source and target clips, :mod:`lmft_core.pretrain`); adapt and evaluate then start from its encoder
(``model.pretrained``, which their run names hash, so they are keyed on it).

The console shows a banner as each stage starts (with the time since the start), one line per training epoch,
and last a table of the adapted model against each baseline (:mod:`lmft_core.console`, ``docs/console.md``).

One MLflow parent run per workflow (``workflow-<profile>-<hash>``, reopened by a re-run of the same
workflow) with each stage's run nested under it. The parent carries the headline result: the adapted training's
``target_test/*`` (the names every training logs its own selector's result under, so MLflow's charts overlay the
adapted and baseline runs: :mod:`lmft_core.train.names`), each baseline's as ``baseline/<selector>/*``, the
comparison table and ``evaluation/accuracy_vs_discard.png``; every run has a description (MLflow's note).
Layout of the work directory (``--workdir``)::

    data/  shards/  pretrain/  train/  ray_train/  sweeps/  tune/  predictions/  workflow/  mlflow.db  mlartifacts/

On a Ray cluster the work directory must be storage every node can read and write (NFS, a mounted
bucket): workers read the videos and write shards, checkpoints and predictions there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lmft_core.config import ConfigError
from lmft_core.console import StageClock, duration, plural, table
from lmft_core.demo_data import generate_demo_data
from lmft_core.files import atomic_write, file_sha256
from lmft_core.manifest import Manifest, load_manifest
from lmft_core.model_store import ModelInfo
from lmft_core.preprocess.run import PreprocessSummary, run_preprocess
from lmft_core.run_config import RunConfig
from lmft_core.tracking import Run, check_tracking_server, experiment_url, start_run, ui_command
from lmft_core.train.evaluate import headline
from lmft_core.train.names import result_metric
from lmft_core.train.run import TrainingRun


@dataclass(frozen=True)
class FullRunResult:
    """Where everything a workflow made is."""

    manifest: Path
    preprocess: PreprocessSummary
    run_id: str  # the parent MLflow run
    tracking_uri: str
    experiment: str  # the MLflow experiment's name
    experiment_url: str
    adapted_run: str  # the MLflow run of the adapted model (training, or the sweep's best trial)
    model_uri: str  # the logged model
    registered: str  # models:/<name>@<alias>
    model_version: str
    comparison: list[dict]
    predictions: str
    prediction_summary: dict
    stage_seconds: dict[str, float]  # wall-clock of each stage this run ("generate": the demo data), in order
    elapsed_s: float  # the workflow's wall-clock time in this process


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _force(stage: str, paths: list[Path]) -> None:
    for p in paths:
        if p.exists():
            print(f"[lmft] --force {stage}: removing {p}")
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@dataclass
class Flow:
    """What the stages of one workflow share: its inputs, its parent MLflow run, and what each stage made
    (filled in stage by stage)."""

    profile: RunConfig
    workdir: Path
    manifest: Manifest
    uri: str  # the tracking URI
    parent: Run  # the workflow's MLflow run
    state_dir: Path
    preprocess: PreprocessSummary | None = None
    adapted: RunConfig | None = None  # the profile of the adapted model (a sweep's best trial's)
    adapted_run: str = ""
    adapted_evaluation: dict = field(default_factory=dict)  # every selector on target-test (evaluation.json)
    model_uri: str = ""
    comparison: list[dict] = field(default_factory=list)
    evaluations: list[tuple[str, dict]] = field(default_factory=list)  # (training, its evaluation.json), adapted first
    model: ModelInfo | None = None  # the registered version
    prediction: dict = field(default_factory=dict)

    @property
    def shards(self) -> str:
        return self.preprocess.output_dir

    @contextmanager
    def stage_run(self, name: str) -> Iterator[Run]:
        """The MLflow run of stage ``name``, nested under the workflow's, described by its stage's docstring."""
        with start_run(self.profile.tracking, self.workdir, run_name=name, parent_run_id=self.parent.run_id) as run:
            run.describe(next(" ".join(s.__doc__.split()) for s in STAGES if s.name == name))
            yield run


class Stage(ABC):
    """One stage of the main job: :meth:`outputs`, what it writes, keyed by its inputs and configuration
    (what ``--force`` removes; a re-run finds them and skips the work), and :meth:`run`. A new stage is a
    new subclass in :data:`STAGES`."""

    name = ""

    def outputs(self, flow: Flow) -> list[Path]:
        return []  # a stage that writes no files (register: a registry version, reused when it exists)

    def enabled(self, profile: RunConfig) -> bool:
        """Whether ``profile`` runs this stage (its banner is printed only then)."""
        return True

    def note(self, flow: Flow) -> str:
        """What the stage's banner says besides its name."""
        return ""

    @abstractmethod
    def run(self, flow: Flow) -> None:
        """Do the stage's work (skipping what its outputs already hold), recording what it made in ``flow``."""


class Preprocess(Stage):
    """Decode, motion energy and CLIP pseudo-labels into ``shards/<config hash>/``."""

    name = "preprocess"

    def outputs(self, flow: Flow) -> list[Path]:
        from lmft_core.preprocess.store import config_hash, resolved_config  # the folder preprocessing writes

        p = flow.profile
        return [flow.workdir / "shards" / config_hash(resolved_config(flow.manifest, p.clip, p.pseudo_labels,
                                                                      p.preprocess, p.energy))]

    def run(self, flow: Flow) -> None:
        with flow.stage_run("preprocess") as run:
            summary = run_preprocess(flow.manifest, flow.workdir / "shards", flow.profile)
            print(summary)
            run.log_metrics(summary.metrics())
            run.set_tags({"lmft.stage": "preprocess", "lmft.shards": summary.output_dir,
                          "lmft.untrained_clip": summary.untrained_clip})
            run.log_artifact(summary.metadata_path, "preprocess")
            run.log_artifact(summary.rejects_path, "preprocess")
        flow.parent.log_metrics(summary.metrics())
        flow.preprocess = summary


class Pretrain(Stage):
    """Masked video pretraining on the unlabelled clips (only with ``workflow.pretrain``); from here on the
    workflow's profile starts from its encoder (``model.pretrained``)."""

    name = "pretrain"

    def outputs(self, flow: Flow) -> list[Path]:
        from lmft_core.pretrain.run import prepare_pretrain

        _, name = prepare_pretrain(flow.profile, flow.shards, flow.workdir)
        return [flow.workdir / "pretrain" / name, flow.workdir / "ray_train" / name]

    def enabled(self, profile: RunConfig) -> bool:
        return profile.workflow.pretrain

    def run(self, flow: Flow) -> None:
        from lmft_core.pretrain.run import run_pretrain

        pretrained = run_pretrain(flow.profile, flow.shards, flow.workdir, parent_run_id=flow.parent.run_id)
        flow.parent.log_metrics({"pretrain/final_loss": pretrained.final_loss, "pretrain/clips_per_s": pretrained.clips_per_s})
        flow.profile = flow.profile.with_overrides([f"model.pretrained={json.dumps(pretrained.encoder)}"])


class Adapt(Stage):
    """One training of the profile, or a sweep whose best trial adapts (``workflow.adapt``)."""

    name = "adapt"

    def __init__(self) -> None:
        self._training: TrainingRun | None = None

    def training(self, flow: Flow) -> TrainingRun:
        if self._training is None:
            self._training = TrainingRun.prepare(flow.profile, flow.shards, flow.workdir)
        return self._training

    def outputs(self, flow: Flow) -> list[Path]:
        return [flow.workdir / "sweeps"] if flow.profile.workflow.adapt == "sweep" else self.training(flow).outputs

    def note(self, flow: Flow) -> str:
        p = flow.profile
        if p.workflow.adapt == "sweep":
            return f"sweep of {p.sweep.trials()} trials ({p.sweep.search}), {plural(p.train.epochs, 'epoch')} each"
        return f"adapted training ({p.selector.label}), {plural(p.train.epochs, 'epoch')}"

    def run(self, flow: Flow) -> None:
        if flow.profile.workflow.adapt == "sweep":
            from lmft_core.sweep import run_sweep, trial_overrides

            sweep = run_sweep(flow.profile, flow.shards, flow.workdir, parent_run_id=flow.parent.run_id)
            print(sweep.summary, flush=True)
            flow.adapted_run, flow.model_uri = sweep.best_run_id, sweep.model_uri
            flow.adapted = flow.profile.with_overrides(trial_overrides(sweep.best_params))
        else:
            trained = self.training(flow).run(parent_run_id=flow.parent.run_id, role="Adapted",
                                              title=f"adapted ({flow.profile.selector.label})")
            flow.adapted_run, flow.model_uri, flow.adapted = trained.mlflow_run_id, trained.model_uri, flow.profile
        flow.adapted_evaluation = _evaluation_of(flow.adapted_run, flow.uri)
        flow.comparison = [_comparison_row("adapted", flow.adapted_evaluation, flow.adapted_run, flow.uri)]
        flow.evaluations = [("adapted", flow.adapted_evaluation)]


class Evaluate(Stage):
    """The adapted model's training repeated with each baseline selector (``workflow.baselines``), compared."""

    name = "evaluate"

    def __init__(self) -> None:
        self._trainings: list[TrainingRun] | None = None

    def trainings(self, flow: Flow) -> list[TrainingRun]:
        if self._trainings is None:
            discard = flow.adapted_evaluation.get(flow.adapted.selector.label, {}).get("discard_rate", 0.5)
            self._trainings = [TrainingRun.prepare(flow.adapted.with_overrides(
                ["selector.name='full'"] if baseline == "full" else
                ["selector.name='random'", f"selector.drop_rate={round(discard, 2)}"]), flow.shards, flow.workdir)
                for baseline in flow.profile.workflow.baselines]
        return self._trainings

    def outputs(self, flow: Flow) -> list[Path]:
        return [p for training in self.trainings(flow) for p in training.outputs]

    def note(self, flow: Flow) -> str:
        names = [t.job.selector.label for t in self.trainings(flow)]
        return f"baseline training{'s' if len(names) != 1 else ''} {', '.join(names)}" if names else "no baselines"

    def run(self, flow: Flow) -> None:
        from lmft_core.train import plots

        for training in self.trainings(flow):
            result = training.run(parent_run_id=flow.parent.run_id, role="Baseline",
                                  title=f"baseline ({training.job.selector.label})")
            flow.comparison.append(_comparison_row("baseline", result.evaluation, result.mlflow_run_id, flow.uri))
            flow.evaluations.append((f"baseline {headline(result.evaluation)['selector']}", result.evaluation))
        table = _write_comparison(flow.comparison, flow.state_dir / "comparison.md")
        figure = plots.save(plots.accuracy_vs_discard(accuracy_points(flow.evaluations)),
                            flow.state_dir / "accuracy_vs_discard.png")
        with flow.stage_run("evaluate") as run:
            run.set_tags({"lmft.stage": "evaluate"})
            run.log_artifact(table, "evaluation")
            run.log_artifact(figure, "evaluation")
        flow.parent.log_artifact(table, "evaluation")
        flow.parent.log_artifact(figure, "evaluation")
        flow.parent.log_metrics(headline_metrics(flow.comparison))


class Register(Stage):
    """The adapted model registered as ``workflow.model_name`` with ``workflow.alias`` (one version per source)."""

    name = "register"

    def run(self, flow: Flow) -> None:
        from lmft_core.model_store import register

        cfg = flow.profile.workflow
        with flow.stage_run("register") as run:
            flow.model = register(flow.model_uri, cfg.model_name, cfg.alias, flow.uri,
                                  tags={"lmft.workflow_run": flow.parent.run_id, "lmft.adapted_run": flow.adapted_run})
            run.set_tags({"lmft.stage": "register", "lmft.model": f"models:/{cfg.model_name}@{cfg.alias}",
                          "lmft.model_version": flow.model.version, "lmft.model_source": flow.model_uri})
            print(f"[lmft] registered {flow.model_uri} as {cfg.model_name} version {flow.model.version}, alias @{cfg.alias}")


class Predict(Stage):
    """The held-back target videos (``workflow.predict_split``) labelled into ``predictions/<hash>/``."""

    name = "predict"

    def __init__(self) -> None:
        self._inputs = None

    def inputs(self, flow: Flow):
        from lmft_core.predict import read_inputs

        if self._inputs is None:
            self._inputs = read_inputs(flow.manifest.path, domain="target", split=flow.profile.workflow.predict_split)
        return self._inputs

    def outputs(self, flow: Flow) -> list[Path]:
        cfg, inputs = flow.profile.workflow, self.inputs(flow)
        return [flow.workdir / "predictions" / _key(cfg.model_name, flow.model.version, flow.model_uri,
                                                    inputs.column("video_id").to_pylist(), inputs.column("path").to_pylist(),
                                                    dataclasses.asdict(flow.profile.predict))]

    def run(self, flow: Flow) -> None:
        from lmft_core.predict import read_predictions, run_predict

        cfg, [pred_dir] = flow.profile.workflow, self.outputs(flow)
        with flow.stage_run("predict") as run:
            run.set_tags({"lmft.stage": "predict", "lmft.model": f"models:/{cfg.model_name}@{cfg.alias}"})
            if (pred_dir / "summary.json").is_file():
                print(f"[lmft] predictions of this model on these videos exist: {pred_dir}")
                pred = json.loads((pred_dir / "summary.json").read_text())
            else:
                pred = dataclasses.asdict(run_predict(flow.model, flow.uri, self.inputs(flow), pred_dir,
                                                      flow.profile.predict, flow.profile.preprocess))
            run.log_metrics({f"predict/{k}": v for k, v in pred.items() if isinstance(v, (int, float)) and v is not None})
            run.log_artifact(pred_dir / "summary.json", "predict")
            run.log_artifact(pred_dir / "rejects.csv", "predict")
            if pred["predicted"]:  # a table the UI shows (the run's Artifacts tab; the experiment's Evaluation view)
                run.log_table(read_predictions(pred["predictions"]).to_pandas(), "predict/predictions.json")
            if pred.get("pictures"):
                run.log_artifact(pred["pictures"], "predict/pictures")
            for warning in pred.get("warnings", []):
                print(f"[lmft] WARNING: {warning}")
            if pred.get("warnings"):
                run.set_tags({"lmft.warning": " ".join(pred["warnings"])})
        flow.prediction = pred


STAGES: tuple[type[Stage], ...] = (Preprocess, Pretrain, Adapt, Evaluate, Register, Predict)
STAGE_NAMES = tuple(stage.name for stage in STAGES)


def run_full(profile: RunConfig, workdir: str | Path, manifest: str | Path | None = None,
             force: tuple[str, ...] = ()) -> FullRunResult:
    """Run the whole workflow for ``profile`` (module docstring): the data, then each of :data:`STAGES`
    (``force``: the names of stages whose outputs are removed first); returns where everything is."""
    from lmft_core.ray_cluster import connect

    unknown = sorted(set(force) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(f"--force: unknown stage(s) {unknown}; stages: {list(STAGE_NAMES)}")
    workdir = Path(workdir).resolve()
    uri = profile.tracking.resolve_uri(workdir)
    check_tracking_server(uri)  # an unreachable or refusing server fails here, before any work
    connect(shared_paths=[workdir])  # so does an unreachable Ray cluster or a workdir not shared by every node
    stages = [stage for stage in (cls() for cls in STAGES) if stage.enabled(profile)]
    clock = StageClock(1 + len(stages))
    t0 = time.perf_counter()
    with clock.stage("data", f"demo videos into {workdir / 'data'}" if manifest is None else str(manifest)):
        if manifest is None:
            manifest = generate_demo_data(profile.demo_data, workdir / "data")
        data_s = time.perf_counter() - t0
        checked = load_manifest(manifest)  # a bad manifest fails here, before any work
        print(checked.summary())
    key = _key(profile.settings(), file_sha256(checked.path))
    state_dir = workdir / "workflow" / f"{profile.name}-{key}"
    state_dir.mkdir(parents=True, exist_ok=True)
    parent_file = state_dir / "mlflow_run_id"
    resume = parent_file.read_text().strip() if parent_file.is_file() else None

    with start_run(profile.tracking, workdir, run_name=f"workflow-{profile.name}-{key}", resume_run_id=resume) as parent:
        parent_file.write_text(parent.run_id)
        parent.set_tags({"lmft.stage": "workflow", "lmft.profile": profile.name, "lmft.manifest": checked.path.resolve()})
        if resume is None:
            parent.log_params({**profile.sections, "manifest": str(checked.path.resolve())})
            parent.log_artifact(checked.path, "inputs")
            parent.log_artifact(profile.path, "inputs")
        parent.log_metrics({"data/videos": len(checked.rows), "data/classes": len(checked.classes)})
        flow = Flow(profile=profile, workdir=workdir, manifest=checked, uri=uri, parent=parent, state_dir=state_dir)
        seconds = {"generate": data_s}
        for stage in stages:
            started = time.perf_counter()
            with clock.stage(stage.name, stage.note(flow)):
                if stage.name in force:
                    _force(stage.name, stage.outputs(flow))
                stage.run(flow)
            seconds[stage.name] = time.perf_counter() - started
        parent.log_metrics({f"time/{name}_s": s for name, s in seconds.items()})
        experiment_id = parent.client.get_run(parent.run_id).info.experiment_id
        cfg = profile.workflow
        parent.describe(workflow_description(flow))
        return FullRunResult(
            manifest=checked.path, preprocess=flow.preprocess, run_id=parent.run_id, tracking_uri=uri,
            experiment=profile.tracking.experiment, experiment_url=experiment_url(uri, experiment_id),
            adapted_run=flow.adapted_run, model_uri=flow.model_uri,
            registered=f"models:/{cfg.model_name}@{cfg.alias}", model_version=flow.model.version,
            comparison=flow.comparison, predictions=flow.prediction["predictions"], prediction_summary=flow.prediction,
            stage_seconds=seconds, elapsed_s=clock.elapsed_s)


def _evaluation_of(run_id: str, uri: str) -> dict:
    """The evaluation.json artifact a training logged (every selector on target-test)."""
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/evaluation.json", tracking_uri=uri)
    return json.loads(Path(path).read_text())


def _comparison_row(training: str, evaluation: dict, run_id: str, uri: str) -> dict:
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    wall_s = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else float("nan")
    return {"training": training, **headline(evaluation), "train_wall_s": wall_s,
            "train_clips_per_s": run.data.metrics.get("final/train_clips_per_s", float("nan")), "run_id": run_id}


HEADLINE_KEYS = ("top1", "mean_class_accuracy", "discard_rate", "gflops_per_clip")


def headline_metrics(comparison: list[dict]) -> dict[str, float]:
    """The parent run's result (``comparison``: the adapted training's row first, then the baselines'): the adapted
    model's under the names every training logs its own result under (``target_test/top1``, ...) and its training
    speed (``final/train_clips_per_s``); each baseline's as ``baseline/<selector>/<key>``."""
    adapted, *baselines = comparison
    out = {result_metric(k): adapted[k] for k in HEADLINE_KEYS} | {"final/train_clips_per_s": adapted["train_clips_per_s"]}
    for row in baselines:
        out |= {f"baseline/{row['selector']}/{k}": row[k] for k in (*HEADLINE_KEYS, "train_clips_per_s")}
    return out


def accuracy_points(evaluations: list[tuple[str, dict]]) -> list[dict]:
    """The points of :func:`lmft_core.train.plots.accuracy_vs_discard`: every selector each training was evaluated
    with (its ``evaluation.json``; the first is the selector it trained with)."""
    return [{"training": training, "selector": sel, "own": i == 0, "discard_rate": r["discard_rate"], "top1": r["top1"]}
            for training, evaluation in evaluations for i, (sel, r) in enumerate(evaluation.items())]


def workflow_description(flow: Flow) -> str:
    """The parent run's description (Markdown): what ran, the result, where the rest is."""
    p = flow.profile
    rows = "\n".join(f"| {r['training']} | `{r['selector']}` | {r['top1']:.3f} | {r['discard_rate']:.3f} | "
                     f"{r['gflops_per_clip']:.3f} |" for r in flow.comparison)
    warnings = "".join(f"\n\n**Warning**: {w}" for w in flow.prediction.get("warnings", []))
    return (f"lmft workflow, profile `{p.name}`: preprocess, adapt ({p.workflow.adapt}), baselines "
            f"{list(p.workflow.baselines)}, register `{p.workflow.model_name}@{p.workflow.alias}`, predict "
            f"({flow.prediction.get('predicted', 0)} videos labelled, {flow.prediction.get('rejected', 0)} rejected).\n\n"
            "| training | trained with | target top-1 | discard rate | GFLOPs/clip |\n|---|---|---|---|---|\n"
            f"{rows}\n\nMetrics: `target_test/*` (adapted), `baseline/<selector>/*`; figure: "
            "`evaluation/accuracy_vs_discard.png`; each stage's run is nested below." + warnings)


def _write_comparison(rows: list[dict], path: Path) -> Path:
    lines = ["| training | trained with | target top-1 | mean class acc. | discard rate | GFLOPs/clip | train clips/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['training']} | {r['selector']} | {r['top1']:.3f} | {r['mean_class_accuracy']:.3f} | "
              f"{r['discard_rate']:.3f} | {r['gflops_per_clip']:.3f} | {r['train_clips_per_s']:.1f} |" for r in rows]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def comparison_table(rows: list[dict]) -> str:
    """The adapted model against each baseline training on target-test: top-1, discard rate, GFLOPs per clip and
    the training's wall-clock time (its MLflow run's), one row per training."""
    return table(["training", "target top-1", "discard rate", "GFLOPs/clip", "train time"],
                 [[f"{r['training']} ({r['selector']})", f"{r['top1']:.3f}", f"{r['discard_rate']:.1%}",
                   f"{r['gflops_per_clip']:.3f}", duration(r.get("train_wall_s", float("nan")))] for r in rows])


def where_everything_is(result: FullRunResult) -> str:
    """The end-of-run message: runs, model version, predictions, how to open MLflow, and last the comparison
    table (:func:`comparison_table`)."""
    import shlex

    ui = ui_command(result.tracking_uri)
    return "\n".join([
        f"[lmft] ── done in {duration(result.elapsed_s)} " + "─" * 50,
        f"[lmft] model: {result.registered} (version {result.model_version}; logged as {result.model_uri})",
        f"[lmft] predictions: {result.predictions} ({result.prediction_summary['predicted']} labelled, "
        f"{result.prediction_summary['rejected']} rejected)",
        f"[lmft] MLflow: workflow run {result.run_id}, adapted model's run {result.adapted_run} ({result.tracking_uri})",
        f"[lmft] open MLflow in its model-training view: python -m lmft_core.tracking ui --tracking-uri "
        f"{shlex.quote(result.tracking_uri)} --experiment {shlex.quote(result.experiment)}  (or: {ui})"
        if ui else f"[lmft] MLflow UI: {result.tracking_uri}",
        f"[lmft] this workflow's experiment (model-training view): {result.experiment_url}",
        "",
        comparison_table(result.comparison),
    ])
