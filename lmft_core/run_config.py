"""The run configuration: one typed tree (:class:`RunConfig`) built and checked once, when a profile loads.

A **profile** is a TOML file (``lmft_core/profiles/<name>.toml``, its launch command at its top) of
sections, one per field of :class:`RunConfig`; each section builds that field's dataclass, and a key a
section does not set keeps the dataclass default, so a profile states only what differs. A top-level
``base = "NAME"`` starts from another profile, whose keys the file replaces key by key. Loading builds
every section (unknown sections and keys, wrong types and bad values fail here, naming the file, section
and key), runs the checks that read more than one section, and resolves the derived fields: the model's
clip geometry (``[clip]``) and the policy's kind and segment count (from ``[selector]`` and ``[clip]``).
The class count comes from the shards when a training run is prepared
(:func:`lmft_core.train.run.prepare`).

The components own their sections' dataclasses; the jobs that read the whole tree (the workflow, the
sweep and prediction) keep theirs here, so that no component imports this module back.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import tomllib
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmft_core.config import DERIVED, ClipConfig, ConfigError, from_dict, parse_override
from lmft_core.demo_data import DemoDataConfig
from lmft_core.energy import EnergyConfig
from lmft_core.model.policy import PolicyConfig
from lmft_core.model.selectors import SelectorConfig
from lmft_core.model.vit import ModelConfig
from lmft_core.preprocess.config import PreprocessConfig
from lmft_core.pretrain.config import PretrainConfig
from lmft_core.pseudo_labels import PseudoLabelConfig
from lmft_core.tracking import TrackingConfig
from lmft_core.train.config import TrainConfig
from lmft_core.train.names import EVAL_SOURCE_VAL, EVAL_TARGET, eval_metric

PROFILE_DIR = Path(__file__).parent / "profiles"
REFERENCE_MD = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
DEFAULT_PROFILE = "demo"  # what every CLI and load_profile use when no profile is named

SEARCHES = ("grid", "random", "optuna")
# the swept hyperparameters: [sweep] key -> the setting it overrides
SWEPT = {"gamma_c": "train.gamma_c", "lambda_l": "policy.loss_weight", "lambda_t": "train.lambda_t"}
TARGET_METRIC = eval_metric(EVAL_TARGET, "lmft", "top1")  # read beside every trial, selected by only on request
ADAPT = ("train", "sweep")
OUTPUT_FORMATS = ("parquet", "csv")  # of predictions


@dataclass(frozen=True)
class SweepConfig:
    """The ``[sweep]`` profile section (:mod:`lmft_core.sweep`).

    ``search``: ``grid`` (every combination of the value lists), ``random`` (``num_samples`` draws) or
    ``optuna`` (TPE over the same values, ``num_samples`` trials). ``gamma_c``, ``lambda_l``,
    ``lambda_t``: the values tried. ``metric``/``mode``: the selection metric (module docstring; a
    metric the epochs report). ``asha``: early stopping with ``grace_period`` epochs and
    ``reduction_factor``. ``data_cpus``: CPUs kept free for Ray Data; ``max_concurrent``: trials at once
    (0: as many as fit). ``name``: the sweep's name (empty: derived from its configuration).
    """

    search: str = "random"
    num_samples: int = 8
    gamma_c: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    lambda_l: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0)
    lambda_t: tuple[float, ...] = (0.25, 0.5, 1.0)
    metric: str = eval_metric(EVAL_SOURCE_VAL, "lmft", "top1")
    mode: str = "max"
    select_on_target_labels: bool = False
    asha: bool = True
    grace_period: int = 1
    reduction_factor: int = 2
    data_cpus: float = 1.0
    max_concurrent: int = 0
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"sweep.search must be one of {list(SEARCHES)}, got {self.search!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"sweep.mode must be 'max' or 'min', got {self.mode!r}")
        for key in SWEPT:
            if not getattr(self, key):
                raise ConfigError(f"sweep.{key} needs at least one value")
        if any(not 0.0 <= g <= 1.0 for g in self.gamma_c):
            raise ConfigError(f"sweep.gamma_c values must be in [0, 1], got {self.gamma_c}")
        if self.num_samples < 1 or self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError("sweep.num_samples and grace_period must be >= 1, reduction_factor >= 2")
        if self.data_cpus < 1 or self.max_concurrent < 0:
            raise ConfigError(f"sweep.data_cpus must be >= 1 (with less, concurrent trials wait for each other's ingest: "
                              f"module docstring) and max_concurrent >= 0, "
                              f"got {self.data_cpus} and {self.max_concurrent}")
        if self.metric.startswith(f"{EVAL_TARGET}/") and not self.select_on_target_labels:
            raise ConfigError(f"sweep.metric={self.metric!r} selects by target labels: set "
                              "sweep.select_on_target_labels = true to do so knowingly")

    @property
    def selection_metric(self) -> tuple[str, str]:
        return (TARGET_METRIC, "max") if self.select_on_target_labels else (self.metric, self.mode)

    def trials(self) -> int:
        return math.prod(len(getattr(self, k)) for k in SWEPT) if self.search == "grid" else self.num_samples


@dataclass(frozen=True)
class WorkflowConfig:
    """The ``[workflow]`` section: ``adapt`` is ``train`` (one training) or ``sweep`` (Ray Tune over
    ``[sweep]``, the best trial adapts); ``baselines`` are the selectors trained the same way for
    comparison in the evaluate stage (``full``: every token; ``random``: random drop at LMFT's
    discard rate on target-test); the adapted model is registered as ``model_name`` with ``alias``;
    ``predict_split`` names the manifest's target rows labelled at the end (the held-back videos)."""

    adapt: str = "train"
    pretrain: bool = False  # the pretrain stage ([pretrain]) runs before adapt, which starts from its encoder
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
class PredictConfig:
    """The ``[predict]`` profile section (:mod:`lmft_core.predict`): ``batch_size`` clips per model call, ``num_actors`` model
    replicas with ``num_cpus`` CPUs and ``num_gpus`` GPUs each (absent: 1 when the cluster has GPUs),
    ``output_format`` ``parquet`` or ``csv``; ``pictures``: also a picture per video of its kept tokens over the frames
    (``pictures/``, :mod:`lmft_core.predict`). Decoding uses the ``[preprocess]`` decode settings."""

    batch_size: int = 16
    num_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float | None = None
    output_format: str = "parquet"
    pictures: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_actors < 1:
            raise ConfigError("predict.batch_size and predict.num_actors must be >= 1")
        if self.output_format not in OUTPUT_FORMATS:
            raise ConfigError(f"predict.output_format must be one of {list(OUTPUT_FORMATS)}, got {self.output_format!r}")



@dataclass(frozen=True)
class RunConfig:
    """One run's configuration: a field per profile section (its TOML table), built by :func:`load_profile`.

    ``name`` and ``path`` say which profile it came from; ``sections`` is what the profile file (with its
    bases) and the overrides stated, before defaults (recorded with the runs). Derived fields are
    resolved: ``model.clip`` is ``clip``; ``policy.kind`` and ``policy.num_segments`` follow ``selector``
    and ``clip``.
    """

    name: str
    path: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    clip: ClipConfig = ClipConfig()
    demo_data: DemoDataConfig = DemoDataConfig()
    tracking: TrackingConfig = TrackingConfig()
    pseudo_labels: PseudoLabelConfig = PseudoLabelConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    energy: EnergyConfig = EnergyConfig()
    model: ModelConfig = ModelConfig()
    selector: SelectorConfig = SelectorConfig()
    policy: PolicyConfig = PolicyConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    predict: PredictConfig = PredictConfig()
    sweep: SweepConfig = SweepConfig()
    workflow: WorkflowConfig = WorkflowConfig()

    @classmethod
    def build(cls, name: str, path: Path, sections: dict[str, dict[str, Any]]) -> RunConfig:
        """The configuration of ``sections`` (section -> table), checked and with its derived fields set."""
        known = section_names()
        unknown = sorted(set(sections) - set(known))
        if unknown:
            raise ConfigError(f"{path}: unknown section(s) {unknown} (from the file or --set); known: {sorted(known)}")
        # the geometry first (it is the first field): other sections' errors assume it is sound
        built = {s: from_dict(section_class(s), sections.get(s), f"{path} [{s}]") for s in known}
        clip, selector = built["clip"], built["selector"]
        built["model"] = replace(built["model"], clip=clip)
        built["policy"] = selector.resolve_policy(built["policy"], clip)
        try:
            built["train"].evaluate_for(selector)  # [train] evaluate against the policy kind [selector] builds
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return cls(name=name, path=path, sections=sections, **built)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        """A new configuration with ``section.key=value`` overrides applied (:func:`parse_override`).

        An error that an override causes names it (``--set train.lr=abc: [train].lr: expected float, ...``),
        not the profile file: the overrides without which the error changes or goes are named."""
        try:
            return self._overridden(overrides)
        except ConfigError as e:
            raise self._blame(overrides, e) from None

    def _overridden(self, overrides: list[str] | tuple[str, ...]) -> RunConfig:
        sections = {name: dict(values) for name, values in self.sections.items()}
        for override in overrides:
            section, key, value = parse_override(override)
            sections.setdefault(section, {})[key] = value
        return RunConfig.build(self.name, self.path, sections)

    def _blame(self, overrides: list[str] | tuple[str, ...], error: ConfigError) -> ConfigError:
        """``error`` of this configuration with ``overrides``, reworded to name the overrides that cause it."""
        def outcome(subset: list[str]) -> str:
            try:
                self._overridden(subset)
            except ConfigError as e:
                return str(e)
            return ""

        if not overrides or outcome([]) == str(error):
            return error  # the file's own error
        culprits = [o for i, o in enumerate(overrides) if outcome([*overrides[:i], *overrides[i + 1:]]) != str(error)]
        message = str(error)
        if message.startswith(str(self.path)):
            message = message[len(str(self.path)):].lstrip(": ")
        return ConfigError(", ".join(f"--set {o}" for o in culprits or overrides) + f": {message}")

    def settings(self) -> dict[str, Any]:
        """Every section's values, defaults included, JSON-able (what identifies the configuration)."""
        return json.loads(json.dumps({s: dataclasses.asdict(getattr(self, s)) for s in section_names()}, default=str))


def section_names() -> tuple[str, ...]:
    """The sections a profile may have (the fields of :class:`RunConfig` that are sections)."""
    return tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("name", "path", "sections"))


def section_class(name: str) -> type:
    """The dataclass of section ``name`` (the type of that field of :class:`RunConfig`)."""
    return typing.get_type_hints(RunConfig)[name]


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a profile by name (``demo``, ``paper``) or TOML path and apply ``section.key=value`` overrides.

    Override values are parsed as TOML (``clip.num_frames=8``, ``pseudo_labels.pretrained="openai"``);
    a value that is not valid TOML is taken as a string (``pseudo_labels.pretrained=/ckpt/clip.pt``).
    A profile whose file has a top-level ``base = "NAME"`` starts from that profile's sections, and its own
    keys replace the base's key by key (``results-small`` is ``results`` with a smaller data set).
    """
    path = _profile_path(name_or_path)
    return RunConfig.build(path.stem, path, _profile_sections(path, ())).with_overrides(overrides)


def _profile_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PROFILE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown profile {name_or_path!r}; available: {available_profiles()} or a .toml path")
    if not path.is_file():
        raise ConfigError(f"profile file not found: {path}")
    return path


def _profile_sections(path: Path, chain: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    """The sections of the profile file ``path``, its ``base`` (if any) merged under them."""
    if path in chain:
        raise ConfigError(f"{path}: profile base cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        sections = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    base = sections.pop("base", None)
    if base is None:
        return sections
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a profile name or .toml path, got {base!r}")
    merged = _profile_sections(_profile_path(base), (*chain, path))
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values}
    return merged


def reference() -> str:
    """The configuration reference (``docs/configuration.md``): each section's docstring and its keys with
    their types and defaults, generated from the dataclasses (``python -m lmft_core.run_config`` writes it)."""
    lines = ["# Configuration reference", "",
             "Generated from the dataclasses by `python -m lmft_core.run_config` (a test checks it is current).",
             "A profile (`lmft_core/profiles/*.toml`) states only what differs from these defaults; `--set "
             "section.key=value` overrides any key. Derived keys are never set in a profile.", ""]
    for f in dataclasses.fields(RunConfig):
        if f.name not in section_names():
            continue
        cls = section_class(f.name)
        lines += [f"## `[{f.name}]` ({cls.__name__}, `{cls.__module__}`)", "", inspect.cleandoc(cls.__doc__ or ""), "",
                  "| key | type | default |", "|---|---|---|"]
        hints = {h.name: h.type for h in dataclasses.fields(cls)}
        for field_ in dataclasses.fields(cls):
            if DERIVED in field_.metadata:
                default = f"derived from {field_.metadata[DERIVED]}"
            elif field_.default is not dataclasses.MISSING:
                default = f"`{field_.default!r}`"
            elif field_.default_factory is not dataclasses.MISSING:
                default = f"`{field_.default_factory()!r}`"
            else:
                default = "required"
            kind = str(hints[field_.name]).replace("|", "\\|")
            lines.append(f"| `{field_.name}` | `{kind}` | {default.replace('|', chr(92) + '|')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import lmft_core.run_config as this  # the module's own classes, not __main__'s copies

    this.REFERENCE_MD.write_text(this.reference())
    print(f"wrote {this.REFERENCE_MD}", file=sys.stderr)


def run_arguments(description: str):
    """The command line of a run on a preprocessing output (``pipelines/train.py``, ``pipelines/pretrain.py``):
    ``--shards``, ``--profile``, ``--workdir``, ``--set section.key=value`` (repeatable, as ``overrides``)."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, type=Path, help="preprocessing output (root with LATEST, or a <hash> folder)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {available_profiles()} or a .toml path")
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="where checkpoints, run files and the embedded MLflow store go")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p
