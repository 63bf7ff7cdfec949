"""Inference-time folding of batch norm into the convolution before it."""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norm"]


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in which every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an
    ``nn.Sequential`` becomes one ``Conv2d`` (weights ``w * g / sqrt(v + eps)``, bias shifted to match) and the
    batch norm an ``nn.Identity``. In eval mode batch norm is a fixed per-channel affine map, so the copy
    computes the same function up to float rounding, with one pass over each feature map fewer.
    ``model`` itself is left untouched (it may still be trained). Shapes are those of ``model``.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.track_running_stats
                    and norm.running_mean is not None):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    return folded
