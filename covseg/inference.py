"""Inference: batched slices under ``torch.inference_mode()``, probabilities back at each image's size.

Input images are ``(H, W)`` float32 in [0, 1] of any size; each is resized to the model's square input (each
side stretched, or aspect kept and zero-padded: ``data.resize``), predicted in batches, and its class
probabilities ``(C, H, W)`` are cropped to the image and resized back (bilinear) before the arg-max, so every
label map and metric is at the image's own size.

A *backend* maps an input batch ``(B, 1, S, S)`` float32 to logits ``(B, C, S, S)`` float32:
:class:`TorchBackend` (channels-last, bf16 autocast where it is fast and agrees with fp32) or
``covseg.export.OnnxBackend`` (ONNX Runtime).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.intensity import normalize_image
from covseg.models import fold_batch_norm, fuse_for_inference
from covseg.progress import print_beside_bars
from covseg.runtime import autocast
from covseg.transforms import fit_box, resize_probs, stack_resized
from covseg.wording import agreement_percent

__all__ = ["Backend", "TorchBackend", "Predictor", "network_input", "EnsemblePredictor", "LesionTypePredictor",
           "BF16_MIN_AGREEMENT", "label_agreement", "image_pixels", "backends_used"]

BF16_MIN_AGREEMENT = 0.999
"""Least fraction of pixels whose bf16 and fp32 labels agree for bf16 results to be used."""


class Backend(Protocol):
    """Anything that turns ``(B, 1, S, S)`` float32 images into ``(B, C, S, S)`` float32 logits. ``pixels``, when
    given, is a ``(B, S, S)`` bool mask of the pixels that hold each image (``data.resize=pad`` leaves zero padding
    around it), for a backend that checks its own precision on them; others ignore it."""

    description: str

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor: ...


def label_agreement(a: torch.Tensor, b: torch.Tensor, pixels: torch.Tensor | None = None) -> float:
    """Fraction of pixels where the arg-max labels of two logit batches ``(B, C, H, W)`` agree: over every pixel,
    or over those a ``(B, H, W)`` bool mask ``pixels`` marks (an image's own pixels, not the padding around it).
    Counted exactly: a float32 mean rounds 60,938 alike of 60,999 (just under 99.9 %) up to the
    :data:`BF16_MIN_AGREEMENT` bar, and one pixel differing among 2**25 to 1. NaN where no pixel is checked."""
    same = a.argmax(1) == b.argmax(1)
    if pixels is not None:
        same = same[pixels.to(same.device)]
    return int(same.sum()) / same.numel() if same.numel() else float("nan")


class TorchBackend:
    """A PyTorch model on ``device`` in channels-last memory format, under ``dtype`` autocast.

    Passes run a copy with batch norm folded into the convolutions (:func:`covseg.models.fold_batch_norm`, the
    same function up to float rounding, one pass over each feature map fewer) unless the bf16 check below keeps
    the trained model; in bf16 on a CPU with native bf16 the copy also runs each convolution + ReLU as one oneDNN
    call (:func:`covseg.models.fuse_conv_relu_bf16`, the same logits). On a 2-core AMX Xeon (session 33) the
    default U-Net at 512x512, batch 8, ran 1.25x faster in bf16 folded than as trained and 1.17x faster again
    fused; on an AVX512-BF16 EPYC (session 9) fp32 folded ran a 300-slice scan 1.16x faster
    (benchmarks/RESULTS.md).

    With a reduced-precision ``dtype`` the first batch is also run in fp32, and bf16 is kept only if at least
    :data:`BF16_MIN_AGREEMENT` of its pixels get the same label: first the folded copy is tried, then, since
    folded weights and biases rounded to bf16 can agree less with fp32 than the trained ones (it varies by
    model), the trained model as it is; if neither agrees enough the backend switches to fp32 for good (and says
    so on stderr). ``agreement`` keeps the fraction measured for the bf16 network kept (the best one tried
    where none was), ``bf16_folded`` whether that network is the folded copy. The copies the choice leaves unused
    are dropped. A fused copy that fails to run (an op this PyTorch lacks on this CPU) gives way to the unfused one.

    ``fp32_engine="onnxruntime"`` (CPU only) runs the folded copy's fp32 passes through ONNX Runtime instead of
    PyTorch, traced in memory on first use (:func:`covseg.export.onnx_backend_of`, with PyTorch's thread
    count): the same fp32 arithmetic, 1.42x faster than PyTorch's fp32 on a 300-slice scan on an AVX-512 EPYC
    (benchmarks/RESULTS.md). A model that cannot be traced keeps PyTorch. The caller's ``model`` itself is moved
    to ``device``, put in channels-last format and eval mode (``nn.Module.to`` works in place).
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, fp32_engine: str = "torch",
                 name: str = "") -> None:
        """``name`` (e.g. the checkpoint's path) heads the line that says the backend fell back to fp32, so that
        with several models the user can tell which one did."""
        if fp32_engine not in ("torch", "onnxruntime"):
            raise ValueError(f"fp32_engine must be torch or onnxruntime, not {fp32_engine!r}")
        if fp32_engine == "onnxruntime" and device.type != "cpu":
            raise ValueError("fp32_engine='onnxruntime' runs on the CPU only")
        self.model = model.to(device).to(memory_format=torch.channels_last).eval()
        self.device = device
        self.dtype = dtype
        self.fp32_engine = fp32_engine
        self.name = name
        self.agreement: float | None = None
        self._folded: nn.Module | None = None
        self._fused: nn.Module | None = None
        self._onnx: Backend | None = None
        self.bf16_folded: bool | None = None

    @property
    def description(self) -> str:
        if self.dtype == torch.float32 and self.fp32_engine == "onnxruntime":
            return "onnxruntime cpu float32 (traced from torch)"
        return f"torch {self.device.type} {str(self.dtype).removeprefix('torch.')}"

    def _network(self, dtype: torch.dtype) -> nn.Module:
        """The folded copy (for bf16 on a CPU with each convolution + ReLU fused), but for a reduced ``dtype``
        whose check kept the trained model."""
        if dtype != torch.float32 and self.bf16_folded is False:
            return self.model
        if dtype != torch.float32 and self._fused is not None:
            return self._fused
        if self._folded is None:
            self._folded = fold_batch_norm(self.model).to(memory_format=torch.channels_last)
        if dtype == torch.float32:
            return self._folded
        self._fused = fuse_for_inference(self._folded, dtype, self.device)
        return self._fused

    def _onnx_backend(self, x: torch.Tensor) -> Backend | None:
        if self._onnx is None and self.fp32_engine == "onnxruntime":
            from covseg.export import onnx_backend_of

            try:
                self._onnx = onnx_backend_of(self._network(torch.float32), x.shape[-1], torch.get_num_threads())
            except Exception:  # a model the tracer or ONNX Runtime cannot take: PyTorch runs it
                self.fp32_engine = "torch"
        return self._onnx

    @torch.inference_mode()
    def _logits(self, x: torch.Tensor, dtype: torch.dtype, network: nn.Module | None = None) -> torch.Tensor:
        if dtype == torch.float32:
            onnx = self._onnx_backend(x)
            if onnx is not None:
                return onnx(x)
        with autocast(self.device, dtype):
            return (network if network is not None else self._network(dtype))(x).float()

    def _choose_low_precision(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Run the first batch in fp32 and in ``self.dtype`` (the folded copy, then the trained model); keep the
        first reduced-precision network whose labels agree enough with fp32's on the images' own ``pixels``
        (``(B, S, S)`` bool; default every pixel), else switch to fp32."""
        reference = self._logits(x, torch.float32)
        best = 0.0
        for folded, network in ((True, self._network(self.dtype)), (False, self.model)):
            try:
                logits = self._logits(x, self.dtype, network)
            except RuntimeError:
                if network is self._folded or network is self.model:
                    raise
                self._fused = network = self._folded  # the fused op failed here: the folded copy runs unfused
                logits = self._logits(x, self.dtype, network)
            agreement = label_agreement(logits, reference, pixels)
            best = max(best, agreement)
            if agreement >= BF16_MIN_AGREEMENT:
                self.agreement, self.bf16_folded = agreement, folded
                self._drop_unused()
                return logits
        self.agreement = best
        whose = f"{self.name}: " if self.name else ""
        print_beside_bars(f"covseg: warning: {whose}{self.dtype} labels agree with fp32 on only "
                          f"{agreement_percent(best, 4)} of pixels; "
                          "using fp32")  # the first batch: predict's progress bar is on screen
        self.dtype = torch.float32
        self._drop_unused()
        return reference

    def _drop_unused(self) -> None:
        """Free the copies the bf16 check left unused (the backend never leaves the precision it chose)."""
        if self.dtype == torch.float32:
            self._fused = None
            return
        self._onnx = None
        if not self.bf16_folded:
            self._fused = None
        if self._fused is not self._folded:
            self._folded = None

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        if self.dtype != torch.float32 and self.agreement is None:
            return self._choose_low_precision(x, pixels)
        return self._logits(x, self.dtype)


def network_input(images: Sequence[np.ndarray], input_size: int, normalize: str = "none",
                  resize: str = "stretch") -> torch.Tensor:
    """The network input ``(B, 1, S, S)`` float32 of ``(H, W)`` images in [0, 1]: each normalised as
    ``normalize`` says, then brought to ``S = input_size`` square as ``resize`` says (as in training)."""
    x, _ = stack_resized([normalize_image(image, normalize) for image in images], None, input_size, resize)
    return x


def image_pixels(boxes: Sequence[tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """``(B, size, size)`` bool: where each image lies in the network input, from its
    :func:`covseg.transforms.fit_box` ``(top, left, h, w)``; the rest is padding."""
    mask = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for i, (top, left, h, w) in enumerate(boxes):
        mask[i, top:top + h, left:left + w] = True
    return mask


class Predictor:
    """Normalise (``data.normalize`` of the model's run), resize (``data.resize``), batch, run a backend,
    softmax, and resize probabilities back to each image's size."""

    def __init__(self, backend: Backend, input_size: int, batch_size: int = 8, flip_tta: bool = False,
                 normalize: str = "none", resize: str = "stretch") -> None:
        self.backend = backend
        self.normalize = normalize
        self.resize = resize
        self.input_size = input_size
        self.batch_size = batch_size
        self.flip_tta = flip_tta

    def batch_probabilities(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax probabilities ``(B, C, S, S)`` float32 of an input batch ``(B, 1, S, S)``; ``pixels`` (``(B, S,
        S)`` bool, the images' own pixels) goes to the backend's precision check."""
        probs = self.backend(x, pixels).softmax(1)
        if self.flip_tta:
            probs = (probs + self.backend(x.flip(-1)).softmax(1).flip(-1)) / 2
        return probs

    def __call__(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield class probabilities ``(C, H, W)`` float32 for each ``(H, W)`` image, in order."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = network_input(chunk, self.input_size, self.normalize, self.resize)
            boxes = [fit_box(*image.shape[-2:], self.input_size, self.resize) for image in chunk]
            probs = self.batch_probabilities(x, image_pixels(boxes, self.input_size)).cpu()
            for image, p, box in zip(chunk, probs, boxes):
                yield resize_probs(p[None], *image.shape[-2:], box)[0].numpy()


class EnsemblePredictor:
    """Average the class probabilities ``(C, H, W)`` of several predictors image by image (a fold or seed
    ensemble, as nnU-Net's). Every member must predict the same label scheme; each keeps its own input
    size, normalisation and resize mode."""

    def __init__(self, members: Sequence[Predictor]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one predictor")
        self.members = list(members)
        self.batch_size = min(m.batch_size for m in self.members)

    def __call__(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the members' mean class probabilities ``(C, H, W)`` float32 for each image, in order."""
        for probs in zip(*(member(images) for member in self.members)):
            yield np.mean(probs, axis=0, dtype=np.float32)


class LesionTypePredictor:
    """Two models in sequence (as lungmask's model fusion): where the lesion is, from a binary model, and which
    lesion it is, from a multiclass one.

    With ``q`` the binary model's lesion probability ``(H, W)`` and ``p`` the multiclass model's probabilities
    ``(C, H, W)`` (class 0 background), it yields ``(C, H, W)`` float32 probabilities ``1 - q`` for class 0 and
    ``q * p_c / sum_k p_k`` for each lesion class ``c`` of ``lesion_classes`` (sum over those too; 0 for the
    others; even shares where the ``p_k`` all underflow to 0 in float32): the multiclass model's odds among the
    lesion types, spread over the binary model's lesion probability. A pixel is then labelled lesion only where
    ``q`` times its type's share beats ``1 - q``: within the binary model's lesion (``q > 1/2``), a little less
    where the types are in doubt.

    ``lesion_classes`` (default: every class but 0; each counted once; one the type model lacks is refused) should
    leave out the classes the multiclass model never saw in training (pleural effusion for COVID-SemiSeg): where
    that model calls background, its odds among the lesion classes are arbitrary, and an unlearnt class can win
    them. Either side may be an ensemble. An ensemble of type models gives the mean of its members' shares (each
    member's odds normalised first), so a type model trained on lesion pixels only (``train.types_only``), whose
    background output is untrained and scales its odds arbitrarily, weighs the same as a multiclass model.
    """

    def __init__(self, lesion: Predictor | EnsemblePredictor, types: Predictor | EnsemblePredictor,
                 lesion_classes: Sequence[int] | None = None) -> None:
        self.lesion = lesion
        self.types = types
        self.lesion_classes = None if lesion_classes is None else sorted(set(lesion_classes))
        if self.lesion_classes is not None and (not self.lesion_classes or min(self.lesion_classes) < 1):
            raise ValueError(f"lesion classes must be foreground class ids (>= 1), got {lesion_classes}")
        self.batch_size = min(lesion.batch_size, types.batch_size)

    def __call__(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the combined class probabilities ``(C, H, W)`` float32 for each ``(H, W)`` image, in order."""
        type_models = self.types.members if isinstance(self.types, EnsemblePredictor) else [self.types]
        for lesion, *types in zip(self.lesion(images), *(model(images) for model in type_models)):
            q = lesion[1]
            classes = types[0].shape[0]
            if self.lesion_classes and self.lesion_classes[-1] >= classes:
                raise CovsegError(f"lesion class {self.lesion_classes[-1]} is not one of the type model's {classes} "
                                  f"classes (0 to {classes - 1}); give lesion classes from 1 to {classes - 1} (a "
                                  "run's class_weights.json must hold one weight per class of its model)")
            chosen = self.lesion_classes or list(range(1, classes))
            shares = np.zeros_like(types[0][1:])
            for probs in types:
                odds = np.zeros_like(probs[1:])
                odds[[c - 1 for c in chosen]] = probs[chosen]
                total = odds.sum(0)
                # where the lesion classes' probabilities underflowed (the model sure of background), even shares
                odds[[c - 1 for c in chosen]] = np.where(total > 0, odds[[c - 1 for c in chosen]], 1.0)
                shares += odds / np.where(total > 0, total, len(chosen))
            yield np.concatenate([(1 - q)[None], q[None] * shares / len(types)]).astype(np.float32)


def backends_used(predictor: Predictor | EnsemblePredictor | LesionTypePredictor) -> str:
    """The backends that ran, as reports name them: read after use, since a bf16 backend whose labels disagreed
    with fp32 has switched to fp32 (e.g. ``"onnxruntime cpu float32 (traced from torch)"``; several, sorted and
    comma-separated, for an ensemble or a lesion model with a type model)."""
    return ", ".join(sorted(_backend_descriptions(predictor)))


def _backend_descriptions(predictor: Predictor | EnsemblePredictor | LesionTypePredictor) -> set[str]:
    if isinstance(predictor, EnsemblePredictor):
        return set().union(*(_backend_descriptions(member) for member in predictor.members))
    if isinstance(predictor, LesionTypePredictor):
        return _backend_descriptions(predictor.lesion) | _backend_descriptions(predictor.types)
    return {predictor.backend.description}
