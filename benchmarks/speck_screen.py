"""Removing small lesion specks after prediction: a screen over a ``covseg cv`` folder's five fold models.

Each fold model (``last.pt``, as ``covseg cv`` scores it) predicts its own held-out slices at their own size; the
arg-max's lesion region (every non-background label together, 8-connected) then loses each component smaller
than a candidate's limit — T pixels, or a fraction f of the image's largest lesion component — removed whole.
T = 0 is covseg's own output and reproduces the folds' per-image Dice in ``cv.json``. Per fold, the candidate
with the highest mean per-image Dice on the other folds' images (ties to the milder, earlier candidate) is
applied to the fold's own images: the nested figure, which picked nothing on the images it scores
(docs/recipes.md, session 68).

    python benchmarks/speck_screen.py runs/cv-s67-bin [--data DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from cv_screen import held_out_predictions, over_folds

CANDIDATES: list[tuple[str, float]] = ([("T", t) for t in (0, 10, 20, 50, 100, 200, 400)]
                                       + [("f", f) for f in (0.01, 0.02, 0.05, 0.1)])
EIGHT_CONNECTED = np.ones((3, 3), bool)


def remove_specks(labels: np.ndarray, kind: str, limit: float) -> np.ndarray:
    """``labels`` ``(H, W)`` (0 background) without the lesion components (all labels > 0 together,
    8-connected) smaller than ``limit`` pixels (``kind`` ``"T"``) or than ``limit`` times the largest
    component's size (``"f"``); a component is removed whole. A copy; ``T`` 0 returns the input."""
    from scipy import ndimage

    if kind == "T" and limit == 0:
        return labels
    components, n = ndimage.label(labels > 0, structure=EIGHT_CONNECTED)
    if n == 0:
        return labels.copy()
    sizes = np.bincount(components.ravel())[1:]
    smallest_kept = limit if kind == "T" else limit * sizes.max()
    small = np.concatenate([[False], sizes < smallest_kept])
    out = labels.copy()
    out[small[components]] = 0
    return out


def nested_choice(scores: np.ndarray) -> list[int]:
    """``scores`` ``(folds, candidates)``: each fold's mean figure under each candidate. For each fold the
    candidate with the best mean over the other folds (the first of equals)."""
    folds = scores.shape[0]
    picks = []
    for k in range(folds):
        inner = np.delete(scores, k, axis=0).mean(0)
        picks.append(int(np.flatnonzero(np.isclose(inner, inner.max(), rtol=0, atol=1e-12))[0]))
    return picks


def fold_dice(cv_dir: Path, fold: int, data: str | None) -> tuple[list[int], np.ndarray]:
    """Per-image Dice means ``(candidates, classes)`` of one fold, and the lesion classes scored."""
    from covseg.labels import get_scheme
    from covseg.metrics import confusion_matrix, dice

    task, predictions = held_out_predictions(cv_dir, fold, data)
    classes = [1] if task == "binary" else [1, 2]
    n_classes = get_scheme(task).num_classes
    values = [[[] for _ in classes] for _ in CANDIDATES]
    for sample, probs in predictions:
        pred = probs.argmax(0)
        for i, (kind, limit) in enumerate(CANDIDATES):
            cm = confusion_matrix(remove_specks(pred, kind, limit), sample.mask, n_classes)
            d = dice(cm)
            for j, c in enumerate(classes):
                if cm[c].sum() > 0:  # images whose truth holds the class, as covseg evaluate
                    values[i][j].append(d[c])
    return classes, np.array([[np.mean(v) for v in per] for per in values])


def main(argv: list[str] | None = None) -> int:
    per_fold = over_folds("speck_screen", __doc__.splitlines()[0], argv, fold_dice, min_folds=2)
    folds = len(per_fold)
    classes = per_fold[0][0]
    dice_ = np.stack([d for _, d in per_fold])  # (folds, candidates, classes)
    print("| candidate | " + " | ".join(f"fold {k}" for k in range(folds)) + " | mean |")
    print("|---" * (folds + 2) + "|")
    for i, (kind, limit) in enumerate(CANDIDATES):
        cells = [" / ".join(f"{x:.4f}" for x in dice_[k, i]) for k in range(folds)]
        print(f"| {kind} = {limit:g} | " + " | ".join(cells) + " | "
              + " / ".join(f"{x:.4f}" for x in dice_[:, i].mean(0)) + " |")
    picks = nested_choice(dice_.mean(2))
    nested = np.stack([dice_[k, p] for k, p in enumerate(picks)])
    for k, p in enumerate(picks):
        kind, limit = CANDIDATES[p]
        print(f"fold {k}: picked {kind} = {limit:g}; Δ " + " / ".join(f"{x:+.4f}" for x in nested[k] - dice_[k, 0]))
    for j, c in enumerate(classes):
        delta = nested[:, j] - dice_[:, 0, j]
        print(f"class {c}: T = 0 {dice_[:, 0, j].mean():.4f}, nested {nested[:, j].mean():.4f}, "
              f"Δ {delta.mean():+.4f}, folds not worse {int((delta >= 0).sum())} of {folds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
