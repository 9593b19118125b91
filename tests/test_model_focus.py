"""The adafocus selector: window -> tokens against a naive loop, the policy gradient against its closed form,
window draws against their softmax (statistically), the glance's FLOPs against torch.utils.flop_counter,
keep-all equivalence with full tokens, temporal selection, early exit, bad input at profile load."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig, selection_flops
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.model.focus import GlanceNet, glance_flops, place_windows, top_segments, window_keep, window_logits
from lmft_core.run_config import load_profile
from lmft_core.shards.batch import model_input

CLIP = ClipConfig(num_frames=8, image_size=32, tubelet=2, patch=8)  # grid (4, 4, 4)
K = 4


def adapter(**selector) -> LMFTClassifier:
    torch.manual_seed(0)
    model = ModelConfig(size="vit_tiny", num_classes=K, clip=CLIP, embed_dim=48, depth=2, num_heads=3, drop_path=0.0)
    return LMFTClassifier.build(model, PolicyConfig(), SelectorConfig(name="adafocus", **selector),
                                [f"c{i}" for i in range(K)])


def clips(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (n, 8, 32, 32, 3), dtype=torch.uint8, generator=g)
    return frames, torch.rand((n, *CLIP.grid), generator=g)


def test_window_keep_matches_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    for (n_h, n_w), (w_h, w_w) in [((4, 4), (2, 2)), ((5, 7), (3, 2)), ((14, 14), (7, 7)), ((3, 3), (3, 3))]:
        position = torch.stack([torch.randint(0, n_h - w_h + 1, (6, 3), generator=g),
                                torch.randint(0, n_w - w_w + 1, (6, 3), generator=g)], dim=-1)
        keep = window_keep(position, (w_h, w_w), (n_h, n_w))
        naive = torch.zeros(6, 3, n_h, n_w, dtype=torch.bool)
        for b, t in itertools.product(range(6), range(3)):
            top, left = position[b, t].tolist()
            for i, j in itertools.product(range(n_h), range(n_w)):
                naive[b, t, i, j] = top <= i < top + w_h and left <= j < left + w_w
        assert torch.equal(keep, naive)
        assert (keep.flatten(2).sum(-1) == w_h * w_w).all()


def test_window_logits_are_the_sums_of_the_scores_they_cover():
    scores = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    logits = window_logits(scores, (2, 3))
    assert logits.shape == (2, 3, 4, 4)
    for i, j in itertools.product(range(4), range(4)):
        torch.testing.assert_close(logits[..., i, j], scores[..., i:i + 2, j:j + 3].sum((-1, -2)))


def test_the_policy_gradient_of_a_placement_is_its_closed_form():
    """d log pi(p) / d score_(i,j) = 1[(i,j) in window p] - sum_q pi(q) 1[(i,j) in window q]."""
    window, grid = (2, 3), (4, 5)
    scores = torch.randn(3, 2, *grid, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    position, log_prob = place_windows(window_logits(scores, window).double(), sample=False)
    log_prob.sum().backward()
    probs = window_logits(scores, window).detach().flatten(2).softmax(-1)  # (B, N_t, P)
    p_w = grid[1] - window[1] + 1
    all_positions = torch.tensor([[q // p_w, q % p_w] for q in range(probs.shape[-1])])
    in_window = window_keep(all_positions, window, grid).double()  # (P, N_h, N_w)
    expected = window_keep(position, window, grid).double() - torch.einsum("btp,phw->bthw", probs, in_window)
    torch.testing.assert_close(scores.grad, expected)
    # and against a finite difference of one score
    eps, (b, t, i, j) = 1e-6, (1, 0, 2, 3)
    shifted = scores.detach().clone()
    shifted[b, t, i, j] += eps
    log_p = window_logits(shifted, window).flatten(2).log_softmax(-1)
    flat = position[b, t, 0] * p_w + position[b, t, 1]
    finite = (log_p[b, t, flat] - window_logits(scores.detach(), window).flatten(2).log_softmax(-1)[b, t, flat]) / eps
    assert float(scores.grad[b, t, i, j]) == pytest.approx(float(finite), abs=1e-5)


def test_drawn_windows_follow_the_softmax_of_their_logits():
    logits = torch.tensor([[[[0.0, 1.0], [2.0, -1.0]]]])  # one segment, 2 x 2 positions
    n = 20_000
    position, _ = place_windows(logits.expand(n, 1, 2, 2), sample=True, generator=torch.Generator().manual_seed(4))
    flat = position[:, 0, 0] * 2 + position[:, 0, 1]
    counts = torch.bincount(flat, minlength=4).double()
    expected = logits.flatten().softmax(0).double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.3  # the 99.9% quantile of chi-square with 3 degrees of freedom


def test_the_glance_flops_are_torch_flop_counters():
    for clip, channels in [(CLIP, 16), (ClipConfig(num_frames=16, image_size=64), 8), (ClipConfig(num_frames=4, image_size=56, patch=8), 5)]:
        net = GlanceNet(clip, num_classes=7, channels=channels)
        video = torch.randn(2, 3, clip.num_frames, clip.image_size, clip.image_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(video)
        assert counter.get_total_flops() == 2 * glance_flops(clip, 7, channels)


def test_a_window_covering_the_whole_grid_is_full_tokens():
    ad = adapter(window=(4, 4)).eval()
    frames, energy = clips(3)
    video = model_input(frames)
    logits, sel = ad(video, energy)
    full, full_sel = ad(video, energy, selector=SelectorConfig(name="full"))
    assert sel.keep.all() and torch.equal(sel.keep, full_sel.keep)
    torch.testing.assert_close(logits, full)
    ad.train()
    logits, sel = ad(video, energy, torch.Generator().manual_seed(0))  # a drawn window covers it all too
    assert sel.keep.all() and float(sel.log_prob.detach().abs().max()) == 0.0  # one position: probability 1


def test_a_window_keeps_its_share_of_each_segment_and_predict_reports_it():
    ad = adapter(window=(2, 3))
    frames, energy = clips(4)
    out = ad.predict(frames, energy)
    assert out["probs"].shape == (4, K) and torch.allclose(out["keep_ratio"], torch.full((4,), 6 / 16))
    _, sel = ad(model_input(frames), energy, torch.Generator().manual_seed(0))
    kept = sel.keep.flatten(2).sum(-1)
    assert (kept == 6).all()
    rows, cols = sel.keep.any(-1), sel.keep.any(-2)  # the kept tokens of a segment form one 2 x 3 rectangle
    assert (rows.sum(-1) == 2).all() and (cols.sum(-1) == 3).all()


def test_temporal_selection_keeps_the_segments_the_glance_is_most_confident_on():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 5, K, generator=g)
    keep = top_segments(logits, 2)
    confidence = logits.softmax(-1).amax(-1)
    for b in range(6):
        best = sorted(range(5), key=lambda t: -float(confidence[b, t]))[:2]
        assert set(keep[b].nonzero().flatten().tolist()) == set(best)
    ad = adapter(window=(2, 2), segments=3).eval()
    frames, energy = clips(3)
    _, sel = ad(model_input(frames), energy)
    assert (sel.keep.flatten(2).any(-1).sum(-1) == 3).all() and torch.allclose(1 - sel.discard_rate, torch.full((3,), 3 * 4 / 64))


def test_early_exit_answers_with_the_glance_and_counts_only_its_compute():
    frames, energy = clips(4)
    video = model_input(frames)
    never = adapter(exit_threshold=1.0).eval()
    _, sel = never(video, energy)
    assert not sel.exited.any()  # a softmax of 4 classes from a fresh glance is far from 1
    confidence = sel.glance_logits.softmax(-1).amax(-1)
    threshold = float(confidence.detach().median())
    ad = adapter(exit_threshold=threshold).eval()
    logits, sel = ad(video, energy)
    exited = confidence >= threshold
    assert torch.equal(sel.exited, exited) and 0 < int(exited.sum()) < 4
    torch.testing.assert_close(logits[exited], sel.glance_logits[exited])
    assert not sel.keep[exited].any() and (sel.keep[~exited].flatten(1).sum(1) == 16).all()
    torch.testing.assert_close(logits[~exited], ad.model(video[~exited], sel.keep[~exited]))
    flops = selection_flops(ad.model.config, sel.keep, sel.exited, sel.glance_flops)
    glance = glance_flops(CLIP, K, 16)
    assert (flops[exited] == glance).all()
    assert (flops[~exited] == selection_flops(ad.model.config, sel.keep[~exited]) + glance).all()
    ad.train()  # no exit in training: every clip trains the ViT
    assert not ad(video, energy, torch.Generator().manual_seed(0))[1].exited.any()


@pytest.mark.parametrize("override, key", [
    ("selector.window=[5, 2]", "selector.window"),  # the demo grid is 4 x 4
    ("selector.window=[0, 2]", "selector.window"),
    ("selector.segments=0", "selector.segments"),
    ("selector.segments=9", "selector.segments"),  # 8 segments
    ("selector.exit_threshold=0.0", "selector.exit_threshold"),
    ("selector.exit_threshold=1.5", "selector.exit_threshold"),
])
def test_bad_adafocus_settings_fail_at_profile_load_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_profile("demo", ['selector.name="adafocus"', override])
    assert override in str(err.value)


def test_adafocus_from_a_profile_evaluates_random_matched_to_it():
    profile = load_profile("demo", ['selector.name="adafocus"', "selector.window=[2, 4]", "selector.exit_threshold=0.9",
                                    "selector.first_segment='keep'"])
    assert profile.selector.label == "adafocus-w2x4-exit0.9" and profile.selector.window == (2, 4)
    labels = [s.label for s in profile.train.evaluate_for(profile.selector)]
    assert "random-match-adafocus" in labels and "random-match-lmft" not in labels
    matched = next(s for s in profile.train.evaluate_for(profile.selector) if s.match)
    assert (matched.window, matched.exit_threshold) == ((2, 4), 0.9)  # the run's window, not the default's
    with pytest.raises(ConfigError, match="train.evaluate"):
        load_profile("demo", ['train.evaluate=[{name="adafocus"}]'])


def test_a_saved_adafocus_model_predicts_as_the_trained_one(tmp_path):
    """The model store logs the classifier pickled (mlflow.pytorch, serialization_format="pickle"): the
    same round trip, without the store."""
    ad = adapter(window=(2, 3), segments=3, exit_threshold=0.3).eval()
    torch.save(ad, tmp_path / "model.pth", pickle_protocol=4)
    loaded = torch.load(tmp_path / "model.pth", weights_only=False).eval()
    frames, energy = clips(4, seed=7)
    want, got = ad.predict(frames, energy), loaded.predict(frames, energy)
    assert type(loaded.glance).__name__ == "GlanceNet" and loaded.selector_config == ad.selector_config
    assert ((want["keep_ratio"] == 0) | (want["keep_ratio"] == 3 * 6 / 64)).all()  # exited, or 3 windows of 6
    for key in ("probs", "label", "keep_ratio"):
        torch.testing.assert_close(got[key], want[key])


def test_evaluation_counts_the_glance_in_gflops_per_clip():
    from lmft_core.shards.batch import ClipBatch
    from lmft_core.train.evaluate import evaluate

    ad = adapter(window=(2, 2), segments=2)
    frames, energy = clips(4, seed=3)
    batch = ClipBatch(frames=frames, energy=energy, label=torch.tensor([0, 1, 2, 3]), pseudo_label=torch.zeros(4, dtype=torch.long),
                      pseudo_confidence=torch.ones(4), clip_probs=torch.full((4, K), 1 / K), key=torch.arange(4))
    results = evaluate(ad, [batch], [ad.selector_config, SelectorConfig(name="full")])
    vit = float(selection_flops(ad.model.config, torch.ones(1, 4, 4, 4, dtype=torch.bool)[:, :2, :2, :2])[0])  # 8 tokens
    focus = results["adafocus-w2x2-seg2"]
    assert focus.discard_rate == pytest.approx(1 - 8 / 64)
    assert focus.gflops_per_clip == pytest.approx((vit + glance_flops(CLIP, K, 16)) / 1e9)
    full = float(selection_flops(ad.model.config, torch.ones(1, 4, 4, 4, dtype=torch.bool))[0])
    assert results["full"].gflops_per_clip == pytest.approx(full / 1e9)  # no glance for the full-token selector


def test_evaluation_over_exit_thresholds_equals_the_glance_and_the_vit_combined_by_hand():
    """What the early exit's accuracy-against-compute curve (benchmarks/results.py, ``exit_curve``) is made of: the
    product's evaluation at each threshold, against one pass of the glance and one of the ViT (no exit) combined per
    threshold by hand."""
    from dataclasses import replace

    from lmft_core.shards.batch import ClipBatch
    from lmft_core.train.evaluate import evaluate

    ad = adapter(window=(2, 2)).eval()
    frames, energy = clips(12, seed=5)
    labels = torch.arange(12) % K
    batches = [ClipBatch(frames=frames[i:i + 5], energy=energy[i:i + 5], label=labels[i:i + 5],
                         pseudo_label=torch.zeros(len(labels[i:i + 5]), dtype=torch.long),
                         pseudo_confidence=torch.ones(len(labels[i:i + 5])),
                         clip_probs=torch.full((len(labels[i:i + 5]), K), 1 / K), key=torch.arange(i, i + len(labels[i:i + 5])))
               for i in range(0, 12, 5)]  # batches of 5, 5 and 2
    with torch.no_grad():
        vit_logits, sel = ad(model_input(frames), energy)  # no exit configured: every clip runs the ViT
    confidence = sel.glance_logits.softmax(-1).amax(-1)
    ordered = sorted(confidence.tolist())  # thresholds between two clips' confidences: no clip sits on one
    thresholds = [ordered[0] / 2, *((ordered[i] + ordered[i + 1]) / 2 for i in (2, 5, 8)), None]  # all exit, some, none
    results = evaluate(ad, batches, [replace(ad.selector_config, exit_threshold=t) for t in thresholds])
    vit, glance = float(selection_flops(ad.model.config, sel.keep)[0]), glance_flops(CLIP, K, 16)
    rates = []
    for t, r in zip(thresholds, results.values()):
        exited = confidence >= (t if t is not None else 2.0)
        pred = torch.where(exited, sel.glance_logits.argmax(-1), vit_logits.argmax(-1))
        assert r.top1 == pytest.approx(float((pred == labels).double().mean()))
        assert r.exit_rate == pytest.approx(float(exited.double().mean()))
        assert r.gflops_per_clip == pytest.approx((glance + vit * (1 - r.exit_rate)) / 1e9)
        rates.append(r.exit_rate)
    assert rates[0] == 1.0 and rates[-1] == 0.0 and 0 < rates[1] < 1  # the curve spans every clip exiting to none
    assert rates == sorted(rates, reverse=True)
