"""The ``[preprocess]`` profile section."""

from __future__ import annotations

from dataclasses import dataclass

from lmft_core.config import ConfigError


@dataclass(frozen=True)
class PreprocessConfig:
    """The ``[preprocess]`` profile section.

    ``store_frames``: keep the sampled uint8 frames in the shards (training then never decodes).
    ``max_rejected_fraction``: the run fails when rejects / manifest rows exceeds it.
    ``decode_*``: videos per decode task, CPUs per task, per-video time limit, memory per task.
    ``labeler_*``: the CLIP pseudo-labeler (:class:`~lmft_core.preprocess.labeler.ClipLabeler`): videos
    per CLIP forward, actors, CPUs and GPUs per actor (``labeler_num_gpus`` absent: 1 per actor when the
    cluster has GPUs, else 0). ``rows_per_shard``: minimum rows per Parquet file.
    """

    store_frames: bool = True
    max_rejected_fraction: float = 0.1
    decode_batch_size: int = 8
    decode_num_cpus: float = 1.0
    decode_timeout_s: float = 60.0
    decode_memory_mb: int = 1024
    labeler_batch_size: int = 8
    labeler_num_actors: int = 1
    labeler_num_cpus: float = 1.0
    labeler_num_gpus: float | None = None
    rows_per_shard: int = 64

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ConfigError(f"preprocess.max_rejected_fraction must be in [0, 1], got {self.max_rejected_fraction}")
        for name in ("decode_batch_size", "decode_memory_mb", "labeler_batch_size", "labeler_num_actors", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ConfigError(f"preprocess.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("decode_num_cpus", "labeler_num_cpus", "decode_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"preprocess.{name} must be > 0, got {getattr(self, name)}")
