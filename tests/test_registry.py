"""The one registry helper: registration, refusal of taken or reserved names, errors naming the field."""

from __future__ import annotations

import pytest

from lmft_core.config import ConfigError
from lmft_core.model import (
    ATTENTION_BACKENDS,
    MODEL_SIZES,
    POLICIES,
    SELECTORS,
    ModelConfig,
    PolicyConfig,
    SegmentThresholdPolicy,
    SelectorConfig,
    ThresholdPolicy,
    register_selector,
)
from lmft_core.registry import Registry


def test_register_direct_and_as_decorator():
    reg: Registry[object] = Registry("widget", reserved=("auto",))
    assert reg.register("a", 1) == 1

    @reg.register("b")
    def b():
        return 2

    assert dict(reg) == {"a": 1, "b": b} and b() == 2
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    with pytest.raises(ValueError, match="widget 'auto' is already registered"):
        reg.register("auto", 3)
    assert reg.check("a", "x.name") == "a" and reg.check("auto", "x.name", extra=("auto",)) == "auto"
    with pytest.raises(ConfigError, match=r"x.name 'c' is not a registered widget; known: \['a', 'b'\]"):
        reg.check("c", "x.name")


def test_the_model_registries_use_it():
    for reg in (MODEL_SIZES, ATTENTION_BACKENDS, SELECTORS, POLICIES):
        assert isinstance(reg, Registry)
    with pytest.raises(ConfigError, match="model.size 'vit_huge' is not a registered model size"):
        ModelConfig(size="vit_huge")
    with pytest.raises(ConfigError, match=r"model.attention 'fast' is not a registered attention backend; known: .*'auto'"):
        ModelConfig(attention="fast")
    with pytest.raises(ConfigError, match="selector.name 'best' is not a registered selector"):
        SelectorConfig(name="best")


def test_threshold_policies_are_registered_by_kind():
    assert dict(POLICIES) == {"scalar": ThresholdPolicy, "segment": SegmentThresholdPolicy}
    assert {"lmft", "lmft-segment"} <= set(SELECTORS)
    with pytest.raises(ConfigError, match=r"policy.kind 'vector' is not a registered threshold policy; known: "
                                          r"\['scalar', 'segment'\]"):
        PolicyConfig(kind="vector")
    with pytest.raises(ConfigError, match="policy of selector 'mine' 'vector' is not a registered threshold policy"):
        register_selector("mine", policy="vector")
    assert "mine" not in SELECTORS


def test_using_tracking_uri_restores_the_process_state(monkeypatch, tmp_path):
    import os

    import mlflow

    from lmft_core.tracking import using_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user-choice:5000")
    with using_tracking_uri(f"sqlite:///{tmp_path / 'a.db'}"):
        assert mlflow.get_tracking_uri().endswith("a.db") and os.environ["MLFLOW_TRACKING_URI"].endswith("a.db")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://user-choice:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with using_tracking_uri(f"sqlite:///{tmp_path / 'b.db'}"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ and not mlflow.get_tracking_uri().endswith("b.db")
