"""Adapt a video classifier from the labelled source domain to the unlabelled target domain (LMFT).

    python pipelines/train.py --shards outputs/shards [--profile demo|paper|FILE.toml] [--workdir outputs]
        [--set section.key=value ...]
    ray job submit --working-dir . -- python pipelines/train.py --shards /shared/lmft/shards --workdir /shared/lmft

``--shards`` is a preprocessing output: its root (the newest output, from LATEST) or one ``<hash>``
folder. Runs Ray Train (``train.workers`` workers), logs one MLflow run, writes checkpoints under
``<workdir>/ray_train/`` and the run's files under ``<workdir>/train/<run name>/``. The same command
again resumes an unfinished run and returns a finished one as it is.
"""

from __future__ import annotations

import sys

from lmft_core.cli import load, run_arguments, run_main


def main(argv: list[str] | None = None) -> int:
    args = run_arguments(__doc__).parse_args(argv)

    def work() -> str:
        from lmft_core.model import tau_text
        from lmft_core.train.run import run_training

        result = run_training(load(args), args.shards, args.workdir)
        main_result = result.evaluation.get(next(iter(result.evaluation)), {})
        return (f"[lmft] run {result.run_name}: target-test top-1 {main_result.get('top1', float('nan')):.3f}, "
                f"discard rate {main_result.get('discard_rate', float('nan')):.3f}, tau_hat {tau_text(result.tau_hat)}\n"
                f"[lmft] model: {result.model_uri}\n[lmft] checkpoint: {result.checkpoint}\n"
                f"[lmft] MLflow run {result.mlflow_run_id} at {result.tracking_uri}")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
