"""Quantification: analytic ellipsoid volumes, lesions outside the lung mask, severity buckets, clean-up helpers."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from covseg.quantify import quantify, remove_small_components, restrict_to_lungs, severity_score

SPACING = (2.5, 0.7, 0.7)
NAMES = {1: "ggo", 2: "consolidation", 3: "pleural_effusion"}


def _grid(shape, spacing):
    return tuple(((np.arange(n) - (n - 1) / 2) * s).reshape([-1 if i == a else 1 for i in range(3)])
                 for a, (n, s) in enumerate(zip(shape, spacing)))


def _ellipsoid(grid, centre, axes) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, axes)) <= 1


def _volume_ml(axes) -> float:
    return 4.0 / 3.0 * math.pi * axes[0] * axes[1] * axes[2] / 1000.0


# (centre, semi-axes) in mm, (z, y, x); patient right = negative x
RIGHT = ((0.0, 0.0, -30.0), (40.0, 35.0, 22.0))
LEFT = ((0.0, 0.0, 30.0), (38.0, 33.0, 20.0))
GGO = ((5.0, 5.0, -30.0), (20.0, 12.0, 9.0))  # inside the right lung
CONSOLIDATION = ((-5.0, 0.0, 30.0), (15.0, 9.0, 7.0))  # inside the left lung, missing from the lung mask
EFFUSION = ((0.0, 0.0, 59.0), (20.0, 14.0, 5.0))  # outside the left lung (lateral), nearer to it


@pytest.fixture(scope="module")
def phantom():
    shape = (40, 150, 200)
    grid = _grid(shape, SPACING)
    right, left = _ellipsoid(grid, *RIGHT), _ellipsoid(grid, *LEFT)
    ggo, cons, eff = (_ellipsoid(grid, *p) for p in (GGO, CONSOLIDATION, EFFUSION))
    assert not (eff & (right | left)).any() and (ggo <= right).all() and (cons <= left).all()
    lesions = np.zeros(shape, np.int64)
    lesions[ggo], lesions[cons], lesions[eff] = 1, 2, 3
    lungs = np.zeros(shape, np.uint8)
    lungs[right], lungs[left] = 1, 2
    lungs[cons] = 0  # a threshold mask misses the dense lesion
    return lesions, lungs


def test_quantify_matches_analytic_volumes(phantom):
    lesions, lungs = phantom
    result = quantify(lesions, lungs, SPACING, NAMES, pleural=(3,))
    json.dumps(result)  # JSON-ready
    v_r, v_l = _volume_ml(RIGHT[1]), _volume_ml(LEFT[1])
    v_ggo, v_cons, v_eff = (_volume_ml(p[1]) for p in (GGO, CONSOLIDATION, EFFUSION))
    rel = dict(rel=0.04)
    right, left, total = result["right"], result["left"], result["total"]
    assert right["lung_ml"] == pytest.approx(v_r, **rel)
    assert right["class_ml"] == pytest.approx({"ggo": v_ggo, "consolidation": 0.0, "pleural_effusion": 0.0}, **rel)
    assert right["lesion_percent"] == pytest.approx(100 * v_ggo / v_r, **rel)
    # the left lung takes the consolidation missing from its mask; the effusion beside it is the left side's
    # but neither lung nor involvement: its volume only
    assert left["lung_ml"] == pytest.approx(v_l, **rel)
    assert left["class_ml"]["consolidation"] == pytest.approx(v_cons, **rel)
    assert left["class_ml"]["pleural_effusion"] == pytest.approx(v_eff, **rel)
    assert left["class_ml"]["ggo"] == 0.0
    assert "pleural_effusion" not in left["class_percent"]
    assert left["class_percent"]["consolidation"] == pytest.approx(100 * v_cons / v_l, **rel)
    assert left["lesion_ml"] == pytest.approx(v_cons, **rel)
    assert left["lesion_percent"] == pytest.approx(100 * v_cons / v_l, **rel)
    assert result["lesion_outside_mask_ml"] == pytest.approx(v_cons, **rel)
    assert result["pleural"] == ["pleural_effusion"]
    assert total["lung_ml"] == pytest.approx(v_r + v_l, **rel)
    assert total["lesion_ml"] == pytest.approx(right["lesion_ml"] + left["lesion_ml"])
    assert total["lesion_percent"] == pytest.approx(100 * (v_ggo + v_cons) / (v_r + v_l), **rel)
    for part in (right, left, total):
        assert part["severity"] == severity_score(part["lesion_percent"])
    assert right["severity"] == 2 and left["severity"] == 1  # ~5.6 % and ~3.8 %
    assert result["voxel_ml"] == pytest.approx(2.5 * 0.7 * 0.7 / 1000)


def test_quantify_without_pleural_classes_counts_every_class_as_lung_lesion(phantom):
    lesions, lungs = phantom
    result = quantify(lesions, lungs, SPACING, NAMES)
    v_l, v_cons, v_eff = (_volume_ml(p[1]) for p in (LEFT, CONSOLIDATION, EFFUSION))
    left = result["left"]
    assert left["lung_ml"] == pytest.approx(v_l + v_eff, rel=0.04)
    assert left["lesion_percent"] == pytest.approx(100 * (v_cons + v_eff) / (v_l + v_eff), rel=0.04)
    assert result["pleural"] == []
    with pytest.raises(ValueError, match="pleural"):
        quantify(lesions, lungs, SPACING, NAMES, pleural=(4,))


def test_quantify_without_lungs_splits_at_the_middle():
    lesions = np.zeros((2, 4, 10), np.uint8)
    lesions[:, :, 1] = 1  # patient right (low X)
    lesions[:, :2, 8] = 1  # patient left
    result = quantify(lesions, np.zeros_like(lesions), (1.0, 1.0, 1.0), {1: "infection"})
    assert result["right"]["lung_ml"] == pytest.approx(0.008)
    assert result["left"]["lung_ml"] == pytest.approx(0.004)
    assert result["total"]["lesion_percent"] == 100.0 and result["total"]["severity"] == 5
    empty = quantify(np.zeros_like(lesions), np.zeros_like(lesions), (1.0, 1.0, 1.0), {1: "infection"})
    assert empty["total"] == {"lung_ml": 0.0, "lesion_ml": 0.0, "lesion_percent": None, "severity": None,
                              "class_ml": {"infection": 0.0}, "class_percent": {"infection": None}}


def test_with_one_lung_in_the_mask_a_lesion_across_the_middle_goes_to_the_missing_lung():
    # the left lung wholly consolidated, so the threshold mask holds the right lung alone
    lungs = np.zeros((2, 4, 10), np.uint8)
    lungs[:, :, :3] = 1  # right lung, low X: 24 voxels
    lesions = np.zeros_like(lungs)
    lesions[:, :, 6:9] = 2  # the consolidated left lung, outside the mask: 24 voxels
    lesions[:, 0, 3] = 1  # GGO just outside the right lung, on its side of the middle: 2 voxels
    result = quantify(lesions, lungs, (1.0, 1.0, 1.0), {1: "ggo", 2: "consolidation"})
    assert result["left"]["lung_ml"] == pytest.approx(0.024) and result["left"]["lesion_percent"] == 100.0
    assert result["right"]["lung_ml"] == pytest.approx(0.026)
    assert result["right"]["class_ml"] == {"ggo": pytest.approx(0.002), "consolidation": 0.0}


def test_a_lesion_outside_the_lungs_goes_to_the_lung_nearest_in_mm_with_spacing_in_zyx_order():
    # spacing (Z, Y, X) = (5, 1, 1) mm: slices far apart, pixels close together
    lungs = np.zeros((5, 3, 20), np.uint8)
    lungs[0, :, 0:4] = 1  # right lung: slice 0, X 0..3
    lungs[2:5, :, 10:20] = 2  # left lung: slices 2..4, X 10..19
    lesions = np.zeros_like(lungs)
    lesions[0, 1, 7] = 1  # outside both lungs, in the right lung's slice
    # by hand: to the right lung's (0, 1, 3) dx 4 px = 4 mm; to the left's (2, 1, 10) dz 2 slices = 10 mm and
    # dx 3 px = 3 mm, sqrt(100 + 9) = 10.4 mm: right. Spacing read as (X, Y, Z) instead: right 4 * 5 = 20 mm,
    # left sqrt(2**2 + 15**2) = 15.1 mm: left
    result = quantify(lesions, lungs, (5.0, 1.0, 1.0), {1: "ggo"})
    assert result["right"]["lesion_ml"] == pytest.approx(0.005)  # one voxel of 5 x 1 x 1 mm
    assert result["left"]["lesion_ml"] == 0.0


def test_quantify_refuses_unnamed_labels_and_shape_mismatch():
    lesions = np.zeros((2, 4, 4), np.int64)
    lesions[0, 0, 0] = 3
    with pytest.raises(ValueError, match="no name"):
        quantify(lesions, np.zeros((2, 4, 4), np.uint8), (1, 1, 1), {1: "ggo", 2: "consolidation"})
    with pytest.raises(ValueError, match="shape"):
        quantify(lesions, np.zeros((2, 4, 5), np.uint8), (1, 1, 1), NAMES)


@pytest.mark.parametrize(
    ("percent", "score"),
    [(0.0, 0), (1e-6, 1), (4.99, 1), (5.0, 2), (25.0, 2), (25.5, 3), (49.9, 3), (50.0, 4), (75.0, 4),
     (75.01, 5), (100.0, 5)],
)
def test_severity_buckets(percent, score):
    assert severity_score(percent) == score


@pytest.mark.parametrize("percent", [-0.1, 100.1, float("nan")])
def test_severity_refuses_out_of_range(percent):
    with pytest.raises(ValueError):
        severity_score(percent)


def test_remove_small_components_counts_all_classes_together():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[0, 0, 0] = 2  # 1 voxel: removed
    labels[1:3, 2:4, 2:4] = 1  # 8 voxels of GGO ...
    labels[2, 3, 4] = 2  # ... with a touching consolidation voxel: one 9-voxel lesion
    labels[3, 8, 8], labels[2, 7, 7] = 1, 1  # diagonal neighbours (26-connectivity): a 2-voxel lesion
    out = remove_small_components(labels, (1.0, 1.0, 1.0), min_volume_ml=0.005)
    assert out.dtype == labels.dtype
    assert out[0, 0, 0] == 0 and out[3, 8, 8] == 0 and out[2, 7, 7] == 0
    assert np.array_equal(out[1:3, 2:5, 2:5], labels[1:3, 2:5, 2:5])
    out = remove_small_components(labels, (1.0, 1.0, 1.0), min_volume_ml=0.002)
    assert out[3, 8, 8] == 1 and out[0, 0, 0] == 0
    assert np.array_equal(remove_small_components(labels, (1.0, 1.0, 1.0), 0.0), labels)


def test_a_lung_lesion_speck_touching_an_effusion_is_judged_by_its_own_size():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, :, 6:] = 3  # a 160-voxel effusion
    labels[1, 4, 5] = 1  # a 1-voxel GGO speck touching it
    labels[2, 0, 0] = 3  # a 1-voxel effusion apart: removed as any speck
    out = remove_small_components(labels, (1.0, 1.0, 1.0), min_volume_ml=0.005, separate=(3,))
    expected = labels.copy()
    expected[1, 4, 5] = expected[2, 0, 0] = 0
    assert np.array_equal(out, expected)
    # without `separate`, the speck joins the effusion's component and stays (the behaviour before session 62)
    assert remove_small_components(labels, (1.0, 1.0, 1.0), min_volume_ml=0.005)[1, 4, 5] == 1
    big = labels.copy()
    big[1, 2:5, 2:5] = 1  # a 9-voxel GGO lesion touching the effusion stays with or without it
    assert np.array_equal(remove_small_components(big, (1.0, 1.0, 1.0), 0.005, separate=(3,))[1], big[1])


def test_a_lesion_of_exactly_the_smallest_volume_stays():
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[1, 2, 2:7], labels[1, 3, 2:7] = 1, 1  # 10 voxels of 3 x 0.6 x 0.6 mm: 0.0108 mL
    # in floating point 10 * (3 * 0.6 * 0.6 / 1000) is 0.010799999999999999, below 0.0108 itself
    assert 10 * (3.0 * 0.6 * 0.6 / 1000.0) < 0.0108
    assert np.array_equal(remove_small_components(labels, (3.0, 0.6, 0.6), 0.0108), labels)
    assert not remove_small_components(labels, (3.0, 0.6, 0.6), 0.0109).any()


def test_restrict_to_lungs():
    labels = np.array([[[0, 1, 2, 0, 2, 3]]], np.int64)
    lungs = np.array([[[1, 1, 0, 0, 0, 0]]], np.uint8)
    out = restrict_to_lungs(labels, lungs, keep=(3,))
    # the consolidation next to the lung stays with it; the one a voxel apart goes; the effusion always stays
    assert out.dtype == np.int64 and out.tolist() == [[[0, 1, 2, 0, 0, 3]]]
    outside = np.array([[[1, 2, 3, 3]]], np.int64)
    none = np.zeros((1, 1, 4), np.uint8)
    assert restrict_to_lungs(outside, none, keep=(3,)).tolist() == [[[0, 0, 3, 3]]]


def test_restrict_to_lungs_keeps_consolidation_the_mask_left_out_and_quantify_counts_it_as_lung():
    """A lung half consolidated: the threshold mask holds only its aerated half; the consolidation touching it is
    kept whole (not dropped to 0 %), a lesion apart from the lungs is dropped, and the lung is counted whole."""
    lungs = np.zeros((10, 6, 30), np.uint8)
    lungs[:, :, 2:10] = 1  # right lung: 480 voxels
    lungs[5:, :, 20:28] = 2  # left lung, aerated upper half: 240 voxels
    lesions = np.zeros_like(lungs)
    lesions[:5, :, 20:28] = 2  # its consolidated lower half, outside the mask, touching it along Z: 240 voxels
    lesions[:2, 0:2, 14:16] = 1  # a lesion in the mediastinum, 4 columns from either lung: dropped
    kept = restrict_to_lungs(lesions, lungs, keep=(3,))
    assert (kept[:5, :, 20:28] == 2).all() and not kept[:, :, 14:16].any()
    left = quantify(kept, lungs, (1.0, 1.0, 1.0), NAMES, pleural=(3,))["left"]
    assert left["lung_ml"] == pytest.approx(0.48) and left["lesion_percent"] == 50.0 and left["severity"] == 4


def test_restrict_to_lungs_judges_a_lesion_by_its_whole_3d_component():
    lungs = np.zeros((4, 6, 12), np.uint8)
    lungs[:, :, :4] = 1
    lesions = np.zeros_like(lungs)
    lesions[1, 2, 4:9] = 2  # a consolidation running out from the lung: one component, kept whole
    lesions[2, 3, 9] = 1  # diagonal neighbour of its end (26-connectivity): part of it
    lesions[0, 0, 10:12] = 1  # apart: dropped
    lesions[3, 5, 11] = 3  # effusion apart from the lung: kept (a pleural class)
    out = restrict_to_lungs(lesions, lungs, keep=(3,))
    expected = lesions.copy()
    expected[0, 0, 10:12] = 0
    assert np.array_equal(out, expected)
    assert restrict_to_lungs(np.zeros_like(lesions), lungs).dtype == lesions.dtype


def test_with_one_lung_in_the_mask_outside_lesions_are_split_at_the_given_midline():
    # an off-centre patient: body midline at column 8 of 30, the right lung in the mask, the left wholly consolidated
    lungs = np.zeros((2, 4, 30), np.uint8)
    lungs[:, :, 2:6] = 1  # right lung: 32 voxels
    lesions = np.zeros_like(lungs)
    lesions[:, :, 10:14] = 2  # the consolidated left lung, left of the midline but right of the image centre (15)
    lesions[:, 0, 6] = 1  # GGO just outside the right lung, on its side of the midline
    result = quantify(lesions, lungs, (1.0, 1.0, 1.0), {1: "ggo", 2: "consolidation"}, midline_x=8.0)
    assert result["left"]["lung_ml"] == pytest.approx(0.032) and result["left"]["lesion_percent"] == 100.0
    assert result["right"]["class_ml"] == {"ggo": pytest.approx(0.002), "consolidation": 0.0}
    assert result["right"]["lung_ml"] == pytest.approx(0.034)
    # without a midline: the image's middle column, as before
    assert quantify(lesions, lungs, (1.0, 1.0, 1.0), {1: "ggo", 2: "consolidation"})["left"]["lung_ml"] == 0.0


@pytest.mark.parametrize(("lung", "lesion", "percent", "score"), [(92, 69, 75.0, 4), (220, 11, 5.0, 2), (12, 3, 25.0, 2)])
def test_percent_on_a_severity_boundary_is_exact(lung, lesion, percent, score):
    """A lesion share exactly on a bucket boundary scores by that boundary, whatever the voxel size."""
    lungs = np.ones((1, 1, lung), np.uint8)
    lesions = np.zeros_like(lungs)
    lesions[0, 0, :lesion] = 1
    result = quantify(lesions, lungs, SPACING, {1: "infection"})
    for part in (result["right"], result["total"]):
        assert part["lesion_percent"] == percent and part["class_percent"]["infection"] == percent
        assert part["severity"] == score
        assert part["lung_ml"] == pytest.approx(lung * 2.5 * 0.7 * 0.7 / 1000)


def test_with_both_lungs_in_the_mask_an_outside_lesion_is_not_given_to_the_lung_across_the_midline():
    """A left lung consolidated below a small aerated apical remnant: its medial lesions lie nearer the right lung's
    medial surface than the remnant, and went to the right lung (nearest in 3-D across the midline)."""
    lungs = np.zeros((8, 6, 24), np.uint8)
    lungs[:, 1:5, 2:10] = 1  # right lung, columns 2..9, all slices
    lungs[7, 1:5, 15:21] = 2  # left lung: its aerated apical remnant only
    lesions = np.zeros_like(lungs)
    lesions[:7, 1:5, 13:21] = 2  # the rest of the left lung, consolidated, outside the mask (midline at 12)
    result = quantify(lesions, lungs, (2.5, 1.0, 1.0), {1: "ggo", 2: "consolidation"}, midline_x=12.0)
    assert result["right"]["class_ml"]["consolidation"] == 0.0
    assert result["left"]["class_ml"]["consolidation"] == pytest.approx(7 * 4 * 8 * 2.5 / 1000)
    assert result["right"]["lung_ml"] == pytest.approx(8 * 4 * 8 * 2.5 / 1000)


def test_a_lung_without_volume_has_no_severity_not_zero():
    lungs = np.zeros((2, 4, 20), np.uint8)
    lungs[:, :, 2:6] = 1  # right lung only; nothing on the left side of the midline
    lesions = np.zeros_like(lungs)
    lesions[0, 0, 3] = 1
    result = quantify(lesions, lungs, (1.0, 1.0, 1.0), {1: "ggo"}, midline_x=10.0)
    assert result["left"]["lung_ml"] == 0.0 and result["left"]["severity"] is None
    assert result["right"]["severity"] == 1 and result["total"]["severity"] == 1  # 1 of 32 voxels
    empty = quantify(lesions * 0, lungs * 0, (1.0, 1.0, 1.0), {1: "ggo"})
    assert empty["total"]["severity"] is None and json.loads(json.dumps(empty))["right"]["severity"] is None


def test_without_lungs_a_lesion_on_the_middle_column_goes_to_the_left():
    # 4 columns: the middle is X = 2.0; right is X < 2 (columns 0, 1), so column 2 is left; one voxel of 1 mm^3
    lesions = np.zeros((1, 1, 4), np.uint8)
    lesions[0, 0, 2] = 1
    result = quantify(lesions, np.zeros_like(lesions), (1.0, 1.0, 1.0), {1: "infection"})
    assert result["left"]["lesion_ml"] == pytest.approx(0.001)
    assert result["right"]["lesion_ml"] == 0.0
