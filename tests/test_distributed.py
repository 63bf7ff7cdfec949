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


def _epoch_loss(rank: int, world: int, init: str, out: str) -> None:
    """One epoch of ``train_one_epoch`` on 9 images in batches of 4 at a negligible learning rate, as process
    ``rank`` of ``world`` (gloo); rank 0 writes the returned loss and accuracy to ``out``."""
    import torch.distributed as torch_dist
    from torch import nn

    from covseg.checkpoint import build_model
    from covseg.config import apply_overrides, load_recipe
    from covseg.runtime import DistContext
    from covseg.training import train_one_epoch

    torch.set_num_threads(1)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.lr=1e-12", "train.schedule=constant",
                                                   "model.batch_norm=false", "train.loss=ce"])
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(9, 1, 32, 32, generator=g), torch.randint(0, 2, (9, 32, 32), generator=g)
    if world > 1:
        torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = build_model(config)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-12)
    fit = train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, images, masks, config.train, 0,
                          torch.device("cpu"), torch.float32, DistContext(rank, world))
    if rank == 0:
        Path(out).write_text(f"{fit.loss!r} {fit.accuracy!r}")
    if world > 1:
        torch_dist.destroy_process_group()


def test_a_skipped_last_batch_leaves_the_two_process_epoch_loss_unbiased(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    # 9 images in batches of 4: the last batch (1 image) cannot be split between 2 processes and is skipped; the
    # loss used to be divided by all 9 images though only 8 were trained on (8/9 of the single-process loss)
    _epoch_loss(0, 1, "", str(tmp_path / "single.txt"))
    mp.spawn(_epoch_loss, args=(2, (tmp_path / "store").as_uri(), str(tmp_path / "ddp.txt")), nprocs=2)
    single_loss, _ = map(float, (tmp_path / "single.txt").read_text().split())
    ddp_loss, ddp_acc = map(float, (tmp_path / "ddp.txt").read_text().split())
    # one process trains the 9 images, two the first 8: nearly the same mean at an unchanged model, not 8/9 of it
    assert ddp_loss == pytest.approx(single_loss, rel=0.01) and 0 <= ddp_acc <= 1
