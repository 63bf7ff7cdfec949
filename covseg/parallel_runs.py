"""Several training runs at once, each in its own process: the folds (and seeds) of a cross-validation on a GPU or
a many-core CPU.

One small U-Net leaves most of a GPU idle (session 20: the default binary model trains in 22 s on an H200, its
augmentation on one CPU core), so ``covseg cv --jobs N`` trains up to N runs side by side. Each worker is a fresh
(spawned, not forked: CUDA cannot be forked) Python process with its own share of the CPU cores for torch's
intra-op threads. Training is the same function a single run uses (:func:`covseg.experiment.train_or_resume`), so
a run trained here resumes, is reused and is refused exactly as one trained alone.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from covseg.config import RunConfig
from covseg.datasets import Sample
from covseg.errors import CovsegError, Terminated
from covseg.runtime import cgroup_cpu_limit

__all__ = ["threads_per_job", "train_runs_in_parallel"]


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Torch intra-op threads for each of ``jobs`` concurrent runs: the cores shared out, at least one each.

    ``cores`` defaults to those this process may run on (its CPU affinity: a container's or ``taskset``'s share),
    or every core where the system does not say, and at least torch's own thread count (``OMP_PROC_BIND`` pins the
    importing thread to one core, which then reports an affinity of one), at most the cores a CPU quota allows
    (:func:`covseg.runtime.cgroup_cpu_limit`: Docker's ``--cpus`` leaves the host's cores in the affinity)."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cores = max(cores, torch.get_num_threads())
        quota = cgroup_cpu_limit()
        if quota is not None:
            cores = min(cores, quota)
    return max(1, (cores or 1) // jobs)


_KILLED = ("a training worker was killed (often out of memory), which stopped the other runs too; lower --jobs and "
           "run again to resume them")


_training = False
"""Whether this worker process is inside a training (see :func:`_on_interrupt`)."""

_interrupted = False
"""Whether Ctrl-C reached this worker outside a training: while it was idle, or receiving (unpickling) its next run
before :func:`_train_in_worker` began, a window of seconds for a large sample list."""


def _on_interrupt(signum: int, frame: object) -> None:
    """A worker's SIGINT handler: Ctrl-C reaches every process of the terminal's group, the workers included. A
    training stops as a single run does (``KeyboardInterrupt``, after saving); an idle worker, waiting for its
    next run, prints no traceback: it notes the Ctrl-C, so that a run it is receiving then stops before training
    (the parent starts no more runs after Ctrl-C), and is shut down by the pool."""
    global _interrupted
    if _training:
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt
    else:
        _interrupted = True


def _start_worker() -> None:
    signal.signal(signal.SIGINT, _on_interrupt)


def _train_in_worker(config: RunConfig, samples: list[Sample], run_dir: Path, data: str, threads: int,
                     again: str = "") -> bool:
    """Worker body: train or resume ``run_dir``; False when Ctrl-C stopped it (after saving ``last.pt``, and
    logging ``again``, how to go on)."""
    global _training

    def log(message: str) -> None:
        print(f"[{run_dir}] {message}", file=sys.stderr, flush=True)

    try:
        _training = True  # from here Ctrl-C raises KeyboardInterrupt; before, _on_interrupt notes it
        if _interrupted:  # Ctrl-C while this run was being received: stop as a training stopped by it would
            return False
        from covseg.experiment import train_or_resume  # here: covseg.experiment imports this module

        if config.train.threads == 0:  # the config's own setting wins; it is part of the run's settings
            torch.set_num_threads(threads)
        train_or_resume(config, samples, run_dir, data, False, False, log, again)
    except KeyboardInterrupt:
        return False
    finally:
        _training = False
    return True


def train_runs_in_parallel(runs: Sequence[tuple[RunConfig, Path]], samples: list[Sample], data: str, jobs: int,
                           log: Callable[[str], None] = print, again: str = "") -> None:
    """Make each ``(config, run_dir)`` of ``runs`` a finished run, up to ``jobs`` at a time in worker processes.

    Each worker gets :func:`threads_per_job` torch threads (unless ``config.train.threads`` sets them) and no
    progress bars; it prints one line per event to stderr, prefixed with its run folder. The first run that fails stops
    the others from starting (a run is handed to a worker only when one is free) and its error is raised here, once
    the runs already training have ended (a :class:`covseg.errors.CovsegError` stays one, led by the failed run's
    folder). A worker killed (SIGKILL,
    e.g. out of memory) is different: the pool then stops every other worker at once, so the runs training beside
    it end too, each losing its unfinished epoch (``last.pt`` holds the last whole one), and a
    :class:`covseg.errors.CovsegError` says so; a second call resumes them. After Ctrl-C every worker saves its
    ``last.pt`` (as a single run does) and ``KeyboardInterrupt`` is raised, so a second call resumes them; each
    worker's line then says ``again`` (how to go on) where given, instead of ``covseg train --resume``.
    """
    if not runs:
        return
    jobs = min(jobs, len(runs))
    threads = threads_per_job(jobs)
    # the threads the workers use: a config's own train.threads wins over the share (see _train_in_worker)
    used = sorted({config.train.threads or threads for config, _ in runs})
    count = str(used[0]) if len(used) == 1 else f"{used[0]}-{used[-1]}"
    log(f"training {len(runs)} runs, {jobs} at a time, {count} torch thread{'s' if used[-1] > 1 else ''} each")
    context = multiprocessing.get_context("spawn")
    pending = list(runs)
    running: dict[Future, Path] = {}
    failure: BaseException | None = None
    failed_run: Path | None = None
    interrupted = False
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_start_worker) as pool:
        try:
            # a run is handed to the pool only when a worker is free: the pool would move queued runs into its
            # workers' call queue at once, beyond cancel()'s reach, and they would train after a failure or Ctrl-C
            while pending or running:
                while pending and len(running) < jobs and failure is None and not interrupted:
                    config, run_dir = pending.pop(0)
                    try:
                        running[pool.submit(_train_in_worker, config, samples, run_dir, data, threads, again)] = run_dir
                    except BrokenExecutor:  # a worker died since the last wait: the pool takes no more runs
                        raise CovsegError(_KILLED) from None
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    run_dir = running.pop(future)
                    error = future.exception()
                    if error is not None:
                        if failure is None:  # the first failure is raised once the running ones end
                            failure, failed_run = error, run_dir
                    elif not future.result():
                        interrupted = True  # a worker saw Ctrl-C (after saving): start nothing more
        except KeyboardInterrupt as stop:  # the workers had the same Ctrl-C: they save and return False
            if isinstance(stop, Terminated):  # SIGTERM reached this process alone: pass it on to them as Ctrl-C
                for worker in list((getattr(pool, "_processes", None) or {}).values()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGINT)
            wait(running)
            raise
    if isinstance(failure, BrokenExecutor):  # a worker died (SIGKILL, e.g. the OOM killer); the pool ended the rest
        raise CovsegError(_KILLED) from None
    if isinstance(failure, CovsegError) and failed_run is not None and not str(failure).startswith(str(failed_run)):
        raise CovsegError(f"{failed_run}: {failure}") from None  # which of the runs failed
    if failure is not None:
        raise failure  # another error is a defect: its traceback stays
    if interrupted:
        raise KeyboardInterrupt
