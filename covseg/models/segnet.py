"""SegNet (Badrinarayanan et al., TPAMI 2017) from torch.nn building blocks."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from covseg.models.shapes import check_input_channels, check_input_size

__all__ = ["SegNet", "VGG16_BLOCKS"]

VGG16_BLOCKS: tuple[int, ...] = (2, 2, 3, 3, 3)
"""Convolutions per encoder stage in VGG16 (13 in all)."""


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _unpool(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """2x2 max-unpooling: put each value back where the encoder's max-pool found it.

    ``F.max_unpool2d`` normally; during ONNX export the same scatter written out (its size checks do not
    trace), which tests show gives identical outputs.
    """
    if not torch.onnx.is_in_onnx_export():
        return F.max_unpool2d(x, indices, 2, stride=2)
    b, c, h, w = x.shape
    out = x.new_zeros(b, c, 4 * h * w)
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(b, c, 2 * h, 2 * w)


class SegNet(nn.Module):
    """SegNet: VGG16-style encoder whose max-pool indices drive max-unpooling in a mirrored decoder.

    ``depth`` stages (5 = the full VGG16 encoder, 13 convolutions with batch norm); stage ``i`` has
    ``min(width * 2**i, 8 * width)`` channels and ``VGG16_BLOCKS[i]`` convolutions. The decoder
    mirrors the encoder (its last convolution, with batch norm and ReLU, outputs ``width`` channels); a 3x3
    head convolution then outputs the ``num_classes`` logits. That is one convolution more than the published
    network (Badrinarayanan et al.'s Caffe model), whose last decoder convolution, ``conv1_1_D``, is itself the 3x3
    classifier: covseg's decoder has 13 convolutions with batch norm and ReLU, then the head (``width * width * 9 +
    2 * width`` parameters more: 37k of 29.5 M at ``width=64``).

    With ``deep_supervision`` (training mode only) the forward pass returns a list, as :class:`UNet`'s: the
    ``(B, num_classes, H, W)`` logits, then ``depth - 1`` coarser logits from 1x1 heads on the decoder stages'
    outputs, of sizes ``H/2, H/4, ...``; in eval mode only the first.

    Shape:
        x: ``(B, in_channels, H, W)`` float, H and W divisible by ``2**depth``
        returns: ``(B, num_classes, H, W)`` logits
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 5,
        convs_per_stage: tuple[int, ...] = VGG16_BLOCKS,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if not 1 <= depth <= len(convs_per_stage) or width < 1:
            raise ValueError(f"depth must be 1..{len(convs_per_stage)} and width >= 1, got {depth}, {width}")
        self.depth = depth
        self.in_channels = in_channels
        channels = [min(width * 2**i, 8 * width) for i in range(depth)]
        convs = list(convs_per_stage[:depth])
        self.encoders = nn.ModuleList()
        c_in = in_channels
        for c_out, n in zip(channels, convs):
            layers = _conv_bn_relu(c_in, c_out)
            for _ in range(n - 1):
                layers += _conv_bn_relu(c_out, c_out)
            self.encoders.append(nn.Sequential(*layers))
            c_in = c_out
        self.decoders = nn.ModuleList()
        for i in reversed(range(depth)):
            c_next = channels[i - 1] if i > 0 else channels[0]
            layers = []
            for _ in range(convs[i] - 1):
                layers += _conv_bn_relu(channels[i], channels[i])
            layers += _conv_bn_relu(channels[i], c_next)
            self.decoders.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(channels[0], num_classes, 3, padding=1)
        # deep supervision: 1x1 heads on the outputs of the decoder stages below the top (1/2, 1/4, ... size);
        # the stage decoding level i outputs channels[i - 1]
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(channels[i - 1], num_classes, 1) for i in range(1, depth)
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "SegNet")
        check_input_size(x.shape[-2], x.shape[-1], self.depth, "SegNet")
        indices: list[torch.Tensor] = []
        for encoder in self.encoders:
            x, idx = F.max_pool2d(encoder(x), 2, stride=2, return_indices=True)
            indices.append(idx)
        supervise = self.training and len(self.aux_heads) > 0
        decoded: list[torch.Tensor] = []
        for decoder in self.decoders:
            # sizes are divisible by 2**depth, so unpooling exactly doubles them back
            x = decoder(_unpool(x, indices.pop()))
            if supervise:
                decoded.append(x)
        if supervise:
            # full-size logits first, then coarser ones: 1/2, 1/4, ... of the input size
            coarse = [head(level) for head, level in zip(self.aux_heads, reversed(decoded[:-1]))]
            return [self.head(x), *coarse]  # type: ignore[return-value]
        return self.head(x)
