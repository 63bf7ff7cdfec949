"""Self-training: a teacher's confident predictions on unlabelled slices become a student's extra data.

The teacher (a finished run, or a cross-validation folder with one run per fold) predicts the data set's
unlabelled slices (COVID-SemiSeg: the 1600 ``Pseudo-label/Imgs`` slices). A slice is kept when its
predicted lesion area is plausible and the teacher is sure of it (:class:`PseudoLabelRule`); kept label
maps are written as PNGs (pixel value = class id) with ``pseudo.json`` beside them. A student trains on
its labelled images plus, every epoch, a fresh random draw of pseudo-labelled slices
(``data.pseudo_labels`` / ``data.pseudo_ratio``).

Cross-validation stays honest: pseudo-labels made from a CV folder go to ``OUT/fold-K`` (teacher = that
fold's run, which never saw fold ``K``'s held-out images), a student of split ``cv:K`` reads
``OUT/fold-K``, and a student whose held-out images the teacher trained on is refused.

Pseudo-labels are matched to the student's unlabelled slices by name, so ``pseudo.json`` also records the SHA-256
of each kept slice's source file (``sha256`` in its ``slices`` row): a student whose ``--data`` holds other images
of the same names is refused rather than trained on masks of other images. Summaries written before covseg recorded
it load as before.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from PIL import Image

from covseg.checkpoint import checkpoint_config, read_checkpoint, refuse_unfinished
from covseg.config import RunConfig
from covseg.consistency import source_sha256, warn_mask_like
from covseg.datasets import Sample, load_dataset
from covseg.errors import CovsegError, stop_word
from covseg.fileio import (atomic_dir, interrupts_deferred, left_as_it_was, refuse_output_in_data,
                           replacing_output)
from covseg.inference import backends_used
from covseg.intensity import grey_quantiles, match_quantiles
from covseg.labels import get_scheme
from covseg.progress import progress_bar
from covseg.splits import load_split
from covseg.training import side_generator
from covseg.wording import counted

__all__ = ["PSEUDO_FILE", "PseudoLabelRule", "slice_statistics", "check_output_folder", "make_pseudo_labels",
           "resolve_pseudo_folder", "check_pseudo_labels", "load_pseudo_labels", "pseudo_slices_asked", "epoch_pseudo_indices", "significant"]

PSEUDO_FILE = "pseudo.json"
PSEUDO_STREAM = 0x5E1F  # the tag of the pseudo-labelled slices' draws (covseg.training.side_generator)
_FOLD_DIR = re.compile(r"fold-(\d+)$")


@dataclass(frozen=True)
class PseudoLabelRule:
    """Which teacher predictions become pseudo-labels.

    ``confidence`` of a slice = mean top-class probability over the pixels the teacher calls lesion;
    ``fraction`` = those pixels / all pixels. A slice is kept when ``min_fraction <= fraction <=
    max_fraction`` and ``confidence >= min_confidence`` (slices without lesion are never kept: every
    labelled COVID-SemiSeg slice holds lesion, and an empty slice teaches only background).
    """

    min_confidence: float = 0.9
    min_fraction: float = 0.005
    max_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise CovsegError(f"--min-confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise CovsegError("need 0 <= --min-fraction <= --max-fraction <= 1, got "
                              f"{self.min_fraction} and {self.max_fraction}")


def slice_statistics(probs: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Label map, lesion fraction and lesion confidence of one slice's class probabilities ``(C, H, W)``."""
    labels = probs.argmax(0)
    lesion = labels > 0
    fraction = float(lesion.mean())
    confidence = float(probs.max(0)[lesion].mean()) if lesion.any() else 0.0
    return labels.astype(np.uint8), fraction, confidence


def keeps(rule: PseudoLabelRule, fraction: float, confidence: float) -> bool:
    """Whether ``rule`` keeps a slice with this lesion ``fraction`` and ``confidence`` (never an empty one)."""
    return fraction > 0 and rule.min_fraction <= fraction <= rule.max_fraction and confidence >= rule.min_confidence


def _fold_dirs(teacher: Path) -> dict[int, Path]:
    """A finished cross-validation's fold runs by fold number; empty for a run folder. A cross-validation with a
    fold missing or unfinished (still training) is refused, as :func:`covseg.predict.ensemble_members` does."""
    from covseg.predict import ensemble_members  # imported here: covseg.run imports this module

    members = ensemble_members([teacher])
    if members == [teacher]:
        return {}
    return {int(m.group(1)): p for p in members if (m := _FOLD_DIR.match(p.name))}


def _check_teacher(run_dir: Path) -> None:
    """Refuse a run folder still training (or stopped early) as a teacher (its ``last.pt`` holds fewer epochs than
    its ``train.epochs``), and a lesion-type model (:func:`_refuse_types_only`). (A cross-validation's unfinished
    folds are refused by :func:`_fold_dirs`.)"""
    last = run_dir / "last.pt"
    if not last.is_file():
        return  # the teacher's checkpoint is looked for, and a missing one refused, when it is opened
    saved = read_checkpoint(last)
    made = checkpoint_config(saved, last)
    refuse_unfinished(last, saved, made.train.epochs, "the teacher ")
    _refuse_types_only(last, made)


def _refuse_types_only(file: Path | str, made: RunConfig) -> None:
    """Refuse a teacher (checkpoint ``file``, run config ``made``) that learnt lesion types only
    (``train.types_only``): its background output is untrained, so its arg-max would call every pixel lesion."""
    if made.train.types_only:
        raise CovsegError(f"{file}: the teacher is a lesion-type model (train.types_only), whose background output "
                          "is untrained, so it would label every pixel lesion; give a teacher trained on the whole "
                          "task")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CovsegError(f"{path}: missing or unreadable; {what}") from None


def _teacher_images(run_dir: Path, which: str, split: str, pseudo_labels: str) -> list[str]:
    """Names of the labelled images whose labels reached a teacher's weights.

    Its ``train`` part; when the checkpoint ``which`` is ``best`` also its validation part (``best.pt`` was chosen
    on it); and,
    for a teacher that was itself a self-trained student, its own teacher's images.
    """
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise CovsegError(f"{run_dir}: not a covseg run folder (no split.json); give a run or cv folder as teacher")
    parts = load_split(split_file)  # a damaged split (no "train" list of names, ...) is refused in one line
    seen = set(parts["train"])
    if which == "best":
        seen |= set(parts["val"])
    if pseudo_labels:
        seen |= set(_summary(resolve_pseudo_folder(pseudo_labels, split))["teacher_images"])
    return sorted(seen)


def _not_pseudo_label_output(folder: Path, within: str = "") -> str | None:
    """Why ``--force`` may not replace ``folder`` (``"it holds NAME"``, ``"it has no pseudo.json"``); None when it
    holds only what covseg pseudo-label writes: ``pseudo.json``, ``masks/`` of PNG files and (at the top, ``within``
    empty) ``fold-K/`` folders of that shape."""
    labelled = False
    for entry in sorted(folder.iterdir()):
        name = f"{within}{entry.name}"
        plain = not entry.is_symlink()
        if entry.name == PSEUDO_FILE and plain and entry.is_file():
            labelled = True
        elif entry.name == "masks" and plain and entry.is_dir():
            odd = next((p for p in sorted(entry.iterdir()) if p.suffix != ".png" or p.is_symlink() or not p.is_file()),
                       None)
            if odd is not None:
                return f"it holds {name}/{odd.name}"
        elif not within and _FOLD_DIR.match(entry.name) and plain and entry.is_dir():
            why = _not_pseudo_label_output(entry, f"{entry.name}/")
            if why:
                return why
            labelled = True
        else:
            return f"it holds {name}"
    return None if labelled else f"it has no {within}{PSEUDO_FILE}"


def check_output_folder(out_dir: Path, force: bool) -> None:
    """Refuse an ``out_dir`` that pseudo-labelling may not fill: a folder it cannot write, a non-empty folder without
    ``force``, or (even with ``force``) one holding anything but pseudo-labels covseg wrote
    (:func:`_not_pseudo_label_output`), which ``--force`` would delete."""
    if not replacing_output(out_dir, force):
        return
    why = _not_pseudo_label_output(out_dir)
    if why:
        raise CovsegError(f"{out_dir}: is not a pseudo-label folder ({why}), and --force replaces only what "
                          "covseg pseudo-label wrote; choose another -o")


def make_pseudo_labels(teacher: Path, out_dir: Path, data: str | None = None, rule: PseudoLabelRule = PseudoLabelRule(),
                       which: str = "final", batch_size: int = 8, force: bool = False, progress: bool = True,
                       log: Callable[[str], None] = print, match_grey: bool = False, device: str = "cpu",
                       precision: str = "auto") -> dict[str, Any]:
    """Pseudo-label ``data``'s unlabelled slices with ``teacher`` into ``out_dir`` (staged, then renamed).

    ``teacher``: a run folder, or a cross-validation folder (``fold-K/`` runs), which yields
    ``out_dir/fold-K`` per fold. ``data`` defaults to the teacher's own data folder. ``which``: the
    teacher checkpoint (:func:`covseg.checkpoint.find_checkpoint`; ``final`` by default, ``swa.pt`` or ``last.pt``:
    a CV fold's ``best.pt`` was picked on its held-out images). ``match_grey``: each unlabelled slice's grey levels
    are first mapped onto the mean quantile function of the teacher's own training slices
    (:func:`covseg.intensity.match_quantiles`), which ``pseudo.json`` records as ``grey_reference`` so that a
    student reads the slices mapped the same way (unlabelled slices exported with another display window then look
    like the labelled ones).
    ``device`` and ``precision``: where and how the teacher runs (:func:`covseg.predict.open_predictor`).
    ``force`` replaces an ``out_dir`` holding only pseudo-labels (:func:`check_output_folder`).

    Every teacher labels first, with nothing written; a teacher (a fold) that keeps none of the slices is refused
    there (:class:`CovsegError` naming the limit to relax), since a student refuses such a set. Then ``out_dir`` is
    written whole with Ctrl-C held back, so an interruption leaves it as it was or complete, never half-replaced,
    and a log line says which before the ``KeyboardInterrupt`` goes on.
    Returns the summary written to ``pseudo.json`` (for a CV folder: ``{"folds": {K: summary}}``).
    """
    teacher, out_dir = Path(teacher), Path(out_dir)
    if not teacher.is_dir():
        what = "is a file, not a folder" if teacher.exists() else "does not exist"
        raise CovsegError(f"{teacher}: {what}; the teacher must be a run folder or a cross-validation folder")
    t, o = teacher.resolve(), out_dir.resolve()
    if o == t or t in o.parents or o in t.parents:
        raise CovsegError(f"{out_dir}: the output may not be the teacher's folder, inside it or above it; "
                          "choose another -o")
    check_output_folder(out_dir, force)  # before the teachers run
    folds = _fold_dirs(teacher)
    for run in folds.values() or [teacher]:
        _check_teacher(run)
    from covseg.run import read_run_info  # imported here: covseg.run imports this module

    # the slices' folder and the teachers' own: a later command given that folder would read the masks as its own
    for read in dict.fromkeys([data or "", *(read_run_info(run)["data"] for run in folds.values() or [teacher])]):
        refuse_output_in_data(out_dir, read)
    loaded: dict[tuple, list[Sample]] = {}  # the slices read, once for all fold teachers (_split_once)
    labelled: dict[str, _Labels] = {}  # by the sub-folder of out_dir they go to ("" for a run folder's)
    try:
        for where, run in ({f"fold-{k}": run for k, run in folds.items()} or {"": teacher}).items():
            labelled[where] = _pseudo_label_one(run, data, rule, which, batch_size, progress, log, loaded,
                                                match_grey, device, precision)
            if not labelled[where].summary["kept"]:
                raise CovsegError(_kept_none(run, rule, labelled[where]))
    except KeyboardInterrupt as stop:
        log(f"{stop_word(stop)} while the teacher labelled; nothing written ({left_as_it_was(out_dir)})")
        raise
    try:  # again: something may have appeared at out_dir while the teacher labelled
        check_output_folder(out_dir, force)
    except CovsegError as err:
        raise CovsegError(f"the pseudo-labels were made, but nothing was written: {err} (it changed while the "
                          "teacher labelled)") from None
    _write_all(out_dir, labelled, force, log)
    if folds:
        return {"folds": {k: labelled[f"fold-{k}"].summary for k in folds}}
    return labelled[""].summary


class _Labels(NamedTuple):
    """One teacher's pseudo-labels, not yet written: ``summary`` (``pseudo.json``), ``masks`` (each kept slice's
    label map, ``(H, W)`` class ids, encoded as PNG, by slice name) and ``lesion`` (``(fraction, confidence)`` of
    every slice the teacher found lesion on, unrounded)."""

    summary: dict[str, Any]
    masks: dict[str, bytes]
    lesion: list[tuple[float, float]]


def _kept_none(run_dir: Path, rule: PseudoLabelRule, labels: _Labels) -> str:
    """The refusal of a teacher that kept none of the slices: the limits, which to relax (:func:`_relax_advice`)
    and the range of the lesion fractions and confidences it found, to pick new limits from."""
    total, lesion = labels.summary["total"], labels.lesion
    found = ""
    if lesion:
        fractions, confidences = [f for f, _ in lesion], [c for _, c in lesion]
        found = (f"; the teacher's lesion covered {min(fractions):.3g}-{max(fractions):.3g} of a slice, at confidence "
                 f"{min(confidences):.3g}-{max(confidences):.3g}")
    return (f"{run_dir}: kept none of {counted(total, 'slice')} as pseudo-labels ({_limits(asdict(rule))}), so a "
            f"student would have none to train on; {_relax_advice(rule, lesion)}{found}; nothing was written")


def _write_all(out_dir: Path, labelled: dict[str, _Labels], force: bool, log: Callable[[str], None]) -> None:
    """Write every teacher's pseudo-labels (``labelled``, by sub-folder) to ``out_dir`` whole (staged, then renamed;
    an old folder replaced with ``force``) with Ctrl-C and SIGTERM held back until it is done, the old folder's
    deletion included (a Ctrl-C there left part of it behind, hidden). A stop is raised after a log line that says
    whether ``out_dir`` holds the new pseudo-labels, complete (read back: :func:`_holds`), or is left as it was."""
    try:
        with interrupts_deferred(), atomic_dir(out_dir, force=force) as staged:
            for where, labels in labelled.items():
                _write_labels(staged / where, labels)
    except KeyboardInterrupt as stop:
        if _holds(out_dir, labelled):
            log(f"{stop_word(stop)} once {out_dir} was written; its pseudo-labels are complete")
        else:
            log(f"{stop_word(stop)}; nothing written ({left_as_it_was(out_dir)})")
        raise


def _summary_text(labels: _Labels) -> str:
    """``pseudo.json``'s text."""
    return json.dumps(labels.summary, indent=1) + "\n"


def _holds(out_dir: Path, labelled: dict[str, _Labels]) -> bool:
    """Whether ``out_dir`` holds the ``pseudo.json`` of each of ``labelled`` (by sub-folder), as written."""
    try:
        return all((out_dir / where / PSEUDO_FILE).read_text(encoding="utf-8") == _summary_text(labels)
                   for where, labels in labelled.items())
    except (OSError, UnicodeDecodeError):
        return False


def _write_labels(folder: Path, labels: _Labels) -> None:
    """``folder/masks/NAME.png`` for each kept slice and ``folder/pseudo.json`` (``folder`` inside a staging
    folder)."""
    masks = folder / "masks"
    masks.mkdir(parents=True)
    for name, png in labels.masks.items():
        (masks / f"{name}.png").write_bytes(png)
    (folder / PSEUDO_FILE).write_text(_summary_text(labels), encoding="utf-8")


def _png(labels: np.ndarray) -> bytes:
    """A ``(H, W)`` uint8 label map encoded as PNG (pixel value = class id)."""
    buffer = io.BytesIO()
    Image.fromarray(labels).save(buffer, format="PNG")
    return buffer.getvalue()


def _pseudo_label_one(run_dir: Path, data: str | None, rule: PseudoLabelRule, which: str, batch_size: int,
                      progress: bool, log: Callable[[str], None], loaded: dict[tuple, list[Sample]],
                      match_grey: bool = False, device: str = "cpu", precision: str = "auto") -> _Labels:
    """Label ``data``'s unlabelled slices with the teacher ``run_dir``, in memory (nothing is written)."""
    from covseg.predict import open_predictor  # imported here: covseg.run imports this module
    from covseg.run import read_run_info

    if not run_dir.is_dir():
        raise CovsegError(f"{run_dir}: the teacher must be a run folder or a cross-validation folder")
    predictor, config, info = open_predictor(run_dir, None, which, "auto", device, precision, batch_size, False)
    _refuse_types_only(info["file"], config)
    seen = _teacher_images(run_dir, Path(info["file"]).stem, config.data.split, config.data.pseudo_labels)
    teacher_data = read_run_info(run_dir)["data"]
    data = data or teacher_data
    samples = _split_once(loaded, data, config, "unlabelled")
    reference = (_teacher_grey_reference(_split_once(loaded, teacher_data, config, "train"), teacher_data, seen)
                 if match_grey else None)
    images = [s.image if reference is None else match_quantiles(s.image, reference) for s in samples]
    rows, masks, lesion, digests = [], {}, [], {}
    teacher = run_dir.resolve().name  # a teacher given as "." has no name of its own
    with progress_bar(total=len(samples), desc=f"pseudo-label {teacher}", unit="slice", disable=not progress,
                      dynamic_ncols=True) as bar:
        for sample, probs in zip(samples, predictor(images)):
            labels, fraction, confidence = slice_statistics(probs)
            # the rule judges the figures pseudo.json records, so that each row's verdict follows from its figures
            fraction, confidence = significant(fraction), significant(confidence)
            keep = keeps(rule, fraction, confidence)
            if fraction > 0:
                lesion.append((fraction, confidence))
            if keep:
                masks[sample.name] = _png(labels)
            row = {"name": sample.name, "fraction": fraction, "confidence": confidence, "kept": keep}
            if keep:  # which image the mask belongs to: a student's --data may hold another image of this name
                row["sha256"] = source_sha256(sample.source, digests)
            rows.append(row)
            bar.update(1)
    summary = {"teacher": str(run_dir.resolve()), "checkpoint": str(Path(info["file"]).resolve()),
               "backend": backends_used(predictor), "task": config.data.task,
               "data": str(Path(data).resolve()), "rule": asdict(rule), "teacher_images": seen,
               "kept": len(masks), "total": len(rows), "slices": rows}
    if reference is not None:
        summary["grey_reference"] = [round(float(v), 6) for v in reference]
    if masks:
        log(f"{teacher}: kept {len(masks)} of {counted(len(rows), 'slice')} as pseudo-labels")
    return _Labels(summary, masks, lesion)


def significant(value: float, digits: int = 5) -> float:
    """``value`` to ``digits`` significant digits, as ``pseudo.json`` stores a slice's lesion fraction and confidence
    and as the rule that kept or refused the slice judged them (a slice recorded at confidence 0.9055 is kept by
    ``--min-confidence 0.9055``, though the unrounded figure was 0.9054989): a fraction of one pixel in 512 x 512
    (3.8e-06) stays above 0 (a fixed 5 decimal places wrote it as 0.0)."""
    return float(f"{value:.{digits}g}")


def _limits(rule: Any) -> str:
    """The three limits of a summary's ``rule`` (a mapping) as the options that set them."""
    names = (("min_confidence", "--min-confidence"), ("min_fraction", "--min-fraction"),
             ("max_fraction", "--max-fraction"))
    if not isinstance(rule, dict) or not all(key in rule for key, _ in names):
        return "limits " + ", ".join(option for _, option in names)
    return ", ".join(f"{option} {rule[key]}" for key, option in names)


def _relax_advice(rule: PseudoLabelRule, lesion: list[tuple[float, float]]) -> str:
    """Which limit to relax when none of the slices was kept: the one that refused most of the slices with lesion
    (``(fraction, confidence)`` of each)."""
    if not lesion:
        return "the teacher found lesion on none of them, which no limit changes; check the teacher and --data"
    refused = {"lower --min-confidence": sum(c < rule.min_confidence for _, c in lesion),
               "lower --min-fraction": sum(f < rule.min_fraction for f, _ in lesion),
               "raise --max-fraction": sum(f > rule.max_fraction for f, _ in lesion)}
    ranked = sorted((n, advice) for advice, n in refused.items() if n)
    return " or ".join(f"{advice} (it refused {n} of the {len(lesion)} slices with lesion)"
                       for n, advice in reversed(ranked))


def resolve_pseudo_folder(folder: str | Path, split: str) -> Path:
    """The pseudo-label folder for a run of ``split``: ``folder/fold-K`` for ``cv:K`` when it exists."""
    folder = Path(folder)
    match = re.fullmatch(r"cv:(\d+)", split)
    if match and (folder / f"fold-{match.group(1)}" / PSEUDO_FILE).is_file():
        return folder / f"fold-{match.group(1)}"
    if not (folder / PSEUDO_FILE).is_file():
        if _fold_dirs_with_labels(folder):
            raise CovsegError(f"{folder}: holds per-fold pseudo-labels, but split {split!r} is not one of its "
                              "folds; use --split cv:K")
        raise CovsegError(f"{folder}: no {PSEUDO_FILE}; make pseudo-labels with `covseg pseudo-label TEACHER -o "
                          f"{folder}`")
    return folder


def _fold_dirs_with_labels(folder: Path) -> list[Path]:
    return [p for p in folder.glob("fold-*") if (p / PSEUDO_FILE).is_file()] if folder.is_dir() else []


def check_pseudo_labels(folder: str | Path, task: str, heldout: list[str]) -> dict[str, Any]:
    """Read ``folder/pseudo.json`` and refuse pseudo-labels a student of ``task`` scored on ``heldout`` may not use.

    Refused: another task's labels, and a teacher that trained on any of the ``heldout`` images (those the
    student is scored on) — that would leak their labels into the student. Returns the summary.
    """
    folder = Path(folder)
    summary = _summary(folder)
    if summary["task"] != task:
        raise CovsegError(f"{folder}: pseudo-labels are for the {summary.get('task')} task, not {task}; make them "
                          f"with a {task} teacher")
    leaked = sorted(set(summary["teacher_images"]) & set(heldout))
    if leaked:
        more = f" (and {len(leaked) - 1} more)" if len(leaked) > 1 else ""
        raise CovsegError(f"{folder}: the teacher trained on held-out image {leaked[0]}{more}; make pseudo-labels "
                          "from the same fold's teacher (covseg pseudo-label CV_DIR)")
    if not summary["kept"]:
        raise CovsegError(f"{folder}: no slice was kept as a pseudo-label ({_limits(summary.get('rule'))}); make "
                          "them again with looser limits (covseg pseudo-label ... --force)")
    return summary


def _summary(folder: Path) -> dict[str, Any]:
    """``folder/pseudo.json``, checked for the fields covseg relies on."""
    summary = _read_json(folder / PSEUDO_FILE, "make the pseudo-labels again")
    try:
        rows = [{"name": str(r["name"]), "kept": bool(r["kept"]),
                 "sha256": str(r["sha256"]) if "sha256" in r else None} for r in summary["slices"]]
        checked = {"task": summary["task"], "teacher_images": list(summary["teacher_images"]), "slices": rows,
                   "kept": sum(r["kept"] for r in rows)}
    except (KeyError, TypeError, AttributeError):
        raise CovsegError(f"{folder}/{PSEUDO_FILE}: not a covseg pseudo-label summary; make the pseudo-labels "
                          "again") from None
    return {**summary, **checked}


def load_pseudo_labels(folder: str | Path, data: str, task: str, window: tuple[float, float],
                       heldout: list[str]) -> list[Sample]:
    """The kept pseudo-labelled slices of ``folder`` (checked by :func:`check_pseudo_labels`), images read
    from ``data``'s unlabelled split (grey levels mapped onto the summary's ``grey_reference`` where the labels were
    made with ``match_grey``); masks ``(H, W)`` int64 in the task's scheme."""
    folder = Path(folder)
    summary = check_pseudo_labels(folder, task, heldout)
    kept = [row for row in summary["slices"] if row["kept"]]
    reference = _grey_reference(summary, folder)
    by_name = {s.name: s for s in load_dataset(data, task, split="unlabelled", window=window)}
    scheme = get_scheme(task)
    samples, digests = [], {}
    for row in kept:
        name = row["name"]
        if name not in by_name:
            raise CovsegError(f"{folder}: pseudo-label {name} has no unlabelled slice in {data}; use the --data "
                              "the pseudo-labels were made from")
        # summaries written before covseg recorded the digest (no sha256) are matched by name alone, as before
        if row["sha256"] is not None and source_sha256(by_name[name].source, digests) != row["sha256"]:
            made_from = summary.get("data")
            raise CovsegError(f"{folder}: pseudo-label {name} was made from another image than "
                              f"{by_name[name].source} (its SHA-256 differs); re-run `covseg pseudo-label` on "
                              f"this --data, or pass the --data the labels were made from"
                              + (f" ({made_from})" if isinstance(made_from, str) else ""))
        image = by_name[name].image if reference is None else match_quantiles(by_name[name].image, reference)
        try:
            mask = np.asarray(Image.open(folder / "masks" / f"{name}.png"), dtype=np.int64)
        except OSError:
            raise CovsegError(f"{folder}/masks/{name}.png: missing or unreadable; make the pseudo-labels again") from None
        if mask.shape != image.shape or mask.max() >= scheme.num_classes:
            raise CovsegError(f"{folder}/masks/{name}.png: does not fit its slice or the {task} labels; "
                              "make the pseudo-labels again")
        samples.append(Sample(name, image, mask, by_name[name].source))
    return samples


def _split_once(loaded: dict[tuple, list[Sample]], data: str, config: RunConfig, split: str) -> list[Sample]:
    """``data``'s ``split`` as ``config`` reads it, read once for all the fold teachers of one call (``loaded``);
    unlabelled slices that look like label masks are warned of once (:func:`covseg.consistency.warn_mask_like`)."""
    key = (str(Path(data).resolve()), config.data.task, config.data.window, split)
    if key not in loaded:
        loaded[key] = load_dataset(data, config.data.task, split=split, window=config.data.window)
        if split == "unlabelled":
            warn_mask_like(loaded[key], "covseg pseudo-label")
    return loaded[key]


def _teacher_grey_reference(labelled: list[Sample], data: str, names: list[str]) -> np.ndarray:
    """The mean grey-level quantile function of the slices ``names`` of ``labelled`` (the training split of the
    teacher's own ``data`` folder) that the teacher trained on."""
    wanted = set(names)
    slices = [s.image for s in labelled if s.name in wanted]
    if not slices:
        raise CovsegError(f"{data}: holds none of the teacher's training slices; --match-grey needs the data folder "
                          "the teacher trained on")
    return grey_quantiles(slices)


def _grey_reference(summary: dict[str, Any], folder: Path) -> np.ndarray | None:
    """``summary``'s ``grey_reference`` as an array (None without one), checked to be a quantile function."""
    if "grey_reference" not in summary:
        return None
    try:
        reference = np.asarray(summary["grey_reference"], dtype=np.float64)
    except (TypeError, ValueError):
        reference = np.zeros(0)
    bad = reference.ndim != 1 or reference.size < 2 or not np.all(np.isfinite(reference))
    if bad or np.any(np.diff(reference) < 0):
        raise CovsegError(f"{folder}/{PSEUDO_FILE}: its grey_reference is not a list of non-decreasing grey levels; "
                          "make the pseudo-labels again")
    return reference


def pseudo_slices_asked(n_labelled: int, ratio: float) -> int:
    """How many pseudo-labelled slices ``data.pseudo_ratio`` (``ratio``) asks for each epoch beside ``n_labelled``
    labelled images: ``round(ratio * n_labelled)`` (at most the slices kept are drawn)."""
    return int(round(ratio * n_labelled))


def epoch_pseudo_indices(n_pseudo: int, n_labelled: int, ratio: float, seed: int, epoch: int) -> torch.Tensor:
    """Which pseudo-labelled slices join ``epoch``: :func:`pseudo_slices_asked` of them (at most ``n_pseudo``),
    drawn without replacement.

    Seeded by ``(seed, epoch)`` alone, so a resumed run draws the same slices.
    """
    count = min(n_pseudo, pseudo_slices_asked(n_labelled, ratio))
    return torch.randperm(n_pseudo, generator=side_generator(seed, epoch, PSEUDO_STREAM))[:count]
