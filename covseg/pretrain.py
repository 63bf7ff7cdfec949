"""Self-supervised pretraining: a network learns to restore corrupted unlabelled slices, then starts a training run.

This is Models Genesis (Zhou et al., MICCAI 2019 / Medical Image Analysis 2021) in 2-D: every unlabelled slice
(COVID-SemiSeg's 1600 ``Pseudo-label/Imgs`` slices) is corrupted by a random mix of

* a non-linear grey-level curve (a random cubic Bezier curve, inverted half the time),
* local pixel shuffling (pixels permuted inside many small windows),
* in-painting (boxes filled with noise) or out-painting (everything outside a box filled with noise),

and the recipe's own architecture, with one output channel, learns to give back the original slice (mean
squared error after a sigmoid). No labels are read, so the same pretrained weights may start every fold of a
cross-validation. ``train.init=PRETRAIN_DIR`` then copies every weight whose name and shape match into the
segmentation network (all but its output heads, which start afresh) before its first epoch.

Output folder ``PRETRAIN_DIR``: ``pretrained.pt`` (format ``covseg-pretrained-1``: the network's
``state_dict``, the model and data settings it was made with, the steps done) and ``history.csv`` (loss per
logged step). Both are written into a staging folder beside ``PRETRAIN_DIR`` and moved there only when the
pretraining has finished, so an error or Ctrl-C leaves ``PRETRAIN_DIR`` as it was (a replaced one included).
"""
from __future__ import annotations

import csv
import functools
import hashlib
import io
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from covseg import __version__
from covseg.checkpoint import FORMAT as CHECKPOINT_FORMAT
from covseg.checkpoint import (architecture_options, check_checkpoint, checkpoint_config, cpu_state_dict,
                               load_weights_file, refuse_unfinished)
from covseg.config import MAX_LR, ModelConfig, RunConfig, config_from_dict, config_to_dict, data_differences
from covseg.distill import chosen_on_validation, held_out_seen
from covseg.errors import CovsegError, stop_word
from covseg.fileio import (atomic_dir, atomic_write_text, file_sha256, interrupts_deferred, left_as_it_was,
                           replacing_output)
from covseg.intensity import normalize_image
from covseg.paired import fold_runs
from covseg.models import check_input_size, create_model
from covseg.progress import close_bar
from covseg.runtime import autocast, resolve_device, resolve_precision, training_memory_format
from covseg.splits import split_settings
from covseg.training import lr_factor
from covseg.transforms import random_crop, stack_resized

__all__ = ["PRETRAINED_FORMAT", "PRETRAINED_FILE", "PRETRAIN_OUTPUTS", "PretrainOptions", "corrupt_slice",
           "corrupt_batch", "restoration_network", "check_options", "refuse_unread_overrides", "PRETRAIN_READS",
           "check_output_folder", "pretrain", "pretrained_path",
           "read_pretrained", "check_pretrained", "init_from_pretrained", "INIT_PARTS", "ENCODER_PREFIX"]

PRETRAINED_FORMAT = "covseg-pretrained-1"
PRETRAINED_FILE = "pretrained.pt"
INIT_PARTS = ("all", "encoder")  # train.init_parts
ENCODER_PREFIX = "encoders."  # the contracting path's tensors in U-Net and SegNet alike (covseg.models)
MIN_SIDE = 16  # the smallest slice side the corruptions take


@dataclass
class PretrainOptions:
    """The restoration task's budget and corruption probabilities (Models Genesis' defaults for the latter)."""

    steps: int = 600
    batch_size: int = 8
    crop: int = 256  # random square crop of each resized slice (0: the whole slice); a multiple of 2**depth, >= 16
    lr: float = 2e-3  # AdamW's peak learning rate, in (0, covseg.config.MAX_LR]
    weight_decay: float = 1e-4
    seed: int = 0
    nonlinear_rate: float = 0.9  # a random Bezier grey-level curve
    shuffle_rate: float = 0.5  # local pixel shuffling
    paint_rate: float = 0.9  # in-painting or out-painting
    outpaint_rate: float = 0.8  # share of the paintings that are out-paintings


# ---------------------------------------------------------------------------------------------------------------
# corruptions (numpy, one (H, W) float32 slice in [0, 1] at a time)

def _bezier_curve(rng: np.random.Generator, points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A cubic Bezier curve from (0, 0) to (1, 1) through two random control points: ``(xs, ys)``, xs ascending."""
    control = np.array([[0.0, 0.0], rng.random(2), rng.random(2), [1.0, 1.0]])
    t = np.linspace(0.0, 1.0, points)[:, None]
    basis = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t ** 2 * (1 - t), t ** 3], axis=1)
    curve = basis @ control
    return np.sort(curve[:, 0]), np.sort(curve[:, 1])


def _nonlinear(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    xs, ys = _bezier_curve(rng)
    if rng.random() < 0.5:
        ys = ys[::-1]  # an inverted curve: bright becomes dark
    return np.interp(image, xs, ys).astype(np.float32)


def _shuffle_locally(image: np.ndarray, rng: np.random.Generator, blocks: int = 500) -> np.ndarray:
    out = image.copy()
    height, width = image.shape
    for _ in range(blocks):
        # window sides from 1 up to a tenth of the slice's (at least 2), inclusive (Models Genesis' randint): an
        # exclusive bound left every window 1 x 1, a shuffle that changed nothing, on sides of 16-29
        bh, bw = rng.integers(1, max(2, height // 10) + 1), rng.integers(1, max(2, width // 10) + 1)
        top, left = rng.integers(0, height - bh + 1), rng.integers(0, width - bw + 1)
        window = out[top:top + bh, left:left + bw]
        out[top:top + bh, left:left + bw] = rng.permutation(window.reshape(-1)).reshape(bh, bw)
    return out


def _inpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = image.copy()
    height, width = image.shape
    for _ in range(5):
        bh = rng.integers(height // 6, height // 3 + 1)
        bw = rng.integers(width // 6, width // 3 + 1)
        top, left = rng.integers(3, height - bh - 2), rng.integers(3, width - bw - 2)
        out[top:top + bh, left:left + bw] = rng.random((bh, bw), dtype=np.float32)
        if rng.random() >= 0.95:
            break
    return out


def _outpaint(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = image.shape
    out = rng.random((height, width), dtype=np.float32)
    for _ in range(5):
        bh = height - rng.integers(3 * height // 7, 4 * height // 7 + 1)
        bw = width - rng.integers(3 * width // 7, 4 * width // 7 + 1)
        top, left = rng.integers(3, height - bh - 2), rng.integers(3, width - bw - 2)
        out[top:top + bh, left:left + bw] = image[top:top + bh, left:left + bw]
        if rng.random() >= 0.95:
            break
    return out


def corrupt_slice(image: np.ndarray, rng: np.random.Generator, options: PretrainOptions | None = None
                  ) -> np.ndarray:
    """A corrupted copy of one ``(H, W)`` float32 slice in [0, 1] (H, W ≥ 16): local pixel shuffling (windows of
    up to a tenth of each side, at least 2), then a Bezier grey-level curve, then in- or out-painting, each with its
    probability in ``options`` (default: :class:`PretrainOptions`'s)."""
    options = options or PretrainOptions()
    if min(np.shape(image)[-2:]) < MIN_SIDE:
        raise CovsegError(f"a {np.shape(image)[0]}x{np.shape(image)[1]} slice is too small to corrupt; "
                          f"pretraining needs slices and crops of at least {MIN_SIDE} pixels a side")
    out = np.array(image, dtype=np.float32)
    if rng.random() < options.shuffle_rate:
        out = _shuffle_locally(out, rng)
    if rng.random() < options.nonlinear_rate:
        out = _nonlinear(out, rng)
    if rng.random() < options.paint_rate:
        out = _outpaint(out, rng) if rng.random() < options.outpaint_rate else _inpaint(out, rng)
    return out


def corrupt_batch(images: torch.Tensor, rng: np.random.Generator, options: PretrainOptions | None = None
                  ) -> torch.Tensor:
    """:func:`corrupt_slice` applied to every image of ``(B, 1, H, W)`` float32 in [0, 1]; same shape."""
    return torch.stack([torch.from_numpy(corrupt_slice(x[0].numpy(), rng, options))[None] for x in images])


# ---------------------------------------------------------------------------------------------------------------
# the network and its weights

def restoration_network(model: ModelConfig) -> nn.Module:
    """The architecture of ``model`` with one output channel (the restored slice's logit) and no deep supervision."""
    return create_model(model.name, num_classes=1, deep_supervision=False, **architecture_options(model))


def _architecture(model: ModelConfig | dict[str, Any]) -> dict[str, Any]:
    """What must match between a pretraining and a training: the model's name and the options that build it
    (a saved ``model_config`` from before an option existed takes that option's default); dropout (bottleneck and
    decoder), which has no weights, may differ."""
    model = model if isinstance(model, ModelConfig) else ModelConfig(**model)
    options = architecture_options(model)
    options.pop("dropout", None)
    options.pop("decoder_dropout", None)
    return {"name": model.name, **options}


def pretrained_path(path: str | Path) -> Path:
    """The weights file named by ``path``: the file itself, else ``pretrained.pt`` of a folder ``covseg pretrain``
    wrote, else ``last.pt`` of a trained run's folder."""
    path = Path(path)
    if not path.is_dir():
        return path
    if not (path / PRETRAINED_FILE).is_file() and (path / "last.pt").is_file():
        return path / "last.pt"
    return path / PRETRAINED_FILE


def _trained_run_as_pretrained(file: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A trained run's checkpoint (``covseg-checkpoint-1``, read from ``file``) in the shape :func:`check_pretrained`
    reads, with the split it was trained on (``trained_split``: the split settings it saved), which a run starting
    from it must share. A checkpoint whose weights or settings cannot be read is refused in one line."""
    check_checkpoint(data, file)
    made = checkpoint_config(data, file)
    saved = data["config"].get("data", {})
    split = {key: getattr(made.data, key) for key in ("split", "folds", "split_seed", "val_fraction") if key in saved}
    return {"format": CHECKPOINT_FORMAT, "model_config": asdict(made.model), "normalize": made.data.normalize,
            "model": data["model"], "trained_split": split, "epochs": made.train.epochs,
            "types_only": made.train.types_only}


_PRETRAINED_KEYS = ("model", "model_config", "steps", "options", "normalize")
"""What :func:`check_pretrained` reads of a ``covseg-pretrained-1`` file."""


def _checked_pretraining(file: Path, data: dict[str, Any]) -> dict[str, Any]:
    """``data``, a pretrained checkpoint read from ``file``, with its ``model_config`` filled in (options saved before
    they existed take their defaults); one missing or malformed entry is refused in one line."""
    def refuse(why: str) -> CovsegError:
        return CovsegError(f"{file}: not a covseg pretrained checkpoint ({why}); run covseg pretrain again")

    missing = [key for key in _PRETRAINED_KEYS if key not in data]
    if missing:
        raise refuse(f"no {', '.join(missing)}")
    weights, options = data["model"], data["options"]
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise refuse("its model is not a state dict of tensors")
    whole = (data["steps"], options.get("steps") if isinstance(options, dict) else None)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in whole):
        raise refuse("its steps and options.steps are not whole numbers")
    if not isinstance(data["normalize"], str):
        raise refuse("its normalize is not text")
    made = data["model_config"]
    if not isinstance(made, dict):
        raise refuse("its model_config is not a mapping")
    unknown = sorted(set(made) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise refuse(f"its model_config holds {unknown[0]!r}, which this covseg does not know")
    try:
        model = config_from_dict({"model": made}, source="config").model
    except CovsegError as err:
        raise refuse(f"its model_config: {err}") from None
    return {**data, "model_config": asdict(model)}


def _refusals_name_train_init(function: Callable) -> Callable:
    """``function`` with each one-line :class:`CovsegError` it raises begun with ``train.init: `` (once), as
    ``train.distill``'s refusals begin with theirs: a path alone does not say which setting named it."""
    @functools.wraps(function)
    def named(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except CovsegError as err:
            text = str(err)
            raise CovsegError(text if text.startswith("train.init: ") else f"train.init: {text}") from None
    return named


@_refusals_name_train_init
def read_pretrained(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """``(file, contents)`` of the weights ``train.init`` names: a pretrained checkpoint (or the folder ``covseg
    pretrain`` wrote), or a trained run's checkpoint (or its folder: ``last.pt``) to fine-tune from. Contents that
    are not what covseg wrote (an entry missing, of the wrong type, an unknown model option) are refused in one
    line."""
    path = Path(path)
    file = pretrained_path(path)
    if not file.is_file():
        if fold_runs(path):
            raise CovsegError(f"{path}: a cross-validation folder, not one run; give one trained run of "
                              f"the same split (e.g. {path / 'fold-0'} for --split cv:0) or a folder covseg pretrain "
                              "wrote")
        folder = path if path.suffix != ".pt" else path.parent
        raise CovsegError(f"{path}: no pretrained weights there; make them with `covseg pretrain -o {folder}` "
                          f"or give the folder (or {PRETRAINED_FILE}) it wrote, or a trained run's folder")
    data = load_weights_file(file, "covseg pretrained checkpoint",
                             "give the folder covseg pretrain wrote, or a trained run's folder")
    if isinstance(data, dict) and data.get("format") == CHECKPOINT_FORMAT:
        if chosen_on_validation(data):
            raise CovsegError(f"{file}: a run's best.pt, chosen on the validation images a run of its split holds "
                              "out; give the run folder (its last.pt) or its swa.pt")
        contents = _trained_run_as_pretrained(file, data)
        refuse_unfinished(file, data, contents.pop("epochs"), "train.init: ")
        return file, contents
    if not isinstance(data, dict) or data.get("format") != PRETRAINED_FORMAT:
        raise CovsegError(f"{file}: not a covseg pretrained checkpoint (format {PRETRAINED_FORMAT} expected); "
                          "give the folder `covseg pretrain` wrote, or a trained run's folder")
    return file, _checked_pretraining(file, data)


@_refusals_name_train_init
def check_pretrained(path: str | Path, config: RunConfig, held_out: Collection[str] = ()
                     ) -> tuple[Path, dict[str, Any]]:
    """Read the pretrained checkpoint at ``path`` and check it fits ``config``: a finished pretraining of the
    same architecture (name, width, depth, normalisation, block) with the same per-slice normalisation, or a
    trained run of that architecture and split whose run folder's ``split.json`` trained on none of ``held_out``
    (the new run's validation and test images: the same split settings on other data split differently) and, where
    this run would copy its output heads whole (a multiclass run, not a type model itself, under
    ``train.init_parts=all``), no lesion-type model (``train.types_only``), whose background output is untrained.
    Returns ``(file, contents)``."""
    file, data = read_pretrained(path)
    made, wanted = _architecture(data["model_config"]), _architecture(config.model)
    if made != wanted:
        # the options both networks take: another model.name has none of U-Net's (not "model.norm None there")
        differ = ", ".join(f"model.{k} {made[k]} there, {wanted[k]} here"
                           for k in wanted if k in made and made[k] != wanted[k])
        raise CovsegError(f"{file}: pretrained for another network ({differ}); pretrain this recipe's network "
                          "with `covseg pretrain` and the same model.* settings")
    trained = data.get("trained_split")
    if trained is not None:
        # the split's own settings only: val_fraction does not matter to cv:K, nor folds to official
        differ = ", ".join(data_differences(trained, config.data, split_settings(config.data.split)))
        if differ:
            raise CovsegError(f"{file}: trained on another split ({differ}), so its weights have seen images this run "
                              "holds out; fine-tune a run on the split it was trained on")
        seen = held_out_seen(file, held_out)
        if seen:
            raise CovsegError(f"{file}: trained on {len(seen)} of the images this run holds out (first: {seen[0]}), "
                              "so its weights have seen them; fine-tune a run trained on this run's data and split")
        t = config.train
        # a type model's heads (multiclass, as only it trains) fit a multiclass run's, which would copy them whole
        if data.get("types_only") and not t.types_only and t.init_parts == "all" and config.data.task == "multiclass":
            raise CovsegError(f"{file}: a lesion-type model (train.types_only), whose background output is "
                              "untrained, so this run would start with that output as it was drawn at random; "
                              "fine-tune a run trained on the whole task, take only its contracting path "
                              "(train.init_parts=encoder), or train a type model again (train.types_only=true)")
    elif data["steps"] < data["options"]["steps"]:
        planned = data["options"]["steps"]
        raise CovsegError(f"{file}: its pretraining stopped at step {data['steps']} of {planned}; pretrain again "
                          f"(covseg pretrain ... --force) or with --steps {data['steps']}")
    if data["normalize"] != config.data.normalize:
        raise CovsegError(f"{file}: pretrained on slices normalised with {data['normalize']!r}, but this run uses "
                          f"data.normalize={config.data.normalize}; pretrain again with the same setting")
    return file, data


@_refusals_name_train_init
def init_from_pretrained(model: nn.Module, path: str | Path, config: RunConfig) -> list[str]:
    """Copy into ``model`` (built from ``config``) every tensor of the pretrained checkpoint at ``path`` whose name
    and shape match, and, under ``train.init_parts=encoder``, whose name is in the contracting path
    (:data:`ENCODER_PREFIX`); returns the names of ``model``'s tensors left as they were (a pretraining's output
    heads, and with ``encoder`` the whole decoder; none for a trained run of the same task under ``all``)."""
    file, data = check_pretrained(path, config)
    own = model.state_dict()
    wanted = ENCODER_PREFIX if config.train.init_parts == "encoder" else ""
    copied = {k: v for k, v in data["model"].items()
              if k.startswith(wanted) and k in own and own[k].shape == v.shape}
    if not copied:
        raise CovsegError(f"{file}: none of its weights fit this {config.model.name}; pretrain it again")
    model.load_state_dict(copied, strict=False)
    return [k for k in own if k not in copied]


# ---------------------------------------------------------------------------------------------------------------
# the pretraining loop

def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=("step", "loss", "lr", "seconds"), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def check_options(options: PretrainOptions, config: RunConfig) -> None:
    """Raise a :class:`CovsegError` for a pretraining budget, learning rate (at most
    :data:`covseg.config.MAX_LR`) or crop (at least ``2 * 2**depth``, as a run's ``train.augment.crop``) that cannot
    run with ``config``'s network."""
    m, size = config.model, config.data.input_size
    if options.steps < 1 or options.batch_size < 1:
        raise CovsegError("pretraining needs at least one step and a batch of at least one slice")
    if not (math.isfinite(options.lr) and options.lr > 0):
        raise CovsegError(f"--lr {options.lr:g}: the pretraining learning rate must be a positive number, e.g. the "
                          "default 0.002")
    if not (math.isfinite(options.weight_decay) and options.weight_decay >= 0):
        raise CovsegError(f"the pretraining weight decay must be a number >= 0 (got {options.weight_decay:g})")
    if options.lr > MAX_LR:  # far above it the weights diverge; past float32's range AdamW raises at its first step
        raise CovsegError(f"--lr {options.lr:g} is above the largest learning rate pretraining takes ({MAX_LR:g}); "
                          "use a smaller one, e.g. the default 0.002")
    if not 0 <= options.seed < 2 ** 32:
        raise CovsegError(f"the pretraining seed must be a whole number from 0 to 2**32 - 1, got {options.seed}")
    if size < MIN_SIDE:
        raise CovsegError(f"data.input_size {size} is too small to pretrain on; use at least {MIN_SIDE}")
    check_input_size(size, size, m.depth, m.name)  # before the crop, whose default follows the input size
    if options.crop and not (MIN_SIDE <= options.crop <= size and options.crop % (2 ** m.depth) == 0):
        raise CovsegError(f"--crop {options.crop} must be a multiple of {2 ** m.depth} (model depth {m.depth}) "
                          f"from {MIN_SIDE} to data.input_size {size}; or 0 for whole slices")
    if options.crop and options.crop < 2 * 2 ** m.depth:  # as a run's train.augment.crop (config.check_new_run)
        raise CovsegError(f"--crop {options.crop} leaves a model of depth {m.depth} a 1x1 bottleneck; use a crop "
                          f"of at least {2 * 2 ** m.depth} (2 x 2**depth, as train.augment.crop), or 0 for whole "
                          "slices")


#: the settings ``covseg pretrain`` reads beside every ``model.*`` option but deep supervision (a restoration network
#: has one output and no aux heads): how the unlabelled slices are read and brought to the input, and where and how
#: it computes. It reads no labels, so no split
PRETRAIN_READS = ("data.task", "data.input_size", "data.resize", "data.window_level", "data.window_width",
                  "data.normalize", "train.device", "train.precision", "train.threads")
#: the ``train.*`` settings whose part ``covseg pretrain``'s own options play
_OWN_OPTIONS = {"train.epochs": "--steps", "train.batch_size": "--batch-size", "train.augment.crop": "--crop",
                "train.lr": "--lr", "train.seed": "--seed"}


def _option_names(section: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names (``train.augment.crop``) of the options in ``section``, a config as nested dicts."""
    names: list[str] = []
    for key, value in section.items():
        name = f"{prefix}{key}"
        names += _option_names(value, f"{name}.") if isinstance(value, Mapping) else [name]
    return names


def refuse_unread_overrides(overrides: Iterable[str]) -> None:
    """Refuse, in one line, a ``KEY=VALUE`` override of a setting ``covseg pretrain`` never reads (not in
    :data:`PRETRAIN_READS`, nor a ``model.*`` option other than ``model.deep_supervision``): it would be recorded in
    ``pretrained.pt``'s ``run_config`` and change nothing, as ``covseg train`` refuses options its other settings
    never read. A key that names no option is left to :func:`covseg.config.apply_overrides`, which suggests one."""
    known = set(_option_names(config_to_dict(RunConfig())))
    reads = {*PRETRAIN_READS, *(name for name in known if name.startswith("model."))} - {"model.deep_supervision"}
    for item in overrides:
        key = item.partition("=")[0]
        if key not in known or key in reads:
            continue
        section = key.partition(".")[0]
        why = {"train": "of train.* it reads only device, precision and threads; its own options are --steps, "
                        "--batch-size, --crop, --lr and --seed",
               "data": "of data.* it reads only task, input_size, resize, window_level, window_width and normalize; "
                       "it reads no labels, so no split",
               "model": "its restoration network has one output and no deep supervision; a run's "
                        "model.deep_supervision may differ from its pretraining's"}[section]
        instead = f"use {_OWN_OPTIONS[key]} instead" if key in _OWN_OPTIONS else "drop the override"
        raise CovsegError(f"{item}: covseg pretrain does not use {key} ({why}); {instead}")


PRETRAIN_OUTPUTS = (PRETRAINED_FILE, "history.csv")
"""Everything a pretraining folder holds; ``--force`` replaces only a folder holding nothing else."""


def check_output_folder(out_dir: Path, force: bool) -> None:
    """Refuse an ``out_dir`` that pretraining may not fill: a file, a folder it cannot write, a non-empty folder
    without ``force``, or (even with ``force``) one holding anything but a finished pretraining's own files."""
    if not replacing_output(out_dir, force):
        return
    # a folder or link under one of the names is not what pretraining wrote (--force would delete what it holds)
    others = sorted(p.name for p in out_dir.iterdir()
                    if p.name not in PRETRAIN_OUTPUTS or p.is_symlink() or not p.is_file())
    if others or not (out_dir / PRETRAINED_FILE).is_file():
        held = f"it holds {others[0]}" if others else f"it has no {PRETRAINED_FILE}"
        raise CovsegError(f"{out_dir}: is not a pretraining folder ({held}), and --force replaces only what "
                          "covseg pretrain wrote; choose another -o")


def _write_outputs(out_dir: Path, payload: dict[str, Any], history: list[dict[str, float]], force: bool,
                   log: Callable[[str], None]) -> None:
    """Write ``pretrained.pt`` (``payload``) and ``history.csv`` to ``out_dir`` whole, with Ctrl-C and SIGTERM held
    back until they are in place. A stop held back is raised after a log line that says the pretraining was written
    and how to start from it (without it, only ``covseg: interrupted`` followed a complete ``pretrained.pt``), or,
    where ``out_dir`` does not hold the file just saved (read back by its SHA-256), that nothing was written."""
    saved = ""
    try:
        with interrupts_deferred(), atomic_dir(out_dir, force=force) as stage:
            torch.save(payload, stage / PRETRAINED_FILE)
            _write_history(stage / "history.csv", history)
            saved = file_sha256(stage / PRETRAINED_FILE)
    except KeyboardInterrupt as stop:
        try:
            written = bool(saved) and file_sha256(out_dir / PRETRAINED_FILE) == saved
        except OSError:
            written = False
        if written:
            log(f"{stop_word(stop)} once {out_dir / PRETRAINED_FILE} was written ({payload['steps']} steps, "
                f"complete); start a run from it with train.init={out_dir}")
        else:
            log(f"{stop_word(stop)}; nothing written ({left_as_it_was(out_dir)})")
        raise


def pretrain(config: RunConfig, images: list[np.ndarray], out_dir: str | Path, options: PretrainOptions | None = None,
             data_path: str = "", force: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config``'s network (:func:`restoration_network`) to restore corrupted ``images`` into ``out_dir``.

    ``images``: unlabelled ``(H, W)`` float32 slices in [0, 1]; each is normalised (``config.data.normalize``)
    and resized to ``config.data.input_size`` once, then every step draws ``options.batch_size`` of them, crops
    (``options.crop``) and flips them at random, corrupts them (:func:`corrupt_batch`) and fits the restoration.
    AdamW with a cosine schedule over ``options.steps``; device, precision and threads from ``config.train``.
    Returns the checkpoint's summary (steps, final loss, seconds). ``out_dir`` is written only once the last step
    is done (see the module docstring); an error or Ctrl-C before then leaves it as it was.
    """
    out_dir = Path(out_dir)
    options = options or PretrainOptions()
    m, d, t = config.model, config.data, config.train
    check_options(options, config)
    if not images:
        raise CovsegError("no unlabelled slices to pretrain on")
    torch.manual_seed(options.seed)  # the network's initial weights
    network = restoration_network(m)  # refuse bad model options before anything is written
    check_output_folder(out_dir, force)

    if t.threads > 0:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    dtype = resolve_precision(t.precision, device)
    memory_format = training_memory_format(device)
    stack, _ = stack_resized([normalize_image(x, d.normalize) for x in images], None, d.input_size, d.resize)
    stack = stack.half()  # 1600 slices of 352 x 352 in 0.4 GB
    network = network.to(device).to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    generator = torch.Generator().manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    log(f"pretraining {m.name} width {m.width} depth {m.depth} to restore {len(images)} unlabelled slices "
        f"({d.input_size}x{d.input_size}, crops {options.crop or d.input_size}, batch {options.batch_size}), "
        f"{options.steps} steps, {device.type} {str(dtype).removeprefix('torch.')}")
    fingerprints = (f"{x.shape}{hashlib.sha1(x.tobytes()).hexdigest()}" for x in images[:64])
    digest = hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()[:16]
    history: list[dict[str, float]] = []
    began = time.perf_counter()
    running, counted = 0.0, 0
    network.train()
    # stepped by hand, not iterated: a loop over the bar left by Ctrl-C closes it (drawn again, kept) too early
    bar = tqdm(total=options.steps, desc="pretrain", unit="step", disable=not progress, dynamic_ncols=True)
    step = 0
    try:
        for step in range(options.steps):
            index = torch.randint(0, len(stack), (options.batch_size,), generator=generator)
            clean = stack[index].float()
            flip = torch.rand(options.batch_size, generator=generator) < 0.5
            clean = torch.where(flip.view(-1, 1, 1, 1), clean.flip(-1), clean)
            if options.crop:
                dummy = torch.zeros(clean.shape[0], *clean.shape[-2:], dtype=torch.uint8)
                clean, _ = random_crop(clean, dummy, options.crop, generator)
            corrupted = corrupt_batch(clean, rng, options)
            for group in optimizer.param_groups:
                group["lr"] = options.lr * lr_factor("cosine", step, options.steps)
            x = corrupted.to(device).contiguous(memory_format=memory_format)
            with autocast(device, dtype):
                restored = network(x)
            loss = F.mse_loss(torch.sigmoid(restored.float()), clean.to(device))
            if not torch.isfinite(loss):
                raise CovsegError(f"the restoration loss became {loss.item()} at step {step + 1}; lower --lr "
                                  f"({left_as_it_was(out_dir)})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            counted += 1
            if (step + 1) % 10 == 0 or step + 1 == options.steps:
                history.append({"step": step + 1, "loss": running / counted, "lr": optimizer.param_groups[0]["lr"],
                                "seconds": time.perf_counter() - began})
                bar.set_postfix(loss=f"{running / counted:.4f}", refresh=False)
                running, counted = 0.0, 0
            bar.update(1)
        step = options.steps
        weights = [v for v in network.state_dict().values() if v.is_floating_point()]
        if not all(torch.isfinite(v).all() for v in weights):  # the loss checks them only up to the last step
            raise CovsegError(f"the restoration network's weights became infinite or NaN by step {step}; lower --lr "
                              f"({left_as_it_was(out_dir)})")
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (covseg.errors.Terminated), named as the program does
        close_bar(bar, failed=True)  # the message below starts its own line
        where = f"at step {step + 1} of {options.steps}" if step < options.steps else f"after its {step} steps"
        log(f"{stop_word(stop)} {where}; nothing written ({left_as_it_was(out_dir)})")
        raise
    except BaseException:
        close_bar(bar, failed=True)
        raise
    finally:
        bar.close()
    payload = {"format": PRETRAINED_FORMAT, "version": __version__,
               "model_config": asdict(m), "normalize": d.normalize, "input_size": d.input_size,
               "options": asdict(options), "steps": step, "slices": len(images),
               "data": str(Path(data_path).resolve()) if data_path else "",
               "slices_digest": digest, "run_config": config_to_dict(config),
               "model": cpu_state_dict(network)}
    try:  # again: something may have appeared at out_dir while the network trained
        check_output_folder(out_dir, force)
    except CovsegError as err:
        raise CovsegError(f"the pretraining finished, but nothing was written: {err} (it changed while the network "
                          "trained)") from None
    _write_outputs(out_dir, payload, history, force, log)
    seconds = time.perf_counter() - began
    final = history[-1]["loss"] if history else math.nan
    return {"steps": step, "loss": final, "seconds": seconds, "file": str(out_dir / PRETRAINED_FILE)}
