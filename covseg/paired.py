"""Paired comparison of two cross-validations over the same folds, image by image.

A lever is screened against the default by the same held-out images: each fold's mean of a per-image metric
(``per_image.csv`` of ``covseg cv``'s ``fold-K/eval-heldout``) under the candidate minus the reference's, how many of
the fold's images went up, and the mean ± sample standard deviation of those differences over the folds both
cross-validations have scored. Pairing removes the image-to-image spread (fold means range 0.73–0.78 for the
binary default) from the comparison, which is what the rules in ``docs/recipes.md`` judge by.

Convention: a metric is a column of ``per_image.csv`` (``dice_infection`` for binary, ``dice_ggo`` and
``dice_consolidation`` for multiclass, …); an image whose value is ``nan`` in either run (its truth lacks the class,
MONAI's ``ignore_empty``) is left out of that metric's pair for that fold.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping, Sequence

import yaml

from covseg.errors import CovsegError

__all__ = ["FoldDifference", "compute_fold_difference", "read_fold_scores", "default_metrics",
           "compare_cross_validations", "format_comparison"]

PER_IMAGE = Path("eval-heldout") / "per_image.csv"  # under each fold-K folder of a `covseg cv` output

FoldScores = dict[str, dict[str, dict[str, float]]]  # fold name -> image name -> column -> value


@dataclass(frozen=True)
class FoldDifference:
    """One fold's paired comparison of one metric: means over the images scored in both runs."""

    fold: str  # "fold-0", …
    metric: str  # a per_image.csv column
    reference: float
    candidate: float
    images: int  # images paired (both values not nan)
    images_up: int  # of those, images where the candidate scored higher

    @property
    def difference(self) -> float:
        """Candidate mean minus reference mean (the mean of the per-image differences)."""
        return self.candidate - self.reference


def compute_fold_difference(reference: Mapping[str, float], candidate: Mapping[str, float], fold: str,
                            metric: str) -> FoldDifference:
    """Pair two runs' per-image values of ``metric`` on one fold (image name -> value).

    Both must hold the same images (the same held-out fold); images with ``nan`` in either are left out.
    Raises CovsegError when the images differ or no image has a value in both.
    """
    if set(reference) != set(candidate):
        only = sorted(set(reference) ^ set(candidate))[:3]
        raise CovsegError(f"{fold}: the two cross-validations held out different images (e.g. {', '.join(only)}); "
                          "compare runs made with the same --folds and data.split_seed")
    pairs = [(reference[name], candidate[name]) for name in sorted(reference)
             if not (math.isnan(reference[name]) or math.isnan(candidate[name]))]
    if not pairs:
        raise CovsegError(f"{fold}: no image has a value of {metric} in both runs; pick a metric of a class the "
                          "held-out truths hold")
    return FoldDifference(fold, metric, statistics.fmean(r for r, _ in pairs),
                          statistics.fmean(c for _, c in pairs), len(pairs), sum(c > r for r, c in pairs))


def _as_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_per_image(path: Path) -> dict[str, dict[str, float]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "name" not in rows[0]:
        raise CovsegError(f"{path}: not a per-image table of covseg evaluate; score the fold again")
    return {row["name"]: {k: _as_float(v) for k, v in row.items() if k != "name"} for row in rows}


def _fold_of_run(run_dir: Path) -> str:
    """``fold-K`` for a single ``covseg train --split cv:K`` run (its saved config.yaml says which K)."""
    try:
        split = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["data"]["split"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        split = None
    if not (isinstance(split, str) and split.startswith("cv:")):
        raise CovsegError(f"{run_dir}: a single run is compared only when it trained on a cross-validation fold "
                          f"(--split cv:K; its config.yaml says {split!r})")
    return f"fold-{split[3:]}"


def read_fold_scores(cv_dir: Path) -> FoldScores:
    """Read every scored fold of a ``covseg cv`` folder (``fold-K/eval-heldout/per_image.csv``), or the one fold of
    a ``covseg train --split cv:K`` run folder (its own ``eval-heldout/per_image.csv``)."""
    if not cv_dir.is_dir():
        raise CovsegError(f"{cv_dir}: no such folder; give a `covseg cv` output folder (or its seed-S folder)")
    if (cv_dir / PER_IMAGE).is_file():
        return {_fold_of_run(cv_dir): _read_per_image(cv_dir / PER_IMAGE)}
    scores: FoldScores = {path.parent.parent.name: _read_per_image(path)
                          for path in sorted(cv_dir.glob(f"fold-*/{PER_IMAGE.as_posix()}"))}
    if not scores:
        raise CovsegError(f"{cv_dir}: no scored folds (fold-K/{PER_IMAGE.as_posix()}); run covseg cv into it first")
    return scores


def default_metrics(scores: FoldScores) -> list[str]:
    """The per-class Dice columns (not the background's) that hold a value for at least one image."""
    columns = next(iter(next(iter(scores.values())).values()))
    return [c for c in columns if c.startswith("dice_") and c != "dice_background"
            and any(not math.isnan(image[c]) for fold in scores.values() for image in fold.values())]


def compare_cross_validations(reference_dir: Path, candidate_dir: Path,
                              metrics: Sequence[str] | None = None) -> list[FoldDifference]:
    """Paired differences, candidate minus reference, for each metric and each fold both have scored.

    ``metrics``: per_image.csv columns; default :func:`default_metrics` of the candidate. Ordered by metric,
    then fold.
    """
    reference, candidate = read_fold_scores(reference_dir), read_fold_scores(candidate_dir)
    folds = sorted(set(reference) & set(candidate), key=lambda name: (len(name), name))
    if not folds:
        raise CovsegError(f"{reference_dir} and {candidate_dir} share no scored fold "
                          f"({', '.join(sorted(reference))} against {', '.join(sorted(candidate))})")
    chosen = list(metrics) if metrics else default_metrics(candidate)
    for metric in chosen:
        for name, scores in ((reference_dir, reference), (candidate_dir, candidate)):
            columns = next(iter(scores[folds[0]].values()))
            if metric not in columns:
                raise CovsegError(f"{name}: per_image.csv has no column {metric!r}; choose from "
                                  f"{', '.join(c for c in columns if c != 'pixels')}")
    return [compute_fold_difference({n: v[metric] for n, v in reference[f].items()},
                                    {n: v[metric] for n, v in candidate[f].items()}, f, metric)
            for metric in chosen for f in folds]


def format_comparison(differences: Sequence[FoldDifference], reference: str, candidate: str) -> str:
    """A Markdown table per metric: each fold's means, difference and images up, then the folds' mean ± std."""
    lines = [f"# Paired per-image comparison: {candidate} against {reference}", ""]
    for metric in dict.fromkeys(d.metric for d in differences):
        rows = [d for d in differences if d.metric == metric]
        lines += [f"## {metric}", "", "| fold | reference | candidate | Δ | images up |", "|---|---|---|---|---|"]
        lines += [f"| {d.fold} | {d.reference:.4f} | {d.candidate:.4f} | {d.difference:+.4f} | "
                  f"{d.images_up} of {d.images} |" for d in rows]
        deltas = [d.difference for d in rows]
        spread = f" ± {statistics.stdev(deltas):.4f}" if len(deltas) > 1 else ""
        folds = f"{len(rows)} fold{'s' if len(rows) > 1 else ''}"
        lines += [f"| {folds} | {statistics.fmean(d.reference for d in rows):.4f} | "
                  f"{statistics.fmean(d.candidate for d in rows):.4f} | **{statistics.fmean(deltas):+.4f}{spread}** | "
                  f"{sum(x > 0 for x in deltas)} of {folds} up |", ""]
    return "\n".join(lines)
