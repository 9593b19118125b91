"""Pseudo-label sources (``train.pseudo_labels``): the ``clip+self`` rule against a naive loop, ``self``
before and after a refresh, target labels never reaching a loss, the refresh on shards against an
independent prediction, the same table on two gloo ranks, and the table kept across a checkpoint."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_train_step import CLIP, K, batch, learner

from conftest import TINY_CLIP_GEOMETRY, TINY_TRAIN
from lmft_core.config import ConfigError
from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.registry import Registry
from lmft_core.run_config import load_profile
from lmft_core.shards.batch import model_input
from lmft_core.shards.reader import BATCH_COLUMNS, ShardSet, batch_from_table, video_key
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.pseudo import (
    PSEUDO_LABEL_SOURCES,
    SELF_SELECTIONS,
    SelfLabels,
    predict_clips,
    pseudo_label_report,
    refresh_self_labels,
    self_fraction,
    target_labels,
)


def naive_rule(source: str, clip_label: int, clip_pass: bool, self_label: int, self_pass: bool) -> int | None:
    """The label a clip trains on, or None, written out case by case (docs/training.md: pseudo-label sources)."""
    if source == "clip":
        return clip_label if clip_pass else None
    if source == "self":
        return self_label if self_pass else None
    if clip_pass and self_pass:
        return clip_label if clip_label == self_label else None  # agree: that label; disagree: dropped
    if clip_pass:
        return clip_label
    if self_pass:
        return self_label
    return None


def self_table(keys, labels, confs, epoch: int = 1) -> SelfLabels:
    keys = torch.as_tensor(keys, dtype=torch.int64)
    order = keys.argsort()
    return SelfLabels(keys=keys[order], label=torch.as_tensor(labels)[order],
                      confidence=torch.as_tensor(confs, dtype=torch.float32)[order], epoch=epoch)


def test_combination_rule_matches_a_naive_loop_on_every_case():
    # every combination of (clip passes, self passes, labels agree), and confidences exactly at the thresholds
    cases = list(itertools.product([True, False], [True, False], [True, False]))
    gamma_c, self_gamma = 0.5, 0.75  # exact in float32: the at-threshold cases test "strictly above"
    clip_label = torch.tensor([1] * len(cases) + [2, 0])
    self_label = torch.tensor([1 if agree else 3 for _, _, agree in cases] + [2, 1])
    clip_conf = torch.tensor([0.9 if cp else 0.3 for cp, _, _ in cases] + [gamma_c, 0.95])
    self_conf = torch.tensor([0.85 if sp else 0.5 for _, sp, _ in cases] + [0.99, self_gamma])  # == threshold: fails
    b = replace(batch(len(clip_label), 3), pseudo_label=clip_label, pseudo_confidence=clip_conf)
    table = self_table(b.key.flip(0), self_label.flip(0), self_conf.flip(0))  # stored in another order
    assert isinstance(PSEUDO_LABEL_SOURCES, Registry) and set(PSEUDO_LABEL_SOURCES) == {"clip", "self", "clip+self"}
    for name in PSEUDO_LABEL_SOURCES:
        t = target_labels(PSEUDO_LABEL_SOURCES[name], b, table, gamma_c, self_gamma)
        for i in range(len(clip_label)):
            expected = naive_rule(name, int(clip_label[i]), float(clip_conf[i]) > gamma_c, int(self_label[i]),
                                  float(self_conf[i]) > self_gamma)
            assert bool(t.use[i]) == (expected is not None), (name, i)
            if expected is not None:
                assert int(t.label[i]) == expected, (name, i)
        conflicts = [cp and sp and not agree and name != "clip" for cp, sp, agree in cases]  # clip never looks at self
        assert t.conflict.tolist() == conflicts + [False, False]
    both = target_labels(PSEUDO_LABEL_SOURCES["clip+self"], b, table, gamma_c, self_gamma)
    assert both.use.sum() == 7 and both.clip_pass[-2:].tolist() == [False, True] and both.self_pass[-2:].tolist() == [True, False]
    # before the first refresh: self uses nothing, clip+self is clip exactly
    for name, ref in (("self", torch.zeros_like(b.pseudo_confidence, dtype=torch.bool)), ("clip+self", clip_conf > gamma_c)):
        t = target_labels(PSEUDO_LABEL_SOURCES[name], b, None, gamma_c, self_gamma)
        assert torch.equal(t.use, ref)
    with pytest.raises(KeyError, match="not in the self-training table"):
        target_labels(PSEUDO_LABEL_SOURCES["self"], replace(b, key=b.key + 1), table, gamma_c, self_gamma)


def test_video_key_is_stable_and_spread():
    assert video_key("target/jump_000") == video_key("target/jump_000")
    keys = {video_key(f"v{i}") for i in range(10_000)}
    assert len(keys) == 10_000 and min(keys) >= 0 and max(keys) < 2**63
    # a pinned value: the key must not change between processes, runs or versions (checkpoints hold keys)
    assert video_key("abc") == int.from_bytes(__import__("hashlib").blake2b(b"abc", digest_size=8).digest(), "little") & (2**63 - 1)


def test_self_gives_exactly_zero_target_loss_before_the_first_refresh_and_clip_self_is_clip():
    lrn = learner(pseudo_labels="self", gamma_c=0.0)  # every clip passes CLIP's threshold
    for step in range(3):
        m = lrn.step_once([(batch(4, 10 + step), batch(4, 20 + step))])
        assert m["loss_target"] == 0.0 and m["pseudo_label_pass_rate"] == 0.0 and m["pseudo_self_pass_rate"] == 0.0
        assert m["pseudo_clip_pass_rate"] == 1.0 and math.isfinite(m["loss"])
    a, b = learner(pseudo_labels="clip"), learner(pseudo_labels="clip+self")
    for step in range(3):
        ma, mb = (x.step_once([(batch(4, 10 + step), batch(4, 20 + step))]) for x in (a, b))
        assert ma == mb


def confident(lrn, scale: float = 400.0):
    """Sharpen the fresh model's head so its softmax is far from uniform."""
    with torch.no_grad():
        lrn.adapter.model.head.weight.mul_(scale)
        lrn.adapter.model.head.bias.copy_(torch.linspace(-0.5, 0.5, K))
    return lrn


def test_after_a_refresh_the_pass_rate_and_the_target_loss_are_the_model_s_own():
    src, tgt = batch(4, 1), batch(8, 2)
    probe = confident(learner(selector="full"))
    ref = probe.adapter.predict(tgt.frames, tgt.energy)["probs"]  # independent: eval-mode predict, not the refresh
    conf_ref, label_ref = ref.max(-1)
    gamma = float(conf_ref.sort().values[3:5].mean())  # between the 4th and 5th: half the clips pass
    lrn = confident(learner(selector="full", pseudo_labels="self", self_gamma=gamma, gamma_c=0.0))
    keys, labels, confs = predict_clips(lrn.adapter, [tgt])
    torch.testing.assert_close(confs[keys.argsort()], conf_ref[tgt.key.argsort()])
    lrn.self_labels = self_table(keys, labels, confs)
    with torch.no_grad():
        logits = lrn.adapter.model(model_input(tgt.frames), None)  # full tokens, no drop path: as in the step
    m = lrn.step_once([(src, tgt)])
    passing = conf_ref > gamma
    assert 0 < int(passing.sum()) < len(tgt)
    assert m["pseudo_self_pass_rate"] == pytest.approx(float(passing.double().mean()))
    assert m["pseudo_label_pass_rate"] == m["pseudo_self_pass_rate"] and m["pseudo_clip_pass_rate"] == 1.0
    expected = F.cross_entropy(logits[passing], label_ref[passing]).item()
    assert m["loss_target"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("source", ["clip", "self", "clip+self"])
def test_target_labels_never_reach_a_loss(source):
    """Permuting (or removing) the target clips' true labels leaves every number of every step unchanged."""
    runs = []
    for relabel in (lambda lab: lab, lambda lab: lab.roll(1), lambda lab: torch.full_like(lab, -1)):  # as is, permuted, absent
        lrn = learner(pseudo_labels=source, gamma_c=0.5, self_gamma=0.2, hflip=True, accum_steps=2)
        tgts = [batch(4, 50 + i) for i in range(4)]
        keys, labels, confs = predict_clips(lrn.adapter, tgts)
        lrn.self_labels = self_table(keys, labels, confs)
        out = []
        for step in range(2):
            micro = [(batch(4, 100 * step + i), tgts[2 * step + i]) for i in range(2)]
            micro = [(s, replace(t, label=relabel(t.label))) for s, t in micro]
            out.append(lrn.step_once(micro))
        runs.append(out)
    assert all(r == runs[0] for r in runs[1:])
    if source != "clip":
        assert runs[0][1]["pseudo_self_pass_rate"] > 0 and runs[0][1]["loss_target"] > 0


# ----------------------------------------------------------------------------- class-balanced selection (CBST)

def naive_class_balanced(labels: list[int], confs: list[float], fraction: float) -> set[int]:
    """Per predicted class: sort its clips by confidence, highest first (ties: earlier clip first), take
    ceil(fraction * count) of them."""
    chosen = set()
    for k in set(labels):
        members = sorted((i for i in range(len(labels)) if labels[i] == k), key=lambda i: (-confs[i], i))
        chosen |= set(members[:math.ceil(round(fraction * len(members), 9))])
    return chosen


def test_class_balanced_selection_against_a_naive_sort_per_class():
    assert set(SELF_SELECTIONS) == {"threshold", "class_balanced"}
    g = torch.Generator().manual_seed(3)
    for trial in range(40):
        n, k = int(torch.randint(1, 60, (), generator=g)), int(torch.randint(1, 6, (), generator=g))
        labels = torch.randint(0, k, (n,), generator=g)
        confs = torch.rand(n, generator=g)
        if trial % 4 == 0:  # ties in confidence: the earlier clip first
            confs = (confs * 4).round() / 4
        for fraction in (0.05, 0.2, 0.3, 0.5, 0.999, 1.0):
            passed = SELF_SELECTIONS["class_balanced"](labels, confs, 0.9, fraction)
            expected = naive_class_balanced(labels.tolist(), confs.tolist(), fraction)
            assert set(passed.nonzero().squeeze(1).tolist()) == expected, (trial, fraction)
            # by construction every predicted class passes at least one clip: pass rate > 0 at any fraction > 0
            assert set(labels[passed].tolist()) == set(labels.tolist())
    # the threshold rule: strictly above self_gamma, the fraction unused
    confs = torch.tensor([0.5, 0.9, 0.91, 0.2])
    assert SELF_SELECTIONS["threshold"](torch.zeros(4, dtype=torch.long), confs, 0.9, 0.1).tolist() == [False, False, True, False]


def test_the_class_balanced_fraction_grows_per_refresh_up_to_its_maximum():
    assert [self_fraction(r, 0.2, 0.1, 0.5) for r in range(1, 7)] == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.5, 0.5])
    assert [self_fraction(r, 0.3, 0.0, 0.3) for r in (1, 5)] == [0.3, 0.3]
    with pytest.raises(ValueError, match="refreshes count from 1"):
        self_fraction(0, 0.2, 0.1, 0.5)
    # the refresh index from completed epochs: every 2nd epoch refreshes, so epoch 2 is the first refresh
    cfg = TrainConfig(self_selection="class_balanced", self_refresh_epochs=2, self_fraction_start=0.25,
                      self_fraction_step=0.25, self_fraction_max=0.8)
    assert [cfg.self_fraction(e) for e in (2, 4, 6, 8)] == pytest.approx([0.25, 0.5, 0.75, 0.8])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("self_selection", "cbst", r"train.self_selection 'cbst' is not a registered self-training selection rule"),
    ("self_fraction_start", 0.0, r"train.self_fraction_start must be in \(0, 1\]"),
    ("self_fraction_max", 1.5, r"train.self_fraction_max must be in \(0, 1\]"),
    ("self_fraction_step", -0.1, r"train.self_fraction_step must be in \[0, 1\]"),
    ("self_fraction_start", 0.9, r"train.self_fraction_start=0.9 exceeds train.self_fraction_max=0.5"),
])
def test_bad_self_selection_settings_fail_at_profile_load_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("results-tiny", [f"train.{key}={value!r}".replace("'", '"')])


def test_a_class_balanced_refresh_passes_labels_from_the_first_refresh_and_the_step_uses_them(tiny_shards):
    shards = ShardSet.open(tiny_shards)
    adapter = tiny_adapter(shards.classes)
    b = batch_from_table(shards.read("target", "train", BATCH_COLUMNS))
    conf, label = adapter.predict(b.frames, b.energy)["probs"].max(-1)  # independent reference
    src = PSEUDO_LABEL_SOURCES["self"]
    # self_gamma 1.0: the threshold rule passes nothing; the class-balanced one passes the top third per class
    labels, metrics = refresh_self_labels(adapter, shards, Dist(), source=src, gamma_c=1.0, self_gamma=1.0, epoch=1,
                                          batch_size=4, selection="class_balanced", fraction=1 / 3)
    expected = naive_class_balanced(label.tolist(), conf.tolist(), 1 / 3)
    got_label, got_pass = labels.passing(b.key, 1.0)
    assert torch.equal(got_label, label) and set(got_pass.nonzero().squeeze(1).tolist()) == expected
    assert metrics["pseudo/self_pass_rate"] == pytest.approx(len(expected) / 6) and metrics["pseudo/self_pass_rate"] > 0
    assert metrics["pseudo/self_fraction"] == pytest.approx(1 / 3)
    truth = b.label
    passing = sorted(expected)
    assert metrics["pseudo/used_accuracy"] == pytest.approx(float((label[passing] == truth[passing]).double().mean()))
    # the rule's decision travels in the checkpoint and is what a step trains on
    restored = SelfLabels.from_state(labels.state_dict())
    assert torch.equal(restored.passed, labels.passed)
    tgt = replace(b, pseudo_confidence=torch.zeros(6))
    assert torch.equal(target_labels(src, tgt, restored, 1.0, 1.0).use, got_pass)


# ----------------------------------------------------------------------------- on real shards

TINY_MODEL = dict(size="vit_tiny", embed_dim=48, depth=2, num_heads=3, drop_path=0.0)


def tiny_adapter(classes, seed: int = 0, scale: float = 300.0) -> LMFTClassifier:
    torch.manual_seed(seed)
    model = ModelConfig(**TINY_MODEL, num_classes=len(classes), clip=CLIP)
    adapter = LMFTClassifier.build(model, PolicyConfig(), SelectorConfig(name="lmft"), classes)
    with torch.no_grad():
        adapter.model.head.weight.mul_(scale)
    return adapter


def test_refresh_on_shards_matches_an_independent_prediction(tiny_shards):
    shards = ShardSet.open(tiny_shards)
    adapter = tiny_adapter(shards.classes)
    table = shards.read("target", "train", BATCH_COLUMNS)
    b = batch_from_table(table)
    probs = adapter.predict(b.frames, b.energy)["probs"]  # independent reference: every clip in one batch
    conf, label = probs.max(-1)
    gamma = float(conf.median())
    src = PSEUDO_LABEL_SOURCES["clip+self"]
    labels, metrics = refresh_self_labels(adapter, shards, Dist(), source=src, gamma_c=0.3, self_gamma=gamma, epoch=2,
                                          batch_size=4)  # 6 clips in batches of 4 and 2
    assert len(labels) == 6 and labels.epoch == 2 and bool((labels.keys[1:] > labels.keys[:-1]).all())
    got_label, got_conf = labels.lookup(b.key)
    assert torch.equal(got_label, label)
    torch.testing.assert_close(got_conf, conf, rtol=1e-5, atol=1e-6)
    passing = conf > gamma
    assert metrics["pseudo/self_pass_rate"] == pytest.approx(float(passing.double().mean()))
    truth = b.label
    assert (truth >= 0).all()  # the demo's target-train rows carry labels (monitoring only)
    assert metrics["pseudo/self_accuracy_all"] == pytest.approx(float((label == truth).double().mean()))
    if passing.any():
        assert metrics["pseudo/self_accuracy"] == pytest.approx(float((label[passing] == truth[passing]).double().mean()))
    assert metrics["pseudo/self_clip_agreement"] == pytest.approx(float((label == b.pseudo_label).double().mean()))
    clip_pass = b.pseudo_confidence > 0.3
    use = [naive_rule("clip+self", int(b.pseudo_label[i]), bool(clip_pass[i]), int(label[i]), bool(passing[i])) for i in range(6)]
    assert metrics["pseudo/used_pass_rate"] == pytest.approx(sum(u is not None for u in use) / 6)
    used = [(u, int(truth[i])) for i, u in enumerate(use) if u is not None]
    if used:
        assert metrics["pseudo/used_accuracy"] == pytest.approx(sum(u == t for u, t in used) / len(used))
    # without target labels: no accuracy is reported, the rest is
    report = pseudo_label_report(src, b.pseudo_label, b.pseudo_confidence, 0.3, torch.full((6,), -1), label, conf, gamma)
    assert not any("accuracy" in k for k in report) and report["pseudo/labelled_fraction"] == 0.0
    assert report["pseudo/self_pass_rate"] == metrics["pseudo/self_pass_rate"]


def _refresh_worker(rank: int, world: int, init_file: str, shards_path: str, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        shards = ShardSet.open(shards_path)
        adapter = tiny_adapter(shards.classes)  # the same seed: the same model on both ranks, as DDP keeps it
        labels, metrics = refresh_self_labels(adapter, shards, Dist(rank, world), source=PSEUDO_LABEL_SOURCES["self"],
                                              gamma_c=0.8, self_gamma=0.5, epoch=1, batch_size=2)
        out[rank] = {"state": {k: v.tolist() if torch.is_tensor(v) else v for k, v in labels.state_dict().items()},
                     "metrics": metrics}
    finally:
        dist.destroy_process_group()


def test_every_rank_holds_the_same_table_after_a_refresh(tiny_shards, tmp_path):
    import torch.multiprocessing as mp

    with mp.get_context("spawn").Manager() as manager:  # never fork the test process (it may hold a Ray driver)
        out = manager.dict()
        mp.spawn(_refresh_worker, args=(2, str(tmp_path / "pg"), str(tiny_shards), out), nprocs=2, join=True)
        out = dict(out)
    assert out[0]["state"] == out[1]["state"]  # bit-identical (each clip predicted by one rank, summed with zeros)
    shards = ShardSet.open(tiny_shards)
    single, _ = refresh_self_labels(tiny_adapter(shards.classes), shards, Dist(), source=PSEUDO_LABEL_SOURCES["self"],
                                    gamma_c=0.8, self_gamma=0.5, epoch=1, batch_size=2)
    assert out[0]["state"]["keys"] == single.keys.tolist() and out[0]["state"]["label"] == single.label.tolist()
    np.testing.assert_allclose(out[0]["state"]["confidence"], single.confidence.numpy(), rtol=1e-5)
    drop = {"pseudo/self_refresh_s"}
    assert {k: v for k, v in out[0]["metrics"].items() if k not in drop} == {k: v for k, v in out[1]["metrics"].items() if k not in drop}


class ListSink:
    def __init__(self):
        self.rows: list[tuple[int, dict]] = []

    def add(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def take(self):
        return []


def test_a_resumed_run_keeps_the_self_labels_of_its_checkpoint(tiny_shards, tmp_path):
    from lmft_core.train.checkpoint import load_checkpoint
    from lmft_core.train.loop import MemoryEpochData, run_worker
    from lmft_core.train.run import prepare

    profile = load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + [
        "train.workers=1", "train.pseudo_labels='self'", "train.self_gamma=0.0", "train.self_refresh_epochs=1",
        "train.hflip=false", "train.eval_every_epochs=10", "train.evaluate=[]"])
    job, _ = prepare(profile, tiny_shards, tmp_path)
    shards = ShardSet.open(job.shards)

    def run(checkpoint=None, stop_after=None):
        sink, saved = ListSink(), []

        def report(metrics, folder):
            saved.append((metrics, load_checkpoint(folder)))

        run_worker(job, Dist(), MemoryEpochData(shards, job.train.batch_size, job.train.seed), checkpoint, report,
                   sink=sink, stop_after_epochs=stop_after)
        return sink, saved

    whole_sink, whole = run()
    assert [int(m["epoch"]) for m, _ in whole] == [1, 2, 3]
    tables = [c["learner"]["self_labels"] for _, c in whole]
    assert tables[0]["epoch"] == 1 and tables[1]["epoch"] == 2 and tables[2]["epoch"] == 2  # no refresh after the last
    assert "pseudo/self_pass_rate" in whole[0][0] and "pseudo/self_pass_rate" not in whole[2][0]
    assert len(tables[0]["keys"]) == 6

    _, first = run(stop_after=1)
    ckpt = first[-1][1]
    assert torch.equal(ckpt["learner"]["self_labels"]["keys"], tables[0]["keys"])
    assert torch.equal(ckpt["learner"]["self_labels"]["label"], tables[0]["label"])
    resumed_sink, resumed = run(checkpoint=ckpt)
    assert resumed[0][0]["resumed_self_labels_epoch"] == 1.0
    # the steps after the resume are those of the uninterrupted run: the table came back with the checkpoint
    def steps(rows):
        return {s: m for s, m in rows if "train/loss_target" in m}

    after = steps(resumed_sink.rows)
    assert after and all(m["train/pseudo_self_pass_rate"] == 1.0 and m["train/loss_target"] > 0 for m in after.values())
    for s, m in after.items():
        for key in ("train/loss_target", "train/loss_source", "train/pseudo_self_pass_rate", "train/tau"):
            assert m[key] == pytest.approx(steps(whole_sink.rows)[s][key], abs=1e-6), (s, key)
    for key in ("keys", "label", "confidence"):
        torch.testing.assert_close(resumed[-1][1]["learner"]["self_labels"][key], tables[2][key])
    # before the first refresh the run's first epoch had no target loss (self_gamma 0 passes everything after it)
    first_epoch = [m for s, m in whole_sink.rows if "train/loss_target" in m][: job.steps_per_epoch]
    assert all(m["train/loss_target"] == 0.0 for m in first_epoch)
