"""Session 75: the scan page and training curves read as a user reads them: a 1-epoch run's curves on a whole-epoch
axis, and a lung of under 0.5 mL not shown as the "0 mL" of a lung that is not assessed."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import covseg.figures as figures
from covseg import report_html
from covseg.labels import BINARY

pytestmark = pytest.mark.real_figures  # these tests check the figures themselves, drawn


@pytest.mark.parametrize("epoch", [1, 3])
def test_a_single_epoch_s_curves_have_a_tick_at_that_epoch_only(epoch: int, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # `covseg train ... train.epochs=1` (or one epoch trained on a resume): the x axis spans 0.945-1.055, where
    # MaxNLocator(integer=True) found fewer than 2 integers and ticked 0.945, 0.96, ... as if epochs were fractions
    drawn: list = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    history = [{"epoch": epoch, "train_loss": 2.0, "train_acc": 0.6, "val_loss": 2.3, "val_acc": 0.1, "val_dice": 0.02}]
    figures.plot_curves(history, tmp_path / "curves.png")
    for ax in drawn[0].axes[:2]:
        low, high = ax.get_xlim()
        assert [float(t) for t in ax.get_xticks() if low <= t <= high] == [float(epoch)]


def _part(lung_ml: float, severity: int | None) -> dict:
    return {"lung_ml": lung_ml, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": severity,
            "class_ml": {"infection": 0.0}, "class_percent": {"infection": 0.0}}


def _page(figs: dict) -> str:
    report = {"input": {"path": "chest.nii.gz", "kind": "nifti", "shape": [2, 16, 16], "spacing_mm": [1.0, 1.0, 1.0],
                        "sha256": "0" * 64},
              "model": {"name": "unet", "task": "binary"}, "figures": figs, "warnings": [], "seconds": {"total": 1.0}}
    shape = (2, 16, 16)
    return report_html.render_report(report, np.full(shape, -800.0), True, np.zeros(shape, np.int64),
                                     np.ones(shape, np.uint8), BINARY, (1.0, 1.0, 1.0))


def test_a_lung_of_under_half_a_millilitre_is_not_shown_as_0_ml_beside_its_severity() -> None:
    # a model that calls nearly all of a lung effusion leaves 0.06 mL of it, shown as 0.1 mL: "0 mL" beside
    # severity 0 read as the empty lung that the page marks n/a
    page = _page({"right": _part(0.0588, 0), "left": _part(0.0, None), "total": _part(0.0588, 0)})
    assert "<tr><th>Right lung</th><td>0.1 mL</td>" in page
    assert "<tr><th>Left lung</th><td>0 mL</td>" in page  # no lung at all: 0, and n/a beside it
    assert "<tr><th>Both lungs</th><td>0.1 mL</td>" in page


def test_a_lung_s_volume_is_still_shown_in_whole_millilitres() -> None:
    page = _page({"right": _part(2345.4, 0), "left": _part(2100.6, 0), "total": _part(4446.0, 0)})
    assert "<tr><th>Right lung</th><td>2345 mL</td>" in page
    assert "<tr><th>Left lung</th><td>2101 mL</td>" in page
    assert "<tr><th>Both lungs</th><td>4446 mL</td>" in page
