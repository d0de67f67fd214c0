"""Process-group setup and the one rank helper the rest of the code uses."""

from __future__ import annotations

import os
import socket
import sys

import torch

from distill.core.assets import home

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_environment() -> None:
    """Make a bare `python`/`distill` process look like rank 0 of 1 to DeepSpeed.

    Without these DeepSpeed tries MPI discovery (and fails on mpi4py). Its ops are
    JIT-compiled into TORCH_EXTENSIONS_DIR; pointing that at distill's own cache makes
    the one CPU op it builds (shared-memory allreduce, ~40 s) a one-time cost.
    """
    if not all(v in os.environ for v in LAUNCH_VARS):
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(home() / "torch_extensions"))
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def print0(*args: object) -> None:
    """Print from rank 0 only, to stderr so stdout stays for results."""
    if is_main():
        print(*args, file=sys.stderr, flush=True)


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over ranks (a new, detached tensor), or ``tensor`` itself with one rank.

    Task weighting derives weights from loss values and gradients; averaging them first gives every
    rank the same weighting state, so ranks never disagree on weights. ReduceOp.AVG is NCCL-only,
    hence SUM then divide, which gloo (CPU) supports too. Pass float32: gloo has no bf16 sum.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    world = torch.distributed.get_world_size()
    if world == 1:
        return tensor
    total = tensor.detach().clone()  # all_reduce works in place
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total / world
