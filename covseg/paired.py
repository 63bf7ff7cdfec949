"""Paired comparison of two cross-validations over the same folds, image by image.

A lever is screened against the default by the same held-out images: each fold's mean of a per-image metric
(``per_image.csv`` of ``covseg cv``'s ``fold-K/eval-heldout``) under the candidate minus the reference's, how many of
the fold's images went up, and the mean ± sample standard deviation of those differences over the folds both
cross-validations have scored. Pairing removes the image-to-image spread (fold means range 0.73–0.78 for the
binary default) from the comparison, which is what the rules in ``docs/recipes.md`` judge by.

Convention: a metric is a column of ``per_image.csv`` (``dice_infection`` for binary, ``dice_ggo`` and
``dice_consolidation`` for multiclass, …). A class's metric (``dice_X``, ``iou_X``) counts only the images whose
truth holds class X, as the per-image means of ``metrics.json`` (MONAI's ``ignore_empty``): ``truth_X``, the truth's
pixel count, says which; the truth is the same for both runs, so one side's table is enough. Where neither side's
table has those columns (written before session 23), an empty truth is told only by ``nan`` (truth and prediction
both empty), so an image whose truth lacks the class but whose prediction holds it counts as 0; the report says so.
Other columns count every image with a value in both runs.

Each table also gives a 95 % interval for the folds' mean Δ from the images alone: a paired bootstrap that resamples
each fold's per-image differences within the fold (so every fold keeps its size and weight) and averages the folds'
means, 2000 resamples with a fixed seed. It says whether a difference stands out from the image-to-image noise of
these few held-out images; a training seed's spread (about ± 0.005 on the binary default's CV mean) is not in it.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Collection, Mapping, Sequence

import yaml

from covseg.errors import CovsegError
from covseg.metrics import stratified_bootstrap_interval
from covseg.splits import parse_split_name

__all__ = ["FoldDifference", "NothingToPair", "compute_fold_difference", "read_fold_scores", "default_metrics",
           "compare_cross_validations", "format_comparison", "Comparison", "compute_difference_interval",
           "read_per_image", "counted_values", "PER_IMAGE", "unpaired_folds_warning", "identical_scores_warning",
           "by_number", "fold_runs"]

PER_IMAGE = Path("eval-heldout") / "per_image.csv"  # under each fold-K folder of a `covseg cv` output
CLASS_METRICS = ("dice_", "iou_")  # per_image.csv columns of one class; its truth pixels are in truth_<class>
#: per_image.csv columns where lower is better (an error, not an overlap): their tables count images and folds down
LOWER_IS_BETTER = frozenset({"infnet_mae"})

Table = dict[str, dict[str, float]]  # one fold's per_image.csv: image name -> column -> value
FoldScores = dict[str, Table]  # fold name -> its table


class NothingToPair(CovsegError):
    """No image of a fold has a value of the metric in both runs (none counts, or all are ``nan``)."""


@dataclass(frozen=True)
class FoldDifference:
    """One fold's paired comparison of one metric: means over the images scored in both runs."""

    fold: str  # "fold-0", …
    metric: str  # a per_image.csv column
    reference: float
    candidate: float
    images: int  # images paired
    images_up: int  # of those, images where the candidate scored higher (ties are not up)
    images_down: int = 0  # of those, images where the candidate scored lower (ties are not down)
    deltas: tuple[float, ...] = ()  # each paired image's candidate minus reference value, in image-name order

    @property
    def difference(self) -> float:
        """Candidate mean minus reference mean (the mean of the per-image differences)."""
        return self.candidate - self.reference


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare_cross_validations` found: the differences and what it could not pair."""

    differences: list[FoldDifference]
    reference_only: list[str]  # folds scored in the reference only
    candidate_only: list[str]
    skipped: list[tuple[str, str]]  # (metric, fold) where no image of the fold counts for the metric
    truth_counts: bool  # whether one side's table of every fold carries truth_<class> (else nan alone tells)


def compute_fold_difference(reference: Mapping[str, float], candidate: Mapping[str, float], fold: str,
                            metric: str, counted: Collection[str] | None = None) -> FoldDifference:
    """Pair two runs' per-image values of ``metric`` on one fold (image name -> value).

    Both must hold the same images (the same held-out fold). ``counted``: the images that count (e.g. those whose
    truth holds the metric's class); default all. Images with ``nan`` in either run are left out too.
    Raises CovsegError when the images differ, :class:`NothingToPair` when none is left to pair.
    """
    if set(reference) != set(candidate):
        only = sorted(set(reference) ^ set(candidate))[:3]
        raise CovsegError(f"{fold}: the two cross-validations held out different images (e.g. {', '.join(only)}); "
                          "compare runs made with the same --folds and data.split_seed")
    names = sorted(reference) if counted is None else sorted(set(reference) & set(counted))
    pairs = [(reference[n], candidate[n]) for n in names if not (math.isnan(reference[n]) or math.isnan(candidate[n]))]
    if not pairs:
        raise NothingToPair(f"{fold}: no image has a value of {metric} in both runs; pick a metric of a class the "
                          "held-out truths hold")
    return FoldDifference(fold, metric, statistics.fmean(r for r, _ in pairs),
                          statistics.fmean(c for _, c in pairs), len(pairs), sum(c > r for r, c in pairs),
                          sum(c < r for r, c in pairs), tuple(c - r for r, c in pairs))


def compute_difference_interval(rows: Sequence[FoldDifference], level: float = 0.95, resamples: int = 2000,
                                seed: int = 0) -> tuple[float, float] | None:
    """A paired bootstrap interval of the folds' mean Δ (the mean over ``rows`` of each fold's mean per-image
    difference): each resample draws every fold's images with replacement within the fold, takes each fold's mean
    difference and averages them over the folds (:func:`covseg.metrics.stratified_bootstrap_interval`). Returns the
    percentile interval ``(low, high)``, or None where a row carries no per-image differences or a fold pairs
    fewer than 2 images (it has no spread to resample). Fold ``fold-K`` is drawn with seed ``seed + K``."""
    if any(len(row.deltas) != row.images for row in rows):
        return None
    return stratified_bootstrap_interval([row.deltas for row in rows], level, resamples,
                                         [seed + _fold_number(row.fold) for row in rows])


def _check_same_truth(reference: Mapping[str, Mapping[str, float]], candidate: Mapping[str, Mapping[str, float]],
                      fold: str) -> None:
    """Refuse two folds whose images of one name differ in size or truth (``pixels``, ``truth_<class>`` where both
    tables have them): they were scored on different data, and pairing them by name would mean nothing."""
    for name in sorted(set(reference) & set(candidate)):
        ref, cand = reference[name], candidate[name]
        for column in [c for c in ref if (c == "pixels" or c.startswith("truth_")) and c in cand]:
            a, b = ref[column], cand[column]
            if a != b and not (math.isnan(a) and math.isnan(b)):
                raise CovsegError(f"{fold}: image {name} has {column} {a:g} in one cross-validation and {b:g} in the "
                                  "other, so they were scored on different data; compare runs of the same data folder")


def _number(text: str, where: str) -> float:
    """A cell: a finite number or ``nan`` (what covseg evaluate writes); anything else is refused."""
    try:
        value = float(text)
    except ValueError:
        value = math.inf  # refused below, with the infinities
    if math.isinf(value):
        raise CovsegError(f"{where}: {text!r} is not a number; score the fold again with covseg evaluate")
    return value


def counted_values(table: Table, metric: str) -> list[float]:
    """The values of ``metric`` over the images that count for it (those whose truth holds its class, where the
    table says; see the module docstring) and have one (not ``nan``), in image-name order."""
    counted = _counted(table, metric)
    return [row[metric] for name, row in sorted(table.items())
            if (counted is None or name in counted) and not math.isnan(row[metric])]


def read_per_image(path: Path) -> Table:
    """One fold's ``per_image.csv`` (``covseg evaluate``'s): image name -> column -> value (``nan`` kept); a table
    that cannot be read as one is refused in one line."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CovsegError(f"{path}: cannot read it as a per-image table ({err}); score the fold again") from None
    if not rows or "name" not in rows[0]:
        raise CovsegError(f"{path}: not a per-image table of covseg evaluate; score the fold again")
    table: Table = {}
    lines: dict[str, int] = {}  # image name -> the line that gave it
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise CovsegError(f"{path}, line {line}: {len(rows[0])} columns expected; score the fold again")
        name = row["name"]
        if name in lines:
            raise CovsegError(f"{path}, line {line}: image {name} again (first on line {lines[name]}); a fold scores "
                              "each image once: score the fold again")
        lines[name] = line
        table[name] = {k: _number(v, f"{path}, line {line}, column {k}") for k, v in row.items() if k != "name"}
    return table


def _fold_of_run(run_dir: Path) -> str:
    """``fold-K`` for a single ``covseg train --split cv:K`` run (its saved config.yaml says which K)."""
    try:
        split = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["data"]["split"]
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        raise CovsegError(f"{run_dir}: has eval-heldout/per_image.csv but no readable config.yaml with data.split; "
                          "is it a covseg run folder?") from None
    kind, fold = parse_split_name(str(split)) if isinstance(split, str) else (None, None)
    if kind != "cv":
        raise CovsegError(f"{run_dir}: a single run is compared only when it trained on a cross-validation fold "
                          f"(--split cv:K; its config.yaml says {split!r})")
    return f"fold-{fold}"


def _planned_epochs(run_dir: Path) -> int | None:
    """The epochs ``run_dir/config.yaml`` plans; None where it cannot be read."""
    try:
        return int(yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["train"]["epochs"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _check_own_model(run_dir: Path) -> None:
    """Refuse a fold whose ``eval-heldout`` is not a finished report of the run's own model as it is now (``swa.pt``
    where the run has one, else ``last.pt``): one without ``metrics.json`` (an evaluation that did not finish, or
    that recorded no model), one that scored another checkpoint (e.g. written before ``swa.pt`` became the run's
    model), one scored with flip TTA (the other folds are not), an ensemble's or a ``--lesion-model``'s report (an
    older covseg let ``evaluate -o`` write them there; its ``file`` is a member's), one of a run whose training
    stopped before its last epoch, or one that scored the checkpoint at another epoch than it holds now (a report of
    an interrupted run that was resumed since). ``metrics.json``'s ``model`` records the checkpoint's ``file`` and
    ``epoch``."""
    from covseg.checkpoint import epochs_done, find_checkpoint, read_checkpoint  # torch: only with a report to check

    report = run_dir / "eval-heldout" / "metrics.json"
    again = f"score it again: covseg evaluate {run_dir}"
    if not report.is_file():
        raise CovsegError(f"{run_dir}/eval-heldout has per_image.csv but no metrics.json, so its evaluation did not "
                          f"finish; {again}")
    try:
        metrics = json.loads(report.read_text(encoding="utf-8"))
        model = metrics["model"]
        scored = Path(model["file"]).name
    except (OSError, ValueError, KeyError, TypeError):
        raise CovsegError(f"{report}: unreadable, or it does not record which model it scored; {again}") from None
    if model.get("flip_tta"):
        raise CovsegError(f"{run_dir}/eval-heldout was scored with flip TTA (an older covseg wrote evaluate --tta "
                          f"there); score it again without --tta: covseg evaluate {run_dir}")
    if "members" in model or "lesion_model" in model:  # its "file" is the first member's, or the type model's
        what = ("an ensemble's report (covseg evaluate A B -o)" if "members" in model
                else "a report of its model typing a --lesion-model's lesions")
        raise CovsegError(f"{run_dir}/eval-heldout holds {what}, which an older covseg wrote there, not the run's "
                          f"own figure; {again}")
    _check_own_data(run_dir, metrics)
    if not (run_dir / "last.pt").is_file():
        return
    done, planned = epochs_done(run_dir), _planned_epochs(run_dir)
    if planned is not None and done < planned:
        raise CovsegError(f"{run_dir}: its training stopped after epoch {done} of {planned}; finish it first "
                          f"(covseg train --resume {run_dir}, or covseg cv on its folder)")
    own = find_checkpoint(run_dir, "final", choosable=False)
    if scored != own.name:
        raise CovsegError(f"{run_dir}/eval-heldout scored {scored}, not the run's own {own.name}; {again}")
    holds = done if own.name == "last.pt" else int(read_checkpoint(own)["epoch"])
    if model.get("epoch") != holds:
        at = f"epoch {model['epoch']}" if model.get("epoch") is not None else "an unrecorded epoch"
        raise CovsegError(f"{run_dir}/eval-heldout scored {scored} at {at}, but it holds epoch {holds} now (the run "
                          f"trained on after it was scored); {again}")


def _check_own_data(run_dir: Path, metrics: object) -> None:
    """Refuse a fold whose ``eval-heldout`` report (``metrics``: its ``metrics.json``) scored another data folder than
    the run trained on (``run.json``'s ``data``; ``covseg evaluate RUN --data OTHER --force``, or ``-o
    RUN/eval-heldout`` before session 77): paired with the other side's images by name, its Δ would mix the models'
    difference with the data's. Not checked where either is not recorded, is recorded relative, or is no longer
    there (a data folder moved since: the run's own, elsewhere), as ``covseg evaluate`` does."""
    try:
        theirs = Path(metrics["data"])  # type: ignore[index]
        own = Path(json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["data"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if all(p.is_absolute() and p.is_dir() for p in (theirs, own)) and theirs.resolve() != own.resolve():
        raise CovsegError(f"{run_dir}/eval-heldout scored data {theirs.resolve()}, not the run's own {own.resolve()}, "
                          f"so its images are not the ones the run held out; score it on its own data: covseg "
                          f"evaluate {run_dir} --force")


def identical_scores_warning(comparison: Comparison, reference_dir: Path, candidate_dir: Path) -> str | None:
    """A note for the comparison (:func:`format_comparison` ends with it) where every paired image scored exactly the
    same on both sides (every Δ 0 by image, not only on average): the candidate's models predict as the reference's,
    e.g. a copy of its folder, so Δ 0 is no finding about a lever. None otherwise."""
    if any(delta != 0 for d in comparison.differences for delta in d.deltas) or \
            any(len(d.deltas) != d.images for d in comparison.differences):
        return None
    return (f"every image scored exactly the same in {candidate_dir} as in {reference_dir}, so each Δ is 0 by "
            "construction: its models predict as the reference's (a copy of that folder, or a change that left "
            "training as it was)")


def read_fold_scores(cv_dir: Path) -> FoldScores:
    """Read every scored fold of a ``covseg cv`` folder (``fold-K/eval-heldout/per_image.csv``), or the one fold of
    a ``covseg train --split cv:K`` run folder (its own ``eval-heldout/per_image.csv``). Each table must sit beside
    the ``metrics.json`` of a finished report of its run's own model as it is now (:func:`_check_own_model`)."""
    if cv_dir.is_file():
        raise CovsegError(f"{cv_dir}: is a file, not a cross-validation folder; give a `covseg cv` output folder (or "
                          "a `covseg train --split cv:K` run folder), and a file to write the tables to with -o")
    if not cv_dir.is_dir():
        raise CovsegError(f"{cv_dir}: no such folder; give a `covseg cv` output folder (or its seed-S folder), or a "
                          "`covseg train --split cv:K` run folder")
    if (cv_dir / PER_IMAGE).is_file():
        _check_own_model(cv_dir)
        return {_fold_of_run(cv_dir): read_per_image(cv_dir / PER_IMAGE)}
    found = sorted(cv_dir.glob(f"fold-*/{PER_IMAGE.as_posix()}"))
    for path in found:
        _check_own_model(path.parent.parent)
    scores: FoldScores = {path.parent.parent.name: read_per_image(path) for path in found}
    if not scores:
        seeds = sorted((p.name for p in cv_dir.glob("seed-*") if p.is_dir()), key=by_number)
        beside = None if seeds else seed_ensemble_beside(cv_dir)
        if beside is not None:
            give = (f"one of the seed folders beside it ({', '.join(map(str, beside))})" if beside
                    else "a seed folder")
            raise CovsegError(f"{cv_dir}: a seed ensemble's reports (fold-K/{PER_IMAGE.name}, as covseg cv --seeds "
                              "writes), not a cross-validation's runs; cv-compare pairs the runs of one training "
                              f"seed: give {give}; the ensemble's figures are in {cv_dir.parent / 'seeds.md'}")
        hint = (f"give one of its seed folders ({', '.join(seeds)})" if seeds
                else f"score it first: covseg evaluate {cv_dir}" if (cv_dir / "config.yaml").is_file()
                else "run covseg cv into it first")
        raise CovsegError(f"{cv_dir}: no scored folds (fold-K/{PER_IMAGE.as_posix()}); {hint}")
    return scores


def seed_ensemble_beside(folder: Path) -> list[Path] | None:
    """Where ``folder`` is a ``covseg cv --seeds`` folder's ``ensemble/`` (the seed ensemble's reports,
    ``fold-K/per_image.csv``, and no model of its own), the ``seed-S`` folders beside it, by seed number (none where
    they were moved); else None."""
    if not folder.is_dir() or (folder / "config.yaml").is_file() or not any(folder.glob(f"fold-*/{PER_IMAGE.name}")):
        return None
    return sorted((p for p in folder.parent.glob("seed-*") if p.is_dir()), key=lambda p: by_number(p.name))


def by_number(name: str) -> tuple[int, str]:
    """Sort key of numbered folder names (``fold-K``, ``seed-S``): by the whole number after the last ``-``
    (``seed-2`` before ``seed-10``), a name without one first; names of one number by name."""
    number = name.rpartition("-")[2]
    return (int(number) if number.isdigit() else -1, name)


def fold_runs(folder: Path) -> list[Path]:
    """The fold runs of a ``covseg cv`` folder: its ``fold-K`` sub-folders (K a whole number) holding a run's
    ``config.yaml``, in fold order; empty where ``folder`` is no folder, is itself a run (``config.yaml``) or holds no
    fold run (a ``--seeds`` folder, whose runs are in ``seed-S/fold-K``; its ``ensemble/``, whose ``fold-K`` are
    reports)."""
    if not folder.is_dir() or (folder / "config.yaml").is_file():
        return []
    runs = [p for p in folder.glob("fold-*") if p.name[len("fold-"):].isdigit() and (p / "config.yaml").is_file()]
    return sorted(runs, key=lambda p: by_number(p.name))


def _table_path(cv_dir: Path, fold: str) -> Path:
    """Where :func:`read_fold_scores` read ``fold``'s table: a run folder's own, else the cv folder's ``fold-K``."""
    own = cv_dir / PER_IMAGE
    return own if own.is_file() else cv_dir / fold / PER_IMAGE


def _recorded_task(cv_dir: Path, fold: str) -> str | None:
    """The task (``binary``, ``multiclass``) ``fold``'s table was scored for: its ``metrics.json``'s ``task`` (what
    covseg evaluate records), else its run's ``config.yaml`` ``data.task``; None where neither says."""
    table = _table_path(cv_dir, fold)
    try:
        task = json.loads((table.parent / "metrics.json").read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        task = None
    if task is None:
        try:
            task = yaml.safe_load((table.parent.parent / "config.yaml").read_text(encoding="utf-8"))["data"]["task"]
        except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
            return None
    return str(task)


def _check_same_task(reference_dir: Path, reference: FoldScores, candidate_dir: Path, candidate: FoldScores) -> None:
    """Refuse two cross-validations of different tasks (binary against multiclass): their tables score different
    classes, so no column pairs them. A side whose folds record no task (:func:`_recorded_task`) is not checked."""
    tasks = [next((task for fold in sorted(scores, key=by_number)
                   if (task := _recorded_task(folder, fold)) is not None), None)
             for folder, scores in ((reference_dir, reference), (candidate_dir, candidate))]
    if None not in tasks and tasks[0] != tasks[1]:
        raise CovsegError(f"{reference_dir} is a {tasks[0]} cross-validation and {candidate_dir} a {tasks[1]} one, "
                          "so their images are scored on different classes and cannot be compared; compare two "
                          "cross-validations of the same task (data.task)")


def _columns(table: Table) -> list[str]:
    """The columns of one fold's table (every row of a per_image.csv has them all)."""
    return list(next(iter(table.values())))


def _has_truth_counts(table: Table) -> bool:
    return any(column.startswith("truth_") for column in _columns(table))


def _truth_column(metric: str) -> str | None:
    for prefix in CLASS_METRICS:
        if metric.startswith(prefix):
            return "truth_" + metric[len(prefix):]
    return None


def _counted(table: Table, metric: str) -> set[str] | None:
    """Images whose truth holds ``metric``'s class, where the table says (``truth_<class>``); else None (all)."""
    column = _truth_column(metric)
    if column is None or column not in _columns(table):
        return None
    return {name for name, image in table.items() if image[column] > 0}


def default_metrics(scores: FoldScores) -> list[str]:
    """The per-class Dice columns (not the background's) of the classes some image's truth holds (or, in tables
    without truth counts, that hold a value for some image)."""
    metrics = []
    for column in _columns(next(iter(scores.values()))):
        if not column.startswith("dice_") or column == "dice_background":
            continue
        for fold in scores.values():
            counted = _counted(fold, column)
            if any(not math.isnan(image[column]) for name, image in fold.items() if counted is None or name in counted):
                metrics.append(column)
                break
    return metrics


def _fold_number(name: str) -> int:
    """K of ``fold-K`` (0 for another name)."""
    number = name.rpartition("-")[2]
    return int(number) if number.isdigit() else 0


def _check_two_runs(reference_dir: Path, candidate_dir: Path, folds: Sequence[str]) -> None:
    """Refuse a comparison whose two sides read one and the same table of a shared fold (a folder against itself,
    a cross-validation against one of its own fold runs, a ``--seeds`` folder's ``seed-S`` against a run in it):
    every difference would be 0 by construction, not a finding."""
    same = [fold for fold in folds
            if _table_path(reference_dir, fold).resolve() == _table_path(candidate_dir, fold).resolve()]
    if not same:
        return
    if reference_dir.resolve() == candidate_dir.resolve():
        raise CovsegError(f"{reference_dir} is both the reference and the candidate, so every difference is 0; "
                          "give two different cross-validation folders")
    raise CovsegError(f"{reference_dir} and {candidate_dir} hold the same run of {', '.join(same)} "
                      f"({_table_path(candidate_dir, same[0])}), so its difference is 0 by construction; give two "
                      "different cross-validations (a run is not compared with the cross-validation it belongs to)")


def compare_cross_validations(reference_dir: Path, candidate_dir: Path,
                              metrics: Sequence[str] | None = None) -> Comparison:
    """Paired differences, candidate minus reference, for each metric and each fold both have scored.

    ``metrics``: per_image.csv columns; default :func:`default_metrics` of the folds both have scored. Ordered by
    metric, then fold. A fold none of whose images counts for a metric is skipped for it (and listed).
    """
    reference, candidate = read_fold_scores(reference_dir), read_fold_scores(candidate_dir)
    _check_same_task(reference_dir, reference, candidate_dir, candidate)
    folds = sorted(set(reference) & set(candidate), key=by_number)
    if not folds:
        raise CovsegError(f"{reference_dir} and {candidate_dir} share no scored fold "
                          f"({', '.join(sorted(reference, key=by_number))} against "
                          f"{', '.join(sorted(candidate, key=by_number))})")
    _check_two_runs(reference_dir, candidate_dir, folds)
    shared = {f: reference[f] for f in folds}
    chosen = list(dict.fromkeys(metrics)) if metrics else default_metrics(shared)
    if not chosen:
        raise CovsegError(f"{reference_dir}: no per-class Dice with a truth to count; name columns with --metrics")
    for name, scores in ((reference_dir, reference), (candidate_dir, candidate)):
        for fold in folds:
            columns = _columns(scores[fold])
            choices = [c for c in columns if c != "pixels" and not c.startswith("truth_")]  # scores, not counts
            missing = [m for m in chosen if m not in choices]
            if missing:
                what = (f"{missing[0]!r} is a count, not a score" if missing[0] in columns
                        else f"no column {missing[0]!r}")
                raise CovsegError(f"{_table_path(name, fold)}: {what}; choose from {', '.join(choices)}")
    for fold in folds:
        _check_same_truth(reference[fold], candidate[fold], fold)
    differences, skipped = [], []
    for metric in chosen:
        for fold in folds:
            values = [{n: v[metric] for n, v in side[fold].items()} for side in (reference, candidate)]
            # the truth is the same on both sides: either table's truth counts will do (older tables lack them)
            counted = _counted(reference[fold], metric)
            counted = _counted(candidate[fold], metric) if counted is None else counted
            try:
                differences.append(compute_fold_difference(*values, fold, metric, counted))
            except NothingToPair:
                skipped.append((metric, fold))
    if not differences:
        raise CovsegError(f"no fold has an image with a value of {', '.join(chosen)} in both runs; pick a metric of "
                          "a class the held-out truths hold")
    truth_counts = all(_has_truth_counts(reference[f]) or _has_truth_counts(candidate[f]) for f in folds)
    return Comparison(differences, sorted(set(reference) - set(candidate), key=by_number),
                      sorted(set(candidate) - set(reference), key=by_number), skipped, truth_counts)


def unpaired_folds_warning(comparison: Comparison, reference_dir: Path, candidate_dir: Path) -> str | None:
    """One line for stderr where a fold is scored on one side only: it is left out, so each table's last row
    averages only the shared folds; it says which folds, how many of all are covered and how to finish the missing
    ones. None where both sides scored the same folds."""
    if not (comparison.reference_only or comparison.candidate_only):
        return None
    shared = {d.fold for d in comparison.differences} | {fold for _, fold in comparison.skipped}
    total = len(shared) + len(comparison.reference_only) + len(comparison.candidate_only)
    scored = "; ".join(f"{', '.join(folds)} scored in {folder} only" for folds, folder in
                       ((comparison.reference_only, reference_dir), (comparison.candidate_only, candidate_dir))
                       if folds)
    lacking = [(folds, folder) for folds, folder in
               ((comparison.reference_only, candidate_dir), (comparison.candidate_only, reference_dir)) if folds]
    how = " and ".join(f"give the whole cross-validation of the single run {folder}" if (folder / PER_IMAGE).is_file()
                       else f"finish and score {', '.join(folds)} in {folder} (covseg cv -o {folder} again, with its "
                            "own settings)" for folds, folder in lacking)
    return (f"{scored}: left out, so the summary rows average only {len(shared)} of {total} folds; to compare all "
            f"{total}, {how}")


def format_comparison(comparison: Comparison, reference: str, candidate: str) -> str:
    """A Markdown table per metric: each fold's means, difference and images up, then the folds' mean ± std.
    For a metric of :data:`LOWER_IS_BETTER` the table counts images and folds down, and its heading says so."""
    lines = [f"# Paired per-image comparison: {candidate} against {reference}", "",
             "The last row of each table: the folds' means, and for Δ the mean ± the sample standard deviation "
             "(ddof 1) of the folds' Δ.", ""]
    for metric in dict.fromkeys(d.metric for d in comparison.differences):
        rows = [d for d in comparison.differences if d.metric == metric]
        lower = metric in LOWER_IS_BETTER
        way, heading = ("down", f"## {metric} (lower is better)") if lower else ("up", f"## {metric}")
        lines += [heading, "", f"| fold | reference | candidate | Δ | images {way} |", "|---|---|---|---|---|"]
        lines += [f"| {d.fold} | {d.reference:.4f} | {d.candidate:.4f} | {d.difference:+.4f} | "
                  f"{d.images_down if lower else d.images_up} of {d.images} |" for d in rows]
        deltas = [d.difference for d in rows]
        spread = f" ± {statistics.stdev(deltas):.4f}" if len(deltas) > 1 else ""
        folds = f"{len(rows)} fold{'s' if len(rows) > 1 else ''}"
        moved = sum(x < 0 for x in deltas) if lower else sum(x > 0 for x in deltas)
        lines += [f"| {folds} | {statistics.fmean(d.reference for d in rows):.4f} | "
                  f"{statistics.fmean(d.candidate for d in rows):.4f} | **{statistics.fmean(deltas):+.4f}{spread}** | "
                  f"{moved} of {folds} {way} |", ""]
        interval = compute_difference_interval(rows)
        if interval:
            lines += [f"95 % interval of the folds' mean Δ from the images alone (paired bootstrap within each fold, "
                      f"2000 resamples; a training seed's spread is not in it): {interval[0]:+.4f} to "
                      f"{interval[1]:+.4f}.", ""]
    notes = []
    if comparison.reference_only or comparison.candidate_only:
        notes.append("Not compared (scored on one side only): "
                     + "; ".join(f"{', '.join(f)} ({side} only)" for f, side in
                                 ((comparison.reference_only, "reference"), (comparison.candidate_only, "candidate"))
                                 if f) + ".")
    if comparison.skipped:
        notes.append("No image counts: " + ", ".join(f"{m} on {f}" for m, f in comparison.skipped) + ".")
    identical = identical_scores_warning(comparison, Path(reference), Path(candidate))
    if identical:
        notes.append(identical[0].upper() + identical[1:] + ".")
    if not comparison.truth_counts:
        notes.append("Folds where neither table has truth_<class> columns (written before session 23): an image whose "
                     "truth lacks a class is left out only where its prediction lacks it too (nan); elsewhere it "
                     "counts as 0.")
    return "\n".join(lines + notes).rstrip() + "\n"
