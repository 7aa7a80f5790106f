"""Distributed training with PyTorch's own engine: torchrun starts the processes and sets the
environment, DDP averages gradients. Gloo on CPU, NCCL on GPU. Without torchrun everything here
but the launcher is a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on any (e.g. a stop request)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world


def init(device: torch.device) -> Dist:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, processes: int | None = None) -> torch.device:
    """"auto" is this process's own GPU when every process on this machine can have one, else the CPU.

    `processes` is the number of training processes on this machine (default: torchrun's
    LOCAL_WORLD_SIZE, 1 without torchrun); NCCL cannot put two processes on one GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"train.device must be auto, cpu or cuda, got {name!r}")
    local = processes if processes is not None else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "cuda" and gpus == 0:
        raise ValueError("train.device = cuda, but no CUDA device is available")
    if name == "cuda" and local > gpus:
        raise ValueError(
            f"train.device = cuda needs a GPU per process: {local} processes on this machine, {gpus} GPU(s)"
            " (use fewer processes, or train.device = cpu)"
        )
    if name == "cpu" or gpus == 0 or local > gpus:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command line that runs `python -m asr ARGS` in `nproc` processes on this machine under
    torchrun (`--standalone`: a rendezvous on localhost, no launcher of its own to start)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "asr", *args]


def launch_training(config: str | Path, out: str | Path, nproc: int, overrides: Sequence[str] = (), device: str = "auto") -> int:
    """Train in `nproc` processes on this machine: torchrun runs `asr train CONFIG --out OUT
    --set ...` in each, and `asr.train.train` joins them (DDP). `device` (train.device, after the
    overrides) is checked first, so a machine with too few GPUs fails here once (ValueError), not
    once per process. Returns torchrun's exit status."""
    resolved = resolve_device(device, nproc)
    if resolved.type == "cpu" and device == "auto" and torch.cuda.is_available():
        print(f"{nproc} processes on the CPU (gloo): CUDA needs a GPU per process", file=sys.stderr, flush=True)
    args = ["train", str(config), "--out", str(out), *[a for o in overrides for a in ("--set", o)]]
    return subprocess.call(torchrun_command(nproc, args))
