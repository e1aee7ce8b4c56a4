"""Evaluation sharded over the ranks of a torch.distributed group (the one ``torchrun`` or Lightning's DDP launcher starts).

* :func:`world` — this process's rank and the group's size (0 and 1 without a group);
* :func:`init_from_environment` — start the group a ``torchrun`` launch describes in its environment
  (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``…), gloo on a CPU and NCCL on a GPU, unless one is running;
* :func:`eval_blocks` — the blocks of points an evaluation is done (and saved) in, each rank having one;
* :func:`rank_blocks` — the blocks a rank evaluates: r, r + W, r + 2W, …;
* :func:`gather_to_first` — every rank's result, in rank order, on rank 0 (:func:`gather_to_all`: on every rank);
* :func:`from_first` — rank 0's object on every rank; :func:`barrier` — wait for every rank.

With the per-datapoint random numbers of :mod:`inference.streams`, a point's results do not depend
on which rank evaluated it, so a sharded run gives the numbers of one process.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` a launcher (``torchrun``) set, 1 without one."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WORLD_SIZE must be a positive integer, got {text!r}")
    return int(text)


def init_from_environment(device: torch.device) -> bool:
    """Join the group a launcher described in the environment (gloo on a CPU, NCCL on a GPU); True if one now runs.

    Nothing happens when a group already runs (Lightning's DDP started it) or the launch was for one process."""
    if dist.is_initialized():
        return True
    if launched_world_size() == 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=12))  # shards of hours-long AIS wait on each other
    return True


def eval_blocks(n: int, size: int, world_size: int = 1) -> list[tuple[int, int]]:
    """The blocks ``[lo, hi)`` of ``size`` points (the last shorter) that ``n`` points are evaluated in, ``size`` made
    small enough that each of ``world_size`` ranks has a block."""
    size = max(1, min(size, -(-n // world_size)))
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def rank_blocks(blocks: list[tuple[int, int]], rank: int, world_size: int) -> list[int]:
    """The indices of the ``blocks`` rank ``rank`` evaluates: r, r + W, r + 2W, … (round-robin)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a group of {world_size}")
    return list(range(rank, len(blocks), world_size))


def gather_to_first(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order, on rank 0 (None on the others); ``[obj]`` without a group.

    Objects travel pickled (``gather_object``): move tensors to the CPU first."""
    rank, size = world()
    if size == 1:
        return [obj]
    if dist.get_backend() == "nccl":  # gather_object is not supported over NCCL: all_gather_object is
        everything = gather_to_all(obj)
        return everything if rank == 0 else None
    out = [None] * size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def gather_to_all(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank; ``[obj]`` without a group. Objects travel pickled: CPU tensors."""
    size = world()[1]
    if size == 1:
        return [obj]
    everything: list[Any] = [None] * size
    dist.all_gather_object(everything, obj)
    return everything


def from_first(obj: Any) -> Any:
    """Rank 0's ``obj``, on every rank (what the others pass is ignored); ``obj`` itself without a group."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing without a group)."""
    if world()[1] > 1:
        dist.barrier()
