"""Input-size checks shared by every encoder-decoder model."""
from __future__ import annotations

import torch

from covseg.errors import CovsegError

__all__ = ["nearest_valid_size", "check_input_size", "check_input_channels"]


def nearest_valid_size(size: int, depth: int) -> int:
    """The multiple of ``2 ** depth`` nearest to ``size`` (ties go up), at least ``2 ** depth``."""
    step = 2**depth
    return max(step, int((size + step / 2) // step) * step)


def check_input_size(height: int, width: int, depth: int, model: str) -> None:
    """Raise a :class:`CovsegError` naming the nearest valid size if H or W is not divisible by 2**depth, or is 0."""
    step = 2**depth
    if height < 1 or width < 1:
        raise CovsegError(f"{model} got an empty image ({height}x{width}); give it at least {step}x{step} pixels")
    if height % step or width % step:
        h, w = nearest_valid_size(height, depth), nearest_valid_size(width, depth)
        raise CovsegError(
            f"{model} with depth {depth} needs height and width divisible by {step}, got {height}x{width}; "
            f"resize or pad to {h}x{w}"
        )


def check_input_channels(x: torch.Tensor, in_channels: int, model: str) -> None:
    """Raise a :class:`CovsegError` unless ``x`` is a batch ``(B, in_channels, H, W)``."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise CovsegError(f"{model} takes images of shape (B, {in_channels}, H, W), got {tuple(x.shape)}; give it a "
                          f"batch of {in_channels}-channel images")
