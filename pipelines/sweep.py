"""Sweep the profile's ``[sweep] space`` (lambda_t, lambda_L, ...) on Ray Tune: each trial a Ray Train fit, ASHA early stopping.

    python pipelines/sweep.py --shards outputs/shards [--profile demo|paper|FILE.toml] [--workdir outputs]
        [--set sweep.search=grid|random|optuna] [--set sweep.num_samples=8] [--set section.key=value ...]
    ray job submit --working-dir . -- python pipelines/sweep.py --profile paper --shards /shared/lmft/shards --workdir /shared/lmft

The space, search, selection metric and early stopping come from the profile's ``[sweep]`` section; as
many trials run at once as the cluster's CPUs and GPUs allow with CPUs left for Ray Data (with fewer
workers per trial than ``train.workers`` when one trial would not fit, said in one line). The selection
metric is computable without target labels (source-val accuracy) unless
``--set sweep.select_on_target_labels=true``. One MLflow parent run, a child run per trial; the best
trial's model is logged in its run. The printout ends with the top trials (selection metric ± standard error).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmft_core.config import INTERRUPTED, INTERRUPTED_EXIT, ConfigError
from lmft_core.run_config import DEFAULT_PROFILE, available_profiles, load_profile
from lmft_core.sweep import SweepError, run_sweep
from lmft_core.train.run import TrainError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, type=Path, help="preprocessing output (root with LATEST, or a <hash> folder)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {available_profiles()} or a .toml path")
    p.add_argument("--workdir", type=Path, default=Path("outputs"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.overrides)
        result = run_sweep(profile, args.shards, args.workdir)
    except (ConfigError, TrainError, SweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT
    print(f"{result.summary}\n[lmft] sweep {result.name}: {len(result.table)} trials in {result.elapsed_s:.0f} s; selected "
          f"{result.best_trial} {result.best_params}\n[lmft] results: {result.results_csv}\n"
          f"[lmft] best model: {result.model_uri} (MLflow run {result.best_run_id}); sweep run {result.parent_run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
