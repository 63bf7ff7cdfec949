"""Session 73: the scan report page read as a radiologist reads it: readable class names, numbered montage tiles,
orientation and window notes, a thin scan's coronal reformat shown large enough to read."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from covseg import report_html
from covseg.labels import BINARY, MULTICLASS, class_title, overlay


def _part(names: tuple[str, ...], lung_ml: float = 100.0) -> dict:
    return {"lung_ml": lung_ml, "lesion_ml": 3.0, "lesion_percent": 3.0, "severity": 1,
            "class_ml": {n: 1.0 for n in names}, "class_percent": {n: 1.0 for n in names if n != "pleural_effusion"}}


def _report(scheme, shape: tuple[int, int, int], kind: str = "nifti") -> dict:
    part = _part(scheme.names[1:])
    return {"input": {"path": "chest.nii.gz", "kind": kind, "shape": list(shape), "spacing_mm": [1.0, 1.0, 1.0],
                      "sha256": "0" * 64},
            "model": {"name": "unet", "task": scheme.task}, "figures": {"right": part, "left": part, "total": part},
            "warnings": [], "seconds": {"total": 1.0}}


def _render(scheme=BINARY, lesions: np.ndarray | None = None, lungs: np.ndarray | None = None,
            spacing=(1.0, 1.0, 1.0), kind: str = "nifti", is_hu: bool = True, shape=(6, 16, 16)) -> str:
    lesions = np.zeros(shape, np.int64) if lesions is None else lesions
    lungs = np.ones(lesions.shape, np.uint8) if lungs is None else lungs
    return report_html.render_report(_report(scheme, lesions.shape, kind), np.full(lesions.shape, -800.0), is_hu,
                                     lesions, lungs, scheme, spacing)


def _text(page: str) -> str:
    """The page without its embedded images (whose base64 could hold any letters)."""
    return re.sub(r"data:image/png;base64,[^\"]+", "", page)


def _embedded(page: str, alt: str) -> np.ndarray:
    uri = re.search(rf'<img alt="{alt}" src="data:image/png;base64,([^"]+)"', page).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))


# --- class names --------------------------------------------------------------------------------------------------

def test_class_titles_spell_out_ggo_and_drop_underscores() -> None:
    assert class_title("ggo") == "ground-glass opacity"
    assert class_title("pleural_effusion") == "pleural effusion"
    assert class_title("consolidation") == "consolidation"
    assert class_title("infection") == "infection"
    assert class_title("some_new_class") == "some new class"


def test_a_multiclass_page_names_its_classes_readably_in_table_key_and_bars(monkeypatch) -> None:
    drawn = []
    real = report_html._fig_uri
    monkeypatch.setattr(report_html, "_fig_uri", lambda fig: drawn.append(fig) or real(fig))
    text = _text(_render(MULTICLASS))
    assert ("<th>ground-glass opacity</th><th>consolidation</th><th>pleural effusion</th>\n<th>all lung lesions</th>"
            in text)
    assert '<span style="background:rgb(255, 215, 0);padding:0 .6em"></span> ground-glass opacity ' in text
    assert "ggo" not in text and "pleural_effusion" not in text
    legend = drawn[0].axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["ground-glass opacity", "consolidation"]


def test_the_page_names_the_input_kind_in_words() -> None:
    assert "(NIfTI file, 6 slices," in _render(kind="nifti")
    assert "(DICOM series, 6 slices," in _render(kind="dicom")
    assert "(stack of 2-D images, 6 slices," in _render(kind="images")


def test_the_page_says_what_its_percentages_and_grey_values_are() -> None:
    page = _text(_render())
    assert "A percentage beside a volume is of the volume of the lung on its row (both lungs': of the two together)." \
        in page
    assert "; the CT is shown in the lung window (level -600 HU, width 1500 HU).</p>" in page
    assert "; the CT is not in Hounsfield units: its grey values are shown from their 1st to 99th percentile.</p>" \
        in _text(_render(is_hu=False))


# --- montage slice numbers ----------------------------------------------------------------------------------------

def _lesions_on(slices: dict[int, int], shape=(6, 80, 80)) -> np.ndarray:
    """Lesion label 1 on ``slices`` (z -> area in pixels, along the middle row)."""
    lesions = np.zeros(shape, np.int64)
    for z, area in slices.items():
        lesions[z, shape[1] // 2, :area] = 1
    return lesions


def test_montage_tiles_carry_slice_numbers_of_the_scan_in_their_corners(monkeypatch) -> None:
    grey = np.full((6, 80, 80), 0.3)
    lesions = _lesions_on({1: 3, 2: 2, 4: 1})  # shown superior first: slices z 4, 2, 1 -> numbers 5, 3, 2 of 6
    calls = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **k: calls.append((xy, text)) or real(self, xy, text, *a, **k))
    montage = report_html.axial_montage(grey, lesions, BINARY)
    pad = 2  # round(80 / 14) = 6 px font, raised to 11; pad = max(2, 11 // 4)
    assert calls == [((pad, pad), "5/6"), ((80 + pad, pad), "3/6"), ((160 + pad, pad), "2/6")]
    assert montage.shape == (80, 240, 3)
    # drawn in white on a black outline into the slice's grey 76 (0.3 of 255), in the corner only: the tile's lower
    # half is the slice's overlay unchanged
    tile = overlay(grey[2], lesions[2], BINARY)
    assert np.all(tile[:20, :40] == 76)
    assert montage[:20, 80:120].max() > 200 and montage[:20, 80:120].min() < 30  # anti-aliased: near white, black
    np.testing.assert_array_equal(montage[40:, 80:160], tile[40:])


def test_a_scaled_down_montage_numbers_each_tile_where_it_lands(monkeypatch) -> None:
    calls = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text",
                        lambda self, xy, text, *a, **k: calls.append((xy, text)) or real(self, xy, text, *a, **k))
    grey = np.zeros((5, 100, 500))
    montage = report_html.axial_montage(grey, np.zeros((5, 100, 500), np.int64), BINARY)
    # 5 slices spread over the scan, 4 per row: 2000 x 200 pixels scaled by 0.8 to 1600 x 160; tiles 400 x 80,
    # font round(400 / 14) = 29 -> 28 px, pad 7
    assert montage.shape == (160, 1600, 3)
    assert calls == [((7, 7), "5/5"), ((407, 7), "4/5"), ((807, 7), "3/5"), ((1207, 7), "2/5"), ((7, 87), "1/5")]


def test_tiles_too_small_for_a_legible_number_are_left_as_they_are() -> None:
    grey = np.full((3, 31, 90), 0.5)  # 31 rows: under the 32 a number needs
    montage = report_html.axial_montage(grey, np.zeros((3, 31, 90), np.int64), BINARY)
    assert np.array_equal(montage[:, :90], overlay(grey[2], np.zeros((31, 90), np.int64), BINARY))
    assert np.all(montage == montage[0, 0])


def test_the_page_lists_the_montage_s_slice_numbers_and_its_orientation() -> None:
    page = _text(_render(lesions=_lesions_on({1: 3, 2: 2, 4: 1}, (6, 16, 16))))
    assert ("<p class=\"note\">Slices left to right, then down: 5, 3, 2 (slice 1 is the most inferior of the scan's 6, "
            "slice 6 the most superior). Each slice is shown anterior up, the patient's right on the viewer's left.</p>"
            in page)


# --- the coronal reformat -----------------------------------------------------------------------------------------

def test_a_thin_scan_s_coronal_reformat_is_shown_800_pixels_wide() -> None:
    lesions = np.zeros((8, 4, 256), np.int64)
    page = _render(lesions=lesions, spacing=(5.0, 0.7, 0.7))
    view = _embedded(page, "coronal view")
    assert view.shape[:2] == (57, 256)  # 8 slices x 5 mm / 0.7 mm = 57.1 rows, one pixel per column: a flat strip
    assert re.search(r'<img alt="coronal view" src="[^"]+" width="800">', page)


@pytest.mark.parametrize(("shape", "spacing", "width"), [
    ((100, 4, 64), (2.0, 1.0, 1.0), 205),  # 200 rows x 64: 640 tall at 640 * 64 / 200 = 204.8 CSS pixels wide
    ((10, 4, 100), (1.0, 1.0, 1.0), 800),  # 10 x 100: 800 wide, 80 tall
    ((50, 4, 40), (1.0, 1.0, 1.0), 512),  # 50 x 40: 640 / 50 * 40 = 512 wide
])
def test_the_coronal_reformat_is_800_wide_or_640_tall_at_its_own_proportions(shape, spacing, width) -> None:
    page = _render(lesions=np.zeros(shape, np.int64), spacing=spacing)
    assert f'" width="{width}">' in page


def test_the_coronal_note_names_the_row_it_cuts_through() -> None:
    lungs = np.zeros((3, 6, 8), np.uint8)
    lungs[:, 1:3, 2:6] = 1  # lung rows 1 and 2: the mean 1.5 rounded down, row 1 (0-based), the second from the front
    page = _text(_render(lesions=np.zeros((3, 6, 8), np.int64), lungs=lungs))
    assert ("<p class=\"note\">Through the lungs' centre front to back: row 2 of 6, counted from the front. "
            "Superior at the top, the patient's right on the viewer's left, at true proportions.</p>") in page
    assert report_html.coronal_row(lungs) == 1
    empty = _text(_render(lesions=np.zeros((3, 6, 8), np.int64), lungs=np.zeros((3, 6, 8), np.uint8)))
    assert "Through the middle of the scan front to back (no lung found): row 4 of 6, counted from the front." in empty


# --- the bar chart ------------------------------------------------------------------------------------------------

def _bar_axes(monkeypatch, percent: float):
    drawn = []
    real = report_html._fig_uri
    monkeypatch.setattr(report_html, "_fig_uri", lambda fig: drawn.append(fig) or real(fig))
    report = _report(BINARY, (6, 16, 16))
    for side in ("right", "left", "total"):
        report["figures"][side]["class_percent"] = {"infection": percent}
    report_html.render_report(report, np.full((6, 16, 16), -800.0), True, np.zeros((6, 16, 16), np.int64),
                              np.ones((6, 16, 16), np.uint8), BINARY, (1.0, 1.0, 1.0))
    return drawn[0].axes[0]


def test_a_bar_chart_without_lesion_has_no_negative_percentages_and_says_why_it_is_empty(monkeypatch) -> None:
    ax = _bar_axes(monkeypatch, 0.0)
    assert ax.get_ylim() == (0.0, 1.0)  # not matplotlib's -0.055..0.055 around bars of height 0
    assert [t.get_text() for t in ax.texts] == ["no lung lesion found"]
    ax = _bar_axes(monkeypatch, 2.5)
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] > 2.5 and not ax.texts


def test_each_scheme_titles_its_classes_for_figures() -> None:
    assert MULTICLASS.titles == ("background", "ground-glass opacity", "consolidation", "pleural effusion")
    assert BINARY.titles == ("background", "infection")
