"""docs/results.md: one section per results profile, and the computed reading of a group's table."""

from __future__ import annotations

import runpy
from pathlib import Path

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
    assert "10 epochs of batch 8, mask ratio 0.9" in text
