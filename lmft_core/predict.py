"""Batch prediction on Ray Data: label new videos with an adapted model (tau_hat inside).

Inputs: a CSV with a ``path`` column (``video_id`` and ``label`` optional; any lmft manifest works, and
``domain``/``split`` select rows from it) or a folder, searched recursively for video files. The
pipeline is preprocessing's decode task (the same isolated decoder child, time limit, PyAV salvage and
rejects, and the model's own clip geometry and energy variant, read from the model's metadata) followed
by the model in an actor pool (on GPUs when the cluster has them)::

    rows -> map_batches(decode + motion energy)   CPU tasks (lmft_core.preprocess.decode)
         -> map_batches(Predictor)                actor pool: mlflow.pytorch model, tau_hat
         -> write_parquet / write_csv

Output folder: ``predictions.parquet`` (or ``.csv``) with ``video_id, path, label`` (as given, may be
empty), ``predicted_label``, ``predicted_index``, ``confidence``, one ``p_<class>`` column per class,
``keep_ratio`` (kept tokens / all tokens at tau_hat), ``decoder``, ``decode_note`` and ``picture``; ``rejects.csv``
(every input that could not be decoded or was not found, with its reason); ``summary.json`` (model,
counts, accuracy where labels were given, predictions per class, warnings). Every input row is in exactly one of
predictions and rejects (checked at the end). One prediction run at a time writes into a folder (its ``.lock``); the
pipeline writes into ``_staging/`` there, removed when the run ends, also when it stops (Ctrl-C, an error), and at the
start of the next run (one a killed run left).

With ``[predict] pictures = true`` (``pipelines/predict.py --pictures``) each predicted video also gets
``pictures/<video id>-<hash>.png`` (its ``picture`` column): its motion energy as heat over the first frame of each
temporal segment, the tokens the model kept outlined, its id, predicted label and confidence, keep ratio and an
energy colour bar (:func:`lmft_core.train.plots.kept_tokens`), drawn in the model's actors. A rejected video has no
frames, so no picture: it is counted (``pictures_skipped``), never an error.

When every prediction is the same class, :data:`COLLAPSE_WARNING` goes into the summary's ``warnings`` (and the
entry script prints it): a collapsed model looks like a working one in a table.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmft_core.config import ConfigError, autocast_dtype
from lmft_core.files import atomic_write, exclusive
from lmft_core.manifest import ManifestError, default_video_id
from lmft_core.model_store import ModelInfo, load_model
from lmft_core.preprocess.config import PreprocessConfig
from lmft_core.run_config import PredictConfig
from lmft_core.shards.format import ROW_SCHEMA, unpack_array

COLLAPSE_WARNING = ("all {n} predictions are one class, {label!r}: the model may have collapsed to one class (or the "
                    "videos are all of it); check its target-test accuracy and confusion matrix before using them")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".gif", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts")


def read_inputs(manifest: str | Path | None = None, folder: str | Path | None = None, domain: str | None = None,
                split: str | None = None) -> pa.Table:
    """The videos to label as a table of :data:`~lmft_core.shards.format.ROW_SCHEMA` rows.

    Missing or unreadable files are kept (they end in the rejects with their reason); a missing ``path``
    column, an empty path or a duplicate video id is a :class:`ManifestError` naming the line and the files.
    A folder's video ids are unique by construction (:func:`folder_video_ids`); a folder without video
    files is a :class:`ManifestError` naming the folder.
    """
    if (manifest is None) == (folder is None):
        raise ConfigError("give either a manifest or a folder of videos")
    problems: list[str] = []
    if folder is not None:
        root = Path(folder).resolve()
        if not root.is_dir():
            raise ConfigError(f"{root}: not a folder")
        files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
        if not files:
            raise ManifestError(root, [f"no video files in the folder (searched recursively for {', '.join(VIDEO_SUFFIXES)})"])
        rows = [{"video_id": vid, "path": str(p), "label": None} for p, vid in zip(files, folder_video_ids(files, root))]
        return _input_table(rows, split)
    rows: list[dict] = []
    source = Path(manifest)
    if not source.is_file():
        raise ManifestError(source, ["manifest file not found"])
    root = source.resolve().parent
    with source.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "path" not in header:
            raise ManifestError(source, [f"line 1: no 'path' column; header is {header}"])
        reader.fieldnames = header
        for rec in reader:
            rec = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            if domain and rec.get("domain", domain) != domain or split and rec.get("split", split) != split:
                continue
            if not rec["path"]:
                problems.append(f"line {reader.line_num}: empty path")
                continue
            path = Path(rec["path"]) if Path(rec["path"]).is_absolute() else root / rec["path"]
            rows.append({"video_id": rec.get("video_id") or default_video_id(rec["path"], root), "path": str(path),
                         "label": rec.get("label") or None, "line": reader.line_num})
    seen: dict[str, dict] = {}
    for r in rows:
        if (first := seen.setdefault(r["video_id"], r)) is not r:
            problems.append(f"line {r['line']}: duplicate video_id {r['video_id']!r} ({r['path']}; first on line "
                            f"{first['line']}, {first['path']})")
    if problems:
        raise ManifestError(source, problems)
    if not rows:
        raise ManifestError(source, ["no videos to label"])
    return _input_table(rows, split)


def folder_video_ids(files: Sequence[Path], root: Path) -> list[str]:
    """Video ids of ``files`` under ``root``, unique by construction: the relative path without its extension
    (``sub/clip``), or with it (``sub/clip.avi``) for a file whose extensionless path another file shares
    (a clip and its re-encode, ``clip.avi`` and ``clip.mp4``) or equals another file's full relative path."""
    full = [p.relative_to(root).as_posix() for p in files]
    stems = [p.relative_to(root).with_suffix("").as_posix() for p in files]
    shared = {s for s, n in Counter(stems).items() if n > 1} | (set(stems) & set(full))
    return [f if s in shared else s for f, s in zip(full, stems)]


def _input_table(rows: list[dict], split: str | None) -> pa.Table:
    return pa.table({"video_id": [r["video_id"] for r in rows], "path": [r["path"] for r in rows],
                     "domain": ["target"] * len(rows), "split": [split or "test"] * len(rows),
                     "label": [r["label"] for r in rows], "label_index": [None] * len(rows)}, schema=ROW_SCHEMA)


def picture_name(video_id: str) -> str:
    """A file name for ``video_id``'s picture, unique by construction: the id with characters other than letters,
    digits, ``.``, ``_`` and ``-`` as ``_``, and a hash of the id."""
    import hashlib
    import re

    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', video_id)[:80]}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}.png"


class Predictor:
    """Ray Data actor: decoded rows -> predictions with the model ``uri`` (loaded once per actor); with
    ``pictures_dir``, a kept-token picture per row there (module docstring; ``clip``: the model's geometry)."""

    def __init__(self, uri: str, tracking_uri: str, classes: Sequence[str], num_threads: int = 1, pictures_dir: str = "",
                 clip: dict | None = None, precision: str = "auto"):
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.amp_dtype = autocast_dtype(precision, torch.device(self.device))
        self.model = load_model(uri, tracking_uri, self.device)
        self.classes = list(classes)
        self.pictures_dir, self.clip = pictures_dir, clip or {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        n = batch.num_rows
        if n:
            frames = torch.from_numpy(unpack_array(batch, "frames", np.uint8))
            energy = torch.from_numpy(np.array(unpack_array(batch, "energy", np.float32)))
            out = {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy()
                   for k, v in self.model.predict(frames, energy, amp_dtype=self.amp_dtype).items()}
        else:
            out = {"probs": np.zeros((0, len(self.classes)), np.float32), "label": np.zeros(0, np.int64),
                   "keep_ratio": np.zeros(0, np.float32)}
        cols = {c: batch.column(c) for c in ("video_id", "path", "label")}
        cols["predicted_label"] = pa.array([self.classes[i] for i in out["label"]], pa.string())
        cols["predicted_index"] = pa.array(out["label"].astype(np.int64))
        cols["confidence"] = pa.array(out["probs"].max(axis=1, initial=0.0).astype(np.float32))
        for k, name in enumerate(self.classes):
            cols[f"p_{name}"] = pa.array(out["probs"][:, k].astype(np.float32))
        cols["keep_ratio"] = pa.array(out["keep_ratio"].astype(np.float32))
        cols["decoder"], cols["decode_note"] = batch.column("decoder"), batch.column("decode_note")
        pictures = self.pictures(frames, energy, cols) if n and self.pictures_dir else [""] * n
        cols["picture"] = pa.array(pictures, pa.string())
        return pa.table(cols)

    def pictures(self, frames, energy, cols: dict) -> list[str]:
        """One picture per clip (``frames`` uint8 (B, T, S, S, 3), ``energy`` (B, N_t, N_h, N_w)) in
        ``pictures_dir``, labelled from the prediction columns ``cols``; returns their file names."""
        import torch

        from lmft_core.train import plots

        with torch.no_grad():
            keep = self.model.selection(energy.to(self.device).float()).keep.cpu().numpy()
        names = []
        for i, vid in enumerate(cols["video_id"].to_pylist()):
            title = plots.clip_title(vid, cols["predicted_label"][i].as_py(), cols["confidence"][i].as_py(),
                                     cols["keep_ratio"][i].as_py(), cols["label"][i].as_py())
            fig = plots.kept_tokens(frames[i:i + 1].numpy(), energy[i:i + 1].numpy(), keep[i:i + 1], [title],
                                    self.clip["patch"], self.clip["tubelet"], "Motion energy (heat) and the tokens the model kept (outlined)")
            names.append(plots.save(fig, Path(self.pictures_dir) / picture_name(vid)).name)
        return names


@dataclass(frozen=True)
class PredictSummary:
    output_dir: str
    predictions: str
    rejects: str
    model: str
    model_version: str
    videos_in: int
    predicted: int
    rejected: int
    accuracy: float | None  # where the inputs carried labels (classes of the model)
    labelled: int
    elapsed_s: float
    videos_per_s: float
    predicted_classes: dict[str, int] = field(default_factory=dict)  # predictions per class, most first
    pictures: str = ""  # the pictures' folder ("" without [predict] pictures)
    pictures_made: int = 0
    pictures_skipped: int = 0  # videos without a picture: the rejected ones
    warnings: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        out = {"predict/videos_in": self.videos_in, "predict/predicted": self.predicted, "predict/rejected": self.rejected,
               "predict/elapsed_s": self.elapsed_s, "predict/videos_per_s": self.videos_per_s,
               "predict/classes_predicted": len(self.predicted_classes)}
        if self.pictures:
            out |= {"predict/pictures_made": self.pictures_made, "predict/pictures_skipped": self.pictures_skipped}
        if self.accuracy is not None:
            out["predict/accuracy"] = self.accuracy
        return {k: float(v) for k, v in out.items()}


def run_predict(model: ModelInfo, tracking_uri: str, inputs: pa.Table, output: str | Path, cfg: PredictConfig,
                pre: PreprocessConfig) -> PredictSummary:
    """Label ``inputs`` (:func:`read_inputs`) with ``model`` into ``output`` (module docstring), with the
    run's ``[predict]`` and ``[preprocess]`` (decode) settings."""
    from lmft_core.preprocess.decode import write_rejects_csv

    t0 = time.perf_counter()
    out = Path(output).resolve()
    staging = out / "_staging"
    pictures = out / "pictures" if cfg.pictures else None
    with exclusive(out, "prediction run"):
        shutil.rmtree(staging, ignore_errors=True)  # an earlier run's, stopped before it could remove it (killed)
        if pictures is not None:
            shutil.rmtree(pictures, ignore_errors=True)  # an earlier run's into this folder
            pictures.mkdir(parents=True)
        try:
            table, rejects = _predict_into(model, tracking_uri, inputs, staging, cfg, pre, pictures)
            path = out / f"predictions.{cfg.output_format}"
            if cfg.output_format == "parquet":
                with atomic_write(path, "wb") as f:
                    pq.write_table(table, f)
            else:
                import pyarrow.csv as pacsv

                with atomic_write(path, "wb") as f:
                    pacsv.write_csv(table, f)
            write_rejects_csv(rejects, out / "rejects.csv")
        finally:  # also on Ctrl-C: the next run would remove it, but a stopped run leaves nothing of its own behind
            shutil.rmtree(staging, ignore_errors=True)
    predicted_ids, expected = table.column("video_id").to_pylist(), inputs.column("video_id").to_pylist()
    labelled = [(y, p) for y, p in zip(table.column("label").to_pylist(), table.column("predicted_label").to_pylist())
                if y in model.classes] if table.num_columns > 1 else []
    predicted_classes = dict(Counter(table.column("predicted_label").to_pylist()).most_common()) if table.num_columns > 1 else {}
    made = sum(bool(p) for p in table.column("picture").to_pylist()) if pictures is not None and table.num_columns > 1 else 0
    elapsed = time.perf_counter() - t0
    summary = PredictSummary(
        output_dir=str(out), predictions=str(path), rejects=str(out / "rejects.csv"), model=model.uri,
        model_version=model.version, videos_in=len(expected), predicted=len(predicted_ids), rejected=len(rejects),
        accuracy=sum(y == p for y, p in labelled) / len(labelled) if labelled else None, labelled=len(labelled),
        elapsed_s=elapsed, videos_per_s=len(expected) / elapsed, predicted_classes=predicted_classes,
        pictures=str(pictures or ""), pictures_made=made, pictures_skipped=len(expected) - made if pictures else 0,
        warnings=prediction_warnings(predicted_classes))
    with atomic_write(out / "summary.json") as f:
        f.write(json.dumps(asdict(summary) | {"classes": list(model.classes), "tau_hat": model.tau_hat}, indent=2))
    return summary


def _predict_into(model: ModelInfo, tracking_uri: str, inputs: pa.Table, staging: Path, cfg: PredictConfig,
                  pre: PreprocessConfig, pictures: Path | None) -> tuple[pa.Table, list[dict]]:
    """The predictions table and the rejects of ``inputs``, the pipeline writing into ``staging`` (and a picture per
    video into ``pictures`` unless None); every input is in exactly one of them (else RuntimeError)."""
    from lmft_core import interrupt
    from lmft_core.preprocess.run import decoded_dataset
    from lmft_core.preprocess.store import read_rejects_csv
    from lmft_core.ray_cluster import connect, forwarded_env, wait_for_resource_view

    connect(shared_paths=[staging.parent])
    import ray.data  # the module connect() set up

    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
    (staging / "rejects").mkdir(parents=True)
    ds = decoded_dataset(inputs, model.clip, pre, staging / "rejects", energy_config=model.energy)
    env = forwarded_env()  # the actors load the model from the tracking store: credentials too
    ds = ds.map_batches(Predictor, batch_size=cfg.batch_size, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), num_cpus=cfg.num_cpus, num_gpus=num_gpus,
                        fn_constructor_kwargs={"uri": model.uri, "tracking_uri": tracking_uri, "classes": model.classes,
                                               "num_threads": max(1, int(cfg.num_cpus)),
                                               "pictures_dir": str(pictures or ""), "clip": asdict(model.clip),
                                               "precision": cfg.precision},
                        **({"runtime_env": {"env_vars": env}} if env else {}))
    wait_for_resource_view(ray)  # read by Ray Data as the job starts (module ray_cluster: a lagging view warns falsely)
    ds.write_parquet(str(staging / "parts"))
    interrupt.check()  # a Ctrl-C during the job that Ray swallowed (lmft_core.interrupt)
    parts = sorted((staging / "parts").glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else pa.table({"video_id": pa.array([], pa.string())})
    rejects = [r for f in sorted((staging / "rejects").glob("*.csv")) for r in read_rejects_csv(f)]
    predicted_ids = table.column("video_id").to_pylist()
    expected = inputs.column("video_id").to_pylist()
    if sorted(predicted_ids + [r["video_id"] for r in rejects]) != sorted(expected):
        raise RuntimeError(f"prediction lost or duplicated videos: {len(expected)} in, {len(predicted_ids)} predicted, "
                           f"{len(rejects)} rejected")
    return table, rejects


def prediction_warnings(predicted_classes: dict[str, int]) -> list[str]:
    """What a person should know before trusting predictions (``predicted_classes``: predictions per class): that
    every one of two or more predictions is the same class (:data:`COLLAPSE_WARNING`)."""
    n = sum(predicted_classes.values())
    if len(predicted_classes) == 1 and n > 1:
        return [COLLAPSE_WARNING.format(n=n, label=next(iter(predicted_classes)))]
    return []


def read_predictions(path: str | Path) -> pa.Table:
    """The predictions file ``run_predict`` wrote (``.parquet`` or ``.csv``) as a table."""
    path = Path(path)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(path)
    return pq.read_table(path)
