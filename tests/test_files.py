"""atomic_write: all or nothing."""

from __future__ import annotations

import pytest

from lmft_core.files import atomic_write


def test_replaces_whole_file_or_leaves_the_old_one(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with atomic_write(path) as f:
        f.write("first")
    assert path.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "first"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # no temporary file left behind


def test_file_sha256_matches_hashlib_on_a_multi_chunk_file(tmp_path):
    import hashlib

    from lmft_core.files import file_sha256

    data = bytes(range(256)) * (1 << 15)  # 8 MiB: more than one read chunk
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
