"""A training run's life as its user sees it (helper 7 of session 72): the start line and the progress bar under
``train.val_every``, curves.png without validation figures, what a SIGTERM-stopped run says, and the refusal of a
finished run folder given again as ``-o``."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from tqdm.auto import tqdm

import covseg.figures as figures
import covseg.run
from covseg.cli import main
from covseg.errors import Terminated

from conftest import TINY_OVERRIDES, ctrl_c_at_epoch


def _train(data: Path, out: Path, *extra: str, quiet: bool = True) -> int:
    return main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(out),
                 *(["--quiet"] if quiet else []), *TINY_OVERRIDES, *extra])


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_curves_leave_out_the_lines_a_run_has_no_figure_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: a run without validation images listed "validation", "validation pixel accuracy" and "validation mean
    # Dice" in the legends with nothing drawn for them
    drawn: list = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    nan = float("nan")
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": nan, "val_acc": nan,
                "val_dice": nan} for e in (1, 2, 3)]
    figures.plot_curves(history, tmp_path / "c.png")
    loss, score = drawn[0].axes[:2]
    assert _legend(loss) == ["train"] and _legend(score) == ["train pixel accuracy"]
    assert [line.get_label() for line in score.get_lines()] == ["train pixel accuracy"]
    # validation images whose truths hold no lesion: loss and accuracy, but no Dice
    for row in history:
        row.update(val_loss=0.5, val_acc=0.9)
    figures.plot_curves(history, tmp_path / "c.png")
    loss, score = drawn[1].axes[:2]
    assert _legend(loss) == ["train", "validation"]
    assert _legend(score) == ["train pixel accuracy", "validation pixel accuracy"]


class _RecordingBar(tqdm):
    postfixes: list[dict] = []

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        _RecordingBar.postfixes.append({**(ordered_dict or {}), **kwargs})
        super().set_postfix(ordered_dict, refresh, **kwargs)


def test_the_bar_shows_the_latest_validation_dice_and_the_start_line_when_it_validates(
        tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "val_dice=nan" on every epoch train.val_every skips (4 of 5 under the default recipe), and the start
    # line said "validating on 4" alone
    monkeypatch.setattr(covseg.run, "tqdm", _RecordingBar)
    _RecordingBar.postfixes = []
    run = tmp_path / "sparse"
    assert _train(tiny_data, run, "train.epochs=5", "train.val_every=2", quiet=False) == 0
    err = capsys.readouterr().err
    assert "on 8 images, validating on 4 every 2 epochs and after the last, 32x32" in err
    dice = [float(r["val_dice"]) for r in _history(run)]
    assert math.isnan(dice[0]) and math.isfinite(dice[1]) and math.isnan(dice[2])
    shown = [p["val_dice"] for p in _RecordingBar.postfixes]
    assert shown == ["-", f"{dice[1]:.3f}", f"{dice[1]:.3f}", f"{dice[3]:.3f}", f"{dice[4]:.3f}"]
    # no validation images: no Dice in the bar at all
    _RecordingBar.postfixes = []
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "official", "-o",
                 str(tmp_path / "noval"), *TINY_OVERRIDES, "data.folds=5", "data.val_fraction=0"]) == 0
    assert _RecordingBar.postfixes and all(set(p) == {"loss"} for p in _RecordingBar.postfixes)
    capsys.readouterr()
    assert _train(tiny_data, tmp_path / "once", "train.epochs=2", "train.val_every=3") == 0
    assert "validating on 4 after the last epoch only, 32x32" in capsys.readouterr().err


def test_a_resumed_run_s_bar_starts_from_the_dice_it_last_validated(tiny_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    ctrl_c_at_epoch(2, monkeypatch)  # epochs 1-2 saved; 3 is not validated, 4 and 5 are
    assert _train(tiny_data, run, "train.epochs=5", "train.val_every=2") == 130
    monkeypatch.undo()
    monkeypatch.setattr(covseg.run, "tqdm", _RecordingBar)
    _RecordingBar.postfixes = []
    assert main(["train", "--resume", str(run)]) == 0
    dice = [float(r["val_dice"]) for r in _history(run)]
    assert [p["val_dice"] for p in _RecordingBar.postfixes] == [f"{dice[1]:.3f}", f"{dice[3]:.3f}", f"{dice[4]:.3f}"]


def test_a_run_stopped_by_sigterm_says_so_not_interrupted(tiny_data: Path, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "interrupted: 1 of 3 epochs saved", the word of Ctrl-C, then exit status 143
    run = tmp_path / "run"
    ctrl_c_at_epoch(1, monkeypatch, Terminated)
    assert _train(tiny_data, run, "train.epochs=3") == 143
    err = capsys.readouterr().err
    assert f"terminated (SIGTERM): 1 of 3 epochs saved; continue with covseg train --resume {run}" in err
    assert "interrupted" not in err
    ctrl_c_at_epoch(0, monkeypatch)  # Ctrl-C keeps its word
    assert _train(tiny_data, tmp_path / "other", "train.epochs=3") == 130
    assert "interrupted before the first epoch was saved" in capsys.readouterr().err


def test_ctrl_c_while_a_one_epoch_run_s_epoch_is_saved_says_its_1_epoch(tiny_data: Path, tmp_path: Path, capsys,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    real = covseg.run._write_history

    def ctrl_c_during_the_write(run_dir: Path, history: list) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # held back until the epoch's files all hold it
        real(run_dir, history)

    monkeypatch.setattr(covseg.run, "_write_history", ctrl_c_during_the_write)
    assert _train(tiny_data, tmp_path / "run", "train.epochs=1") == 130
    err = capsys.readouterr().err
    assert "interrupted after its 1 epoch was saved; the run is finished" in err and "all 1 epochs" not in err


def test_a_finished_run_given_again_as_o_is_not_offered_a_resume(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                                                  capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "run folder exists; pass --force to overwrite it or --resume RUN to continue it", and --resume then
    # had nothing to continue
    assert _train(tiny_data, tiny_run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {tiny_run}: holds a finished run (3 epochs); pass --force to replace it, or "
                   "choose another -o"]
    # an unfinished one is still offered its resume
    run = tmp_path / "unfinished"
    ctrl_c_at_epoch(1, monkeypatch)
    assert _train(tiny_data, run, "train.epochs=3") == 130
    capsys.readouterr()
    assert _train(tiny_data, run, "train.epochs=3") == 2
    assert f"run folder exists; pass --force to overwrite it or --resume {run} to continue it" in \
        capsys.readouterr().err


def test_a_run_killed_while_its_first_epoch_was_written_is_not_offered_a_resume(tiny_data: Path, tiny_run: Path,
                                                                               tmp_path: Path, capsys) -> None:
    # a kill (SIGKILL, power loss) after best.pt but before last.pt of epoch 1: -o said "pass --force ... or --resume
    # RUN to continue it", and --resume "nothing to resume (no last.pt); start it again with -o", each sending the
    # user to the other
    run = tmp_path / "killed"
    run.mkdir()
    for name in ("config.yaml", "split.json", "class_weights.json", "run.json", "best.pt"):
        (run / name).write_bytes((tiny_run / name).read_bytes())
    assert _train(tiny_data, run, "train.epochs=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {run}: holds a run with no epoch to resume (no last.pt); pass --force to replace "
                   "it, or choose another -o"]
    from covseg.cli import main

    assert main(["train", "--resume", str(run), "--quiet"]) == 2  # and --resume sends it to -o with --force
    assert capsys.readouterr().err.strip() == (f"covseg: error: {run}: nothing to resume (no last.pt: no epoch was "
                                               f"saved); start it again with covseg train ... -o {run} --force")
    (run / "best.pt").unlink()  # stopped before its first epoch: -o alone starts it again
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"start it again with covseg train ... -o {run}")
    (run / "best.pt").write_bytes((tiny_run / "best.pt").read_bytes())
    assert _train(tiny_data, run, "train.epochs=1", "--force") == 0  # as the message says
    assert len(_history(run)) == 1
