"""U-Net (Ronneberger et al., MICCAI 2015) from torch.nn building blocks."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from covseg.errors import CovsegError
from covseg.models.shapes import check_input_channels, check_input_size

__all__ = ["UNet", "DoubleConv", "ResidualDoubleConv", "AttentionGate", "BLOCKS", "NORMS", "group_norm",
           "norm_failing_on_one_pixel"]


#: the most groups :func:`group_norm` splits a layer's channels into (Wu & He's 32 assumes 64+ channels a layer;
#: covseg's width-16 U-Net has 16 at its top level)
GROUP_NORM_GROUPS = 8


def group_norm(channels: int, affine: bool = True) -> nn.GroupNorm:
    """Group norm (Wu & He, ECCV 2018): statistics over each image's own channels in groups, in training and
    inference alike, so they do not depend on the batch. ``gcd(8, channels)`` groups: 8 for covseg's U-Net levels
    (``width * 2**i`` channels, width a multiple of 8), one for an attention gate's one-channel map.

    Shape: ``(B, channels, H, W)`` -> the same."""
    return nn.GroupNorm(math.gcd(GROUP_NORM_GROUPS, channels), channels, affine=affine)


#: the normalisations a block may follow each convolution with (``model.norm``), each called as
#: ``NORMS[name](channels, affine=True)``: batch norm (statistics over the batch, running averages at inference;
#: folded into the convolution for inference), instance norm (nnU-Net's: statistics over each image's own feature
#: map, in training and inference alike; learnt affine) or group norm (:func:`group_norm`: over groups of each
#: image's channels; between the two)
NORMS: dict[str, Callable[..., nn.Module]] = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d,
                                               "group": group_norm}


def _conv_norm(in_channels: int, out_channels: int, batch_norm: bool, norm: str = "batch") -> list[nn.Module]:
    """A 3x3 convolution (padding 1), then the ``norm`` of :data:`NORMS` if ``batch_norm`` (the convolution then
    has no bias)."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
    if not batch_norm:
        return [conv]
    return [conv, NORMS[norm](out_channels, affine=True)]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by optional normalisation (:data:`NORMS`) and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True, norm: str = "batch") -> None:
        super().__init__(*_conv_norm(in_channels, out_channels, batch_norm, norm), nn.ReLU(inplace=True),
                         *_conv_norm(out_channels, out_channels, batch_norm, norm), nn.ReLU(inplace=True))


class ResidualDoubleConv(nn.Module):
    """:class:`DoubleConv` with an identity shortcut around its second convolution:
    ``h = relu(bn(conv1(x)))``, then ``relu(bn(conv2(h)) + h)``. The first convolution changes the channel count
    as in the plain block, so no 1x1 projection is needed: on a 2-core CPU a training step of the default U-Net
    costs about 3 % more than with plain blocks (a ResNet basic block with a projection shortcut: about 35 %).
    ``first`` and ``second`` are ``nn.Sequential`` so that :func:`covseg.models.fold_batch_norm` folds their
    batch norms.

    Shape: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = True, norm: str = "batch") -> None:
        super().__init__()
        self.first = nn.Sequential(*_conv_norm(in_channels, out_channels, batch_norm, norm), nn.ReLU(inplace=True))
        self.second = nn.Sequential(*_conv_norm(out_channels, out_channels, batch_norm, norm))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        return self.relu(self.second(h) + h)


def _pointwise_norm(in_channels: int, out_channels: int, batch_norm: bool, norm: str) -> list[nn.Module]:
    """A 1x1 convolution, then the ``norm`` of :data:`NORMS` if ``batch_norm`` (the convolution then has no bias)."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=not batch_norm)
    return [conv, NORMS[norm](out_channels, affine=True)] if batch_norm else [conv]


class AttentionGate(nn.Module):
    """An additive attention gate on a skip connection (Oktay et al., "Attention U-Net", MIDL 2018), in the
    common form whose gating signal is the decoder's upsampled features at the skip's own size:
    ``alpha = sigmoid(norm(psi(relu(norm(W_x skip) + norm(W_g gate)))))`` with 1x1 convolutions ``W_x``, ``W_g``
    (to ``inter_channels``) and ``psi`` (to one channel); the gate returns ``skip * alpha``, so each skip pixel
    is passed on with a learnt weight in (0, 1) that depends on what the coarser level sees there.
    Each 1x1 convolution and its norm sit in one ``nn.Sequential`` so that
    :func:`covseg.models.fold_batch_norm` folds them.

    Shape: ``skip`` ``(B, skip_channels, H, W)``, ``gate`` ``(B, gate_channels, H, W)`` ->
    ``(B, skip_channels, H, W)``; :meth:`weights` gives ``alpha`` as ``(B, 1, H, W)``.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int, batch_norm: bool = True,
                 norm: str = "batch") -> None:
        super().__init__()
        self.skip = nn.Sequential(*_pointwise_norm(skip_channels, inter_channels, batch_norm, norm))
        self.gate = nn.Sequential(*_pointwise_norm(gate_channels, inter_channels, batch_norm, norm))
        self.relu = nn.ReLU(inplace=True)
        self.psi = nn.Sequential(*_pointwise_norm(inter_channels, 1, batch_norm, norm), nn.Sigmoid())

    def weights(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The attention coefficients ``alpha``, ``(B, 1, H, W)`` in (0, 1)."""
        return self.psi(self.relu(self.skip(skip) + self.gate(gate)))

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.weights(skip, gate)


#: the U-Net's convolution blocks by name (``model.block``)
BLOCKS: dict[str, type[nn.Module]] = {"plain": DoubleConv, "residual": ResidualDoubleConv}


def norm_failing_on_one_pixel(norm: str | None, group_channels: int, training: bool, batch_of_one: bool) -> str:
    """Why a normalisation ``norm`` (``"batch"``, ``"instance"``, ``"group"``; ``None``: none) cannot normalise a
    ``(B, C, 1, 1)`` map, or ``""`` where it can: instance norm never (one value a channel), batch norm while
    training on a batch of one, group norm of ``group_channels == 1`` channel a group on a batch of one (each has a
    single value to take its statistics from, and torch raises a bare ``ValueError``)."""
    if norm == "instance":
        return "instance norm"
    if norm == "batch" and training and batch_of_one:
        return "batch norm while training on a batch of one"
    if norm == "group" and batch_of_one and group_channels == 1:
        return "group norm of one channel a group on a batch of one"
    return ""


class UNet(nn.Module):
    """U-Net: ``depth`` max-pool down-steps, transposed-conv up-steps, skip concatenation.

    ``width=64, depth=4`` reproduces the original's 31M parameters. Channels at level ``i`` are
    ``width * 2**i``. ``block`` names each level's two 3x3 convolutions in :data:`BLOCKS`: ``"plain"`` (the
    original's) or ``"residual"`` (an identity shortcut around the second, :class:`ResidualDoubleConv`).
    ``norm`` names the normalisation after each convolution in :data:`NORMS` (``"batch"``, ``"instance"`` or
    ``"group"``), used when ``batch_norm`` is true (false: none, and the convolutions have biases). ``dropout`` is
    the share of the bottleneck's channels dropped while training (``nn.Dropout2d``); ``decoder_dropout`` the share
    dropped of each decoder level's output below the top one (the ``depth - 1`` levels at ``H/2 ...
    H/2**(depth-1)``, after the aux heads read them), so the full-size features the head reads are never dropped.
    With ``attention`` each skip connection passes through an :class:`AttentionGate` driven by the decoder's
    upsampled features before it is concatenated with them (Attention U-Net; ``inter_channels`` half the level's
    channels, at least 1).

    With ``deep_supervision`` (training mode only) the forward pass returns a list: the ``(B, num_classes,
    H, W)`` logits, then ``depth - 1`` coarser logits from 1x1 heads on the decoder levels, of sizes
    ``H/2, H/4, ...`` (for :class:`covseg.losses.DeepSupervisionLoss`); in eval mode only the first.

    Shape:
        x: ``(B, in_channels, H, W)`` float, H and W divisible by ``2**depth``; the bottleneck
            ``(H / 2**depth) x (W / 2**depth)`` must hold more than one pixel (H or W at least ``2 * 2**depth``) with
            instance norm, with batch norm while training on a batch of one, and with group norm of one channel a
            group (``width * 2**depth`` of 8 or fewer) on a batch of one; their statistics need more than one value
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
        decoder_dropout: float = 0.0,
        deep_supervision: bool = False,
        block: str = "plain",
        norm: str = "batch",
        attention: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {block!r}")
        if not (0 <= dropout < 1 and 0 <= decoder_dropout < 1):
            raise ValueError(f"dropout and decoder_dropout must be in [0, 1), got {dropout} and {decoder_dropout}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        conv_block = BLOCKS[block]
        self.depth = depth
        self.in_channels = in_channels
        channels = [width * 2**i for i in range(depth + 1)]
        # the bottleneck's normalisation (None: none) and, for group norm, its channels a group: for _check_bottleneck
        self._bottleneck_norm = norm if batch_norm else None
        self._bottleneck_group = channels[depth] // math.gcd(GROUP_NORM_GROUPS, channels[depth])
        self.encoders = nn.ModuleList([conv_block(in_channels, channels[0], batch_norm, norm)])
        self.encoders.extend(conv_block(channels[i], channels[i + 1], batch_norm, norm) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.decoders = nn.ModuleList(
            conv_block(2 * channels[i], channels[i], batch_norm, norm) for i in reversed(range(depth))
        )
        # one per decoder level below the top, in decoding order (coarsest first); none for the top level
        self.decoder_dropouts = nn.ModuleList(
            nn.Dropout2d(decoder_dropout) if decoder_dropout > 0 else nn.Identity() for _ in range(depth - 1)
        )
        # one per skip connection, in decoding order (coarsest first), or none
        self.gates = nn.ModuleList(
            AttentionGate(channels[i], channels[i], max(1, channels[i] // 2), batch_norm, norm)
            for i in reversed(range(depth))
        ) if attention else nn.ModuleList()
        self.head = nn.Conv2d(channels[0], num_classes, 1)
        # deep supervision: 1x1 heads on the decoder levels below the top (1/2, 1/4, ... of the input size)
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(channels[i], num_classes, 1) for i in range(1, depth)
        ) if deep_supervision else nn.ModuleList()

    def _check_bottleneck(self, x: torch.Tensor) -> None:
        """Raise a :class:`CovsegError` if ``x`` ``(B, C, H, W)`` leaves a 1 x 1 bottleneck whose normalisation
        would have a single value to take its statistics from (the norm would raise a bare ``ValueError``)."""
        height, width, step = x.shape[-2], x.shape[-1], 2**self.depth
        if height * width != step * step:
            return
        reason = norm_failing_on_one_pixel(self._bottleneck_norm, self._bottleneck_group, self.training,
                                           x.shape[0] == 1)
        if not reason:
            return
        raise CovsegError(f"UNet with depth {self.depth} got a {height}x{width} image, whose bottleneck is 1x1, too "
                          f"small for {reason}; give it at least {2 * step}x{2 * step} pixels (2 x 2**depth a side)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_channels(x, self.in_channels, "UNet")
        check_input_size(x.shape[-2], x.shape[-1], self.depth, "UNet")
        self._check_bottleneck(x)
        skips: list[torch.Tensor] = []
        for encoder in self.encoders[:-1]:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.encoders[-1](x))
        supervise = self.training and len(self.aux_heads) > 0
        decoded: list[torch.Tensor] = []
        for level, (upsample, decoder) in enumerate(zip(self.upsamplers, self.decoders)):
            up, skip = upsample(x), skips.pop()
            if len(self.gates) > 0:
                skip = self.gates[level](skip, up)
            x = decoder(torch.cat([up, skip], dim=1))
            if supervise:
                decoded.append(x)
            if level < self.depth - 1:
                x = self.decoder_dropouts[level](x)
        if supervise:
            # full-size logits first, then coarser ones: 1/2, 1/4, ... of the input size
            coarse = [head(level) for head, level in zip(self.aux_heads, reversed(decoded[:-1]))]
            return [self.head(x), *coarse]  # type: ignore[return-value]
        return self.head(x)
