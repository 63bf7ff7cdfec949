"""Small hand-checked tests of covseg.distill that pin what test_distill.py leaves loose: averaging over any number
of teachers, teachers forced into eval mode, the 1x1-bottleneck rule, the input settings and the checkpoint checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from covseg.config import apply_overrides, load_recipe
from covseg.distill import (DistillTerm, _norm_failing_on_1x1, check_teachers, chosen_on_validation,
                            distillation_loss, held_out_seen)
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES, ConstantLogits


def _term(teachers: list[torch.nn.Module], temperature: float = 2.0) -> DistillTerm:
    return DistillTerm(teachers, weight=1.0, temperature=temperature, device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.parametrize("logits", [[[0.0, 2.0]], [[0.0, 0.0], [0.0, 2.0], [4.0, 0.0]]])
def test_the_targets_are_the_mean_of_any_number_of_teachers_softened_probabilities(logits: list) -> None:
    probs = _term([ConstantLogits(t) for t in logits]).targets(torch.zeros(1, 1, 2, 2))
    # by hand at T = 2: softmax([0, 0]) = [0.5, 0.5], softmax([0, 1]), softmax([2, 0])
    soft = [[math.exp(v / 2) / sum(math.exp(u / 2) for u in t) for v in t] for t in logits]
    expected = [sum(s[c] for s in soft) / len(soft) for c in range(2)]
    assert probs[0, :, 1, 1].tolist() == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 2, 2))


def test_the_teachers_run_in_eval_mode_whatever_mode_they_came_in() -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.Dropout(0.5), torch.nn.BatchNorm2d(2)).train()
    term = _term([teacher])
    assert not any(m.training for t in term.teachers for m in t.modules())
    images = torch.rand(2, 1, 4, 4)
    first = term.targets(images)
    torch.testing.assert_close(term.targets(images), first)  # no dropout
    with torch.no_grad():  # batch norm from its running statistics (0, 1), not the batch's
        torch.testing.assert_close(first, torch.softmax(teacher.eval()(images) / 2.0, dim=1))


def test_the_term_is_t_squared_times_the_pixel_mean_kl_from_the_teachers() -> None:
    # two pixels, three classes, T = 3: by hand with torch.nn.functional's kl_div (input log q, target p: KL(p || q))
    torch.manual_seed(0)
    student = torch.randn(1, 3, 1, 2)
    teacher = torch.softmax(torch.randn(1, 3, 1, 2), dim=1)
    q = F.log_softmax(student / 3, dim=1)
    per_pixel = F.kl_div(q, teacher, reduction="none").sum(dim=1)
    assert distillation_loss(student, teacher, 3.0).item() == pytest.approx(9 * per_pixel.mean().item(), rel=1e-5)
    reverse = (q.exp() * (q - teacher.log())).sum(dim=1).mean().item() * 9  # KL(q || p): not it
    assert abs(distillation_loss(student, teacher, 3.0).item() - reverse) > 1e-3


def _config(*overrides: str):
    return apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", *overrides])


@pytest.mark.parametrize("overrides, reason", [
    (["model.norm=instance"], "instance norm"),
    (["model.norm=group", "model.width=2"], "group norm of one channel a group"),  # 8 channels: one a group
    (["model.norm=group", "model.width=4"], ""),  # 16 channels: two a group
    (["model.norm=batch"], ""),  # in eval mode from its running statistics
    (["model.norm=instance", "model.batch_norm=false"], ""),  # no norm at all
    (["model.name=segnet"], ""),  # SegNet's convolutions never run at 1x1
])
def test_the_norm_a_teachers_1x1_bottleneck_fails(overrides: list[str], reason: str) -> None:
    assert _norm_failing_on_1x1(_config(*overrides)) == reason


def test_a_checkpoint_chosen_on_validation_has_a_score_and_no_optimizer() -> None:
    assert chosen_on_validation({"score": 0.5})
    assert chosen_on_validation({"score": 0.0})
    assert not chosen_on_validation({"score": None})  # best.pt of a run without validation images
    assert not chosen_on_validation({})  # ema.pt, swa.pt
    assert not chosen_on_validation({"score": 0.5, "optimizer": {}})  # last.pt


def test_held_out_seen_reads_the_teachers_training_images(tmp_path: Path) -> None:
    (tmp_path / "split.json").write_text(json.dumps({"train": ["b", "a", "d"], "val": ["c"], "test": ["e"]}))
    file = tmp_path / "last.pt"
    assert held_out_seen(file, ["c", "a", "e", "b"]) == ["a", "b"]
    assert held_out_seen(file, ["c", "e"]) == []
    assert held_out_seen(tmp_path / "elsewhere" / "last.pt", ["a"]) == []


@pytest.mark.parametrize("override, message", [("data.window_level=-500", "data.window_level -600.0 there, -500.0 here"),
                                               ("data.window_width=1000", "data.window_width 1500.0 there, 1000.0 here"),
                                               ("data.resize=pad", "data.resize stretch there, pad here")])
def test_teachers_of_another_hu_window_or_resizing_are_refused(tiny_run: Path, override: str, message: str) -> None:
    with pytest.raises(CovsegError, match=f"{message}, so its input differs from this run's"):
        check_teachers(_config(override, f"train.distill={tiny_run}"))
    assert check_teachers(_config(f"train.distill={tiny_run}")) == [tiny_run / "last.pt"]
