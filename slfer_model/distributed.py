"""Device choice and torchrun process groups for training."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.devices import DeviceError, resolve_device

logger = logging.getLogger(__name__)

# DeviceError is imported from here by train, which reports it as a user error.
__all__ = ["DeviceError", "DistributedContext", "all_reduce_sum", "barrier", "init_distributed", "shutdown"]


@dataclass(frozen=True)
class DistributedContext:
    """Place of this process in a run: its rank among `world_size` processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes the run folder (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the run has more than one process."""
        return self.world_size > 1


def init_distributed(device_spec: str) -> DistributedContext:
    """Join the torchrun process group when WORLD_SIZE > 1, else describe a single process.

    The backend is nccl for CUDA devices and gloo for CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)

    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        logger.info("rank %d of %d joined the %s process group on %s", rank, world_size, backend, device)

    return DistributedContext(rank, world_size, local_rank, device)


def barrier(context: DistributedContext) -> None:
    """Wait for every process of a distributed run; a no-op for one process."""
    if context.distributed:
        dist.barrier()


def all_reduce_sum(context: DistributedContext, values: list[float]) -> list[float]:
    """Sum `values` element-wise over all processes."""
    if not context.distributed:
        return values
    backend_device = context.device if context.device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def shutdown(context: DistributedContext) -> None:
    """Leave the process group, if this process joined one."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
