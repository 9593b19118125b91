"""Preprocess a manifest of videos into Parquet shards (decoded clips, motion energy, CLIP pseudo-labels).

    python pipelines/preprocess.py --manifest data/manifest.csv --output shards/ [--profile demo|paper|FILE.toml]
        [--set section.key=value ...]

    ray job submit --working-dir . -- python pipelines/preprocess.py --profile paper --manifest /shared/manifest.csv --output /shared/shards

Writes ``<output>/<config hash>/`` (shards/, rejects.csv, metadata.json) and ``<output>/LATEST``.
Offline, pass CLIP weights as a file: ``--set pseudo_labels.pretrained=/path/to/open_clip_pytorch_model.bin``.
"""

from __future__ import annotations

import argparse
import sys

from lmft_core.config import ConfigError
from lmft_core.manifest import ManifestError
from lmft_core.preprocess.decode import PreprocessError
from lmft_core.preprocess.run import run_preprocess
from lmft_core.pseudo_labels import WeightsError
from lmft_core.run_config import DEFAULT_PROFILE, available_profiles, load_profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="manifest CSV (see lmft_core.manifest)")
    p.add_argument("--output", required=True, help="output folder (shared storage on a cluster)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"one of {available_profiles()} or a .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a profile value, e.g. --set clip.num_frames=8 (repeatable)")
    args = p.parse_args(argv)
    try:
        profile = load_profile(args.profile, args.overrides)
        summary = run_preprocess(args.manifest, args.output, profile)
    except (ConfigError, ManifestError, WeightsError, PreprocessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
