"""The command line shared by the inference-only screens over a ``covseg cv`` folder's fold models
(``speck_screen.py``, ``gap_analysis.py``, ``smooth_screen.py``, ``hole_screen.py``): ``CV_DIR [--data DIR]
[--folds N]``, checked before any fold is scored, each refusal one line; and the nested report of the multiclass
map screens (:func:`print_nested_multiclass`)."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np

Result = TypeVar("Result")


def over_folds(prog: str, description: str, argv: list[str] | None,
               per_fold: Callable[[Path, int, str | None], Result], *, min_folds: int,
               kind: str = "") -> list[Result]:
    """``per_fold(cv_dir, k, data)`` for folds ``k = 0 .. --folds - 1`` of the ``covseg cv`` folder the command line
    ``argv`` names (``--data`` None: each run's own data folder). Refused in one line (``SystemExit`` starting
    ``prog: ``): fewer than ``min_folds`` folds, a fold without ``last.pt`` (the message asks for a finished ``kind``
    cv folder, e.g. ``"multiclass "``), and a :class:`covseg.errors.CovsegError` raised while scoring."""
    from covseg.errors import CovsegError

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("cv_dir", type=Path)
    parser.add_argument("--data", default=None)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    if args.folds < min_folds:
        why = " (a nested choice needs other folds)" if min_folds > 1 else ""
        raise SystemExit(f"{prog}: --folds must be {min_folds} or more{why}, not {args.folds}")
    missing = [k for k in range(args.folds) if not (args.cv_dir / f"fold-{k}" / "last.pt").is_file()]
    if missing:
        raise SystemExit(f"{prog}: {args.cv_dir} has no trained fold-{missing[0]}/last.pt; give a finished "
                         f"{kind}covseg cv folder (or a smaller --folds)")
    try:  # a wrong data set or a model of the other task: one line, not a traceback
        return [per_fold(args.cv_dir, k, args.data) for k in range(args.folds)]
    except CovsegError as error:
        raise SystemExit(f"{prog}: {error}")


def held_out_predictions(cv_dir: Path, fold: int, data: str | None,
                         need_task: str | None = None) -> tuple[str, Iterator[tuple[object, "np.ndarray"]]]:
    """Fold ``fold``'s model (``last.pt``, as ``covseg cv`` scores it) on its own held-out images: its task and
    ``(sample, probs)`` pairs, ``probs`` ``(C, H, W)`` class probabilities at the image's own size, ``sample.mask``
    ``(H, W)`` the truth (0 background). ``data`` None: the run's own data folder. A model of another task than
    ``need_task`` raises a one-line :class:`covseg.errors.CovsegError`."""
    from covseg.errors import CovsegError
    from covseg.experiment import select_samples
    from covseg.predict import open_predictor
    from covseg.run import read_run_info

    run = cv_dir / f"fold-{fold}"
    data = data or read_run_info(run)["data"]
    predictor, config, _ = open_predictor(run, which="last")
    task = config.data.task
    if need_task is not None and task != need_task:
        raise CovsegError(f"{run}: is a {task} model; give a {need_task} cv folder")
    samples = select_samples(run, data, task, "heldout", config.data.window)
    return task, zip(samples, predictor([s.image for s in samples]))


def multiclass_fold_dice(cv_dir: Path, fold: int, data: str | None, candidates: list,
                         label_map: Callable[..., "np.ndarray"]) -> "np.ndarray":
    """One fold's per-image Dice means ``(candidates, 2)`` (GGO, consolidation) of a multiclass map screen: each
    candidate's ``label_map(probs, *candidate)`` ``(H, W)`` of the fold model's class probabilities ``(C, H, W)`` on
    each held-out image (:func:`held_out_predictions`), scored as ``covseg evaluate`` scores (images whose truth
    lacks a class skipped for it)."""
    import numpy as np
    from gap_analysis import per_image_dice

    _, predictions = held_out_predictions(cv_dir, fold, data, need_task="multiclass")
    classes = [1, 2]
    values: list[list[list[float]]] = [[[] for _ in classes] for _ in candidates]
    for sample, probs in predictions:
        for i, candidate in enumerate(candidates):
            for j, d in enumerate(per_image_dice(label_map(probs, *candidate), sample.mask, classes)[:2]):
                if d is not None:
                    values[i][j].append(d)
    return np.array([[np.mean(v) for v in per] for per in values])


def print_nested_multiclass(dice_: "np.ndarray", names: list[str]) -> None:
    """Print a multiclass map screen's table and nested result: ``dice_`` ``(folds, candidates, 2)`` per-image Dice
    means (GGO, consolidation) of each candidate named in ``names`` (``names[0]`` the arg-max as it is). Per fold
    the candidate with the best mean of the two on the other folds is scored on the fold's own images
    (``speck_screen.nested_choice``), against candidate 0; the pick in hindsight is printed as a bound only."""
    import numpy as np
    from speck_screen import nested_choice

    folds = len(dice_)
    print("| candidate | " + " | ".join(f"fold {k}" for k in range(folds)) + " | mean GGO / consolidation |")
    print("|---" * (folds + 2) + "|")
    for i, name in enumerate(names):
        cells = [f"{dice_[k, i, 0]:.4f} / {dice_[k, i, 1]:.4f}" for k in range(folds)]
        mean = dice_[:, i].mean(0)
        print(f"| {name} | " + " | ".join(cells) + f" | {mean[0]:.4f} / {mean[1]:.4f} |")
    picks = nested_choice(dice_.mean(2))
    nested = np.stack([dice_[k, p] for k, p in enumerate(picks)])
    for k, p in enumerate(picks):
        print(f"fold {k}: picked {names[p]}; Δ " + " / ".join(f"{x:+.4f}" for x in nested[k] - dice_[k, 0]))
    delta = nested - dice_[:, 0]
    for j, name in enumerate(("GGO", "consolidation")):
        print(f"{name}: as is {dice_[:, 0, j].mean():.4f}, nested {nested[:, j].mean():.4f}, "
              f"Δ {delta[:, j].mean():+.4f}, folds worse {int((delta[:, j] < 0).sum())} of {folds}")
    hindsight = int(dice_.mean(2).mean(0).argmax())
    print(f"in hindsight (picked on the scored images, a bound only): {names[hindsight]}, Δ "
          + " / ".join(f"{x:+.4f}" for x in (dice_[:, hindsight] - dice_[:, 0]).mean(0)))
