"""U-Net (Ronneberger et al., MICCAI 2015) from torch.nn building blocks."""
from __future__ import annotations

import torch
from torch import nn

from covseg.models.shapes import check_input_size

__all__ = ["UNet", "DoubleConv"]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by optional batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True) -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net: ``depth`` max-pool down-steps, transposed-conv up-steps, skip concatenation.

    ``width=64, depth=4`` reproduces the original's 31M parameters. Channels at level ``i`` are
    ``width * 2**i``.

    With ``deep_supervision`` (training mode only) the forward pass returns a list: the ``(B, num_classes,
    H, W)`` logits, then ``depth - 1`` coarser logits from 1x1 heads on the decoder levels, of sizes
    ``H/2, H/4, ...`` (for :class:`covseg.losses.DeepSupervisionLoss`); in eval mode only the first.

    Shape:
        x: ``(B, in_channels, H, W)`` float, H and W divisible by ``2**depth``
        returns: ``(B, num_classes, H, W)`` logits
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        width: int = 64,
        depth: int = 4,
        batch_norm: bool = True,
        dropout: float = 0.0,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        self.depth = depth
        channels = [width * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([DoubleConv(in_channels, channels[0], batch_norm)])
        self.encoders.extend(DoubleConv(channels[i], channels[i + 1], batch_norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(
            DoubleConv(2 * channels[i], channels[i], batch_norm) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        # deep supervision: 1x1 heads on the decoder levels below the top (1/2, 1/4, ... of the input size)
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(channels[i], num_classes, 1) for i in range(1, depth)
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x.shape[-2], x.shape[-1], self.depth, "UNet")
        skips: list[torch.Tensor] = []
        for encoder in self.encoders[:-1]:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.encoders[-1](x))
        supervise = self.training and len(self.aux_heads) > 0
        decoded: list[torch.Tensor] = []
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = decoder(torch.cat([upsample(x), skips.pop()], dim=1))
            if supervise:
                decoded.append(x)
        if supervise:
            # full-size logits first, then coarser ones: 1/2, 1/4, ... of the input size
            coarse = [head(level) for head, level in zip(self.aux_heads, reversed(decoded[:-1]))]
            return [self.head(x), *coarse]  # type: ignore[return-value]
        return self.head(x)
