"""Shared test fixtures: the tiny demo data set, a local Ray instance, the real test videos."""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"

# The smallest whole workflow (`--set` overrides of the demo profile) for tests that run the main job
# against real servers (MLflow with authentication, a multi-node Ray cluster): extend it, in this one
# place, when the workflow grows stages.
TINY_WORKFLOW = ["demo_data.classes=['wave', 'jump']", "demo_data.videos_per_class=2", "demo_data.num_frames=16",
                 "demo_data.width=64", "demo_data.height=48"]


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_session(proc, grace_s: float = 20.0) -> None:
    """Stop a server a test started with ``start_new_session=True``: SIGTERM to it (it shuts down its own
    children: ``ray start --block`` stops its node), then SIGKILL what is left of its process group
    (only that group: never other developers' servers)."""
    import signal
    import subprocess

    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def wait_for(ready: Callable[[], bool], timeout_s: float, what: str, proc=None, log: Path | None = None) -> float:
    """Poll ``ready()`` every 0.25 s until it is true (returns the seconds waited); fail after ``timeout_s``
    or when ``proc`` exits, showing the end of ``log``."""
    import time

    t0 = time.monotonic()
    while not ready():
        died = proc is not None and proc.poll() is not None
        if died or time.monotonic() - t0 > timeout_s:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            state = f"exited with {proc.returncode}" if died else f"not ready after {timeout_s:.0f} s"
            raise RuntimeError(f"{what} {state}:\n{tail}")
        time.sleep(0.25)
    return time.monotonic() - t0
