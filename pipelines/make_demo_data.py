"""Write the synthetic domain-shift video set and its manifest.

    python pipelines/make_demo_data.py --output data/demo [--preset demo|tiny] [--seed 0]
        [--classes wave,jump,spin] [--videos-per-class 12] [--num-frames 48] [--width 160] [--height 128]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from lmft_core.demo_data import MOTIONS, DemoDataConfig, generate_demo_data
from lmft_core.manifest import load_manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="folder to write (new, empty, or an earlier demo-data output)")
    p.add_argument("--preset", default="demo", choices=["demo", "tiny"])
    p.add_argument("--seed", type=int)
    p.add_argument("--classes", help=f"comma-separated motions, from {sorted(MOTIONS)}")
    p.add_argument("--videos-per-class", type=int, help="videos per class and domain")
    p.add_argument("--num-frames", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("output", "preset") and v is not None}
    if "classes" in overrides:
        overrides["classes"] = tuple(c.strip() for c in overrides["classes"].split(","))
    try:
        cfg = dataclasses.replace(DemoDataConfig.preset(args.preset), **overrides)
        manifest = generate_demo_data(cfg, args.output)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(load_manifest(manifest).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
