"""The ``covseg`` command line: a thin shell over the library.

Every user-facing problem surfaces as ``covseg: error: <one line>`` and exit status 2; Ctrl-C exits 130
after saving what can be resumed.
"""
from __future__ import annotations

import argparse
import errno
import io
import os
import signal
import sys
from pathlib import Path
from typing import NamedTuple

from covseg import __version__
from covseg.config import (DataConfig, apply_overrides, available_recipes, check_override_words, load_recipe,
                           text_override)
from covseg.errors import CovsegError, Terminated, stop_word
from covseg.wording import counted

__all__ = ["main", "entry", "build_parser"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _default_data(dataset: str = "covid-semiseg") -> str:
    from covseg.download import dataset_root, default_data_dir, missing_required_files

    root = dataset_root(default_data_dir(), dataset)
    if not root.exists():
        raise CovsegError(f"no --data given and {root} does not exist; run `covseg download` first or pass --data DIR")
    missing, total = missing_required_files(dataset, root)
    if missing:  # a download that failed part-way keeps its verified files, to resume from
        raise CovsegError(f"no --data given and {root} is an unfinished download ({len(missing)} of {total} files "
                          f"missing, first {missing[0]}); run `covseg download` again (it resumes) or pass --data DIR")
    return str(root)


def _recipe_config(args: argparse.Namespace):
    import yaml

    def read(text: str) -> str:
        """An override's value as apply_overrides reads a text option (a quoted one unquoted)."""
        try:
            value = text_override(text)
        except (yaml.YAMLError, ValueError):  # left as typed: apply_overrides refuses it ("not a YAML value")
            return text.strip()
        return "" if value is None else str(value)

    overrides = list(args.overrides)
    task_overrides = [read(item.partition("=")[2]) for item in overrides if item.partition("=")[0] == "data.task"]
    config = load_recipe(args.recipe or "default", task=args.task or (task_overrides[-1] if task_overrides else None))
    given = {item.partition("=")[0]: item.partition("=")[2] for item in overrides}
    for flag, key, value in (("--task", "data.task", args.task), ("--split", "data.split", getattr(args, "split", None)),
                             ("--epochs", "train.epochs", getattr(args, "epochs", None)),
                             ("--device", "train.device", args.device), ("--precision", "train.precision", args.precision)):
        if value is None:
            continue
        if flag == "--epochs" and value < 1:  # named as given, not as the train.epochs it stands for
            raise CovsegError(f"--epochs {value}: a run trains at least 1 epoch; give --epochs 1 or more")
        if key in given and not _same_setting(read(given[key]), value):
            raise CovsegError(f"{flag} {value} and {key}={given[key]} contradict each other; give one of them")
        overrides.append(f"{key}={value}")
    # a setting refused names where it came from: an option such as --split cv:5 is an override here
    config = apply_overrides(config, overrides, source=f"the {args.recipe or 'default'} recipe with the options given")
    if config.data.pseudo_labels:  # saved absolute, so a resumed or re-run cv finds the same folder
        config.data.pseudo_labels = str(Path(config.data.pseudo_labels).resolve())
    if config.train.init:
        config.train.init = str(Path(config.train.init).resolve())
    if config.train.distill:  # each teacher, {fold} kept
        from covseg.distill import teacher_entries

        teachers = teacher_entries(config.train.distill)
        if teachers:  # only commas: left for train_run's "names no teacher"
            config.train.distill = ",".join(str(Path(part).resolve()) for part in teachers)
    return config


def _same_setting(text: str, value: object) -> bool:
    """Whether an override's ``text`` says the same as a flag's ``value`` (``train.epochs=1.0`` and ``--epochs 1``)."""
    if text == str(value):
        return True
    try:
        return isinstance(value, (int, float)) and float(text) == float(value)
    except ValueError:
        return False


def _refuse_overrides_set_by(args: argparse.Namespace, owners: dict[str, tuple[str, object]]) -> None:
    """Refuse a KEY=VALUE override of a setting the command itself sets, which would otherwise be dropped without
    a word. ``owners``: key -> (what sets it, the value it sets, or None where any override is refused)."""
    for item in args.overrides:
        key, _, text = item.partition("=")
        if key in owners and not (owners[key][1] is not None and _same_setting(text, owners[key][1])):
            raise CovsegError(f"{item}: covseg {args.command} sets {key} itself ({owners[key][0]}); drop the "
                              "override")


class _Member(NamedTuple):
    """An ensemble member as :func:`_refuse_repeated_models` compares them: the ``path`` given (or a cross-validation
    folder's fold run), the checkpoint ``file`` it resolves to (None for an ONNX file or one that does not resolve),
    that file's SHA-256 and its network's (``model``: :func:`covseg.export.model_sha256`, one for ``best.pt`` and
    ``last.pt`` of one epoch), or an ONNX file's metadata (``onnx``; None for a checkpoint)."""
    path: Path
    file: Path | None
    sha256: str | None
    onnx: dict[str, str] | None
    model: str | None = None


def _member(path: Path, which: str) -> _Member:
    """``path`` (a run folder, checkpoint or ONNX file) as :class:`_Member`, its checkpoint the one ``which`` picks.
    One that cannot be resolved or read keeps its path alone: opening it says what is wrong."""
    import torch

    from covseg.checkpoint import find_checkpoint
    from covseg.export import exported_metadata, model_sha256
    from covseg.fileio import file_sha256

    if path.suffix.lower() == ".onnx":
        return _Member(path, None, None, exported_metadata(path))
    try:
        file = find_checkpoint(path, which)
        sha256 = file_sha256(file)
    except (CovsegError, OSError):
        return _Member(path, None, None, None)
    try:  # the weights alone, mapped and unchecked (about half the time of a checked read): opening checks them
        network = model_sha256(torch.load(file, map_location="cpu", weights_only=True, mmap=True)["model"])
    except Exception:  # unreadable, or no covseg checkpoint: opening it says what is wrong
        network = None
    return _Member(path, file, sha256, None, network)


def _one_network(a: _Member, b: _Member) -> str | None:
    """Why ensemble members ``a`` and ``b`` are one network (a phrase for the refusal), or None when they are not
    known to be: one checkpoint file (``RUN`` and ``RUN/best.pt``), identical ones, or two holding one network
    (``best.pt`` and ``last.pt`` of one epoch), a checkpoint and an ONNX file exported from it or from another
    holding its network (``covseg_checkpoint_sha256``, ``covseg_model_sha256``), two ONNX files exported from one
    checkpoint or one network (float32 and int8 alike: the same weights, rounded or not) or with one graph and
    weights. ONNX files exported before covseg recorded these are compared by path alone."""
    if a.onnx is None and b.onnx is not None:
        a, b = b, a  # an ONNX file, if any, first
    if a.onnx is None and b.onnx is None:
        if a.file is None or b.file is None:
            return None
        if a.file.resolve() == b.file.resolve():
            return f"{a.path} and {b.path} are one checkpoint, {a.file}"
        if a.sha256 == b.sha256:
            return f"{a.path} and {b.path} hold identical checkpoints"
        return f"{a.path} and {b.path} hold one network's weights" if a.model and a.model == b.model else None
    if b.onnx is None:
        if b.sha256 is not None and a.onnx.get("covseg_checkpoint_sha256") == b.sha256:
            return f"{b.path}, and {a.path} exported from {'it' if b.path == b.file else 'its ' + b.file.name}"
        if b.model is not None and a.onnx.get("covseg_model_sha256") == b.model:
            return f"{b.path}, and {a.path} exported from a checkpoint holding its network's weights"
        return None
    origin = a.onnx.get("covseg_checkpoint_sha256")
    if origin is not None and origin == b.onnx.get("covseg_checkpoint_sha256"):
        precisions = {a.onnx.get("covseg_precision", "float32"), b.onnx.get("covseg_precision", "float32")}
        alike = ", an int8 and a float32 graph of one network" if len(precisions) > 1 else ""
        return f"{a.path} and {b.path}, exported from one {a.onnx.get('covseg_checkpoint', 'checkpoint')}{alike}"
    network = a.onnx.get("covseg_model_sha256")
    if network is not None and network == b.onnx.get("covseg_model_sha256"):
        return f"{a.path} and {b.path}, exported from checkpoints holding one network's weights"
    keys = ("covseg_weights_sha256", "covseg_graph_sha256")
    if all(key in a.onnx for key in keys) and all(a.onnx[key] == b.onnx.get(key) for key in keys):
        return f"{a.path} and {b.path} hold one graph with the same weights"
    return None


def _refuse_repeated_models(paths: list[Path] | None, what: str, which: str = "auto") -> None:
    """Refuse ``paths`` (``what``: how the command line names them) that name one model twice, which would weigh it
    twice in the ensemble: one path twice, directly or through a cross-validation folder's fold runs, or one network
    by two paths (:func:`_one_network`; a run folder stands for its checkpoint ``which``, as the command opens it)."""
    if not paths or len(paths) < 2:
        return
    from covseg.predict import ensemble_members

    seen: list[_Member] = []
    for path in ensemble_members(paths):
        if any(path.resolve() == earlier.path.resolve() for earlier in seen):
            raise CovsegError(f"{what} names a model twice ({path}, from {' '.join(map(str, paths))}); name each "
                              "once")
        member = _member(path, which)
        for earlier in seen:
            why = _one_network(earlier, member)
            if why:
                raise CovsegError(f"{what} names a model twice ({why}); keep one of them")
        seen.append(member)


def _evaluated_checkpoint(args: argparse.Namespace) -> str:
    """The checkpoint ``covseg evaluate`` opens of each run folder: ``--checkpoint``, or under ``auto`` the one
    :func:`covseg.experiment.own_checkpoint` picks for the first model. Worked out only where a model list names two
    or more, as only those are compared."""
    from covseg.experiment import own_checkpoint
    from covseg.predict import ensemble_members

    if args.checkpoint != "auto" or max(len(args.model), len(args.lesion_model or [])) < 2:
        return args.checkpoint
    return own_checkpoint(ensemble_members(args.model)[0], args.split)


def _add_training_options(p: argparse.ArgumentParser, split: bool = True, force: bool = True,
                          force_help: str = "overwrite an existing output folder", resume: bool = False) -> None:
    """The options every training command takes; ``split``: whether ``--split`` is one; ``force``: whether
    ``--force`` is listed (``force_help`` says what it does); ``resume``: whether the command has ``--resume``,
    which ``--device`` then also serves."""
    p.add_argument("--recipe", help=f"recipe name ({', '.join(available_recipes())}) or YAML path (default: default)")
    p.add_argument("--task", choices=("binary", "multiclass"), help="label scheme (default: the recipe's)")
    p.add_argument("--data", help="data folder (default: the downloaded covid-semiseg)")
    if split:
        p.add_argument("--split", help="official | cv:K | seed | paper (default: the recipe's)")
    p.add_argument("--epochs", type=int, metavar="N", help="shorthand for train.epochs=N")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"),
                   help="shorthand for train.device" + (" (with --resume: where the run goes on, its settings "
                                                         "unchanged)" if resume else ""))
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="shorthand for train.precision")
    # cv keeps --force only to refuse it with its own message (it never replaces folds), so its help hides it
    p.add_argument("--force", action="store_true",
                   help=force_help if force else argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides, e.g. train.lr=0.001 model.width=32 train.augment.hflip=0.5")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:  # else argparse's "invalid _positive_int value: '2.5'", naming this function
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def _seed(text: str) -> int:
    """A ``--seeds`` value; an override that ``nargs="+"`` swallowed after the seeds is told where it goes."""
    if "=" in text:
        raise argparse.ArgumentTypeError(f"{text} is an override, not a seed: put KEY=VALUE overrides before --seeds "
                                         "(or after another option)")
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # NaN fails the first test
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _add_inference_options(p: argparse.ArgumentParser, predict: bool = False) -> None:
    """The options of the commands that run models (``evaluate``; ``predict``, whose ``--backend`` help also says
    when a few slices keep PyTorch)."""
    few = ("; a predict of fewer than 32 2-D slices keeps PyTorch (16 with --tta: two passes each), as tracing would "
           "cost more" if predict else "")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="auto: onnx for a .onnx model file, else torch, with fp32 passes on a CPU run "
                        f"through ONNX Runtime (faster, same arithmetic{few}); torch: PyTorch only")
    p.add_argument("--tta", action="store_true", help="average with a left-right flipped prediction")
    p.add_argument("--lesion-model", type=Path, action="append", metavar="BINARY_MODEL",
                   help="a binary model (run, checkpoint, ONNX or cross-validation folder; repeat for an ensemble) "
                        "that says where the lesions are; the multiclass model then says only which lesion each is")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where the models run (default cpu; auto: a GPU where there is one)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 where the CPU/GPU has native support and it agrees with fp32, else fp32")
    p.add_argument("--batch-size", type=_positive_int, default=8, metavar="N",
                   help="slices per forward pass (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covseg", description="COVID-19 lung CT lesion segmentation "
                                     "(U-Net and SegNet): download, train, evaluate, compare, cross-validate, "
                                     "predict, export. `covseg COMMAND --help` lists a command's options.")
    parser.add_argument("--version", action="version", version=f"covseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download", help="fetch and verify a data set")
    p.add_argument("--dataset", default="covid-semiseg", help="data set to fetch (default: covid-semiseg)")
    p.add_argument("--mirror", help="local folder or http(s) URL to fetch from (default: $COVSEG_MIRROR, else upstream)")
    p.add_argument("--data-dir", type=Path, help="cache folder that holds the data set's folder, or that folder "
                                                  "itself (default: $XDG_CACHE_HOME/covseg, else ~/.cache/covseg)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model into a run folder")
    _add_training_options(p, force_help="replace the run in an existing -o folder (it trains again from the start)",
                          resume=True)
    p.add_argument("-o", "--output", type=Path, metavar="RUN_DIR", help="run folder to create (made if missing)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run in RUN_DIR with its saved settings (instead of -o)")

    p = sub.add_parser("evaluate", help="score a trained model (or an ensemble) on labelled images")
    p.add_argument("model", type=Path, nargs="+",
                   help="run folder, checkpoint or ONNX file; several, or a cross-validation folder, are "
                        "scored as one ensemble (mean probabilities)")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.add_argument("--split", default="heldout",
                   help="heldout (default) | val | test (the run's own test part, else the data set's test split) | "
                        "testset (the data set's test split always) | train | all")
    p.add_argument("--checkpoint", choices=("auto", "best", "last", "ema", "swa"), default="auto",
                   help="auto: swa.pt where the run averaged its weights (train.swa_epochs), else last.pt when "
                        "evaluating the validation images that chose best.pt, else best.pt; ema / swa: that weight "
                        "average (--lesion-model's models then need one too); a checkpoint other than auto's "
                        "reports to RUN_DIR/eval-SPLIT-NAME, beside the run's own")
    p.add_argument("--task", choices=("binary", "multiclass"), help="refuse a model trained for another task")
    p.add_argument("-o", "--output", type=Path,
                   help="report folder, into which metrics.md, per_image.csv, best_worst.png and metrics.json go "
                        "(default: RUN_DIR/eval-SPLIT[-CHECKPOINT][-tta]; a cv folder: "
                        "CV_DIR/eval-SPLIT[-CHECKPOINT][-tta]); one holding the report of other models, another "
                        "split, data folder or flip TTA is refused without --force, as is a default folder holding "
                        "the report of another data folder (give -o for a --data other than the run's)")
    p.add_argument("--force", action="store_true",
                   help="replace the report of another scoring in an existing report folder")
    _add_inference_options(p)

    p = sub.add_parser("compare", help="train and evaluate several models under identical settings")
    p.add_argument("--models", nargs="+", default=["unet", "segnet"],
                   help="models to train and compare (default: unet segnet); put KEY=VALUE overrides before --models; "
                        "NAME:KEY=VALUE gives one model its own model.* setting (e.g. segnet:model.depth=5)")
    _add_training_options(p, force_help="retrain the models' runs in an existing output folder instead of "
                          "reusing finished ones and resuming interrupted ones (its old comparison.md, .json and "
                          ".png are removed before the first model trains)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="comparison folder: a run folder per model, comparison.md, .json and .png")

    p = sub.add_parser("cv",
                       help="k-fold cross-validation of a recipe (skips finished folds, resumes interrupted ones)")
    _add_training_options(p, split=False, force=False)
    p.add_argument("--folds", type=int, metavar="K", help="number of folds (default: the recipe's data.folds, 5)")
    p.add_argument("--seeds", type=_seed, nargs="+", metavar="S",
                   help="repeat the cross-validation with each training seed (OUT/seed-S) and score each fold's "
                        "seed models as one ensemble (OUT/ensemble); summary in OUT/seeds.md. KEY=VALUE overrides "
                        "may not follow the seeds directly: put them before --seeds or after another option")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="train up to N folds (x seeds) at once, each in its own process with its share of the CPU "
                        "cores, then score them (default 1; for a GPU or a many-core CPU: on 2 cores keep 1)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="cross-validation folder: a run per fold (fold-K), cv.md and cv.json; run the same command "
                        "again to go on")

    p = sub.add_parser("cv-compare", help="paired per-image differences between two cross-validations of the "
                                          "same folds (a screen against the default)")
    either = " (or its seed-S folder, or one covseg train --split cv:K run)"
    p.add_argument("reference", type=Path, help="the baseline's `covseg cv` folder" + either)
    p.add_argument("candidate", type=Path, help="the screened recipe's `covseg cv` folder" + either)
    p.add_argument("--metrics", nargs="+", metavar="COLUMN",
                   help="per_image.csv columns (default: every per-class Dice the truths hold, e.g. dice_infection)")
    p.add_argument("-o", "--output", type=Path, help="also write the tables to this Markdown file")

    p = sub.add_parser("predict", help="segment images with a trained model")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders (PNG, JPG, TIFF, NIfTI, DICOM)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder for the label maps, overlays/ and predictions.json (several scans: OUT/<stem>/ each)")
    p.add_argument("--model", type=Path, action="append", required=True,
                   help="run folder, checkpoint or ONNX file; repeated (--model A --model B), or a "
                        "cross-validation folder, they predict as one ensemble (mean probabilities)")
    p.add_argument("--task", choices=("binary", "multiclass"), help="refuse a model trained for another task")
    p.add_argument("--no-overlays", action="store_true", help="2-D images: write no colour overlays")
    p.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID to read (default: the largest series)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size in mm: reads a folder of 2-D images as one scan")
    p.add_argument("--keep-outside-lungs", action="store_true",
                   help="scans: keep lesions that do not touch the lung mask")
    p.add_argument("--min-lesion-ml", type=_non_negative_float, metavar="ML",
                   help="scans: remove lesion components smaller than this volume (default 0.05 mL, "
                        "covseg.scan.ScanOptions; 0 keeps all)")
    _add_inference_options(p, predict=True)

    sub.add_parser("bench", help="speed/memory benchmark (covseg bench --help)", add_help=False)

    p = sub.add_parser("export", help="export a trained model to ONNX")
    p.add_argument("model", type=Path, help="run folder or checkpoint file")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--checkpoint", choices=("auto", "best", "last", "ema", "swa"), default="auto",
                   help="auto: swa.pt where the run averaged its weights (train.swa_epochs), else best.pt")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization (ONNX Runtime QDQ), calibrated on the run's training slices; "
                        "reports how many of the run's validation pixels (its training pixels when it has "
                        "none) keep the fp32 label")
    p.add_argument("--data", help="--int8: the data folder with the run's slices (default: the one it trained on)")
    p.add_argument("--force", action="store_true", help="replace an existing ONNX file at -o")

    p = sub.add_parser("pretrain", help="self-supervised pretraining on the unlabelled slices (start runs with "
                                        "train.init=DIR)")
    p.add_argument("--recipe", default="default", help=f"recipe whose network and normalisation to pretrain "
                                                       f"({', '.join(available_recipes())} or a YAML path)")
    p.add_argument("--task", choices=("binary", "multiclass"), help="the recipe's per-task settings to use")
    p.add_argument("--data", help="data folder with unlabelled slices (default: the downloaded covid-semiseg)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for pretrained.pt and history.csv")
    p.add_argument("--steps", type=_positive_int, default=600, help="optimiser steps (default 600)")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="slices per step (default 8)")
    p.add_argument("--crop", type=int, help="random square crop side (0: whole slices; default 256, or the input "
                                            "size where that is smaller)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak learning rate (cosine schedule; default 0.002)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the initial weights and of the slices, crops and corruptions drawn (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="shorthand for train.device")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="shorthand for train.precision")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. model.width=32")

    p = sub.add_parser("pseudo-label", help="label the unlabelled slices with a teacher (self-training)")
    p.add_argument("teacher", type=Path, help="run folder, or a cv folder (one teacher per fold -> OUT/fold-K)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder for masks/ and pseudo.json")
    p.add_argument("--data", help="data folder whose unlabelled slices to label (default: the teacher's)")
    p.add_argument("--checkpoint", choices=("final", "best", "last", "ema", "swa"), default="final",
                   help="teacher checkpoint (default final: swa.pt where the run averaged its weights, else last.pt; "
                        "a CV fold's best.pt was picked on its held-out images)")
    p.add_argument("--min-confidence", type=float, default=0.9,
                   help="keep a slice when the mean top-class probability over its lesion pixels is at least this "
                        "(default 0.9)")
    p.add_argument("--min-fraction", type=float, default=0.005,
                   help="least lesion area fraction to keep a slice (default 0.005)")
    p.add_argument("--max-fraction", type=float, default=0.5,
                   help="largest lesion area fraction to keep a slice (default 0.5)")
    p.add_argument("--match-grey", action="store_true",
                   help="map each unlabelled slice's grey levels onto those of the teacher's training slices "
                        "(histogram matching) before labelling it; students read them mapped the same way")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                   help="where the teacher runs (default cpu; auto: a GPU where there is one)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 where the CPU/GPU has native support and it agrees with fp32, else fp32")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _cmd_download(args: argparse.Namespace) -> int:
    from covseg.download import default_data_dir, download, resolve_mirror

    try:
        report = download(args.dataset, args.data_dir or default_data_dir(), resolve_mirror(args.mirror),
                          progress=not args.quiet)
    except KeyboardInterrupt as stop:  # the files verified so far are kept, and a half-fetched one over HTTP
        _log(f"{stop_word(stop)}; run the same covseg download again to go on (the files verified so far are not "
             "fetched again)")
        return 143 if isinstance(stop, Terminated) else 130
    print(report.summary())
    return 0


def _no_last_checkpoint(folder: Path) -> str:
    """Why ``train --resume FOLDER`` (a folder without ``last.pt``) has nothing to resume, and the way on: the folder
    is no run; a run that stopped before its first epoch was saved (``-o`` starts it again, no ``--force``); or one
    killed while that epoch was written (``-o`` refuses it without ``--force``)."""
    from covseg.run import is_run_folder, never_saved_an_epoch

    if not is_run_folder(folder):
        return (f"{folder}: not a covseg run folder (no config.yaml or run.json); give --resume the run folder "
                "covseg train -o wrote")
    again = f"covseg train ... -o {folder}" + ("" if never_saved_an_epoch(folder) else " --force")
    return f"{folder}: nothing to resume (no last.pt: no epoch was saved); start it again with {again}"


def _cmd_train(args: argparse.Namespace) -> int:
    from covseg.datasets import load_dataset, refuse_lesion_only_masks
    from covseg.fileio import refuse_output_in_data
    from covseg.run import read_run_config, read_run_info, train_run
    from covseg.runtime import close_distributed, init_distributed, resolve_device

    if args.resume:
        if args.output and args.output.resolve() != args.resume.resolve():  # RUN and ./RUN/ are one folder
            raise CovsegError("give either -o RUN_DIR for a new run or --resume RUN_DIR, not both")
        ignored = [flag for flag, value in (("--recipe", args.recipe is not None), ("--task", args.task),
                                            ("--split", args.split), ("--epochs", args.epochs is not None),
                                            ("--precision", args.precision), ("--force", args.force),
                                            ("KEY=VALUE", args.overrides)) if value]
        if ignored:
            raise CovsegError(f"--resume continues a run with its saved settings; drop {', '.join(ignored)} "
                              "(or start a new run with -o)")
        if not args.resume.is_dir():  # a mistyped path: not "nothing to resume" in a folder that is not there
            what = "is a file, not a run folder" if args.resume.exists() else "no such run folder"
            raise CovsegError(f"{args.resume}: {what}; give --resume the run folder covseg train -o wrote")
        if not (args.resume / "last.pt").is_file():
            raise CovsegError(_no_last_checkpoint(args.resume))
        config = read_run_config(args.resume)
        data = args.data or read_run_info(args.resume)["data"]
        if not args.data and not Path(data).exists():  # moved or deleted: which folder, and how to go on
            raise CovsegError(f"{args.resume}: the data folder it was trained on, {data} (its run.json), is not there; "
                              "give --data DIR, the folder that holds its images now (a downloaded data set: fetch it "
                              "again with covseg download)")
        run_dir, resume = args.resume, True
    else:
        if not args.output:
            raise CovsegError("say where the run goes: -o RUN_DIR (or --resume RUN_DIR)")
        if args.output.exists() and not args.output.is_dir():  # before the recipe and images: not mkdir's refusal
            raise CovsegError(f"{args.output}: is a file, not a run folder; give -o a folder for the run (it is made "
                              "if missing), or move the file")
        config = _recipe_config(args)
        data = args.data or _default_data()
        run_dir, resume = args.output, False
        refuse_output_in_data(run_dir, data)  # before the images load: its files would join the data's
    try:
        samples = load_dataset(data, config.data.task, split="train", window=config.data.window)
    except KeyboardInterrupt as stop:  # nothing is written before the images are read: say so, not just "interrupted"
        how = stop_word(stop)
        kept = (f"; {run_dir} is as it was; continue with covseg train --resume {run_dir}" if resume else
                "; run the same command again")
        _log(f"{how} while reading the images from {data}; nothing was written{kept}")
        return 143 if isinstance(stop, Terminated) else 130
    if not resume:  # before the run folder is made (a run begun so before this check still resumes)
        refuse_lesion_only_masks(samples, config.data.task, data)
    # --device with --resume: where to go on (a run trained on a GPU, resumed on a CPU), not a setting of the run
    dist, device = init_distributed(resolve_device(args.device if resume and args.device else config.train.device))
    try:
        result = train_run(config, samples, run_dir, data, resume=resume, force=args.force,
                           progress=not args.quiet, log=_log, dist=dist, device=device)
    except BaseException:
        close_distributed()
        raise
    # a stopped run (Ctrl-C, SIGTERM: torchrun passes it to every rank) skips the barrier: its ranks stopped at
    # different points, one maybe inside a collective the others will never join, and the barrier hung there until
    # torchrun killed them 30 s later; rank 0 has written its files by now
    close_distributed(wait_for_peers=not result.stopped)
    if result.stopped:  # Ctrl-C: 130 (SIGTERM: 143), also where the run was finished by then (nothing to resume);
        return 143 if result.terminated else 130  # on every rank, so torchrun and a scheduler see the stop's status
    if not dist.is_main:
        return 0
    print(result.summary(resume))
    return 0


def _print_summary(metrics: dict, out_dir: Path) -> None:
    from covseg.evaluation import foreground_called, format_interval, no_interval_reason

    dice = metrics["per_image"]["dice"]
    interval = metrics.get("per_image_ci95", {}).get("dice", {})  # absent from reports written before session 67

    def figure(name: str, value: float) -> str:
        bounds = format_interval(interval.get(name))
        if bounds:
            return f"{name} {value:.4f} (95 % CI {bounds})"
        return f"{name} {value:.4f}" + (f" (no CI: {no_interval_reason(metrics, name)})" if interval else "")

    parts = [figure(k, v) for k, v in dice.items() if k not in ("background", "mean_foreground") and v is not None]
    line = f"Dice (per image): {', '.join(parts)}"
    if not parts:  # no truth holds a lesion: no Dice to show, but the false positives are worth saying
        called = foreground_called(metrics)
        line = "no image's truth holds a lesion, so there is no Dice; the model called " + (
            ", ".join(f"{n} pixels {k}" for k, n in called.items()) + " (pooled precision 0)" if called
            else "no pixel a lesion")
    if len(parts) > 1 and dice["mean_foreground"] is not None:
        line += "; " + figure("mean_foreground", dice["mean_foreground"]).replace("mean_foreground", "mean", 1)
    line += f"; pixel accuracy {metrics['pixel_accuracy']:.4f}"
    if metrics.get("infnet"):
        line += f"; Inf-Net meanDic {metrics['infnet']['meanDic']:.4f}"
    print(line)
    print(f"report: {out_dir}/metrics.md")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from covseg.experiment import evaluate_run

    which = _evaluated_checkpoint(args)
    _refuse_repeated_models(args.model, "MODEL", which)
    _refuse_repeated_models(args.lesion_model, "--lesion-model", which)
    metrics, out_dir = evaluate_run(args.model, args.data, args.split, args.output, args.checkpoint, args.device,
                                    args.precision, args.batch_size, args.tta, args.task, args.backend,
                                    progress=not args.quiet, lesion_model=args.lesion_model, force=args.force)
    for caveat in metrics.get("caveats", []):
        print(f"covseg: warning: {caveat}", file=sys.stderr)
    _print_summary(metrics, out_dir)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from covseg.datasets import load_dataset, refuse_lesion_only_masks
    from covseg.experiment import compare_models

    models, own = [], {}
    for token in args.models:
        name, *settings = token.split(":")  # segnet:model.depth=5: that model's own model.* settings
        if any(not setting for setting in settings):
            raise CovsegError(f"--models {token}: an empty setting after ':'; give NAME:KEY=VALUE, e.g. "
                              "segnet:model.depth=5")
        models.append(name)
        if settings:
            own[name] = own.get(name, []) + settings
    settings = [name for name in models if "=" in name]
    if settings:
        raise CovsegError(f"--models took {' '.join(settings)} for model names; put KEY=VALUE overrides before "
                          "--models (or end the model list with --), or give one model its own as NAME:KEY=VALUE")
    if len(set(models)) != len(models):
        raise CovsegError(f"--models names a model twice ({' '.join(args.models)}); name each once")
    _refuse_overrides_set_by(args, {"model.name": ("one run per name in --models", None)})
    config = _recipe_config(args)
    data = args.data or _default_data()
    samples = load_dataset(data, config.data.task, split="train", window=config.data.window)
    refuse_lesion_only_masks(samples, config.data.task, data)
    compare_models(models, config, samples, data, args.output, args.force, not args.quiet, _log,
                   model_overrides=own or None)
    print((args.output / "comparison.md").read_text(encoding="utf-8"))
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from covseg.datasets import load_dataset, refuse_lesion_only_masks
    from covseg.experiment import check_folds, check_seeds, cross_validate, cross_validate_seeds

    if args.force:
        raise CovsegError("covseg cv resumes and reuses its folds and does not replace them (--force); remove "
                          f"{args.output} (or a fold-K in it) to train again, or give another -o")
    if args.seeds:
        check_seeds(args.seeds)
    owners: dict[str, tuple[str, object]] = {
        "data.split": ("each fold's cv:K", None),
        "data.val_fraction": ("each fold's cv:K, which never reads it", DataConfig().val_fraction)}
    if args.seeds:
        owners["train.seed"] = ("one cross-validation per --seeds entry", None)
    if args.folds is not None:
        owners["data.folds"] = (f"--folds {args.folds}", args.folds)
    _refuse_overrides_set_by(args, owners)
    config = _recipe_config(args)
    folds = config.data.folds if args.folds is None else args.folds  # KEY=VALUE data.folds=N counts too
    check_folds(folds)  # before the data loads
    data = args.data or _default_data()
    samples = load_dataset(data, config.data.task, split="train", window=config.data.window)
    refuse_lesion_only_masks(samples, config.data.task, data)
    if args.seeds:
        cross_validate_seeds(config, samples, data, args.output, folds, args.seeds, not args.quiet, _log,
                             jobs=args.jobs)
        print((args.output / "seeds.md").read_text(encoding="utf-8"))
        return 0
    cross_validate(config, samples, data, args.output, folds, not args.quiet, _log, jobs=args.jobs)
    print((args.output / "cv.md").read_text(encoding="utf-8"))
    return 0


def _cmd_cv_compare(args: argparse.Namespace) -> int:
    from covseg.fileio import atomic_write_text
    from covseg.paired import compare_cross_validations, format_comparison, unpaired_folds_warning

    if args.output and args.output.is_dir():
        raise CovsegError(f"{args.output}: is a folder; give -o a Markdown file name, e.g. {args.output / 'paired.md'}")
    for folder in (args.reference, args.candidate):  # its own cv.md, a fold's files: not for this table to replace
        if args.output and args.output.resolve().is_relative_to(folder.resolve()):
            raise CovsegError(f"{args.output}: is inside the cross-validation folder {folder}; give -o a Markdown "
                              "file outside both folders")
    comparison = compare_cross_validations(args.reference, args.candidate, args.metrics)  # refuses a run vs itself
    text = format_comparison(comparison, str(args.reference), str(args.candidate))
    if args.output:
        atomic_write_text(args.output, text)
    print(text, end="")
    warning = unpaired_folds_warning(comparison, args.reference, args.candidate)
    if warning:
        print(f"covseg: warning: {warning}", file=sys.stderr)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from covseg.labels import get_scheme
    from covseg.predict import (earlier_outputs, open_models, predict_files, predict_scan, scan_summary,
                                unlisted_outputs)
    from covseg.predict_plan import plan_predict
    from covseg.scan import ScanOptions

    _refuse_repeated_models(args.model, "--model")
    _refuse_repeated_models(args.lesion_model, "--lesion-model")
    scan_only = [flag for flag, value in (("--series", args.series), ("--spacing", args.spacing),
                                          ("--keep-outside-lungs", args.keep_outside_lungs or None),
                                          ("--min-lesion-ml", args.min_lesion_ml)) if value is not None]
    plan = plan_predict(args.inputs, args.output, args.series, args.spacing, overlays=not args.no_overlays,
                        scan_only=scan_only)
    # 2-D slices alone: their number decides whether tracing the model into ONNX Runtime pays (ONNX_MIN_SLICES);
    # a scan's slices are not counted before it is read, and a scan has many
    slices = None if plan.scans else len(plan.files)
    predictor, config, info = open_models(args.model, args.lesion_model, args.task, "auto", args.backend, args.device,
                                          args.precision, args.batch_size, args.tta, slices)
    scheme = get_scheme(config.data.task)
    chosen = {} if args.min_lesion_ml is None else {"min_lesion_ml": args.min_lesion_ml}
    options = ScanOptions(inside_lungs_only=not args.keep_outside_lungs, **chosen,
                          window=config.data.window)
    for scan, out in zip(plan.scans, plan.scan_outputs):
        report = predict_scan(scan, predictor, scheme, out, info, options, args.series, args.spacing,
                              progress=not args.quiet, together=plan.together)
        print(scan_summary(scan, report, out))
        for warning in report["warnings"]:
            print(f"covseg: warning: {warning}", file=sys.stderr)
    if plan.files:
        earlier = earlier_outputs(args.output)
        summary = predict_files(predictor, scheme, plan.files, args.output, info, overlays=not args.no_overlays,
                                progress=not args.quiet, window=config.data.window)
        print(f"wrote {counted(len(summary['images']), 'label map')} to {args.output}")
        left = unlisted_outputs(args.output, earlier, summary)
        if left:
            print(f"covseg: warning: {args.output}: {counted(len(left), 'label map')} of an earlier predict "
                  f"{'stays' if len(left) == 1 else 'stay'} there (e.g. {left[0]}), which predictions.json no longer "
                  "lists; remove them, or give -o a new folder",
                  file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from covseg.export import export_onnx
    from covseg.wording import agreement_percent
    from covseg.inference import BF16_MIN_AGREEMENT

    if args.data and not args.int8:
        raise CovsegError("--data is read only by --int8 (its calibration slices); drop it or add --int8")
    if args.output.is_dir():
        raise CovsegError(f"{args.output}: is a folder; give -o an ONNX file name, e.g. {args.output / 'model.onnx'}")
    meta = export_onnx(args.model, args.output, args.checkpoint, int8=args.int8, data=args.data, force=args.force)
    if args.int8:
        agreement = float(meta["covseg_int8_agreement"])
        print(f"int8 labels agree with fp32 on {agreement_percent(agreement)} of the pixels of "
              f"{meta['covseg_int8_checked_on']}")
        if agreement < BF16_MIN_AGREEMENT:
            print(f"covseg: warning: that is below the {BF16_MIN_AGREEMENT:.1%} covseg asks of bf16; compare the "
                  "int8 file's Dice with covseg evaluate before relying on it", file=sys.stderr)
    source = args.model / meta["covseg_checkpoint"] if args.model.is_dir() else args.model
    print(f"wrote {args.output} (from {source})")
    return 0


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from covseg.selftrain import PseudoLabelRule, make_pseudo_labels

    rule = PseudoLabelRule(args.min_confidence, args.min_fraction, args.max_fraction)
    make_pseudo_labels(args.teacher, args.output, args.data, rule, args.checkpoint, force=args.force,
                       progress=not args.quiet, log=_log, match_grey=args.match_grey, device=args.device,
                       precision=args.precision)
    print(f"wrote {args.output}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from covseg.consistency import warn_mask_like
    from covseg.datasets import load_dataset
    from covseg.fileio import refuse_output_in_data
    from covseg.pretrain import (PretrainOptions, check_options, check_output_folder, pretrain,
                                 refuse_unread_overrides)

    refuse_unread_overrides(args.overrides)  # the settings it never reads would be recorded, not used
    config = _recipe_config(args)
    data = args.data or _default_data()
    crop = min(256, config.data.input_size) if args.crop is None else args.crop
    options = PretrainOptions(steps=args.steps, batch_size=args.batch_size, crop=crop, lr=args.lr, seed=args.seed)
    check_options(options, config)
    check_output_folder(args.output, args.force)  # before the slices load
    refuse_output_in_data(args.output, data)
    slices = load_dataset(data, config.data.task, split="unlabelled", window=config.data.window)
    warn_mask_like(slices, "covseg pretrain")  # as train.consistency and covseg pseudo-label warn of them
    summary = pretrain(config, [s.image for s in slices], args.output, options, data, args.force,
                       progress=not args.quiet, log=_log)
    print(f"wrote {summary['file']} ({summary['steps']} steps in {summary['seconds']:.0f} s, restoration MSE "
          f"{summary['loss']:.4f}); start a run from it with train.init={args.output}")
    return 0


COMMANDS = {"download": _cmd_download, "train": _cmd_train, "evaluate": _cmd_evaluate,
            "compare": _cmd_compare, "cv": _cmd_cv, "cv-compare": _cmd_cv_compare, "predict": _cmd_predict,
            "export": _cmd_export, "pseudo-label": _cmd_pseudo_label, "pretrain": _cmd_pretrain}


def _file_in_the_way(err: OSError) -> Path | None:
    """The file that stands where ``err`` needed a folder: for mkdir's "File exists", ``err.filename`` itself; for
    "Not a directory" (a path through a file, ``-o FILE/run``), the first of ``err.filename`` and the folders above it
    that is a file. None for other errors, or where no such file is found."""
    if not isinstance(err, (FileExistsError, NotADirectoryError)) or not isinstance(err.filename, (str, bytes)):
        return None
    path = Path(os.fsdecode(err.filename))
    on_the_way = (path, *path.parents) if isinstance(err, NotADirectoryError) else (path,)
    return next((part for part in on_the_way if part.is_file()), None)


def _file_system_refusal(err: OSError) -> int:
    """Print a file system refusal on a path the user gave as the CLI's one-line error; returns the exit status."""
    where = f"{err.filename}: " if err.filename else ""
    blocker = _file_in_the_way(err)
    if blocker is not None:  # making a folder where a file is, or a path through a file: name that file
        print(f"covseg: error: {blocker} is a file, not a folder; give an output path outside it", file=sys.stderr)
        return 2
    if err.errno == errno.ELOOP:  # opening a path through a link that leads back to itself
        print(f"covseg: error: {where}is a symbolic link loop (a link that leads back to itself); remove it or give "
              "another path", file=sys.stderr)
        return 2
    print(f"covseg: error: {where}{err.strerror or err}; check the path and permissions", file=sys.stderr)
    return 2


def _symlink_loop(err: RuntimeError) -> str | None:
    """The path of Python 3.11-3.12's ``Path.resolve()`` error on a link that leads back to itself (``Symlink loop from
    '/out'``; later Pythons raise an OSError, ELOOP, instead), else None."""
    text = str(err)
    prefix = "Symlink loop from "
    if not text.startswith(prefix):
        return None
    quoted = text[len(prefix):]
    return quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] and quoted[0] in "'\"" else quoted


def _stdout_reader_gone() -> int:
    """End quietly, as a process killed by SIGPIPE would, once standard output's reader has gone (``covseg ... |
    head``): point standard output at ``os.devnull`` (so Python's flush at exit does not raise again, as Python's
    documentation on SIGPIPE advises) and return 141, the shell's status for SIGPIPE, with no message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a stream with no file descriptor (a test's, a wrapper's)
        pass
    finally:
        os.close(devnull)
    return 141


def _is_torch_out_of_memory(err: RuntimeError) -> bool:
    """Whether ``err`` is PyTorch running out of memory (``torch.cuda.OutOfMemoryError`` or the CPU allocator's
    "can't allocate memory" RuntimeError)."""
    text = str(err)
    return type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text or "out of memory" in text


def _out_of_memory(err: MemoryError) -> int:
    """Print running out of memory as the CLI's one-line error; returns the exit status."""
    what = " ".join(str(err).split()) or "an allocation failed"
    print(f"covseg: error: out of memory ({what}); check that the input's size and voxel size are what you expect, "
          "close other programs, or use a machine with more memory", file=sys.stderr)
    return 2


def _parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with a command's KEY=VALUE overrides taken wherever they stand among its options
    (argparse gives its ``nargs="*"`` positional only the first run of them: ``model.width=4 -o OUT model.depth=2``
    left ``model.depth=2`` unrecognised). Any other unknown argument gets the command's own usage line."""
    args, unknown = parser.parse_known_args(argv)
    overrides = [item for item in unknown if "=" in item and not item.startswith("-")]
    if hasattr(args, "overrides"):
        # spaces around an '=' (`train.lr = 0.1`), among the words as given: before a command's own checks (pretrain's)
        # read `train.lr` as a key, and before words with no '=' of their own are told apart as unrecognised
        check_override_words([*args.overrides, *(item for item in unknown if not item.startswith("-"))])
        args.overrides = [*args.overrides, *overrides]  # in the order given: the last of one key wins
        unknown = [item for item in unknown if item not in overrides]
    if unknown:
        # the command's own parser, for its usage line (argparse keeps its sub-parsers in this action only)
        commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
        commands.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 130 interrupted, 141 standard output's reader gone)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark has its own options (see covseg/bench.py)
        from covseg.bench import main as bench_main

        try:
            return bench_main(argv[1:], command="covseg bench")
        except SystemExit as refused:  # the benchmark's one-line refusals: the CLI's own form and status
            if not isinstance(refused.code, str):
                raise
            print(f"covseg: error: {refused.code.removeprefix('covseg bench: ')}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # stdout's reader left (`covseg bench | head`)
            return _stdout_reader_gone()
        except OSError as err:  # --out could not be written after all (a read-only file system, no space, …)
            return _file_system_refusal(err)
        except MemoryError as err:
            return _out_of_memory(err)
        except KeyboardInterrupt:  # its measuring child processes end with it; --out is written only at the end
            print("covseg: interrupted", file=sys.stderr)
            return 130
    parser = build_parser()
    if not argv:  # no command: the list of commands, each with what it does, rather than argparse's bare usage
        parser.print_help(sys.stderr)
        return 2
    try:
        args = _parse_args(parser, argv)
    except CovsegError as err:  # an override typed with spaces around its '=' (config.check_override_words)
        print(f"covseg: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    try:
        if args.command != "train":  # under torchrun every process would run the whole command
            from covseg.runtime import refuse_under_torchrun

            refuse_under_torchrun(args.command)
        return COMMANDS[args.command](args)
    except CovsegError as err:
        print(f"covseg: error: {' '.join(str(err).split())}", file=sys.stderr)  # always one line
        return 2
    except BrokenPipeError:  # stdout's reader left (`covseg ... | head`): not a file system refusal
        return _stdout_reader_gone()
    except OSError as err:  # a file system refusal on a path the user gave (exists, is a folder, no space, …)
        return _file_system_refusal(err)
    except MemoryError as err:  # numpy's "Unable to allocate 37 GiB ...": one line, not a traceback
        return _out_of_memory(err)
    except RuntimeError as err:  # PyTorch's allocators ("DefaultCPUAllocator: can't allocate memory", CUDA's own)
        loop = _symlink_loop(err)
        if loop is not None:
            print(f"covseg: error: {loop}: is a symbolic link loop (a link that leads back to itself); remove it or "
                  "give another path", file=sys.stderr)
            return 2
        from covseg.runtime import peer_failed

        if peer_failed(err):  # another torchrun process ended first (its own line says why)
            print("covseg: error: another process of this torchrun job stopped, so this one could not go on; its "
                  "own message says why", file=sys.stderr)
            return 2
        if not _is_torch_out_of_memory(err):
            raise
        return _out_of_memory(MemoryError(str(err).splitlines()[0][:200]))
    except KeyboardInterrupt as stop:
        return _stopped(stop)


def _stopped(stop: KeyboardInterrupt) -> int:
    """Say in one line that the program was stopped: Ctrl-C exits 130, SIGTERM (:class:`Terminated`) 143."""
    if isinstance(stop, Terminated):
        print("covseg: terminated (SIGTERM)", file=sys.stderr)
        return 143
    print("covseg: interrupted", file=sys.stderr)
    return 130


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _escape_unencodable_output() -> None:
    """Make standard output write what it cannot encode as backslash escapes (as standard error already does)
    instead of raising: a file name that is not UTF-8 (``M\\xfcller.nii.gz``, read by Python as lone
    surrogates) is printed in covseg's summary lines, and a strict UTF-8 stdout turned that into a traceback after
    the outputs were written. A process-wide setting, so only :func:`entry` makes it."""
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def entry(argv: list[str] | None = None) -> int:
    """The ``covseg`` program (console script, ``python -m covseg``): :func:`main` in a process whose glibc keeps
    freed memory for reuse (:func:`covseg.runtime.keep_freed_memory`, a process-wide setting; before the first large
    tensor), whose torch threads fit a container's CPU quota (:func:`covseg.runtime.fit_threads_to_cpu_quota`) and
    whose output escapes what it cannot encode (:func:`_escape_unencodable_output`), and in which SIGTERM raises
    :class:`~covseg.errors.Terminated` (exit status 143, after the same clean-up as Ctrl-C). :func:`main` itself
    leaves the allocator, the threads, the streams and the signal handlers alone, so a caller's process is not
    changed."""
    argv = sys.argv[1:] if argv is None else argv
    _escape_unencodable_output()
    signal.signal(signal.SIGTERM, _raise_terminated)  # cleaned up after as Ctrl-C is (errors.Terminated)
    try:  # a Ctrl-C while torch is still being imported is the CLI's too: one line, 130
        if argv[:1] != ["download"]:
            from covseg.runtime import fit_threads_to_cpu_quota, keep_freed_memory

            keep_freed_memory()
            fit_threads_to_cpu_quota()
    except KeyboardInterrupt as stop:
        return _stopped(stop)
    return main(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(entry())
