"""Mutation-testing gaps of covseg.scan (segment_scan's reading, batching, warnings, defaults) and covseg.report_html
(montage order, coronal row, multiclass table / bar chart / colour key).

Every expectation is worked out by hand on tiny hand-made volumes; the lung mask and the body's midline are replaced
by known ones where the scan's own reading is not what is tested, and figures are caught rather than read back.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

import covseg.scan as scan
from covseg import report_html
from covseg.errors import CovsegError
from covseg.labels import BINARY, MULTICLASS
from covseg.scan import ScanOptions, segment_scan
from covseg.volumes import Volume

LESION_HU, TISSUE_HU = 100.0, -800.0  # the stand-in model calls a pixel lesion where the lung window reads > 0.95


def _volume(hu: np.ndarray, spacing=(2.5, 1.0, 1.0), is_hu: bool = True, warnings=()) -> Volume:
    return Volume(hu=np.asarray(hu, np.float32), spacing=spacing, affine=np.eye(4), input_affine=np.eye(4),
                  input_shape=hu.shape, input_ornt=np.array([[0, 1], [1, 1], [2, 1]]), is_hu=is_hu,
                  warnings=list(warnings))


class _Recorder:
    """A stand-in binary model: lesion where the windowed crop reads > 0.95; records each call's crops."""

    def __init__(self, batch_size: int = 2) -> None:
        self.batch_size = batch_size
        self.calls: list[list[np.ndarray]] = []

    def __call__(self, crops):
        self.calls.append([np.array(c) for c in crops])
        return [np.stack([c <= 0.95, c > 0.95]).astype(np.float32) for c in crops]


def _fix_mask(monkeypatch, lungs: np.ndarray, seen: list | None = None) -> None:
    """segment_scan gets ``lungs`` as its lung mask and the image's middle column as the midline; the arrays the
    scan hands to lung_mask and body_midline are appended to ``seen``."""
    def mask(h, s):
        if seen is not None:
            seen.append(("lung_mask", np.array(h)))
        return lungs.copy()

    def midline(h, s):
        if seen is not None:
            seen.append(("body_midline", np.array(h)))
        return lungs.shape[2] / 2.0

    monkeypatch.setattr(scan, "lung_mask", mask)
    monkeypatch.setattr(scan, "body_midline", midline)


def _two_lungs(z: int = 2, h: int = 10, w: int = 30) -> np.ndarray:
    lungs = np.zeros((z, h, w), np.uint8)
    lungs[:, 2:8, 2:10] = 1
    lungs[:, 2:8, 20:28] = 2
    return lungs


# --- segment_scan ---------------------------------------------------------------------------------------------------

def test_grey_images_are_taken_as_windowed_by_the_given_window_and_handed_back_to_the_model_unchanged(monkeypatch):
    # window level -500, width 1000: grey g stands for g * 1000 - 1000 HU (0.5 -> -500 HU, 0.98 -> -20 HU), and the
    # model, reading the scan through that same window, sees the stored grey values again
    lungs = _two_lungs()
    grey = np.full(lungs.shape, 0.5)
    grey[:, 3:7, 4:7] = 0.98
    seen: list = []
    _fix_mask(monkeypatch, lungs, seen)
    model = _Recorder()
    segment_scan(_volume(grey, is_hu=False), model, BINARY, ScanOptions(window=(-500.0, 1000.0)), progress=False)
    assert [name for name, _ in seen] == ["lung_mask", "body_midline"]
    for _, hu in seen:
        np.testing.assert_allclose(hu, grey * 1000.0 - 1000.0, atol=1e-3)
    crops = [c for call in model.calls for c in call]
    assert len(crops) == 2
    for crop in crops:  # both lungs plus 10 mm: the whole 10 x 30 slice
        np.testing.assert_allclose(crop, grey[0], atol=1e-5)


def test_hu_crops_are_read_through_the_options_window(monkeypatch):
    lungs = _two_lungs(z=1)
    hu = np.full(lungs.shape, -500.0)
    _fix_mask(monkeypatch, lungs)
    model = _Recorder()
    segment_scan(_volume(hu), model, BINARY, ScanOptions(window=(0.0, 2000.0)), progress=False)
    # (-500 - (0 - 1000)) / 2000 = 0.25; the default lung window would read 0.567
    np.testing.assert_allclose(model.calls[0][0], np.full((10, 30), 0.25), atol=1e-6)


def test_slices_go_to_the_model_in_batches_and_each_prediction_lands_on_its_own_slice(monkeypatch):
    lungs = _two_lungs(z=5)
    hu = np.full(lungs.shape, TISSUE_HU)
    for z in range(5):  # slice z: a lesion of z + 1 columns, all in the right lung, growing with z
        hu[z, 3:7, 3:4 + z] = LESION_HU
    _fix_mask(monkeypatch, lungs)
    model = _Recorder(batch_size=2)
    result = segment_scan(_volume(hu), model, BINARY, ScanOptions(min_lesion_ml=0.0), progress=False)
    assert [len(call) for call in model.calls] == [2, 2, 1]
    assert result.slices_segmented == 5
    assert [int(result.lesions[z].sum()) for z in range(5)] == [4, 8, 12, 16, 20]
    assert (result.lesions == (hu == LESION_HU)).all()


def test_a_dropped_volume_of_a_tenth_of_a_ml_or_more_reads_with_one_decimal(monkeypatch):
    lungs = _two_lungs(z=5, w=40)
    lungs[lungs == 2] = 0
    lungs[:, 2:8, 30:38] = 2  # left lung moved right: columns 10..29 free between the lungs
    hu = np.full(lungs.shape, TISSUE_HU)
    hu[:, 5, 14:25] = LESION_HU  # 5 slices x 11 voxels = 55 voxels of 2.5 mm^3: 0.1375 mL, 4 columns from any lung
    _fix_mask(monkeypatch, lungs)
    result = segment_scan(_volume(hu), _Recorder(), BINARY, progress=False)  # default options: 0.1375 >= 0.05 mL
    assert not result.lesions.any()
    assert [w for w in result.warnings if "dropped" in w] == [
        "0.1 mL of lesion not touching the lung mask was dropped; --keep-outside-lungs keeps it"]


def test_no_progress_bar_unless_asked_for_and_it_counts_slices(monkeypatch, capsys):
    lungs = _two_lungs(z=3)
    hu = np.full(lungs.shape, TISSUE_HU)
    _fix_mask(monkeypatch, lungs)
    capsys.readouterr()
    segment_scan(_volume(hu), _Recorder(batch_size=2), BINARY, progress=False)
    assert capsys.readouterr().err == ""
    segment_scan(_volume(hu), _Recorder(batch_size=2), BINARY, progress=True)
    err = capsys.readouterr().err
    assert "lesions" in err and "3/3" in err


def test_the_default_crop_is_the_lungs_box_plus_10_mm(monkeypatch):
    lungs = np.zeros((1, 80, 80), np.uint8)
    lungs[0, 30:40, 20:30], lungs[0, 30:40, 50:60] = 1, 2
    _fix_mask(monkeypatch, lungs)
    model = _Recorder()
    segment_scan(_volume(np.full(lungs.shape, TISSUE_HU), spacing=(2.5, 1.0, 0.5)), model, BINARY, progress=False)
    # rows 30..39 +- 10 rows (1 mm), columns 20..59 +- 20 columns (0.5 mm): rows 20..49, columns 0..79
    assert model.calls[0][0].shape == (30, 80)
    lungs = np.zeros((1, 80, 80), np.uint8)
    lungs[0, 30:40, 30:38], lungs[0, 30:40, 42:50] = 1, 2
    _fix_mask(monkeypatch, lungs)
    model = _Recorder()
    segment_scan(_volume(np.full(lungs.shape, TISSUE_HU)), model, BINARY, progress=False)
    assert model.calls[0][0].shape == (30, 40)  # rows 20..49, columns 20..59


def test_lesions_are_kept_from_0_05_ml_by_default(monkeypatch):
    lungs = _two_lungs(z=2, h=12)
    lungs[:, 2:11, 2:10] = 1
    hu = np.full(lungs.shape, TISSUE_HU)
    hu[:, 3:5, 3:8] = LESION_HU  # right lung: 2 x 2 x 5 = 20 voxels of 2.5 mm^3 = 0.05 mL exactly: kept
    hu[:, 3:5, 22:24] = LESION_HU  # left lung: 2 x 2 x 2 = 8 voxels = 0.02 mL: removed
    _fix_mask(monkeypatch, lungs)
    result = segment_scan(_volume(hu), _Recorder(), BINARY, progress=False)
    assert int(result.lesions.sum()) == 20 and result.lesions[:, 3:5, 3:8].all()
    assert result.figures["left"]["lesion_ml"] == 0.0
    assert result.figures["right"]["lesion_ml"] == pytest.approx(0.05)


def test_a_spacing_in_metres_is_refused_before_the_lung_mask_is_made(monkeypatch):
    def never(h, s):
        raise AssertionError("the lung mask was started on a volume in metres")

    monkeypatch.setattr(scan, "lung_mask", never)
    volume = _volume(np.full((2, 8, 8), TISSUE_HU), spacing=(0.0025, 0.0009, 0.0009))
    with pytest.raises(CovsegError, match="they look like metres"):
        segment_scan(volume, _Recorder(), BINARY, progress=False)


# --- report_html ----------------------------------------------------------------------------------------------------

def _slices(values: list[float], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[:, None, None] * np.ones((1, *shape))


def test_the_montage_orders_its_picks_by_slice_not_by_lesion_area():
    grey = _slices([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])  # slice z reads int(z * 25.5) where it holds no lesion
    lesions = np.zeros((6, 4, 4), np.int64)
    lesions[1, 3, :1], lesions[2, 3, :3], lesions[4, 3, :2] = 1, 1, 1  # areas 1, 3 and 2: most lesion in slice 2
    m = report_html.axial_montage(grey, lesions, BINARY, n=3)
    assert m.shape == (4, 12, 3) and [int(m[0, x, 0]) for x in (0, 4, 8)] == [102, 51, 25]  # slices 4, 2, 1
    m = report_html.axial_montage(grey, lesions, BINARY, n=2)  # the two with most lesion: 2 and 4
    assert [int(m[0, x, 0]) for x in (0, 4)] == [102, 51]


def test_the_coronal_view_takes_the_centre_of_the_lungs_rows_not_columns():
    z, y = np.meshgrid(np.arange(3), np.arange(6), indexing="ij")
    grey = np.repeat(((z * 6 + y) / 20.0)[..., None], 8, axis=2)  # (3, 6, 8): each (z, y) row its own grey
    lesions = np.zeros((3, 6, 8), np.int64)
    lungs = np.zeros((3, 6, 8), np.uint8)
    lungs[:, 0:2, 4:7] = 1  # rows 0..1: centre int(0.5) = 0; columns 4..6 (centre 5) and the middle row 3 differ
    view = report_html.coronal_view(grey, lesions, lungs, BINARY, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(view[:, 0, 0], (np.clip(grey[::-1, 0, 0], 0, 1) * 255).astype(np.uint8))


def test_a_coronal_view_thinner_than_half_a_pixel_is_one_row_high():
    # 2 slices of 0.2 mm under 1 mm columns: 0.4 rows, shown as 1 (an image 0 rows high cannot be drawn)
    view = report_html.coronal_view(np.zeros((2, 4, 5)), np.zeros((2, 4, 5), np.int64), np.ones((2, 4, 5), np.uint8),
                                    BINARY, (0.2, 1.0, 1.0))
    assert view.shape == (1, 5, 3)


def _multiclass_report() -> dict:
    def part(ggo, cons, eff, lung=100.0):
        return {"lung_ml": lung, "lesion_ml": ggo + cons, "lesion_percent": ggo + cons, "severity": 2,
                "class_ml": {"ggo": ggo, "consolidation": cons, "pleural_effusion": eff},
                "class_percent": {"ggo": ggo, "consolidation": cons}}

    return {"input": {"path": "chest.nii.gz", "kind": "nifti", "shape": [2, 16, 16], "spacing_mm": [1.0, 1.0, 1.0],
                      "sha256": "0" * 64},
            "model": {"name": "unet", "task": "multiclass"},
            "figures": {"right": part(6.0, 4.0, 2.5), "left": part(8.0, 2.0, 0.0), "total": part(7.0, 3.0, 2.5, 200.0)},
            "warnings": [], "seconds": {"total": 1.0}}


def test_a_multiclass_page_shows_effusion_as_a_volume_only_with_bars_and_key_of_each_class(monkeypatch):
    drawn = []
    real = report_html._fig_uri
    monkeypatch.setattr(report_html, "_fig_uri", lambda fig: drawn.append(fig) or real(fig))
    lungs = np.ones((2, 16, 16), np.uint8)
    page = report_html.render_report(_multiclass_report(), np.full((2, 16, 16), -800.0), True,
                                     np.zeros((2, 16, 16), np.int64), lungs, MULTICLASS, (1.0, 1.0, 1.0))
    assert ("<tr><th>Right lung</th><td>100 mL</td><td>6.0 mL (6.0 %)</td><td>4.0 mL (4.0 %)</td><td>2.5 mL</td>"
            "<td>10.0 mL (10.0 %)</td><td>2</td></tr>") in page
    assert ('<span style="background:rgb(255, 215, 0);padding:0 .6em"></span> ground-glass opacity '
            '<span style="background:rgb(255, 64, 64);padding:0 .6em"></span> consolidation '
            '<span style="background:rgb(64, 160, 255);padding:0 .6em"></span> pleural effusion; ') in page
    assert "rgb(0, 0, 0)" not in page and "background</th>" not in page
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ground-glass opacity", "consolidation"]  # no effusion bar
    assert ax.get_ylabel() == "% of lung volume"
    bars = ax.patches
    # ggo on the right, left and both lungs, then consolidation
    assert [round(b.get_height(), 6) for b in bars] == [6.0, 8.0, 7.0, 4.0, 2.0, 3.0]
    # two classes: bars 0.4 wide, ggo's centred 0.2 left of each tick, consolidation's 0.2 right of it
    assert [round(b.get_x() + b.get_width() / 2, 6) for b in bars] == [-0.2, 0.8, 1.8, 0.2, 1.2, 2.2]
    assert all(b.get_width() == pytest.approx(0.4) for b in bars)
    colours = [tuple(round(v * 255) for v in b.get_facecolor()[:3]) for b in bars]
    assert colours == [(255, 215, 0)] * 3 + [(255, 64, 64)] * 3  # each class in its overlay colour


def test_a_montage_just_over_1600_pixels_wide_is_scaled_down_to_1600():
    # 4 tiles of 410 columns: 1640 wide, scaled by 1600 / 1640 to 1600 x int(10 * 0.9756) = 9 rows
    wide = report_html.axial_montage(np.zeros((4, 10, 410)), np.zeros((4, 10, 410), np.int64), BINARY)
    assert wide.shape == (9, 1600, 3)
    exact = report_html.axial_montage(np.zeros((4, 10, 400)), np.zeros((4, 10, 400), np.int64), BINARY)
    assert exact.shape == (10, 1600, 3)  # 1600 wide already: left as it is
