"""Device and numeric precision: pick the fastest correct path, or the one asked for."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from covseg.errors import CovsegError

__all__ = ["resolve_device", "cpu_supports_bf16", "resolve_precision", "autocast", "DistContext",
           "init_distributed", "close_distributed"]


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (error without a GPU) or ``auto`` (CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CovsegError("CUDA was requested but no GPU is visible to PyTorch; use --device cpu or auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise CovsegError(f"unknown device {name!r}: use cpu, cuda or auto")


def cpu_supports_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX): bf16 is then a speed-up."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``fp32``, ``bf16`` (error where unsupported) or ``auto`` (bf16 where fast, else fp32)."""
    if precision == "fp32":
        return torch.float32
    supported = cpu_supports_bf16() if device.type == "cpu" else torch.cuda.is_bf16_supported()
    if precision == "bf16":
        if not supported:
            raise CovsegError(f"bf16 was requested but this {device.type} has no fast bf16 support; "
                              "use precision fp32 or auto")
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if supported else torch.float32
    raise CovsegError(f"unknown precision {precision!r}: use auto, fp32 or bf16")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Autocast to ``dtype`` on ``device`` (a no-op for fp32)."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``).

    Without ``torchrun`` (or with one process) nothing happens. Backend: NCCL on CUDA (each process on
    ``cuda:LOCAL_RANK``), gloo on CPU. Returns the context and the device this process uses.
    """
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise CovsegError("this PyTorch build has no torch.distributed; train with one process")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size()), device


def close_distributed() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
