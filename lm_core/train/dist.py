"""Distributed helpers: this process's rank, the world size, and reductions over ranks.

Under ``torchrun`` the CLI initialises ``torch.distributed`` (gloo on CPU, NCCL on CUDA) before
building the trainer; everywhere else there is one rank and every reduction is the identity,
so single-process training pays nothing for them.
"""

from __future__ import annotations

import os

import torch


class Ranks:
    """Who this process is among the training processes, and collective reductions over them."""

    def __init__(self, device: torch.device) -> None:
        dist = torch.distributed
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.device = device

    @property
    def many(self) -> bool:
        """More than one process trains: reductions talk to the others."""
        return self.distributed and self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """Training processes on this machine (they share its cores)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)) if self.distributed else 1

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when several ranks train, else itself."""
        if not self.many:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop, a NaN, a deadline)."""
        if not self.many:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (each rank's train loss is its own batch's)."""
        if not self.many:
            return value
        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world_size

    def max(self, value: float) -> float:
        """The largest ``value`` over ranks (the slowest clock, for a time schedule)."""
        if not self.many:
            return value
        t = torch.tensor([value], device=self.device, dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()
