"""The training loop as small functions: one epoch, one validation pass, learning-rate schedule.

Shapes: images ``(N, 1, S, S)`` float32 in [0, 1]; label maps ``(N, S, S)`` int64; ``S`` = input size.
All randomness (shuffling, augmentation) is drawn from generators seeded by ``(seed, epoch)``, so an
epoch computes the same thing whether the run was resumed or not.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from covseg.config import TrainConfig
from covseg.errors import CovsegError
from covseg.metrics import aggregate_per_image, confusion_matrix
from covseg.runtime import DistContext, autocast, training_memory_format
from covseg.transforms import augment_batch, mixup
from covseg.wording import counted

if TYPE_CHECKING:
    from covseg.consistency import ConsistencyTerm
    from covseg.distill import DistillTerm

__all__ = ["EpochResult", "lr_factor", "learning_rate", "make_optimizer", "epoch_generator", "train_one_epoch",
           "validate", "predicted_labels", "class_argmax", "weight_average", "averaged_network", "epoch_average",
           "recompute_batch_norm", "batch_statistics", "side_generator", "SAMPLINGS", "class_balanced_weights",
           "draw_order", "batch_confusion", "mean_foreground_dice", "check_data_parallel", "share_weight"]


@dataclass
class EpochResult:
    """Mean loss and pixel accuracy of one pass (and, for validation, mean foreground Dice)."""

    loss: float
    accuracy: float
    dice: float = float("nan")


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` of ``total``.

    ``constant``: 1. ``cosine``: half-cosine from 1 to 0. ``onecycle``: linear warm-up from 0.04 to 1
    over the first 30 % of steps, then half-cosine to ~0.
    """
    t = min(step / max(total, 1), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "onecycle":
        if t < 0.3:
            return 0.04 + 0.96 * t / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * (t - 0.3) / 0.7))
    raise CovsegError(f"unknown schedule {schedule!r}: use constant, cosine or onecycle")


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based, counted over the whole run).

    Without SWA (``cfg.swa_epochs`` 0): ``cfg.lr`` times :func:`lr_factor` of ``cfg.schedule`` over all
    ``cfg.epochs``. With SWA (Izmailov et al. 2018): the schedule runs over the first ``epochs - swa_epochs``
    epochs from ``cfg.lr`` down to ``cfg.swa_lr`` (``swa_lr + (lr - swa_lr) * factor``), then the last
    ``swa_epochs`` epochs hold ``cfg.swa_lr``, the constant rate whose end-of-epoch weights
    :func:`epoch_average` averages.
    """
    if not cfg.swa_epochs:
        return cfg.lr * lr_factor(cfg.schedule, step, steps_per_epoch * cfg.epochs)
    before = steps_per_epoch * (cfg.epochs - cfg.swa_epochs)
    if step >= before:
        return cfg.swa_lr
    return cfg.swa_lr + (cfg.lr - cfg.swa_lr) * lr_factor(cfg.schedule, step, before)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (Nesterov, ``cfg.momentum``) with the config's learning rate and weight decay."""
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    raise CovsegError(f"unknown optimizer {cfg.optimizer!r}: use adam, adamw or sgd")


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s parameters (not its batch-norm statistics).

    After each :meth:`~torch.optim.swa_utils.AveragedModel.update_parameters` call every parameter becomes
    ``decay * average + (1 - decay) * current``; the first call copies the model. With ``decay`` 0.99 the
    average spans about the last 100 optimiser steps. ``.module`` is the averaged network, of the same class
    and state-dict keys as ``model``; give it batch-norm statistics with :func:`averaged_network` before use.
    """
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block every batch-norm layer of ``model`` normalises by the batch's own statistics (training mode,
    as Tarvainen & Valpola's teacher) and leaves its running statistics as they were: momentum 0 (the running mean and
    variance are updated in place with weight 0, bit for bit unchanged) and the batch count restored after. Each
    layer's mode and momentum are restored on leaving; other layers (dropout, instance norm) are left alone."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.training, m.momentum,
              None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.train()
            m.momentum = 0.0
        yield
    finally:
        for m, training, momentum, count in saved:
            m.train(training)
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def averaged_network(averaged: AveragedModel, model: nn.Module) -> nn.Module:
    """``averaged.module`` with ``model``'s current buffers (batch-norm running statistics) copied into it.

    Averaging the running statistics as well, step by step alongside the weights, cost binary fold 0 0.049 per-image
    Dice (0.683 against 0.732 for the last weights; session 17); the trained network's own statistics with the
    averaged weights scored 0.747.
    """
    with torch.no_grad():
        for mine, theirs in zip(averaged.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
    return averaged.module


def epoch_average(model: nn.Module) -> AveragedModel:
    """An equal-weight average of ``model``'s parameters (not its batch-norm statistics), for SWA.

    Each :meth:`~torch.optim.swa_utils.AveragedModel.update_parameters` call (once per epoch, after the epoch)
    adds the current weights with weight ``1 / n``: after ``n`` calls ``.module``'s parameters are the mean of
    the ``n`` weight sets, while its buffers (batch-norm statistics) are copies of the latest ``model``'s. Give the
    result batch-norm statistics of its own with :func:`recompute_batch_norm`.
    """
    return AveragedModel(model, use_buffers=False)


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
                         dtype: torch.dtype) -> None:
    """Replace ``model``'s batch-norm running statistics by their plain average over ``images``.

    ``images`` ``(N, 1, S, S)`` (the training slices at ``data.input_size``, unaugmented) pass through ``model``
    in training mode with dropout off, ``batch_size`` at a time, under the training precision; every batch-norm
    layer's running mean and variance become the mean over those batches of the batch statistics (momentum
    ``None``), as :func:`torch.optim.swa_utils.update_bn` does. Averaged weights need this: the running
    statistics of any one epoch's weights do not match their average (SWA). A network without batch norm is left
    as it is.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    was_training = model.training
    memory_format = training_memory_format(device)
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for m in model.modules():  # dropout would make the statistics depend on the random stream: off
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device).contiguous(memory_format=memory_format)
            with autocast(device, dtype):
                model(x)
    finally:
        for m in norms:
            m.momentum = momenta[m]
        model.train(was_training)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that drives shuffling and augmentation of ``epoch`` (0-based)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


MIXUP_STREAM = 0x313C  # the tag of mixup's draws (:func:`side_generator`)


def side_generator(seed: int, epoch: int, tag: int) -> torch.Generator:
    """A stream of its own for ``epoch``, unrelated to :func:`epoch_generator`'s and to other ``tag``'s: what an
    extra source of data draws (pseudo-labelled slices, the consistency term's unlabelled slices) leaves the
    labelled batches as they are. Seeded by ``(seed, epoch, tag)`` alone, so a resumed run draws the same."""
    entropy = np.random.SeedSequence([seed, epoch, tag]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy))


#: how an epoch draws its slices (``train.sampling``)
SAMPLINGS = ("uniform", "class_balanced")


def class_balanced_weights(masks: torch.Tensor) -> torch.Tensor:
    """Draw weights ``(N,)`` of ``N`` label maps ``masks`` ``(N, H, W)`` (0 background, 1.. the foreground classes).

    A slice's weight is the sum, over the foreground classes its label map holds, of 1 / the number of slices holding
    that class; a slice without foreground weighs 1 / the number of such slices. So the slices holding a class carry
    one unit of weight for it between them (the empty slices one unit together), and slices of a class held by few
    slices are drawn more often. The weights sum to the number of foreground classes present, plus 1 where any
    slice is empty.
    """
    flat = masks.reshape(masks.shape[0], -1)
    top = int(flat.max()) if flat.numel() else 0
    # one pass per label up to the largest, keeping the classes some slice holds (torch.unique's sort of every pixel
    # took 10x the time at 40 x 352²; these weights are drawn every epoch)
    holds = [h for h in ((flat == c).any(dim=1) for c in range(1, top + 1)) if h.any()]
    present = torch.stack(holds, dim=1).double() if holds else torch.zeros(flat.shape[0], 0, dtype=torch.float64)
    weights = (present / present.sum(dim=0)).sum(dim=1)
    empty = present.sum(dim=1) == 0
    if empty.any():
        weights[empty] = 1.0 / int(empty.sum())
    return weights


def draw_order(masks: torch.Tensor, sampling: str, generator: torch.Generator) -> torch.Tensor:
    """The indices ``(N,)`` of the slices of ``masks`` ``(N, H, W)`` one epoch trains on, in order.

    ``uniform``: a shuffle, each slice once. ``class_balanced``: ``N`` draws with replacement, weighted by
    :func:`class_balanced_weights`. Both come from ``generator``, so an epoch's draws are reproducible.
    """
    if sampling == "uniform":
        return torch.randperm(masks.shape[0], generator=generator)
    if sampling == "class_balanced":
        return torch.multinomial(class_balanced_weights(masks), masks.shape[0], replacement=True, generator=generator)
    raise CovsegError(f"train.sampling is {sampling!r}; use one of {', '.join(SAMPLINGS)}")


def check_data_parallel(batch_size: int, images: int, world_size: int) -> None:
    """Refuse a data-parallel epoch (``world_size`` processes) in which no process would train: every process needs
    at least one image of each global batch, so a batch of fewer images than processes is skipped, and where
    ``batch_size`` or the epoch's ``images`` (which caps the first batch) is below ``world_size`` every batch is.
    A one-line :class:`CovsegError` says which, and how to fix it."""
    if world_size <= 1:
        return
    if batch_size < world_size:
        raise CovsegError(f"train.batch_size {batch_size} is smaller than the {world_size} processes torchrun started: "
                          f"each process trains on its share of every batch and needs at least one image of it; raise "
                          f"train.batch_size to {world_size} or more (it is the batch of all processes together), or "
                          f"start at most {batch_size} (torchrun --nproc-per-node)")
    if images < world_size:
        raise CovsegError(f"{counted(images, 'training image')} for the {world_size} processes torchrun started: each "
                          "process needs at least one image of every batch; start at most "
                          f"{images} (torchrun --nproc-per-node), or train on more images")


def share_weight(share: int, batch: int, world_size: int) -> float:
    """The factor on one process's loss (the mean over its ``share`` of a global batch of ``batch`` images) that
    makes DistributedDataParallel's average of the ``world_size`` processes' gradients the gradient of the mean over
    the whole batch: ``share * world_size / batch``. It is 1 where the batch splits evenly; a batch of 3 on 2
    processes weighs the share of 2 by 4/3 and that of 1 by 2/3, where an unweighted average gave the one image as
    much weight as the other two together."""
    return share * world_size / batch


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    masks: torch.Tensor,
    cfg: TrainConfig,
    epoch: int,
    device: torch.device,
    dtype: torch.dtype,
    dist: DistContext = DistContext(),
    averaged: AveragedModel | None = None,
    consistency: ConsistencyTerm | None = None,
    distill: DistillTerm | None = None,
) -> EpochResult:
    """One pass over augmented batches of the slices :func:`draw_order` draws (``cfg.sampling``: by default a
    shuffle); updates the learning rate every step.

    ``averaged`` (a :class:`torch.optim.swa_utils.AveragedModel` of ``model``, e.g. the EMA of
    :func:`weight_average`) is updated after every optimiser step; it never changes the training itself.

    Data-parallel (``dist.world_size`` > 1, ``model`` wrapped in DistributedDataParallel): every process
    draws the same global batch and augmentation, then trains on its contiguous share of it; DDP averages
    the gradients. A batch that does not split evenly gives some processes one image more; each process's loss
    is weighted by its share (:func:`share_weight`), so the update equals the single-process one when the loss is a
    per-image mean (``ce``) and batch norm is absent or synchronised (it is on CUDA); ``mfb_ce`` (a mean
    weighted by each share's own summed pixel weights), batch Dice and per-process batch-norm statistics on CPU
    make it an approximation. A last batch with fewer
    images than processes is skipped; an epoch in which every batch would be is refused
    (:func:`check_data_parallel`). The returned loss and accuracy are summed over all processes and
    averaged over the images (pixels) actually trained on, a skipped batch's left out.

    ``cfg.mixup_alpha`` above 0 blends each augmented batch with a cyclic shift of itself
    (:func:`covseg.transforms.mixup`, drawn from a stream of its own, so the batches are those drawn without it) and
    scores it as ``lam loss(y) + (1 - lam) loss(y[partner])``; the returned loss is that mix, the accuracy is
    against ``y``.

    ``consistency`` (:class:`covseg.consistency.ConsistencyTerm`, single process only) adds its mixed unlabelled
    slices to every batch (its ``norm`` ``own``: in a forward pass of their own, under :func:`batch_statistics`) and
    its weighted, warmed-up soft cross-entropy to the loss; its draws
    come from a stream of their own, so the labelled batches are those drawn without it. The returned loss is the
    labelled loss alone.

    ``distill`` (:class:`covseg.distill.DistillTerm`) adds its weighted KL term between the teachers' probabilities on
    each augmented labelled batch and the student's full-size logits; it draws nothing, so the batches are those
    drawn without it. The returned loss is the labelled loss alone.
    """
    if dist.enabled:
        check_data_parallel(cfg.batch_size, images.shape[0], dist.world_size)
    model.train()
    generator = epoch_generator(cfg.seed, epoch)
    order = draw_order(masks, cfg.sampling, generator)
    steps = math.ceil(images.shape[0] / cfg.batch_size)
    total_steps = steps * cfg.epochs
    loss_sum, correct, pixels, trained = 0.0, 0, 0, 0
    memory_format = training_memory_format(device)
    progressive = cfg.progressive_size if epoch < cfg.progressive_epochs() else None
    unlabelled = consistency.generator(cfg.seed, epoch) if consistency is not None else None
    mixup_draws = side_generator(cfg.seed, epoch, MIXUP_STREAM) if cfg.mixup_alpha else None
    for step in range(steps):
        index = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        x, y = augment_batch(images[index], masks[index], cfg.augment, generator, size=progressive)
        y_other, lam = None, 1.0  # the partners' label maps and their weight 1 - lam, when mixing
        weight = 1.0  # this process's share of the batch, as a factor on its loss (share_weight)
        if mixup_draws is not None:
            x, partner, lam = mixup(x, cfg.mixup_alpha, mixup_draws)
            y_other = y[partner]
        if dist.enabled:
            if x.shape[0] < dist.world_size:  # a last batch too small to give every process a sample
                continue
            batch = x.shape[0]
            x, y = x.tensor_split(dist.world_size)[dist.rank], y.tensor_split(dist.world_size)[dist.rank]
            weight = share_weight(x.shape[0], batch, dist.world_size)
            if y_other is not None:
                y_other = y_other.tensor_split(dist.world_size)[dist.rank]
        x = x.to(device).contiguous(memory_format=memory_format)
        y = y.to(device)
        if y_other is not None:
            y_other = y_other.to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, epoch * steps + step, steps)
        soft = distill.targets(x) if distill is not None else None
        mixed = target = None
        if consistency is not None:
            mixed, target = consistency.batch_for(model, unlabelled, progressive, device)
            mixed = mixed.contiguous(memory_format=memory_format)
            if consistency.norm == "shared":
                x = torch.cat([x, mixed])
        with autocast(device, dtype):
            outputs = model(x)
        if mixed is not None and consistency.norm == "own":
            with autocast(device, dtype), batch_statistics(model):
                extra = model(mixed)
            extra = extra[0] if isinstance(extra, list) else extra
        elif mixed is not None:
            b = y.shape[0]
            extra = (outputs[0] if isinstance(outputs, list) else outputs)[b:]
            outputs = [o[:b] for o in outputs] if isinstance(outputs, list) else outputs[:b]
            x = x[:b]
        loss = loss_fn(outputs, y)
        if y_other is not None and lam < 1:
            loss = lam * loss + (1 - lam) * loss_fn(outputs, y_other)
        total = loss
        if mixed is not None:
            total = loss + consistency.loss(extra, target, epoch * steps + step, total_steps)
        logits = outputs[0] if isinstance(outputs, list) else outputs  # deep supervision: full size first
        if soft is not None:
            total = total + distill.loss(logits, soft)
        if not torch.isfinite(total):
            raise CovsegError(f"the loss became {total.item()} at epoch {epoch + 1}"
                              + (f" (labelled {loss.item()})" if mixed is not None else "") + "; lower train.lr")
        optimizer.zero_grad(set_to_none=True)
        (total * weight if weight != 1.0 else total).backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if consistency is not None:
            consistency.update(model)
        if averaged is not None:
            averaged.update_parameters(model.module if isinstance(model, nn.parallel.DistributedDataParallel)
                                       else model)
        loss_sum += loss.item() * x.shape[0]
        trained += x.shape[0]  # the images this process trained on: a skipped last batch counts none
        correct += int((predicted_labels(logits, y, cfg.types_only) == y).sum())
        pixels += y.numel()
    if dist.enabled:
        import torch.distributed as torch_dist

        totals = torch.tensor([loss_sum, correct, pixels, trained], dtype=torch.float64, device=device)
        torch_dist.all_reduce(totals)
        loss_sum, correct, pixels, trained = totals.tolist()
    return EpochResult(loss_sum / trained, correct / pixels)


def predicted_labels(logits: torch.Tensor, target: torch.Tensor, types_only: bool = False) -> torch.Tensor:
    """Arg-max labels ``(B, H, W)`` of ``logits`` ``(B, C, H, W)``; with ``types_only`` (a type model,
    ``train.types_only``) the best lesion class on the pixels whose truth is a lesion and 0 elsewhere, so
    accuracy and Dice measure how well the truth's lesions are typed."""
    if not types_only:
        return class_argmax(logits)
    return torch.where(target > 0, class_argmax(logits[:, 1:]) + 1, torch.zeros_like(target))


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(1)`` for ``(B, C, H, W)`` scores, as ``(B, H, W)`` int64 labels: the lowest class among
    equal maxima, as ``argmax``. Unlike ``argmax``, which ranks NaN highest, a NaN score gets no defined label.

    A running comparison over the few classes: torch's ``argmax`` over the channel axis of an NCHW tensor
    reduces along a stride of ``H * W`` and takes about 144 ms for ``(8, 2, 352, 352)`` on 2 AVX2 cores, this
    about 11 ms (13x).
    """
    labels = torch.zeros(scores.shape[:1] + scores.shape[2:], dtype=torch.int64, device=scores.device)
    best = scores[:, 0]
    for c in range(1, scores.shape[1]):
        better = scores[:, c] > best
        labels.masked_fill_(better, c)
        best = torch.where(better, scores[:, c], best)
    return labels


def batch_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> list[np.ndarray]:
    """One confusion matrix per image of ``(B, H, W)`` label maps."""
    return [confusion_matrix(p.numpy(), t.numpy(), num_classes) for p, t in zip(pred.cpu(), target.cpu())]


def mean_foreground_dice(cms: list[np.ndarray]) -> float:
    """Mean over foreground classes of the per-image Dice (images whose truth holds the class)."""
    per_class = aggregate_per_image(cms)["dice"][1:]
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


@torch.inference_mode()
def validate(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    types_only: bool = False,
) -> EpochResult:
    """Loss, pixel accuracy and mean foreground Dice on validation images at the model's input size
    (with ``types_only``, of the truth's lesions typed: :func:`predicted_labels`)."""
    model.eval()
    loss_sum, correct, pixels = 0.0, 0, 0
    cms: list[np.ndarray] = []
    memory_format = training_memory_format(device)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device).contiguous(memory_format=memory_format)
        y = masks[start:start + batch_size].to(device)
        with autocast(device, dtype):
            logits = model(x)
        loss_sum += loss_fn(logits, y).item() * x.shape[0]
        pred = predicted_labels(logits, y, types_only)
        correct += int((pred == y).sum())
        pixels += y.numel()
        cms += batch_confusion(pred, y, num_classes)
    return EpochResult(loss_sum / images.shape[0], correct / pixels, mean_foreground_dice(cms))
