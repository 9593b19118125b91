"""Adapted models in MLflow's model registry: register with an alias, resolve for prediction.

A model logged by training (:mod:`lmft_core.train.artifacts`) carries in its MLflow metadata what
prediction needs: the classes, the clip geometry, the energy variant its shards used, tau_hat and the
selector. :func:`register` puts it in the registry under a name, sets an alias (aliases, not the
deprecated stages) and tags the version with the same facts; :func:`resolve` turns any model reference
(``models:/<name>@<alias>``, ``models:/<name>/<version>``, ``models:/<model id>``, ``runs:/...``) into a
:class:`ModelInfo`, or fails at start with a clear :class:`ModelRegistryError` (no such model, alias or
version, or a model that lmft did not log).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.console import library_prints
from lmft_core.energy import EnergyConfig
from lmft_core.tracking import using_tracking_uri


class ModelRegistryError(ConfigError):
    """A model reference cannot be resolved, or a registration failed; the message says why."""


@dataclass(frozen=True)
class ModelInfo:
    """What prediction needs to know about an adapted model (from its MLflow metadata). ``tau_hat`` is a
    float, or one float per temporal segment 1..N_t-1 for a model trained with ``lmft-segment``."""

    uri: str
    classes: tuple[str, ...]
    clip: ClipConfig
    energy: EnergyConfig
    tau_hat: float | tuple[float, ...]
    selector: dict
    name: str = ""
    version: str = ""

    def tags(self) -> dict[str, str]:
        """The facts as registry tags (strings)."""
        return {"lmft.classes": json.dumps(list(self.classes)), "lmft.clip": json.dumps(asdict(self.clip)),
                "lmft.energy": json.dumps(self.energy.identity()), "lmft.tau_hat": _tau_tag(self.tau_hat),
                "lmft.selector": json.dumps(self.selector)}


def _tau_hat(value) -> float | tuple[float, ...]:
    """tau_hat from the metadata: a number, or a list (per segment) as a tuple of floats."""
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)


def _tau_tag(tau_hat: float | tuple[float, ...]) -> str:
    """``0.412345`` (6 decimals), or per segment a JSON list of such numbers."""
    if isinstance(tau_hat, (list, tuple)):
        return json.dumps([round(float(v), 6) for v in tau_hat])
    return f"{tau_hat:.6f}"


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _known_models(client) -> str:
    try:
        models = client.search_registered_models(max_results=20)
    except Exception:  # noqa: BLE001 - only for the message
        return ""
    if not models:
        return "; the registry holds no models"
    return "; registered: " + ", ".join(f"{m.name} (aliases: {sorted(m.aliases) or 'none'})" for m in models)


def resolve(ref: str, tracking_uri: str) -> ModelInfo:
    """The :class:`ModelInfo` of model reference ``ref`` in the store at ``tracking_uri``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    try:
        with using_tracking_uri(tracking_uri):
            info = mlflow.models.get_model_info(ref)
    except (MlflowException, OSError) as e:
        raise ModelRegistryError(f"model {ref!r} cannot be found in the MLflow store {tracking_uri}: "
                                 f"{getattr(e, 'message', e)}{_known_models(client)}") from None
    meta = info.metadata or {}
    missing = [k for k in ("classes", "clip", "tau_hat") if k not in meta]
    if missing:
        raise ModelRegistryError(f"model {ref!r} was not logged by lmft training: its metadata lacks {missing}")
    name = version = ""
    if ref.startswith("models:/") and not ref.startswith("models:/m-"):
        body = ref[len("models:/"):]
        name, _, rest = body.partition("@") if "@" in body else body.partition("/")
        version = (client.get_model_version_by_alias(name, rest).version if "@" in body else rest)
    return ModelInfo(uri=ref, classes=tuple(meta["classes"]), clip=ClipConfig(**meta["clip"]),
                     energy=EnergyConfig(**meta.get("energy", {"variant": "diff"})), tau_hat=_tau_hat(meta["tau_hat"]),
                     selector=meta.get("selector", {}), name=name, version=str(version))


def load_model(ref: str, tracking_uri: str, map_location: str = "cpu"):
    """The logged classifier (:class:`~lmft_core.model.classifier.LMFTClassifier`) of model reference ``ref`` from the
    store at ``tracking_uri``, in eval mode
    (``mlflow.pytorch.load_model``; its ``predict`` classifies clips with tau_hat inside)."""
    import mlflow.pytorch

    with using_tracking_uri(tracking_uri):
        return mlflow.pytorch.load_model(ref, map_location=map_location).eval()


def register(model_uri: str, name: str, alias: str, tracking_uri: str, tags: dict[str, str] | None = None) -> ModelInfo:
    """Register ``model_uri`` as a version of ``name`` (once: a version of the same source is reused),
    point ``alias`` at it and tag it; returns the version's :class:`ModelInfo` (uri ``models:/name@alias``)."""
    import mlflow

    client = _client(tracking_uri)
    facts = resolve(model_uri, tracking_uri)
    existing = []
    try:
        existing = [v for v in client.search_model_versions(f"name='{name}'") if v.source == model_uri]
    except Exception:  # noqa: BLE001 - no such registered model yet
        existing = []
    if existing:
        version = existing[0]
    else:
        with using_tracking_uri(tracking_uri), library_prints():
            version = mlflow.register_model(model_uri, name)
    for key, value in (facts.tags() | (tags or {})).items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, alias, version.version)
    return resolve(f"models:/{name}@{alias}", tracking_uri)
