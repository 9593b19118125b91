"""``python -m lmft_core.datasets <benchmark> --root ... --source D --target D --output manifest.csv``.

One sub-command per registered benchmark; its ``--help`` lists the domains, their default video folders
and split files (relative to ``--root``) and the split-file line format. Exit status 0 on success, 1 when
the benchmark has problems (all listed on stderr), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmft_core.datasets import BENCHMARKS, Benchmark, DatasetConfig, DatasetError
from lmft_core.datasets.core import DATA_DIR, ROLES
from lmft_core.manifest import DOMAINS, load_manifest

NO_LIST = "none"


def _describe(bench: Benchmark) -> str:
    lines = [bench.title, f"Source: {bench.citation}.", f"Class mapping: {DATA_DIR / (bench.name + '.csv')}.",
             f"Split-file lines: {bench.line_format}.",
             f"Videos: found by name below the video folder, {bench.name_rule}." if bench.name_key else
             "Videos: the listed paths, below the video folder.", "", "domains (video folder; default train / test split files, relative to --root):"]
    for d in bench.domains:
        lists = " / ".join(d.split_files.get(r) or "(give on the command line)" for r in ROLES)
        lines.append(f"  {d.name:9s} {d.title}: {d.video_dir}; {lists}")
    if bench.directions is not None:
        lines.append("directions: " + ", ".join(f"{s} -> {t}" for s, t in bench.directions))
    else:
        lines.append("directions: any two different domains")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lmft_core.datasets",
                                     description="Write an lmft manifest for one direction of a video domain adaptation benchmark.")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="benchmark")
    for bench in BENCHMARKS.values():
        names = [d.name for d in bench.domains]
        p = sub.add_parser(bench.name, help=bench.title, description=_describe(bench),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--root", type=Path, required=True, help="the benchmark's folder, laid out as above")
        p.add_argument("--source", required=True, choices=names, help="source domain (labelled)")
        p.add_argument("--target", required=True, choices=names, help="target domain (labels kept for evaluation only)")
        p.add_argument("--output", type=Path, required=True, help="manifest CSV to write")
        for side in DOMAINS:
            for role in ROLES:
                extra = f" ('{NO_LIST}' leaves it out)" if (side, role) == ("source", "test") else ""
                p.add_argument(f"--{side}-{role}", metavar="FILE",
                               help=f"{role} split file of the {side} domain, instead of the default{extra}")
            p.add_argument(f"--{side}-videos", type=Path, metavar="DIR", help=f"video folder of the {side} domain, instead of the default")
        p.add_argument("--skip-missing", action="store_true",
                       help="leave out videos listed but absent on disk and write them, with the reason, to OUTPUT.skipped.csv")
    return parser


def config_from_args(args: argparse.Namespace) -> DatasetConfig:
    split_files = {}
    for side in DOMAINS:
        for role in ROLES:
            value = getattr(args, f"{side}_{role}")
            if value is not None:
                split_files[f"{side}_{role}"] = None if value == NO_LIST else Path(value)
    video_dirs = {side: getattr(args, f"{side}_videos") for side in DOMAINS if getattr(args, f"{side}_videos") is not None}
    return DatasetConfig(args.benchmark, args.root, args.source, args.target, args.output, split_files, video_dirs, args.skip_missing)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = config_from_args(args).build()
    except DatasetError as e:
        print(f"error: {args.benchmark} {args.source} -> {args.target}: {e}", file=sys.stderr)
        return 1
    print(load_manifest(result.manifest, check_files=False).summary())
    if result.skipped is not None:
        print(f"skipped {result.num_skipped} video(s) listed but absent: {result.skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
