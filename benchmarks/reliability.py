"""Reliability run: every real and broken video file as the target domain of one preprocessing run.

    python benchmarks/reliability.py [FOLDER ...] [--no-write]

Target rows: every file of ../shared/videos, every file of each FOLDER given (other public test videos you
have fetched; they are only read), and damaged copies this script makes from the shared files (a cut MP4
whose index comes first, as streaming MP4s have it; a cut AVI as UCF101 / HMDB51 ship; an MP4 with zeroed
bytes in the middle; random bytes and a text file under video names; an audio-only MP4; a 1x1 GIF; a real
clip under an HMDB51 name with ``& ( ) [ ] # + !``). Source rows: the tiny generated demo set (a labelled source
domain is required). One ``run_preprocess`` at paper geometry (16 x 224 x 224) on local Ray, with an untrained
tiny CLIP (offline; the labels do not matter here) and no limit on rejects. The run must finish and account
for every file exactly once, in the shards or in the rejects; the script checks that, then writes
``docs/reliability.md``: per file its outcome, decoder, frames found and reason (a reject's, or the note of a
clip salvaged from a damaged file).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmft_core.benchmarking import machine_description, markdown_table
from lmft_core.demo_data import DemoDataConfig, generate_demo_data
from lmft_core.manifest import load_manifest, write_manifest
from lmft_core.preprocess.run import run_preprocess
from lmft_core.pseudo_labels import save_random_checkpoint
from lmft_core.run_config import load_profile
from lmft_core.video import is_transient_reason

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"
RELIABILITY_MD = REPO / "docs" / "reliability.md"


def cut_with_index_first(src: Path, dst: Path, fraction: float) -> Path:
    """``src`` remuxed with its MP4 index (moov) at the front, then cut to ``fraction`` of its bytes."""
    import av

    full = dst.with_name(dst.stem + ".full.mp4")
    with av.open(str(src)) as i, av.open(str(full), "w", options={"movflags": "faststart"}) as o:
        out = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(i.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                o.mux(packet)
    dst.write_bytes(full.read_bytes()[: int(full.stat().st_size * fraction)])
    full.unlink()
    return dst


def audio_only_mp4(dst: Path) -> Path:
    """One second of a 440 Hz tone in an MP4 with no video stream."""
    import av

    with av.open(str(dst), "w") as o:
        stream = o.add_stream("aac", rate=44100)
        t = np.arange(44100) / 44100
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for start in range(0, 44100, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="mono")
            frame.rate = 44100
            o.mux(stream.encode(frame))
        o.mux(stream.encode())
    return dst


def damaged_copies(out: Path) -> list[Path]:
    """Damaged and oddly named files made from the shared videos (see the module docstring)."""
    from PIL import Image

    out.mkdir(parents=True)
    files = [cut_with_index_first(SHARED_VIDEOS / "mmaction2__demo__demo.mp4", out / "demo_cut50pct_index_first.mp4", 0.5),
             cut_with_index_first(SHARED_VIDEOS / "mmaction2__tests__test.mp4", out / "test_cut90pct_index_first.mp4", 0.9)]
    avi = (SHARED_VIDEOS / "mmaction2__tests__test.avi").read_bytes()
    (out / "test_avi_cut50pct.avi").write_bytes(avi[: len(avi) // 2])
    zeroed = bytearray((SHARED_VIDEOS / "mmaction2__tests__test.mp4").read_bytes())
    zeroed[len(zeroed) // 3: len(zeroed) // 3 + 65536] = bytes(65536)
    (out / "test_mp4_64KiB_zeroed.mp4").write_bytes(bytes(zeroed))
    (out / "random_bytes.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    (out / "text_file.avi").write_text("not a video\n" * 100)
    files.append(audio_only_mp4(out / "audio_only.mp4"))
    dots = [Image.new("RGB", (1, 1), (40 * i, 0, 0)) for i in range(8)]
    dots[0].save(out / "one_pixel.gif", save_all=True, append_images=dots[1:], duration=100)
    shutil.copy(SHARED_VIDEOS / "mmaction2__tests__test.avi",
                out / "Goal_1_&_2_(HQ)_[HD]_#2+_Yards!!!_kick_ball_f_cm_np1_fr_goo_2.avi")
    return sorted(p for p in out.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=Path, nargs="*", help="more folders of public test videos (their files are only read)")
    p.add_argument("--no-write", action="store_true", help=f"print only, leave {RELIABILITY_MD.relative_to(REPO)} alone")
    args = p.parse_args(argv)
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        groups = {"shared/videos": sorted(f for f in SHARED_VIDEOS.iterdir() if f.is_file() and f.name != "README.md")}
        groups |= {folder.name: sorted(f for f in folder.iterdir() if f.is_file()) for folder in args.folders}
        groups["derived (damaged copies made here)"] = damaged_copies(tmp / "derived")
        target = {f"{group}/{f.name}": f for group, files in groups.items() for f in files}
        demo = load_manifest(generate_demo_data(DemoDataConfig.preset("tiny"), tmp / "demo"))
        rows = [{"path": r.path, "label": r.label, "domain": "source", "split": r.split, "video_id": f"demo/{r.video_id}"}
                for r in demo.rows if r.domain == "source"]
        rows += [{"path": str(f), "label": None, "domain": "target", "split": "train", "video_id": vid} for vid, f in target.items()]
        manifest = write_manifest(rows, tmp / "manifest.csv")
        clip = save_random_checkpoint(tmp / "clip")
        profile = load_profile("demo", ["clip.num_frames=16", "clip.image_size=224", "clip.patch=16",
                                        f'pseudo_labels.model="{clip.model}"', f'pseudo_labels.model_config="{clip.model_config}"',
                                        f'pseudo_labels.pretrained="{clip.pretrained}"', "preprocess.max_rejected_fraction=1.0"])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            summary = run_preprocess(manifest, tmp / "out", profile)
        finally:
            ray.shutdown()
        shards = pa.concat_tables([pq.read_table(f, columns=["video_id", "decoder", "num_video_frames", "short_video", "decode_note"])
                                   for f in sorted((summary.output_dir / "shards").glob("*.parquet"))])
        with summary.rejects_path.open(newline="") as f:
            rejects = {r["video_id"]: r for r in csv.DictReader(f)}
        outcomes = {r["video_id"]: r for r in shards.to_pylist()}
        both, neither = set(outcomes) & set(rejects), set(target) - set(outcomes) - set(rejects)
        if both or neither:
            print(f"NOT ACCOUNTED FOR: in both {sorted(both)}, in neither {sorted(neither)}", file=sys.stderr)
            return 1
        table = []
        for vid, path in target.items():
            size = f"{path.stat().st_size / 1e3:,.1f} kB"
            if vid in outcomes:
                r = outcomes[vid]
                outcome = "shard, salvaged" if r["decode_note"] else "shard"
                frames = f"{r['num_video_frames']}{' (short)' if r['short_video'] else ''}"
                table.append([vid, size, outcome, r["decoder"], frames, r["decode_note"] or "-"])
            else:
                r = rejects[vid]
                outcome = "reject, transient" if is_transient_reason(r["reason"]) else "reject"
                table.append([vid, size, outcome, r["decoder"] or "-", "-", r["reason"]])
        for row in table:  # a table cell cannot hold a pipe; the temporary folder's name changes every run
            row[-1] = row[-1].replace("|", "/").replace(str(tmp), "$TMP")
    count = {o: sum(row[2] == o for row in table) for o in ("shard", "shard, salvaged", "reject", "reject, transient")}
    md = "\n\n".join([
        "# Reliability run on real and broken video files",
        "Written by `python benchmarks/reliability.py " + " ".join(str(f) for f in args.folders) + "` (rerun it to refresh "
        f"this file). Machine: {machine_description()}.",
        "Every file below was one target-domain row of a single preprocessing run at paper geometry (16 x 224 x 224; "
        "decoders in an isolated child process, 60 s limit per video). The run finished and every file ended in exactly "
        f"one of the shards or the rejects: of {len(table)} files, {count['shard'] + count['shard, salvaged']} are in the shards "
        f"({count['shard, salvaged']} of them salvaged from damaged files) and {count['reject'] + count['reject, transient']} "
        f"are rejected ({count['reject, transient']} transient). "
        "*salvaged*: decoded from a damaged file up to the damage (the reason column gives the clip's note). "
        "*frames*: the frames the decoder found; *(short)*: fewer than 16, so frames repeat. Folders: `shared/videos` "
        "is `../shared/videos` (see its README); other folders were given on the command line (fetched public test "
        "videos); `derived` files are damaged copies of shared files this script makes, in a temporary folder ($TMP).",
        markdown_table(["file", "size", "outcome", "decoder", "frames", "reason / note"], table),
    ])
    print(md)
    if not args.no_write:
        RELIABILITY_MD.write_text(md + "\n")
        print(f"wrote {RELIABILITY_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
