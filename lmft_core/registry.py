"""One registry helper for everything chosen by name in a profile: model sizes, attention backends,
token selectors, energy variants, threshold policies, pseudo-label sources.

A :class:`Registry` is a ``dict`` from name to entry with a ``kind`` (used in messages), a
:meth:`~Registry.register` that refuses a taken name, and :meth:`~Registry.check` that turns an unknown
name into a :class:`~lmft_core.config.ConfigError` naming the profile field and the known names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from lmft_core.config import ConfigError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Entries of one kind by name. ``reserved`` names can never be registered (e.g. ``auto``)."""

    def __init__(self, kind: str, reserved: tuple[str, ...] = ()):
        super().__init__()
        self.kind = kind
        self.reserved = reserved

    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """``register(name, entry)`` adds ``entry``; ``@register(name)`` decorates the entry."""
        if entry is None:
            return lambda e: self.register(name, e)
        if name in self or name in self.reserved:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def check(self, name: str, field: str, extra: tuple[str, ...] = ()) -> str:
        """``name`` if registered (or one of ``extra``), else a ConfigError naming ``field``."""
        if name not in self and name not in extra:
            known = sorted(self) + list(extra)
            raise ConfigError(f"{field} {name!r} is not a registered {self.kind}; known: {known}")
        return name
