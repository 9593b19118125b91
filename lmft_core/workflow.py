"""The main job: data -> manifest check -> preprocessing (Ray Data), recorded in MLflow.

Layout of the work directory (``--workdir``, default ``outputs/``)::

    <workdir>/data/          generated demo videos and their manifest.csv (when no --manifest is given)
    <workdir>/shards/<hash>/ Parquet shards, metadata.json and rejects.csv written by preprocessing
                             (one folder per preprocessing configuration; shards/LATEST names the newest)
    <workdir>/mlflow.db      the embedded MLflow store (runs, params, metrics)
    <workdir>/mlartifacts/   MLflow artifacts (manifest, profile, preprocessing metadata and rejects)

On a Ray cluster the work directory must be storage every node can read and write (NFS, a mounted
bucket): workers read the videos and write shards there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lmft_core.config import Profile
from lmft_core.demo_data import DemoDataConfig, generate_demo_data
from lmft_core.manifest import load_manifest
from lmft_core.preprocess import PreprocessSummary, run_preprocess
from lmft_core.tracking import TrackingConfig, check_tracking_server, start_run


@dataclass(frozen=True)
class FullRunResult:
    manifest: Path
    preprocess: PreprocessSummary
    run_id: str
    tracking_uri: str


def run_full(profile: Profile, workdir: str | Path, manifest: str | Path | None = None) -> FullRunResult:
    """Run every implemented stage of the main job for ``profile`` and log it as one MLflow run."""
    workdir = Path(workdir).resolve()
    tracking = profile.section("tracking", TrackingConfig)
    check_tracking_server(tracking.resolve_uri(workdir))  # an unreachable or refusing server fails here, before any work
    t0 = time.perf_counter()
    if manifest is None:
        demo = profile.section("demo_data", DemoDataConfig)
        print(f"[lmft] generating demo data into {workdir / 'data'}")
        manifest = generate_demo_data(demo, workdir / "data")
    data_s = time.perf_counter() - t0
    checked = load_manifest(manifest)  # a bad manifest fails here, before any work
    print(checked.summary())

    with start_run(tracking, workdir, run_name=f"full-{profile.name}") as run:
        run.set_tags({"lmft.profile": profile.name, "lmft.manifest": checked.path.resolve()})
        run.log_params({**profile.sections, "manifest": str(checked.path.resolve())})
        run.log_metrics({
            "data/videos": len(checked.rows),
            "data/classes": len(checked.classes),
            "data/generate_s": data_s,
        })
        run.log_artifact(checked.path, "inputs")
        run.log_artifact(profile.path, "inputs")

        summary = run_preprocess(checked, workdir / "shards", profile)
        print(summary)
        run.log_metrics(summary.metrics())
        run.set_tags({"lmft.shards": summary.output_dir, "lmft.untrained_clip": summary.untrained_clip})
        run.log_artifact(summary.metadata_path, "preprocess")
        run.log_artifact(summary.rejects_path, "preprocess")
        return FullRunResult(manifest=checked.path, preprocess=summary, run_id=run.run_id,
                             tracking_uri=tracking.resolve_uri(workdir))
