"""Training runs: reproducibility, resume after a kill, Ctrl-C, run-folder contents."""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from covseg.checkpoint import find_checkpoint, read_checkpoint
from covseg.cli import main
from covseg.config import TrainConfig
from covseg.errors import CovsegError, Terminated
from covseg.fileio import interrupts_deferred
from covseg.predict import open_predictor
from covseg.training import (averaged_network, class_argmax, class_balanced_weights, draw_order, epoch_average,
                             epoch_generator, learning_rate, lr_factor, make_optimizer, recompute_batch_norm,
                             train_one_epoch, weight_average)

from conftest import TINY_OVERRIDES, InputRecorder, RecordingLoss, ctrl_c_at_epoch, interrupt_after_touching


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(out),
                 "--quiet", *TINY_OVERRIDES, *extra])


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_contents(tiny_run: Path) -> None:
    for name in ("config.yaml", "split.json", "class_weights.json", "history.csv", "curves.png", "best.pt",
                 "last.pt", "run.json"):
        assert (tiny_run / name).is_file(), name
    rows = _history(tiny_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_dice", "lr", "seconds"}
    split = json.loads((tiny_run / "split.json").read_text())
    assert len(split["val"]) == 4 and len(split["train"]) == 8 and len(split["folds"]) == 3
    weights = json.loads((tiny_run / "class_weights.json").read_text())["weights"]
    assert weights["infection"] > weights["background"] > 0
    best = read_checkpoint(tiny_run / "best.pt")
    assert best["score"] == max(float(r["val_dice"]) for r in rows)
    assert not list(tiny_run.glob("*.part*"))


def test_same_seed_same_metrics(tiny_data: Path, tmp_path: Path) -> None:
    assert _train(tiny_data, tmp_path / "a", "train.augment.rotate_deg=10", "train.augment.hflip=0.5") == 0
    assert _train(tiny_data, tmp_path / "b", "train.augment.rotate_deg=10", "train.augment.hflip=0.5") == 0
    a, b = _history(tmp_path / "a"), _history(tmp_path / "b")
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "val_dice", "train_acc"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), abs=1e-6)
    wa, wb = read_checkpoint(tmp_path / "a" / "last.pt")["model"], read_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _label_maps(*labels_per_slice: tuple[int, ...]) -> torch.Tensor:
    """(N, 4, 4) label maps, slice i holding exactly the labels in labels_per_slice[i] (plus background)."""
    masks = torch.zeros(len(labels_per_slice), 4, 4, dtype=torch.long)
    for i, labels in enumerate(labels_per_slice):
        for j, label in enumerate(labels):
            masks[i, j, 0] = label
    return masks


def test_class_balanced_weights_by_hand() -> None:
    # GGO (1) in slices 0-3, consolidation (2) in slices 0 and 4, slice 5 empty:
    # n_1 = 4, n_2 = 2, one empty slice
    masks = _label_maps((1, 2), (1,), (1,), (1,), (2,), ())
    expected = [1 / 4 + 1 / 2, 1 / 4, 1 / 4, 1 / 4, 1 / 2, 1.0]
    assert class_balanced_weights(masks).tolist() == pytest.approx(expected)
    # no empty slice, one class: every slice weighs the same
    assert class_balanced_weights(_label_maps((1,), (1,), (1,))).tolist() == pytest.approx([1 / 3] * 3)
    # only empty slices
    assert class_balanced_weights(_label_maps((), ())).tolist() == pytest.approx([0.5, 0.5])


def test_class_balanced_draws_follow_the_weights_and_uniform_is_a_shuffle() -> None:
    masks = _label_maps((1, 2), (1,), (1,), (1,), (2,), ())
    generator = torch.Generator().manual_seed(0)
    uniform = draw_order(masks, "uniform", generator)
    assert sorted(uniform.tolist()) == list(range(6))
    # the shuffle is the one the trainer always drew: reproducible runs did not change
    assert torch.equal(draw_order(masks, "uniform", epoch_generator(3, 2)),
                       torch.randperm(6, generator=epoch_generator(3, 2)))
    draws = torch.cat([draw_order(masks, "class_balanced", generator) for _ in range(4000)])
    assert draws.shape == (24000,)
    share = torch.bincount(draws, minlength=6).double() / draws.numel()
    weights = torch.tensor([0.75, 0.25, 0.25, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert share.tolist() == pytest.approx((weights / weights.sum()).tolist(), abs=0.01)
    assert torch.equal(draw_order(masks, "class_balanced", epoch_generator(0, 1)),
                       draw_order(masks, "class_balanced", epoch_generator(0, 1)))
    with pytest.raises(CovsegError, match="train.sampling"):
        draw_order(masks, "stratified", generator)


def test_class_balanced_sampling_trains_and_changes_the_run(tiny_data: Path, tmp_path: Path) -> None:
    assert _train(tiny_data, tmp_path / "uniform", "train.epochs=2", "--task", "multiclass") == 0
    assert _train(tiny_data, tmp_path / "balanced", "train.epochs=2", "--task", "multiclass",
                  "train.sampling=class_balanced") == 0
    a, b = _history(tmp_path / "uniform"), _history(tmp_path / "balanced")
    assert len(a) == len(b) == 2
    assert a[0]["train_loss"] != b[0]["train_loss"]
    assert "sampling: class_balanced" in (tmp_path / "balanced" / "config.yaml").read_text()


def test_validating_less_often_leaves_training_alone(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert _train(tiny_data, tmp_path / "every", "train.epochs=5") == 0
    assert _train(tiny_data, tmp_path / "sparse", "train.epochs=5", "train.val_every=2") == 0
    every, sparse = _history(tmp_path / "every"), _history(tmp_path / "sparse")
    assert [r["train_loss"] for r in every] == [r["train_loss"] for r in sparse]
    assert [r["val_dice"] for r in sparse[1::2]] == [r["val_dice"] for r in every[1::2]]  # epochs 2 and 4
    assert sparse[4]["val_dice"] == every[4]["val_dice"]  # the last epoch is always validated
    assert all(r["val_dice"] == "nan" and r["val_loss"] == "nan" for r in sparse[0:4:2])  # epochs 1 and 3
    wa = read_checkpoint(tmp_path / "every" / "last.pt")["model"]
    wb = read_checkpoint(tmp_path / "sparse" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    best = read_checkpoint(tmp_path / "sparse" / "best.pt")
    dice = {int(r["epoch"]): float(r["val_dice"]) for r in sparse[1::2] + sparse[4:]}
    assert best["epoch"] == max(dice, key=dice.get) and best["score"] == pytest.approx(max(dice.values()), abs=1e-5)
    assert (tmp_path / "sparse" / "curves.png").stat().st_size > 0
    capsys.readouterr()
    assert _train(tiny_data, tmp_path / "bad", "train.val_every=0") == 2
    assert "train.val_every must be positive" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_training_on_random_crops_and_a_crop_the_model_cannot_take(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert _train(tiny_data, tmp_path / "crop", "train.augment.crop=16", "train.epochs=1") == 0
    assert len(_history(tmp_path / "crop")) == 1
    capsys.readouterr()
    # depth 2 needs a multiple of 4: refused before the run folder is made
    assert _train(tiny_data, tmp_path / "bad", "train.augment.crop=18") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.augment.crop is 18" in err[0] and "multiple of 4, such as 16" in err[0]
    assert not (tmp_path / "bad").exists()


def test_existing_run_folder_needs_force(tiny_data: Path, tiny_run: Path, capsys) -> None:
    assert _train(tiny_data, tiny_run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and "Traceback" not in err[0]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name: bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _finished_run_with_a_report(tiny_run: Path, run: Path) -> Path:
    """A copy of the finished ``tiny_run`` at ``run``, with an evaluation report beside its checkpoints."""
    import shutil

    shutil.copytree(tiny_run, run)
    (run / "eval-heldout").mkdir()
    (run / "eval-heldout" / "metrics.json").write_text("{}\n")
    return run


@pytest.mark.parametrize("stop", ["ctrl-c in the first epoch", "ctrl-c while the old run is moved", "error",
                                  "sigterm in the first epoch"])
def test_force_puts_the_old_run_back_when_the_new_one_stops_before_its_first_epoch(
        stop: str, tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # --force used to delete the old run before the new one had anything: Ctrl-C in the first epoch left a folder
    # holding neither (no best.pt, last.pt or report), and advised a --resume that found no last.pt
    import covseg.run

    run = _finished_run_with_a_report(tiny_run, tmp_path / "fz")
    before = _files(run)
    if stop == "ctrl-c while the old run is moved":
        fired = interrupt_after_touching(run, monkeypatch)  # a real SIGINT just after the old folder is renamed
    else:
        def stop_in_the_first_epoch(*args, **kwargs):
            if stop.startswith("sigterm"):  # as the covseg program raises it (fuzz helper 168: the old run was
                raise Terminated              # left hidden beside a folder without its checkpoints)
            raise KeyboardInterrupt if stop.startswith("ctrl-c") else RuntimeError("a failure in the first epoch")

        monkeypatch.setattr(covseg.run, "train_one_epoch", stop_in_the_first_epoch)
    capsys.readouterr()
    if stop == "error":
        with pytest.raises(RuntimeError, match="a failure in the first epoch"):
            _train(tiny_data, run, "--force", "model.width=8")
    else:
        assert _train(tiny_data, run, "--force", "model.width=8") == (143 if stop.startswith("sigterm") else 130)
    assert _files(run) == before  # the old run, report and all, as it was
    assert [p.name for p in tmp_path.iterdir()] == ["fz"]  # nothing left aside: neither the old nor the new folder
    err = capsys.readouterr().err
    assert "is back as it was" in err and "--resume" not in err, err
    if stop == "ctrl-c while the old run is moved":
        assert fired
    if stop == "ctrl-c in the first epoch":
        assert f"the run that was in {run} is back as it was, nothing lost (train with --force again to replace it)" \
            in err


def test_force_deletes_the_old_run_once_the_new_one_saved_an_epoch(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                                                   capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run

    run = _finished_run_with_a_report(tiny_run, tmp_path / "fz")
    real = ctrl_c_at_epoch(1, monkeypatch)
    capsys.readouterr()
    assert _train(tiny_data, run, "--force", "--epochs", "3", "model.width=8") == 130
    err = capsys.readouterr().err
    assert f"{run}: the run there is kept as .fz." in err  # where it lay while the first epoch trained
    assert f"interrupted: 1 of 3 epochs saved; continue with covseg train --resume {run}" in err
    # the new run, resumable, in place of the old one, whose report went with it
    assert read_checkpoint(run / "last.pt")["epoch"] == 1 and len(_history(run)) == 1
    assert read_checkpoint(run / "last.pt")["config"]["model"]["width"] == 8 and not (run / "eval-heldout").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fz"]
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert len(_history(run)) == 3


def test_ctrl_c_before_a_new_run_s_first_epoch_says_to_start_again_not_to_resume(
        tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(covseg.run, "train_one_epoch", ctrl_c)
    run = tmp_path / "new"
    assert _train(tiny_data, run) == 130
    err = capsys.readouterr().err
    assert not (run / "last.pt").exists() and "--resume" not in err, err
    assert (f"interrupted before the first epoch was saved, so there is nothing to resume; start the run again "
            f"(the same covseg train ... -o {run}; no --force needed)") in err
    monkeypatch.undo()
    assert _train(tiny_data, run, "train.epochs=1") == 0  # as the message says: no --force
    assert len(_history(run)) == 1


def test_a_run_that_failed_before_its_first_epoch_starts_again_without_force(
        tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run

    def fail(*args, **kwargs):
        raise CovsegError("the first epoch failed")

    real = covseg.run.train_one_epoch
    monkeypatch.setattr(covseg.run, "train_one_epoch", fail)
    run = tmp_path / "new"
    assert _train(tiny_data, run) == 2
    assert sorted(p.name for p in run.iterdir()) == ["class_weights.json", "config.yaml", "run.json", "split.json"]
    (run / ".config.yaml.x1y2z3w4.part.yaml").write_text("")  # a write a SIGKILL cut short
    capsys.readouterr()
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    assert _train(tiny_data, run, "train.epochs=1") == 0
    assert f"{run}: holds a run that stopped before it saved an epoch; starting it again" in capsys.readouterr().err
    assert len(_history(run)) == 1 and not list(tmp_path.glob(".*"))
    # a folder holding anything else, or a saved epoch, still needs --force
    for extra in ("notes.txt", "last.pt"):
        folder = tmp_path / f"with-{extra}"
        folder.mkdir()
        for name in ("config.yaml", "split.json", "class_weights.json", "run.json", extra):
            (folder / name).write_text((run / name).read_text() if name != extra else "kept")
        assert _train(tiny_data, folder, "train.epochs=1") == 2
        assert "--force" in capsys.readouterr().err and (folder / extra).read_text() == "kept"


def _train_args(data: Path, run: Path, epochs: int, *extra: str) -> list[str]:
    """The ``covseg train`` arguments of :func:`_start`'s runs, for a run of the same command in this process."""
    return ["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(run), "--quiet",
            "--epochs", str(epochs), *TINY_OVERRIDES, "data.input_size=64", "model.width=8", *extra]


def _start(data: Path, run: Path, epochs: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "covseg", *_train_args(data, run, epochs, *extra)]
    # a shell that starts the tests in the background leaves SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: give the child the default disposition, as an interactive Ctrl-C would find it
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)


def _wait_for_epoch(run: Path, epoch: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "history.csv").is_file() and len(_history(run)) >= epoch:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("training did not reach the epoch in time")


@pytest.mark.parametrize(("name", "average", "epochs", "kill_after"), [
    ("ema", ("train.ema=0.9",), 8, 2),
    ("swa", ("train.swa_epochs=6", "train.swa_lr=0.005"), 10, 5),
])
def test_killed_run_resumes_to_the_same_result(tiny_data: Path, tmp_path: Path, name: str,
                                               average: tuple[str, ...], epochs: int, kill_after: int) -> None:
    proc = _start(tiny_data, tmp_path / "killed", epochs, *average)
    _wait_for_epoch(tmp_path / "killed", kill_after, proc)
    proc.kill()
    proc.wait()
    done = len(_history(tmp_path / "killed"))
    assert done < epochs, "the run finished before it could be killed; make it longer"
    if name == "swa":  # killed inside the averaged epochs (5..10): last.pt carries the average so far
        # counted from last.pt's own epoch: a kill between writing last.pt and history.csv leaves history one behind
        state = read_checkpoint(tmp_path / "killed" / "last.pt")
        assert state["swa_n"] == state["epoch"] - 4 > 0 and state["epoch"] - done in (0, 1)
    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0
    resumed = _history(tmp_path / "killed")
    assert [int(r["epoch"]) for r in resumed] == list(range(1, epochs + 1))
    # an uninterrupted run with the same command computes the same numbers (run in this process, as the resume
    # was: a third process added about 5 s of start-up on 2 AVX2 cores)
    assert main(_train_args(tiny_data, tmp_path / "full", epochs, *average)) == 0
    for a, b in zip(resumed, _history(tmp_path / "full")):
        assert float(a["val_dice"]) == pytest.approx(float(b["val_dice"]), abs=1e-6)
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-6)
    # and so does the weight average, carried across the kill in last.pt (SWA's from epoch 4 on)
    ema_resumed = read_checkpoint(tmp_path / "killed" / f"{name}.pt")
    ema_full = read_checkpoint(tmp_path / "full" / f"{name}.pt")
    assert ema_resumed["epoch"] == ema_full["epoch"] == epochs
    for key, value in ema_full["model"].items():
        torch.testing.assert_close(ema_resumed["model"][key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_saves_and_exits_cleanly(tiny_data: Path, tmp_path: Path, signum: int, status: int) -> None:
    # SIGTERM (kill, timeout, a scheduler) ended the process at once before, without a word (fuzz helper 168)
    run = tmp_path / "interrupted"
    proc = _start(tiny_data, run, 200)
    _wait_for_epoch(run, 1, proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "Traceback" not in err and "--resume" in err
    assert read_checkpoint(run / "last.pt")["epoch"] == len(_history(run))
    assert (run / "curves.png").is_file()


def test_resume_without_checkpoint(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a covseg run folder" in capsys.readouterr().err  # an empty folder


def test_lr_schedules() -> None:
    assert lr_factor("constant", 50, 100) == 1.0
    assert lr_factor("cosine", 0, 100) == 1.0 and lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("onecycle", 0, 100) == pytest.approx(0.04) and lr_factor("onecycle", 30, 100) == pytest.approx(1.0)


def test_swa_learning_rate_by_hand() -> None:
    # 10 epochs of 3 steps; the last 4 epochs (steps 18..29) hold swa_lr, the 18 before run the cosine from lr to it
    cfg = TrainConfig(lr=0.01, epochs=10, swa_epochs=4, swa_lr=0.002, schedule="cosine")
    assert learning_rate(cfg, 0, 3) == pytest.approx(0.01)
    assert learning_rate(cfg, 9, 3) == pytest.approx(0.002 + 0.008 * 0.5)  # half way down the cosine
    assert learning_rate(cfg, 17, 3) == pytest.approx(0.002 + 0.008 * 0.5 * (1 + math.cos(math.pi * 17 / 18)))
    assert learning_rate(cfg, 18, 3) == learning_rate(cfg, 29, 3) == 0.002
    # without SWA: the plain schedule over every step
    plain = TrainConfig(lr=0.01, epochs=10, schedule="cosine")
    assert learning_rate(plain, 15, 3) == pytest.approx(0.01 * 0.5) and learning_rate(plain, 0, 3) == 0.01


def test_sgd_momentum_is_nesterovs_by_hand() -> None:
    # Nesterov SGD from rest: the buffer is the gradient g, the step lr * (g + m * g); then buffer m * g + g'
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.99, weight_decay=0.0)
    optimizer = make_optimizer(torch.nn.ParameterList([weight]), cfg)
    g = torch.tensor([0.5, 1.0])
    weight.grad = g.clone()
    optimizer.step()
    assert torch.allclose(weight.detach(), torch.tensor([1.0, -2.0]) - 0.1 * 1.99 * g)
    before = weight.detach().clone()
    weight.grad = g.clone()  # second step: buffer 0.99 g + g = 1.99 g, step lr * (g + 0.99 * 1.99 g)
    optimizer.step()
    assert torch.allclose(weight.detach(), before - 0.1 * (1 + 0.99 * 1.99) * g)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_grad_clip_bounds_the_steps_norm_by_hand(clip: float) -> None:
    # one step of plain SGD (lr 1, no momentum or decay) over one batch moves the weights by the gradient itself,
    # so the step's global L2 norm is the gradient's norm, or the clip where that is smaller
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    images, masks = torch.rand(4, 1, 16, 16), (torch.rand(4, 16, 16) > 0.5).long()
    cfg = TrainConfig(optimizer="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1,
                      batch_size=4, grad_clip=clip)
    before = [p.detach().clone() for p in model.parameters()]
    loss_fn = torch.nn.CrossEntropyLoss()
    train_one_epoch(model, loss_fn, make_optimizer(model, cfg), images, masks, cfg, 0, torch.device("cpu"),
                    torch.float32)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())]).norm()
    if clip:
        assert step.item() == pytest.approx(clip, rel=1e-4)
    else:
        assert step.item() > 0.01  # the whole gradient: far above the clip of the other case


def test_mixup_mixes_the_batches_drawn_without_it_and_weighs_both_label_maps() -> None:
    from covseg.training import MIXUP_STREAM, side_generator
    from covseg.transforms import mixup

    images, masks = torch.rand(8, 1, 16, 16), (torch.rand(8, 16, 16) > 0.6).long()
    runs = {}
    for alpha in (0.0, 0.4):
        torch.manual_seed(0)
        model, loss_fn = InputRecorder(), RecordingLoss()
        cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=2,
                          batch_size=4, mixup_alpha=alpha)
        result = train_one_epoch(model, loss_fn, make_optimizer(model, cfg), images, masks, cfg, 1,
                                 torch.device("cpu"), torch.float32)
        runs[alpha] = model, loss_fn, result
    plain, mixed = runs[0.0], runs[0.4]
    assert len(plain[1].targets) == 2 and len(mixed[1].targets) == 4  # each step scores both label maps
    mixing = side_generator(0, 1, MIXUP_STREAM)
    for step in range(2):
        x, y = plain[0].inputs[step], plain[1].targets[step]  # the batch drawn without mixup
        expected, partner, lam = mixup(x, 0.4, mixing)
        assert 0 < lam < 1
        torch.testing.assert_close(mixed[0].inputs[step], expected)
        assert torch.equal(mixed[1].targets[2 * step], y) and torch.equal(mixed[1].targets[2 * step + 1], y[partner])
    # the loss reported is the mixed one, lam CE(y) + (1 - lam) CE(y[partner]), averaged over the steps: with
    # lr 0 the weights stay, so it can be recomputed by hand
    torch.manual_seed(0)
    model = InputRecorder()
    cfg = TrainConfig(optimizer="sgd", lr=0.0, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=2,
                      batch_size=4, mixup_alpha=0.4)
    result = train_one_epoch(model, RecordingLoss(), make_optimizer(model, cfg), images, masks, cfg, 1,
                             torch.device("cpu"), torch.float32)
    mixing, by_hand = side_generator(0, 1, MIXUP_STREAM), []
    with torch.no_grad():
        for step in range(2):
            x, partner, lam = mixup(plain[0].inputs[step], 0.4, mixing)
            logits, y = model.conv(x), plain[1].targets[step]
            by_hand.append(lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[partner]))
    assert result.loss == pytest.approx(float(sum(by_hand)) / 2, rel=1e-5)


def test_epoch_average_is_the_plain_mean_of_its_updates() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    average = epoch_average(model)
    for weight in ([1.0, 2.0], [4.0, -1.0], [-2.0, 5.0]):
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor([weight]))
        average.update_parameters(model)
    torch.testing.assert_close(average.module[0].weight, torch.tensor([[1.0, 2.0]]))  # (1+4-2)/3, (2-1+5)/3
    assert int(average.n_averaged) == 3


def test_recompute_batch_norm_averages_the_batch_statistics_by_hand() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1, momentum=0.3))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[1].running_mean.fill_(9.0)
    model.eval()
    images = torch.arange(24, dtype=torch.float32).reshape(6, 1, 2, 2) ** 0.5
    recompute_batch_norm(model, images, batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    first, second = 2 * images[:4].flatten(), 2 * images[4:].flatten()  # batches of 4 and 2 images
    # the mean over batches (not pixels) of each batch's mean and unbiased variance; the old values are gone
    torch.testing.assert_close(model[1].running_mean, ((first.mean() + second.mean()) / 2).reshape(1))
    torch.testing.assert_close(model[1].running_var, ((first.var() + second.var()) / 2).reshape(1))
    assert int(model[1].num_batches_tracked) == 2 and model[1].momentum == 0.3 and not model.training
    # torch's own SWA helper, fed the same batches, agrees
    reference = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn([images[:4], images[4:]], reference)
    for ours, theirs in zip(model[1].buffers(), reference[1].buffers()):
        torch.testing.assert_close(ours, theirs)
    # dropout is off while the statistics are gathered; the modes come back as they were
    dropped = torch.nn.Sequential(model[0], torch.nn.Dropout2d(0.5), torch.nn.BatchNorm2d(1))
    dropped.train()
    recompute_batch_norm(dropped, images, batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    torch.testing.assert_close(dropped[2].running_mean, model[1].running_mean)
    assert dropped.training and dropped[1].training
    # a failure part way leaves the momenta and the mode as they were
    failing = torch.nn.Sequential(torch.nn.BatchNorm2d(1, momentum=0.3), torch.nn.Conv2d(2, 1, 1))
    failing.eval()
    with pytest.raises(RuntimeError):
        recompute_batch_norm(failing, images, batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    assert failing[0].momentum == 0.3 and not failing.training and not failing[0].training
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))  # nothing to recompute: left as it is
    before = [t.clone() for t in plain.state_dict().values()]
    recompute_batch_norm(plain, images, 4, torch.device("cpu"), torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(before, plain.state_dict().values()))


def test_swa_averages_the_last_epochs_weights_and_leaves_training_unchanged(tiny_data: Path, tmp_path: Path,
                                                                            capsys) -> None:
    # at a constant rate equal to swa_lr the schedule no longer depends on the length of the run, so the weights
    # after epoch 2 of a 3-epoch run are those of a 2-epoch run
    const = ("train.schedule=constant",)
    assert _train(tiny_data, tmp_path / "two", *const, "--epochs", "2") == 0
    assert _train(tiny_data, tmp_path / "three", *const, "--epochs", "3") == 0
    run = tmp_path / "swa"
    assert _train(tiny_data, run, *const, "train.swa_epochs=2", "train.swa_lr=0.01", "--epochs", "3") == 0
    two, three = (read_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("two", "three"))
    last, swa = read_checkpoint(run / "last.pt"), read_checkpoint(run / "swa.pt")
    assert all(torch.equal(last["model"][k], three[k]) for k in three)  # training untouched
    assert swa["epoch"] == 3 and last["swa_n"] == 2 and "optimizer" not in swa
    for key, value in three.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(swa["model"][key], (two[key] + value) / 2)
    # batch-norm statistics recomputed over the training slices, one pass of batch 4
    n_train = len(json.loads((run / "split.json").read_text())["train"])
    tracked = [v for k, v in swa["model"].items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(v) == math.ceil(n_train / 4) for v in tracked)
    assert any(not torch.equal(swa["model"][k], three[k]) for k in three if k.endswith("running_mean"))
    # the schedule: lr holds swa_lr in the averaged epochs
    assert _train(tiny_data, tmp_path / "cos", "train.swa_epochs=2", "train.swa_lr=0.004", "--epochs", "4") == 0
    lrs = [float(r["lr"]) for r in _history(tmp_path / "cos")]
    assert lrs[0] > 0.004 and lrs[2] == lrs[3] == pytest.approx(0.004)
    # the run's own model: evaluate, predict and export take swa.pt unless told otherwise; last.pt reports beside
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert json.loads((run / "eval-heldout" / "metrics.json").read_text())["model"]["file"].endswith("swa.pt")
    assert main(["evaluate", str(run), "--checkpoint", "last", "--quiet"]) == 0
    assert json.loads((run / "eval-heldout-last" / "metrics.json").read_text())["model"]["file"].endswith("last.pt")
    assert open_predictor(run)[2]["file"].endswith("swa.pt")
    assert find_checkpoint(run, "final").name == "swa.pt" and find_checkpoint(run, "best").name == "best.pt"
    plain = tmp_path / "two"  # a run without an average: best.pt, or last.pt for the images that chose best.pt
    assert find_checkpoint(plain).name == "best.pt" and find_checkpoint(plain, "final").name == "last.pt"
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "two"), "--checkpoint", "swa", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no swa.pt" in err[0] and "train.swa_epochs=" in err[0]


@pytest.mark.parametrize(("overrides", "message"), [
    (("train.swa_epochs=3",), "train.swa_epochs is 3 with train.epochs 3"),
    (("train.swa_epochs=1",), "train.swa_lr is 0; with train.swa_epochs set"),
    (("train.swa_epochs=1", "train.swa_lr=0.02"), "in (0, train.lr = 0.01]"),
    (("train.swa_epochs=1", "train.swa_lr=0.005", "train.ema=0.9"), "two weight averages"),
    (("train.swa_epochs=-1",), "train.swa_epochs is -1; it must be >= 0"),
    (("train.swa_lr=0.005",), "train.swa_lr is 0.005 but train.swa_epochs is 0"),
    (("train.swa_epochs=1", "train.swa_lr=0.005", "train.schedule=onecycle"), "onecycle has a warm-up"),
    (("train.swa_epochs=2", "train.swa_lr=0.005", "train.progressive_size=16", "train.progressive_fraction=0.67"),
     "train.epochs 3 (of which 2 at train.progressive_size)"),
])
def test_swa_settings_are_refused_before_anything_is_written(tiny_data: Path, tmp_path: Path, capsys,
                                                             overrides: tuple[str, ...], message: str) -> None:
    assert _train(tiny_data, tmp_path / "bad", *overrides, "--epochs", "3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()


def test_class_argmax_matches_torch_argmax_and_its_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    for classes in (2, 3, 4):
        # coarse scores, so many pixels tie between classes
        scores = torch.randint(0, 3, (2, classes, 5, 7), generator=generator).float()
        assert torch.equal(class_argmax(scores), scores.argmax(1))
        labels = class_argmax(scores[:, 1:])  # a non-contiguous view, as a type model's lesion classes
        assert labels.dtype == torch.int64 and torch.equal(labels, scores[:, 1:].argmax(1))
    scores = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 3.0]]).T.reshape(1, 2, 1, 3)  # ties go to the lower class
    assert class_argmax(scores).tolist() == [[[0, 1, 0]]]


def test_deep_supervision_trains_and_saves_a_plain_predictor(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "ds"
    assert _train(tiny_data, run, "model.deep_supervision=true", "--epochs", "2") == 0
    state = read_checkpoint(run / "last.pt")
    assert any(k.startswith("aux_heads.") for k in state["model"])
    from covseg.checkpoint import load_model

    model, config, _ = load_model(run)
    assert config.model.deep_supervision and model(torch.rand(1, 1, 32, 32)).shape == (1, 2, 32, 32)
    # SegNet takes the same option, so `covseg compare --models unet segnet` trains both under one recipe
    assert _train(tiny_data, tmp_path / "seg", "model.name=segnet", "model.deep_supervision=true",
                  "--epochs", "1") == 0
    assert any(k.startswith("aux_heads.") for k in read_checkpoint(tmp_path / "seg" / "last.pt")["model"])


def test_ctrl_c_inside_a_checkpoint_write_waits_for_the_write() -> None:
    # the race the Ctrl-C test above can hit: SIGINT between last.pt and history.csv
    handler = signal.getsignal(signal.SIGINT)
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal is delivered here and must not cut the block short
            done.append("history.csv")
    assert done == ["history.csv"]
    assert signal.getsignal(signal.SIGINT) is handler
    with interrupts_deferred():  # no signal: nothing raised
        done.append("again")
    assert done == ["history.csv", "again"]


def test_sigterm_inside_a_checkpoint_write_waits_for_the_write_where_the_program_turns_it_into_terminated() -> None:
    import covseg.cli

    previous = signal.signal(signal.SIGTERM, covseg.cli._raise_terminated)  # as covseg.cli.entry installs it
    try:
        done = []
        with pytest.raises(Terminated):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # delivered here: the block must still finish
                done.append("history.csv")
        assert done == ["history.csv"]
        assert signal.getsignal(signal.SIGTERM) is covseg.cli._raise_terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_covseg_program_stops_on_sigterm_in_one_line_with_status_143(monkeypatch, capsys) -> None:
    import covseg.cli

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler raises in here
        return 0

    previous = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(covseg.cli.COMMANDS, "evaluate", terminated)
    try:
        assert covseg.cli.entry(["evaluate", "nowhere"]) == 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "covseg: terminated (SIGTERM)\n"


def test_weight_average_is_the_hand_computed_ema_with_the_models_own_statistics() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    averaged = weight_average(model, decay=0.9)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model[1].running_mean.fill_(4.0)
    averaged.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[11.0, -8.0]]))
        model[1].running_mean.fill_(-6.0)
    averaged.update_parameters(model)
    network = averaged_network(averaged, model)
    # weights: 0.9 * old + 0.1 * new; batch-norm statistics: the model's own, as they stand
    torch.testing.assert_close(network[0].weight, torch.tensor([[2.0, 1.0]]))
    torch.testing.assert_close(network[1].running_mean, torch.tensor([-6.0]))
    assert set(network.state_dict()) == set(model.state_dict())


def test_ema_leaves_training_unchanged_and_is_evaluated_on_request(tiny_data: Path, tiny_run: Path,
                                                                    tmp_path: Path, capsys) -> None:
    run = tmp_path / "ema"
    assert _train(tiny_data, run, "train.ema=0.5", "--epochs", "3") == 0
    # the average is a shadow: the same losses and last weights as the run without it
    for a, b in zip(_history(run), _history(tiny_run)):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-6)
    last, plain = read_checkpoint(run / "last.pt"), read_checkpoint(tiny_run / "last.pt")
    assert all(torch.equal(last["model"][k], plain["model"][k]) for k in plain["model"])
    ema = read_checkpoint(run / "ema.pt")
    assert ema["epoch"] == 3 and "optimizer" not in ema
    assert any(not torch.equal(ema["model"][k], last["model"][k]) for k in last["model"])
    assert all(torch.equal(ema["model"][k], last["model"][k]) for k in last["model"] if "running_" in k)
    assert all(torch.equal(ema["model"][k], last["ema"][k]) for k in last["ema"])
    assert main(["evaluate", str(run), "--checkpoint", "ema", "-o", str(tmp_path / "eval-ema"), "--quiet"]) == 0
    assert json.loads((tmp_path / "eval-ema" / "metrics.json").read_text())["model"]["file"].endswith("ema.pt")
    capsys.readouterr()
    # a run without the average says how to get one
    assert main(["evaluate", str(tiny_run), "--checkpoint", "ema", "-o", str(tmp_path / "none"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ema.pt" in err[0] and "train.ema=" in err[0]
    # a decay outside [0, 1) is refused before anything is written
    assert _train(tiny_data, tmp_path / "bad", "train.ema=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.ema is 1.0" in err[0]
    assert not (tmp_path / "bad").exists()


class _ShapeRecorder(torch.nn.Module):
    """A 1x1 convolution that records the spatial size of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_progressive_resizing_trains_the_first_epochs_small(tiny_data: Path, tmp_path: Path, capsys) -> None:
    from covseg.config import AugmentConfig, TrainConfig
    from covseg.training import train_one_epoch

    model = _ShapeRecorder()
    cfg = TrainConfig(epochs=3, batch_size=4, progressive_size=16, progressive_fraction=0.667,
                      augment=AugmentConfig(hflip=0.5, rotate_deg=10))
    images, masks = torch.rand(8, 1, 32, 32), (torch.rand(8, 32, 32) > 0.7).long()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, images, masks, cfg, epoch,
                        torch.device("cpu"), torch.float32)
    assert cfg.progressive_epochs() == 2  # floor(0.667 * 3)
    # the fraction as written, not its binary float: 0.58 * 50 is 28.999999999999996 in floating point
    assert TrainConfig(epochs=50, progressive_size=16, progressive_fraction=0.58).progressive_epochs() == 29
    assert TrainConfig(epochs=100, progressive_size=16, progressive_fraction=0.57).progressive_epochs() == 57
    assert TrainConfig(epochs=120, progressive_size=256, progressive_fraction=0.667).progressive_epochs() == 80
    assert model.sizes == [(16, 16)] * 4 + [(32, 32)] * 2  # two steps an epoch
    # through the command line: trains, validates at full size, and refuses what cannot work before writing
    capsys.readouterr()
    assert _train(tiny_data, tmp_path / "ok", "train.epochs=3", "train.progressive_size=16",
                  "train.progressive_fraction=0.667") == 0
    assert [r["val_dice"] != "nan" for r in _history(tmp_path / "ok")] == [True] * 3
    assert "epochs 1..3, the first 2 at 16x16" in capsys.readouterr().err
    # a run too short for any small epoch would ignore progressive resizing: refused in one line, nothing written
    assert _train(tiny_data, tmp_path / "short", "train.epochs=1", "train.progressive_size=16",
                  "train.progressive_fraction=0.667") == 2
    err = capsys.readouterr().err
    assert "train.progressive_fraction 0.667 of 1 epochs makes no progressive epoch; raise train.epochs" in err
    assert err.count("\n") == 1 and not (tmp_path / "short").exists()
    for extra, message in [(["train.progressive_size=16"], "set both"),
                           (["train.progressive_size=16", "train.progressive_fraction=1"], "in (0, 1)"),
                           (["train.progressive_size=32", "train.progressive_fraction=0.5"], "not smaller than"),
                           (["train.progressive_size=18", "train.progressive_fraction=0.5"], "multiple of 4, such as 16")]:
        assert _train(tiny_data, tmp_path / "bad", *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and "Traceback" not in err[0], (extra, err)
        assert not (tmp_path / "bad").exists()


def test_resume_after_ctrl_c_with_dropout_equals_the_uninterrupted_run(tiny_data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # dropout draws from torch's global generator, which is seeded once when a run (or a resume) starts: a resumed
    # run must carry on the stream where the interrupted one left it
    import covseg.run

    extra = ("model.dropout=0.5", "--epochs", "3")
    assert _train(tiny_data, tmp_path / "full", *extra) == 0
    real = covseg.run.train_one_epoch

    def interrupt_at_epoch_2(*args, **kwargs):
        if args[6] == 2:  # the third epoch (0-based)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "train_one_epoch", interrupt_at_epoch_2)
    assert _train(tiny_data, tmp_path / "cut", *extra) == 130
    assert len(_history(tmp_path / "cut")) == 2
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    torch.manual_seed(12345)  # whatever the process did in between
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    full, cut = (read_checkpoint(tmp_path / n / "last.pt")["model"] for n in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert [r["train_loss"] for r in _history(tmp_path / "cut")] == [r["train_loss"] for r in _history(tmp_path / "full")]


def test_a_new_run_never_replaces_a_folder_it_reads_from(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=1") == 0
    before = (run / "last.pt").read_bytes()
    capsys.readouterr()
    for setting in (f"train.init={run}", f"train.distill={run}"):
        assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(run), "--force",
                     "--quiet", *TINY_OVERRIDES, "train.epochs=1", setting]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "from inside its own folder" in err[0], err
        assert (run / "last.pt").read_bytes() == before


def test_force_never_deletes_the_data_or_unlabelled_slices_the_run_trains_on(tiny_data: Path, tmp_path: Path,
                                                                             capsys) -> None:
    import shutil

    from conftest import add_unlabelled

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("recipe: tiny\n")  # a run folder, which --force replaces
    shutil.copytree(tiny_data, run / "data")  # the data set kept beside the run
    images = sorted(p.relative_to(run) for p in (run / "data").rglob("*.*"))
    assert len(images) == 48  # 12 slices: 2 images and 2 masks each
    assert main(["train", "--recipe", "tiny", "--data", str(run / "data"), "--split", "cv:0", "-o", str(run), "--force",
                 "--quiet", *TINY_OVERRIDES, "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"reads {run / 'data'} (--data) from inside its own folder" in err[0], err
    assert sorted(p.relative_to(run) for p in (run / "data").rglob("*.*")) == images
    assert not (run / "last.pt").exists() and (run / "config.yaml").read_text() == "recipe: tiny\n"
    # data outside, but its unlabelled slices (train.consistency) a link to a folder inside the run
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    add_unlabelled(run / "slices", 4, 1)
    link = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label"
    (data / link).symlink_to(run / "slices" / link, target_is_directory=True)
    assert main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(run), "--force",
                 "--quiet", *TINY_OVERRIDES, "train.epochs=1", "train.consistency=1", "train.consistency_batch=2"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # after the consistency note
    assert len(err) == 1 and "(the unlabelled slices of train.consistency) from inside its own folder" in err[0], err
    assert len(list((run / "slices" / link / "Imgs").glob("u*.jpg"))) == 4 and (run / "data").is_dir()


def test_resume_rewrites_a_history_csv_left_an_epoch_behind(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=2") == 0
    full = (run / "history.csv").read_text()
    lines = full.splitlines(keepends=True)
    assert len(lines) == 3  # header, epoch 1, epoch 2
    # killed after last.pt of the last epoch was written, before history.csv was: last.pt holds 2 epochs, the csv 1
    (run / "history.csv").write_text("".join(lines[:2]))
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # nothing left to train
    assert (run / "history.csv").read_text() == full
    assert read_checkpoint(run / "last.pt")["epoch"] == 2 and not list(run.glob("*.part*"))
    # a finished run that cv or compare reuses (not resumes) is repaired the same way, and its training time counts
    # every epoch
    from covseg.datasets import load_dataset
    from covseg.experiment import train_or_resume
    from covseg.run import read_run_config

    (run / "history.csv").write_text("".join(lines[:2]))
    config = read_run_config(run)
    samples = load_dataset(tiny_data, "binary", split="train", window=config.data.window)
    logged: list[str] = []
    seconds = train_or_resume(config, samples, run, str(tiny_data), False, False, logged.append)
    assert (run / "history.csv").read_text() == full and "history.csv was behind last.pt" in logged[-1]
    assert seconds == pytest.approx(sum(float(r["seconds"]) for r in _history(run)))


def test_ctrl_c_while_the_last_epoch_is_saved_finishes_the_run(tiny_data: Path, tmp_path: Path, capsys,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run

    real = covseg.run._write_history

    def ctrl_c_during_the_last_write(run_dir: Path, history: list) -> None:
        if len(history) == 2:  # Ctrl-C while epoch 2 of 2 is written: held back until its files all hold it
            os.kill(os.getpid(), signal.SIGINT)
        real(run_dir, history)

    monkeypatch.setattr(covseg.run, "_write_history", ctrl_c_during_the_last_write)
    run = tmp_path / "run"  # no validation images: best.pt is the last epoch's, written once the run is finished
    # Ctrl-C still stops the command (130, so that cv and compare stop too), but the run is finished: best.pt is
    # written and nothing is left to resume
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "official", "--epochs", "2",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES, "data.folds=5", "data.val_fraction=0"]) == 130
    assert read_checkpoint(run / "last.pt")["epoch"] == 2 and len(_history(run)) == 2
    assert read_checkpoint(run / "best.pt")["epoch"] == 2
    assert "the run is finished, nothing to resume" in capsys.readouterr().err


def test_best_pt_holds_the_epoch_of_the_highest_validation_dice(tiny_data: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run
    from covseg.training import EpochResult

    dice = iter([0.2, 0.5, 0.3])  # the best is epoch 2's, neither the first, the last nor the worst
    monkeypatch.setattr(covseg.run, "validate", lambda *args, **kwargs: EpochResult(1.0, 0.9, next(dice)))
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=3") == 0
    assert [float(r["val_dice"]) for r in _history(run)] == [0.2, 0.5, 0.3]
    best, last = read_checkpoint(run / "best.pt"), read_checkpoint(run / "last.pt")
    assert (best["epoch"], best["score"]) == (2, 0.5)
    assert (last["epoch"], last["score"], last["best"]) == (3, 0.3, 0.5)
    assert any(not torch.equal(best["model"][k], last["model"][k]) for k in best["model"])  # epoch 2's weights


def test_settings_that_cannot_train_are_refused_before_the_folder_is_made(tiny_data: Path, tmp_path: Path,
                                                                        capsys) -> None:
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "official", "-o", str(tmp_path / "vf"),
                 "--quiet", *TINY_OVERRIDES, "data.folds=5", "data.val_fraction=0.99"]) == 2
    assert "leaves no training images" in capsys.readouterr().err and not (tmp_path / "vf").exists()
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "official", "-o", str(tmp_path / "vf"),
                 "--quiet", *TINY_OVERRIDES, "data.folds=5", "data.val_fraction=0.01"]) == 2
    assert "rounds to no validation image" in capsys.readouterr().err and not (tmp_path / "vf").exists()
    # a crop larger than the progressive size: the progressive epochs skipped it silently
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(tmp_path / "cr"),
                 "--quiet", *TINY_OVERRIDES, "train.augment.crop=24", "train.progressive_size=16",
                 "train.progressive_fraction=0.5"]) == 2
    assert "crop is 24, larger than train.progressive_size 16" in capsys.readouterr().err
    assert not (tmp_path / "cr").exists()
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--epochs", "2", "-o", str(tmp_path / "e"),
                 "--quiet", *TINY_OVERRIDES, "train.epochs=1"]) == 2
    assert "--epochs 2 and train.epochs=1 contradict each other" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    if not torch.cuda.is_available():
        assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", "3", "-o", str(tmp_path / "cv"),
                     "--device", "cuda", "--quiet", *TINY_OVERRIDES]) == 2
        capsys.readouterr()
        assert not list((tmp_path / "cv").glob("fold-*/config.yaml"))
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--seeds", "-1", "2", "-o", str(tmp_path / "s"),
                 "--quiet", *TINY_OVERRIDES]) == 2
    assert "seeds must be 0 or more" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(["compare", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(tmp_path / "c"),
                 "--quiet", *TINY_OVERRIDES, "model.norm=instance", "--models", "unet", "segnet"]) == 2
    assert "only U-Net has other normalisations" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_resume_refuses_other_training_images_and_a_damaged_run_record(tiny_data: Path, tmp_path: Path,
                                                                       capsys) -> None:
    from conftest import write_semiseg

    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=2") == 0
    state = read_checkpoint(run / "last.pt")  # make it an unfinished run: one of its two epochs done
    state["epoch"], state["history"] = 1, state["history"][:1]
    torch.save(state, run / "last.pt")
    other = write_semiseg(tmp_path / "other", seed=5)  # the same file names, other pixels
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the ones the run began with" in err[0], err
    (run / "run.json").write_text("{not json")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json: not valid JSON" in err[0], err
    (run / "config.yaml").write_text("data: [unclosed")
    assert main(["train", "--resume", str(run), "--data", str(tiny_data), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.yaml: not valid YAML" in err[0], err


def test_resume_refuses_a_last_pt_it_cannot_continue_in_one_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=2") == 0
    state = read_checkpoint(run / "last.pt")  # an unfinished run: one of its two epochs done
    state["epoch"], state["history"] = 1, state["history"][:1]
    key = next(k for k, v in state["model"].items() if v.dim() == 4)  # the first convolution's weight
    wide = torch.zeros(2 * state["model"][key].shape[0], *state["model"][key].shape[1:])
    foreign = copy.deepcopy(state["optimizer"])
    foreign["param_groups"][0]["params"] = foreign["param_groups"][0]["params"][:1]
    cases = [({k: v for k, v in state.items() if k != "optimizer"},  # best.pt copied over last.pt
              r"last\.pt holds no optimizer state \(is it a best\.pt or another checkpoint copied "
              r"over it\?\); .*covseg train \.\.\. -o RUN --force\)$"),
             ({**state, "model": {**state["model"], key: wide}},  # another run's (a wider model)
              rf"last\.pt: its 'model' entry \(model weights\) does not fit the run's config\.yaml "
              rf"\({re.escape(key)} is {'x'.join(map(str, wide.shape))} in the file but .*--force\)$"),
             ({**state, "optimizer": foreign},
              r"its 'optimizer' entry \(optimizer state\) does not fit .*parameter group.*--force\)$")]
    for damaged, pattern in cases:  # each used to end in a KeyError, RuntimeError or ValueError traceback
        torch.save(damaged, run / "last.pt")
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error" in line]  # after the class weights' note
        assert "Traceback" not in err and len(lines) == 1 and re.search(pattern, lines[0]), err


@pytest.mark.parametrize("name, text, message", [("split.json", '{"train": [', "cannot read the split"),
                                                 ("split.json", '{"train": 5}', "a damaged split"),
                                                 ("class_weights.json", '{"weights": ', "unreadable or damaged"),
                                                 ("class_weights.json", '{"w": {}}', "unreadable or damaged"),
                                                 ("class_weights.json", '{"weights": {"a": 1, "b": 2, "c": 3}}',
                                                  "damaged (3 class weights, not one per class of the binary task's 2)")])
def test_resume_refuses_a_damaged_split_or_class_weights_in_one_line(name: str, text: str, message: str,
                                                                     tiny_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=2") == 0
    state = read_checkpoint(run / "last.pt")  # an unfinished run: one of its two epochs done
    state["epoch"], state["history"] = 1, state["history"][:1]
    torch.save(state, run / "last.pt")
    (run / name).write_text(text)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and message in err[0], err


def test_resume_refuses_a_last_pt_trained_with_other_settings(tiny_data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=2") == 0
    state = read_checkpoint(run / "last.pt")  # an unfinished run: one of its two epochs done
    state["epoch"], state["history"] = 1, state["history"][:1]
    foreign = copy.deepcopy(state)  # another fold's last.pt copied in: the same shapes, another held-out fold
    foreign["config"]["data"]["split"] = "cv:1"
    foreign["config"]["train"]["lr"] = 0.02
    torch.save(foreign, run / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2  # before: resumed it silently
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and err[0] == (
        f"covseg: error: {run}: its last.pt was trained with other settings than the run's (data.split cv:1 in "
        "last.pt, cv:0 in config.yaml, and 1 more setting); is it another run's last.pt copied in? a run resumes "
        "only from the last.pt it wrote; train it again (covseg train ... -o RUN --force)"), err
    assert len(_history(run)) == 2  # nothing trained or rewritten
    torch.save(state, run / "last.pt")  # its own last.pt resumes as before
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert read_checkpoint(run / "last.pt")["epoch"] == 2


@pytest.mark.parametrize("split", ["cv:\u00b2", "cv:\u0663", "cv:\uff11"])
def test_a_cv_split_with_a_non_ascii_digit_is_one_line(split: str) -> None:
    from covseg.errors import CovsegError
    from covseg.splits import make_split, parse_split_name

    # before: str.isdigit() passed "²" and int() raised ValueError (a traceback); "٣" and "１" became folds 3 and 1
    with pytest.raises(CovsegError, match=r"write cv:K with a fold number K, e\.g\. cv:0$"):
        parse_split_name(split)
    with pytest.raises(CovsegError, match="write cv:K"):
        make_split(["a", "b", "c"], split, folds=3)
    assert parse_split_name("cv:2") == ("cv", 2)


@pytest.mark.parametrize("text, missing", [('{"train": ["a", "b"]}', "'val'"), ('{"val": ["a"], "test": []}', "'train'"),
                                           ("{}", "'train' or 'val'")])
def test_a_split_json_without_its_train_or_val_list_is_refused(text: str, missing: str, tmp_path: Path) -> None:
    from covseg.errors import CovsegError
    from covseg.splits import load_split

    path = tmp_path / "split.json"
    path.write_text(text)
    # before: read as an empty validation (or training) part
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(path))}: a damaged split \(no {missing} list of image "
                                          r"names\); train the run again \(covseg train \.\.\. -o RUN --force\)$"):
        load_split(path)
    path.write_text('{"train": ["a"], "val": ["b"]}')  # only test may be left out
    assert load_split(path) == {"train": ["a"], "val": ["b"], "test": []}


def test_parallel_runs_start_nothing_after_a_failure(tiny_data: Path, tmp_path: Path) -> None:
    from covseg.config import apply_overrides, load_recipe
    from covseg.datasets import load_dataset
    from covseg.errors import CovsegError
    from covseg.experiment import _fold_config
    from covseg.parallel_runs import train_runs_in_parallel

    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=2", "train.threads=1"])
    samples = load_dataset(tiny_data, "binary", split="train", window=config.data.window)
    runs = [(_fold_config(config, k, 3), tmp_path / f"fold-{k}") for k in range(3)]
    (tmp_path / "fold-0").mkdir()
    (tmp_path / "fold-0" / "config.yaml").write_text("recipe: other\n")  # refused inside the worker
    with pytest.raises(CovsegError):
        train_runs_in_parallel(runs, samples, str(tiny_data), jobs=1, log=lambda message: None)
    # one worker: the pool used to queue the next run beyond cancel()'s reach, and it trained to the end
    assert not (tmp_path / "fold-1").exists() and not (tmp_path / "fold-2").exists()


def _killed_worker(*args: object) -> bool:
    """A worker body that dies as the OOM killer ends it (importable by name, so a spawned worker can run it)."""
    os.kill(os.getpid(), signal.SIGKILL)
    return True


def test_parallel_runs_turn_a_killed_worker_into_one_line(tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.config import load_recipe
    from covseg.errors import CovsegError

    monkeypatch.setattr(parallel_runs, "_train_in_worker", _killed_worker)
    runs = [(load_recipe("tiny"), tmp_path / f"fold-{k}") for k in range(2)]
    # it used to raise concurrent.futures' BrokenProcessPool, a traceback under covseg cv --jobs
    # the pool stops every other worker at once: the message says the other runs stopped too
    with pytest.raises(CovsegError, match=r"^a training worker was killed \(often out of memory\), which stopped the "
                                          r"other runs too; lower --jobs and run again to resume them$"):
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=2, log=lambda message: None)


def test_a_parallel_worker_interrupted_while_receiving_its_run_does_not_train_it(tmp_path: Path, monkeypatch) -> None:
    import covseg.experiment
    from covseg import parallel_runs
    from covseg.config import load_recipe

    trained = []
    monkeypatch.setattr(covseg.experiment, "train_or_resume", lambda *args: trained.append(args))
    monkeypatch.setattr(parallel_runs, "_training", False)
    monkeypatch.setattr(parallel_runs, "_interrupted", False, raising=False)
    config = load_recipe("tiny")
    # Ctrl-C reaches the worker while it unpickles its run (a large sample list: seconds), before training began;
    # before: the handler dropped it as an idle worker's, and the run then trained all its epochs
    parallel_runs._on_interrupt(signal.SIGINT, None)
    assert parallel_runs._train_in_worker(config, [], tmp_path / "run", "data", torch.get_num_threads()) is False
    assert trained == [] and parallel_runs._training is False
    # without a Ctrl-C the run trains; during its training Ctrl-C stops it as it stops a single run
    monkeypatch.setattr(parallel_runs, "_interrupted", False)
    assert parallel_runs._train_in_worker(config, [], tmp_path / "run", "data", torch.get_num_threads()) is True
    assert len(trained) == 1

    def ctrl_c(*args: object) -> None:
        assert parallel_runs._training
        parallel_runs._on_interrupt(signal.SIGINT, None)

    monkeypatch.setattr(covseg.experiment, "train_or_resume", ctrl_c)
    assert parallel_runs._train_in_worker(config, [], tmp_path / "run", "data", torch.get_num_threads()) is False
    assert parallel_runs._training is False


def test_threads_per_job_shares_out_the_cores_this_process_may_use(monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.parallel_runs import threads_per_job

    monkeypatch.setattr(parallel_runs, "cgroup_cpu_limit", lambda: None)  # no CPU quota (this test's machine may have one)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads_per_job(2) == 2  # 4 cores allowed (taskset, a container's cpuset), not the machine's 64
    assert threads_per_job(8) == 1 and threads_per_job(2, cores=10) == 5
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # OMP_PROC_BIND pinned the importing thread to one core
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert threads_per_job(1) == 2
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows: every core
    assert threads_per_job(2) == 32
    monkeypatch.setattr(parallel_runs, "cgroup_cpu_limit", lambda: 6)  # docker --cpus 6 on the 64-core host
    assert threads_per_job(2) == 3 and threads_per_job(8) == 1
    assert threads_per_job(2, cores=10) == 5  # cores given: taken as they are


def test_parallel_runs_log_the_threads_a_config_sets(tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.config import apply_overrides, load_recipe

    class Logged(Exception):
        pass

    def log(message: str) -> None:  # the first line comes before any worker starts: stop there
        raise Logged(message)

    monkeypatch.setattr(parallel_runs, "threads_per_job", lambda jobs: 7)
    config = load_recipe("tiny")
    runs = [(apply_overrides(config, ["train.threads=1"]), tmp_path / f"fold-{k}") for k in range(2)]
    # it used to log the share (7 threads) though the workers use the config's train.threads
    with pytest.raises(Logged, match=r"^training 2 runs, 2 at a time, 1 torch thread each$"):
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=2, log=log)
    with pytest.raises(Logged, match=r"^training 2 runs, 2 at a time, 7 torch threads each$"):
        parallel_runs.train_runs_in_parallel([(config, tmp_path / f"fold-{k}") for k in range(2)], [], "data",
                                             jobs=2, log=log)


def test_resume_refuses_a_run_json_without_its_data_entry_in_one_line(tiny_data: Path, tiny_run: Path,
                                                                       tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "run.json").write_text('{"covseg": "0"}')  # a JSON object, but no "data" entry
    capsys.readouterr()
    # it used to be a KeyError traceback
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json: a damaged run.json (no 'data' entry" in err[0] and "--data DIR" in err[0], err
    # --data names the data itself: the resume needs no "data" entry
    assert main(["train", "--resume", str(run), "--data", str(tiny_data), "--quiet"]) == 0
    (run / "run.json").write_text('{"data": 5}')  # not a folder name
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a damaged run.json" in err[0], err


def test_resuming_a_finished_run_logs_no_training_line(tiny_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    # said once, by the command's closing line (tests/test_s72_fixes.py)
    assert "nothing left to resume: the run has all 3 epochs" in text and text.count("nothing left") == 1, text
    # it used to go on with "training unet (...) on ... images, ..., epochs 4..3"
    assert "epochs 4..3" not in text and "training unet" not in text, text


def test_resuming_a_finished_one_epoch_run_says_its_1_epoch_not_all_1_epochs(tiny_data: Path, tmp_path: Path,
                                                                               capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "nothing left to resume: the run has its 1 epoch; " in text, text
    assert "all 1 epochs" not in text, text


def test_sigterm_to_a_parallel_cross_validation_stops_its_workers_after_they_save(tiny_data: Path,
                                                                                  tmp_path: Path) -> None:
    # SIGTERM reaches the parent alone (Ctrl-C reaches the whole group): the parent passes it on, or it would wait
    # for its workers to train every epoch
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "covseg", "cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", "2",
           "--jobs", "2", "-o", str(out), "--quiet", "--epochs", "400", "train.threads=1",
           *(o for o in TINY_OVERRIDES if not o.startswith("data.folds"))]
    restore_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731 (see _start)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore_sigint)
    for fold in (0, 1):
        _wait_for_epoch(out / f"fold-{fold}", 1, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    assert err.rstrip().endswith("covseg: terminated (SIGTERM)") and "Traceback" not in err, err
    for fold in (0, 1):
        saved = read_checkpoint(out / f"fold-{fold}" / "last.pt")["epoch"]
        assert 1 <= saved < 400 and saved == len(_history(out / f"fold-{fold}"))
