"""Distributed setup in one place: the rank, the world size and the few collectives training uses.

Everything that needs the process group goes through a :class:`Dist` passed explicitly (no global
rank lookups in the training code). With ``world_size == 1`` every collective is the identity, so
the step function runs unchanged in a plain process (tests, notebooks). Under Ray Train the process
group is set up by ``TorchTrainer`` (gloo on CPU, NCCL on GPU); :func:`from_ray_context` reads the
rank and world size from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Dist:
    """``rank`` of this process among ``world_size``; rank 0 is the one that logs and checkpoints."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, x: Tensor) -> Tensor:
        """Sum of ``x`` over ranks (in place; returns ``x``)."""
        if self.active:
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
        return x

    def all_true(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """Whether ``flag`` holds on every rank (one all-reduce; every rank must call it)."""
        return float(self.all_reduce_sum(torch.tensor([float(flag)], device=device))) == self.world_size

    def broadcast(self, x: Tensor, src: int = 0) -> Tensor:
        """Rank ``src``'s ``x`` on every rank (in place; returns ``x``)."""
        if self.active:
            torch.distributed.broadcast(x, src=src)
        return x

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` under DistributedDataParallel when there are several ranks, else itself."""
        if not self.active:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def from_ray_context() -> Dist:
    """The rank and world size of this Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return Dist(rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
