"""Shared test fixtures: the tiny demo data set, a local Ray instance, the real test videos."""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"


def entry_main(script: str) -> Callable[[list[str]], int]:
    """``main`` of the entry script ``pipelines/<script>.py``, loaded by path (``pipelines`` is no package)."""
    return runpy.run_path(str(REPO / "pipelines" / f"{script}.py"))["main"]


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """Manifest path of the ``tiny`` demo-data preset (3 classes x 4 videos x 2 domains, 16 frames 64x48)."""
    from lmft_core.demo_data import DemoDataConfig, generate_demo_data

    return generate_demo_data(DemoDataConfig.preset("tiny"), tmp_path_factory.mktemp("tiny_demo"))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The real (and broken) video files in ``../shared/videos``; see its README."""
    if not SHARED_VIDEOS.is_dir():
        raise FileNotFoundError(f"{SHARED_VIDEOS} is missing: the tests expect the shared/ folder beside the repository")
    return SHARED_VIDEOS


@pytest.fixture(autouse=True)
def _tracking_store(monkeypatch, tmp_path_factory):
    """Every test has an MLflow store of its own: ``MLFLOW_TRACKING_URI`` points at a temporary one, so a call
    that names no store (MLflow >= 3.7 would create ``./mlflow.db`` in the working directory) writes nowhere
    near the repository, and no test sees another's runs or URI. A test of the work directory's own store
    asks for :func:`embedded_store`; :func:`pytest_sessionfinish` fails the run if a store appeared in the
    repository all the same."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield


@pytest.fixture
def embedded_store(monkeypatch):
    """``MLFLOW_TRACKING_URI`` unset: the test checks the work directory's embedded store (``<workdir>/mlflow.db``)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


# What an MLflow client creates when no store is named: none may appear in the repository during the tests.
STORE_NAMES = ("mlflow.db", "mlruns", "mlartifacts")


def stores_in_repository() -> set[Path]:
    found = set()
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__", "node_modules")]
        found |= {Path(folder) / n for n in (*dirs, *files) if n in STORE_NAMES or n.endswith(".db")}
    return found


def pytest_sessionstart(session):
    session.config.stash[_STORES_BEFORE] = stores_in_repository()


def pytest_sessionfinish(session, exitstatus):
    new = sorted(stores_in_repository() - session.config.stash.get(_STORES_BEFORE, set()))
    if new:
        print(f"\nFAILED: the tests wrote MLflow stores into the repository: {[str(p) for p in new]} "
              "(a call without a tracking URI: scope it with lmft_core.tracking.using_tracking_uri)")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STORES_BEFORE = pytest.StashKey[set]()


def start_local_ray(num_cpus: int = 2):
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard)."""
    ray = start_local_ray()
    yield ray
    ray.shutdown()


# A small training configuration for tests: 8 frames of 32 px in tubelets of 2 x 8 x 8 (a 4 x 4 x 4
# token grid), a tiny CLIP saved to disk (loaded through the same option as real weights), a
# two-block ViT, two Ray Train workers.
TINY_CLIP_GEOMETRY = ["clip.num_frames=8", "clip.image_size=32", "clip.patch=8"]
TINY_TRAIN = ["model.size='vit_tiny'", "model.embed_dim=48", "model.depth=2", "model.num_heads=3",
              "train.epochs=3", "train.batch_size=2", "train.workers=2", "train.cpus_per_worker=0.5",
              "train.eval_batch_size=8", "train.warmup_epochs=0.0", "train.gamma_c=0.3",
              # the tests' own schedule, whatever the demo's: one thread per half-CPU worker, evaluated every epoch,
              # the paper's first-segment rule (the golden numbers and the selector labels the tests read)
              "train.threads_per_worker=0", "train.eval_every_epochs=1", "train.lr=1e-3", "selector.first_segment='keep'"]


@pytest.fixture(scope="session")
def tiny_clip_weights(tmp_path_factory):
    from lmft_core.pseudo_labels import save_random_checkpoint

    return save_random_checkpoint(tmp_path_factory.mktemp("tiny_clip"), seed=0)


def tiny_clip_overrides(clip) -> list[str]:
    return [f'pseudo_labels.model="{clip.model}"', f'pseudo_labels.model_config="{clip.model_config}"',
            f'pseudo_labels.pretrained="{clip.pretrained}"']


@pytest.fixture(scope="session")
def tiny_shards(ray_local, tiny_demo, tiny_clip_weights, tmp_path_factory) -> Path:
    """The tiny demo set preprocessed at the tiny geometry (the output root, with LATEST)."""
    from lmft_core.preprocess.run import run_preprocess
    from lmft_core.run_config import load_profile

    out = tmp_path_factory.mktemp("tiny_shards")
    profile = load_profile("demo", TINY_CLIP_GEOMETRY + tiny_clip_overrides(tiny_clip_weights)
                           + ["preprocess.decode_batch_size=4", "preprocess.labeler_batch_size=8"])
    run_preprocess(tiny_demo, out, profile)
    return out


@pytest.fixture(scope="session")
def tiny_trained(tiny_shards, tmp_path_factory):
    """(workdir, TrainResult) of a tiny LMFT training on ``tiny_shards`` (2 Ray Train workers, 3 epochs)."""
    from lmft_core.run_config import load_profile
    from lmft_core.train.run import run_training

    workdir = tmp_path_factory.mktemp("train")
    return workdir, run_training(load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN), tiny_shards, workdir)
