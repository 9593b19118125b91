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
import re
import sys
import tomllib
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmft_core.augment import check_hflip
from lmft_core.config import (
    DEFAULT_PROFILE,
    DERIVED,
    PRECISIONS,
    PROFILE_DIR,
    ClipConfig,
    ConfigError,
    available_profiles,
    from_dict,
    parse_override,
)
from lmft_core.demo_data import DemoDataConfig
from lmft_core.energy import EnergyConfig
from lmft_core.model.policy import ESTIMATORS, PolicyConfig
from lmft_core.model.selectors import SelectorConfig
from lmft_core.model.vit import ModelConfig
from lmft_core.preprocess.config import PreprocessConfig
from lmft_core.pretrain.config import PretrainConfig
from lmft_core.pseudo_labels import PseudoLabelConfig
from lmft_core.tracking import TrackingConfig
from lmft_core.train.config import TrainConfig
from lmft_core.train.names import EVAL_SOURCE_VAL, EVAL_TARGET, eval_metric

REFERENCE_MD = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

SEARCHES = ("grid", "random", "optuna")
# the space a [sweep] without its own searches: the paper's gamma_c, lambda_L and lambda_t
DEFAULT_SPACE = {"train.gamma_c": [0.5, 0.7, 0.8, 0.9], "policy.loss_weight": [1.0, 5.0, 10.0, 20.0],
                 "train.lambda_t": [0.25, 0.5, 1.0]}
# swept settings that act only when train.pseudo_labels uses this source (clip, self, clip+self)
ACTS_ONLY_WITH = {"train.gamma_c": "clip", "train.self_gamma": "self", "train.self_refresh_epochs": "self"}
TARGET_METRIC = eval_metric(EVAL_TARGET, "lmft", "top1")  # read beside every trial, selected by only on request


def metric_of(metric: str, selector_label: str) -> str:
    """``metric`` (``<prefix>/lmft/<key>``) for the run's selector ``selector_label``; other metrics as they are."""
    parts = metric.split("/")
    return "/".join(selector_label if i == 1 and p == "lmft" and len(parts) == 3 else p for i, p in enumerate(parts))
ADAPT = ("train", "sweep")
OUTPUT_FORMATS = ("parquet", "csv")  # of predictions


@dataclass(frozen=True)
class SweepConfig:
    """The ``[sweep]`` profile section (:mod:`lmft_core.sweep`).

    ``space``: the swept settings, ``"section.key"`` -> the values tried (a list), e.g.
    ``"train.lambda_t" = [0.25, 0.5, 1.0]`` in a ``[sweep.space]`` table; ``{grid = [...]}`` makes that
    setting a grid axis crossed with the samples of the others (Optuna cannot search one). Every value must be
    valid for its setting, and a setting must act in the run (``train.self_gamma`` needs self pseudo-labels,
    ``train.gamma_c`` CLIP's): checked at profile load.
    ``search``: ``grid`` (every combination of the value lists), ``random`` (``num_samples`` draws) or
    ``optuna`` (TPE over the same values, ``num_samples`` trials). ``metric``/``mode``: the selection metric
    (module docstring; a metric the epochs report). ``asha``: early stopping with ``grace_period`` epochs and
    ``reduction_factor``. ``data_cpus``: CPUs kept free for Ray Data; ``max_concurrent``: trials at once
    (0: as many as fit). ``name``: the sweep's name (empty: derived from its configuration). ``top``: trials
    in the table printed at the end.
    """

    search: str = "random"
    num_samples: int = 8
    space: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SPACE))
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
    top: int = 5

    def __post_init__(self) -> None:
        if self.search not in SEARCHES:
            raise ConfigError(f"sweep.search must be one of {list(SEARCHES)}, got {self.search!r}")
        if self.mode not in ("max", "min"):
            raise ConfigError(f"sweep.mode must be 'max' or 'min', got {self.mode!r}")
        if not isinstance(self.space, dict) or not self.space:
            raise ConfigError(f"sweep.space must be a table of \"section.key\" = [values], got {self.space!r}")
        for key in self.space:
            self.values(key)  # checks its form
        if self.num_samples < 1:
            raise ConfigError(f"sweep.num_samples must be >= 1, got {self.num_samples}")
        if self.grace_period < 1 or self.reduction_factor < 2 or self.top < 1:
            raise ConfigError("sweep.grace_period and sweep.top must be >= 1, sweep.reduction_factor >= 2")
        if self.data_cpus < 1 or self.max_concurrent < 0:
            raise ConfigError(f"sweep.data_cpus must be >= 1 (with less, concurrent trials wait for each other's ingest: "
                              f"module docstring) and max_concurrent >= 0, "
                              f"got {self.data_cpus} and {self.max_concurrent}")
        if self.metric.startswith(f"{EVAL_TARGET}/") and not self.select_on_target_labels:
            raise ConfigError(f"sweep.metric={self.metric!r} selects by target labels: set "
                              "sweep.select_on_target_labels = true to do so knowingly")

    def values(self, key: str) -> list:
        """The values tried for setting ``key`` of :attr:`space` (a ConfigError naming it when malformed)."""
        spec, where = self.space[key], f"sweep.space[{key!r}]"
        section, dot, name = key.partition(".")
        if not dot or not section or not name or "." in name:
            raise ConfigError(f"{where}: a setting is named \"section.key\" (e.g. \"train.lambda_t\")")
        if isinstance(spec, dict):
            if set(spec) != {"grid"}:
                raise ConfigError(f"{where}: a table must be {{grid = [values]}}, got {spec!r}")
            if self.search == "optuna":
                raise ConfigError(f"{where}: Optuna cannot search a grid (sweep.search = 'optuna'): give a plain list "
                                  "of values, or use sweep.search = 'grid' or 'random'")
            spec = spec["grid"]
        if not isinstance(spec, (list, tuple)) or not spec:
            raise ConfigError(f"{where}: needs a non-empty list of values, got {spec!r}")
        return list(spec)

    def grid_axes(self) -> list[str]:
        """The settings searched as a grid: every one under ``search = 'grid'``, else those given as ``{grid = [...]}``."""
        return [k for k, v in self.space.items() if self.search == "grid" or isinstance(v, dict)]

    def varied(self) -> list[str]:
        """The swept settings with more than one value (the columns of the sweep's table)."""
        return [k for k in self.space if len(self.values(k)) > 1]

    @property
    def selection_metric(self) -> tuple[str, str]:
        return (TARGET_METRIC, "max") if self.select_on_target_labels else (self.metric, self.mode)

    def metric_for(self, selector_label: str) -> tuple[str, str]:
        """:attr:`selection_metric` of a sweep training ``selector_label`` (``lmft`` or an ``adafocus`` one): the
        metric's selector part, ``lmft``, becomes that label (``eval_source_val/adafocus-w2x2/top1``)."""
        metric, mode = self.selection_metric
        return metric_of(metric, selector_label), mode

    def trials(self) -> int:
        """Trials the sweep runs: every grid combination, times ``num_samples`` unless it is all grid."""
        combos = math.prod(len(self.values(k)) for k in self.grid_axes())
        return combos if self.search == "grid" else combos * self.num_samples

    def check_space(self, settings: dict[str, Any], build) -> None:
        """Each swept setting exists, takes each of its values and acts in the run.

        ``settings`` are the other sections' built dataclasses (section -> dataclass); ``build(section, key,
        value)`` builds that section with one value changed and raises ConfigError when it is invalid."""
        for key in self.space:
            section, _, name = key.partition(".")
            if section == "sweep" or section not in settings:
                raise ConfigError(f"sweep.space[{key!r}]: {section!r} is not a section a trial can change; "
                                  f"known: {sorted(s for s in settings if s != 'sweep')}")
            names = sorted(f.name for f in dataclasses.fields(settings[section]) if DERIVED not in f.metadata)
            if name not in names:
                raise ConfigError(f"sweep.space[{key!r}]: [{section}] has no key {name!r}; known: {names}")
            for value in self.values(key):
                try:
                    build(section, name, value)
                except ConfigError as e:
                    raise ConfigError(f"sweep.space[{key!r}] value {value!r}: {e}") from None
            source = ACTS_ONLY_WITH.get(key)
            sources = {v for s in self._pseudo_label_sources(settings) for v in s.split("+")}
            if source and source not in sources:
                raise ConfigError(f"sweep.space[{key!r}]: {key} acts only when train.pseudo_labels uses {source!r}, "
                                  f"and this sweep's trials use {sorted(self._pseudo_label_sources(settings))}: "
                                  "remove it from the space or change train.pseudo_labels")

    def _pseudo_label_sources(self, settings: dict[str, Any]) -> set[str]:
        key = "train.pseudo_labels"
        return set(self.values(key)) if key in self.space else {settings["train"].pseudo_labels}


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
    (``pictures/``, :mod:`lmft_core.predict`); ``precision`` of the model's forward (:data:`~lmft_core.config.PRECISIONS`:
    ``auto`` is bf16 autocast on a GPU, fp32 on a CPU; docs/benchmarks.md "Inference" measures both). Decoding uses the
    ``[preprocess]`` decode settings."""

    batch_size: int = 16
    num_actors: int = 1
    num_cpus: float = 1.0
    num_gpus: float | None = None
    output_format: str = "parquet"
    pictures: bool = False
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_actors < 1:
            raise ConfigError("predict.batch_size and predict.num_actors must be >= 1")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"predict.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
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
            selector.check_grid(clip)  # adafocus: the window and segments fit the token grid
            built["train"].evaluate_for(selector)  # [train] evaluate against the policy kind [selector] builds
            built["pseudo_labels"].check_clip(clip.num_frames)  # CLIP sees at most the clip's frames
            check_estimator(built["policy"], built["train"], selector)
            check_hflip(built["demo_data"].classes, built["train"].hflip, built["train"].hflip_label_map, "demo_data.classes")
            built["sweep"].check_space(built, lambda s, k, v: from_dict(
                section_class(s), {**sections.get(s, {}), k: v}, f"[{s}]"))
        except (ConfigError, ValueError) as e:
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

    def to_toml(self) -> str:
        """This configuration as a profile file (``--print-config``): every section and key, defaults included,
        derived keys left out; loading it builds an equal configuration. A key whose value is unset (None) is a
        comment, since TOML has no null and a missing key loads as its default, None."""
        lines = [f"# the resolved configuration of profile {self.name!r} ({self.path}), every key stated"]
        for name in section_names():
            section = getattr(self, name)
            lines += ["", f"[{name}]"]
            for f in dataclasses.fields(section):
                if f.init and DERIVED not in f.metadata:
                    value = getattr(section, f.name)
                    lines.append(f"# {f.name}: unset" if value is None else f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    """A TOML literal of a config value: bool, number (nan and inf as TOML spells them), string, path, list or
    tuple, dataclass or dict (an inline table, unset entries left out)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    items = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)
    return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items.items() if v is not None) + " }"


def _toml_key(key: str) -> str:
    """A TOML key: bare when it can be (letters, digits, ``_``, ``-``), else quoted (``"train.lambda_t"``)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def check_estimator(policy: PolicyConfig, train: TrainConfig, selector: SelectorConfig) -> None:
    """A per-clip estimator (``rloo``) needs at least 2 clip pairs per step for its leave-one-out baseline,
    and a threshold policy to train: ``adafocus`` trains its window policy with its own gradient instead."""
    if not ESTIMATORS[policy.estimator].per_clip:
        return
    if selector.name == "adafocus":
        raise ConfigError(f"policy.estimator={policy.estimator!r} estimates the threshold policy's gradient, which "
                          "selector.name='adafocus' does not use (its window policy has its own gradient); set "
                          "policy.estimator='paper' or a learned selector (lmft, lmft-segment)")
    pairs = train.batch_size * train.accum_steps * train.workers
    if pairs < 2:
        raise ConfigError(f"policy.estimator={policy.estimator!r} needs >= 2 clip pairs per step for its leave-one-out "
                          f"baseline; train.batch_size x accum_steps x workers is {pairs}")


def section_names() -> tuple[str, ...]:
    """The sections a profile may have (the fields of :class:`RunConfig` that are sections)."""
    return tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in ("name", "path", "sections"))


def section_class(name: str) -> type:
    """The dataclass of section ``name`` (the type of that field of :class:`RunConfig`)."""
    return typing.get_type_hints(RunConfig)[name]


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


# One line per section for the index of docs/configuration.md (a section without one fails the generator)
SECTION_SUMMARIES = {
    "clip": "clip geometry shared by preprocessing and training: frames, image size, tubelet, patch",
    "demo_data": "the generated demo set: classes, videos per class, frames, size, splits, each domain's look and camera",
    "tracking": "MLflow: the tracking URI (empty: the embedded store in the workdir) and the experiment",
    "pseudo_labels": "zero-shot CLIP: model, weights (open_clip tag, a local file, or empty for untrained), prompt, frames seen, precision",
    "preprocess": "Ray Data preprocessing: frame storage, decode tasks and their time limit, the CLIP actor pool, "
                  "rejects allowed",
    "energy": "the motion-energy variant (`diff`, `translate`, `translate_zoom`) and its estimator's settings",
    "model": "the video ViT: size, attention backend, drop path, VideoMAE weights",
    "selector": "the training selector (`lmft`, `lmft-segment`, `full`, `random`, `threshold`, `topk`) and the "
                "first-segment rule",
    "policy": "the learned threshold: initial mu and log sigma, REINFORCE baseline, lambda_L, tau_hat samples",
    "train": "adaptation: schedule, losses, pseudo-label source, augmentations, workers, evaluation, checkpoints",
    "pretrain": "masked video pretraining: masking strategy, mask ratio, sampler, decoder, schedule, domains",
    "predict": "batch prediction: batch size, model replicas and their resources, output format",
    "sweep": "Ray Tune sweeps: the space of settings tried (lambda_t, lambda_L, a pseudo-label threshold), search, "
             "ASHA, selection metric, resources",
    "workflow": "the main job: train or sweep, pretraining, baselines, the registered name and alias, the predicted split",
}


def _md(text: str) -> str:
    """Sphinx markup of a docstring as Markdown: ``x`` -> `x`, :role:`x` -> `x`."""
    import re

    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text.replace("``", "`"))


def _terms() -> list[str]:
    """The terms list of :mod:`lmft_core.config`'s docstring, as Markdown lines."""
    import lmft_core.config as config

    doc = inspect.cleandoc(config.__doc__ or "")
    block = doc.split("Terms used across lmft", 1)[1].split("\n\n")[1]
    return [_md(line) for line in block.splitlines()]


def _profile_rows() -> list[str]:
    """One table row per named profile: its name, base and the description at the top of its file."""
    rows = ["| profile | base | launch | what it is |", "|---|---|---|---|"]
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        comments = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            comments.append(line.lstrip("#").strip())
        launch = comments[0].removeprefix("Launch:").split("  ")[0].strip() if comments else ""
        paragraphs = " ".join(comments[1:]).split("  ")
        about = next((p.strip() for p in paragraphs if p.strip() and not p.strip().startswith("(")), "")
        base = tomllib.loads(path.read_text()).get("base", "")
        rows.append(f"| `{path.stem}` | {f'`{base}`' if base else '(the defaults)'} | `{launch}` | "
                    f"{about.replace('|', chr(92) + '|')} |")
    return rows


def _key_rows(cls: type, prefix: str = "") -> list[str]:
    """Table rows for every key of the dataclass ``cls``; a nested dataclass adds a row per sub-key
    (``source_camera.pan_px_per_s``), set in TOML as an inline table."""
    rows = []
    hints = typing.get_type_hints(cls)
    for field_ in dataclasses.fields(cls):
        if DERIVED in field_.metadata:
            default = f"derived from {field_.metadata[DERIVED]}"
        elif field_.default is not dataclasses.MISSING:
            default = f"`{field_.default!r}`"
        elif field_.default_factory is not dataclasses.MISSING:
            default = f"`{field_.default_factory()!r}`"
        else:
            default = "required"
        kind = str(field_.type).replace("|", "\\|")
        rows.append(f"| `{prefix}{field_.name}` | `{kind}` | {default.replace('|', chr(92) + '|')} |")
        if dataclasses.is_dataclass(hints[field_.name]):
            rows += _key_rows(hints[field_.name], f"{prefix}{field_.name}.")
    return rows


def reference() -> str:
    """The configuration reference (``docs/configuration.md``): how profiles work, the terms, the named
    profiles, an index of the sections, and each section's docstring and keys with their types and defaults,
    generated from the dataclasses and the profile files (``python -m lmft_core.run_config`` writes it)."""
    sections = [f.name for f in dataclasses.fields(RunConfig) if f.name in section_names()]
    lines = ["# Configuration reference", "",
             "Generated from the dataclasses and the profile files by `python -m lmft_core.run_config` (a test "
             "checks it is current); edit the docstrings, not this page.", "",
             "## Profiles, overrides and checks", "",
             "A run profile is a TOML file of sections, one per component. Loading it "
             "(`lmft_core.run_config.load_profile`) builds one typed tree, `RunConfig`, once: a dataclass per "
             "section (`profile.train`, `profile.model`, ...), every value checked, the checks that read two "
             "sections run (the evaluation selectors against the selector's policy kind), and the derived keys "
             "resolved in one place (the model's clip geometry from `[clip]`, the policy's kind and segment count "
             "from `[selector]` and `[clip]`; the class count comes from the shards when a training is prepared). "
             "An unknown section, an unknown key or a wrong type is an error naming the file, section and key. "
             "Derived keys are never set in a profile.", "",
             "The defaults below are the paper's settings; a profile states only what differs from them. A "
             "profile can start from another: a top-level `base = \"demo\"` (a profile name or a `.toml` path) "
             "takes that profile's sections, and the file's own keys replace the base's key by key; a cycle of "
             "bases is an error. Every entry script and `load_profile` default to "
             f"`{DEFAULT_PROFILE}`. Any key can be overridden from the command line: `--set clip.num_frames=8 "
             "--set tracking.experiment=mine` (values parse as TOML; a non-TOML value is taken as a string; a "
             "nested table as `--set \"demo_data.target_camera={pan_px_per_s=20, shake_px=3}\"`).", "",
             "## Terms", "", *_terms(), "",
             "## Named profiles (`lmft_core/profiles/`)", "", *_profile_rows(), "",
             "## Sections", "", "| section | what it configures |", "|---|---|",
             *[f"| [`[{s}]`](#{s}) | {SECTION_SUMMARIES[s]} |" for s in sections], ""]
    for name in sections:
        cls = section_class(name)
        lines += [f'<a id="{name}"></a>', "", f"## `[{name}]` ({cls.__name__}, `{cls.__module__}`)", "",
                  _md(inspect.cleandoc(cls.__doc__ or "")), "", "| key | type | default |", "|---|---|---|",
                  *_key_rows(cls), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import lmft_core.run_config as this  # the module's own classes, not __main__'s copies

    this.REFERENCE_MD.write_text(this.reference())
    print(f"wrote {this.REFERENCE_MD}", file=sys.stderr)
