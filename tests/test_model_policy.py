"""Learned threshold policy and token selectors: closed forms, torch.distributions, statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, SigmoidTransform, TransformedDistribution

from lmft_core.config import ConfigError
from lmft_core.model import PolicyConfig, SelectorConfig, ThresholdPolicy, keep_above

GRID = (4, 4, 4)  # 64 tokens, 16 in the first temporal segment


def energies(b: int, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, *GRID), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- policy


def test_log_prob_equals_torch_distributions():
    policy = ThresholdPolicy(PolicyConfig(mu=0.3, log_sigma=-0.5))
    tau = torch.tensor([0.05, 0.3, 0.5, 0.77, 0.99])
    ref_mu = torch.tensor(0.3, requires_grad=True)
    ref_ls = torch.tensor(-0.5, requires_grad=True)
    ref = TransformedDistribution(Normal(ref_mu, ref_ls.exp()), [SigmoidTransform()]).log_prob(tau)
    ours = policy.log_prob(tau)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(policy.mu.grad, ref_mu.grad)
    torch.testing.assert_close(policy.log_sigma.grad, ref_ls.grad)


def test_initial_parameters_and_samples_follow_the_logit_normal():
    policy = ThresholdPolicy()
    assert policy.mu.item() == pytest.approx(0.01) and policy.log_sigma.item() == pytest.approx(-1.0)
    g = torch.Generator().manual_seed(0)
    u = torch.logit(torch.stack([policy.sample(g) for _ in range(4000)]).double())
    # logit(tau) ~ N(0.01, e^-2): mean within 4 standard errors (4 * 0.368 / sqrt(4000) = 0.023)
    assert abs(u.mean().item() - 0.01) < 0.023
    assert abs(u.std().item() - math.exp(-1.0)) < 0.02


def test_reward_closed_form():
    policy = ThresholdPolicy(PolicyConfig(loss_weight=10.0))
    r = policy.reward([torch.tensor(1.0), 2.0], [torch.tensor([0.2, 0.3]), 0.5])
    assert r.item() == pytest.approx(-10 * 1.0 - (1 - 0.25) - 10 * 2.0 - (1 - 0.5))
    with pytest.raises(ValueError, match="one of each per domain"):
        policy.reward([1.0, 2.0], [0.5])


def test_reinforce_surrogate_and_moving_baseline():
    policy = ThresholdPolicy()
    tau = torch.tensor(0.6)
    loss0 = policy.reinforce_loss(tau, -5.0)  # first reward initialises b: advantage 0
    assert loss0.item() == 0.0 and policy.baseline.item() == pytest.approx(-5.0)
    loss1 = policy.reinforce_loss(tau, -3.0)
    assert loss1.item() == pytest.approx(-(-3.0 - -5.0) * policy.log_prob(tau).item(), rel=1e-6)
    assert policy.baseline.item() == pytest.approx(0.9 * -5.0 + 0.1 * -3.0)
    policy.reinforce_loss(tau, -1.0)
    assert policy.baseline.item() == pytest.approx(0.9 * (0.9 * -5.0 + 0.1 * -3.0) + 0.1 * -1.0)


@pytest.mark.parametrize("target,direction", [(0.85, +1), (0.15, -1)])
def test_reinforce_moves_mu_toward_the_rewarded_threshold(target, direction):
    torch.manual_seed(0)
    policy = ThresholdPolicy()
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    tau_hat0 = policy.inference_tau().item()
    for _ in range(400):
        tau = policy.sample(g)
        loss = policy.reinforce_loss(tau, -10.0 * (tau - target) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = policy.mu.item() - 0.01
    assert direction * moved > 0.5, moved
    tau_hat = policy.inference_tau().item()
    assert direction * (tau_hat - tau_hat0) > 0.1
    assert abs(tau_hat - target) < abs(tau_hat0 - target)


def test_tau_hat_is_deterministic_cached_and_close_to_the_expectation():
    policy = ThresholdPolicy(PolicyConfig(mu=0.4, log_sigma=-0.7))
    a = policy.inference_tau()
    torch.manual_seed(123)  # the global RNG does not matter: K=100 samples from a fixed seed
    b = policy.inference_tau()
    assert a.item() == b.item()
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(100, generator=g)
    assert a.item() == pytest.approx(torch.sigmoid(0.4 + math.exp(-0.7) * eps).mean().item(), abs=1e-7)
    # E[sigmoid(u)] by a fine quadrature; K=100 Monte Carlo: std(tau) < 0.15 -> 4 SE = 0.06
    u = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    w = torch.exp(-0.5 * u**2) / math.sqrt(2 * math.pi) * (u[1] - u[0])
    expected = (torch.sigmoid(0.4 + math.exp(-0.7) * u) * w).sum().item()
    assert abs(a.item() - expected) < 0.06
    # stored in the state dict, recomputed when the parameters move
    fresh = ThresholdPolicy()
    fresh.load_state_dict(policy.state_dict())
    assert fresh.tau_hat.item() == a.item() and fresh.inference_tau().item() == a.item()
    with torch.no_grad():
        policy.mu.add_(1.0)
    assert policy.inference_tau().item() > a.item() + 0.1


def test_threshold_is_sampled_in_training_and_fixed_in_eval():
    policy = ThresholdPolicy()
    g = torch.Generator().manual_seed(0)
    assert len({policy.threshold(g).item() for _ in range(5)}) == 5
    policy.eval()
    assert len({policy.threshold(g).item() for _ in range(5)}) == 1


# ----------------------------------------------------------------------------- selectors


def naive_threshold_keep(energy: torch.Tensor, tau: float) -> torch.Tensor:
    keep = torch.zeros_like(energy, dtype=torch.bool)
    for b, t, h, w in torch.cartesian_prod(*(torch.arange(n) for n in energy.shape)).tolist():
        keep[b, t, h, w] = t == 0 or energy[b, t, h, w].item() > tau
    return keep


def test_threshold_selector_against_a_naive_loop():
    e = energies(3)
    sel = SelectorConfig(name="threshold", tau=0.6).build()(e)
    assert torch.equal(sel.keep, naive_threshold_keep(e, 0.6))
    assert sel.tau.item() == pytest.approx(0.6)
    expected_rate = 1 - naive_threshold_keep(e, 0.6).flatten(1).float().mean(1)
    torch.testing.assert_close(sel.discard_rate, expected_rate)


def test_lmft_selector_uses_the_policy_threshold():
    policy = ThresholdPolicy()
    select = SelectorConfig(name="lmft").build(policy)
    e = energies(2)
    sel = select(e, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sel.keep, naive_threshold_keep(e, sel.tau.item()))
    policy.eval()
    assert select(e).tau.item() == policy.inference_tau().item()
    with pytest.raises(ValueError, match="needs a ThresholdPolicy"):
        SelectorConfig(name="lmft").build()


def test_full_selector_keeps_everything():
    sel = SelectorConfig(name="full").build()(energies(2))
    assert sel.keep.all() and torch.equal(sel.discard_rate, torch.zeros(2))


def test_topk_selector_keeps_the_highest_energies():
    e = energies(3, seed=2)
    sel = SelectorConfig(name="topk", keep_ratio=0.5).build()(e)
    assert sel.num_kept.tolist() == [32, 32, 32]
    for b in range(3):
        rest = e[b, 1:].flatten()
        kept_rest = sel.keep[b, 1:].flatten()
        assert sel.keep[b, 0].all()
        assert rest[kept_rest].min() > rest[~kept_rest].max()  # 16 highest of the other 48
        assert kept_rest.sum() == 16
    small = SelectorConfig(name="topk", keep_ratio=0.1).build()(e)
    assert small.num_kept.tolist() == [16, 16, 16]  # the first segment is kept beyond the budget


def test_random_selector_rate_and_uniformity():
    """Habit 6: every droppable token is dropped with the same probability, within a stated tolerance."""
    select = SelectorConfig(name="random", drop_rate=0.3).build()
    sel = select(energies(4000), generator=torch.Generator().manual_seed(0))
    n_drop = round(0.3 * 64)
    assert sel.keep[:, 0].all()
    # each video drops exactly round(0.3 * 64) tokens: its discard rate is 0.3 within 1/(2N)
    assert torch.allclose(sel.discard_rate, torch.full((4000,), n_drop / 64))
    assert abs(sel.discard_rate.mean().item() - 0.3) <= 1 / (2 * 64)
    # per-position drop frequency outside the first segment: p = 19/48, SE = sqrt(p(1-p)/4000) = 0.0077;
    # tolerance 5 SE = 0.039 for each of the 48 positions
    freq = (~sel.keep[:, 1:]).float().mean(0).flatten()
    p = n_drop / 48
    assert (freq - p).abs().max() < 0.039
    # the choices differ between videos and between calls
    assert not torch.equal(sel.keep[0], sel.keep[1])


def test_random_selector_matches_another_selectors_rate():
    e = energies(50, seed=4)
    matched = SelectorConfig(name="random", match="threshold", tau=0.7).build()
    sel = matched(e, generator=torch.Generator().manual_seed(0))
    ref = SelectorConfig(name="threshold", tau=0.7).build()(e)
    assert torch.equal(sel.num_kept, ref.num_kept)
    assert not torch.equal(sel.keep, ref.keep)
    assert sel.keep[:, 0].all()


def test_selector_config_errors():
    with pytest.raises(ConfigError, match="selector.name"):
        SelectorConfig(name="tome")
    with pytest.raises(ConfigError, match="selector.match"):
        SelectorConfig(name="topk", match="lmft")
    with pytest.raises(ConfigError, match="selector.tau"):
        SelectorConfig(name="threshold", tau=1.5)
    with pytest.raises(ValueError, match="energy must be"):
        keep_above(torch.rand(2, 16), 0.5)


def test_configs_build_from_profile_tables():
    from lmft_core.config import from_dict
    from lmft_core.model import ModelConfig

    model = from_dict(ModelConfig, {"size": "vit_tiny", "attention": "sdpa_split", "drop_path": 0, "embed_dim": 96},
                      "demo.toml [model]")
    assert model.widths.embed_dim == 96 and model.drop_path == 0.0 and (model.num_classes, model.clip) == (0, None)
    assert from_dict(PolicyConfig, {"mu": 0.1, "loss_weight": 5}).loss_weight == 5.0
    assert from_dict(SelectorConfig, {"name": "random", "match": "lmft"}).match == "lmft"
    with pytest.raises(ConfigError, match=r"demo.toml \[model\].*unknown key"):
        from_dict(ModelConfig, {"sise": "vit_tiny"}, "demo.toml [model]")
    with pytest.raises(ConfigError, match="not a multiple of num_heads"):
        ModelConfig(size="vit_tiny", embed_dim=100)


# ----------------------------------------------------------------------------- first-segment rule


def naive_next_rule_keep(energy: torch.Tensor, tau: float) -> torch.Tensor:
    """The ``next`` rule by hand: segment 0 scored by segment 1's energy, no forced keep, >= 1 token."""
    b_, n_t, n_h, n_w = energy.shape
    keep = torch.zeros(energy.shape, dtype=torch.bool)
    for b in range(b_):
        best, best_at = -1.0, None
        for t in range(n_t):
            for h in range(n_h):
                for w in range(n_w):
                    v = energy[b, max(t, 1), h, w].item()
                    keep[b, t, h, w] = v > tau
                    if v > best:
                        best, best_at = v, (t, h, w)
        if not keep[b].any():
            keep[b][best_at] = True
    return keep


def test_next_first_segment_rule_against_a_naive_loop():
    e = energies(4, seed=7)
    e[:, 0] = 1.0  # as preprocessing stores it: the paper's rule
    for tau in (0.3, 0.8):
        sel = SelectorConfig(name="threshold", tau=tau, first_segment="next").build()(e)
        assert torch.equal(sel.keep, naive_next_rule_keep(e, tau))
        assert not sel.keep[:, 0].all()  # the first segment is not kept wholesale
    # a clip with nothing above tau keeps exactly its highest-energy token
    sel = SelectorConfig(name="threshold", tau=0.999, first_segment="next").build()(e)
    assert sel.num_kept.tolist() == [1, 1, 1, 1]
    assert torch.equal(sel.keep, naive_next_rule_keep(e, 0.999))
    lmft = SelectorConfig(name="lmft", first_segment="next").build(ThresholdPolicy())
    s = lmft(e, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s.keep, naive_next_rule_keep(e, s.tau.item()))


def test_next_rule_budgets_and_calibration():
    e = energies(200, seed=8)
    e[:, 0] = 1.0
    top = SelectorConfig(name="topk", keep_ratio=0.1, first_segment="next").build()(e)
    assert top.num_kept.tolist() == [round(0.1 * 64)] * 200  # no first-segment floor any more
    rnd = SelectorConfig(name="random", drop_rate=0.9, first_segment="next").build()(e, torch.Generator().manual_seed(0))
    assert rnd.num_kept.tolist() == [64 - round(0.9 * 64)] * 200 and not rnd.keep[:, 0].all()
    # calibration: the calibrated tau keeps the asked-for ratio under each rule (ties are impossible here)
    for rule in ("keep", "next"):
        cfg = SelectorConfig(name="threshold", calibrate=True, keep_ratio=0.4, first_segment=rule).calibrated(e)
        kept = cfg.build()(e).keep.float().mean().item()
        assert abs(kept - 0.4) < 1 / 64, rule
    # keep ratio 0.2 is below the first segment's share (0.25): only the next rule can reach it
    keep_rule = SelectorConfig(name="threshold", calibrate=True, keep_ratio=0.2).calibrated(e)
    assert keep_rule.build()(e).keep.float().mean().item() == pytest.approx(0.25)
    nxt = SelectorConfig(name="threshold", calibrate=True, keep_ratio=0.2, first_segment="next").calibrated(e)
    assert abs(nxt.build()(e).keep.float().mean().item() - 0.2) < 1 / 64
    assert SelectorConfig(name="random", match="lmft", first_segment="next").label == "random-match-lmft+first-next"
    with pytest.raises(ConfigError, match="selector.first_segment 'last'"):
        SelectorConfig(first_segment="last")
