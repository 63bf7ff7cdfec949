"""Lung masks on small box-shaped synthetic chests whose answers can be checked by hand (spacing 2 mm: no block
averaging unless stated), covering thresholds, outside air, body/midline, table and airway rules, side assignment
and check_lung_mask."""
from __future__ import annotations

import numpy as np
import pytest

from covseg.lungmask import LEFT_LUNG, RIGHT_LUNG, body_midline, check_lung_mask, lung_mask

S2 = (2.0, 2.0, 2.0)


def _chest(shape=(8, 40, 60), body=(3, 37, 3, 57), right=(0, 8, 8, 32, 8, 25), left=(0, 8, 8, 32, 35, 52),
           lung_hu=-850.0):
    """Body box (40 HU) in air (-1000 HU); lungs as boxes (z0, z1, y0, y1, x0, x1), half-open; None: no lung."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, body[0]:body[1], body[2]:body[3]] = 40.0
    boxes = {}
    for k, b in ((RIGHT_LUNG, right), (LEFT_LUNG, left)):
        m = np.zeros(shape, bool)
        if b is not None:
            m[b[0]:b[1], b[2]:b[3], b[4]:b[5]] = True
            hu[m] = lung_hu
        boxes[k] = m
    return hu, boxes


def _each_lung_box_labelled(mask, boxes):
    """Whether every voxel of each lung's box is labelled as that lung (other voxels not looked at)."""
    return bool((mask[boxes[RIGHT_LUNG]] == RIGHT_LUNG).all() and (mask[boxes[LEFT_LUNG]] == LEFT_LUNG).all())


def _exact(mask, boxes):
    expect = np.zeros(mask.shape, np.uint8)
    for k, m in boxes.items():
        expect[m] = k
    return np.array_equal(mask, expect)


def test_box_chest_is_segmented_exactly():
    hu, boxes = _chest()
    assert _exact(lung_mask(hu, S2), boxes)


@pytest.mark.parametrize("lung_hu, found", [(-400.0, True), (-330.0, True), (-320.0, False), (-300.0, False)])
def test_air_threshold_is_below_minus_320_hu(lung_hu, found):
    # poorly aerated lung at -400 HU is still lung; tissue at exactly -320 HU is not (strictly below the threshold)
    hu, boxes = _chest(lung_hu=lung_hu)
    mask = lung_mask(hu, S2)
    if found:
        assert _exact(mask, boxes)
    else:
        assert not mask.any()


def test_a_rim_at_exactly_the_threshold_is_not_lung():
    # full-resolution boundary decision: a one-voxel shell at exactly -320 HU around each lung stays out
    hu, boxes = _chest()
    for m in boxes.values():
        shell = np.zeros_like(m)
        shell[:, 7:33, :] = True
        hu[(shell & ~m) & np.pad(m, ((0, 0), (0, 0), (1, 1)))[:, :, 1:-1].any(axis=(0, 1), keepdims=True)
           & (hu == 40.0)] = -320.0
    assert (hu == -320.0).sum() > 0
    assert _exact(lung_mask(hu, S2), boxes)


@pytest.mark.parametrize("border", ["top", "bottom", "first", "last"])
def test_air_touching_any_image_border_is_outside(border):
    # a body filling the image with an air notch open to one border only: outside air, no lung
    hu = np.full((6, 40, 60), 40.0, np.float32)
    notch = {"top": (slice(0, 15), slice(20, 40)), "bottom": (slice(25, 40), slice(20, 40)),
             "first": (slice(10, 30), slice(0, 20)), "last": (slice(10, 30), slice(40, 60))}[border]
    hu[:, notch[0], notch[1]] = -1000.0
    assert not lung_mask(hu, S2).any()


def test_air_reaching_the_border_only_diagonally_is_outside():
    # outside air is 8-connected in-plane: a cavity joined to the room air by a diagonal chain of air pixels
    hu, _ = _chest(right=None, left=None)
    hu[:, 10:20, 10:30] = -1000.0
    for i in range(3, 10):
        hu[:, i, i] = -1000.0
    assert not lung_mask(hu, S2).any()


def test_midline_ignores_a_table_separated_by_air():
    # the body is the largest region per slice: a slab under (and right of) the patient, apart from him, is not in it
    hu, _ = _chest(right=None, left=None, shape=(4, 50, 90), body=(3, 30, 10, 30))
    hu[:, 40:44, 40:80] = 40.0
    assert body_midline(hu, S2) == pytest.approx(19.5, abs=1e-6)


def test_midline_maps_coarse_columns_back_to_full_resolution():
    # spacing 1 mm: 2 x 2 blocks; a body over columns 20..59 has its midline at 39.5, not 39.0
    hu = np.full((4, 40, 80), -1000.0, np.float32)
    hu[:, 10:30, 20:60] = 40.0
    assert body_midline(hu, (2.0, 1.0, 1.0)) == pytest.approx(39.5, abs=0.05)


def test_enclosed_air_in_an_object_apart_from_the_body_is_no_lung():
    # a vial (or an arm) beside the patient with a large air cavity, larger than the lungs: outside the body
    hu, boxes = _chest(shape=(8, 40, 100), right=(0, 8, 20, 30, 10, 25), left=(0, 8, 20, 30, 35, 50))
    hu[:, 8:36, 64:96] = 40.0
    hu[:, 10:34, 66:94] = -1000.0
    assert (hu[:, 10:34, 66:94] < -320).sum() > boxes[RIGHT_LUNG].sum() + boxes[LEFT_LUNG].sum()
    assert _exact(lung_mask(hu, S2), boxes)


def test_touching_lungs_wide_in_half_their_slices_are_no_table():
    # two lungs joined by a thin bridge span >= 90 % of the body's width in 5 of 10 slices only (< 75 %)
    hu, boxes = _chest(shape=(10, 40, 60), body=(3, 37, 10, 50), right=(0, 10, 8, 32, 12, 29),
                       left=(0, 10, 8, 32, 31, 48))
    hu[5:, 8:32, 12:15] = 40.0
    hu[5:, 8:32, 45:48] = 40.0
    hu[:, 19:21, 29:31] = -850.0
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert (mask[:5, 8:32, 12:29] == RIGHT_LUNG).all() and (mask[5:, 8:32, 15:29] == RIGHT_LUNG).all()
    assert (mask[:5, 8:32, 31:48] == LEFT_LUNG).all() and (mask[5:, 8:32, 31:45] == LEFT_LUNG).all()


def test_table_core_wide_in_80_percent_of_its_slices_is_no_lung():
    # a table touching the patient: its foam core spans the body's width in 8 of 10 slices, half of it in 2
    hu, boxes = _chest(shape=(10, 48, 60), body=(3, 36, 5, 55), right=(0, 10, 10, 26, 10, 25),
                       left=(0, 10, 10, 26, 35, 50))
    hu[:, 36:46, 2:58] = 200.0
    hu[:, 38:44, 4:56] = -900.0
    hu[:2, 38:44, 30:56] = 200.0
    core = hu == -900.0
    assert core.sum() > boxes[RIGHT_LUNG].sum()
    mask = lung_mask(hu, S2)
    assert not mask[core].any()
    assert _exact(mask, boxes)


def test_table_core_is_compared_with_the_body_width_of_its_own_slices():
    # the patient is wider than the table (shoulders, arms) in 2 of 10 slices: the core still spans the body in 8
    hu, boxes = _chest(shape=(10, 48, 80), body=(3, 36, 15, 65), right=(0, 10, 10, 26, 20, 35),
                       left=(0, 10, 10, 26, 45, 60))
    hu[8:, 3:36, 2:78] = 40.0
    hu[8:, 10:26, 20:35] = -850.0
    hu[8:, 10:26, 45:60] = -850.0
    hu[:, 36:46, 12:68] = 200.0
    hu[:, 38:44, 14:66] = -900.0
    core = hu == -900.0
    assert core.sum() > boxes[RIGHT_LUNG].sum()
    mask = lung_mask(hu, S2)
    assert not mask[core].any()
    assert _exact(mask, boxes)


def test_a_second_lung_of_15_percent_of_the_first_is_kept():
    # pockets below 0.5 % of the largest are dropped, a second lung of >= 10 % is not
    hu, boxes = _chest(right=(0, 8, 8, 32, 8, 25), left=(0, 8, 10, 16, 38, 48))
    ratio = boxes[LEFT_LUNG].sum() / boxes[RIGHT_LUNG].sum()
    assert 0.1 < ratio < 0.2
    assert _exact(lung_mask(hu, S2), boxes)


def test_an_air_pocket_on_the_first_lungs_side_is_no_second_lung():
    hu, boxes = _chest(right=(0, 8, 8, 32, 8, 20), left=None)
    hu[2:6, 12:28, 22:26] = -850.0  # a separate pocket, right of the midline (29.5), 1/3 of the lung
    mask = lung_mask(hu, S2)
    assert _exact(mask, boxes)


def _airway_chest():
    """(Z, Y, X) = (10, 30, 60) at (2, 4, 2) mm: lungs in slices 0..5, a 640 mm^2 (8 x 8 px of 8 mm^2) trachea on
    the midline (29.5) in slices 5..9, joined at slice 5 to the right lung by a bar of air."""
    hu, boxes = _chest(shape=(10, 30, 60), body=(2, 28, 3, 57), right=(0, 6, 6, 24, 8, 25), left=(0, 6, 6, 24, 35, 52))
    trachea = np.zeros(hu.shape, bool)
    trachea[5:, 8:16, 26:34] = True
    hu[trachea] = -1000.0
    hu[5, 10:12, 25:26] = -1000.0
    return hu, boxes, trachea


def test_trachea_size_limit_is_in_mm2_with_anisotropic_pixels():
    hu, boxes, trachea = _airway_chest()
    mask = lung_mask(hu, (2.0, 4.0, 2.0), closing_mm=0.0)
    assert not mask[6:][trachea[6:]].any()
    assert _each_lung_box_labelled(mask, boxes)


def test_a_lung_apex_off_the_midline_is_not_taken_for_the_trachea():
    # the body is 54 columns wide (half-width 27): seeds lie within 0.15 * 27 = 4 columns of the midline; an apex
    # 6 columns off it, joined below to the right lung, stays in the mask
    hu, boxes = _chest(shape=(10, 30, 60), body=(2, 28, 3, 57), right=(0, 6, 6, 24, 8, 25), left=(0, 6, 6, 24, 35, 52))
    apex = np.zeros(hu.shape, bool)
    apex[6:, 10:14, 22:26] = True
    hu[apex] = -850.0
    mask = lung_mask(hu, (2.0, 4.0, 2.0), closing_mm=0.0)
    assert (mask[apex] == RIGHT_LUNG).all()


def test_touching_lungs_with_the_right_one_aerated_medially_are_cut_between_the_centres():
    # the mirror image of the test in test_lungmask.py (the right lung aerated only medially)
    from covseg.phantom import chest_phantom

    spacing = (2.5, 0.7, 0.7)
    hu, parts = chest_phantom(shape=(30, 192, 192), spacing=spacing, gap_mm=-4.0, noise=0.0)
    left = parts["left"]
    cons = left & (np.arange(hu.shape[2])[None, None, :] > np.quantile(np.nonzero(left)[2], 0.45))
    hu[cons] = 20.0
    aerated = left & ~cons
    mask = lung_mask(hu[:, :, ::-1].copy(), spacing)
    assert np.mean(mask[aerated[:, :, ::-1]] == RIGHT_LUNG) >= 0.95
    right = parts["right"][:, :, ::-1]
    assert 2.0 * np.sum((mask == LEFT_LUNG) & right) / (np.sum(mask == LEFT_LUNG) + right.sum()) >= 0.97


def test_closing_radius_uses_the_in_plane_spacing():
    # thick slices (5 mm), 2 mm pixels: a 15 mm closing is 8 px; a +20 HU notch 10 px wide, 5 px deep in the
    # lateral wall of the right lung is closed (but for the outermost column: an octagon is no square)
    hu, boxes = _chest(shape=(6, 40, 60), right=(0, 6, 8, 32, 6, 25))
    notch = np.zeros(hu.shape, bool)
    notch[:, 15:25, 6:11] = True
    hu[notch] = 20.0
    mask = lung_mask(hu, (5.0, 2.0, 2.0))
    assert (mask[:, 15:25, 7:11] == RIGHT_LUNG).all()


def test_check_tiny_lung_uses_the_in_plane_spacing():
    mask = np.zeros((4, 40, 40), np.uint8)
    mask[:, 5:35, 2:17] = RIGHT_LUNG  # 450 px of 2 mm^2 = 900 mm^2 < 10 cm^2 (slices 5 mm: not an area)
    mask[:, 5:35, 20:38] = LEFT_LUNG  # 540 px = 1080 mm^2
    w = check_lung_mask(mask, (5.0, 1.0, 2.0))
    assert len(w) == 1 and "right lung is tiny" in w[0]


def test_check_tiny_lung_without_spacing_is_in_pixels():
    mask = np.zeros((2, 200, 200), np.uint8)  # 0.2 % of 40 000 px = 80 px
    mask[:, 10:18, 10:18] = RIGHT_LUNG  # 64 px
    mask[:, 10:20, 100:110] = LEFT_LUNG  # 100 px
    w = check_lung_mask(mask)
    assert len(w) == 1 and "right lung is tiny" in w[0]


def test_enclosed_air_with_only_40_percent_of_it_in_the_body_is_no_lung():
    # slices 0..3 (neck): the patient is smaller than a vial beside him, which is then the "body"; its air cavity,
    # through all 10 slices, has 4/10 of its voxels in the body: mostly outside, dropped
    hu, boxes = _chest(shape=(10, 40, 100), right=(4, 10, 12, 32, 10, 25), left=(4, 10, 12, 32, 35, 50))
    hu[:4] = -1000.0
    hu[:4, 15:30, 20:40] = 40.0
    hu[:, 8:36, 64:96] = 40.0
    hu[:, 10:34, 66:94] = -1000.0
    mask = lung_mask(hu, S2)
    assert not mask[:, :, 60:].any()
    assert _exact(mask, boxes)


def _trachea_chest(shape=(10, 30, 60)):
    return _chest(shape=shape, body=(2, 28, 3, 57), right=(0, 6, 6, 24, 8, 25), left=(0, 6, 6, 24, 35, 52))


def test_a_trachea_shifting_by_its_width_between_slices_is_traced():
    # in-plane neighbours count: the trachea's top slice (rows 8..11) only touches, diagonally-free, the next (12..15)
    hu, boxes = _trachea_chest()
    trachea = np.zeros(hu.shape, bool)
    trachea[9, 8:12, 26:34] = True
    trachea[5:9, 12:16, 26:34] = True
    hu[trachea] = -1000.0
    hu[5, 13:15, 25:26] = -1000.0  # joined to the right lung in slice 5
    mask = lung_mask(hu, (2.0, 4.0, 2.0), closing_mm=0.0)
    assert not mask[6:][trachea[6:]].any()
    assert _each_lung_box_labelled(mask, boxes)


def test_lung_ends_between_two_slice_blocks_are_refined_along_z():
    # 1 mm slices (blocks of 2 slices): the lungs fill slices 3..12, the blocks (2, 3) and (12, 13) are half lung
    hu, boxes = _chest(shape=(16, 40, 60), right=(3, 13, 8, 32, 8, 25), left=(3, 13, 8, 32, 35, 52))
    assert _exact(lung_mask(hu, (1.0, 2.0, 2.0)), boxes)


def test_a_bronchus_just_above_the_lung_apex_stays_out_with_thin_slices():
    # 1 mm slices: trachea on the midline (slices 14..19), a bronchus in slices 12..13 over the right lung's apex
    # (slices 0..11); the bronchus is traced (airway) and the lung's boundary band must not take it back
    hu, boxes = _chest(shape=(20, 40, 60), right=(0, 12, 8, 32, 8, 25), left=(0, 12, 8, 32, 35, 52))
    airway = np.zeros(hu.shape, bool)
    airway[14:, 10:18, 26:34] = True
    airway[12:14, 10:18, 16:34] = True
    hu[airway] = -1000.0
    mask = lung_mask(hu, (1.0, 2.0, 2.0), closing_mm=0.0)
    assert not mask[airway].any()
    assert _exact(mask, boxes)


def test_body_is_4_connected_a_table_touching_at_a_corner_is_not_in_it():
    hu, _ = _chest(right=None, left=None, shape=(4, 50, 90), body=(3, 30, 10, 30))
    hu[:, 30:34, 30:80] = 40.0  # its corner (30, 30) touches the patient's (29, 29) diagonally only
    assert body_midline(hu, S2) == pytest.approx(19.5, abs=1e-6)


def _bridged(right_x, left_x, bridge_x):
    hu, boxes = _chest(shape=(6, 40, 60), body=(3, 37, 3, 56), right=(0, 6, 8, 32) + right_x, left=(0, 6, 8, 32) + left_x)
    hu[:, 19:21, bridge_x[0]:bridge_x[1]] = -850.0  # lungs joined by a thin bridge: one air component
    return hu, boxes


def test_touching_lungs_are_cut_at_the_bridge_column_nearest_the_midline():
    # the body over columns 3..55: midline 29; the bridge spans columns 25..34 (equal lung in each): cut at 29
    hu, boxes = _bridged((8, 25), (35, 52), (25, 35))
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert _each_lung_box_labelled(mask, boxes)
    # (column 29, the left side's edge next to the cut, goes to the right lung's boundary band, filled first)
    assert (mask[:, 19:21, 25:29] == RIGHT_LUNG).all() and (mask[:, 19:21, 31:35] == LEFT_LUNG).all()


def test_touching_lungs_are_cut_at_a_junction_five_columns_off_the_midline():
    # the junction (columns 23..25) lies 4..6 columns right of the midline (29), within 0.3 half-widths (8.0)
    hu, boxes = _bridged((8, 23), (26, 52), (23, 26))
    mask = lung_mask(hu, S2, closing_mm=0.0)
    assert _each_lung_box_labelled(mask, boxes)


def test_a_lung_ending_inside_the_first_or_last_block_of_slices_keeps_no_tissue_slice() -> None:
    # 2-slice blocks at 1 mm slices and 2 mm pixels; the lungs fill slices 1-10 of 12. Before: the edge blocks
    # counted as interior (outside the volume was taken for lung), and slices 0 and 11's tissue (1320 voxels at
    # +40 HU) was labelled lung
    hu = np.full((12, 40, 60), -1000.0, np.float32)
    hu[:, 3:37, 3:57] = 40.0
    hu[1:11, 8:32, 8:25] = -850.0
    hu[1:11, 8:32, 35:52] = -850.0
    mask = lung_mask(hu, (1.0, 2.0, 2.0))
    assert not mask[hu > 0].any()
    assert (mask > 0).sum() == 10 * 24 * 34 and set(np.unique(mask[1:11, 8:32, 8:25])) == {1}
