"""Device and numeric precision: pick the fastest correct path, or the one asked for."""
from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from covseg.errors import CovsegError
from covseg.wording import counted

__all__ = ["resolve_device", "cpu_supports_bf16", "cuda_supports_bf16", "resolve_precision", "autocast",
           "training_memory_format", "keep_freed_memory", "cgroup_cpu_limit", "fit_threads_to_cpu_quota",
           "DistContext", "init_distributed", "close_distributed", "raise_on_every_rank", "peer_failed",
           "refuse_under_torchrun"]

# glibc's mallopt(3) parameters and the values keep_freed_memory() gives them
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD = 1 << 30  # blocks under 1 GiB come from the heap, not from a fresh mmap
_TRIM_THRESHOLD = (1 << 31) - 1  # the heap's free top is given back only past 2 GiB (mallopt takes an int)
_TOP_PAD = 1 << 30  # the heap grows 1 GiB at a time (address space: pages count once touched)


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
    """True where the CPU computes bf16 natively (x86: AVX512-BF16 or AMX; elsewhere oneDNN's own answer): bf16
    is then a speed-up.

    oneDNN's ``_is_mkldnn_bf16_supported()`` alone also says yes on x86 CPUs with plain AVX-512 (Skylake, Cascade
    Lake, Ice Lake), which emulate bf16: a convolution stack capped there (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``) ran
    1.8x slower in bf16 than in fp32 (session 51's review), as emulated bf16 on a GPU is slower than fp32."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            if not _onednn_isa_allows_bf16():
                return False
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return True
    except (AttributeError, RuntimeError):
        return False


def _onednn_isa_allows_bf16() -> bool:
    """False where ``ONEDNN_MAX_CPU_ISA`` (or, unset, ``DNNL_MAX_CPU_ISA``, as oneDNN reads them) caps oneDNN below
    every x86 bf16 ISA (e.g. ``AVX512_CORE``, ``AVX2``): the CPU's bf16 instructions then go unused and bf16 is
    emulated, slower than fp32. Those allowing bf16: ``ALL``, ``DEFAULT`` (no cap: oneDNN's own choice),
    ``AVX512_CORE_BF16``, ``AVX512_CORE_FP16`` (above it in oneDNN's ISA order), ``AVX512_CORE_AMX*`` and ``AVX10*``
    (case aside)."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return (not cap or cap in ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16")
            or cap.startswith(("AVX512_CORE_AMX", "AVX10")))


def cuda_supports_bf16(device: torch.device) -> bool:
    """True where ``device``'s GPU computes bf16 natively (Ampere and later): bf16 is then a speed-up.

    ``torch.cuda.is_bf16_supported()`` alone also says yes where bf16 is only emulated (T4, V100), which is slower
    than fp32; it asks about the current device, so the question is put on ``device``.
    """
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``fp32``, ``bf16`` (error where unsupported) or ``auto`` (bf16 where fast, else fp32)."""
    if precision == "fp32":
        return torch.float32
    supported = cpu_supports_bf16() if device.type == "cpu" else cuda_supports_bf16(device)
    if precision == "bf16":
        if not supported:
            raise CovsegError(f"bf16 was requested but this {device.type} has no fast bf16 support; "
                              "use --precision fp32 or auto (in a recipe or override: train.precision)")
        return torch.bfloat16
    if precision == "auto":
        return torch.bfloat16 if supported else torch.float32
    raise CovsegError(f"unknown precision {precision!r}: use auto, fp32 or bf16")


def training_memory_format(device: torch.device) -> torch.memory_format:
    """The memory format that trains fastest: NCHW on x86 CPUs whose best vector unit is AVX2, else channels-last.

    oneDNN's channels-last kernels trained 1.2-1.7x faster than NCHW on an AVX-512 EPYC (benchmarks/RESULTS.md,
    fp32-cl rows), but on an AVX2-only EPYC their weight gradients took twice as long, and a training step of the
    default U-Net (without deep supervision) was 1.1x slower than in NCHW (benchmarks/RESULTS.md, "An AVX2 CPU").
    Other CPUs (AMX and AVX512-VNNI ones report ``AVX512``; Arm, POWER: unmeasured) and GPUs keep channels-last,
    as before. Inference is channels-last everywhere (faster on both x86 kinds). Shape and values are unaffected:
    only the strides of ``(B, C, H, W)`` tensors change. ``ATEN_CPU_CAPABILITY=avx2`` also selects NCHW.
    """
    if device.type == "cpu" and torch.backends.cpu.get_cpu_capability() == "AVX2":
        return torch.contiguous_format
    return torch.channels_last


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of mapping and zero-filling large blocks afresh.

    PyTorch's CPU tensors come from ``malloc``. glibc serves blocks over its mmap threshold (dynamic, at most
    32 MiB) with a fresh ``mmap`` whose pages the kernel zero-fills on first touch, and unmaps them on ``free``;
    a training step of the default U-Net (batch 8, 352x352, deep supervision) faulted 0.7-1.0 million pages
    (2.7-3.8 GiB) this way. With the mmap threshold at 1 GiB, the heap's free top trimmed only past 2 GiB and the
    heap grown 1 GiB at a time, freed blocks are reused: on a 2-core AVX2 EPYC that step took 3.5 s instead of
    6.0 s, and fp32 inference ran 1.5-1.6x faster (benchmarks/RESULTS.md, "An AVX2 CPU"). The price is memory:
    freed blocks stay with the process (below the heap's top without limit, at its top up to 2 GiB), which
    raised ``covseg bench``'s peak resident memory by 0.4-1.6 GB there.

    A process-wide setting, for a program to make once before its first large tensor: the ``covseg`` program
    does (:func:`covseg.cli.entry`); :func:`covseg.cli.main` and the library do not. Returns False, changing
    nothing, where the C library is not glibc (macOS, Windows, musl) or refuses a 1 GiB mmap threshold (the
    mallopt(3) manual gives 32 MiB as its limit; glibc 2.36 accepts 1 GiB).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the mmap threshold first: the one setting an old glibc refuses, so a refusal leaves everything unchanged
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read_quota(folder: Path) -> float | None:
    """The CPU bandwidth ``folder`` (one cgroup) allows, in cores: cgroup v2's ``cpu.max`` ("QUOTA PERIOD" or
    "max PERIOD") or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: no quota); None without a quota or where
    the files are missing or unreadable."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1") or int(period) <= 0 or int(quota) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: Path = PROC_CGROUP) -> int | None:
    """The whole cores a CPU bandwidth quota lets this process use (Docker's ``--cpus``, a Kubernetes CPU limit),
    or None where none is set or the system does not say (not Linux, no cgroup file system).

    A quota leaves the host's cores in ``os.cpu_count()`` and the CPU affinity, so torch starts one thread per host
    core and the kernel throttles them all. Reads the process's own cgroup (``membership``, /proc/self/cgroup) and
    every cgroup above it under ``root``, v2 (``0::PATH``) and v1 (the ``cpu`` controller's hierarchy); the
    tightest quota wins, rounded down (at least 1: 1.5 cores give one thread, as Go's automaxprocs does)."""
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return None
    folders: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2's unified hierarchy
            base = root / "unified" if (root / "unified" / "cgroup.controllers").is_file() else root
        elif "cpu" in controllers.split(","):
            base = root / controllers
            if not base.is_dir():
                base = root / "cpu"
        else:
            continue
        relative = Path(path.lstrip("/"))
        folders += [base / relative] + [base / parent for parent in relative.parents]
    quotas = [q for q in map(_read_quota, folders) if q is not None]
    return max(1, int(min(quotas))) if quotas else None


def fit_threads_to_cpu_quota(root: Path = CGROUP_ROOT, membership: Path = PROC_CGROUP) -> int | None:
    """Lower torch's intra-op threads to :func:`cgroup_cpu_limit`'s cores where a quota allows fewer than torch
    would start (one per host core: throttled, several times slower). Leaves an explicit ``OMP_NUM_THREADS`` alone.
    Returns the thread count it set, or None where it changed nothing. A process-wide setting: the ``covseg``
    program makes it (:func:`covseg.cli.entry`); ``train.threads`` still overrides it for a run."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    limit = cgroup_cpu_limit(root, membership)
    if limit is None or limit >= torch.get_num_threads():
        return None
    torch.set_num_threads(limit)
    return limit


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

    world = _whole_number_from_env("WORLD_SIZE", "1")
    if world <= 1:
        return DistContext(), device
    if not dist.is_available():
        raise CovsegError("this PyTorch build has no torch.distributed; train with one process")
    unset = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if unset and not dist.is_initialized():
        raise CovsegError(f"WORLD_SIZE={world} is set but {', '.join(unset)} {'is' if len(unset) == 1 else 'are'} "
                          "not: start the run with torchrun (torchrun --nproc-per-node N -m covseg train ...), or "
                          "unset WORLD_SIZE to train with one process")
    _whole_number_from_env("RANK", "0")
    if device.type == "cuda":
        device = torch.device("cuda", _whole_number_from_env("LOCAL_RANK", "0"))
        try:
            torch.cuda.set_device(device)
        except RuntimeError:  # "invalid device ordinal": more processes on this machine than GPUs
            gpus = torch.cuda.device_count()
            if device.index < gpus:
                raise
            raise CovsegError(f"torchrun started a process for GPU {device.index} (LOCAL_RANK) on this machine, but "
                              f"{counted(gpus, 'GPU is', 'GPUs are')} visible to PyTorch; start at most {gpus} "
                              "processes per machine (torchrun --nproc-per-node), or make the GPUs visible "
                              "(CUDA_VISIBLE_DEVICES)") from None
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size()), device


def _whole_number_from_env(name: str, default: str) -> int:
    """The environment variable ``name`` (``default`` when unset) as a whole number >= 0, as torchrun sets it."""
    import os

    text = os.environ.get(name, default)
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise CovsegError(f"{name}={text!r} is not a whole number >= 0; torchrun sets it, so start the run with "
                          "torchrun, or unset it")
    return value


def close_distributed(wait_for_peers: bool = False) -> None:
    """Leave the process group, if one was joined.

    ``wait_for_peers`` (after a run that ended normally): first a barrier, so that no rank tears its connections
    down while rank 0 still writes the run's last files (gloo can abort the rank whose peer vanished first).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            dist.barrier()
        dist.destroy_process_group()


# what the other processes of a data-parallel job say where the main process failed otherwise than with a refusal
_MAIN_STOPPED = ("the main process (rank 0) of this torchrun job stopped while it wrote the run folder, so "
                 "this one could not go on; its own message says why")


def raise_on_every_rank(error: BaseException | None, dist: DistContext) -> None:
    """Raise ``error`` on every process of a data-parallel job, or on none: ``error`` is what the main process found
    doing a step it does alone (writing a new run's folder: an existing run without ``--force``, a path through a
    file, no space left, Ctrl-C), None where the step went well; other processes pass None.

    A collective call (every process must make it; the others wait there for the main process, as at a barrier):
    the main process raises ``error`` itself, and every other process a :class:`CovsegError` with its text (a
    refusal: each exits with the same one line) or, for any other exception, one saying that the main process
    stopped. Raised on the main process alone, its exit broke the others' next collective call (gloo's "Connection
    closed by peer" traceback), or (NCCL) left them waiting here until torchrun killed them. Without a process group
    (one process) ``error`` is simply raised where given.
    """
    if not dist.enabled:
        if error is not None:
            raise error
        return
    import torch.distributed as torch_dist

    told = str(error) if isinstance(error, CovsegError) else _MAIN_STOPPED
    message: list[str | None] = [told if dist.is_main and error is not None else None]
    torch_dist.broadcast_object_list(message, src=0)
    if dist.is_main and error is not None:
        raise error
    if message[0] is not None:
        raise CovsegError(message[0])


# what a process of a data-parallel job is told where another process of it exited or was killed mid-collective
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
              "NCCL communicator was aborted")


def peer_failed(error: BaseException) -> bool:
    """Whether ``error`` (raised in a collective call: a gradient all-reduce, a barrier) says that another process
    of the job has gone: gloo's "Connection closed by peer", NCCL's aborted communicator. That process's own
    message says why; this one's is a consequence, for the caller to say in one line rather than as a traceback."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_GONE)


def refuse_under_torchrun(command: str) -> None:
    """Refuse ``covseg COMMAND`` started by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1): only
    ``covseg train`` trains data-parallel. Another command would run once per process, each copy writing the same
    output files (``covseg cv``: each copy training and replacing the same folds)."""
    try:  # a value torchrun cannot have set (empty, not a number) is no torchrun: only train reads it as a setting
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return
    if world <= 1:
        return
    faster = "; covseg cv --jobs N trains N folds at once" if command == "cv" else ""
    raise CovsegError(f"covseg {command} runs as one process, and torchrun started {world} of it, which would all "
                      f"write the same files; of the covseg commands only train runs under torchrun (data-parallel), "
                      f"so run covseg {command} without torchrun{faster}")
