"""The console: the epoch line and its ETA, the stage banners, the final table, the entry scripts' shared
command line (``--help`` without torch, Ray or MLflow; ``--print-config`` round-trips). The line budget of
a whole run is checked on the captured tiny workflow in ``tests/test_full_pipeline.py``."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmft_core.cli import parser, run_arguments
from lmft_core.config import DEFAULT_PROFILE
from lmft_core.console import EpochPrinter, StageClock, duration, epoch_line, progress_bar, table
from lmft_core.run_config import load_profile

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "pipelines").glob("*.py"))
METRICS = {"epoch": 3.0, "epoch/loss": 0.69314, "policy/tau_hat": 0.41234, "epoch/discard_rate": 0.38249,
           "epoch/clips_per_s": 24.06, "epoch/data_wait_fraction": 0.041, "eval_target/lmft/top1": 0.5}


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_epoch_line_states_every_figure_rounded():
    line = epoch_line("adapted (lmft)", 3, 10, METRICS, 65.0)
    assert line == ("[lmft] adapted (lmft)    epoch  3/10  loss 0.693  τ̂ 0.412  discard 38.2%  24.1 clips/s  "
                    "data-wait 4%  ETA 1:05")
    baseline = epoch_line("baseline (full)", 10, 10, {**METRICS, "epoch/discard_rate": 0.0}, 0.0, show_tau=False)
    assert "τ̂" not in baseline and "discard 0.0%" in baseline and baseline.endswith("done")
    missing = epoch_line("pretrain", 1, 2, {"epoch/loss": float("nan")}, None, show_tau=False)
    assert missing == "[lmft] pretrain          epoch 1/2  loss -  - clips/s  ETA -"  # no discard, no data wait
    nan = epoch_line("x", 1, 2, {"epoch/discard_rate": float("nan")}, 1.0, show_tau=False)
    assert "discard -%" in nan and "data-wait" not in nan


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (59.4, "59 s"), (65, "1:05"), (3727, "1:02:07"),
                                                (math.nan, "-")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_eta_is_the_mean_epoch_time_so_far_times_the_epochs_left():
    clock, out = Clock(), io.StringIO()
    printer = EpochPrinter("adapted (lmft)", 5, stream=out, clock=clock)
    clock.t += 30.0  # the first epoch, with the workers' start: 30 s
    printer.report({"epoch": 1.0})
    assert printer.eta(1) == pytest.approx(30.0 * 4)
    clock.t += 10.0
    printer.report({"epoch": 2.0})
    clock.t += 14.0
    printer.report({"epoch": 3.0})  # from now on the spans between reports: 10 s and 14 s
    assert printer.eta(3) == pytest.approx(12.0 * 2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[2].endswith("ETA 24 s") and "\r" not in out.getvalue()


def test_a_terminal_redraws_one_line_as_a_bar_and_ends_it_after_the_last_epoch():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    printer = EpochPrinter("baseline (full)", 2, show_tau=False, stream=out, clock=Clock())
    printer.report({"epoch": 1.0})
    assert out.getvalue().startswith("\r\x1b[K[" + "#" * 10 + "-" * 10 + "] [lmft] baseline (full)")
    assert not out.getvalue().endswith("\n") and printer.open_line
    printer.report({"epoch": 2.0})
    assert out.getvalue().endswith("done\n") and out.getvalue().count("\n") == 1
    assert progress_bar(0, 4, 8) == "[--------]" and progress_bar(4, 4, 8) == "[########]"


def test_stage_banners_count_and_time_the_stages(capsys):
    clock = Clock(0.0)
    stages = StageClock(3, clock=clock)
    with stages.stage("data"):
        clock.t += 75.0
    with stages.stage("adapt", "adapted training (lmft), 10 epochs"):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[lmft] ── 1/3 data ─") and lines[0].endswith("(0 s elapsed)")
    assert lines[1].startswith("[lmft] ── 2/3 adapt: adapted training (lmft), 10 epochs ─")
    assert lines[1].endswith("(1:15 elapsed)")


def test_table_pads_columns():
    text = table(["training", "top-1"], [["adapted (lmft)", "0.500"], ["baseline (full)", "0.25"]])
    assert text.splitlines() == ["training         top-1", "───────────────  ─────",
                                 "adapted (lmft)   0.500", "baseline (full)   0.25"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_imports_no_torch_ray_or_mlflow(script):
    code = ("import json, runpy, sys\nsys.argv = [sys.argv[1], '--help']\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit:\n    pass\nprint(json.dumps(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(proc.stdout.splitlines()[-1]) == [], script
    if script.name != "make_demo_data.py":  # the demo data's own presets, no profile
        assert "--set SECTION.KEY=VALUE" in proc.stdout and "--print-config" in proc.stdout and "--verbose" in proc.stdout


def test_every_script_that_takes_a_profile_uses_the_shared_parser():
    assert parser("x").parse_args([]).profile == DEFAULT_PROFILE
    assert run_arguments("x").parse_args(["--shards", "s"]).profile == DEFAULT_PROFILE
    for script in SCRIPTS:
        text = script.read_text()
        assert '"--profile"' not in text and '"--set"' not in text, script  # the shared parser's, with its default
        if script.name != "make_demo_data.py":
            assert "parser(__doc__)" in text or "run_arguments(__doc__)" in text, script


def test_print_config_prints_the_resolved_profile_as_toml_that_loads_back(tmp_path):
    overrides = ["train.epochs=3", "selector.name='full'", "demo_data.classes=['wave', 'jump']"]
    proc = subprocess.run([sys.executable, str(REPO / "pipelines" / "train.py"), "--shards", "unused", "--print-config",
                           *(a for o in overrides for a in ("--set", o))], capture_output=True, text=True, cwd=REPO, check=True)
    printed = tmp_path / "printed.toml"
    printed.write_text(proc.stdout)
    original, loaded = load_profile(DEFAULT_PROFILE, overrides), load_profile(printed)
    assert loaded.settings() == original.settings() and loaded.train.epochs == 3 and loaded.selector.name == "full"
    assert loaded.policy == original.policy and loaded.model == original.model  # the derived keys resolve alike
    for name in ("paper", "results-tiny"):  # every key of other profiles, not only the demo's
        profile = load_profile(name)
        (tmp_path / f"{name}.toml").write_text(profile.to_toml())
        assert load_profile(tmp_path / f"{name}.toml").settings() == profile.settings()


def test_a_long_fit_prints_about_ten_plain_lines_and_always_the_last_epoch():
    from lmft_core.console import PLAIN_EPOCH_LINES, EpochPrinter, plain_epochs

    assert plain_epochs(5) == [1, 2, 3, 4, 5] and plain_epochs(10) == list(range(1, 11))
    assert plain_epochs(30) == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert plain_epochs(31) == [4, 8, 12, 16, 20, 24, 28, 31]
    for n in range(1, 200):
        shown = plain_epochs(n)
        assert shown[-1] == n and len(shown) <= PLAIN_EPOCH_LINES + 1
    out = io.StringIO()
    printer = EpochPrinter("adapted (lmft)", 30, stream=out)
    for e in range(1, 31):
        printer.report({"epoch": float(e)})
    assert [line.split("epoch ")[1].split()[0] for line in out.getvalue().splitlines()] == [f"{e}/30" for e in plain_epochs(30)]


def test_rays_token_auth_notice_is_dropped_unless_verbose_and_its_disabled_warning_stays(caplog):
    import logging

    from lmft_core.console import TOKEN_AUTH_NOTICE, quiet_ray_notices, set_verbose

    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    try:
        for verbose, shown in ((False, ["Token authentication is disabled for this Ray cluster."]),
                               (True, [f"{TOKEN_AUTH_NOTICE}. Set RAY_AUTH_MODE=disabled to opt out.",
                                       "Token authentication is disabled for this Ray cluster."])):
            set_verbose(verbose)
            quiet_ray_notices()
            quiet_ray_notices()  # twice: still one filter
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger=auth.name):
                auth.warning(f"{TOKEN_AUTH_NOTICE}. Set RAY_AUTH_MODE=disabled to opt out.")
                auth.warning("Token authentication is disabled for this Ray cluster.")
            assert [r.getMessage() for r in caplog.records] == shown
            assert len(auth.filters) == (0 if verbose else 1)
    finally:
        set_verbose(False)
        quiet_ray_notices()


def test_tune_prints_nothing_of_its_own_unless_verbose(monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    from lmft_core.console import quiet_tune, set_verbose

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    try:
        with quiet_tune():
            assert get_air_verbosity(0) is None  # Tune's legacy reporter, which prints nothing at verbose=0
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ and get_air_verbosity(0) is not None  # restored
        set_verbose(True)
        with quiet_tune():
            assert get_air_verbosity(2) is not None  # --verbose: Tune's own output as it is
    finally:
        set_verbose(False)
