"""Masked video pretraining (VideoMAE's recipe) on the unlabelled clips of a preprocessing output, so that
adaptation starts from a pretrained encoder instead of random weights.

    python pipelines/pretrain.py --shards outputs/shards [--profile demo|results|FILE.toml] [--workdir outputs]
        [--set pretrain.masking=motion] [--set pretrain.mask_ratio=0.9] [--set section.key=value ...]
    python pipelines/train.py --shards outputs/shards --set model.pretrained=<the printed encoder.pth>

Masking strategies (``pretrain.masking``): ``tube`` (VideoMAE's), ``random``, ``motion`` (moving tokens more
likely visible; ``pretrain.temperature``), ``learned`` (a sampler trained jointly by policy gradient).
Runs Ray Train (``pretrain.workers`` workers), logs one MLflow run with a reconstruction figure, writes
``<workdir>/pretrain/<run name>/encoder.pth``. The same command again resumes an unfinished run.
"""

from __future__ import annotations

import sys

from lmft_core.cli import load, run_arguments, run_main


def main(argv: list[str] | None = None) -> int:
    args = run_arguments(__doc__).parse_args(argv)

    def work() -> str:
        from lmft_core.pretrain.run import run_pretrain

        result = run_pretrain(load(args), args.shards, args.workdir)
        return (f"[lmft] pretraining run {result.run_name}: final loss {result.final_loss:.4f}, {result.clips_per_s:.1f} "
                f"clips/s, peak memory {result.peak_memory_mb:.0f} MB, {result.elapsed_s:.0f} s\n"
                f"[lmft] encoder: {result.encoder}\n"
                f"[lmft] adapt from it: python pipelines/train.py --shards <shards> --set model.pretrained={result.encoder}\n"
                f"[lmft] MLflow run {result.mlflow_run_id} at {result.tracking_uri}")

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
