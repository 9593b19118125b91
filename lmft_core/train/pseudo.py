"""Where the target loss's labels come from: CLIP (the paper's), the adapting model itself, or both.

``train.pseudo_labels`` names a registered source (:data:`PSEUDO_LABEL_SOURCES`):

- ``clip`` (default, the paper's): CLIP's zero-shot argmax, on the target clips whose CLIP confidence
  exceeds ``train.gamma_c``. Stored in the shards at preprocessing; nothing is computed in training.
- ``self`` (self-training): the adapting model's own predictions. At the end of every
  ``train.self_refresh_epochs``-th epoch (never after the last one: nothing would train on them) every
  target-train clip is classified by the current model in eval mode (tau_hat selection, no
  augmentation, no drop path): per clip the argmax and its softmax probability. Which clips pass is the
  selection rule ``train.self_selection`` (:data:`SELF_SELECTIONS`), applied once per refresh to the whole
  table: ``threshold`` (default), that probability exceeds ``train.self_gamma``; ``class_balanced``
  (CBST, Zou et al., ECCV 2018), per predicted class the most confident fraction p of the clips predicted
  as that class (``ceil(p * n_k)`` of its n_k, so every predicted class passes at least one clip and the
  pass rate is > 0 from the first refresh on), p = ``self_fraction_start`` at the first refresh, growing
  by ``self_fraction_step`` per refresh up to ``self_fraction_max`` (:func:`self_fraction`). The
  class-balanced rule adapts to the model's calibration (no absolute threshold to pass) and keeps a
  dominant class from taking every label. Until the first refresh there are no self labels and
  ``L_t`` is exactly 0.
- ``clip+self``: a clip is used when CLIP passes ``gamma_c`` **or** the model passes ``self_gamma``,
  with the label of the source(s) that pass; where **both** pass and **disagree** the clip is dropped
  (a conflict). Before the first refresh this is ``clip`` exactly.

Why that rule for ``clip+self``: each source keeps its own threshold, because CLIP's softmax (over
prompts, scaled by its logit scale) and the classifier's softmax are calibrated differently, so one
threshold on averaged probabilities would favour whichever is the more confident by construction; a
union lets self-training supply labels where CLIP knows the domain poorly (nothing passes ``gamma_c``)
and CLIP supply them early, before the model is any good; dropping conflicts, instead of letting one
source win, keeps a confident mistake of either from being enforced against the other (the
agreement-only alternative, both must pass and agree, gives nothing at all when CLIP is weak).

The self-label table (:class:`SelfLabels`) is per clip, keyed by :func:`lmft_core.shards.reader.video_key` of
the ``video_id`` (every batch carries it as ``ClipBatch.key``), so it is looked up whatever order or
worker a row arrives in. Under DDP each rank predicts an equal share of the clips (the clips in key
order, every ``world_size``-th from its rank) and one all-reduce of a zero-filled table gives every
rank the identical table (:func:`refresh_self_labels`). The table is saved in every checkpoint (with
the learner's state), so a resumed run continues with the labels it had, not a recomputation from a
model that has moved on since.

Target labels (``label_index`` of target rows, where the manifest had them) are read only by
:func:`pseudo_label_report`, for monitoring: the step blanks the target batches' ``label`` before
anything else sees them, and the table holds predictions only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lmft_core.registry import Registry
from lmft_core.shards.batch import ClipBatch
from lmft_core.shards.reader import ShardSet, read_batches, video_key

if TYPE_CHECKING:
    from lmft_core.model.classifier import LMFTClassifier
    from lmft_core.train.dist import Dist

# combine(clip_label, clip_pass, self_label, self_pass) -> (label, use): (B,) int64 and (B,) bool
Combine = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
# select(label (N,) int64, confidence (N,) float, self_gamma, fraction) -> passed (N,) bool: which self labels pass
SelfSelect = Callable[[Tensor, Tensor, float, float], Tensor]
SELF_SELECTIONS: Registry[SelfSelect] = Registry("self-training selection rule")


@SELF_SELECTIONS.register("threshold")
def select_above(label: Tensor, confidence: Tensor, self_gamma: float, fraction: float) -> Tensor:
    """The model's softmax probability strictly above ``self_gamma`` (``fraction`` unused)."""
    return confidence > self_gamma


@SELF_SELECTIONS.register("class_balanced")
def select_class_balanced(label: Tensor, confidence: Tensor, self_gamma: float, fraction: float) -> Tensor:
    """Per predicted class k, the ``ceil(fraction * n_k)`` most confident of its n_k clips (CBST; ties: the
    earlier clip in table order first); ``self_gamma`` unused. (N,) -> (N,) bool."""
    passed = torch.zeros_like(label, dtype=torch.bool)
    for k in label.unique():
        members = (label == k).nonzero().squeeze(1)
        take = math.ceil(fraction * len(members) - 1e-9)  # fraction * n exact up to rounding: 0.3 * 10 is 3
        order = torch.argsort(confidence[members], descending=True, stable=True)
        passed[members[order[:take]]] = True
    return passed


def self_fraction(refresh: int, start: float, step: float, maximum: float) -> float:
    """The class-balanced fraction at the ``refresh``-th refresh (1 = the first): ``min(maximum, start +
    (refresh - 1) * step)``."""
    if refresh < 1:
        raise ValueError(f"refreshes count from 1, got {refresh}")
    return min(maximum, start + (refresh - 1) * step)


@dataclass(frozen=True)
class PseudoLabelSource:
    """A registered ``train.pseudo_labels`` value: how CLIP's and the model's labels make the target
    labels (``combine``), and whether it needs the model's own labels at all (``uses_self``)."""

    name: str
    uses_self: bool
    combine: Combine


PSEUDO_LABEL_SOURCES: Registry[PseudoLabelSource] = Registry("pseudo-label source")


def register_source(name: str, uses_self: bool):
    """Decorator registering ``combine`` as the pseudo-label source ``name``."""
    def deco(combine: Combine) -> Combine:
        PSEUDO_LABEL_SOURCES.register(name, PseudoLabelSource(name, uses_self, combine))
        return combine
    return deco


@register_source("clip", uses_self=False)
def combine_clip(clip_label: Tensor, clip_pass: Tensor, self_label: Tensor, self_pass: Tensor) -> tuple[Tensor, Tensor]:
    return clip_label, clip_pass


@register_source("self", uses_self=True)
def combine_self(clip_label: Tensor, clip_pass: Tensor, self_label: Tensor, self_pass: Tensor) -> tuple[Tensor, Tensor]:
    return self_label, self_pass


@register_source("clip+self", uses_self=True)
def combine_clip_and_self(clip_label: Tensor, clip_pass: Tensor, self_label: Tensor,
                          self_pass: Tensor) -> tuple[Tensor, Tensor]:
    """Either source passing its threshold; both passing and disagreeing: dropped (module docstring)."""
    conflict = clip_pass & self_pass & (clip_label != self_label)
    return torch.where(clip_pass, clip_label, self_label), (clip_pass | self_pass) & ~conflict


@dataclass
class SelfLabels:
    """The model's own labels of every target-train clip: ``keys`` (N,) int64 ascending and unique
    (:func:`~lmft_core.shards.reader.video_key`), ``label`` (N,) int64 argmax, ``confidence`` (N,) float32
    its softmax probability, predicted after ``epoch`` completed epochs; ``passed`` (N,) bool, which labels
    the refresh's selection rule passed (None: a table made without one, e.g. a checkpoint of an earlier
    version; then the confidence is compared with ``self_gamma``, the ``threshold`` rule). On the CPU."""

    keys: Tensor
    label: Tensor
    confidence: Tensor
    epoch: int
    passed: Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """(label, confidence) of the clips ``keys`` (B,); a key not in the table is an error."""
        k = keys.cpu()
        pos = torch.searchsorted(self.keys, k).clamp(max=max(len(self.keys) - 1, 0))
        if len(self.keys) == 0 or not bool((self.keys[pos] == k).all()):
            missing = k[self.keys[pos] != k] if len(self.keys) else k
            raise KeyError(f"{len(missing)} clip key(s) not in the self-training table of {len(self)} target-train "
                           f"clips (e.g. {int(missing[0])}): the batch is not from the target-train split the table was made of")
        return self.label[pos].to(keys.device), self.confidence[pos].to(keys.device)

    def passing(self, keys: Tensor, self_gamma: float) -> tuple[Tensor, Tensor]:
        """(label, passed) of the clips ``keys`` (B,): ``passed`` as the refresh's rule decided, or, in a table
        without it, confidence > ``self_gamma``."""
        label, confidence = self.lookup(keys)
        if self.passed is None:
            return label, confidence > self_gamma
        return label, self.passed[torch.searchsorted(self.keys, keys.cpu())].to(keys.device)

    def state_dict(self) -> dict:
        """Tensors and an int: what a checkpoint stores (``torch.load(weights_only=True)`` reads it)."""
        state = {"keys": self.keys.clone(), "label": self.label.clone(), "confidence": self.confidence.clone(),
                 "epoch": int(self.epoch)}
        return state if self.passed is None else state | {"passed": self.passed.clone()}

    @classmethod
    def from_state(cls, state: dict | None) -> SelfLabels | None:
        if state is None:
            return None
        passed = state.get("passed")
        return cls(keys=state["keys"].long(), label=state["label"].long(), confidence=state["confidence"].float(),
                   epoch=int(state["epoch"]), passed=None if passed is None else passed.bool())


@dataclass
class TargetLabels:
    """The labels one target batch trains on: ``label`` (B,) int64 (meaningful where ``use``), ``use``
    (B,) bool, and per source whether it passed its threshold and whether both passed and disagree."""

    label: Tensor
    use: Tensor
    clip_pass: Tensor
    self_pass: Tensor
    conflict: Tensor


def target_labels(source: PseudoLabelSource, batch: ClipBatch, table: SelfLabels | None, gamma_c: float,
                  self_gamma: float) -> TargetLabels:
    """The training labels of the target ``batch`` under ``source`` (no self labels yet: ``table`` None)."""
    clip_label, clip_pass = batch.pseudo_label, batch.pseudo_confidence > gamma_c
    if source.uses_self and table is not None:
        self_label, self_pass = table.passing(batch.key, self_gamma)
    else:
        self_label, self_pass = torch.zeros_like(clip_label), torch.zeros_like(clip_pass)
    label, use = source.combine(clip_label, clip_pass, self_label, self_pass)
    return TargetLabels(label=label, use=use, clip_pass=clip_pass, self_pass=self_pass,
                        conflict=clip_pass & self_pass & (clip_label != self_label))


def predict_clips(adapter: LMFTClassifier, batches: Iterable[ClipBatch],
                  amp_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(keys, argmax label, max softmax probability) of every clip of ``batches``, with the adapter in eval
    mode (:meth:`LMFTClassifier.predict`: its selector with tau_hat; random selectors draw from a fixed seed). CPU tensors."""
    keys, labels, confs = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0)]
    generator = torch.Generator().manual_seed(0)
    for batch in batches:
        conf, label = adapter.predict(batch.frames, batch.energy, generator, amp_dtype)["probs"].max(-1)
        keys.append(batch.key)
        labels.append(label.cpu())
        confs.append(conf.cpu())
    return torch.cat(keys), torch.cat(labels), torch.cat(confs)


def target_train_rows(shards: ShardSet):
    """The target-train rows' ``video_id``, ``label_index`` (monitoring only), CLIP's ``pseudo_label`` and
    ``pseudo_confidence``, in file order (no frames: cheap)."""
    return shards.read("target", "train", ["video_id", "label_index", "pseudo_label", "pseudo_confidence"])


def label_columns(rows, order: np.ndarray | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(CLIP ``pseudo_label`` (N,) int64, ``pseudo_confidence`` (N,) float32, ``label_index`` (N,) int64,
    -1 where unlabelled) of :func:`target_train_rows`, in ``order`` (default: file order)."""
    def col(name: str, dtype) -> Tensor:
        values = np.asarray(rows.column(name).fill_null(-1).to_numpy(zero_copy_only=False), dtype=dtype)
        return torch.tensor(values if order is None else values[order])  # a copy: Arrow buffers are read-only

    return col("pseudo_label", np.int64), col("pseudo_confidence", np.float32), col("label_index", np.int64)


def sorted_keys(video_ids: list[str]) -> tuple[Tensor, np.ndarray]:
    """(keys ascending, the order of ``video_ids`` that sorts them); duplicate keys are an error."""
    keys = torch.tensor([video_key(v) for v in video_ids], dtype=torch.int64)
    order = torch.argsort(keys)
    keys = keys[order]
    if len(keys) > 1 and bool((keys[1:] == keys[:-1]).any()):
        dup = int(keys[1:][keys[1:] == keys[:-1]][0])
        names = [v for v in video_ids if video_key(v) == dup]
        raise ValueError(f"target-train video ids {names} share the key {dup}: video ids must be unique")
    return keys, order.numpy()


def refresh_self_labels(adapter: LMFTClassifier, shards: ShardSet, dist: Dist, *, source: PseudoLabelSource,
                        gamma_c: float, self_gamma: float, epoch: int, batch_size: int,
                        device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
                        selection: str = "threshold", fraction: float = 1.0) -> tuple[SelfLabels, dict[str, float]]:
    """Classify every target-train clip with the current model and pass labels by the rule ``selection``
    (:data:`SELF_SELECTIONS`, with ``self_gamma`` or ``fraction``); every rank returns the same table and
    the ``pseudo/*`` metrics of :func:`pseudo_label_report` (module docstring). Call it on every rank."""
    t0 = time.perf_counter()
    device = torch.device(device)
    rows = target_train_rows(shards)
    ids = rows.column("video_id").to_pylist()
    keys, order = sorted_keys(ids)
    n = len(keys)
    mine = [ids[i] for i in order[dist.rank::dist.world_size]]
    k, label, conf = predict_clips(adapter, read_batches(shards, "target", "train", batch_size, mine), amp_dtype)
    if not torch.equal(k.sort().values, keys[dist.rank::dist.world_size].sort().values):
        raise RuntimeError(f"rank {dist.rank}: predicted {len(k)} clips for its {len(mine)} target-train clips")
    pos = torch.searchsorted(keys, k)
    table = torch.zeros(3, n, dtype=torch.float64)
    table[0, pos], table[1, pos], table[2, pos] = label.double(), conf.double(), 1.0
    table = dist.all_reduce_sum(table.to(device)).cpu()  # each clip filled by exactly one rank: x + 0 is exact
    if not bool((table[2] == 1).all()):
        raise RuntimeError(f"self-training labels: {int((table[2] != 1).sum())} of {n} target-train clips predicted "
                           "by no rank or by several")
    label, confidence = table[0].round().long(), table[1].float()
    passed = SELF_SELECTIONS[selection](label, confidence, self_gamma, fraction)  # on the all-reduced table: rank-free
    labels = SelfLabels(keys=keys, label=label, confidence=confidence, epoch=epoch, passed=passed)
    clip_label, clip_conf, true_label = label_columns(rows, order)
    metrics = pseudo_label_report(source, clip_label, clip_conf, gamma_c, true_label, labels.label, labels.confidence,
                                  self_gamma, self_pass=passed)
    metrics |= {"pseudo/self_refresh_epoch": float(epoch), "pseudo/self_refresh_s": time.perf_counter() - t0,
                "pseudo/target_train_clips": float(n)}
    if selection == "class_balanced":
        metrics["pseudo/self_fraction"] = float(fraction)
    return labels, metrics


def pseudo_label_report(source: PseudoLabelSource, clip_label: Tensor, clip_conf: Tensor, gamma_c: float,
                        true_label: Tensor, self_label: Tensor | None = None, self_conf: Tensor | None = None,
                        self_gamma: float = 1.0, self_pass: Tensor | None = None) -> dict[str, float]:
    """Monitoring metrics of the pseudo-labels of a set of clips (all arguments (N,), aligned).

    Fractions of all N clips: ``pseudo/clip_pass_rate`` (CLIP confidence > gamma_c), and with self labels
    ``pseudo/self_pass_rate`` (> self_gamma), ``pseudo/used_pass_rate`` (used by ``source``),
    ``pseudo/conflict_rate`` (both pass, labels differ), ``pseudo/self_clip_agreement`` (the two argmax
    labels agree, whatever the confidences), ``pseudo/self_mean_confidence``; over the clips where both pass:
    ``pseudo/self_clip_agreement_confident``. ``self_pass`` (N,) bool: which self labels pass (the refresh's
    selection rule); None: confidence > ``self_gamma``. Against ``true_label`` (-1: none), over the labelled clips
    only and **for monitoring only**: ``pseudo/labelled_fraction``; ``pseudo/clip_accuracy`` (of the clips
    passing gamma_c) and ``pseudo/clip_accuracy_all`` (argmax of every labelled clip); the same for
    ``self``; ``pseudo/used_accuracy`` (the labels ``source`` trains on). A metric whose denominator is 0
    is left out (no labels: no accuracy).
    """
    n = len(clip_label)
    labelled = true_label >= 0
    clip_pass = clip_conf > gamma_c
    out = {"pseudo/clip_pass_rate": _frac(clip_pass, n), "pseudo/labelled_fraction": _frac(labelled, n)}

    def accuracy(name: str, pred: Tensor, among: Tensor) -> None:
        m = among & labelled
        if bool(m.any()):
            out[name] = float((pred[m] == true_label[m]).double().mean())

    accuracy("pseudo/clip_accuracy", clip_label, clip_pass)
    accuracy("pseudo/clip_accuracy_all", clip_label, torch.ones_like(clip_pass))
    if self_label is None or self_conf is None:
        return out
    self_pass = self_conf > self_gamma if self_pass is None else self_pass
    label, use = source.combine(clip_label, clip_pass, self_label, self_pass)
    both = clip_pass & self_pass
    out |= {"pseudo/self_pass_rate": _frac(self_pass, n), "pseudo/used_pass_rate": _frac(use, n),
            "pseudo/conflict_rate": _frac(both & (clip_label != self_label), n),
            "pseudo/self_clip_agreement": _frac(self_label == clip_label, n),
            "pseudo/self_mean_confidence": float(self_conf.double().mean()) if n else math.nan}
    if bool(both.any()):
        out["pseudo/self_clip_agreement_confident"] = float((self_label[both] == clip_label[both]).double().mean())
    accuracy("pseudo/self_accuracy", self_label, self_pass)
    accuracy("pseudo/self_accuracy_all", self_label, torch.ones_like(self_pass))
    accuracy("pseudo/used_accuracy", label, use)
    return out


def _frac(mask: Tensor, n: int) -> float:
    return float(mask.sum()) / n if n else math.nan
