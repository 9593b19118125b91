"""Evaluation of an adapted model on labelled clips, with any token selector, through one code path.

:func:`evaluate` runs the adapter in eval mode (the learned selectors use tau_hat) over batches of
clips for each selector asked for: the training selector, ``full`` (every token), ``random`` matched
to LMFT's per-clip discard (``match = "lmft"``), ``threshold`` (a tau, or a keep ratio calibrated on
source-train energies: :meth:`SelectorConfig.calibrated`), ``topk``. Per selector it reports top-1,
mean class accuracy (the mean of per-class recalls over classes present), the mean discard rate,
forward GFLOPs per clip (the model core's analytic count for each clip's kept tokens, plus the
``adafocus`` glance network's and none of the ViT's for clips that exit after the glance), the exit rate (the
fraction of clips answered by that glance alone; 0 without an early exit), clips/s of the forward (selection +
model, data loading excluded) and the confusion matrix. Also computable without
labels: the mean entropy of the predicted class distribution (nats).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from lmft_core.model import SelectorConfig, selection_flops
from lmft_core.model.classifier import LMFTClassifier
from lmft_core.shards.batch import ClipBatch
from lmft_core.train.names import EVAL_KEYS, eval_metric, result_metric


@dataclass(frozen=True)
class EvalResult:
    """Metrics of one selector on one set of clips (``confusion[i][j]``: clips of class i predicted j)."""

    selector: str
    clips: int
    top1: float
    mean_class_accuracy: float
    discard_rate: float
    gflops_per_clip: float
    clips_per_s: float
    entropy_nats: float
    confusion: list[list[int]]
    exit_rate: float = 0.0  # the fraction of clips answered by the glance alone (adafocus' early exit; 0 without one)

    def metrics(self, prefix: str) -> dict[str, float]:
        """Flat metrics for MLflow, e.g. ``eval_target/lmft/top1``."""
        return {eval_metric(prefix, self.selector, k): float(getattr(self, k)) for k in EVAL_KEYS}

    def result_metrics(self) -> dict[str, float]:
        """The selector-free names of a run's own selector on target-test, e.g. ``target_test/top1``."""
        return {result_metric(k): float(getattr(self, k)) for k in EVAL_KEYS}

    def as_dict(self) -> dict:
        return asdict(self)


def mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Mean over classes with clips of (correct / clips of the class); ``confusion`` (K, K)."""
    per_class = confusion.sum(1)
    present = per_class > 0
    if not bool(present.any()):
        return float("nan")
    return float((confusion.diag()[present].double() / per_class[present]).mean())


@torch.no_grad()
def evaluate(adapter: LMFTClassifier, batches: Iterable[ClipBatch], selectors: Sequence[SelectorConfig],
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None) -> dict[str, EvalResult]:
    """Results per selector label (:attr:`SelectorConfig.label`) over labelled ``batches``.

    Each batch is loaded once and run with every selector (calibrated thresholds must be calibrated
    already). Clips without a label (-1) are left out of accuracy and the confusion matrix only.
    """
    device = torch.device(device)
    was_training = adapter.training
    adapter.eval()
    k = len(adapter.classes)
    labels = [s.label for s in selectors]
    if len(set(labels)) != len(labels):
        raise ValueError(f"selectors to evaluate must differ, got {labels}")
    acc = {lab: {"confusion": torch.zeros(k, k, dtype=torch.int64), "discard": 0.0, "flops": 0.0, "seconds": 0.0,
                 "clips": 0, "entropy": 0.0, "exited": 0} for lab in labels}
    generator = torch.Generator().manual_seed(0)  # random selectors: the same draws on every evaluation
    try:
        for batch in batches:
            batch = batch.to(device)
            video, labelled = batch.video(), batch.label >= 0
            for sel_cfg, lab in zip(selectors, labels):
                a = acc[lab]
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    logits, sel = adapter(video, batch.energy, generator, selector=sel_cfg)
                logits = logits.float()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                a["seconds"] += time.perf_counter() - t0
                pred = logits.argmax(-1)
                idx = batch.label[labelled] * k + pred[labelled]
                a["confusion"] += torch.bincount(idx.cpu(), minlength=k * k).view(k, k)
                a["discard"] += float(sel.discard_rate.sum())
                a["flops"] += float(selection_flops(adapter.model.config, sel.keep, sel.exited, sel.glance_flops).double().sum())
                p = logits.softmax(-1)
                a["entropy"] += float(-(p * p.clamp_min(1e-12).log()).sum(-1).sum())
                a["clips"] += len(batch)
                a["exited"] += int(sel.exited.sum()) if sel.exited is not None else 0
    finally:
        adapter.train(was_training)
    out = {}
    for lab, a in acc.items():
        n, conf = a["clips"], a["confusion"]
        labelled_n = int(conf.sum())
        out[lab] = EvalResult(
            selector=lab, clips=n, top1=float(conf.diag().sum()) / labelled_n if labelled_n else float("nan"),
            mean_class_accuracy=mean_class_accuracy(conf), discard_rate=a["discard"] / n if n else float("nan"),
            gflops_per_clip=a["flops"] / n / 1e9 if n else float("nan"),
            clips_per_s=n / a["seconds"] if a["seconds"] > 0 else float("nan"),
            entropy_nats=a["entropy"] / n if n else float("nan"), confusion=conf.tolist(),
            exit_rate=a["exited"] / n if n else float("nan"))
    return out


def efficiency_table(results: dict[str, EvalResult], classes_note: str = "") -> str:
    """Markdown table of selectors: top-1, mean class accuracy, discard rate, exit rate, GFLOPs/clip, clips/s."""
    lines = ["| selector | clips | top-1 | mean class acc. | discard rate | exit rate | GFLOPs/clip (fwd) | clips/s (fwd) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        lines.append(f"| {r.selector} | {r.clips} | {r.top1:.3f} | {r.mean_class_accuracy:.3f} | {r.discard_rate:.3f} | "
                     f"{r.exit_rate:.3f} | {r.gflops_per_clip:.3f} | {r.clips_per_s:.1f} |")
    return "\n".join(lines) + (f"\n\n{classes_note}" if classes_note else "")


def headline(evaluation: dict) -> dict:
    """The training selector's ``selector``, ``top1``, ``mean_class_accuracy``, ``discard_rate`` and
    ``gflops_per_clip`` of a run's ``evaluation.json`` (selector label -> :meth:`EvalResult.as_dict`; the
    training selector comes first)."""
    main = next(iter(evaluation.values()))
    return {k: main[k] for k in ("selector", "top1", "mean_class_accuracy", "discard_rate", "gflops_per_clip")}
