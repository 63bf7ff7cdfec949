"""The CUDA path: training, bf16 inference, the benchmark and data-parallel training on a GPU.

Skipped where PyTorch sees no GPU (CI and most machines); run on a GPU machine with
``python -m pytest tests/test_cuda.py``. The CPU-side refusals (``--device cuda`` without a GPU) are in
``test_runtime.py`` and, for ``covseg bench``, ``test_bench.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg import inference
from covseg.bench import measure
from covseg.checkpoint import load_model
from covseg.cli import main
from covseg.datasets import read_image
from covseg.inference import TorchBackend, label_agreement
from covseg.runtime import resolve_precision
from covseg.transforms import stack_resized

from conftest import TINY_OVERRIDES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to PyTorch")

CUDA = torch.device("cuda")


def _slices(data: Path, size: int) -> torch.Tensor:
    folder = data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    images = [read_image(folder / f"{i}.jpg") for i in range(8)]
    x, _ = stack_resized(images, None, size)
    return x


@pytest.fixture(scope="module")
def cuda_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-epoch binary run trained on the GPU in bf16 autocast, through the CLI."""
    run = tmp_path_factory.mktemp("cuda") / "run"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.precision")]
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "3",
                 "--device", "cuda", "--precision", "bf16", "-o", str(run), "--quiet", *overrides]) == 0
    return run


def test_cuda_run_loads_on_the_cpu_and_predicts_the_same_labels(cuda_run: Path, tiny_data: Path) -> None:
    raw = torch.load(cuda_run / "last.pt", weights_only=True)  # no map_location: the tensors as saved
    assert all(tensor.device.type == "cpu" for tensor in raw["model"].values())
    model, config, _ = load_model(cuda_run, which="last")
    x = _slices(tiny_data, config.data.input_size)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions on the GPU too
    try:
        with torch.inference_mode():
            cpu = model.eval()(x)
            gpu = model.to(CUDA)(x.to(CUDA)).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-3)
    assert label_agreement(gpu, cpu) >= inference.BF16_MIN_AGREEMENT


def test_cuda_run_evaluates_on_the_gpu(cuda_run: Path, tiny_data: Path) -> None:
    assert main(["evaluate", str(cuda_run), "--data", str(tiny_data), "--device", "cuda", "--quiet"]) == 0


def test_cv_on_the_gpu_is_scored_on_the_gpu(tiny_data: Path, tmp_path: Path) -> None:
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("train.precision")]
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", "3", "--seeds", "0", "1", "--epochs", "1",
                 "--device", "cuda", "--jobs", "2", "-o", str(tmp_path / "cv"), "--quiet", *overrides]) == 0
    reports = [tmp_path / "cv" / f"seed-{s}" / f"fold-{k}" / "eval-heldout" for s in (0, 1) for k in range(3)]
    reports += [tmp_path / "cv" / "ensemble" / f"fold-{k}" for k in range(3)]
    for report in reports:
        backend = json.loads((report / "metrics.json").read_text())["model"]["backend"]
        assert backend.startswith("torch cuda "), (report, backend)


def test_bf16_on_the_gpu_is_kept_only_where_it_agrees_with_fp32(cuda_run: Path, tiny_data: Path) -> None:
    model, config, _ = load_model(cuda_run)
    x = _slices(tiny_data, config.data.input_size).to(CUDA)
    backend = TorchBackend(model, CUDA, torch.bfloat16)
    out = backend(x)
    assert backend.agreement is not None  # the first batch was also run in fp32 and compared
    kept = backend.agreement >= inference.BF16_MIN_AGREEMENT
    assert backend.description == ("torch cuda bfloat16" if kept else "torch cuda float32")
    with torch.inference_mode():
        fp32 = model(x.contiguous(memory_format=torch.channels_last)).float()
    # bf16's labels agree with fp32's as measured (the backend's fp32 has batch norm folded: a pixel's rounding apart)
    # or, after the fallback, are fp32's own
    expected = backend.agreement if kept else 1.0
    assert label_agreement(out, fp32) == pytest.approx(expected, abs=5e-4)


def test_bench_runs_the_pytorch_paths_on_the_gpu() -> None:
    row = measure("unet16", "covseg", size=64, repeats=2, train_steps=2, device="cuda")
    expected = str(resolve_precision("auto", CUDA)).removeprefix("torch.")  # bf16 where the GPU has it natively
    assert row["dtype"] == expected and row["peak_gpu_mb"] > 0 and row["train_img_s"] > 0
    assert measure("unet16", "fp32-naive", size=64, repeats=1, train_steps=0, device="cuda")["dtype"] == "float32"
    with pytest.raises(ValueError, match="CPU only"):
        measure("unet16", "onnxruntime", size=64, repeats=1, train_steps=0, device="cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per process: fewer than 2 GPUs")
def test_two_gpu_nccl_run_matches_one_gpu(tiny_data: Path, tmp_path: Path) -> None:
    settings = [*TINY_OVERRIDES, "train.loss=ce", "model.batch_norm=false", "--device", "cuda"]

    def train(prefix: list[str], out: Path) -> None:
        proc = subprocess.run([*prefix, "train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0",
                               "--epochs", "3", "-o", str(out), "--quiet", *settings],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "NVIDIA_TF32_OVERRIDE": "0"})  # full fp32 in both runs
        assert proc.returncode == 0, proc.stderr[-2000:]

    train([sys.executable, "-m", "covseg"], tmp_path / "single")
    train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "covseg"],
          tmp_path / "ddp")
    one, _, _ = load_model(tmp_path / "single", which="last")
    two, _, _ = load_model(tmp_path / "ddp", which="last")
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)  # reduction order
