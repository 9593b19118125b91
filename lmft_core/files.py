"""File helpers: atomic writes (readers see the old file or the whole new one), plain errors for writes that run
out of space, one writer per folder, and content hashes."""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", what: str = "the file", **open_kwargs) -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it onto ``path`` when the block succeeds.

    On an exception ``path`` is left as it was and the temporary file is removed; a write that ran out of space
    (a full disk, a quota, a file-size limit) is an :func:`out_of_space` error naming ``path`` (``what`` it is).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with tmp.open(mode, **open_kwargs) as f:
            yield f
        os.replace(tmp, path)
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        raise out_of_space(path, what, tmp.stat().st_size if tmp.exists() else 0, e) from None
    finally:
        tmp.unlink(missing_ok=True)


# What a write that ran out of space fails with: a full disk, a full quota, a file-size limit (RLIMIT_FSIZE).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NoSpaceError(OSError):
    """A write that ran out of space (errno ENOSPC), its message saying which file and how much space is left
    (:func:`out_of_space`); it survives pickling (a Ray task's error reaches the driver as itself)."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:
        return self.strerror

    def __reduce__(self):
        return type(self), (self.strerror,)


def out_of_space(path: str | Path, what: str, written: int, error: BaseException) -> NoSpaceError:
    """The error of a write of ``path`` (``what``: "the shard") that failed after ``written`` bytes, saying so with
    the space left on its disk (the libraries' own messages name neither: torch says "unexpected pos", Arrow
    "Error writing bytes to file")."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return NoSpaceError(f"{path}: {what} could not be written ({written} bytes written, {shutil.disk_usage(folder).free} "
                        f"bytes free on its disk: a full disk or a file-size limit?): {error}")


@contextmanager
def exclusive(folder: str | Path, what: str, error: type[Exception] = FileExistsError) -> Iterator[None]:
    """Hold ``folder``'s lock (``.lock`` in it; the folder made) for the block: one writer at a time. Another
    process holding it is an ``error`` saying that another ``what`` is writing there."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(f"{folder}: another {what} is writing there") from None
        yield


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
