"""Write the synthetic domain-shift video set and its manifest.

    python pipelines/make_demo_data.py --output data/demo [--preset demo|tiny] [--seed 0]
        [--classes wave,jump,spin] [--videos-per-class 12] [--num-frames 48] [--width 160] [--height 128]
        [--source-camera KEY=VALUE,...] [--target-camera pan_px_per_s=20,shake_px=3,zoom_per_s=0.1] [--workers N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tomllib

from lmft_core.config import from_dict
from lmft_core.demo_data import MOTIONS, CameraMotion, DemoDataConfig, generate_demo_data
from lmft_core.manifest import load_manifest


def parse_camera(text: str, where: str) -> CameraMotion:
    """``"pan_px_per_s=20,shake_px=3"`` (a TOML inline table's content) -> CameraMotion; errors name ``where``."""
    try:
        fields = tomllib.loads(f"v = {{{text}}}")["v"]
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: {text!r} is not KEY=NUMBER,... ({e})") from None
    return from_dict(CameraMotion, fields, where)


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
    for domain in ("source", "target"):
        p.add_argument(f"--{domain}-camera", metavar="KEY=VALUE,...",
                       help=f"camera motion of {domain} videos: pan_px_per_s, shake_px, zoom_per_s (default: static)")
    p.add_argument("--workers", type=int, help="processes rendering in parallel (default: one per core for large sets)")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("output", "preset", "workers") and v is not None}
    if "classes" in overrides:
        overrides["classes"] = tuple(c.strip() for c in overrides["classes"].split(","))
    try:
        for key in ("source_camera", "target_camera"):
            if key in overrides:
                overrides[key] = parse_camera(overrides[key], f"--{key.replace('_', '-')}")
        cfg = dataclasses.replace(DemoDataConfig.preset(args.preset), **overrides)
        manifest = generate_demo_data(cfg, args.output, workers=args.workers)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(load_manifest(manifest).summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
