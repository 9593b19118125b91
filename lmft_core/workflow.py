"""The main job: data -> preprocess -> adapt (train or sweep) -> evaluate -> register -> predict.

Every stage's output is keyed by its inputs and configuration, so a re-run skips what is finished and a
failed run resumes where it stopped (``--force STAGE`` redoes a stage):

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

One MLflow parent run per workflow (``workflow-<profile>-<hash>``, reopened by a re-run of the same
workflow) with each stage's run nested under it. Layout of the work directory (``--workdir``)::

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
from dataclasses import dataclass
from pathlib import Path

from lmft_core.config import ConfigError, Profile
from lmft_core.demo_data import DemoDataConfig, generate_demo_data
from lmft_core.files import atomic_write, file_sha256
from lmft_core.manifest import load_manifest
from lmft_core.preprocess import PreprocessSummary, run_preprocess
from lmft_core.tracking import TrackingConfig, check_tracking_server, experiment_url, start_run, ui_command

STAGES = ("preprocess", "pretrain", "adapt", "evaluate", "register", "predict")
ADAPT = ("train", "sweep")


@dataclass(frozen=True)
class WorkflowConfig:
    """The ``[workflow]`` section: ``adapt`` is ``train`` (one training) or ``sweep`` (Ray Tune over
    ``[sweep]``, the best trial adapts); ``baselines`` are the selectors trained the same way for
    comparison in the evaluate stage (``full``: every token; ``random``: random drop at LMFT's
    discard rate on target-test); the adapted model is registered as ``model_name`` with ``alias``;
    ``predict_split`` names the manifest's target rows labelled at the end (the held-back videos);
    ``pretrain`` runs masked video pretraining (``[pretrain]``) before adapting, from its encoder."""

    adapt: str = "train"
    pretrain: bool = False
    baselines: tuple[str, ...] = ("full",)
    model_name: str = "lmft"
    alias: str = "best"
    predict_split: str = "test"

    def __post_init__(self) -> None:
        if self.adapt not in ADAPT:
            raise ConfigError(f"workflow.adapt must be one of {list(ADAPT)}, got {self.adapt!r}")
        bad = [b for b in self.baselines if b not in ("full", "random")]
        if bad:
            raise ConfigError(f"workflow.baselines: {bad} are not baseline trainings (use 'full' or 'random')")
        if not self.model_name or "/" in self.model_name or "@" in self.model_name:
            raise ConfigError(f"workflow.model_name {self.model_name!r}: a plain name, please")


@dataclass(frozen=True)
class FullRunResult:
    """Where everything a workflow made is."""

    manifest: Path
    preprocess: PreprocessSummary
    run_id: str  # the parent MLflow run
    tracking_uri: str
    experiment_url: str
    adapted_run: str  # the MLflow run of the adapted model (training, or the sweep's best trial)
    model_uri: str  # the logged model
    registered: str  # models:/<name>@<alias>
    model_version: str
    comparison: list[dict]
    predictions: str
    prediction_summary: dict


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _force(stage: str, paths: list[Path]) -> None:
    for p in paths:
        if p.exists():
            print(f"[lmft] --force {stage}: removing {p}")
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_full(profile: Profile, workdir: str | Path, manifest: str | Path | None = None,
             force: tuple[str, ...] = ()) -> FullRunResult:
    """Run the whole workflow for ``profile`` (module docstring); returns where everything is."""
    from lmft_core.model_registry import register
    from lmft_core.predict import read_inputs, run_predict
    from lmft_core.ray_cluster import connect
    from lmft_core.shards import ShardSet
    from lmft_core.train.run import prepare, run_training

    unknown = sorted(set(force) - set(STAGES))
    if unknown:
        raise ConfigError(f"--force: unknown stage(s) {unknown}; stages: {list(STAGES)}")
    workdir = Path(workdir).resolve()
    flow: WorkflowConfig = profile.section("workflow")
    tracking = profile.section("tracking", TrackingConfig)
    uri = tracking.resolve_uri(workdir)
    check_tracking_server(uri)  # an unreachable or refusing server fails here, before any work
    connect(shared_paths=[workdir])  # so does an unreachable Ray cluster or a workdir not shared by every node
    t0 = time.perf_counter()
    if manifest is None:
        demo = profile.section("demo_data", DemoDataConfig)
        print(f"[lmft] demo data in {workdir / 'data'}")
        manifest = generate_demo_data(demo, workdir / "data")
    data_s = time.perf_counter() - t0
    checked = load_manifest(manifest)  # a bad manifest fails here, before any work
    print(checked.summary())
    key = _key(profile.sections, file_sha256(checked.path))
    state_dir = workdir / "workflow" / f"{profile.name}-{key}"
    state_dir.mkdir(parents=True, exist_ok=True)
    parent_file = state_dir / "mlflow_run_id"
    resume = parent_file.read_text().strip() if parent_file.is_file() else None

    with start_run(tracking, workdir, run_name=f"workflow-{profile.name}-{key}", resume_run_id=resume) as parent:
        parent_file.write_text(parent.run_id)
        parent.set_tags({"lmft.stage": "workflow", "lmft.profile": profile.name, "lmft.manifest": checked.path.resolve()})
        if resume is None:
            parent.log_params({**profile.sections, "manifest": str(checked.path.resolve())})
            parent.log_artifact(checked.path, "inputs")
            parent.log_artifact(profile.path, "inputs")
        parent.log_metrics({"data/videos": len(checked.rows), "data/classes": len(checked.classes), "data/generate_s": data_s})

        # preprocess
        if "preprocess" in force:
            from lmft_core.preprocess.store import config_hash, resolved_config  # the folder preprocessing writes

            content = resolved_config(checked, profile.clip, profile.section("pseudo_labels"), profile.section("preprocess"),
                                      profile.section("energy"))
            _force("preprocess", [workdir / "shards" / config_hash(content)])
        with start_run(tracking, workdir, run_name="preprocess", parent_run_id=parent.run_id) as run:
            summary = run_preprocess(checked, workdir / "shards", profile)
            print(summary)
            run.log_metrics(summary.metrics())
            run.set_tags({"lmft.stage": "preprocess", "lmft.shards": summary.output_dir,
                          "lmft.untrained_clip": summary.untrained_clip})
            run.log_artifact(summary.metadata_path, "preprocess")
            run.log_artifact(summary.rejects_path, "preprocess")
        parent.log_metrics(summary.metrics())
        shards = summary.output_dir

        # pretrain (optional): adaptation and baselines start from its encoder
        if flow.pretrain:
            from lmft_core.pretrain.run import prepare_pretrain, run_pretrain

            if "pretrain" in force:
                _, name = prepare_pretrain(profile, shards, workdir)
                _force("pretrain", [workdir / "pretrain" / name, workdir / "ray_train" / name])
            pretrained = run_pretrain(profile, shards, workdir, parent_run_id=parent.run_id)
            parent.log_metrics({"pretrain/final_loss": pretrained.final_loss, "pretrain/clips_per_s": pretrained.clips_per_s})
            profile = profile.with_overrides([f"model.pretrained={json.dumps(pretrained.encoder)}"])

        # adapt
        if flow.adapt == "sweep":
            from lmft_core.sweep import run_sweep

            if "adapt" in force:
                _force("adapt", [workdir / "sweeps"])
            sweep = run_sweep(profile, shards, workdir, parent_run_id=parent.run_id)
            adapted_run, model_uri = sweep.best_run_id, sweep.model_uri
            adapted = profile.with_overrides([f"{k}={v}" for k, v in zip(
                ("train.gamma_c", "policy.loss_weight", "train.lambda_t"), sweep.best_params.values())])
        else:
            adapted = profile
            if "adapt" in force:
                _, name = prepare(profile, shards, workdir)
                _force("adapt", [workdir / "train" / name, workdir / "ray_train" / name])
            trained = run_training(profile, shards, workdir, parent_run_id=parent.run_id)
            adapted_run, model_uri = trained.mlflow_run_id, trained.model_uri
        lmft_eval = _evaluation_of(adapted_run, uri)

        # evaluate: the same training with the baseline selectors
        rows = [_comparison_row("adapted", lmft_eval, adapted_run, uri)]
        lmft_discard = lmft_eval.get(adapted.section("selector").label, {}).get("discard_rate", 0.5)
        for baseline in flow.baselines:
            sets = ["selector.name='full'"] if baseline == "full" else \
                ["selector.name='random'", f"selector.drop_rate={round(lmft_discard, 2)}"]
            profile_b = adapted.with_overrides(sets)
            if "evaluate" in force:
                _, name = prepare(profile_b, shards, workdir)
                _force("evaluate", [workdir / "train" / name, workdir / "ray_train" / name])
            result = run_training(profile_b, shards, workdir, parent_run_id=parent.run_id)
            rows.append(_comparison_row("baseline", result.evaluation, result.mlflow_run_id, uri))
        with start_run(tracking, workdir, run_name="evaluate", parent_run_id=parent.run_id) as run:
            run.set_tags({"lmft.stage": "evaluate"})
            table = _write_comparison(rows, state_dir / "comparison.md")
            run.log_artifact(table, "evaluation")
            for row in rows:
                run.log_metrics({f"compare/{row['selector']}/{k}": row[k] for k in (
                    "top1", "mean_class_accuracy", "discard_rate", "gflops_per_clip", "train_clips_per_s")})
        parent.log_artifact(table, "evaluation")

        # register
        with start_run(tracking, workdir, run_name="register", parent_run_id=parent.run_id) as run:
            info = register(model_uri, flow.model_name, flow.alias, uri,
                            tags={"lmft.workflow_run": parent.run_id, "lmft.adapted_run": adapted_run})
            run.set_tags({"lmft.stage": "register", "lmft.model": f"models:/{flow.model_name}@{flow.alias}",
                          "lmft.model_version": info.version, "lmft.model_source": model_uri})
            print(f"[lmft] registered {model_uri} as {flow.model_name} version {info.version}, alias @{flow.alias}")

        # predict: the held-back target videos
        inputs = read_inputs(checked.path, domain="target", split=flow.predict_split)
        pred_key = _key(flow.model_name, info.version, model_uri, inputs.column("video_id").to_pylist(),
                        inputs.column("path").to_pylist(), profile.sections.get("predict", {}))
        pred_dir = workdir / "predictions" / pred_key
        if "predict" in force:
            _force("predict", [pred_dir])
        with start_run(tracking, workdir, run_name="predict", parent_run_id=parent.run_id) as run:
            run.set_tags({"lmft.stage": "predict", "lmft.model": f"models:/{flow.model_name}@{flow.alias}"})
            if (pred_dir / "summary.json").is_file():
                print(f"[lmft] predictions of this model on these videos exist: {pred_dir}")
                pred = json.loads((pred_dir / "summary.json").read_text())
            else:
                pred = dataclasses.asdict(run_predict(info, uri, inputs, pred_dir, profile))
            run.log_metrics({f"predict/{k}": v for k, v in pred.items() if isinstance(v, (int, float)) and v is not None})
            run.log_artifact(pred_dir / "summary.json", "predict")
            run.log_artifact(pred_dir / "rejects.csv", "predict")
        experiment_id = parent.client.get_run(parent.run_id).info.experiment_id
        return FullRunResult(
            manifest=checked.path, preprocess=summary, run_id=parent.run_id, tracking_uri=uri,
            experiment_url=experiment_url(uri, experiment_id), adapted_run=adapted_run, model_uri=model_uri,
            registered=f"models:/{flow.model_name}@{flow.alias}", model_version=info.version, comparison=rows,
            predictions=pred["predictions"], prediction_summary=pred)


def _evaluation_of(run_id: str, uri: str) -> dict:
    """The evaluation.json artifact a training logged (every selector on target-test)."""
    import mlflow.artifacts

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="evaluation/evaluation.json", tracking_uri=uri)
    return json.loads(Path(path).read_text())


def _comparison_row(training: str, evaluation: dict, run_id: str, uri: str) -> dict:
    from mlflow import MlflowClient

    from lmft_core.train.evaluate import headline

    metrics = MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics
    return {"training": training, **headline(evaluation),
            "train_clips_per_s": metrics.get("final/train_clips_per_s", float("nan")), "run_id": run_id}


def _write_comparison(rows: list[dict], path: Path) -> Path:
    lines = ["| training | trained with | target top-1 | mean class acc. | discard rate | GFLOPs/clip | train clips/s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['training']} | {r['selector']} | {r['top1']:.3f} | {r['mean_class_accuracy']:.3f} | "
              f"{r['discard_rate']:.3f} | {r['gflops_per_clip']:.3f} | {r['train_clips_per_s']:.1f} |" for r in rows]
    with atomic_write(path) as f:
        f.write("\n".join(lines) + "\n")
    return path


def where_everything_is(result: FullRunResult) -> str:
    """The end-of-run message: runs, model version, predictions, how to open MLflow."""
    ui = ui_command(result.tracking_uri)
    return "\n".join([
        f"[lmft] workflow MLflow run {result.run_id} ({result.tracking_uri}); adapted model's run {result.adapted_run}",
        f"[lmft] shards: {result.preprocess.output_dir}",
        f"[lmft] model: {result.registered} (version {result.model_version}; logged as {result.model_uri})",
        f"[lmft] predictions: {result.predictions} ({result.prediction_summary['predicted']} labelled, "
        f"{result.prediction_summary['rejected']} rejected)",
        *(f"[lmft]   {r['training']}: target top-1 {r['top1']:.3f}, discard rate {r['discard_rate']:.3f}" for r in result.comparison),
        f"[lmft] open MLflow: {ui}" if ui else f"[lmft] MLflow UI: {result.tracking_uri}",
        f"[lmft] this workflow's experiment (model-training view): {result.experiment_url}",
    ])
