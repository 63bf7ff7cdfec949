"""Whole CT scans: lung mask, slice-by-slice lesion segmentation, clean-up and quantification.

Shapes follow :mod:`covseg.volumes`: ``(Z, Y, X)`` arrays in the canonical orientation, ``spacing`` in mm.
Each slice is prepared the way the COVID-SemiSeg training slices were made: HU through the lung window to
[0, 1], cropped to the bounding box of the slice's lungs plus a margin, resized to the model's input by the
:class:`~covseg.inference.Predictor`, and the prediction pasted back; a slice holding one lung only, or none between
slices with lung, is cropped to span both sides (:func:`scan_crop_boxes`). Other slices without lung are skipped, and a
scan without any is refused (:func:`segment_scan`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from covseg.errors import CovsegError
from covseg.inference import Predictor
from covseg.intensity import LUNG_WINDOW, to_unit_range, window_hu
from covseg.labels import LabelScheme
from covseg.lungmask import LEFT_LUNG, RIGHT_LUNG, body_midline, check_lung_coverage, check_lung_mask, lung_mask
from covseg.progress import progress_bar
from covseg.quantify import quantify, remove_small_components, restrict_to_lungs
from covseg.volumes import Volume, check_voxel_size

__all__ = ["ScanOptions", "ScanResult", "segment_scan", "lung_crop_boxes", "scan_crop_boxes", "grey_to_hu"]


@dataclass
class ScanOptions:
    """Settings of :func:`segment_scan` (defaults are documented in the README)."""

    margin_mm: float = 10.0  # margin around each slice's lung bounding box
    inside_lungs_only: bool = True  # drop lesions (3-D components) that do not touch the (closed) lung mask
    min_lesion_ml: float = 0.05  # remove 3-D lesion components smaller than this (0 keeps all)
    window: tuple[float, float] = LUNG_WINDOW


@dataclass
class ScanResult:
    """Label maps in canonical orientation, quantification and timings of one scan."""

    lesions: np.ndarray  # (Z, Y, X) uint8, class ids of the model's scheme
    lungs: np.ndarray  # (Z, Y, X) uint8, 1 right lung, 2 left lung
    figures: dict[str, Any]
    slices_segmented: int
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def grey_to_hu(grey: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Approximate HU of display grey values (image stacks), taking them as ``window``-windowed.

    Values are first brought to [0, 1] by :func:`covseg.intensity.to_unit_range` (values already in [0, 1]
    kept, a small overshoot of them clipped, 0..255 divided by 255, any other range min-max scaled), then mapped back
    through the window.
    """
    level, width = window
    unit = to_unit_range(np.asarray(grey, np.float32), is_hu=False)
    return unit * width + (level - width / 2)


def lung_crop_boxes(lungs: np.ndarray, spacing: tuple[float, float, float], margin_mm: float,
                    mirror_x: float | None = None) -> list[tuple[int, int, int, int] | None]:
    """Per slice, ``(y0, y1, x0, x1)`` of the lungs' bounding box grown by ``margin_mm``; None without lung.

    With ``mirror_x`` (a column, fractional: the body's midline, :func:`covseg.lungmask.body_midline`) each box's
    columns are widened to their mirror image about it as well. :func:`segment_scan` uses
    :func:`scan_crop_boxes`, which widens the boxes of the slices holding one lung only (see there).

    Shape: ``lungs`` ``(Z, Y, X)``, 0 outside, 1 right, 2 left; ``spacing`` ``(Z, Y, X)`` mm."""
    boxes: list[tuple[int, int, int, int] | None] = []
    _, h, w = lungs.shape
    my, mx = int(round(margin_mm / spacing[1])), int(round(margin_mm / spacing[2]))
    for plane in lungs:
        rows, cols = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
        if rows.size == 0:
            boxes.append(None)
            continue
        x0, x1 = int(cols[0]) - mx, int(cols[-1]) + 1 + mx
        if mirror_x is not None:
            x0, x1 = _with_mirror(x0, x1, mirror_x)
        boxes.append((max(int(rows[0]) - my, 0), min(int(rows[-1]) + 1 + my, h), max(x0, 0), min(x1, w)))
    return boxes


def scan_crop_boxes(lungs: np.ndarray, spacing: tuple[float, float, float], margin_mm: float, midline_x: float
                    ) -> list[tuple[int, int, int, int] | None]:
    """The crops :func:`segment_scan` gives the model, per slice ``(y0, y1, x0, x1)`` or None (skipped).

    A slice whose mask holds both lungs gets its :func:`lung_crop_boxes` box. A slice whose mask holds one lung only
    (the other consolidated or filled there, above the air threshold), or none while slices above and below it hold
    lung, gets a box spanning both sides: its own lung box (for a slice without lung, the rows of the volume's
    lungs), widened to the columns of the volume's lungs plus the margin and to the mirror image of those about the
    body's midline ``midline_x`` (a column, fractional: :func:`covseg.lungmask.body_midline`), so that the model sees
    where the missing lung lies, not only the found lung and its margin. Slices outside the volume's lungs' Z range
    are None. Shape: ``lungs`` ``(Z, Y, X)``, 0 outside, 1 right, 2 left; ``spacing`` ``(Z, Y, X)`` mm."""
    boxes = lung_crop_boxes(lungs, spacing, margin_mm)
    inside = lungs > 0
    zs = np.flatnonzero(inside.any(axis=(1, 2)))
    if zs.size == 0:
        return boxes
    _, h, w = lungs.shape
    my, mx = int(round(margin_mm / spacing[1])), int(round(margin_mm / spacing[2]))
    rows, cols = np.flatnonzero(inside.any(axis=(0, 2))), np.flatnonzero(inside.any(axis=(0, 1)))
    # columns of the volume's lungs plus margin, and their mirror image
    vx0, vx1 = _with_mirror(int(cols[0]) - mx, int(cols[-1]) + 1 + mx, midline_x)
    vy0, vy1 = max(int(rows[0]) - my, 0), min(int(rows[-1]) + 1 + my, h)
    for z in range(int(zs[0]), int(zs[-1]) + 1):
        plane = lungs[z]
        if (plane == RIGHT_LUNG).any() and (plane == LEFT_LUNG).any():
            continue
        y0, y1, x0, x1 = boxes[z] if boxes[z] is not None else (vy0, vy1, w, 0)
        boxes[z] = (y0, y1, max(min(x0, vx0), 0), min(max(x1, vx1), w))
    return boxes


def _with_mirror(x0: int, x1: int, mirror_x: float) -> tuple[int, int]:
    """Columns ``x0 .. x1 - 1`` widened to their mirror image about column ``mirror_x`` as well, ``2m - (x1 - 1) ..
    2m - x0`` (end exclusive, not clipped to the image)."""
    return min(x0, int(np.floor(2 * mirror_x - (x1 - 1)))), max(x1, int(np.ceil(2 * mirror_x - x0)) + 1)


def _one_lung(lungs: np.ndarray) -> bool:
    """Whether the lung mask holds one of the two lungs only."""
    return bool((lungs == RIGHT_LUNG).any()) != bool((lungs == LEFT_LUNG).any())


def segment_scan(volume: Volume, predictor: Predictor, scheme: LabelScheme, options: ScanOptions | None = None,
                 progress: bool = True) -> ScanResult:
    """Lungs, lesions and lung-involvement figures of one scan.

    A ``volume.spacing`` outside :data:`covseg.volumes.SLICE_MM_RANGE` / :data:`~covseg.volumes.PIXEL_MM_RANGE` (not
    mm) raises :class:`~covseg.errors.CovsegError` before any work, and so does a scan in which no lung is found
    (:func:`check_lung_mask`'s reason), before any slice goes to the model: with no lung, no slice is segmented and
    there is no lung to take a share of, so its figures (0 mL of lesion, 0 % of 0 mL) would read as a scan without
    lesions. A side whose figures are unreliable (``figures["unreliable"]``, :func:`covseg.quantify.quantify`: its
    lung more than half lesion outside the mask) gets one warning line naming each such side."""
    options = options or ScanOptions()
    # read_volume refuses these already; a Volume made by hand could hold metres or micrometres, which would make the
    # lung mask allocate tens of GB (or report billions of mL)
    check_voxel_size(volume.spacing, volume.source or "the scan", "its Volume.spacing")
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    hu = volume.hu if volume.is_hu else grey_to_hu(volume.hu, options.window)
    lungs = lung_mask(hu, volume.spacing).astype(np.uint8)
    if not lungs.any():
        (why,) = check_lung_mask(lungs, volume.spacing, is_hu=volume.is_hu)
        raise CovsegError(f"{volume.source or 'the scan'}: {why}; lesions are looked for only on slices with lung and "
                          "given as a share of it, so this scan gets no lesion figures and no outputs")
    warnings = list(volume.warnings) + check_lung_mask(lungs, volume.spacing, is_hu=volume.is_hu) + check_lung_coverage(lungs)
    seconds["lungs"] = time.perf_counter() - tick

    tick = time.perf_counter()
    midline = body_midline(hu, volume.spacing)
    boxes = scan_crop_boxes(lungs, volume.spacing, options.margin_mm, midline)
    todo = [z for z, box in enumerate(boxes) if box is not None]
    lesions = np.zeros(volume.shape, np.uint8)
    step = predictor.batch_size
    with progress_bar(total=len(todo), desc="lesions", unit="slice", disable=not progress,
                      dynamic_ncols=True) as bar:  # wiped on an error, before the error is printed
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            crops = []
            for z in chunk:
                y0, y1, x0, x1 = boxes[z]
                crops.append(window_hu(hu[z, y0:y1, x0:x1], *options.window))
            for z, probs in zip(chunk, predictor(crops)):
                y0, y1, x0, x1 = boxes[z]
                lesions[z, y0:y1, x0:x1] = probs.argmax(0)
            bar.update(len(chunk))
    seconds["lesions"] = time.perf_counter() - tick

    tick = time.perf_counter()
    if options.inside_lungs_only and _one_lung(lungs):  # the missing lung's lesions touch no mask: nothing is dropped
        warnings.append("with one lung in the mask, lesions outside it are kept (as --keep-outside-lungs) and "
                        "counted on their side of the body's midline")
    elif options.inside_lungs_only:
        kept = restrict_to_lungs(lesions, lungs, keep=scheme.pleural).astype(np.uint8)
        gone = np.where(lesions != kept, lesions, np.uint8(0))
        if options.min_lesion_ml > 0:  # only what the small-component filter below would have left: no warning
            gone = remove_small_components(gone, volume.spacing, options.min_lesion_ml,  # for specks apart
                                           separate=scheme.pleural)
        dropped = int(np.count_nonzero(gone))
        if dropped:
            ml = dropped * float(np.prod(volume.spacing)) / 1000.0
            shown = f"{ml:.1f}" if ml >= 0.1 else f"{ml:.2g}"  # a small volume not shown as 0.0
            warnings.append(f"{shown} mL of lesion not touching the lung mask was dropped; --keep-outside-lungs "
                            "keeps it")
        lesions = kept
    if options.min_lesion_ml > 0:
        lesions = remove_small_components(lesions, volume.spacing, options.min_lesion_ml,
                                          separate=scheme.pleural).astype(np.uint8)
    figures = quantify(lesions, lungs, volume.spacing, dict(enumerate(scheme.names)), scheme.pleural,
                       midline_x=midline)
    if figures["unreliable"]:  # one line: the verdict, then why
        warnings.append("the figures are unreliable, the lung mask missing much of the lungs (check lungs.nii.gz): "
                        + "; ".join(figures["unreliable"]))
    seconds["quantify"] = time.perf_counter() - tick
    return ScanResult(lesions, lungs, figures, len(todo), seconds, warnings)
