"""Profiles and typed configs: loading, overrides, and errors that name the file, section and key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lmft_core.config import ClipConfig, ConfigError, from_dict, parse_override
from lmft_core.demo_data import DemoDataConfig
from lmft_core.run_config import RunConfig, available_profiles, load_profile


def test_named_profiles_exist_and_carry_their_launch_command():
    assert {"demo", "paper", "results"} <= set(available_profiles())
    for name in available_profiles():
        profile = load_profile(name)
        assert profile.path.read_text().startswith("# Launch: ")
    assert load_profile("paper").clip == ClipConfig(num_frames=16, image_size=224, tubelet=2, patch=16)


def test_clip_grid():
    assert ClipConfig().grid == (8, 14, 14) and ClipConfig().num_tokens == 1568
    assert ClipConfig(num_frames=8, image_size=64).grid == (4, 4, 4)


def test_overrides_parse_as_toml_and_fall_back_to_strings():
    profile = load_profile("demo", ["clip.num_frames=8", "demo_data.classes=['wave', 'jump']", "tracking.uri=http://x:5000"])
    assert profile.clip.num_frames == 8
    assert profile.demo_data.classes == ("wave", "jump")
    assert profile.sections["tracking"]["uri"] == "http://x:5000"
    assert parse_override("a.b=0.5") == ("a", "b", 0.5)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("nodot=1")


def test_errors_name_file_section_and_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set demo_data.colour=1: \[demo_data\]: unknown key\(s\) \['colour'\]"):
        load_profile("demo", ["demo_data.colour=1"]).demo_data
    with pytest.raises(ConfigError, match=r"\[demo_data\]\.seed: expected int, got 'x'"):
        load_profile("demo", ["demo_data.seed='x'"]).demo_data
    with pytest.raises(ConfigError, match="not a multiple of clip.patch"):
        load_profile("demo", ["clip.image_size=60"])
    with pytest.raises(ConfigError, match=r"^--set preprocss.decode_batch_size=4: unknown section\(s\) \['preprocss'\]"):
        load_profile("demo", ["preprocss.decode_batch_size=4"])
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_profile("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("[clip\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_profile(bad)


def test_an_error_from_set_names_set_not_the_profile_file(tmp_path, capsys):
    """The value came from the command line: the message says so (and which override), not the file."""
    with pytest.raises(ConfigError, match=r"^--set train.lr=abc: \[train\].lr: expected float, got 'abc'$") as e:
        load_profile("demo", ["clip.num_frames=8", "train.lr=abc"])
    assert "demo.toml" not in str(e.value)
    # two bad overrides: the one the message is about is named
    with pytest.raises(ConfigError, match=r"^--set train.epochs=x: \[train\].epochs: expected int"):
        load_profile("demo", ["train.lr=0.1", "train.epochs=x"])
    # the file's own error still names the file, whatever --set adds
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 'abc'\n")
    with pytest.raises(ConfigError, match=r"^.*bad.toml \[train\].lr: expected float, got 'abc'$"):
        load_profile(bad, ["train.epochs=2"])
    # and the entry scripts print it
    from conftest import entry_main

    assert entry_main("train")(["--shards", str(tmp_path), "--set", "train.lr=abc"]) == 2
    assert capsys.readouterr().err == "error: --set train.lr=abc: [train].lr: expected float, got 'abc'\n"


@dataclass
class Inner:
    x: float = 1.0


@dataclass
class Outer:
    inner: Inner
    name: str | None = None
    sizes: tuple[int, ...] = ()


def test_from_dict_coerces_nested_and_optional():
    built = from_dict(Outer, {"inner": {"x": 2}, "sizes": [1, 2]})
    assert built == Outer(inner=Inner(x=2.0), name=None, sizes=(1, 2))
    assert isinstance(built.inner.x, float)


@pytest.mark.parametrize("override,message", [
    ("model.sise='vit_tiny'", r"--set model.sise='vit_tiny': \[model\]: unknown key\(s\) \['sise'\]"),
    ("selector.name='best'", r"\[selector\]: selector.name 'best' is not a registered selector"),
    ("policy.baseline_momentum=2.0", r"\[policy\]: policy.baseline_momentum must be in \[0, 1\)"),
    ("preprocess.rows_per_shard=0", r"\[preprocess\]: preprocess.rows_per_shard must be >= 1"),
    ("demo_data.classes=['dance']", r"\[demo_data\]: demo_data.classes: unknown motion"),
    ("train.pseudo_labels='clip-self'", r"\[train\]: train.pseudo_labels 'clip-self' is not a registered pseudo-label "
                                        r"source; known: \['clip', 'clip\+self', 'self'\]"),
    ("train.self_gamma=1.5", r"\[train\]: train.self_gamma must be in \[0, 1\]"),
    ("train.self_refresh_epochs=0", r"\[train\]: train.self_refresh_epochs must be >= 1"),
    # the sweep's search space: each key and value checked against the section it sets
    ('sweep.space={"train.lambda_x" = [1.0]}', r"sweep.space\['train.lambda_x'\]: \[train\] has no key 'lambda_x'"),
    ('sweep.space={"nowhere.x" = [1.0]}', r"sweep.space\['nowhere.x'\]: 'nowhere' is not a section"),
    ('sweep.space={lambda_t = [1.0]}', r"sweep.space\['lambda_t'\]: a setting is named \"section.key\""),
    ('sweep.space={"train.lambda_t" = []}', r"sweep.space\['train.lambda_t'\]: needs a non-empty list"),
    ('sweep.space={"train.lambda_t" = {grid = []}}', r"sweep.space\['train.lambda_t'\]: needs a non-empty list"),
    ('sweep.space={"train.self_gamma" = [0.5, 1.5]}', r"sweep.space\['train.self_gamma'\] value 1.5: .*must be in \[0, 1\]"),
    ('sweep.space={"train.lambda_t" = [0.5, "a"]}', r"sweep.space\['train.lambda_t'\] value 'a': .*expected float"),
    ("sweep.num_samples=0", r"sweep.num_samples must be >= 1, got 0"),
])
def test_every_section_is_validated_when_the_profile_loads(override, message):
    """A typo in any section fails at load, not when (hours later) the component is built."""
    with pytest.raises(ConfigError, match=message):
        load_profile("demo", [override])


def test_every_section_is_built_as_its_typed_config_once_at_load():
    profile = load_profile("demo")
    assert isinstance(profile, RunConfig) and isinstance(profile.demo_data, DemoDataConfig)
    assert profile.model.clip == profile.clip  # derived fields resolved at load


def test_the_selector_fixes_the_policy_kind_and_the_clip_its_segments():
    """``lmft-segment`` learns one threshold per temporal segment: the profile says so once (the selector);
    the policy's kind and segment count are derived, never set in [policy]."""
    from lmft_core.model import SegmentThresholdPolicy, ThresholdPolicy
    from lmft_core.train.config import TrainConfig

    profile = load_profile("demo", ["selector.name=lmft-segment", "policy.mu=0.2", "selector.first_segment='keep'"])
    selector, clip = profile.selector, profile.clip
    policy_cfg = profile.policy  # resolved at load
    assert (policy_cfg.kind, policy_cfg.num_segments, policy_cfg.mu) == ("segment", clip.grid[0], 0.2)
    policy = policy_cfg.build()
    assert isinstance(policy, SegmentThresholdPolicy) and policy.mu.shape == (clip.grid[0] - 1,)
    assert isinstance(load_profile("demo").policy.build(), ThresholdPolicy)
    # the default evaluation's random selector matches the run's learned selector
    labels = [s.label for s in profile.train.evaluate_for(selector)]
    assert "random-match-lmft-segment" in labels and "random-match-lmft" not in labels
    assert "random-match-lmft.first-next" in [s.label for s in TrainConfig().evaluate_for(load_profile("demo").selector)]
    for key, source in (("kind", "the selector"), ("num_segments", r"the profile's \[clip\]")):
        with pytest.raises(ConfigError, match=rf"\[policy\]: '{key}' is not set in a profile section: it comes from {source}"):
            load_profile("demo", [f"policy.{key}=1"])
    # an explicit evaluation list must fit the policy the run builds: checked when the profile loads
    with pytest.raises(ConfigError, match=r"^--set selector.name=lmft-segment, --set train.evaluate=.*: "
                                          r"train.evaluate: \['random-match-lmft'\] draw on a threshold "
                                          r"policy of another kind than the 'segment' one"):
        load_profile("demo", ["selector.name=lmft-segment", "train.evaluate=[{name='random', match='lmft'}]"])
    with pytest.raises(ConfigError, match=r"train.evaluate: \['lmft-segment'\]"):
        load_profile("demo", ["train.evaluate=[{name='lmft-segment'}]"])
    load_profile("demo", ["selector.name=lmft-segment", "train.evaluate=[{name='full'}, {name='random', match='lmft-segment'}]"])


def test_a_profile_with_a_base_replaces_the_bases_keys_one_by_one(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('[clip]\nnum_frames = 8\nimage_size = 64\n\n[train]\nepochs = 3\nlr = 0.01\n')
    child = tmp_path / "child.toml"
    child.write_text(f'base = "{base}"\n\n[train]\nepochs = 5\n\n[model]\nsize = "vit_tiny"\n')
    profile = load_profile(child, ["train.lr=0.5"])
    assert profile.name == "child"
    assert profile.sections == {"clip": {"num_frames": 8, "image_size": 64}, "train": {"epochs": 5, "lr": 0.5},
                                "model": {"size": "vit_tiny"}}
    base.write_text(f'base = "{child}"\n')
    with pytest.raises(ConfigError, match="profile base cycle"):
        load_profile(child)


def test_results_small_is_results_with_less_data_and_a_shorter_schedule():
    """... the paper's first-segment rule, with which its recorded tables were made, and more pretraining epochs
    (a tenth of the clips needs more passes before the reconstruction loss leaves its trivial value)."""
    small, results = load_profile("results-small").sections, load_profile("results").sections
    differs = {(s, k) for s in small.keys() | results.keys() for k in small.get(s, {}).keys() | results.get(s, {}).keys()
               if small.get(s, {}).get(k) != results.get(s, {}).get(k)}
    assert differs == {("demo_data", "videos_per_class"), ("train", "epochs"), ("train", "batch_size"),
                       ("train", "eval_every_epochs"), ("selector", "first_segment"), ("pretrain", "epochs")}
    assert (small["selector"]["first_segment"], results["selector"]["first_segment"]) == ("keep", "next")
    assert small["demo_data"]["videos_per_class"] == 80 and small["pretrain"]["epochs"] == 50


def test_the_configuration_reference_is_generated_from_the_dataclasses_and_current():
    from lmft_core.run_config import REFERENCE_MD, reference

    assert REFERENCE_MD.read_text() == reference(), "regenerate it: python -m lmft_core.run_config"
    assert "| `gamma_c` | `float` | `0.8` |" in reference()  # a default read from TrainConfig


def test_the_configuration_reference_lists_every_section_key_and_profile():
    import dataclasses

    from lmft_core.run_config import PROFILE_DIR, RunConfig, available_profiles, reference, section_class, section_names

    text = reference()

    def keys(instance, prefix=""):  # every key of a default section, nested tables (demo_data.source_camera) key by key
        for f in dataclasses.fields(instance):
            yield prefix + f.name
            if dataclasses.is_dataclass(getattr(instance, f.name)):
                yield from keys(getattr(instance, f.name), f"{prefix}{f.name}.")

    sections = [f.name for f in dataclasses.fields(RunConfig) if f.name in section_names()]
    assert set(sections) == set(section_names())
    for name in sections:
        assert f"## `[{name}]`" in text and f"| [`[{name}]`](#{name}) |" in text, name
        for key in keys(section_class(name)()):
            assert f"| `{key}` |" in text.split(f"## `[{name}]`", 1)[1], (name, key)
    assert "| `source_camera.zoom_per_s` | `float` | `0.0` |" in text
    for profile in available_profiles():
        assert f"| `{profile}` |" in text and (PROFILE_DIR / f"{profile}.toml").is_file()
    assert "**discard rate** = 1 - keep ratio" in text  # the terms, from lmft_core.config's docstring


def test_load_profile_defaults_to_the_one_profile_every_cli_uses():
    import inspect

    from lmft_core.run_config import DEFAULT_PROFILE

    # the entry scripts' shared parser has the same default: tests/test_console.py
    assert inspect.signature(load_profile).parameters["name_or_path"].default == DEFAULT_PROFILE


def test_profiles_state_only_what_differs_from_the_defaults():
    import tomllib

    from lmft_core.run_config import PROFILE_DIR

    for path in sorted(PROFILE_DIR.glob("*.toml")):
        stated = tomllib.loads(path.read_text())
        below = load_profile(stated.pop("base")) if "base" in stated else RunConfig("defaults", PROFILE_DIR)
        for section, values in stated.items():
            default = getattr(below, section)
            same = [k for k, v in values.items() if getattr(default, k) == (tuple(v) if isinstance(v, list) else v)]
            assert not same, f"{path.name} [{section}] restates what its base or the defaults have: {same}"


def test_precision_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu():
    """One rule for ``train.precision`` and ``predict.precision`` (what autocast each computes under)."""
    import torch

    from lmft_core.config import PRECISIONS, autocast_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    table = {(p, d.type): autocast_dtype(p, d) for p in PRECISIONS for d in (cpu, gpu)}
    assert table == {("auto", "cpu"): None, ("auto", "cuda"): torch.bfloat16, ("fp32", "cpu"): None,
                     ("fp32", "cuda"): None, ("bf16", "cpu"): torch.bfloat16, ("bf16", "cuda"): torch.bfloat16}
