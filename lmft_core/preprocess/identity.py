"""Which version of a video file a shard row or a reject was made from, and whether the file changed since.

A file's identity is its size and modification time (one ``stat``) and the sha256 of its bytes, stored with
every shard row and reject (columns :data:`~lmft_core.shards.format.IDENTITY_FIELDS`). On a re-run a record is
reused when its path has the same size and modification time; when only the time differs the bytes are
hashed and compared (a touched or re-copied file with the same bytes is not redone); a different size or
hash means the file was replaced, and the video is processed again. Costs: one ``stat`` per video on
every re-run; one extra read of each processed file (the hash, next to decoding it); and a read of the
files whose time changed. A file rewritten in place with the same size and the same modification time
(a tool that restores times) is not seen as changed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from lmft_core.files import file_sha256


@dataclass(frozen=True)
class FileIdentity:
    """``size`` in bytes, ``mtime_ns`` (modification time, ns since the epoch), ``sha256`` of the bytes
    (``""`` for a file that is not a regular file: nothing is read from it)."""

    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        """Stat and hash ``path``; raises OSError when it cannot be read."""
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns, file_sha256(path) if stat.S_ISREG(st.st_mode) else "")

    def columns(self) -> dict[str, object]:
        """The identity as shard / reject columns."""
        return {"file_size": self.size, "file_mtime_ns": self.mtime_ns, "file_sha256": self.sha256}


def unchanged(record: Mapping[str, object], path: str) -> bool:
    """Whether ``path`` is still the file ``record`` (a shard row or reject with identity columns) was made from."""
    try:
        st = os.stat(path)
    except OSError:
        return False  # gone: processing it again gives the reject that says so
    if record.get("file_size") in (None, "") or int(record["file_size"]) != st.st_size:
        return False
    if int(record["file_mtime_ns"]) == st.st_mtime_ns:
        return True
    return bool(record["file_sha256"]) and file_sha256(path) == record["file_sha256"]
