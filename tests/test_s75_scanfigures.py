"""Session 75, scan figures a reader can trust. A lung mask that missed the lungs (a lung crop whose lungs touch the
image border, read as outside air: the mask keeps an airway) made the model's lesions around it the lungs, and the
scan read "93.5 % of 67 mL lung, severity 5": a side whose counted lung is more than half lesion outside the mask is
now named in ``figures.unreliable``, a warning and report.html. A share of no lung (a side missing from the mask) is
None / "n/a", as its severity, not 0 %. Every figure is counted by hand."""
from __future__ import annotations

import re

import numpy as np
import pytest

import covseg.scan as scan
from covseg import report_html
from covseg.labels import BINARY, MULTICLASS
from covseg.quantify import percent_text, quantify
from covseg.scan import segment_scan
from covseg.volumes import Volume

CM = (10.0, 10.0, 10.0)  # 1 cm voxels: 1 mL each, every volume a whole number of mL


def _mostly_outside() -> tuple[np.ndarray, np.ndarray]:
    """(lesions, lungs) ``(1, 4, 10)``, binary; midline at column 4.5 (right: columns 0-4).

    right: mask 2 voxels (row 0, columns 0-1), lesion 3 outside it (row 1, columns 0-2): lung 5, lesion 3 = 60 %;
    left: mask 5 (row 0, columns 5-9), lesion 5 outside it (row 1, columns 5-9): lung 10, lesion 5 = 50 %.
    """
    lungs = np.zeros((1, 4, 10), np.uint8)
    lungs[0, 0, 0:2], lungs[0, 0, 5:10] = 1, 2
    lesions = np.zeros(lungs.shape, np.uint8)
    lesions[0, 1, 0:3] = 1
    lesions[0, 1, 5:10] = 1
    return lesions, lungs


def test_a_side_whose_lung_is_mostly_lesion_outside_the_mask_is_named_unreliable() -> None:
    lesions, lungs = _mostly_outside()
    f = quantify(lesions, lungs, CM, {1: "infection"}, midline_x=4.5)
    assert f["lesion_outside_mask_ml"] == pytest.approx(8.0)
    assert f["right"]["lung_ml"] == pytest.approx(5.0) and f["right"]["lesion_percent"] == pytest.approx(60.0)
    assert f["left"]["lung_ml"] == pytest.approx(10.0) and f["left"]["lesion_percent"] == pytest.approx(50.0)
    # right: 3 outside > 2 in the mask; left: 5 outside = 5 in the mask, not more than half: not named
    assert f["unreliable"] == ["right lung: 3.0 of its 5.0 mL is lesion outside the lung mask, which holds 2.0 mL"]
    lesions[0, 2, 5] = 1  # one more outside on the left: 6 of 11 > 5
    f = quantify(lesions, lungs, CM, {1: "infection"}, midline_x=4.5)
    assert f["unreliable"] == ["right lung: 3.0 of its 5.0 mL is lesion outside the lung mask, which holds 2.0 mL",
                               "left lung: 6.0 of its 11.0 mL is lesion outside the lung mask, which holds 5.0 mL"]


def test_lesion_inside_the_mask_or_effusion_outside_it_leaves_the_figures_trusted() -> None:
    lungs = np.zeros((1, 4, 10), np.uint8)
    lungs[0, :, 0:3], lungs[0, :, 6:9] = 1, 2  # 12 voxels each
    lesions = np.zeros(lungs.shape, np.uint8)
    lesions[0, :, 0:3] = 1  # the whole right lung, in the mask: 100 %, but measured
    lesions[0, :, 9] = 3  # effusion outside the left mask: never lung, never lesion
    f = quantify(lesions, lungs, CM, dict(enumerate(MULTICLASS.names)), MULTICLASS.pleural, midline_x=4.5)
    assert f["right"]["lesion_percent"] == 100.0 and f["right"]["severity"] == 5
    assert f["left"]["class_ml"]["pleural_effusion"] == pytest.approx(4.0)
    assert f["unreliable"] == []


def test_a_share_of_no_lung_is_none_as_its_severity() -> None:
    """Mask: right lung only, ``(1, 2, 10)`` columns 0-3 (8 voxels). GGO 2 and consolidation 1 in it: 3 of 8 =
    37.5 % (GGO 25 %, consolidation 12.5 %); effusion 2 voxels on the left (column 8), which has no lung."""
    lungs = np.zeros((1, 2, 10), np.uint8)
    lungs[0, :, 0:4] = 1
    lesions = np.zeros(lungs.shape, np.uint8)
    lesions[0, 0, 0:2], lesions[0, 1, 0], lesions[0, :, 8] = 1, 2, 3
    f = quantify(lesions, lungs, CM, dict(enumerate(MULTICLASS.names)), MULTICLASS.pleural)
    right, left = f["right"], f["left"]
    assert right["lesion_percent"] == 37.5 and right["severity"] == 3
    assert right["class_percent"] == {"ggo": 25.0, "consolidation": 12.5}
    assert left["lung_ml"] == 0.0 and left["severity"] is None and left["lesion_percent"] is None
    assert left["class_percent"] == {"ggo": None, "consolidation": None}
    assert left["class_ml"] == pytest.approx({"ggo": 0.0, "consolidation": 0.0, "pleural_effusion": 2.0})
    assert f["total"]["lesion_percent"] == 37.5 and f["unreliable"] == []
    from covseg.quantify import share_text  # new in session 75

    assert percent_text(None) == "n/a" and share_text(None, None) == "n/a"
    assert share_text(4.97, 1) == "4.97 %" and share_text(12.5, decimals=2) == "12.50 %"

    report = {"input": {"path": "chest.nii.gz", "kind": "nifti", "shape": list(lesions.shape),
                        "spacing_mm": list(CM), "sha256": "0" * 64},
              "model": {"name": "unet", "task": "multiclass"}, "figures": f, "warnings": [], "seconds": {"total": 1.0}}
    page = report_html.render_report(report, np.full(lesions.shape, -800.0), True, lesions, lungs, MULTICLASS, CM)
    page = re.sub(r"data:image/png;base64,[^\"]+", "", page)
    left_row = re.search(r"<tr><th>Left lung</th>.*?</tr>", page).group(0)
    assert left_row == ("<tr><th>Left lung</th><td>0 mL</td><td>0.0 mL (n/a)</td><td>0.0 mL (n/a)</td>"
                        "<td>2.0 mL</td><td>0.0 mL (n/a)</td><td>n/a</td></tr>")
    table = page[page.index("<h2>Figures</h2>"):page.index("</table>")]
    assert "<td>3.0 mL (37.5 %)</td><td>3</td>" in table and "None" not in table
    assert "unreliable" not in page


def test_the_report_page_says_plainly_which_figures_are_unreliable() -> None:
    lesions, lungs = _mostly_outside()
    f = quantify(lesions, lungs, CM, {1: "infection"}, midline_x=4.5)
    report = {"input": {"path": "crop", "kind": "images", "shape": list(lesions.shape), "spacing_mm": list(CM),
                        "sha256": "0" * 64},
              "model": {"name": "unet", "task": "binary"}, "figures": f, "warnings": [], "seconds": {"total": 1.0}}
    page = report_html.render_report(report, np.full(lesions.shape, -800.0), True, lesions, lungs, BINARY, CM)
    figures = page[page.index("<h2>Figures</h2>"):page.index("<table>")]
    assert "<b>These figures are unreliable</b>" in figures
    assert "<li>right lung: 3.0 of its 5.0 mL is lesion outside the lung mask, which holds 2.0 mL</li>" in figures


def test_segment_scan_warns_when_the_mask_missed_a_lung(monkeypatch) -> None:
    """2 slices x 4 rows x 10 columns of 5 x 4 x 2.5 mm = 0.05 mL. Mask: right lung row 0, column 1 (2 voxels: an
    airway, say), left columns 6-8 (24). The model finds columns 0 and 2 (16 voxels, touching the right mask) and 3
    voxels in the left mask. Right: lung 18 = 0.9 mL, of which 16 = 0.8 mL outside the 0.1 mL mask (88.9 %, severity
    5); left: 3 of 24 = 12.5 % (severity 2)."""
    lungs = np.zeros((2, 4, 10), np.uint8)
    lungs[:, 0, 1], lungs[:, :, 6:9] = 1, 2
    truth = np.zeros(lungs.shape, np.int64)
    truth[:, :, 0], truth[:, :, 2] = 1, 1
    truth[0, 0:3, 7] = 1
    monkeypatch.setattr(scan, "lung_mask", lambda h, s: lungs.copy())
    monkeypatch.setattr(scan, "body_midline", lambda h, s: 4.5)

    class Oracle:  # the truth of each slice (every crop is the whole slice: the lungs' box + 10 mm)
        batch_size = 8

        def __call__(self, crops):
            assert [c.shape for c in crops] == [(4, 10), (4, 10)]
            return [np.moveaxis(np.eye(2)[truth[z]], -1, 0) for z in range(2)]

    volume = Volume(hu=np.full(lungs.shape, -800.0, np.float32), spacing=(5.0, 4.0, 2.5), affine=np.eye(4),
                    input_affine=np.eye(4), input_shape=lungs.shape, input_ornt=np.array([[0, 1], [1, 1], [2, 1]]))
    result = segment_scan(volume, Oracle(), BINARY, scan.ScanOptions(min_lesion_ml=0.0), progress=False)
    f = result.figures
    assert f["right"]["lung_ml"] == pytest.approx(0.9) and f["right"]["lesion_percent"] == pytest.approx(1600 / 18)
    assert f["right"]["severity"] == 5 and f["left"]["lesion_percent"] == 12.5 and f["left"]["severity"] == 2
    why = "right lung: 0.8 of its 0.9 mL is lesion outside the lung mask, which holds 0.1 mL"
    assert f["unreliable"] == [why]
    assert result.warnings[-1] == ("the figures are unreliable, the lung mask missing much of the lungs (check "
                                   f"lungs.nii.gz): {why}")
