"""What a person sees of a result, without Ray: the metric-name contract (every training and the workflow's parent
run log a training's own result under the same names), run and experiment descriptions, metrics on the logged
model, the predictions table in MLflow, the kept-token pictures, the one-class warning, ``python -m
lmft_core.tracking ui``'s errors."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import torch
from matplotlib.patches import Rectangle
from mlflow import MlflowClient

from lmft_core.config import ClipConfig
from lmft_core.model import ModelConfig, PolicyConfig, SelectorConfig
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.predict import COLLAPSE_WARNING, Predictor, picture_name, prediction_warnings
from lmft_core.tracking import EXPERIMENT_DESCRIPTION, EXPERIMENT_KIND, NOTE, TrackingConfig, main, start_run, using_tracking_uri
from lmft_core.train import plots
from lmft_core.train.artifacts import picture_clips
from lmft_core.train.evaluate import EvalResult
from lmft_core.train.names import EVAL_KEYS
from lmft_core.workflow import HEADLINE_KEYS, accuracy_points, headline_metrics

CLIP = ClipConfig(num_frames=8, image_size=32, tubelet=2, patch=8)  # grid (4, 4, 4)


def result(selector: str, top1: float, discard: float) -> EvalResult:
    return EvalResult(selector=selector, clips=10, top1=top1, mean_class_accuracy=top1 - 0.05, discard_rate=discard,
                      gflops_per_clip=1.0 - discard, clips_per_s=5.0, entropy_nats=0.7, confusion=[[1]])


def test_every_training_logs_its_own_result_under_the_same_names_and_the_parent_too():
    adapted, full = result("lmft", 0.6, 0.4), result("full", 0.55, 0.0)
    names = {f"target_test/{k}" for k in EVAL_KEYS}
    assert set(adapted.result_metrics()) == set(full.result_metrics()) == names
    assert full.result_metrics()["target_test/top1"] == 0.55 and adapted.result_metrics()["target_test/discard_rate"] == 0.4
    assert set(adapted.metrics("eval_target")) != set(full.metrics("eval_target"))  # the per-selector names differ
    rows = [{"training": t, **{k: getattr(r, k) for k in HEADLINE_KEYS}, "selector": r.selector, "train_clips_per_s": s}
            for t, r, s in (("adapted", adapted, 3.0), ("baseline", full, 2.0))]
    parent = headline_metrics(rows)
    # the parent's adapted result is under the training's own names, with the same values
    assert {k: v for k, v in parent.items() if k.startswith("target_test/")} == \
        {k: v for k, v in adapted.result_metrics().items() if k.split("/")[1] in HEADLINE_KEYS}
    assert parent["baseline/full/top1"] == 0.55 and parent["baseline/full/train_clips_per_s"] == 2.0
    assert parent["final/train_clips_per_s"] == 3.0 and not any("lmft" in k for k in parent)
    assert len(parent) == 2 * len(HEADLINE_KEYS) + 2


def test_accuracy_points_and_figure_mark_each_trainings_own_selector():
    evaluations = [("adapted", {"lmft": result("lmft", 0.6, 0.4).as_dict(), "full": result("full", 0.62, 0.0).as_dict()}),
                   ("baseline full", {"full": result("full", 0.55, 0.0).as_dict()})]
    points = accuracy_points(evaluations)
    assert [(p["training"], p["selector"], p["own"]) for p in points] == [
        ("adapted", "lmft", True), ("adapted", "full", False), ("baseline full", "full", True)]
    fig = plots.accuracy_vs_discard(points)
    ax = fig.axes[0]
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert sorted(map(tuple, offsets.tolist())) == sorted([(0.4, 0.6), (0.0, 0.62), (0.0, 0.55)])
    plots.plt.close(fig)


def test_runs_and_experiments_are_described_and_metrics_reach_the_logged_model(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'store.db'}", experiment="views")
    with start_run(cfg, tmp_path, "a run") as run:
        run.describe("**what** this run is")
        exp_id = run.client.get_run(run.run_id).info.experiment_id
        model = run.client.create_logged_model(exp_id, name="classifier-lmft", source_run_id=run.run_id)
        run.log_metrics({"target_test/top1": 0.75, "final/tau_hat": 0.3}, step=4, model_id=model.model_id)
        run.log_metrics({"train/loss": 1.5}, step=4)
        run.log_table({"video_id": ["a", "b"], "predicted_label": ["x", "y"]}, "predict/predictions.json")
    client = MlflowClient(tracking_uri=cfg.uri)
    exp = client.get_experiment(exp_id)
    assert exp.tags[NOTE] == EXPERIMENT_DESCRIPTION and exp.tags.items() >= EXPERIMENT_KIND.items()
    assert "workflowType=machine_learning" in EXPERIMENT_DESCRIPTION and "python -m lmft_core.tracking ui" in EXPERIMENT_DESCRIPTION
    assert client.get_run(run.run_id).data.tags[NOTE] == "**what** this run is"
    on_model = {m.key: (m.value, m.step) for m in client.get_logged_model(model.model_id).metrics}
    assert on_model == {"target_test/top1": (0.75, 4), "final/tau_hat": (0.3, 4)}  # not the run's other metrics
    assert client.get_run(run.run_id).data.metrics["target_test/top1"] == 0.75  # and on the run as well
    assert '"type": "table"' in client.get_run(run.run_id).data.tags["mlflow.loggedArtifacts"]  # what the UI lists
    with using_tracking_uri(cfg.uri):  # load_table searches runs through the global URI
        table = client.load_table(exp_id, "predict/predictions.json", run_ids=[run.run_id])
    assert table["video_id"].tolist() == ["a", "b"] and table["predicted_label"].tolist() == ["x", "y"]
    # an experiment made before descriptions gets one when next used
    client.delete_experiment_tag(exp_id, NOTE)
    with start_run(cfg, tmp_path, "another"):
        pass
    assert client.get_experiment(exp_id).tags[NOTE] == EXPERIMENT_DESCRIPTION


def test_ui_command_says_what_is_missing(tmp_path, capsys):
    assert main(["ui", "--workdir", str(tmp_path / "none"), "--no-browser"]) == 2
    assert "no MLflow store at sqlite:///" in capsys.readouterr().err
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="lmft-demo")
    with start_run(cfg, tmp_path, "r"):
        pass
    assert main(["ui", "--tracking-uri", cfg.uri, "--experiment", "nope", "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'nope'" in err and "experiments: ['lmft-demo'" in err


def test_overlay_darkens_exactly_the_dropped_tokens():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    keep = rng.random((4, 4)) > 0.5
    out = plots.overlay(frame, keep, 8)
    ref = np.empty_like(out)
    for y in range(32):
        for x in range(32):
            ref[y, x] = frame[y, x] / 255.0 * (1.0 if keep[y // 8, x // 8] else 0.35)
    np.testing.assert_allclose(out, ref, rtol=1e-6)


def test_kept_token_figure_outlines_every_kept_token_and_labels_every_clip():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    energy = rng.random((2, 4, 4, 4)).astype(np.float32)
    keep = energy > 0.6
    titles = [plots.clip_title("clips/a", "walk", 0.8312, 0.4, "jump"), plots.clip_title("b", "wave", 0.5, 1.0)]
    assert titles[0] == "clips/a   predicted: walk (0.83)   kept 40% of tokens   true: jump"
    fig = plots.kept_tokens(frames, energy, keep, titles, 8, 2)
    panels = fig.axes[:8]
    assert len(fig.axes) == 9 and fig.axes[8].get_ylabel() == "motion energy"  # 2 x 4 panels and the colour bar
    for i in range(2):
        for t in range(4):
            boxes = [p for p in panels[4 * i + t].patches if isinstance(p, Rectangle) and not p.get_fill()]
            corners = sorted((int(b.get_y() + 0.5) // 8, int(b.get_x() + 0.5) // 8) for b in boxes)
            assert corners == sorted(zip(*map(list, np.nonzero(keep[i, t])))), (i, t)
    texts = [t.get_text() for ax in panels for t in ax.texts]
    assert texts == titles
    plots.plt.close(fig)


class FakeShards:
    def __init__(self, ids, labels):
        self.table = pa.table({"video_id": ids, "label_index": pa.array(labels, pa.int64())})

    def read(self, domain, split, columns):
        assert (domain, split) == ("target", "test")
        return self.table.select(columns)


def test_the_training_figure_shows_clips_of_several_classes():
    shards = FakeShards([f"v{i}" for i in range(9)], [0, 0, 0, 0, 1, 1, 2, None, 0])
    assert picture_clips(shards, ("a", "b", "c"), 4) == ["v0", "v4", "v6", "v7"]  # one per class, unlabelled last
    assert picture_clips(shards, ("a", "b", "c"), 6) == ["v0", "v4", "v6", "v7", "v1", "v5"]
    assert picture_clips(FakeShards(["x", "y"], [1, 1]), ("a", "b"), 4) == ["x", "y"]


def test_one_class_predictions_are_flagged():
    assert prediction_warnings({"walk": 30}) == [COLLAPSE_WARNING.format(n=30, label="walk")]
    assert "all 30 predictions are one class, 'walk'" in prediction_warnings({"walk": 30})[0]
    assert prediction_warnings({"walk": 29, "jump": 1}) == [] and prediction_warnings({"walk": 1}) == []
    assert prediction_warnings({}) == []


def test_prediction_pictures_one_file_per_video_with_unique_names(tmp_path):
    assert picture_name("sub/clip") != picture_name("sub_clip") and picture_name("sub/clip").startswith("sub_clip-")
    torch.manual_seed(0)
    model = ModelConfig(clip=CLIP, size="vit_tiny", num_classes=3)
    adapter = LMFTClassifier.build(model, PolicyConfig(), SelectorConfig(name="lmft"), ["jump", "walk", "wave"]).eval()
    predictor = Predictor.__new__(Predictor)  # the actor without loading a model from MLflow
    predictor.model, predictor.device, predictor.classes = adapter, "cpu", list(adapter.classes)
    predictor.pictures_dir, predictor.clip = str(tmp_path), {"patch": CLIP.patch, "tubelet": CLIP.tubelet}
    frames = torch.randint(0, 256, (3, 8, 32, 32, 3), dtype=torch.uint8)
    energy = torch.rand(3, 4, 4, 4)
    out = adapter.predict(frames, energy)
    cols = {"video_id": pa.array(["a/1", "a_1", "b"]), "label": pa.array(["walk", None, None], pa.string()),
            "predicted_label": pa.array([adapter.classes[i] for i in out["label"]]),
            "confidence": pa.array(out["probs"].max(-1).values.numpy()), "keep_ratio": pa.array(out["keep_ratio"].numpy())}
    names = predictor.pictures(frames, energy, cols)
    assert len(set(names)) == 3 and sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    from PIL import Image

    with Image.open(tmp_path / names[0]) as im:
        assert im.width > 400 and im.height > 150
    assert math.isclose(float(out["keep_ratio"][0]), 1 - float(adapter.selection(energy[:1]).discard_rate), abs_tol=1e-6)


def test_every_selector_label_makes_a_logged_model_name_mlflow_accepts_and_they_stay_distinct():
    from mlflow.utils.validation import _validate_logged_model_name

    from lmft_core.model.selectors import SelectorConfig
    from lmft_core.train.artifacts import logged_model_name

    configs = [SelectorConfig(), SelectorConfig(first_segment="next"), SelectorConfig(name="full"),
               SelectorConfig(name="random", drop_rate=0.75), SelectorConfig(name="threshold", tau=0.3),
               SelectorConfig(name="threshold", calibrate=True, keep_ratio=0.25, first_segment="next"),
               SelectorConfig(name="lmft-segment")]
    labels = [c.label for c in configs]
    assert "lmft.first-next" in labels and "random-drop0.75" in labels  # the characters MLflow refuses do occur
    names = [logged_model_name(label) for label in labels]
    for name in names:
        _validate_logged_model_name(name)  # raises MlflowException on '/', ':', '.', '%', '"', "'"
    assert len(set(names)) == len(names) and names[0] == "classifier-lmft"
    assert logged_model_name("lmft.first-next") == "classifier-lmft-first-next"
    assert SelectorConfig(name="full", first_segment="next").label == "full"  # the rule does not touch full tokens
