"""The main lmft job: data -> preprocess -> adapt (train or sweep) -> evaluate -> register -> predict, in MLflow.

    python pipelines/full.py                                  # laptop: demo profile, local Ray, outputs/
    python pipelines/full.py --profile paper --manifest m.csv --workdir /shared/lmft --set model.pretrained=...
    ray job submit --working-dir . -- python pipelines/full.py --profile demo --workdir /shared/lmft

``--set section.key=value`` overrides any profile setting (repeatable); ``--force STAGE`` redoes a stage
(preprocess, adapt, evaluate, register, predict) instead of reusing its output. A re-run skips finished
stages and resumes an interrupted one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lmft_core.cli import load, parser, run_main


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--manifest", type=Path, help="dataset manifest (default: generate the demo data)")
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="where data, shards, runs and the MLflow store go")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo this stage: preprocess, pretrain, adapt, evaluate, register or predict (repeatable)")
    args = p.parse_args(argv)

    def work() -> str:
        from lmft_core.workflow import run_full, where_everything_is

        return where_everything_is(run_full(load(args), args.workdir, args.manifest, tuple(args.force)))

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
