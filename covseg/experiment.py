"""Whole workflows over runs: evaluate a run on a split, compare models, cross-validate a recipe.

These are the library calls behind ``covseg evaluate``, ``covseg compare`` and ``covseg cv``.
"""
from __future__ import annotations

import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from collections.abc import Collection, Sequence
from typing import Any, Callable

import numpy as np

from covseg.config import MAX_SEED, DataConfig, RunConfig, check_new_run, config_from_dict, config_to_dict
from covseg.datasets import Sample, lesion_only_caveat, load_dataset
from covseg.errors import CovsegError, Terminated
from covseg.evaluation import REPORT_FILES, Evaluation, format_figure, evaluate_image, summarise, write_report
from covseg.fileio import atomic_write_text, check_output_folder, refuse_output_in_data, unwritable_reason
from covseg.figures import plot_comparison
from covseg.inference import Predictor
from covseg.intensity import LUNG_WINDOW
from covseg.predict import check_lesion_task, check_type_model_task, describe_after_use, ensemble_members, open_models
from covseg.progress import progress_bar
from covseg.splits import load_split, make_split, parse_split_name
from covseg.wording import counted
from covseg.labels import get_scheme
from covseg.metrics import stratified_bootstrap_interval
from covseg.paired import PER_IMAGE, by_number, counted_values, fold_runs, read_per_image, seed_ensemble_beside
from covseg.parallel_runs import train_runs_in_parallel
from covseg.checkpoint import build_model, epochs_done, find_checkpoint, read_checkpoint
from covseg.run import (check_checkpoint_settings, differences_note, is_run_folder, parameter_count, read_run_config,
                        read_run_info, setting_differences, sync_history, train_run, trained_on)

__all__ = ["EVAL_SPLITS", "select_samples", "evaluate_samples", "evaluate_run", "compare_models", "train_or_resume",
           "cross_validate", "cross_validate_seeds", "check_folds", "check_seeds", "own_checkpoint"]

EVAL_SPLITS = ("heldout", "val", "test", "testset", "train", "all")

TYPES_ONLY_NEEDS_LESION_MODEL = ("train.types_only trains a type model, scored behind a binary lesion model: train "
                                 "it with covseg train, then covseg evaluate RUN --lesion-model BINARY_RUN -o OUT")


def select_samples(run_dir: Path | None, data: str, task: str, split: str,
                   window: tuple[float, float] = LUNG_WINDOW) -> list[Sample]:
    """The images a run is evaluated on.

    ``heldout`` = the run's own test part if it has one, else its validation part; ``val``/``train`` = the
    run's parts; ``test`` = the run's test part, else the data set's official test split; ``testset`` = the data
    set's official test split always (COVID-SemiSeg's 48 images, also for a ``paper`` run, whose own test part
    ``test`` scores); ``all`` = every labelled training image of ``data``. A run's part must be found whole in
    ``data`` (a part of it is refused).
    """
    _check_eval_split(split)
    parts: dict[str, list[str]] = {}
    if run_dir is not None and (run_dir / "split.json").is_file():
        parts = load_split(run_dir / "split.json")  # a damaged one is refused, not read as other parts
    asked = split
    if split == "heldout":
        split = "test" if parts.get("test") else "val"
    if split == "testset" or (split == "test" and not parts.get("test")):
        return load_dataset(data, task, split="test", window=window)
    samples = load_dataset(data, task, split="train", window=window)
    if split == "all":
        return samples
    if not parts:
        raise CovsegError(f"split {asked!r} needs a run folder with split.json; pass the run folder or use "
                          "--split all/test")
    names = set(parts.get(split, []))
    if not names:
        where = f"{run_dir}: " if run_dir is not None else ""
        if asked == "heldout":  # the default: "val split" named a split the user never asked for
            raise CovsegError(f"{where}the run held out no images (its split.json has no val or test image, as with "
                              "data.val_fraction=0), so it has no held-out figure; score it on the official test "
                              "split (--split testset with a --data that holds it) or on --split train or all")
        raise CovsegError(f"{where}the run's {split} part is empty (no image in its split.json's {split!r}); score it "
                          "on --split testset (with a --data that holds the official test split), train or all")
    chosen = [s for s in samples if s.name in names]
    missing = sorted(names - {s.name for s in chosen})
    if missing:  # scoring the rest would report a figure of a subset as the split's
        raise CovsegError(f"{len(missing)} of the {len(names)} images of the run's {split} split are not in {data} "
                          f"(e.g. {', '.join(missing[:3])}); point --data at the data the run was trained on")
    return chosen


def _check_eval_split(split: str) -> None:
    """Refuse an evaluation split name that is not one of :data:`EVAL_SPLITS`."""
    if split not in EVAL_SPLITS:
        # a training split's name (cv:K, official, seed, paper) says which images a run held out, not what to score
        training = split.partition(":")[0] in ("cv", "official", "seed", "paper")
        hint = ("; a run's own held-out images (fold K of a cv:K run) are --split heldout, the default, and another "
                "fold's are scored by that fold's run" if training else "")
        raise CovsegError(f"unknown evaluation split {split!r}: use one of {', '.join(EVAL_SPLITS)}{hint}")


def evaluate_samples(predictor: Predictor, samples: list[Sample], task: str, progress: bool = True) -> Evaluation:
    """Predict and score every sample at its own size."""
    scheme = get_scheme(task)
    results = []
    images = [s.image for s in samples]
    with progress_bar(total=len(samples), desc="evaluate", unit="image", disable=not progress,
                      dynamic_ncols=True) as bar:
        for sample, probs in zip(samples, predictor(images)):
            results.append(evaluate_image(sample.name, probs, sample.mask, scheme, sample.image))
            bar.update(1)
    return summarise(results, scheme)


def _evaluates_validation(run_dir: Path, split: str) -> bool:
    """True when ``split`` of ``run_dir`` holds the validation images that picked ``best.pt`` (``all``, every
    labelled training image, holds them too)."""
    parts = load_split(run_dir / "split.json") if (run_dir / "split.json").is_file() else {}
    return split in ("val", "all") or (split == "heldout" and not parts.get("test"))


def own_checkpoint(first_model: Path, split: str) -> str:
    """The checkpoint ``covseg evaluate --checkpoint auto`` opens of each run folder it scores on ``split``, where
    ``first_model`` is the first model given (a run folder, or a model file in one): ``final`` (``swa.pt``, else
    ``last.pt``) where that run chose its ``best.pt`` on these images (:func:`_evaluates_validation`), else ``auto``
    (``best.pt``)."""
    run_dir = _run_folder_of(first_model)
    return "final" if run_dir is not None and _evaluates_validation(run_dir, split) else "auto"


def _report_name(split: str, checkpoint: str | None, tta: bool) -> str:
    """A run's report folder: ``eval-SPLIT`` for its own model, ``eval-SPLIT-CHECKPOINT`` for another checkpoint,
    ending in ``-tta`` for a flip-TTA score, so that neither replaces the plain report ``covseg cv`` reads."""
    return f"eval-{split}" + (f"-{checkpoint}" if checkpoint else "") + ("-tta" if tta else "")


def _refuse_onnx_chosen_on(paths: Sequence[Path], split: str) -> None:
    """Refuse ONNX files exported from ``best.pt`` when the images scored (``split``) are the validation images
    that chose it: the figure would be inflated by the selection (the reason ``evaluate`` scores ``last.pt`` there)."""
    from covseg.export import exported_from

    for path in paths:
        if path.suffix.lower() == ".onnx" and exported_from(path) == "best.pt":
            raise CovsegError(f"{path}: exported from best.pt, which the {split} images chose; score them with a graph "
                              "of the run's final model (covseg export RUN_DIR --checkpoint last, or swa) or with "
                              "the run folder itself")


def evaluate_run(model_path: Path | Sequence[Path], data: str | None, split: str, out_dir: Path | None,
                 which: str = "auto", device: str = "cpu", precision: str = "auto", batch_size: int = 8,
                 tta: bool = False, task: str | None = None, backend: str = "auto",
                 progress: bool = True, lesion_model: Sequence[Path] | None = None,
                 force: bool = False) -> tuple[dict[str, Any], Path]:
    """Evaluate a run folder or checkpoint; writes the report into ``out_dir`` and returns (metrics, out_dir).

    Several paths, or a cross-validation folder, are evaluated as one ensemble (mean probabilities, see
    :func:`covseg.predict.open_ensemble`). An ensemble scores the run's own parts (``heldout``, ``val``,
    ``train``), or every image (``all``), only when every member was trained on the same split, so no member saw
    the held-out images scored; a cross-validation folder's folds are therefore scored together only on ``test``.
    Its report goes to ``CV_DIR/eval-SPLIT``; other ensembles need ``out_dir``.

    ``lesion_model``: binary models whose lesions the multiclass ``model_path`` types
    (:func:`covseg.predict.open_models`); on the run's own parts they must share its split.

    ``which="auto"`` takes each run's ``swa.pt`` where it averaged its weights (``train.swa_epochs``), else
    ``last.pt`` when the images evaluated are the validation images that chose ``best.pt`` (so a
    cross-validation figure is not inflated by selecting on the fold it reports), and ``best.pt`` otherwise
    (:func:`covseg.checkpoint.find_checkpoint`'s ``final`` and ``auto``). A run scored with another checkpoint
    than that reports to ``eval-SPLIT-WHICH``, beside its own ``eval-SPLIT``; with ``tta`` the folder's name ends in
    ``-tta`` (``eval-SPLIT-tta``), so a flip-TTA score never replaces the plain one ``covseg cv`` and ``cv-compare``
    read.

    An ``out_dir`` given that holds the report of another scoring (other model files, split, data folder or flip
    TTA: :func:`_report_subject`) is refused before any model loads unless ``force``; one of the same scoring is
    replaced. A report folder picked here (``RUN/eval-…``, ``CV_DIR/eval-…``) that holds the report of another data
    folder than ``data`` (``--data OTHER`` after the run's own data, or the other way round) is refused likewise
    unless ``force``: give ``out_dir`` for the scoring of another data set, so that neither report replaces the
    other. An ``out_dir`` that names a file (``report.md``: :func:`_refuse_a_file_name_for_the_report_folder`) is
    refused; it is the folder the report's files (:data:`covseg.evaluation.REPORT_FILES`) are written into.
    ``metrics.json`` records each model file as its resolved path, as it records ``data``.
    """
    _check_eval_split(split)  # a mistyped name is told so, not taken for another split's images
    given = [Path(model_path)] if isinstance(model_path, (str, Path)) else [Path(p) for p in model_path]
    paths = ensemble_members(given)
    lesion_paths = ensemble_members(lesion_model) if lesion_model else []
    run_dir = _run_folder_of(paths[0])  # a checkpoint inside its run folder: the run's data and split
    if lesion_paths:  # the tasks first: models given the wrong way round are told so, not that their splits differ
        for path, check in [(paths[0], check_type_model_task), *((p, check_lesion_task) for p in lesion_paths)]:
            if path.is_dir():
                check(path, read_run_config(path).data.task)
    if out_dir is not None and ((Path(out_dir) / "config.yaml").is_file() or fold_runs(Path(out_dir))):
        raise CovsegError(f"{out_dir}: is a run or cross-validation folder; give -o a report folder of its own, e.g. "
                          f"{Path(out_dir) / 'eval-NAME'}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():  # before scoring, not after
        raise CovsegError(f"{out_dir}: is a file, not a folder; give -o a folder for the report, e.g. "
                          f"{Path(out_dir).parent / 'eval-report'}")
    if out_dir is not None:
        _refuse_a_file_name_for_the_report_folder(Path(out_dir))
    why = unwritable_reason(out_dir, folder=True) if out_dir is not None else None
    if why:  # a path through a file, or a folder this process may not write into: told before scoring
        raise CovsegError(f"{out_dir}: cannot be written ({why}); give -o a folder you can write")
    given_out = out_dir is not None  # a folder named by the caller, not one of the run's own report folders
    if out_dir is not None:
        _refuse_another_runs_report_folder(Path(out_dir), paths + lesion_paths)
    if out_dir is None and lesion_paths:
        raise CovsegError("an evaluation with --lesion-model needs -o REPORT_DIR, so the model's own report stays")
    if out_dir is None and paths != given:  # a cross-validation folder reports beside its folds
        out_dir = given[0] / _report_name(split, None if which == "auto" else which, tta)
    if out_dir is None and len(paths) > 1:
        raise CovsegError("an ensemble of several models needs -o REPORT_DIR for its report")
    own = own_checkpoint(paths[0], split)
    if own == "final":
        _refuse_onnx_chosen_on(paths + lesion_paths, split)
    requested, which = which, own if which == "auto" else which
    if data is None:
        if run_dir is None:
            raise CovsegError("pass --data DIR and --split all, test or testset when evaluating a model file outside "
                              "its run folder (its own split is in the run folder)")
        data = read_run_info(run_dir)["data"]
    # the model files as open_models will open them, and so the report folder, known before any model loads
    files, lesion_files = ([find_checkpoint(path, which) for path in side] for side in (paths, lesion_paths))
    report_dir = Path(out_dir) if out_dir is not None else _own_report_folder(
        run_dir, paths[0], files[0], split, own, requested, tta)
    if out_dir is not None:  # told before the models load, which is the slow part
        refuse_output_in_data(Path(out_dir), data)  # a report there would be read as a mask
    _refuse_folders_in_the_reports_place(report_dir)
    early = None  # the data set's test split, read before the models load: a folder without it is told at once
    if run_dir is not None and split in ("test", "testset"):
        run_data = read_run_config(run_dir).data
        early = (run_data.task, run_data.window), select_samples(run_dir, data, run_data.task, split, run_data.window)
    if given_out and not force:  # before the models load: another model's figure is not replaced unasked
        _refuse_replacing_another_report(report_dir, {"model": _planned_model(files, lesion_files, tta),
                                                      "split": split, "data": data})
    elif not force and Path(data).is_dir():  # a report folder of the run's: one data folder's report is not replaced
        _refuse_replacing_another_datas_report(report_dir, data)  # by another's (a mistyped --data: its own line)
    if not force and run_dir is not None and len(paths) == 1 and not lesion_paths:  # -o RUN/eval-… as without -o
        _refuse_other_data_in_the_runs_own_folder(report_dir, run_dir, data, split)
    predictor, config, info = open_models(paths, lesion_paths, task, which, backend, device, precision, batch_size, tta)
    if len(paths) + len(lesion_paths) > 1:  # after open_models: models of two tasks are told so, not that splits differ
        _check_ensemble_split(paths + lesion_paths, split, typed=bool(lesion_paths))
    if early is not None and early[0] == (config.data.task, config.data.window):
        samples = early[1]
    else:
        samples = select_samples(run_dir, data, config.data.task, split, config.data.window)
    out_dir = report_dir
    began = time.perf_counter()
    ev = evaluate_samples(predictor, samples, config.data.task, progress)
    extra = {"model": _resolved_files(describe_after_use(info, predictor)), "recipe": config.recipe,
             "data": str(Path(data).resolve()), "split": split, "seconds": round(time.perf_counter() - began, 3)}
    scored_files = _scored_files(info)  # the ensemble's members, then the --lesion-model's: paths + lesion_paths
    n_models = len(scored_files)
    name = f"{info['name']} ({n_models} models)" if n_models > 1 else config.model.name
    title = (f"{name} · {config.data.task} · {split} ({counted(len(samples), 'image')}) · "
             + ", ".join(sorted({f.name for f in scored_files})) + (" · flip TTA" if tta else ""))
    if n_models == 1:  # one model: whether its figure is a held-out one
        caveats = _caveats(run_dir, scored_files[0], split, own, samples, data)
    else:
        caveats = _ensemble_caveats(list(zip(map(_run_folder_of, paths + lesion_paths), scored_files)), split,
                                    samples, data, _final_model_remedy(paths + lesion_paths, requested))
    lesion_only = lesion_only_caveat(samples, config.data.task)
    if lesion_only:  # any number of models: the masks, not the models, leave consolidation unscored
        caveats.append(lesion_only)
    if caveats:
        extra["caveats"] = caveats
    return write_report(ev, out_dir, title, extra), out_dir


def _own_report_folder(run_dir: Path | None, first: Path, scored: Path, split: str, own: str, requested: str,
                       tta: bool) -> Path:
    """The report folder :func:`evaluate_run` picks without ``out_dir`` for the one model ``first`` (as given), whose
    file ``scored`` it opens (:func:`covseg.checkpoint.find_checkpoint`'s, as :func:`covseg.predict.open_predictor`
    takes it): ``eval-SPLIT`` beside that file for the run's own checkpoint (``own``: :func:`own_checkpoint`),
    ``eval-SPLIT-CHECKPOINT`` for another (the ``--checkpoint`` ``requested``, or under ``auto`` the file's name), so
    it goes beside, never over, the run's own (which ``covseg cv`` reads)."""
    is_own = (requested == "auto" and first.is_dir()) or scored == find_checkpoint(run_dir or first, own)
    named = requested if requested != "auto" else scored.stem  # RUN/best.pt given as a file: eval-SPLIT-best
    return scored.parent / _report_name(split, None if is_own else named, tta)


def _planned_model(files: Sequence[Path], lesion_files: Sequence[Path], tta: bool) -> dict[str, Any]:
    """A report's ``model`` entry as far as :func:`_report_subject` reads it, for the evaluation about to open the
    model files ``files`` (an ensemble's members where several) and ``lesion_files`` (its ``--lesion-model``'s), with
    flip TTA or not: known before any model loads."""
    def side(paths: Sequence[Path]) -> dict[str, Any]:
        entry: dict[str, Any] = {"file": str(paths[0])}
        return {**entry, "members": [{"file": str(path)} for path in paths]} if len(paths) > 1 else entry

    return {**side(files), "flip_tta": tta, **({"lesion_model": side(lesion_files)} if lesion_files else {})}


def _resolved_files(model: dict[str, Any]) -> dict[str, Any]:
    """A report's ``model`` entry (:func:`covseg.predict.describe_after_use`) with every model file (the model's, each
    ensemble member's, the ``--lesion-model``'s) as its resolved path, as ``data`` is recorded: a report read from
    another working directory, or ``covseg cv`` run from one, still finds the files it scored."""
    out = {**model, "file": str(Path(model["file"]).resolve())}
    if "members" in model:
        out["members"] = [_resolved_files(member) for member in model["members"]]
    if "lesion_model" in model:
        out["lesion_model"] = _resolved_files(model["lesion_model"])
    return out


def _report_subject(metrics: dict[str, Any]) -> tuple[tuple[tuple[str, ...], ...], str, str, bool]:
    """What a report scored (``metrics``: ``metrics.json``'s contents, or the same keys of an evaluation about to
    run): the model files scored, resolved (a relative one, as covseg wrote before session 75, against the working
    directory), those of the models and those of a ``--lesion-model`` each in name order (an ensemble's mean is the
    same in any order); the split, the data folder and whether with flip TTA. Raises ``KeyError``, ``TypeError`` or
    ``AttributeError`` where ``metrics`` does not say."""
    model = metrics["model"]
    files = tuple(tuple(sorted(str(Path(m["file"]).resolve()) for m in side)) for side in _sides(model))
    return files, str(metrics["split"]), str(Path(metrics["data"]).resolve()), bool(model["flip_tta"])


def _refuse_replacing_another_report(out_dir: Path, scoring: dict[str, Any]) -> None:
    """Refuse an ``-o`` whose ``metrics.json`` is the report of another scoring than ``scoring`` (the ``model``,
    ``split`` and ``data`` of the evaluation about to run; :func:`_report_subject`): its figure would be replaced
    unasked. The same scoring again (a model trained on, or scored with another backend) replaces it; a folder
    without a readable report is written into as before."""
    try:
        recorded = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
        theirs = _report_subject(recorded)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if theirs == _report_subject(scoring):
        return
    given = [str(file) for file in _scored_files(recorded["model"])]
    if any(not Path(file).is_absolute() and not Path(file).exists() for file in given):
        # a report written before session 75 recorded each path as given, relative to where it ran
        raise CovsegError(f"{out_dir}: holds an older report of {_named(given)}, paths relative to the folder it was "
                          "scored from, which this is not; run this from that folder to replace a report of the same "
                          "model, give -o another folder to keep it, or --force to replace it")
    files, split, data, tta = theirs
    raise CovsegError(f"{out_dir}: holds the report of {_named([f for side in files for f in side])} (--split {split}"
                      f"{', --tta' if tta else ''}, data {data}), not of this evaluation; give -o another folder to "
                      "keep it, or --force to replace it")


def _refuse_replacing_another_datas_report(out_dir: Path, data: str) -> None:
    """Refuse a report folder :func:`evaluate_run` picks itself (``RUN/eval-…``, ``CV_DIR/eval-…``) whose
    ``metrics.json`` scored another data folder than ``data``: a scoring of ``--data OTHER`` would replace the report of
    the run's own data there unasked, or the other way round. The split, checkpoint and flip TTA are in the folder's
    name and its models are the run's (recorded where they were scored, so a moved run folder is not refused): only
    the data folder is compared. A folder without a readable report is written into as before, and so is one whose
    report names a data folder that is no longer there (moved: the run's own data, now elsewhere) or recorded as a
    relative path (older reports recorded ``data`` as typed, relative to a folder not known now)."""
    try:
        recorded = Path(json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))["data"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    theirs = _data_folder_elsewhere(recorded, data)
    if theirs is not None:
        raise CovsegError(f"{out_dir}: holds the report of data {theirs}, not of {data}; give -o a folder for this "
                          "scoring to keep it, or --force to replace it")


def _data_folder_elsewhere(recorded: Path, data: str) -> Path | None:
    """``recorded`` (a report's or a run's ``data`` entry), resolved, where it names a data folder other than
    ``data`` that is still there; None where it is ``data``'s, is recorded relative (older records hold the path as
    typed, relative to a folder not known now) or is no longer there (moved: the run's own data, now elsewhere)."""
    if not recorded.is_absolute() or not recorded.exists():
        return None
    theirs = recorded.resolve()
    return theirs if theirs != Path(data).resolve() else None


def _refuse_other_data_in_the_runs_own_folder(report_dir: Path, run_dir: Path, data: str, split: str) -> None:
    """Refuse a report folder of the run's own (``RUN/eval-SPLIT[-CHECKPOINT][-tta]``: picked without ``-o``, or
    given as ``-o``) for a scoring of the run's own parts (``--split`` heldout, val, train or all) on another data
    folder than the one it trained on (``run.json``'s ``data``), even where the folder is empty: ``covseg cv-compare``
    and later evaluations take the report there for the run's own. Not refused: ``test`` and ``testset`` (another
    data folder holds the data set's test split: ``covseg evaluate RUN --split testset --data DIR``); a run whose
    recorded data folder is no longer there (moved) or is recorded relative; a ``--data`` that is no folder (told in
    its own line)."""
    if split in ("test", "testset") or not _REPORT_FOLDER.fullmatch(report_dir.name) or not Path(data).is_dir():
        return
    if report_dir.parent.resolve() != run_dir.resolve():
        return
    try:
        recorded = Path(read_run_info(run_dir, require_data=False)["data"])
    except (CovsegError, KeyError, TypeError):
        return
    if _data_folder_elsewhere(recorded, data) is not None:
        raise CovsegError(f"{report_dir}: is where the report of the run's own data {recorded} goes (covseg "
                          f"cv-compare reads it as the run's figure), not of {data}; give -o a folder of its own for "
                          f"this scoring, e.g. {run_dir.parent / 'eval-NAME'}, or --force to write it there")


#: The suffixes of the files an ``-o`` is taken to name, not a report folder
#: (:func:`_refuse_a_file_name_for_the_report_folder`).
_FILE_SUFFIXES = (".md", ".json", ".csv", ".tsv", ".html", ".htm", ".txt", ".png", ".pdf", ".yaml", ".yml")


def _refuse_a_file_name_for_the_report_folder(out_dir: Path) -> None:
    """Refuse an ``-o`` not yet a folder whose name ends as a file's (``report.md``, ``metrics.json``:
    :data:`_FILE_SUFFIXES`): it would be made a folder of that name, holding the report's files
    (:data:`covseg.evaluation.REPORT_FILES`). A folder of that name that exists already is written into."""
    if out_dir.suffix.lower() in _FILE_SUFFIXES and not out_dir.is_dir():
        raise CovsegError(f"{out_dir}: -o takes a folder, not a file: covseg evaluate writes {_named(REPORT_FILES)} "
                          f"into it; give a folder, e.g. -o {out_dir.with_suffix('')}")


def _refuse_folders_in_the_reports_place(out_dir: Path) -> None:
    """Refuse, before scoring, a report folder ``out_dir`` where one of the report's file names
    (:data:`covseg.evaluation.REPORT_FILES`) is taken by something other than a file (a folder made by ``-o
    RUN/eval-heldout/metrics.json``): the report could not replace it once the images were scored."""
    blocked = [name for name in REPORT_FILES if (out_dir / name).exists() and not (out_dir / name).is_file()]
    if blocked:
        raise CovsegError(f"{out_dir / blocked[0]}: is a folder, where the report writes its file {blocked[0]}; move "
                          "it out of the way, or give -o another folder")


def _refuse_another_runs_report_folder(out_dir: Path, models: Sequence[Path]) -> None:
    """Refuse an ``-o`` that is one of the report folders ``covseg evaluate RUN`` writes inside a run folder
    (``RUN/eval-SPLIT[-CHECKPOINT][-tta]``, :func:`_report_name`) for any scoring but of that run's own model
    (``models``: every model scored, ``--lesion-model``'s included): an ensemble's report, or another run's, in
    ``RUN/eval-heldout`` would pass for the run's own figure where ``covseg cv`` and ``cv-compare`` read it."""
    run = out_dir.parent
    if not (_REPORT_FOLDER.fullmatch(out_dir.name) and is_run_folder(run)):
        return
    folders = {folder.resolve() if folder is not None else None for folder in map(_run_folder_of, models)}
    if len(models) == 1 and folders == {run.resolve()}:
        return
    scored = "these models" if len(models) > 1 else str(models[0])
    raise CovsegError(f"{out_dir}: is where covseg evaluate {run} reports that run's own model (covseg cv and "
                      f"cv-compare read its reports there), so a report of {scored} there would pass for the run's; "
                      f"give -o a folder of its own, e.g. {run.parent / 'eval-NAME'}")


#: The names of the report folders ``covseg evaluate RUN`` gives a run's own reports (:func:`_report_name`).
_REPORT_FOLDER = re.compile(rf"eval-({'|'.join(EVAL_SPLITS)})(-(best|last|ema|swa))?(-tta)?")


def _run_folder_of(path: Path) -> Path | None:
    """The run folder of a model ``path``: the path itself where it is a folder (a run), the folder holding it where
    that is a run's (``run.json``: a checkpoint or ONNX file in its run folder), else None (a model file kept
    elsewhere, whose data and split are not known)."""
    if path.is_dir():
        return path
    return path.parent if (path.parent / "run.json").is_file() else None


def _scored_files(info: dict[str, Any]) -> list[Path]:
    """The model files an evaluation ran (``info``: :func:`covseg.predict.open_models`'s description): the one model,
    or each ensemble member in order, then the ``--lesion-model``'s likewise (the order of the paths opened)."""
    return [Path(m["file"]) for side in _sides(info) for m in side]


def _sides(info: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The models of an evaluation's ``model`` entry (:func:`covseg.predict.describe_after_use`, or metrics.json's),
    each side as a list: the one model or the ensemble's members, then the ``--lesion-model``'s likewise."""
    sides = [info] + ([info["lesion_model"]] if "lesion_model" in info else [])
    return [side.get("members") or [side] for side in sides]


def _named(items: Sequence[str]) -> str:
    """``items`` in a sentence: "a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _final_model_remedy(paths: Sequence[Path], checkpoint: str) -> str:
    """How to score each run's final model instead of a ``best.pt`` that chose on the images scored, for the
    models ``paths`` as given and the ``--checkpoint`` asked: the run folders instead of checkpoint files given by
    path (``RUN/best.pt``), and without ``--checkpoint`` where one was asked."""
    ways = (["instead of the checkpoint files"] if any(path.is_file() for path in paths) else []) + (
        ["without --checkpoint"] if checkpoint != "auto" else [])
    return "give the run folders" + (f" {', '.join(ways)}" if ways else "")


def _ensemble_caveats(models: Sequence[tuple[Path | None, Path]], split: str, samples: Sequence[Sample],
                      data: str, remedy: str = "give the run folders without --checkpoint") -> list[str]:
    """:func:`_caveats` for several models scored together (an ensemble, or a model with its ``--lesion-model``):
    ``models`` holds each one's ``(run folder or None, file scored)``. Says which ``best.pt`` were chosen on
    validation images among those scored, how many of the images some model trained on (and which models), and
    which model files kept outside their run folders may have trained on ``all``'s images. ``remedy``: how to score
    the runs' final models instead of a chosen ``best.pt`` (:func:`_final_model_remedy`)."""
    caveats = []
    chosen = [str(scored) for run_dir, scored in models
              if run_dir is not None and scored.name == "best.pt" and _evaluates_validation(run_dir, split)]
    if chosen:
        chosen_on = "the validation images among these" if split == "all" else f"these {split} images"
        caveats.append(f"{_named(chosen)} {'was' if len(chosen) == 1 else 'were'} chosen on {chosen_on} (the best "
                       f"validation epoch of its run), so this figure is optimistic; {remedy} to score each run's "
                       "final model")
    trained_on: set[str] = set()
    trainers = []
    for run_dir, scored in models:
        names = _training_images(run_dir, data) & {s.name for s in samples}
        if names:
            trained_on |= names
            trainers.append(str(run_dir))
    if trained_on:
        caveats.append(f"{len(trained_on)} of these {len(samples)} images were training images of "
                       f"{_named(trainers)}, so this is no held-out figure; score the models on images none of them "
                       "trained on (--split heldout, the default, or test)")
    outside = [str(scored) for run_dir, scored in models if run_dir is None]
    if outside and split == "all":
        lie, its, it, was = (("lies", "its run folder", "it", "it was") if len(outside) == 1 else
                             ("lie", "their run folders", "they", "they were"))
        caveats.append(f"{_named(outside)} {lie} outside {its}, so which of these {len(samples)} images {it} trained "
                       f"on is not known: if {was} trained on them, this is no held-out figure; for a held-out figure, "
                       "score the models on --split test")
    return caveats


def _training_images(run_dir: Path | None, data: str) -> set[str]:
    """The names of the images the run ``run_dir`` trained on, where ``data`` is the run's own data folder and its
    ``split.json`` says (else none: images of another folder are not matched by name)."""
    if run_dir is None or not (run_dir / "split.json").is_file():
        return set()
    try:
        own_data = Path(read_run_info(run_dir)["data"]).resolve() == Path(data).resolve()
    except CovsegError:  # no readable run.json: the images cannot be matched to the run's by name
        return set()
    return set(load_split(run_dir / "split.json").get("train", [])) if own_data else set()


def _caveats(run_dir: Path | None, scored: Path, split: str, own: str, samples: Sequence[Sample],
             data: str) -> list[str]:
    """Why one run's figure on ``split`` is not a held-out one, each as a sentence (empty when it is): ``best.pt``
    scored on the validation images that chose it, or images the model trained on (``train``, ``all``; counted
    by name where ``data`` is the run's own data folder). ``own`` is ``"final"`` where the images scored hold those
    validation images. A model file kept outside its run folder scored on ``all`` is told that its training images
    cannot be known."""
    if run_dir is None:
        if split != "all":  # test and testset: images no model of COVID-SemiSeg's training split trained on
            return []
        return [f"this model file lies outside its run folder, so which of these {len(samples)} images it trained on "
                "is not known: if it was trained on them, this is no held-out figure; for a held-out figure, score "
                "it from its run folder (covseg evaluate RUN_DIR) or on --split test"]
    caveats = []
    if own == "final" and scored.name == "best.pt":
        chosen_on = "the validation images among these" if split == "all" else f"these {split} images"
        caveats.append(f"best.pt was chosen on {chosen_on} (its best validation epoch), so this figure is "
                       f"optimistic; the run's own report scores {find_checkpoint(run_dir, 'final').name}")
    trained_on = _training_images(run_dir, data)
    seen = sum(s.name in trained_on for s in samples)
    if seen:
        caveats.append(f"{seen} of these {len(samples)} images were this model's training images, so this is no "
                       f"held-out figure; the run's held-out figure: covseg evaluate {run_dir}")
    return caveats


def _check_ensemble_split(paths: Sequence[Path], split: str, typed: bool = False) -> None:
    """Refuse to score an ensemble on a run's own parts unless all members share one split (``typed``: the members
    are a multiclass model and the ``--lesion-model`` runs whose lesions it types, and the message says so).

    ``test`` is the data set's official test split unless a member holds a test part of its own; ``testset`` is it
    always. ``all`` (every labelled training image) is the caller's explicit choice for members of one split, as for
    a single run, but refused for members of different splits (the folds of a cross-validation): an image one
    member held out another trained on, and a fold ensemble is scored only on images none of its members trained
    on. Members whose split is not known (a model file outside its run folder) are taken as they are there.
    """
    who = ("the model and its --lesion-model" if len(paths) == 2 else "the models and their --lesion-model runs") \
        if typed else "the ensemble's models"
    remedy = "give --lesion-model a run of the same split (the same fold), or " if typed else ""
    if split == "all":
        known = [load_split(f) for f in map(_split_file, paths) if f is not None]
        if any(other != known[0] for other in known[1:]):
            raise CovsegError(f"{who} were trained on different splits, so some of the images of --split all were "
                              f"training images of some and not of others; {remedy}score them together with "
                              "--split test (images none of them trained on)" + ("" if typed else ", or one run at a time"))
        return
    split_files = [_split_file(path) for path in paths]  # a checkpoint inside its run folder: the run's split
    if split == "testset" or (split == "test" and not any(f is not None and load_split(f)["test"]
                                                          for f in split_files)):
        return
    splits = []
    for path, split_file in zip(paths, split_files):
        if split_file is None:
            raise CovsegError(f"{path}: split {split!r} needs run folders with split.json (a model file kept outside "
                              "its run folder has none); use --split test")
        splits.append(load_split(split_file))
    if any(other != splits[0] for other in splits[1:]):
        raise CovsegError(f"{who} were trained on different splits, so some of the {split} images were another "
                          f"model's training images; {remedy}score them together with --split test"
                          + ("" if typed else ", or one fold at a time"))


def _split_file(path: Path) -> Path | None:
    """The ``split.json`` of the run a model ``path`` (a run folder, or a file inside one) was trained on; None
    when there is none (a model file kept outside its run folder)."""
    folder = _run_folder_of(path)
    return folder / "split.json" if folder is not None and (folder / "split.json").is_file() else None


def _check_output_folder(out_dir: Path, data: str) -> None:
    """Refuse, in one line and before anything trains, an ``-o`` of ``cv`` or ``compare`` that is a file, cannot be
    written (a read-only folder, a path through a file, a symbolic link loop), is a single run's folder, or lies in
    the data folder ``data`` (whose images and masks its files would join)."""
    check_output_folder(out_dir)
    if is_run_folder(out_dir):
        raise CovsegError(f"{out_dir}: is a training run's folder; give -o a folder of its own")
    refuse_output_in_data(out_dir, data)


def _check_device(config: RunConfig) -> None:
    """Refuse a ``train.device`` or ``train.precision`` this machine cannot run (``--device cuda`` without a GPU,
    ``--precision bf16`` on a CPU without it) before the first run's ``== fold 0 ==`` line, not after it."""
    from covseg.runtime import resolve_device, resolve_precision

    device = resolve_device(config.train.device)
    if config.train.precision == "bf16":  # the one precision that can be refused (auto falls back to fp32)
        resolve_precision(config.train.precision, device)


#: The workflows whose output folders :func:`_workflow_of` tells apart, and the command that writes each
#: (``ensemble``: the seed ensemble's report folder, ``ensemble/``, inside a ``covseg cv --seeds`` folder).
_WORKFLOWS = {"cv": "covseg cv", "seeds": "covseg cv --seeds", "ensemble": "covseg cv --seeds",
              "compare": "covseg compare"}


def _numbered(folder: Path, prefix: str) -> list[str]:
    """The sub-folders of ``folder`` named ``PREFIX<number>`` (``fold-0``, ``seed-2``), in number order
    (:func:`covseg.paired.by_number`)."""
    found = [p.name for p in folder.glob(f"{prefix}*") if p.is_dir() and p.name[len(prefix):].isdigit()]
    return sorted(found, key=by_number)


def _compare_runs(folder: Path) -> list[str]:
    """The run folders ``covseg compare`` makes in ``folder``, one per model (``unet``, ``segnet``: a name of
    :data:`covseg.models.MODELS` holding a run), in the models' order; they show a comparison interrupted before
    its ``comparison.json`` was written."""
    from covseg.models import MODELS

    return [name for name in MODELS if is_run_folder(folder / name)]


def _workflow_of(out_dir: Path) -> tuple[str, str] | None:
    """Which workflow's output ``out_dir`` already holds, as ``(workflow, what shows it)``: ``seeds`` (``seed-S``
    folders or ``seeds.json``), ``ensemble`` (a ``--seeds`` folder's ``ensemble/``: ``fold-K`` reports, no runs;
    :func:`covseg.paired.seed_ensemble_beside`), ``cv`` (``fold-K`` folders or ``cv.json``) or ``compare`` (a run
    folder per model, :func:`_compare_runs`, or ``comparison.json``); None for a new or empty folder."""
    if not out_dir.is_dir():
        return None
    if seed_ensemble_beside(out_dir) is not None:  # before cv: its fold-K folders are reports, not runs
        return "ensemble", _shown(_numbered(out_dir, "fold-"))
    for workflow, found, summary in (("seeds", lambda: _numbered(out_dir, "seed-"), "seeds.json"),
                                     ("cv", lambda: _numbered(out_dir, "fold-"), "cv.json"),
                                     ("compare", lambda: _compare_runs(out_dir), "comparison.json")):
        shown = found() + ([summary] if (out_dir / summary).is_file() else [])
        if shown:
            return workflow, _shown(shown)
    return None


def _shown(names: list[str]) -> str:
    """The first three of ``names``, comma-separated, ``...`` standing for the rest."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def _check_same_workflow(out_dir: Path, workflow: str) -> None:
    """Refuse an ``-o`` that holds another workflow's output (:func:`_workflow_of`): ``covseg cv`` into a ``--seeds``
    folder would put its folds beside the seeds' (a later ``evaluate CV_DIR`` then takes them for the whole folder),
    ``--seeds`` into a plain cross-validation or either into a ``compare`` folder would mix their summaries. A
    ``--seeds`` folder's ``ensemble/`` is no workflow's ``-o``, ``--seeds`` included (its reports are rewritten
    from the seed runs beside it)."""
    found = _workflow_of(out_dir)
    if found is None or found[0] == workflow:  # "ensemble" is no caller's workflow: always refused
        return
    other, shown = found
    if other == "ensemble":
        raise CovsegError(f"{out_dir}: holds the seed ensemble's reports ({shown}) of the covseg cv --seeds folder "
                          f"{out_dir.parent}, not the output of {_WORKFLOWS[workflow]}; give -o a folder of its own")
    go_on = ", or add its --seeds to go on with it" if other == "seeds" and workflow == "cv" else ""
    raise CovsegError(f"{out_dir}: holds the output of {_WORKFLOWS[other]} ({shown}), not of {_WORKFLOWS[workflow]}; "
                      f"give -o a folder of its own{go_on}")


def _check_before_any_run(config: RunConfig, out_dir: Path, data: str, workflow: str) -> None:
    """The refusals ``compare`` and ``cv`` (with or without seeds: ``workflow``, a key of :data:`_WORKFLOWS`) make
    before their first run: a type model (``train.types_only``, scored only behind a lesion model), an ``-o`` they
    may not write (:func:`_check_output_folder`) or that holds another workflow's output
    (:func:`_check_same_workflow`), and a device or precision this machine lacks (:func:`_check_device`)."""
    if config.train.types_only:
        raise CovsegError(TYPES_ONLY_NEEDS_LESION_MODEL)
    _check_output_folder(out_dir, data)
    _check_same_workflow(out_dir, workflow)
    _check_device(config)


def compare_models(models: list[str], config: RunConfig, samples: list[Sample], data: str, out_dir: Path,
                   force: bool = False, progress: bool = True, log: Callable[[str], None] = print,
                   model_overrides: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Train and evaluate each model under identical data, split, seed and budget; one table and figure.

    Each model gets ``out_dir/<model>/`` (a full run folder with its ``eval-heldout`` report); the
    comparison goes to ``out_dir/comparison.md``, ``comparison.json`` and ``comparison.png``; each model is
    scored on the device it trained on (``train.device``). Runs already
    finished (or interrupted) in ``out_dir`` with the same settings are reused (or resumed); ``force``
    retrains them from scratch, removing the old ``comparison.*`` once the checks pass (so a comparison stopped
    part-way leaves none describing replaced runs). Before the first model trains, every model's settings are
    checked, with the checks each new run makes before training (:func:`_check_new_run_inputs`: e.g.
    ``model.batch_norm=false`` beside SegNet, or a ``train.init`` pretrained for another network), so none is
    refused after another trained.
    ``model_overrides``: one model's own ``model.*`` settings (name -> ``KEY=VALUE`` list, e.g. ``{"segnet":
    ["model.depth=5"]}`` for the published, VGG16-deep SegNet), applied over ``config`` for that model alone
    (:func:`_model_config`); comparison.md's depth and width rows then say how the networks differ.
    """
    _check_models_named_once(models)
    _check_model_overrides(models, model_overrides or {})
    _check_before_any_run(config, out_dir, data, "compare")
    d = config.data
    planned = make_split([s.name for s in samples], d.split, d.split_seed, d.folds, d.val_fraction)
    if not planned["val"] and not planned["test"]:  # every model would train, then have no image to be scored on
        why = f" with data.val_fraction {d.val_fraction:g}" if d.split == "official" else ""
        fix = "raise data.val_fraction (e.g. 0.1) or use another --split" if why else "use another --split"
        raise CovsegError(f"split {d.split}{why} holds out none of the {len(samples)} images, so covseg compare would "
                          f"have none to score the models on; {fix}")
    configs = {}  # every model's settings validated, and its network built, before the first one trains
    parameters: dict[str, int] = {}
    for name in models:
        _check_run_folder(out_dir / name)  # --force replaces run folders only
        configs[name] = _model_config(config, name, (model_overrides or {}).get(name, []))
        parameters[name] = sum(p.numel() for p in build_model(configs[name]).parameters())
        if not force:  # and a run it would reuse or resume refused now, not after the models before it trained
            _check_reusable(out_dir / name, configs[name], samples, data)
        if force or not (out_dir / name / "last.pt").is_file():  # a new run's checks too (a begun one made them)
            _check_new_run_inputs(configs[name], [s.name for s in samples])
    if force:  # every run is retrained from the start: the old table must not outlive the runs it describes
        old = [out_dir / f"comparison.{suffix}" for suffix in ("md", "json", "png")]
        if any(path.is_file() for path in old):
            log(f"{out_dir}: the old comparison removed; --force retrains its runs (a new one follows them)")
        for path in old:
            path.unlink(missing_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    # --force: running without it would keep the old runs of the models not yet retrained, so both ways are said
    again = (f"to go on, run the same covseg compare command again (with --force every model trains again from the "
             f"start; without it, each run in {out_dir} is kept or resumed, an old one too)" if force else
             "to go on, run the same covseg compare command again (it keeps the models already trained)")
    for name, cfg in configs.items():
        log(f"== {name} ==")
        seconds = train_or_resume(cfg, samples, out_dir / name, data, force, progress, log, again)
        with _how_to_go_on_if_stopped(log, f"{name}'s held-out images", again):
            metrics, _ = evaluate_run(out_dir / name, data, "heldout", None, device=cfg.train.device,
                                      precision=cfg.train.precision, progress=progress,
                                      force=True)  # the run's own report folder, scored again on its own data
        metrics["train_seconds"] = round(seconds, 1)
        rows[name] = metrics
    scheme = get_scheme(config.data.task)
    fg = [n for n in scheme.names[1:] if any(rows[m]["images_with_class"][n] for m in rows)]
    table = {f"Dice {n}": [rows[m]["per_image"]["dice"][n] for m in models] for n in fg}
    table["mean Dice"] = [rows[m]["per_image"]["dice"]["mean_foreground"] for m in models]
    table["mean IoU"] = [rows[m]["per_image"]["iou"]["mean_foreground"] for m in models]
    table["pixel accuracy"] = [rows[m]["pixel_accuracy"] for m in models]
    table["mean class accuracy"] = [rows[m]["mean_class_accuracy"] for m in models]
    if config.data.task == "binary":
        table["Inf-Net meanDic"] = [rows[m]["infnet"]["meanDic"] for m in models]
    lines = [f"# {' vs '.join(models)} · {config.data.task} · split {config.data.split}", "",
             "Dice and IoU: means over the held-out images (per image, images without the class skipped); pixel "
             "and mean class accuracy: over all their pixels (pooled); Inf-Net meanDic: as Inf-Net computes it; train "
             "seconds: wall clock summed over the epochs, so it grows with whatever else the machine runs.", "",
             "| metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for key, values in table.items():
        lines.append(f"| {key} | " + " | ".join("–" if v is None else f"{v:.4f}" for v in values) + " |")
    lines.append("| train seconds | " + " | ".join(f"{rows[m]['train_seconds']:.0f}" for m in models) + " |")
    lines += _network_rows({m: configs[m] for m in models}, parameters)
    images = [rows[m].get("n_images") for m in models]
    lines.append("| held-out images | " + " | ".join("–" if n is None else str(n) for n in images) + " |")
    if len(models) == 2:  # the table's means hide which images moved: the per-image differences, with their spread
        lines += ["", _paired_note(out_dir, models, images[0], config.data.split)]
    atomic_write_text(out_dir / "comparison.md", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "comparison.json", json.dumps({"models": models, "table": table,
                                                               "parameters": parameters,
                                                               "networks": _networks(configs, parameters),
                                                               "held_out_images": images,
                                                               "runs": rows}, indent=1) + "\n")
    plot_comparison(models, {k: [v if v is not None else np.nan for v in vals] for k, vals in table.items()},
                    out_dir / "comparison.png", title=f"{config.data.task}, split {config.data.split}")
    return {"models": models, "table": table}


def _check_models_named_once(models: list[str]) -> None:
    """Refuse a model list that names a model twice: the two would share one run folder, so the second would only
    reuse the first's run, and the table would show it twice as if it were two models."""
    twice = sorted({name for name in models if models.count(name) > 1})
    if twice:
        raise CovsegError(f"models name {', '.join(twice)} more than once ({' '.join(models)}); name each model once")


def _check_model_overrides(models: list[str], overrides: dict[str, list[str]]) -> None:
    """Refuse one model's own settings for a model not compared, or of another section than ``model.*`` (other than
    ``model.name``): data, loss, optimiser, schedule and budget stay the same for every model, which is what makes
    the comparison one of networks."""
    for name, items in overrides.items():
        if name not in models:
            raise CovsegError(f"settings given for {name} ({' '.join(items)}), which is not among the models compared "
                              f"({' '.join(models)}); add it to the models or drop its settings")
        for item in items:
            key = item.partition("=")[0]
            if not key.startswith("model.") or key == "model.name":
                raise CovsegError(f"{name}'s own setting {item}: a model takes only model.* settings of its own "
                                  "(e.g. model.depth=5), not model.name; give every other setting to all the models "
                                  "alike, before --models")


def _model_config(config: RunConfig, name: str, own: list[str]) -> RunConfig:
    """``config`` for model ``name`` in a comparison: ``model.name`` set, then its own ``model.*`` settings ``own``
    (``KEY=VALUE``) applied, validated as a whole (:func:`covseg.config.config_from_dict`)."""
    from covseg.config import apply_overrides

    source = f"--models {name}" + (f" with {' '.join(own)}" if own else "")
    named = replace(config, model=replace(config.model, name=name))
    return config_from_dict(config_to_dict(apply_overrides(named, own, source) if own else named), source=source)


def _networks(configs: dict[str, RunConfig], parameters: dict[str, int]) -> dict[str, dict[str, int]]:
    """Each compared network's size as it trained: ``model.depth`` (encoder stages, i.e. pooling steps), ``model.width``
    (channels of the first stage) and its parameter count, by model name."""
    return {name: {"depth": cfg.model.depth, "width": cfg.model.width, "parameters": parameters[name]}
            for name, cfg in configs.items()}


def _network_rows(configs: dict[str, RunConfig], parameters: dict[str, int]) -> list[str]:
    """comparison.md's rows saying what each network is (one column per model, in ``configs``' order): its depth
    (encoder stages, ``model.depth``), width (``model.width``) and parameters, so a SegNet at the U-Net's depth is
    told from the published one (VGG16-based, 5 encoder stages)."""
    sizes = _networks(configs, parameters)
    return ["| depth (encoder stages) | " + " | ".join(str(sizes[m]["depth"]) for m in configs) + " |",
            "| width (first-stage channels) | " + " | ".join(str(sizes[m]["width"]) for m in configs) + " |",
            "| parameters | " + " | ".join(parameter_count(sizes[m]["parameters"]) for m in configs) + " |"]


def _paired_note(out_dir: Path, models: list[str], images: int | None, split: str) -> str:
    """comparison.md's last line for two models: what their means rest on (``images`` held-out images, where the
    reports say), and how to see them image by image: ``covseg cv-compare`` of the two runs, which pairs runs of a
    ``cv:K`` split only (a run of another split it refuses), else the two ``per_image.csv`` tables."""
    rest = counted(images, "held-out image") if images else "its held-out images"
    first, second = out_dir / models[0], out_dir / models[1]
    if parse_split_name(split)[0] == "cv":
        return (f"Each model's figures rest on {rest}; image by image, with the spread of the differences: "
                f"`covseg cv-compare {first} {second}`.")
    return (f"Each model's figures rest on {rest}; image by image: {first / PER_IMAGE} and {second / PER_IMAGE} "
            f"(covseg cv-compare pairs runs of a cv:K split only; this is split {split}).")


_FORCE_REMEDY = "pass --force to retrain it or use another output folder"


def _check_same_settings(run_dir: Path, config: RunConfig, remedy: str = _FORCE_REMEDY) -> None:
    """Refuse to reuse ``run_dir`` if it holds a run made with other settings, naming the first that differs (the
    error ends with ``remedy``)."""
    if not (run_dir / "config.yaml").is_file():
        return
    differ = setting_differences(config_to_dict(read_run_config(run_dir)), config_to_dict(config))
    if differ:
        raise CovsegError(f"{run_dir}: holds a run with other settings ({differences_note(differ)}); {remedy}")


def _check_run_folder(run_dir: Path) -> None:
    """Refuse ``run_dir`` if it is a file, or a folder that holds files but no covseg run (no ``config.yaml`` or
    ``run.json``): training would refuse it only when its turn came, after the runs before it trained. Neither
    ``--force`` (which replaces run folders only) nor resuming helps, so the advice is to remove it or choose a new -o."""
    if run_dir.exists() and not run_dir.is_dir():
        raise CovsegError(f"{run_dir}: is a file, not a run folder; remove it or choose a new -o")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not is_run_folder(run_dir):
        raise CovsegError(f"{run_dir}: is not empty and not a covseg run folder; remove it (or move what it holds "
                          "elsewhere) or choose a new -o")


def _check_same_data(run_dir: Path, config: RunConfig, samples: list[Sample], data: str,
                     remedy: str = _FORCE_REMEDY) -> None:
    """Refuse to reuse or resume the run begun in ``run_dir`` (it has ``last.pt``) unless ``samples`` (from ``data``)
    hold the training images it was trained on, with the same masks (:func:`covseg.run.trained_on`, the check
    ``--resume`` makes; the same data at another path passes), and unless its ``split.json`` is the split
    ``config.data`` makes of ``samples`` now: images added to (or removed from) the data folder since it began
    would leave it on its old split beside runs split afresh (a ``cv:K`` fold reused with its old held-out images
    while the other folds take the new assignment: held-out sets that overlap, and images no fold holds out).
    The error ends with ``remedy``."""
    if not (run_dir / "last.pt").is_file():
        return
    if not trained_on(run_dir, samples):
        recorded = read_run_info(run_dir, require_data=False).get("data")  # None: a library run without data_path
        raise CovsegError(f"{run_dir}: was trained on {recorded or 'other data'}, and the "
                          f"training images in {data} are not those (other names, or masks whose class weights "
                          f"differ from its class_weights.json); {remedy}")
    d = config.data
    saved = load_split(run_dir / "split.json")
    now = make_split([s.name for s in samples], d.split, d.split_seed, d.folds, d.val_fraction)
    if saved != now:
        changed = sorted(set(now["val"] + now["test"]) ^ set(saved["val"] + saved["test"]))
        example = f" ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''} differ)" if changed else ""
        raise CovsegError(f"{run_dir}: was split from other images than {data} holds now: its held-out images are "
                          f"not split {d.split}'s of the current data{example}, so they would overlap or miss other "
                          f"runs' (images added or removed since it began?); {remedy}")


def _check_reusable(run_dir: Path, config: RunConfig, samples: list[Sample], data: str,
                    remedy: str = _FORCE_REMEDY) -> None:
    """Refuse to reuse or resume ``run_dir`` if it is not a run folder (:func:`_check_run_folder`), if it holds a run
    of other settings (:func:`_check_same_settings`) or a ``last.pt`` trained with other settings than the run's
    (:func:`covseg.run.check_checkpoint_settings`), or one begun on other training images, or split from other
    images (:func:`_check_same_data`); the error ends with ``remedy``."""
    _check_run_folder(run_dir)
    _check_same_settings(run_dir, config, remedy)
    if (run_dir / "last.pt").is_file():  # another run's last.pt copied in is neither reused nor resumed
        last = read_checkpoint(run_dir / "last.pt",
                               fix=f"{run_dir}'s last.pt is damaged, so it cannot be resumed; {remedy}")
        check_checkpoint_settings(run_dir, last, config, remedy)
    _check_same_data(run_dir, config, samples, data, remedy)


# `covseg cv` resumes and reuses its folds and never replaces one
_CV_REMEDY = "remove it to retrain it, or use another -o"
# how to go on after Ctrl-C or SIGTERM stops a fold: `covseg train --resume` would finish that fold alone
_CV_AGAIN = "to go on, run the same covseg cv command again (it keeps the folds already trained)"


@contextmanager
def _how_to_go_on_if_stopped(log: Callable[[str], None], what: str, again: str):
    """Ctrl-C or SIGTERM while ``what`` (e.g. "fold-2's held-out images") is scored: say that the trained models
    are kept and how to go on (``again``), as a stop during training does, then stop as before."""
    try:
        yield
    except KeyboardInterrupt:
        log(f"interrupted while scoring {what}; the models trained are kept; {again}")
        raise


def _train_seconds(run_dir: Path) -> float:
    """Total training time of a run: the sum of ``history.csv``'s ``seconds`` column (wall clock: it grows with
    whatever else the machine runs). A damaged file (a
    row whose seconds are not a number) raises a one-line :class:`CovsegError` naming it."""
    path = run_dir / "history.csv"
    total = 0.0
    for row, line in enumerate(path.read_text(encoding="utf-8").strip().splitlines()[1:], start=1):
        value = line.split(",")[-1]
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds):
            raise CovsegError(f"{path}: damaged (row {row} has {value!r} for its seconds, not a number); retrain the "
                              f"run: remove {run_dir} and run the command again")
        total += seconds
    return total


def train_or_resume(config: RunConfig, samples: list[Sample], run_dir: Path, data: str, force: bool,
                    progress: bool, log: Callable[[str], None], again: str = "") -> float:
    """Make ``run_dir`` a finished run of ``config``: train it, resume it, or (already finished) keep it.

    A run folder holding other settings, or begun on other training images (:func:`_check_same_data`), is refused
    unless ``force`` (which retrains from scratch). Returns the run's total training seconds (from its history).
    ``again`` is how to go on after Ctrl-C (:func:`covseg.run.train_run`; e.g. the calling command again).
    """
    last = run_dir / "last.pt"
    if not force:
        _check_reusable(run_dir, config, samples, data)
    if force or not last.is_file():
        result = train_run(config, samples, run_dir, data, force=True, progress=progress, log=log, again=again)
    else:
        done = epochs_done(run_dir)
        if done >= config.train.epochs:
            log(f"{run_dir}: finished run reused ({counted(done, 'epoch')})")
            if sync_history(run_dir):
                log(f"{run_dir}: history.csv was behind last.pt; rewritten from it")
            result = None
        else:
            result = train_run(config, samples, run_dir, data, resume=True, progress=progress, log=log, again=again)
    if result is not None and result.stopped:  # Ctrl-C stops cv and compare, also where it found this run finished
        raise Terminated if result.terminated else KeyboardInterrupt
    return _train_seconds(run_dir)


def _cv_cell(column: str, value: float | None) -> str:
    """A cell of ``cv.md``: training seconds whole, figures as :func:`format_figure`."""
    if column == "train seconds" and value is not None:
        return f"{value:.0f}"
    return format_figure(value)


def _cv_columns(rows: list[tuple[dict[str, Any], float]], task: str) -> dict[str, list[float | None]]:
    """The columns of a cross-validation table from each fold's ``(metrics.json, train seconds)``."""
    scheme = get_scheme(task)
    keys = [n for n in scheme.names[1:] if any(metrics["images_with_class"][n] for metrics, _ in rows)]
    columns: dict[str, list[float | None]] = {}
    for n in keys:
        columns[f"Dice {n} (per image)"] = [metrics["per_image"]["dice"][n] for metrics, _ in rows]
        # a fold whose held-out truths lack the class has no pooled Dice for it either (its false positives would
        # count as 0, and a fold without them would be skipped)
        columns[f"Dice {n} (pooled)"] = [metrics["pooled"]["dice"][n] if metrics["images_with_class"][n] else None
                                         for metrics, _ in rows]
    columns["mean Dice (per image)"] = [metrics["per_image"]["dice"]["mean_foreground"] for metrics, _ in rows]
    if task == "binary":
        columns["Inf-Net meanDic"] = [metrics["infnet"]["meanDic"] for metrics, _ in rows]
    columns["train seconds"] = [seconds for _, seconds in rows]
    return columns


SPREAD_NOTE = ("mean ± std: the mean and the population standard deviation (ddof 0) of the values in a column; a fold "
               "whose held-out truths lack a class has none for it (–) and is left out.")
"""How cv.md and seeds.md state their spread (``_mean_std``)."""


CV_INTERVAL_RULE = ("each fold's images resampled within the fold, 2000 resamples, seeded; a training seed's spread "
                    "is not in it")
"""How cv.md and cv.json's ``intervals`` are made (:func:`_cv_intervals`)."""


def _cv_intervals(out_dir: Path, folds: int, task: str, columns: dict[str, list[float | None]],
                  table: Path = PER_IMAGE) -> dict[str, tuple[float, float]]:
    """For each class's ``Dice <class> (per image)`` column, a bootstrap interval of its mean over the folds from the
    folds' ``per_image.csv`` (:func:`covseg.metrics.stratified_bootstrap_interval` over each fold's Dice of the
    images whose truth holds the class, fold K drawn with seed K; a fold without such images left out, as the
    column's mean leaves it out; none for a class where a fold holds it in one image only). Empty where a fold's
    table cannot be read (the main table, from ``metrics.json``, stands without it). ``table``: where each
    ``out_dir/fold-K`` keeps its ``per_image.csv`` (default ``eval-heldout/per_image.csv``; a seed ensemble's report
    folder holds it itself)."""
    try:
        tables = [read_per_image(out_dir / f"fold-{k}" / table) for k in range(folds)]
    except CovsegError:
        return {}
    out: dict[str, tuple[float, float]] = {}
    for name in get_scheme(task).names[1:]:
        column = f"Dice {name} (per image)"
        if column not in columns or any(f"dice_{name}" not in next(iter(t.values()), {}) for t in tables):
            continue
        folds_with = [(k, values) for k, values in enumerate(counted_values(t, f"dice_{name}") for t in tables)
                      if values]  # a fold without the class is left out of the column's mean too
        interval = stratified_bootstrap_interval([values for _, values in folds_with],
                                                 seeds=[k for k, _ in folds_with])
        if interval:
            out[column] = interval
    return out


def _interval_sentence(whose: str, intervals: dict[str, tuple[float, float]]) -> str:
    """cv.md's / seeds.md's sentence on :func:`_cv_intervals`' intervals of ``whose`` folds' mean per-image Dice."""
    said = [f"{column.removeprefix('Dice ').removesuffix(' (per image)')} {low:.4f}–{high:.4f}"
            for column, (low, high) in intervals.items()]
    return (f"95 % interval of {whose} mean per-image Dice from the held-out images alone ({CV_INTERVAL_RULE}): "
            + "; ".join(said) + ".")


def _mean_std(columns: dict[str, list[float | None]]) -> dict[str, tuple[float, float]]:
    """Mean and (population) std of each column; a fold whose images lack a class (None) is skipped."""
    numeric = {c: np.array([np.nan if v is None else v for v in vals], dtype=float) for c, vals in columns.items()}
    return {c: (float(np.nanmean(v)), float(np.nanstd(v))) for c, v in numeric.items()}


def _table_lines(first: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
    """A markdown table: header ``first`` + ``columns``, then each ``(label, cells)``."""
    return (["| " + " | ".join([first, *columns]) + " |", "|---|" + "---|" * len(columns)]
            + [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows])


def _cv_row(columns: dict[str, list[float | None]], i: int) -> list[str]:
    return [_cv_cell(c, columns[c][i]) for c in columns]


def _summary_row(summary: dict[str, tuple[float, float]]) -> list[str]:
    return [f"{_cv_cell(c, m)} ± {_cv_cell(c, s)}" for c, (m, s) in summary.items()]


def _fold_config(config: RunConfig, fold: int, folds: int) -> RunConfig:
    """``config`` for fold ``fold`` of a ``folds``-fold cross-validation (split ``cv:K``; ``data.val_fraction``, which
    only the official split reads, back at its default, so a recipe that sets it for ``train`` still runs here)."""
    return replace(config, data=replace(config.data, split=f"cv:{fold}", folds=folds,
                                        val_fraction=DataConfig().val_fraction))


def check_folds(folds: int) -> None:
    """Refuse a cross-validation of fewer than two folds (no fold would train, or none would be held out)."""
    if folds < 2:
        raise CovsegError(f"--folds is {folds}; a cross-validation needs 2 or more folds, e.g. --folds 5")


def _check_same_folds(out_dir: Path, folds: int) -> None:
    """Refuse ``out_dir`` (a cross-validation's folder) if a ``fold-K`` run in it, any K, was made for another number
    of folds (its ``data.folds``): every fold of it holds other held-out images, so the fold-by-fold refusal's
    "remove it" would be met again at each fold (and a ``fold-3`` of 5 folds would be left beside a new 3-fold
    cross-validation). Says how to go on with it (``--folds`` as it was) instead."""
    import yaml

    for name in _numbered(out_dir, "fold-"):
        try:  # the number its config.yaml states (every run writes it); one that states none is left to the fold's check
            saved = yaml.safe_load((out_dir / name / "config.yaml").read_text(encoding="utf-8"))
            there = saved["data"]["folds"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            continue
        if isinstance(there, int) and there != folds:
            raise CovsegError(f"{out_dir}: holds a {there}-fold cross-validation ({name} has data.folds {there}), not "
                              f"{folds} folds; pass --folds {there} to go on with it, or use another -o")


def _untrained_folds(config: RunConfig, out_dir: Path, folds: int) -> list[tuple[RunConfig, Path]]:
    """``(fold config, fold folder)`` of each fold of ``out_dir`` whose run is not finished (refusing a folder of
    other settings)."""
    pending = []
    for k in range(folds):
        fold_dir, cfg = out_dir / f"fold-{k}", _fold_config(config, k, folds)
        _check_same_settings(fold_dir, cfg, _CV_REMEDY)
        if epochs_done(fold_dir) < cfg.train.epochs:
            pending.append((cfg, fold_dir))
    return pending


def _check_fold_inputs(config: RunConfig, out_dir: Path, folds: int, names: list[str]) -> None:
    """Refuse, before fold 0 trains, a ``train.init``, ``train.distill`` teacher or ``data.pseudo_labels`` that a
    later fold could not take (e.g. one fine-tuned run given to every fold: it saw the other folds' held-out
    images), with the checks its run makes before training (:func:`_check_new_run_inputs`), on the split of
    ``names`` (the labelled images) it will hold out; no network is built."""
    for k in range(folds):
        if (out_dir / f"fold-{k}" / "last.pt").is_file():
            continue  # begun already: its own checks ran when it began
        _check_new_run_inputs(_fold_config(config, k, folds), names)


def _check_new_run_inputs(config: RunConfig, names: list[str]) -> None:
    """The checks :func:`covseg.run.train_run` makes before a new run of ``config`` trains, made before any run of
    a workflow trains: its settings (:func:`covseg.config.check_new_run`), and its ``train.init``, ``train.distill``
    teachers and ``data.pseudo_labels`` against the images the split of ``names`` (the labelled images) holds out.
    No network is built."""
    from covseg.distill import check_teachers
    from covseg.pretrain import check_pretrained
    from covseg.selftrain import check_pseudo_labels, resolve_pseudo_folder

    check_new_run(config)
    d = config.data
    planned = make_split(names, d.split, d.split_seed, d.folds, d.val_fraction)
    held_out = list(planned.get("val", [])) + list(planned.get("test", []))
    if config.train.init:
        check_pretrained(config.train.init, config, held_out)
    if config.train.distill:
        check_teachers(config, held_out)
    if d.pseudo_labels:
        check_pseudo_labels(resolve_pseudo_folder(d.pseudo_labels, d.split), d.task, held_out)


def cross_validate(config: RunConfig, samples: list[Sample], data: str, out_dir: Path, folds: int,
                   progress: bool = True, log: Callable[[str], None] = print, jobs: int = 1) -> dict[str, Any]:
    """Train and evaluate fold ``K`` into ``out_dir/fold-K`` for every fold, skipping finished folds.

    A fold counts as done when its ``last.pt`` holds every epoch and its ``eval-heldout/metrics.json`` scored its
    own model on ``data`` after that (:func:`_is_current`); an interrupted fold resumes from its ``last.pt``. Before
    any fold trains, a fold folder of other settings, or begun on other training images, is refused
    (:func:`_check_reusable`). ``jobs`` > 1 trains the unfinished folds first, that many at a time in worker
    processes (:func:`covseg.parallel_runs.train_runs_in_parallel`), then scores them here one by one, on the
    device they trained on (``train.device``: a GPU cross-validation is scored on the GPU).
    Writes ``cv.md`` and ``cv.json`` with per-fold rows and mean ± std of each fold's own model
    (:func:`evaluate_run`'s ``auto``: ``swa.pt`` for runs with ``train.swa_epochs``, else ``last.pt``). A weight
    average gets a second table beside ``last.pt`` of the same run (so no seed noise) and ``cv.json`` entries:
    with ``train.ema`` each fold's ``ema.pt`` is scored too (``fold-K/eval-heldout-ema``; ``ema``: its columns
    and ``minus_last``); with ``train.swa_epochs`` its ``last.pt`` (``fold-K/eval-heldout-last``; ``last``:
    its columns, ``swa``: the main table's columns and ``minus_last``).
    """
    _check_cross_validation(config, samples, data, out_dir, folds)
    trained: list[Path] = []
    if jobs > 1:
        pending = _untrained_folds(config, out_dir, folds)
        train_runs_in_parallel(pending, samples, data, jobs, log, _CV_AGAIN)
        trained = [run_dir for _, run_dir in pending]
    return _score_folds(config, samples, data, out_dir, folds, progress, log, trained)


def _check_cross_validation(config: RunConfig, samples: list[Sample], data: str, out_dir: Path, folds: int) -> None:
    """:func:`cross_validate`'s refusals before any fold trains: the folds, the ``-o`` (:func:`_check_before_any_run`),
    a fold folder of other settings or begun on other data (:func:`_check_reusable`) and each unbegun fold's inputs
    (:func:`_check_fold_inputs`)."""
    check_folds(folds)
    _check_before_any_run(config, out_dir, data, "cv")
    _check_same_folds(out_dir, folds)
    for k in range(folds):  # before any training: a fold of other settings or data fails now, not folds later
        _check_reusable(out_dir / f"fold-{k}", _fold_config(config, k, folds), samples, data, _CV_REMEDY)
    _check_fold_inputs(config, out_dir, folds, [s.name for s in samples])


def _score_folds(config: RunConfig, samples: list[Sample], data: str, out_dir: Path, folds: int, progress: bool,
                 log: Callable[[str], None], trained: Collection[Path] = ()) -> dict[str, Any]:
    """:func:`cross_validate` once its checks are made: train (or resume) each unfinished fold here, score each fold
    whose report is not current, and write ``cv.md`` and ``cv.json``. ``trained``: the fold folders the workers of
    ``--jobs`` have just trained (:func:`covseg.parallel_runs.train_runs_in_parallel`), only scored here (not told
    as finished runs reused, which they are not)."""
    companions = _companions(config)
    rows: list = []
    companion_rows: dict[str, list] = {scored: [] for scored, _, _ in companions}
    kept = _kept_folds(config, out_dir, folds, data)
    if kept:
        log(f"{out_dir}: {_named([fold_dir.name for fold_dir in kept])} trained and scored already; kept as they are")
    for k in range(folds):
        fold_dir = out_dir / f"fold-{k}"
        metrics_path = fold_dir / "eval-heldout" / "metrics.json"
        cfg = _fold_config(config, k, folds)
        # a report of an unfinished fold (someone evaluated it after Ctrl-C) does not make it done
        finished = fold_dir in kept or epochs_done(fold_dir) >= cfg.train.epochs
        if fold_dir not in kept and (not finished or not _is_current(metrics_path, fold_dir, "final", data)):
            log(f"== fold {k} ==")
            # one a worker has just trained to its end is only scored; any other is trained or resumed here
            if fold_dir not in trained or not finished:
                train_or_resume(cfg, samples, fold_dir, data, False, progress, log, _CV_AGAIN)
            with _how_to_go_on_if_stopped(log, f"fold-{k}'s held-out images", _CV_AGAIN):
                evaluate_run(fold_dir, data, "heldout", None, device=cfg.train.device,
                             precision=cfg.train.precision, progress=progress,
                             force=True)  # the fold's own report folder, not current
        rows.append((json.loads(metrics_path.read_text(encoding="utf-8")), _train_seconds(fold_dir)))
        for scored, _, _ in companions:
            companion_path = fold_dir / f"eval-heldout-{scored}" / "metrics.json"
            if fold_dir not in kept and not _is_current(companion_path, fold_dir, scored, data):
                with _how_to_go_on_if_stopped(log, f"fold-{k}'s held-out images", _CV_AGAIN):
                    evaluate_run(fold_dir, data, "heldout", None, which=scored, device=cfg.train.device,
                                 precision=cfg.train.precision, progress=progress,
                                 force=True)  # the fold's own report folder, not current
            companion_rows[scored].append((json.loads(companion_path.read_text(encoding="utf-8")), rows[-1][1]))
    columns = _cv_columns(rows, config.data.task)
    summary = _mean_std(columns)
    lines = [f"# {config.recipe} · {config.data.task} · {folds}-fold cross-validation", "", SPREAD_NOTE, ""]
    lines += _table_lines("fold", list(columns), [(str(k), _cv_row(columns, k)) for k in range(folds)]
                          + [("mean ± std", _summary_row(summary))])
    result: dict[str, Any] = {"columns": columns, "summary": summary}
    intervals = _cv_intervals(out_dir, folds, config.data.task, columns)
    if intervals:
        result["intervals"] = {"rule": CV_INTERVAL_RULE, **intervals}
        lines += ["", _interval_sentence("the folds'", intervals)]
    for scored, name, description in companions:
        scored_columns = _cv_columns(companion_rows[scored], config.data.task)
        scored_columns.pop("train seconds")
        main_columns = {c: v for c, v in columns.items() if c != "train seconds"}
        average_columns, last_columns = ((scored_columns, main_columns) if scored == name
                                         else (main_columns, scored_columns))
        change = {c: [None if a is None or b is None else a - b for a, b in zip(vals, last_columns[c])]
                  for c, vals in average_columns.items()}
        result[name] = {"columns": average_columns, "summary": _mean_std(average_columns),
                        "minus_last": {"columns": change, "summary": _mean_std(change)}}
        if scored != name:
            result[scored] = {"columns": scored_columns, "summary": _mean_std(scored_columns)}
        lines += ["", f"{description}:", ""]
        lines += _table_lines("fold", list(scored_columns),
                              [(str(k), _cv_row(scored_columns, k)) for k in range(folds)]
                              + [("mean ± std", _summary_row(_mean_std(scored_columns)))]
                              + [(f"{k}: {name} − last", [f"{v:+.4f}" if v is not None else "–" for v in
                                                           (change[c][k] for c in change)]) for k in range(folds)]
                              + [(f"{name} − last, mean ± std", [f"{m:+.4f} ± {sd:.4f}" for m, sd in
                                                                  result[name]["minus_last"]["summary"].values()])])
    atomic_write_text(out_dir / "cv.md", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "cv.json", json.dumps(result, indent=1) + "\n")
    return result


def _kept_folds(config: RunConfig, out_dir: Path, folds: int, data: str) -> list[Path]:
    """The ``fold-K`` folders of ``out_dir`` that :func:`_score_folds` keeps as they are (and checks no further):
    trained to the end and scored on ``data``'s held-out images after that (:func:`_is_current`), companions too."""
    kept = []
    for k in range(folds):
        fold_dir = out_dir / f"fold-{k}"
        if epochs_done(fold_dir) < _fold_config(config, k, folds).train.epochs:
            continue
        reports = [("final", fold_dir / "eval-heldout" / "metrics.json")]
        reports += [(scored, fold_dir / f"eval-heldout-{scored}" / "metrics.json") for scored, _, _ in
                    _companions(config)]
        if all(_is_current(path, fold_dir, which, data) for which, path in reports):
            kept.append(fold_dir)
    return kept


def _companions(config: RunConfig) -> list[tuple[str, str, str]]:
    """What a cross-validation scores beside each fold's own model, to set a weight average against ``last.pt``
    of the same run: ``(checkpoint scored, average, the sentence that introduces its table in cv.md)``.

    ``train.ema``: ``ema.pt`` (the fold's own model stays ``last.pt``); ``train.swa_epochs``: ``last.pt``
    (the fold's own model is ``swa.pt``).
    """
    t = config.train
    companions = []
    if t.ema > 0:
        companions.append(("ema", "ema", f"The weights' moving average (`ema.pt`, decay {t.ema:g}), and its "
                                         "difference from `last.pt` of the same run"))
    if t.swa_epochs:
        epochs = f"{t.swa_epochs} epochs" if t.swa_epochs > 1 else "epoch"
        companions.append(("last", "swa", f"The table above scores each fold's average over the last {epochs} "
                                          f"(`swa.pt`, SWA at lr {t.swa_lr:g}); here `last.pt` of the same run, "
                                          "and the difference"))
    return companions


def _heldout_report(metrics: Any, data: str) -> bool:
    """Whether ``metrics`` (a ``metrics.json``'s contents) scored the held-out images (``split`` heldout) of the data
    folder ``data`` as ``covseg cv`` scores them: without flip TTA and without a ``--lesion-model`` (a report that
    ``covseg evaluate --tta -o …`` or another ``--split`` wrote in its place is not the fold's score). A damaged one
    raises ``KeyError`` or ``TypeError``."""
    model = metrics["model"]
    return (metrics["split"] == "heldout" and model["flip_tta"] is False and "lesion_model" not in model
            and Path(metrics["data"]).resolve() == Path(data).resolve())


def _is_current(report: Path, run_dir: Path, which: str, data: str) -> bool:
    """Whether ``report`` (a ``metrics.json``) exists, scored ``run_dir``'s checkpoint ``which``
    (:func:`covseg.checkpoint.find_checkpoint`) on the held-out images of the data folder ``data`` as ``covseg cv``
    does (:func:`_heldout_report`), and is no older than that checkpoint or than ``last.pt``."""
    if not report.is_file() or not (run_dir / "last.pt").is_file():
        return False
    checkpoint = find_checkpoint(run_dir, which)
    try:
        metrics = json.loads(report.read_text(encoding="utf-8"))
        scored, as_cv_scores = Path(metrics["model"]["file"]).resolve(), _heldout_report(metrics, data)
        one_model = "members" not in metrics["model"]  # an ensemble's "file" is its first member's
    except (ValueError, KeyError, TypeError, OSError):
        return False
    newest = max(checkpoint.stat().st_mtime, (run_dir / "last.pt").stat().st_mtime)
    # the file itself, not its name: a report of another run's last.pt written here is not this run's score
    return scored == checkpoint.resolve() and one_model and as_cv_scores and report.stat().st_mtime >= newest


def check_seeds(seeds: Sequence[int]) -> None:
    """Refuse a ``--seeds`` list that is not two or more different seeds."""
    if any(not 0 <= seed < MAX_SEED for seed in seeds):
        raise CovsegError(f"--seeds {' '.join(map(str, seeds))}: seeds must be 0 or more and below 2**32, "
                          "e.g. --seeds 0 1 2")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise CovsegError(f"--seeds needs two or more different seeds (got {' '.join(map(str, seeds))}), "
                          "e.g. --seeds 0 1 2; for one seed pass train.seed=S")


def _report_of(metrics_path: Path, members: list[Path], data: str) -> bool:
    """Whether ``metrics_path`` is a finished report of exactly these members' own models (``swa.pt`` or
    ``last.pt``: :func:`covseg.checkpoint.find_checkpoint`'s ``final``) on the held-out images of the data folder
    ``data``, scored as ``covseg cv`` scores them (:func:`_heldout_report`), and newer than each member's
    ``last.pt``. A damaged one is not (it is scored again)."""
    if not metrics_path.is_file():
        return False
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        files = [Path(m["file"]).resolve() for m in metrics["model"]["members"]]
        as_cv_scores = _heldout_report(metrics, data)
    except (ValueError, KeyError, TypeError):
        return False
    newest = max((m / "last.pt").stat().st_mtime for m in members)
    return (as_cv_scores and files == [find_checkpoint(m, "final").resolve() for m in members]
            and metrics_path.stat().st_mtime >= newest)


def cross_validate_seeds(config: RunConfig, samples: list[Sample], data: str, out_dir: Path, folds: int,
                         seeds: Sequence[int], progress: bool = True,
                         log: Callable[[str], None] = print, jobs: int = 1) -> dict[str, Any]:
    """:func:`cross_validate` once per training seed, then each fold's seed models as one ensemble.

    Seed ``S`` (``train.seed = S``, the same saved folds) goes to ``out_dir/seed-S``, resumed as
    :func:`cross_validate` resumes. The models of fold ``K`` of every seed are then scored together (mean
    probabilities) on that fold's held-out images into ``out_dir/ensemble/fold-K`` (on ``train.device``); none
    of them trained on those images. Writes ``seeds.md`` and ``seeds.json``: each seed's CV mean ± std over
    folds, the mean ± std of the seeds' CV means (the spread a single CV figure carries), the same over every
    seed × fold model, and the seed ensemble's CV with its per-fold rows (train seconds: the sum over its members).
    ``jobs`` > 1 first trains every unfinished seed × fold run, that many at a time, as :func:`cross_validate`.
    """
    check_seeds(seeds)
    check_folds(folds)
    _check_before_any_run(config, out_dir, data, "seeds")
    configs = {seed: replace(config, train=replace(config.train, seed=seed)) for seed in seeds}
    for seed_dir in _numbered(out_dir, "seed-"):  # the seeds given, and any others left there (summed over later)
        _check_same_folds(out_dir / seed_dir, folds)
    for seed, cfg in configs.items():  # before any training: a folder of other settings or data fails now, not hours in
        for k in range(folds):
            _check_reusable(out_dir / f"seed-{seed}" / f"fold-{k}", _fold_config(cfg, k, folds), samples, data,
                            _CV_REMEDY)
    for seed, cfg in configs.items():  # and every fold's train.init, teachers and pseudo-labels, as cross_validate's
        _check_fold_inputs(cfg, out_dir / f"seed-{seed}", folds, [s.name for s in samples])
    trained: list[Path] = []
    if jobs > 1:
        pending = [run for seed, cfg in configs.items() for run in _untrained_folds(cfg, out_dir / f"seed-{seed}", folds)]
        train_runs_in_parallel(pending, samples, data, jobs, log, _CV_AGAIN)
        trained = [run_dir for _, run_dir in pending]
    per_seed: dict[int, dict[str, Any]] = {}
    for seed, cfg in configs.items():
        log(f"=== seed {seed} ===")
        _check_cross_validation(cfg, samples, data, out_dir / f"seed-{seed}", folds)  # cross_validate's, as before
        per_seed[seed] = _score_folds(cfg, samples, data, out_dir / f"seed-{seed}", folds, progress, log, trained)
    rows = []
    for k in range(folds):
        members = [out_dir / f"seed-{seed}" / f"fold-{k}" for seed in seeds]
        report = out_dir / "ensemble" / f"fold-{k}"
        if not _report_of(report / "metrics.json", members, data):
            log(f"== seed ensemble, fold {k} ==")
            with _how_to_go_on_if_stopped(log, f"the seed ensemble of fold {k}", _CV_AGAIN):
                evaluate_run(members, data, "heldout", report, device=config.train.device,
                             precision=config.train.precision, progress=progress,
                             force=True)  # cv's own report folder, not current (other members, or older)
        rows.append((json.loads((report / "metrics.json").read_text(encoding="utf-8")),
                     sum(_train_seconds(m) for m in members)))
    ensemble = _cv_columns(rows, config.data.task)
    names = list(ensemble)
    seed_means = {c: [per_seed[seed]["summary"][c][0] for seed in seeds] for c in names}
    every_model = {c: [v for seed in seeds for v in per_seed[seed]["columns"][c]] for c in names}
    summary = {"seeds": list(seeds), "per_seed": {str(seed): per_seed[seed]["summary"] for seed in seeds},
               "over_seeds": _mean_std(seed_means), "every_model": _mean_std(every_model),
               "ensemble": {"columns": ensemble, "summary": _mean_std(ensemble)}}
    title = f"# {config.recipe} · {config.data.task} · {folds}-fold cross-validation × seeds {', '.join(map(str, seeds))}"
    lines = [title, "", "Each seed's row: mean ± std over its folds. The seed ensemble averages the probabilities of "
             "each fold's seed models; its train seconds are the sum over those models (a single model's are in the "
             "rows above). " + SPREAD_NOTE, ""]
    lines += _table_lines("models", names, [(f"seed {seed}", _summary_row(per_seed[seed]["summary"])) for seed in seeds]
                          + [("mean ± std of the seeds' CV means", _summary_row(summary["over_seeds"])),
                             (f"every seed × fold model ({len(seeds) * folds})", _summary_row(summary["every_model"])),
                             (f"**seed ensemble** ({len(seeds)} models a fold)", _summary_row(summary["ensemble"]["summary"]))])
    lines += ["", "Seed ensemble, fold by fold:", ""]
    lines += _table_lines("fold", names, [(str(k), _cv_row(ensemble, k)) for k in range(folds)])
    intervals = _cv_intervals(out_dir / "ensemble", folds, config.data.task, ensemble, table=Path("per_image.csv"))
    if intervals:
        summary["ensemble"]["intervals"] = {"rule": CV_INTERVAL_RULE, **intervals}
        lines += ["", _interval_sentence("the seed ensemble's folds'", intervals)
                  + " The seeds' own spread is the row \"mean ± std of the seeds' CV means\" above."]
    atomic_write_text(out_dir / "seeds.md", "\n".join(lines) + "\n")
    atomic_write_text(out_dir / "seeds.json", json.dumps(summary, indent=1) + "\n")
    return summary
