"""The semi-supervised consistency term: CutMix boxes, soft cross-entropy, warm-up, the teacher's mixed targets,
and a training run that uses it (reproducible across a resume, refused without unlabelled slices)."""
from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import covseg.run
from covseg.checkpoint import read_checkpoint
from covseg.cli import main
from covseg.consistency import ConsistencyTerm, soft_cross_entropy, warmup
from covseg.transforms import box_masks
from covseg.training import weight_average

from conftest import TINY_OVERRIDES, add_unlabelled, write_semiseg


def test_box_masks_are_one_rectangle_each() -> None:
    masks = box_masks(16, 20, 30, torch.Generator().manual_seed(0))
    assert masks.shape == (16, 1, 20, 30)
    for mask in masks[:, 0]:
        inside = mask.nonzero()
        if len(inside) == 0:  # a share that rounds to an empty box
            continue
        rows, cols = inside.unbind(1)
        box = mask[int(rows.min()):int(rows.max()) + 1, int(cols.min()):int(cols.max()) + 1]
        assert box.all() and int(mask.sum()) == box.numel()
    shares = masks.mean(dim=(1, 2, 3))
    assert 0.2 < float(shares.mean()) < 0.8  # a uniform share of the area: mean 0.5


def test_soft_cross_entropy_is_cross_entropy_for_one_hot_targets() -> None:
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(2))
    one_hot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))
    # by hand: two classes, logits (0, log 4) -> p = (1/5, 4/5); target (1/2, 1/2): -(log 1/5 + log 4/5) / 2
    logits = torch.tensor([0.0, 4.0]).log().nan_to_num(neginf=0.0).view(1, 2, 1, 1)
    value = soft_cross_entropy(logits, torch.full((1, 2, 1, 1), 0.5))
    assert float(value) == pytest.approx(-(math.log(0.2) + math.log(0.8)) / 2)


def test_warmup_rises_linearly_over_a_quarter_of_the_steps() -> None:
    assert [warmup(s, 400) for s in (0, 50, 100, 300)] == [0.0, 0.5, 1.0, 1.0]


def test_mixed_targets_are_the_teachers_on_the_mixed_slices() -> None:
    # per-pixel logits from the grey level (1x1 convolution, then batch norm): a constant slice has constant output
    student = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    with torch.no_grad():
        student[0].weight.copy_(torch.tensor([[[[1.0]]], [[[-1.0]]]]))
        student[0].bias.zero_()
    images = torch.tensor([0.1, 0.4, 0.7, 0.9]).view(4, 1, 1, 1).expand(4, 1, 16, 16).half()
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=3, weight=1.0)
    term.update(student)  # the first update copies the student's weights
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # then the student moves on: new weights and new batch-norm statistics
        student[0].weight.mul_(3.0)
        student[1].running_mean.copy_(torch.tensor([0.2, -0.1]))
        student[1].running_var.copy_(torch.tensor([2.0, 0.5]))
    teacher.load_state_dict({**teacher.state_dict(), **{k: v for k, v in student.state_dict().items() if "running" in k}})
    mixed, target = term.batch_for(student, torch.Generator().manual_seed(4), None, torch.device("cpu"))
    assert mixed.shape == (3, 1, 16, 16) and target.shape == (3, 2, 16, 16)
    # every pixel's target is the teacher's (old weights, the student's statistics) for the grey level seen there
    torch.testing.assert_close(target, torch.softmax(teacher.eval()(mixed), dim=1))
    assert not torch.allclose(target, torch.softmax(student.eval()(mixed), dim=1), atol=1e-3)
    torch.testing.assert_close(student[1].running_mean, torch.tensor([0.2, -0.1]))  # the student's are untouched
    levels = [len(m.unique()) for m in mixed]
    assert max(levels) == 2 and min(levels) >= 1  # CutMix: a box of one other slice in each
    assert set(mixed.unique().tolist()) <= set(images.float().unique().tolist())
    half, _ = term.batch_for(student, torch.Generator().manual_seed(4), 8, torch.device("cpu"))
    assert half.shape == (3, 1, 8, 8)  # progressive resizing: the slices are resampled first


def test_the_teacher_moves_as_an_average_and_the_term_pulls_the_student_towards_it() -> None:
    student = nn.Sequential(nn.Conv2d(1, 2, 1))
    images = torch.rand(4, 1, 8, 8)
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=2, weight=2.0)
    term.update(student)  # the first update copies the student
    first = student[0].weight.detach().clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
    term.update(student)  # then 0.9 * the average + 0.1 * the student, by hand
    torch.testing.assert_close(term.teacher.module[0].weight, 0.9 * first + 0.1 * (first + 1.0))
    # the term has a gradient towards the targets, scaled by its weight and the warm-up (half way at step 1 of 8)
    logits = torch.zeros(2, 2, 8, 8, requires_grad=True)
    target = torch.zeros(2, 2, 8, 8)
    target[:, 1] = 1.0
    loss = term.loss(logits, target, step=1, total=8)
    assert loss.item() == pytest.approx(2.0 * 0.5 * math.log(2.0))  # soft CE of an even guess against a sure target
    loss.backward()
    assert logits.grad is not None and (logits.grad[:, 1] < 0).all() and (logits.grad[:, 0] > 0).all()


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def semi_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_unlabelled(write_semiseg(tmp_path_factory.mktemp("cons"), n=9, seed=3), n=6, seed=5)


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(out), "--quiet",
                 "--epochs", "4", *TINY_OVERRIDES, "train.consistency=1", "train.consistency_batch=2", *extra])


def test_a_consistency_run_resumes_to_the_same_result(semi_data: Path, tmp_path: Path, monkeypatch) -> None:
    assert _train(semi_data, tmp_path / "full") == 0
    full = read_checkpoint(tmp_path / "full" / "last.pt")
    assert set(full["teacher"]) == set(full["model"])  # the teacher is saved for a resume

    real = covseg.run.train_one_epoch

    def stop_at_epoch_2(*args, **kwargs):
        if args[6] == 2:  # the 0-based epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "train_one_epoch", stop_at_epoch_2)
    assert _train(semi_data, tmp_path / "cut") == 130
    assert len(_history(tmp_path / "cut")) == 2
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    assert main(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    for a, b in zip(_history(tmp_path / "cut"), _history(tmp_path / "full"), strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-6)
    resumed = read_checkpoint(tmp_path / "cut" / "last.pt")
    for key, value in full["teacher"].items():
        torch.testing.assert_close(resumed["teacher"][key], value, rtol=1e-5, atol=1e-6)
    # and the term changes training: without it the same seed trains to other weights
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:0", "-o", str(tmp_path / "off"),
                 "--quiet", "--epochs", "4", *TINY_OVERRIDES]) == 0
    off = read_checkpoint(tmp_path / "off" / "last.pt")["model"]
    assert any(not torch.equal(off[k], full["model"][k]) for k in off)


def test_the_teacher_averages_with_the_decay_the_config_sets(semi_data: Path, tmp_path: Path, monkeypatch) -> None:
    """run.py builds the mean teacher with ``train.teacher_decay`` (not a default),
    and another decay gives another teacher."""
    decays: list[float] = []
    real = covseg.run.weight_average

    def recording(model, decay):
        decays.append(decay)
        return real(model, decay)

    monkeypatch.setattr(covseg.run, "weight_average", recording)
    teachers = []
    for decay in ("0.37", "0.9"):
        out = tmp_path / f"decay-{decay}"
        assert _train(semi_data, out, f"train.teacher_decay={decay}") == 0
        teachers.append(read_checkpoint(out / "last.pt")["teacher"])
    assert decays == [0.37, 0.9]
    assert any(not torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0] if teachers[0][k].is_floating_point())


def test_consistency_without_unlabelled_slices_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert _train(tiny_data, tmp_path / "none") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unlabelled" in err and "Traceback" not in err
    assert not (tmp_path / "none").exists()  # refused before anything was written


@pytest.mark.parametrize("bad, message", [("train.consistency_batch=1", "a batch >= 2"),
                                           ("train.consistency=nan", "a weight >= 0"),
                                           ("train.augment.crop=16", "does not combine with train.augment.crop")])
def test_bad_consistency_settings_are_refused(semi_data: Path, tmp_path: Path, capsys, bad: str, message: str) -> None:
    assert _train(semi_data, tmp_path / "bad", bad) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_the_labelled_batches_are_drawn_as_without_the_term(semi_data: Path, tmp_path: Path, monkeypatch) -> None:
    import covseg.training

    real = covseg.training.augment_batch
    seen: dict[str, list[torch.Tensor]] = {"on": [], "off": []}
    for mode in ("on", "off"):
        def recording(images, masks, *args, _mode=mode, **kwargs):
            out = real(images, masks, *args, **kwargs)
            seen[_mode].append(out[0].clone())
            return out

        monkeypatch.setattr(covseg.training, "augment_batch", recording)
        weight = "1" if mode == "on" else "0"
        assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:0", "-o",
                     str(tmp_path / mode), "--quiet", "--epochs", "2", *TINY_OVERRIDES,
                     f"train.consistency={weight}"]) == 0
    assert len(seen["on"]) == len(seen["off"]) > 0
    for a, b in zip(seen["on"], seen["off"]):
        assert torch.equal(a, b)


def test_warmup_of_a_short_run_ramps_over_at_least_one_step() -> None:
    # 4 steps: a quarter is 1 step, so step 1 has the full weight; 2 steps: a quarter is 0.5, floored to 1 step
    assert [warmup(s, 4) for s in (0, 1, 2)] == [0.0, 1.0, 1.0]
    assert [warmup(s, 2) for s in (0, 1)] == [0.0, 1.0]
