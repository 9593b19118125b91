"""Preprocessing on Ray Data: manifest rows -> decoded clips, motion energy, CLIP pseudo-labels -> Parquet.

The pipeline streams (nothing collects the videos on the driver)::

    from_arrow(manifest rows, one block per decode batch)
      -> map_batches(decode + motion energy)   CPU tasks, one isolated decoder child per worker (decode.py)
      -> map_batches(CLIP zero-shot)           actor pool, on GPUs when the cluster has them (labeler.py)
      -> ShardSink                             complete files into a staging folder, moved into shards/ (store.py)

Output folder (``<output>/<config hash>/``; a different configuration or manifest gets another
folder, so outputs never mix; ``<output>/LATEST`` names the newest): see :mod:`lmft_core.shards.format`;
``_staging/`` holds the running write, and what an interrupted run finished is salvaged by the next.

Every manifest row ends in exactly one of shards or rejects (checked at the end of every run).
A re-run with the same manifest and configuration skips the videos already in shards or rejects
(including the complete files an interrupted run left in staging), except rejects whose reason is
transient (a decoding timeout, a decoder killed from outside; reason starting with ``transient``): those
are tried again, and the new outcome (a shard row or a new reject) replaces the old record. A video whose
file was replaced since its row or reject was made (:mod:`lmft_core.preprocess.identity`) is processed
again; its old record is dropped first.
Shard files appear under ``shards/`` only complete (written in staging, then renamed). On a
cluster, ``<output>`` must be storage every node can write (NFS or a mounted bucket).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from lmft_core import interrupt
from lmft_core.config import ClipConfig
from lmft_core.energy import EnergyConfig
from lmft_core.files import NoSpaceError, atomic_write, exclusive
from lmft_core.manifest import Manifest, load_manifest
from lmft_core.preprocess.config import PreprocessConfig
from lmft_core.preprocess.decode import PreprocessError, decode_batch
from lmft_core.preprocess.labeler import ClipLabeler
from lmft_core.preprocess.store import (
    check_accounting,
    commit,
    config_hash,
    done_and_changed,
    forget,
    read_rejects_csv,
    resolved_config,
    shard_stats,
)
from lmft_core.pseudo_labels import PseudoLabelConfig
from lmft_core.ray_cluster import connect, wait_for_resource_view
from lmft_core.run_config import RunConfig
from lmft_core.shards.format import FRAMES_JPEG_QUALITY, FRAMES_JPEG_SUBSAMPLING, ROW_SCHEMA, SCHEMA_VERSION, shard_schema
from lmft_core.stack import library_versions


@dataclass(frozen=True)
class PreprocessSummary:
    """What a run did and what its output holds (all videos of the manifest, not only this run's)."""

    output_dir: Path
    config_hash: str
    videos_in: int  # manifest rows
    already_done: int  # skipped: in shards or rejects before this run
    changed_files: int  # had a shard row or reject, but the file was replaced since: processed again
    processed: int  # decoded (or rejected) by this run
    shard_rows: int
    rejects: int
    short_videos: int
    pyav_decoded: int
    energy_fallbacks: int  # clips whose camera-compensated energy fell back to diff's (shard column energy_note says why)
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
               "preprocess/changed_files": self.changed_files,
               "preprocess/shard_rows": self.shard_rows, "preprocess/rejects": self.rejects,
               "preprocess/rejected_fraction": self.rejected_fraction, "preprocess/short_videos": self.short_videos,
               "preprocess/energy_fallbacks": self.energy_fallbacks,
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
            f"({self.changed_files} because their file was replaced; {self.videos_per_s:.2f} videos/s over {self.elapsed_s:.1f} s)",
            f"  shards: {self.shard_rows} rows ({self.short_videos} short videos, {self.pyav_decoded} decoded with PyAV, "
            f"{self.energy_fallbacks} with diff's energy in place of the compensated variant's: column energy_note says why); "
            f"rejects: {self.rejects} ({pct(self.rejected_fraction)}) -> {self.rejects_path}",
            f"  CLIP {self.clip_weights}{clip_note}",
            f"  CLIP pseudo-label accuracy: source {pct(self.source_clip_accuracy)}, labelled target {pct(self.target_clip_accuracy)}",
        ])


def manifest_table(manifest: Manifest, rows: Sequence | None = None) -> pa.Table:
    """Manifest rows (default: all) as the pipeline's input table."""
    rows = manifest.rows if rows is None else rows
    return pa.table({
        "video_id": [r.video_id for r in rows], "path": [r.path for r in rows], "domain": [r.domain for r in rows],
        "split": [r.split for r in rows], "label": [r.label for r in rows],
        "label_index": [manifest.label_index(r.label) for r in rows],
    }, schema=ROW_SCHEMA)


def decoded_dataset(todo: pa.Table, clip: ClipConfig, pre: PreprocessConfig, rejects_dir: Path | None,
                    energy: bool = True, energy_config: EnergyConfig = EnergyConfig()):
    """Ray Dataset of decoded clips (and motion energy of the variant ``energy_config`` names) of
    manifest rows ``todo``: CPU tasks, one per batch."""
    connect()
    import ray.data  # the module connect() set up

    blocks = [todo.slice(i, pre.decode_batch_size) for i in range(0, todo.num_rows, pre.decode_batch_size)]
    return ray.data.from_arrow(blocks).map_batches(
        decode_batch, batch_size=pre.decode_batch_size, batch_format="pyarrow", num_cpus=pre.decode_num_cpus,
        fn_kwargs={"clip": clip, "timeout_s": pre.decode_timeout_s,
                   "rejects_dir": None if rejects_dir is None else str(rejects_dir), "energy": energy,
                   "energy_config": energy_config},
        # Declaring the decode tasks' memory also keeps Ray Data from fusing decoding into the CLIP
        # actors (their remote args differ), so decoding stays in CPU tasks.
        memory=pre.decode_memory_mb * 2**20,
    )


def _run_pipeline(todo: pa.Table, manifest: Manifest, clip: ClipConfig, labels: PseudoLabelConfig,
                  pre: PreprocessConfig, energy: EnergyConfig, staging: Path) -> None:
    connect(shared_paths=[staging])  # workers write there: on a cluster, storage every node sees
    import ray.data  # the module connect() set up

    num_gpus = pre.labeler_num_gpus
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    (staging / "rejects").mkdir(parents=True)
    ds = decoded_dataset(todo, clip, pre, staging / "rejects", energy_config=energy)
    ds = ds.map_batches(
        ClipLabeler, batch_size=pre.labeler_batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pre.labeler_num_actors),
        num_cpus=pre.labeler_num_cpus, num_gpus=num_gpus,
        fn_constructor_kwargs={"cfg": labels, "classes": manifest.classes, "store_frames": pre.store_frames,
                               "num_threads": max(1, int(pre.labeler_num_cpus))},
    )
    from lmft_core.preprocess.sink import ShardSink

    wait_for_resource_view(ray)  # read by Ray Data as the job starts (module ray_cluster: a lagging view warns falsely)
    ds.write_datasink(ShardSink(staging / "shards", pre.rows_per_shard))
    interrupt.check()  # a Ctrl-C during the job that Ray swallowed (lmft_core.interrupt)


def out_of_space_in(error: BaseException) -> NoSpaceError | None:
    """The :class:`~lmft_core.files.NoSpaceError` of a write that ``error`` (what Ray Data raised on the driver) was
    caused by, if any: Ray wraps a task's exception (its ``cause``), Ray Data chains it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # a RayTaskError, an instance of its cause's class too
        if isinstance(error, NoSpaceError) and cause is None:
            return error
        error = cause or error.__cause__ or error.__context__
    return None


def run_preprocess(manifest: Manifest | str | Path, output_dir: str | Path, profile: RunConfig) -> PreprocessSummary:
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
    labels = profile.pseudo_labels
    pre = profile.preprocess
    energy = profile.energy
    content = resolved_config(manifest, clip, labels, pre, energy)
    digest = config_hash(content)
    root = Path(output_dir).resolve()
    out = root / digest
    with exclusive(out, "preprocessing run", PreprocessError):
        commit(out)  # salvage what an interrupted earlier run finished
        done, changed = done_and_changed(out, manifest)
        forget(out, changed)  # replaced files: their old rows and rejects go, the videos are processed again
        todo_rows = [r for r in manifest.rows if r.video_id not in done]
        if todo_rows:
            if not labels.untrained and content["pseudo_labels"]["weights"]["kind"] == "tag":
                from lmft_core.pseudo_labels import fetch_pretrained

                fetch_pretrained(labels)  # fail fast, before any work, when the weights cannot be had
            staging = out / "_staging" / uuid.uuid4().hex
            try:
                _run_pipeline(manifest_table(manifest, todo_rows), manifest, clip, labels, pre, energy, staging)
            except Exception as e:
                if (full := out_of_space_in(e)) is None:
                    raise
                raise PreprocessError(f"{full}. The complete shard files written so far are kept: once there is space, "
                                      "re-running the same command continues from them.") from None
            commit(out)
        stats = shard_stats(out)
        rejects = read_rejects_csv(out / "rejects.csv")
        check_accounting(manifest, stats["video_ids"], rejects)
        elapsed = time.perf_counter() - t0
        weights = content["pseudo_labels"]["weights"]
        summary = PreprocessSummary(
            output_dir=out, config_hash=digest, videos_in=len(manifest.rows), already_done=len(done), changed_files=len(changed),
            processed=len(todo_rows), shard_rows=stats["rows"], rejects=len(rejects),
            short_videos=stats["short_videos"], pyav_decoded=stats["pyav_decoded"], energy_fallbacks=stats["energy_fallbacks"],
            elapsed_s=elapsed,
            videos_per_s=len(todo_rows) / elapsed if elapsed > 0 else 0.0,
            source_clip_accuracy=stats["source_clip_accuracy"], target_clip_accuracy=stats["target_clip_accuracy"],
            clip_weights=f"{labels.model}{' (built-in tiny CLIP)' if labels.tiny else ''} / "
                         + (f"untrained (random init, seed {labels.init_seed})" if labels.untrained else f"{weights['kind']} {labels.pretrained}")
                         + f", {labels.frames_seen(clip.num_frames)} of {clip.num_frames} frames, {labels.precision}",
            untrained_clip=labels.untrained,
        )
        metadata = {
            "schema_version": SCHEMA_VERSION, "config_hash": digest, "profile": profile.name, "manifest": str(manifest.path.resolve()),
            "classes": list(manifest.classes), "prompts": labels.prompts(manifest.classes),
            "shard_schema": [f"{f.name}: {f.type}" for f in shard_schema(pre.store_frames)],
            "frames_storage": {"codec": "jpeg", "quality": FRAMES_JPEG_QUALITY, "subsampling": FRAMES_JPEG_SUBSAMPLING},
            "resolved_config": {"content": content, "clip": dataclasses.asdict(clip),
                                "pseudo_labels": dataclasses.asdict(labels), "preprocess": dataclasses.asdict(pre),
                                "energy": dataclasses.asdict(energy)},
            "energy": energy.identity(),
            "clip_model": weights, "untrained_clip": labels.untrained, "tiny_clip": labels.tiny,
            "clip_frames_seen": labels.frames_seen(clip.num_frames),
            "library_versions": library_versions(),
            "counts": {"manifest_rows": summary.videos_in, "shard_rows": summary.shard_rows, "rejects": summary.rejects,
                       "short_videos": summary.short_videos, "pyav_decoded": summary.pyav_decoded,
                       "energy_fallbacks": summary.energy_fallbacks},
            "source_clip_accuracy": summary.source_clip_accuracy, "target_clip_accuracy": summary.target_clip_accuracy,
            "last_run": {"processed": summary.processed, "already_done": summary.already_done, "changed_files": summary.changed_files,
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
