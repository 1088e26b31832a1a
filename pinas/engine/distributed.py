"""Distributed set-up for torchrun: the process group, each rank's device, and the few collectives the stages use.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) a process group is started (NCCL on GPU, gloo on CPU);
in a single process every helper here is a no-op, so stage code reads the same either way.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE_PROCESS = DistInfo()


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; single-process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def resolve_device(requested: str, info: DistInfo = SINGLE_PROCESS) -> torch.device:
    """``auto`` picks CUDA when present; each rank takes its local GPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no GPU")
        return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return torch.device(requested)


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (used for the sampled paths)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def all_gather_cat(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate equally shaped tensors from all ranks along dim 0 (rank order)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group at the end of a torchrun entry point."""
    if dist.is_initialized():
        dist.destroy_process_group()


def use_amp(mode: str, device: torch.device) -> bool:
    """``amp: auto`` means mixed precision on GPU only; ``on`` / ``off`` force it."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def wrap_ddp(module: torch.nn.Module, device: torch.device, info: DistInfo,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` in DistributedDataParallel under torchrun, as it is otherwise."""
    if not info.enabled:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters)
