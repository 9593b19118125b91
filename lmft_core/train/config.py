"""The ``[train]`` profile section: the adaptation run (optimisation, losses, workers, evaluation).

Terms: a **step** is one optimizer step; it sees ``accum_steps`` micro-batches of ``batch_size``
source clips and ``batch_size`` target clips on each of ``workers`` workers. An **epoch** is one pass
over the smaller of source-train and target-train (the two are consumed together, step by step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from lmft_core.config import PRECISIONS, ConfigError
from lmft_core.model.selectors import FOCUS_KEYS, SelectorConfig
from lmft_core.train.pseudo import PSEUDO_LABEL_SOURCES, SELF_SELECTIONS, self_fraction

INGESTS = ("auto", "memory", "ray_data")  # how training batches reach the workers (TrainConfig)

DEFAULT_EVALUATE = (
    SelectorConfig(name="full"),
    SelectorConfig(name="random", match="lmft"),
    SelectorConfig(name="threshold", calibrate=True, keep_ratio=0.5),
    SelectorConfig(name="topk", keep_ratio=0.5),
)


@dataclass(frozen=True)
class TrainConfig:
    """The ``[train]`` section. Where the paper is silent the defaults are lmft's choice (docs/training.md).

    Optimisation: AdamW on the model (``lr`` peak, linear warm-up over ``warmup_epochs``, cosine decay
    to ``min_lr``, ``weight_decay`` on weight matrices only), gradient clipping at ``grad_clip`` (global
    norm; 0 = off). The threshold policy has its own parameter group: ``policy_lr``, constant, no
    weight decay (decay would pull log sigma towards 0 on its own).
    Losses: ``L_s + lambda_t * L_t``; L_t is the cross-entropy on target clips against their pseudo-labels,
    on the clips whose label passes its threshold (0 when none does). ``label_smoothing`` applies to both.
    Pseudo-labels (:mod:`lmft_core.train.pseudo`): ``pseudo_labels`` names their source: ``clip`` (CLIP's,
    confidence above ``gamma_c``; the paper's), ``self`` (the model's own predictions on target-train,
    refreshed every ``self_refresh_epochs`` epochs) or ``clip+self`` (either passing; both passing and
    disagreeing: dropped). Which self labels pass is ``self_selection``: ``threshold`` (softmax probability
    above ``self_gamma``) or ``class_balanced`` (per predicted class the most confident fraction, from
    ``self_fraction_start`` at the first refresh, ``+ self_fraction_step`` per refresh, at most
    ``self_fraction_max``; each in (0, 1], the step in [0, 1]).
    Data: ``batch_size`` clips per domain per worker per micro-batch; ``hflip`` flips half the clips
    (frames and energy together); ``color_jitter`` (0 = off) is the strength of the per-clip
    brightness, contrast and channel-gain jitter; ``background_mix`` (0 = off) the largest weight of a
    target clip's static scene blended into each source clip (CoMix's background mixing; both in
    :mod:`lmft_core.augment`); ``hflip_label_map`` pairs
    classes that a flip swaps
    (``{slide_left = "slide_right"}``); ``shuffle`` reshuffles the training rows every epoch.
    Ingest (:data:`INGESTS`): ``memory`` decodes both training splits once into every worker's memory and
    draws each epoch's batches from there (a seeded permutation per epoch, split equally over the ranks: no
    JPEG decoding and no Ray Data work per step); ``ray_data`` streams them from the shards through Ray Data
    (``streaming_split``, a reshuffle per epoch, JPEGs decoded per batch), holding a split in Ray's object
    store across epochs when its frames take at most ``materialize_max_mb``; ``auto`` is ``memory`` when
    both splits' decoded frames take at most ``materialize_max_mb`` together, else ``ray_data``.
    Workers: ``workers`` Ray Train workers with ``cpus_per_worker`` CPUs (Ray's accounting: leave CPUs
    for Ray Data's ingest, which stalls without them) and ``gpus_per_worker`` GPUs (absent: 1 when the
    cluster has GPUs, else 0); ``threads_per_worker`` torch threads per worker (0: ``cpus_per_worker``
    rounded up);
    ``precision`` ``auto`` is bf16 autocast on GPU and fp32 on CPU.
    Evaluation on target-test with tau_hat: the training selector and every selector of ``evaluate``
    at the end (and the training selector every ``eval_every_epochs`` epochs); see :meth:`evaluate_for`
    for the default list under a per-segment threshold.
    Checkpoints every epoch (the last ``keep_checkpoints`` kept); ``max_failures`` worker-group
    restarts from the last checkpoint. ``run_name`` names the run (empty: derived from the
    configuration and the shards, so the same command resumes the same run).
    ``max_steps_per_epoch`` (0 = all) cuts epochs short (tests, benchmarks).
    ``require_pretrained``: refuse to start when ``model.pretrained`` is empty (the paper profile).
    """

    epochs: int = 20
    batch_size: int = 16
    accum_steps: int = 1
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 2.0
    weight_decay: float = 0.05
    policy_lr: float = 0.01
    grad_clip: float = 1.0
    gamma_c: float = 0.8
    lambda_t: float = 0.5
    pseudo_labels: str = "clip"
    self_gamma: float = 0.9
    self_refresh_epochs: int = 1
    self_selection: str = "threshold"
    self_fraction_start: float = 0.2
    self_fraction_step: float = 0.1
    self_fraction_max: float = 0.5
    label_smoothing: float = 0.0
    hflip: bool = True
    hflip_label_map: dict[str, str] = field(default_factory=dict)
    color_jitter: float = 0.0
    background_mix: float = 0.0
    shuffle: bool = True
    ingest: str = "auto"
    materialize_max_mb: int = 2048
    seed: int = 0
    workers: int = 2
    cpus_per_worker: float = 0.5
    gpus_per_worker: float | None = None
    threads_per_worker: int = 0
    precision: str = "auto"
    evaluate: tuple[SelectorConfig, ...] = DEFAULT_EVALUATE
    eval_every_epochs: int = 1
    eval_batch_size: int = 32
    keep_checkpoints: int = 2
    max_failures: int = 2
    prefetch_batches: int = 2
    max_steps_per_epoch: int = 0
    run_name: str = ""
    require_pretrained: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "accum_steps", "workers", "eval_every_epochs", "eval_batch_size",
                     "keep_checkpoints", "prefetch_batches", "self_refresh_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "cpus_per_worker"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "policy_lr", "grad_clip", "lambda_t", "max_failures",
                     "max_steps_per_epoch", "materialize_max_mb", "threads_per_worker"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("gamma_c", "self_gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        PSEUDO_LABEL_SOURCES.check(self.pseudo_labels, "train.pseudo_labels")
        SELF_SELECTIONS.check(self.self_selection, "train.self_selection")
        for name in ("self_fraction_start", "self_fraction_max"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"train.{name} must be in (0, 1] (a fraction of each class's clips), got {getattr(self, name)}")
        if not 0.0 <= self.self_fraction_step <= 1.0:
            raise ConfigError(f"train.self_fraction_step must be in [0, 1], got {self.self_fraction_step}")
        if self.self_fraction_start > self.self_fraction_max:
            raise ConfigError(f"train.self_fraction_start={self.self_fraction_start} exceeds "
                              f"train.self_fraction_max={self.self_fraction_max}")
        for name in ("color_jitter", "background_mix"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"train.gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.ingest not in INGESTS:
            raise ConfigError(f"train.ingest must be one of {list(INGESTS)}, got {self.ingest!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.hflip_label_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.hflip_label_map.items()):
            raise ConfigError(f"train.hflip_label_map must be a table of class names, got {self.hflip_label_map!r}")
        if self.run_name and ("/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"train.run_name {self.run_name!r}: a plain folder name, please")

    def evaluate_for(self, selector: SelectorConfig) -> tuple[SelectorConfig, ...]:
        """The selectors ``evaluate`` means for a run trained with ``selector``.

        The default list's ``random`` is matched to ``lmft``; when the run's policy is another kind (it
        trains ``lmft-segment``, or a ``random`` matched to it) or the run trains ``adafocus``, that entry
        matches the run's learned selector instead (label ``random-match-lmft-segment``). Every selector must draw on the policy the
        run builds (:attr:`SelectorConfig.policy_kind`), else a ConfigError naming ``train.evaluate``. Every
        selector takes the run's first-segment rule (``selector.first_segment``), so the baselines compare
        like with like.
        """
        evaluate = self.evaluate
        learned = selector.match or selector.name
        if evaluate == DEFAULT_EVALUATE and (selector.policy_kind != "scalar" or selector.focus):
            focus = {k: getattr(selector, k) for k in FOCUS_KEYS}  # random matched to adafocus: the run's window
            evaluate = tuple(replace(s, match=learned, **focus) if s.match == "lmft" else s for s in evaluate)
        wrong = [s.label for s in evaluate if (s.focus and not selector.focus) or (selector.focus and s.uses_policy)]
        if wrong:
            raise ConfigError(f"train.evaluate: {wrong} need a learned part that selector.name={selector.name!r} does "
                              "not train (the adafocus glance network, or a learned threshold in an adafocus run); "
                              "evaluate the run's own learned selector and selectors without learned parts")
        wrong = [s.label for s in evaluate if s.uses_policy and s.policy_kind != selector.policy_kind]
        if wrong:
            raise ConfigError(f"train.evaluate: {wrong} draw on a threshold policy of another kind than the "
                              f"{selector.policy_kind!r} one that selector.name={selector.name!r} builds; "
                              f"evaluate the learned selector of this run ({learned!r} is always evaluated) "
                              "or drop them")
        return tuple(replace(s, first_segment=selector.first_segment) for s in evaluate)

    def resolve_ingest(self, decoded_mb: float) -> TrainConfig:
        """This section with ``ingest`` decided: ``auto`` becomes ``memory`` when the training splits' decoded
        frames (``decoded_mb``, both domains) take at most ``materialize_max_mb``, else ``ray_data``."""
        if self.ingest != "auto":
            return self
        return replace(self, ingest="memory" if decoded_mb <= self.materialize_max_mb else "ray_data")

    def self_fraction(self, epoch: int) -> float:
        """The class-balanced fraction of the self-training refresh after ``epoch`` completed epochs (the
        ``epoch // self_refresh_epochs``-th refresh): :func:`lmft_core.train.pseudo.self_fraction`."""
        return self_fraction(epoch // self.self_refresh_epochs, self.self_fraction_start, self.self_fraction_step,
                             self.self_fraction_max)

    @property
    def threads(self) -> int:
        """torch threads per worker."""
        return self.threads_per_worker or max(1, math.ceil(self.cpus_per_worker))
