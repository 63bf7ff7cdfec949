"""Speed and memory benchmark: inference ms/slice, training images/s, GFLOP/s and peak memory per path.

Each (model, path) pair is measured in a fresh subprocess so that its peak resident memory is its own; with
``--side-by-side ROUNDS`` (and both paths asked for) fp32-naive and covseg's path of every model, each in a process
of its own, are also timed in turn, round by round (:func:`side_by_side`), so that a noisy machine's slow spells
fall on all of them.
Paths:

* ``fp32-naive``  — default (contiguous) memory format, fp32, ``torch.no_grad`` only;
* ``fp32-cl``     — channels-last fp32 under ``torch.inference_mode``;
* ``covseg``      — what covseg uses: freed memory kept for reuse (:func:`covseg.runtime.keep_freed_memory`),
  bf16 autocast where the CPU has native bf16, else fp32; for inference batch norm folded into the convolutions
  and, in bf16 on a CPU, each convolution + ReLU one oneDNN call (as :class:`covseg.inference.TorchBackend` runs
  it when the folded copy's bf16 labels agree with fp32's; MONAI's blocks keep their norms, which sit in a nested
  block the fold does not reach, and so their ReLUs); channels-last for inference,
  and for training where it trains faster (:func:`covseg.runtime.training_memory_format`: not on AVX2-only x86
  CPUs);
* ``onnxruntime`` — the model exported by :func:`covseg.export.export_onnx`'s exporter
  (:func:`covseg.export.write_graph`: dynamic batch, height and width), CPU provider, with PyTorch's thread count
  (as covseg's own ONNX Runtime engine runs it);
* ``onnx-int8``   — the same graph, batch norm folded, quantized to static int8 (:mod:`covseg.quantize`, as
  ``covseg export --int8``), calibrated here on two slices of uniform noise: the speed of the int8 kernels, not
  their accuracy (``benchmarks/int8_check.py`` measures that on trained models and real slices); its peak memory
  includes the calibration's.

``--device cuda`` (or ``auto`` with a GPU present) runs the three PyTorch paths and the scans on the GPU, timed to
the end of their kernels, and adds the peak GPU memory held by tensors to each row; the ONNX paths are CPU-only there.

Peak memory is given twice for the PyTorch paths: after inference (the column every path has, so the rows compare
like with like) and after the training steps, which run after inference in the same process (their column; the
resident high-water mark, so never below the inference figure; on CUDA the GPU peak is counted afresh for training).

Models: covseg U-Net of widths 16 (the default recipe), 32 and 64, SegNet (width 64, depth 5) and, as
the peer, MONAI's ``BasicUNet`` with the same feature widths, batch norm and ReLU (``monai-unet32`` …).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, NamedTuple, TextIO

import numpy as np
import torch
from torch import nn

from covseg.wording import agreement_percent, counted

__all__ = ["build_bench_model", "TRAIN_BATCH", "PathRunners", "path_runners", "measure", "serve", "side_by_side",
           "scan_files", "scan_slices", "covseg_precision", "main"]

PATHS = ("fp32-naive", "fp32-cl", "covseg", "onnxruntime", "onnx-int8")
MODELS = ("unet16", "unet32", "unet64", "unet16-instance", "segnet", "monai-unet16", "monai-unet32", "monai-unet64")
DEFAULT_MODELS = "unet16,unet32,unet64,segnet,monai-unet32,monai-unet64"


def build_bench_model(name: str) -> nn.Module:
    """A model by benchmark name (binary output, 1 input channel), in eval mode: ``unetW`` a width-W U-Net with batch
    norm, ``unetW-instance`` with instance norm (``model.norm=instance``)."""
    from covseg.models import create_model

    if name.startswith("unet"):
        width, _, norm = name[4:].partition("-")
        return create_model("unet", num_classes=2, width=int(width), depth=bench_model_depth(name),
                            norm=norm or "batch").eval()
    if name == "segnet":
        return create_model("segnet", num_classes=2, width=64, depth=bench_model_depth(name)).eval()
    if name.startswith("monai-unet"):
        from monai.networks.nets import BasicUNet

        w = int(name[len("monai-unet"):])
        return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(w, 2 * w, 4 * w, 8 * w, 16 * w, w),
                         act="relu", norm="batch").eval()
    raise ValueError(f"unknown benchmark model {name!r}")


def bench_model_depth(name: str) -> int:
    """How many times a benchmark model halves its input (SegNet 5, the U-Nets and MONAI's BasicUNet 4), so its
    height and width must be multiples of ``2 ** depth``."""
    return 5 if name == "segnet" else 4


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB since it started its program.

    Linux's ``VmHWM`` (``/proc/self/status``) starts afresh at ``exec``; ``ru_maxrss``, the fallback elsewhere,
    also keeps the parent's resident size at ``fork``, so a child of a large process would report the parent's.
    NaN where neither is there (Windows).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows: neither /proc nor getrusage, so no figure (printed as nan)
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux and the BSDs


_PREDICT_AND_REPORT_PEAK = (
    "import sys\n"
    "from covseg.cli import entry\n"
    "status = entry(sys.argv[1:])\n"
    "from covseg.bench import peak_rss_mb\n"
    "print(f'peak_rss_mb={peak_rss_mb()}', file=sys.stderr)\n"
    "raise SystemExit(status)\n"
)


def _median_seconds(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up; on CUDA each run ends with a
    synchronisation, so the time is the kernels' and not their launch's."""
    def call():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    call()  # warm-up (allocations, oneDNN or cuDNN kernel selection)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        call()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def _flops(model_name: str, size: int) -> float:
    """FLOPs of one ``size`` x ``size`` slice through the named model, counted on the ``meta`` device: shapes
    only, so the count allocates no activations and leaves the row's peak memory and time to the paths measured."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_bench_model(model_name)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.empty(1, 1, size, size, device="meta"))
    return float(counter.get_total_flops())


#: images per training step in every training figure of the bench
TRAIN_BATCH = 4


class PathRunners(NamedTuple):
    """One model on one path, ready to time: ``infer(batch)`` returns a call that runs one inference pass over
    ``batch`` random ``size`` x ``size`` slices; ``trainer(separate)`` (``None`` for the ONNX paths) returns a call
    that runs one optimizer step on a batch of :data:`TRAIN_BATCH` — on a copy of the model with
    ``separate=True``, else on the inference model itself (put in train mode: only once inference is done);
    ``dtype`` names the arithmetic (``float32``, ``bfloat16``, ``int8``)."""

    dtype: str
    infer: Callable[[int], Callable[[], Any]]
    trainer: Callable[[bool], Callable[[], Any]] | None


def path_runners(model_name: str, path: str, size: int, device: str = "cpu") -> PathRunners:
    """Build the named benchmark model on ``path`` (see the module's docstring): the inference network (for
    ``covseg``: batch norm folded and, in bf16 on a CPU, convolution + ReLU fused; its training runs on the model
    as it is, never on that copy) and, for the PyTorch paths, the means to train it with AdamW. Seeded, so every
    path starts from the same weights. Where ``path`` is ``covseg``, freed memory is kept for reuse from here on
    in this process, as the ``covseg`` program does."""
    from covseg.models import fold_batch_norm, fuse_for_inference
    from covseg.runtime import autocast, keep_freed_memory, resolve_device, resolve_precision, training_memory_format

    dev = resolve_device(device)
    if path not in PATHS:
        raise ValueError(f"unknown benchmark path {path!r}: use one of {', '.join(PATHS)}")
    if path.startswith("onnx") and dev.type != "cpu":
        raise ValueError(f"the {path} path runs on the CPU only")
    if path == "covseg":  # as the covseg program does before any work
        keep_freed_memory()
    torch.manual_seed(0)
    model = build_bench_model(model_name)
    dtype = resolve_precision("auto", dev) if path == "covseg" else torch.float32
    dtype_name = "int8" if path == "onnx-int8" else str(dtype).removeprefix("torch.")
    channels_last = path in ("fp32-cl", "covseg")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # covseg's own inference folds batch norm into the convolutions and, in bf16 on a CPU, fuses each convolution
    # with its ReLU (as TorchBackend does); training keeps the model as it is
    infer_model = model
    if path == "covseg":
        infer_model = fuse_for_inference(fold_batch_norm(model).to(memory_format=torch.channels_last), dtype, dev)
    model, infer_model = model.to(dev), infer_model.to(dev)

    if path in ("onnxruntime", "onnx-int8"):
        from covseg.export import ort_session, write_graph

        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            file = Path(tmp) / "m.onnx"
            if path == "onnx-int8":
                from covseg.quantize import quantize_network

                noise = np.random.default_rng(0).random((2, 1, 1, size, size), dtype=np.float32)
                quantize_network(fold_batch_norm(model), size, list(noise), file)
            else:
                write_graph(model, size, str(file))
            # the threads the header names, as covseg's own ONNX Runtime engine (TorchBackend) takes them
            session = ort_session(str(file), torch.get_num_threads())

        def infer(batch: int) -> Callable[[], Any]:
            x = torch.rand(batch, 1, size, size).numpy()
            return lambda: session.run(None, {"image": x})

        return PathRunners(dtype_name, infer, None)

    def infer(batch: int) -> Callable[[], Any]:
        x = torch.rand(batch, 1, size, size, device=dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def run() -> None:
            context = torch.inference_mode() if path != "fp32-naive" else torch.no_grad()
            with context, autocast(dev, dtype):
                infer_model(x)
        return run

    def trainer(separate: bool) -> Callable[[], Any]:
        # covseg trains in the memory format that trains fastest on this device (NCHW on AVX2-only x86 CPUs)
        train_format = training_memory_format(dev) if path == "covseg" else (
            torch.channels_last if channels_last else torch.contiguous_format)
        trained = (copy.deepcopy(model) if separate else model).to(memory_format=train_format).train()
        optimizer = torch.optim.AdamW(trained.parameters(), 1e-4)
        x = torch.rand(TRAIN_BATCH, 1, size, size, device=dev).contiguous(memory_format=train_format)
        y = torch.randint(0, 2, (TRAIN_BATCH, size, size), device=dev)

        def step() -> None:
            with autocast(dev, dtype):
                logits = trained(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    return PathRunners(dtype_name, infer, trainer)


def measure(model_name: str, path: str, size: int, repeats: int, train_steps: int,
            device: str = "cpu") -> dict[str, Any]:
    """Inference (batch 1 and 8) and training figures of one model on one path, in this process.

    ``device="cuda"``: the same paths on the GPU (``covseg``: bf16 autocast where the GPU supports it, as
    training and ``covseg predict --device cuda`` use it); the ONNX paths run on the CPU only. The row then
    also holds ``peak_gpu_mb``, the most GPU memory held by tensors (``torch.cuda.max_memory_allocated``: not
    the allocator's cache, nor the CUDA context). fp32 convolutions there run as PyTorch configures them
    (TF32 by default on Ampere and later).

    ``peak_rss_mb`` (and ``peak_gpu_mb``) is the peak after inference, before any training, on every path; the
    PyTorch paths add ``peak_rss_train_mb`` (and ``peak_gpu_train_mb``), the peak once the training steps ran.
    """
    from covseg.runtime import resolve_device

    dev = resolve_device(device)
    runners = path_runners(model_name, path, size, device)
    with torch.device("meta"):
        params = sum(p.numel() for p in build_bench_model(model_name).parameters())
    out: dict[str, Any] = {"model": model_name, "path": path, "dtype": runners.dtype, "params_m": params / 1e6,
                           "gflop_per_slice": _flops(model_name, size) / 1e9}
    for batch in (1, 8):
        seconds = _median_seconds(runners.infer(batch), repeats, dev)
        out[f"infer_ms_b{batch}"] = 1000 * seconds / batch
    out["gflops_per_s_b8"] = out["gflop_per_slice"] / (out["infer_ms_b8"] / 1000)
    out["peak_rss_mb"] = peak_rss_mb()  # inference's peak: read before training raises the high-water mark
    if dev.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)  # training's GPU peak counted afresh
    if runners.trainer is not None and train_steps > 0:  # inference is done: train the model itself, as before
        out["train_img_s"] = TRAIN_BATCH / _median_seconds(runners.trainer(False), train_steps, dev)
        out["peak_rss_train_mb"] = peak_rss_mb()
        if dev.type == "cuda":
            out["peak_gpu_train_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return out


#: the commands :func:`serve` takes
SERVE_COMMANDS = ("infer", "train")


def serve(model_name: str, path: str, size: int, device: str, commands: TextIO, replies: TextIO) -> None:
    """Build one model on one of the PyTorch paths (:func:`path_runners`; the training on a copy), write ``ready
    DTYPE``, then for each line ``infer`` (a batch-8 pass) or ``train`` (a training step) read from ``commands``
    run it twice and write the second run's wall time in seconds (the first brings the caches back to this
    network's data, as in a run of consecutive batches); stop at the end of ``commands``. The worker behind
    :func:`side_by_side`. An ONNX path or an unknown command raises ``ValueError``."""
    from covseg.runtime import resolve_device

    if path.startswith("onnx"):
        raise ValueError(f"side by side times the PyTorch paths only, not {path}")
    dev = resolve_device(device)
    runners = path_runners(model_name, path, size, device)
    calls = {"infer": runners.infer(8), "train": runners.trainer(True)}
    print(f"ready {runners.dtype}", file=replies, flush=True)
    for line in commands:
        command = line.strip()
        if command not in calls:
            raise ValueError(f"unknown command {command!r}: use one of {', '.join(SERVE_COMMANDS)}")
        print(_median_seconds(calls[command], 1, dev), file=replies, flush=True)  # one warm-up, one timed run


class _Worker(NamedTuple):
    model: str
    path: str
    proc: subprocess.Popen
    errors: TextIO


def _ask(worker: _Worker, command: str | None) -> str:
    """Send ``command`` (``None``: nothing, read the greeting) to a :func:`serve` worker and return its reply line;
    a worker that has died or replies nonsense ends the bench with one line naming it and its last error."""
    what = f"{worker.model} {worker.path} {command or 'start'}"
    try:
        if command is not None:
            worker.proc.stdin.write(command + "\n")
            worker.proc.stdin.flush()
        line = worker.proc.stdout.readline().strip()
    except OSError:  # the pipe closed under us: the worker is gone
        line = ""
    if command is None and line.startswith("ready "):
        return line.removeprefix("ready ")
    if command is not None:
        with contextlib.suppress(ValueError):
            float(line)
            return line
    worker.errors.seek(0)
    last = (worker.errors.read().strip().splitlines() or [""])[-1]
    status = worker.proc.poll()
    raise SystemExit(f"benchmark step side by side ({what}) failed: {last or repr(line)}"
                     + (f" (exit status {status})" if status is not None else ""))


def _time_group(model_names: list[str], size: int, rounds: int, device: str, tmp: Path) -> list[dict[str, Any]]:
    """:func:`side_by_side` for one group of models, their workers all alive together."""
    workers: list[_Worker] = []
    failed = True
    try:
        for name in model_names:
            for path in ("fp32-naive", "covseg"):
                errors = open(tmp / f"{name}-{path}.err", "w+")
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "covseg.bench", "--serve", name, path, "--size",
                                             str(size), "--device", device], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=errors, text=True)
                except OSError:
                    errors.close()
                    raise
                workers.append(_Worker(name, path, proc, errors))
        dtypes = [_ask(worker, None) for worker in workers]
        times: list[dict[str, list[float]]] = [{"infer": [], "train": []} for _ in workers]
        for round_ in range(rounds + 1):
            # every other round in reverse order, so that no network always follows the same one
            order = list(zip(workers, times))[::1 if round_ % 2 else -1]
            for worker, record in order:
                for command in SERVE_COMMANDS:
                    seconds = float(_ask(worker, command))
                    if round_:  # the first round warms up (allocations, kernel selection)
                        record[command].append(seconds)
        failed = False
    finally:
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.proc.stdin.close()
            if failed:
                worker.proc.kill()
            worker.proc.wait()
            worker.proc.stdout.close()
            worker.errors.close()
    return [{"model": w.model, "path": w.path, "dtype": dtype, "rounds": rounds,
             "infer_ms_b8": 1000 * statistics.median(t["infer"]) / 8,
             "train_img_s": TRAIN_BATCH / statistics.median(t["train"])}
            for w, dtype, t in zip(workers, dtypes, times)]


def side_by_side(model_names: list[str], size: int, rounds: int, device: str = "cpu") -> list[dict[str, Any]]:
    """fp32-naive and covseg's path of each named model timed in turn: each (model, path) in its own process
    (:func:`serve`; its own allocator settings, so fp32-naive keeps glibc's defaults as in its own row). A model
    and its MONAI peer (``unet16`` and ``monai-unet16``) form one group whose four processes are alive together;
    groups run one after another. In each of ``rounds`` rounds, after one untimed round, every process of the
    group (in reverse order every other round) times a batch-8 inference pass and a training step
    (:data:`TRAIN_BATCH`), each right after an untimed one, while the others wait, so that slow spells of a noisy
    machine fall on every network alike. (Timed without the untimed pass before it, a network meets caches filled by
    another's data: on a 2-core AMX Xeon covseg's bf16 pass then took 48.5 ms per slice against 30.9 in its own row
    of the same run. With it, two runs there still gave 34.2 and 58.2 ms: the bf16 path is what that machine's slow
    spells slow most. benchmarks/RESULTS.md, session 34.)

    Returns one row per (model, path), in ``model_names`` order: ``model``, ``path``, ``dtype``, ``infer_ms_b8``
    and ``train_img_s`` (medians), ``rounds``. A worker that fails ends the run with one line (``SystemExit``).
    """
    if rounds < 1:
        raise ValueError(f"side by side needs at least one round, not {rounds}")
    groups: dict[str, list[str]] = {}
    for name in model_names:
        groups.setdefault(name.removeprefix("monai-"), []).append(name)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for group in groups.values() for row in _time_group(group, size, rounds, device, Path(tmp))]
    return sorted(rows, key=lambda row: model_names.index(row["model"]))


def scan_files(images_dir: str, slices: int) -> list[Path]:
    """The first ``slices`` CT slice files of folder ``images_dir``, in the order ``covseg predict`` takes a folder
    (:func:`covseg.datasets.list_images`: by stem, numbers numerically; hidden and unsupported files skipped); a
    one-line error where the folder is missing or holds fewer."""
    from covseg.datasets import list_images
    from covseg.errors import CovsegError

    if not Path(images_dir).is_dir():
        raise CovsegError(f"{images_dir}: no such folder of CT slices; name one, e.g. COVID-SemiSeg's "
                          "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs")
    try:
        files = list_images(images_dir)
    except OSError as error:
        raise CovsegError(f"{images_dir}: cannot list the folder ({error.strerror}); check its permissions") from None
    if len(files) < slices:
        raise CovsegError(f"{images_dir} holds {len(files)} CT slices, fewer than the {slices} asked for; "
                          "lower --scan-slices or name a larger folder")
    return files[:slices]


def scan_slices(slices: int, size: int, images_dir: str | None = None,
                window: tuple[float, float] | None = None) -> list[np.ndarray]:
    """``slices`` images ``(size, size)`` float32 in [0, 1]: uniform noise, or the first ``slices`` CT slices of
    ``images_dir`` in name order (e.g. COVID-SemiSeg's unlabelled ``Pseudo-label/Imgs``), each read as
    ``covseg predict`` reads it (HU through ``window``, the model's ``data.window``; ``None``: the default lung
    window) and resized bilinearly to ``size`` square, so that the bf16 check meets real CT."""
    if images_dir is None:
        rng = np.random.default_rng(0)
        return [rng.random((size, size), dtype=np.float32) for _ in range(slices)]
    from covseg.datasets import read_image
    from covseg.intensity import LUNG_WINDOW

    return [nn.functional.interpolate(torch.from_numpy(read_image(f, window or LUNG_WINDOW))[None, None],
                                      size=(size, size),
                                      mode="bilinear", align_corners=False)[0, 0].numpy()
            for f in scan_files(images_dir, slices)]


def _scan_benchmark(slices: int, size: int, model_path: str | None, precision: str = "auto",
                    fp32_engine: str = "onnxruntime", device: str = "cpu",
                    images_dir: str | None = None) -> dict[str, Any]:
    """Inference-only figures for a ``slices`` x ``size`` x ``size`` scan (:func:`scan_slices`) with the default
    model, on covseg's path (``precision="auto"``) or forced to fp32 (``"fp32"``: what runs when the bf16
    agreement check refuses bf16). ``fp32_engine``: as :class:`covseg.inference.TorchBackend`'s (``onnxruntime``:
    ``covseg predict``'s default on a CPU; ``torch``: ``--backend torch``, and always on CUDA). The result names
    the backend that ran, the first batch's bf16 agreement and whether the batch-norm-folded copy ran bf16."""
    from covseg.config import load_recipe
    from covseg.checkpoint import build_model, load_model
    from covseg.inference import Predictor, TorchBackend
    from covseg.runtime import keep_freed_memory, resolve_device, resolve_precision

    keep_freed_memory()  # as `covseg predict` does
    if model_path:
        model, config, _ = load_model(model_path)
    else:
        config = load_recipe("default")
        model = build_model(config)
    dev = resolve_device(device)
    backend = TorchBackend(model, dev, resolve_precision(precision, dev), fp32_engine if dev.type == "cpu" else "torch")
    predictor = Predictor(backend, config.data.input_size, 8, normalize=config.data.normalize,
                          resize=config.data.resize)
    images = scan_slices(slices, size, images_dir, config.data.window)  # as `covseg predict` reads them
    tick = time.perf_counter()
    for _ in predictor(images):
        pass
    seconds = time.perf_counter() - tick
    return {"slices": slices, "seconds": seconds, "slices_per_s": slices / seconds,
            "backend": predictor.backend.description, "input_size": config.data.input_size,
            "bf16_agreement": backend.agreement, "bf16_folded": backend.bf16_folded,
            "images": images_dir or "uniform noise", "peak_rss_mb": peak_rss_mb()}


def _e2e_scan_benchmark(slices: int, size: int, model_path: str | None, device: str = "cpu") -> dict[str, Any]:
    """``covseg predict`` on a ``slices`` x ``size`` x ``size`` phantom NIfTI: read, lungs, lesions, write, report.

    The prediction runs as its own process (``covseg predict``'s CLI), so its time includes start-up and
    imports as a user sees them, and its peak resident memory (:func:`peak_rss_mb`, which it prints on
    stderr) is its own, not that of this process, which built the phantom. A prediction that fails (non-zero
    exit status, e.g. killed for memory) raises :class:`CovsegError` naming its status and last error line: it has
    no time to report.
    """
    import nibabel as nib

    from covseg.checkpoint import build_model, save_checkpoint
    from covseg.config import load_recipe
    from covseg.errors import CovsegError
    from covseg.phantom import chest_phantom

    with tempfile.TemporaryDirectory() as tmp:
        hu, _ = chest_phantom(shape=(slices, size, size), spacing=(1.0, 0.7, 0.7))
        scan = Path(tmp) / "scan.nii.gz"
        nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.diag([-0.7, -0.7, 1.0, 1.0])),
                 str(scan))
        del hu
        if not model_path:
            config = load_recipe("default")
            model_path = str(Path(tmp) / "untrained.pt")
            save_checkpoint(Path(model_path), build_model(config), config, 0, None)
        builder_peak = peak_rss_mb()
        tick = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _PREDICT_AND_REPORT_PEAK, "predict", str(scan), "-o",
                               str(Path(tmp) / "out"), "--model", model_path, "--device", device, "--quiet"],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - tick
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.strip().splitlines() if not line.startswith("peak_rss_mb=")]
            raise CovsegError(f"the end-to-end scan's covseg predict failed with exit status {proc.returncode} "
                              f"({errors[-1].strip() if errors else 'no error message'}); fix what it names, or "
                              "skip the scans with --scan-slices 0")
        report_file = Path(tmp) / "out" / "report.json"
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    return {"slices": slices, "seconds": seconds, "status": proc.returncode, "stages": report.get("seconds", {}),
            "peak_rss_mb": _reported_peak(proc.stderr),
            "phantom_rss_mb": builder_peak}


ALREADY_FP32 = "The automatic path already ran in fp32, so no forced-fp32 figure is given."


def _ran_fp32(scan: dict[str, Any]) -> bool:
    """Whether the scan benchmark's automatic path ran in fp32 (no bf16 here, or the bf16 check chose fp32), as
    its backend's description says: then forcing fp32 runs the same backend again."""
    return " float32" in scan["backend"]


def _reported_peak(stderr: str) -> float:
    """The ``peak_rss_mb=`` figure a child printed last on stderr (nan without one)."""
    figures = [line.split("=", 1)[1] for line in stderr.splitlines() if line.startswith("peak_rss_mb=")]
    return float(figures[-1]) if figures else float("nan")


def covseg_precision(device: str) -> str:
    """What covseg's path computes in on ``device`` (``cpu`` or ``cuda``), as :func:`covseg.runtime.resolve_precision`
    detects it (and as each ``covseg`` row's process chooses it): e.g. ``covseg's path in fp32 (no native bf16 on
    this CPU)``, so that a table without bf16 says why rather than leaving it to the dtype column."""
    from covseg.runtime import resolve_device, resolve_precision

    dev = resolve_device(device)
    where = "this CPU" if dev.type == "cpu" else "this GPU"
    if resolve_precision("auto", dev) == torch.bfloat16:
        return f"covseg's path in bf16 (native bf16 on {where})"
    return f"covseg's path in fp32 (no native bf16 on {where})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _peak(row: dict[str, Any], stage: str = "") -> str:
    """Peak resident memory after inference (``stage=""``) or after training (``"_train"``; "–" where the row did
    not train), and the peak GPU memory held by tensors where the row ran on CUDA."""
    if f"peak_rss{stage}_mb" not in row:
        return "–"
    gpu = row.get(f"peak_gpu{stage}_mb")
    return f"{row[f'peak_rss{stage}_mb']:.0f}" + (f" (GPU {gpu:.0f})" if gpu is not None else "")


def _train_rate(row: dict[str, Any]) -> str:
    """A row's training images per second for the console line, "–" where the path does not train (ONNX)."""
    return f"{row['train_img_s']:6.2f}" if "train_img_s" in row else f"{'–':>6s}"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["model"], r["path"]): r for r in rows}
    lines = ["| model | path | dtype | infer ms/slice b1 | infer ms/slice b8 | train img/s | GFLOP/s (b8) | "
             "peak RSS MB, inference | peak RSS MB, after training | × fp32-naive (b8 / train) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = by.get((r["model"], "fp32-naive"))
        speed = (f"{base['infer_ms_b8'] / r['infer_ms_b8']:.1f}× / "
                 + (f"{r['train_img_s'] / base['train_img_s']:.1f}×" if "train_img_s" in r and "train_img_s" in base else "–")
                 if base else "–")
        train = f"{r['train_img_s']:.2f}" if "train_img_s" in r else "–"
        lines.append(f"| {r['model']} | {r['path']} | {r['dtype']} | {r['infer_ms_b1']:.1f} | {r['infer_ms_b8']:.1f} | "
                     f"{train} | {r['gflops_per_s_b8']:.0f} | {_peak(r)} | {_peak(r, '_train')} | {speed} |")
    return lines


def _side_by_side_table(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown of :func:`side_by_side`'s rows: each model's two paths and their ratios, then covseg's U-Net
    against MONAI's of the same width on covseg's path."""
    by = {(r["model"], r["path"]): r for r in rows}
    rounds = rows[0]["rounds"]
    lines = [f"Side by side (fp32-naive and covseg's path, each in its own process, timed in turn for "
             f"{counted(rounds, 'round')}, each timed pass right after an untimed one; medians):", "",
             "| model | fp32-naive b8 ms/slice | covseg b8 ms/slice | × | fp32-naive train img/s | covseg train img/s "
             "| × |", "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        naive, ours = by[(name, "fp32-naive")], by[(name, "covseg")]
        lines.append(f"| {name} | {naive['infer_ms_b8']:.1f} | {ours['infer_ms_b8']:.1f} ({ours['dtype']}) | "
                     f"{naive['infer_ms_b8'] / ours['infer_ms_b8']:.1f}× | {naive['train_img_s']:.2f} | "
                     f"{ours['train_img_s']:.2f} | {ours['train_img_s'] / naive['train_img_s']:.1f}× |")
    for (name, path), ours in by.items():
        peer = by.get(("monai-" + name, path))
        if path == "covseg" and name.startswith("unet") and peer:
            lines += ["", f"{name} against monai-{name} on covseg's path, side by side (>1 = covseg faster): inference "
                      f"b8 {peer['infer_ms_b8'] / ours['infer_ms_b8']:.2f}×, training "
                      f"{ours['train_img_s'] / peer['train_img_s']:.2f}×"]
    return lines


def _monai_missing() -> str | None:
    """Why MONAI's ``BasicUNet`` (the ``monai-*`` models) cannot be imported, or ``None`` where it can. An import,
    not a look-up of the package: a broken or shadowed ``monai`` is found as well as a missing one."""
    try:
        importlib.import_module("monai.networks.nets")
    except ImportError as error:
        return (str(error).splitlines() or [type(error).__name__])[0]  # one line for the refusal
    return None


def _is_onnx_graph(path: str) -> bool:
    """Whether ``path`` is an ONNX graph (``covseg export``'s output) rather than a run folder or ``.pt`` file: its
    suffix, or a serialised ``ModelProto``'s first bytes (the ``ir_version`` field, then another of its fields)."""
    file = Path(path)
    if file.suffix.lower() == ".onnx":
        return True
    try:
        with open(file, "rb") as f:
            head = f.read(3)
    except OSError:  # a folder, or no such file: load_model names what is wrong
        return False
    return len(head) == 3 and head[0] == 0x08 and head[1] < 0x80 and head[2] in b"\x12\x1a\x22\x28\x32\x3a"


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, in one line, names and numbers no step can run, a ``--side-by-side`` without the two paths it times,
    a ``monai-*`` model without MONAI, a ``--model`` or ``--scan-images`` beside ``--scan-slices 0`` (no scan
    benchmark reads them), and a ``--model`` or ``--out`` the last steps would fail on."""
    from covseg.checkpoint import load_model
    from covseg.errors import CovsegError
    from covseg.fileio import unwritable_reason
    from covseg.models.shapes import nearest_valid_size

    for option, given, known in (("--models", args.models, MODELS), ("--paths", args.paths, PATHS)):
        unknown = [name for name in given.split(",") if name not in known] if given is not None else []
        if unknown:
            raise SystemExit(f"covseg bench: unknown {option[2:-1]} {unknown[0]!r} in {option}; use one of "
                             f"{', '.join(known)}")
    for option, value, least in (("--repeats", args.repeats, 1), ("--train-steps", args.train_steps, 1),
                                 ("--size", args.size, 1), ("--scan-slices", args.scan_slices, 0)):
        if value < least:
            raise SystemExit(f"covseg bench: {option} must be {least} or more, not {value}")
    unread = [flag for flag, value in (("--model", args.model), ("--scan-images", args.scan_images)) if value]
    if unread and not args.scan_slices:  # only the scan benchmark reads them, and --scan-slices 0 skips it
        raise SystemExit(f"covseg bench: {unread[0]} is read only by the scan benchmark, which --scan-slices 0 skips; "
                         f"drop {unread[0]} or give --scan-slices N")
    missing = [p for p in ("fp32-naive", "covseg") if p not in args.paths.split(",")]
    if args.side_by_side > 0 and missing:  # else it would be skipped without a word
        raise SystemExit(f"covseg bench: --side-by-side times fp32-naive and covseg side by side, but --paths "
                         f"{args.paths} lacks {' and '.join(missing)}; add {'them' if len(missing) > 1 else 'it'} "
                         "to --paths or drop --side-by-side")
    if args.out is not None and args.out.is_dir():
        raise SystemExit(f"covseg bench: {args.out}: is a folder; give --out a Markdown file name, e.g. "
                         f"{args.out / 'RESULTS.md'}")
    why = unwritable_reason(args.out) if args.out is not None else None
    if why:
        raise SystemExit(f"covseg bench: {args.out}: cannot be written ({why}); give --out a file in a folder you can "
                         "write")
    models = args.models.split(",")
    depth = max(bench_model_depth(name) for name in models)
    if args.size % 2**depth:
        needs = ", ".join(name for name in models if args.size % 2 ** bench_model_depth(name))
        raise SystemExit(f"covseg bench: --size {args.size} is not a multiple of {2**depth}, which {needs} needs; use "
                         f"{nearest_valid_size(args.size, depth)}")
    peers = [name for name in models if name.startswith("monai-")]
    why = _monai_missing() if peers else None
    if why:  # else their steps fail one by one, after the rows before them, and --out is never written
        raise SystemExit(f"covseg bench: {','.join(peers)} in --models {'needs' if len(peers) == 1 else 'need'} MONAI, "
                         f"which cannot be imported ({why}); install it (pip install 'covseg[bench]', or pip install "
                         f"monai) or drop {','.join(peers)} from --models")
    if args.model and args.scan_slices:
        if _is_onnx_graph(args.model):  # else torch.load's "not a readable covseg checkpoint (UnpicklingError...)"
            raise SystemExit(f"covseg bench: {args.model}: is an ONNX graph, but bench's --model takes a run folder "
                             "or a .pt checkpoint (the scan benchmark runs it on covseg's own paths); give the run "
                             "folder it was exported from")
        try:
            load_model(args.model)
        except CovsegError as error:
            raise SystemExit(f"covseg bench: {error}")


def run_step(cmd: list[str], step: str) -> dict[str, Any]:
    """Run one step of the benchmark (``cmd``: ``python -m covseg.bench ... --one MODEL PATH``, ``--scan-only``
    or ``--e2e-only``) as its own process, so that each figure has its own allocator, caches and peak memory; return
    the JSON object it prints last. A step that fails ends the run with one line naming ``step``
    (``SystemExit``)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise SystemExit(f"benchmark step {step} failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None, command: str = "python benchmarks/bench.py") -> int:
    """Run the benchmark; prints the table, whose header names ``command`` (how it was started: ``covseg bench``
    from the CLI) with ``argv``, and where ``--out`` is given writes it there too (no file without it)."""
    parser = argparse.ArgumentParser(prog="covseg bench", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated, of {', '.join(MODELS)} (default: {DEFAULT_MODELS})")
    parser.add_argument("--paths", help="comma-separated (default: all; on CUDA the three PyTorch paths)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="where the PyTorch paths and the scans run (ONNX paths: CPU only); auto: CUDA if present")
    parser.add_argument("--size", type=int, default=512,
                        help="slice height and width in pixels: a multiple of 16, or of 32 with segnet (default: 512)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed inference runs per figure, after one untimed (median; default: 10)")
    parser.add_argument("--train-steps", type=int, default=5,
                        help="timed training steps per figure, after one untimed (median; default: 5)")
    parser.add_argument("--scan-slices", type=int, default=300,
                        help="slices of --size in the scan benchmarks, inference only and end to end (default: 300; "
                        "0: skip them)")
    parser.add_argument("--model", help="run folder or .pt checkpoint (not an ONNX graph) whose model the scan "
                        "benchmark uses (default: untrained default)")
    parser.add_argument("--scan-images", help="folder of CT slices the scan benchmark reads, the first "
                        "--scan-slices in name order, resized to --size (default: uniform noise)")
    parser.add_argument("--side-by-side", type=int, default=0, metavar="ROUNDS",
                        help="also time fp32-naive and covseg's path, each in its own process, in turn for ROUNDS "
                        "rounds, a model and its MONAI peer together (two passes and two training steps per network a "
                        "round: slow for wide models; default 0: skip; needs both paths in --paths)")
    parser.add_argument("--out", type=Path,
                        help="also write the table to this Markdown file, replacing it (default: print it only)")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--scan-only", choices=("auto", "fp32"), help=argparse.SUPPRESS)
    parser.add_argument("--scan-fp32-engine", choices=("onnxruntime", "torch"), default="onnxruntime",
                        help=argparse.SUPPRESS)
    parser.add_argument("--e2e-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    from covseg.errors import CovsegError
    from covseg.runtime import resolve_device

    try:
        args.device = resolve_device(args.device).type
    except CovsegError as error:
        raise SystemExit(f"covseg bench: {error}")
    if args.paths is None:
        args.paths = ",".join(p for p in PATHS if args.device == "cpu" or not p.startswith("onnx"))
    if args.device == "cuda":
        onnx = [p for p in args.paths.split(",") if p.startswith("onnx")]
        if onnx:
            raise SystemExit(f"covseg bench: the {','.join(onnx)} path runs on the CPU only; drop it from --paths "
                             "or use --device cpu")
    if not (args.one or args.serve or args.scan_only or args.e2e_only):
        _check_options(args)  # once, before any step: a bench takes minutes, its last step writes --out
    if args.scan_images and args.scan_slices and not (args.one or args.scan_only or args.e2e_only):
        from covseg.datasets import read_image

        try:  # once, before any step: a wrong folder, too few slices or an unreadable first slice is refused
            read_image(scan_files(args.scan_images, args.scan_slices)[0])
        except CovsegError as error:
            raise SystemExit(f"covseg bench: {error}")
    if args.serve:
        serve(args.serve[0], args.serve[1], args.size, args.device, sys.stdin, sys.stdout)
        return 0
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.size, args.repeats, args.train_steps, args.device)))
        return 0
    if args.scan_only:
        try:
            print(json.dumps(_scan_benchmark(args.scan_slices, args.size, args.model, args.scan_only,
                                              args.scan_fp32_engine, args.device, args.scan_images)))
        except CovsegError as error:  # e.g. a slice read_image cannot read: one line, which the parent passes on
            raise SystemExit(f"covseg bench: {error}")
        return 0
    if args.e2e_only:
        try:
            print(json.dumps(_e2e_scan_benchmark(args.scan_slices, args.size, args.model, args.device)))
        except CovsegError as error:  # predict failed: one line, which the parent passes on, and no figure
            raise SystemExit(f"covseg bench: {error}")
        return 0
    if args.side_by_side < 0:
        raise SystemExit(f"covseg bench: --side-by-side must be 0 or more rounds, not {args.side_by_side}")

    def child(extra: list[str]) -> dict[str, Any]:
        cmd = [sys.executable, "-m", "covseg.bench", "--size", str(args.size), "--repeats", str(args.repeats),
               "--train-steps", str(args.train_steps), "--scan-slices", str(args.scan_slices), "--device", args.device,
               *extra]
        if args.model:
            cmd += ["--model", args.model]
        if args.scan_images:
            cmd += ["--scan-images", args.scan_images]
        return run_step(cmd, " ".join(extra))

    rows = []
    for model in args.models.split(","):
        for path in args.paths.split(","):
            row = child(["--one", model, path])
            rows.append(row)
            print(f"{model:13s} {path:12s} b1 {row['infer_ms_b1']:8.1f} ms  b8 {row['infer_ms_b8']:8.1f} ms/slice  "
                  f"train {_train_rate(row)} img/s  peak {_peak(row)} MB inference, "
                  f"{_peak(row, '_train')} MB after training", flush=True)
    # both paths are in --paths (_check_options)
    paired = side_by_side(args.models.split(","), args.size, args.side_by_side, args.device) \
        if args.side_by_side else None
    for row in paired or []:
        print(f"{row['model']:13s} {row['path']:12s} side by side: b8 {row['infer_ms_b8']:8.1f} ms/slice  "
              f"train {row['train_img_s']:6.2f} img/s", flush=True)
    scan = child(["--scan-only", "auto"]) if args.scan_slices else None
    # where the automatic path ran fp32 already, a forced-fp32 run would time the same thing again
    scan_fp32 = child(["--scan-only", "fp32"]) if scan and not _ran_fp32(scan) else None
    e2e = child(["--e2e-only"]) if args.scan_slices else None
    gpu = f" · {torch.cuda.get_device_name()} (PyTorch paths and scans)" if args.device == "cuda" else ""
    lines = [f"# covseg benchmark", "", f"{time.strftime('%Y-%m-%d')} · {_cpu_model()} "
             f"({torch.backends.cpu.get_cpu_capability()}) · {torch.get_num_threads()} threads{gpu} · "
             f"{covseg_precision(args.device)} · torch {torch.__version__} · {args.size}×{args.size} · "
             f"inference median of {counted(args.repeats, 'run')}, training median of "
             f"{counted(args.train_steps, 'step')} (batch {TRAIN_BATCH}, AdamW)", "",
             f"Command: `{command} {' '.join(argv if argv is not None else sys.argv[1:])}`", ""]
    lines += _table(rows)
    peers = [(r, next((p for p in rows if p["model"] == "monai-" + r["model"] and p["path"] == r["path"]), None))
             for r in rows if r["model"].startswith("unet")]
    pairs = [(r, p) for r, p in peers if p]
    if pairs:
        lines += ["", "covseg U-Net vs MONAI BasicUNet of matched width (same path; >1 = covseg faster):", "",
                  "| width | path | inference b8 | training |", "|---|---|---|---|"]
        for r, p in pairs:
            train = f"{r['train_img_s'] / p['train_img_s']:.2f}×" if "train_img_s" in r and "train_img_s" in p else "–"
            lines.append(f"| {r['model'][4:]} | {r['path']} | {p['infer_ms_b8'] / r['infer_ms_b8']:.2f}× | {train} |")
    if paired:
        lines += ["", *_side_by_side_table(paired)]
    if scan:
        from covseg.inference import BF16_MIN_AGREEMENT

        kept = {True: "folded copy kept", False: "trained model kept", None: "fp32 chosen"}[scan["bf16_folded"]]
        check = ("" if scan["bf16_agreement"] is None else
                 f"; bf16 check {agreement_percent(scan['bf16_agreement'])} of the first batch's labels alike, {kept}")
        model = "the model of " + args.model if args.model else "untrained default model"
        lines += ["", f"Scan (inference only, {model}, slices: {scan['images']}, {scan['backend']}, input {scan['input_size']}{check}): "
                  f"{scan['slices']} slices of {args.size}×{args.size} in {scan['seconds']:.1f} s "
                  f"({scan['slices_per_s']:.1f} slices/s), peak RSS {scan['peak_rss_mb']:.0f} MB. "
                  + (ALREADY_FP32 if scan_fp32 is None else
                     f"Forced to fp32 (the path used when bf16's labels agree with fp32's on < {BF16_MIN_AGREEMENT:.1%} "
                     f"of the first batch's pixels; {scan_fp32['backend']}): {scan_fp32['seconds']:.1f} s "
                     f"({scan_fp32['slices_per_s']:.1f} slices/s), peak RSS {scan_fp32['peak_rss_mb']:.0f} MB.")]
    if e2e:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in e2e["stages"].items() if k != "total")
        lines += ["", f"Scan end to end (`covseg predict scan.nii.gz`, phantom {e2e['slices']}×{args.size}×{args.size}, "
                  f"exit {e2e['status']}): {e2e['seconds']:.1f} s ({stages}), peak RSS {e2e['peak_rss_mb']:.0f} MB."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:  # not by default: an installed covseg has no benchmarks/ of its own, and a checkout's
        # benchmarks/RESULTS.md is the record of many runs, which one run's table would replace whole
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from covseg.fileio import atomic_write_text

        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
