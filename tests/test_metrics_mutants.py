"""Gaps found by mutation testing of covseg.metrics and covseg.evaluation: hand-computed figures that the older tests
left free (an empty confusion matrix, a min-max offset, the pooled accuracies, the markdown and CSV cells, the order in
which a report replaces an older one)."""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

import covseg.evaluation as evaluation
from covseg.errors import CovsegError
from covseg.evaluation import _markdown, evaluate_image, foreground_called, format_figure, summarise, write_report
from covseg.labels import get_scheme
from covseg.metrics import aggregate_per_image, infnet_metrics, mean_class_accuracy, pixel_accuracy, per_image_counts

BINARY = get_scheme("binary")
MULTICLASS = get_scheme("multiclass")


def _one_hot(pred: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[pred].transpose(2, 0, 1)


def _two_images() -> evaluation.Evaluation:
    """Image a (2x3): truth [[1,1,0],[0,0,0]], prediction [[1,0,1],[0,0,0]] -> cm [[3,1],[1,1]] (rows truth).
    Image b (2x2): no lesion, none called -> cm [[4,0],[0,0]]. Pooled: [[7,1],[1,1]]."""
    truth_a = np.array([[1, 1, 0], [0, 0, 0]])
    pred_a = np.array([[1, 0, 1], [0, 0, 0]])
    empty = np.zeros((2, 2), np.int64)
    results = [evaluate_image("a", _one_hot(pred_a, 2), truth_a, BINARY),
               evaluate_image("b", _one_hot(empty, 2), empty, BINARY)]
    return summarise(results, BINARY)


def test_accuracies_of_an_empty_confusion_matrix_are_undefined_not_zero() -> None:
    empty = np.zeros((2, 2), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # quietly: no numpy "Mean of empty slice"
        assert math.isnan(pixel_accuracy(empty))
        assert math.isnan(mean_class_accuracy(empty))


def test_aggregating_no_confusion_matrix_is_refused_plainly() -> None:
    with pytest.raises(ValueError, match="no confusion matrices to aggregate"):
        aggregate_per_image([])
    with pytest.raises(ValueError, match="no confusion matrices to aggregate"):
        per_image_counts([])


def test_infnet_min_max_subtracts_the_minimum_and_divides_by_the_range() -> None:
    # 0.25 .. 1.0: normalised (p - 0.25) / 0.75 -> lesion 1/3, 1 ; background 0, 2/3 (not (p - 0.25) / 1.0)
    truth = np.array([[1, 1], [0, 0]])
    out = infnet_metrics(np.array([[0.5, 1.0], [0.25, 0.75]]), truth)
    assert out["mae"] == pytest.approx((2 / 3 + 0 + 0 + 2 / 3) / 4)
    p, g = np.array([1 / 3, 1, 0, 2 / 3]), np.array([1, 1, 0, 0], bool)
    ts = np.linspace(0, 1, 256)
    expected = np.mean([2 * ((p >= t) & g).sum() / ((p >= t).sum() + g.sum()) for t in ts])
    assert out["meanDic"] == pytest.approx(expected)


def test_pooled_accuracies_count_every_pixel_of_every_image() -> None:
    ev = _two_images()
    # pooled cm [[7,1],[1,1]]: 8 of 10 pixels right; sensitivity background 7/8, infection 1/2
    assert ev.pixel_accuracy == pytest.approx(0.8)
    assert ev.mean_class_accuracy == pytest.approx((7 / 8 + 1 / 2) / 2)
    d = ev.to_dict()
    assert (d["pixel_accuracy"], d["mean_class_accuracy"]) == (0.8, 0.6875)


def test_infnet_summary_hand_computed_and_its_markdown_row_in_order() -> None:
    ev = _two_images()
    # image a, one-hot map: t = 0 calls all 6 pixels (Dice 4/8, Sen 1, Spe 0/4); every t > 0 calls the prediction
    # (TP 1, FP 1, FN 1, TN 3: Dice 1/2, Sen 1/2, Spe 3/4); MAE 2/6. Image b has no lesion: all 0, MAE 0.
    a = ev.results[0].infnet
    assert a["meanDic"] == pytest.approx(0.5)
    assert a["meanSen"] == pytest.approx((1 + 255 * 0.5) / 256)
    assert a["meanSpe"] == pytest.approx(255 * 0.75 / 256)
    assert a["mae"] == pytest.approx(1 / 3)
    assert ev.infnet == pytest.approx({"meanDic": 0.25, "meanSen": 128.5 / 512, "meanSpe": 255 * 0.75 / 512,
                                       "mae": 1 / 6})
    page = _markdown(ev, "t")
    assert "| meanDic | meanSen | meanSpe | MAE |\n|---|---|---|---|\n| 0.2500 | 0.2510 | 0.3735 | 0.1667 |" in page
    assert "Pixel accuracy 0.8000; mean class accuracy 0.6875." in page


def test_per_image_csv_cells_hand_computed(tmp_path: Path) -> None:
    write_report(_two_images(), tmp_path / "eval", "t")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").read_text(encoding="utf-8").splitlines()))
    # a: cm [[3,1],[1,1]]: Dice background 6/8, infection 2/4; IoU 3/5, 1/3; accuracy 4/6; Inf-Net as above
    assert rows[0] == {"name": "a", "pixels": "6", "fg_dice": "0.500000", "dice_background": "0.750000",
                       "dice_infection": "0.500000", "iou_background": "0.600000", "iou_infection": "0.333333",
                       "pixel_accuracy": "0.666667", "infnet_meanDic": "0.500000", "infnet_mae": "0.333333",
                       "truth_background": "4", "truth_infection": "2"}
    assert rows[1] == {"name": "b", "pixels": "4", "fg_dice": "nan", "dice_background": "1.000000",
                       "dice_infection": "nan", "iou_background": "1.000000", "iou_infection": "nan",
                       "pixel_accuracy": "1.000000", "infnet_meanDic": "0.000000", "infnet_mae": "0.000000",
                       "truth_background": "4", "truth_infection": "0"}


def test_markdown_mean_foreground_column_is_the_mean_of_the_classes() -> None:
    # truth [0,1,1,2,2,2], prediction [0,1,1,2,2,0]: ggo Dice 1, consolidation 2*2/(4+0+1) = 4/5 -> mean 0.9;
    # background TP 1, FP 1 -> 2/3
    truth = np.array([[0, 1, 1, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 2, 2, 0]])
    page = _markdown(summarise([evaluate_image("a", _one_hot(pred, 4), truth, MULTICLASS)], MULTICLASS), "t")
    assert page.count("| dice | 0.6667 | 1.0000 | 0.8000 | 0.9000 |") == 2  # per image and pooled (one image)
    # pleural effusion, in no truth, has no column; the separator has one cell per column (5)
    header = "| metric | background | ggo | consolidation | mean foreground |\n|---|---|---|---|---|\n"
    assert page.count(header) == 2


def test_format_figure_four_decimals_and_a_dash_for_undefined() -> None:
    assert format_figure(0.8) == "0.8000"
    assert format_figure(2 / 3) == "0.6667"
    assert format_figure(None) == "–"
    assert format_figure(float("nan")) == "–"


def test_a_move_that_fails_midway_leaves_no_metrics_json_beside_mixed_tables(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Into an existing folder the old metrics.json goes first and the new one comes last: a rename that fails
    between leaves no metrics.json (an unfinished evaluation), never an old or new one beside the other tables."""
    out = tmp_path / "eval"
    write_report(_two_images(), out, "first")
    assert (out / "metrics.json").is_file()
    real = os.replace

    def failing(src, dst, *args, **kwargs):
        if Path(dst).name == "per_image.csv":
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(evaluation.os, "replace", failing)
    with pytest.raises(CovsegError, match="the report could not be written"):
        write_report(_two_images(), out, "second")
    monkeypatch.undo()
    assert not (out / "metrics.json").exists()
    assert (out / "metrics.md").read_text(encoding="utf-8").startswith("# second")  # moved before the failure
    write_report(_two_images(), out, "third")  # and a rerun finishes it
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n_images"] == 2


def test_a_report_takes_the_folder_and_file_modes_of_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_report(_two_images(), tmp_path / "eval", "t")
    finally:
        os.umask(old)
    assert (tmp_path / "eval").stat().st_mode & 0o777 == 0o750  # not mkdtemp's 0700, nor a fixed 0755
    assert (tmp_path / "eval" / "metrics.json").stat().st_mode & 0o777 == 0o640


def test_no_lesion_and_nothing_called_says_so_and_an_old_report_calls_nothing(tmp_path: Path) -> None:
    empty = np.zeros((3, 3), np.int64)
    ev = summarise([evaluate_image("h", _one_hot(empty, 2), empty, BINARY)], BINARY)
    assert ("No image's truth holds a foreground class, so none has a foreground Dice; the model called no pixel "
            "foreground either.") in _markdown(ev, "t")
    assert foreground_called(ev.to_dict()) == {}
    assert foreground_called({"pixel_accuracy": 1.0}) == {}  # metrics.json written before predicted_pixels
    assert foreground_called({"predicted_pixels": {"background": 5, "ggo": 0, "consolidation": 4}}) == {
        "consolidation": 4}
