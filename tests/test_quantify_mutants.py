"""Small hand-computed cases for covseg.quantify and covseg.scan that the other tests leave open (found by mutation
testing): refusals of bad input with their messages, the report dict's own fields, text of zero and fallback
percentages, crop boxes at the image's edges and with in-plane spacing that differs, and segment_scan's clean-up and
warnings on a hand-made mask (the lung mask and the midline are given, the model is a stand-in)."""
from __future__ import annotations

import numpy as np
import pytest

from covseg.quantify import nonzero_text, percent_text, quantify, restrict_to_lungs


# --- quantify: refusals ---------------------------------------------------------------------------------------------

def test_quantify_refuses_volumes_that_are_not_3d_and_names_a_shape_mismatch():
    with pytest.raises(ValueError, match="must be \\(Z, Y, X\\) volumes, got 2 dimensions"):
        quantify(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), (1.0, 1.0, 1.0), {1: "ggo"})
    with pytest.raises(ValueError, match="lesions and lungs differ in shape: \\(2, 4, 4\\) vs \\(2, 4, 5\\)"):
        quantify(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 5), np.uint8), (1.0, 1.0, 1.0), {1: "ggo"})


def test_quantify_refuses_a_float_label_map_and_lung_values_other_than_0_1_2():
    with pytest.raises(ValueError, match="integer label map, got float32"):
        quantify(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.uint8), (1.0, 1.0, 1.0), {1: "ggo"})
    lungs = np.ones((1, 2, 2), np.uint8)
    lungs[0, 0, 0] = 3
    with pytest.raises(ValueError, match="lung mask values \\[3\\] are not 0 / 1 \\(right\\) / 2 \\(left\\)"):
        quantify(np.zeros((1, 2, 2), np.uint8), lungs, (1.0, 1.0, 1.0), {1: "ggo"})


def test_restrict_to_lungs_refuses_a_shape_mismatch_and_a_2d_map():
    with pytest.raises(ValueError, match="labels and lungs differ in shape"):
        restrict_to_lungs(np.ones((1, 2, 3), np.uint8), np.ones((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="got 2 dimensions"):
        restrict_to_lungs(np.ones((2, 3), np.uint8), np.ones((2, 3), np.uint8))


# --- quantify: the report's own fields, with the background named as segment_scan names it ---------------------------

def test_quantify_report_fields_by_hand_with_a_named_background():
    # spacing (Z, Y, X) = (2, 0.5, 1) mm: one voxel is exactly 1 mm^3 = 0.001 mL
    lungs = np.zeros((1, 2, 8), np.uint8)
    lungs[0, :, 0:3] = 1  # right lung: 6 voxels
    lungs[0, :, 5:8] = 2  # left lung: 6 voxels
    lesions = np.zeros_like(lungs)
    lesions[0, 0, 0] = 1  # right: 1 GGO voxel
    lesions[0, :, 5] = 2  # left: 2 consolidation voxels
    lesions[0, 1, 7] = 3  # left: 1 effusion voxel inside the mask (taken in by its closing): neither lung nor lesion
    names = {0: "background", 1: "ggo", 2: "consolidation", 3: "pleural_effusion"}  # as segment_scan passes them
    result = quantify(lesions, lungs, (2.0, 0.5, 1.0), names, pleural=(3,))
    assert result["spacing_mm"] == [2.0, 0.5, 1.0]  # (Z, Y, X), as given
    assert result["voxel_ml"] == pytest.approx(0.001)
    assert result["classes"] == {"1": "ggo", "2": "consolidation", "3": "pleural_effusion"}  # no background
    assert result["pleural"] == ["pleural_effusion"] and result["lesion_outside_mask_ml"] == 0.0
    right, left, total = result["right"], result["left"], result["total"]
    assert right["lung_ml"] == pytest.approx(0.006) and right["lesion_ml"] == pytest.approx(0.001)
    assert right["lesion_percent"] == pytest.approx(100 / 6) and right["severity"] == 2
    assert left["lung_ml"] == pytest.approx(0.005)  # 6 mask voxels less the effusion voxel
    assert left["lesion_ml"] == pytest.approx(0.002) and left["lesion_percent"] == pytest.approx(40.0)
    assert left["severity"] == 3
    assert left["class_ml"] == pytest.approx({"ggo": 0.0, "consolidation": 0.002, "pleural_effusion": 0.001})
    assert left["class_percent"] == pytest.approx({"ggo": 0.0, "consolidation": 40.0})
    assert total["lung_ml"] == pytest.approx(0.011) and total["lesion_percent"] == pytest.approx(300 / 11)
    assert total["severity"] == 3


# --- restrict_to_lungs ----------------------------------------------------------------------------------------------

def test_restrict_to_lungs_keeps_a_lesion_touching_the_lung_at_a_corner_only():
    lungs = np.zeros((3, 3, 3), np.uint8)
    lungs[0, 0, 0] = 1
    labels = np.zeros((3, 3, 3), np.uint8)
    labels[1, 1, 1] = 2  # a diagonal (corner) neighbour of the lung voxel: next to it in the 26-neighbourhood
    labels[2, 2, 2] = 2  # and its own corner neighbour: the same component
    assert np.array_equal(restrict_to_lungs(labels, lungs), labels)


def test_restrict_to_lungs_returns_a_new_array_even_when_nothing_is_to_be_judged():
    labels = np.zeros((1, 2, 2), np.uint8)
    labels[0, 0, 0] = 3  # a kept class only
    out = restrict_to_lungs(labels, np.zeros_like(labels), keep=(3,))
    out[0, 1, 1] = 1
    assert labels[0, 1, 1] == 0 and out is not labels


# --- percentages and volumes as text ----------------------------------------------------------------------------------

def test_percent_text_of_zero_keeps_the_places_asked_for_and_falls_back_to_the_plain_number():
    assert percent_text(0.0, decimals=2) == "0.00" and percent_text(0.0, decimals=0) == "0"
    # no number of places shows 5 % as a severity-1 share: the number itself, not 15 places of zeros
    assert percent_text(5.0, severity=1) == "5.0"
    assert nonzero_text(1.234, decimals=2) == "1.23" and nonzero_text(1.234) == "1.2"


# --- crop boxes ------------------------------------------------------------------------------------------------------

def test_lung_crop_box_margins_follow_the_row_and_column_spacing_and_round():
    from covseg.scan import lung_crop_boxes

    lungs = np.zeros((1, 20, 20), np.uint8)
    lungs[0, 5:8, 6:10] = 1
    # rows 1 mm apart: 4 rows of margin; columns 2 mm apart: 2 columns
    assert lung_crop_boxes(lungs, (1.0, 1.0, 2.0), margin_mm=4.0) == [(1, 12, 4, 12)]
    # 2 mm / 0.7 mm = 2.86 pixels: 3 of them, not 2
    assert lung_crop_boxes(lungs, (1.0, 0.7, 0.7), margin_mm=2.0) == [(2, 11, 3, 13)]


def test_lung_crop_boxes_stay_inside_the_image():
    from covseg.scan import lung_crop_boxes

    lungs = np.zeros((1, 10, 10), np.uint8)
    lungs[0, 0:3, 0:2] = 1
    lungs[0, 7:10, 8:10] = 2
    assert lung_crop_boxes(lungs, (1.0, 1.0, 1.0), margin_mm=2.0) == [(0, 10, 0, 10)]


def test_scan_crop_boxes_of_an_empty_mask_are_all_none():
    from covseg.scan import scan_crop_boxes

    assert scan_crop_boxes(np.zeros((3, 6, 8), np.uint8), (1.0, 1.0, 1.0), 2.0, midline_x=4.0) == [None] * 3


def test_scan_crop_boxes_mirror_one_lung_about_the_midline_by_hand():
    from covseg.scan import scan_crop_boxes

    spacing = (1.0, 1.0, 1.0)
    right = np.zeros((1, 20, 30), np.uint8)
    right[0, 4:10, 3:10] = 1  # columns 3..9, margin 2: 1..11; mirrored about 14: 28 - 11 = 17 .. 28 - 1 = 27
    assert scan_crop_boxes(right, spacing, 2.0, midline_x=14.0) == [(2, 12, 1, 28)]
    left = np.zeros((1, 20, 30), np.uint8)
    left[0, 4:10, 18:26] = 2  # columns 18..25, margin 2: 16..27; about 14.25: 28.5 - 27 = 1.5 .. 12.5, whole: 1 .. 13
    assert scan_crop_boxes(left, spacing, 2.0, midline_x=14.25) == [(2, 12, 1, 28)]
    edge = np.zeros((1, 6, 12), np.uint8)
    edge[0, 1:4, 0:3] = 1  # at the image's edge: -1 .. 3 and its mirror about 6, 9 .. 13, clipped to 0 .. 11
    assert scan_crop_boxes(edge, spacing, 1.0, midline_x=6.0) == [(0, 5, 0, 12)]


# --- segment_scan on a hand-made mask -------------------------------------------------------------------------------

LESION_HU, TISSUE_HU = 100.0, -800.0  # the stand-in model calls a pixel lesion where the lung window reads > 0.95


class _BrightIsLesion:
    """A stand-in binary model: lesion where the windowed crop is brighter than 0.95 (100 HU reads 0.967)."""

    batch_size = 2

    def __call__(self, crops):
        return [np.stack([c <= 0.95, c > 0.95]).astype(np.float32) for c in crops]


def _scan(monkeypatch, hu, lungs, spacing=(2.5, 1.0, 1.0), options=None, is_hu=True, warnings=()):
    import covseg.scan as scan
    from covseg.labels import BINARY
    from covseg.volumes import Volume

    monkeypatch.setattr(scan, "lung_mask", lambda h, s: lungs.copy())
    monkeypatch.setattr(scan, "body_midline", lambda h, s: hu.shape[2] / 2.0)
    volume = Volume(hu=np.asarray(hu, np.float32), spacing=spacing, affine=np.eye(4), input_affine=np.eye(4),
                    input_shape=hu.shape, input_ornt=np.array([[0, 1], [1, 1], [2, 1]]), is_hu=is_hu,
                    warnings=list(warnings))
    return scan.segment_scan(volume, _BrightIsLesion(), BINARY, options, progress=False)


def _two_lungs(z=2):
    lungs = np.zeros((z, 10, 30), np.uint8)
    lungs[:, 2:8, 2:10] = 1  # right: 48 voxels a slice
    lungs[:, 2:8, 20:28] = 2  # left
    return lungs


def test_a_speck_apart_from_the_lungs_is_dropped_with_its_small_volume_in_the_warning(monkeypatch):
    from covseg.scan import ScanOptions

    lungs = _two_lungs()
    hu = np.full(lungs.shape, TISSUE_HU)
    hu[0, 5, 14] = LESION_HU  # 4 columns from either lung: one voxel of 2.5 mm^3 = 0.0025 mL
    result = _scan(monkeypatch, hu, lungs, options=ScanOptions(min_lesion_ml=0))
    assert not result.lesions.any()
    assert [w for w in result.warnings if "dropped" in w] == [
        "0.0025 mL of lesion not touching the lung mask was dropped; --keep-outside-lungs keeps it"]
    # by default (0.05 mL) the small-component filter removes it anyway: no warning
    assert not any("dropped" in w for w in _scan(monkeypatch, hu, lungs).warnings)


def test_lesions_under_the_smallest_volume_are_removed_by_default(monkeypatch):
    lungs = _two_lungs()
    hu = np.full(lungs.shape, TISSUE_HU)
    hu[:, 3:7, 4:7] = LESION_HU  # in the right lung: 2 x 4 x 3 = 24 voxels = 0.06 mL, kept (>= 0.05)
    hu[1, 4, 22] = LESION_HU  # in the left lung: 1 voxel = 0.0025 mL, removed
    result = _scan(monkeypatch, hu, lungs)
    assert int(result.lesions.sum()) == 24 and result.lesions[:, 3:7, 4:7].all()
    right, left = result.figures["right"], result.figures["left"]
    assert right["lung_ml"] == pytest.approx(96 * 0.0025) and right["lesion_ml"] == pytest.approx(0.06)
    assert right["lesion_percent"] == 25.0 and right["severity"] == 2
    assert left["lesion_ml"] == 0.0 and left["severity"] == 0


def test_the_one_lung_warning_only_when_lesions_outside_it_would_have_been_dropped(monkeypatch):
    from covseg.scan import ScanOptions

    lungs = _two_lungs()
    lungs[lungs == 2] = 0  # the right lung alone
    hu = np.full(lungs.shape, TISSUE_HU)
    note = "with one lung in the mask, lesions outside it are kept"
    assert any(note in w for w in _scan(monkeypatch, hu, lungs).warnings)
    kept = _scan(monkeypatch, hu, lungs, options=ScanOptions(inside_lungs_only=False), warnings=["a gap in the slices"])
    assert kept.warnings[0] == "a gap in the slices" and not any(note in w for w in kept.warnings)


def test_grey_images_are_read_through_the_window_and_only_slices_with_lung_are_segmented(monkeypatch):
    lungs = np.zeros((4, 10, 30), np.uint8)
    lungs[1:3] = _two_lungs()  # lung in slices 1 and 2 only
    grey = np.full(lungs.shape, 0.3)
    grey[1:3, 3:7, 4:7] = 0.98  # lung-window grey: 0.98 * 1500 - 1350 = 120 HU, a lesion; raw 0.98 "HU" is not
    result = _scan(monkeypatch, grey, lungs, is_hu=False)
    assert result.slices_segmented == 2
    assert int(result.lesions.sum()) == 24 and result.lesions[1:3, 3:7, 4:7].all()
