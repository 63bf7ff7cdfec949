"""Mutation-testing gaps of covseg.figures, covseg.report_html and the best/worst pick of covseg.evaluation.

Each expectation is worked out by hand; figures are caught (not re-read from PNG) where their content matters.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import covseg.evaluation as evaluation
import covseg.figures as figures
from covseg import report_html
from covseg.evaluation import evaluate_image, summarise, write_report
from covseg.intensity import stretch_percentiles, window_hu
from covseg.labels import get_scheme

BINARY = get_scheme("binary")


pytestmark = pytest.mark.real_figures  # these tests check the figures themselves, drawn


def _caught(monkeypatch: pytest.MonkeyPatch) -> list:
    drawn: list = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    return drawn


def test_curves_plot_each_key_on_a_0_to_1_score_axis_with_whole_epochs_and_the_title(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = _caught(monkeypatch)
    history = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.8, "val_dice": d}
               for e, d in ((1, 0.1), (2, 0.2), (3, 0.3))]
    figures.plot_curves(history, tmp_path / "c.png", title="run $x$")
    fig = drawn[0]
    loss, score = fig.axes[:2]
    lines = {line.get_label(): list(line.get_ydata()) for line in score.get_lines()}
    assert lines["validation mean Dice"] == [0.1, 0.2, 0.3] and lines["validation pixel accuracy"] == [0.8] * 3
    assert score.get_ylim() == (0.0, 1.0)
    for ax in (loss, score):  # epochs 1..3: ticks on whole numbers only (no 1.25, 1.5, ...)
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert fig._suptitle is not None and fig._suptitle.get_text() == "run \\$x\\$"


def test_grid_shows_the_image_on_a_fixed_0_1_grey_scale_and_the_title(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = _caught(monkeypatch)
    image = np.full((4, 4), 0.25)
    image[0, 0] = 0.5  # a dim image must not be stretched to full contrast
    labels = np.zeros((4, 4), np.int64)
    figures.plot_grid([("a", image, labels, labels)], BINARY, tmp_path / "g.png", title="eval title")
    assert drawn[0].axes[0].images[0].get_clim() == (0, 1)
    assert drawn[0]._suptitle.get_text() == "eval title"


def test_comparison_labels_each_bar_with_three_decimals_on_a_0_to_1_05_axis_and_titles_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = _caught(monkeypatch)
    figures.plot_comparison(["a", "b"], {"dice": [0.5, 0.6], "iou": [0.3, 0.456]}, tmp_path / "c.png", title="cmp")
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.500", "0.300", "0.600", "0.456"]
    assert ax.get_ylim() == (0.0, 1.05)
    assert ax.get_title() == "cmp"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]


def _scored(name: str, truth: np.ndarray, pred: np.ndarray) -> evaluation.ImageResult:
    probs = np.eye(2, dtype=np.float32)[pred].transpose(2, 0, 1)
    return evaluate_image(name, probs, truth, BINARY, np.zeros(truth.shape, np.float32))


def _titles(results: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_figure: int) -> list[str]:
    titles: list[str] = []
    monkeypatch.setattr(evaluation, "plot_grid",
                        lambda rows, scheme, path, title="": titles.extend(caption for caption, *_ in rows))
    write_report(summarise(results, BINARY), tmp_path / "eval", "t", n_figure=n_figure)
    return titles


def test_three_images_give_one_best_and_one_worst_never_the_middle_one_twice(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    truth = np.array([[0, 1], [0, 1]])
    good = _scored("good", truth, truth)  # Dice 1
    mid = _scored("mid", truth, np.array([[0, 1], [1, 0]]))  # TP 1, FP 1, FN 1: Dice 0.5
    bad = _scored("bad", truth, np.array([[1, 0], [1, 0]]))  # TP 0: Dice 0
    titles = _titles([mid, bad, good], tmp_path, monkeypatch, n_figure=2)
    assert titles == ["good (best, foreground Dice 1.000)", "bad (worst, foreground Dice 0.000)"]


def test_one_image_is_shown_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truth = np.array([[0, 1], [0, 1]])
    assert _titles([_scored("only", truth, truth)], tmp_path, monkeypatch, n_figure=4) == ["only (best, foreground Dice 1.000)"]


def test_montage_without_lesion_picks_evenly_spread_rounded_slices() -> None:
    grey = np.asarray([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])[:, None, None] * np.ones((1, 4, 4))
    # linspace(0, 5, 4) = 0, 1.67, 3.33, 5 -> slices 0, 2, 3, 5, shown superior (highest z) first
    m = report_html.axial_montage(grey, np.zeros((6, 4, 4), np.int64), BINARY, n=4)
    assert m.shape == (4, 16, 3)
    assert [int(m[0, x, 0]) for x in (0, 4, 8, 12)] == [127, 76, 51, 0]


def test_coronal_height_is_slices_times_slice_thickness_over_column_spacing() -> None:
    grey = np.zeros((4, 6, 5))
    lungs = np.ones((4, 6, 5), np.uint8)
    lesions = np.zeros((4, 6, 5), np.int64)
    # spacing (z, y, x) = (2, 1, 0.5): 4 slices of 2 mm over 0.5 mm columns -> 16 rows; y spacing plays no part
    assert report_html.coronal_view(grey, lesions, lungs, BINARY, (2.0, 1.0, 0.5)).shape == (16, 5, 3)


def _part(percent: float, severity, lung_ml: float = 100.0) -> dict:
    return {"lung_ml": lung_ml, "lesion_ml": percent, "lesion_percent": percent, "severity": severity,
            "class_ml": {"infection": percent}, "class_percent": {"infection": percent}}


def _report(figs: dict, **input_) -> dict:
    inp = {"path": "chest.nii.gz", "kind": "nifti", "shape": [2, 16, 16], "spacing_mm": [1.0, 1.0, 1.0],
           "sha256": "0" * 64}
    inp.update(input_)
    return {"input": inp, "model": {"name": "unet", "task": "binary"}, "figures": figs, "warnings": [],
            "seconds": {"total": 1.0}}


def _render(report: dict, is_hu: bool = True, hu: np.ndarray | None = None) -> str:
    lungs = np.ones((2, 16, 16), np.uint8)
    hu = np.full((2, 16, 16), -800.0) if hu is None else hu
    return report_html.render_report(report, hu, is_hu, np.zeros((2, 16, 16), np.int64), lungs, BINARY,
                                     (1.0, 1.0, 1.0))


def test_each_lung_s_row_and_bar_shows_that_lung_s_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    real = report_html._fig_uri
    monkeypatch.setattr(report_html, "_fig_uri", lambda fig: drawn.append(fig) or real(fig))
    page = _render(_report({"right": _part(10.0, 2), "left": _part(30.0, 3), "total": _part(20.0, 2)}))
    assert "<tr><th>Right lung</th><td>100 mL</td><td>10.0 mL (10.0 %)</td>" in page
    assert "<tr><th>Left lung</th><td>100 mL</td><td>30.0 mL (30.0 %)</td>" in page
    ax = drawn[0].axes[0]
    assert [round(b.get_height(), 6) for b in ax.patches] == [10.0, 30.0, 20.0]  # right, left, both
    assert [t.get_text() for t in ax.get_xticklabels()] == ["right lung", "left lung", "both lungs"]


def test_a_lung_with_severity_0_and_a_class_at_0_percent_read_as_numbers() -> None:
    page = _render(_report({"right": _part(0.0, 0), "left": _part(3.0, 1), "total": _part(1.5, 1)}))
    assert "<tr><th>Right lung</th><td>100 mL</td><td>0.0 mL (0.0 %)</td><td>0.0 mL (0.0 %)</td><td>0</td></tr>" \
        in page
    assert "n/a" not in page


def test_the_header_escapes_the_model_and_shows_slices_spacing_and_seconds() -> None:
    report = _report({"right": _part(3.0, 1), "left": _part(3.0, 1), "total": _part(3.0, 1)},
                     shape=[37, 16, 16], spacing_mm=[0.625, 0.7421875, 5.0])
    report["model"] = {"name": "u<net>&", "task": "binary"}
    report["seconds"] = {"total": 12.34}
    page = _render(report)
    assert "<b>Model</b> u&lt;net&gt;&amp; (" in page and "u<net>" not in page
    assert "37 slices,\nspacing 0.625 × 0.742 × 5 mm" in page
    assert "· 12.3 s to read" in page


@pytest.mark.parametrize("is_hu", [True, False])
def test_hu_are_windowed_and_other_grey_values_stretched(is_hu: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = report_html.axial_montage
    monkeypatch.setattr(report_html, "axial_montage", lambda grey, *a, **k: seen.append(grey) or real(grey, *a, **k))
    hu = np.linspace(-1200.0, 400.0, 2 * 16 * 16).reshape(2, 16, 16)
    _render(_report({"right": _part(3.0, 1), "left": _part(3.0, 1), "total": _part(3.0, 1)}), is_hu=is_hu, hu=hu)
    expected = window_hu(hu) if is_hu else stretch_percentiles(hu)
    assert not np.allclose(window_hu(hu), stretch_percentiles(hu))  # the two readings differ on this volume
    np.testing.assert_allclose(seen[0], expected)
