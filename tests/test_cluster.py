"""Cluster definitions validate against Ray's own cluster-launcher schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_cluster_yaml_is_valid_for_ray_up(path):
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))  # as `ray up` does; raises naming the bad key
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if " start " in c)  # token auth on every node
    assert any(k.endswith(".ray/auth_token") for k in config["file_mounts"])  # one token for all nodes


def test_there_is_a_cluster_definition():
    assert sorted(p.name for p in CLUSTER.glob("*.yaml")) == ["onprem.yaml"]
