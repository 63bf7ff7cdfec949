"""A training run folder: set it up, train into it, resume it.

Layout of ``RUN_DIR``::

    config.yaml         resolved RunConfig          run.json       data path, versions, creation time
                        (the data path: null for a library call without data_path; a resume that finds the run's
                        images in another folder records that one, and one given other images is refused)
    split.json          train/val/test names (+ all folds for cv:K)
    class_weights.json  median-frequency weights of the training masks
    history.csv         per epoch: train/val loss, pixel accuracy, val mean Dice (the val columns hold ``nan`` in the
                        epochs between train.val_every ones), lr (the epoch's last optimiser step's), seconds (its
                        training and validation, not its checkpoint writes)
    curves.png          loss, accuracy and validation Dice curves (a curve without any figure is left out)
    best.pt / last.pt   checkpoints (best by validation mean foreground Dice; last for --resume)
    ema.pt              with train.ema > 0: the weights' exponential moving average after the last epoch,
                        with the trained network's batch-norm statistics
    swa.pt              with train.swa_epochs > 0: the equal average of the last swa_epochs epochs' weights, with
                        batch-norm statistics recomputed over the training slices; the run's model where it exists
                        (covseg.checkpoint.find_checkpoint's "auto" and "final")

Every file is written atomically; ``last.pt`` is rewritten after each epoch. A new run given ``--force`` moves the
run folder it replaces aside (a hidden sibling) and deletes it once its own first ``last.pt`` is saved; stopped or
failed before that, it puts the old folder back as it was. A folder whose run stopped or failed before its first
epoch was saved holds nothing to resume or lose, so a new run replaces it without ``--force``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from covseg import __version__
from covseg.checkpoint import (build_model, checkpoint_config, cpu_state_dict, error_first_line, read_checkpoint,
                               save_checkpoint, weights_mismatch)
from covseg.config import DataConfig, RunConfig, TrainConfig, check_new_run, config_from_dict, config_to_dict
from covseg.consistency import ConsistencyTerm, check_unlabelled_unchanged, load_unlabelled
from covseg.distill import DistillTerm, load_teachers
from covseg.datasets import Sample, load_dataset
from covseg.errors import CovsegError, Terminated, stop_word
from covseg.fileio import atomic_write_text, file_sha256, interrupts_deferred
from covseg.intensity import normalize_image
from covseg.labels import get_scheme
from covseg.losses import DeepSupervisionLoss, create_loss, median_frequency_weights
from covseg.models import check_input_size
from covseg.pretrain import check_pretrained, init_from_pretrained, pretrained_path
from covseg.progress import close_bar
from covseg.runtime import (DistContext, raise_on_every_rank, resolve_device, resolve_precision,
                            training_memory_format)
from covseg.selftrain import (PSEUDO_FILE, epoch_pseudo_indices, load_pseudo_labels, pseudo_slices_asked,
                              resolve_pseudo_folder)
from covseg.splits import kfold, load_split, make_split, parse_split_name, save_split
from covseg.training import (averaged_network, check_data_parallel, epoch_average, lr_factor, make_optimizer,
                             recompute_batch_norm, train_one_epoch, validate, weight_average)
from covseg.transforms import stack_resized
from covseg.wording import counted

__all__ = ["RunResult", "train_run", "read_run_config", "read_run_info", "read_class_weights", "trained_on",
           "sync_history", "is_run_folder", "never_saved_an_epoch", "HISTORY_FIELDS", "parameter_count"]

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_dice", "lr", "seconds")


@dataclass
class RunResult:
    """What a (possibly interrupted) training call achieved."""

    run_dir: Path
    epochs_done: int
    epochs_total: int
    best_score: float | None
    stopped: bool = False  # Ctrl-C came, also where it found every epoch saved (the run finished): callers stop too
    seconds: float = 0.0
    epochs_before: int = 0  # epochs a resumed run had saved before this call (0 for a new run)
    terminated: bool = False  # what stopped it was SIGTERM (errors.Terminated), not Ctrl-C: exit status 143
    best_epoch: int | None = None  # the epoch (1-based) whose weights best.pt holds, where best_score is one's
    model: str = ""  # the run's model where it is not best.pt: "swa.pt" for a finished train.swa_epochs run
    swa_epochs: int = 0  # the epochs swa.pt averages
    unlabelled: int = 0  # the unlabelled slices train.consistency's mean teacher labelled (0: off)

    @property
    def interrupted(self) -> bool:
        """Stopped (Ctrl-C) before every epoch was saved: resume it."""
        return self.stopped and self.epochs_done < self.epochs_total

    def summary(self, resumed: bool) -> str:
        """The one line ``covseg train`` ends with (``resumed``: it was given ``--resume``): the epochs this call
        trained and in how long, the best validation mean Dice and its epoch (best.pt), the run's model where that
        is another file (``swa.pt``), and the run folder."""
        trained = self.epochs_done - self.epochs_before  # this call's epochs, not the run's
        total = self.epochs_total
        if resumed and not trained:
            done = f"nothing left to resume: the run has {'its 1 epoch' if total == 1 else f'all {total} epochs'}"
        elif resumed:
            done = f"trained {counted(trained, 'more epoch')} ({self.epochs_done} of {total}) in {self.seconds:.0f} s"
        else:
            done = f"trained {counted(trained, 'epoch')} in {self.seconds:.0f} s"
        best = "n/a" if self.best_score is None else f"{self.best_score:.4f}"
        if self.best_score is not None and self.best_epoch is not None:
            best += f" at epoch {self.best_epoch} (best.pt)"
        model = (f"; the run's model is {self.model}, the average of its last {counted(self.swa_epochs, 'epoch')}"
                 if self.model == "swa.pt" else f"; the run's model is {self.model}" if self.model else "")
        teacher = f"; mean teacher on {counted(self.unlabelled, 'unlabelled slice')}" if self.unlabelled else ""
        return f"{done}; best validation mean Dice {best}{model}{teacher}; run folder {self.run_dir}"


def read_run_config(run_dir: Path) -> RunConfig:
    """The resolved config saved in ``run_dir``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise CovsegError(f"{run_dir}: no config.yaml; is it a covseg run folder?")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise CovsegError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); the run's settings are damaged, so "
                          "train it again with -o") from None
    if not isinstance(data, dict):
        raise CovsegError(f"{path}: not a covseg run config (a mapping with data/model/train sections); train it "
                          "again with -o")
    return config_from_dict(data, source=str(path))


def read_run_info(run_dir: Path, require_data: bool = True) -> dict:
    """``run.json`` of ``run_dir`` (data path, versions). With ``require_data`` (the default: most callers read
    ``info["data"]``) a record without a string ``data`` entry is refused as damaged; a caller that reads only
    other entries (a resume given ``--data``) passes False."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise CovsegError(f"{run_dir}: no run.json; is it a covseg run folder?")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise CovsegError(f"{path}: not valid JSON ({err}); the run's record is damaged, so train it again with -o") \
            from None
    if not isinstance(info, dict):
        raise CovsegError(f"{path}: not a covseg run record (a JSON object); train it again with -o")
    if require_data and "data" in info and info["data"] is None:  # train_run called without data_path
        raise CovsegError(f"{path}: the run records no data folder (it was trained from Python without "
                          "data_path); give --data DIR")
    if require_data and not isinstance(info.get("data"), str):
        raise CovsegError(f"{path}: a damaged run.json (no 'data' entry naming the run's data folder); give "
                          "--data DIR, or train the run again with --force")
    return info


def read_class_weights(run_dir: Path, task: str | None = None) -> np.ndarray:
    """``(num_classes,)`` float64 median-frequency weights saved in ``run_dir/class_weights.json`` (0 for a class
    absent from the training masks). With ``task``, a count other than that task's classes is refused as damage."""
    path = Path(run_dir) / "class_weights.json"
    try:
        weights = json.loads(path.read_text(encoding="utf-8"))["weights"]
        values = np.array(list(weights.values()), dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CovsegError(f"{path}: unreadable or damaged ({type(err).__name__}); train the run again "
                          "(covseg train ... -o RUN --force)") from None
    if values.ndim != 1 or not np.isfinite(values).all():
        raise CovsegError(f"{path}: damaged (weights are not finite numbers); train the run again "
                          "(covseg train ... -o RUN --force)")
    if values.size < 2:  # every label scheme has a background and at least one lesion class
        raise CovsegError(f"{path}: damaged ({values.size} class weights, not one per class); train the run again "
                          "(covseg train ... -o RUN --force)")
    expected = get_scheme(task).num_classes if task is not None else values.size
    if values.size != expected:
        raise CovsegError(f"{path}: damaged ({values.size} class weights, not one per class of the {task} task's "
                          f"{expected}); train the run again (covseg train ... -o RUN --force)")
    return values


def _same_masks(train: list[Sample], weights: np.ndarray, num_classes: int) -> bool:
    """Whether the masks of ``train`` (a run's training images) give the median-frequency ``weights`` the run saved
    in ``class_weights.json``: the same names with other pixels (another --data) give other weights."""
    now = median_frequency_weights([s.mask for s in train], num_classes)
    return now.shape == weights.shape and bool(np.allclose(now, weights, rtol=0, atol=2e-6))


def trained_on(run_dir: Path, samples: list[Sample]) -> bool:
    """Whether ``samples`` hold every training image of the run in ``run_dir`` (its ``split.json``) with the masks it
    was trained on (the check ``--resume`` makes: their class weights against ``class_weights.json``), wherever
    that data now lies."""
    run_dir = Path(run_dir)
    split = load_split(run_dir / "split.json")
    by_name = {s.name: s for s in samples}
    if any(n not in by_name for n in split["train"]):
        return False
    task = read_run_config(run_dir).data.task
    return _same_masks([by_name[n] for n in split["train"]], read_class_weights(run_dir, task),
                       get_scheme(task).num_classes)


def sync_history(run_dir: Path) -> bool:
    """Rewrite ``run_dir/history.csv`` from ``last.pt``'s history where they differ in length (a process killed
    between writing the two left the file an epoch behind); returns whether it was rewritten. A finished run that
    ``covseg cv`` reuses is repaired so, as a resumed one is by :func:`train_run`."""
    history = list(read_checkpoint(Path(run_dir) / "last.pt").get("history", []))
    path = Path(run_dir) / "history.csv"
    rows = len(path.read_text(encoding="utf-8").strip().splitlines()) - 1 if path.is_file() else -1
    if rows == len(history):
        return False
    _write_history(Path(run_dir), history)
    return True


_TRAIN_AGAIN = "a run resumes only from the last.pt it wrote; train it again (covseg train ... -o RUN --force)"


def setting_differences(there: dict, here: dict, prefix: str = "", names: tuple[str, str] = ("there", "here")
                        ) -> list[str]:
    """``"KEY A there, B here"`` for each setting (``train.augment.hflip``) whose value differs between two nested
    config dicts (:func:`covseg.config.config_to_dict`), in ``here``'s order; ``names`` replaces "there" and "here"."""
    differ = []
    for key in [*here, *(k for k in there if k not in here)]:
        a, b = there.get(key), here.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += setting_differences(a, b, f"{prefix}{key}.", names)
        elif a != b:
            differ.append(f"{prefix}{key} {shown_setting(a)} {names[0]}, {shown_setting(b)} {names[1]}")
    return differ


def shown_setting(value: object) -> str:
    """A setting's value as a differences line shows it (an empty text as ``""``)."""
    return '""' if value == "" else str(value)


def differences_note(differ: list[str]) -> str:
    """The first of ``differ`` (:func:`setting_differences`), and how many more there are."""
    more = f", and {len(differ) - 1} more setting{'s' if len(differ) > 2 else ''}" if len(differ) > 1 else ""
    return f"{differ[0]}{more}"


def check_checkpoint_settings(run_dir: Path, state: dict, config: RunConfig, remedy: str = _TRAIN_AGAIN) -> None:
    """Refuse ``run_dir/last.pt`` (its contents ``state``) unless it was trained with ``config``, the run's settings
    (its ``config.yaml``): another run's last.pt copied in (another fold's, say) fits the network's shapes and would
    resume or be reused silently. The one-line :class:`CovsegError` names the first setting that differs and ends
    with ``remedy``."""
    last = Path(run_dir) / "last.pt"
    saved = config_to_dict(checkpoint_config(state, last))
    differ = setting_differences(saved, config_to_dict(config), names=("in last.pt", "in config.yaml"))
    if differ:
        raise CovsegError(f"{run_dir}: its last.pt was trained with other settings than the run's "
                          f"({differences_note(differ)}); is it another run's last.pt copied in? {remedy}")


def _resume_into(target: torch.nn.Module | torch.optim.Optimizer, state: dict, key: str, what: str,
                 run_dir: Path, because: str = "") -> None:
    """Load ``state[key]`` (``run_dir/last.pt``'s ``what``, there ``because`` of a setting) into ``target``, a
    network or the optimizer.

    One that is missing (a best.pt copied over last.pt holds no optimizer state) or does not fit the run's
    config.yaml (a last.pt from another run) raises a one-line :class:`CovsegError` naming it."""
    last = run_dir / "last.pt"
    if key not in state:
        guess = "" if because else " (is it a best.pt or another checkpoint copied over it?)"
        raise CovsegError(f"{last} holds no {what}{because}{guess}; {_TRAIN_AGAIN}")
    given = state[key]
    try:
        target.load_state_dict(given)
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        tensors = isinstance(given, dict) and all(isinstance(v, torch.Tensor) for v in given.values())
        detail = (weights_mismatch(target.state_dict(), given, err)
                  if isinstance(target, torch.nn.Module) and tensors else error_first_line(err))
        raise CovsegError(f"{last}: its '{key}' entry ({what}) does not fit the run's config.yaml ({detail}); "
                          + _TRAIN_AGAIN) from None


def _write_history(run_dir: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(run_dir / "history.csv", buffer.getvalue())


class _OldRun:
    """The run folder a new run replaces (``--force``), kept aside as a hidden sibling (same file system) until the
    new run has saved its first epoch: a new run stopped or failed before that leaves the old one as it was."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.aside: Path | None = None  # where the old run lies while it is aside

    def _sibling(self, kind: str) -> Path:
        return self.run_dir.parent / f".{self.run_dir.name}.{os.getpid()}-{os.urandom(4).hex()}.{kind}"

    def move_aside(self) -> Path:
        """Rename the old run folder to a hidden sibling; returns that name."""
        aside = self._sibling("old")
        with interrupts_deferred():  # a Ctrl-C is raised only once self.aside says where the old run went
            try:
                os.replace(self.run_dir, aside)
            except OSError as err:
                raise CovsegError(f"{self.run_dir}: cannot move the run there aside to replace it "
                                  f"({err.strerror or err}); remove it yourself or choose another -o") from None
            self.aside = aside
        return aside

    def drop(self) -> None:
        """Delete the old run: the new one has saved an epoch (called with Ctrl-C held back)."""
        if self.aside is None:
            return
        if self.aside.is_symlink():  # -o named a link: the link goes, the folder it pointed to stays
            self.aside.unlink()
        else:
            shutil.rmtree(self.aside, ignore_errors=True)
        self.aside = None

    def put_back(self) -> bool:
        """Put the old run back in place of the new run's partial folder (which is deleted), with Ctrl-C held back
        over the renames; returns whether there was an old run to put back."""
        if self.aside is None:
            return False
        with interrupts_deferred():
            partial = self._sibling("part")
            if self.run_dir.exists() or self.run_dir.is_symlink():
                os.replace(self.run_dir, partial)
            os.replace(self.aside, self.run_dir)
            self.aside = None
            shutil.rmtree(partial, ignore_errors=True)
        return True


_SETUP_FILES = frozenset({"config.yaml", "split.json", "class_weights.json", "run.json"})


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a covseg run: ``config.yaml`` or ``run.json``, the first files a new run writes (a run
    cut short after them is still one, which ``--force`` may replace)."""
    return (path / "config.yaml").is_file() or (path / "run.json").is_file()


def never_saved_an_epoch(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that stopped or failed before it saved its first epoch: only the files a new
    run writes before training (config.yaml, split.json, class_weights.json, run.json; at least one of config.yaml
    and run.json) and the hidden temporary files of those writes, nothing else (no checkpoint, history or report)."""
    names = [p.name for p in run_dir.iterdir() if not (p.name.startswith(".") and ".part" in p.name)]
    return bool(names) and set(names) <= _SETUP_FILES and is_run_folder(run_dir)


def _finished_epochs(run_dir: Path) -> int | None:
    """The epochs of the finished run in ``run_dir`` (its ``last.pt`` holds all its config.yaml's ``train.epochs``),
    or None: unfinished, or not readable as a run (the caller's refusal then stays the general one)."""
    try:
        total = read_run_config(run_dir).train.epochs
        last = run_dir / "last.pt"
        return total if last.is_file() and int(read_checkpoint(last).get("epoch", 0)) >= total else None
    except CovsegError:
        return None


def _last_damage(run_dir: Path) -> str | None:
    """Why ``run_dir/last.pt`` cannot be read (:func:`covseg.checkpoint.read_checkpoint`'s refusal), or None where
    it can, or where there is none."""
    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    try:
        read_checkpoint(last)
    except CovsegError as err:
        return str(err)
    return None


def _prepare_folder(run_dir: Path, config: RunConfig, samples: list[Sample], data_path: str,
                    force: bool, old: _OldRun, log, info: dict | None = None) -> None:
    """Write a new run's settings, split, class weights and record into ``run_dir``; with ``force`` a run folder
    there is first moved aside (``old``), to be deleted once the new run has saved its first epoch. A run folder
    that never saved an epoch (:func:`never_saved_an_epoch`: nothing to resume or lose) is replaced so without
    ``force``."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force and never_saved_an_epoch(run_dir):
            log(f"{run_dir}: holds a run that stopped before it saved an epoch; starting it again")
            force = True
        if not is_run_folder(run_dir):  # told first: --force and --resume, offered below, would both refuse it
            raise CovsegError(f"{run_dir}: is not empty and not a covseg run folder; --force only replaces run "
                              "folders, so choose a new -o")
        if not force:
            total = _finished_epochs(run_dir)
            if total is not None:  # nothing to continue: --resume would only say so
                raise CovsegError(f"{run_dir}: holds a finished run ({counted(total, 'epoch')}); pass --force to "
                                  "replace it, or choose another -o")
            if not (run_dir / "last.pt").is_file():  # killed while its first epoch was written: --resume refuses it
                raise CovsegError(f"{run_dir}: holds a run with no epoch to resume (no last.pt); pass --force to "
                                  "replace it, or choose another -o")
            if _last_damage(run_dir) is not None:  # --resume, offered below, would refuse it
                raise CovsegError(f"{run_dir}: holds a run whose last.pt is damaged, so it cannot be resumed; pass "
                                  "--force to replace it, or choose another -o")
            raise CovsegError(f"{run_dir}: run folder exists; pass --force to overwrite it or "
                              f"--resume {run_dir} to continue it")
        aside = old.move_aside()
        log(f"{run_dir}: the run there is kept as {aside.name} beside it until the new run has saved its first epoch")
    run_dir.mkdir(parents=True, exist_ok=True)
    d = config.data
    # config.yaml first: a folder that was cut short after it is still recognised as a run (and --force replaces it)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))
    names = [s.name for s in samples]
    split = make_split(names, d.split, d.split_seed, d.folds, d.val_fraction)
    folds = kfold(names, d.folds, d.split_seed) if parse_split_name(d.split)[0] == "cv" else None
    save_split(split, run_dir / "split.json", folds)
    scheme = get_scheme(d.task)
    train_set = set(split["train"])
    weights = median_frequency_weights([s.mask for s in samples if s.name in train_set], scheme.num_classes)
    atomic_write_text(run_dir / "class_weights.json", json.dumps(
        {"method": "median frequency balancing (Eigen & Fergus 2015)",
         "weights": dict(zip(scheme.names, [round(float(w), 6) for w in weights]))}, indent=1) + "\n")
    atomic_write_text(run_dir / "run.json", json.dumps(
        {"covseg": __version__, "torch": torch.__version__, "python": platform.python_version(),
         "data": str(Path(data_path).resolve()) if data_path else None,  # None: a library call without data_path
         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})},
        indent=1) + "\n")


def _training_loss(t: TrainConfig, class_weights: np.ndarray) -> torch.nn.Module:
    """The loss ``train.loss`` and its options name (:func:`covseg.losses.create_loss`), with ``class_weights``
    ``(C,)`` for the ``mfb_*`` losses."""
    return create_loss(t.loss, class_weights, t.dice, t.lesion_dice, t.types_only, t.lesion_and_type, t.dice_weight,
                       t.tversky_beta, t.tversky_lesion_only, t.lovasz_weight, t.ce_topk, t.label_smoothing,
                       t.focal_gamma)


def _stack(samples: list[Sample], data: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised, resized images ``(N, 1, S, S)`` float32 and label maps ``(N, S, S)`` int64, ``S`` =
    ``data.input_size``."""
    x, y = stack_resized([normalize_image(s.image, data.normalize) for s in samples], [s.mask for s in samples],
                         data.input_size, data.resize)
    assert y is not None
    return x, y


@dataclass
class _Pseudo:
    """A run's pseudo-labelled slices: images float16 ``(P, 1, S, S)``, labels uint8 ``(P, S, S)``."""

    images: torch.Tensor
    labels: torch.Tensor
    digest: str  # SHA-256 of the pseudo.json they came from


def _progressive_note(t: TrainConfig) -> str:
    """What the start line says of progressive resizing: the epochs at the smaller size, or that there are none."""
    if not t.progressive_size:
        return ""
    n = t.progressive_epochs()
    if n == 0:
        return (f" (none at train.progressive_size {t.progressive_size}: train.progressive_fraction "
                f"{t.progressive_fraction:g} of {t.epochs} epochs rounds down to 0)")
    return f", the first {n} at {t.progressive_size}x{t.progressive_size}"


def _validation_note(count: int, t: TrainConfig) -> str:
    """What the start line says of validation: on how many images, and at which epochs (``train.val_every``)."""
    if t.val_every <= 1:
        return f"validating on {count}"
    if t.val_every >= t.epochs:
        return f"validating on {count} after the last epoch only"
    return f"validating on {count} every {t.val_every} epochs and after the last"


def parameter_count(n: int) -> str:
    """``n`` parameters, readable at every size: ``"850"``, ``"12.3k"`` under 0.1 M (a tiny network read "0.01M"),
    else ``"1.23M"``."""
    if n < 1000:
        return str(n)
    return f"{n / 1e3:.1f}k" if n < 99_950 else f"{n / 1e6:.2f}M"  # 99,950 would round to "100.0k"


def _pseudo_slices(config: RunConfig, split: dict, data_path: str, log, resume: bool) -> _Pseudo | None:
    """Load, check and resize the run's pseudo-labelled slices (self-training), or None without any. A new run whose
    ``data.pseudo_ratio`` draws none of them each epoch is refused (before the line that says what it draws)."""
    d = config.data
    if not d.pseudo_labels:
        return None
    folder = resolve_pseudo_folder(d.pseudo_labels, d.split)
    samples = load_pseudo_labels(folder, data_path, d.task, d.window,
                                 split.get("val", []) + split.get("test", []))
    n_train = len(split.get("train", []))
    asked = pseudo_slices_asked(n_train, d.pseudo_ratio)
    if not resume and n_train and not asked:  # no training images at all is refused later, naming data.val_fraction
        raise CovsegError(f"data.pseudo_ratio {d.pseudo_ratio:g} of {n_train} training images draws no "
                          "pseudo-labelled slice per epoch; raise it (1 draws as many as there are training "
                          "images), or leave data.pseudo_labels empty to train without them")
    x, y = _stack(samples, d)
    drawn = (f"{min(asked, len(samples))} drawn each epoch (data.pseudo_ratio {d.pseudo_ratio:g} per labelled image"
             + (f"; it asks {asked}, more than were kept)" if asked > len(samples) else ")"))
    log(f"self-training: {counted(len(samples), 'pseudo-labelled slice')} from {folder}, "
        + drawn)
    digest = file_sha256(folder / PSEUDO_FILE)
    return _Pseudo(x.half(), y.to(torch.uint8), digest)


def _pretrained_file(config: RunConfig, run_dir: Path, resume: bool, log, held_out: list[str]) -> Path | None:
    """The checked ``train.init`` file a new run holding out ``held_out`` starts from, or None. A resumed run takes
    its weights from ``last.pt``: it only refuses a ``train.init`` file that changed since it began (a moved one
    is noted)."""
    init = config.train.init
    if not init:
        return None
    if not resume:
        return check_pretrained(init, config, held_out)[0]
    began_with = read_run_info(run_dir, require_data=False).get("init_sha256")
    file = pretrained_path(init)
    if not file.is_file():
        log(f"note: the run began from {init}, which is gone; resuming from last.pt does not need it")
        return None
    if began_with is not None and file_sha256(file) != began_with:
        raise CovsegError(f"{run_dir}: its pretrained weights ({file}) changed since the run began; put them back "
                          "as they were, or train a new run")
    return None


def _refuse_reading_from_inside(run_dir: Path, reads: list[tuple[Path, str]]) -> None:
    """Refuse a new run into ``run_dir`` (which ``--force`` replaces) that reads one of ``reads`` (a file or folder
    and the setting that names it) from inside that folder: it would be deleted before it is read."""
    inside = run_dir.resolve()
    for path, setting in reads:
        if path.resolve() == inside or path.resolve().is_relative_to(inside):
            raise CovsegError(f"{run_dir}: this run reads {path} ({setting}) from inside its own folder, which a new "
                              "run replaces; write the new run to another -o")


def train_run(config: RunConfig, samples: list[Sample], run_dir: Path, data_path: str = "",
              resume: bool = False, force: bool = False, progress: bool = True,
              log=print, dist: DistContext = DistContext(), device: torch.device | None = None,
              again: str = "") -> RunResult:
    """Train ``config`` on ``samples`` into ``run_dir`` (new, or continued from ``last.pt`` with ``resume``).

    ``samples`` must carry masks in the config's label scheme. Ctrl-C ends the run after saving; the
    result then has ``stopped=True``, and ``interrupted`` where epochs remain to resume. With ``force`` a run
    folder already at ``run_dir`` is moved aside and deleted once the new run has saved its first epoch (from then
    on ``--resume`` continues the new run); stopped (Ctrl-C) or failed before that, the new run's folder is deleted
    and the old one put back as it was. Under ``torchrun`` pass the :class:`DistContext` (and device) from
    :func:`covseg.runtime.init_distributed`: the model is wrapped in DistributedDataParallel, each process
    trains on its share of every global batch, and only rank 0 writes files, logs and shows progress. ``again``
    is how to go on after Ctrl-C, for a caller that trains this run as one of several (``covseg cv``: run the same
    command again); by default the message names ``covseg train --resume`` or a new ``covseg train``. Ctrl-C before
    the first epoch began (the images loading) ends it so too, saying that nothing was trained and what is kept.
    """
    old = _OldRun(Path(run_dir))
    stage = _Stage()
    try:
        return _train_run(config, samples, Path(run_dir), data_path, resume, force, progress, log, dist, device, old,
                          again, stage)
    except KeyboardInterrupt as stop:
        if stage.training:  # after the epochs (curves.png): the epochs' own handler has said what is kept
            raise
        back = old.put_back()
        if dist.is_main:
            log(_stopped_before_training(stop, Path(run_dir), resume, back, stage.saved, config.train.epochs, again))
        saved = stage.saved or 0
        return RunResult(Path(run_dir), saved, config.train.epochs, None, stopped=True, epochs_before=saved,
                         terminated=isinstance(stop, Terminated))
    except BaseException:
        if old.put_back():
            log(f"{run_dir}: the new run stopped before it saved an epoch; the run that was there is back as it was")
        raise


@dataclass
class _Stage:
    """How far :func:`_train_run` got, for what a Ctrl-C before its epochs began has left."""

    training: bool = False  # the epochs have begun: a stop from then on is told by their own handler
    saved: int | None = None  # the epochs a resumed run's last.pt holds, once it is read


def _stopped_before_training(stop: KeyboardInterrupt, run_dir: Path, resume: bool, back: bool, saved: int | None,
                             total: int, again: str) -> str:
    """The line that says Ctrl-C (or SIGTERM, ``stop``) came while the images loaded, before any epoch trained, and
    what is kept: a resumed run as it was (``saved`` of ``total`` epochs), the run a ``--force`` run was to replace
    put back (``back``), or nothing to resume; then how to go on (``again``, else the ``covseg train`` to run)."""
    word = stop_word(stop)
    if resume:
        if saved is not None and saved >= total:
            return (f"{word} while loading the images; the run in {run_dir} has all its epochs "
                    f"({saved} of {total}), nothing to resume")
        kept = f" ({saved} of {total} epochs saved)" if saved is not None else ""
        return (f"{word} while loading the images, before training went on; {run_dir} is as it was{kept}; "
                + (again or f"continue with covseg train --resume {run_dir}"))
    if back:
        return (f"{word} while loading the images, before training began; the run that was in {run_dir} is back as "
                "it was, " + (f"nothing lost; {again}" if again else "nothing lost (train with --force again to "
                                                                      "replace it)"))
    return (f"{word} while loading the images, before training began, so there is nothing to resume; "
            + (again or f"start the run again (the same covseg train ... -o {run_dir}; no --force needed)"))


def _read_last(run_dir: Path, again: str) -> dict:
    """The ``last.pt`` a resumed ``run_dir`` goes on from (:func:`covseg.checkpoint.read_checkpoint`); a damaged one is
    refused saying so, and how to go on: train the run again (``again``: the caller's command), as a best.pt
    holds no optimiser state to resume from."""
    if again:
        way_on = f"remove {run_dir}; then, {again}"
    else:
        keep = (" (that deletes its best.pt too: copy it elsewhere first to keep it)"
                if (run_dir / "best.pt").is_file() else "")
        way_on = f"start the run again with covseg train ... -o {run_dir} --force{keep}"
    return read_checkpoint(run_dir / "last.pt", fix=f"{run_dir}'s last.pt is damaged, so the run cannot be "
                                                    f"resumed; {way_on}")


def _other_data(run_dir: Path, data_path: str, recorded: str | None, why: str, again: str) -> str:
    """Why a resumed run refuses the images of ``data_path`` (``why``: names missing, masks that differ), naming the
    data folder its run.json records (``recorded``) and how to go on."""
    if recorded is None:
        return (f"{run_dir}: {data_path} does not hold the images the run was trained on: {why}; pass the --data "
                "the run was made with")
    if Path(recorded).resolve() == Path(data_path).resolve():  # the same folder, changed since the run began
        return (f"{run_dir}: its data folder {recorded} no longer holds the images the run was trained on: {why}; "
                "put them back as they were, or " + (f"remove {run_dir} to train it again" if again else
                                                     f"start the run again with covseg train ... -o {run_dir} --force"))
    resume = (f"resume with --data {recorded} (or without --data)" if Path(recorded).is_dir() else
              f"resume with --data DIR, the folder that holds them now ({recorded} is not there any more)")
    return (f"{run_dir}: was trained on {recorded}, and --data {data_path} does not hold those images: {why}; "
            f"{resume}, or train a new run on {data_path} with -o NEW_RUN")


def _record_data(run_dir: Path, data_path: str, recorded: str | None, log) -> None:
    """Write ``data_path`` as the data folder of ``run_dir``'s run.json, where it records another (``recorded``):
    the run's images found at another path (checked by the caller), so evaluate and predict read them there."""
    here = str(Path(data_path).resolve())
    if recorded is not None and Path(recorded).resolve() == Path(here):
        return
    info = read_run_info(run_dir, require_data=False)
    info["data"] = here
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=1) + "\n")
    log(f"{run_dir}: its images are in {here} now" + (f", not {recorded}" if recorded else "")
        + "; run.json records that folder")


def _train_run(config: RunConfig, samples: list[Sample], run_dir: Path, data_path: str, resume: bool, force: bool,
               progress: bool, log, dist: DistContext, device: torch.device | None, old: _OldRun,
               again: str = "", stage: _Stage | None = None) -> RunResult:
    """:func:`train_run`'s work; a run folder that ``force`` replaces goes aside in ``old``, which is dropped once
    the first epoch is saved, and put back here where Ctrl-C stops the new run before that. ``stage`` is kept up to
    date with how far it got."""
    if not dist.is_main:
        progress = False
        log = lambda message: None  # noqa: E731
    stage = stage or _Stage()
    d, t = config.data, config.train
    scheme = get_scheme(d.task)
    check_input_size(d.input_size, d.input_size, config.model.depth, config.model.name)
    build_model(config)  # refuse bad model options before anything is written
    _training_loss(t, np.ones(scheme.num_classes))
    lr_factor(t.schedule, 0, 1)
    # pseudo-labels are checked and loaded (on every process) before anything is written
    recorded: str | None = None  # the data folder a resumed run's run.json names
    state: dict = {}
    if resume:
        planned = load_split(run_dir / "split.json")
        state = _read_last(run_dir, again)  # a damaged one is told before the images load
        stage.saved = int(state.get("epoch", 0))
        check_checkpoint_settings(run_dir, state, config)
        recorded = read_run_info(run_dir, require_data=False).get("data")
        recorded = recorded if isinstance(recorded, str) else None
        data_path = data_path or recorded or ""
    else:
        planned = make_split([s.name for s in samples], d.split, d.split_seed, d.folds, d.val_fraction)
    held_out = list(planned.get("val", [])) + list(planned.get("test", []))
    reader = "train.consistency" if t.consistency > 0 else "data.pseudo_labels" if d.pseudo_labels else ""
    if reader and not data_path:  # a library call: the working directory is no data folder
        raise CovsegError(f"{reader} reads the unlabelled slices of the data folder, and none was given; pass "
                          "data_path, the folder the samples were loaded from")
    pretrained = _pretrained_file(config, run_dir, resume, log, held_out)
    pseudo = _pseudo_slices(config, planned, data_path, log, resume)
    if t.consistency > 0 and dist.enabled:
        raise CovsegError("train.consistency is single-process only; train without torchrun, or set train.consistency=0")
    if t.distill and dist.enabled:
        raise CovsegError("train.distill is single-process only; train without torchrun, or leave train.distill empty")
    if dist.enabled and planned.get("train"):  # before anything is written (train_one_epoch checks each epoch)
        n_train = len(planned["train"])  # each epoch trains on them and its draw of pseudo-labelled slices
        drawn = min(len(pseudo.images), pseudo_slices_asked(n_train, d.pseudo_ratio)) if pseudo is not None else 0
        check_data_parallel(t.batch_size, n_train + drawn, dist.world_size)
    teachers = None
    if t.distill:  # checked before anything is written
        teachers = load_teachers(config, held_out)
    if resume and teachers is not None and \
            read_run_info(run_dir, require_data=False).get("distill_sha256") != teachers.digests:
        raise CovsegError(f"{run_dir}: its teachers ({t.distill}) changed since the run began; put them back as they "
                          "were, or train a new run")
    unlabelled = load_unlabelled(config, data_path, log)
    if resume and unlabelled is not None:
        check_unlabelled_unchanged(run_dir, read_run_info(run_dir, require_data=False).get("unlabelled"),
                                   unlabelled.record)
    if resume and pseudo is not None and \
            read_run_info(run_dir, require_data=False).get("pseudo_labels_sha256") != pseudo.digest:
        raise CovsegError(f"{run_dir}: its pseudo-labels ({d.pseudo_labels}) changed since the run began; "
                          "make them again as they were, or train a new run")
    device = device or resolve_device(t.device)  # a device or precision that cannot run is refused before writing
    dtype = resolve_precision(t.precision, device)
    if not resume:
        check_new_run(config)  # for new runs only: a run trained so before these checks still loads and resumes
        if not planned.get("train"):
            raise CovsegError(f"split {d.split} leaves no training images (data.val_fraction {d.val_fraction:g} of "
                              f"{len(samples)}); lower data.val_fraction or use another --split")
        if parse_split_name(d.split)[0] == "official" and d.val_fraction > 0 and not planned.get("val"):
            raise CovsegError(f"split {d.split}: data.val_fraction {d.val_fraction:g} of "
                              f"{counted(len(samples), 'image')} rounds to no validation image; raise it, or set "
                              "data.val_fraction=0 to train without one")
        reads = [(pretrained, "train.init"), *((f, "train.distill") for f in (teachers.files if teachers else ())),
                 *([(resolve_pseudo_folder(d.pseudo_labels, d.split), "data.pseudo_labels")] if d.pseudo_labels else []),
                 *([(data_path, "--data")] if data_path else []),
                 *((f, "the unlabelled slices of train.consistency")
                   for f in (unlabelled.folders if unlabelled else ()))]
        _refuse_reading_from_inside(run_dir, [(Path(f), what) for f, what in reads if f is not None])
    failure: BaseException | None = None  # what the main process alone met writing the new run's folder
    if not resume and dist.is_main:
        try:  # any exception, not only a refusal: the other processes wait for word of it at the broadcast below
            info = {"pseudo_labels_sha256": pseudo.digest} if pseudo is not None else {}
            if pretrained is not None:
                info["init_sha256"] = file_sha256(pretrained)
            if teachers is not None:
                info["distill"], info["distill_sha256"] = [str(f) for f in teachers.files], teachers.digests
            if unlabelled is not None:
                info["unlabelled"] = unlabelled.record
            _prepare_folder(run_dir, config, samples, data_path, force, old, log, info)
        except BaseException as err:
            failure = err
    raise_on_every_rank(failure, dist)  # every process raises the main one's failure; else a barrier
    if not dist.is_main and not (run_dir / "split.json").is_file():  # rank 0 wrote it on a disk this node lacks
        raise CovsegError(f"{run_dir}: rank {dist.rank} of this torchrun job does not find the split.json rank 0 "
                          "wrote there; on several nodes give -o a folder on a file system every node shares, at the "
                          "same path on each")
    split = load_split(run_dir / "split.json")
    weights = read_class_weights(run_dir, d.task)

    by_name = {s.name: s for s in samples}
    missing = [n for n in split["train"] + split["val"] if n not in by_name]
    if missing:
        raise CovsegError(_other_data(run_dir, data_path, recorded, f"split.json names "
                                      f"{counted(len(missing), 'image')} not there (first: {missing[0]})", again))
    train = [by_name[n] for n in split["train"]]
    val = [by_name[n] for n in split["val"]]
    if not train:
        raise CovsegError("the training split is empty; use more images or another --split")
    if resume:  # the same names with other pixels (another --data) would continue the run on other images
        if not _same_masks(train, weights, scheme.num_classes):
            raise CovsegError(_other_data(run_dir, data_path, recorded, "the training masks there are not the ones "
                                          "the run began with (their class weights differ from class_weights.json)",
                                          again))
        if data_path and dist.is_main:  # the run's images at another path (moved): evaluate reads them there
            _record_data(run_dir, data_path, recorded, log)
    log("class weights (median frequency): " + ", ".join(f"{n} {w:.3f}" for n, w in zip(scheme.names, weights)))
    train_x, train_y = _stack(train, d)
    val_x, val_y = _stack(val, d) if val else (None, None)

    if t.threads > 0:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    core = build_model(config)
    if pretrained is not None:
        fresh = init_from_pretrained(core, pretrained, config)
        heads = ", ".join(sorted({k.split(".")[0] for k in fresh}))
        kept = "the encoder's" if t.init_parts == "encoder" else "its"
        log(f"{kept} weights from {pretrained}; " + (f"afresh: {heads}" if fresh else "every tensor copied"))
    core = core.to(device).to(memory_format=training_memory_format(device))
    model = core
    if dist.enabled:
        if device.type == "cuda":
            core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
        model = torch.nn.parallel.DistributedDataParallel(core, device_ids=[device] if device.type == "cuda" else None)
    averaged = weight_average(core, t.ema) if t.ema > 0 else None
    swa = epoch_average(core) if t.swa_epochs else None
    consistency = (ConsistencyTerm(unlabelled.images, weight_average(core, t.teacher_decay), t.consistency_batch,
                                   t.consistency, t.consistency_norm) if unlabelled is not None else None)
    distill = None
    if teachers is not None:
        distill = DistillTerm(teachers.networks, t.distill_weight, t.distill_temperature, device, dtype)
        count = len(teachers.files)
        log(f"distillation: {counted(count, 'teacher')} ({', '.join(str(f) for f in teachers.files)}), "
            f"weight {t.distill_weight:g}, temperature {t.distill_temperature:g}")
    optimizer = make_optimizer(model, t)
    loss_fn = _training_loss(t, weights).to(device)
    if config.model.deep_supervision:
        loss_fn = DeepSupervisionLoss(loss_fn)
    history: list[dict[str, float]] = []
    best: float | None = None
    if resume:
        _resume_into(core, state, "model", "model weights", run_dir)
        _resume_into(optimizer, state, "optimizer", "optimizer state", run_dir)
        history = list(state.get("history", []))
        best = state.get("best")
        if dist.is_main:  # a process killed between writing last.pt and history.csv left history.csv one epoch behind
            _write_history(run_dir, history)
        if averaged is not None:  # last.pt holds the average of its own epoch (ema.pt may be one ahead)
            _resume_into(averaged.module, state, "ema", "weight average", run_dir, " though train.ema is on")
            averaged.n_averaged.fill_(1)  # past the first update, which copies the model
        if swa is not None:
            _resume_into(swa.module, state, "swa", "weight average", run_dir, " though train.swa_epochs is on")
            if not isinstance(state.get("swa_n"), int):
                raise CovsegError(f"{run_dir / 'last.pt'} holds no count of its averaged epochs (swa_n) though "
                                  f"train.swa_epochs is on; {_TRAIN_AGAIN}")
            swa.n_averaged.fill_(state["swa_n"])
        if consistency is not None:
            _resume_into(consistency.teacher.module, state, "teacher", "teacher", run_dir,
                         " though train.consistency is on")
            consistency.teacher.n_averaged.fill_(1)
        if "rng" in state:  # dropout's draws carry on where the interrupted run left them
            torch.set_rng_state(state["rng"])
            if device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
    start = len(history)
    finished = start >= t.epochs  # a finished run resumed: nothing to train (the caller says so: RunResult's epochs)
    if not finished:  # no "epochs 4..3"
        log(f"training {config.model.name} ({parameter_count(sum(p.numel() for p in core.parameters()))} parameters) "
            f"on {counted(len(train), 'image')}, "
            + (_validation_note(len(val), t) if val else "no validation images (best.pt: the last epoch)")
            + f", {d.input_size}x{d.input_size}, "
            f"{device.type} {str(dtype).removeprefix('torch.')}, epochs {start + 1}..{t.epochs}"
            + _progressive_note(t) + (f", {dist.world_size} processes" if dist.enabled else ""))
    began = time.perf_counter()
    # the bar is stepped by hand, not iterated: a loop over the bar left by Ctrl-C closes it (drawn again, kept)
    # before the message below could wipe it
    stage.training = True
    bar = tqdm(desc="train", unit="epoch", disable=not progress or finished, initial=start, total=t.epochs,
               dynamic_ncols=True)
    epoch = start
    stopped = terminated = False
    # the bar shows the latest validation Dice, not the nan of the epochs train.val_every skips
    shown_dice = next((r["val_dice"] for r in reversed(history) if math.isfinite(r["val_dice"])), None)
    try:
        for epoch in range(start, t.epochs):
            tick = time.perf_counter()
            epoch_x, epoch_y = train_x, train_y
            if pseudo is not None:
                pick = epoch_pseudo_indices(len(pseudo.images), len(train_x), d.pseudo_ratio, t.seed, epoch)
                epoch_x = torch.cat([train_x, pseudo.images[pick].float()])
                epoch_y = torch.cat([train_y, pseudo.labels[pick].long()])
            fit = train_one_epoch(model, loss_fn, optimizer, epoch_x, epoch_y, t, epoch, device, dtype, dist, averaged,
                                  consistency, distill)
            if val_x is not None and ((epoch + 1) % t.val_every == 0 or epoch + 1 == t.epochs):
                res = validate(core, loss_fn, val_x, val_y, scheme.num_classes, t.batch_size, device, dtype, t.types_only)
            else:
                res = type(fit)(float("nan"), float("nan"), float("nan"))
            if swa is not None and epoch >= t.epochs - t.swa_epochs:
                swa.update_parameters(core)
                # every process passes every training slice: synchronised batch norm is a collective call, and
                # identical batches on every rank leave the statistics those of one pass
                if epoch + 1 == t.epochs:
                    recompute_batch_norm(swa.module, train_x, t.batch_size, device, dtype)
            row = {"epoch": epoch + 1, "train_loss": fit.loss, "train_acc": fit.accuracy,
                   "val_loss": res.loss, "val_acc": res.accuracy, "val_dice": res.dice,
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - tick}
            score = res.dice if math.isfinite(res.dice) else None
            with interrupts_deferred():  # the epoch counts once best.pt, last.pt and history.csv all hold it
                history.append(row)
                is_best = score is not None and (best is None or score > best)
                if is_best:
                    best = score
                if dist.is_main:
                    if is_best:
                        save_checkpoint(run_dir / "best.pt", core, config, epoch + 1, score)
                    extra = {}
                    if averaged is not None:
                        network = averaged_network(averaged, core)
                        save_checkpoint(run_dir / "ema.pt", network, config, epoch + 1, None)
                        extra["ema"] = cpu_state_dict(network)
                    if consistency is not None:
                        extra["teacher"] = cpu_state_dict(consistency.teacher.module)
                    if swa is not None:
                        extra["swa"], extra["swa_n"] = cpu_state_dict(swa.module), int(swa.n_averaged)
                        if epoch + 1 == t.epochs:
                            save_checkpoint(run_dir / "swa.pt", swa.module, config, epoch + 1, None)
                    extra["rng"] = torch.get_rng_state()  # the global stream dropout draws from
                    if device.type == "cuda":
                        extra["cuda_rng"] = torch.cuda.get_rng_state(device)
                    save_checkpoint(run_dir / "last.pt", core, config, epoch + 1, score,
                                    optimizer=optimizer.state_dict(), history=history, best=best, **extra)
                    _write_history(run_dir, history)
                    old.drop()  # the new run can be resumed now: the run it replaces goes
            if math.isfinite(res.dice):
                shown_dice = res.dice
            postfix = {"loss": f"{fit.loss:.3f}"}
            if val_x is not None:  # no validation images: no Dice to show
                postfix["val_dice"] = f"{shown_dice:.3f}" if shown_dice is not None else "-"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
        epoch = t.epochs
    except KeyboardInterrupt as stop:
        close_bar(bar, failed=True)  # the message below starts its own line, and no bar follows it
        epoch, stopped, terminated = len(history), True, isinstance(stop, Terminated)
        word = stop_word(stop)  # what stopped it, as the program says
        if epoch >= t.epochs:  # Ctrl-C came while the last epoch's files were written: the run is finished
            saved = "its 1 epoch was" if t.epochs == 1 else f"all {t.epochs} epochs were"
            log(f"{word} after {saved} saved; the run is finished, nothing to resume")
        elif old.put_back():
            log(f"{word} before the first epoch was saved; the run that was in {run_dir} is back as it was, "
                + (f"nothing lost; {again}" if again else "nothing lost (train with --force again to replace it)"))
        elif (run_dir / "last.pt").is_file():
            log(f"{word}: {epoch} of {t.epochs} epochs saved; "
                f"{again or f'continue with covseg train --resume {run_dir}'}")
        else:
            log(f"{word} before the first epoch was saved, so there is nothing to resume; " + (again or
                f"start the run again (the same covseg train ... -o {run_dir}; no --force needed)"))
    except BaseException:
        close_bar(bar, failed=True)
        raise
    finally:
        bar.close()
    if history and dist.is_main:
        from covseg.figures import plot_curves  # matplotlib: imported by training, not by predict (which reads runs)

        plot_curves(history, run_dir / "curves.png", title=f"{config.model.name} · {d.task} · {d.split}")
    if val_x is None and len(history) == t.epochs and dist.is_main and (run_dir / "last.pt").exists():
        # No validation images: the last epoch's weights are the ones to use (once every epoch is saved).
        save_checkpoint(run_dir / "best.pt", core, config, len(history), None)
    best_epoch = next((int(r["epoch"]) for r in history if best is not None and r["val_dice"] == best), None)
    averaged_model = swa is not None and len(history) == t.epochs and (run_dir / "swa.pt").is_file()
    return RunResult(run_dir, len(history), t.epochs, best, stopped, time.perf_counter() - began, start,
                     terminated, best_epoch, "swa.pt" if averaged_model else "", t.swa_epochs if averaged_model else 0,
                     unlabelled.images.shape[0] if unlabelled is not None else 0)
