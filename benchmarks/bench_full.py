"""The main job's cost, stage by stage, and its printed comparison over seeds.

    python benchmarks/bench_full.py [--profile demo] [--seeds 0 1 2] [--no-write]

Writes section ``full`` of docs/benchmarks.md. For each seed it runs ``lmft_core.workflow.run_full`` from an
empty work directory, as ``python pipelines/full.py`` does (``demo_data.seed`` and ``train.seed`` set to the
seed: other data and another initialisation), in a fresh local Ray instance, and records the wall-clock of each
stage (generate the demo data, preprocess, adapt, evaluate = the baseline trainings, register, predict), the
whole job's (Ray's start included) and the comparison the job prints: target top-1, discard rate and GFLOPs
per clip of the adapted model and of each baseline. The load average during the run is stated, since a
shared machine slows every stage.
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

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.run_config import load_profile


def one_job(profile_name: str, seed: int, root: Path) -> tuple[float, dict[str, float], list[dict]]:
    """(whole-job seconds, seconds per stage, the comparison rows) of one main job with ``seed``."""
    import ray

    from lmft_core.workflow import run_full

    profile = load_profile(profile_name, [f"demo_data.seed={seed}", f"train.seed={seed}"])
    t0 = time.perf_counter()
    result = run_full(profile, root / f"seed{seed}")
    total = time.perf_counter() - t0
    ray.shutdown()
    return total, result.stage_seconds, result.comparison


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    jobs = {}
    with tempfile.TemporaryDirectory(prefix="lmft-bench-full-") as tmp:
        for seed in args.seeds:
            jobs[seed] = one_job(args.profile, seed, Path(tmp))
            print(seed, jobs[seed][0], jobs[seed][1], flush=True)
    load = os.getloadavg()[0]
    stages = list(next(iter(jobs.values()))[1])
    stage_rows = [[name, *(f"{jobs[s][1][name]:.0f}" for s in args.seeds)] for name in stages]
    stage_rows.append(["**whole job** (Ray start, MLflow, printing included)", *(f"**{jobs[s][0]:.0f}**" for s in args.seeds)])
    trainings = [f"{r['training']} ({r['selector']})" for r in next(iter(jobs.values()))[2]]
    result_rows = []
    for i, name in enumerate(trainings):
        top1 = [jobs[s][2][i]["top1"] for s in args.seeds]
        result_rows.append([name, *(f"{t:.3f}" for t in top1), f"{statistics.mean(top1):.3f} ± {statistics.pstdev(top1):.3f}",
                            f"{statistics.mean(jobs[s][2][i]['discard_rate'] for s in args.seeds):.3f}",
                            f"{jobs[args.seeds[0]][2][i]['gflops_per_clip']:.4f}"])
    wins = sum(jobs[s][2][0]["top1"] >= max(r["top1"] for r in jobs[s][2][1:]) for s in args.seeds)
    seeds = [f"seed {s}" for s in args.seeds]
    text = "\n\n".join([
        "## The main job, stage by stage (`benchmarks/bench_full.py`)",
        f"`python benchmarks/bench_full.py --profile {args.profile} --seeds {' '.join(map(str, args.seeds))}` on "
        f"{machine_description()}; load average {load:.1f} at the end. Each seed is one `run_full` from an empty work "
        "directory (what `python pipelines/full.py` runs), with `demo_data.seed` and `train.seed` set to the seed.",
        "*Seconds per stage* (evaluate = the baseline trainings):",
        markdown_table(["stage", *seeds], stage_rows),
        f"*Target-test top-1 per seed* (chance {1 / len(load_profile(args.profile).demo_data.classes):.2f}); the adapted "
        f"model is at least as accurate as every baseline in {wins} of {len(args.seeds)} seeds:",
        markdown_table(["training", *seeds, "mean ± sd", "discard rate", "GFLOPs / clip"], result_rows)])
    print(text)
    if not args.no_write:
        write_section("full", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
