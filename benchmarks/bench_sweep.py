"""The demo sweep as a user launches it: its wall-clock, and whether its trials differ by more than noise.

    python benchmarks/bench_sweep.py [--profile demo] [--seeds 3] [--shards DIR] [--no-write]

Writes section ``sweep`` of docs/benchmarks.md. Generates the profile's demo data and preprocesses it (or takes
``--shards``), runs the profile's ``[sweep]`` in a fresh local Ray instance exactly as ``pipelines/sweep.py`` does
(:func:`lmft_core.sweep.run_sweep`), timed, then trains the selected trial's settings with ``--seeds`` - 1 more seeds
(``train.seed`` 1, 2, ...; the trial itself is seed 0). It reports the sweep's wall-clock and its table, and the two
questions that say whether the sweep means something:

- **trials against seeds**: the standard deviation of target top-1 across the finished trials against that of one
  configuration (the selected one) over seeds. A sweep whose trials spread no more than seeds do sweeps noise.
- **the selection**: the trial selected without target labels (by source-val top-1) against the best trial by
  target labels: is its target top-1 within one binomial standard error (over the target-test clips) of the best?
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmft_core.benchmarking import machine_description, write_section
from lmft_core.run_config import RunConfig, load_profile


def prepare_shards(profile: RunConfig, root: Path) -> Path:
    """The profile's demo data, generated and preprocessed under ``root``; the shards' folder."""
    from lmft_core.demo_data import generate_demo_data
    from lmft_core.preprocess.run import run_preprocess

    manifest = generate_demo_data(profile.demo_data, root / "data")
    return Path(run_preprocess(manifest, root / "shards", profile).output_dir)


def seed_runs(profile: RunConfig, shards: Path, root: Path, overrides: list[str], seeds: range) -> list[float]:
    """Target top-1 of the trainings of ``overrides`` with each of ``seeds``."""
    from lmft_core.train.evaluate import headline
    from lmft_core.train.run import run_training

    return [headline(run_training(profile.with_overrides([*overrides, f"train.seed={s}"]), shards, root).evaluation)["top1"]
            for s in seeds]


def verdicts(finished: list[dict], selected: dict, seed_top1: list[float], target: str, n_target: int) -> list[str]:
    """The two readings of the module docstring, computed: trial spread against seed spread, and whether the selected
    trial's target top-1 is within one binomial standard error of the best trial's by target labels."""
    from lmft_core.sweep import binomial_se

    trial_sd = statistics.stdev(r[target] for r in finished) if len(finished) > 1 else 0.0
    seed_sd = statistics.stdev(seed_top1) if len(seed_top1) > 1 else 0.0
    best = max(finished, key=lambda r: r[target])
    se = binomial_se(best[target], n_target)
    gap = best[target] - selected[target]
    return [f"Target top-1 across the {len(finished)} finished trials: sd {trial_sd:.3f} (range "
            f"{min(r[target] for r in finished):.3f}–{max(r[target] for r in finished):.3f}); the selected configuration over "
            f"{len(seed_top1)} seeds: {statistics.mean(seed_top1):.3f} ± {seed_sd:.3f} (sd). The trials spread "
            + ("more than seeds do: the swept knobs act." if trial_sd > seed_sd else
               "no more than seeds do: on this data the sweep mostly measures noise."),
            f"The selected trial {selected['trial']} (by source-val top-1, no target labels) reaches {selected[target]:.3f} on "
            f"target; the best trial by target labels, {best['trial']}, {best[target]:.3f} ± {se:.3f} (binomial SE over "
            f"{n_target} target-test clips): the selection is " + ("within" if gap <= se else "not within")
            + f" one standard error of the best ({gap:.3f} below it)."]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the selected configuration (the trial is seed 0)")
    p.add_argument("--shards", type=Path, default=None, help="a preprocessing output of the profile's data (default: make it)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    profile = load_profile(args.profile)
    with tempfile.TemporaryDirectory(prefix="lmft-bench-sweep-") as tmp:
        import ray

        from lmft_core.run_config import TARGET_METRIC, metric_of
        from lmft_core.shards.reader import ShardSet
        from lmft_core.sweep import run_sweep, trial_overrides

        root = Path(tmp)
        shards = args.shards or prepare_shards(profile, root)
        n_target = ShardSet.open(shards).counts()[("target", "test")]
        ray.shutdown()  # the sweep gets a fresh local Ray instance, as pipelines/sweep.py does
        t0 = time.perf_counter()
        result = run_sweep(profile, shards, root)
        sweep_s = time.perf_counter() - t0
        fit, load = result.fit, os.getloadavg()[0]
        overrides = [*result.fixed, *trial_overrides(result.best_params)]  # the selected trial's training
        seed_top1 = [result.best_metrics[metric_of(TARGET_METRIC, profile.selector.label)],
                     *seed_runs(profile, shards, root, overrides, range(1, args.seeds))]
        ray.shutdown()
    target = metric_of(TARGET_METRIC, profile.selector.label)
    finished = [r for r in result.table if r.get(target) is not None and r["status"] == "completed"]
    selected = next(r for r in result.table if r["trial"] == result.best_trial)
    lines = ["## The demo sweep: wall-clock, and trials against seeds (`benchmarks/bench_sweep.py`)", "",
             f"`python benchmarks/bench_sweep.py --profile {args.profile}` on {machine_description()}; load average "
             f"{load:.1f} at the sweep's end. The sweep is the profile's `[sweep]` ({profile.sweep.search}, "
             f"{profile.sweep.trials()} trials, {fit.concurrent} at a time, {fit.workers} worker(s) each), run as "
             "`pipelines/sweep.py` runs it, in a fresh local Ray instance, on the profile's demo data.", "",
             f"**Wall-clock of the sweep: {sweep_s:.0f} s** ({sweep_s / 60:.1f} min; {sweep_s / max(1, len(result.table)):.0f} s "
             "per trial, Ray's start, Tune, MLflow and the best trial's model included).", "",
             "The sweep's table (best first by the selection metric; target top-1 for reading only):", "",
             result.summary, "", *(f"- {v}" for v in verdicts(finished, selected, seed_top1, target, n_target)), ""]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("sweep", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
