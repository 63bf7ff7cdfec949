"""Gaps found by a second round of mutation testing of covseg.evaluation and covseg.fileio: hand-computed report lines
and CSV cells that the older tests left free (an asymmetric confusion matrix, a metric undefined for the background
only, several classes called on a healthy truth, the default number of best/worst images), and fileio's durability
edges (an fsync that fails on a file, descriptors closed, the longest format suffix kept)."""
from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest

import covseg.evaluation as evaluation
import covseg.fileio as fileio
from covseg.evaluation import EMPTY_TRUTH_RULE, _markdown, evaluate_image, summarise, write_report
from covseg.labels import get_scheme

BINARY = get_scheme("binary")
MULTICLASS = get_scheme("multiclass")


def _one_hot(pred: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[pred].transpose(2, 0, 1)


# ---- covseg.evaluation ------------------------------------------------------------------------------------------

def test_per_image_csv_truth_columns_count_the_truth_not_the_prediction(tmp_path: Path) -> None:
    # truth [0,0,0,1], prediction [0,1,1,1]: cm (rows truth) [[1,2],[0,1]]: truth 3 background, 1 infection;
    # the prediction holds 1 and 3 (a symmetric matrix would not tell the two apart)
    truth = np.array([[0, 0, 0, 1]])
    pred = np.array([[0, 1, 1, 1]])
    write_report(summarise([evaluate_image("a", _one_hot(pred, 2), truth, BINARY)], BINARY), tmp_path / "eval", "t")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").read_text(encoding="utf-8").splitlines()))
    assert (rows[0]["truth_background"], rows[0]["truth_infection"]) == ("3", "1")
    # Dice infection 2*1 / (2*1 + 2 + 0) = 0.5; background 2*1 / (2*1 + 0 + 2) = 0.5
    assert (rows[0]["pixels"], rows[0]["dice_infection"], rows[0]["dice_background"]) == ("4", "0.500000", "0.500000")


def test_a_metric_undefined_for_the_background_alone_is_named_with_its_image_counts() -> None:
    # truth [[0,1],[0,1]], everything called infection: the background is never predicted, so its precision is
    # undefined on the one image (0 images), while infection's precision (2/4) counts it: the counts differ from
    # images_with_class for the background only, and the table must say over which images precision is averaged
    truth = np.array([[0, 1], [0, 1]])
    ev = summarise([evaluate_image("A", _one_hot(np.ones((2, 2), np.int64), 2), truth, BINARY)], BINARY)
    d = ev.to_dict()
    assert d["per_image_images"]["precision"] == {"background": 0, "infection": 1}
    assert d["per_image"]["precision"] == {"background": None, "infection": 0.5, "mean_foreground": 0.5}
    line = next(l for l in _markdown(ev, "t").splitlines() if l.startswith("Mean of each"))
    assert line == ("Mean of each image's figure over the images whose truth holds the class: background 1, infection 1 "
                    "of 1; specificity over background 1, infection 1 (every image where it is defined); precision over "
                    "background 0, infection 1 (where the class is also predicted).")


def test_the_markdown_says_how_many_images_were_scored() -> None:
    # three binary images (two classes): the first line after the title counts images, not columns
    truth = np.array([[0, 1], [0, 1]])
    ev = summarise([evaluate_image(n, _one_hot(truth, 2), truth, BINARY) for n in "abc"], BINARY)
    assert _markdown(ev, "t").splitlines()[2] == f"3 images; {EMPTY_TRUTH_RULE}."


def test_a_healthy_truth_names_every_foreground_class_the_model_called() -> None:
    # no lesion anywhere; 2 pixels called ggo and 1 consolidation: both false-positive counts are told
    truth = np.zeros((1, 5), np.int64)
    pred = np.array([[1, 1, 2, 0, 0]])
    page = _markdown(summarise([evaluate_image("h", _one_hot(pred, 4), truth, MULTICLASS)], MULTICLASS), "t")
    assert page.splitlines()[-1] == (
        "No image's truth holds a foreground class, so none has a foreground Dice; the model called 2 pixels ggo, "
        "1 pixels consolidation, all false positives (metrics.json holds every class's pooled figures).")


def test_the_figure_shows_three_best_and_three_worst_images_by_default(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # 8x8 images, truth a 2x2 lesion in the top-left corner; image i calls the first i pixels of row 0:
    # Dice 0, 2/5, 4/6, 4/7, 4/8, 4/9 for i = 0..5 -> best im2, im3, im4; worst im5, im1, im0
    titles: list[str] = []
    monkeypatch.setattr(evaluation, "plot_grid",
                        lambda rows, scheme, path, title="": titles.extend(caption for caption, *_ in rows))
    results = []
    for i in range(6):
        truth = np.zeros((8, 8), np.int64)
        truth[:2, :2] = 1
        pred = np.zeros((8, 8), np.int64)
        pred[0, :i] = 1
        results.append(evaluate_image(f"im{i}", _one_hot(pred, 2), truth, BINARY, np.zeros((8, 8), np.float32)))
    write_report(summarise(results, BINARY), tmp_path / "eval", "t")
    assert titles == ["im2 (best, foreground Dice 0.667)", "im3 (best, foreground Dice 0.571)",
                      "im4 (best, foreground Dice 0.500)", "im5 (worst, foreground Dice 0.444)",
                      "im1 (worst, foreground Dice 0.400)", "im0 (worst, foreground Dice 0.000)"]


# ---- covseg.fileio ----------------------------------------------------------------------------------------------

def test_an_fsync_that_fails_on_a_file_is_raised_but_on_a_folder_let_be(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # a file whose data cannot reach the disk must not be renamed into place as if it had; a folder's entries that
    # cannot be synced (some file systems) are let be, as the rename itself is still atomic
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    (tmp_path / "f").write_text("x")
    monkeypatch.setattr(fileio.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error"):
        fileio.sync_path(tmp_path / "f")
    fileio.sync_path(tmp_path)  # no error
    with pytest.raises(OSError, match="Input/output error"):
        fileio.atomic_write_text(tmp_path / "out.txt", "new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # neither out.txt nor its temporary file


def test_sync_path_closes_every_descriptor_it_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    closed: list[int] = []
    real_open, real_close = os.open, os.close

    def recording_open(*args: object, **kwargs: object) -> int:
        fd = real_open(*args, **kwargs)
        opened.append(fd)
        return fd

    def recording_close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    (tmp_path / "f").write_text("x")
    monkeypatch.setattr(fileio.os, "open", recording_open)
    monkeypatch.setattr(fileio.os, "close", recording_close)
    fileio.sync_path(tmp_path / "f")
    fileio.sync_path(tmp_path)
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid argument")))
    fileio.sync_path(tmp_path)  # a folder that cannot be synced: let be, its descriptor closed all the same
    with pytest.raises(OSError):
        fileio.sync_path(tmp_path / "f")  # a file that cannot be synced: raised, its descriptor closed too
    assert len(opened) == 4 and closed == opened


def test_a_format_suffix_that_just_fits_is_kept(tmp_path: Path) -> None:
    # "x." + 239 letters: the suffix ".part." + 239 letters (245 bytes) with ".." and 8 random characters is exactly
    # 255 bytes, so it is kept (the name itself cut to nothing); one byte more and it falls back to ".part"
    name = "x." + "a" * 239
    with fileio.atomic_path(tmp_path / name) as tmp:
        assert tmp.name.startswith("..") and tmp.name.endswith(".part." + "a" * 239) and len(tmp.name) == 255
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_sync_tree_does_not_follow_a_link_to_a_folder_outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import record_syncs_and_renames

    outside = tmp_path / "outside"
    outside.mkdir()
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.png").write_bytes(b"a")
    os.symlink(outside, staged / "elsewhere")  # a link to a folder: listed by os.walk among the folders
    events = record_syncs_and_renames(monkeypatch)
    fileio.sync_tree(staged)
    assert events == [("fsync", str(staged / "a.png")), ("fsync", str(staged))]  # the folder linked to is not synced


@pytest.mark.parametrize("disposition", ["default", "ignored"])
def test_a_sigterm_without_a_program_handler_is_not_held_back(disposition: str) -> None:
    # only a SIGTERM the program turns into an exception is held back; the default one (end the process) and an
    # ignored one (nohup-like) are left as they are inside the block, SIGINT alone deferred
    import signal

    handler = {"default": signal.SIG_DFL, "ignored": signal.SIG_IGN}[disposition]
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with fileio.interrupts_deferred():
            assert signal.getsignal(signal.SIGTERM) == handler
            assert callable(signal.getsignal(signal.SIGINT))  # SIGINT is held back
        assert signal.getsignal(signal.SIGTERM) == handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_failure_without_an_errno_is_reported_under_the_final_name(tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # an OSError with no errno is raised naming the file asked for, its message kept (helper 170: it was lost, and
    # the CLI's line read "[Errno None] None: '...out.png'")
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError("the temporary file could not be made")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refused)
    with pytest.raises(OSError) as caught:
        with fileio.atomic_path(tmp_path / "out.png"):
            pass
    assert caught.value.filename == str(tmp_path / "out.png")
    assert caught.value.strerror == "the temporary file could not be made"
    from covseg.cli import _file_system_refusal

    assert _file_system_refusal(caught.value) == 2
    assert capsys.readouterr().err == (f"covseg: error: {tmp_path / 'out.png'}: the temporary file could not be made; "
                                       "check the path and permissions\n")
    assert list(tmp_path.iterdir()) == []

    class Odd(OSError):  # a subclass whose constructor takes a message alone: no copy can be made
        def __init__(self, message: str) -> None:
            super().__init__(errno.EIO, message, "/tmp/.out.png.abcdefgh.part.png")

    relabelled = fileio._relabelled(Odd("odd"), "out.png")
    assert isinstance(relabelled, Odd) and relabelled.filename == "out.png"
