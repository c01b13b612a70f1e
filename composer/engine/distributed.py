"""The process group and FSDP2 sharding behind the pretraining job.

Under `torchrun` (one process per GPU, on one node or many) the group comes from the environment
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain `composer-pretrain`
starts a group of one, so a single GPU runs the same code path. NCCL on CUDA, gloo on CPU.

Sharding follows FSDP2's recipe: `fully_shard` each layer, then the root, so one layer's
parameters are gathered at a time; bf16 parameters with fp32 gradient reduction on CUDA. Over
micro-batches, gradients are reduce-scattered once per step, at the last one (`set_gradient_sync`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> World:
    """This process's place in the group; rank 0 of 1 when no group is running."""
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init() -> World:
    """Join the group torchrun describes, or start a group of one. Idempotent."""
    if not dist.is_initialized():
        if "RANK" not in os.environ:  # not under torchrun: a group of one on this machine
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                              MASTER_PORT=os.environ.get("MASTER_PORT") or str(_free_port()))
        if torch.cuda.is_available():
            gpu = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(gpu)
            dist.init_process_group("nccl", device_id=gpu)
        else:
            dist.init_process_group("gloo")
    return current()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device() -> torch.device:
    return torch.device("cuda", current().local_rank) if torch.cuda.is_available() else torch.device("cpu")


def shard(module: nn.Module, layers: list[nn.Module], *, bf16: bool) -> None:
    """FSDP2 in place: each of `layers` its own unit, then the root (embedding, final norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for i, layer in enumerate(layers):
        # the last layer's parameters are needed again at once by backward: keep them gathered
        fully_shard(layer, mp_policy=policy, reshard_after_forward=i < len(layers) - 1)
    fully_shard(module, mp_policy=policy)


def set_gradient_sync(module: nn.Module, enabled: bool) -> None:
    """FSDP2 gradient accumulation without communication: with sync off, a backward keeps adding
    into unsharded fp32 gradients (one model's worth per rank); the backward with sync on (the
    last micro-batch of a step) reduce-scatters them once. A no-op on a module FSDP2 did not shard."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(module, FSDPModule):
        module.set_requires_gradient_sync(enabled)


def all_mean(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any (so all ranks stop at the same step)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
