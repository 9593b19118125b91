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
    "unknown_estimator": (["--set", "policy.estimator='rlo'"], "--set policy.estimator='rlo': [policy]: policy.estimator 'rlo' "
                          "is not a registered threshold estimator; known: ['paper', 'rloo']"),
    "unknown_selection_rule": (["--set", "train.self_selection='cbst'"], "train.self_selection 'cbst' is not a registered "
                               "self-training selection rule; known: ['class_balanced', 'threshold']"),
    "fraction_outside": (["--set", "train.self_fraction_max=1.2"], "train.self_fraction_max must be in (0, 1]"),
    "flip_mislabels": (["--profile", "results-directions", "--set", "train.hflip_label_map={}"],
                       "train.hflip = true, but the classes ['slide_left', 'slide_right', 'orbit_cw', 'orbit_ccw'] "
                       "(demo_data.classes) name a direction"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_main_job_refuses_bad_input_at_start(case, tmp_path, capsys):
    args, message = CASES[case]
    workdir = tmp_path / "work"
    assert entry_main("full")(["--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not workdir.exists()
