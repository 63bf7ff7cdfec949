"""Filling holes and closing gaps in the multiclass lesion region after prediction: a cv screen.

The screen runs over a ``covseg cv`` folder's fold models.
Each fold model (``last.pt``, as ``covseg cv`` scores it) predicts its own held-out slices at their own size. The
lesion region is the arg-max's (any lesion class); each candidate may add pixels to it, which take the lesion class
with the larger probability there, while the region's own pixels keep the arg-max's class:

* ``as is``: the arg-max (reproduces session 72's "as is" row);
* ``fill holes ≤ A``: background components of the region's holes (4-connected, not touching the image's border) of
  at most ``A`` pixels join it (``A`` 0: without a limit);
* ``close r``: what a morphological closing of the region with a disk of radius ``r`` pixels adds joins it.

Per fold, the candidate with the best mean of the lesion classes' per-image Dice on the other folds' images (ties to
the earlier, milder candidate) is scored on the fold's own images: the nested figure (docs/recipes.md, session 73).
Inference only.

    python benchmarks/hole_screen.py runs/cv-s69-mc [--data DIR] [--folds 5] [--wide]

``--wide``: the follow-up's candidates instead (as is, close r = 3, 4, 6, 8, 12; docs/recipes.md, session 73).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from cv_screen import multiclass_fold_dice, over_folds, print_nested_multiclass

CANDIDATES: list[tuple[str, int]] = ([("as is", 0)] + [("fill holes", a) for a in (16, 64, 256, 0)]
                                     + [("close", r) for r in (1, 2, 3)])
WIDE_CANDIDATES: list[tuple[str, int]] = [("as is", 0)] + [("close", r) for r in (3, 4, 6, 8, 12)]
FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def disk(radius: int) -> np.ndarray:
    """A disk of ``radius`` pixels, ``(2r + 1, 2r + 1)`` bool: the pixels whose centre is within ``r`` of the
    middle one."""
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return y * y + x * x <= radius * radius


def holes(region: np.ndarray, max_area: int) -> np.ndarray:
    """``(H, W)`` bool: the background pixels of ``region`` ``(H, W)`` bool that lie in its holes, the 4-connected
    background components not touching the image's border, of at most ``max_area`` pixels (0: any size)."""
    from scipy import ndimage

    components, n = ndimage.label(~region, structure=FOUR_CONNECTED)
    if n == 0:
        return np.zeros_like(region)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]]))
    keep = np.ones(n + 1, bool)
    keep[0] = False  # the region itself
    keep[border] = False
    if max_area:
        keep &= sizes <= max_area
    return keep[components]


def grown(region: np.ndarray, kind: str, size: int) -> np.ndarray:
    """``region`` ``(H, W)`` bool with the candidate ``(kind, size)``'s pixels added."""
    from scipy import ndimage

    if kind == "as is":
        return region
    if kind == "fill holes":
        return region | holes(region, size)
    if kind == "close":
        pad = size + 1  # background beyond the image: scipy's closing would otherwise cut pixels at the border
        padded = np.pad(region, pad)
        closed = ndimage.binary_closing(padded, structure=disk(size))[pad:-pad, pad:-pad]
        return region | closed
    raise ValueError(f"unknown candidate {kind!r}")


def label_map(probs: np.ndarray, kind: str, size: int) -> np.ndarray:
    """The candidate ``(kind, size)``'s label map ``(H, W)`` of ``probs`` ``(C, H, W)`` (0 background, lesion classes
    1..C-1): the arg-max, with the pixels it adds to the lesion region typed by their largest lesion probability."""
    labels = probs.argmax(0)
    region = labels > 0
    added = grown(region, kind, size) & ~region
    labels[added] = probs[1:, added].argmax(0) + 1
    return labels


def fold_dice(cv_dir: Path, fold: int, data: str | None,
              candidates: list[tuple[str, int]] = CANDIDATES) -> np.ndarray:
    """One fold's per-image Dice means ``(candidates, 2)`` (GGO, consolidation)."""
    return multiclass_fold_dice(cv_dir, fold, data, candidates, label_map)


def _name(kind: str, size: int) -> str:
    if kind == "fill holes":
        return f"fill holes ≤ {size} px" if size else "fill holes, any size"
    return f"close r = {size}" if kind == "close" else kind


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    candidates = WIDE_CANDIDATES if "--wide" in argv else CANDIDATES
    argv = [a for a in argv if a != "--wide"]
    dice_ = np.stack(over_folds("hole_screen", __doc__.splitlines()[0], argv,
                                lambda cv_dir, k, data: fold_dice(cv_dir, k, data, candidates), min_folds=2,
                                kind="multiclass "))  # (folds, candidates, 2)
    print_nested_multiclass(dice_, [_name(kind, size) for kind, size in candidates])
    return 0


if __name__ == "__main__":
    sys.exit(main())
