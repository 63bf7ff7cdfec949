"""Metric functions against hand-computed values, including empty masks."""
from __future__ import annotations

import math

import numpy as np
import pytest

from covseg.metrics import (
    aggregate_per_image,
    confusion_matrix,
    dice,
    infnet_metrics,
    iou,
    mean_class_accuracy,
    pixel_accuracy,
    precision,
    sensitivity,
    specificity,
)

# truth / prediction on 2x4 pixels, 3 classes
TRUTH = np.array([[0, 0, 1, 1], [2, 2, 0, 1]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 0, 0]])


def test_confusion_matrix_rows_are_truth() -> None:
    cm = confusion_matrix(PRED, TRUTH, 3)
    # truth 0: pixels (0,0)->0, (0,1)->1, (1,2)->0 ; truth 1: (0,2)->1,(0,3)->1,(1,3)->0 ; truth 2: ->2, ->0
    assert cm.tolist() == [[2, 1, 0], [1, 2, 0], [1, 0, 1]]


@pytest.mark.parametrize(
    "fn, expected",
    [
        # class 0: TP 2, FP 2 (col sum 4 - 2), FN 1 ; class 1: TP 2, FP 1, FN 1 ; class 2: TP 1, FP 0, FN 1
        (dice, [4 / 7, 4 / 6, 2 / 3]),
        (iou, [2 / 5, 2 / 4, 1 / 2]),
        (sensitivity, [2 / 3, 2 / 3, 1 / 2]),
        (precision, [2 / 4, 2 / 3, 1 / 1]),
        # TN = 8 - TP - FP - FN: class 0: 3, class 1: 4, class 2: 6
        (specificity, [3 / 5, 4 / 5, 6 / 6]),
    ],
)
def test_class_metrics_hand_computed(fn, expected) -> None:
    np.testing.assert_allclose(fn(confusion_matrix(PRED, TRUTH, 3)), expected)


def test_global_accuracies() -> None:
    cm = confusion_matrix(PRED, TRUTH, 3)
    assert pixel_accuracy(cm) == pytest.approx(5 / 8)
    assert mean_class_accuracy(cm) == pytest.approx((2 / 3 + 2 / 3 + 1 / 2) / 3)


def test_empty_truth_and_prediction_is_nan_not_zero() -> None:
    cm = confusion_matrix(np.zeros((3, 3)), np.zeros((3, 3)), 2)
    d = dice(cm)
    assert d[0] == 1.0 and math.isnan(d[1])
    assert math.isnan(sensitivity(cm)[1]) and math.isnan(precision(cm)[1])
    assert specificity(cm)[1] == 1.0


def test_false_positive_on_empty_truth_scores_zero() -> None:
    pred = np.zeros((4, 4), int)
    pred[0, 0] = 1
    cm = confusion_matrix(pred, np.zeros((4, 4), int), 2)
    assert dice(cm)[1] == 0.0 and math.isnan(sensitivity(cm)[1])


def test_aggregate_per_image_skips_images_without_the_class() -> None:
    truth_a = np.array([[1, 1], [0, 0]])
    pred_a = np.array([[1, 0], [0, 0]])  # dice class 1 = 2*1/(2*1+0+1) = 2/3
    truth_b = np.zeros((2, 2), int)
    pred_b = np.array([[1, 0], [0, 0]])  # empty truth, a false positive: skipped per image
    cms = [confusion_matrix(pred_a, truth_a, 2), confusion_matrix(pred_b, truth_b, 2)]
    agg = aggregate_per_image(cms)
    assert agg["dice"][1] == pytest.approx(2 / 3)
    # pooled over both images: TP 1, FP 1, FN 1 -> 2/4
    assert dice(sum(cms))[1] == pytest.approx(0.5)
    # specificity is averaged over all images: a: TN 2 / (2+0) = 1 ; b: 3 / 4
    assert agg["specificity"][1] == pytest.approx((1 + 0.75) / 2)


def test_aggregate_class_absent_everywhere_is_nan() -> None:
    cm = confusion_matrix(np.zeros((2, 2)), np.zeros((2, 2)), 4)
    assert all(math.isnan(v) for v in aggregate_per_image([cm])["dice"][1:])


def test_infnet_perfect_and_hand_computed() -> None:
    truth = np.array([[1, 1], [0, 0]])
    perfect = infnet_metrics(truth.astype(float), truth)
    # normalised map equals the truth: Dice 1 at every threshold > 0; at t = 0 all pixels are foreground
    # (Dice 2*2/(2*2+2) = 2/3), so the mean over 256 thresholds is (255 + 2/3) / 256.
    assert perfect["meanDic"] == pytest.approx((255 + 2 / 3) / 256)
    assert perfect["mae"] == 0.0
    # probabilities 0.2, 0.6 for the lesion and 0.0, 0.4 for the background; min-max: 1/3, 1, 0, 2/3
    prob = np.array([[0.2, 0.6], [0.0, 0.4]])
    ts = np.linspace(0, 1, 256)
    p = np.array([1 / 3, 1, 0, 2 / 3])
    g = np.array([1, 1, 0, 0], bool)
    expected = np.mean([2 * ((p >= t) & g).sum() / ((p >= t).sum() + g.sum()) for t in ts])
    out = infnet_metrics(prob, truth)
    assert out["meanDic"] == pytest.approx(expected)
    assert out["mae"] == pytest.approx(np.abs(p - g).mean())


def test_infnet_zero_where_no_true_positive() -> None:
    # Fmeasure_calu sets Dice, sensitivity and specificity to 0 at thresholds with TP = 0
    truth = np.array([[1, 0], [0, 0]])
    prob = np.array([[0.2, 1.0], [0.0, 0.0]])  # normalised: lesion 0.2, a confident false positive 1.0
    ts = np.linspace(0, 1, 256)
    hit = ts <= 0.2
    out = infnet_metrics(prob, truth)
    # thresholds <= 0.2 hit the lesion: t = 0 takes all 4 pixels, 0 < t <= 0.2 takes the lesion and the FP
    dice_at = np.where(ts == 0, 2 / 5, 2 / 3)
    spe_at = np.where(ts == 0, 0.0, 2 / 3)
    assert out["meanDic"] == pytest.approx(np.mean(np.where(hit, dice_at, 0)))
    assert out["meanSen"] == pytest.approx(np.mean(hit))
    assert out["meanSpe"] == pytest.approx(np.mean(np.where(hit, spe_at, 0)))
    empty = infnet_metrics(prob, np.zeros((2, 2)))
    assert empty["meanDic"] == 0.0 and empty["meanSpe"] == 0.0
    # lesion everywhere: no negative pixel, so specificity is undefined (0/0), not 0. Sensitivity takes p >= t of
    # the four lesion pixels 0, 0, 0.2, 1: all four at t = 0, two up to 0.2, one above
    full = infnet_metrics(prob, np.ones((2, 2)))
    assert np.isnan(full["meanSpe"])
    assert full["meanSen"] == pytest.approx(np.mean(np.where(ts == 0, 1.0, np.where(ts <= 0.2, 0.5, 0.25))))


def test_confusion_matrix_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros(3), np.zeros(4), 2)


def test_mean_foreground_leaves_out_classes_absent_from_every_truth() -> None:
    from covseg.evaluation import evaluate_image, summarise
    from covseg.labels import MULTICLASS

    truth = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 3, 2], [0, 0, 2, 0]])  # one pixel called pleural effusion, which no truth holds
    probs = np.eye(4, dtype=np.float32)[pred].transpose(2, 0, 1)
    d = summarise([evaluate_image("a", probs, truth, MULTICLASS)], MULTICLASS).to_dict()
    # ggo: TP 1, FN 1 -> Dice 2/3 ; consolidation: TP 2, FN 1 -> 4/5 ; neither has a false positive
    for kind in ("per_image", "pooled"):
        assert d[kind]["dice"]["mean_foreground"] == pytest.approx((2 / 3 + 4 / 5) / 2, abs=1e-6)
        # pleural effusion keeps its own figures (specificity 7/8, pooled Dice 0) but not in the mean
        assert d[kind]["specificity"]["pleural_effusion"] == pytest.approx(7 / 8, abs=1e-6)
        assert d[kind]["specificity"]["mean_foreground"] == pytest.approx(1.0)
    assert d["pooled"]["dice"]["pleural_effusion"] == 0.0


def test_best_worst_grid_has_a_legend_of_the_class_colours(monkeypatch, tmp_path) -> None:
    from covseg import figures
    from covseg.labels import MULTICLASS

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    image, labels = np.zeros((4, 4)), np.arange(16).reshape(4, 4) % 4
    figures.plot_grid([("a", image, labels, labels)], MULTICLASS, tmp_path / "grid.png")
    (legend,) = drawn[0].legends
    assert [t.get_text() for t in legend.get_texts()] == ["ground-glass opacity", "consolidation", "pleural effusion"]
    colours = [tuple(round(255 * v) for v in h.get_facecolor()[:3]) for h in legend.legend_handles]
    assert colours == list(MULTICLASS.colors[1:])


def test_metrics_md_says_how_many_images_each_per_image_mean_averages() -> None:
    from covseg.evaluation import _markdown, evaluate_image, summarise
    from covseg.labels import MULTICLASS

    probs = np.eye(4, dtype=np.float32)[np.array([[0, 1], [2, 0]])].transpose(2, 0, 1)
    results = [evaluate_image("a", probs, np.array([[0, 1], [2, 0]]), MULTICLASS),
               evaluate_image("b", probs, np.array([[0, 1], [0, 0]]), MULTICLASS)]
    text = _markdown(summarise(results, MULTICLASS), "t")
    assert "background 2, ggo 2, consolidation 1 of 2" in text
    assert "every pixel of all 2 images" in text


def test_cv_columns_leave_a_fold_without_the_class_out_of_the_pooled_column_too() -> None:
    from covseg.experiment import SPREAD_NOTE, _cv_columns, _mean_std

    def fold(per_image: float | None, pooled: float, with_class: int) -> dict:
        names = ("ggo", "consolidation", "pleural_effusion")
        return {"images_with_class": {"ggo": 3, "consolidation": with_class, "pleural_effusion": 0},
                "per_image": {"dice": {"ggo": 0.6, "consolidation": per_image, "pleural_effusion": None,
                                       "mean_foreground": 0.5}},
                "pooled": {"dice": {n: v for n, v in zip(names, (0.7, pooled, 0.0))}}}

    # fold 1's truths hold no consolidation, yet its model called some: pooled Dice 0 there, which is no score
    rows = [(fold(1.0, 1.0, 2), 10.0), (fold(None, 0.0, 0), 11.0), (fold(0.5, 0.5, 1), 12.0)]
    columns = _cv_columns(rows, "multiclass")
    assert columns["Dice consolidation (per image)"] == [1.0, None, 0.5]
    assert columns["Dice consolidation (pooled)"] == [1.0, None, 0.5]
    assert "Dice pleural_effusion (pooled)" not in columns  # no fold's truth holds it
    mean, std = _mean_std(columns)["Dice consolidation (pooled)"]
    assert (mean, std) == (0.75, 0.25)  # population std of 1.0 and 0.5, as SPREAD_NOTE says
    assert "population standard deviation (ddof 0)" in SPREAD_NOTE


def test_non_finite_probabilities_are_refused_not_scored() -> None:
    from covseg.errors import CovsegError
    from covseg.evaluation import evaluate_image
    from covseg.labels import BINARY

    truth = np.zeros((3, 3), np.int64)
    truth[1, 1] = 1
    probs = np.stack([np.full((3, 3), 0.9), np.full((3, 3), 0.1)])
    assert evaluate_image("a", probs, truth, BINARY).name == "a"
    probs[1, 0, 0] = np.nan  # numpy's arg-max would have called every NaN pixel infection
    with pytest.raises(CovsegError, match="a: the model gave non-finite probabilities"):
        evaluate_image("a", probs, truth, BINARY)


def test_the_report_counts_the_images_behind_each_per_image_mean() -> None:
    from covseg.evaluation import _markdown, evaluate_image, summarise
    from covseg.labels import BINARY
    from covseg.metrics import per_image_counts

    truth = np.array([[0, 1, 1], [0, 1, 0], [0, 0, 0]])
    guess = np.array([[0, 1, 0], [1, 1, 0], [0, 0, 0]])  # 2 of 3 lesion pixels found, 1 false
    empty = np.zeros((3, 3), np.int64)

    def probs(pred: np.ndarray) -> np.ndarray:
        return np.stack([1 - pred, pred]).astype(float) * 0.8 + 0.1

    # a: lesion partly found; b: no lesion, one false call; c: both empty; d: lesion, nothing called
    results = [evaluate_image(n, probs(p), t, BINARY)
               for n, p, t in (("a", guess, truth), ("b", guess, empty), ("c", empty, empty), ("d", empty, truth))]
    counts = per_image_counts([r.cm for r in results])
    assert counts["dice"].tolist() == [4, 2]  # infection: the two images whose truth holds it
    assert counts["precision"].tolist() == [4, 1]  # infection: of those two, only a predicts it (2 of 3 right)
    assert counts["specificity"].tolist() == [2, 4]  # background's is undefined where the truth holds only it
    evaluation = summarise(results, BINARY)
    d = evaluation.to_dict()
    assert d["per_image"]["precision"]["infection"] == pytest.approx(2 / 3)
    assert d["per_image_images"]["precision"] == {"background": 4, "infection": 1}
    page = _markdown(evaluation, "t")
    assert "specificity over background 2, infection 4 (every image where it is defined)" in page
    assert "precision over background 4, infection 1 (where the class is also predicted)" in page
    assert "an image without lesion scores 0 for meanDic" in page


def test_confusion_matrix_rejects_other_shapes_of_one_size_and_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 3\) but target has \(3, 2\)"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 2)  # 6 pixels each, but not the same pixels
    with pytest.raises(ValueError, match="prediction holds label 2, outside 0..1 of 2 classes"):
        confusion_matrix(np.array([2]), np.array([0]), 2)  # was counted as truth 1, prediction 0
    with pytest.raises(ValueError, match="prediction holds label -1"):
        confusion_matrix(np.array([-1, 0]), np.array([1, 1]), 2)
    with pytest.raises(ValueError, match="target holds label 3, outside 0..2"):
        confusion_matrix(np.array([0, 1]), np.array([3, 0]), 3)
    assert confusion_matrix(np.zeros((0, 4)), np.zeros((0, 4)), 2).tolist() == [[0, 0], [0, 0]]


def test_mean_class_accuracy_averages_only_the_classes_the_truth_holds() -> None:
    # truth holds classes 0 and 1; class 2 is only predicted: (1 + 0) / 2, not (1 + 0 + 0) / 3
    cm = confusion_matrix(np.array([[0, 1]]), np.array([[0, 2]]), 3)
    assert mean_class_accuracy(cm) == pytest.approx(0.5)


def test_pooled_figures_weigh_pixels_and_per_image_means_weigh_images() -> None:
    """Two binary images of different sizes: A (1x2) fully right, Dice 1; B (4x4) with 8 lesion pixels of which 4 are
    found, Dice 2 * 4 / (8 + 4) = 2/3. Per image: (1 + 2/3) / 2 = 5/6. Pooled: TP 5, FN 4, FP 0 -> 10 / 14 = 5/7."""
    from covseg.evaluation import evaluate_image, summarise
    from covseg.labels import BINARY

    def probs(pred: np.ndarray) -> np.ndarray:
        return np.eye(2, dtype=np.float32)[pred].transpose(2, 0, 1)

    truth_a = np.array([[0, 1]])
    truth_b = np.zeros((4, 4), dtype=np.int64)
    truth_b[:2] = 1
    pred_b = truth_b.copy()
    pred_b[1] = 0
    d = summarise([evaluate_image("a", probs(truth_a), truth_a, BINARY),
                   evaluate_image("b", probs(pred_b), truth_b, BINARY)], BINARY).to_dict()
    assert d["per_image"]["dice"]["infection"] == pytest.approx(5 / 6, abs=1e-6)
    assert d["pooled"]["dice"]["infection"] == pytest.approx(5 / 7, abs=1e-6)
    assert d["pooled"]["sensitivity"]["infection"] == pytest.approx(5 / 9, abs=1e-6)


def test_an_all_lesion_image_leaves_the_infnet_specificity_to_the_others() -> None:
    """meanSpe is undefined (NaN) on an image without background; the summary's mean skips it, as the per-image
    metrics skip undefined values, instead of turning the whole set's meanSpe into NaN."""
    from covseg.evaluation import evaluate_image, summarise
    from covseg.labels import BINARY

    normal_truth = np.array([[0, 0, 1, 1]])
    normal_probs = np.array([[[0.9, 0.4, 0.2, 0.1]], [[0.1, 0.6, 0.8, 0.9]]], dtype=np.float32)  # one false positive
    lesion_truth = np.ones((1, 4), dtype=np.int64)
    lesion_probs = np.array([[[0.1] * 4], [[0.9] * 4]], dtype=np.float32)
    normal = evaluate_image("n", normal_probs, normal_truth, BINARY)
    lesion = evaluate_image("l", lesion_probs, lesion_truth, BINARY)
    assert math.isnan(lesion.infnet["meanSpe"]) and 0 < normal.infnet["meanSpe"] < 1
    infnet = summarise([normal, lesion], BINARY).infnet
    assert infnet["meanSpe"] == pytest.approx(normal.infnet["meanSpe"])
    assert infnet["meanDic"] == pytest.approx((normal.infnet["meanDic"] + lesion.infnet["meanDic"]) / 2)


@pytest.mark.parametrize("level", [1.0, 0.5, 0.0])
def test_infnet_leaves_a_constant_map_as_matlabs_mapminmax_does(level: float) -> None:
    # mapminmax(x, 0, 1) on a row of one value keeps it (gain 1, offset 0); before, covseg set the map to 0, so a map
    # of 1.0 everywhere scored only at the threshold 0 (meanDic 0.0021 here instead of 0.529)
    truth = np.zeros((10, 10), int)
    truth[:6, :6] = 1  # 36 % lesion
    out = infnet_metrics(np.full((10, 10), level), truth)
    ts = np.linspace(0, 1, 256)
    whole = 2 * 36 / (100 + 36)  # the whole image called lesion
    assert out["meanDic"] == pytest.approx(whole * np.mean(ts <= level))
    assert out["mae"] == pytest.approx(np.abs(level - truth).mean())
    # a range too small for MATLAB's gain (1 / range > 1e14) counts as constant
    almost = np.full((10, 10), 0.5)
    almost[0, 0] += 1e-15
    assert infnet_metrics(almost, truth)["meanDic"] == pytest.approx(whole * np.mean(ts <= 0.5), abs=1e-12)
