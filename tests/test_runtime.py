"""Device and precision requests: explained refusals, fallback only when asked."""
from __future__ import annotations

import pytest
import torch

from covseg import runtime
from covseg.errors import CovsegError
from covseg.runtime import resolve_device, resolve_precision


def test_cuda_without_gpu_is_refused_and_auto_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CovsegError, match="no GPU is visible.*--device cpu or auto"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CovsegError, match="unknown device"):
        resolve_device("tpu")


def test_bf16_without_support_is_refused_and_auto_uses_fp32(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    cpu = torch.device("cpu")
    with pytest.raises(CovsegError, match="no fast bf16 support"):
        resolve_precision("bf16", cpu)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("fp32", cpu) == torch.float32
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16
