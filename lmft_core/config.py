"""Typed configuration: clip geometry, run profiles and their sections.

Terms used across lmft (defined here once):

- **clip**: ``num_frames`` RGB frames sampled from one video, resized to ``image_size`` x ``image_size``.
- **tubelet**: ``tubelet`` consecutive frames by ``patch`` x ``patch`` pixels of a clip.
- **token**: the embedding of one tubelet; a clip has ``N_t * N_h * N_w`` tokens with
  ``N_t = num_frames / tubelet`` temporal segments and ``N_h = N_w = image_size / patch``.
- **motion energy**: one scalar per token in [0, 1]; see :mod:`lmft_core.energy` (the ``[energy]``
  section chooses its variant).
- **threshold** (tau): a token is kept when its motion energy is > tau.
- **keep ratio**: kept tokens / all tokens of a clip; **discard rate** = 1 - keep ratio.

A **profile** is a named TOML file (``lmft_core/profiles/<name>.toml``) whose sections configure the
components; each component owns a dataclass and builds itself from its section with
:meth:`Profile.section`. The launch command of a profile is written at its top.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

PROFILE_DIR = Path(__file__).parent / "profiles"

# The sections a profile may have: name -> the dataclass that builds it ("module:Class", imported when a
# profile loads, so that this module imports none of the components). One place to list them.
SECTIONS = {
    "clip": "lmft_core.config:ClipConfig",
    "demo_data": "lmft_core.demo_data:DemoDataConfig",
    "tracking": "lmft_core.tracking:TrackingConfig",
    "pseudo_labels": "lmft_core.pseudo_labels:PseudoLabelConfig",
    "preprocess": "lmft_core.preprocess.config:PreprocessConfig",
    "energy": "lmft_core.energy:EnergyConfig",
    "model": "lmft_core.model.vit:ModelConfig",
    "selector": "lmft_core.model.selectors:SelectorConfig",
    "policy": "lmft_core.model.policy:PolicyConfig",
    "train": "lmft_core.train.config:TrainConfig",
    "pretrain": "lmft_core.pretrain.config:PretrainConfig",
    "predict": "lmft_core.predict:PredictConfig",
    "sweep": "lmft_core.sweep:SweepConfig",
    "workflow": "lmft_core.workflow:WorkflowConfig",
}

# Checks that read more than one section, run when a profile loads, after every section has built:
# "module:function", each called with the Profile (raising ConfigError). One place to list them.
CROSS_CHECKS = (
    "lmft_core.train.config:check_profile",  # [train] evaluate against [selector] (the policy kind)
)


def section_class(name: str) -> type:
    """The dataclass that the profile section ``name`` builds."""
    import importlib

    if name not in SECTIONS:
        raise KeyError(f"{name!r} is not a profile section; known: {sorted(SECTIONS)}")
    module, _, cls = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


T = TypeVar("T")

# Field metadata key: a config field whose value is derived from elsewhere (another section, the
# shards' metadata) and that a profile section may therefore not set, e.g.
# ``num_classes: int = field(default=0, metadata={DERIVED: "the shards' classes"})``.
DERIVED = "derived_from"


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the file, section and field."""


@dataclass(frozen=True)
class ClipConfig:
    """Clip geometry shared by preprocessing and training (see the module docstring for terms)."""

    num_frames: int = 16
    image_size: int = 224
    tubelet: int = 2
    patch: int = 16

    def __post_init__(self) -> None:
        for name in ("num_frames", "image_size", "tubelet", "patch"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"clip.{name} must be positive, got {getattr(self, name)}")
        if self.num_frames % self.tubelet:
            raise ConfigError(f"clip.num_frames={self.num_frames} is not a multiple of clip.tubelet={self.tubelet}")
        if self.image_size % self.patch:
            raise ConfigError(f"clip.image_size={self.image_size} is not a multiple of clip.patch={self.patch}")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (N_t, N_h, N_w)."""
        n = self.image_size // self.patch
        return (self.num_frames // self.tubelet, n, n)

    @property
    def num_tokens(self) -> int:
        n_t, n_h, n_w = self.grid
        return n_t * n_h * n_w


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Nested dataclass fields are built recursively. ``where`` prefixes error messages
    (for example ``"profiles/demo.toml [preprocess]"``).
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        settable = sorted(n for n, f in fields.items() if DERIVED not in f.metadata)
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {settable}")
    for name in sorted(set(data) & {n for n, f in fields.items() if DERIVED in f.metadata}):
        raise ConfigError(f"{where}: {name!r} is not set in a profile section: it comes from {fields[name].metadata[DERIVED]}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {hint}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


@dataclass
class Profile:
    """A named run profile: sections of settings, each built into a component's config dataclass."""

    name: str
    path: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str, cls: type[T] | None = None) -> T:
        """The ``[name]`` section built as its registered dataclass (defaults for an absent section).

        ``cls`` (optional) must be that class; it only lets a caller state the type it expects.
        """
        registered = section_class(name)
        if cls is not None and cls is not registered:
            raise TypeError(f"profile section [{name}] builds {registered.__name__}, not {cls.__name__}")
        return from_dict(registered, self.sections.get(name), f"{self.path} [{name}]")

    def validate(self) -> None:
        """Build every section present (unknown keys, wrong types and bad values fail here, at load)."""
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{self.path}: unknown section(s) {unknown} (from the file or --set); known: {sorted(SECTIONS)}")
        self.clip  # the geometry first: other sections' errors assume it is sound
        for name in self.sections:
            self.section(name)
        import importlib

        for check in CROSS_CHECKS:
            module, _, func = check.partition(":")
            try:
                getattr(importlib.import_module(module), func)(self)
            except ConfigError as e:
                raise ConfigError(f"{self.path}: {e}") from None

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> Profile:
        """A new, validated profile with ``section.key=value`` overrides applied (:func:`parse_override`)."""
        sections = {name: dict(values) for name, values in self.sections.items()}
        for override in overrides:
            section, key, value = parse_override(override)
            sections.setdefault(section, {})[key] = value
        profile = Profile(name=self.name, path=self.path, sections=sections)
        profile.validate()
        return profile

    @property
    def clip(self) -> ClipConfig:
        return self.section("clip", ClipConfig)


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path = "paper", overrides: list[str] | tuple[str, ...] = ()) -> Profile:
    """Load a profile by name (``demo``, ``paper``) or TOML path and apply ``section.key=value`` overrides.

    Override values are parsed as TOML (``clip.num_frames=8``, ``pseudo_labels.pretrained="openai"``);
    a value that is not valid TOML is taken as a string (``pseudo_labels.pretrained=/ckpt/clip.pt``).
    A profile whose file has a top-level ``base = "NAME"`` starts from that profile's sections, and its own
    keys replace the base's key by key (``results-small`` is ``results`` with a smaller data set).
    """
    path = _profile_path(name_or_path)
    return Profile(name=path.stem, path=path, sections=_profile_sections(path, ())).with_overrides(overrides)


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


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"section.key=value"`` -> (section, key, parsed value)."""
    lhs, sep, rhs = text.partition("=")
    section, dot, key = lhs.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = tomllib.loads(f"v = {rhs.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = rhs.strip()
    return section, key, value


def run_arguments(description: str):
    """The command line of a run on a preprocessing output (``pipelines/train.py``, ``pipelines/pretrain.py``):
    ``--shards``, ``--profile``, ``--workdir``, ``--set section.key=value`` (repeatable, as ``overrides``)."""
    import argparse

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, type=Path, help="preprocessing output (root with LATEST, or a <hash> folder)")
    p.add_argument("--profile", default="demo", help=f"one of {available_profiles()} or a .toml path")
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="where checkpoints, run files and the embedded MLflow store go")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return p
