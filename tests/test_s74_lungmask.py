"""Session 74, lungmask: the whole-scan lung mask walked through with small synthetic scans. A thin slab of thin slices
(lungs one or two 2-mm blocks thick) no longer comes out empty; a gas pocket in the lowest third of the single lung's
height (a stomach bubble beside one lung) is no second lung; an empty mask of grey values (an image stack) says what
to check about its window; the grey-to-HU mapping of 8-bit slices checked by hand."""
from __future__ import annotations

import numpy as np
import pytest

from covseg.lungmask import LEFT_LUNG, RIGHT_LUNG, check_lung_mask, lung_mask
from covseg.scan import grey_to_hu

S2 = (2.0, 2.0, 2.0)


Box = tuple[int, int, int, int, int, int]


def _box_chest(nz: int, right: Box | None, left: Box | None) -> tuple[np.ndarray, np.ndarray]:
    """``nz`` slices of 40 x 60 voxels: a body box (40 HU, rows 3..36, columns 3..56) in air (-1000 HU) holding the
    right and left lung (-850 HU) as boxes ``(z0, z1, y0, y1, x0, x1)`` (half open; None: none). Returns the HU
    volume and the expected mask (0 / 1 right / 2 left)."""
    hu = np.full((nz, 40, 60), -1000.0, np.float32)
    hu[:, 3:37, 3:57] = 40.0
    expect = np.zeros(hu.shape, np.uint8)
    for k, b in ((RIGHT_LUNG, right), (LEFT_LUNG, left)):
        if b is not None:
            expect[b[0]:b[1], b[2]:b[3], b[4]:b[5]] = k
    hu[expect > 0] = -850.0
    return hu, expect


@pytest.mark.parametrize("nz, slice_mm", [(1, 1.0), (2, 1.0), (3, 1.0), (2, 0.5), (5, 0.5)])
def test_a_thin_slab_of_thin_slices_keeps_both_lungs(nz: int, slice_mm: float) -> None:
    # 1 mm slices are averaged in blocks of 2 along Z (0.5 mm: 4): lungs one or two blocks thick had no interior
    # along Z, so nothing seeded them at full resolution and both were dropped as islands (an empty mask); the
    # real two-slice CT of test_lungmask (1 mm) only kept its lungs through their vessels
    hu, expect = _box_chest(nz, (0, nz, 8, 32, 8, 25), (0, nz, 8, 32, 35, 52))
    mask = lung_mask(hu, (slice_mm, 2.0, 2.0))
    assert np.array_equal(mask, expect)  # 408 voxels a lung a slice
    assert check_lung_mask(mask, (slice_mm, 2.0, 2.0)) == []


def test_a_gas_pocket_in_the_single_lungs_lowest_third_is_no_second_lung() -> None:
    # right lung in slices 2..13; a left-sided pocket (19 % of the lung) in slices 1..5: its top, 5, lies below
    # 2 + 11 / 3 = 5.67 (a stomach bubble below the diaphragm beside a single lung), so it is no left lung
    hu, expect = _box_chest(16, (2, 14, 8, 32, 8, 25), None)
    hu[1:6, 12:28, 38:50] = -1000.0
    assert 0.1 < (5 * 16 * 12) / (12 * 24 * 17) < 0.2
    mask = lung_mask(hu, S2)
    assert np.array_equal(mask, expect)
    assert check_lung_mask(mask, S2) == ["only the right lung was found; the left lung is missing from the mask"]


def test_a_small_second_lung_reaching_above_the_lowest_third_is_kept() -> None:
    # the same pocket one slice taller, top 6 >= 5.67: a small left lung (a lower lobe), kept
    hu, expect = _box_chest(16, (2, 14, 8, 32, 8, 25), (1, 7, 12, 28, 38, 50))
    assert np.array_equal(lung_mask(hu, S2), expect)


def test_an_empty_mask_of_grey_values_names_the_window_not_hounsfield_units() -> None:
    empty = np.zeros((2, 8, 8), np.uint8)
    assert check_lung_mask(empty) == [
        "no lung found: the lung mask is empty (is this a chest CT in Hounsfield units?)"]
    (grey,) = check_lung_mask(empty, is_hu=False)
    assert grey.startswith("no lung found: the lung mask is empty") and "Hounsfield" not in grey
    assert "lung window" in grey and "soft-tissue window" in grey


def test_8_bit_grey_maps_back_through_the_lung_window_by_hand() -> None:
    # level -600, width 1500: grey 0 is -1350 HU, 255 is +150, 85 (1/3) is -850 (lung), 136 (0.533) is -550
    grey = np.array([0, 85, 136, 255], np.uint8) / np.float32(255.0)
    assert grey_to_hu(grey) == pytest.approx([-1350.0, -850.0, -550.0, 150.0], abs=1e-3)
    # a body at 40 HU exported in the lung window (grey 0.927) stays above the air threshold (-320 HU)
    assert grey_to_hu(np.array([(40.0 + 1350.0) / 1500.0], np.float32))[0] == pytest.approx(40.0, abs=1e-3)
