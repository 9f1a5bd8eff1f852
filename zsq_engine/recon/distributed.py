"""Data-parallel reconstruction under ``torchrun`` (gloo on CPU, NCCL on GPUs).

Every process holds the same cached unit inputs / outputs and draws the same batch indices
each step; process r takes the contiguous rows ``[B r / P, B (r + 1) / P)`` of the batch, its
QDrop masks keyed by those rows' element positions (so each element gets the mask it gets in
a 1-process run), and its loss divided by the FULL batch's element count. Summing the gradients
over processes (one all-reduce per step) then gives the 1-process gradient, up to the order of
floating-point additions; every process takes the same Adam step and ends with the same model.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import torch

__all__ = ["ReconWorld"]


class ReconWorld:
    """Rank and size of the run; initialises torch.distributed when ``WORLD_SIZE > 1``."""

    def __init__(self, device: torch.device) -> None:
        self.size = max(1, int(os.environ.get("WORLD_SIZE", "1")))
        self.rank, self.owned, self.device = 0, False, torch.device(device)
        if self.size == 1:
            return
        import torch.distributed as dist

        if self.device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            self.device = torch.device("cuda", local if self.device.index is None else self.device.index)
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owned = True
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def rows(self, batch: int) -> Tuple[int, int]:
        """This process's contiguous share ``[start, stop)`` of a batch of ``batch`` rows."""
        return batch * self.rank // self.size, batch * (self.rank + 1) // self.size

    def sum_gradients(self, params: List[torch.Tensor]) -> None:
        """All-reduce (sum) the gradients of ``params`` in one flat buffer."""
        if self.size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        i = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[i:i + n].view_as(p).clone()
            i += n

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False
