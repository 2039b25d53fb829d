"""Multi-process training under `accelerate launch` or `torchrun` (DDP; gloo on CPU, NCCL on GPUs).

The launcher sets WORLD_SIZE/RANK/LOCAL_RANK; `init_from_env` starts the process group through
accelerate and returns this process's device. The trainer then splits every global batch between the
processes (see `sfd.core.trainer`), so results do not depend on how many processes share the work.
"""

from __future__ import annotations

import os


def resolve_device(name: str) -> str:
    """`auto`: cuda when available, else cpu; an explicit cuda device that is not there is one line (imports torch)."""
    import torch

    from sfd.kernel.errors import SFDError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SFDError(f"--device {name} asked for, but no CUDA device is available")
    return name


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str) -> str:
    """Initialise the process group when launched with several processes; returns the device to use."""
    if world_size_from_env() <= 1:
        return device
    from accelerate import PartialState

    state = PartialState(cpu=not str(device).startswith("cuda"))
    return str(state.device)
