"""Losses and median-frequency class balancing.

Shapes: logits ``(B, C, H, W)`` float; targets ``(B, H, W)`` int64 class ids in ``[0, C)``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from covseg.errors import CovsegError

__all__ = ["DeepSupervisionLoss", "median_frequency_weights", "compute_lovasz_softmax", "compute_topk_cross_entropy",
           "DiceLoss", "DiceCELoss",
           "LesionTypeLoss",
           "LesionAndTypeLoss", "create_loss", "LOSSES", "DICE_MODES"]


def median_frequency_weights(masks: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus 2015; SegNet's class balancing): ``w_c = median_k(f_k) / f_c``.

    ``masks``: label maps (each ``(H, W)``, any sizes; array-likes of class ids ``0 .. num_classes - 1``), e.g. the
    training split's. ``f_c`` = pixels of class ``c`` / total pixels of the images in which ``c`` appears. Classes that
    appear in no mask get weight 0 (they cannot be learnt; e.g. pleural effusion in COVID-SemiSeg) and
    are left out of the median. Returns ``(num_classes,)`` float64. A mask holding an id outside
    ``0 .. num_classes - 1`` (labels not yet mapped to the task's classes) is refused in one line.
    """
    class_pixels = np.zeros(num_classes, dtype=np.float64)
    image_pixels = np.zeros(num_classes, dtype=np.float64)
    for mask in masks:
        ids = np.asarray(mask, dtype=np.int64).ravel()
        if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise CovsegError(f"cannot compute class weights: a training mask holds label {bad}, outside the "
                              f"{num_classes} classes 0..{num_classes - 1}; map the masks to the task's classes first")
        counts = np.bincount(ids, minlength=num_classes)
        class_pixels += counts
        image_pixels += np.where(counts > 0, ids.size, 0)  # every pixel of the image, for each class it holds
    present = image_pixels > 0
    if not present.any():
        raise CovsegError("cannot compute class weights: the training masks are empty")
    freq = np.zeros(num_classes)
    freq[present] = class_pixels[present] / image_pixels[present]
    median = float(np.median(freq[present]))
    weights = np.zeros(num_classes)
    weights[present] = median / freq[present]
    return weights


def compute_lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax loss (Berman et al. 2018) per (image, foreground class) pair, averaged over the pairs: the
    Lovász extension of ``1 - IoU``, a convex surrogate whose value at a hard (0 / 1) prediction is exactly
    ``1 - IoU``. (Berman's ``per_image=True`` averages each image's class mean instead; the two agree for binary.)

    ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` class ids. For every (image, foreground class) pair
    whose truth holds the class (the pairs the reported metric scores), the pixel errors ``|y - p|`` are sorted
    in decreasing order and weighted by the steps of the Jaccard loss along that order; the result is the mean
    over those pairs, a scalar (0 for a batch without any). Background is not scored. Computed in float32.
    """
    probs = logits.float().softmax(dim=1)[:, 1:].flatten(2)  # (B, C-1, N)
    truth = F.one_hot(target, logits.shape[1])[..., 1:].flatten(1, 2).transpose(1, 2).to(probs.dtype)  # (B, C-1, N)
    present = truth.sum(2) > 0
    if not present.any():
        return probs.sum() * 0.0
    probs, truth = probs[present], truth[present]  # (K, N)
    errors, order = (truth - probs).abs().sort(dim=1, descending=True)
    truth_sorted = truth.gather(1, order)
    total = truth_sorted.sum(1, keepdim=True)
    intersection = total - truth_sorted.cumsum(1)
    union = total + (1 - truth_sorted).cumsum(1)
    jaccard = 1 - intersection / union
    steps = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return (errors * steps).sum(1).mean()


def compute_topk_cross_entropy(logits: torch.Tensor, target: torch.Tensor, fraction: float,
                               weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the hardest ``fraction`` of the batch's pixels only (nnU-Net's TopK loss; its
    ``DC_and_topk_loss`` keeps 10 %, ``fraction`` 0.1).

    ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` int64 labels. Each pixel's cross-entropy (times its
    class's ``weight`` when given, as nnU-Net's) is computed in float32; the mean is over the ``ceil(fraction *
    B * H * W)`` largest. ``fraction`` 1 gives the plain mean (unweighted; a weighted mean divides by the pixels'
    summed weights instead, as :class:`torch.nn.CrossEntropyLoss`). The product is rounded to 9 decimals before the
    ceiling, so that float error does not add a pixel (0.07 of 100 pixels keeps 7, not 8). ``label_smoothing``
    scores each pixel against the smoothed target, as :class:`torch.nn.CrossEntropyLoss` does.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    per_pixel = F.cross_entropy(logits.float(), target, weight=weight, reduction="none",
                                label_smoothing=label_smoothing).flatten()
    keep = max(1, math.ceil(round(fraction * per_pixel.numel(), 9)))
    return per_pixel.topk(keep, sorted=False).values.mean()


def compute_focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): each pixel's cross-entropy ``-log p_t`` times ``(1 - p_t) ** gamma``, ``p_t`` its
    softmax probability of the true class, so that pixels already classified well weigh less; ``gamma`` 0 is plain
    cross-entropy.

    ``logits`` ``(B, C, H, W)``, ``target`` ``(B, H, W)`` int64 labels; computed in float32. The mean is over every
    pixel; with class ``weight`` ``(C,)`` each pixel's term is times its class's weight and the sum is divided by the
    pixels' summed weights, as :class:`torch.nn.CrossEntropyLoss` normalises a weighted mean.
    """
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    log_pt = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]
    # 1 - p_t, exact near p_t = 1, and floored: at a pixel predicted with certainty (p_t 1 in float32) the power's
    # derivative is infinite for gamma under 1, and infinite times log p_t = 0 would make the gradient NaN
    missed = (-torch.expm1(log_pt)).clamp_min(1e-12)
    per_pixel = -(missed ** gamma) * log_pt
    if weight is None:
        return per_pixel.mean()
    w = weight.to(per_pixel)[target]
    return (w * per_pixel).sum() / w.sum()


class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - mean (2 sum(p*y) + s) / (sum(p) + sum(y) + s)`` with ``s = 1e-5``.

    ``logits``: ``(B, C, H, W)``; ``target``: label map ``(B, H, W)``. With ``batch=True`` the sums run per
    class over the whole batch (batch Dice, nnU-Net's default) and the score is averaged over the foreground
    classes (background too with ``include_background``). With ``batch=False`` they run per image and class
    (sample Dice, MONAI's ``DiceLoss`` default) and the score is averaged over images and classes, so every
    image weighs the same whatever its lesion's size, closer to covseg's per-image Dice.

    A class absent from the truth (of the batch, or of one image with ``batch=False``) scores ~0 as soon as
    any probability mass falls on it (~1 only if none does): a near-constant term of ~1 with almost no
    gradient, as in MONAI with its default smoothing. Unlike the reported metric, which skips such images,
    these terms stay in the mean, so with ``batch=False`` they scale the Dice term of a multiclass batch down
    by the share of (image, class) pairs that are present. ``skip_absent=True`` drops them from the mean, as
    the reported metric does; a batch with no present pair then has a Dice term of 0.

    ``fn_weight`` (``beta``) turns the score into a Tversky index (Salehi et al. 2017),
    ``(2 TP + s) / (2 TP + 2 (1 - beta) FP + 2 beta FN + s)`` with the soft counts ``TP = sum(p*y)``,
    ``FP = sum(p) - TP``, ``FN = sum(y) - TP``: ``beta = 0.5`` is the Dice score above, a larger ``beta`` costs a
    missed lesion pixel more than a false one (a loss that leans towards recall).

    ``lesion_region=True`` adds one more region to the mean: the union of every foreground class (probability
    ``1 - p_0`` against the truth ``y > 0``), as nnU-Net's region-based training scores nested regions. For a
    multiclass task it rewards finding the lesion whatever its type; for a binary task it would repeat class 1.
    ``fn_weight_lesion_only=True`` (with ``lesion_region``) applies ``fn_weight`` to that union alone: the lesion
    leans towards recall while each type keeps plain Dice, so the types do not compete for recall.
    """

    def __init__(self, include_background: bool = False, smooth: float = 1e-5, batch: bool = True,
                 skip_absent: bool = False, lesion_region: bool = False, fn_weight: float = 0.5,
                 fn_weight_lesion_only: bool = False) -> None:
        super().__init__()
        if not 0 < fn_weight < 1:
            raise CovsegError(f"the Tversky weight of false negatives must lie in (0, 1), got {fn_weight}; "
                              "0.5 is plain Dice")
        if fn_weight_lesion_only and not lesion_region:
            raise CovsegError("a Tversky weight on the lesion region alone needs that region in the Dice term; "
                              "set train.lesion_dice=true as well")
        self.fn_weight = fn_weight
        self.fn_weight_lesion_only = fn_weight_lesion_only
        self.include_background = include_background
        self.smooth = smooth
        self.batch = batch
        self.skip_absent = skip_absent
        self.lesion_region = lesion_region

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
        if self.lesion_region:
            probs = torch.cat([probs, 1 - probs[:, :1]], dim=1)
            onehot = torch.cat([onehot, 1 - onehot[:, :1]], dim=1)
        dims = (0, 2, 3) if self.batch else (2, 3)
        inter = (probs * onehot).sum(dims)
        truth = onehot.sum(dims)
        if self.fn_weight == 0.5:
            denominator = probs.sum(dims) + truth
        else:  # Tversky: 2 TP + 2 (1 - beta) FP + 2 beta FN, beta for every region or the lesion union alone
            beta: float | torch.Tensor = self.fn_weight
            if self.fn_weight_lesion_only:  # plain Dice (0.5) for the types, beta for the lesion union
                beta = torch.full((probs.shape[1],), 0.5, dtype=probs.dtype, device=probs.device)
                beta[-1] = self.fn_weight
            denominator = 2 * inter + 2 * (1 - beta) * (probs.sum(dims) - inter) + 2 * beta * (truth - inter)
        score = (2 * inter + self.smooth) / (denominator + self.smooth)
        present = truth > 0
        if not self.include_background:
            score, present = score[..., 1:], present[..., 1:]
        if not self.skip_absent:
            return 1.0 - score.mean()
        if not present.any():
            return probs.sum() * 0.0
        return 1.0 - score[present].mean()


class DiceCELoss(nn.Module):
    """Sum of (optionally class-weighted) cross-entropy and soft Dice (or Tversky, ``fn_weight``; see
    :class:`DiceLoss`), plus ``lovasz_weight`` times :func:`compute_lovasz_softmax` when it is positive. With
    ``ce_topk`` under 1 the cross-entropy term is the mean over that fraction of the batch's hardest pixels
    (:func:`compute_topk_cross_entropy`). ``label_smoothing`` (eps) scores the cross-entropy term against the
    target ``(1 - eps) * one_hot + eps / C``, as :class:`torch.nn.CrossEntropyLoss`; the Dice term keeps the hard
    labels. ``focal_gamma`` above 0 makes the cross-entropy term a focal loss (:func:`compute_focal_loss`)."""

    def __init__(self, weight: torch.Tensor | None = None, dice_weight: float = 1.0, batch_dice: bool = True,
                 skip_absent: bool = False, lesion_region: bool = False, fn_weight: float = 0.5,
                 fn_weight_lesion_only: bool = False, lovasz_weight: float = 0.0, ce_topk: float = 1.0,
                 label_smoothing: float = 0.0, focal_gamma: float = 0.0) -> None:
        super().__init__()
        self.ce = _CrossEntropy(weight=weight, topk=ce_topk, label_smoothing=label_smoothing, focal_gamma=focal_gamma)
        self.dice = DiceLoss(batch=batch_dice, skip_absent=skip_absent, lesion_region=lesion_region,
                             fn_weight=fn_weight, fn_weight_lesion_only=fn_weight_lesion_only)
        self.dice_weight = dice_weight
        self.lovasz_weight = lovasz_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, target) + self.dice_weight * self.dice(logits, target)
        if self.lovasz_weight > 0:
            loss = loss + self.lovasz_weight * compute_lovasz_softmax(logits, target)
        return loss


class LesionTypeLoss(nn.Module):
    """Which lesion each lesion pixel is, and nothing else: cross-entropy plus per-image soft Dice over the
    lesion classes, on the pixels whose truth is a lesion (``target > 0``) only.

    ``logits`` ``(B, C, H, W)``: channel 0 (background) gets no gradient; the softmax over channels ``1..C-1``
    is scored against ``target - 1`` on lesion pixels, the cross-entropy weighted by ``weight`` (all ``C``
    classes' weights, e.g. median-frequency ones; the background's is unused) when given. The Dice term runs
    per (image, lesion class) pair over those pixels and skips the pairs whose truth lacks the class, as the
    reported metric does. A model trained so is a type model for a binary lesion model
    (:class:`covseg.inference.LesionTypePredictor`), which reads only its odds among the lesion classes. A
    batch without lesion pixels has a loss of 0. The weighted cross-entropy is ``sum_i w_i ce_i / sum_i w_i`` over the
    lesion pixels, so a pixel of a class weighted 0 (one absent from the training masks, as median-frequency weights
    give it) adds nothing; it is 0 when no pixel of positive weight is left (torch's would be 0 / 0, NaN).
    """

    def __init__(self, weight: torch.Tensor | None = None, smooth: float = 1e-5) -> None:
        super().__init__()
        self.smooth = smooth
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32)[1:])

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lesion = target > 0
        types = logits[:, 1:].float()
        if not lesion.any():
            return types.sum() * 0.0
        wanted = (target - 1).clamp(min=0)
        pixel_logits, pixel_types = types.permute(0, 2, 3, 1)[lesion], wanted[lesion]  # (N, C-1), (N,)
        if self.weight is None:
            ce = F.cross_entropy(pixel_logits, pixel_types)
        else:  # torch's weighted mean, but 0 (not 0 / 0) when every lesion pixel's class is weighted 0
            weighted = F.cross_entropy(pixel_logits, pixel_types, weight=self.weight, reduction="sum")
            total = self.weight[pixel_types].sum()
            ce = weighted / torch.where(total > 0, total, torch.ones_like(total))
        inside = lesion[:, None].to(types.dtype)
        probs = types.softmax(dim=1) * inside
        onehot = F.one_hot(wanted, types.shape[1]).permute(0, 3, 1, 2).to(types.dtype) * inside
        inter = (probs * onehot).sum((2, 3))
        truth = onehot.sum((2, 3))
        score = (2 * inter + self.smooth) / (probs.sum((2, 3)) + truth + self.smooth)
        return ce + 1.0 - score[truth > 0].mean()


class LesionAndTypeLoss(nn.Module):
    """The lesion, then its type, in one network: what ``--lesion-model`` gets from a binary model and a type
    model, learnt by one multiclass output.

    ``logits`` ``(B, C, H, W)`` are read as a lesion probability ``q = 1 - p_0`` and lesion-type odds (the
    softmax over channels ``1..C-1``), which the ordinary softmax gives together: ``p_c = q * share_c``. The loss
    is the binary task's loss on the lesion — cross-entropy plus per-image Dice of the two-class logits
    ``[z_0, logsumexp(z_1..z_{C-1})]`` against ``target > 0``, the Dice skipping images without lesion — plus
    :class:`LesionTypeLoss` on the truth's lesion pixels (its cross-entropy weighted by ``weight`` when given).
    Arg-max labels and every predictor read the model as any multiclass model.
    """

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.lesion = DiceCELoss(batch_dice=False, skip_absent=True)
        self.types = LesionTypeLoss(weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        lesion_logits = torch.stack([z[:, 0], torch.logsumexp(z[:, 1:], dim=1)], dim=1)
        return self.lesion(lesion_logits, (target > 0).long()) + self.types(z, target)


class _CrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy computed in float32 whatever the autocast dtype of the logits; over the hardest ``topk``
    fraction of the pixels only when it is under 1 (:func:`compute_topk_cross_entropy`); against targets smoothed
    by ``label_smoothing`` when it is positive; a focal loss when ``focal_gamma`` is (:func:`compute_focal_loss`;
    not with the other two)."""

    def __init__(self, weight: torch.Tensor | None = None, topk: float = 1.0, label_smoothing: float = 0.0,
                 focal_gamma: float = 0.0) -> None:
        super().__init__(weight=weight, label_smoothing=label_smoothing)
        self.topk = topk
        self.focal_gamma = focal_gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.focal_gamma > 0:
            return compute_focal_loss(logits, target, self.focal_gamma, self.weight)
        if self.topk < 1:
            return compute_topk_cross_entropy(logits, target, self.topk, self.weight, self.label_smoothing)
        return super().forward(logits.float(), target)


class DeepSupervisionLoss(nn.Module):
    """A loss over deep-supervision outputs: ``sum_i w_i * loss(logits_i, target_i)``.

    ``logits``: a list, full-size ``(B, C, H, W)`` first, then coarser levels ``(B, C, H/2^i, W/2^i)``;
    ``target_i`` is the label map ``(B, H, W)`` down-sampled by nearest-neighbour (``nearest-exact``, the
    centre-most pixel of each block, as :func:`covseg.transforms.stack_resized`) to level ``i``. Weights
    ``w_i`` are proportional to ``1 / 2^i`` and sum to 1 (nnU-Net's halving weights, though nnU-Net also
    drops its coarsest level). A single tensor is passed straight to ``loss``.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.loss(logits, target)
        weights = torch.tensor([0.5 ** i for i in range(len(logits))])
        weights = weights / weights.sum()
        total = logits[0].new_zeros((), dtype=torch.float32)
        for w, level in zip(weights.tolist(), logits):
            t = target
            if level.shape[-2:] != target.shape[-2:]:
                t = F.interpolate(target[:, None].float(), size=level.shape[-2:], mode="nearest-exact")[:, 0].long()
            total = total + w * self.loss(level, t)
        return total


LOSSES = ("ce", "mfb_ce", "dice", "dice_ce", "mfb_dice_ce")
DICE_MODES = ("batch", "sample", "present")


def _check_type_loss(option: str, summary: str, other: str, name: str, dice: str, clash: bool,
                     class_weights: np.ndarray | None) -> None:
    """Refuse ``train.<option>`` (a loss that types lesions) with a loss, Dice reduction or option it cannot use
    (``clash``: another loss option is on), or for the binary task."""
    if name not in ("dice_ce", "mfb_dice_ce") or dice != "present" or clash:
        raise CovsegError(f"train.{option} is its own loss ({summary}), not train.loss={name} with "
                          f"train.dice={dice}{' and another loss option' if clash else ''}: use train.loss=dice_ce "
                          f"(or mfb_dice_ce), train.dice=present, train.lesion_dice=false, train.{other}=false")
    if class_weights is not None and len(class_weights) < 3:
        raise CovsegError(f"train.{option} is for the multiclass task: with one lesion class there is no type to "
                          "learn; drop the option or use --task multiclass")


def create_loss(name: str, class_weights: np.ndarray | None = None, dice: str = "batch",
                lesion_region: bool = False, types_only: bool = False, lesion_and_type: bool = False,
                dice_weight: float = 1.0, tversky_beta: float = 0.5,
                tversky_lesion_only: bool = False, lovasz_weight: float = 0.0, ce_topk: float = 1.0,
                label_smoothing: float = 0.0, focal_gamma: float = 0.0) -> nn.Module:
    """Build a loss by name. ``mfb_*`` variants need ``class_weights`` (from :func:`median_frequency_weights`).

    ``dice`` picks the Dice term's reduction for the ``*dice*`` losses (``ce`` and ``mfb_ce`` refuse any but the
    default): ``"batch"`` (batch Dice), ``"sample"`` (per-image Dice) or ``"present"`` (per-image Dice over the
    (image, class) pairs whose truth holds the class, as the reported metric; see :class:`DiceLoss`).
    ``lesion_region`` adds the union of the foreground classes to the Dice term as one more region (``*dice*`` losses
    of three or more classes only).
    ``types_only`` gives :class:`LesionTypeLoss` instead (``dice_ce``, or ``mfb_dice_ce`` for a weighted CE
    term, with ``present`` Dice, three or more classes; ``train.types_only``), and ``lesion_and_type``
    :class:`LesionAndTypeLoss` (the same conditions; ``train.lesion_and_type``). ``dice_weight`` scales the Dice
    term against the cross-entropy term's 1 (``dice_ce`` and ``mfb_dice_ce`` only; ``train.dice_weight``).
    ``tversky_beta`` weighs false negatives in the Dice term (a Tversky index; 0.5 is Dice; ``*dice*`` losses
    without ``types_only`` / ``lesion_and_type``; ``train.tversky_beta``); ``tversky_lesion_only`` applies it to
    the lesion region alone (needs ``lesion_region``; ``train.tversky_lesion_only``). ``lovasz_weight`` adds
    that multiple of the Lovász-softmax loss per (image, class) pair (:func:`compute_lovasz_softmax`; ``dice_ce`` and
    ``mfb_dice_ce`` only; ``train.lovasz_weight``). ``ce_topk`` under 1 keeps only that fraction of the batch's
    hardest pixels in the cross-entropy term (nnU-Net's TopK; :func:`compute_topk_cross_entropy`; ``ce``,
    ``mfb_ce``, ``dice_ce`` and ``mfb_dice_ce`` only; ``train.ce_topk``). ``label_smoothing`` (eps, in [0, 1))
    scores the cross-entropy term against ``(1 - eps) * one_hot + eps / C`` (the same four losses;
    ``train.label_smoothing``). ``focal_gamma`` above 0 makes the cross-entropy term a focal loss
    (:func:`compute_focal_loss`; the same four losses, without ``ce_topk`` or ``label_smoothing``; ``train.focal_gamma``).
    """
    if name not in LOSSES:
        raise CovsegError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
    if dice not in DICE_MODES:
        raise CovsegError(f"unknown Dice reduction {dice!r}: use one of {', '.join(DICE_MODES)}")
    with_type_loss = " with train.types_only / train.lesion_and_type" if types_only or lesion_and_type else ""
    if dice_weight != 1.0 and (name not in ("dice_ce", "mfb_dice_ce") or with_type_loss):
        raise CovsegError(f"train.dice_weight={dice_weight} weighs the Dice term of train.loss=dice_ce or mfb_dice_ce "
                          f"against its CE term, not of {name!r}"
                          f"{with_type_loss}"
                          "; drop train.dice_weight or use one of those losses")
    if not dice_weight > 0:
        raise CovsegError(f"train.dice_weight must be positive, got {dice_weight}; for cross-entropy alone use "
                          "train.loss=ce")
    if tversky_beta != 0.5 and ("dice" not in name or with_type_loss):
        raise CovsegError(f"train.tversky_beta={tversky_beta} weighs the false negatives of a Dice term, which "
                          f"{name!r}{with_type_loss}"
                          " does not have; drop train.tversky_beta or use train.loss=dice_ce, mfb_dice_ce or dice")
    if lovasz_weight and (name not in ("dice_ce", "mfb_dice_ce") or with_type_loss):
        raise CovsegError(f"train.lovasz_weight={lovasz_weight} adds a Lovász term to train.loss=dice_ce or "
                          f"mfb_dice_ce, not to {name!r}"
                          f"{with_type_loss}"
                          "; drop train.lovasz_weight or use one of those losses")
    if ce_topk != 1.0 and (name == "dice" or with_type_loss):
        raise CovsegError(f"train.ce_topk={ce_topk} keeps the hardest pixels of a cross-entropy term, which "
                          f"{name!r}{with_type_loss} does not have; drop train.ce_topk or use train.loss=dice_ce, "
                          "mfb_dice_ce, ce or mfb_ce")
    if not 0 <= label_smoothing < 1:
        raise CovsegError(f"train.label_smoothing must lie in [0, 1), got {label_smoothing}")
    if label_smoothing and (name == "dice" or with_type_loss):
        raise CovsegError(f"train.label_smoothing={label_smoothing} smooths the targets of a cross-entropy term, which "
                          f"{name!r}{with_type_loss} does not have; drop train.label_smoothing or use "
                          "train.loss=dice_ce, mfb_dice_ce, ce or mfb_ce")
    if not focal_gamma >= 0:
        raise CovsegError(f"train.focal_gamma must be >= 0, got {focal_gamma}")
    if focal_gamma and (name == "dice" or with_type_loss):
        raise CovsegError(f"train.focal_gamma={focal_gamma} makes a cross-entropy term focal, which {name!r}"
                          f"{with_type_loss} does not have; drop train.focal_gamma or use train.loss=dice_ce, "
                          "mfb_dice_ce, ce or mfb_ce")
    if focal_gamma and (ce_topk != 1.0 or label_smoothing):
        other = "train.ce_topk" if ce_topk != 1.0 else "train.label_smoothing"
        raise CovsegError(f"train.focal_gamma and {other} both change the cross-entropy term; set one of them")
    if dice != "batch" and name in ("ce", "mfb_ce") and not with_type_loss:  # those say what they need below
        raise CovsegError(f"train.dice={dice} picks how the Dice term is reduced, but train.loss={name} has no "
                          "Dice term; set train.dice=batch (its default) or use train.loss=dice_ce, mfb_dice_ce "
                          "or dice")
    if tversky_lesion_only and tversky_beta == 0.5:
        raise CovsegError("train.tversky_lesion_only applies train.tversky_beta to the lesion region, but "
                          "train.tversky_beta is 0.5 (plain Dice); set it, e.g. train.tversky_beta=0.7")
    weight = None
    if name.startswith("mfb_"):
        if class_weights is None:
            raise ValueError(f"loss {name!r} needs class weights")
        weight = torch.as_tensor(class_weights, dtype=torch.float32)
    if lesion_region and "dice" not in name:
        raise CovsegError(f"train.lesion_dice needs a Dice loss, not {name!r}; use dice_ce or dice")
    if lesion_region and class_weights is not None and len(class_weights) < 3:
        raise CovsegError("train.lesion_dice is for the multiclass task: with one foreground class the lesion "
                          "is that class already; drop the option or use --task multiclass")
    if types_only:
        _check_type_loss("types_only", "lesion pixels only, CE + per-image Dice over the lesion classes",
                         "lesion_and_type", name, dice, lesion_region or lesion_and_type, class_weights)
        return LesionTypeLoss(weight)
    if lesion_and_type:
        _check_type_loss("lesion_and_type", "the lesion's CE + per-image Dice, then its type's", "types_only",
                         name, dice, lesion_region, class_weights)
        return LesionAndTypeLoss(weight)
    if name in ("ce", "mfb_ce"):
        return _CrossEntropy(weight=weight, topk=ce_topk, label_smoothing=label_smoothing, focal_gamma=focal_gamma)
    batch, skip_absent = dice == "batch", dice == "present"
    if name == "dice":
        return DiceLoss(batch=batch, skip_absent=skip_absent, lesion_region=lesion_region, fn_weight=tversky_beta,
                        fn_weight_lesion_only=tversky_lesion_only)
    return DiceCELoss(weight=weight, dice_weight=dice_weight, batch_dice=batch, skip_absent=skip_absent,
                      lesion_region=lesion_region, fn_weight=tversky_beta, fn_weight_lesion_only=tversky_lesion_only,
                      lovasz_weight=lovasz_weight, ce_topk=ce_topk, label_smoothing=label_smoothing,
                      focal_gamma=focal_gamma)
