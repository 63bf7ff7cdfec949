"""Small carried defects fixed in session 72: each test failed on the code before its fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from covseg.checkpoint import build_model, read_checkpoint
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.errors import CovsegError
from conftest import TINY_OVERRIDES


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


# ---- train.distill: the same teacher named twice would weigh double in the teachers' average ----------------------

def test_a_teacher_named_twice_is_refused(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.distill import check_teachers

    link = tmp_path / "link"
    link.symlink_to(tiny_run)
    for spec in (f"{tiny_run},{tiny_run}", f"{tiny_run},{tiny_run / 'last.pt'}", f"{tiny_run},{link}"):
        config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", f"train.distill={spec}"])
        with pytest.raises(CovsegError, match=r"^train.distill: .*last.pt is named twice.*, so it would count twice "
                                              r"in the teachers' average; name each teacher once$"):
            check_teachers(config)
    # through the command: RUN and ./RUN are one folder; refused in one line before anything is written
    student = tmp_path / "student"
    monkeypatch.chdir(tiny_run.parent)
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet",
                 "-o", str(student), *TINY_OVERRIDES, f"train.distill={tiny_run.name}, ./{tiny_run.name}"]) == 2
    assert f"train.distill: {tiny_run / 'last.pt'} is named twice" in _one_line_error(capsys)
    assert not student.exists()
    # two copies of one run are two files: each is its own teacher
    other = Path(shutil.copytree(tiny_run, tmp_path / "other"))
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0",
                                                   f"train.distill={tiny_run},{other}"])
    assert check_teachers(config) == [tiny_run / "last.pt", other / "last.pt"]


# ---- covseg download --mirror "": refused, not a silent fall-back to upstream -----------------------------------

def test_an_empty_mirror_option_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.download as dl

    def fetch(dataset: str, dest: Path, mirror: str | None = None, progress: bool = True) -> None:
        pytest.fail(f"fetched from {mirror or 'upstream'}")  # before: upstream, or $COVSEG_MIRROR where set

    monkeypatch.setattr(dl, "download", fetch)
    for env in ("", str(tmp_path / "mirror")):  # an empty --mirror does not fall back on $COVSEG_MIRROR either
        monkeypatch.setenv(dl.MIRROR_ENV, env)
        for given in ("", "  "):
            assert main(["download", "--mirror", given, "--data-dir", str(tmp_path / "data")]) == 2
            assert _one_line_error(capsys) == ("covseg: error: --mirror is empty: give a folder or an http(s):// URL, "
                                               "or leave it out")
    assert not (tmp_path / "data").exists()
    # an empty $COVSEG_MIRROR is as unset: upstream
    monkeypatch.setenv(dl.MIRROR_ENV, "")
    assert dl.resolve_mirror(None) is None


# ---- train.init's refusals begin with "train.init: ", as train.distill's begin with theirs ----------------------

def test_train_init_refusals_name_the_setting(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from covseg.pretrain import check_pretrained

    run, missing = tmp_path / "run", tmp_path / "missing"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(run), "--quiet",
                 *TINY_OVERRIDES, f"train.init={missing}"]) == 2
    assert _one_line_error(capsys).startswith(f"covseg: error: train.init: {missing}: no pretrained weights there; ")
    assert not run.exists()
    wider = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", "model.width=8"])
    with pytest.raises(CovsegError, match=rf"^train.init: {tiny_run / 'last.pt'}: pretrained for another network "
                                          r"\(model.width 4 there, 8 here\)"):
        check_pretrained(tiny_run, wider)
    # an unfinished run already said so; it says it once
    unfinished = Path(shutil.copytree(tiny_run, tmp_path / "unfinished"))
    state = read_checkpoint(unfinished / "last.pt")
    state["epoch"] = 1
    torch.save(state, unfinished / "last.pt")
    base = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0"])
    with pytest.raises(CovsegError, match=r"^train.init: [^:]*last.pt holds epoch 1 of 3, an unfinished run"):
        check_pretrained(unfinished, base)


# ---- covseg train --resume of a finished run: one note, no progress bar ------------------------------------------

def test_resuming_a_finished_run_says_so_once_and_draws_no_bar(tiny_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0  # without --quiet: a bar would be drawn
    out = capsys.readouterr()
    # before: "RUN: all 3 epochs were trained already; nothing left to resume" on stderr too, and "train: 100%|...| 3/3"
    assert out.out.startswith("nothing left to resume: the run has all 3 epochs; best validation mean Dice ")
    assert (out.out + out.err).count("nothing left to resume") == 1, out
    assert "train:" not in out.err and "3/3" not in out.err, out.err


# ---- the training line's parameter count: a tiny network read "(0.00M parameters)" -------------------------------

def test_the_parameter_count_is_readable_at_every_size(tiny_data: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from covseg.run import parameter_count

    assert [parameter_count(n) for n in (0, 850, 1000, 12_345, 99_949, 100_000, 1_234_567, 31_036_546)] == \
        ["0", "850", "1.0k", "12.3k", "99.9k", "0.10M", "1.23M", "31.04M"]
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "model.name=segnet"])
    count = sum(p.numel() for p in build_model(config).parameters())
    assert 1000 <= count < 10_000
    run = tmp_path / "segnet"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "--quiet",
                 "-o", str(run), *TINY_OVERRIDES, "model.name=segnet"]) == 0
    assert f"training segnet ({count / 1e3:.1f}k parameters) on " in capsys.readouterr().err


# ---- a mistyped task under a recipe's tasks: gets a close match suggested, as a mistyped option does --------------

def test_a_mistyped_task_in_a_recipe_gets_a_close_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("data: {task: binary}\ntasks:\n  binray: {train: {lr: 0.01}}\n")
    with pytest.raises(CovsegError, match=rf"^{recipe}: tasks: unknown task 'binray' \(did you mean 'binary'\?\); "
                                          r"known: binary, multiclass$"):
        load_recipe(str(recipe))
    assert main(["train", "--recipe", str(recipe), "-o", str(tmp_path / "run")]) == 2
    assert "(did you mean 'binary'?)" in _one_line_error(capsys)
    # and a mistyped data.task
    recipe.write_text("data: {task: multiclas}\n")
    with pytest.raises(CovsegError, match=r"task 'multiclas' is not one of binary, multiclass \(did you mean "
                                          r"'multiclass'\?\)$"):
        load_recipe(str(recipe))


# ---- --epochs 0 is refused naming --epochs, the option given (it named train.epochs) -----------------------------

@pytest.mark.parametrize("command", ["train", "cv", "compare"])
def test_epochs_below_one_are_refused_naming_the_flag(command: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for epochs in ("0", "-2"):
        assert main([command, "--recipe", "tiny", "--epochs", epochs, "-o", str(tmp_path / "out")]) == 2
        assert _one_line_error(capsys) == (f"covseg: error: --epochs {epochs}: a run trains at least 1 epoch; give "
                                           "--epochs 1 or more")
    assert not (tmp_path / "out").exists()
    # the setting itself, given as an override, is still refused naming it
    assert main([command, "--recipe", "tiny", "train.epochs=0", "-o", str(tmp_path / "out")]) == 2
    assert "train.epochs must be positive and finite, got 0" in _one_line_error(capsys)


def test_covseg_without_a_command_lists_the_commands_with_what_each_does(capsys) -> None:
    from covseg.cli import main

    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "train a model into a run folder" in captured.err and "paired per-image differences" in captured.err
