"""Data-parallel training with torchrun: the process group, the few collectives the loop needs, the launch.

torchrun starts one process per GPU (or per CPU worker) and tells each its place through the environment
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``…). :func:`setup` reads it,
joins the process group (NCCL on GPUs, gloo on CPU) and pins each process to ``cuda:LOCAL_RANK``. A process
started without torchrun is a world of one, and every helper here is then a no-op.

What each torchrun process runs is :mod:`gptlab.worker`; the train stage launches them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from gptlab.core.hardware import resolve_device
from gptlab.errors import GptlabError


class DistributedError(GptlabError, RuntimeError):
    """A process that cannot take its place in the training job as launched; the message names the fix."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the training job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def setup(device_name: str, nproc_per_node: int) -> Dist:
    """Join the process group torchrun set up (or return a world of one); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not launched_by_torchrun():
        if nproc_per_node > 1:
            raise DistributedError(
                f"train.nproc_per_node={nproc_per_node} but this process was not started by torchrun: run "
                f"`python -m flows.train` (it launches torchrun) or `torchrun --nproc_per_node {nproc_per_node} "
                "-m gptlab train`, or set `-S train.nproc_per_node=1`"
            )
        return Dist(device=resolve_device(device_name))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if local_world != nproc_per_node:
        raise DistributedError(
            f"torchrun started {local_world} processes on this node but train.nproc_per_node={nproc_per_node}: "
            f"add `-S train.nproc_per_node={local_world}` (the setting is logged with the run and sizes the launch)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if device.index is not None:
            raise DistributedError(
                f"train.device={device_name!r} names one GPU, but each of the {world} processes takes its own "
                "(cuda:LOCAL_RANK): use `-S train.device=cuda` or `auto`"
            )
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} visible, "
                f"train.nproc_per_node={nproc_per_node}"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(d: Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (pickled: for small state, not tensors in bulk)."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(d: Dist, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    return box[0]


def all_reduce_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (gloo has no AVG: callers divide)."""
    if d.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
