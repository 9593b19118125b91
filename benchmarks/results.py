"""Training results on generated demo data, written to ``docs/results.md``.

    python benchmarks/results.py [--profile results] [--workdir outputs/<profile>] [--seeds 3] [--groups main,...] [--no-write]

Every number in ``docs/results.md`` comes from this script: it generates the data, preprocesses it,
runs every training through the product's own path (:func:`lmft_core.train.run.run_training`: Ray
Train, MLflow, the logged model) with the ``--profile`` (``results``; ``results-small`` is the earlier,
smaller preset), and writes the tables into that profile's section of ``docs/results.md``. A training that
finished before is not run again (each row's trainings are stored in ``<workdir>/results.json``, keyed
by data, energy, overrides and seed; delete it to train again), so an interrupted run of the script
resumes, and ``--groups`` runs a part.

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
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.demo_data import CameraMotion, generate_demo_data
from lmft_core.run_config import RunConfig, load_profile
from lmft_core.shards.format import unpack_array
from lmft_core.shards.reader import ShardSet

RESULTS_MD = Path(__file__).resolve().parent.parent / "docs" / "results.md"
# a new docs/results.md starts with this; in an existing one the script rewrites only its own profile's section,
# so the hand-written narrative above the sections stays
RESULTS_HEADER = ("# Results\n\nThe sections below are written by `python benchmarks/results.py`, one per results profile "
                  "(`--profile`); do not edit them by hand (text above them is kept).\n")
CAMERA = CameraMotion(pan_px_per_s=20.0, shake_px=3.0, zoom_per_s=0.1)  # the camera group's target domain


@dataclass(frozen=True)
class Setting:
    """One row of a group: a label, the data it trains on and its ``--set`` overrides; ``from_lmft`` one
    more override, formatted with the group's LMFT row's mean discard rate ``d`` (its keep ratio ``k = 1 - d``)."""

    label: str
    data: str = "static"  # "static" or "camera"
    energy: str = "diff"
    overrides: tuple[str, ...] = ()
    from_lmft: str = ""
    pretrain: str = ""  # a masking strategy: adapt from the encoder it pretrains (per seed); empty: from scratch

    def all_overrides(self, rows: dict[str, list[dict]]) -> tuple[str, ...]:
        if not self.from_lmft:
            return self.overrides
        d = statistics.mean(r["discard_rate"] for r in rows["LMFT"])
        return (*self.overrides, self.from_lmft.format(d=d, k=1 - d))


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
    ],
    "policy": [
        Setting("one threshold per clip"),
        Setting("one threshold per segment", overrides=('selector.name="lmft-segment"',)),
    ],
    "first": [
        Setting("first segment always kept (paper)"),
        Setting("first segment scored by the next difference", overrides=('selector.first_segment="next"',)),
    ],
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


RUN_METRICS = ("source_val_top1", "pseudo_label_rate")


def run_metrics(workdir: Path, row: dict) -> dict[str, float]:
    """From a training's MLflow run: ``source_val_top1``, the training selector's top-1 on source-val at the
    last epoch (how far the ViT fits the source at all; against it the target top-1 reads as transfer), and
    ``pseudo_label_rate``, the fraction of target-train clips with a training label at the end (CLIP's pass
    rate; with self-training, the last refresh's ``pseudo/used_pass_rate``): 0 means L_t was 0 throughout."""
    from mlflow import MlflowClient

    from lmft_core.train.artifacts import RESULT_FILE, TrainResult

    result = TrainResult.load(workdir / "train" / row["run"] / RESULT_FILE)
    label = next(iter(row["evaluation"]))
    metrics = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.mlflow_run_id).data.metrics
    used = "pseudo/used_pass_rate" if "pseudo/used_pass_rate" in metrics else "data/target_train_pseudo_pass_rate"
    return {"source_val_top1": metrics.get(f"eval_source_val/{label}/top1", float("nan")),
            "pseudo_label_rate": metrics[used]}


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="results", help="the results preset (results, results-small)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: outputs/<profile>")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {list(GROUPS)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="applied to the results profile (e.g. a shorter schedule to try the script)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write docs/results.md")
    args = ap.parse_args(argv)
    groups = [g for g in args.groups.split(",") if g]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        ap.error(f"unknown group(s) {unknown}; known: {list(GROUPS)}")
    profile = load_profile(args.profile, args.overrides)
    workdir = (args.workdir or Path("outputs") / args.profile).resolve()
    store = workdir / "results.json"
    done: dict = json.loads(store.read_text()) if store.is_file() else {}
    t0 = time.perf_counter()
    prepared: dict[tuple[str, str], Path] = {}

    def shards_of(data: str, energy: str) -> Path:
        if (data, energy) not in prepared:
            prepared[data, energy] = prepare_data(profile, workdir, data, energy)
        return prepared[data, energy]

    for group in groups:
        rows: dict[str, list[dict]] = {}
        for setting in GROUPS[group]:
            shards = shards_of(setting.data, setting.energy)
            overrides = setting.all_overrides(rows)
            runs = done.setdefault("runs", {})
            rows[setting.label] = []
            for seed in range(args.seeds):
                key = json.dumps([setting.data, setting.energy, list(args.overrides), list(overrides), seed]
                                 + ([setting.pretrain] if setting.pretrain else []))
                if key not in runs:
                    runs[key] = train_row(profile, shards, workdir, overrides, seed, setting.pretrain)
                    store.write_text(json.dumps(done, indent=2))
                rows[setting.label].append(runs[key])
            print(f"[results] {group} / {setting.label}: top-1 {_mean_spread([r['top1'] for r in rows[setting.label]])}",
                  flush=True)
        extra = {}
        if group == "main":
            shards = ShardSet.open(shards_of("static", "diff"))
            extra["sanity: nearest class mean of the energy maps (no ViT)"] = f"{energy_ncm(shards):.3f}"
        done[group] = {"rows": rows, "extra": extra, "overrides": args.overrides, "seeds": args.seeds}
        store.write_text(json.dumps(done, indent=2))
    for group in (g for g in TITLES if g in done):  # rows stored before the run-metric columns existed
        for row in (r for runs in done[group]["rows"].values() for r in runs):
            if any(k not in row for k in RUN_METRICS):
                row |= run_metrics(workdir, row)
    store.write_text(json.dumps(done, indent=2))
    print(f"[results] {len(groups)} group(s) in {time.perf_counter() - t0:.0f} s")
    text = render(done, profile, args.profile)
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
}


def render(done: dict, profile: RunConfig, name: str) -> str:
    demo = profile.demo_data
    train = profile.train
    lines = [
        f"## RunConfig `{name}`", "",
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
        if group not in done:
            continue
        lines += [f"### {title}", "", group_table(done[group]["rows"], done[group]["extra"]), "", reading(done[group]["rows"], chance), ""]
        if group == "pretrain":
            lines += [pretrain_cost(done[group]["rows"], profile), ""]
    missing = [g for g in TITLES if g not in done]
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


def reading(rows: dict[str, list[dict]], chance: float) -> str:
    """What the table supports, computed from it: transfer against chance, differences against the spread."""
    means = {label: statistics.mean(r["top1"] for r in runs) for label, runs in rows.items()}
    spread = max((statistics.stdev(r["top1"] for r in runs) for runs in rows.values() if len(runs) > 1), default=0.0)
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
