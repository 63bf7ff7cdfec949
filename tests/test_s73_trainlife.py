"""A training run's life as its user sees it (helper "trainlife" of session 73): a resume given another --data (the
same images moved: run.json records the new folder; other images: refused naming both folders), a library call
without data_path, Ctrl-C or SIGTERM while the images load, a damaged last.pt, and the final summary line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import covseg.run
from covseg.checkpoint import check_checkpoint
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError, Terminated
from covseg.run import RunResult, read_run_info, train_run

from conftest import TINY_OVERRIDES, ctrl_c_at_epoch, write_semiseg

# the CLI's settings of conftest.tiny_run, as overrides of the tiny recipe (no --split, --epochs flags)
_SETTINGS = [*TINY_OVERRIDES, "data.split=cv:0", "train.epochs=3"]


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "--epochs", "3", "-o", str(out),
                 "--quiet", *TINY_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(data, run)``: a 3-epoch run stopped by Ctrl-C after its first epoch was saved (read-only: copy it)."""
    data = write_semiseg(tmp_path_factory.mktemp("data"))
    run = tmp_path_factory.mktemp("runs") / "stopped"
    with pytest.MonkeyPatch.context() as mp:
        ctrl_c_at_epoch(1, mp)
        assert _train(data, run) == 130
    return data, run


def _copy(run: Path, where: Path) -> Path:
    shutil.copytree(run, where)
    return where


def test_a_resume_finding_the_same_images_elsewhere_records_their_new_folder(
        stopped_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    # before: run.json kept naming the old folder, so `covseg evaluate RUN` read (or missed) the images there
    data, stopped = stopped_run
    run = _copy(stopped, tmp_path / "run")
    moved = Path(shutil.copytree(data, tmp_path / "moved"))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data", str(moved), "--quiet"]) == 0
    assert read_run_info(run)["data"] == str(moved.resolve())
    err = capsys.readouterr().err
    assert f"{run}: its images are in {moved.resolve()} now, not {data.resolve()}; run.json records that folder" in err
    # the other entries stay as they were
    assert set(read_run_info(run)) == set(read_run_info(stopped))


def test_a_resume_given_other_images_is_refused_naming_both_folders(
        stopped_run: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    data, stopped = stopped_run
    run = _copy(stopped, tmp_path / "run")
    before = (run / "run.json").read_text()
    other = write_semiseg(tmp_path / "other", seed=5)  # the same names, other masks
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--data", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"covseg: error: {run}: was trained on {data.resolve()}, and --data {other} does not hold "
                          "those images: the training masks there are not the ones the run began with (their class "
                          "weights differ from class_weights.json); "
                          f"resume with --data {data.resolve()} (or without --data), or train a new run on {other} "
                          "with -o NEW_RUN"), err
    assert err.count("\n") == 1
    # fewer images: the split's names missing are counted and the first named
    fewer = write_semiseg(tmp_path / "fewer", n=6)
    assert main(["train", "--resume", str(run), "--data", str(fewer), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--data {fewer} does not hold those images: " in err and f"resume with --data {data.resolve()}" in err
    names = json.loads((run / "split.json").read_text())
    missing = [n for n in names["train"] + names["val"] if int(n.split(".")[0]) >= 6]
    assert f": split.json names {len(missing)} images not there (first: {missing[0]});" in err
    assert (run / "run.json").read_text() == before  # nothing recorded


def test_a_data_folder_changed_in_place_is_refused_saying_so(stopped_run: tuple[Path, Path], tmp_path: Path,
                                                             capsys) -> None:
    data, stopped = stopped_run
    run = _copy(stopped, tmp_path / "run")
    info = read_run_info(run)
    changed = write_semiseg(tmp_path / "changed", seed=7)
    info["data"] = str(changed.resolve())
    (run / "run.json").write_text(json.dumps(info))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"its data folder {changed.resolve()} no longer holds the images the run was trained on: " in err
    assert f"put them back as they were, or start the run again with covseg train ... -o {run} --force" in err


def test_a_library_run_without_data_path_records_no_folder(tiny_data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # before: run.json named the working directory as the run's data
    monkeypatch.chdir(tmp_path)
    config = apply_overrides(load_recipe("tiny"), [*_SETTINGS, "train.epochs=1"])
    samples = load_dataset(str(tiny_data), config.data.task, split="train", window=config.data.window)
    result = train_run(config, samples, tmp_path / "run", progress=False, log=lambda m: None)
    assert result.epochs_done == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"] is None
    with pytest.raises(CovsegError, match=r"the run records no data folder \(it was trained from Python without "
                                          r"data_path\); give --data DIR"):
        read_run_info(tmp_path / "run")
    assert read_run_info(tmp_path / "run", require_data=False)["data"] is None
    # the consistency term reads the data folder's unlabelled slices: not from the working directory
    with pytest.raises(CovsegError, match="train.consistency reads the unlabelled slices of the data folder, and none "
                                          "was given; pass data_path"):
        train_run(apply_overrides(config, ["train.consistency=0.5"]), samples, tmp_path / "run2", progress=False,
                  log=lambda m: None)
    assert not (tmp_path / "run2").exists()


def _stop_while_loading(monkeypatch: pytest.MonkeyPatch, stop: type[BaseException] = KeyboardInterrupt) -> None:
    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(covseg.run, "_stack", stopped)  # resizing the training images, before the first epoch


def test_ctrl_c_while_the_images_load_says_what_is_kept(stopped_run: tuple[Path, Path], tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the bare "covseg: interrupted" of any command
    data, stopped = stopped_run
    _stop_while_loading(monkeypatch)
    capsys.readouterr()
    new = tmp_path / "new"
    assert _train(data, new) == 130
    err = capsys.readouterr().err
    assert err.endswith("interrupted while loading the images, before training began, so there is nothing to resume; "
                        f"start the run again (the same covseg train ... -o {new}; no --force needed)\n"), err
    assert "covseg: interrupted" not in err
    # a resumed run is as it was
    run = _copy(stopped, tmp_path / "run")
    last = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"interrupted while loading the images, before training went on; {run} is as it was (1 of 3 "
                        f"epochs saved); continue with covseg train --resume {run}\n"), err
    assert (run / "last.pt").read_bytes() == last
    # a --force run puts the run it was to replace back
    assert _train(data, run, "--force") == 130
    err = capsys.readouterr().err
    assert err.endswith(f"interrupted while loading the images, before training began; the run that was in {run} is "
                        "back as it was, nothing lost (train with --force again to replace it)\n"), err
    assert (run / "last.pt").read_bytes() == last
    # SIGTERM says so, and exits 143
    _stop_while_loading(monkeypatch, Terminated)
    assert main(["train", "--resume", str(run), "--quiet"]) == 143
    assert capsys.readouterr().err.endswith(f"terminated (SIGTERM) while loading the images, before training went on; "
                                            f"{run} is as it was (1 of 3 epochs saved); continue with covseg train "
                                            f"--resume {run}\n")


def test_a_stop_while_loading_a_cv_fold_names_the_callers_way_on(stopped_run: tuple[Path, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data, stopped = stopped_run
    run = _copy(stopped, tmp_path / "run")
    _stop_while_loading(monkeypatch)
    lines: list[str] = []
    config = apply_overrides(load_recipe("tiny"), _SETTINGS)
    samples = load_dataset(str(data), config.data.task, split="train", window=config.data.window)
    try:
        result = train_run(config, samples, run, str(data), resume=True, progress=False, log=lines.append,
                           again="to go on, run the same covseg cv command again")
    except KeyboardInterrupt:  # before: it escaped, said by no line of the run's
        pytest.fail("the stop while loading escaped train_run")
    assert (result.stopped, result.interrupted, result.terminated) == (True, True, False)
    assert (result.epochs_done, result.epochs_before, result.epochs_total) == (1, 1, 3)
    assert lines[-1] == (f"interrupted while loading the images, before training went on; {run} is as it was (1 of 3 "
                         "epochs saved); to go on, run the same covseg cv command again")


def test_a_damaged_last_pt_is_named_with_the_way_on_before_the_images_load(
        stopped_run: tuple[Path, Path], tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "give a .pt file that covseg train wrote, or its run folder", after the images had loaded
    data, stopped = stopped_run
    run = _copy(stopped, tmp_path / "run")
    (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:3000])
    def stacked(*args):  # before: the images were loaded and resized first, then last.pt read
        raise AssertionError("the images were loaded before last.pt was read")

    monkeypatch.setattr(covseg.run, "_stack", stacked)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"covseg: error: {run}/last.pt: not a readable covseg checkpoint (")
    assert err.endswith(f"); {run}'s last.pt is damaged, so the run cannot be resumed; start the run again with covseg "
                        f"train ... -o {run} --force (that deletes its best.pt too: copy it elsewhere first to keep "
                        "it)\n"), err
    assert err.count("\n") == 1
    # -o RUN without --force does not offer --resume
    assert main(["train", "--recipe", "tiny", "--data", str(data), "-o", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"covseg: error: {run}: holds a run whose last.pt is damaged, so it cannot be "
                                       "resumed; pass --force to replace it, or choose another -o\n")


def test_a_checkpoint_of_another_format_is_refused_with_a_way_on(tmp_path: Path) -> None:
    # before: "not a covseg checkpoint (format covseg-checkpoint-1 expected)" and nothing more
    with pytest.raises(CovsegError) as caught:
        check_checkpoint({"format": 99}, tmp_path / "x.pt")
    assert str(caught.value).endswith("(format covseg-checkpoint-1 expected); give a .pt file that covseg train "
                                      "wrote, or its run folder")
    with pytest.raises(CovsegError) as caught:
        check_checkpoint({"format": 99}, tmp_path / "x.pt", fix="do this")
    assert str(caught.value).endswith("(format covseg-checkpoint-1 expected); do this")


def test_the_summary_names_the_best_epoch_and_an_swa_runs_model() -> None:
    result = RunResult(Path("r"), 5, 5, 0.71234, seconds=12.4, best_epoch=3)
    assert result.summary(resumed=False) == ("trained 5 epochs in 12 s; best validation mean Dice 0.7123 at epoch 3 "
                                             "(best.pt); run folder r")
    swa = RunResult(Path("r"), 5, 5, 0.5, seconds=3.0, epochs_before=2, best_epoch=1, model="swa.pt", swa_epochs=2)
    assert swa.summary(resumed=True) == ("trained 3 more epochs (5 of 5) in 3 s; best validation mean Dice 0.5000 at "
                                         "epoch 1 (best.pt); the run's model is swa.pt, the average of its last 2 "
                                         "epochs; run folder r")
    assert RunResult(Path("r"), 1, 1, None, seconds=3.0, epochs_before=1).summary(resumed=True) == (
        "nothing left to resume: the run has its 1 epoch; best validation mean Dice n/a; run folder r")


def test_a_finished_runs_result_names_its_best_epoch_and_swa_model(tiny_data: Path, tmp_path: Path) -> None:
    config = apply_overrides(load_recipe("tiny"), [*_SETTINGS, "train.swa_epochs=2", "train.swa_lr=0.005"])
    samples = load_dataset(str(tiny_data), config.data.task, split="train", window=config.data.window)
    result = train_run(config, samples, tmp_path / "run", str(tiny_data), progress=False, log=lambda m: None)
    history = covseg.run.read_checkpoint(tmp_path / "run" / "last.pt")["history"]
    dice = [row["val_dice"] for row in history]
    assert result.best_score == max(dice)
    assert result.best_epoch == dice.index(max(dice)) + 1  # the first epoch reaching the best, as best.pt holds
    assert covseg.run.read_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == result.best_epoch
    assert (result.model, result.swa_epochs) == ("swa.pt", 2)
    assert "; the run's model is swa.pt, the average of its last 2 epochs; run folder " in result.summary(False)


@pytest.mark.parametrize("stop, code, word", [(KeyboardInterrupt, 130, "interrupted"),
                                              (Terminated, 143, "terminated (SIGTERM)")])
def test_a_stop_while_train_reads_its_images_says_nothing_was_written(stop, code, word, tiny_data: Path,
                                                                      tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.datasets

    def stopped(*args, **kwargs):
        raise stop

    monkeypatch.setattr(covseg.datasets, "load_dataset", stopped)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(run), "--quiet"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{word} while reading the images from {tiny_data}; nothing was written; run the same command "
                   "again"]
    assert not run.exists()


def test_one_image_is_counted_in_the_singular(tmp_path: Path, capsys) -> None:
    data = write_semiseg(tmp_path / "one", n=1)
    assert main(["train", "--recipe", "tiny", "--data", str(data), "--split", "official", "-o", str(tmp_path / "r"),
                 "--quiet", *TINY_OVERRIDES, "data.folds=5", "data.val_fraction=0.1"]) == 2
    assert "data.val_fraction 0.1 of 1 image rounds to no validation image" in capsys.readouterr().err
