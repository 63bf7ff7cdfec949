"""Lung-involvement figures from a lesion label map and a lung mask: volumes, percentages, severity scores.

Shape and label conventions: every array is ``(Z, Y, X)`` in the canonical orientation of
:mod:`covseg.volumes`; ``spacing`` is ``(Z, Y, X)`` mm; volumes are reported in mL (cm^3).

* ``lesions``: integer label map, 0 background, ``c > 0`` the class named ``class_names[c]``
  (e.g. the multiclass scheme 1 GGO, 2 consolidation, 3 pleural effusion; or binary 1 infection). Classes
  listed as ``pleural`` (effusion) are findings outside the lung parenchyma: they are neither lung volume
  nor lung involvement, and are reported by volume only;
* ``lungs``: :func:`covseg.lungmask.lung_mask` output, 0 outside, 1 right lung, 2 left lung.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = ["SIDES", "SEVERITY_BUCKETS", "severity_score", "percent_text", "share_text", "nonzero_text", "quantify",
           "remove_small_components", "restrict_to_lungs"]

SIDES: dict[int, str] = {1: "right", 2: "left"}
"""Lung mask value -> name of the patient's side."""

SEVERITY_BUCKETS: tuple[tuple[int, str], ...] = (
    (0, "none (0 %)"),
    (1, "< 5 %"),
    (2, "5 - 25 %"),
    (3, "> 25 % and < 50 %"),
    (4, "50 - 75 %"),
    (5, "> 75 %"),
)
"""The 0-5 involvement score and the percentage range of lung it stands for (boundaries as stated)."""


def severity_score(percent: float) -> int:
    """Score the percentage of a lung involved by lesions, 0-5.

    0: no involvement (exactly 0 %); 1: above 0 and below 5 %; 2: 5 to 25 % inclusive; 3: above 25 and below
    50 % (the "26-49 %" bucket, so 25.5 % -> 3 and 49.9 % -> 3); 4: 50 to 75 % inclusive; 5: above 75 %.
    Raises ValueError outside 0..100 or for NaN.
    """
    p = float(percent)
    if math.isnan(p) or p < 0.0 or p > 100.0:
        raise ValueError(f"percent must lie in 0..100, got {percent!r}")
    if p == 0.0:
        return 0
    if p < 5.0:
        return 1
    if p <= 25.0:
        return 2
    if p < 50.0:
        return 3
    if p <= 75.0:
        return 4
    return 5


def nonzero_text(value: float, decimals: int = 1) -> str:
    """``value`` (a volume in mL, a percentage) with ``decimals`` places, or as many more as it takes for a non-zero
    value not to read as 0: 0.04 mL is "0.04", not "0.0"."""
    return percent_text(value, decimals=decimals)


def percent_text(percent: float | None, severity: int | None = None, decimals: int = 1) -> str:
    """``percent`` as shown to a reader: ``decimals`` places, or as many more as it takes for a non-zero percentage
    not to read as 0 and, given the ``severity`` shown beside it, for the number to fall in that score's bucket:
    4.97 % with severity 1 is "4.97", not "5.0" (which reads as severity 2), and 0.01 % is "0.01", not "0.0".
    None (a share of no lung: not assessed, as :func:`quantify` gives it) is "n/a"."""
    if percent is None:
        return "n/a"
    for places in range(decimals, 16):
        text = f"{percent:.{places}f}"
        shown = min(max(float(text), 0.0), 100.0)
        if (severity is None or severity_score(shown) == severity) and (shown > 0 or percent <= 0):
            return text
    return repr(float(percent))


def share_text(percent: float | None, severity: int | None = None, decimals: int = 1) -> str:
    """:func:`percent_text` with its sign, "12.5 %", or "n/a" (a share of no lung: not assessed) without one."""
    return "n/a" if percent is None else f"{percent_text(percent, severity, decimals)} %"


def _check_pair(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3:
        raise ValueError(f"{names} must be (Z, Y, X) volumes, got {a.ndim} dimensions")


def _nearest_side(lungs: np.ndarray, points: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Side (1/2) of the lung voxel nearest (in mm) to each ``(N, 3)`` voxel index in ``points``."""
    from scipy.spatial import cKDTree

    inside = lungs > 0
    surface = inside & ~ndimage.binary_erosion(inside)
    coords = np.argwhere(surface)
    scale = np.asarray(spacing, dtype=np.float64)
    _, idx = cKDTree(coords * scale).query(points * scale)
    return lungs[tuple(coords[idx].T)]


def _sides(lesions: np.ndarray, lungs: np.ndarray, spacing: Sequence[float], n_classes: int,
           midline_x: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lung mask with labelled voxels outside it assigned to a side: to its side of ``midline_x`` (right = low X)
    when that is given; without it, to the nearer lung, or with fewer than two lungs in the mask to its side of the
    middle column. Also how many voxels of each class were assigned to each side: ``(3, n_classes)``, row 0 unused
    (every labelled voxel gets a side)."""
    sides = np.where(lungs > 0, lungs, 0).astype(np.uint8)
    outside = (lesions > 0) & (lungs == 0)
    if not outside.any():
        return sides, np.zeros((3, n_classes), np.int64)
    points = np.argwhere(outside)
    if midline_x is None and np.any(lungs == 1) and np.any(lungs == 2):
        sides[outside] = _nearest_side(lungs, points, spacing)
    else:
        # a voxel goes to the lung on its own side of the body's midline only: the nearest lung in 3-D can lie across
        # it (a lung mostly consolidated keeps a small aerated remnant in the mask, and its medial lesions lie
        # nearer the other lung's medial surface), and a lung missing from the mask keeps its lesions
        # the image's middle column in voxel-centre coordinates, as body_midline gives it for a volume with no body;
        # a voxel on the midline itself goes left, as lung_mask splits the sides (right: X < midline)
        mid = (lungs.shape[2] - 1) / 2.0 if midline_x is None else float(midline_x)
        sides[outside] = np.where(points[:, 2] < mid, 1, 2)  # right lung at low X
    index = sides[outside].astype(np.int64) * n_classes + lesions[outside].astype(np.int64)
    return sides, np.bincount(index, minlength=3 * n_classes).reshape(3, n_classes)


def quantify(lesions: np.ndarray, lungs: np.ndarray, spacing: Sequence[float],
             class_names: Mapping[int, str], pleural: Collection[int] = (), midline_x: float | None = None) -> dict:
    """Lung and lesion volumes (mL), percent of lung involved and severity score, per lung and in total.

    Shape: ``lesions`` and ``lungs`` ``(Z, Y, X)`` (see the module docstring); ``spacing`` ``(Z, Y, X)`` mm.

    A lung is its lung-mask voxels plus the lung-lesion voxels on its side, less any voxel of a ``pleural``
    class (an effusion the mask's closing took in): lung lesions found by the model always
    count as lung, since the threshold-based mask can miss dense lesions (consolidation). A voxel outside the
    mask goes to its side of the body's midline ``midline_x`` (a column index such as
    :func:`covseg.lungmask.body_midline` gives; right = low X), never to a lung across it, so a lung mostly or
    wholly missed by the mask keeps its lesions. Without ``midline_x`` it goes to the side whose mask voxel is
    nearest in mm (with only one lung in the mask, or none: to its side of the image's middle column, which is the
    midline only for a patient centred in the field of view: column ``(X - 1) / 2``). A voxel exactly on the midline
    goes to the left lung, as :func:`covseg.lungmask.lung_mask` assigns the sides (right lung: columns below the
    midline). Voxels of a
    ``pleural`` class (e.g. the multiclass scheme's 3, pleural effusion) are given a side the same way but count
    neither as lung nor as lesion: only their volume is reported.

    Returns a JSON-ready dict::

        {"spacing_mm": [z, y, x], "voxel_ml": float, "classes": {"1": name, ...}, "pleural": [name, ...],
         "lesion_outside_mask_ml": float,            # lung-lesion volume added to the lungs as described
         "unreliable": [reason, ...],                # empty when the figures can be trusted as far as this tells
         "right": PART, "left": PART, "total": PART}
        PART = {"lung_ml": float, "lesion_ml": float, "lesion_percent": float | None, "severity": int | None,
                "class_ml": {name: float},           # every class, pleural ones included
                "class_percent": {name: float | None}}  # the lung-lesion classes only

    Percentages are of that part's lung volume; ``severity`` is :func:`severity_score` of ``lesion_percent`` (for
    ``total``, of the whole-lung percentage). A part whose lung volume is 0 is not assessed: its percentages and
    severity are None. ``unreliable`` names each side (one line each) whose lung volume is more than half lesion
    found outside the lung mask: its volume is then the model's lesions rather than the lung (a mask that missed
    the lungs, or a lung missing from it), and its share above 50 % by construction.
    Raises ValueError for mismatched shapes, a label without a name in ``class_names`` or a ``pleural`` id
    that is not one of its classes.
    """
    lesions, lungs = np.asarray(lesions), np.asarray(lungs)
    _check_pair(lesions, lungs, "lesions and lungs")
    if lesions.dtype.kind not in "iub":
        raise ValueError(f"lesions must be an integer label map, got {lesions.dtype}")
    spacing = tuple(float(s) for s in spacing)
    classes = {int(c): str(n) for c, n in class_names.items() if int(c) > 0}
    n_classes = max(classes, default=0) + 1
    present = np.unique(lesions)
    unnamed = [int(v) for v in present if v != 0 and int(v) not in classes]
    if unnamed:
        raise ValueError(f"lesion labels {unnamed} have no name in class_names {classes}")
    bad_lungs = [int(v) for v in np.unique(lungs) if v not in (0, *SIDES)]
    if bad_lungs:
        raise ValueError(f"lung mask values {bad_lungs} are not 0 / 1 (right) / 2 (left)")

    pleural_ids = sorted({int(c) for c in pleural})
    if any(c not in classes for c in pleural_ids):
        raise ValueError(f"pleural classes {pleural_ids} are not all among the lesion classes {classes}")
    lesion_ids = [k for k in sorted(classes) if k not in pleural_ids]
    lung_ids = [0, *lesion_ids]

    sides, outside = _sides(lesions, lungs, spacing, n_classes, midline_x)
    voxel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    index = sides.astype(np.int64) * n_classes + lesions.astype(np.int64)
    counts = np.bincount(index.ravel(), minlength=3 * n_classes).reshape(3, n_classes)

    def part(rows: list[int]) -> dict:
        c = counts[rows].sum(axis=0)
        n_lung, n_lesion = int(c[lung_ids].sum()), int(c[lesion_ids].sum())
        # percentages from voxel counts, not from mL: 69 of 92 voxels is exactly 75 % (severity 4), where
        # 69 * voxel_ml / (92 * voxel_ml) can round to 75.00000000000001 % (severity 5)
        # a share of no lung is not assessed (None), as its severity, not 0 %
        pct = 100.0 * n_lesion / n_lung if n_lung > 0 else None
        return {
            "lung_ml": n_lung * voxel_ml,
            "lesion_ml": n_lesion * voxel_ml,
            "lesion_percent": pct,
            "severity": severity_score(min(pct, 100.0)) if pct is not None else None,
            "class_ml": {name: float(c[k]) * voxel_ml for k, name in sorted(classes.items())},
            "class_percent": {classes[k]: (100.0 * int(c[k]) / n_lung if n_lung > 0 else None)
                              for k in lesion_ids},
        }

    unreliable = []
    for k, name in SIDES.items():
        n_lung, n_off = int(counts[k, lung_ids].sum()), int(outside[k, lesion_ids].sum())
        if n_off > n_lung - n_off:  # more than half of the lung counted is lesion the mask did not see
            unreliable.append(f"{name} lung: {nonzero_text(n_off * voxel_ml)} of its {nonzero_text(n_lung * voxel_ml)} "
                              "mL is lesion outside the lung mask, which holds "
                              f"{nonzero_text((n_lung - n_off) * voxel_ml)} mL")

    return {
        "spacing_mm": list(spacing),
        "voxel_ml": voxel_ml,
        "classes": {str(k): name for k, name in sorted(classes.items())},
        "pleural": [classes[k] for k in pleural_ids],
        "lesion_outside_mask_ml": float(outside[:, lesion_ids].sum()) * voxel_ml,
        "unreliable": unreliable,
        "right": part([1]),
        "left": part([2]),
        "total": part([1, 2]),
    }


def remove_small_components(labels: np.ndarray, spacing: Sequence[float], min_volume_ml: float,
                            separate: Collection[int] = ()) -> np.ndarray:
    """Drop lesions smaller than ``min_volume_ml``; returns a new label map of the same dtype.

    Components are taken over all lesion classes together (label > 0) with 3-D 26-connectivity, so a
    consolidation core inside a GGO patch counts with the patch; a component is removed whole (all its
    classes set to 0) when its volume is below ``min_volume_ml``. The classes in ``separate`` (findings outside the
    lung by nature: pleural effusion) form components of their own, so a lung lesion speck touching an effusion is
    judged by its own size, not the effusion's. ``min_volume_ml <= 0`` removes nothing.
    Shape: ``(Z, Y, X)``, ``spacing`` ``(Z, Y, X)`` mm.
    """
    labels = np.asarray(labels)
    out = labels.copy()
    if min_volume_ml <= 0 or not labels.any():
        return out
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    apart = np.isin(labels, list(separate)) if separate else np.zeros(labels.shape, bool)
    for group in ((labels > 0) & ~apart, apart):
        if not group.any():
            continue
        lab, n = ndimage.label(group, structure=np.ones((3,) * labels.ndim, bool))
        # a component of exactly min_volume_ml stays, whatever the rounding of voxel_ml
        small = np.bincount(lab.ravel()) * voxel_ml < min_volume_ml * (1.0 - 1e-9)
        small[0] = False
        out[small[lab]] = 0
    return out


def restrict_to_lungs(labels: np.ndarray, lungs: np.ndarray, keep: Collection[int] = ()) -> np.ndarray:
    """Drop the lesions that do not touch the lung mask; returns a new label map of the same shape and dtype.

    Shape: ``labels`` and ``lungs`` ``(Z, Y, X)``; ``lungs`` 0 outside, 1 right, 2 left. Components are taken over
    the lesion classes not in ``keep`` together (label > 0) with 3-D 26-connectivity, as in
    :func:`remove_small_components`; a component is kept whole when any of its voxels lies in the lung mask or
    next to it (the mask dilated by one voxel, 26-neighbourhood), and set to 0 otherwise. So a dense lesion the
    threshold mask leaves out (consolidation on the pleura or filling part of a lung: see :mod:`covseg.lungmask`)
    stays, and :func:`quantify` counts it as lung, while findings apart from the lungs go. The classes in ``keep``
    (findings outside the lungs by nature: pleural effusion) are always kept.
    """
    labels, lungs = np.asarray(labels), np.asarray(lungs)
    _check_pair(labels, lungs, "labels and lungs")
    found = (labels > 0) & ~np.isin(labels, list(keep))
    if not found.any():
        return labels.copy()
    # within the lesions' bounding box grown by the one voxel a touching lung voxel can lie beyond it
    box = tuple(slice(max(int(a[0]) - 1, 0), int(a[-1]) + 2)
                for a in (np.flatnonzero(found.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))))
    cube = np.ones((3, 3, 3), bool)
    lab, n = ndimage.label(found[box], structure=cube)
    near = ndimage.binary_dilation(lungs[box] > 0, structure=cube)
    touching = np.zeros(n + 1, bool)
    touching[lab[near]] = True
    touching[0] = True  # background and the kept classes stay as they are
    out = labels.copy()
    out[box][~touching[lab]] = 0
    return out
