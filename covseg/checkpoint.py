"""Checkpoints: a model's weights plus everything needed to rebuild and use it, loaded without pickle.

A checkpoint is a ``torch.save``d dict of tensors and plain Python values, read back with
``torch.load(weights_only=True)``:

    ``format``  "covseg-checkpoint-1"
    ``config``  the run's resolved config (nested dict, see :mod:`covseg.config`)
    ``model``   the model's ``state_dict``
    ``epoch``   epochs completed; ``score`` validation mean foreground Dice (or None)
    ``optimizer`` state, ``history``, ``best`` and, with ``train.ema``, ``ema`` (the weight average's
    ``state_dict``), with ``train.swa_epochs``, ``swa`` and ``swa_n`` (SWA's average so far and how many epochs
    it holds), and ``rng`` (with ``cuda_rng`` on a GPU: torch's global random state, which dropout draws from):
    ``last.pt`` only, for ``--resume``
"""
from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from covseg import __version__
from covseg.config import ModelConfig, RunConfig, config_from_dict, config_to_dict
from covseg.errors import CovsegError
from covseg.fileio import atomic_path
from covseg.labels import get_scheme
from covseg.models import create_model

__all__ = ["FORMAT", "cpu_state_dict", "save_checkpoint", "load_weights_file", "read_checkpoint", "check_checkpoint",
           "checkpoint_config", "build_model", "load_model", "find_checkpoint", "epochs_done", "refuse_unfinished",
           "weights_mismatch", "error_first_line", "cut_at_word"]

FORMAT = "covseg-checkpoint-1"


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict, detached and on the CPU (what a checkpoint stores)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(path: Path, model: nn.Module, config: RunConfig, epoch: int, score: float | None,
                    **state: Any) -> None:
    """Write a checkpoint atomically (``state``: e.g. ``optimizer=opt.state_dict()``).

    A write that fails (a full disk: ``torch.save`` raises RuntimeError "... file write failed" or "unexpected pos",
    or an OSError) raises a one-line :class:`CovsegError` naming ``path``; the temporary file is removed and a
    checkpoint already at ``path`` is left as it was."""
    payload = {"format": FORMAT, "version": __version__, "config": config_to_dict(config),
               "model": cpu_state_dict(model),
               "epoch": epoch, "score": score, **state}
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (RuntimeError, OSError) as err:
        kept = f"; the {Path(path).name} already there is kept as it was" if Path(path).is_file() else ""
        run_dir = Path(path).parent
        then = (f" (or train to another folder with -o) and resume with covseg train --resume {run_dir}"
                if (run_dir / "config.yaml").is_file() else "")  # a run folder, not some other checkpoint's place
        raise CovsegError(f"{path}: the checkpoint could not be written ({error_first_line(err)}); is the disk full? "
                          f"Free space on it{then}{kept}") from None


def error_first_line(err: BaseException, limit: int = 120) -> str:
    """``err``'s type and the first line of its message, cut to about ``limit`` characters at a word."""
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else ""
    why = f"{type(err).__name__}: {first}" if first else type(err).__name__
    return cut_at_word(why, limit)


def cut_at_word(text: str, limit: int) -> str:
    """``text`` as it is when it has at most ``limit`` characters, else its longest start that ends at a word and
    leaves room for `` …`` after it (a start with no space in it is cut at ``limit - 2`` characters)."""
    if len(text) <= limit:
        return text
    head = text[:limit - 1]  # a space at its end ends a whole word that fits with " …"
    cut = head.rsplit(" ", 1)[0].rstrip() if " " in head else text[:limit - 2]
    return f"{cut} …"


def find_checkpoint(path: str | Path, which: str = "auto", choosable: bool = True) -> Path:
    """A checkpoint file as it is, or one of a run folder's checkpoints.

    ``which``: ``best`` (``best.pt``, chosen on the validation images; ``last.pt`` where there is none),
    ``last``, ``ema`` or ``swa`` (that file); ``auto``, the run's model: ``swa.pt`` where the run averaged its
    weights (``train.swa_epochs``), else ``best.pt``; ``final``, the run's model chosen without its validation
    images: ``swa.pt``, else ``last.pt``. A checkpoint file is taken as it is under ``auto`` and ``final``, and
    under a ``which`` that names it (``best`` for ``best.pt``); another ``which`` is refused, not ignored. A run
    folder without the checkpoint asked for is refused naming those it holds and, where the caller's command takes
    ``--checkpoint`` (``choosable``), how to pick one.
    """
    path = Path(path)
    if path.is_dir():
        if which in ("auto", "final"):
            which = "swa" if (path / "swa.pt").is_file() else "best" if which == "auto" else "last"
        candidate = path / f"{which}.pt"
        if not candidate.is_file() and which == "best":
            candidate = path / "last.pt"
        if not candidate.is_file() and which == "ema":
            raise CovsegError(f"{path}: no ema.pt in this folder; only runs trained with train.ema=DECAY "
                              "(e.g. 0.99) have one")
        if not candidate.is_file() and which == "swa":
            raise CovsegError(f"{path}: no swa.pt in this folder; only finished runs trained with train.swa_epochs=N "
                              "train.swa_lr=LR have one")
        if not candidate.is_file():
            held = [name for name in ("best", "last", "swa", "ema") if (path / f"{name}.pt").is_file()]
            hint = ("; is it a finished covseg run?" if not held else
                    f"; it holds {', '.join(f'{name}.pt' for name in held)}: give --checkpoint {held[0]} or the file "
                    f"itself ({path / held[0]}.pt)" if choosable else
                    f"; it holds only {', '.join(f'{name}.pt' for name in held)}: is it a finished covseg run?")
            raise CovsegError(f"{path}: no {which}.pt in this folder{hint}")
        return candidate
    if not path.is_file():
        raise CovsegError(f"{path}: no such checkpoint or run folder")
    if which not in ("auto", "final") and path.stem != which:
        # the folder is named only where it is a run's (an exported .onnx may lie anywhere)
        where = (f"give its run folder ({path.parent}) or drop --checkpoint"
                 if (path.parent / "config.yaml").is_file() and (path.parent / "run.json").is_file()
                 else "drop --checkpoint")
        raise CovsegError(f"{path}: --checkpoint {which} picks one of a run folder's checkpoints, and this is a "
                          f"checkpoint file already; {where}")
    return path


_GIVE_ANOTHER = "give a .pt file that covseg train wrote, or its run folder"  # a refused checkpoint's way on


def load_weights_file(path: Path, what: str = "covseg checkpoint", fix: str = _GIVE_ANOTHER) -> Any:
    """``torch.load`` of ``path`` onto the CPU with ``weights_only=True`` (no pickled code); a file torch cannot
    read raises a one-line :class:`CovsegError` naming ``what`` it should have been and how to ``fix`` it.

    ``torch.load`` does not check the CRC-32 sums of the zip archive a ``.pt`` file is, so bytes changed on disk
    would load as silently wrong weights; the archive's sums are checked first (:func:`zipfile.ZipFile.testzip`)."""
    _check_archive_sums(path, what, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if first.startswith("Weights only load failed"):  # torch's long advice on weights_only, not the cause
            first = "not a PyTorch file, or one holding pickled objects beyond tensors"
        why = f"{type(err).__name__}: {first}" if len(first) > 8 else type(err).__name__  # not a bare "(101)"
        if not zipfile.is_zipfile(path):  # torch saves zip archives: this one is cut short or no .pt at all
            why = f"no zip archive, as torch saves them: cut short, damaged or another kind of file; {why}"
        why = cut_at_word(why, 120)
        raise CovsegError(f"{path}: not a readable {what} ({why}); {fix}") from None


def _check_archive_sums(path: Path, what: str, fix: str) -> None:
    """Refuse a zip-format ``.pt`` file whose members fail their CRC-32 sums (a file damaged on disk or in a
    copy). Files that are not zip archives (torch's legacy format) are left to ``torch.load``."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
        raise CovsegError(f"{path}: not a readable {what} (damaged archive: {err}); {fix}") from None
    if bad is not None:
        raise CovsegError(f"{path}: a damaged {what}: its part {bad!r} fails its CRC check (the file changed "
                          f"after it was written); {fix}")


def read_checkpoint(path: Path, fix: str = _GIVE_ANOTHER) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format: ``config`` a dict,
    ``model`` a state dict of finite tensors (a diverged run's NaN weights are refused, not loaded), ``epoch`` (where
    present) a whole number of epochs, not below 0. A file that fails these checks raises a one-line
    :class:`CovsegError` ending with how to go on, ``fix`` (a caller that reads a file of its own, as ``--resume``
    reads ``last.pt``, says what to do instead of giving another file)."""
    return check_checkpoint(load_weights_file(path, fix=fix), path, fix)


def check_checkpoint(data: Any, path: Path, fix: str = _GIVE_ANOTHER) -> dict[str, Any]:
    """``data``, the contents of the file at ``path``, checked as :func:`read_checkpoint` checks them; a refusal
    ends with ``fix``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        from covseg.pretrain import PRETRAINED_FORMAT  # covseg.pretrain imports this module

        if isinstance(data, dict) and data.get("format") == PRETRAINED_FORMAT:  # as train.distill words it
            raise CovsegError(f"{path}: a pretraining checkpoint (the weights covseg pretrain wrote), not a "
                              f"segmentation model; start a run from it with train.init={path}, or {fix}")
        raise CovsegError(f"{path}: not a covseg checkpoint (format {FORMAT} expected); {fix}")
    weights, config = data.get("model"), data.get("config")
    if not isinstance(config, dict):
        raise CovsegError(f"{path}: a covseg checkpoint without its run's settings ('config'); {fix}")
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CovsegError(f"{path}: a covseg checkpoint without model weights (its 'model' entry is not a "
                          f"state dict of tensors); {fix}")
    broken = next((k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if broken is not None:
        raise CovsegError(f"{path}: weights that are not finite numbers ({broken} holds NaN or inf; the training "
                          "diverged); retrain it, e.g. with a lower train.lr")
    epoch = data.get("epoch", 0)  # covseg train has always written it; only an edited file can lack it
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        shown = repr(epoch) if len(repr(epoch)) <= 40 and "\n" not in repr(epoch) else type(epoch).__name__
        again = ", or train it again" if fix == _GIVE_ANOTHER else ""
        raise CovsegError(f"{path}: a damaged covseg checkpoint (its 'epoch' entry, {shown}, is not a whole number "
                          f"of epochs); {fix}{again}")
    return data


def checkpoint_config(saved: Mapping[str, Any], file: Path) -> RunConfig:
    """The run settings of checkpoint contents ``saved`` (read from ``file`` by :func:`read_checkpoint`). Settings
    this covseg cannot read (an unknown option, a wrong type or value: a file edited, or written by another covseg
    version) raise a one-line :class:`CovsegError` saying so."""
    try:
        return config_from_dict(saved["config"], source="config")
    except CovsegError as err:
        raise CovsegError(f"{file}: its run settings cannot be read ({err}); give a .pt file that this covseg's "
                          "train wrote, or its run folder, or train it again") from None


def epochs_done(run_dir: Path) -> int:
    """The epochs ``run_dir/last.pt`` holds; 0 when there is none, or when it records none (an edited file; read as
    :func:`check_checkpoint` reads it)."""
    last = Path(run_dir) / "last.pt"
    return int(read_checkpoint(last).get("epoch", 0)) if last.is_file() else 0


def refuse_unfinished(file: Path, saved: Mapping[str, Any], planned: int, use: str) -> None:
    """Refuse the checkpoint ``saved`` (read from ``file``) of a run planned for ``planned`` epochs if it holds fewer:
    an unfinished run (still training, or stopped) is no teacher and no starting point. ``use`` begins the one-line
    error with what the checkpoint was given for (e.g. ``"train.distill: "``, or ``""``)."""
    if int(saved.get("epoch", 0)) < planned:
        raise CovsegError(f"{use}{file} holds epoch {saved.get('epoch')} of {planned}, an unfinished run; finish it "
                          f"first (covseg train --resume {Path(file).parent}) or give a finished run")


def architecture_options(model: ModelConfig) -> dict[str, Any]:
    """The keyword options of :func:`covseg.models.create_model` that ``model`` sets: width and depth, and for
    U-Net its normalisation, convolution block, bottleneck and decoder dropout, attention gates (SegNet always has batch norm and plain
    blocks, no dropout)."""
    options: dict[str, Any] = {"width": model.width, "depth": model.depth}
    if model.name == "unet":
        options.update(batch_norm=model.batch_norm, block=model.block, norm=model.norm, dropout=model.dropout,
                       decoder_dropout=model.decoder_dropout, attention=model.attention)
    return options


def build_model(config: RunConfig) -> nn.Module:
    """Instantiate the model described by ``config`` with the task's number of classes."""
    scheme = get_scheme(config.data.task)
    m = config.model
    return create_model(m.name, num_classes=scheme.num_classes, deep_supervision=m.deep_supervision,
                        **architecture_options(m))


def load_model(path: str | Path, which: str = "auto", task: str | None = None,
               model_name: str | None = None) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """Rebuild a model from a checkpoint or run folder; returns ``(model in eval mode, config, checkpoint)``.

    ``task`` / ``model_name``, when given, must match the checkpoint's, else a :class:`CovsegError`.
    """
    file = find_checkpoint(path, which)
    data = read_checkpoint(file)
    config = checkpoint_config(data, file)
    if task is not None and task != config.data.task:
        raise CovsegError(f"{file}: this model was trained for the {config.data.task} task, not {task}; "
                          f"use --task {config.data.task} or another model")
    if model_name is not None and model_name != config.model.name:
        raise CovsegError(f"{file}: this checkpoint holds a {config.model.name}, not a {model_name}")
    model = build_model(config)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as err:
        m = config.model
        raise CovsegError(f"{file}: its weights do not fit the {m.name} its settings describe (width {m.width}, depth "
                          f"{m.depth}, task {config.data.task}): {weights_mismatch(model.state_dict(), data['model'], err)}; "
                          "the file's weights and settings disagree (a checkpoint edited, or put together from two "
                          "runs); give the .pt file its run wrote, or train it again with the run's config.yaml "
                          "(covseg train --recipe RUN_DIR/config.yaml) or the recipe it was trained with") from None
    model.eval()
    return model, config, data


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(n) for n in tensor.shape) or "a scalar"


def weights_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor],
                     err: BaseException) -> str:
    """The first difference between the state dict a model ``expected`` and the one ``given`` (a key whose shape
    differs, one missing or one unexpected), with how many more there are; ``err``'s first line if none is found."""
    problems = [f"{k} is {_shape(given[k])} in the file but {_shape(v)} in that model"
                for k, v in expected.items() if k in given and given[k].shape != v.shape]
    problems += [f"{k} is missing from the file" for k in expected if k not in given]
    problems += [f"the file holds {k}, which that model has not" for k in given if k not in expected]
    if not problems:
        return error_first_line(err)
    more = len(problems) - 1
    return problems[0] + (f" (and {more} more difference{'s' if more > 1 else ''})" if more else "")
