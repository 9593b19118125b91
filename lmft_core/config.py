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
- **precision**: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 on a GPU, fp32 on a CPU): :func:`autocast_dtype`.

Each component owns the dataclass of its profile section; :mod:`lmft_core.run_config` joins them into
the run configuration a profile builds. Here: the terms, the clip geometry, and :func:`from_dict`, which
builds a dataclass from a TOML table with errors naming the file, section and key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PROFILE_DIR = Path(__file__).parent / "profiles"  # the named profiles, <name>.toml (lmft_core.run_config)
DEFAULT_PROFILE = "demo"  # what every entry script and load_profile use when no profile is named


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))

# Field metadata key: a config field whose value is derived from elsewhere (another section, the
# shards' metadata) and that a profile section may therefore not set, e.g.
# ``num_classes: int = field(default=0, metadata={DERIVED: "the shards' classes"})``.
DERIVED = "derived_from"


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names the file, section and field."""


# What an entry script prints on Ctrl-C (SIGINT), exiting with 130 as shells do: every output is written
# atomically or keyed (preprocessing, trainings, predictions), so a re-run continues from what was finished.
INTERRUPTED = ("[lmft] interrupted (Ctrl-C): stopped; nothing half-written is visible. Re-running the same command "
               "continues where it stopped (finished stages and shards are kept, a training resumes from its last checkpoint).")
INTERRUPTED_EXIT = 130

PRECISIONS = ("auto", "fp32", "bf16")  # how a model computes (train.precision, predict.precision): autocast_dtype


def autocast_dtype(precision: str, device):
    """The autocast dtype of a ``precision`` (:data:`PRECISIONS`) on ``device`` (a ``torch.device``): bf16 for
    ``bf16``, and for ``auto`` on a GPU; None (fp32, no autocast) otherwise."""
    import torch

    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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
