"""The ``[pretrain]`` profile section: masked video pretraining (VideoMAE's recipe) before adaptation.

Terms: a **visible** token is one the encoder sees; the others are **masked** and the decoder reconstructs
their pixels. ``mask_ratio`` is masked / all tokens. Every strategy shows the same number of tokens per clip,
``N_t * round((1 - mask_ratio) * N_h * N_w)`` (at least one per temporal segment): ``tube`` needs a multiple
of N_t, and an equal budget keeps the strategies comparable (:func:`visible_count`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.pretrain.masking import MASKINGS
from lmft_core.train.config import PRECISIONS


@dataclass(frozen=True)
class PretrainConfig:
    """The ``[pretrain]`` section.

    Masking: ``masking`` names a registered strategy (:data:`~lmft_core.pretrain.masking.MASKINGS`:
    ``tube``, ``random``, ``motion``, ``learned``); ``mask_ratio`` in (0, 1) (VideoMAE: 0.9);
    ``temperature`` of ``motion`` (visible tokens drawn with probability proportional to
    ``exp(energy / temperature)``; energy is in [0, 1], so 0.25 weighs the most moving token up to e^4 = 55
    times the stillest); the ``learned`` sampler's hidden width ``sampler_hidden`` and its own
    constant Adam rate ``sampler_lr``.
    Autoencoder: the encoder is the profile's ``[model]`` (the one adaptation trains) with
    ``drop_path`` (VideoMAE pretrains without); the decoder has ``decoder_depth`` blocks of
    ``decoder_dim`` (0: half the encoder's width) with ``decoder_heads`` heads (0: the encoder's).
    Optimisation as ``[train]``'s (AdamW, warm-up then cosine, weight decay on matrices only).
    Data: the ``train`` split of every domain in ``domains`` (unlabelled: labels are never read), in
    batches of ``batch_size`` clips per worker. Workers, precision, checkpoints, failures and run name
    as in ``[train]``; ``figure_clips`` clips of target-train go into the reconstruction figure.
    """

    masking: str = "tube"
    mask_ratio: float = 0.9
    temperature: float = 0.25
    sampler_hidden: int = 32
    sampler_lr: float = 1e-3
    drop_path: float = 0.0
    decoder_dim: int = 0
    decoder_depth: int = 2
    decoder_heads: int = 0
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    grad_clip: float = 0.0
    domains: tuple[str, ...] = ("source", "target")
    shuffle: bool = True
    materialize_max_mb: int = 2048
    seed: int = 0
    workers: int = 2
    cpus_per_worker: float = 0.5
    gpus_per_worker: float | None = None
    threads_per_worker: int = 0
    precision: str = "auto"
    prefetch_batches: int = 2
    log_every_steps: int = 10
    keep_checkpoints: int = 2
    max_failures: int = 2
    max_steps_per_epoch: int = 0
    figure_clips: int = 3
    run_name: str = ""

    def __post_init__(self) -> None:
        MASKINGS.check(self.masking, "pretrain.masking")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"pretrain.mask_ratio must be in (0, 1), got {self.mask_ratio}")
        for name in ("epochs", "batch_size", "workers", "decoder_depth", "sampler_hidden", "prefetch_batches",
                     "log_every_steps", "keep_checkpoints", "figure_clips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "cpus_per_worker", "temperature", "sampler_lr"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"pretrain.{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "grad_clip", "decoder_dim", "decoder_heads",
                     "max_failures", "max_steps_per_epoch", "materialize_max_mb", "threads_per_worker"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pretrain.{name} must be >= 0, got {getattr(self, name)}")
        if self.masking == "learned" and self.batch_size < 2:
            raise ConfigError("pretrain.batch_size must be >= 2 with masking 'learned' (its baseline is the other clips' mean)")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"pretrain.drop_path must be in [0, 1), got {self.drop_path}")
        if not self.domains or not set(self.domains) <= {"source", "target"}:
            raise ConfigError(f"pretrain.domains must name 'source' and/or 'target', got {list(self.domains)}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"pretrain.gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"pretrain.precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.run_name and ("/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"pretrain.run_name {self.run_name!r}: a plain folder name, please")

    @property
    def threads(self) -> int:
        """torch threads per worker."""
        return self.threads_per_worker or max(1, math.ceil(self.cpus_per_worker))


def visible_count(mask_ratio: float, clip: ClipConfig) -> tuple[int, int]:
    """(visible tokens per clip, visible tokens per temporal segment for ``tube``) at ``mask_ratio``."""
    n_t, n_h, n_w = clip.grid
    per_segment = min(n_h * n_w, max(1, round((1.0 - mask_ratio) * n_h * n_w)))
    return n_t * per_segment, per_segment
