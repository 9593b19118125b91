"""The one way lmft gets a Ray connection: :func:`connect`.

Where it connects:

- ``RAY_ADDRESS`` set (``host:port`` of the head's GCS, or ``auto``): that cluster. A driver started
  by ``ray job submit`` always has it (the job server sets it), so submitted jobs join their cluster.
- otherwise: a new local Ray instance for this process (never some other cluster that happens to run
  on the machine), stopped when the process ends.

Token authentication (Ray >= 2.52; on by default for clusters started with ``ray start`` and
``ray.init()``, and set by KubeRay's ``authOptions: {mode: token}``). Every process that connects to
such a cluster (``ray start --address``, ``ray job submit``, ``ray status``, a driver with
``RAY_ADDRESS``) needs, in its environment:

- ``RAY_AUTH_MODE=token``, and
- the cluster's token: the file ``~/.ray/auth_token`` (``ray start --head`` writes it), or a file
  named by ``RAY_AUTH_TOKEN_PATH``, or the token itself in ``RAY_AUTH_TOKEN``.

Drivers of ``ray job submit`` and KubeRay pods get both from the cluster. A driver that reaches a
token cluster without them waits about 20 s and fails with Ray's bare "Failed to connect";
:func:`connect` turns that into :class:`RayConnectionError` naming the address and these variables.

Environment for Ray workers: worker processes inherit the environment of the node's raylet, not of the
driver, so settings the driver has (``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, ...) would be missing on the workers. :func:`connect` passes every
``MLFLOW_*`` variable of the driver to all of the job's workers through the job's ``runtime_env``
(:func:`forwarded_env`; ones the submitted job's own ``runtime_env`` already sets are left to it).
The runtime_env is visible to whoever holds the cluster's token (dashboard, ``ray job list``).

Storage: on a cluster of several nodes, every path that workers read or write (the work directory:
videos, shards, checkpoints) must be storage every node sees at the same path (NFS, a mounted bucket).
``connect(shared_paths=[...])`` checks it: a marker file written by the driver must be visible from a
task on every live node, else :class:`SharedStorageError` names the nodes that do not see it.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

from lmft_core.config import ConfigError

log = logging.getLogger(__name__)

FORWARDED_PREFIXES = ("MLFLOW_",)
# Where Ray's job supervisor hands a submitted job's driver its runtime_env (ray/_private/runtime_env/constants.py)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
SHARED_CHECK_TIMEOUT_S = 120.0
_checked_paths: set[Path] = set()


class RayConnectionError(ConfigError):
    """The Ray cluster named by the environment cannot be reached (address, token)."""


class SharedStorageError(ConfigError):
    """A path that workers use is not visible from every node of the cluster."""


def _job_env_vars() -> dict[str, str]:
    """Env vars that the submitted job's own runtime_env sets (``ray job submit --runtime-env-json``)."""
    injected = json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}")
    return (injected.get("runtime_env") or {}).get("env_vars") or {}


def forwarded_env() -> dict[str, str]:
    """The driver's variables that every Ray worker of the job needs: all ``MLFLOW_*`` variables,
    except those the submitted job's runtime_env already sets (Ray refuses to merge a key twice).

    Pass them on explicitly where a component builds its own runtime_env, e.g. for Ray Train:
    ``RunConfig(worker_runtime_env={"env_vars": forwarded_env()})``.
    """
    already = _job_env_vars()
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(FORWARDED_PREFIXES) and k not in already}


def _connection_error(address: str, error: Exception) -> RayConnectionError:
    mode = os.environ.get("RAY_AUTH_MODE", "<unset>")
    token = ("RAY_AUTH_TOKEN" if os.environ.get("RAY_AUTH_TOKEN") else
             f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}" if os.environ.get("RAY_AUTH_TOKEN_PATH") else
             "~/.ray/auth_token" if (Path.home() / ".ray" / "auth_token").is_file() else "none found")
    return RayConnectionError(
        f"cannot connect to the Ray cluster at RAY_ADDRESS={address} ({type(error).__name__}: {error}). "
        "Check that the cluster runs and the address is its head's GCS (host:6379). If it uses token "
        "authentication (the default since Ray 2.52), set RAY_AUTH_MODE=token and give the cluster's token "
        "in the file ~/.ray/auth_token, a file named by RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN "
        f"(now: RAY_AUTH_MODE={mode}, token: {token}). Unset RAY_ADDRESS to run on a local Ray instance.")


def cluster_address() -> str:
    """The cluster a driver joins: ``RAY_ADDRESS`` (a head's GCS address, or ``auto``), "" for a new local instance."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address.startswith(("http://", "https://")):
        raise RayConnectionError(
            f"RAY_ADDRESS={address} is a dashboard (job server) URL; drivers need the head's GCS "
            "address (host:6379). To submit a job through the dashboard use `ray job submit --address "
            f"{address}` (or RAY_API_SERVER_ADDRESS) instead.")
    return address


def connect(shared_paths: Iterable[str | Path] = ()):
    """Connect this process to Ray (the cluster in ``RAY_ADDRESS``, else a new local instance; see the
    module docstring) once, and return the ``ray`` module. Later calls reuse the connection.

    ``shared_paths``: folders that Ray workers read or write; on a multi-node cluster each is checked
    to be visible from every node (:func:`check_shared_storage`). Raises :class:`RayConnectionError`
    or :class:`SharedStorageError` with what to change. Workers' output and Ray Data's progress stay in Ray's log
    files unless ``--verbose`` (:mod:`lmft_core.console`); the first connection prints where they are.
    """
    import ray

    from lmft_core.console import quiet_ray_data, quiet_ray_notices, ray_init_options

    if not ray.is_initialized():
        quiet_ray_notices()
        address = cluster_address()
        env = forwarded_env()
        runtime_env = {"env_vars": env} if env else None
        try:
            ray.init(address=address or "local", runtime_env=runtime_env, **ray_init_options())
        except (ConnectionError, ray.exceptions.AuthenticationError) as e:
            if not address:
                raise
            raise _connection_error(address, e) from None
        print(f"[lmft] Ray: {ray.cluster_resources().get('CPU', 0):g} CPUs; Ray's own logs: "
              f"{ray_logs_dir()} (--verbose shows them here)", flush=True)
    quiet_ray_data()
    for path in shared_paths:
        check_shared_storage(path)
    return ray


RESOURCE_VIEW_TIMEOUT_S = 10.0


def wait_for_resource_view(ray, timeout_s: float = RESOURCE_VIEW_TIMEOUT_S) -> bool:
    """Wait (at most ``timeout_s``) until Ray's view of available resources shows free CPUs; returns whether it does.

    Just after ``ray.init`` the GCS's view of available resources can still be empty while nothing runs (seen here:
    the first Ray Data job 2-5 s after connecting, always preprocessing, found no available CPU in that view in 7
    of 40 sessions; never one started 8 s or more after). Ray Data reads that view when a job starts and then warns
    "The Ray cluster currently does not have any available CPUs. The Dataset job will hang", a false alarm: the job
    runs. The view also lags the release of CPUs that short tasks just held: a finished training's (the workflow's
    prediction starts right after one) and Ray Data's own block-metadata tasks of ``from_arrow``, which take every CPU
    for a moment just before the job starts (seen in the demo's preprocessing). So each Ray Data job of lmft waits for
    the view right before it executes (preprocessing's write, prediction's write). A cluster that is busy for real (a
    shared one) keeps its CPUs taken: the wait ends after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while not ray.available_resources().get("CPU"):
        if not ray.cluster_resources().get("CPU") or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def ray_logs_dir() -> str:
    """The folder of this Ray session's log files (workers', actors', Ray Data's) on the driver's node."""
    import ray

    try:
        return str(Path(ray._private.worker._global_node.get_session_dir_path()) / "logs")
    except AttributeError:  # connected as a client, without a local node
        return "the head node's /tmp/ray/session_latest/logs"


def _node_sees(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(path: str | Path, timeout_s: float = SHARED_CHECK_TIMEOUT_S) -> list[str]:
    """Check that folder ``path`` (created if missing) is the same storage on every live node.

    The driver writes a marker file there and a task pinned to each node looks for it. Returns the
    addresses of the nodes checked (none on a single-node cluster, or for a path checked before). Raises
    :class:`SharedStorageError` naming the nodes that do not see it. Nodes that join later (autoscaling)
    are not checked; a node that does not answer within ``timeout_s`` is named in a warning.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    path = Path(path).resolve()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2 or path in _checked_paths:
        return []
    path.mkdir(parents=True, exist_ok=True)
    marker = path / f".lmft-shared-check-{uuid.uuid4().hex}"
    marker.write_text("written by lmft's driver to check that every Ray node sees this folder\n")
    try:
        remote = ray.remote(num_cpus=0, max_retries=0)(_node_sees)
        refs = [remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(marker))
                for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        answers = {}
        for ref in ready:
            try:
                answers[ref] = ray.get(ref)
            except ray.exceptions.RayError:  # the node went away meanwhile: no answer
                pass
    finally:
        marker.unlink()
    addresses = [n["NodeManagerAddress"] for n in nodes]
    blind = [a for a, ref in zip(addresses, refs) if answers.get(ref) is False]
    silent = [a for a, ref in zip(addresses, refs) if ref not in answers]
    if blind:
        raise SharedStorageError(
            f"{path} is not visible from {len(blind)} of the cluster's {len(nodes)} nodes ({', '.join(blind)}): "
            "on a multi-node cluster the work directory must be shared storage (NFS, a mounted bucket) "
            "mounted at the same path on every node (--workdir /shared/...)")
    if silent:
        log.warning("could not check within %.0f s that nodes %s see %s (shared storage)", timeout_s, silent, path)
    else:
        print(f"[lmft] {path}: visible from all {len(nodes)} Ray nodes (shared storage)")
    _checked_paths.add(path)
    return addresses
