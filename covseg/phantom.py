"""A synthetic chest CT phantom with known lungs and lesions, for tests, benchmarks and demonstrations.

All arrays are ``(Z, Y, X)`` in covseg's canonical orientation (see :mod:`covseg.volumes`): Z inferior to
superior, Y anterior to posterior, X patient right to left; values in Hounsfield units.
"""
from __future__ import annotations

import numpy as np

__all__ = ["chest_phantom"]


def _ellipsoid(z, y, x, centre, axes) -> np.ndarray:
    return ((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((x - centre[2]) / axes[2]) ** 2 <= 1


def _tube(z, y, x, start, end, radius) -> np.ndarray:
    """Voxels within ``radius`` mm of the segment start-end (points (z, y, x) in mm)."""
    p0, d = np.asarray(start, float), np.asarray(end, float) - np.asarray(start, float)
    t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / float(d @ d)
    t = np.clip(t, 0.0, 1.0)
    return (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2 <= radius**2


def chest_phantom(shape: tuple[int, int, int] = (30, 192, 192), spacing: tuple[float, float, float] = (2.5, 0.7, 0.7),
                  noise: float = 15.0, gap_mm: float | None = None, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
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
    # a copy, not np.broadcast_to's read-only view: every mask in ``parts`` is an ordinary writable array
    body = np.broadcast_to((y / (0.40 * H)) ** 2 + (x / (0.46 * W)) ** 2 <= 1, shape).copy()
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
