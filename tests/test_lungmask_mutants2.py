"""Second mutation round on covseg.lungmask: exact boundaries of the rules (table width and slice share, body
share, second-lung size, airway area, junction share, the cut's search window), tie-breaks, block factors and
odd volume sizes. Small box-shaped volumes, answers worked out by hand (2 mm voxels unless stated)."""
from __future__ import annotations

import numpy as np
import pytest

from covseg import lungmask as lm
from covseg.lungmask import LEFT_LUNG, RIGHT_LUNG, body_midline, check_lung_mask, lung_mask
from test_lungmask_mutants import S2, _chest, _each_lung_box_labelled  # the first round's box chest (2 mm voxels)

def _expect(boxes):
    e = np.zeros(next(iter(boxes.values())).shape, np.uint8)
    for k, m in boxes.items():
        e[m] = k
    return e


def test_block_factor_rounds_to_the_nearest_integer():
    # 2 mm / 0.7 mm = 2.86: 3 x 3 blocks in-plane (not 2), 2.5 mm slices stay single
    assert lm._factors((2.5, 0.7, 0.7)) == (1, 3, 3)


def test_body_midline_stays_inside_the_image():
    # 61 columns at 1 mm: the last 2-column block is edge-padded; a body in column 60 only has its coarse
    # midline at block 30, i.e. 60.5, clamped to the last column 60
    hu = np.full((2, 20, 61), -1000.0, np.float32)
    hu[:, 5:15, 60] = 40.0
    assert body_midline(hu, (2.0, 1.0, 1.0)) == pytest.approx(60.0)


def _not_lung_one(comp, body):
    lab = comp.astype(np.int32)
    sizes = np.bincount(lab.ravel(), minlength=2)
    sizes[0] = 0
    return bool(lm._not_lung(lab, sizes, body)[1])


def test_not_lung_width_and_slice_share_boundaries():
    body = np.zeros((8, 10, 60), bool)
    body[:, :, 0:50] = True  # 50 columns wide in every slice
    comp = np.zeros_like(body)
    comp[:6, 2:4, 0:45] = True  # exactly 90 % of the width ...
    comp[6:, 2:4, 0:10] = True  # ... in exactly 6 of 8 slices (75 %): the table's core
    assert _not_lung_one(comp, body)
    comp[:6, 2:4, 44] = False  # 88 % of the width: not wide
    assert not _not_lung_one(comp, body)


def test_not_lung_body_width_counts_both_edge_columns():
    body = np.zeros((4, 10, 60), bool)
    body[:, :, 0:51] = True  # columns 0..50: 51 wide; 90 % is 45.9
    comp = np.zeros_like(body)
    comp[:, 2:4, 0:45] = True  # 45 columns: not wide enough
    assert not _not_lung_one(comp, body)


def test_not_lung_half_in_the_body_is_not_mostly_outside():
    body = np.zeros((4, 10, 60), bool)
    body[:, :, 0:50] = True
    comp = np.zeros_like(body)
    comp[:, 2:4, 40:60] = True  # 10 of 20 columns in the body: exactly half, not "mostly outside"
    assert not _not_lung_one(comp, body)


def test_a_second_lung_of_exactly_10_percent_is_kept():
    hu, boxes = _chest(right=(0, 8, 8, 28, 8, 23), left=(0, 8, 10, 15, 38, 44))
    assert boxes[LEFT_LUNG].sum() * 10 == boxes[RIGHT_LUNG].sum()  # 240 of 2400 voxels
    assert np.array_equal(lung_mask(hu, S2), _expect(boxes))


def test_a_single_lung_centred_on_the_midline_is_the_right_lung():
    # body columns 3..56 (midline 29.5); one lung over columns 20..39, half on each side, no narrowing to cut:
    # the tie (right share exactly 0.5) goes to the right lung
    hu, boxes = _chest(right=(0, 8, 8, 32, 20, 40), left=None)
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert np.array_equal(mask, _expect(boxes))


def test_a_second_lung_just_left_of_an_integer_midline_is_left():
    # body columns 3..55: midline exactly 29.0; a second lung over columns 26..33 has 3 columns right of it (x < 29)
    # and 5 at or left of it: right share 3/8, a left lung (column 29 itself counts as left); 28 x 8 px = 896 mm^2
    # per slice, more than a trachea (800 mm^2)
    hu, boxes = _chest(body=(3, 37, 3, 56), right=(0, 8, 8, 32, 5, 20), left=(0, 8, 6, 34, 26, 34))
    assert np.array_equal(lung_mask(hu, S2, closing_mm=0.0), _expect(boxes))


def test_a_trachea_of_exactly_the_airway_area_limit_is_traced():
    # (2, 4, 2) mm: 800 mm^2 is 100 px; a 10 x 10 px trachea on the midline (29.5) in slices 6..9, joined in slice 5
    # to the right lung by a bar of air
    hu, boxes = _chest(shape=(10, 30, 60), body=(2, 28, 3, 57), right=(0, 6, 6, 24, 8, 25), left=(0, 6, 6, 24, 35, 52))
    trachea = np.zeros(hu.shape, bool)
    trachea[6:, 8:18, 25:35] = True
    trachea[5, 8:18, 26:34] = True
    hu[trachea] = -1000.0
    hu[5, 10:12, 25] = -1000.0
    assert (trachea[9].sum() * 4.0 * 2.0) == lm.AIRWAY_MAX_MM2
    mask = lung_mask(hu, (2.0, 4.0, 2.0), closing_mm=0.0)
    assert not mask[6:][trachea[6:]].any()
    assert _each_lung_box_labelled(mask, boxes)


def _bridged(right_x, left_x, bridge_x, rows=(19, 21)):
    hu, boxes = _chest(shape=(6, 40, 60), body=(3, 37, 3, 56), right=(0, 6, 8, 32) + right_x,
                       left=(0, 6, 8, 32) + left_x)
    hu[:, rows[0]:rows[1], bridge_x[0]:bridge_x[1]] = -850.0
    return hu, boxes


@pytest.mark.parametrize("right_x, left_x, bridge_x", [
    ((8, 21), (22, 52), (21, 22)),  # junction at column 21 = int(29 - 0.3 * 26.5): the window's first column
    ((8, 36), (37, 52), (36, 37)),  # junction at column 36 = int(29 + 0.3 * 26.5): the window's last column
])
def test_touching_lungs_are_cut_at_a_junction_on_the_edge_of_the_search_window(right_x, left_x, bridge_x):
    # body columns 3..55: midline 29.0, half-width 26.5; the cut is searched in columns 21..36 inclusive
    hu, boxes = _bridged(right_x, left_x, bridge_x)
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert _each_lung_box_labelled(mask, boxes)


def test_a_junction_of_exactly_45_percent_of_the_fullest_column_is_cut():
    # lungs 24 rows deep; a bridge 10.8 rows would be 45 %: use lungs 20 rows deep (rows 8..27) and a 9-row bridge
    hu, boxes = _chest(shape=(6, 40, 60), body=(3, 37, 3, 56), right=(0, 6, 8, 28, 8, 29), left=(0, 6, 8, 28, 30, 52))
    hu[:, 10:19, 29] = -850.0
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert _each_lung_box_labelled(mask, boxes)


def test_check_tiny_lung_at_exactly_10_cm2_is_not_tiny():
    mask = np.zeros((4, 40, 40), np.uint8)
    mask[:, 5:15, 2:27] = RIGHT_LUNG  # 250 px of 4 mm^2 = 1000 mm^2: not below 10 cm^2
    mask[:, 20:35, 2:38] = LEFT_LUNG
    assert check_lung_mask(mask, (5.0, 2.0, 2.0)) == []


def test_an_odd_number_of_thin_slices_with_lungs_to_the_last_one():
    # 1 mm slices: blocks of 2 slices, the 7th slice is edge-padded; the lungs fill all 7 slices
    hu, boxes = _chest(shape=(7, 40, 60))
    hu[:] = hu[0]
    for k, b in ((RIGHT_LUNG, (8, 32, 8, 25)), (LEFT_LUNG, (8, 32, 35, 52))):
        boxes[k][:] = False
        boxes[k][:, b[0]:b[1], b[2]:b[3]] = True
    assert np.array_equal(lung_mask(hu, (1.0, 2.0, 2.0)), _expect(boxes))


def test_touching_lungs_with_the_smaller_side_exactly_10_percent_of_the_larger_are_cut():
    # body columns 3..55 (midline 29.0); right lung 6 x 10 x 6 = 360 voxels (columns 23..28), joined by a 2-row
    # bridge in column 29 to a left lung of 6 x 26 x 23: the left side holds 6 * (2 + 598) = 3600 = 10 x 360
    hu, boxes = _chest(shape=(6, 40, 60), body=(3, 37, 3, 56), right=(0, 6, 10, 20, 23, 29), left=(0, 6, 8, 34, 30, 53))
    hu[:, 12:14, 29] = -850.0
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert _each_lung_box_labelled(mask, boxes)


def test_a_trachea_4_columns_off_the_midline_of_a_54_column_body_is_traced():
    # body columns 3..56: midline 29.5, half-width 27 (both edge columns count); seeds lie within 0.15 * 27 = 4.05
    # columns of the midline: a trachea over columns 30..37 (centre 33.5) is one, joined in slice 5 to the left lung
    hu, boxes = _chest(shape=(10, 30, 60), body=(2, 28, 3, 57), right=(0, 6, 6, 24, 8, 25), left=(0, 6, 6, 24, 35, 52))
    trachea = np.zeros(hu.shape, bool)
    trachea[5:, 8:16, 30:38] = True
    hu[trachea] = -1000.0
    mask = lung_mask(hu, (2.0, 4.0, 2.0), closing_mm=0.0)
    assert not mask[6:][trachea[6:]].any()
    assert _each_lung_box_labelled(mask, boxes)


def test_body_midline_of_a_volume_without_body_is_the_middle_column():
    assert body_midline(np.full((2, 10, 11), -1000.0, np.float32), S2) == pytest.approx(5.0)


def test_body_midline_uses_its_threshold():
    # a -400 HU strip beside the patient: air (outside) at -320 HU, tissue (body) at a -500 HU threshold
    hu = np.full((2, 30, 60), -1000.0, np.float32)
    hu[:, 5:25, 10:30] = 40.0
    hu[:, 5:25, 30:50] = -400.0
    assert body_midline(hu, S2) == pytest.approx(19.5)
    assert body_midline(hu, S2, threshold=-500.0) == pytest.approx(29.5)


@pytest.mark.parametrize("lung_hu, found", [(-600.0, True), (-400.0, False)])
def test_lung_mask_uses_its_threshold_for_the_coarse_air_too(lung_hu, found):
    hu, boxes = _chest(lung_hu=lung_hu)
    mask = lung_mask(hu, S2, threshold=-500.0)
    assert np.array_equal(mask, _expect(boxes)) if found else not mask.any()


def test_check_one_lung_names_the_missing_one():
    mask = np.zeros((2, 40, 40), np.uint8)
    mask[:, 5:35, 2:17] = RIGHT_LUNG
    assert check_lung_mask(mask) == ["only the right lung was found; the left lung is missing from the mask"]


def test_holes_are_filled_even_without_closing():
    # a +20 HU vessel inside the right lung, closing_mm=0: hole filling alone keeps it in the lung
    hu, boxes = _chest()
    hu[:, 15:20, 12:18] = 20.0
    assert np.array_equal(lung_mask(hu, S2, closing_mm=0.0), _expect(boxes))


def test_thick_slices_refine_in_plane_only():
    # 2 mm slices (no blocks along Z): a 4-voxel air pocket in slice 6, right above a +20 HU lesion inside the top
    # slice (5) of the right lung and touching no lung air, is a dropped pocket (< 0.5 %), not boundary lung
    hu, boxes = _chest(shape=(10, 40, 60), right=(0, 6, 8, 32, 8, 25), left=(0, 6, 8, 32, 35, 52))
    hu[5, 16:22, 12:18] = 20.0
    hu[6, 18:20, 14:16] = -850.0
    assert np.array_equal(lung_mask(hu, S2, closing_mm=0.0), _expect(boxes))


def test_touching_lungs_are_cut_at_a_junction_on_the_small_lungs_centre_column():
    # body columns 3..55 (midline 29.0): a right lung (columns 8..31) crossing the midline, a 2-row bridge in
    # column 32 and a small left lung in columns 33..35; the left side's centre is exactly column 32.0, and the
    # search window includes it
    hu, boxes = _bridged((8, 32), (33, 36), (32, 33))
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert _each_lung_box_labelled(mask, boxes)
