"""Inference: batched slices under ``torch.inference_mode()``, probabilities back at each image's size.

Input images are ``(H, W)`` float32 in [0, 1] of any size; each is resized to the model's square input,
predicted in batches, and its class probabilities ``(C, H, W)`` are resized back (bilinear) before the
arg-max, so every label map and metric is at the image's own size.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from covseg.runtime import autocast
from covseg.transforms import resize_probs, stack_resized

__all__ = ["Predictor", "predict_probabilities"]


class Predictor:
    """A model ready for inference: device, precision, input size and batch size fixed once."""

    def __init__(self, model: nn.Module, input_size: int, device: torch.device, dtype: torch.dtype,
                 batch_size: int = 8, flip_tta: bool = False) -> None:
        self.model = model.to(device).to(memory_format=torch.channels_last).eval()
        self.input_size = input_size
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.flip_tta = flip_tta

    @torch.inference_mode()
    def batch_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(B, C, S, S)`` float32 of an input batch ``(B, 1, S, S)``."""
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.dtype):
            probs = self.model(x).float().softmax(1)
            if self.flip_tta:
                probs = probs + self.model(x.flip(-1)).float().softmax(1).flip(-1)
                probs = probs / 2
        return probs.float()

    def __call__(self, images: Sequence[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield class probabilities ``(C, H, W)`` float32 for each ``(H, W)`` image, in order."""
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            x, _ = stack_resized(chunk, None, self.input_size)
            probs = self.batch_probabilities(x).cpu()
            for image, p in zip(chunk, probs):
                yield resize_probs(p[None], *image.shape[-2:])[0].numpy()


def predict_probabilities(predictor: Predictor, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """All of :class:`Predictor`'s outputs as a list."""
    return list(predictor(images))
