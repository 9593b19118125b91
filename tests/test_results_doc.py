"""docs/results.md: one section per results profile, and the computed reading of a group's table."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from lmft_core.benchmarking import write_section

ROOT = Path(__file__).resolve().parent.parent


def results_script() -> dict:
    return runpy.run_path(str(ROOT / "benchmarks" / "results.py"))


def test_a_profile_section_is_replaced_and_the_other_profiles_sections_stay(tmp_path):
    doc, header = tmp_path / "results.md", "# Results\n\nheader line\n"
    write_section("results", "new setting v1", doc, header=header)
    write_section("results-small", "old setting", doc, header=header)
    write_section("results", "new setting v2", doc, header=header)
    text = doc.read_text()
    assert text.startswith(header)
    assert "new setting v2" in text and "new setting v1" not in text and "old setting" in text
    assert text.index("new setting v2") < text.index("old setting")  # replaced in place
    assert text.count("<!-- BEGIN results -->") == 1 and text.count("<!-- END results-small -->") == 1


def test_the_narrative_above_the_generated_sections_is_kept(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text((ROOT / "docs" / "results.md").read_text())
    narrative = doc.read_text().split("<!-- BEGIN results -->")[0]
    assert "## What it shows" in narrative  # the hand-written part the README points at
    write_section("results", "regenerated", doc, header=results_script()["RESULTS_HEADER"])
    text = doc.read_text()
    assert text.startswith(narrative) and "<!-- BEGIN results -->\nregenerated\n<!-- END results -->" in text
    assert "<!-- BEGIN results-small -->" in text


def row(top1: float, src: float = 0.6) -> dict:
    return {"top1": top1, "source_val_top1": src}


def test_the_reading_states_the_transfer_bar_and_differences_against_the_spread():
    reading = results_script()["reading"]
    chance = 0.2
    transfers = {"LMFT": [row(0.50), row(0.52), row(0.54)], "full tokens": [row(0.44), row(0.45), row(0.46)]}
    text = reading(transfers, chance)
    # full tokens 0.45 >= 0.40; difference 0.07 against the largest sd 0.02: larger than two spreads
    assert "it meets the bar of twice chance (0.40)" in text and "larger than the spread" in text
    assert "the best row is *LMFT* (0.520)" in text
    weak = {"LMFT": [row(0.30), row(0.20), row(0.25)], "full tokens": [row(0.28), row(0.27), row(0.29)]}
    text = reading(weak, chance)
    assert "does not meet the bar" in text and "not a clear difference" in text


def test_the_pretrain_group_tables_each_pretraining_once_per_strategy_and_seed():
    from lmft_core.run_config import load_profile

    cost = results_script()["pretrain_cost"]

    def pre(masking, seed, loss, s, mb):
        return {"seed": seed, "top1": 0.3, "pretrain": {"masking": masking, "final_loss": loss, "elapsed_s": s,
                                                        "clips_per_s": 10.0, "peak_memory_mb": mb}}

    rows = {"full tokens, from scratch": [{"seed": 0, "top1": 0.2}],
            "full tokens, pretrained (motion)": [pre("motion", 0, 0.5, 100.0, 900.0), pre("motion", 1, 0.7, 120.0, 1000.0)],
            "LMFT, pretrained (motion)": [pre("motion", 0, 0.5, 100.0, 900.0), pre("motion", 1, 0.7, 120.0, 1000.0)],
            "full tokens, pretrained (tube)": [pre("tube", 0, 0.8, 90.0, 800.0)]}
    text = cost(rows, load_profile("results-tiny"))
    assert "| motion | 0.6000 | 110 | 10.0 | 1000 | 2 |" in text  # two seeds, not four runs
    assert "| tube | 0.8000 | 90 | 10.0 | 800 | 1 |" in text
    assert "50 epochs of batch 8, mask ratio 0.9" in text  # results-small's, which results-tiny inherits


def test_the_pretrain_reading_checks_both_targets_against_the_spread():
    pretrain_reading = results_script()["pretrain_reading"]

    def runs(*top1):
        return [{"top1": t} for t in top1]

    rows = {"full tokens, from scratch": runs(0.28, 0.30),
            "full tokens, pretrained (tube)": runs(0.50, 0.52),
            "full tokens, pretrained (motion)": runs(0.51, 0.53),
            "full tokens, pretrained (learned)": runs(0.38, 0.40),
            "LMFT, from scratch": runs(0.30, 0.32),
            "LMFT, pretrained (motion)": runs(0.31, 0.33)}
    text = pretrain_reading(rows, 0.2)  # every sd is 0.014: a difference counts beyond 0.028
    assert "full tokens from scratch reach 0.290 (twice chance is 0.40)" in text
    assert "pretrained with `tube` 0.510, above twice chance (higher, +0.220 against scratch)" in text
    assert "pretrained with `learned` 0.390, not above twice chance (higher, +0.100 against scratch)" in text
    assert "the better of `motion` and `learned` is `motion`: at least `tube` (no clear difference, +0.010), target met" in text
    assert "LMFT pretrained with `motion` 0.320 against 0.310 from scratch (no clear difference, +0.010)" in text
    rows["full tokens, pretrained (motion)"] = runs(0.40, 0.42)
    assert "is `motion`: below `tube` (lower, -0.100), target missed" in pretrain_reading(rows, 0.2)
    assert pretrain_reading({"LMFT, from scratch": runs(0.3)}, 0.2) == ""


def test_the_adafocus_reading_says_where_it_wins_and_loses_against_random_and_lmft():
    focus_reading = results_script()["focus_reading"]

    def runs(*top1, discard=0.5, gflops=0.1):
        return [{"top1": t, "discard_rate": discard, "gflops_per_clip": gflops} for t in top1]

    rows = {"static camera: LMFT": runs(0.50, 0.52, discard=0.6, gflops=0.08),
            "static camera: random, keep 0.25": runs(0.30, 0.32),
            "static camera: adafocus 2x2, keep 0.25": runs(0.40, 0.42, gflops=0.05),
            "moving camera: LMFT": runs(0.30, 0.32),
            "moving camera: random, keep 0.25": runs(0.35, 0.37),
            "moving camera: adafocus 2x2, keep 0.25": runs(0.45, 0.47)}
    text = focus_reading(rows)  # every sd is 0.014: a difference counts beyond 0.028
    assert "static camera, keep 0.25: adafocus 0.410 against random wins, +0.100; against LMFT (keep 0.40) loses, -0.100" in text
    assert "at 0.0500 against 0.0800 GFLOPs per clip" in text
    assert "moving camera, keep 0.25: adafocus 0.460 against random wins, +0.100; against LMFT (keep 0.50) wins, +0.150" in text
    assert "keep 0.5:" not in text  # no 2x4 rows: not compared
    sized = {"small actor: LMFT": runs(0.70, 0.72, discard=0.8), "small actor: random, keep 0.25": runs(0.25, 0.27),
             "small actor: adafocus 2x2, keep 0.25": runs(0.35, 0.37),
             "large actor: LMFT": runs(0.60, 0.62, discard=0.5), "large actor: random, keep 0.25": runs(0.40, 0.42),
             "large actor: adafocus 2x2, keep 0.25": runs(0.65, 0.67)}
    text = focus_reading(sized)
    assert "small actor, keep 0.25: adafocus 0.360 against random wins, +0.100; against LMFT (keep 0.20) loses, -0.350" in text
    assert "large actor, keep 0.25: adafocus 0.660 against random wins, +0.250; against LMFT (keep 0.50) wins, +0.050" in text


def test_the_size_group_reuses_the_static_adafocus_trainings_and_trains_the_large_actor_on_its_own_data(tmp_path):
    script = results_script()
    profile = script["load_profile"]("results-tiny")
    toml = profile.to_toml()

    def keys(group: str, where: str) -> dict[str, str]:
        return {s.label.split(": ", 1)[1]: script["training_key"](s, script["setting_overrides"](s, {}, profile, toml), [], 0)
                for s in script["GROUPS"][group] if s.label.startswith(where)}

    small, large, static = keys("size", "small actor"), keys("size", "large actor"), keys("adafocus", "static camera")
    assert small.keys() == large.keys() == {"LMFT", "full tokens", "random, keep 0.25", "adafocus 2x2, keep 0.25"}
    assert all(small[label] == static[label] for label in small)  # the same trainings: recorded once, reused
    alone = keys("adafocus-static", "static camera")  # the second generator's comparison: adafocus' static rows
    assert alone == {label: key for label, key in static.items() if label in alone} and len(alone) == 6
    moving = keys("adafocus-moving", "moving camera")  # and its moving-camera rows at keep 0.25
    assert moving == {label: key for label, key in keys("adafocus", "moving camera").items() if label in moving}
    assert moving.keys() == small.keys() and all(json.loads(key)[0] == "camera" for key in moving.values())
    assert all(json.loads(large[label])[0] == "large" and large[label] != small[label] for label in large)
    assert 0 < profile.demo_data.actor_radius < script["LARGE_ACTOR"] <= 0.5
    with pytest.raises(ValueError, match="unknown data 'huge'"):
        script["prepare_data"](profile, tmp_path, "huge", "diff")
    assert not any(tmp_path.iterdir())  # refused before anything is generated


def test_the_self_training_reading_says_help_hurt_or_drift_from_the_table():
    script = results_script()

    def run(top1, refreshes):
        return {"top1": top1, "source_val_top1": 0.6, "refreshes": refreshes}

    rows = {"source-only": [run(0.50, []), run(0.52, []), run(0.51, [])],
            "self, class-balanced": [run(0.60, [[1, 0.2, 0.7], [2, 0.3, 0.6]]), run(0.61, [[1, 0.2, 0.8], [2, 0.3, 0.6]])],
            "self, threshold": [run(0.50, [[1, 0.0, float("nan")], [2, 0.1, 0.5]])]}
    text = script["self_reading"](rows)
    # +0.095 against a largest sd of 0.01: helps; accuracy 0.75 -> 0.60: drifts
    assert "*self, class-balanced* helps (+0.095" in text and "pass rate at the first refresh is 0.20" in text
    assert "drifts (falls): 0.750 at the first refresh, 0.600 at the last" in text
    assert "*self, threshold* makes no clear difference (-0.010" in text
    table = script["refresh_table"](rows)
    assert "| self, class-balanced | 1 | 0.200 ± 0.000 | 0.750 ± 0.071 | 2 |" in table
    assert "| self, threshold | 2 | 0.100 | 0.500 | 1 |" in table
    assert "| self, threshold | 1 | 0.000 | — (none passed) | 1 |" in table
    # 29 refreshes: the first five, every fifth and the last in the table
    long = {"self": [run(0.6, [[e, 0.5, 0.5 + e / 100] for e in range(1, 30)])]}
    epochs = [line.split("|")[2].strip() for line in script["refresh_table"](long).splitlines()[2:]]
    assert epochs == ["1", "2", "3", "4", "5", "10", "15", "20", "25", "29"]


def map_row(tau, top1, reward, discard=0.5, seed=0):
    return {"seed": seed, "tau": tau, "top1": top1, "source_val_top1": top1 + 0.1, "discard_rate": discard,
            "source_val_loss": 1.0, "source_val_reward": reward}


def test_the_threshold_map_finds_tau_star_and_the_accuracy_optimum_and_judges_lmft(tmp_path):
    script = results_script()
    rows = {"fixed threshold, keep 0.10": [map_row(0.8, 0.40, -12.0, 0.9)],
            "fixed threshold, keep 0.40": [map_row(0.5, 0.55, -9.0, 0.6), map_row(0.5, 0.57, -9.2, 0.6, 1)],
            "fixed threshold, keep 0.70": [map_row(0.3, 0.60, -10.0, 0.3), map_row(0.3, 0.62, -10.1, 0.3, 1)],
            "LMFT, paper estimator": [map_row(0.45, 0.52, -9.5, 0.55)],
            "LMFT, rloo estimator": [map_row(0.49, 0.60, -9.1, 0.58)]}
    assert script["best_of_map"](rows) == ["fixed threshold, keep 0.40", "fixed threshold, keep 0.70"]
    # one row best on both counts: it and the runner-up on target top-1
    same = {**rows, "fixed threshold, keep 0.70": [map_row(0.3, 0.50, -10.0, 0.3)]}
    assert script["best_of_map"](same) == ["fixed threshold, keep 0.40", "fixed threshold, keep 0.70"]
    same["fixed threshold, keep 0.10"] = [map_row(0.8, 0.52, -12.0, 0.9)]
    assert script["best_of_map"](same) == ["fixed threshold, keep 0.40", "fixed threshold, keep 0.10"]
    text = script["threshold_reading"](rows)
    assert "the reward optimum tau* = 0.500 (*fixed threshold, keep 0.40*" in text
    assert "the accuracy optimum tau = 0.300 (*fixed threshold, keep 0.70*, 0.610, at the edge of the map: the " \
        "optimum may lie beyond it)" in text and "keep 0.40*, target top-1 0.560);" in text  # tau* inside the map
    # best fixed 0.610 minus the largest sd 0.0141: 0.596; rloo 0.600 at discard 0.58 meets it, the paper's misses
    assert "*LMFT, rloo estimator*: tau_hat 0.490 (-0.010 from tau*), target top-1 0.600 at discard 0.58: it meets" in text
    assert "*LMFT, paper estimator*: tau_hat 0.450 (-0.050 from tau*), target top-1 0.520 at discard 0.55: it misses" in text
    assert script["tau_star_of"]({"threshold": {"rows": rows}}) == 0.5
    png = script["threshold_figure"](rows, tmp_path / "map.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_estimator_reading_measures_how_far_apart_the_starts_end(tmp_path):
    script = results_script()

    def run(end, top1=0.5, discard=0.5):
        return {"top1": top1, "discard_rate": discard, "tau_hat_history": [[1, 0.3], [2, end]]}

    rows = {"paper estimator, start tau_hat 0.3": [run(0.31, 0.6), run(0.33, 0.8)],  # top-1 0.7 ± 0.1414
            "paper estimator, start tau_hat 0.7": [run(0.69, 0.5, 0.9)],
            "rloo estimator, start tau_hat 0.3": [run(0.47), run(0.49)], "rloo estimator, start tau_hat 0.7": [run(0.50, 0.9)]}
    text = script["estimator_reading"](rows, 0.5)
    assert "the paper estimator's starts end 0.370 apart in tau_hat (not within 0.05), at most 0.190 from tau* = 0.500 " \
        "(not within 0.05); 0.400 apart in discard rate, 0.200 apart in target top-1 (beyond one seed sd, 0.141)" in text
    assert "the rloo estimator's starts end 0.020 apart in tau_hat (within 0.05), at most 0.020 from tau* = 0.500 " \
        "(within 0.05); 0.000 apart in discard rate, 0.400 apart in target top-1 (beyond one seed sd, 0.000)" in text
    assert "| rloo estimator, start tau_hat 0.3 | 0.480 ± 0.014 | 0.500 ± 0.000 | 0.500 | 2 |" in script["estimator_table"](rows)
    assert script["estimator_figure"](rows, tmp_path / "tau.png", 0.5).is_file()


def test_records_round_trip_and_render_the_tables_without_data_or_training(tmp_path, capsys):
    """Each training is stored once (groups hold keys), and ``--render`` rewrites the tables from the records alone."""
    script = results_script()

    def record(top1, discard, seed):
        return {"seed": seed, "selector": "lmft", "top1": top1, "mean_class_accuracy": top1, "discard_rate": discard,
                "gflops_per_clip": 0.1, "train_clips_per_s": 100.0, "elapsed_s": 10.0, "run": f"r{seed}",
                "evaluation": {}, "source_val_top1": 0.7, "pseudo_label_rate": 0.0, "refreshes": [],
                "tau_hat_history": [[1, 0.5]]}

    lmft = [record(0.60, 0.8, s) for s in range(2)]
    full = [record(0.40 + 0.02 * s, 0.0, s) for s in range(2)]
    runs = {f"lmft{s}": r for s, r in enumerate(lmft)} | {f"full{s}": r for s, r in enumerate(full)}
    done = {"runs": runs, "main": {"rows": {"LMFT": lmft, "full tokens": full}, "extra": {"sanity": "0.9"},
                                   "overrides": [], "seeds": 2}}
    path = tmp_path / "records.json"
    script["save_records"](done, path)
    stored = json.loads(path.read_text())
    assert stored["main"]["rows"] == {"LMFT": ["lmft0", "lmft1"], "full tokens": ["full0", "full1"]}
    assert stored["runs"] == runs  # every record whole, each on its own line
    assert sum(line.startswith('  "lmft') or line.startswith('  "full') for line in path.read_text().splitlines()) == 4
    loaded = script["load_records"](path)
    assert loaded["main"]["rows"]["full tokens"] == full and loaded["main"]["rows"]["LMFT"][1] is loaded["runs"]["lmft1"]

    assert script["main"](["--profile", "results-tiny", "--records", str(path), "--render", "--no-write",
                           "--workdir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "| LMFT | 0.600 ± 0.000 |" in out and "| full tokens | 0.410 ± 0.014 |" in out and "| sanity | 0.9 |" in out
    assert not (tmp_path / "none").exists()  # no data generated, nothing trained


def test_thin_keeps_the_ends_and_at_most_the_count():
    thin = results_script()["thin"]
    points = [[i, i / 1000] for i in range(1000)]
    kept = thin(points, 50)
    assert len(kept) == 50 and kept[0] == points[0] and kept[-1] == points[-1]
    assert thin(points[:10], 50) == points[:10]


def test_records_of_another_version_of_the_profile_are_refused_and_render_needs_records(tmp_path, capsys):
    import pytest

    script = results_script()
    path = tmp_path / "records.json"
    path.write_text(json.dumps({"profile_digest": "0123456789abcdef", "runs": {}}))
    with pytest.raises(SystemExit):  # no training reused silently after results.toml changed
        script["main"](["--profile", "results-tiny", "--records", str(path), "--groups", "main", "--workdir", str(tmp_path)])
    assert "another version of profile 'results-tiny'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script["main"](["--profile", "results-tiny", "--records", str(tmp_path / "none.json"), "--render"])
    assert "--render: no records at" in capsys.readouterr().err


def test_groups_in_progress_show_their_recorded_trainings_under_the_keys_the_runs_store(tmp_path, capsys):
    """A group not complete yet is tabled from the trainings its records hold, found under the keys written out here
    by hand (data, energy, --set, overrides, seed); a row at LMFT's mean discard rate counts once LMFT has every
    seed, and a group holding only trainings shown above (the shared LMFT row) is left out."""
    script = results_script()

    def record(top1, discard, seed):
        return {"seed": seed, "selector": "s", "top1": top1, "mean_class_accuracy": top1, "discard_rate": discard,
                "gflops_per_clip": 0.1, "train_clips_per_s": 100.0, "elapsed_s": 10.0, "run": "r", "evaluation": {},
                "source_val_top1": 0.7, "pseudo_label_rate": 0.0, "refreshes": [], "tau_hat_history": [[1, 0.5]]}

    def key(overrides, seed):
        return json.dumps(["static", "diff", [], overrides, seed])

    runs = {key([], 0): record(0.70, 0.7, 0), key([], 1): record(0.74, 0.9, 1),  # LMFT: mean discard rate 0.8
            key(['selector.name="full"'], 0): record(0.45, 0.0, 0),
            key(['selector.name="random"', "selector.drop_rate=0.800"], 1): record(0.25, 0.8, 1)}
    path = tmp_path / "records.json"
    script["save_records"]({"runs": runs}, path)
    assert script["main"](["--profile", "results-tiny", "--records", str(path), "--render", "--no-write", "--seeds", "2",
                           "--workdir", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "(`main`, 4 trainings so far)" in out
    assert "| LMFT | 0.720 ± 0.028 |" in out and "| full tokens | 0.450 |" in out
    assert "| random drop at LMFT's rate | 0.250 |" in out
    assert "(`first`" not in out and "(`pseudo`" not in out  # only main's LMFT row recorded there
    # a fixed threshold's overrides are valid only together: none is dropped as "the profile's own"
    profile = script["load_profile"]("results-tiny")
    fixed = script["GROUPS"]["main"][3]
    lmft = {"LMFT": [record(0.7, 0.75, 0)]}
    assert script["setting_overrides"](fixed, lmft, profile, profile.to_toml()) == (
        'selector.name="threshold"', "selector.calibrate=true", "selector.keep_ratio=0.250")


def exit_runs() -> list[dict]:
    """Two models' exit curves, ``[threshold, top1, exit rate, gflops]`` (None: no exit), on 100 target clips."""
    def run(points):
        return {"top1": points[-1][1], "exit_curve": points, "evaluation": {"adafocus-w2x2": {"clips": 100}}}

    return [run([[0.2, 0.30, 1.0, 0.01], [0.5, 0.40, 0.5, 0.08], [0.9, 0.44, 0.1, 0.14], [None, 0.46, 0.0, 0.15]]),
            run([[0.2, 0.32, 1.0, 0.01], [0.5, 0.44, 0.3, 0.10], [0.9, 0.48, 0.1, 0.14], [None, 0.48, 0.0, 0.15]])]


def test_the_exit_curve_is_tabled_per_threshold_over_seeds_and_read_against_no_exit():
    script = results_script()
    runs = exit_runs()
    points = script["exit_points"](runs)
    assert [p["threshold"] for p in points] == [0.2, 0.5, 0.9, None]
    assert points[1]["top1"] == pytest.approx(0.42) and points[1]["top1_sd"] == pytest.approx(0.02 * 2 ** 0.5)
    assert points[1]["exit_rate"] == pytest.approx(0.4) and points[1]["gflops"] == pytest.approx(0.09)
    assert (points[1]["exit_min"], points[1]["exit_max"]) == (0.3, 0.5)
    # paired drops against each run's own top-1 without exit: 0.5 -> 0.06 and 0.04; 0.9 -> 0.02 and 0.00
    assert points[1]["drop"] == pytest.approx(0.05) and points[1]["drop_sd"] == pytest.approx(0.01 * 2 ** 0.5)
    assert points[2]["drop"] == pytest.approx(0.01) and points[3]["drop"] == 0 == points[3]["drop_sd"]
    # one binomial standard error on 100 clips: sqrt(0.46 * 0.54 / 100) = 0.0498 and sqrt(0.48 * 0.52 / 100) = 0.0500
    assert [p["within_se"] for p in points] == [False, False, True, True]  # 0.5: the first model's drop 0.06 > 0.0498
    table = script["exit_table"]("static camera: adafocus 2x2", runs)
    assert "| 0.5 | 0.420 ± 0.028 | 0.050 ± 0.014 | 0.400 (0.300–0.500) | 0.0900 |" in table and "(2 seeds;" in table
    assert "| none (no exit) | 0.470 ± 0.014 | 0.000 ± 0.000 | 0.000 (0.000–0.000) | 0.1500 |" in table
    text = script["exit_reading"](runs)
    assert "without exit, top-1 0.470 at 0.1500 GFLOPs per clip; at exit threshold 0.2 100% of clips exit" in text
    assert "top-1 0.310 (a drop of 0.160) at 0.0100 GFLOPs." in text
    assert "is 0.9: 10% of clips exit (10%–10% by model), 0.93x the GFLOPs, top-1 drop 0.010 ± 0.014." in text
    costly = [{**r, "exit_curve": [[t, top1 - 0.1 * (t is not None), rate, g] for t, top1, rate, g in r["exit_curve"]]}
              for r in runs]  # every exit loses 0.1
    assert "no exit is free" in script["exit_reading"](costly)
    with pytest.raises(ValueError, match="must share their thresholds"):
        script["exit_points"]([runs[0], {**runs[1], "exit_curve": runs[1]["exit_curve"][1:]}])


def test_a_group_with_an_exit_curve_renders_its_table_reading_and_figure(tmp_path):
    script = results_script()
    profile = script["load_profile"]("results-tiny")
    label = "static camera: adafocus 2x2, exit at 0.9"
    rows = {"static camera: LMFT": [{"top1": 0.6, "gflops_per_clip": 0.07, "source_val_top1": 0.7, "pseudo_label_rate": 0.0,
                                     "mean_class_accuracy": 0.6, "discard_rate": 0.8, "train_clips_per_s": 100.0}],
            label: [{**r, "gflops_per_clip": 0.15, "source_val_top1": 0.7, "pseudo_label_rate": 0.0, "mean_class_accuracy": 0.5,
                     "discard_rate": 0.75, "train_clips_per_s": 100.0} for r in exit_runs()]}
    text = "\n".join(script["group_text"]("adafocus", {"rows": rows, "extra": {}}, 0.2, profile, "tiny", tmp_path, {}))
    assert f"The early exit of *{label}*" in text and "| none (no exit) |" in text and "Reading (computed): without exit" in text
    figure = tmp_path / "tiny-adafocus-exit-curve.png"
    assert figure.stat().st_size > 10_000 and "![tiny-adafocus-exit-curve](" in text


def test_a_group_whose_trainings_all_sit_in_other_groups_is_not_listed_as_not_run(tmp_path, capsys):
    """``adafocus-static`` and ``adafocus-moving`` hold rows of ``adafocus``: with those recorded they have nothing
    to run."""
    script = results_script()
    profile = script["load_profile"]("results-tiny")
    toml = profile.to_toml()
    record = {"seed": 0, "selector": "s", "top1": 0.5, "mean_class_accuracy": 0.5, "discard_rate": 0.5, "gflops_per_clip": 0.1,
              "train_clips_per_s": 100.0, "elapsed_s": 10.0, "run": "r", "evaluation": {}, "source_val_top1": 0.7,
              "pseudo_label_rate": 0.0, "refreshes": [], "tau_hat_history": [[1, 0.5]]}
    static = [s for s in script["GROUPS"]["adafocus"] if s in script["GROUPS"]["adafocus-static"] + script["GROUPS"]["adafocus-moving"]]
    runs = {script["training_key"](s, script["setting_overrides"](s, {}, profile, toml), [], 0): dict(record) for s in static}
    path = tmp_path / "records.json"
    script["save_records"]({"runs": runs, "adafocus": {"rows": {s.label: [runs[k]] for s, k in zip(static, runs)},
                                                       "extra": {}, "overrides": [], "seeds": 1}}, path)
    assert len(static) == 10  # 6 static rows, 4 moving-camera rows
    assert script["main"](["--profile", "results-tiny", "--records", str(path), "--render", "--no-write", "--seeds", "1",
                           "--workdir", str(tmp_path / "none")]) == 0
    not_run = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Not run on this profile"))
    assert "`size`" in not_run and "`adafocus-static`" not in not_run and "`adafocus-moving`" not in not_run  # size's large actor is not recorded
