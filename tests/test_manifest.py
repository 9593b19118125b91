"""Manifest validation: every error kind, reported all at once with line numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmft_core.manifest import ManifestError, load_manifest, main, prompt_name, write_manifest


def _write(tmp_path: Path, text: str, files: tuple[str, ...] = ("a.mp4", "b.mp4", "c.mp4")) -> Path:
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


GOOD = "path,label,domain,split\na.mp4,ride_bike,source,train\nb.mp4,,target,train\nc.mp4,ride_bike,target,test\n"


def test_good_manifest_rows_classes_and_default_ids(tmp_path):
    m = load_manifest(_write(tmp_path, GOOD))
    assert [r.video_id for r in m.rows] == ["a", "b", "c"]
    assert [r.line for r in m.rows] == [2, 3, 4]
    assert m.rows[1].label is None
    assert m.rows[0].path == str(tmp_path.resolve() / "a.mp4")
    assert m.classes == ("ride_bike",)
    assert m.label_index("ride_bike") == 0 and m.label_index(None) is None
    assert prompt_name("ride_bike") == "ride bike"


def test_absolute_path_and_explicit_video_id(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"x")
    text = f"path,label,domain,split,video_id\n{tmp_path / 'x.mp4'},run,source,train,v1\n{tmp_path / 'x.mp4'},,target,train,v2\n"
    m = load_manifest(_write(tmp_path, text, files=()))
    assert [r.video_id for r in m.rows] == ["v1", "v2"]
    assert m.rows[0].path == str(tmp_path / "x.mp4")


def test_missing_columns(tmp_path):
    with pytest.raises(ManifestError) as e:
        load_manifest(_write(tmp_path, "path,label\na.mp4,run\n"))
    assert e.value.problems == ["line 1: missing column(s) ['domain', 'split']; header is ['path', 'label']"]


def test_every_row_problem_is_listed_at_once(tmp_path):
    text = (
        "path,label,domain,split,video_id\n"
        "a.mp4,run,source,train,\n"      # 2: fine
        "b.mp4,run,sauce,train,\n"       # 3: unknown domain
        "c.mp4,run,source,dev,\n"        # 4: unknown split
        "missing.mp4,run,source,train,\n"  # 5: file not found
        "a.mp4,run,source,val,a\n"       # 6: duplicate video id (explicit 'a' == derived 'a')
        "b.mp4,,source,train,b2\n"       # 7: source row without label
        "c.mp4,swim,target,test,c2\n"    # 8: target label not a source class
        ",run,source,train,e\n"          # 9: empty path
    )
    with pytest.raises(ManifestError) as e:
        load_manifest(_write(tmp_path, text))
    problems = e.value.problems
    expected = [
        "line 3: unknown domain 'sauce'",
        "line 4: unknown split 'dev'",
        "line 5: file not found",
        "line 6: duplicate video_id 'a' (first on line 2)",
        "line 7: source row without a label",
        "line 8: target label 'swim' is not a source class",
        "line 9: empty path",
    ]
    for prefix in expected:
        assert sum(p.startswith(prefix) for p in problems) == 1, (prefix, problems)
    assert len(problems) == len(expected)
    assert "line 5" in str(e.value) and "line 8" in str(e.value)


def test_empty_domain(tmp_path):
    with pytest.raises(ManifestError) as e:
        load_manifest(_write(tmp_path, "path,label,domain,split\na.mp4,run,source,train\n"))
    assert e.value.problems == ["domain 'target' has no rows"]


def test_unreadable_file(tmp_path, monkeypatch):
    """As root every file is readable, so the permission check is driven through os.access."""
    import lmft_core.manifest as manifest_module

    path = _write(tmp_path, GOOD)
    real_access = manifest_module.os.access
    monkeypatch.setattr(manifest_module.os, "access", lambda p, mode: not str(p).endswith("a.mp4") and real_access(p, mode))
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.problems == [f"line 2: file not readable: {tmp_path.resolve() / 'a.mp4'}"]


def test_byte_order_mark_is_accepted(tmp_path):
    path = _write(tmp_path, GOOD)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_manifest(path).rows) == 3


def test_path_that_is_not_a_regular_file(tmp_path):
    path = _write(tmp_path, GOOD, files=("b.mp4", "c.mp4"))
    (tmp_path / "a.mp4").mkdir()
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert e.value.problems == [f"line 2: not a regular file: {tmp_path.resolve() / 'a.mp4'}"]


def test_write_then_load_roundtrip(tmp_path):
    (tmp_path / "v").mkdir()
    for n in ("a", "b"):
        (tmp_path / "v" / f"{n}.mp4").write_bytes(b"x")
    rows = [
        {"path": tmp_path / "v" / "a.mp4", "label": "jump", "domain": "source", "split": "train"},
        {"path": "v/b.mp4", "label": None, "domain": "target", "split": "train", "video_id": "tb"},
    ]
    out = write_manifest(rows, tmp_path / "m.csv")
    assert out.read_text().splitlines() == ["path,label,domain,split,video_id", "v/a.mp4,jump,source,train,v/a", "v/b.mp4,,target,train,tb"]
    m = load_manifest(out)
    assert [(r.video_id, r.label, r.domain) for r in m.rows] == [("v/a", "jump", "source"), ("tb", None, "target")]


def test_cli_summary_and_errors(tmp_path, capsys):
    good = _write(tmp_path, GOOD)
    assert main([str(good)]) == 0
    out = capsys.readouterr().out
    assert "3 videos, 1 classes" in out and "target test" in out
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,domain,split\nnope.mp4,,source,train\n")
    assert main([str(bad)]) == 1
    err = capsys.readouterr().err
    assert "line 2: source row without a label" in err and "line 2: file not found" in err and "'target' has no rows" in err
