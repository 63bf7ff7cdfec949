"""Semi-supervised consistency on unlabelled slices: a mean teacher and CutMix (French et al., BMVC 2020).

Every training step draws ``train.consistency_batch`` unlabelled slices. The teacher, an exponential moving
average of the student's weights (:func:`covseg.training.weight_average`, with the student's batch-norm
statistics), predicts class probabilities for each of them; each slice then gets a random box of another of the
drawn slices (:func:`covseg.transforms.box_masks`), and its teacher probabilities get the same box. The student
sees the mixed slices beside its labelled batch and is pulled towards the mixed teacher probabilities by a soft
cross-entropy (:func:`soft_cross_entropy`), weighted by ``train.consistency`` after a linear warm-up (:func:`warmup`).

Batch norm (``train.consistency_norm``, :data:`CONSISTENCY_NORMS`): only the teacher's weights are averaged. Under
``shared`` (the default) it predicts with the student's current running statistics
(:func:`covseg.training.averaged_network`), and the student sees the mixed slices in one forward pass with its
labelled batch, so its batch statistics, and the running statistics inference uses, are both's. That is neither
Tarvainen & Valpola's mean teacher (NeurIPS 2017: the teacher, in training mode, normalises with its own batch
statistics) nor French et al.'s code (the running statistics averaged alongside the weights); it is what ``ema.pt``
uses, which scored better there (session 17). Under ``own`` each batch normalises by its own statistics
(:func:`covseg.training.batch_statistics`): the teacher on the clean unlabelled slices, as Tarvainen & Valpola's,
and the student on the mixed slices in a forward pass of their own; neither moves a running statistic, so those stay
the labelled slices' alone.

The unlabelled slices are loaded by :func:`load_unlabelled`, which also gives what ``run.json`` records of them
(:func:`unlabelled_record`: how many, where, a SHA-256 over their names and files), so that a resume can refuse slices
that changed since the run began (:func:`check_unlabelled_unchanged`) instead of going on with other ones.

Shapes: unlabelled images ``(U, 1, S, S)`` float16 in [0, 1] (``S`` = ``data.input_size``); probabilities
``(N, C, s, s)`` with ``C`` the task's classes (0 background).
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from covseg.config import RunConfig
from covseg.datasets import Sample, load_dataset
from covseg.errors import CovsegError
from covseg.fileio import file_sha256
from covseg.intensity import normalize_image
from covseg.progress import print_beside_bars
from covseg.training import averaged_network, batch_statistics, side_generator
from covseg.transforms import box_masks, stack_resized
from covseg.wording import counted

__all__ = ["soft_cross_entropy", "warmup", "ConsistencyTerm", "Unlabelled", "load_unlabelled",
           "unlabelled_record", "check_unlabelled_unchanged", "mask_like_slices", "warn_mask_like", "source_sha256",
           "CONSISTENCY_NORMS"]

#: train.consistency_norm's choices (module docstring): "shared" statistics or each batch its "own"
CONSISTENCY_NORMS = ("shared", "own")

#: the share of all training steps over which the consistency weight rises linearly from 0
WARMUP_SHARE = 0.25
#: the tag of the unlabelled slices' draws (:func:`covseg.training.side_generator`)
UNLABELLED_STREAM = 0xC0517
#: a slice with at most this many grey levels (of 256) is no CT slice: a label mask, or a blank image
MASK_LIKE_LEVELS = 3


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``-sum_c target_c log softmax(logits)_c``; ``logits`` and ``target``
    ``(N, C, H, W)``, ``target`` probabilities (each pixel sums to 1)."""
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def warmup(step: int, total: int) -> float:
    """The consistency weight's factor at optimiser ``step`` of ``total``: ``step / (WARMUP_SHARE total)``,
    at most 1."""
    ramp = max(1.0, WARMUP_SHARE * total)
    return min(1.0, step / ramp)


class ConsistencyTerm:
    """The unlabelled slices and the teacher that labels them; one :meth:`batch_for` and one :meth:`loss` per
    training step, drawn from :meth:`generator`.

    ``teacher`` is an :class:`~torch.optim.swa_utils.AveragedModel` of the student; :meth:`update` after every
    optimiser step moves it. ``weight``: ``train.consistency``; ``norm``: ``train.consistency_norm``
    (:data:`CONSISTENCY_NORMS`; under ``own`` the training step gives the mixed slices a forward pass of their own
    inside :func:`covseg.training.batch_statistics`).
    """

    def __init__(self, images: torch.Tensor, teacher: AveragedModel, batch: int, weight: float,
                 norm: str = "shared") -> None:
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] < 2:
            raise ValueError(f"unlabelled images must be (U, 1, S, S) with U >= 2, got {tuple(images.shape)}")
        if norm not in CONSISTENCY_NORMS:
            raise ValueError(f"norm must be one of {CONSISTENCY_NORMS}, got {norm!r}")
        self.images = images
        self.teacher = teacher
        self.batch = batch
        self.weight = weight
        self.norm = norm

    @staticmethod
    def generator(seed: int, epoch: int) -> torch.Generator:
        """The stream that draws and mixes unlabelled slices in ``epoch``, apart from the labelled batches' own."""
        return side_generator(seed, epoch, UNLABELLED_STREAM)

    @torch.no_grad()
    def batch_for(self, student: nn.Module, generator: torch.Generator, size: int | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed slices ``(k, 1, s, s)`` for the student and their mixed teacher probabilities ``(k, C, s, s)``
        (``s`` = ``size`` or the stored side). The teacher runs in eval mode with the student's batch-norm
        statistics, or, under ``norm`` ``own``, with the drawn slices' own batch statistics."""
        pick = torch.randperm(self.images.shape[0], generator=generator)[:self.batch]
        slices = self.images[pick].float()
        if size is not None and size != slices.shape[-1]:
            slices = F.interpolate(slices, size=(size, size), mode="bilinear", align_corners=False)
        slices = slices.to(device)
        teacher = averaged_network(self.teacher, student).eval()
        with batch_statistics(teacher) if self.norm == "own" else nullcontext():
            probs = torch.softmax(teacher(slices).float(), dim=1)
        k = slices.shape[0]
        shift = int(torch.randint(1, k, (1,), generator=generator)) if k > 1 else 0
        boxes = box_masks(k, slices.shape[-2], slices.shape[-1], generator).to(device)
        other = torch.roll(torch.arange(k), -shift).to(device)  # slice i takes a box of slice i + shift
        mixed = boxes * slices[other] + (1 - boxes) * slices
        target = boxes * probs[other] + (1 - boxes) * probs
        return mixed, target

    def loss(self, logits: torch.Tensor, target: torch.Tensor, step: int, total: int) -> torch.Tensor:
        """The weighted term at optimiser ``step`` of ``total``: the student's ``logits`` ``(k, C, s, s)`` on the
        mixed slices against their mixed teacher probabilities ``target``."""
        return self.weight * warmup(step, total) * soft_cross_entropy(logits, target)

    def update(self, student: nn.Module) -> None:
        """Move the teacher towards the student's current weights (after an optimiser step)."""
        self.teacher.update_parameters(student)


def mask_like_slices(samples: Sequence[Sample]) -> list[Sample]:
    """The slices of ``samples`` (images ``(H, W)`` float32 in [0, 1]) that hold at most :data:`MASK_LIKE_LEVELS`
    grey levels of 256 on every 4th row and column: a binary (0/1) or three-class label mask saved among the
    unlabelled slices, or a blank image. A CT slice holds dozens (noise, JPEG's artefacts)."""
    found = []
    for sample in samples:
        levels = np.rint(np.clip(sample.image[::4, ::4], 0, 1) * 255).astype(np.int64).ravel()
        if np.count_nonzero(np.bincount(levels, minlength=256)) <= MASK_LIKE_LEVELS:
            found.append(sample)
    return found


def warn_mask_like(samples: Sequence[Sample], what: str) -> None:
    """Warn (one line on stderr) where :func:`mask_like_slices` finds some of ``samples``, the unlabelled slices
    ``what`` reads: they teach nothing, and a folder of masks taken for slices is a wrong folder."""
    found = mask_like_slices(samples)
    if found:
        one_file = sum(s.source == found[0].source for s in samples) > 1  # a volume's slices (MedSeg's val_im.nii.gz)
        fix = f"check {found[0].source}" if one_file else f"take them out of {Path(found[0].source).parent}"
        print_beside_bars(f"covseg: warning: {len(found)} of {counted(len(samples), 'unlabelled slice')} that {what} "
                          f"reads {'holds' if len(found) == 1 else 'hold'} at most {MASK_LIKE_LEVELS} grey levels, "
                          f"like label masks or blank images, not CT slices (first: {found[0].source}); {fix}")


def source_sha256(source: str, digests: dict[str, str]) -> str:
    """The SHA-256 of an unlabelled slice's source file, hashed once per file (``digests``: a MedSeg volume holds
    many slices); an unreadable file is a one-line :class:`CovsegError`."""
    if source not in digests:
        try:
            digests[source] = file_sha256(source)
        except OSError as err:
            raise CovsegError(f"{source}: cannot read the unlabelled slice's file ({err.strerror or err})") from None
    return digests[source]


def unlabelled_record(samples: Sequence[Sample]) -> dict[str, object]:
    """What ``run.json`` records of the unlabelled slices ``samples`` a run reads: ``slices`` (how many),
    ``folders`` (where their files lie, sorted) and ``sha256``: the SHA-256 of their sorted ``name<TAB>file SHA-256``
    lines (each file hashed once: a MedSeg volume holds many slices), so renamed, added, removed or edited slices all
    change it."""
    digests: dict[str, str] = {}
    lines = [f"{sample.name}\t{source_sha256(sample.source, digests)}\n"
             for sample in sorted(samples, key=lambda s: s.name)]
    return {"slices": len(samples), "folders": sorted({str(Path(s.source).parent) for s in samples}),
            "sha256": hashlib.sha256("".join(lines).encode()).hexdigest()}


def check_unlabelled_unchanged(run_dir: Path, recorded: object, current: dict[str, object]) -> None:
    """Refuse to resume the run ``run_dir`` whose ``run.json`` recorded the unlabelled slices ``recorded`` (its
    ``unlabelled`` entry) when :func:`unlabelled_record` of the slices found now, ``current``, differs: the resumed
    epochs would pull the student towards other slices than the first ones. A run that began before covseg recorded
    them (no entry) resumes as before."""
    if not isinstance(recorded, dict) or "sha256" not in recorded:
        return
    if recorded["sha256"] == current["sha256"]:
        return
    began = recorded.get("slices")
    began = counted(began, "slice") if isinstance(began, int) else "other slices"
    folders = recorded.get("folders")
    where = ", ".join(map(str, folders)) if isinstance(folders, list) and folders else "its data folder"
    now = "there" if folders == current["folders"] else f"in {', '.join(map(str, current['folders']))}"
    raise CovsegError(f"{run_dir}: the unlabelled slices of train.consistency changed since the run began ({began} "
                      f"in {where}; now {counted(current['slices'], 'slice')} {now}, not all of the same names and "
                      "images); put them back as they were, or train a new run")


@dataclass(frozen=True)
class Unlabelled:
    """The consistency term's unlabelled slices: ``images`` ``(U, 1, S, S)`` float16 in [0, 1] (normalised by
    ``data.normalize``, resized by ``data.resize`` to ``data.input_size``), the ``folders`` their files lie in, and
    ``record``, what ``run.json`` keeps of them (:func:`unlabelled_record`)."""

    images: torch.Tensor
    folders: list[Path]
    record: dict[str, object]


def load_unlabelled(config: RunConfig, data_path: str, log: Callable[[str], None]) -> Unlabelled | None:
    """``data_path``'s unlabelled slices for the consistency term (None when ``train.consistency`` is 0): at least
    2 (a slice mixes with another), a warning for slices that look like masks (:func:`warn_mask_like`)."""
    d = config.data
    if config.train.consistency <= 0:
        return None
    samples = load_dataset(data_path, d.task, split="unlabelled", window=d.window)
    if len(samples) < 2:
        raise CovsegError(f"train.consistency needs at least 2 unlabelled slices in {data_path}, found {len(samples)}; "
                          "add them or set train.consistency=0")
    warn_mask_like(samples, "train.consistency")
    images = stack_resized([normalize_image(s.image, d.normalize) for s in samples], None, d.input_size, d.resize)[0]
    log(f"consistency: {counted(len(samples), 'unlabelled slice')}, {config.train.consistency_batch} per step, "
        f"weight {config.train.consistency:g}"
        + (", each batch normalised by its own statistics" if config.train.consistency_norm == "own" else ""))
    return Unlabelled(images.half(), sorted({Path(s.source).parent for s in samples}), unlabelled_record(samples))
