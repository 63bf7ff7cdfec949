"""Data-parallel training with torchrun (2 CPU processes, gloo) matches one process with the same global batch."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covseg.checkpoint import load_model

from conftest import TINY_OVERRIDES

# Cross-entropy (a per-sample mean) and no batch norm: then averaging the gradients of two half batches
# is exactly the gradient of the whole batch, and the two runs must agree to rounding.
SETTINGS = [*TINY_OVERRIDES, "train.loss=ce", "model.batch_norm=false", "train.augment.hflip=0.5",
            "train.augment.rotate_deg=10"]


def _train(argv_prefix: list[str], data: Path, out: Path) -> None:
    cmd = [*argv_prefix, "train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "--epochs", "3",
           "-o", str(out), "--quiet", *SETTINGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    # a rank's own reason (an exception, a C++ "terminate called") comes before torchrun's summary of the failure
    causes = [line for line in proc.stderr.splitlines() if any(k in line for k in ("Error", "terminate", "what()"))]
    assert proc.returncode == 0, "\n".join(causes[:20]) + "\n" + proc.stderr[-2000:]


def test_two_process_gloo_matches_single_process(tiny_data: Path, tmp_path: Path) -> None:
    _train([sys.executable, "-m", "covseg"], tiny_data, tmp_path / "single")
    _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "covseg"], tiny_data, tmp_path / "ddp")
    # rank 0 alone wrote the run folder; the checkpoint loads without DDP (no "module." prefixes)
    model_single, _, _ = load_model(tmp_path / "single", which="last")
    model_ddp, _, _ = load_model(tmp_path / "ddp", which="last")
    for (name, a), (_, b) in zip(model_single.state_dict().items(), model_ddp.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    with open(tmp_path / "single" / "history.csv") as f1, open(tmp_path / "ddp" / "history.csv") as f2:
        for r1, r2 in zip(csv.DictReader(f1), csv.DictReader(f2)):
            for key in ("train_loss", "val_loss", "val_dice"):
                assert float(r1[key]) == pytest.approx(float(r2[key]), abs=1e-4), key
