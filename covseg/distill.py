"""Knowledge distillation (Hinton et al. 2015): trained models of the same task and split teach a new one.

The teachers' softened class probabilities, averaged over the teachers (an ensemble), become a second target
beside the labels: the student's loss gains ``train.distill_weight`` times the pixel-mean Kullback-Leibler
divergence from the teachers' ``softmax(z / T)`` to the student's, multiplied by ``T**2`` so that its gradients
keep their size whatever the temperature ``T`` (``train.distill_temperature``). The teachers see exactly the
augmented batch the student sees (at the progressive size too), in eval mode under the training precision.

Teachers must have been trained on the student's split (``data.split`` and the settings that split uses:
:func:`covseg.splits.split_settings`), else they would have seen the images the student holds out, and on the
student's input (normalisation, resizing, input size, HU window); their final checkpoint is
used (``swa.pt``, else ``last.pt``: :func:`covseg.checkpoint.find_checkpoint` ``final``), never ``best.pt``, which
was chosen on those images. In ``train.distill`` (comma-separated run folders or ``.pt`` files) ``{fold}`` stands
for the fold of a ``cv:K`` split, so ``covseg cv`` gives each fold its own teachers.

Shapes: images ``(N, 1, s, s)``; logits and probabilities ``(N, C, s, s)``, ``C`` the task's classes (0 background).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from covseg.checkpoint import find_checkpoint, load_model, load_weights_file, read_checkpoint, refuse_unfinished
from covseg.config import RunConfig, config_from_dict, data_differences
from covseg.errors import CovsegError
from covseg.fileio import file_sha256
from covseg.paired import fold_runs
from covseg.models.unet import GROUP_NORM_GROUPS, norm_failing_on_one_pixel
from covseg.runtime import autocast, training_memory_format
from covseg.splits import load_split, parse_split_name, split_settings

__all__ = ["distillation_loss", "teacher_entries", "teacher_paths", "chosen_on_validation",
           "held_out_seen", "teacher_sizes", "Teachers", "check_teachers", "load_teachers", "DistillTerm"]

#: the data options that make a teacher's input the student's (per-slice normalisation, resizing, HU window)
INPUT_KEYS = ("normalize", "resize", "input_size", "window_level", "window_width")


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2`` times the mean over pixels of ``KL(teacher_probs || softmax(student_logits / T))``.

    ``student_logits`` ``(N, C, H, W)`` (any float dtype; computed in float32), ``teacher_probs`` ``(N, C, H, W)``
    probabilities (each pixel sums to 1, already softened at ``T``). 0 exactly when the student's softened
    probabilities equal the teachers'.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    teacher = teacher_probs.float()
    kl = (torch.xlogy(teacher, teacher) - teacher * log_student).sum(dim=1)
    # T twice, not T**2: a tiny T's square underflows to 0 in float32 and would silently drop the term
    return kl.mean() * temperature * temperature


def teacher_entries(spec: str) -> list[str]:
    """``train.distill``'s comma-separated entries as written (``{fold}`` kept), blanks dropped."""
    return [part.strip() for part in spec.split(",") if part.strip()]


def teacher_paths(spec: str, config: RunConfig) -> list[str]:
    """``train.distill``'s entries, ``{fold}`` replaced by the fold of ``config.data.split`` (``cv:K``)."""
    entries = teacher_entries(spec)
    if any("{fold}" in entry for entry in entries):
        kind, fold = parse_split_name(config.data.split)
        if kind != "cv":
            raise CovsegError(f"train.distill {spec!r} names {{fold}}, but data.split is {config.data.split!r}, not "
                              "cv:K; give the teachers' paths as they are")
        entries = [entry.replace("{fold}", str(fold)) for entry in entries]
    return entries


class Teachers(NamedTuple):
    """:func:`load_teachers`' result: the networks in eval mode, their checkpoint files and SHA-256 digests."""

    networks: list[nn.Module]
    files: list[Path]
    digests: list[str]


def chosen_on_validation(saved: dict) -> bool:
    """Whether checkpoint contents ``saved`` are a run's ``best.pt`` picked by its validation score, so shaped by
    the images that run (and any run of its split) holds out: ``last.pt`` keeps its optimizer, and ``ema.pt``,
    ``swa.pt`` and the ``best.pt`` of a run without validation images carry no score."""
    return saved.get("score") is not None and "optimizer" not in saved


def held_out_seen(file: Path, held_out: Collection[str]) -> list[str]:
    """The names of ``held_out`` that the run of checkpoint ``file`` trained on, by the ``split.json`` beside it
    (sorted; none where there is no such file: a checkpoint copied out of its run folder)."""
    trained_on = Path(file).parent / "split.json"
    if not held_out or not trained_on.is_file():
        return []
    return sorted(set(load_split(trained_on)["train"]) & set(held_out))


def _check_teacher(file: Path, made: RunConfig, saved: dict, config: RunConfig, held_out: Collection[str]) -> None:
    """Refuse the teacher at ``file`` (its run config ``made``, its checkpoint contents ``saved``) for ``config``'s
    student (see :func:`load_teachers`)."""
    if chosen_on_validation(saved):
        raise CovsegError(f"train.distill: {file} is a run's best.pt, chosen on the validation images this run "
                          "holds out; give the run folder (its swa.pt or last.pt) or another of its checkpoints")
    if made.data.task != config.data.task:
        raise CovsegError(f"train.distill: {file} is a {made.data.task} model, but this run's task is "
                          f"{config.data.task}; give teachers of the same task")
    if made.train.types_only:
        raise CovsegError(f"train.distill: {file} is a lesion-type model (train.types_only), whose background "
                          "output is untrained; give teachers trained on the whole task")
    # the split's own settings only: val_fraction does not matter to cv:K, nor folds to official
    split_keys = split_settings(config.data.split)
    for keys, why in ((split_keys, "so it has seen images this run holds out; give teachers trained on this run's "
                                   "split (with cv, e.g. runs/teacher-f{fold})"),
                      (INPUT_KEYS, "so its input differs from this run's; give teachers trained with the same "
                                   "data settings")):
        differ = data_differences(dataclasses.asdict(made.data), config.data, keys)
        if differ:
            raise CovsegError(f"train.distill: {file} was trained with {', '.join(differ)}, {why}")
    refuse_unfinished(file, saved, made.train.epochs, "train.distill: ")
    seen = held_out_seen(file, held_out)
    if seen:
        raise CovsegError(f"train.distill: {file} was trained on {len(seen)} of the images this run holds out "
                          f"(first: {seen[0]}); give teachers trained on this run's data and split")
    step, fails_1x1 = 2**made.model.depth, _norm_failing_on_1x1(made)
    for size in teacher_sizes(config):
        if size % step:
            raise CovsegError(f"train.distill: {file} is a {made.model.name} of depth {made.model.depth}, which "
                              f"needs sizes divisible by {step}, but this run trains on {size}x{size} images; "
                              "give shallower teachers or another size")
        if size < 2 * step and fails_1x1:
            raise CovsegError(f"train.distill: {file} is a {made.model.name} of depth {made.model.depth} with "
                              f"{fails_1x1}, whose bottleneck is 1x1 on the {size}x{size} images this run trains on, "
                              f"too small for it; give shallower teachers or train on at least {2 * step}x{2 * step}")


def teacher_sizes(config: RunConfig) -> list[int]:
    """The sides of the batches ``config``'s teachers see (ascending): each training batch, at
    ``data.input_size`` or, in the progressive epochs, ``train.progressive_size``, cut to ``train.augment.crop``
    where that is smaller (:func:`covseg.transforms.augment_batch`); never validation's, which they do not see."""
    t = config.train
    sides = {config.data.input_size, *((t.progressive_size,) if t.progressive_epochs() else ())}
    return sorted({min(t.augment.crop, side) if t.augment.crop else side for side in sides})


def _norm_failing_on_1x1(made: RunConfig) -> str:
    """The normalisation (e.g. ``"instance norm"``) that cannot take a 1x1 bottleneck in the network of ``made`` run
    in eval mode, as teachers run, or ``""`` where it can: the condition of
    :meth:`covseg.models.unet.UNet._check_bottleneck`, a batch of one assumed (an epoch's last batch may hold one
    image). Batch norm in eval mode uses its running statistics, so it takes one."""
    m = made.model
    if m.name != "unet" or not m.batch_norm:
        return ""
    channels = m.width * 2**m.depth
    reason = norm_failing_on_one_pixel(m.norm, channels // math.gcd(GROUP_NORM_GROUPS, channels), False, True)
    return reason.removesuffix(" on a batch of one")


def _is_pretraining(file: Path) -> bool:
    """Whether ``file`` holds the weights ``covseg pretrain`` wrote (:data:`covseg.pretrain.PRETRAINED_FORMAT`), a
    restoration network rather than a trained run's checkpoint; False where it cannot be read."""
    from covseg.pretrain import PRETRAINED_FORMAT  # covseg.pretrain imports this module

    try:
        data = load_weights_file(file)
    except CovsegError:
        return False
    return isinstance(data, dict) and data.get("format") == PRETRAINED_FORMAT


def _checked_teachers(config: RunConfig, held_out: Collection[str], build: bool
                      ) -> list[tuple[Path, nn.Module | None]]:
    """``(checkpoint file, network or None)`` of each teacher of ``config.train.distill``, checked; the networks
    are built only with ``build``."""
    found: list[tuple[Path, nn.Module | None]] = []
    named: dict[Path, str] = {}  # each teacher's checkpoint file, resolved -> the entry that named it
    for entry in teacher_paths(config.train.distill, config):
        path = Path(entry)
        if not path.exists():
            raise CovsegError(f"train.distill: {entry}: no such run folder or checkpoint; train the teacher first "
                              "(covseg train ... -o RUN) or correct the path")
        if path.is_dir() and not (path / "config.yaml").is_file():
            if fold_runs(path):
                raise CovsegError(f"train.distill: {entry} is a cross-validation folder, whose fold models trained on "
                                  "one another's held-out images; name one fold's run, the fold of this run's "
                                  f"split: {path / 'fold-{fold}'}")
            if (path / "pretrained.pt").is_file():
                raise CovsegError(f"train.distill: {entry} is a covseg pretrain folder, which holds no segmentation "
                                  f"model to learn from; give trained run folders (start from it with "
                                  f"train.init={entry} instead)")
        try:  # the option named, as _check_teacher's refusals do: the path alone does not say which setting it is
            file = find_checkpoint(entry, "final", choosable=False)
        except CovsegError as err:
            raise CovsegError(f"train.distill: {err}") from None
        # the same teacher twice (a run folder and its last.pt, RUN and ./RUN, a link) would weigh double in the mean
        first = named.get(file.resolve())
        if first is not None:
            given = f" (as {first} and {entry})" if first != entry else ""
            raise CovsegError(f"train.distill: {file} is named twice{given}, so it would count twice in the "
                              "teachers' average; name each teacher once")
        named[file.resolve()] = entry
        try:
            if build:
                model, made, saved = load_model(file)
            else:
                model, saved = None, read_checkpoint(file)
                made = config_from_dict(saved["config"], source=str(file))
        except CovsegError as err:
            if _is_pretraining(file):  # as the folder covseg pretrain wrote is refused above
                raise CovsegError(f"train.distill: {file}: not a covseg checkpoint but the weights covseg pretrain "
                                  "wrote, which hold no segmentation model to learn from; give trained run folders "
                                  f"(start from it with train.init={entry} instead)") from None
            raise CovsegError(f"train.distill: {err}") from None
        _check_teacher(file, made, saved, config, held_out)
        found.append((file, model))
    if not found:
        raise CovsegError(f"train.distill {config.train.distill!r} names no teacher; give run folders separated by "
                          "commas, or leave it empty")
    return found


def check_teachers(config: RunConfig, held_out: Collection[str] = ()) -> list[Path]:
    """:func:`load_teachers`' checks without building a network (e.g. for a fold that has not begun yet); returns
    the teachers' checkpoint files."""
    return [file for file, _ in _checked_teachers(config, held_out, build=False)]


def load_teachers(config: RunConfig, held_out: Collection[str] = ()) -> Teachers:
    """The checked teachers of ``config.train.distill`` in eval mode, their checkpoint files and SHA-256 digests.

    Refused (one-line :class:`CovsegError`): a missing teacher, a run's ``best.pt`` (given as a file), a lesion-type
    model (``train.types_only``), one trained for another task, on another split or on other input (normalisation,
    resizing, input size, HU window), one too deep for the sizes this run trains at (:func:`teacher_sizes`), or
    left with a 1x1 bottleneck there by instance norm or group norm of one channel a group, an unfinished run, one
    whose run folder's ``split.json`` trained on any of ``held_out`` (the student's validation and test images: the
    same split settings on other data split differently), a teacher named twice (its checkpoint file resolved: a run
    folder and its ``last.pt`` are one teacher), and an empty list.
    """
    found = _checked_teachers(config, held_out, build=True)
    files = [file for file, _ in found]
    return Teachers([model for _, model in found], files, [file_sha256(f) for f in files])


class DistillTerm:
    """The teachers and the weighted term: one :meth:`targets` and one :meth:`loss` per training step.

    ``teachers``: networks in eval mode (moved to ``device`` in the training memory format here); ``weight``:
    ``train.distill_weight``; ``temperature``: ``train.distill_temperature``.
    """

    def __init__(self, teachers: list[nn.Module], weight: float, temperature: float, device: torch.device,
                 dtype: torch.dtype) -> None:
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        memory_format = training_memory_format(device)
        self.teachers = [t.to(device).to(memory_format=memory_format).eval() for t in teachers]
        for teacher in self.teachers:
            teacher.requires_grad_(False)
        self.weight = weight
        self.temperature = temperature
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The teachers' mean softened probabilities ``(N, C, s, s)`` float32 for the student's batch ``images``
        ``(N, 1, s, s)`` (already on the device)."""
        total = None
        for teacher in self.teachers:
            with autocast(self.device, self.dtype):
                logits = teacher(images)
            probs = torch.softmax(logits.float() / self.temperature, dim=1)
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(self.teachers)

    def loss(self, student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``weight`` times :func:`distillation_loss` of the student's full-size ``student_logits``."""
        return self.weight * distillation_loss(student_logits, targets, self.temperature)
