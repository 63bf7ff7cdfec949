"""Knowledge distillation (covseg.distill): the KL term by hand, teacher checks, and a student run end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from covseg.checkpoint import read_checkpoint
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.distill import DistillTerm, check_teachers, distillation_loss, load_teachers, teacher_paths
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES, ConstantLogits


def test_distillation_loss_by_hand() -> None:
    # one pixel, two classes: student softmax [0.5, 0.5], teacher [0.8, 0.2]
    student = torch.zeros(1, 2, 1, 1)
    teacher = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1)
    expected = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)  # 0.192745
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # temperature 2: logits [0, 2] soften to softmax([0, 1]) = [0.268941, 0.731059]; times T**2 = 4
    student = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    teacher = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    q = [1 / (1 + math.e), math.e / (1 + math.e)]
    expected = 4 * (0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1]))  # 0.480441
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(expected, abs=1e-5)
    # the mean over pixels; 0 where the student matches, a zero teacher probability adds no NaN
    logits = torch.randn(2, 3, 4, 5)
    assert distillation_loss(logits, torch.softmax(logits, 1), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    hard = torch.zeros(1, 2, 1, 2)
    hard[0, 0] = 1.0
    value = distillation_loss(torch.zeros(1, 2, 1, 2, requires_grad=True), hard, 1.0)
    assert value.item() == pytest.approx(math.log(2), abs=1e-6) and torch.isfinite(value)


def test_the_term_pulls_the_student_towards_the_teachers() -> None:
    logits = torch.zeros(1, 2, 1, 1, requires_grad=True)
    (distillation_loss(logits, torch.tensor([0.9, 0.1]).view(1, 2, 1, 1), 1.0)).backward()
    assert logits.grad[0, 0, 0, 0] < 0 < logits.grad[0, 1, 0, 0]  # a descent step raises class 0


def test_teachers_are_averaged_after_softening() -> None:
    term = DistillTerm([ConstantLogits([0.0, 0.0]), ConstantLogits([0.0, 2.0])], weight=0.5, temperature=2.0,
                       device=torch.device("cpu"), dtype=torch.float32)
    probs = term.targets(torch.zeros(2, 1, 3, 3))
    q1 = math.e / (1 + math.e)  # softmax([0, 2] / 2)[1]
    assert probs.shape == (2, 2, 3, 3)
    assert probs[0, 1, 0, 0].item() == pytest.approx((0.5 + q1) / 2, abs=1e-6)
    assert not any(p.requires_grad for t in term.teachers for p in t.parameters())
    student = torch.zeros(2, 2, 3, 3)
    assert term.loss(student, probs).item() == pytest.approx(0.5 * distillation_loss(student, probs, 2.0).item())


def test_fold_placeholder() -> None:
    config = apply_overrides(load_recipe("tiny"), ["data.split=cv:3", "data.folds=5"])
    assert teacher_paths("runs/a-f{fold}, runs/b-f{fold},", config) == ["runs/a-f3", "runs/b-f3"]
    other = apply_overrides(load_recipe("tiny"), ["data.split=official"])
    with pytest.raises(CovsegError, match=r"names \{fold\}, but data.split is 'official'"):
        teacher_paths("runs/a-f{fold}", other)
    assert teacher_paths("runs/x.pt", other) == ["runs/x.pt"]


def test_options_are_checked() -> None:
    for bad, message in (("train.distill_weight=-1", "train.distill_weight is -1"),
                         ("train.distill_temperature=0", "train.distill_temperature is 0"),
                         ("train.distill_temperature=.inf", "train.distill_temperature is inf")):
        with pytest.raises(CovsegError, match=message):
            apply_overrides(load_recipe("tiny"), [bad])
    with pytest.raises(CovsegError, match="does not combine with train.types_only"):
        apply_overrides(load_recipe("tiny"), ["data.task=multiclass", "train.types_only=true", "train.distill=runs/x"])


def test_teachers_of_another_split_task_or_input_are_refused(tiny_run: Path, tmp_path: Path) -> None:
    base = [*TINY_OVERRIDES, "data.split=cv:0"]
    config = apply_overrides(load_recipe("tiny"), [*base, f"train.distill={tiny_run}"])
    teachers, files, digests = load_teachers(config)
    assert len(teachers) == 1 and files == [tiny_run / "last.pt"] and len(digests[0]) == 64
    assert not teachers[0].training
    for extra, message in ((["data.split=cv:1"], r"data.split cv:0 there, cv:1 here, so it has seen images"),
                           (["data.task=multiclass"], "is a binary model, but this run's task is multiclass"),
                           (["data.normalize=percentile"], "data.normalize none there, percentile here"),
                           (["data.folds=4"], "data.folds 3 there, 4 here, so it has seen images"),
                           (["data.input_size=48"], "data.input_size 32 there, 48 here, so its input differs")):
        config = apply_overrides(load_recipe("tiny"), [*base, *extra, f"train.distill={tiny_run}"])
        with pytest.raises(CovsegError, match=message):
            load_teachers(config)
    # val_fraction carves the official split's validation images; cv:K does not use it, so it may differ
    config = apply_overrides(load_recipe("tiny"), [*base, "data.val_fraction=0.3", f"train.distill={tiny_run}"])
    assert len(load_teachers(config)[0]) == 1
    config = apply_overrides(load_recipe("tiny"), [*base, f"train.distill={tmp_path / 'gone'}"])
    with pytest.raises(CovsegError, match="gone: no such run folder or checkpoint"):
        load_teachers(config)
    config = apply_overrides(load_recipe("tiny"), [*base, "train.distill=', '"])
    with pytest.raises(CovsegError, match="names no teacher"):
        load_teachers(config)


def test_a_teacher_that_is_no_run_is_refused_naming_the_option(tiny_run: Path, tmp_path: Path) -> None:
    base = [*TINY_OVERRIDES, "data.split=cv:0"]
    cv, pre, other = tmp_path / "cv", tmp_path / "pre", tmp_path / "other"
    import shutil

    shutil.copytree(tiny_run, cv / "fold-0")  # a cross-validation folder: fold-K runs
    pre.mkdir()
    torch.save({"format": "covseg-pretrained-1"}, pre / "pretrained.pt")
    other.mkdir()
    (other / "notes.txt").write_text("x")

    def refusal(spec: str) -> str:
        config = apply_overrides(load_recipe("tiny"), [*base, f"train.distill={spec}"])
        with pytest.raises(CovsegError) as caught:
            check_teachers(config)
        return str(caught.value)

    # was "CV: no last.pt in this folder; is it a finished covseg run?", which neither said which option nor what to do
    assert refusal(str(cv)) == (f"train.distill: {cv} is a cross-validation folder, whose fold models trained on one "
                                "another's held-out images; name one fold's run, the fold of this run's split: "
                                f"{cv / 'fold-{fold}'}")
    assert refusal(str(pre)).startswith(f"train.distill: {pre} is a covseg pretrain folder")
    assert refusal(str(pre / "pretrained.pt")).startswith(f"train.distill: {pre / 'pretrained.pt'}: not a covseg "
                                                          "checkpoint")
    assert refusal(str(other)).startswith(f"train.distill: {other}: no last.pt in this folder")


def test_a_student_trains_with_its_teacher(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    common = ["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "2", "--quiet"]
    plain, zero, student = tmp_path / "plain", tmp_path / "zero", tmp_path / "student"
    assert main([*common, "-o", str(plain), *TINY_OVERRIDES]) == 0
    capsys.readouterr()
    # weight 0: the teachers would be loaded and run for nothing, so a new run is refused in one line, nothing written
    assert main([*common, "-o", str(zero), *TINY_OVERRIDES, f"train.distill={tiny_run}", "train.distill_weight=0"]) == 2
    err = capsys.readouterr().err
    assert "set train.distill_weight > 0 or leave train.distill empty" in err and err.count("\n") == 1
    assert not zero.exists()
    assert main([*common, "-o", str(student), *TINY_OVERRIDES, f"train.distill={tiny_run}", "train.distill_weight=5",
                 "train.distill_temperature=2"]) == 0
    assert f"distillation: 1 teacher ({tiny_run / 'last.pt'}), weight 5" in capsys.readouterr().err
    a, c = (read_checkpoint(r / "last.pt")["model"] for r in (plain, student))
    assert any(not torch.allclose(a[k], c[k]) for k in a if a[k].is_floating_point())
    info = json.loads((student / "run.json").read_text())
    assert info["distill"] == [str(tiny_run / "last.pt")] and len(info["distill_sha256"]) == 1
    # a run on another fold would learn from a teacher that saw its held-out images: one line, nothing written
    other = tmp_path / "other"
    assert main([*common, "--split", "cv:1", "-o", str(other), *TINY_OVERRIDES, f"train.distill={tiny_run}"]) == 2
    err = capsys.readouterr().err
    assert "trained with data.split cv:0 there, cv:1 here" in err and err.count("\n") == 1 and not other.exists()


def test_resume_refuses_changed_teachers(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    shutil.copytree(tiny_run, teacher)
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet",
                 "-o", str(student), *TINY_OVERRIDES, f"train.distill={teacher}"]) == 0
    state = read_checkpoint(teacher / "last.pt")
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, teacher / "last.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(student), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "its teachers" in err and "changed since the run began" in err and err.count("\n") == 1


def test_a_lesion_type_teacher_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    # a type model's background output is untrained: its probabilities are no target for a whole multiclass model
    types = tmp_path / "types"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--task", "multiclass", "--split", "cv:0",
                 "--epochs", "1", "--quiet", "-o", str(types), *TINY_OVERRIDES, "train.types_only=true",
                 "train.dice=present"]) == 0
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.task=multiclass", "data.split=cv:0",
                                                   f"train.distill={types}"])
    with pytest.raises(CovsegError, match=r"lesion-type model \(train.types_only\)"):
        load_teachers(config)


def test_a_best_checkpoint_given_as_a_file_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    # best.pt was chosen on the validation images the student holds out, whatever its file is called
    import shutil

    renamed = tmp_path / "teacher.pt"
    shutil.copy(tiny_run / "best.pt", renamed)
    for given in (tiny_run / "best.pt", renamed):
        config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", f"train.distill={given}"])
        with pytest.raises(CovsegError, match="is a run's best.pt, chosen on the validation images"):
            load_teachers(config)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0",
                                                   f"train.distill={tiny_run / 'last.pt'}"])
    assert load_teachers(config)[1] == [tiny_run / "last.pt"]


def test_a_teacher_too_deep_for_the_training_size_is_refused_before_anything_is_written(
        tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deep, student = tmp_path / "deep", tmp_path / "student"
    common = ["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet"]
    assert main([*common, "-o", str(deep), *TINY_OVERRIDES, "model.depth=3"]) == 0
    capsys.readouterr()
    # the depth-2 student crops 12x12 images; the depth-3 teacher cannot take them
    assert main([*common, "-o", str(student), *TINY_OVERRIDES, "train.augment.crop=12", f"train.distill={deep}"]) == 2
    err = capsys.readouterr().err
    assert "is a unet of depth 3, which needs sizes divisible by 8" in err and err.count("\n") == 1
    assert not student.exists()
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", "train.augment.crop=8",
                                                   f"train.distill={deep}"])
    assert len(load_teachers(config)[0]) == 1


def test_teachers_given_relative_are_found_from_elsewhere(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # saved absolute, as train.init, so `covseg train --resume` (or a re-run cv) from another directory finds them
    import shutil

    student, teachers = tmp_path / "student", tmp_path / "teachers"
    for name in ("a", "b"):  # two teachers: the same one named twice is refused (tests/test_s72_fixes.py)
        shutil.copytree(tiny_run, teachers / name)
    monkeypatch.chdir(teachers)
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet",
                 "-o", str(student), *TINY_OVERRIDES, "train.distill=a, ./b"]) == 0
    assert f"distill: {teachers / 'a'},{teachers / 'b'}" in (student / "config.yaml").read_text()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(student), "--quiet"]) == 0


def test_unfinished_teachers_and_teachers_that_trained_on_held_out_images_are_refused(tiny_run: Path,
                                                                                         tmp_path: Path) -> None:
    import shutil

    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0",
                                                   f"train.distill={tmp_path / 'teacher'}"])
    teacher = shutil.copytree(tiny_run, tmp_path / "teacher")
    split = json.loads((teacher / "split.json").read_text())
    held_out = split["val"]
    assert load_teachers(config, held_out)[1] == [teacher / "last.pt"]
    # the same split settings on other data split differently: the teacher's own split.json says what it saw
    split["train"].append(held_out[0])
    (teacher / "split.json").write_text(json.dumps(split))
    with pytest.raises(CovsegError, match=rf"trained on 1 of the images this run holds out \(first: {held_out[0]}\)"):
        load_teachers(config, held_out)
    shutil.copy(tiny_run / "split.json", teacher / "split.json")
    state = read_checkpoint(teacher / "last.pt")
    state["epoch"] = 1
    torch.save(state, teacher / "last.pt")
    with pytest.raises(CovsegError, match="train.distill: .*last.pt holds epoch 1 of 3, an unfinished run; finish it first"):
        load_teachers(config, held_out)


def test_cv_refuses_a_teacher_a_later_fold_may_not_use_before_fold_0_trains(
        tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # one fold-0 teacher for every fold: it trained on folds 1 and 2's held-out images
    cv = tmp_path / "cv"
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", "3", "--epochs", "1", "--quiet",
                 "-o", str(cv), *TINY_OVERRIDES, f"train.distill={tiny_run}"]) == 2
    err = capsys.readouterr().err
    assert "data.split cv:0 there, cv:1 here" in err and err.count("\n") == 1
    assert not list(cv.glob("fold-*/last.pt"))
    # the checks a run makes, without building the networks
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", f"train.distill={tiny_run}"])
    assert check_teachers(config) == [tiny_run / "last.pt"]
    with pytest.raises(CovsegError, match="is a run's best.pt"):
        check_teachers(apply_overrides(config, [f"train.distill={tiny_run / 'best.pt'}"]))


def test_a_tiny_temperature_keeps_the_term() -> None:
    # before: T**2 (1e-50) underflowed to 0 in float32, so the term silently vanished
    torch.manual_seed(0)
    student, temperature = torch.randn(1, 2, 4, 4), 1e-25
    teacher = torch.softmax(torch.randn(1, 2, 4, 4, dtype=torch.float64) / temperature, 1)
    log_student = torch.log_softmax(student.double() / temperature, 1)
    expected = ((torch.xlogy(teacher, teacher) - teacher * log_student).sum(1).mean() * temperature**2).item()
    assert expected > 0
    assert distillation_loss(student, teacher.float(), temperature).item() == pytest.approx(expected, rel=1e-4, abs=0)


def test_a_teacher_left_a_1x1_bottleneck_by_its_norm_is_refused_before_anything_is_written(
        tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    common = ["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet"]
    assert main([*common, "-o", str(teacher), *TINY_OVERRIDES, "model.norm=instance"]) == 0
    capsys.readouterr()
    # before: accepted (4 is a multiple of 4), then the first step failed, blaming the student's network, with the
    # run folder written
    assert main([*common, "-o", str(student), *TINY_OVERRIDES, "model.depth=1", "train.augment.crop=4",
                 f"train.distill={teacher}"]) == 2
    err = capsys.readouterr().err
    assert "train.distill: " in err and err.count("\n") == 1 and "at least 8x8" in err
    assert "is a unet of depth 2 with instance norm, whose bottleneck is 1x1 on the 4x4 images this run trains" in err
    assert not student.exists()
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", "model.depth=1",
                                                   "train.augment.crop=8", f"train.distill={teacher}"])
    assert check_teachers(config) == [teacher / "last.pt"]


def test_teachers_of_a_cropped_progressive_run_are_checked_at_the_crop(tiny_data: Path, tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet",
                 "-o", str(deep), *TINY_OVERRIDES, "model.depth=4"]) == 0
    progressive = [*TINY_OVERRIDES, "data.split=cv:0", "train.epochs=2", "train.progressive_size=24",
                   "train.progressive_fraction=0.5", f"train.distill={deep}"]
    # every batch is a 16x16 crop, of the 24x24 resampling in the progressive epochs: the depth-4 teacher (batch
    # norm, whose running statistics take its 1x1 bottleneck) takes it
    config = apply_overrides(load_recipe("tiny"), [*progressive, "train.augment.crop=16"])
    assert check_teachers(config) == [deep / "last.pt"]  # before: refused for 24, which it never sees
    from covseg.distill import teacher_sizes

    assert teacher_sizes(config) == [16]
    config = apply_overrides(load_recipe("tiny"), progressive)
    assert teacher_sizes(config) == [24, 32]  # without the crop: the progressive size, then data.input_size
    with pytest.raises(CovsegError, match="needs sizes divisible by 16, but this run trains on 24x24 images"):
        check_teachers(config)
