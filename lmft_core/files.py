"""File helpers: atomic writes (readers see the old file or the whole new one) and content hashes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it onto ``path`` when the block succeeds.

    On an exception ``path`` is left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open(mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB chunks (checkpoints can be large)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class JsonRecord:
    """A dataclass kept as one JSON file (a finished run's ``result.json``): ``save`` writes it atomically,
    ``load`` reads it back."""

    def save(self, path: str | Path) -> None:
        with atomic_write(path) as f:
            f.write(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path):
        return cls(**json.loads(Path(path).read_text()))
