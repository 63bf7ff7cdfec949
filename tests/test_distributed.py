"""Data-parallel training with torchrun (2 CPU processes, gloo) matches one process with the same global batch."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covseg.checkpoint import load_model

from conftest import TINY_OVERRIDES, InputRecorder, RecordingLoss

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
    from covseg.cli import main

    # the single-process run trains here, as covseg.cli.main (a process of its own cost about 5 s more to start)
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "3",
                 "-o", str(tmp_path / "single"), "--quiet", *SETTINGS]) == 0
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


def _epoch_loss(world: int, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """One epoch of ``train_one_epoch`` on 9 random images in batches of 4 at a negligible learning rate, as rank 0 of
    ``world`` processes. The other ranks are stood in for by an ``all_reduce`` that multiplies rank 0's totals by
    ``world`` (each rank trains as many images as rank 0 here), so no process group is needed."""
    import torch.distributed as torch_dist
    from torch import nn

    from covseg.checkpoint import build_model
    from covseg.config import apply_overrides, load_recipe
    from covseg.runtime import DistContext
    from covseg.training import train_one_epoch

    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.lr=1e-12", "train.schedule=constant",
                                                   "model.batch_norm=false", "train.loss=ce"])
    monkeypatch.setattr(torch_dist, "all_reduce", lambda totals: totals.mul_(world), raising=False)
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(9, 1, 32, 32, generator=g), torch.randint(0, 2, (9, 32, 32), generator=g)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-12)
    fit = train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, images, masks, config.train, 0,
                          torch.device("cpu"), torch.float32, DistContext(0, world))
    return fit.loss, fit.accuracy


def test_a_skipped_last_batch_leaves_the_two_process_epoch_loss_unbiased(monkeypatch: pytest.MonkeyPatch) -> None:
    # 9 images in batches of 4: the last batch (1 image) cannot be split between 2 processes and is skipped; the
    # loss used to be divided by all 9 images though only 8 were trained on (8/9 of the single-process loss)
    single_loss, _ = _epoch_loss(1, monkeypatch)
    ddp_loss, ddp_acc = _epoch_loss(2, monkeypatch)
    # one process trains the 9 images, rank 0 of two half of the first 8: nearly the same mean at an unchanged
    # model (random images), not 8/9 of it
    assert ddp_loss == pytest.approx(single_loss, rel=0.03) and 0 <= ddp_acc <= 1
    assert ddp_loss != pytest.approx(single_loss * 8 / 9, rel=0.03)


def test_mixup_under_ddp_mixes_the_global_batch_before_each_process_takes_its_share(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # every process draws the same mixup, so ranks 0 and 1 of two together train on exactly the single process's
    # mixed images and score both of its label maps; the last batch (1 image) is skipped under DDP
    import torch.distributed as torch_dist

    from covseg.config import TrainConfig
    from covseg.runtime import DistContext
    from covseg.training import make_optimizer, train_one_epoch

    monkeypatch.setattr(torch_dist, "all_reduce", lambda totals: totals, raising=False)
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(9, 1, 8, 8, generator=g), torch.randint(0, 2, (9, 8, 8), generator=g)
    cfg = TrainConfig(optimizer="sgd", lr=0.0, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1,
                      batch_size=4, mixup_alpha=0.4)
    inputs, targets = {}, {}
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        torch.manual_seed(0)
        model, loss_fn = InputRecorder(), RecordingLoss()
        train_one_epoch(model, loss_fn, make_optimizer(model, cfg), images, masks, cfg, 0,
                        torch.device("cpu"), torch.float32, DistContext(rank, world))
        inputs[rank, world], targets[rank, world] = model.inputs, loss_fn.targets
    assert len(inputs[0, 1]) == 3 and len(inputs[0, 2]) == len(inputs[1, 2]) == 2
    assert len(targets[0, 1]) == 5  # two mixed steps score two label maps each; the last, one image, one
    for step in range(2):
        joined = torch.cat([inputs[0, 2][step], inputs[1, 2][step]])
        torch.testing.assert_close(joined, inputs[0, 1][step], rtol=0, atol=0)
        for k in range(2):  # y, then y[partner]
            assert torch.equal(torch.cat([targets[0, 2][2 * step + k], targets[1, 2][2 * step + k]]),
                               targets[0, 1][2 * step + k])
    assert not torch.equal(targets[0, 1][0], targets[0, 1][1])  # the partners' labels are not the batch's own



def test_sigterm_to_torchrun_stops_every_rank_after_the_epoch_it_saved(tiny_data: Path, tmp_path: Path) -> None:
    # torchrun passes SIGTERM (kill, a batch scheduler's stop) to every rank; they stop at different points, one maybe
    # inside a collective, and a barrier on the way out hung until torchrun killed them 30 s later ("Unable to
    # shutdown process ... via 15, forcefully exiting via 9", on 3 of 4 tries)
    import signal
    import time

    run = tmp_path / "ddp"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "covseg", "train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0",
                             "--epochs", "5000", "-o", str(run), "--quiet", *TINY_OVERRIDES],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        began = time.monotonic()
        while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() - began < 240:
            time.sleep(0.1)
        time.sleep(1.0)  # a few epochs on
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "forcefully exiting" not in err and "Unable to shutdown" not in err, err[-3000:]
    saved = [line for line in err.splitlines() if line.startswith("terminated (SIGTERM): ")]
    assert len(saved) == 1 and saved[0].endswith(f"of 5000 epochs saved; continue with covseg train --resume {run}")
    epochs = int(saved[0].split()[2])
    _, _, info = load_model(run, which="last")
    with open(run / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == epochs == info["epoch"] >= 1


def test_a_stopped_run_leaves_the_process_group_without_waiting_for_its_peers(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the same, deterministically: a stopped run skips the barrier, a finished one keeps it (rank 0 may still write)
    import covseg.run
    import covseg.runtime
    from covseg.cli import main
    from covseg.run import RunResult

    calls = []
    monkeypatch.setattr(covseg.runtime, "close_distributed", lambda wait_for_peers=False: calls.append(wait_for_peers))
    for stopped, status in ((True, 130), (False, 0)):
        monkeypatch.setattr(covseg.run, "train_run", lambda *a, stopped=stopped, **k: RunResult(
            tmp_path / "run", 2 if stopped else 5, 5, 0.5, stopped, 1.0, 0, False))
        assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o",
                     str(tmp_path / "run"), "--quiet", *TINY_OVERRIDES]) == status
    assert calls == [False, True]
