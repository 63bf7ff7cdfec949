"""Smoothing the multiclass type map after prediction: a screen over a ``covseg cv`` folder's fold models.

Each fold model (``last.pt``, as ``covseg cv`` scores it) predicts its own held-out slices at their own size; each
candidate turns the class probabilities ``(C, H, W)`` (channel 0 background, 1 GGO, 2 consolidation, 3 pleural
effusion where a scheme has it) into a label map:

* ``as is``: the arg-max (reproduces the folds' per-image Dice in ``cv.json``);
* ``prob blur σ``: every class's probability blurred (Gaussian, σ pixels), then the arg-max;
* ``type blur σ``: the arg-max's lesion region kept; inside it, the lesion class whose blurred probability is largest;
* ``component vote``: each 8-connected component of the arg-max's lesion region takes, whole, the lesion class
  with the largest summed probability over it.

Per fold, the candidate with the best mean of the lesion classes' per-image Dice on the other folds' images (ties to
the earlier, milder candidate) is scored on the fold's own images: the nested figure (docs/recipes.md, session 72).
Inference only.

    python benchmarks/smooth_screen.py runs/cv-s69-mc [--data DIR] [--folds 5]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from cv_screen import multiclass_fold_dice, over_folds, print_nested_multiclass

CANDIDATES: list[tuple[str, float]] = ([("as is", 0)] + [("prob blur", s) for s in (1, 2, 4)]
                                       + [("type blur", s) for s in (2, 4, 8, 16)] + [("component vote", 0)])
EIGHT_CONNECTED = np.ones((3, 3), bool)


def blurred(probs: np.ndarray, sigma: float) -> np.ndarray:
    """``probs`` ``(C, H, W)`` with each channel blurred by a Gaussian of ``sigma`` pixels (reflecting edges)."""
    from scipy import ndimage

    return np.stack([ndimage.gaussian_filter(p.astype(np.float64), sigma, mode="reflect") for p in probs])


def retype(probs: np.ndarray, region: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    """Label map ``(H, W)``: 0 outside ``region`` ``(H, W)`` (bool); inside it the lesion class (1..C-1) chosen by
    ``kind``: ``"type blur"`` (the largest blurred lesion probability per pixel) or ``"component vote"`` (one class
    per 8-connected component of ``region``, the largest summed probability over it)."""
    from scipy import ndimage

    lesion = probs[1:]
    out = np.zeros(region.shape, np.int64)
    if kind == "type blur":
        types = blurred(lesion, sigma).argmax(0) + 1
        out[region] = types[region]
        return out
    components, n = ndimage.label(region, structure=EIGHT_CONNECTED)
    if n == 0:
        return out
    sums = np.stack([np.bincount(components.ravel(), weights=p.ravel(), minlength=n + 1) for p in lesion])
    winner = sums.argmax(0) + 1  # (n + 1,): each component's class; index 0 (outside) is masked below
    out[region] = winner[components[region]]
    return out


def label_map(probs: np.ndarray, kind: str, sigma: float) -> np.ndarray:
    """The candidate ``(kind, sigma)``'s label map ``(H, W)`` of ``probs`` ``(C, H, W)``."""
    if kind == "as is":
        return probs.argmax(0)
    if kind == "prob blur":
        return blurred(probs, sigma).argmax(0)
    if kind in ("type blur", "component vote"):
        return retype(probs, probs.argmax(0) > 0, kind, sigma)
    raise ValueError(f"unknown candidate {kind!r}")


def fold_dice(cv_dir: Path, fold: int, data: str | None) -> np.ndarray:
    """One fold's per-image Dice means ``(candidates, 2)`` (GGO, consolidation)."""
    return multiclass_fold_dice(cv_dir, fold, data, CANDIDATES, label_map)


def _name(kind: str, sigma: float) -> str:
    return f"{kind} σ = {sigma:g}" if kind in ("prob blur", "type blur") else kind


def main(argv: list[str] | None = None) -> int:
    dice_ = np.stack(over_folds("smooth_screen", __doc__.splitlines()[0], argv, fold_dice, min_folds=2,
                                kind="multiclass "))  # (folds, candidates, 2)
    print_nested_multiclass(dice_, [_name(kind, sigma) for kind, sigma in CANDIDATES])
    return 0


if __name__ == "__main__":
    sys.exit(main())
