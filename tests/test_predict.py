"""Batch prediction with a registered model: every input in predictions or rejects, the model's own
geometry, CSV output, and a missing model or alias failing at start."""

from __future__ import annotations

import csv
import json
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import SHARED_VIDEOS, TINY_CLIP_GEOMETRY, entry_main
from lmft_core.manifest import ManifestError, load_manifest
from lmft_core.model_store import ModelRegistryError, register, resolve
from lmft_core.predict import read_inputs, run_predict
from lmft_core.run_config import load_profile


@pytest.fixture(scope="module")
def registered(tiny_trained):
    workdir, result = tiny_trained
    info = register(result.model_uri, "tiny-lmft", "best", result.tracking_uri)
    return workdir, result, info


def test_register_is_idempotent_and_resolves_by_alias(registered):
    workdir, result, info = registered
    assert info.uri == "models:/tiny-lmft@best" and info.version == "1"
    assert info.classes == ("jump", "walk", "wave") and info.clip.image_size == 32 and info.energy.variant == "diff"
    assert info.tau_hat == pytest.approx(result.tau_hat)
    again = register(result.model_uri, "tiny-lmft", "best", result.tracking_uri)
    assert again.version == "1"  # the same source is not registered twice
    assert resolve("models:/tiny-lmft/1", result.tracking_uri).version == "1"
    with pytest.raises(ModelRegistryError, match=r"'models:/tiny-lmft@nope' cannot be found.*tiny-lmft \(aliases: \['best'\]\)"):
        resolve("models:/tiny-lmft@nope", result.tracking_uri)
    with pytest.raises(ModelRegistryError, match="'models:/absent@best' cannot be found"):
        resolve("models:/absent@best", result.tracking_uri)


def test_folder_video_ids_are_unique_by_construction(tmp_path):
    """A clip and its re-encode (same stem), a file whose stem is another file's name, a nested namesake."""
    names = ["test.avi", "test.mp4", "a.avi", "a.avi.mp4", "b.mp4", "sub/test.mp4", "sub/c.MOV"]
    for name in names:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    inputs = read_inputs(folder=tmp_path)
    ids = dict(zip(inputs.column("path").to_pylist(), inputs.column("video_id").to_pylist()))
    assert ids == {str(tmp_path / "test.avi"): "test.avi", str(tmp_path / "test.mp4"): "test.mp4",
                   str(tmp_path / "a.avi"): "a", str(tmp_path / "a.avi.mp4"): "a.avi.mp4", str(tmp_path / "b.mp4"): "b",
                   str(tmp_path / "sub/test.mp4"): "sub/test", str(tmp_path / "sub/c.MOV"): "sub/c"}
    empty = tmp_path / "no videos"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"no videos: 1 problem\(s\):\n  - no video files in the folder \(searched recursively for \.mp4"):
        read_inputs(folder=empty)


def test_every_video_of_a_folder_is_predicted_or_rejected(registered, tiny_demo, tmp_path, capsys):
    """Through the entry script: a folder with a clip and its re-encode (``real.avi``, ``real.mp4``)."""
    workdir, result, info = registered
    folder = tmp_path / "new videos"
    (folder / "sub").mkdir(parents=True)
    by_label = {r.label: r for r in load_manifest(tiny_demo).rows if r.domain == "target" and r.split == "test"}
    demo = list(by_label.values())[:2]  # one video per label: the files are named by label
    assert len(demo) == 2
    for r in demo:
        shutil.copy(r.path, folder / f"{r.label}.mp4")
    shutil.copy(SHARED_VIDEOS / "mmaction2__tests__test.avi", folder / "sub" / "real.avi")
    shutil.copy(SHARED_VIDEOS / "mmaction2__tests__test.mp4", folder / "sub" / "real.mp4")
    shutil.copy(SHARED_VIDEOS / "moviepy__doc_result_empty_0bytes.webm", folder / "empty.webm")
    (folder / "notes.txt").write_text("not a video")
    code = entry_main("predict")(["--model", info.uri, "--folder", str(folder), "--output", str(tmp_path / "out"),
                                  "--tracking-uri", result.tracking_uri, "--pictures"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    table = pq.read_table(summary["predictions"])
    assert sorted(table.column("video_id").to_pylist()) == sorted([r.label for r in demo] + ["sub/real.avi", "sub/real.mp4"])
    with open(summary["rejects"], newline="") as f:
        rejects = list(csv.DictReader(f))
    assert [r["video_id"] for r in rejects] == ["empty"] and "empty" in rejects[0]["reason"].lower()
    assert summary["videos_in"] == 5 and summary["predicted"] == 4 and summary["rejected"] == 1
    probs = sum(table.column(f"p_{c}").to_numpy() for c in info.classes)
    assert abs(probs - 1).max() < 1e-5 and set(table.column("predicted_label").to_pylist()) <= set(info.classes)
    keep = table.column("keep_ratio").to_numpy()
    assert ((keep >= 0.25 - 1e-6) & (keep <= 1.0)).all()  # at least the first of 4 segments is kept
    # a picture per predicted video; the rejected one (no frames) is skipped and counted, not an error
    pictures = sorted(p.name for p in (tmp_path / "out" / "pictures").iterdir())
    assert pictures == sorted(table.column("picture").to_pylist()) and len(pictures) == 4
    assert summary["pictures_made"] == 4 and summary["pictures_skipped"] == 1 and "4 made, 1 videos without one" in out
    assert sum(summary["predicted_classes"].values()) == 4
    assert bool(summary["warnings"]) == (len(summary["predicted_classes"]) == 1) == ("WARNING: all 4 predictions" in out)


def test_manifest_input_csv_output_and_errors(registered, tmp_path):
    workdir, result, info = registered
    manifest = tmp_path / "new.csv"
    manifest.write_text(f"path,video_id\n{SHARED_VIDEOS / 'moviepy__clip1024.flv'},a\nmissing.mp4,b\n")
    profile = load_profile("demo", TINY_CLIP_GEOMETRY + ["predict.output_format='csv'"])
    summary = run_predict(info, result.tracking_uri, read_inputs(manifest), tmp_path / "out", profile.predict,
                          profile.preprocess)
    assert summary.predictions.endswith("predictions.csv")
    with open(summary.predictions, newline="") as f:
        assert [r["video_id"] for r in csv.DictReader(f)] == ["a"]
    with open(summary.rejects, newline="") as f:
        (reject,) = list(csv.DictReader(f))
    assert reject["video_id"] == "b" and "cannot be read" in reject["reason"]
    dup = tmp_path / "dup.csv"
    dup.write_text("path,video_id\nx.mp4,a\ny.mp4,a\n")
    with pytest.raises(ManifestError, match=r"line 3: duplicate video_id 'a' \(.*y.mp4; first on line 2, .*x.mp4\)"):
        read_inputs(dup)
    nopath = tmp_path / "nopath.csv"
    nopath.write_text("file\nx.mp4\n")
    with pytest.raises(ManifestError, match="no 'path' column"):
        read_inputs(nopath)


def test_entry_script_fails_at_start_for_a_missing_alias(registered, tmp_path, capsys):
    workdir, result, _ = registered
    code = entry_main("predict")(["--model", "models:/tiny-lmft@missing", "--folder", str(tmp_path), "--output",
                                  str(tmp_path / "out"), "--tracking-uri", result.tracking_uri])
    assert code == 2 and "cannot be found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
