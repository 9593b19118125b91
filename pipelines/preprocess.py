"""Preprocess a manifest of videos into Parquet shards (decoded clips, motion energy, CLIP pseudo-labels).

    python pipelines/preprocess.py --manifest data/manifest.csv --output shards/ [--profile demo|paper|FILE.toml]
        [--set section.key=value ...]

    ray job submit --working-dir . -- python pipelines/preprocess.py --profile paper --manifest /shared/manifest.csv --output /shared/shards

Writes ``<output>/<config hash>/`` (shards/, rejects.csv, metadata.json) and ``<output>/LATEST``.
Offline, pass CLIP weights as a file: ``--set pseudo_labels.pretrained=/path/to/open_clip_pytorch_model.bin``.
"""

from __future__ import annotations

import sys

from lmft_core.cli import load, parser, run_main


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--manifest", required=True, help="manifest CSV (see lmft_core.manifest)")
    p.add_argument("--output", required=True, help="output folder (shared storage on a cluster)")
    args = p.parse_args(argv)

    def work() -> str:
        from lmft_core.preprocess.run import run_preprocess

        return str(run_preprocess(args.manifest, args.output, load(args)))

    return run_main(work)


if __name__ == "__main__":
    sys.exit(main())
