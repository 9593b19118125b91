"""Bad input to the main job fails at start, before anything is written: exit code 2 and a message that
names what is wrong. (Tracking servers that are unreachable or refuse the credentials: test_tracking_server.py.)"""

from __future__ import annotations

import pytest

from conftest import entry_main

CASES = {
    "unknown_profile": (["--profile", "papr"],
                        "unknown profile 'papr'; available: ['demo', 'paper', 'results', 'results-directions', 'results-small', 'results-tiny'] "
                        "or a .toml path"),
    "missing_profile_file": (["--profile", "/nonexistent/mine.toml"], "profile file not found: /nonexistent/mine.toml"),
    "unknown_key": (["--set", "clip.num_frame=8"],
                    "--set clip.num_frame=8: [clip]: unknown key(s) ['num_frame']; known: ['image_size', 'num_frames', 'patch', 'tubelet']"),
    "unknown_section": (["--set", "clipp.num_frames=8"], "--set clipp.num_frames=8: unknown section(s) ['clipp'] (from the file or --set)"),
    "malformed_value": (["--set", "clip.num_frames=abc"], "--set clip.num_frames=abc: [clip].num_frames: expected int, got 'abc'"),
    "empty_value": (["--set", "clip.num_frames="], "--set clip.num_frames=: [clip].num_frames: expected int, got ''"),
    "no_dot": (["--set", "nodot"], "override 'nodot' is not of the form section.key=value"),
    "no_value": (["--set", "clip.num_frames"], "override 'clip.num_frames' is not of the form section.key=value"),
    "bad_value": (["--set", "clip.num_frames=15"], "--set clip.num_frames=15: [clip]: clip.num_frames=15 is not a multiple of clip.tubelet=2"),
    "demo_without_training_videos": (["--set", "demo_data.videos_per_class=3", "--set", "demo_data.source_val_fraction=0.9"],
                                     "demo_data.source_val_fraction=0.9 holds back 3 of demo_data.videos_per_class=3 videos per "
                                     "class, leaving none for training"),
    "unknown_ingest": (["--set", "train.ingest='disk'"], "train.ingest must be one of ['auto', 'memory', 'ray_data'], got 'disk'"),
    "unknown_predict_precision": (["--set", "predict.precision='fp16'"],
                                  "predict.precision must be one of ['auto', 'fp32', 'bf16'], got 'fp16'"),
    "labeller_sees_no_frames": (["--set", "pseudo_labels.num_frames=0"],
                                "--set pseudo_labels.num_frames=0: [pseudo_labels]: pseudo_labels.num_frames must be >= 1"),
    "labeller_sees_more_than_the_clip": (["--set", "pseudo_labels.num_frames=32"],
                                         "--set pseudo_labels.num_frames=32: pseudo_labels.num_frames=32 is more than the clip has "
                                         "(clip.num_frames=16)"),
    "adafocus_window_over_grid": (["--set", 'selector.name="adafocus"', "--set", "selector.window=[5, 5]"],
                                  '--set selector.name="adafocus", --set selector.window=[5, 5]: selector.window=[5, 5] is '
                                  "larger than the token grid 4 x 4 ([clip] image_size / patch = 64 / 16)"),
    "rloo_with_adafocus": (["--set", 'selector.name="adafocus"', "--set", "policy.estimator='rloo'"],
                           "policy.estimator='rloo' estimates the threshold policy's gradient, which "
                           "selector.name='adafocus' does not use"),
    "unknown_estimator": (["--set", "policy.estimator='rlo'"], "--set policy.estimator='rlo': [policy]: policy.estimator 'rlo' "
                          "is not a registered threshold estimator; known: ['paper', 'rloo']"),
    "unknown_selection_rule": (["--set", "train.self_selection='cbst'"], "train.self_selection 'cbst' is not a registered "
                               "self-training selection rule; known: ['class_balanced', 'threshold']"),
    "fraction_outside": (["--set", "train.self_fraction_max=1.2"], "train.self_fraction_max must be in (0, 1]"),
    "flip_mislabels": (["--profile", "results-directions", "--set", "train.hflip_label_map={}"],
                       "train.hflip = true, but the classes ['slide_left', 'slide_right', 'orbit_cw', 'orbit_ccw'] "
                       "(demo_data.classes) name a direction"),
}


@pytest.mark.parametrize("verbose", [[], ["--verbose"]], ids=["quiet", "verbose"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_main_job_refuses_bad_input_at_start(case, verbose, tmp_path, capsys, monkeypatch):
    for name in ("LMFT_VERBOSE", "MLFLOW_LOGGING_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):  # --verbose sets them
        monkeypatch.delenv(name, raising=False)
    args, message = CASES[case]
    workdir = tmp_path / "work"
    assert entry_main("full")(["--workdir", str(workdir), *args, *verbose]) == 2  # --verbose: the same error, the same code
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and out == ""
    assert not workdir.exists()
