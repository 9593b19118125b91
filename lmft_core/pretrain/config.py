"""The ``[pretrain]`` profile section: masked video pretraining (VideoMAE's recipe) before adaptation.

Terms: a **visible** token is one the encoder sees; the others are **masked** and the decoder reconstructs
their pixels. ``mask_ratio`` is masked / all tokens. Every strategy shows the same number of tokens per clip,
``N_t * round((1 - mask_ratio) * N_h * N_w)`` (at least one per temporal segment): ``tube`` needs a multiple
of N_t, and an equal budget keeps the strategies comparable (:func:`visible_count`).

How the run is carried out (workers, CPUs and GPUs per worker, threads, precision, prefetching, checkpoints
kept, failures retried, shuffling, materialising, the seed) is ``[train]``'s: one place says what the
machines are, for pretraining and adaptation alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmft_core.config import ClipConfig, ConfigError
from lmft_core.pretrain.masking import MASKINGS

# the bounds of the numeric fields: name -> (lowest, highest, whether the bounds are allowed)
BOUNDS = {
    "mask_ratio": (0.0, 1.0, False), "drop_path": (0.0, 1.0, "low"), "temperature": (0.0, None, False),
    "sampler_lr": (0.0, None, False), "lr": (0.0, None, False), "min_lr": (0.0, None, True),
    "warmup_epochs": (0.0, None, True), "weight_decay": (0.0, None, True), "grad_clip": (0.0, None, True),
    "decoder_dim": (0, None, True), "decoder_heads": (0, None, True), "max_steps_per_epoch": (0, None, True),
    "epochs": (1, None, True), "batch_size": (1, None, True), "decoder_depth": (1, None, True),
    "sampler_hidden": (1, None, True), "figure_clips": (1, None, True),
}


@dataclass(frozen=True)
class PretrainConfig:
    """The ``[pretrain]`` section.

    Masking: ``masking`` names a registered strategy (:data:`~lmft_core.pretrain.masking.MASKINGS`:
    ``tube``, ``random``, ``motion``, ``learned``); ``mask_ratio`` in (0, 1) (VideoMAE: 0.9);
    ``temperature`` of ``motion`` (visible tokens drawn with probability proportional to
    ``exp(energy / temperature)``; energy is in [0, 1], so 0.25 weighs the most moving token up to e^4 = 55
    times the stillest); the ``learned`` sampler's hidden width ``sampler_hidden`` and its own constant
    Adam rate ``sampler_lr``.
    Autoencoder: the encoder is the profile's ``[model]`` (the one adaptation trains; from
    ``model.pretrained`` when set) with ``drop_path`` (VideoMAE pretrains without); the decoder has
    ``decoder_depth`` blocks of ``decoder_dim`` (0: half the encoder's width) with ``decoder_heads`` heads
    (0: the encoder's).
    Optimisation: AdamW (betas 0.9, 0.95), ``lr`` peak after ``warmup_epochs``, cosine to ``min_lr``, weight
    decay on matrices only, gradient clipping at ``grad_clip`` (0: off), ``epochs`` of ``batch_size`` clips
    per worker per step; ``max_steps_per_epoch`` (0: all) cuts epochs short.
    Data: the ``train`` split of every domain in ``domains`` (unlabelled: labels are never read).
    ``figure_clips`` target-train clips go into the reconstruction figure; ``run_name`` names the run
    (empty: derived from the configuration and the shards).
    """

    # masking
    masking: str = "tube"
    mask_ratio: float = 0.9
    temperature: float = 0.25
    sampler_hidden: int = 32
    sampler_lr: float = 1e-3
    # the autoencoder
    drop_path: float = 0.0
    decoder_dim: int = 0
    decoder_depth: int = 2
    decoder_heads: int = 0
    # optimisation
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    # (weight decay on matrices only; gradient clipping 0 = off)
    weight_decay: float = 0.05
    grad_clip: float = 0.0
    max_steps_per_epoch: int = 0
    # data, figure, name
    domains: tuple[str, ...] = ("source", "target")
    figure_clips: int = 3
    run_name: str = ""

    def __post_init__(self) -> None:
        MASKINGS.check(self.masking, "pretrain.masking")
        for name, (low, high, closed) in BOUNDS.items():
            value = getattr(self, name)
            low_ok = value >= low if closed in (True, "low") else value > low
            high_ok = high is None or (value <= high if closed is True else value < high)
            if not (low_ok and high_ok):
                left, right = "[" if closed in (True, "low") else "(", "]" if closed is True and high is not None else ")"
                raise ConfigError(f"pretrain.{name} must be in {left}{low}, {'inf' if high is None else high}{right}, got {value}")
        if self.masking == "learned" and self.batch_size < 2:
            raise ConfigError("pretrain.batch_size must be >= 2 with masking 'learned' (its baseline is the other clips' mean)")
        if not self.domains or not set(self.domains) <= {"source", "target"}:
            raise ConfigError(f"pretrain.domains must name 'source' and/or 'target', got {list(self.domains)}")
        if self.run_name and ("/" in self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"pretrain.run_name {self.run_name!r}: a plain folder name, please")


def visible_count(mask_ratio: float, clip: ClipConfig) -> tuple[int, int]:
    """(visible tokens per clip, visible tokens per temporal segment for ``tube``) at ``mask_ratio``."""
    n_t, n_h, n_w = clip.grid
    per_segment = min(n_h * n_w, max(1, round((1.0 - mask_ratio) * n_h * n_w)))
    return n_t * per_segment, per_segment
