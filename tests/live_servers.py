"""Helpers for tests against live servers they start (an MLflow tracking server, a Ray cluster): free
loopback ports, readiness polling, stopping a server's whole process group, and the tiny workflow they run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# The smallest whole workflow (`--set` overrides of the demo profile) for tests that run the main job
# against real servers (MLflow with authentication, a multi-node Ray cluster): extend it, in this one
# place, when the workflow grows stages.
TINY_WORKFLOW = ["demo_data.classes=['wave', 'jump']", "demo_data.videos_per_class=2", "demo_data.num_frames=16",
                 "demo_data.width=64", "demo_data.height=48",
                 # 8 frames of 32 px (a 4 x 4 x 4 token grid), a two-block ViT, one epoch on one worker, no baseline
                 "clip.num_frames=8", "clip.image_size=32", "clip.patch=8", "model.size='vit_tiny'", "model.embed_dim=48",
                 "model.depth=2", "model.num_heads=3", "train.epochs=1", "train.batch_size=1", "train.workers=1",
                 "train.eval_batch_size=8", "workflow.baselines=[]",
                 # the tests' own schedule, whatever the demo's (as conftest.TINY_TRAIN)
                 "train.threads_per_worker=0", "train.cpus_per_worker=0.5", "train.eval_every_epochs=1", "train.lr=1e-3",
                 "selector.first_segment='keep'", "demo_data.target_test_fraction=0.5"]


def free_port() -> int:
    """A TCP port that nothing uses now on any IPv4 address (for servers a test starts).

    Bound on all interfaces, not 127.0.0.1 only: Ray's gRPC servers set SO_REUSEPORT, so a head whose GCS
    takes a port another process holds on the host's IP (a core worker of the session's local Ray) starts
    fine, while a second node, which dials the host's IP, reaches the other process and never joins."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def stop_session(proc, grace_s: float = 20.0) -> None:
    """Stop a server a test started with ``start_new_session=True``: SIGTERM to it (it shuts down its own
    children: ``ray start --block`` stops its node), then SIGKILL what is left of its process group
    (only that group: never other developers' servers)."""
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
    t0 = time.monotonic()
    while not ready():
        died = proc is not None and proc.poll() is not None
        if died or time.monotonic() - t0 > timeout_s:
            tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
            state = f"exited with {proc.returncode}" if died else f"not ready after {timeout_s:.0f} s"
            raise RuntimeError(f"{what} {state}:\n{tail}")
        time.sleep(0.25)
    return time.monotonic() - t0
