"""Reliability runs, written into ``docs/reliability.md`` (one section each; rerun to refresh it):

    python benchmarks/reliability.py [FOLDER ...] [--videos | --faults] [--no-write]

**videos**: every real and broken video file as the target domain of one preprocessing run.
Target rows: every file of ../shared/videos, every file of each FOLDER given (other public test videos you
have fetched; they are only read), and damaged copies this script makes from the shared files (a cut MP4
whose index comes first, as streaming MP4s have it; a cut AVI as UCF101 / HMDB51 ship; an MP4 with zeroed
bytes in the middle; random bytes and a text file under video names; an audio-only MP4; a 1x1 GIF; a real
clip under an HMDB51 name with ``& ( ) [ ] # + !``). Source rows: the tiny generated demo set (a labelled source
domain is required). One ``run_preprocess`` at paper geometry (16 x 224 x 224) on local Ray, with an untrained
tiny CLIP (offline; the labels do not matter here) and no limit on rejects. The run must finish and account
for every file exactly once, in the shards or in the rejects; the script checks that, then writes per file its
outcome, decoder, frames found and reason (a reject's, or the note of a clip salvaged from a damaged file).

**faults**: the tests that inflict a fault or a bad input (:data:`FAULT_TESTS`) run in one pytest session; each
row of the table is one test: the fault, what the product does and what is lost as that test asserts them, and
the test's outcome and duration in this run (a row whose test did not pass says so).
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

from lmft_core.benchmarking import machine_description, markdown_table, write_section
from lmft_core.demo_data import DemoDataConfig, generate_demo_data
from lmft_core.manifest import load_manifest, write_manifest
from lmft_core.preprocess.run import run_preprocess
from lmft_core.pseudo_labels import save_random_checkpoint
from lmft_core.run_config import load_profile
from lmft_core.video import is_transient_reason

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"
RELIABILITY_MD = REPO / "docs" / "reliability.md"
RELIABILITY_HEADER = ("# Reliability\n\nWritten by `python benchmarks/reliability.py` (`--videos`, `--faults`: one "
                      "section); rerun it to refresh a section.\n")

# (pytest node id, the fault or bad input, what the product does, what is lost): each claim is what the test asserts.
FAULT_TESTS = [
    ("tests/test_bad_input.py", "bad profile values, unknown keys and sections, malformed --set (9 cases)",
     "exit 2 at start with one line naming the file, section and key, or the --set override", "nothing (nothing written)"),
    ("tests/test_config.py::test_an_error_from_set_names_set_not_the_profile_file", "a bad value given with --set "
     "(train.lr=abc), two bad overrides, a bad value in the profile file", "the error names --set and the override "
     "(the file's own error names the file)", "nothing"),
    ("tests/test_predict.py::test_folder_video_ids_are_unique_by_construction", "a folder whose files share a stem "
     "(clip.avi and clip.mp4), a stem equal to another file's name; a folder without videos",
     "unique ids by construction (extensions kept where stems collide); the empty folder named in the error", "nothing"),
    ("tests/test_predict.py::test_every_video_of_a_folder_is_predicted_or_rejected", "predict --folder on a clip and "
     "its re-encode, generated clips, an empty file, a text file", "every video labelled or rejected with its reason, "
     "exit 0", "nothing: every video in predictions or rejects"),
    ("tests/test_train_run.py::test_stored_rows_disagreeing_with_the_metadata_fail_at_start", "metadata.json of other "
     "shards (frames 32 px, metadata 16 px), class list of other shards, a shard file cut in half",
     "fails in prepare, in seconds, naming the shard file and both shapes (before: 3 retries, 221 s)", "nothing"),
    ("tests/test_train_run.py::test_a_shard_damaged_after_the_checks_fails_with_an_honest_message", "every shard's "
     "frames page zeroed after the start checks (footers sound)", "fails after its retries saying the worker error, "
     "that it repeated on every attempt (no re-run will help), the damaged files, and that no checkpoint exists",
     "no checkpoint (none was due)"),
    ("tests/test_train_run.py::test_a_killed_worker_resumes_from_the_last_checkpoint", "a Ray Train worker SIGKILLed "
     "mid-training", "the worker group restarts from the last checkpoint; policy state restored exactly; one value "
     "per step in MLflow", "the steps after the last checkpoint, re-run"),
    ("tests/test_train_run.py::test_metrics_reach_mlflow_once_their_checkpoint_is_registered_so_a_resume_leaves_one_value_per_step",
     "the worker group lost before Ray registers a checkpoint; a metric send that fails", "the lost epoch's metrics "
     "are never sent, the resumed run sends its own; the failed send is kept and sent later: one value per step",
     "nothing"),
    ("tests/test_faults.py::test_driver_killed_then_interrupted_then_rerun_finishes_in_one_mlflow_run", "the driver "
     "SIGKILLed at epoch 2, then Ctrl-C (SIGINT to its process group) at epoch 4, the same command run again",
     "Ctrl-C: exit 130, one message, MLflow run KILLED; each re-run resumes from a checkpoint; one MLflow run, "
     "one value per step", "the steps after the last checkpoint, re-run"),
    ("tests/test_faults.py::test_tracking_server_down_mid_training_and_back", "the MLflow tracking server stopped "
     "after epoch 1, back 15 s later", "training carries on (sends wait in MLflow's client retries), no restart, "
     "run FINISHED", "nothing: every step's metrics"),
    ("tests/test_faults.py::test_disk_full_while_a_checkpoint_is_written", "the disk full while a checkpoint is "
     "written (the workers' RLIMIT_FSIZE cut to half a checkpoint: EFBIG, as ENOSPC)", "the worker group restarts "
     "from the last stored checkpoint and finishes; the error recorded; every stored checkpoint whole",
     "the steps after the last checkpoint, re-run"),
    ("tests/test_faults.py::test_a_write_that_runs_out_of_space_says_so_and_leaves_no_part_of_the_file", "a "
     "checkpoint or a shard written with 64 KiB of space (file-size limit)", "an error naming the file, the bytes "
     "written and the space left (torch alone says 'unexpected pos', Arrow 'Error writing bytes to file'); no part of "
     "the shard left", "the file being written (the last stored checkpoint stays)"),
    ("tests/test_faults.py::test_disk_full_while_shards_are_written", "the disk full while preprocessing writes its "
     "shards (a 192 KiB tmpfs in a namespace of the test's own: a real ENOSPC in Ray Data's write tasks)", "exit 2 "
     "with one line naming the shard, the bytes written and the space left; every file left whole; the re-run on a "
     "disk with space keeps the completed shards and accounts for every video", "nothing (the shard being written "
     "is redone)"),
    ("tests/test_faults.py::test_ctrl_c_in_each_workflow_stage_then_rerun_finishes", "Ctrl-C (SIGINT to the process "
     "group) in the workflow's preprocessing, evaluation (a baseline training), registration and prediction stages, "
     "the same command run again after each", "exit 130, one message, no traceback, the stage's and the workflow's "
     "MLflow runs KILLED, no staging folder left; each re-run continues (staged shards salvaged, finished trainings "
     "kept); one workflow run, one run per training, one model version", "the unfinished part of the stage, redone"),
    ("tests/test_ray_cluster.py::test_a_node_lost_mid_preprocessing_loses_no_video", "a node of a 3-node Ray cluster "
     "lost (SIGKILL to its raylet and workers) while it runs preprocessing tasks", "Ray Data runs the lost tasks "
     "again on the nodes left; the job finishes", "nothing: every video in the shards or the rejects"),
    ("tests/test_tracking_server.py::test_unreachable_server_fails_at_start", "tracking server unreachable at start",
     "exit 2 within the 30 s preflight, naming the URI", "nothing"),
    ("tests/test_tracking_server.py::test_refused_credentials_fail_at_start", "tracking server refuses the "
     "credentials", "exit 2 at once naming HTTP 401/403 and what to set", "nothing"),
    ("tests/test_video.py::test_a_crash_a_kill_or_a_hang_costs_one_video", "a decoder that crashes, is killed or "
     "hangs", "that video rejected (a kill or hang as transient, retried next run); the others decoded", "one video, "
     "in rejects with its reason"),
    ("tests/test_preprocess.py::test_rerun_skips_done_work_and_redoes_only_what_is_missing", "preprocessing "
     "interrupted (a complete shard left in staging, one missing)", "the re-run salvages the staged shard and "
     "redoes only the missing videos", "nothing"),
]


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


def video_run(folders: list[Path]) -> str | None:
    """The video files run (module docstring); its section as markdown, None when a file is unaccounted for."""
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        groups = {"shared/videos": sorted(f for f in SHARED_VIDEOS.iterdir() if f.is_file() and f.name != "README.md")}
        groups |= {folder.name: sorted(f for f in folder.iterdir() if f.is_file()) for folder in folders}
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
            return None
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
        "## Real and broken video files",
        "Written by `python benchmarks/reliability.py --videos " + " ".join(str(f) for f in folders) + "`. Machine: "
        f"{machine_description()}.",
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
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=Path, nargs="*", help="more folders of public test videos (their files are only read)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--videos", action="store_true", help="only the video files run")
    which.add_argument("--faults", action="store_true", help="only the faults and bad inputs run")
    p.add_argument("--no-write", action="store_true", help=f"print only, leave {RELIABILITY_MD.relative_to(REPO)} alone")
    args = p.parse_args(argv)
    sections = []
    if not args.faults:
        md = video_run(args.folders)
        if md is None:
            return 1
        sections.append(("videos", md))
    if not args.videos:
        sections.append(("faults", fault_run()))
    for name, md in sections:
        print(md)
        if not args.no_write:
            write_section(name, md, RELIABILITY_MD, RELIABILITY_HEADER)
            print(f"wrote section {name} of {RELIABILITY_MD}")
    return 0


def fault_run() -> str:
    """Run :data:`FAULT_TESTS` in one pytest session; their table as markdown."""
    import os
    import subprocess
    import time
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                              *[node for node, *_ in FAULT_TESTS]], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)})
        if run.returncode not in (0, 1):  # 0 all passed, 1 some failed (the table says which); else no run at all
            raise SystemExit(f"pytest could not run the fault tests (exit code {run.returncode}): see its output above")
        total_s = time.perf_counter() - t0
        cases = [(c.get("classname", "").replace(".", "/") + ".py", c.get("name", ""), float(c.get("time", 0)),
                  next((child.tag for child in c if child.tag in ("failure", "error", "skipped")), "passed"))
                 for c in ET.parse(report).getroot().iter("testcase")]
    rows = []
    for node, fault, behaviour, lost in FAULT_TESTS:
        file, _, name = node.partition("::")
        mine = [c for c in cases if c[0] == file and (not name or c[1].split("[")[0] == name)]
        outcome = ("not run" if not mine else "passed" if all(c[3] == "passed" for c in mine)
                   else ", ".join(sorted({c[3] for c in mine if c[3] != "passed"})))
        if len(mine) > 1:
            outcome = f"{sum(c[3] == 'passed' for c in mine)} of {len(mine)} passed"
        rows.append([fault, behaviour, lost, f"`{node.removeprefix('tests/')}`", outcome, f"{sum(c[2] for c in mine):.0f}"])
    return "\n\n".join([
        "## Faults and bad inputs",
        f"Written by `python benchmarks/reliability.py --faults`: each row is one test run in a single pytest session "
        f"({total_s:.0f} s in all) on {machine_description()} (durations are wall-clock, with whatever else ran on the "
        "machine, setup of shared fixtures included in the first test that needs them). *what the product does* and "
        "*what is lost* are what the test asserts; *result* is that test's outcome in this run.",
        markdown_table(["fault or bad input", "what the product does", "what is lost", "test", "result", "s"], rows),
        "Not tried yet: Ctrl-C in the pretraining stage (it fits through the same interruptible Ray Train fit as "
        "training, which the training rows try); a node lost mid-training or mid-prediction.",
    ])


if __name__ == "__main__":
    sys.exit(main())
