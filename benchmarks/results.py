"""Training results on generated demo data, written to ``docs/results.md``.

    python benchmarks/results.py [--profile results] [--workdir outputs/<profile>] [--seeds 3] [--groups main,...] [--render] [--no-write]

Every number in ``docs/results.md`` comes from this script: it generates the data, preprocesses it,
runs every training through the product's own path (:func:`lmft_core.train.run.run_training`: Ray
Train, MLflow, the logged model) with the ``--profile`` (``results``; ``results-small`` is the earlier,
smaller preset), and writes the tables into that profile's section of ``docs/results.md``. A training that
finished before is not run again: each training's record (its numbers, a few hundred bytes, keyed by data,
energy, overrides and seed) is stored in ``benchmarks/records/<profile>.json``, which is committed, so an
interrupted run of the script resumes, ``--groups`` runs a part, and ``--render`` rewrites the tables from the
records alone, on any machine, without data or training (delete a record to train it again). The file also holds a
digest of what the profile's files state: trainings of another version of the profile are refused, not reused.

Groups (each a comparison of trainings, ``--seeds`` seeds each, same data and schedule):

- ``main``: LMFT; full tokens; random drop at LMFT's mean discard rate; a fixed threshold calibrated
  on source-train to LMFT's mean keep ratio; plus a sanity row without a ViT (nearest class mean of
  the energy maps).
- ``camera``: a target domain filmed with a moving camera (pan, shake and zoom): LMFT on the paper's
  ``diff`` energy, LMFT on camera-compensated ``translate_zoom`` energy, full tokens.
- ``pseudo``: target pseudo-labels from (untrained, offline) CLIP, from the model itself (``self``),
  and both (``clip+self``).
- ``policy``: one threshold per clip (the paper's) against one per temporal segment.
- ``first``: the paper's first-segment rule (always kept) against ``next``.
- ``adafocus``: the learned, content-based window of ``adafocus`` (AdaFocus: glance network, window policy)
  against LMFT, full tokens and random drop at matched keep ratios 0.25 and 0.5 (a 2x2 and a 2x4 window of the
  4x4 token grid), on the static-camera data and on the moving-camera target of ``camera``; on static data also
  its temporal selection alone (the whole grid in the 2 of 8 segments the glance is surest of: keep 0.25) and
  its early exit (2x2, exit at glance confidence 0.9; the exit acts only at evaluation, so each of these trained
  models is also evaluated at every threshold of ``EXIT_CURVE``: accuracy against GFLOPs with the exit rate, a
  table and a figure). GFLOPs per clip include the glance network.
- ``adafocus-static``: the static-camera rows of ``adafocus`` alone (the same trainings: on ``results`` it trains
  nothing new); the second generator's comparison (``--profile results-directions --groups adafocus-static``).
- ``adafocus-moving``: the moving-camera rows of ``adafocus`` at keep 0.25 alone (on ``results`` the same trainings);
  the second generator's moving-camera comparison (``--profile results-directions --groups adafocus-moving``).
- ``size``: the same comparison at keep 0.25 (LMFT, full tokens, random, a 2x2 ``adafocus`` window) for a small
  actor (the profile's ``demo_data.actor_radius``, the static-camera rows of ``adafocus``) against a large one
  (radius ``LARGE_ACTOR`` of the frame height: about two tokens across on the 4x4 grid), static camera.
- ``self``: self-training against the same training source-only: LMFT whose untrained CLIP passes no target
  clip (L_t = 0: the LMFT row of ``main``) against the model's own labels (``train.pseudo_labels = "self"``)
  under the class-balanced rule (CBST) and under the fixed threshold; per refresh the pass rate and the
  pseudo-labels' accuracy against the hidden target labels (monitoring only).
- ``threshold``: a map of fixed thresholds (the ``threshold`` selector calibrated on source-train to keep
  ratios 0.05 to 0.9, one seed each; the best by source-val reward and the best by target top-1, or when that
  is one row the runner-up by target top-1, then with ``--seeds`` seeds), with the paper's reward on source-val
  clips, ``R = -lambda_L * L_s - (1 - rho_s)`` (source labels only), beside LMFT with each estimator; a figure
  of accuracy and reward against tau.
- ``estimator``: the paper's estimator against ``rloo`` (``policy.estimator``) from two starts, tau_hat
  about 0.3 and 0.7 (``policy.mu``), 2 seeds each (at most ``--seeds``); tau_hat over training in one figure.
- ``augment``: the recipe's augmentations (flip, colour jitter) against none, for LMFT and full tokens; run it
  on ``results`` and on the second generated shift (``--profile results-directions --groups main,augment``).
- ``fit``: why full tokens fit the source or not (on ``results-directions`` their loss stays at ln 6): full tokens
  at the recipe's learning rate against a third of it, and a fixed threshold keeping half the tokens (the
  actor's and half the scene's), one seed each beside LMFT.
- ``pretrain``: adaptation from scratch against adaptation from an encoder pretrained by masked video
  modelling on the unlabelled source and target clips (``pipelines/pretrain.py``, mask ratio 0.9) with
  ``tube``, ``motion`` and ``learned`` masking; full tokens and LMFT. Each pretraining runs once per seed
  (``train.seed``) and its cost (wall-clock, clips/s, peak memory) is tabled beside.

Why this setting (the ``results`` profile says the same): classes are defined by motion and the actor's
look is shared, the target has a milder look (``target_mild``: no texture, less darkening, noise and
clutter) than the demo's, and there are 300 videos per class and domain. A small ViT trained from scratch
only generalises after it has seen about 20,000 source clips from more than a thousand different videos:
with 80 videos per class (the ``results-small`` preset, whose groups are kept) it memorises them, reaching
0.39 on source-val and 0.28 on target with full tokens, below the bar of twice chance that a comparison of
token selection needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.config import ConfigError
from lmft_core.demo_data import CameraMotion, generate_demo_data
from lmft_core.run_config import RunConfig, load_profile
from lmft_core.shards.format import unpack_array
from lmft_core.shards.reader import ShardSet

RESULTS_MD = Path(__file__).resolve().parent.parent / "docs" / "results.md"
RECORDS = Path(__file__).resolve().parent / "records"  # <profile>.json: every training's record (committed)
# a new docs/results.md starts with this; in an existing one the script rewrites only its own profile's section,
# so the hand-written narrative above the sections stays
RESULTS_HEADER = ("# Results\n\nThe sections below are written by `python benchmarks/results.py`, one per results profile "
                  "(`--profile`); do not edit them by hand (text above them is kept).\n")
CAMERA = CameraMotion(pan_px_per_s=20.0, shake_px=3.0, zoom_per_s=0.1)  # the camera group's target domain
LARGE_ACTOR = 0.25  # the size group's large actor: its disc's radius as a fraction of the frame height


@dataclass(frozen=True)
class Setting:
    """One row of a group: a label, the data it trains on and its ``--set`` overrides; ``from_lmft`` one
    more override, formatted with the group's LMFT row's mean discard rate ``d`` (its keep ratio ``k = 1 - d``)."""

    label: str
    data: str = "static"  # "static", "camera" (a moving target camera) or "large" (static, a large actor)
    energy: str = "diff"
    overrides: tuple[str, ...] = ()
    from_lmft: str = ""
    pretrain: str = ""  # a masking strategy: adapt from the encoder it pretrains (per seed); empty: from scratch
    seeds: int = 0  # at most this many seeds (0: --seeds)
    exit_curve: tuple[float | None, ...] = ()  # adafocus: after training, target-test at each exit threshold (None: no exit)

    def all_overrides(self, rows: dict[str, list[dict]]) -> tuple[str, ...]:
        if not self.from_lmft:
            return self.overrides
        d = statistics.mean(r["discard_rate"] for r in rows["LMFT"])
        return (*self.overrides, self.from_lmft.format(d=d, k=1 - d))


FOCUS = ('selector.name="adafocus"',)
CBST = 'train.self_selection="class_balanced"'
MAP_KEEP = (0.05, 0.1, 0.25, 0.4, 0.55, 0.7, 0.9)  # the threshold map's keep ratios (calibrated on source-train)
# policy.mu whose tau_hat (the mean of sigmoid(mu + sigma * eps), sigma = e^-1) is about 0.3 and 0.7
START_MU = {0.3: -0.8733, 0.7: 0.8733}
NO_AUGMENT = ("train.hflip=false", "train.color_jitter=0.0")
NCM = "sanity: nearest class mean of the energy maps (no ViT)"
FIGURES = RESULTS_MD.parent / "figures"


FOCUS_WINDOW = {0.25: (2, 2), 0.5: (2, 4)}  # an adafocus window holding that share of the 4x4 token grid
# the early exit's thresholds on the glance's confidence (its top softmax probability, at least 1 / classes: at 0.2
# every clip of 5 classes exits, the glance alone), and None: no exit, the reference of the others
EXIT_CURVE = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, None)


def focus_label(where: str, keep: float) -> str:
    """The label of the adafocus row with ``FOCUS_WINDOW[keep]`` on ``where``."""
    return f"{where}: adafocus {FOCUS_WINDOW[keep][0]}x{FOCUS_WINDOW[keep][1]}, keep {keep:g}"


def random_label(where: str, keep: float) -> str:
    """The label of the random-drop row at ``keep`` on ``where``."""
    return f"{where}: random, keep {keep:g}"


def focus_settings(data: str, where: str, keeps: tuple[float, ...]) -> list[Setting]:
    """The adafocus comparison on ``data``: LMFT, full tokens, and per keep ratio random drop and an adafocus
    window of that share of the token grid (``FOCUS_WINDOW``), labelled ``"<where>: ..."``."""
    return [Setting(f"{where}: LMFT", data=data), Setting(f"{where}: full tokens", data=data, overrides=('selector.name="full"',)),
            *(Setting(random_label(where, k), data=data, overrides=('selector.name="random"', f"selector.drop_rate={1 - k:g}"))
              for k in keeps),
            *(Setting(focus_label(where, k), data=data,
                      overrides=(*FOCUS, f"selector.window=[{FOCUS_WINDOW[k][0]}, {FOCUS_WINDOW[k][1]}]")) for k in keeps)]

GROUPS: dict[str, list[Setting]] = {
    "main": [
        Setting("LMFT"),
        Setting("full tokens", overrides=('selector.name="full"',)),
        Setting("random drop at LMFT's rate", overrides=('selector.name="random"',), from_lmft="selector.drop_rate={d:.3f}"),
        Setting("fixed threshold at LMFT's keep ratio", overrides=('selector.name="threshold"', "selector.calibrate=true"),
                from_lmft="selector.keep_ratio={k:.3f}"),
    ],
    "camera": [
        Setting("LMFT, diff energy", data="camera"),
        Setting("LMFT, translate_zoom energy", data="camera", energy="translate_zoom"),
        Setting("full tokens", data="camera", overrides=('selector.name="full"',)),
    ],
    "pseudo": [
        Setting("pseudo-labels: clip (paper; the LMFT row of main)"),
        Setting("pseudo-labels: self", overrides=('train.pseudo_labels="self"',)),
        Setting("pseudo-labels: clip+self", overrides=('train.pseudo_labels="clip+self"',)),
        Setting("pseudo-labels: self, class-balanced", overrides=('train.pseudo_labels="self"', CBST)),
        Setting("pseudo-labels: clip+self, class-balanced", overrides=('train.pseudo_labels="clip+self"', CBST)),
    ],
    "self": [
        Setting("source-only (the LMFT row of main: no target clip passes the untrained CLIP)"),
        Setting("self-training, class-balanced (CBST)", overrides=('train.pseudo_labels="self"', CBST)),
        Setting("self-training, fixed threshold self_gamma", overrides=('train.pseudo_labels="self"',)),
    ],
    "threshold": [
        *(Setting(f"fixed threshold, keep {k:.2f}", overrides=('selector.name="threshold"', "selector.calibrate=true",
                                                              f"selector.keep_ratio={k}"), seeds=1) for k in MAP_KEEP),
        Setting("LMFT, paper estimator"),
        Setting("LMFT, rloo estimator", overrides=('policy.estimator="rloo"',)),
    ],
    "estimator": [Setting(f"{est} estimator, start tau_hat {start}", overrides=(f'policy.estimator="{est}"', f"policy.mu={mu:.4f}"),
                          seeds=2) for est in ("paper", "rloo") for start, mu in START_MU.items()],
    "augment": [
        Setting("LMFT, the recipe's augmentations"),
        Setting("LMFT, no flip, no colour jitter", overrides=NO_AUGMENT),
        Setting("full tokens, the recipe's augmentations", overrides=('selector.name="full"',)),
        Setting("full tokens, no flip, no colour jitter", overrides=('selector.name="full"', *NO_AUGMENT)),
    ],
    "policy": [
        Setting("one threshold per clip"),
        Setting("one threshold per segment", overrides=('selector.name="lmft-segment"',)),
    ],
    "first": [
        Setting("first segment always kept (paper)", overrides=('selector.first_segment="keep"',)),
        Setting("first segment scored by the next difference", overrides=('selector.first_segment="next"',)),
    ],
    "fit": [  # one seed per diagnostic row: whether full tokens fit at all is far from the seed spread
        Setting("LMFT"),
        Setting("full tokens, lr 1e-3 (the recipe)", overrides=('selector.name="full"',)),
        Setting("full tokens, lr 3e-4", overrides=('selector.name="full"', "train.lr=3e-4"), seeds=1),
        Setting("fixed threshold, keep 0.5 (half the scene's tokens)", overrides=(
            'selector.name="threshold"', "selector.calibrate=true", "selector.keep_ratio=0.5"), seeds=1),
    ],
    "adafocus": [
        *focus_settings("static", "static camera", (0.25, 0.5)), *focus_settings("camera", "moving camera", (0.25, 0.5)),
        Setting("static camera: adafocus 4x4 in 2 of 8 segments, keep 0.25",
                overrides=(*FOCUS, "selector.window=[4, 4]", "selector.segments=2")),
        Setting("static camera: adafocus 2x2, exit at 0.9", overrides=(*FOCUS, "selector.window=[2, 2]", "selector.exit_threshold=0.9"),
                exit_curve=EXIT_CURVE),
    ],
    "size": [
        *focus_settings("static", "small actor", (0.25,)), *focus_settings("large", "large actor", (0.25,)),
    ],
    "adafocus-static": focus_settings("static", "static camera", (0.25, 0.5)),
    "adafocus-moving": focus_settings("camera", "moving camera", (0.25,)),
    "pretrain": [
        Setting("full tokens, from scratch", overrides=('selector.name="full"',)),
        *(Setting(f"full tokens, pretrained ({m})", overrides=('selector.name="full"',), pretrain=m)
          for m in ("tube", "motion", "learned")),
        Setting("LMFT, from scratch"),
        Setting("LMFT, pretrained (motion)", pretrain="motion"),
    ],
}


def prepare_data(profile: RunConfig, workdir: Path, data: str, energy: str) -> Path:
    """Generate (once) the ``data`` video set and preprocess it (once) with ``energy``; the shards' folder."""
    from lmft_core.preprocess.run import run_preprocess

    demo = profile.demo_data
    if data == "camera":
        demo = dataclasses.replace(demo, target_camera=CAMERA)
    elif data == "large":
        demo = dataclasses.replace(demo, actor_radius=LARGE_ACTOR)
    elif data != "static":
        raise ValueError(f"unknown data {data!r}: static, camera or large")
    manifest = generate_demo_data(demo, workdir / f"data-{data}")
    pre = profile.with_overrides([f'energy.variant="{energy}"'])
    summary = run_preprocess(manifest, workdir / f"shards-{data}-{energy}", pre)
    return Path(summary.output_dir)


def energy_ncm(shards: ShardSet) -> float:
    """Sanity row without a ViT: classify each target-test clip by the nearest (L2) class mean of the
    source-train energy maps; top-1 on target-test."""
    def read(domain, split):
        t = shards.read(domain, split, ["energy", "energy_shape", "label_index"])
        return unpack_array(t, "energy", np.float32).reshape(t.num_rows, -1), t.column("label_index").fill_null(-1).to_numpy()

    xs, ys = read("source", "train")
    xt, yt = read("target", "test")
    means = np.stack([xs[ys == k].mean(0) for k in range(len(shards.classes))])
    pred = ((xt[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == yt).mean())


def train_row(profile: RunConfig, shards: Path, workdir: Path, overrides: tuple[str, ...], seed: int,
              pretrain: str = "") -> dict:
    """One training (after a pretraining with masking ``pretrain``, when given, whose encoder it starts from)."""
    from lmft_core.pretrain.run import run_pretrain
    from lmft_core.train.evaluate import headline
    from lmft_core.train.run import run_training

    row, seeded = {}, [*overrides, f"train.seed={seed}"]
    if pretrain:
        pre = run_pretrain(profile.with_overrides([*seeded, f'pretrain.masking="{pretrain}"']), shards, workdir)
        seeded.append(f"model.pretrained={json.dumps(pre.encoder)}")
        row = {"pretrain": {"masking": pretrain, "elapsed_s": pre.elapsed_s, "clips_per_s": pre.clips_per_s,
                            "peak_memory_mb": pre.peak_memory_mb, "final_loss": pre.final_loss}}
    result = run_training(profile.with_overrides(seeded), shards, workdir)
    return {"seed": seed, **headline(result.evaluation), "train_clips_per_s": result.train_clips_per_s,
            "elapsed_s": result.elapsed_s, "run": result.run_name, "evaluation": result.evaluation, **row}


def run_metrics(workdir: Path, row: dict) -> dict:
    """From a training's MLflow run: ``source_val_top1``, the training selector's top-1 on source-val at the
    last epoch (how far the ViT fits the source at all; against it the target top-1 reads as transfer),
    ``pseudo_label_rate``, the fraction of target-train clips with a training label at the end (CLIP's pass
    rate; with self-training, the last refresh's ``pseudo/used_pass_rate``): 0 means L_t was 0 throughout;
    ``refreshes``, per self-training refresh ``[epoch, pass rate, pseudo-label accuracy]`` (the labels trained
    on, against the hidden target labels: monitoring only; empty without self-training); ``tau_hat_history``,
    ``[step, tau_hat]`` over training (the mean over segments for a per-segment threshold)."""
    from mlflow import MlflowClient

    from lmft_core.train.artifacts import RESULT_FILE, TrainResult

    result = TrainResult.load(workdir / "train" / row["run"] / RESULT_FILE)
    label = next(iter(row["evaluation"]))
    client = MlflowClient(tracking_uri=result.tracking_uri)
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    used = next(k for k in ("pseudo/used_pass_rate", "setup/target_train_pseudo_pass_rate",
                            "data/target_train_pseudo_pass_rate") if k in metrics)  # data/*: runs before the rename

    def history(key: str) -> dict[int, float]:
        return {m.step: m.value for m in client.get_metric_history(result.mlflow_run_id, key)}

    epochs, rates, accuracy = (history(k) for k in ("pseudo/self_refresh_epoch", "pseudo/used_pass_rate", "pseudo/used_accuracy"))
    refreshes = [[epochs[step], rates[step], accuracy.get(step, float("nan"))] for step in sorted(epochs)]
    return {"source_val_top1": metrics.get(f"eval_source_val/{label}/top1", float("nan")),
            "pseudo_label_rate": metrics[used], "refreshes": refreshes,
            "tau_hat_history": thin(sorted(history("train/tau_hat").items()))}


def thin(points: list, most: int = 120) -> list:
    """At most ``most`` of ``points``, evenly spaced, the first and the last among them (a record stays small)."""
    if len(points) <= most:
        return points
    return [points[round(i * (len(points) - 1) / (most - 1))] for i in range(most)]


def trained_model(profile: RunConfig, shards: Path, workdir: Path, overrides: tuple[str, ...], row: dict):
    """The trained model of a record's training, as the product loads it: ``(configured, job, result, adapter)``,
    its run configuration, training job, :class:`TrainResult` and classifier."""
    from lmft_core.train.artifacts import RESULT_FILE, TrainResult, load_classifier
    from lmft_core.train.run import prepare

    configured = profile.with_overrides([*overrides, f"train.seed={row['seed']}"])
    job, _ = prepare(configured, shards, workdir)
    result_file = workdir / "train" / row["run"] / RESULT_FILE
    if not result_file.is_file():
        raise FileNotFoundError(f"training {row['run']}'s trained model is needed, and {result_file} does not exist "
                                "(trained in another work directory or on another machine): delete its record to train "
                                "it again")
    result = TrainResult.load(result_file)
    return configured, job, result, load_classifier(job, result.checkpoint)


def source_val_reward(profile: RunConfig, shards: Path, workdir: Path, overrides: tuple[str, ...], row: dict) -> dict:
    """The paper's reward of a trained model on source-val clips, source labels only: ``R = -lambda_L * L_s -
    (1 - rho_s)`` with ``L_s`` the mean cross-entropy and ``rho_s`` the mean discard rate at the model's
    threshold (tau_hat, or the fixed tau); also ``tau``, that threshold (the mean over segments)."""
    from lmft_core.shards.reader import read_batches

    configured, job, result, adapter = trained_model(profile, shards, workdir, overrides, row)
    ce = kept = n = 0.0
    for b in read_batches(ShardSet.open(shards), "source", "val", configured.train.eval_batch_size):
        out = adapter.predict(b.frames, b.energy)
        ce += float(-out["probs"].clamp_min(1e-12).log().gather(1, b.label[:, None]).sum())
        kept, n = kept + float(out["keep_ratio"].sum()), n + len(b)
    loss, discard = ce / n, 1 - kept / n
    tau = job.selector.tau if job.selector.tau is not None else float(np.mean(result.tau_hat))
    return {"source_val_loss": loss, "source_val_discard": discard, "tau": tau,
            "source_val_reward": -configured.policy.loss_weight * loss - (1 - discard)}


def exit_curve(profile: RunConfig, shards: Path, workdir: Path, overrides: tuple[str, ...], row: dict,
               thresholds: tuple[float | None, ...]) -> dict:
    """The early exit's accuracy against compute, from one trained ``adafocus`` model on target-test: the exit acts
    only at evaluation, so one training serves every threshold. ``exit_curve``: per threshold (``selector.exit_threshold``;
    None: no exit) ``[threshold, top-1, exit rate, GFLOPs per clip]``, the product's evaluation
    (:func:`lmft_core.train.evaluate.evaluate`)."""
    from lmft_core.shards.reader import read_batches
    from lmft_core.train.evaluate import evaluate

    configured, job, _, adapter = trained_model(profile, shards, workdir, overrides, row)
    selectors = [dataclasses.replace(job.selector, exit_threshold=t) for t in thresholds]
    results = evaluate(adapter, read_batches(ShardSet.open(shards), "target", "test", configured.train.eval_batch_size), selectors)
    return {"exit_curve": [[t, r.top1, r.exit_rate, r.gflops_per_clip] for t, r in zip(thresholds, results.values())]}


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def group_table(rows: dict[str, list[dict]], extra: dict[str, str] | None = None) -> str:
    header = ["training", "target top-1 (mean ± sd)", "source-val top-1", "target pseudo-labelled", "mean class acc.",
              "discard rate", "GFLOPs / clip", "train clips/s", "seeds"]
    out = []
    for label, runs in rows.items():
        out.append([label, _mean_spread([r["top1"] for r in runs]), _mean_spread([r["source_val_top1"] for r in runs]),
                    f"{statistics.mean(r['pseudo_label_rate'] for r in runs):.2f}",
                    _mean_spread([r["mean_class_accuracy"] for r in runs]),
                    f"{statistics.mean(r['discard_rate'] for r in runs):.3f}",
                    f"{statistics.mean(r['gflops_per_clip'] for r in runs):.4f}",
                    f"{statistics.mean(r['train_clips_per_s'] for r in runs):.1f}", len(runs)])
    for label, value in (extra or {}).items():
        out.append([label, value, "", "", "", "", "", "", ""])
    return markdown_table(header, out)


def setting_overrides(setting: Setting, rows: dict[str, list[dict]], profile: RunConfig, profile_toml: str) -> tuple[str, ...]:
    """The overrides a setting's trainings apply. One the profile already has changes nothing and is left out, so
    that training is shared (the ``first`` group's ``next`` row on ``results`` is ``main``'s LMFT row). One that is
    refused alone (valid only with the setting's others, e.g. ``selector.name="threshold"`` without its ``keep_ratio``)
    changes the profile, so it stays."""
    def changes(override: str) -> bool:
        try:
            return profile.with_overrides([override]).to_toml() != profile_toml
        except ConfigError:
            return True

    return tuple(o for o in setting.all_overrides(rows) if changes(o))


def training_key(setting: Setting, overrides: tuple[str, ...], script_overrides: list[str], seed: int) -> str:
    """A training's key in the records: its data, energy, the script's ``--set``, its overrides, seed (and pretraining)."""
    return json.dumps([setting.data, setting.energy, list(script_overrides), list(overrides), seed]
                      + ([setting.pretrain] if setting.pretrain else []))


def recorded_rows(done: dict, group: str, profile: RunConfig, script_overrides: list[str], seeds: int) -> dict[str, list[dict]]:
    """The rows of a group that is not complete, as far as the records hold them: per setting (in the group's order)
    its recorded seeds below ``seeds``. A setting placed at LMFT's mean discard rate counts once LMFT's row has all
    its seeds (its overrides are known only then)."""
    runs, profile_toml, rows = done.get("runs", {}), profile.to_toml(), {}
    for setting in GROUPS[group]:
        if setting.from_lmft and len(rows.get("LMFT", [])) < seeds:
            continue
        overrides = setting_overrides(setting, rows, profile, profile_toml)
        found = [runs[k] for seed in range(seeds) if (k := training_key(setting, overrides, script_overrides, seed)) in runs]
        if found:
            rows[setting.label] = found
    return rows


def load_records(path: Path) -> dict:
    """The records file: ``runs`` (a training's key -> its record) and per group its rows, each a list of records
    (stored as the keys of ``runs``); empty when the file does not exist."""
    if not path.is_file():
        return {}
    done = json.loads(path.read_text())
    for group in (g for g in GROUPS if g in done):
        done[group]["rows"] = {label: [done["runs"][k] for k in keys] for label, keys in done[group]["rows"].items()}
    return done


def save_records(done: dict, path: Path) -> None:
    """Write ``done`` with each group's rows as keys of ``runs`` (each record stored once), one entry per line,
    each compact: a training's record is one line of the diff, and the file stays small enough to commit."""
    key_of = {id(record): key for key, record in done.get("runs", {}).items()}
    out = {g: ({**v, "rows": {label: [key_of[id(r)] for r in runs] for label, runs in v["rows"].items()}}
               if g in GROUPS else v) for g, v in done.items()}

    def line(key: str, value) -> str:
        return f"{json.dumps(key)}: {json.dumps(value, separators=(',', ':'))}"

    entries = [" " + line(k, v) for k, v in out.items() if k != "runs"]
    if "runs" in out:
        entries.append(' "runs": {\n' + ",\n".join("  " + line(k, v) for k, v in out["runs"].items()) + "\n }")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("{\n" + ",\n".join(entries) + "\n}\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="results", help="the results preset (results, results-small)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: outputs/<profile>")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {list(GROUPS)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="applied to the results profile (e.g. a shorter schedule to try the script)")
    ap.add_argument("--records", type=Path, default=None, help="the records file; default: benchmarks/records/<profile>.json")
    ap.add_argument("--render", action="store_true",
                    help="train nothing: rewrite the tables of the groups the records hold (no data needed)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/results.md")
    args = ap.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        ap.error(f"unknown group(s) {unknown}; known: {list(GROUPS)}")
    profile = load_profile(args.profile, args.overrides)
    workdir = (args.workdir or Path("outputs") / args.profile).resolve()
    store = args.records or RECORDS / f"{args.profile}.json"
    done = load_records(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    # what the profile's files state (its base chain merged), not the code's defaults: a record stays valid when a key
    # with a default is added, and a changed profile file does not silently reuse trainings of the old one
    digest = hashlib.sha256(json.dumps(load_profile(args.profile).sections, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if args.render:  # the tables of every group the records hold, from the records alone
        if not done:
            ap.error(f"--render: no records at {store} (run the groups first)")
        groups = []
    elif done.get("profile_digest", digest) != digest:
        ap.error(f"{store} holds trainings of another version of profile {args.profile!r} (digest "
                 f"{done['profile_digest']}, now {digest}): move it away to train again, or --render it as it is")
    done["profile_digest"] = digest
    t0 = time.perf_counter()
    profile_toml = profile.to_toml()  # an override that leaves it unchanged is left out of a training's key
    prepared: dict[tuple[str, str], Path] = {}

    def shards_of(data: str, energy: str) -> Path:
        if (data, energy) not in prepared:
            prepared[data, energy] = prepare_data(profile, workdir, data, energy)
        return prepared[data, energy]

    def save() -> None:
        save_records(done, store)

    def run_setting(group: str, setting: Setting, rows: dict[str, list[dict]], seeds: int) -> None:
        overrides = setting_overrides(setting, rows, profile, profile_toml)
        runs = done.setdefault("runs", {})
        rows[setting.label] = []
        for seed in range(seeds):
            key = training_key(setting, overrides, args.overrides, seed)
            if key not in runs:
                shards = shards_of(setting.data, setting.energy)
                row = train_row(profile, shards, workdir, overrides, seed, setting.pretrain)
                runs[key] = row | run_metrics(workdir, row)
                save()
            if group == "threshold" and "source_val_reward" not in runs[key]:
                shards = shards_of(setting.data, setting.energy)
                runs[key] |= source_val_reward(profile, shards, workdir, overrides, runs[key])
                save()
            if setting.exit_curve and [p[0] for p in runs[key].get("exit_curve", [])] != list(setting.exit_curve):
                shards = shards_of(setting.data, setting.energy)
                runs[key] |= exit_curve(profile, shards, workdir, overrides, runs[key], setting.exit_curve)
                save()
            rows[setting.label].append(runs[key])
        print(f"[results] {group} / {setting.label}: top-1 {_mean_spread([r['top1'] for r in rows[setting.label]])}",
              flush=True)

    for group in groups:
        rows: dict[str, list[dict]] = {}
        for setting in GROUPS[group]:
            run_setting(group, setting, rows, min(setting.seeds or args.seeds, args.seeds))
        if group == "threshold":  # the map's best two (by source-val reward, by target top-1) with every seed
            for label in best_of_map(rows):
                run_setting(group, next(s for s in GROUPS[group] if s.label == label), rows, args.seeds)
        extra = done.get(group, {}).get("extra", {})
        if group == "main" and NCM not in extra:
            extra[NCM] = f"{energy_ncm(ShardSet.open(shards_of('static', 'diff'))):.3f}"
        done[group] = {"rows": rows, "extra": extra, "overrides": args.overrides, "seeds": args.seeds}
        save()
    print(f"[results] {len(groups)} group(s) in {time.perf_counter() - t0:.0f} s")
    figures = workdir / "figures" if args.no_write else FIGURES
    text = render(done, profile, args.profile, figures, args.overrides, args.seeds)
    if args.no_write:
        print(text)
    else:
        write_section(args.profile, text, RESULTS_MD, header=RESULTS_HEADER)
        print(f"[results] wrote the {args.profile} section of {RESULTS_MD}")
    return 0


TITLES = {
    "main": "LMFT against full tokens, random drop and a fixed threshold",
    "camera": "Camera motion in the target domain: diff against compensated energy",
    "pseudo": "Pseudo-label sources (offline demo: CLIP is untrained)",
    "policy": "One threshold per clip against one per temporal segment",
    "first": "The first temporal segment",
    "pretrain": "Masked video pretraining on the unlabelled clips before adaptation",
    "adafocus": "AdaFocus (a learned window per segment) against LMFT, full tokens and random at keep 0.25 and 0.5",
    "adafocus-static": "AdaFocus against LMFT, full tokens and random at keep 0.25 and 0.5, static camera",
    "adafocus-moving": "AdaFocus against LMFT, full tokens and random at keep 0.25, moving camera",
    "size": f"AdaFocus against LMFT by actor size: the profile's small actor against a large one (radius {LARGE_ACTOR})",
    "self": "Self-training (L_t on) against the same training source-only",
    "threshold": "A map of the threshold: fixed tau against LMFT, with the reward on source-val",
    "estimator": "The threshold's estimator: the paper's against rloo, from two starts",
    "augment": "The recipe's augmentations (flip, colour jitter) against none",
    "fit": "Why full tokens fit the source or not: the learning rate, and half the scene's tokens",
}


def best_of_map(rows: dict[str, list[dict]]) -> list[str]:
    """The two fixed-threshold rows of the map that get 3 seeds: the one with the highest source-val reward (tau*)
    and the one with the highest target top-1; when that is one row, it and the runner-up by target top-1."""
    fixed = {label: runs for label, runs in rows.items() if label.startswith("fixed threshold")}
    by_reward = max(fixed, key=lambda label: statistics.mean(r["source_val_reward"] for r in fixed[label]))
    by_top1 = sorted(fixed, key=lambda label: -statistics.mean(r["top1"] for r in fixed[label]))
    return [by_reward, next(label for label in by_top1 if label != by_reward)]


def _mean(runs: list[dict], key: str) -> float:
    return statistics.mean(r[key] for r in runs)


def refresh_table(rows: dict[str, list[dict]]) -> str:
    """Per self-training row and refresh: the pass rate and the pseudo-labels' accuracy (mean ± sd over seeds), at
    the first five refreshes, every fifth after them and the last (the figure has every one)."""
    out = []
    for label, runs in rows.items():
        count = len(runs[0].get("refreshes", []))
        for i, (epoch, _, _) in enumerate(runs[0].get("refreshes", [])):
            if not (i < 5 or (i + 1) % 5 == 0 or i == count - 1):
                continue
            at = [r["refreshes"][i] for r in runs if len(r.get("refreshes", [])) > i]
            labelled = [a[2] for a in at if not math.isnan(a[2])]  # nan: no clip passed, no accuracy to measure
            out.append([label, f"{epoch:.0f}", _mean_spread([a[1] for a in at]),
                        _mean_spread(labelled) if labelled else "— (none passed)", len(at)])
    return markdown_table(["training", "refresh after epoch", "pass rate", "pseudo-label accuracy (monitoring)", "seeds"], out)


def largest_spread(rows: dict[str, list[dict]]) -> float:
    """The largest standard deviation of target top-1 over seeds among ``rows`` (0 when no row has two seeds):
    every computed reading counts a difference only when it is larger than twice this."""
    return max((statistics.stdev(r["top1"] for r in runs) for runs in rows.values() if len(runs) > 1), default=0.0)


def verdict(diff: float, spread: float, higher: str, lower: str, within: str) -> str:
    """``higher`` when ``diff`` is above twice ``spread``, ``lower`` when below minus twice it, else ``within``."""
    return higher if diff > 2 * spread else lower if diff < -2 * spread else within


def self_reading(rows: dict[str, list[dict]]) -> str:
    """Whether self-training helps, hurts or drifts, from the table: each self-training row against the
    source-only one (difference against two seed spreads), and its pseudo-label accuracy first -> last refresh."""
    labels = list(rows)
    base = _mean(rows[labels[0]], "top1")
    spread = largest_spread(rows)
    parts = []
    for label in labels[1:]:
        runs, diff = rows[label], _mean(rows[label], "top1") - base
        effect = verdict(diff, spread, "helps", "hurts", "makes no clear difference")
        text = f"*{label}* {effect} ({diff:+.3f} on target against source-only, largest sd {spread:.3f})"
        refreshes = [r["refreshes"] for r in runs if r.get("refreshes")]
        rated = [[x for x in seq if not math.isnan(x[2])] for seq in refreshes]  # refreshes that passed any label
        rated = [seq for seq in rated if seq]
        if rated:
            first, last = (statistics.mean(x[i][2] for x in rated) for i in (0, -1))
            rate = statistics.mean(x[0][1] for x in refreshes)
            trend = "drifts (falls)" if last < first - 0.02 else "rises" if last > first + 0.02 else "holds"
            text += (f"; its pass rate at the first refresh is {rate:.2f}, and its pseudo-label accuracy {trend}: "
                     f"{first:.3f} at the first refresh, {last:.3f} at the last")
        parts.append(text)
    return "Reading (computed): " + "; ".join(parts) + "."


def threshold_table(rows: dict[str, list[dict]]) -> str:
    out = [[label, f"{_mean(runs, 'tau'):.3f}", _mean_spread([r["top1"] for r in runs]),
            _mean_spread([r["source_val_top1"] for r in runs]), f"{_mean(runs, 'discard_rate'):.3f}",
            f"{_mean(runs, 'source_val_loss'):.3f}", _mean_spread([r["source_val_reward"] for r in runs]), len(runs)]
           for label, runs in rows.items()]
    return markdown_table(["training", "tau (tau_hat for LMFT)", "target top-1", "source-val top-1", "target discard rate",
                           "source-val loss", "reward R on source-val", "seeds"], out)


def threshold_reading(rows: dict[str, list[dict]]) -> str:
    """tau* (the reward optimum of the fixed-tau map, found with source labels only), the accuracy optimum, and
    where LMFT's tau_hat lands against them."""
    fixed = {label: runs for label, runs in rows.items() if label.startswith("fixed threshold")}
    star = max(fixed, key=lambda label: _mean(fixed[label], "source_val_reward"))
    acc = max(fixed, key=lambda label: _mean(fixed[label], "top1"))
    spread = largest_spread(rows)
    ends = {min(fixed, key=lambda label: _mean(fixed[label], "tau")), max(fixed, key=lambda label: _mean(fixed[label], "tau"))}

    def edge(label: str) -> str:
        return ", at the edge of the map: the optimum may lie beyond it" if label in ends else ""

    text = (f"Reading (computed): the reward optimum tau* = {_mean(fixed[star], 'tau'):.3f} (*{star}*, target top-1 "
            f"{_mean(fixed[star], 'top1'):.3f}{edge(star)}); the accuracy optimum tau = {_mean(fixed[acc], 'tau'):.3f} "
            f"(*{acc}*, {_mean(fixed[acc], 'top1'):.3f}{edge(acc)}).")
    best = _mean(fixed[acc], "top1")
    for label in (x for x in rows if x.startswith("LMFT")):
        runs = rows[label]
        meets = _mean(runs, "top1") >= best - spread and _mean(runs, "discard_rate") >= 0.4
        text += (f" *{label}*: tau_hat {_mean(runs, 'tau'):.3f} ({_mean(runs, 'tau') - _mean(fixed[star], 'tau'):+.3f} from "
                 f"tau*), target top-1 {_mean(runs, 'top1'):.3f} at discard {_mean(runs, 'discard_rate'):.2f}: it "
                 f"{'meets' if meets else 'misses'} the target (>= the best fixed row minus one sd, {best - spread:.3f}, "
                 "at >= 40% of tokens dropped).")
    return text


def threshold_figure(rows: dict[str, list[dict]], path: Path) -> Path:
    """Target and source-val top-1 and the source-val reward against tau (log scale: calibrated thresholds for keep
    ratios from 0.9 to 0.1 span three decades), each fixed row's mean over its seeds with the sd as an error bar, and
    LMFT's runs marked at their tau_hat."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = sorted((runs for label, runs in rows.items() if label.startswith("fixed threshold")), key=lambda runs: _mean(runs, "tau"))

    def mean_sd(key: str) -> tuple[list[float], list[float]]:
        return ([_mean(runs, key) for runs in fixed],
                [statistics.stdev(r[key] for r in runs) if len(runs) > 1 else 0.0 for runs in fixed])

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    taus = [_mean(runs, "tau") for runs in fixed]
    ax.errorbar(taus, *mean_sd("top1"), fmt="o-", capsize=3, label="fixed tau: target top-1")
    ax.errorbar(taus, *mean_sd("source_val_top1"), fmt="s--", capsize=3, label="fixed tau: source-val top-1")
    for i, (label, runs) in enumerate((x for x in rows.items() if x[0].startswith("LMFT")), start=2):
        ax.plot([r["tau"] for r in runs], [r["top1"] for r in runs], "*", color=f"C{i}", markersize=12,
                label=f"{label}: target top-1 at tau_hat (each seed)")
    ax.set_xscale("log")
    ax.set_xlabel("tau (threshold on motion energy, log scale)")
    ax.set_ylabel("top-1")
    right = ax.twinx()
    right.errorbar(taus, *mean_sd("source_val_reward"), fmt="^:", capsize=3, color="tab:red", label="fixed tau: reward R on source-val")
    right.set_ylabel("reward R on source-val", color="tab:red")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="lower right")
    ax.set_title("The threshold map (fixed rows: mean ± sd over their seeds)")
    return _save(fig, path)


def estimator_table(rows: dict[str, list[dict]]) -> str:
    out = [[label, _mean_spread([r["tau_hat_history"][-1][1] for r in runs]), _mean_spread([r["top1"] for r in runs]),
            f"{_mean(runs, 'discard_rate'):.3f}", len(runs)] for label, runs in rows.items()]
    return markdown_table(["training", "final tau_hat", "target top-1", "target discard rate", "seeds"], out)


def estimator_reading(rows: dict[str, list[dict]], tau_star: float | None) -> str:
    """Per estimator: how far apart its two starts end (target: within 0.05) and how far from tau*; then whether
    the starts' ends differ in what the reward sees (keep ratio, target top-1 against its seed spread)."""
    ends: dict[str, list[tuple[float, float, float, float]]] = {}
    for label, runs in rows.items():
        tops = [r["top1"] for r in runs]
        ends.setdefault(label.split(" estimator")[0], []).append((
            statistics.mean(r["tau_hat_history"][-1][1] for r in runs), _mean(runs, "discard_rate"),
            statistics.mean(tops), statistics.stdev(tops) if len(tops) > 1 else 0.0))
    parts = []
    for est, values in ends.items():
        taus = [v[0] for v in values]
        gap = max(taus) - min(taus)
        text = f"the {est} estimator's starts end {gap:.3f} apart in tau_hat ({'within' if gap <= 0.05 else 'not within'} 0.05)"
        if tau_star is not None:
            off = max(abs(v - tau_star) for v in taus)
            text += f", at most {off:.3f} from tau* = {tau_star:.3f} ({'within' if off <= 0.05 else 'not within'} 0.05)"
        discards = [v[1] for v in values]
        tops, sds = [v[2] for v in values], [v[3] for v in values]
        diff = max(tops) - min(tops)
        text += (f"; {max(discards) - min(discards):.3f} apart in discard rate, {diff:.3f} apart in target top-1 "
                 f"({'within' if diff <= max(sds) else 'beyond'} one seed sd, {max(sds):.3f})")
        parts.append(text)
    return "Reading (computed): " + "; ".join(parts) + "."


def estimator_figure(rows: dict[str, list[dict]], path: Path, tau_star: float | None) -> Path:
    """tau_hat over training steps, every run of every row, one colour per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, runs) in enumerate(rows.items()):
        for j, r in enumerate(runs):
            steps, values = zip(*r["tau_hat_history"]) if r["tau_hat_history"] else ((), ())
            ax.plot(steps, values, color=f"C{i}", linestyle="-" if "rloo" in label else "--", label=label if j == 0 else None)
    if tau_star is not None:
        ax.axhline(tau_star, color="k", linewidth=0.8, label="tau* (fixed-tau map, source-val reward)")
    ax.set_xlabel("step")
    ax.set_ylabel("tau_hat")
    ax.legend(fontsize=7)
    ax.set_title("tau_hat over training, two starts per estimator")
    return _save(fig, path)


def refresh_figure(rows: dict[str, list[dict]], path: Path) -> Path:
    """Per self-training row, over its refreshes: the pass rate and the pseudo-labels' accuracy against the hidden
    target labels, each seed a thin line, the mean over seeds a thick one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate, accuracy) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for i, (label, runs) in enumerate(rows.items()):
        per_seed = [np.array(r["refreshes"], dtype=float) for r in runs if r.get("refreshes")]
        for j, (ax, column) in enumerate(((rate, 1), (accuracy, 2))):
            for a in per_seed:
                ax.plot(a[:, 0], a[:, column], color=f"C{i}", linewidth=0.6, alpha=0.5)
            n = min(len(a) for a in per_seed)
            stacked = np.stack([a[:n, column] for a in per_seed])  # accuracy is NaN where a refresh labelled nothing
            counts = (~np.isnan(stacked)).sum(axis=0)
            mean = np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)
            ax.plot(per_seed[0][:n, 0], mean, color=f"C{i}", linewidth=2, label=label if j == 0 else None)
    rate.set_ylabel("pass rate (target-train clips labelled)")
    accuracy.set_ylabel("pseudo-label accuracy (hidden labels)")
    for ax in (rate, accuracy):
        ax.set_xlabel("refresh after epoch")
        ax.set_ylim(0, 1)
    rate.legend(fontsize=7)
    fig.suptitle("Self-training: what it labels and how well, per refresh (thin: seeds, thick: mean)")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tau_star_of(done: dict) -> float | None:
    """tau* from the threshold group, when it was run."""
    if "threshold" not in done:
        return None
    fixed = {label: runs for label, runs in done["threshold"]["rows"].items() if label.startswith("fixed threshold")}
    return _mean(fixed[max(fixed, key=lambda label: _mean(fixed[label], "source_val_reward"))], "tau")


def figure_link(path: Path) -> str:
    """A markdown image of ``path``, relative to docs/ when it lies there."""
    try:
        ref = path.relative_to(RESULTS_MD.parent)
    except ValueError:
        ref = path
    return f"![{path.stem}]({ref})"


def group_text(group: str, entry: dict, chance: float, profile: RunConfig, name: str, figures: Path,
               done: dict) -> list[str]:
    """The table(s), the computed reading and the figure of one group."""
    rows = entry["rows"]
    if group == "threshold":
        fig = threshold_figure(rows, figures / f"{name}-threshold-map.png")
        return [threshold_table(rows), "", threshold_reading(rows), "", figure_link(fig), ""]
    if group == "estimator":
        tau_star = tau_star_of(done)
        fig = estimator_figure(rows, figures / f"{name}-estimator-tau-hat.png", tau_star)
        return [estimator_table(rows), "", estimator_reading(rows, tau_star), "", figure_link(fig), ""]
    lines = [group_table(rows, entry["extra"]), "", reading(rows, chance), ""]
    if group in ("self", "pseudo") and any(r.get("refreshes") for runs in rows.values() for r in runs):
        refreshing = {k: v for k, v in rows.items() if any(r.get("refreshes") for r in v)}
        fig = refresh_figure(refreshing, figures / f"{name}-{group}-refreshes.png")
        lines += ["Per refresh (the labels trained on, against the hidden target labels; monitoring only):", "",
                  refresh_table(refreshing), "", figure_link(fig), ""]
    if group == "self":
        lines += [self_reading(rows), ""]
    if group == "pretrain":
        lines += [pretrain_reading(rows, chance), "", pretrain_cost(rows, profile), ""]
    if group in ("adafocus", "adafocus-static", "adafocus-moving", "size"):
        lines += [focus_reading(rows), ""]
    for label, runs in rows.items():
        if all("exit_curve" in r for r in runs):
            fig = exit_figure(rows, label, figures / f"{name}-{group}-exit-curve.png")
            lines += [exit_table(label, runs), "", exit_reading(runs), "", figure_link(fig), ""]
    return lines


def render(done: dict, profile: RunConfig, name: str, figures: Path = FIGURES, script_overrides: list[str] = (),
           seeds: int = 3) -> str:
    demo = profile.demo_data
    train = profile.train
    lines = [
        f"## Profile `{name}`", "",
        f"`python benchmarks/results.py --profile {name}`. Every row is a",
        "training through the product's path (Ray Train, MLflow), evaluated on target-test with tau_hat;",
        "mean ± standard deviation over seeds (`train.seed`: model initialisation, data order, augmentation).",
        "",
        f"Setting: {len(demo.classes)} motion classes ({', '.join(demo.classes)}), {demo.videos_per_class} videos per class and "
        f"domain, target look `{demo.target_appearance}`; clip {profile.clip.num_frames} x {profile.clip.image_size} px, "
        f"model `{profile.model.size}`; {train.epochs} epochs of batch {train.batch_size} per domain "
        f"x {train.workers} worker(s). Chance is {1 / len(demo.classes):.2f}. Machine: {machine_description()}.",
        "",
    ]
    chance = 1 / len(demo.classes)
    for group, title in TITLES.items():
        if group in done:
            lines += [f"### {title}", "", *group_text(group, done[group], chance, profile, name, figures, done)]
    partial, shown = {}, {id(r) for g in done if g in TITLES for runs in done[g]["rows"].values() for r in runs}
    for group in (g for g in TITLES if g not in done):  # those with a training not shown above (not only shared rows)
        rows = recorded_rows(done, group, profile, list(script_overrides), seeds)
        if {id(r) for runs in rows.values() for r in runs} - shown:
            partial[group] = rows
            shown |= {id(r) for runs in rows.values() for r in runs}
    if partial:
        lines += ["### Groups in progress: the trainings recorded so far", "",
                  "Groups whose trainings are not all run yet; each row holds the seeds its records have (*seeds*), "
                  "so its mean may move. The group's reading and figures come when it is complete.", ""]
        for group, rows in partial.items():
            table = estimator_table(rows) if group == "estimator" else group_table(rows)  # the estimator's: final tau_hat
            lines += [f"**{TITLES[group]}** (`{group}`, {sum(map(len, rows.values()))} trainings so far)", "", table, ""]
    covered = []  # groups whose every training is recorded under other groups
    for group in (g for g in TITLES if g not in done and g not in partial):
        rows = recorded_rows(done, group, profile, list(script_overrides), seeds)
        if all(len(rows.get(s.label, [])) >= min(s.seeds or seeds, seeds) for s in GROUPS[group]):
            covered.append(group)
    missing = [g for g in TITLES if g not in done and g not in partial and g not in covered]
    if missing:
        lines += [f"Not run on this profile: {', '.join(f'`{g}`' for g in missing)} "
                  f"(`python benchmarks/results.py --profile {name} --groups {','.join(missing)}` adds them).", ""]
    lines += ["*train clips/s* is each training's own measurement (source + target clips over its epochs' data wait and",
              "step time) and depends on what else ran on the machine; `docs/benchmarks.md` (section `train`) has",
              "throughput measured side by side on a quiet machine. *source-val top-1* is the same model on held-out",
              "source clips (how far it fits the source at all); *target pseudo-labelled* the fraction of target-train",
              "clips with a training label at the end (0: the target loss was 0 throughout, a source-only training).", ""]
    return "\n".join(lines)


def pretrain_cost(rows: dict[str, list[dict]], profile: RunConfig) -> str:
    """The pretrainings of the ``pretrain`` group: strategy, final loss, wall-clock, clips/s, peak memory."""
    cfg = profile.pretrain
    runs: dict[str, dict[int, dict]] = {}
    for results in rows.values():
        for r in results:
            if "pretrain" in r:
                runs.setdefault(r["pretrain"]["masking"], {})[r["seed"]] = r["pretrain"]  # once per strategy and seed
    table = [[m, f"{statistics.mean(p['final_loss'] for p in by_seed.values()):.4f}",
              f"{statistics.mean(p['elapsed_s'] for p in by_seed.values()):.0f}",
              f"{statistics.mean(p['clips_per_s'] for p in by_seed.values()):.1f}",
              f"{max(p['peak_memory_mb'] for p in by_seed.values()):.0f}", len(by_seed)] for m, by_seed in runs.items()]
    return (f"Pretraining ({cfg.epochs} epochs of batch {cfg.batch_size}, mask ratio {cfg.mask_ratio:g}, on source and "
            "target train clips; the wall-clock includes Ray Train's start and the figure, and the machine was shared):\n\n"
            + markdown_table(["masking", "final loss", "wall-clock s", "clips/s", "peak memory MB (rank 0 process)", "seeds"], table))


def pretrain_reading(rows: dict[str, list[dict]], chance: float) -> str:
    """The ``pretrain`` group's two targets, computed: does a pretrained initialisation lift full-token target
    top-1 above twice chance, and at the profile's mask ratio is ``motion`` or ``learned`` at least ``tube``?
    Differences are set against twice the largest seed spread; LMFT's pretrained row against its own scratch."""
    means = {label: statistics.mean(r["top1"] for r in runs) for label, runs in rows.items() if runs}
    spread = largest_spread(rows)

    def versus(a: str, b: str) -> str:
        d = means[a] - means[b]
        return f"{verdict(d, spread, 'higher', 'lower', 'no clear difference')}, {d:+.3f}"

    scratch, parts = "full tokens, from scratch", []
    pretrained = [m for m in ("tube", "motion", "learned") if f"full tokens, pretrained ({m})" in means]
    if scratch in means:
        parts.append(f"full tokens from scratch reach {means[scratch]:.3f} (twice chance is {2 * chance:.2f})")
        for m in pretrained:
            label = f"full tokens, pretrained ({m})"
            bar = "above" if means[label] > 2 * chance else "not above"
            parts.append(f"pretrained with `{m}` {means[label]:.3f}, {bar} twice chance ({versus(label, scratch)} against "
                         "scratch)")
    if "tube" in pretrained and len(pretrained) > 1:
        best = max((m for m in pretrained if m != "tube"), key=lambda m: means[f"full tokens, pretrained ({m})"])
        met = means[f"full tokens, pretrained ({best})"] >= means["full tokens, pretrained (tube)"]
        parts.append(f"the better of `motion` and `learned` is `{best}`: {'at least' if met else 'below'} `tube` "
                     f"({versus(f'full tokens, pretrained ({best})', 'full tokens, pretrained (tube)')}), target "
                     f"{'met' if met else 'missed'}")
    if {"LMFT, from scratch", "LMFT, pretrained (motion)"} <= means.keys():
        parts.append(f"LMFT pretrained with `motion` {means['LMFT, pretrained (motion)']:.3f} against "
                     f"{means['LMFT, from scratch']:.3f} from scratch ({versus('LMFT, pretrained (motion)', 'LMFT, from scratch')})")
    if not parts:
        return ""
    return (f"Reading (computed; a difference counts when larger than twice the largest seed spread, {2 * spread:.3f}): "
            + "; ".join(parts) + ".")


def focus_reading(rows: dict[str, list[dict]]) -> str:
    """Where adafocus wins and loses in the ``adafocus`` and ``size`` groups, computed: per data (camera or actor
    size) and keep ratio, adafocus against random drop at the same keep ratio (does the learned window beat
    chance placement?) and against LMFT (with its own keep ratio and GFLOPs), differences set against twice the
    largest seed spread."""
    def mean(label: str, key: str = "top1") -> float | None:
        return statistics.mean(r[key] for r in rows[label]) if rows.get(label) else None

    spread = largest_spread(rows)

    def versus(a: float, b: float) -> str:
        d = a - b
        return f"{verdict(d, spread, 'wins', 'loses', 'ties (within two seed spreads)')}, {d:+.3f}"

    parts = []
    for where in ("static camera", "moving camera", "small actor", "large actor"):
        for keep in FOCUS_WINDOW:
            focus, rand = mean(focus_label(where, keep)), mean(random_label(where, keep))
            lmft = mean(f"{where}: LMFT")
            if focus is None or rand is None or lmft is None:
                continue
            parts.append(f"{where}, keep {keep:g}: adafocus {focus:.3f} against random {versus(focus, rand)}; against LMFT "
                         f"(keep {1 - mean(f'{where}: LMFT', 'discard_rate'):.2f}) {versus(focus, lmft)} at "
                         f"{mean(focus_label(where, keep), 'gflops_per_clip'):.4f} against "
                         f"{mean(f'{where}: LMFT', 'gflops_per_clip'):.4f} GFLOPs per clip")
    if not parts:
        return ""
    return ("Where adafocus wins and loses (computed; a difference counts when larger than twice the largest seed "
            f"spread, {2 * spread:.3f}): " + "; ".join(parts) + ".")


def _threshold(t: float | None) -> str:
    return "none (no exit)" if t is None else f"{t:g}"


def exit_points(runs: list[dict]) -> list[dict]:
    """Per exit threshold of the runs' ``exit_curve`` (the same thresholds in every run, None among them: no exit):
    ``threshold``; the mean and sd over runs of ``top1`` and of ``drop``, each run's top-1 without exit minus its
    top-1 here (paired: the same model, so the seeds' own spread cancels); ``within_se``, whether every run's drop
    is at most the binomial standard error of its top-1 without exit (sqrt(p (1 - p) / clips): a drop the test set
    cannot tell from none); the mean, min and max over runs of ``exit_rate``; the mean of ``gflops``."""
    thresholds = [p[0] for p in runs[0]["exit_curve"]]
    if any([p[0] for p in r["exit_curve"]] != thresholds for r in runs) or None not in thresholds:
        raise ValueError(f"exit curves must share their thresholds, no exit (None) among them; got "
                         f"{[[p[0] for p in r['exit_curve']] for r in runs]}")
    ref = thresholds.index(None)

    def mean_sd(values: list[float]) -> tuple[float, float]:
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def se(r: dict) -> float:
        p, clips = r["exit_curve"][ref][1], next(iter(r["evaluation"].values()))["clips"]
        return math.sqrt(p * (1 - p) / clips)

    points = []
    for i, threshold in enumerate(thresholds):
        drops = [r["exit_curve"][ref][1] - r["exit_curve"][i][1] for r in runs]
        rates = [r["exit_curve"][i][2] for r in runs]
        top1, top1_sd = mean_sd([r["exit_curve"][i][1] for r in runs])
        drop, drop_sd = mean_sd(drops)
        points.append({"threshold": threshold, "top1": top1, "top1_sd": top1_sd, "drop": drop, "drop_sd": drop_sd,
                       "within_se": all(d <= se(r) for d, r in zip(drops, runs)), "exit_rate": statistics.mean(rates),
                       "exit_min": min(rates), "exit_max": max(rates),
                       "gflops": statistics.mean(r["exit_curve"][i][3] for r in runs)})
    return points


def exit_table(label: str, runs: list[dict]) -> str:
    def spread(mean: float, sd: float) -> str:  # as _mean_spread writes it, from exit_points' mean and sd
        return f"{mean:.3f} ± {sd:.3f}" if len(runs) > 1 else f"{mean:.3f}"

    out = [[_threshold(p["threshold"]), spread(p["top1"], p["top1_sd"]), spread(p["drop"], p["drop_sd"]),
            f"{p['exit_rate']:.3f} ({p['exit_min']:.3f}–{p['exit_max']:.3f})", f"{p['gflops']:.4f}"]
           for p in exit_points(runs)]
    return (f"The early exit of *{label}* over exit thresholds: each seed's trained model evaluated on target-test at "
            f"every threshold ({len(runs)} seeds; the exit acts only at evaluation, so no training per threshold).\n\n"
            + markdown_table(["exit threshold (glance confidence)", "target top-1", "top-1 drop against no exit (paired)",
                              "exit rate: mean (min–max over seeds)", "GFLOPs / clip"], out))


def exit_reading(runs: list[dict]) -> str:
    """The two ends of the exit curve (the lowest threshold; no exit) and its cheapest point whose every model
    loses at most one standard error of its top-1 (``within_se``)."""
    points = exit_points(runs)
    none = next(p for p in points if p["threshold"] is None)
    low = min((p for p in points if p["threshold"] is not None), key=lambda p: p["threshold"])
    cheap = min((p for p in points if p["within_se"]), key=lambda p: p["gflops"])
    text = (f"Reading (computed): without exit, top-1 {none['top1']:.3f} at {none['gflops']:.4f} GFLOPs per clip; at exit "
            f"threshold {_threshold(low['threshold'])} {low['exit_rate']:.0%} of clips exit, top-1 {low['top1']:.3f} (a drop "
            f"of {low['drop']:.3f}) at {low['gflops']:.4f} GFLOPs. ")
    if cheap is none:
        return text + "At every threshold some model loses more than one standard error of its top-1: no exit is free."
    return text + (f"The cheapest threshold at which no model loses more than one standard error of its top-1 (binomial, "
                   f"on target-test) is {_threshold(cheap['threshold'])}: {cheap['exit_rate']:.0%} of clips exit "
                   f"({cheap['exit_min']:.0%}–{cheap['exit_max']:.0%} by model), {cheap['gflops'] / none['gflops']:.2f}x "
                   f"the GFLOPs, top-1 drop {cheap['drop']:.3f} ± {cheap['drop_sd']:.3f}.")


def exit_figure(rows: dict[str, list[dict]], label: str, path: Path) -> Path:
    """Target top-1 against GFLOPs per clip: the exit curve of ``label`` (mean ± sd over seeds, each point marked
    with its threshold) beside the group's other rows on the same data (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    points = exit_points(rows[label])
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.errorbar([p["gflops"] for p in points], [p["top1"] for p in points], yerr=[p["top1_sd"] for p in points],
                fmt="o-", capsize=3, label=f"{label}: exit threshold (mean ± sd)")
    clusters: list[list[dict]] = []  # thresholds whose points lie within 4% in GFLOPs share one label
    for p in sorted(points, key=lambda p: -2 if p["threshold"] is None else -p["threshold"]):  # no exit first
        if clusters and abs(p["gflops"] / clusters[-1][0]["gflops"] - 1) < 0.04:
            clusters[-1].append(p)
        else:
            clusters.append([p])
    for i, c in enumerate(clusters):  # labels alternate below and above the curve
        numbers = [p["threshold"] for p in c if p["threshold"] is not None]
        name = ", ".join(([f"{min(numbers):g}" + (f"–{max(numbers):g}" if len(numbers) > 1 else "")] if numbers else [])
                         + (["no exit"] if len(numbers) < len(c) else []))
        ax.annotate(name, (c[0]["gflops"], c[0]["top1"]), textcoords="offset points", xytext=(6, 10 if i % 2 else -14), fontsize=8)
    where = label.split(":")[0]
    for i, (other, runs) in enumerate(((k, v) for k, v in rows.items() if k.startswith(where + ":") and k != label), start=1):
        ax.plot(_mean(runs, "gflops_per_clip"), _mean(runs, "top1"), "*^sDvP"[i % 6], color=f"C{i}", markersize=9, label=other)
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ax.set_xticks([t for t in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if low <= t <= high])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("GFLOPs per clip (forward, glance included; log scale)")
    ax.set_ylabel("target top-1")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    ax.set_title("The early exit: accuracy against compute (target-test)\nother rows of the group: mean over seeds")
    return _save(fig, path)


def reading(rows: dict[str, list[dict]], chance: float) -> str:
    """What the table supports, computed from it: transfer against chance, differences against the spread."""
    means = {label: statistics.mean(r["top1"] for r in runs) for label, runs in rows.items()}
    spread = largest_spread(rows)
    best, worst = max(means, key=means.get), min(means, key=means.get)
    text = (f"Reading (computed): the best row is *{best}* ({means[best]:.3f}), the worst *{worst}* ({means[worst]:.3f}); "
            f"their difference {means[best] - means[worst]:.3f} against a largest seed spread (sd) of {spread:.3f}")
    text += ": larger than the spread." if means[best] - means[worst] > 2 * spread else ": within about two spreads, not a clear difference."
    full = [runs for label, runs in rows.items() if label.startswith("full tokens")]
    if full:
        m = statistics.mean(r["top1"] for r in full[0])
        src = statistics.mean(r["source_val_top1"] for r in full[0])
        met = "meets" if m >= 2 * chance else "does not meet"
        text += (f" Full-token training reaches {m:.3f} on target against chance {chance:.2f}: it {met} the bar of twice "
                 f"chance ({2 * chance:.2f}) below which comparisons of token selection say little. On source-val it reaches "
                 f"{src:.3f}: that is how far the ViT fits the source at all; the difference to target ({src - m:.3f}) is "
                 "lost in the transfer.")
    return text


if __name__ == "__main__":
    sys.exit(main())
