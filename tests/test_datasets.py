"""Benchmark adapters (lmft_core.datasets): fake trees in each benchmark's published layout, tiny real
videos, split files in the published line formats; manifests checked row by row against hand-written
expectations, and every bad-input case."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from lmft_core.datasets import BENCHMARKS, DatasetConfig, DatasetError, build_manifest, skipped_path
from lmft_core.datasets.__main__ import main
from lmft_core.datasets.actorshift import parse_actorshift_line
from lmft_core.datasets.daily_da import parse_daily_da_line
from lmft_core.datasets.ucf_hmdb import parse_ta3n_line, ta3n_name
from lmft_core.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
TA3N_PREFIX = "/home/mchen2/dataset"  # the absolute prefix TA3N's published lists carry


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> dict[str, Path]:
    """One 4-frame 32x32 video per container, written once with PyAV and copied into the trees."""
    out = tmp_path_factory.mktemp("tiny_videos")
    videos = {}
    for suffix in (".mp4", ".avi"):
        path = out / f"tiny{suffix}"
        with av.open(str(path), "w") as container:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for i in range(4):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        videos[suffix] = path
    with av.open(str(videos[".mp4"])) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4
    return videos


def place(videos: dict[str, Path], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(videos[path.suffix], path)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def read_rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- UCF-HMDB_full (TA3N layout)

# (original class folder, video file name on disk, the name TA3N's list writes, TA3N class index, expected class).
# Real UCF101 / HMDB51 names; HMDB51 names from the 1,200 UCF-HMDB_full videos, with the characters real names
# carry: TA3N's lists drop &, ( and ) and keep [HD], #, + and !.
UCF = {
    "train": [("Archery", "v_Archery_g08_c01", "v_Archery_g08_c01", 10, "shoot_bow"),
              ("RockClimbingIndoor", "v_RockClimbingIndoor_g09_c02", "v_RockClimbingIndoor_g09_c02", 0, "climb"),
              ("RopeClimbing", "v_RopeClimbing_g10_c01", "v_RopeClimbing_g10_c01", 0, "climb"),
              ("BoxingSpeedBag", "v_BoxingSpeedBag_g11_c03", "v_BoxingSpeedBag_g11_c03", 5, "punch"),
              ("WalkingWithDog", "v_WalkingWithDog_g12_c01", "v_WalkingWithDog_g12_c01", 11, "walk"),
              ("SoccerPenalty", "v_SoccerPenalty_g13_c02", "v_SoccerPenalty_g13_c02", 3, "kick_ball"),
              ("Fencing", "v_Fencing_g14_c01", "v_Fencing_g14_c01", 1, "fencing"),
              ("GolfSwing", "v_GolfSwing_g15_c03", "v_GolfSwing_g15_c03", 2, "golf"),
              ("PushUps", "v_PushUps_g16_c02", "v_PushUps_g16_c02", 6, "pushup"),
              ("PullUps", "v_PullUps_g17_c01", "v_PullUps_g17_c01", 4, "pullup")],
    "test": [("WalkingWithDog", "v_WalkingWithDog_g01_c01", "v_WalkingWithDog_g01_c01", 11, "walk"),
             ("SoccerPenalty", "v_SoccerPenalty_g02_c04", "v_SoccerPenalty_g02_c04", 3, "kick_ball")],
}
HMDB = {
    "train": [("climb", "(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_3",
               "HQ_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_3", 0, "climb"),
              ("shoot_bow", "Updatedvideoofmeshootingteamusaarchery_shoot_bow_u_nm_np1_ba_med_7",
               "Updatedvideoofmeshootingteamusaarchery_shoot_bow_u_nm_np1_ba_med_7", 10, "shoot_bow"),
              ("punch", "Two_Towers_6_punch_u_cm_np1_fr_bad_5", "Two_Towers_6_punch_u_cm_np1_fr_bad_5", 5, "punch"),
              ("walk", "TheLastManOnearth_walk_f_nm_np1_fr_med_21", "TheLastManOnearth_walk_f_nm_np1_fr_med_21", 11, "walk"),
              ("kick_ball", "Goal_1_&_2_kick_ball_f_cm_np1_fr_goo_2", "Goal_1__2_kick_ball_f_cm_np1_fr_goo_2", 3, "kick_ball"),
              ("fencing", "Die_Another_Day_-_Fencing_Scene_Part_1_[HD]_fencing_f_cm_np2_le_goo_0",
               "Die_Another_Day_-_Fencing_Scene_Part_1_[HD]_fencing_f_cm_np2_le_goo_0", 1, "fencing"),
              ("golf", "Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0",
               "Golf_Tips_-_Hit_The_Driver_300+_Yards!!!_golf_f_nm_np1_fr_med_0", 2, "golf"),
              ("pushup", "Pushups___The_Hardway!!!_Shaolin_Style_pushup_f_cm_np1_le_med_2",
               "Pushups___The_Hardway!!!_Shaolin_Style_pushup_f_cm_np1_le_med_2", 6, "pushup")],
    "test": [("climb", "Kletter-WM_2005-_Bouldern_Finale_Damen__Vera_Kotasova_(CZE)_climb_f_cm_np1_ba_med_0",
              "Kletter-WM_2005-_Bouldern_Finale_Damen__Vera_Kotasova_CZE_climb_f_cm_np1_ba_med_0", 0, "climb"),
             ("walk", "AmericanGangster_walk_f_cm_np1_le_bad_8", "AmericanGangster_walk_f_cm_np1_le_bad_8", 11, "walk"),
             ("kick_ball", "Amazing_Soccer_#2_kick_ball_f_cm_np1_fr_bad_1", "Amazing_Soccer_#2_kick_ball_f_cm_np1_fr_bad_1", 3, "kick_ball"),
             ("pullup", "20_Pull_ups_at_160_15_1_2_inch_biceps_(_wide_grip_)_pullup_u_cm_np1_ba_med_0",
              "20_Pull_ups_at_160_15_1_2_inch_biceps__wide_grip__pullup_u_cm_np1_ba_med_0", 4, "pullup")],
}
TA3N_DATASETS = {"ucf101": UCF, "hmdb51": HMDB}


def ta3n_list(root: Path, dataset: str, role: str) -> Path:
    return root / dataset / f"list_{dataset}_{ {'train': 'train', 'test': 'val'}[role]}_hmdb_ucf-feature.txt"


def ta3n_lines(dataset: str, videos, spelling: int = 2) -> list[str]:
    """TA3N list lines of ``videos``; ``spelling`` 2 writes TA3N's names, 1 the names on disk."""
    return [f"{TA3N_PREFIX}/{dataset}/RGB-feature/{v[spelling]} {37 + i} {v[3]}" for i, v in enumerate(videos)]


@pytest.fixture
def ucf_hmdb_root(tmp_path, tiny_videos) -> Path:
    root = tmp_path / "ucf_hmdb"
    for dataset, splits in TA3N_DATASETS.items():
        for role, videos in splits.items():
            for folder, name, *_ in videos:
                place(tiny_videos, root / dataset / "RGB" / folder / f"{name}.avi")
            write_lines(ta3n_list(root, dataset, role), ta3n_lines(dataset, videos))
    return root


def ucf_hmdb_cfg(root: Path, out: Path, source="ucf101", target="hmdb51", **kw) -> DatasetConfig:
    return DatasetConfig("ucf_hmdb", root, source, target, out / "manifest.csv", **kw)


def expected_ta3n_rows(root: Path, source: str, target: str) -> list[dict[str, str]]:
    """Videos outside the manifest's folder are written with absolute paths."""
    rows = []
    for side, dataset in (("source", source), ("target", target)):
        for role in ("train", "test"):
            for folder, name, _, _, label in TA3N_DATASETS[dataset][role]:
                rows.append({"path": str((root / dataset / "RGB" / folder / f"{name}.avi").resolve()), "label": label, "domain": side,
                             "split": role, "video_id": f"{dataset}/{folder}/{name}"})
    return rows


@pytest.mark.parametrize("source,target", [("ucf101", "hmdb51"), ("hmdb51", "ucf101")])
def test_ucf_hmdb_both_directions_row_by_row(ucf_hmdb_root, tmp_path, source, target):
    result = build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out", source, target))
    assert read_rows(result.manifest) == expected_ta3n_rows(ucf_hmdb_root, source, target)
    manifest = load_manifest(result.manifest)  # files exist, ids unique, target labels are source classes
    assert all(Path(r.path).is_file() for r in manifest.rows)
    assert result.skipped is None and result.num_skipped == 0
    assert result.counts == {("source", "train"): len(TA3N_DATASETS[source]["train"]), ("source", "test"): len(TA3N_DATASETS[source]["test"]),
                             ("target", "train"): len(TA3N_DATASETS[target]["train"]), ("target", "test"): len(TA3N_DATASETS[target]["test"])}


def test_ucf_hmdb_cli_writes_same_manifest_and_can_leave_source_test_out(ucf_hmdb_root, tmp_path, capsys):
    out = tmp_path / "out" / "m.csv"
    assert main(["ucf_hmdb", "--root", str(ucf_hmdb_root), "--source", "ucf101", "--target", "hmdb51", "--output", str(out),
                 "--source-test", "none"]) == 0
    rows = read_rows(out)
    expected = [r for r in expected_ta3n_rows(ucf_hmdb_root, "ucf101", "hmdb51") if (r["domain"], r["split"]) != ("source", "test")]
    assert rows == expected
    assert "source train" in capsys.readouterr().out


def test_ucf_hmdb_overrides_for_split_files_and_video_folder(ucf_hmdb_root, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.move(str(ucf_hmdb_root / "hmdb51" / "RGB"), str(moved / "videos"))
    shutil.move(str(ta3n_list(ucf_hmdb_root, "hmdb51", "test")), str(moved / "hmdb_test.txt"))
    cfg = ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out", split_files={"target_test": moved / "hmdb_test.txt"},
                       video_dirs={"target": moved / "videos"})
    rows = read_rows(build_manifest(cfg).manifest)
    target = [r for r in rows if r["domain"] == "target"]
    assert [r["path"] for r in target] == [str((moved / "videos" / f / f"{n}.avi").resolve())
                                           for role in ("train", "test") for f, n, *_ in HMDB[role]]
    assert [r["video_id"] for r in target] == [f"hmdb51/{f}/{n}" for role in ("train", "test") for f, n, *_ in HMDB[role]]


# ---------------------------------------------------------------- bad input (UCF-HMDB_full)

def problems(excinfo) -> dict[str, list[str]]:
    return excinfo.value.report.by_kind


def test_missing_root_is_reported_and_nothing_written(tmp_path):
    cfg = ucf_hmdb_cfg(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DatasetError) as e:
        build_manifest(cfg)
    assert list(problems(e)) == ["missing root"] and str(tmp_path / "nowhere") in problems(e)["missing root"][0]
    assert not cfg.output.exists()


def test_missing_split_files_and_video_folder_all_listed_at_once(ucf_hmdb_root, tmp_path):
    ta3n_list(ucf_hmdb_root, "hmdb51", "test").unlink()
    ta3n_list(ucf_hmdb_root, "ucf101", "train").unlink()
    shutil.rmtree(ucf_hmdb_root / "hmdb51" / "RGB")
    cfg = ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out")
    with pytest.raises(DatasetError) as e:
        build_manifest(cfg)
    p = problems(e)
    assert len(p["missing split file"]) == 2
    assert any("target_test" in m and "list_hmdb51_val_hmdb_ucf-feature.txt" in m for m in p["missing split file"])
    assert any("source_train" in m and "list_ucf101_train_hmdb_ucf-feature.txt" in m for m in p["missing split file"])
    assert len(p["missing video folder"]) == 1 and "hmdb51/RGB" in p["missing video folder"][0]
    assert not cfg.output.exists()


def test_absent_videos_fail_then_skip_missing_writes_side_file(ucf_hmdb_root, tmp_path):
    gone = [UCF["train"][1], HMDB["test"][0]]
    (ucf_hmdb_root / "ucf101" / "RGB" / gone[0][0] / f"{gone[0][1]}.avi").unlink()
    (ucf_hmdb_root / "hmdb51" / "RGB" / gone[1][0] / f"{gone[1][1]}.avi").unlink()
    cfg = ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out")
    with pytest.raises(DatasetError) as e:
        build_manifest(cfg)
    assert list(problems(e)) == ["video listed but absent"] and len(problems(e)["video listed but absent"]) == 2
    assert "list_ucf101_train_hmdb_ucf-feature.txt:2" in str(e.value)
    assert not cfg.output.exists()

    out = tmp_path / "out2" / "manifest.csv"
    code = main(["ucf_hmdb", "--root", str(ucf_hmdb_root), "--source", "ucf101", "--target", "hmdb51", "--output", str(out), "--skip-missing"])
    assert code == 0
    rows = read_rows(out)
    assert [r["video_id"] for r in rows] == [r["video_id"] for r in expected_ta3n_rows(ucf_hmdb_root, "ucf101", "hmdb51")
                                             if r["video_id"] not in {f"ucf101/{gone[0][0]}/{gone[0][1]}", f"hmdb51/{gone[1][0]}/{gone[1][1]}"}]
    skipped = read_rows(skipped_path(out))
    assert [(Path(s["split_file"]).name, s["line"], s["domain"], s["split"], s["label"]) for s in skipped] == [
        ("list_ucf101_train_hmdb_ucf-feature.txt", "2", "source", "train", "climb"),
        ("list_hmdb51_val_hmdb_ucf-feature.txt", "1", "target", "test", "climb")]
    assert all(s["listed_path"].endswith(listed) and "no video named" in s["reason"] for s, (_, _, listed, _, _) in zip(skipped, gone))
    # nothing lost: every listed line is in the manifest or in the side file
    listed = sum(len(TA3N_DATASETS[d][r]) for d in TA3N_DATASETS for r in ("train", "test"))
    assert len(rows) + len(skipped) == listed
    load_manifest(out)


def test_skip_missing_with_nothing_missing_writes_empty_side_file(ucf_hmdb_root, tmp_path):
    result = build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out", skip_missing=True))
    assert result.num_skipped == 0 and read_rows(result.skipped) == []
    assert result.skipped.read_text().startswith("split_file,line,listed_path,domain,split,label,reason")
    build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out"))  # a run without --skip-missing drops the stale side file
    assert not result.skipped.exists()


def test_classes_that_do_not_map_and_contradicting_folders(ucf_hmdb_root, tiny_videos, tmp_path):
    train = ta3n_list(ucf_hmdb_root, "ucf101", "train")
    place(tiny_videos, ucf_hmdb_root / "ucf101" / "RGB" / "Diving" / "v_Diving_g01_c01.avi")  # UCF101 class outside the 12
    with train.open("a") as f:
        f.write(f"{TA3N_PREFIX}/ucf101/RGB-feature/v_Archery_g08_c02 40 12\n")  # index 12: no such class
        f.write(f"{TA3N_PREFIX}/ucf101/RGB-feature/v_Diving_g01_c01 40 0\n")
    place(tiny_videos, ucf_hmdb_root / "ucf101" / "RGB" / "Archery" / "v_Archery_g08_c02.avi")
    place(tiny_videos, ucf_hmdb_root / "ucf101" / "RGB" / "Archery" / "v_Archery_g08_c03.avi")
    with ta3n_list(ucf_hmdb_root, "ucf101", "test").open("a") as f:
        f.write(f"{TA3N_PREFIX}/ucf101/RGB-feature/v_Archery_g08_c03 40 0\n")  # an Archery video labelled climb
    with pytest.raises(DatasetError) as e:
        build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out", skip_missing=True))  # skipping does not hide these
    p = problems(e)
    assert len(p["class that does not map"]) == 2
    n = len(UCF["train"])
    assert any("class '12'" in m and f"train_hmdb_ucf-feature.txt:{n + 1}: " in m for m in p["class that does not map"])
    assert any("'Diving'" in m and f"train_hmdb_ucf-feature.txt:{n + 2}: " in m for m in p["class that does not map"])
    assert len(p["label contradicts class folder"]) == 1 and "'climb'" in p["label contradicts class folder"][0]
    assert "'Archery'" in p["label contradicts class folder"][0] and "'shoot_bow'" in p["label contradicts class folder"][0]


def test_malformed_lines_duplicates_and_ambiguous_names(ucf_hmdb_root, tiny_videos, tmp_path):
    train = ta3n_list(ucf_hmdb_root, "hmdb51", "train")
    first = train.read_text().splitlines()[0]
    with train.open("a") as f:
        f.write(f"{TA3N_PREFIX}/hmdb51/RGB-feature/x 40\n")  # two fields
        f.write(f"{TA3N_PREFIX}/hmdb51/RGB-feature/x forty 3\n")  # frame count not an integer
        f.write("\n")  # blank lines are allowed
        f.write(first + "\n")  # listed twice
        f.write(f"{TA3N_PREFIX}/hmdb51/RGB-feature/same_name_walk_f 40 11\n")
    place(tiny_videos, ucf_hmdb_root / "hmdb51" / "RGB" / "walk" / "same_name_walk_f.avi")
    place(tiny_videos, ucf_hmdb_root / "hmdb51" / "RGB" / "climb" / "same_name_walk_f.avi")
    with pytest.raises(DatasetError) as e:
        build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out"))
    p = problems(e)
    n = len(HMDB["train"])
    assert [m.split(": ")[0].rsplit(":", 1)[1] for m in p["malformed line"]] == [str(n + 1), str(n + 2)]
    assert "expected 3 fields" in p["malformed line"][0] and "frame count 'forty'" in p["malformed line"][1]
    assert len(p["video listed twice"]) == 1 and f"train_hmdb_ucf-feature.txt:{n + 4}: " in p["video listed twice"][0]
    assert p["video listed twice"][0].endswith("train_hmdb_ucf-feature.txt:1")
    (ambiguous,) = p["ambiguous video name"]
    assert "2 videos below" in ambiguous and "match same_name_walk_f" in ambiguous  # naming both files
    assert all(str(ucf_hmdb_root / "hmdb51" / "RGB" / f / "same_name_walk_f.avi") in ambiguous for f in ("walk", "climb"))


def test_ta3n_name_rule_by_hand():
    """TA3N's lists drop &, ( and ) from HMDB51 names and keep every other character."""
    assert ta3n_name("Goal_1_&_2_kick_ball_f_cm_np1_fr_goo_2") == "Goal_1__2_kick_ball_f_cm_np1_fr_goo_2"
    assert ta3n_name("(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_3") == \
        "HQ_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_3"
    assert ta3n_name("Vera_Kotasova_(CZE)_climb") == "Vera_Kotasova_CZE_climb"
    for kept in ("Die_Another_Day_-_Fencing_Scene_Part_1_[HD]_fencing", "Amazing_Soccer_#2_kick_ball", "Hit_The_Driver_300+_Yards!!!_golf",
                 "v_Archery_g08_c01"):
        assert ta3n_name(kept) == kept


@pytest.mark.parametrize("listed,on_disk", [(1, 1), (1, 2), (2, 2)])
def test_names_found_whichever_spelling_the_list_and_the_disk_use(tmp_path, tiny_videos, listed, on_disk):
    """Lists in TA3N's spelling (2) or with the real names (1), videos on disk under the real names or renamed the
    TA3N way: every listed video is found, in both adaptation directions."""
    root = tmp_path / "ucf_hmdb"
    for dataset, splits in TA3N_DATASETS.items():
        for role, videos in splits.items():
            for v in videos:
                place(tiny_videos, root / dataset / "RGB" / v[0] / f"{v[on_disk]}.avi")
            write_lines(ta3n_list(root, dataset, role), ta3n_lines(dataset, videos, spelling=listed))
    for source, target in (("ucf101", "hmdb51"), ("hmdb51", "ucf101")):
        rows = read_rows(build_manifest(ucf_hmdb_cfg(root, tmp_path / f"out_{source}", source, target)).manifest)
        expected = [str((root / d / "RGB" / v[0] / f"{v[on_disk]}.avi").resolve()) for d in (source, target)
                    for role in ("train", "test") for v in TA3N_DATASETS[d][role]]
        assert [r["path"] for r in rows] == expected


def test_a_list_name_matching_two_files_under_the_rule_names_both(ucf_hmdb_root, tiny_videos, tmp_path):
    folder = ucf_hmdb_root / "hmdb51" / "RGB" / "kick_ball"
    place(tiny_videos, folder / "Goal_(1)_kick_ball_f_cm_np1_ba_med_3.avi")
    place(tiny_videos, folder / "Goal_1_kick_ball_f_cm_np1_ba_med_3.avi")
    with ta3n_list(ucf_hmdb_root, "hmdb51", "train").open("a") as f:
        f.write(f"{TA3N_PREFIX}/hmdb51/RGB-feature/Goal_1_kick_ball_f_cm_np1_ba_med_3 40 3\n")
    with pytest.raises(DatasetError) as e:
        build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out"))
    (ambiguous,) = problems(e)["ambiguous video name"]
    assert list(problems(e)) == ["ambiguous video name"] and "&, ( and ) removed" in ambiguous
    assert str(folder / "Goal_(1)_kick_ball_f_cm_np1_ba_med_3.avi") in ambiguous
    assert str(folder / "Goal_1_kick_ball_f_cm_np1_ba_med_3.avi") in ambiguous


def test_target_class_without_source_videos_and_empty_domain(ucf_hmdb_root, tmp_path):
    only_archery = write_lines(tmp_path / "ucf_train_archery.txt", [f"{TA3N_PREFIX}/ucf101/RGB-feature/v_Archery_g08_c01 40 10"])
    cfg = ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out", split_files={"source_train": only_archery, "source_test": None})
    with pytest.raises(DatasetError) as e:
        build_manifest(cfg)
    orphans = problems(e)["target class without source videos"]
    assert sorted(m.split("'")[1] for m in orphans) == ["climb", "fencing", "golf", "kick_ball", "pullup", "punch", "pushup", "walk"]
    assert "2 target video(s) of class 'walk'" in " ".join(orphans)  # one train, one test
    assert not cfg.output.exists()

    for folder, name, *_ in HMDB["train"] + HMDB["test"]:
        (ucf_hmdb_root / "hmdb51" / "RGB" / folder / f"{name}.avi").unlink()
    with pytest.raises(DatasetError) as e:
        build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out", skip_missing=True))
    assert list(problems(e)) == ["empty domain"] and "target" in problems(e)["empty domain"][0]


def test_report_gives_counts_and_first_examples(ucf_hmdb_root, tmp_path):
    with ta3n_list(ucf_hmdb_root, "ucf101", "train").open("a") as f:
        for i in range(8):
            f.write(f"{TA3N_PREFIX}/ucf101/RGB-feature/v_Archery_g20_c0{i} 40 10\n")
    with pytest.raises(DatasetError) as e:
        build_manifest(ucf_hmdb_cfg(ucf_hmdb_root, tmp_path / "out"))
    text = str(e.value)
    assert text.startswith("8 problem(s):") and "video listed but absent: 8" in text
    assert text.count("    - ") == 5 and "... and 3 more" in text
    assert "v_Archery_g20_c00" in text and "v_Archery_g20_c07" not in text


def test_cli_exit_code_and_report_on_stderr(tmp_path, capsys):
    code = main(["ucf_hmdb", "--root", str(tmp_path / "missing"), "--source", "ucf101", "--target", "hmdb51", "--output", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err
    assert code == 1 and "missing root: 1" in err and str(tmp_path / "missing") in err
    with pytest.raises(SystemExit) as e:
        main(["ucf_hmdb", "--root", str(tmp_path), "--source", "kinetics", "--target", "hmdb51", "--output", str(tmp_path / "m.csv")])
    assert e.value.code == 2


def test_module_entry_point_help_lists_domains():
    out = subprocess.run([sys.executable, "-m", "lmft_core.datasets", "daily_da", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for domain, default in (("arid", "ARID/raw/list_cvt/arid_msda_train.txt"), ("hmdb51", "HMDB51/raw/data"),
                            ("mit", "MIT/raw/list_cvt/mit_msda_test.txt"),
                            ("kinetics", "Kinetics/raw/list_cvt/kinetics_daily_msda_train.txt")):
        assert domain in out and default in out
    for flag in ("--source-train", "--source-test", "--target-train", "--target-test", "--skip-missing"):
        assert flag in out


# ---------------------------------------------------------------- Daily-DA (ATCoN layout)

# domain -> role -> [(path below raw/data, label index, class)]; paths in each domain's published style
DAILY = {
    "arid": {"train": [("Drink/Drink_10_1.mp4", 0, "drink"), ("Jump/Jump_10_1.mp4", 1, "jump"), ("Pour/Pour_4_1.mp4", 3, "pour"),
                       ("Walk/Walk_3_2.mp4", 6, "walk")],
             "test": [("Drink/Drink_11_1.mp4", 0, "drink"), ("Pour/Pour_11_1.mp4", 3, "pour")]},
    "hmdb51": {"train": [("drink/AMADEUS_drink_u_nm_np1_fr_goo_11.avi", 0, "drink"), ("jump/OldSchool_jump_f_nm_np1_fr_bad_26.avi", 1, "jump"),
                         ("pour/Tea_in_Wudang_pour_u_nm_np1_fr_med_0.avi", 3, "pour"), ("walk/Eurotrip_walk_f_nm_np1_fr_med_8.avi", 6, "walk")],
               "test": [("drink/Gattaca_drink_h_cm_np1_fr_goo_4.avi", 0, "drink"), ("walk/IamLegend_walk_f_nm_np1_fr_med_17.avi", 6, "walk")]},
    "mit": {"train": [("training/drinking/yt-5gXqg_L7-q0_14.mp4", 0, "drink"), ("training/jumping/yt-m-8wZcCMkLA_37.mp4", 1, "jump"),
                      ("training/pouring/yt-QqHA_DkkTt8_62.mp4", 3, "pour"), ("training/walking/2jIdZFtblP4_94.mp4", 6, "walk")],
            "test": [("validation/jumping/vine-hB1rPJvbtrh_2.mp4", 1, "jump"), ("validation/pouring/yt-fYuNAdlpmb0_169.mp4", 3, "pour")]},
    "kinetics": {"train": [("train/drinking_shots/-QuSYXee6Pc_000121_000131.mp4", 0, "drink"),
                           ("train/jumping_jacks/-3sN2uy_xI8_000000_000010.mp4", 1, "jump"),
                           ("train/pouring_beer/--O2qCO6zBI_000025_000035.mp4", 3, "pour"),
                           ("train/walking_the_dog/-5kButbj9OE_000036_000046.mp4", 6, "walk")],
                 "test": [("test/-18N3scYPX8_000034_000044.mp4", 0, "drink"), ("test/-4NGhihabQk_000034_000044.mp4", 1, "jump")]},
}
DAILY_FOLDERS = {"arid": ("ARID", "arid"), "hmdb51": ("HMDB51", "hmdb51"), "mit": ("MIT", "mit"), "kinetics": ("Kinetics", "kinetics_daily")}


def daily_list(root: Path, domain: str, role: str) -> Path:
    folder, prefix = DAILY_FOLDERS[domain]
    return root / folder / "raw" / "list_cvt" / f"{prefix}_msda_{role}.txt"


@pytest.fixture(scope="module")
def daily_root(tmp_path_factory, tiny_videos) -> Path:
    root = tmp_path_factory.mktemp("daily_da")
    for domain, splits in DAILY.items():
        for role, videos in splits.items():
            for rel, _, _ in videos:
                place(tiny_videos, root / DAILY_FOLDERS[domain][0] / "raw" / "data" / rel)
            write_lines(daily_list(root, domain, role), [f"{i}\t{label}\t{rel}" for i, (rel, label, _) in enumerate(videos)])
    return root


PAIRS = [(s, t) for s in DAILY for t in DAILY if s != t]


@pytest.mark.parametrize("source,target", PAIRS)
def test_daily_da_every_pair_row_by_row(daily_root, tmp_path, source, target):
    out = tmp_path / "m.csv"
    build_manifest(DatasetConfig("daily_da", daily_root, source, target, out))
    expected = []
    for side, domain in (("source", source), ("target", target)):
        data = daily_root / DAILY_FOLDERS[domain][0] / "raw" / "data"
        for role in ("train", "test"):
            for rel, _, label in DAILY[domain][role]:
                expected.append({"path": str((data / rel).resolve()), "label": label, "domain": side, "split": role,
                                 "video_id": f"{domain}/{rel.rsplit('.', 1)[0]}"})
    assert read_rows(out) == expected  # outside the manifest folder: absolute paths
    m = load_manifest(out)
    assert m.classes == ("drink", "jump", "pour", "walk")


def test_daily_da_label_contradicting_folder_and_unknown_folder(daily_root, tiny_videos, tmp_path):
    root = tmp_path / "daily"
    shutil.copytree(daily_root, root)
    place(tiny_videos, root / "MIT" / "raw" / "data" / "validation" / "sitting" / "x_1.mp4")
    with daily_list(root, "mit", "test").open("a") as f:
        f.write("2\t6\tvalidation/pouring/yt-fYuNAdlpmb0_169.mp4\n")  # listed twice (and as walk)
        f.write("3\t4\tvalidation/sitting/x_1.mp4\n")  # 'sitting' is not a Daily-DA folder
        f.write("4\t8\tvalidation/jumping/vine-hB1rPJvbtrh_2.mp4\n")  # label 8: no such class
        f.write("five\t1\tvalidation/jumping/vine-hB1rPJvbtrh_2.mp4\n")
    with pytest.raises(DatasetError) as e:
        build_manifest(DatasetConfig("daily_da", root, "arid", "mit", tmp_path / "m.csv"))
    p = problems(e)
    assert len(p["class that does not map"]) == 2 and any("'sitting'" in m for m in p["class that does not map"])
    assert any("class '8'" in m for m in p["class that does not map"])
    assert len(p["malformed line"]) == 1 and "video index 'five'" in p["malformed line"][0]
    assert len(p["video listed twice"]) == 2  # the pouring video and the jumping one (line 5, label 8)


def test_daily_da_relative_paths_only_no_name_lookup(daily_root, tiny_videos, tmp_path):
    root = tmp_path / "daily"
    shutil.copytree(daily_root, root)
    moved = root / "HMDB51" / "raw" / "data" / "jump" / "OldSchool_jump_f_nm_np1_fr_bad_26.avi"
    shutil.move(str(moved), str(moved.parent.parent / moved.name))  # same name, other folder
    with pytest.raises(DatasetError) as e:
        build_manifest(DatasetConfig("daily_da", root, "hmdb51", "arid", tmp_path / "m.csv"))
    assert list(problems(e)) == ["video listed but absent"]
    assert "jump/OldSchool_jump_f_nm_np1_fr_bad_26.avi" in problems(e)["video listed but absent"][0]


def test_two_videos_with_one_video_id_are_reported_before_writing(daily_root, tiny_videos, tmp_path):
    root = tmp_path / "daily"
    shutil.copytree(daily_root, root)
    place(tiny_videos, root / "ARID" / "raw" / "data" / "Drink" / "Drink_10_1.avi")  # beside Drink_10_1.mp4
    with daily_list(root, "arid", "test").open("a") as f:
        f.write("9\t0\tDrink/Drink_10_1.avi\n")
    out = tmp_path / "m.csv"
    with pytest.raises(DatasetError) as e:
        build_manifest(DatasetConfig("daily_da", root, "arid", "mit", out))
    assert list(problems(e)) == ["duplicate video id"]
    assert "'arid/Drink/Drink_10_1'" in problems(e)["duplicate video id"][0]
    assert not out.exists()


# ---------------------------------------------------------------- ActorShift

ACTOR = {
    ("human", "train"): [("kinetics/abc123_000010_000020.mp4", "drinking"), ("kinetics/def456_000000_000010.mp4", "watching tv"),
                         ("kinetics/ghi789_000001_000011.mp4", "opening door")],
    ("animal", "train"): [("animal/dog_drinks_01.mp4", "drinking"), ("animal/cat_tv_02.mp4", "watching tv")],
    ("animal", "test"): [("animal/bear_door_03.mp4", "opening door"), ("animal/horse_drinks_04.mp4", "drinking")],
}


@pytest.fixture
def actor_root(tmp_path, tiny_videos) -> Path:
    root = tmp_path / "actorshift"
    for (domain, role), videos in ACTOR.items():
        for rel, _ in videos:
            place(tiny_videos, root / "videos_processed" / f"{Path(rel).stem}.avi")  # the loader's .mp4 -> .avi
        write_lines(root / "annotations" / f"{domain}_{role}.csv", [f"{rel},{cls}" for rel, cls in videos])
    return root


def actor_lists(root: Path) -> dict[str, Path]:
    return {"source_train": root / "annotations" / "human_train.csv", "target_train": root / "annotations" / "animal_train.csv",
            "target_test": root / "annotations" / "animal_test.csv"}


def test_actorshift_row_by_row(actor_root):
    out = actor_root / "manifest.csv"
    result = build_manifest(DatasetConfig("actorshift", actor_root, "human", "animal", out, actor_lists(actor_root)))
    expected = [{"path": f"videos_processed/{Path(rel).stem}.avi", "label": cls.replace(" ", "_"), "domain": side, "split": role,
                 "video_id": f"{domain}/{Path(rel).stem}"}
                for side, (domain, role) in (("source", ("human", "train")), ("target", ("animal", "train")), ("target", ("animal", "test")))
                for rel, cls in ACTOR[(domain, role)]]
    assert read_rows(out) == expected  # inside the manifest folder: relative paths
    assert load_manifest(out).classes == ("drinking", "opening_door", "watching_tv")
    assert result.counts == {("source", "train"): 3, ("target", "train"): 2, ("target", "test"): 2}


def test_actorshift_needs_its_split_files_and_direction(actor_root, tmp_path):
    with pytest.raises(DatasetError) as e:
        build_manifest(DatasetConfig("actorshift", actor_root, "human", "animal", tmp_path / "m.csv"))
    assert len(problems(e)["missing split file"]) == 3 and "--source-train" in problems(e)["missing split file"][0]
    for source, target in (("animal", "human"), ("human", "human")):
        with pytest.raises(DatasetError) as e:
            build_manifest(DatasetConfig("actorshift", actor_root, source, target, tmp_path / "m.csv", actor_lists(actor_root)))
        assert list(problems(e)) == ["bad direction"]


def test_actorshift_unknown_class_and_bad_csv_line(actor_root, tmp_path):
    lists = actor_lists(actor_root)
    with lists["target_test"].open("a") as f:
        f.write("animal/bear_door_03.mp4,dancing\n")
        f.write("animal/only_a_path.mp4\n")
    with pytest.raises(DatasetError) as e:
        build_manifest(DatasetConfig("actorshift", actor_root, "human", "animal", tmp_path / "m.csv", lists))
    p = problems(e)
    assert "class 'dancing'" in p["class that does not map"][0] and "animal_test.csv:3" in p["class that does not map"][0]
    assert "expected 2 fields" in p["malformed line"][0] and "animal_test.csv:4" in p["malformed line"][0]


# ---------------------------------------------------------------- published line formats and class tables

def test_parsers_read_the_published_line_formats():
    assert parse_ta3n_line("/home/mchen2/dataset/ucf101/RGB-feature/v_Archery_g01_c01 163 10") == (
        "/home/mchen2/dataset/ucf101/RGB-feature/v_Archery_g01_c01", "10")
    assert parse_daily_da_line("290\t1\tJump/Jump_10_1.mp4") == ("Jump/Jump_10_1.mp4", "1")
    assert parse_actorshift_line('"kinetics/a b.mp4",watching tv') == ("kinetics/a b.mp4", "watching tv")
    for parse, line in ((parse_ta3n_line, "a 1"), (parse_daily_da_line, "x 1 a.mp4"), (parse_actorshift_line, "a.mp4,")):
        with pytest.raises(ValueError):
            parse(line)


@pytest.mark.parametrize("name,classes,folder_counts", [
    ("ucf_hmdb", ["climb", "fencing", "golf", "kick_ball", "pullup", "punch", "pushup", "ride_bike", "ride_horse", "shoot_ball", "shoot_bow", "walk"],
     {"ucf101": 15, "hmdb51": 12}),
    ("daily_da", ["drink", "jump", "pick", "pour", "push", "run", "walk", "wave"], {"arid": 8, "hmdb51": 8, "mit": 8, "kinetics": 14}),
    ("actorshift", ["drinking", "eating", "opening_door", "running", "sleeping", "swimming", "watching_tv"], {}),
])
def test_class_tables(name, classes, folder_counts):
    table = BENCHMARKS[name].class_table
    assert list(table.classes) == classes
    assert {d: sum(1 for (dd, _) in table.folders if dd == d) for d in folder_counts} == folder_counts
    assert set(table.folders.values()) <= set(classes)
    if folder_counts:  # every class is reachable from every domain's folders
        assert all({c for (d, _), c in table.folders.items() if d == dom} == set(classes) for dom in folder_counts)
    assert "# " in table.source.read_text().splitlines()[0] and "Source" in table.source.read_text()
