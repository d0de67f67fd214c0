"""Training in launched processes: torchrun on this machine, or DeepSpeed's launcher across
the machines of a hostfile. Used by `distill train` and by the scheduled run's train stage."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Launch:
    """How many training processes, and where: ``--nproc``, ``--hostfile``, ``--num_nodes``."""

    nproc: int = 1
    hostfile: Path | None = None
    num_nodes: int | None = None

    @property
    def launched(self) -> bool:
        """Whether training runs in launched processes (and this one only launches them)."""
        return (self.nproc > 1 or self.hostfile is not None) and "LOCAL_RANK" not in os.environ


def train_command(
    args: list[str], nproc: int, hostfile: Path | None, num_nodes: int | None, port: int
) -> list[str]:
    """The launcher command that runs ``distill.cli train ARGS`` in every process: torchrun on
    this machine, or DeepSpeed's launcher (ssh/pdsh to the hostfile's hosts) across machines.
    DeepSpeed's ``--no_local_rank``: the processes read LOCAL_RANK from the environment."""
    if hostfile is not None:
        nodes = ["--num_nodes", str(num_nodes)] if num_nodes else []
        return [
            sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), *nodes,
            "--num_gpus", str(nproc), "--master_port", str(port), "--no_local_rank",
            "--module", "distill.cli", "train", *args,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
        f"--master_port={port}", "-m", "distill.cli", "train", *args,
    ]  # fmt: skip


def launch_train(launch: Launch, pipeline: Path, overrides: list[str], resume: bool) -> int:
    """Run `distill train PIPELINE --set …` in the launched processes; their exit status."""
    from distill.train.distributed import free_port

    args = [str(pipeline), *(a for o in overrides for a in ("--set", o)), *(["--resume"] if resume else [])]
    return subprocess.call(train_command(args, launch.nproc, launch.hostfile, launch.num_nodes, free_port()))
