"""Learned threshold policies (one threshold, one per temporal segment) and token selectors: closed forms,
torch.distributions, statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, SigmoidTransform, TransformedDistribution

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.model import (
    SELECTOR_POLICY,
    PolicyConfig,
    SegmentThresholdPolicy,
    SelectorConfig,
    ThresholdPolicy,
    flat_metrics,
    keep_above,
    tau_text,
)

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
    assert SelectorConfig(name="random", match="lmft", first_segment="next").label == "random-match-lmft.first-next"
    with pytest.raises(ConfigError, match="selector.first_segment 'last'"):
        SelectorConfig(first_segment="last")


# ----------------------------------------------------------------------------- per-segment thresholds

N_T = GRID[0]  # 4 temporal segments: 3 thresholds (segments 1..3)
SEG_MU = torch.tensor([-0.8, 0.2, 1.1])
SEG_LOG_SIGMA = torch.tensor([-1.2, -0.5, -0.9])


def segment_policy(mu: torch.Tensor = SEG_MU, log_sigma: torch.Tensor = SEG_LOG_SIGMA) -> SegmentThresholdPolicy:
    policy = SelectorConfig(name="lmft-segment").resolve_policy(PolicyConfig(), ClipConfig(num_frames=8, image_size=32,
                                                                                          tubelet=2, patch=8)).build()
    assert isinstance(policy, SegmentThresholdPolicy) and policy.mu.shape == (N_T - 1,)
    with torch.no_grad():
        policy.mu.copy_(mu)
        policy.log_sigma.copy_(log_sigma)
    return policy


def logit_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> TransformedDistribution:
    return TransformedDistribution(Normal(mu, log_sigma.exp()), [SigmoidTransform()])


def test_segment_policy_shapes_defaults_and_state_dict():
    policy = PolicyConfig(kind="segment", num_segments=4, mu=0.2, log_sigma=-0.3).build()
    assert policy.kind == "segment" and policy.shape == (3,)
    assert policy.mu.tolist() == pytest.approx([0.2] * 3) and policy.log_sigma.tolist() == pytest.approx([-0.3] * 3)
    assert {k: tuple(v.shape) for k, v in policy.state_dict().items()} == {
        "mu": (3,), "log_sigma": (3,), "baseline": (), "step": (), "tau_hat": (3,), "tau_hat_at": (2, 3)}
    # the scalar policy keeps its keys and shapes
    assert {k: tuple(v.shape) for k, v in ThresholdPolicy().state_dict().items()} == {
        "mu": (), "log_sigma": (), "baseline": (), "step": (), "tau_hat": (), "tau_hat_at": (2,)}
    # round trip: the vectors come back
    trained = segment_policy()
    trained.commit(-2.5)
    tau_hat = trained.inference_tau()
    fresh = PolicyConfig(kind="segment", num_segments=4).build()
    fresh.load_state_dict(trained.state_dict())
    for name in ("mu", "log_sigma", "baseline", "step", "tau_hat"):
        assert torch.equal(getattr(fresh, name), getattr(trained, name)), name
    assert torch.equal(fresh.inference_tau(), tau_hat)
    with pytest.raises(ConfigError, match="policy.num_segments = N_t >= 2"):
        PolicyConfig(kind="segment").build()
    with pytest.raises(ConfigError, match="policy.kind 'vector' is not a registered threshold policy; known: "
                                          r"\['scalar', 'segment'\]"):
        PolicyConfig(kind="vector")


def test_segment_log_prob_is_the_sum_over_segments_of_torch_distributions():
    policy = segment_policy()
    tau = torch.tensor([[0.05, 0.5, 0.9], [0.3, 0.31, 0.99], [0.7, 0.02, 0.6]])
    ref_mu, ref_ls = SEG_MU.clone().requires_grad_(), SEG_LOG_SIGMA.clone().requires_grad_()
    ref = logit_normal(ref_mu, ref_ls).log_prob(tau).sum(-1)  # (3,) draws -> one log pi each
    ours = policy.log_prob(tau)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    one = policy.log_prob(tau[0])
    assert one.dim() == 0 and one.item() == pytest.approx(ref[0].item(), abs=1e-5)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(policy.mu.grad, ref_mu.grad)
    torch.testing.assert_close(policy.log_sigma.grad, ref_ls.grad)
    with pytest.raises(ValueError, match="one threshold per segment"):
        policy.log_prob(torch.tensor([0.5, 0.5]))


def test_segment_samples_follow_each_segments_logit_normal_independently():
    """20000 draws: per segment, logit(tau) has mean mu_s and std sigma_s, tau the logit-normal's mean
    (quadrature); segments are uncorrelated. Tolerances: 4 standard errors."""
    policy = segment_policy()
    g = torch.Generator().manual_seed(0)
    n = 20000
    tau = torch.stack([policy.sample(g) for _ in range(n)]).double()
    assert tau.shape == (n, 3) and ((tau > 0) & (tau < 1)).all()
    u = torch.logit(tau)
    sigma = SEG_LOG_SIGMA.double().exp()
    assert ((u.mean(0) - SEG_MU.double()).abs() < 4 * sigma / math.sqrt(n)).all(), u.mean(0)
    assert ((u.std(0) - sigma).abs() < 4 * sigma / math.sqrt(2 * n)).all(), u.std(0)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    w = torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi) * (grid[1] - grid[0])
    for s in range(3):
        t = torch.sigmoid(SEG_MU[s].double() + sigma[s] * grid)
        mean, std = (t * w).sum(), ((t**2 * w).sum() - (t * w).sum() ** 2).sqrt()
        assert abs(tau[:, s].mean() - mean) < 4 * std / math.sqrt(n), (s, tau[:, s].mean(), mean)
        assert abs(tau[:, s].std() - std) < 0.05 * std  # 5 % (SE of a std is ~0.5 % here)
    corr = torch.corrcoef(u.T)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 4 / math.sqrt(n)


def test_segment_tau_hat_uses_the_same_seeded_draws_in_every_segment():
    policy = segment_policy()
    tau_hat = policy.inference_tau()
    eps = torch.randn(100, generator=torch.Generator().manual_seed(0))
    expected = torch.stack([torch.sigmoid(SEG_MU[s] + SEG_LOG_SIGMA[s].exp() * eps).mean() for s in range(3)])
    torch.testing.assert_close(tau_hat, expected, atol=1e-7, rtol=0)
    # a segment equal to a scalar policy has the scalar policy's tau_hat, exactly (the same eps_k)
    for s in range(3):
        scalar = ThresholdPolicy(PolicyConfig(mu=SEG_MU[s].item(), log_sigma=SEG_LOG_SIGMA[s].item()))
        assert scalar.inference_tau().item() == tau_hat[s].item()
    equal = segment_policy(torch.full((3,), 0.3), torch.full((3,), -0.7))
    assert len(set(equal.inference_tau().tolist())) == 1
    with torch.no_grad():
        policy.mu[1] += 1.0  # recomputed when a parameter moves: only that segment changes
    moved = policy.inference_tau()
    assert moved[1] > tau_hat[1] + 0.1 and moved[0] == tau_hat[0] and moved[2] == tau_hat[2]


def test_segment_reinforce_gradient_moves_each_mu_toward_its_sampled_logit():
    policy = segment_policy()
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        policy.zero_grad()
        tau = policy.sample(g)
        u = torch.logit(tau)
        mu0 = policy.mu.detach().clone()
        policy.surrogate(tau, torch.tensor(2.0)).backward()  # a positive advantage
        # d/dmu_s of -(A) * sum_s log pi_s = -A (u_s - mu_s) / sigma_s^2: segment by segment
        torch.testing.assert_close(policy.mu.grad, -2.0 * (u - mu0) / policy.sigma.detach() ** 2, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            policy.mu -= 0.001 * policy.mu.grad
        assert torch.equal(torch.sign(policy.mu.detach() - mu0), torch.sign(u - mu0))
        with torch.no_grad():
            policy.mu.copy_(mu0)


def test_segment_reinforce_learns_a_different_threshold_per_segment():
    """Reward -sum_s 10 (tau_s - target_s)^2 with targets 0.8, 0.2, 0.5: each segment's tau_hat moves
    towards its own target, from the one summed reward per step."""
    torch.manual_seed(0)
    policy = segment_policy(torch.zeros(3), torch.full((3,), -1.0))
    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1)
    target = torch.tensor([0.8, 0.2, 0.5])
    for _ in range(600):
        tau = policy.sample(g)
        loss = policy.reinforce_loss(tau, -10.0 * ((tau - target) ** 2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tau_hat = policy.inference_tau()
    # seeds 0-3 of g give mu (1.35..1.46, -1.48..-1.42, -0.02..0.03) and tau_hat within 0.013 of the targets
    assert policy.mu[0].item() > 1.0 and policy.mu[1].item() < -1.0 and abs(policy.mu[2].item()) < 0.3, policy.mu
    assert ((tau_hat - target).abs() < 0.05).all(), tau_hat


def naive_segment_keep(energy: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    keep = torch.zeros_like(energy, dtype=torch.bool)
    for b, t, h, w in torch.cartesian_prod(*(torch.arange(n) for n in energy.shape)).tolist():
        keep[b, t, h, w] = t == 0 or energy[b, t, h, w].item() > tau[t - 1].item()
    return keep


def test_lmft_segment_selector_keeps_energy_above_each_segments_threshold():
    policy = segment_policy(torch.tensor([-1.5, 0.0, 1.5]))
    select = SelectorConfig(name="lmft-segment").build(policy)
    e = energies(3, seed=5)
    sel = select(e, generator=torch.Generator().manual_seed(0))
    assert sel.tau.shape == (3,) and len(set(sel.tau.tolist())) == 3
    assert torch.equal(sel.keep, naive_segment_keep(e, sel.tau))
    assert sel.keep[:, 0].all()
    with pytest.raises(ValueError, match="one per segment"):
        keep_above(e, torch.tensor([0.5, 0.5]))
    policy.eval()
    fixed = select(e)
    assert torch.equal(fixed.tau, policy.inference_tau()) and torch.equal(fixed.keep, naive_segment_keep(e, fixed.tau))
    # the selector and the policy must be of one kind
    with pytest.raises(ValueError, match="'lmft-segment' selector needs a SegmentThresholdPolicy"):
        SelectorConfig(name="lmft-segment").build(ThresholdPolicy())
    with pytest.raises(ValueError, match="'lmft' selector needs a ThresholdPolicy .*got a 'segment' one"):
        SelectorConfig(name="lmft").build(policy)


def test_random_matched_to_lmft_segment_drops_as_many_tokens_per_clip():
    policy = segment_policy(torch.tensor([-1.0, 0.5, 0.0])).eval()
    e = energies(40, seed=6)
    cfg = SelectorConfig(name="random", match="lmft-segment")
    assert cfg.label == "random-match-lmft-segment" and cfg.policy_kind == "segment" and not cfg.learns_policy
    sel = cfg.build(policy)(e, generator=torch.Generator().manual_seed(0))
    ref = SelectorConfig(name="lmft-segment").build(policy)(e)
    assert torch.equal(sel.num_kept, ref.num_kept) and not torch.equal(sel.keep, ref.keep)
    assert sel.keep[:, 0].all()


def test_selector_policy_kinds_and_labels():
    assert SELECTOR_POLICY == {"lmft": "scalar", "lmft-segment": "segment"}
    lmft_seg = SelectorConfig(name="lmft-segment")
    assert (lmft_seg.label, lmft_seg.policy_kind, lmft_seg.learns_policy) == ("lmft-segment", "segment", True)
    assert (SelectorConfig().policy_kind, SelectorConfig().learns_policy) == ("scalar", True)
    full = SelectorConfig(name="full")
    assert full.policy_kind == "scalar" and not full.learns_policy and not full.uses_policy
    assert SelectorConfig(name="random", match="lmft-segment").uses_policy and lmft_seg.uses_policy


def test_flat_metrics_and_policy_values():
    assert flat_metrics({"tau_hat": [0.2, 0.4], "step": 3, "mu": 0.5}) == pytest.approx(
        {"tau_hat": 0.3, "tau_hat/seg1": 0.2, "tau_hat/seg2": 0.4, "step": 3.0, "mu": 0.5})
    values = segment_policy().values()
    assert values["mu"] == pytest.approx(SEG_MU.tolist()) and values["sigma"] == pytest.approx(SEG_LOG_SIGMA.exp().tolist())
    assert values["tau_hat"] == pytest.approx(segment_policy().inference_tau().tolist()) and values["step"] == 0
    scalar = ThresholdPolicy().values()
    assert all(isinstance(scalar[k], float) for k in ("mu", "log_sigma", "sigma", "baseline", "tau_hat"))
    assert tau_text(0.41234) == "0.412" and tau_text([0.1, 0.25]) == "[0.100, 0.250]"


def test_segment_thresholds_under_the_next_rule_against_a_naive_loop():
    e = energies(3, seed=9)
    tau = torch.tensor([0.2, 0.5, 0.8])  # segments 1..3; segment 0 carries segment 1's energy and threshold
    keep = keep_above(e.clone().index_copy_(1, torch.tensor([0]), e[:, 1:2]), tau, forced_first=False)
    for b in range(3):
        for t in range(4):
            ref = e[b, max(t, 1)] > tau[max(t, 1) - 1]
            assert torch.equal(keep[b, t], ref)


def test_selector_labels_are_valid_mlflow_metric_names():
    """Labels name metrics (``eval_target/<label>/top1``): MLflow allows only alphanumerics, _ - . space : /."""
    from mlflow.utils.validation import _validate_metric_name

    for cfg in (SelectorConfig(), SelectorConfig(name="lmft-segment"), SelectorConfig(name="random", match="lmft-segment"),
                SelectorConfig(name="threshold", calibrate=True, first_segment="next"), SelectorConfig(name="topk", first_segment="next"),
                SelectorConfig(name="threshold", tau=0.25), SelectorConfig(name="random", drop_rate=0.3, first_segment="next")):
        _validate_metric_name(f"eval_target/{cfg.label}/top1")


# ----------------------------------------------------------------------------- the rloo estimator


def test_rloo_advantage_against_a_naive_loop():
    from lmft_core.model.policy import ESTIMATORS, rloo_advantage

    assert set(ESTIMATORS) == {"paper", "rloo"} and ESTIMATORS["rloo"].per_clip and not ESTIMATORS["paper"].per_clip
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7, 32):
        r = torch.randn(n, generator=g, dtype=torch.float64) * 5 - 3
        naive = [r[i].item() - sum(r[j].item() for j in range(n) if j != i) / (n - 1) for i in range(n)]
        torch.testing.assert_close(rloo_advantage(r), torch.tensor(naive, dtype=torch.float64))
        # a common shift of every reward (the step's shared loss level) changes no advantage
        torch.testing.assert_close(rloo_advantage(r + 100.0), rloo_advantage(r))
    with pytest.raises(ValueError, match="n >= 2"):
        rloo_advantage(torch.tensor([1.0]))
    with pytest.raises(ConfigError, match="policy.estimator 'reinforce' is not a registered threshold estimator"):
        PolicyConfig(estimator="reinforce")


@pytest.mark.parametrize("kind", ["scalar", "segment"])
def test_rloo_surrogate_gradient_in_closed_form(kind):
    """d/dmu of -(1/n) sum_i A_i log pi(tau_i) is -(1/n) sum_i A_i (u_i - mu) / sigma^2; d/dlog sigma is
    -(1/n) sum_i A_i ((u_i - mu)^2 / sigma^2 - 1), per segment (u = logit tau)."""
    from lmft_core.model.policy import rloo_advantage

    config = PolicyConfig(mu=0.2, log_sigma=-0.8, kind=kind, num_segments=4 if kind == "segment" else 0)
    policy = config.build()
    n = 6
    tau = policy.sample(torch.Generator().manual_seed(5), n=n)
    assert tau.shape == (n, *policy.shape)
    adv = rloo_advantage(torch.linspace(-2.0, 1.0, n) ** 2)
    policy.surrogate(tau, adv).backward()
    u, a = torch.logit(tau.double()), adv.double().view(n, *([1] * len(policy.shape)))
    sigma2 = math.exp(-1.6)
    grad_mu = -(a * (u - 0.2) / sigma2).mean(0)
    grad_ls = -(a * ((u - 0.2) ** 2 / sigma2 - 1)).mean(0)
    torch.testing.assert_close(policy.mu.grad.double(), grad_mu, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(policy.log_sigma.grad.double(), grad_ls, rtol=1e-4, atol=1e-6)


def bandit(estimator: str, start: float, steps: int = 300, n: int = 16, seed: int = 0) -> float:
    """tau_hat after ``steps`` Adam steps on a bandit whose reward per draw is -10 (tau - 0.3)^2 plus a large
    noise shared by the step's draws (the loss level every tau of a step shares) and a small one per draw."""
    from lmft_core.model.policy import ESTIMATORS

    policy = PolicyConfig(mu=math.log(start / (1 - start)), log_sigma=-1.0, estimator=estimator).build()
    opt = torch.optim.Adam(policy.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(seed)
    est = ESTIMATORS[estimator]
    for _ in range(steps):
        tau = policy.sample(g, n=n) if est.per_clip else policy.sample(g)
        shared = 3.0 * torch.randn((), generator=g)
        reward = -10 * (tau - 0.3) ** 2 + shared + 0.05 * torch.randn(tau.shape, generator=g)
        if not est.per_clip:
            reward = reward.mean()
        opt.zero_grad()
        policy.surrogate(tau, est.advantage(policy, reward)).backward()
        opt.step()
        policy.commit(reward.mean())
    return policy.inference_tau().item()


def test_rloo_learns_a_bandit_from_both_sides():
    ends = [bandit("rloo", start, seed=seed) for start in (0.7, 0.15) for seed in (0, 1)]
    assert all(abs(t - 0.3) < 0.05 for t in ends), ends
    # the paper's estimator on the same bandit (one draw, one noisy reward per step) is still off after as many steps
    paper = [bandit("paper", start, seed=seed) for start in (0.7, 0.15) for seed in (0, 1)]
    assert max(abs(t - 0.3) for t in paper) > 0.1, paper


def test_keep_above_per_clip_against_a_loop():
    e = energies(5, seed=3)
    tau = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.0])
    per = keep_above(e, tau, per_clip=True)
    for i in range(5):
        assert torch.equal(per[i], keep_above(e[i:i + 1], float(tau[i]))[0])
    seg = torch.rand(5, GRID[0] - 1, generator=torch.Generator().manual_seed(1))
    per = keep_above(e, seg, forced_first=False, per_clip=True)
    for i in range(5):
        assert torch.equal(per[i], keep_above(e[i:i + 1], seg[i], forced_first=False)[0])
    with pytest.raises(ValueError, match="per-clip tau must be"):
        keep_above(e, torch.rand(4), per_clip=True)
