"""Where the multiclass Dice gap lies: finding the lesion region, or typing it (GGO vs consolidation).

Each fold model of a multiclass ``covseg cv`` folder (``last.pt``, as ``covseg cv`` scores it) predicts its own
held-out slices at their own size; three label maps are then scored per image, as ``covseg evaluate`` scores them
(per class, the mean over the images whose truth holds the class; folds averaged as ``covseg cv`` does):

* ``as is``: the arg-max label map (reproduces ``cv.json``);
* ``typing oracle``: the model's lesion region with the truth's types (finding errors only);
* ``region oracle``: the truth's lesion region with the model's more probable lesion type (typing errors only).

A ``lesion region`` column scores the union of the lesion classes (lesion vs background) of each map.
Labels: 0 background, 1 GGO, 2 consolidation (3 pleural effusion, where a scheme has it). Inference only
(docs/recipes.md, session 69).

    python benchmarks/gap_analysis.py runs/cv-s69-mc [--data DIR] [--folds 5]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from cv_screen import held_out_predictions, over_folds

ROWS = ("as is", "typing oracle", "region oracle")


def typing_oracle(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``pred`` and ``truth`` ``(H, W)`` label maps (0 background): ``pred`` with every pixel it calls lesion that
    the truth also calls lesion given the truth's type. Background calls and false lesion calls stay. A copy."""
    out = pred.copy()
    both = (pred > 0) & (truth > 0)
    out[both] = truth[both]
    return out


def region_oracle(probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``probs`` ``(C, H, W)`` class probabilities (channel 0 background), ``truth`` ``(H, W)``: the truth's
    lesion region, each of its pixels given the model's most probable lesion class (1..C-1, background ignored);
    every other pixel background."""
    types = probs[1:].argmax(0) + 1
    return np.where(truth > 0, types, 0).astype(truth.dtype, copy=False)


def per_image_dice(pred: np.ndarray, truth: np.ndarray, classes: list[int]) -> list[float | None]:
    """Dice of each class in ``classes`` (None where the truth lacks it, as ``covseg evaluate`` skips such
    images), then the lesion region's (all labels > 0 together; None where the truth has no lesion); through
    covseg's own :func:`covseg.metrics.confusion_matrix` and :func:`covseg.metrics.dice`."""
    from covseg.metrics import confusion_matrix, dice

    n_classes = int(max(pred.max(), truth.max(), *classes)) + 1
    cm = confusion_matrix(pred, truth, n_classes)
    region = confusion_matrix((pred > 0).astype(np.int64), (truth > 0).astype(np.int64), 2)
    per_class, per_region = dice(cm), dice(region)  # rows of a confusion matrix are the truth's counts
    values: list[float | None] = [float(per_class[c]) if cm[c].sum() > 0 else None for c in classes]
    values.append(float(per_region[1]) if region[1].sum() > 0 else None)
    return values


def fold_table(cv_dir: Path, fold: int, data: str | None) -> np.ndarray:
    """One fold's per-image means ``(rows, classes + 1)``: per :data:`ROWS`, GGO, consolidation, lesion region."""
    _, predictions = held_out_predictions(cv_dir, fold, data, need_task="multiclass")
    classes = [1, 2]
    values: list[list[list[float]]] = [[[] for _ in range(len(classes) + 1)] for _ in ROWS]
    for sample, probs in predictions:
        pred = probs.argmax(0)
        maps = (pred, typing_oracle(pred, sample.mask), region_oracle(probs, sample.mask))
        for i, label_map in enumerate(maps):
            for j, d in enumerate(per_image_dice(label_map, sample.mask, classes)):
                if d is not None:
                    values[i][j].append(d)
    return np.array([[np.mean(v) for v in row] for row in values])


def main(argv: list[str] | None = None) -> int:
    table = np.stack(over_folds("gap_analysis", __doc__.splitlines()[0], argv, fold_table, min_folds=1,
                                kind="multiclass "))  # (folds, rows, 3)
    folds = len(table)
    print("| label map | " + " | ".join(f"fold {k}" for k in range(folds))
          + " | mean GGO / consolidation | lesion region | Δ against as is |")
    print("|---" * (folds + 4) + "|")
    for i, row in enumerate(ROWS):
        cells = [f"{table[k, i, 0]:.4f} / {table[k, i, 1]:.4f}" for k in range(folds)]
        mean = table[:, i].mean(0)
        delta = mean - table[:, 0].mean(0)
        print(f"| {row} | " + " | ".join(cells) + f" | {mean[0]:.4f} / {mean[1]:.4f} | {mean[2]:.4f} | "
              f"{delta[0]:+.4f} / {delta[1]:+.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
