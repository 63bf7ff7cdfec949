"""covseg cv with --precision fp32 (train.precision=fp32) scores its held-out folds in fp32: before, each fold's
report was scored under precision auto, i.e. in bf16 on a CPU with native bf16 after the first-batch check."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from covseg import experiment, inference, runtime
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset

from conftest import TINY_OVERRIDES


def test_cv_scores_an_fp32_run_in_fp32(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)  # as on an AVX512-BF16 / AMX CPU
    checks = []
    check = inference.TorchBackend._choose_low_precision
    monkeypatch.setattr(inference.TorchBackend, "_choose_low_precision",
                        lambda self, *a, **k: checks.append(self.dtype) or check(self, *a, **k))
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=1"])  # train.precision=fp32
    samples = load_dataset(str(tiny_data), "binary", split="train")
    experiment.cross_validate(config, samples, str(tiny_data), tmp_path / "cv", 2, progress=False,
                              log=lambda message: None)
    for k in range(2):
        report = json.loads((tmp_path / "cv" / f"fold-{k}" / "eval-heldout" / "metrics.json").read_text())
        assert "float32" in report["model"]["backend"]  # before: "torch cpu bfloat16"
    assert checks == []  # before: [torch.bfloat16, torch.bfloat16], the bf16 check of each fold's first batch
