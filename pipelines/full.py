"""The main lmft job: data -> preprocess -> adapt (train or sweep) -> evaluate -> register -> predict, in MLflow.

    python pipelines/full.py                                  # laptop: demo profile, local Ray, outputs/
    python pipelines/full.py --profile paper --manifest m.csv --workdir /shared/lmft --set model.pretrained=...
    ray job submit --working-dir . -- python pipelines/full.py --profile demo --workdir /shared/lmft

``--set section.key=value`` overrides any profile setting (repeatable); ``--force STAGE`` redoes a stage
(preprocess, adapt, evaluate, register, predict) instead of reusing its output. A re-run skips finished
stages and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmft_core.config import ConfigError
from lmft_core.manifest import ManifestError
from lmft_core.preprocess.decode import PreprocessError
from lmft_core.pseudo_labels import WeightsError
from lmft_core.run_config import DEFAULT_PROFILE, available_profiles, load_profile
from lmft_core.sweep import SweepError
from lmft_core.train.run import TrainError
from lmft_core.workflow import STAGE_NAMES, run_full, where_everything_is


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {available_profiles()} or a .toml path")
    p.add_argument("--manifest", type=Path, help="dataset manifest (default: generate the demo data)")
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="where data, shards, runs and the MLflow store go")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--force", action="append", default=[], choices=STAGE_NAMES, help="redo this stage (repeatable)")
    args = p.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.overrides)
        result = run_full(profile, args.workdir, args.manifest, tuple(args.force))
    except (ConfigError, ManifestError, FileExistsError, PreprocessError, WeightsError, TrainError, SweepError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(where_everything_is(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
