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

import sys

from lmft_core.cli import load, run_arguments, run_main


def main(argv: list[str] | None = None) -> int:
    args = run_arguments(__doc__).parse_args(argv)

    def work() -> str:
        from lmft_core.sweep import run_sweep

        result = run_sweep(load(args), args.shards, args.workdir)
        return (f"[lmft] sweep {result.name}: {len(result.table)} trials in {result.elapsed_s:.0f} s; "
                f"selected {result.best_trial} {result.best_params}\n[lmft] results: {result.results_csv}\n"
                f"[lmft] best model: {result.model_uri} (MLflow run {result.best_run_id}); sweep run {result.parent_run_id}\n\n"
                f"{result.summary}")  # the table of the top trials comes last

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
