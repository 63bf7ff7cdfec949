"""Semi-supervised consistency on unlabelled slices: a mean teacher and CutMix (French et al., BMVC 2020).

Every training step draws ``train.consistency_batch`` unlabelled slices. The teacher, an exponential moving
average of the student's weights (:func:`covseg.training.weight_average`, with the student's batch-norm
statistics), predicts class probabilities for each of them; each slice then gets a random box of another of the
drawn slices (:func:`covseg.transforms.box_masks`), and its teacher probabilities get the same box. The student
sees the mixed slices beside its labelled batch and is pulled towards the mixed teacher probabilities by a soft
cross-entropy (:func:`soft_cross_entropy`), weighted by ``train.consistency`` after a linear warm-up (:func:`warmup`).

Shapes: unlabelled images ``(U, 1, S, S)`` float16 in [0, 1] (``S`` = ``data.input_size``); probabilities
``(N, C, s, s)`` with ``C`` the task's classes (0 background).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from covseg.training import averaged_network, side_generator
from covseg.transforms import box_masks

__all__ = ["soft_cross_entropy", "warmup", "ConsistencyTerm"]

#: the share of all training steps over which the consistency weight rises linearly from 0
WARMUP_SHARE = 0.25
#: the tag of the unlabelled slices' draws (:func:`covseg.training.side_generator`)
UNLABELLED_STREAM = 0xC0517


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
    optimiser step moves it. ``weight``: ``train.consistency``.
    """

    def __init__(self, images: torch.Tensor, teacher: AveragedModel, batch: int, weight: float) -> None:
        if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] < 2:
            raise ValueError(f"unlabelled images must be (U, 1, S, S) with U >= 2, got {tuple(images.shape)}")
        self.images = images
        self.teacher = teacher
        self.batch = batch
        self.weight = weight

    @staticmethod
    def generator(seed: int, epoch: int) -> torch.Generator:
        """The stream that draws and mixes unlabelled slices in ``epoch``, apart from the labelled batches' own."""
        return side_generator(seed, epoch, UNLABELLED_STREAM)

    @torch.no_grad()
    def batch_for(self, student: nn.Module, generator: torch.Generator, size: int | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed slices ``(k, 1, s, s)`` for the student and their mixed teacher probabilities ``(k, C, s, s)``
        (``s`` = ``size`` or the stored side). The teacher runs in eval mode with the student's batch-norm
        statistics."""
        pick = torch.randperm(self.images.shape[0], generator=generator)[:self.batch]
        slices = self.images[pick].float()
        if size is not None and size != slices.shape[-1]:
            slices = F.interpolate(slices, size=(size, size), mode="bilinear", align_corners=False)
        slices = slices.to(device)
        teacher = averaged_network(self.teacher, student).eval()
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
