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


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard)."""
    import ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
