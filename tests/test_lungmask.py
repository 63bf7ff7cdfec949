"""Lung masks: a synthetic chest phantom (Dice, sides, dense lesions, airways) and a real two-slice CT."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from covseg.lungmask import LEFT_LUNG, RIGHT_LUNG, check_lung_mask, lung_mask

REAL_2SLICES = Path(__file__).resolve().parents[2] / "shared/data/dicom-ct-2slices"


def _ellipsoid(z, y, x, centre, axes) -> np.ndarray:
    return ((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((x - centre[2]) / axes[2]) ** 2 <= 1


def _tube(z, y, x, start, end, radius) -> np.ndarray:
    """Voxels within ``radius`` mm of the segment start-end (points (z, y, x) in mm)."""
    p0, d = np.asarray(start, float), np.asarray(end, float) - np.asarray(start, float)
    t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2 <= radius**2


def chest_phantom(shape=(30, 192, 192), spacing=(2.5, 0.7, 0.7), noise=15.0, gap_mm=None, seed=0):
    """A synthetic chest in canonical (Z, Y, X) orientation; returns (hu float32, parts: dict of bool masks).

    Body: elliptic cylinder at 40 HU in air (-1000). Lungs: ellipsoids at -850 HU, the patient's right lung at
    low X. Lesions inside the lungs: a GGO ellipsoid (-500 HU, right lung) and a dense ball (+20 HU) on the
    left lung's lateral wall. Airways (-1000 HU): trachea from the top slice, main bronchi into both lungs.
    ``gap_mm`` sets the distance between the lungs (negative: they overlap, i.e. touch).
    """
    Z, Y, X = shape
    sz, sy, sx = spacing
    z = ((np.arange(Z) - (Z - 1) / 2) * sz)[:, None, None]
    y = ((np.arange(Y) - (Y - 1) / 2) * sy)[None, :, None]
    x = ((np.arange(X) - (X - 1) / 2) * sx)[None, None, :]
    H, W, D = Y * sy, X * sx, Z * sz
    body = np.broadcast_to((y / (0.40 * H)) ** 2 + (x / (0.46 * W)) ** 2 <= 1, shape)
    ax = 0.15 * W
    cx = 0.2 * W if gap_mm is None else ax + gap_mm / 2
    lung_axes = (0.4 * D, 0.28 * H, ax)
    right = _ellipsoid(z, y, x, (0, 0, -cx), lung_axes)
    left = _ellipsoid(z, y, x, (0, 0, cx), lung_axes)
    ggo = _ellipsoid(z, y, x, (0, 0.05 * H, -cx), (0.15 * D, 0.08 * H, 0.05 * W)) & right
    dense = _ellipsoid(z, y, x, (0, 0, cx + ax), (8.0, 7.0, 7.0)) & left
    top = (Z - 1) / 2 * sz
    carina = (0.15 * D, -0.08 * H, 0.0)
    trachea = _tube(z, y, x, (top + sz, -0.08 * H, 0.0), carina, 0.035 * W)
    bronchi = (_tube(z, y, x, carina, (0.0, -0.02 * H, -cx), 0.02 * W)
               | _tube(z, y, x, carina, (0.0, -0.02 * H, cx), 0.02 * W))
    hu = np.full(shape, -1000.0, np.float32)
    hu[body] = 40.0
    hu[right | left] = -850.0
    hu[ggo] = -500.0
    hu[dense] = 20.0
    hu[trachea | bronchi] = -1000.0
    if noise:
        hu += np.random.default_rng(seed).normal(0.0, noise, shape).astype(np.float32)
    lungs = right | left
    parts = {"right": right, "left": left, "lungs": lungs, "ggo": ggo, "dense": dense,
             "airway_outside": (trachea | bronchi) & ~lungs, "body": body}
    return hu, parts


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom():
    spacing = (2.5, 0.7, 0.7)
    hu, parts = chest_phantom(spacing=spacing)
    return hu, parts, spacing, lung_mask(hu, spacing)


def test_phantom_lungs_dice_and_sides(phantom):
    hu, parts, spacing, mask = phantom
    assert mask.dtype == np.uint8 and mask.shape == hu.shape
    assert set(np.unique(mask).tolist()) == {0, RIGHT_LUNG, LEFT_LUNG}
    assert dice(mask > 0, parts["lungs"]) >= 0.97
    assert dice(mask == RIGHT_LUNG, parts["right"]) >= 0.97  # patient right = low column index
    assert dice(mask == LEFT_LUNG, parts["left"]) >= 0.97
    assert check_lung_mask(mask, spacing) == []


def test_phantom_lesions_stay_inside(phantom):
    _, parts, _, mask = phantom
    assert np.mean(mask[parts["ggo"]] == RIGHT_LUNG) >= 0.99
    assert np.mean(mask[parts["dense"]] == LEFT_LUNG) >= 0.8  # +20 HU ball on the wall; its outer rim: voxelisation


def test_phantom_airways_and_outside_removed(phantom):
    _, parts, _, mask = phantom
    assert not mask[~parts["body"]].any()
    assert np.mean(mask[parts["airway_outside"]] > 0) < 0.2  # trachea / main bronchi outside the lungs


def test_touching_lungs_are_split():
    spacing = (2.5, 1.4, 1.4)
    hu, parts = chest_phantom(shape=(16, 96, 96), spacing=spacing, gap_mm=-3.0, noise=0.0)
    lab, n = ndimage.label(parts["lungs"])
    assert n == 1  # the phantom's lungs form one component
    mask = lung_mask(hu, spacing)
    assert dice(mask == RIGHT_LUNG, parts["right"]) >= 0.9
    assert dice(mask == LEFT_LUNG, parts["left"]) >= 0.9


def test_empty_and_one_sided_masks():
    hu = np.full((3, 40, 40), 40.0, np.float32)  # no air at all
    mask = lung_mask(hu, (2.0, 1.0, 1.0))
    assert not mask.any()
    assert "empty" in check_lung_mask(mask)[0]
    one = np.zeros((3, 40, 40), np.uint8)
    one[:, 10:30, 5:18] = RIGHT_LUNG
    assert any("only the right lung" in w for w in check_lung_mask(one, (2.0, 1.0, 1.0)))
    assert any("tiny" in w for w in check_lung_mask(one, (2.0, 1.0, 1.0)))


def test_real_two_slice_ct_lungs():
    if not REAL_2SLICES.is_dir():
        pytest.skip(f"{REAL_2SLICES} not present")
    from covseg.volumes import read_volume

    volume = read_volume(REAL_2SLICES)
    mask = lung_mask(volume.hu, volume.spacing)
    assert mask.shape == (2, 512, 512)
    assert check_lung_mask(mask, volume.spacing) == []
    pixel_cm2 = volume.spacing[1] * volume.spacing[2] / 100.0
    mid = mask.shape[2] / 2
    for z in range(2):
        lab, n = ndimage.label(mask[z] > 0)
        assert n == 2
        for k, side in ((RIGHT_LUNG, -1), (LEFT_LUNG, 1)):
            area = float((mask[z] == k).sum()) * pixel_cm2
            assert 40.0 <= area <= 250.0, (k, area)
            cx = float(np.nonzero(mask[z] == k)[1].mean())
            assert side * (cx - mid) > 20  # right lung on the image's left half, left lung on its right half
    # nothing outside the body: no mask pixel in the outer band, none in air connected to the border
    assert not mask[:, :40].any() and not mask[:, -40:].any()
    assert not mask[:, :, :40].any() and not mask[:, :, -40:].any()
    for z in range(2):
        air_lab, _ = ndimage.label(volume.hu[z] < -320)
        border = np.unique(np.concatenate([air_lab[0], air_lab[-1], air_lab[:, 0], air_lab[:, -1]]))
        outside = np.isin(air_lab, border[border > 0])
        assert not np.any(mask[z][outside])
        body = ndimage.binary_fill_holes(~outside)
        assert not np.any(mask[z][~body])
