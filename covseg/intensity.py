"""Intensity normalisation: every image becomes float32 in [0, 1] before it reaches a model."""
from __future__ import annotations

import numpy as np

from covseg.errors import CovsegError

__all__ = ["HU_MIN_THRESHOLD", "LUNG_WINDOW", "NORMALIZATIONS", "RAW_CT_MAX", "fill_non_finite", "window_hu", "scale_uint8",
           "scale_stored_grey", "raw_ct_warning", "to_unit_range", "equalize", "stretch_percentiles",
           "normalize_image", "QUANTILE_LEVELS", "grey_quantiles", "match_quantiles"]

NORMALIZATIONS: tuple[str, ...] = ("none", "equalize", "percentile")
"""Per-slice intensity normalisations applied after :func:`to_unit_range` (``data.normalize``)."""

LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)
"""Default lung window as (level, width) in Hounsfield units."""

HU_MIN_THRESHOLD: float = -100.0
"""Data whose minimum is below this are Hounsfield units (air reaches about -1000 HU): NIfTI, signed or float TIFF
data, a DICOM slice without RescaleIntercept."""


RAW_CT_MAX: int = 4095
"""A 16-bit grey image whose largest value is at most this (under 1/16 of 0..65535) looks like raw 12-bit CT numbers
(HU + 1024) rather than display grey: / 65535 it reads almost black (see :func:`raw_ct_warning`)."""


def fill_non_finite(data: np.ndarray, source: str) -> tuple[np.ndarray, str | None]:
    """``data`` with its NaN/infinite values set to its finite minimum (air, for CT), and a warning naming
    ``source`` and how many were set (None when all were finite). All non-finite: :class:`CovsegError`.

    Without it one NaN makes ``data.min()`` NaN: the HU test fails and min-max scaling turns the slice black."""
    finite = np.isfinite(data)
    if finite.all():
        return data, None
    if not finite.any():
        raise CovsegError(f"{source}: holds no finite values; replace the file")
    fill = float(data[finite].min())
    return (np.where(finite, data, np.asarray(fill, dtype=data.dtype)),
            f"{source}: {int((~finite).sum())} NaN/infinite voxels were set to {fill:g}")


def window_hu(hu: np.ndarray, level: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """Clip HU to ``[level - width/2, level + width/2]`` and scale to float32 ``[0, 1]``."""
    low = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - low) / float(width)
    return np.clip(out, 0.0, 1.0, out=out)


def scale_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 8-bit grey values 0..255 to float32 ``[0, 1]``."""
    return np.asarray(image, dtype=np.float32) / 255.0


def scale_stored_grey(data: np.ndarray, sixteen_bit: bool = False) -> np.ndarray | None:
    """Display grey values as stored in an image file, to float32 ``[0, 1]``: 8-bit / 255, unsigned 16-bit (or
    ``sixteen_bit``: a 16-bit PNG that Pillow loads as signed 32-bit, mode ``"I"``) / 65535. None for other data
    (signed or float samples, which may hold HU). Shape kept."""
    if data.dtype == np.uint8:
        return scale_uint8(data)
    if data.dtype.kind == "u" or sixteen_bit:  # 16-bit samples span 0..65535 (PNG semantics)
        return np.clip(data.astype(np.float32) / np.float32(65535.0), 0.0, 1.0)
    return None


def raw_ct_warning(data: np.ndarray, source: str, sixteen_bit: bool = False) -> str | None:
    """A one-line warning when 16-bit grey ``data`` (``uint16``, or ``sixteen_bit`` as for
    :func:`scale_stored_grey`) reach at most :data:`RAW_CT_MAX`: raw 12-bit CT numbers, which :func:`scale_stored_grey`
    reads as almost black display grey, so a model predicts next to nothing; None otherwise (and for all-zero data).
    The values are not changed: whether they are HU + 1024 or dark grey cannot be told for sure."""
    if not (data.dtype == np.uint16 or sixteen_bit) or not data.size:
        return None
    lo, hi = int(data.min()), int(data.max())
    if not 0 < hi <= RAW_CT_MAX:
        return None
    return (f"{source}: 16-bit values {lo}..{hi} use under 1/16 of the 16-bit range, like raw 12-bit CT numbers "
            "(HU + 1024), not display grey; read / 65535 they are almost black and predictions will be poor: give "
            "the scan as NIfTI or DICOM in HU, or as 8-bit lung-windowed PNGs")


def to_unit_range(image: np.ndarray, is_hu: bool, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Normalise an image: window HU data; values already in [0, 1] as they are; a [0, 1] image that overshoots a
    little (fractional values up to 2, such as a resampled slice reaching 1.02) clipped to [0, 1]; other data in
    0..255 (``uint8``, whole numbers, or fractional values above 2) / 255, the same scale for every slice; other
    ranges min-max scaled.

    Shape: any; returns float32 of the same shape.
    """
    if is_hu:
        return window_hu(image, *window)
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return scale_uint8(image)
    image = image.astype(np.float32)
    if image.size and image.min() >= 0.0 and image.max() <= 1.0:
        return image
    if image.size and image.min() >= 0.0 and image.max() <= 255.0:
        if image.max() <= 2.0 and not np.array_equal(image, np.round(image)):  # [0, 1] data with an overshoot
            return np.clip(image, 0.0, 1.0)
        return image / 255.0
    lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 1.0)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def equalize(image: np.ndarray, bins: int = 1024) -> np.ndarray:
    """Histogram-equalise a ``[0, 1]`` image: each pixel becomes the mid-rank of its grey level.

    The result is float32 in ``(0, 1)`` of the same shape, ``(cdf_below + cdf_at / 2)`` of the pixel's bin,
    so it does not change when the input goes through any increasing grey-level map (another window
    level / width, gamma, brightness) that keeps distinct levels distinct: slices exported with different
    CT windows come out alike. Levels are binned into ``bins`` equal steps of ``[0, 1]``.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        return image.copy()
    index = np.clip((image * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index.ravel(), minlength=bins).astype(np.float64)
    below = np.cumsum(counts) - counts
    midrank = ((below + counts / 2.0) / image.size).astype(np.float32)
    return midrank[index]


def stretch_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map a ``[0, 1]`` image's ``low``-th percentile to 0 and its ``high``-th to 1, linearly, clipped to ``[0, 1]``.

    Unlike :func:`equalize` it keeps grey-level differences linear (how much denser consolidation is than
    GGO), and it undoes any increasing linear grey-level map (another window level / width, brightness,
    contrast) as long as neither percentile falls in a clipped range. Same shape, float32. An image whose two
    percentiles coincide but that is not flat (at least ``high - low`` % of its pixels at one grey level, e.g. a dark
    slice with a small bright region) is min-max scaled instead, so that the region is kept; a flat image becomes all
    zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.size == 0:
        return image.copy()
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
        if hi <= lo:
            return np.zeros_like(image)
    out = (image - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalize_image(image: np.ndarray, method: str) -> np.ndarray:
    """Apply the per-slice normalisation ``method`` (one of :data:`NORMALIZATIONS`) to a ``[0, 1]`` image."""
    if method == "none":
        return np.asarray(image, dtype=np.float32)
    if method == "equalize":
        return equalize(image)
    if method == "percentile":
        return stretch_percentiles(image)
    raise CovsegError(f"unknown normalisation {method!r}: use one of {', '.join(NORMALIZATIONS)}")


QUANTILE_LEVELS = 257
"""How many evenly spaced levels (0, 1/256, ..., 1) a reference grey-level quantile function holds."""


def grey_quantiles(images: list[np.ndarray], levels: int = QUANTILE_LEVELS) -> np.ndarray:
    """The mean quantile function of ``images`` (each ``(H, W)`` in [0, 1]): ``(levels,)`` float64, the grey
    level below which each share ``0, 1 / (levels - 1), ..., 1`` of an image's pixels lies, averaged over the
    images (the 1-D Wasserstein barycentre of their grey-level distributions). Non-decreasing."""
    if not images:
        raise ValueError("grey_quantiles needs at least one image")
    shares = np.linspace(0.0, 1.0, levels)
    return np.mean([np.quantile(np.asarray(x, dtype=np.float64), shares) for x in images], axis=0)


def match_quantiles(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` ``(H, W)`` with its grey levels mapped so that their distribution follows ``reference`` (a quantile
    function from :func:`grey_quantiles`): each distinct grey value goes to the reference's grey level at the share
    of pixels at or below it (histogram matching, as ``skimage.exposure.match_histograms``). Order is kept: a brighter
    pixel never becomes darker than a dimmer one. Returns float32 of the same shape."""
    image = np.asarray(image)
    reference = np.asarray(reference, dtype=np.float64)
    values, inverse, counts = np.unique(image.ravel(), return_inverse=True, return_counts=True)
    shares = np.cumsum(counts) / image.size
    mapped = np.interp(shares, np.linspace(0.0, 1.0, reference.size), reference)
    return mapped[inverse].reshape(image.shape).astype(np.float32)
