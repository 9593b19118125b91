"""The main lmft job: demo data (or your manifest) -> validation -> preprocessing on Ray Data, logged to MLflow.

    python pipelines/full.py                                  # laptop: demo profile, local Ray, outputs/
    python pipelines/full.py --profile paper --manifest m.csv --workdir /shared/lmft
    ray job submit --working-dir . -- python pipelines/full.py --profile demo --workdir /shared/lmft

``--set section.key=value`` overrides any profile setting (repeatable).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmft_core.config import ConfigError, available_profiles, load_profile
from lmft_core.manifest import ManifestError
from lmft_core.preprocess import PreprocessError
from lmft_core.pseudo_labels import WeightsError
from lmft_core.workflow import run_full


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="demo", help=f"one of {available_profiles()} or a .toml path")
    p.add_argument("--manifest", type=Path, help="dataset manifest (default: generate the demo data)")
    p.add_argument("--workdir", type=Path, default=Path("outputs"), help="where data, shards and the MLflow store go")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = p.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.overrides)
        result = run_full(profile, args.workdir, args.manifest)
    except (ConfigError, ManifestError, FileExistsError, PreprocessError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[lmft] manifest: {result.manifest}\n[lmft] shards: {result.preprocess.output_dir}\n"
          f"[lmft] MLflow run {result.run_id}: mlflow ui --backend-store-uri {result.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
