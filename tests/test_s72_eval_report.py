"""Session 72's review of covseg evaluate's report and the scan's HTML page: what each sentence and figure claims.

Confusion matrices are built by hand (rows = truth, columns = prediction), so every expected figure is worked out
without a model; figures are caught before saving (``covseg.figures._save``) where their content matters.
"""
from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
import numpy as np
import pytest

import covseg.figures as figures
from covseg import report_html
from covseg.evaluation import ImageResult, summarise, write_report
from covseg.labels import get_scheme

BINARY, MULTICLASS = get_scheme("binary"), get_scheme("multiclass")


def _cm(scheme, truth_called: dict[int, tuple[int, int]], pixels: int = 64) -> np.ndarray:
    """A confusion matrix: for each foreground class ``c``, ``(truth pixels, of them called c)``; the rest of the
    truth pixels are called background, and every other pixel is background called background."""
    n = scheme.num_classes
    cm = np.zeros((n, n), np.int64)
    for c, (truth, called) in truth_called.items():
        cm[c, c], cm[c, 0] = called, truth - called
    cm[0, 0] = pixels - cm.sum()
    return cm


def _markdown(scheme, cms: list[np.ndarray], out: Path) -> str:
    infnet = {"meanDic": 0.5, "meanSen": 0.5, "meanSpe": 1.0, "mae": 0.1} if scheme.task == "binary" else None
    results = [ImageResult(f"im{i}", cm, infnet) for i, cm in enumerate(cms)]
    write_report(summarise(results, scheme), out, "review")
    return (out / "metrics.md").read_text(encoding="utf-8")


def test_a_mean_foreground_without_interval_names_the_class_that_lacks_images(tmp_path: Path) -> None:
    # both images hold GGO and consolidation (2 images each: intervals), only the first pleural effusion: the mean over
    # the three classes has no interval because effusion has 1 image, not because the mean counts fewer than 2
    cms = [_cm(MULTICLASS, {1: (4, 2), 2: (4, 4), 3: (4, 1)}), _cm(MULTICLASS, {1: (4, 4), 2: (4, 2)})]
    text = _markdown(MULTICLASS, cms, tmp_path / "eval")
    line = next(l for l in text.splitlines() if l.startswith("95 %"))
    assert "pleural effusion – (fewer than 2 images)" in line
    assert line.endswith("; mean foreground – (fewer than 2 images hold pleural effusion).")


def test_the_terminal_summary_says_why_a_figure_has_no_interval(tmp_path: Path, capsys) -> None:
    from covseg.cli import _print_summary

    cms = [_cm(MULTICLASS, {1: (4, 2), 2: (4, 4), 3: (4, 1)}), _cm(MULTICLASS, {1: (4, 4), 2: (4, 2)})]
    results = [ImageResult(f"im{i}", cm, None) for i, cm in enumerate(cms)]
    _print_summary(write_report(summarise(results, MULTICLASS), tmp_path / "eval", "review"), tmp_path / "eval")
    line = capsys.readouterr().out.splitlines()[0]
    # effusion on 1 image: no interval, and the mean over the three classes has none for that reason
    assert "pleural_effusion 0.4000 (no CI: fewer than 2 images)" in line, line
    assert "; mean 0." in line and "(no CI: fewer than 2 images hold pleural effusion)" in line, line
    assert "ggo 0.8333 (95 % CI " in line, line


def test_a_one_image_report_counts_its_image_in_the_singular(tmp_path: Path) -> None:
    result = ImageResult("only", _cm(BINARY, {1: (4, 2)}), infnet={"meanDic": 0.5, "meanSen": 0.5, "meanSpe": 1.0,
                                                                     "mae": 0.1})
    write_report(summarise([result], BINARY), tmp_path / "eval", "one")
    text = (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert "1 images" not in text
    assert text.splitlines()[2].startswith("1 image; per-image means skip")
    assert "2000 resamples of the 1 image, seed 0" in text
    assert "One figure from every pixel of the 1 image." in text
    assert "Means over the 1 image, as Inf-Net's evaluation takes them" in text


def test_several_images_are_still_counted_as_all_of_them(tmp_path: Path) -> None:
    cms = [_cm(BINARY, {1: (4, 2)}), _cm(BINARY, {1: (4, 4)})]
    text = _markdown(BINARY, cms, tmp_path / "eval")
    assert text.splitlines()[2].startswith("2 images; per-image means skip")
    assert "One figure from every pixel of all 2 images." in text and "resamples of the 2 images, seed 0" in text


def _grid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rows: list) -> object:
    drawn: list = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    figures.plot_grid(rows, MULTICLASS, tmp_path / "grid.png", title="unet · multiclass · heldout (6 images)")
    return drawn[0]


def test_the_grid_s_legend_names_only_the_classes_its_panels_hold(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.zeros((8, 8))
    truth, pred = np.zeros((8, 8), np.int64), np.zeros((8, 8), np.int64)
    truth[1:3, 1:3], pred[5:7, 5:7] = 1, 2  # GGO in the truth, consolidation only in the prediction
    fig = _grid(monkeypatch, tmp_path, [("a", image, truth, pred)])
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["ground-glass opacity", "consolidation"]  # no pleural effusion shown
    empty = np.zeros((8, 8), np.int64)
    assert _grid(monkeypatch, tmp_path, [("b", image, empty, empty)]).legends == []  # nothing to name


def test_the_grid_s_title_and_legend_sit_beside_its_panels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # four rows, as best_worst.png draws for 4 or 5 images: the old fixed margins left about an inch of blank figure
    # between the title and the first row (and as much above the legend)
    image = np.zeros((60, 50))
    truth = np.zeros((60, 50), np.int64)
    truth[10:20, 10:20] = 1
    fig = _grid(monkeypatch, tmp_path, [(f"im{i}", image, truth, truth) for i in range(4)])
    canvas = FigureCanvasAgg(fig)  # the layout is made at drawing, as savefig would
    canvas.draw()
    renderer = canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    top_row = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:3])
    bottom_row = min(ax.get_window_extent(renderer).y0 for ax in fig.axes[-3:])
    legend = fig.legends[0].get_window_extent(renderer)
    half_inch = 0.5 * fig.dpi
    assert 0 <= title.y0 - top_row < half_inch
    assert 0 <= bottom_row - legend.y1 < half_inch


def _page(lesions: np.ndarray) -> str:
    part = {"lung_ml": 100.0, "lesion_ml": 1.0, "lesion_percent": 1.0, "severity": 1,
            "class_ml": {"infection": 1.0}, "class_percent": {"infection": 1.0}}
    report = {"input": {"path": "chest.nii.gz", "kind": "nifti", "shape": list(lesions.shape),
                        "spacing_mm": [1.0, 1.0, 1.0], "sha256": "0" * 64},
              "model": {"name": "unet", "task": "binary"}, "figures": {s: part for s in ("right", "left", "total")},
              "warnings": [], "seconds": {"total": 1.0}}
    return report_html.render_report(report, np.full(lesions.shape, -800.0), True, lesions,
                                     np.ones(lesions.shape, np.uint8), BINARY, (1.0, 1.0, 1.0))


def test_the_page_s_montage_heading_says_which_slices_it_shows() -> None:
    lesions = np.zeros((20, 16, 16), np.int64)
    lesions[[3, 7, 8], 4:6, 4:6] = 1
    page = _page(lesions)
    assert "<h2>Axial slices with the most lesion (3 slices of 20, superior first)</h2>" in page
    assert report_html.montage_slices(lesions) == [3, 7, 8]


def test_a_page_without_lesion_does_not_call_its_slices_those_with_the_most_lesion() -> None:
    page = _page(np.zeros((20, 16, 16), np.int64))
    assert "most lesion" not in page
    assert "<h2>Axial slices: no lesion found (12 slices of 20 spread over the scan, superior first)</h2>" in page
    assert _page(np.zeros((1, 16, 16), np.int64)).count("(1 slice of 1 spread over the scan") == 1


def test_a_one_image_evaluation_is_titled_in_the_singular(tiny_run: Path, tmp_path: Path) -> None:
    from conftest import write_semiseg
    from covseg.cli import main

    one = write_semiseg(tmp_path / "one", n=1, seed=3)
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_run), "--data", str(one), "--split", "all", "-o", str(out), "--quiet"]) == 0
    title = (out / "metrics.md").read_text(encoding="utf-8").splitlines()[0]
    assert "· all (1 image) ·" in title, title
