"""The preprocessing output store: one folder per configuration, shards committed atomically, rejects.

Layout of ``<output>/<config hash>/`` in :mod:`lmft_core.shards.format`; here: what names the folder
(:func:`resolved_config`, :func:`config_hash`), what is done or changed (:func:`done_and_changed`), how a run's staged
files are committed (:func:`commit`), and the check that every manifest row is accounted for.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmft_core.config import ClipConfig
from lmft_core.energy import EnergyConfig
from lmft_core.files import atomic_write, file_sha256
from lmft_core.manifest import Manifest
from lmft_core.preprocess.config import PreprocessConfig
from lmft_core.preprocess.decode import PreprocessError, write_rejects_csv
from lmft_core.preprocess.identity import unchanged
from lmft_core.pseudo_labels import PseudoLabelConfig, weights_identity
from lmft_core.shards.format import IDENTITY_FIELDS, SCHEMA_VERSION, SHARD_PARQUET_OPTIONS
from lmft_core.video import is_transient_reason


def write_shard(table: pa.Table, path: Path) -> Path:
    """``table`` as the shard file ``path``, written atomically (:func:`~lmft_core.files.atomic_write`: a full disk is
    an error naming the file, the bytes written and the space left, and leaves no part of the file)."""
    with atomic_write(path, "wb", what="the shard") as f:
        pq.write_table(table, f, **SHARD_PARQUET_OPTIONS)
    return path


def read_rejects_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def resolved_config(manifest: Manifest, clip: ClipConfig, labels: PseudoLabelConfig, pre: PreprocessConfig,
                    energy: EnergyConfig = EnergyConfig()) -> dict:
    """Everything that determines the shards' content; its hash names the output folder."""
    return {
        "schema_version": SCHEMA_VERSION,
        "manifest_sha256": file_sha256(manifest.path),
        "classes": list(manifest.classes),
        "clip": dataclasses.asdict(clip),
        "pseudo_labels": {"prompt_template": labels.prompt_template, "precision": labels.precision,
                          "frames_seen": labels.frames_seen(clip.num_frames), "weights": weights_identity(labels)},
        "store_frames": pre.store_frames,
        "energy": energy.identity(),
    }


def config_hash(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def shard_records(out: Path) -> list[dict]:
    """``video_id`` and the file identity (:data:`~lmft_core.shards.format.IDENTITY_FIELDS`) of every committed shard row."""
    cols = ["video_id"] + [f.name for f in IDENTITY_FIELDS]
    return [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f, columns=cols).to_pylist()]


def forget(out: Path, video_ids: set[str]) -> None:
    """Drop the shard rows and rejects of ``video_ids`` (files replaced since: they are processed again).

    Each shard file is rewritten atomically; a run stopped half-way leaves some rows, which the next run
    finds changed again, so no video ends in two places.
    """
    for f in sorted((out / "shards").glob("*.parquet")):
        ids = pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist()
        if video_ids.isdisjoint(ids):
            continue
        kept = pq.read_table(f).filter(pa.array([v not in video_ids for v in ids]))
        if not kept.num_rows:
            f.unlink()
            continue
        write_shard(kept, f)
    rejects = read_rejects_csv(out / "rejects.csv")
    write_rejects_csv([r for r in rejects if r["video_id"] not in video_ids], out / "rejects.csv")


def done_and_changed(out: Path, manifest: Manifest) -> tuple[set[str], set[str]]:
    """(videos done, videos whose file changed) of ``manifest`` in output folder ``out``.

    Done: in a shard or a permanent reject made from the file now at its path
    (:func:`~lmft_core.preprocess.identity.unchanged`). Transient rejects (timeouts, a decoder killed from
    outside) are not done: they are retried, perhaps with a larger ``preprocess.decode_timeout_s``.
    Changed: a shard row or reject exists but the file was replaced since.
    """
    records = {r["video_id"]: r for r in shard_records(out)}
    records |= {r["video_id"]: r for r in read_rejects_csv(out / "rejects.csv") if not is_transient_reason(r["reason"])}
    done, changed = set(), set()
    for row in manifest.rows:
        record = records.get(row.video_id)
        if record is None:
            continue
        if unchanged(record, row.path):
            done.add(row.video_id)
        else:
            changed.add(row.video_id)
    return done, changed


def commit(out: Path) -> None:
    """Move the complete shard files of every staged run into ``shards/`` and merge their rejects.

    Runs after a pipeline and at the start of every run (salvaging what a crashed run finished). A
    file that cannot be read (a write cut short) is dropped: its videos are redone. Rows already
    committed are never committed twice. Each file appears in ``shards/`` by an atomic rename. A
    retried transient reject is replaced by the new outcome: dropped when the video is now in a
    shard, replaced by the new reject record otherwise.
    """
    shards = out / "shards"
    shards.mkdir(exist_ok=True)
    done = {r["video_id"] for r in shard_records(out)}
    for f in sorted((out / "_staging").glob("*/shards/*.parquet")):
        try:
            ids = pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist()
        except Exception:  # noqa: BLE001 - incomplete file of an interrupted write
            continue
        if done.isdisjoint(ids):
            os.replace(f, shards / f.name)
        elif not done.issuperset(ids):
            write_shard(pq.read_table(f).filter(pa.array([v not in done for v in ids])), shards / f.name)
        done.update(ids)
    rejects = [r for r in read_rejects_csv(out / "rejects.csv") if r["video_id"] not in done]  # retried, now decoded
    position = {r["video_id"]: i for i, r in enumerate(rejects)}
    for f in sorted((out / "_staging").glob("*/rejects/*.csv")):
        for r in read_rejects_csv(f):
            vid = r["video_id"]
            if vid in done:
                continue
            if vid not in position:
                position[vid] = len(rejects)
                rejects.append(r)
            elif is_transient_reason(rejects[position[vid]]["reason"]):
                rejects[position[vid]] = r  # the retry's outcome replaces the transient record
    write_rejects_csv(rejects, out / "rejects.csv")
    shutil.rmtree(out / "_staging", ignore_errors=True)


def shard_stats(out: Path) -> dict:
    """Counts over the committed shards: rows, short videos, PyAV-decoded, clips whose compensated
    energy fell back to diff's, CLIP accuracy per domain."""
    files = sorted((out / "shards").glob("*.parquet"))
    cols = ["video_id", "domain", "label_index", "pseudo_label", "short_video", "decoder", "energy_note"]
    t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files]) if files else pa.table({c: [] for c in cols})
    d = {c: t.column(c).to_pylist() for c in cols}

    def accuracy(domain: str) -> float | None:
        hits = [p == y for dom, y, p in zip(d["domain"], d["label_index"], d["pseudo_label"]) if dom == domain and y is not None]
        return sum(hits) / len(hits) if hits else None

    return {"rows": t.num_rows, "short_videos": sum(d["short_video"]), "pyav_decoded": d["decoder"].count("pyav"),
            "energy_fallbacks": sum(bool(n) for n in d["energy_note"]),
            "source_clip_accuracy": accuracy("source"), "target_clip_accuracy": accuracy("target"),
            "video_ids": d["video_id"]}


def check_accounting(manifest: Manifest, shard_ids: list[str], rejects: list[dict]) -> None:
    """Every manifest row in exactly one of shards or rejects, and nothing else; else PreprocessError."""
    expected = {r.video_id for r in manifest.rows}
    reject_ids = [r["video_id"] for r in rejects]
    problems = []
    for name, ids in (("shards", shard_ids), ("rejects", reject_ids)):
        if len(ids) != len(set(ids)):
            problems.append(f"duplicate video ids in {name}")
        if set(ids) - expected:
            problems.append(f"{name} hold video ids not in the manifest: {sorted(set(ids) - expected)[:5]}")
    if set(shard_ids) & set(reject_ids):
        problems.append(f"videos both in shards and rejects: {sorted(set(shard_ids) & set(reject_ids))[:5]}")
    missing = expected - set(shard_ids) - set(reject_ids)
    if missing:
        problems.append(f"{len(missing)} manifest rows in neither shards nor rejects: {sorted(missing)[:5]}")
    if problems:
        raise PreprocessError("preprocessing output does not account for every manifest row: " + "; ".join(problems))
