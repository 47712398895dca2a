"""Process-group setup for ``torchrun``: one process per GPU (NCCL) or per CPU worker (gloo).

Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) everything here is a no-op, so the training loop has a single
code path for one and many processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from vidseg_ros.runtime.segmenter import pick_device


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job and which device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError as e:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from e


def setup(requested_device: str = "auto") -> DistEnv:
    """Reads torchrun's environment, picks the device and joins the process group when there are peers.

    ``auto`` selects ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU; the backend is NCCL on CUDA and
    gloo on the CPU.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = pick_device(requested_device)
    if device.type == "cuda":
        index = local_rank if world > 1 else (device.index or 0)
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def teardown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        if env.device.type == "cuda":
            dist.barrier(device_ids=[env.device.index])
        else:
            dist.barrier()


def wrap(module: nn.Module, env: DistEnv) -> nn.Module:
    """``module`` inside DistributedDataParallel when there are peers; gradients are averaged over ranks."""
    if not env.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def mean_over_ranks(value: float, env: DistEnv) -> float:
    """The mean of a scalar over all ranks (the scalar itself in a single process)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def parameter_spread(module: nn.Module, env: DistEnv) -> float:
    """Largest difference between ranks of any parameter's checksum; 0.0 means the replicas agree exactly.

    The checksum of each parameter is its sum in float64 on every rank; max and min over ranks are compared.
    """
    if not env.distributed:
        return 0.0
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(env.device)
    high, low = sums.clone(), sums.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).abs().max().item())
