"""Model registry: every model is reached through :func:`create_model`.

Shape contract for every model:
    input  ``(B, in_channels, H, W)`` float, H and W divisible by ``2 ** depth``; for U-Net with instance norm, batch
           norm while training on a batch of one, or group norm of one channel a group on a batch of one, H or W at
           least ``2 * 2 ** depth``, so that the bottleneck keeps more than one pixel (:class:`UNet`; SegNet's
           convolutions never run below 2 x 2). Any other input raises a one-line :class:`covseg.errors.CovsegError`
    output ``(B, num_classes, H, W)`` logits
"""
from __future__ import annotations

from typing import Any

from torch import nn

from covseg.errors import CovsegError
from covseg.models.fusion import fold_batch_norm, fuse_conv_relu_bf16, fuse_for_inference
from covseg.models.segnet import SegNet
from covseg.models.shapes import check_input_size, nearest_valid_size
from covseg.models.unet import UNet

__all__ = ["MODELS", "create_model", "fold_batch_norm", "fuse_conv_relu_bf16", "fuse_for_inference", "check_input_size",
           "nearest_valid_size", "UNet", "SegNet"]

MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "segnet": SegNet}


def create_model(name: str, **config: Any) -> nn.Module:
    """Build the model registered as ``name`` with keyword ``config`` (e.g. ``num_classes``, ``width``)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise CovsegError(f"unknown model {name!r}: use one of {', '.join(MODELS)}") from None
    for key in ("num_classes", "in_channels", "width", "depth"):  # else torch fails later, or in use, obscurely
        if key in config and (isinstance(config[key], bool) or not isinstance(config[key], int) or config[key] < 1):
            raise CovsegError(f"bad options for model {name!r}: {key} must be a whole number >= 1, got {config[key]!r}")
    try:
        return cls(**config)
    except (TypeError, ValueError) as err:
        raise CovsegError(f"bad options for model {name!r}: {err}") from None
