"""Masked video pretraining: the encoder on visible tokens, the reconstruction target, the masking
strategies' counts and statistics, the exported encoder through the VideoMAE loader, golden first losses,
resume, and the run on Ray Train with MLflow."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.model import CheckpointError, ModelConfig, TokenLayout
from lmft_core.model.attention import ATTENTION_BACKENDS
from lmft_core.model.pretrained import build_model, check_pretrained
from lmft_core.pretrain.config import PretrainConfig, visible_count
from lmft_core.pretrain.learner import rloo_surrogate
from lmft_core.pretrain.mae import MaskedAutoencoder, patch_targets, save_encoder
from lmft_core.pretrain.masking import (
    MASKINGS,
    MaskInput,
    TokenSampler,
    draw_by_logits,
    gumbel_top_k,
    motion_score,
    plackett_luce_log_prob,
)
from lmft_core.run_config import load_profile
from lmft_core.shards.batch import ClipBatch, model_input
from lmft_core.train.config import TrainConfig
from lmft_core.train.dist import Dist
from lmft_core.train.run import TrainError

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")

CLIP = ClipConfig(num_frames=8, image_size=32, tubelet=2, patch=8)  # a 4 x 4 x 4 token grid
MODEL = ModelConfig(size="vit_tiny", embed_dim=48, depth=2, num_heads=3, num_classes=3, clip=CLIP, drop_path=0.0)


def moving_squares(n: int, seed: int) -> ClipBatch:
    """Clips of a bright square moving over a textured still background, and their motion energy."""
    from lmft_core.energy import motion_energy

    g = np.random.default_rng(seed)
    frames = np.repeat(g.integers(0, 120, (n, 1, 32, 32, 3), dtype=np.uint8), 8, axis=1)
    for i in range(n):
        y, x, dy, dx = g.integers(0, 16), g.integers(0, 16), g.integers(-2, 3), g.integers(1, 3)
        for t in range(8):
            yy, xx = int(np.clip(y + dy * t, 0, 22)), int(np.clip(x + dx * t, 0, 22))
            frames[i, t, yy:yy + 10, xx:xx + 10] = (230, 200, 40)
    energy = motion_energy(frames, CLIP.tubelet, CLIP.patch).astype(np.float32)
    return ClipBatch(frames=torch.from_numpy(frames), energy=torch.from_numpy(energy), label=torch.full((n,), -1),
                     pseudo_label=torch.full((n,), -1), pseudo_confidence=torch.zeros(n), clip_probs=torch.zeros(n, 3),
                     key=torch.arange(n))


def draw(name: str, energy: torch.Tensor, ratio: float = 0.9, seed: int = 0, sampler=None, temperature: float = 0.1):
    count, per_segment = visible_count(ratio, CLIP)
    video = torch.zeros(1, 3, 8, 32, 32).expand(energy.shape[0], -1, -1, -1, -1)
    return MASKINGS[name].draw(MaskInput(energy, video, count, per_segment, temperature, sampler,
                                         torch.Generator().manual_seed(seed)))


# ---- the encoder on the visible tokens -------------------------------------------------------------

def test_encoder_on_visible_tokens_equals_the_full_encoder_on_a_keep_mask_per_video():
    """Packed over the batch, embedding only the visible tubelets == per video: every token embedded by the
    Conv3d (the reference path), the visible ones gathered, blocks run on that video alone."""
    torch.manual_seed(0)
    mae = MaskedAutoencoder(MODEL, PretrainConfig()).eval()
    batch = moving_squares(4, seed=1)
    video = model_input(batch.frames)
    for name in ("tube", "motion"):
        visible = draw(name, batch.energy, ratio=0.75).visible
        with torch.no_grad():
            packed, layout = mae.encoder.encode(video, visible, attention="sdpa_split")
            reference = []
            for i in range(4):
                tokens = mae.encoder.embed(video[i:i + 1])[visible[i:i + 1].reshape(1, -1)]  # (L_i, D)
                one = TokenLayout.from_keep(torch.ones(1, len(tokens), dtype=torch.bool), "padded")
                h = tokens[None]
                for block in mae.encoder.blocks:
                    h = block(h, one, ATTENTION_BACKENDS["padded"])
                reference.append(h[0])
        assert layout.layout == "packed" and packed.shape == (4 * visible_count(0.75, CLIP)[0], 48)
        torch.testing.assert_close(packed, torch.cat(reference), atol=2e-5, rtol=1e-4)
        with torch.no_grad():  # the whole autoencoder: packed == padded layout
            torch.testing.assert_close(mae(video, visible, "sdpa_split"), mae(video, visible, "padded"), atol=2e-5, rtol=1e-4)


# ---- the reconstruction target ----------------------------------------------------------------------

def test_patch_targets_against_a_naive_loop():
    frames = torch.randint(0, 256, (2, 8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    frames[1, 0:2, 0:8, 0:8] = 77  # a flat tubelet: std 0, the target is 0 (not NaN)
    ours = patch_targets(frames, MODEL).numpy()
    x = frames.numpy().astype(np.float64) / 255.0
    expected = np.zeros((2, 64, 2 * 8 * 8 * 3))
    for b in range(2):
        n = 0
        for t in range(4):
            for h in range(4):
                for w in range(4):
                    tube = x[b, 2 * t:2 * t + 2, 8 * h:8 * h + 8, 8 * w:8 * w + 8, :].reshape(-1, 3)  # (t p p, C)
                    norm = (tube - tube.mean(0)) / (tube.std(0, ddof=1) + 1e-6)
                    expected[b, n] = norm.reshape(-1)  # pixel-major, channel-minor
                    n += 1
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert np.all(ours[1, 0] == 0.0)


# ---- masking strategies ------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9, 0.95])
@pytest.mark.parametrize("name", sorted(MASKINGS))
def test_every_strategy_shows_exactly_the_visible_count(name, ratio):
    energy = torch.rand(6, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    sampler = TokenSampler(CLIP, 3, 8) if MASKINGS[name].learned else None
    result = draw(name, energy, ratio, sampler=sampler)
    count, per_segment = visible_count(ratio, CLIP)
    assert count == 4 * per_segment == 4 * max(1, round((1 - ratio) * 16))
    assert result.visible.shape == (6, 4, 4, 4) and result.visible.dtype == torch.bool
    assert result.visible.reshape(6, -1).sum(1).tolist() == [count] * 6
    assert (result.log_prob is not None) == MASKINGS[name].learned
    if name == "tube":  # the same positions in every segment
        assert torch.equal(result.visible, result.visible[:, :1].expand_as(result.visible))


def test_mask_ratio_outside_the_open_interval_is_an_error_naming_the_key():
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"pretrain.mask_ratio must be in \(0.0, 1.0\), got "):
            load_profile("demo", [f"pretrain.mask_ratio={bad}"])
    with pytest.raises(ConfigError, match="pretrain.masking 'nope' is not a registered masking strategy"):
        load_profile("demo", ["pretrain.masking='nope'"])


def within(observed: np.ndarray, p: np.ndarray, n: int, sigmas: float = 5.0) -> bool:
    """Observed rates of n trials within ``sigmas`` binomial standard deviations of p."""
    return bool(np.all(np.abs(observed - p) <= sigmas * np.sqrt(p * (1 - p) / n) + 1e-9))


def test_tube_and_random_draw_every_position_equally_often():
    n = 3000
    energy = torch.rand(1, 4, 4, 4).expand(n, 4, 4, 4)
    for name, expect in (("tube", 2 / 16), ("random", 8 / 64)):
        rates = draw(name, energy, 0.9, seed=5).visible.float().mean(0).flatten().numpy()
        assert within(rates, np.full(64, expect), n), name


def test_motion_draws_the_first_token_by_softmax_of_energy_over_temperature():
    n, temperature = 6000, 0.25
    energy = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(6)).expand(n, 4, 4, 4)
    x = MaskInput(energy, torch.zeros(1, 3, 8, 32, 32).expand(n, -1, -1, -1, -1), 1, 1, temperature, None, torch.Generator().manual_seed(7))
    first = MASKINGS["motion"].draw(x).visible.float().mean(0).flatten().numpy()
    assert within(first, torch.softmax(motion_score(energy[:1])[0] / temperature, 0).numpy(), n)
    assert torch.equal(motion_score(energy[:1]).view(4, 4, 4)[0], energy[0, 1])  # segment 0 scored as segment 1


def test_motion_visible_rates_match_sequential_sampling_without_replacement():
    """k tokens: the Gumbel-top-k draw's inclusion rates against torch.multinomial without replacement."""
    n, temperature = 4000, 0.2
    energy = torch.rand(1, 4, 4, 4, generator=torch.Generator().manual_seed(8))
    ours = draw("motion", energy.expand(n, 4, 4, 4), 0.9, seed=9, temperature=temperature).visible.float().mean(0).flatten()
    weights = torch.softmax(motion_score(energy)[0] / temperature, 0)
    g = torch.Generator().manual_seed(10)
    ref = torch.zeros(64)
    for _ in range(n):
        ref[torch.multinomial(weights, 8, replacement=False, generator=g)] += 1
    ref /= n
    p = ((ours + ref) / 2).numpy()
    assert np.all(np.abs((ours - ref).numpy()) <= 5 * np.sqrt(2 * p * (1 - p) / n) + 1e-9)
    score = motion_score(energy)[0]
    assert float((ours * score).sum() / 8) > float(score.mean()) + 0.1  # moving tokens preferred


def test_plackett_luce_log_prob_against_a_naive_loop_and_an_untrained_sampler_draws_uniformly():
    logits = torch.randn(5, 64, generator=torch.Generator().manual_seed(11))
    order = gumbel_top_k(logits, 8, torch.Generator().manual_seed(12))
    expected = []
    for b in range(5):
        left, total = list(range(64)), 0.0
        for i in order[b].tolist():
            total += float(logits[b, i] - torch.logsumexp(logits[b, left], 0))
            left.remove(i)
        expected.append(total)
    torch.testing.assert_close(plackett_luce_log_prob(logits, order), torch.tensor(expected), atol=1e-4, rtol=1e-5)

    n = 3000
    sampler = TokenSampler(CLIP, 3, 8)  # output layer zero: every logit 0
    result = draw("learned", torch.rand(n, 4, 4, 4), 0.9, seed=13, sampler=sampler)
    assert within(result.visible.float().mean(0).flatten().numpy(), np.full(64, 8 / 64), n)
    uniform = -sum(math.log(64 - j) for j in range(8))
    torch.testing.assert_close(result.log_prob, torch.full((n,), uniform), atol=1e-4, rtol=0)
    assert result.log_prob.requires_grad


def test_learned_sampler_log_prob_has_the_policy_gradient():
    """d/dlogits of the Plackett-Luce log-prob is (indicator of the drawn) minus the drawn-from softmaxes:
    checked against autograd of the naive loop."""
    logits = torch.randn(1, 64, generator=torch.Generator().manual_seed(14), requires_grad=True)
    x = MaskInput(torch.zeros(1, 4, 4, 4), torch.zeros(1, 3, 8, 32, 32), 8, 2, 1.0, None, torch.Generator().manual_seed(15))
    result = draw_by_logits(logits, x, learned=True)
    (grad,) = torch.autograd.grad(result.log_prob.sum(), logits)
    order = gumbel_top_k(logits, 8, torch.Generator().manual_seed(15))[0].tolist()
    expected, left = torch.zeros(64), list(range(64))
    for i in order:
        expected[i] += 1
        expected[left] -= torch.softmax(logits[0, left].detach(), 0)
        left.remove(i)
    torch.testing.assert_close(grad[0], expected, atol=1e-5, rtol=1e-4)


def test_the_rloo_surrogate_learns_to_draw_the_rewarding_tokens():
    """A bandit: 2 of 16 tokens drawn by Plackett-Luce over learned logits, the reward the sum of fixed token
    values. Ascending the surrogate raises the expected reward from uniform's and ranks the logits by value;
    the advantages sum to zero (the leave-one-out baseline is exact for a batch of equal rewards)."""
    values = torch.linspace(0.0, 1.0, 16)
    logits = torch.zeros(1, 16, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=0.05)
    g = torch.Generator().manual_seed(19)
    for _ in range(150):
        wide = logits.expand(32, 16)
        order = gumbel_top_k(wide, 2, g)
        surrogate, advantage = rloo_surrogate(values[order].sum(1), plackett_luce_log_prob(wide, order))
        opt.zero_grad()
        surrogate.backward()
        opt.step()
    assert abs(float(advantage.sum())) < 1e-5
    expected = float(values[gumbel_top_k(logits.detach().expand(4000, 16), 2, g)].sum(1).mean())
    assert expected > 1.6  # uniform draws: 2 x 0.5 = 1.0; the best pair: 1.93
    assert float(torch.corrcoef(torch.stack([logits.detach()[0], values]))[0, 1]) > 0.8
    _, same = rloo_surrogate(torch.full((5,), 3.0), torch.zeros(5))
    assert torch.equal(same, torch.zeros(5))


# ---- the output as an initialisation ------------------------------------------------------------------

def test_the_saved_encoder_loads_through_the_videomae_loader_with_the_same_features(tmp_path):
    torch.manual_seed(16)
    mae = MaskedAutoencoder(MODEL, PretrainConfig())
    with torch.no_grad():  # every tensor away from its initial value, so a missed key would show
        for p in mae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = save_encoder(mae, tmp_path / "encoder.pth", {"epochs": 1})
    model = build_model(replace(MODEL, pretrained=str(path))).eval()
    report = model.load_report
    assert report.format == "videomae_pretrain"
    assert report.unexpected == ["norm.bias", "norm.weight"]  # VideoMAE's encoder.norm: no fine-tuning counterpart
    assert report.missing == ["fc_norm.bias", "fc_norm.weight"] and report.fresh_head
    assert any(k.startswith("decoder.") for k in report.dropped) and "mask_token" in report.dropped
    batch = moving_squares(3, seed=17)
    video, keep = model_input(batch.frames), draw("random", batch.energy, 0.5).visible
    with torch.no_grad():
        ours, _ = model.encode(video, keep)
        theirs, _ = mae.eval().encoder.encode(video, keep)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    check_pretrained(model.config)  # fits: no error


def test_a_checkpoint_of_another_width_or_geometry_is_refused_naming_the_file_and_key(tmp_path):
    path = save_encoder(MaskedAutoencoder(MODEL, PretrainConfig()), tmp_path / "encoder.pth", {})
    wider = ModelConfig(size="vit_tiny", embed_dim=96, depth=2, num_heads=3, num_classes=3, clip=CLIP, pretrained=str(path))
    wrong = r"encoder.pth: weights of another shape .*patch_embed.proj.weight: checkpoint \(48, 3, 2, 8, 8\) vs model \(96"
    with pytest.raises(CheckpointError, match=wrong):
        check_pretrained(wider)
    longer = ModelConfig(size="vit_tiny", embed_dim=48, depth=2, num_heads=3, num_classes=3, pretrained=str(path),
                         clip=ClipConfig(num_frames=16, image_size=32, tubelet=2, patch=8))
    with pytest.raises(CheckpointError, match=r"encoder.pth: pretrained at another clip geometry \(clip.num_frames: checkpoint 8, model 16\)"):
        check_pretrained(longer)


# ---- the step: golden first losses ----------------------------------------------------------------------

# The first three losses of a seeded pretraining of the test model on four clips of moving squares
# (batch 4, lr 1e-3, no warm-up), CPU fp32, torch 2.14: a change to the masking, the target, the model or
# the step that moves them is a change of behaviour.
GOLDEN = {
    "tube": [1.1124359, 1.0978835, 1.0853496],
    "motion": [1.1103129, 1.0980471, 1.0848420],
    "learned": [1.1099091, 1.0971449, 1.0836236],
}


@pytest.mark.parametrize("masking", sorted(GOLDEN))
def test_golden_first_losses_of_a_tiny_seeded_pretraining(masking):
    cfg = PretrainConfig(masking=masking, epochs=1, batch_size=4, warmup_epochs=0.0, lr=1e-3)
    from lmft_core.pretrain.worker import PretrainJob

    learner = PretrainJob(shards="", model=MODEL, pretrain=cfg, train=TrainConfig(seed=0), steps_per_epoch=10).build()
    batch = moving_squares(4, seed=18)
    losses = [learner.step_once(batch)["loss"] for _ in range(3)]
    np.testing.assert_allclose(losses, GOLDEN[masking], rtol=1e-4)


# ---- resume, the run on Ray Train, bad input ------------------------------------------------------------

PRETRAIN_TINY = ["pretrain.epochs=2", "pretrain.batch_size=2", "pretrain.decoder_depth=1",
                 "pretrain.figure_clips=2"]


def tiny_profile(*extra: str):
    from conftest import TINY_CLIP_GEOMETRY, TINY_TRAIN

    return load_profile("demo", TINY_CLIP_GEOMETRY + TINY_TRAIN + PRETRAIN_TINY + list(extra))


def test_a_resumed_pretraining_ends_where_an_uninterrupted_one_does(tiny_shards, tmp_path):
    """Plain process, two ranks' worth of data on one: 1 epoch, checkpoint, resume for the 2nd == 2 epochs."""
    from lmft_core.pretrain.run import prepare_pretrain
    from lmft_core.pretrain.worker import TableBatches, load_pretrain_checkpoint, run_pretrain_worker
    from lmft_core.shards.reader import ShardSet

    job, _ = prepare_pretrain(tiny_profile("pretrain.masking='learned'", "train.workers=1"), tiny_shards, tmp_path)
    data = TableBatches(ShardSet.open(job.shards), job.pretrain.batch_size, job.train.seed)
    saved = {}

    def keep(tag):
        def report(metrics, folder):
            if folder is not None:
                saved[(tag, int(metrics["epoch"]))] = load_pretrain_checkpoint(folder)
        return report

    run_pretrain_worker(job, Dist(), data.batches, None, keep("straight"))
    run_pretrain_worker(job, Dist(), data.batches, None, keep("first"), stop_after_epochs=1)
    run_pretrain_worker(job, Dist(), data.batches, saved[("first", 1)], keep("resumed"))
    straight, resumed = saved[("straight", 2)]["learner"], saved[("resumed", 2)]["learner"]
    assert straight["step"] == resumed["step"] == 2 * job.steps_per_epoch
    for part in ("mae", "sampler"):
        for k, v in straight[part].items():
            torch.testing.assert_close(resumed[part][k], v, atol=1e-6, rtol=1e-5, msg=f"{part}.{k}")


def test_pretraining_on_ray_train_logs_a_figure_and_initialises_adaptation(tiny_shards, tmp_path, capsys):
    from mlflow import MlflowClient

    from lmft_core.pretrain.run import run_pretrain
    from lmft_core.train.run import prepare

    profile = tiny_profile("pretrain.masking='motion'")
    result = run_pretrain(profile, tiny_shards, tmp_path)
    client = MlflowClient(tracking_uri=result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.tags["lmft.stage"] == "pretrain"
    assert run.data.params["pretrain.masking"] == "motion" and run.data.params["pretrain.mask_ratio"] == "0.9"
    artifacts = {a.path for folder in ("plots", "pretrain") for a in client.list_artifacts(run.info.run_id, folder)}
    assert artifacts == {"plots/reconstruction.png", "pretrain/encoder.pth"}
    losses = client.get_metric_history(run.info.run_id, "pretrain/loss")
    assert len(losses) == int(run.data.metrics["epoch/steps"]) * 2 >= 2
    assert all(math.isfinite(m.value) for m in losses) and result.peak_memory_mb > 0 and result.clips_per_s > 0
    assert len(client.get_metric_history(run.info.run_id, "epoch/loss")) == 2
    assert run_pretrain(profile, tiny_shards, tmp_path) == result  # finished: returned, not trained again
    from conftest import TINY_CLIP_GEOMETRY, TINY_TRAIN, entry_main

    sets = [a for o in TINY_CLIP_GEOMETRY + TINY_TRAIN + PRETRAIN_TINY + ["pretrain.masking='motion'"] for a in ("--set", o)]
    main = entry_main("pretrain")  # the entry script, as a user runs it: the finished run, its encoder printed
    assert main(["--shards", str(tiny_shards), "--workdir", str(tmp_path), *sets]) == 0
    assert f"encoder: {result.encoder}" in capsys.readouterr().out
    assert main(["--shards", str(tmp_path / "nothing"), "--workdir", str(tmp_path)]) == 2

    job, _ = prepare(profile.with_overrides([f"model.pretrained='{result.encoder}'"]), tiny_shards, tmp_path)
    model = job.build_classifier().model
    assert model.load_report.format == "videomae_pretrain" and len(model.load_report.loaded) == len(
        [k for k in model.state_dict() if not k.startswith(("head.", "fc_norm."))])

    wider = profile.with_overrides([f"model.pretrained='{result.encoder}'", "model.embed_dim=96"])
    with pytest.raises(TrainError, match=r"model.pretrained: .*encoder.pth: weights of another shape"):
        prepare(wider, tiny_shards, tmp_path)


def test_shards_without_frames_or_too_few_clips_are_refused_naming_the_folder(tiny_shards, tmp_path):
    from lmft_core.pretrain.run import prepare_pretrain
    from lmft_core.shards.reader import ShardSet

    with pytest.raises(TrainError, match=r"less than one batch of pretrain.batch_size=512 per worker"):
        prepare_pretrain(tiny_profile("pretrain.batch_size=512"), tiny_shards, tmp_path)
    copy = tmp_path / "no_frames"
    shutil.copytree(ShardSet.open(tiny_shards).root, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["resolved_config"]["content"]["store_frames"] = False
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(TrainError, match=rf"{copy}: preprocessed with store_frames=false"):
        prepare_pretrain(tiny_profile(), copy, tmp_path)
