"""Preprocessing on Ray Data: manifest rows -> decoded clips, motion energy, CLIP pseudo-labels -> Parquet.

The pipeline streams (nothing collects the videos on the driver)::

    from_arrow(manifest rows, one block per decode batch)
      -> map_batches(decode + motion energy)   CPU tasks, one isolated decoder child per worker
      -> map_batches(CLIP zero-shot)           actor pool, on GPUs when the cluster has them
      -> write_parquet                         into a staging folder, moved into shards/ at the end

Output folder (``<output>/<config hash>/``; a different configuration or manifest gets another
folder, so outputs never mix; ``<output>/LATEST`` names the newest)::

    shards/*.parquet   one row per decoded clip (schema: :func:`shard_schema`)
    rejects.csv        video_id, path, domain, split, label, reason for every video that failed
    metadata.json      classes, resolved config, CLIP weights identity, library versions, counts
    _staging/          the running write; what an interrupted run finished is salvaged by the next

Every manifest row ends in exactly one of shards or rejects (checked at the end of every run).
A re-run with the same manifest and configuration skips the videos already in shards or rejects
(including the complete files an interrupted run left in staging), except rejects whose reason is
transient (a decoding timeout, reason starting with ``transient``): those are tried again, and the
new outcome (a shard row or a new reject) replaces the old record.
Shard files appear under ``shards/`` only complete (written in staging, then renamed). On a
cluster, ``<output>`` must be storage every node can write (NFS or a mounted bucket).
"""

from __future__ import annotations

import atexit
import csv
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmft_core.files import atomic_write, file_sha256
from lmft_core.config import ClipConfig, ConfigError, Profile
from lmft_core.energy import motion_energy
from lmft_core.manifest import Manifest, load_manifest
from lmft_core.pseudo_labels import PseudoLabelConfig, weights_identity
from lmft_core.video import DecodeError, IsolatedDecoder, is_transient_reason

SCHEMA_VERSION = 1
REJECT_COLUMNS = ("video_id", "path", "domain", "split", "label", "reason")


class PreprocessError(RuntimeError):
    """The run failed as a whole (too many rejects, accounting mismatch, concurrent run)."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The ``[preprocess]`` profile section.

    ``store_frames``: keep the sampled uint8 frames in the shards (training then never decodes).
    ``max_rejected_fraction``: the run fails when rejects / manifest rows exceeds it.
    ``decode_*``: videos per decode task, CPUs per task, per-video time limit, memory per task.
    ``labeler_*``: the CLIP pseudo-labeler (:class:`ClipLabeler`): videos per CLIP forward, actors,
    CPUs and GPUs per actor (``labeler_num_gpus`` absent: 1 per actor when the cluster has GPUs,
    else 0). ``rows_per_shard``: minimum rows per Parquet file.
    """

    store_frames: bool = True
    max_rejected_fraction: float = 0.1
    decode_batch_size: int = 8
    decode_num_cpus: float = 1.0
    decode_timeout_s: float = 60.0
    decode_memory_mb: int = 1024
    labeler_batch_size: int = 8
    labeler_num_actors: int = 1
    labeler_num_cpus: float = 1.0
    labeler_num_gpus: float | None = None
    rows_per_shard: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ConfigError(f"preprocess.max_rejected_fraction must be in [0, 1], got {self.max_rejected_fraction}")
        for name in ("decode_batch_size", "decode_memory_mb", "labeler_batch_size", "labeler_num_actors", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"preprocess.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("decode_num_cpus", "labeler_num_cpus", "decode_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"preprocess.{name} must be > 0, got {getattr(self, name)}")


# --- schema ------------------------------------------------------------------------------------
_ROW_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("domain", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("label", pa.string()),
    pa.field("label_index", pa.int64()),
]
_DECODE_FIELDS = [
    pa.field("num_video_frames", pa.int64(), nullable=False),
    pa.field("frame_indices", pa.list_(pa.int64()), nullable=False),
    pa.field("short_video", pa.bool_(), nullable=False),
    pa.field("decoder", pa.string(), nullable=False),
]
_ENERGY_FIELDS = [
    pa.field("energy", pa.list_(pa.float32()), nullable=False),
    pa.field("energy_shape", pa.list_(pa.int64()), nullable=False),
]
_CLIP_FIELDS = [
    pa.field("clip_probs", pa.list_(pa.float32()), nullable=False),
    pa.field("pseudo_label", pa.int64(), nullable=False),
    pa.field("pseudo_confidence", pa.float32(), nullable=False),
]
_FRAME_FIELDS = [
    pa.field("frames", pa.binary(), nullable=False),
    pa.field("frames_shape", pa.list_(pa.int64()), nullable=False),
]
_ROW_SCHEMA = pa.schema(_ROW_FIELDS)


def shard_schema(store_frames: bool = True) -> pa.Schema:
    """Columns of a shard row (one decoded clip); see the README's table.

    ``energy`` is (N_t, N_h, N_w) float32 flattened in C order with ``energy_shape``; ``frames`` the
    raw bytes of uint8 (T, S, S, 3) RGB with ``frames_shape``; ``clip_probs`` (K,) over the metadata's
    class list; ``pseudo_label`` its argmax, ``pseudo_confidence`` its max.
    """
    return pa.schema(_ROW_FIELDS + _DECODE_FIELDS + _ENERGY_FIELDS + _CLIP_FIELDS + (_FRAME_FIELDS if store_frames else []))


def _decoded_schema(energy: bool) -> pa.Schema:
    return pa.schema(_ROW_FIELDS + _DECODE_FIELDS + (_ENERGY_FIELDS if energy else []) + _FRAME_FIELDS)


def _list_column(arrays: Sequence[np.ndarray], dtype: pa.DataType) -> pa.Array:
    flat = [np.asarray(a).ravel() for a in arrays]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32)
    values = np.concatenate(flat) if flat else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, dtype))


def unpack_array(table: pa.Table, column: str, dtype: np.dtype | type) -> np.ndarray:
    """A list or binary column of same-shaped arrays -> one ndarray (B, *shape).

    ``column`` is ``energy`` (float32, shape from ``energy_shape``), ``frames`` (uint8, from
    ``frames_shape``), ``clip_probs`` (float32 (B, K)) or ``frame_indices`` (int64 (B, T)).
    """
    col = table.column(column).combine_chunks()
    n = len(col)
    if pa.types.is_binary(col.type):
        data = np.frombuffer(bytearray(b"".join(v.as_py() for v in col)), dtype=dtype) if n else np.zeros(0, dtype)
    else:
        data = col.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    shape_col = f"{column}_shape"
    shape = tuple(table.column(shape_col)[0].as_py()) if shape_col in table.column_names and n else (-1,)
    return data.reshape(n, *shape)


# --- decode + energy (CPU tasks) ---------------------------------------------------------------
_DECODER: IsolatedDecoder | None = None


def _decoder(timeout_s: float) -> IsolatedDecoder:
    """The decoder child of this worker process (kept across tasks; Ray reuses worker processes)."""
    global _DECODER
    if _DECODER is None:
        _DECODER = IsolatedDecoder(timeout_s=timeout_s)
        atexit.register(_DECODER.close)
    _DECODER.timeout_s = timeout_s
    return _DECODER


def _write_csv_atomic(rows: Sequence[dict], path: Path) -> None:
    with atomic_write(path, newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=REJECT_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def decode_batch(batch: pa.Table, clip: ClipConfig, timeout_s: float, rejects_dir: str | None,
                 energy: bool = True) -> pa.Table:
    """Decode the videos of a batch of manifest rows (and their motion energy when ``energy``).

    Failed videos are left out of the returned table and written to ``rejects_dir`` (a CSV named
    after the batch's video ids, so a retried task rewrites the same file) with their reason.
    """
    dec = _decoder(timeout_s)
    rows = batch.to_pylist()
    ok, clips, rejects = [], [], []
    for row in rows:
        try:
            clips.append(dec.decode(row["path"], clip.num_frames, clip.image_size))
            ok.append(row)
        except DecodeError as e:
            rejects.append({k: row[k] for k in REJECT_COLUMNS if k != "reason"} | {"reason": e.reason})
    if rejects:
        if rejects_dir is None:
            raise PreprocessError(f"{len(rejects)} video(s) failed to decode: {rejects}")
        name = hashlib.sha1("\n".join(r["video_id"] for r in rows).encode()).hexdigest()
        _write_csv_atomic(rejects, Path(rejects_dir) / f"{name}.csv")
    cols = {f.name: [r[f.name] for r in ok] for f in _ROW_FIELDS}
    frames = [c.frames for c in clips]
    cols |= {
        "num_video_frames": [c.num_video_frames for c in clips],
        "frame_indices": _list_column([c.frame_indices for c in clips], pa.int64()),
        "short_video": [c.short for c in clips],
        "decoder": [c.decoder for c in clips],
    }
    if energy:
        maps = [motion_energy(f, clip.tubelet, clip.patch) for f in frames]
        cols["energy"] = _list_column(maps, pa.float32())
        cols["energy_shape"] = [list(clip.grid)] * len(ok)
    cols["frames"] = [f.tobytes() for f in frames]
    cols["frames_shape"] = [list(f.shape) for f in frames]
    return pa.table(cols, schema=_decoded_schema(energy))


# --- CLIP (actor pool) ---------------------------------------------------------------------------
class ClipLabeler:
    """Ray Data actor: adds ``clip_probs``, ``pseudo_label`` and ``pseudo_confidence`` to decoded rows."""

    def __init__(self, cfg: PseudoLabelConfig, classes: Sequence[str], store_frames: bool, num_threads: int = 1):
        import torch

        from lmft_core.pseudo_labels import ClipZeroShot

        torch.set_num_threads(max(1, num_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = ClipZeroShot(cfg, classes, device)
        self.schema = shard_schema(store_frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        probs = self.model.probs(unpack_array(batch, "frames", np.uint8)) if batch.num_rows else np.zeros((0, len(self.model.classes)), np.float32)
        batch = batch.append_column(_CLIP_FIELDS[0], _list_column(list(probs), pa.float32()))
        batch = batch.append_column(_CLIP_FIELDS[1], pa.array(probs.argmax(axis=1).astype(np.int64)))
        batch = batch.append_column(_CLIP_FIELDS[2], pa.array(probs.max(axis=1, initial=0.0).astype(np.float32)))
        return batch.select(self.schema.names).cast(self.schema)


# --- the run -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreprocessSummary:
    """What a run did and what its output holds (all videos of the manifest, not only this run's)."""

    output_dir: Path
    config_hash: str
    videos_in: int  # manifest rows
    already_done: int  # skipped: in shards or rejects before this run
    processed: int  # decoded (or rejected) by this run
    shard_rows: int
    rejects: int
    short_videos: int
    pyav_decoded: int
    elapsed_s: float
    videos_per_s: float  # processed / elapsed_s
    source_clip_accuracy: float | None  # CLIP pseudo-label accuracy on source rows
    target_clip_accuracy: float | None  # on labelled target rows (evaluation only)
    clip_weights: str
    untrained_clip: bool

    @property
    def rejected_fraction(self) -> float:
        return self.rejects / self.videos_in if self.videos_in else 0.0

    @property
    def metadata_path(self) -> Path:
        return self.output_dir / "metadata.json"

    @property
    def rejects_path(self) -> Path:
        return self.output_dir / "rejects.csv"

    def metrics(self) -> dict[str, float]:
        """Numbers for MLflow, units in the names."""
        out = {"preprocess/videos_in": self.videos_in, "preprocess/processed_videos": self.processed,
               "preprocess/shard_rows": self.shard_rows, "preprocess/rejects": self.rejects,
               "preprocess/rejected_fraction": self.rejected_fraction, "preprocess/short_videos": self.short_videos,
               "preprocess/elapsed_s": self.elapsed_s, "preprocess/videos_per_s": self.videos_per_s}
        for name in ("source_clip_accuracy", "target_clip_accuracy"):
            if getattr(self, name) is not None:
                out[f"preprocess/{name}"] = getattr(self, name)
        return {k: float(v) for k, v in out.items()}

    def __str__(self) -> str:
        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{100 * v:.1f}%"

        clip_note = ": the pseudo-labels come from an UNTRAINED CLIP and carry no information" if self.untrained_clip else ""
        return "\n".join([
            f"preprocessing output: {self.output_dir}",
            f"  videos: {self.videos_in} in manifest, {self.already_done} already done, {self.processed} processed now "
            f"({self.videos_per_s:.2f} videos/s over {self.elapsed_s:.1f} s)",
            f"  shards: {self.shard_rows} rows ({self.short_videos} short videos, {self.pyav_decoded} decoded with PyAV); "
            f"rejects: {self.rejects} ({pct(self.rejected_fraction)}) -> {self.rejects_path}",
            f"  CLIP {self.clip_weights}{clip_note}",
            f"  CLIP pseudo-label accuracy: source {pct(self.source_clip_accuracy)}, labelled target {pct(self.target_clip_accuracy)}",
        ])


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("lmft", "torch", "open_clip_torch", "decord", "av", "ray", "pyarrow", "numpy", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def resolved_config(manifest: Manifest, clip: ClipConfig, labels: PseudoLabelConfig, pre: PreprocessConfig) -> dict:
    """Everything that determines the shards' content; its hash names the output folder."""
    return {
        "schema_version": SCHEMA_VERSION,
        "manifest_sha256": file_sha256(manifest.path),
        "classes": list(manifest.classes),
        "clip": dataclasses.asdict(clip),
        "pseudo_labels": {"prompt_template": labels.prompt_template, "precision": labels.precision,
                          "weights": weights_identity(labels)},
        "store_frames": pre.store_frames,
    }


def config_hash(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def done_video_ids(out: Path) -> tuple[list[str], list[dict]]:
    """(video ids in committed shards, reject records) of an output folder (transient rejects included)."""
    shards = sorted((out / "shards").glob("*.parquet"))
    ids = [v for f in shards for v in pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist()]
    return ids, _read_csv(out / "rejects.csv")


def resolve_output(output: str | Path) -> Path:
    """The folder holding shards: ``output`` itself when it has metadata, else ``output/LATEST``'s."""
    output = Path(output)
    if (output / "metadata.json").is_file():
        return output
    latest = output / "LATEST"
    if latest.is_file():
        return output / latest.read_text().strip()
    raise FileNotFoundError(f"{output}: no preprocessing output (no metadata.json, no LATEST)")


def manifest_table(manifest: Manifest, rows: Sequence | None = None) -> pa.Table:
    """Manifest rows (default: all) as the pipeline's input table."""
    rows = manifest.rows if rows is None else rows
    return pa.table({
        "video_id": [r.video_id for r in rows], "path": [r.path for r in rows], "domain": [r.domain for r in rows],
        "split": [r.split for r in rows], "label": [r.label for r in rows],
        "label_index": [manifest.label_index(r.label) for r in rows],
    }, schema=_ROW_SCHEMA)


def _ensure_ray():
    import ray

    if not ray.is_initialized():
        ray.init()  # connects to RAY_ADDRESS (ray job submit) or starts a local instance
    return ray


def decoded_dataset(todo: pa.Table, clip: ClipConfig, pre: PreprocessConfig, rejects_dir: Path | None,
                    energy: bool = True):
    """Ray Dataset of decoded clips (and motion energy) of manifest rows ``todo``: CPU tasks, one per batch."""
    ray = _ensure_ray()
    import ray.data

    blocks = [todo.slice(i, pre.decode_batch_size) for i in range(0, todo.num_rows, pre.decode_batch_size)]
    return ray.data.from_arrow(blocks).map_batches(
        decode_batch, batch_size=pre.decode_batch_size, batch_format="pyarrow", num_cpus=pre.decode_num_cpus,
        fn_kwargs={"clip": clip, "timeout_s": pre.decode_timeout_s,
                   "rejects_dir": None if rejects_dir is None else str(rejects_dir), "energy": energy},
        # Declaring the decode tasks' memory also keeps Ray Data from fusing decoding into the CLIP
        # actors (their remote args differ), so decoding stays in CPU tasks.
        memory=pre.decode_memory_mb * 2**20,
    )


def _run_pipeline(todo: pa.Table, manifest: Manifest, clip: ClipConfig, labels: PseudoLabelConfig,
                  pre: PreprocessConfig, staging: Path) -> None:
    ray = _ensure_ray()
    import ray.data

    num_gpus = pre.labeler_num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    (staging / "rejects").mkdir(parents=True)
    ds = decoded_dataset(todo, clip, pre, staging / "rejects")
    ds = ds.map_batches(
        ClipLabeler, batch_size=pre.labeler_batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pre.labeler_num_actors),
        num_cpus=pre.labeler_num_cpus, num_gpus=num_gpus,
        fn_constructor_kwargs={"cfg": labels, "classes": manifest.classes, "store_frames": pre.store_frames,
                               "num_threads": max(1, int(pre.labeler_num_cpus))},
    )
    ds.write_parquet(str(staging / "shards"), min_rows_per_file=pre.rows_per_shard)


def _commit(out: Path) -> None:
    """Move the complete shard files of every staged run into ``shards/`` and merge their rejects.

    Runs after a pipeline and at the start of every run (salvaging what a crashed run finished). A
    file that cannot be read (a write cut short) is dropped: its videos are redone. Rows already
    committed are never committed twice. Each file appears in ``shards/`` by an atomic rename. A
    retried transient reject is replaced by the new outcome: dropped when the video is now in a
    shard, replaced by the new reject record otherwise.
    """
    shards = out / "shards"
    shards.mkdir(exist_ok=True)
    done = set(done_video_ids(out)[0])
    for f in sorted((out / "_staging").glob("*/shards/*.parquet")):
        try:
            ids = pq.read_table(f, columns=["video_id"]).column("video_id").to_pylist()
        except Exception:  # noqa: BLE001 - incomplete file of an interrupted write
            continue
        if done.isdisjoint(ids):
            os.replace(f, shards / f.name)
        elif not done.issuperset(ids):
            table = pq.read_table(f)
            keep = pa.array([v not in done for v in ids])
            tmp = f.with_name(f".{f.name}.filtered")
            pq.write_table(table.filter(keep), tmp)
            os.replace(tmp, shards / f.name)
        done.update(ids)
    rejects = [r for r in _read_csv(out / "rejects.csv") if r["video_id"] not in done]  # retried, now decoded
    position = {r["video_id"]: i for i, r in enumerate(rejects)}
    for f in sorted((out / "_staging").glob("*/rejects/*.csv")):
        for r in _read_csv(f):
            vid = r["video_id"]
            if vid in done:
                continue
            if vid not in position:
                position[vid] = len(rejects)
                rejects.append(r)
            elif is_transient_reason(rejects[position[vid]]["reason"]):
                rejects[position[vid]] = r  # the retry's outcome replaces the transient record
    _write_csv_atomic(rejects, out / "rejects.csv")
    shutil.rmtree(out / "_staging", ignore_errors=True)


def _shard_stats(out: Path) -> dict:
    files = sorted((out / "shards").glob("*.parquet"))
    cols = ["video_id", "domain", "label_index", "pseudo_label", "short_video", "decoder"]
    t = pa.concat_tables([pq.read_table(f, columns=cols) for f in files]) if files else pa.table({c: [] for c in cols})
    d = {c: t.column(c).to_pylist() for c in cols}

    def accuracy(domain: str) -> float | None:
        hits = [p == y for dom, y, p in zip(d["domain"], d["label_index"], d["pseudo_label"]) if dom == domain and y is not None]
        return sum(hits) / len(hits) if hits else None

    return {"rows": t.num_rows, "short_videos": sum(d["short_video"]), "pyav_decoded": d["decoder"].count("pyav"),
            "source_clip_accuracy": accuracy("source"), "target_clip_accuracy": accuracy("target"),
            "video_ids": d["video_id"]}


def _check_accounting(manifest: Manifest, shard_ids: list[str], rejects: list[dict]) -> None:
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


def run_preprocess(manifest: Manifest | str | Path, output_dir: str | Path, profile: Profile) -> PreprocessSummary:
    """Preprocess the videos of ``manifest`` (a validated :class:`Manifest` or its path) into
    ``output_dir/<config hash>/`` (module docstring).

    The manifest and configuration are checked before any work (:class:`ManifestError`,
    :class:`ConfigError`, :class:`~lmft_core.pseudo_labels.WeightsError`). Raises
    :class:`PreprocessError` when the rejected fraction exceeds ``preprocess.max_rejected_fraction``
    (after writing the output, so a re-run with a higher limit redoes nothing).
    """
    t0 = time.perf_counter()
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    clip = profile.clip
    labels = profile.section("pseudo_labels", PseudoLabelConfig)
    pre = profile.section("preprocess", PreprocessConfig)
    content = resolved_config(manifest, clip, labels, pre)
    digest = config_hash(content)
    root = Path(output_dir).resolve()
    out = root / digest
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreprocessError(f"{out}: another preprocessing run is writing there") from None
        _commit(out)  # salvage what an interrupted earlier run finished
        shard_ids, rejects = done_video_ids(out)
        # transient rejects (timeouts) are retried: perhaps with a larger preprocess.decode_timeout_s
        done = set(shard_ids) | {r["video_id"] for r in rejects if not is_transient_reason(r["reason"])}
        todo_rows = [r for r in manifest.rows if r.video_id not in done]
        if todo_rows:
            if not labels.untrained and content["pseudo_labels"]["weights"]["kind"] == "tag":
                from lmft_core.pseudo_labels import fetch_pretrained

                fetch_pretrained(labels)  # fail fast, before any work, when the weights cannot be had
            staging = out / "_staging" / uuid.uuid4().hex
            _run_pipeline(manifest_table(manifest, todo_rows), manifest, clip, labels, pre, staging)
            _commit(out)
        stats = _shard_stats(out)
        rejects = _read_csv(out / "rejects.csv")
        _check_accounting(manifest, stats["video_ids"], rejects)
        elapsed = time.perf_counter() - t0
        weights = content["pseudo_labels"]["weights"]
        summary = PreprocessSummary(
            output_dir=out, config_hash=digest, videos_in=len(manifest.rows), already_done=len(done),
            processed=len(todo_rows), shard_rows=stats["rows"], rejects=len(rejects),
            short_videos=stats["short_videos"], pyav_decoded=stats["pyav_decoded"], elapsed_s=elapsed,
            videos_per_s=len(todo_rows) / elapsed if elapsed > 0 else 0.0,
            source_clip_accuracy=stats["source_clip_accuracy"], target_clip_accuracy=stats["target_clip_accuracy"],
            clip_weights=f"{labels.model} / " + (f"untrained (random init, seed {labels.init_seed})" if labels.untrained else f"{weights['kind']} {labels.pretrained}"),
            untrained_clip=labels.untrained,
        )
        metadata = {
            "config_hash": digest, "profile": profile.name, "manifest": str(manifest.path.resolve()),
            "classes": list(manifest.classes), "prompts": labels.prompts(manifest.classes),
            "shard_schema": [f"{f.name}: {f.type}" for f in shard_schema(pre.store_frames)],
            "resolved_config": {"content": content, "clip": dataclasses.asdict(clip),
                                "pseudo_labels": dataclasses.asdict(labels), "preprocess": dataclasses.asdict(pre)},
            "clip_model": weights, "untrained_clip": labels.untrained,
            "library_versions": library_versions(),
            "counts": {"manifest_rows": summary.videos_in, "shard_rows": summary.shard_rows, "rejects": summary.rejects,
                       "short_videos": summary.short_videos, "pyav_decoded": summary.pyav_decoded},
            "source_clip_accuracy": summary.source_clip_accuracy, "target_clip_accuracy": summary.target_clip_accuracy,
            "last_run": {"processed": summary.processed, "already_done": summary.already_done,
                         "elapsed_s": summary.elapsed_s, "videos_per_s": summary.videos_per_s},
        }
        with atomic_write(summary.metadata_path) as f:
            f.write(json.dumps(metadata, indent=2, sort_keys=True))
        with atomic_write(root / "LATEST") as f:
            f.write(digest + "\n")
    if summary.rejected_fraction > pre.max_rejected_fraction:
        reasons = "; ".join(f"{r['video_id']}: {r['reason'][:120]}" for r in rejects[:3])
        raise PreprocessError(
            f"{summary.rejects} of {summary.videos_in} videos ({100 * summary.rejected_fraction:.1f}%) were rejected, "
            f"above preprocess.max_rejected_fraction={pre.max_rejected_fraction}; see {summary.rejects_path} "
            f"(first: {reasons})")
    return summary
