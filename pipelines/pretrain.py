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

from lmft_core.config import INTERRUPTED, INTERRUPTED_EXIT, ConfigError
from lmft_core.pretrain.run import run_pretrain
from lmft_core.run_config import load_profile, run_arguments
from lmft_core.train.run import TrainError


def main(argv: list[str] | None = None) -> int:
    args = run_arguments(__doc__).parse_args(argv)
    try:
        result = run_pretrain(load_profile(args.profile, args.overrides), args.shards, args.workdir)
    except (ConfigError, TrainError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return INTERRUPTED_EXIT
    print(f"[lmft] pretraining run {result.run_name}: final loss {result.final_loss:.4f}, {result.clips_per_s:.1f} clips/s, "
          f"peak memory {result.peak_memory_mb:.0f} MB, {result.elapsed_s:.0f} s\n"
          f"[lmft] encoder: {result.encoder}\n"
          f"[lmft] adapt from it: python pipelines/train.py --shards <shards> --set model.pretrained={result.encoder}\n"
          f"[lmft] MLflow run {result.mlflow_run_id} at {result.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
