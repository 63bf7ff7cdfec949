"""Intensity normalisation: every image becomes float32 in [0, 1] before it reaches a model."""
from __future__ import annotations

import numpy as np

__all__ = ["LUNG_WINDOW", "window_hu", "scale_uint8", "to_unit_range"]

LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)
"""Default lung window as (level, width) in Hounsfield units."""


def window_hu(hu: np.ndarray, level: float = LUNG_WINDOW[0], width: float = LUNG_WINDOW[1]) -> np.ndarray:
    """Clip HU to ``[level - width/2, level + width/2]`` and scale to float32 ``[0, 1]``."""
    low = level - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - low) / float(width)
    return np.clip(out, 0.0, 1.0, out=out)


def scale_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 8-bit grey values 0..255 to float32 ``[0, 1]``."""
    return np.asarray(image, dtype=np.float32) / 255.0


def to_unit_range(image: np.ndarray, is_hu: bool, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Normalise an image: window HU data, scale 8-bit data; other ranges are min-max scaled.

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
        return image / 255.0
    lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 1.0)
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
