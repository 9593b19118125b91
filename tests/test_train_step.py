"""One training step without Ray: one tau per step, L_t = 0 when nothing passes gamma_c, one REINFORCE
update per optimizer step (also under accumulation and retries), the policy's own parameter group,
golden first losses, and the policy identical on every worker (two gloo processes)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from lmft_core.augment import background_mix, color_jitter, hflip, label_map_tensor
from lmft_core.config import ClipConfig, ConfigError
from lmft_core.model import ModelConfig, PolicyConfig, Selection, SelectorConfig, keep_above
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.batch import ClipBatch, model_input
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.step import Learner, focus_loss, lr_factor, param_groups, step_generator

CLIP = ClipConfig(num_frames=8, image_size=32, tubelet=2, patch=8)  # grid (4, 4, 4): 64 tokens
K = 4


def model_config(**kw) -> ModelConfig:
    return ModelConfig(**({"size": "vit_tiny", "num_classes": K, "clip": CLIP, "embed_dim": 48, "depth": 2,
                           "num_heads": 3, "drop_path": 0.0} | kw))


def batch(n: int, seed: int, confidence: float | None = None) -> ClipBatch:
    g = torch.Generator().manual_seed(seed)
    return ClipBatch(frames=torch.randint(0, 256, (n, 8, 32, 32, 3), dtype=torch.uint8, generator=g),
                     energy=torch.rand((n, *CLIP.grid), generator=g), label=torch.randint(0, K, (n,), generator=g),
                     pseudo_label=torch.randint(0, K, (n,), generator=g),
                     pseudo_confidence=torch.rand(n, generator=g) if confidence is None else torch.full((n,), confidence),
                     clip_probs=torch.rand(n, K, generator=g).softmax(-1), key=torch.arange(n) + 1000 * seed)


def learner(selector: str = "lmft", seed: int = 0, dist: Dist = Dist(), estimator: str = "paper", device: str = "cpu",
            **train) -> Learner:
    cfg = TrainConfig(**({"epochs": 2, "batch_size": 4, "lr": 1e-3, "warmup_epochs": 0.0, "hflip": False,
                          "gamma_c": 0.5} | train))
    torch.manual_seed(seed)
    adapter = LMFTClassifier.build(model_config(), PolicyConfig(estimator=estimator), SelectorConfig(name=selector, drop_rate=0.5),
                            [f"c{i}" for i in range(K)])
    return Learner(adapter, cfg, steps_per_epoch=10, dist=dist, device=device)


def micro(step: int, accum: int = 1, **kw) -> list[tuple[ClipBatch, ClipBatch]]:
    return [(batch(4, 1000 * step + 2 * i, **kw), batch(4, 1000 * step + 2 * i + 1, **kw)) for i in range(accum)]


def test_one_selection_call_and_one_tau_for_source_and_target_of_all_micro_batches(monkeypatch):
    lrn = learner(accum_steps=3)
    calls = []
    original = lrn.adapter.selection

    def spy(energy, generator=None, selector=None, video=None):
        assert video is None  # only adafocus reads the clips
        sel = original(energy, generator, selector, video)
        calls.append((energy.clone(), sel))
        return sel

    monkeypatch.setattr(lrn.adapter, "selection", spy)
    batches = micro(0, accum=3)
    m = lrn.step_once(batches)
    assert len(calls) == 1  # source and target of the 3 micro-batches in one call
    energy, sel = calls[0]
    assert energy.shape[0] == 3 * (4 + 4)
    torch.testing.assert_close(sel.keep, keep_above(energy, sel.tau))  # one tau for every clip
    assert m["tau"] == pytest.approx(float(sel.tau))
    # tau is a function of (seed, step) only: the same on every rank, resume-safe
    g = step_generator(0, 0)
    expected = torch.sigmoid(torch.tensor(0.01) + math.exp(-1.0) * torch.randn((), generator=g)).clamp(1e-6, 1 - 1e-6)
    assert float(sel.tau) == pytest.approx(float(expected), abs=1e-6)


def test_target_loss_is_the_cross_entropy_of_confident_clips_and_exactly_zero_without_them():
    lrn = learner(selector="full", gamma_c=0.5)
    src, tgt = batch(4, 1), replace(batch(4, 2), pseudo_confidence=torch.tensor([0.9, 0.2, 0.7, 0.5]))
    m = lrn.step_once([(src, tgt)])
    # reference: the same model before the step is not available, so recompute on a fresh copy
    ref = learner(selector="full", gamma_c=0.5)
    with torch.no_grad():
        logits = ref.adapter.model(model_input(tgt.frames), None)
    passing = [i for i in range(4) if tgt.pseudo_confidence[i] > 0.5]
    expected = sum(F.cross_entropy(logits[i:i + 1], tgt.pseudo_label[i:i + 1]).item() for i in passing) / max(1, len(passing))
    assert passing == [0, 2]  # strictly above gamma_c
    assert m["loss_target"] == pytest.approx(expected, rel=1e-4)
    assert m["pseudo_label_pass_rate"] == pytest.approx(len(passing) / 4)

    none = learner(gamma_c=0.99)
    for step in range(6):  # no target clip passes: L_t is 0, never NaN, and the policy stays finite
        m = none.step_once(micro(step, confidence=0.5))
        assert m["loss_target"] == 0.0 and m["pseudo_label_pass_rate"] == 0.0
        assert all(math.isfinite(m[k]) for k in ("reward", "mu", "sigma", "baseline", "tau_hat"))


def test_only_target_clips_whose_label_passes_are_forwarded_and_the_others_change_nothing():
    src, tgt = batch(4, 1), replace(batch(4, 2), pseudo_confidence=torch.tensor([0.9, 0.2, 0.7, 0.5]))
    other = replace(tgt, frames=batch(4, 3).frames.clone())
    other.frames[[0, 2]] = tgt.frames[[0, 2]]  # the passing clips as they were, the others' content changed
    seen, results = [], []
    for target in (tgt, other):
        lrn = learner(gamma_c=0.5, hflip=False)
        forward = lrn.model.forward
        lrn.model.forward = lambda video, keep, *a, **kw: seen.append(video.shape[0]) or forward(video, keep, *a, **kw)
        m = lrn.step_once([(src, target)])
        results.append((m, [p.detach().clone() for p in lrn.adapter.parameters()]))
    assert seen == [4 + 2, 4 + 2]  # the 4 source clips and the 2 passing target clips
    (m0, p0), (m1, p1) = results
    for key in ("loss_source", "loss_target", "discard_rate_target", "reward"):
        assert m0[key] == pytest.approx(m1[key], rel=1e-6, abs=1e-7)
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_exactly_one_reinforce_and_baseline_update_per_optimizer_step_under_accumulation():
    cfg = {"accum_steps": 3, "policy_lr": 0.05}
    lrn = learner(**cfg)
    policy = lrn.adapter.policy
    m0 = lrn.step_once(micro(0, accum=3))
    assert int(policy.step) == 1 and m0["advantage"] == 0.0  # the first reward initialises b: no move yet
    assert float(policy.baseline) == pytest.approx(m0["reward"])
    mu0, b0 = float(policy.mu.detach()), float(policy.baseline)
    m1 = lrn.step_once(micro(1, accum=3))
    assert int(policy.step) == 2
    assert m1["advantage"] == pytest.approx(m1["reward"] - b0, abs=1e-5)
    assert float(policy.baseline) == pytest.approx(0.9 * b0 + 0.1 * m1["reward"], rel=1e-6)
    # Adam after gradients (0, g) (the first advantage is 0): m = 0.1 g / (1 - 0.9^2), v = 0.001 g^2 / (1 - 0.999^2),
    # so mu moves by -lr * (0.1 / 0.19) / sqrt(0.001 / 0.001999) * sign(g), with
    # g = -(R - b) * dlogpi/dmu = -(R - b) * (u - mu) / sigma^2: one update from the one REINFORCE gradient
    u = math.log(m1["tau"] / (1 - m1["tau"]))
    grad = -m1["advantage"] * (u - mu0) / math.exp(-2.0)
    step = 0.05 * (0.1 / 0.19) / math.sqrt(0.001 / (1 - 0.999**2))
    assert float(policy.mu.detach()) - mu0 == pytest.approx(-step * math.copysign(1.0, grad), rel=1e-4)


def test_a_retried_step_updates_the_policy_once(monkeypatch):
    clean, flaky = learner(accum_steps=2), learner(accum_steps=2)
    for lrn in (clean, flaky):
        lrn.step_once(micro(0, accum=2))
    forward = flaky.model.forward
    state = {"calls": 0}

    def fail_on_second_micro_batch(*a, **kw):
        state["calls"] += 1
        if state["calls"] == 2:
            raise RuntimeError("worker hiccup")
        return forward(*a, **kw)

    monkeypatch.setattr(flaky.model, "forward", fail_on_second_micro_batch)
    with pytest.raises(RuntimeError, match="hiccup"):
        flaky.step_once(micro(1, accum=2))
    assert int(flaky.adapter.policy.step) == 1  # nothing committed by the failed attempt
    flaky.step_once(micro(1, accum=2))  # the retry
    clean.step_once(micro(1, accum=2))
    for name in ("mu", "log_sigma", "baseline", "step"):
        torch.testing.assert_close(getattr(flaky.adapter.policy, name), getattr(clean.adapter.policy, name))
    assert flaky.adapter.policy.commit(0.0, step=0) is False  # an old step index changes nothing


def test_policy_has_its_own_group_without_weight_decay_and_stays_fp32_under_autocast():
    lrn = learner(precision="bf16", weight_decay=0.05, policy_lr=0.02)
    groups = {g["name"]: g for g in lrn.optimizer.param_groups}
    assert groups["policy"]["weight_decay"] == 0.0 and groups["policy"]["lr"] == 0.02
    assert groups["model_decay"]["weight_decay"] == 0.05 and groups["model_no_decay"]["weight_decay"] == 0.0
    policy_ids = {id(p) for p in lrn.adapter.policy.parameters()}
    assert {id(p) for p in groups["policy"]["params"]} == policy_ids
    assert not policy_ids & {id(p) for g in ("model_decay", "model_no_decay") for p in groups[g]["params"]}
    assert all(p.ndim >= 2 for p in groups["model_decay"]["params"])
    m = lrn.step_once(micro(0))
    lrn.step_once(micro(1))
    assert lrn.amp_dtype == torch.bfloat16 and math.isfinite(m["loss"])
    assert all(p.dtype == torch.float32 for p in lrn.adapter.policy.parameters())
    assert lrn.adapter.policy.baseline.dtype == torch.float32
    assert lrn.optimizer.param_groups[2]["lr"] == 0.02  # constant: not warmed up or decayed


def test_learning_rate_schedule_is_warmup_then_cosine():
    assert lr_factor(0, 10, 100, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 10, 100, 0.01) == pytest.approx(0.01)


def test_golden_first_losses_of_a_tiny_seeded_run():
    """At initialisation the head is scaled by 1e-3, so every logit is about 0 and the first losses are ln K
    (a closed form); later losses are this seeded run's golden numbers."""
    lrn = learner(gamma_c=0.3)
    losses = [lrn.step_once(micro(step)) for step in range(4)]
    assert losses[0]["loss_source"] == pytest.approx(math.log(K), abs=2e-3)
    assert losses[0]["loss_target"] == pytest.approx(math.log(K), abs=2e-3)
    golden = [1.38628, 1.4056, 1.38893, 1.4268]  # recorded from this seeded run (deterministic on CPU)
    assert [round(m["loss_source"], 4) for m in losses] == pytest.approx(golden, abs=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("precision", "tol"), [("fp32", 2e-3), ("bf16", 3e-2)])
def test_training_steps_on_a_gpu_give_the_cpu_steps_losses(precision, tol):
    """The same seeded run on the GPU (fp32: flex attention, TF32 convolutions; bf16: autocast, varlen where the GPU
    has it) and on the CPU in fp32: the same first threshold and kept tokens (the draws come from CPU generators), and
    the same losses to the precision's tolerance over 4 steps of updates (the policy's updates, from rewards that
    differ by that tolerance, move later thresholds a little)."""
    cpu, gpu = learner(gamma_c=0.3), learner(gamma_c=0.3, device="cuda", precision=precision)
    for step in range(4):
        want, got = cpu.step_once(micro(step)), gpu.step_once(micro(step))
        assert got["tau"] == pytest.approx(want["tau"], abs=1e-6 if step == 0 else 1e-2), step
        if step == 0:
            for key in ("discard_rate_source", "discard_rate_target"):
                assert got[key] == want[key], key
        for key in ("loss_source", "loss_target"):
            assert got[key] == pytest.approx(want[key], abs=tol), (step, key, got[key], want[key])


def test_full_and_random_training_modes_leave_the_policy_parameters_alone():
    for selector in ("full", "random"):
        lrn = learner(selector=selector)
        for step in range(3):
            m = lrn.step_once(micro(step))
        assert float(lrn.adapter.policy.mu.detach()) == pytest.approx(0.01)
        expected_discard = 0.0 if selector == "full" else round(0.5 * 64) / 64
        assert m["discard_rate_source"] == pytest.approx(expected_discard)
        # baselines log only what applies to them: no threshold, so no tau, tau_hat or REINFORCE metrics
        assert not {"tau", "tau_hat", "mu", "sigma", "reward", "advantage", "baseline"} & set(m) and "loss" in m
    assert {"tau", "tau_hat", "mu", "sigma", "reward", "advantage", "baseline"} <= set(learner().step_once(micro(0)))


def test_flip_moves_frames_and_energy_together_and_maps_labels():
    from lmft_core.energy import motion_energy

    b = batch(3, 7)
    flipped = hflip(b, torch.tensor([True, False, True]))
    for i, f in enumerate([True, False, True]):
        ref_frames = b.frames[i].flip(2) if f else b.frames[i]
        assert torch.equal(flipped.frames[i], ref_frames)
        # the energy of the flipped clip is the flipped energy map
        torch.testing.assert_close(motion_energy(flipped.frames[i], 2, 8), motion_energy(b.frames[i], 2, 8).flip(2) if f
                                   else motion_energy(b.frames[i], 2, 8))
        torch.testing.assert_close(flipped.energy[i], b.energy[i].flip(2) if f else b.energy[i])
    mirror = label_map_tensor(("left", "right", "up", "down"), {"left": "right"})
    assert mirror.tolist() == [1, 0, 2, 3]
    b = replace(b, label=torch.tensor([0, 0, 2]), pseudo_label=torch.tensor([1, 1, 3]))
    out = hflip(b, torch.tensor([True, False, True]), mirror)
    assert out.label.tolist() == [1, 0, 2] and out.pseudo_label.tolist() == [0, 1, 3]
    torch.testing.assert_close(out.clip_probs[0], b.clip_probs[0][[1, 0, 2, 3]])
    with pytest.raises(ValueError, match="'sideways' is not a class"):
        label_map_tensor(("left", "right"), {"left": "sideways"})


def test_color_jitter_is_one_gain_per_clip_and_leaves_normalised_energy_almost_unchanged():
    from lmft_core.energy import motion_energy

    g = torch.Generator().manual_seed(0)
    # a smooth, mid-grey clip with a moving bright square: no clipping, a clear energy map
    frames = torch.full((2, 8, 32, 32, 3), 100, dtype=torch.uint8)
    for t in range(8):
        frames[:, t, 4:12, 2 + 3 * t:10 + 3 * t] = 160
    out = color_jitter(frames, 0.4, g)
    assert out.dtype == torch.uint8 and out.shape == frames.shape
    ratio = out[:, :, 20, 20].float() / frames[:, :, 20, 20].float()  # a background pixel over time
    assert torch.allclose(ratio, ratio[:, :1], atol=0.02)  # the same transform for every frame of a clip
    assert not torch.allclose(ratio[0], ratio[1])  # clips differ
    before, after = motion_energy(frames, 2, 8), motion_energy(out, 2, 8)
    assert (after - before).abs().max() < 0.05  # gains cancel in the min-max normalisation (rounding aside)
    assert torch.equal(color_jitter(frames, 0.0, g), frames)


def test_background_mix_blends_a_static_target_scene_and_keeps_the_energy():
    from lmft_core.energy import motion_energy

    g = torch.Generator().manual_seed(0)
    src = torch.full((3, 8, 32, 32, 3), 90, dtype=torch.uint8)
    for t in range(8):  # a bright square moving right
        src[:, t, 10:18, 2 + 3 * t:10 + 3 * t] = 200
    tgt = torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8, generator=g).expand(2, 8, 32, 32, 3).contiguous()
    out = background_mix(src, tgt, 0.6, g)
    assert out.shape == src.shape and out.dtype == torch.uint8
    # a static pixel of the source takes the same blend in every frame of a clip
    assert (out[:, :, 0, 0] == out[:, :1, 0, 0]).all() and not torch.equal(out[:, :, 0, 0], src[:, :, 0, 0])
    # the motion energy of the mixed clip is the source's (a static term adds no difference; 1 - lam cancels)
    assert (motion_energy(out, 2, 8) - motion_energy(src, 2, 8)).abs().max() < 0.03
    assert torch.equal(background_mix(src, tgt, 0.0, g), src)


def test_train_config_is_validated():
    with pytest.raises(ConfigError, match="train.gamma_c must be in"):
        TrainConfig(gamma_c=1.5)
    with pytest.raises(ConfigError, match="train.precision"):
        TrainConfig(precision="fp8")
    groups = param_groups(learner().adapter, TrainConfig())
    assert [g["name"] for g in groups] == ["model_decay", "model_no_decay", "policy"]


# ----------------------------------------------------------------------------- two workers (gloo)

def _worker(rank: int, world: int, init_file: str, out: dict, steps: int, selector: str, estimator: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        lrn = learner(selector=selector, dist=Dist(rank, world), accum_steps=2, estimator=estimator)
        initial = {k: v.clone() for k, v in (lrn.adapter.glance or torch.nn.Module()).state_dict().items()}
        rewards = []
        for step in range(steps):
            if step == steps - 2 and rank == 1:  # drift rank 1's policy (and glance): the next step must undo it
                with torch.no_grad():
                    lrn.adapter.policy.mu.add_(0.5)
                    if lrn.adapter.glance is not None:
                        lrn.adapter.glance.conv1.weight.add_(0.5)
            # every rank sees different clips
            batches = [(batch(4, 10_000 * rank + 100 * step + 2 * i), batch(4, 10_000 * rank + 100 * step + 2 * i + 1))
                       for i in range(2)]
            rewards.append(lrn.step_once(batches).get("reward"))  # none for adafocus (no threshold)
        p = lrn.adapter.policy
        p.inference_tau()
        out[rank] = {**{k: v.tolist() for k, v in p.state_dict().items()},  # every parameter and buffer
                     "rewards": rewards, "ddp": type(lrn.model).__name__,
                     "policy_in_ddp": any(q is p.mu for q in lrn.model.parameters()),
                     "glance": {k: v.tolist() for k, v in (lrn.adapter.glance or torch.nn.Module()).state_dict().items()},
                     "glance_moved": lrn.adapter.glance is not None and any(
                         not torch.equal(a, b) for a, b in zip(lrn.adapter.glance.state_dict().values(), initial.values()))}
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("selector", "estimator"), [("lmft", "paper"), ("lmft-segment", "paper"), ("lmft", "rloo")])
def test_the_policy_is_identical_on_every_worker_after_every_step(tmp_path, selector, estimator):
    import torch.multiprocessing as mp

    steps = 5
    with mp.get_context("spawn").Manager() as manager:  # never fork the test process (it may hold a Ray driver)
        out = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "pg"), out, steps, selector, estimator), nprocs=2, join=True)
        out = dict(out)
    a, b = out[0], out[1]
    keys = ("mu", "log_sigma", "baseline", "step", "tau_hat", "tau_hat_at")
    for key in keys:
        # bit-identical (NaN-free lists compare exactly), after rank 1 was pushed off by 0.5
        assert torch.equal(torch.tensor(a[key]), torch.tensor(b[key])), key
    shape = () if selector == "lmft" else (CLIP.grid[0] - 1,)
    assert tuple(torch.tensor(a["mu"]).shape) == shape and tuple(torch.tensor(a["tau_hat"]).shape) == shape
    assert a["step"] == steps and a["rewards"] == b["rewards"]  # the reward is all-reduced
    assert a["ddp"] == "DistributedDataParallel" and not a["policy_in_ddp"]
    assert (torch.tensor(a["mu"]) != 0.01).all()  # the policy did learn (every segment)


def test_the_adafocus_glance_is_identical_on_every_worker_after_every_step(tmp_path):
    import torch.multiprocessing as mp

    with mp.get_context("spawn").Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "pg"), out, 3, "adafocus", "paper"), nprocs=2, join=True)
        out = dict(out)
    a, b = out[0], out[1]
    assert set(a["glance"]) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "score.weight", "score.bias",
                                "head.weight", "head.bias"}
    for key in a["glance"]:  # bit-identical after rank 1's conv1 was pushed off by 0.5
        assert torch.equal(torch.tensor(a["glance"][key]), torch.tensor(b["glance"][key])), key
    assert a["glance_moved"] and a["step"] == 3 and a["rewards"] == b["rewards"]


def test_an_adafocus_step_trains_the_glance_on_the_step_objective_and_draws_windows_from_the_step_seed(monkeypatch):
    lrn = learner(selector="adafocus")
    glance = lrn.adapter.glance
    before = {k: v.clone() for k, v in glance.state_dict().items()}
    seen = []
    original = lrn.adapter.selection

    def spy(energy, generator=None, selector=None, video=None):
        sel = original(energy, generator, selector, video)
        seen.append((video, sel))
        return sel

    monkeypatch.setattr(lrn.adapter, "selection", spy)
    batches = micro(0)
    m = lrn.step_once(batches)
    (video, sel), = seen
    assert video.shape == (8, 3, 8, 32, 32) and (sel.keep.flatten(2).sum(-1) == 4).all()  # 2 x 2 of each segment
    assert m["discard_rate_source"] == pytest.approx(0.75) and math.isfinite(m["glance_loss"])
    assert all(not torch.equal(before[k], v) for k, v in glance.state_dict().items())  # every glance weight trained
    assert lrn.adapter.policy.mu.item() == pytest.approx(0.01)  # the threshold policy is not trained
    again = learner(selector="adafocus")  # the same seed and step draw the same windows
    monkeypatch.setattr(again.adapter, "selection", spy)
    again.step_once(micro(0))
    assert torch.equal(seen[1][1].keep, sel.keep)


def test_the_focus_surrogate_weighs_each_clip_by_its_domain_advantage():
    log_prob = torch.zeros(5, requires_grad=True)
    sel = Selection(torch.ones(5, 1, 1, 1, dtype=torch.bool), log_prob=log_prob, glance_logits=torch.zeros(5, K))
    clip_ce = torch.tensor([1.0, 3.0, float("nan"), 2.0, 6.0])
    labels = torch.tensor([0, 1, -1, 2, 3])
    target = torch.tensor([False, False, True, True, True])
    glance, surrogate = focus_loss(sel, clip_ce, labels, target, lambda_t=0.5)
    surrogate.backward()
    # source mean 2: advantages +1, -1; target mean 4 (clip 2 has no label): 0.5 * (+2, -2); over 4 labelled clips
    torch.testing.assert_close(log_prob.grad, -torch.tensor([1.0, -1.0, 0.0, 1.0, -1.0]) / 4)
    assert float(glance) == pytest.approx(math.log(K) * 1.5)  # uniform logits: L_s + 0.5 L_t = 1.5 log K


# ----------------------------------------------------------------------------- per-segment thresholds


def test_a_step_with_the_segment_selector_draws_one_threshold_per_segment_and_learns_them():
    lrn = learner(selector="lmft-segment", policy_lr=0.05)
    policy = lrn.adapter.policy
    assert lrn.learns_policy and policy.kind == "segment" and policy.mu.shape == (CLIP.grid[0] - 1,)
    m = lrn.step_once(micro(0))
    # tau (3,) is a function of (seed, step): one draw of every segment from the step's generator
    eps = torch.randn(3, generator=step_generator(0, 0))
    expected = torch.sigmoid(torch.tensor(0.01) + math.exp(-1.0) * eps).clamp(1e-6, 1 - 1e-6)
    assert [m[f"tau/seg{t}"] for t in (1, 2, 3)] == pytest.approx(expected.tolist(), abs=1e-6)
    assert m["tau"] == pytest.approx(float(expected.mean()), abs=1e-6)
    for key in ("mu", "sigma", "tau_hat"):  # the mean under the scalar policy's name, then each segment
        per = [m[f"{key}/seg{t}"] for t in (1, 2, 3)]
        assert m[key] == pytest.approx(sum(per) / 3)
    assert m["advantage"] == 0.0 and policy.mu.tolist() == pytest.approx([0.01] * 3)  # b = R_1: no move yet
    for step in range(1, 4):
        m = lrn.step_once(micro(step))
    assert int(policy.step) == 4 and all(math.isfinite(v) for v in m.values())
    assert (policy.mu.detach() != 0.01).all() and len(set(policy.mu.tolist())) == 3  # each segment its own way
    # checkpoint round trip: a fresh learner restores the vectors (and tau_hat)
    fresh = learner(selector="lmft-segment", policy_lr=0.05)
    fresh.load_state_dict(lrn.state_dict())
    for name in ("mu", "log_sigma", "baseline", "step", "tau_hat"):
        assert torch.equal(getattr(fresh.adapter.policy, name), getattr(policy, name)), name
    assert torch.equal(fresh.adapter.policy.inference_tau(), policy.inference_tau())


def test_adapter_predict_with_the_segment_selector_uses_tau_hat_per_segment():
    adapter = learner(selector="lmft-segment").adapter
    with torch.no_grad():
        adapter.policy.mu.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    b = batch(5, 11)
    out = adapter.predict(b.frames, b.energy)
    tau_hat = adapter.policy.inference_tau()
    keep = torch.ones_like(b.energy, dtype=torch.bool)
    for t in range(1, CLIP.grid[0]):
        keep[:, t] = b.energy[:, t] > tau_hat[t - 1]
    torch.testing.assert_close(out["keep_ratio"], keep.flatten(1).float().mean(1))
    assert out["probs"].shape == (5, K) and adapter.training  # back in training mode after predict
    with torch.no_grad():
        logits = adapter.eval().model(model_input(b.frames), keep)
    torch.testing.assert_close(out["probs"], logits.softmax(-1))


# ----------------------------------------------------------------------------- the rloo estimator in a step


def test_an_rloo_step_draws_a_tau_per_clip_pair_and_follows_the_leave_one_out_gradient(monkeypatch):
    from lmft_core.model.policy import rloo_advantage

    lrn = learner(estimator="rloo", accum_steps=2, gamma_c=0.0)  # every target clip passes
    calls = []
    original = lrn.adapter.selection
    monkeypatch.setattr(lrn.adapter, "selection", lambda energy, generator=None, selector=None, video=None, tau=None:
                        calls.append((energy.clone(), tau)) or original(energy, generator, selector, video, tau))
    forwards = []
    forward = lrn.model.forward
    lrn.model.forward = lambda video, keep: forwards.append((video, keep, forward(video, keep))) or forwards[-1][2]
    policy = lrn.adapter.policy
    grads = {}
    for name in ("mu", "log_sigma"):  # the policy's gradient, as back-propagated
        getattr(policy, name).register_hook(lambda g, name=name: grads.setdefault(name, g.clone()))
    batches = micro(0, accum=2)
    draws = policy.sample(step_generator(0, 0), n=8)  # what the step must draw, before it moves the policy
    m = lrn.step_once(batches)
    (energy, tau), = calls
    # 2 micro-batches of 4 pairs: 8 draws of the step's generator, source clip i and target clip i share tau_i
    assert torch.equal(tau, torch.cat([draws[:4], draws[:4], draws[4:], draws[4:]]))
    for video, keep, _ in forwards:  # packed attention got each clip's own keep mask
        assert keep.shape[0] == video.shape[0] == 8
    torch.testing.assert_close(torch.cat([k for _, k, _ in forwards]), torch.cat(
        [keep_above(energy[i:i + 1], float(tau[i])) for i in range(16)]))
    assert m["tau"] == pytest.approx(float(draws.mean()), abs=1e-6)
    # with every target clip passing, the mean pair reward is the paper's R of the step's means
    assert m["reward_pair_mean"] == pytest.approx(m["reward"], rel=1e-5)
    # the policy gradient is the leave-one-out one over the pair rewards rebuilt from the forward's logits:
    # R_i = -lambda_L (ce_s_i + ce_t_i) - (1 - rho_s_i) - (1 - rho_t_i)
    rewards = []
    for (video, keep, logits), (src, tgt) in zip(forwards, batches):
        ce = F.cross_entropy(logits.detach(), torch.cat([src.label, tgt.pseudo_label]), reduction="none")
        rho = 1 - keep.flatten(1).float().mean(1)
        rewards.append(-10.0 * (ce[:4] + ce[4:]) - (1 - rho[:4]) - (1 - rho[4:]))
    adv = rloo_advantage(torch.cat(rewards)).double()
    u = torch.logit(draws.double())
    g_mu, g_ls = grads["mu"], grads["log_sigma"]
    assert float(g_mu) == pytest.approx(float(-(adv * (u - 0.01) / math.exp(-2.0)).mean()), rel=1e-3, abs=1e-6)
    assert float(g_ls) == pytest.approx(float(-(adv * ((u - 0.01) ** 2 / math.exp(-2.0) - 1)).mean()), rel=1e-3, abs=1e-6)
    assert m["advantage"] > 0 and int(policy.step) == 1


def test_rloo_needs_two_clip_pairs_per_step_at_profile_load():
    from lmft_core.run_config import load_profile

    with pytest.raises(ConfigError, match=r"policy.estimator='rloo' needs >= 2 clip pairs per step"):
        load_profile("results-tiny", ["policy.estimator='rloo'", "train.batch_size=1", "train.workers=1"])
    assert load_profile("results-tiny", ["policy.estimator='rloo'", "train.accum_steps=2"]).policy.estimator == "rloo"
    with pytest.raises(ConfigError, match="policy.estimator 'reinforce' is not a registered"):
        load_profile("results-tiny", ["policy.estimator='reinforce'"])
    with pytest.raises(ConfigError, match=r"policy.estimator='rloo' .* selector.name='adafocus' does not use"):
        load_profile("results-tiny", ["policy.estimator='rloo'", "train.accum_steps=2", "selector.name='adafocus'"])


def test_rloo_with_a_threshold_per_segment_draws_one_row_of_thresholds_per_pair():
    lrn = learner(selector="lmft-segment", estimator="rloo")
    policy = lrn.adapter.policy
    draws = policy.sample(step_generator(0, 0), n=4)  # (4 pairs, N_t - 1 segments)
    assert draws.shape == (4, CLIP.grid[0] - 1)
    batches = micro(0)
    m = lrn.step_once(batches)
    energy = torch.cat([batches[0][0].energy, batches[0][1].energy])
    expected = keep_above(energy, torch.cat([draws, draws]), per_clip=True)
    rho = 1 - expected.flatten(1).float().mean(1)
    assert m["discard_rate_source"] == pytest.approx(float(rho[:4].mean()), abs=1e-6)
    assert m["discard_rate_target"] == pytest.approx(float(rho[4:].mean()), abs=1e-6)
    assert [m[f"tau/seg{t}"] for t in (1, 2, 3)] == pytest.approx(draws.mean(0).tolist(), abs=1e-6)
    assert (policy.mu.detach() != 0.01).all()  # every segment learned from the pairs' rewards
