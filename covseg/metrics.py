"""Segmentation metrics as pure functions of a confusion matrix, plus the Inf-Net protocol.

Conventions:
    * ``confusion_matrix(pred, target, n)[t, p]`` counts pixels of true class ``t`` predicted as ``p``
      (rows = ground truth, columns = prediction), shape ``(n, n)`` int64.
    * Per-class metrics are one-vs-rest for each class ``c`` with TP = cm[c, c], FN = row sum - TP,
      FP = column sum - TP, TN = the rest.
    * A ratio whose denominator is zero is NaN ("undefined"), never 0 or 1: e.g. Dice of a class absent
      from both truth and prediction. Aggregation decides what NaN means (see :func:`aggregate_per_image`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "confusion_matrix",
    "per_class_counts",
    "per_image_counts",
    "dice",
    "iou",
    "sensitivity",
    "specificity",
    "precision",
    "pixel_accuracy",
    "mean_class_accuracy",
    "class_metrics",
    "aggregate_per_image",
    "per_image_values",
    "bootstrap_means",
    "bootstrap_interval",
    "stratified_bootstrap_interval",
    "infnet_metrics",
    "CLASS_METRICS",
]


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (truth, prediction) pairs. ``pred`` and ``target``: int label maps of one shape (e.g. ``(H, W)``),
    labels in ``0 .. num_classes - 1``. Returns ``(num_classes, num_classes)`` int64, rows = truth.

    Raises ValueError for maps of different shapes (a transposed map is not scored pixel by pixel against the other)
    or a label outside the range (it would be counted as another class)."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction has shape {pred.shape} but target has {target.shape}; they must match")
    pred = pred.astype(np.int64).ravel()
    target = target.astype(np.int64).ravel()
    for what, labels in (("prediction", pred), ("target", target)):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels.min() if labels.min() < 0 else labels.max()
            raise ValueError(f"{what} holds label {bad}, outside 0..{num_classes - 1} of {num_classes} classes")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN, TN per class, each shape ``(n,)`` float64."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    return tp, fp, fn, tn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def dice(cm: np.ndarray) -> np.ndarray:
    """Dice = 2TP / (2TP + FP + FN) per class, NaN where truth and prediction are both empty."""
    tp, fp, fn, _ = per_class_counts(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou(cm: np.ndarray) -> np.ndarray:
    """IoU (Jaccard) = TP / (TP + FP + FN) per class."""
    tp, fp, fn, _ = per_class_counts(cm)
    return _ratio(tp, tp + fp + fn)


def sensitivity(cm: np.ndarray) -> np.ndarray:
    """Sensitivity (recall) = TP / (TP + FN) per class; NaN where the truth lacks the class."""
    tp, _, fn, _ = per_class_counts(cm)
    return _ratio(tp, tp + fn)


def specificity(cm: np.ndarray) -> np.ndarray:
    """Specificity = TN / (TN + FP) per class."""
    _, fp, _, tn = per_class_counts(cm)
    return _ratio(tn, tn + fp)


def precision(cm: np.ndarray) -> np.ndarray:
    """Precision = TP / (TP + FP) per class; NaN where nothing was predicted as the class."""
    tp, fp, _, _ = per_class_counts(cm)
    return _ratio(tp, tp + fp)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Global pixel accuracy: correctly labelled pixels / all pixels (the seed article's figure)."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def mean_class_accuracy(cm: np.ndarray) -> float:
    """Mean over classes present in the truth of per-class accuracy TP / (TP + FN) (the paper's "mean accuracy")."""
    values = sensitivity(cm)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


CLASS_METRICS = {
    "dice": dice,
    "iou": iou,
    "sensitivity": sensitivity,
    "specificity": specificity,
    "precision": precision,
}


def class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """All per-class metrics of one confusion matrix: name -> ``(n,)`` array."""
    return {name: fn(cm) for name, fn in CLASS_METRICS.items()}


def per_image_values(cms: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Each image's figure per class, ``(N, n)``, NaN where :func:`aggregate_per_image` leaves it out."""
    if not cms:
        raise ValueError("no confusion matrices to aggregate")
    stacked = np.stack([np.asarray(cm) for cm in cms])  # (N, n, n)
    present = stacked.sum(axis=2) > 0  # (N, n): truth holds class c
    out: dict[str, np.ndarray] = {}
    for name, fn in CLASS_METRICS.items():
        values = np.stack([fn(cm) for cm in stacked]).astype(np.float64)  # (N, n)
        out[name] = values if name == "specificity" else np.where(present, values, np.nan)
    return out


def aggregate_per_image(cms: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image aggregation: for each class, the mean over the images whose *ground truth* holds it.

    Images whose truth lacks class ``c`` are skipped for ``c`` (as MONAI's ``ignore_empty=True``), so a
    false positive on an empty image does not enter the per-image Dice; it does enter the pooled
    figures. An image where a figure is undefined is skipped for it too: precision where the class is not
    predicted; specificity (averaged over every image, whatever its truth) where the truth holds nothing but the
    class. :func:`per_image_counts` says how many images each mean holds. Returns name -> ``(n,)``; NaN for a
    class no image counts for.
    """
    out: dict[str, np.ndarray] = {}
    for name, values in per_image_values(cms).items():
        with np.errstate(invalid="ignore"):
            counts = np.isfinite(values).sum(axis=0)
            sums = np.nansum(values, axis=0)
            out[name] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


BOOTSTRAP_BLOCK = 250
"""Resamples :func:`bootstrap_means` draws at a time."""


def bootstrap_means(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Per-image means over bootstrap resamples of the images.

    ``values``: ``(N, n)`` each image's figure per class, NaN where the image does not count for the class (as
    :func:`per_image_values` gives them). Each of the ``resamples`` draws ``N`` images with replacement (a seeded
    ``numpy`` generator: the same draws for the same ``seed``), the same images for every class, so that the classes'
    means stay paired; each class's mean is then taken over the drawn images that count for it, as
    :func:`aggregate_per_image` takes it. Returns ``(resamples, n)``; NaN where a draw holds no image counting for
    the class. Several figures share one set of draws when their columns are given side by side. The draws are
    made :data:`BOOTSTRAP_BLOCK` resamples at a time, so memory stays ``BOOTSTRAP_BLOCK x N`` however many images."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or not len(values):
        raise ValueError(f"bootstrap_means needs (images, classes) values with at least one image, got shape "
                         f"{values.shape}")
    if resamples < 1:
        raise ValueError(f"bootstrap_means needs at least one resample, got {resamples}")
    n_images = len(values)
    rng = np.random.default_rng(seed)
    finite = np.isfinite(values)
    present, filled = finite.astype(np.float64), np.where(finite, values, 0.0)
    out = np.empty((resamples, values.shape[1]))
    for start in range(0, resamples, BOOTSTRAP_BLOCK):
        size = min(BOOTSTRAP_BLOCK, resamples - start)
        # how often each image is drawn in each resample: (size, N), rows summing to N
        weights = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=size).astype(np.float64)
        counts, sums = weights @ present, weights @ filled  # (size, n): drawn images counting, and their sum
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + size] = np.where(counts > 0, sums / counts, np.nan)
    return out


def bootstrap_interval(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """The percentile bootstrap interval of each column of ``samples`` ``(resamples, ...)`` (e.g.
    :func:`bootstrap_means`' output): ``(..., 2)`` lower and upper bounds, the ``(1 - level) / 2`` and
    ``(1 + level) / 2`` quantiles of the finite samples (linear interpolation, numpy's default); NaN where no
    sample is finite."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_interval needs a level between 0 and 1, got {level}")
    samples = np.asarray(samples, dtype=np.float64)
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    finite = np.isfinite(samples)
    some = finite.any(axis=0)
    # the finite samples; a column without any is read as zeros (not numpy's "All-NaN slice" warning), then NaN
    kept = np.where(finite, samples, np.where(some, np.nan, 0.0))
    bounds = np.where(some, np.nanpercentile(kept, tails, axis=0), np.nan)  # (2, ...)
    return np.moveaxis(bounds, 0, -1)


def stratified_bootstrap_interval(groups: Sequence[Sequence[float]], level: float = 0.95, resamples: int = 2000,
                                  seeds: Sequence[int] | None = None) -> tuple[float, float] | None:
    """A percentile bootstrap interval of the mean over ``groups`` of each group's mean (e.g. a cross-validation's
    mean over folds of each fold's per-image mean), resampling each group's values within the group, so every group
    keeps its size and weight: group ``i`` is drawn with seed ``seeds[i]`` (default ``i``; give fold numbers, so a
    fold's draws do not depend on which other folds are there). Returns ``(low, high)``, or None where a group holds
    fewer than 2 values: one value cannot be resampled into any spread, and the interval would claim none."""
    arrays = [np.asarray(group, dtype=np.float64) for group in groups]
    if not arrays or any(a.ndim != 1 or len(a) < 2 for a in arrays):
        return None
    seeds = list(range(len(arrays))) if seeds is None else list(seeds)
    if len(seeds) != len(arrays):
        raise ValueError(f"stratified_bootstrap_interval: {len(seeds)} seeds for {len(arrays)} groups")
    means = np.stack([bootstrap_means(a[:, None], resamples, s)[:, 0] for a, s in zip(arrays, seeds)])
    low, high = bootstrap_interval(means.mean(axis=0), level)  # means: (groups, resamples)
    return float(low), float(high)


def per_image_counts(cms: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """How many images each of :func:`aggregate_per_image`'s means holds: name -> ``(n,)`` int."""
    return {name: np.isfinite(values).sum(axis=0) for name, values in per_image_values(cms).items()}


def infnet_metrics(prob: np.ndarray, target: np.ndarray, thresholds: int = 256) -> dict[str, float]:
    """Inf-Net's binary evaluation (Fan et al., TMI 2020) of one image.

    ``prob``: ``(H, W)`` foreground probability; ``target``: ``(H, W)`` {0, 1}. The map is min-max normalised (a
    constant map left as it is, as MATLAB's ``mapminmax``), binarised at ``thresholds`` evenly spaced thresholds
    ``t`` in [0, 1] (foreground where ``p >= t``, as Inf-Net's ``Fmeasure_calu``), and Dice, sensitivity and
    specificity are averaged over the thresholds (``meanDic``, ``meanSen``, ``meanSpe``); ``mae`` is the mean
    absolute error of the normalised map against the truth. As in ``Fmeasure_calu``, all three figures are 0 at a
    threshold with no true positive (so an image without lesion scores 0, and specificity there is 0, not
    TN/(TN+FP)). An image that is lesion everywhere has no negative pixel, so its specificity is undefined:
    ``meanSpe`` is NaN (as TN/(TN+FP) is 0/0 in ``Fmeasure_calu``), and means over images skip it.
    """
    p = np.asarray(prob, dtype=np.float64)
    g = np.asarray(target).astype(bool)
    lo, hi = p.min(), p.max()
    # MATLAB's mapminmax(x, 0, 1), as Inf-Net's main.m: a map whose range is 0 (or so small that 1 / range passes
    # 1e14) is left as it is (gain 1, offset 0), not set to 0
    if hi > lo and 1.0 / (hi - lo) <= 1e14:
        p = (p - lo) / (hi - lo)
    mae = float(np.abs(p - g).mean())
    # Sort once and count pixels above each threshold for both classes.
    ts = np.linspace(0.0, 1.0, thresholds)
    pos = np.sort(p[g])
    neg = np.sort(p[~g])
    tp = pos.size - np.searchsorted(pos, ts, side="left")
    fp = neg.size - np.searchsorted(neg, ts, side="left")
    fn = pos.size - tp
    tn = neg.size - fp
    with np.errstate(divide="ignore", invalid="ignore"):
        # Fmeasure_calu: every figure is 0 at a threshold where nothing is correctly predicted (TP = 0)
        hit = tp > 0
        dic = np.where(hit, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
        sen = np.where(hit, tp / max(pos.size, 1), 0.0)
        spe = np.where(hit, tn / np.maximum(tn + fp, 1), 0.0)
    mean_spe = float(np.mean(spe)) if neg.size else float("nan")  # no negative pixel: specificity undefined
    return {"meanDic": float(np.mean(dic)), "meanSen": float(np.mean(sen)), "meanSpe": mean_spe, "mae": mae}
