"""Inference-time fusions: batch norm folded into the convolution before it; convolution + ReLU as one bf16 call."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norm", "FusedConvReLU", "fused_conv_relu_available", "fuse_conv_relu_bf16",
           "fuse_for_inference"]


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


class FusedConvReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN call in bf16 (``torch.ops.mkldnn._convolution_pointwise``): the ReLU is
    applied to the convolution's fp32 accumulator before its bf16 output is written, so no second pass over the
    feature map. Rounding commutes with ReLU, so the output equals ``relu`` of the bf16-autocast convolution.

    Input ``(B, C_in, H, W)`` (cast to bf16); output ``(B, C_out, H', W')`` bf16, as the convolution's.
    Inference on a CPU only (no gradients; the op has no CUDA kernel); weights and bias are kept as bf16 buffers
    and cast back to bf16 in ``forward``, so a ``.float()`` of the model does not break it.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(torch.bfloat16))
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(torch.bfloat16)
        return torch.ops.mkldnn._convolution_pointwise(x.to(torch.bfloat16), self.weight.to(torch.bfloat16), bias,
                                                       self.padding, self.stride, self.dilation, self.groups, "relu",
                                                       [], "")

    def extra_repr(self) -> str:
        out_channels, in_channels, *kernel = self.weight.shape
        return (f"{in_channels * self.groups}, {out_channels}, kernel_size={tuple(kernel)}, "
                f"stride={tuple(self.stride)}, padding={tuple(self.padding)}, bf16 + relu")


def fused_conv_relu_available() -> bool:
    """True where PyTorch's CPU build has oneDNN's fused convolution + ReLU (``mkldnn._convolution_pointwise``)
    and runs it in bf16 on this CPU (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: any AVX-512 x86 CPU, not
    AVX2-only ones). covseg takes the bf16 path at all only where :func:`covseg.runtime.cpu_supports_bf16` finds
    native bf16 (AVX512-BF16 or AMX)."""
    try:
        return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
                and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    except (AttributeError, RuntimeError):
        return False


def fuse_conv_relu_bf16(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for bf16 inference on a CPU in which every ``Conv2d`` (numeric zero padding, no hooks)
    followed, inside a plain ``nn.Sequential``, by a ``ReLU`` (only ``nn.Identity`` layers between, as
    :func:`fold_batch_norm` leaves them) is one :class:`FusedConvReLU`. Fold batch norm first: a norm between
    the two stops the fusion.
    Run it under bf16 autocast (the layers left, e.g. the transposed convolutions, need it); on channels-last input
    (as covseg's inference backend always gives it) its logits equal the unfused model's under bf16 autocast; on
    contiguous input oneDNN may pick other kernels, and they agree only to bf16 rounding. ``model`` is returned
    unchanged where :func:`fused_conv_relu_available` is false. Shapes are those of ``model``.
    """
    if not fused_conv_relu_available():
        return model
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        # only a plain Sequential is known to feed each layer's output to the next (a subclass may not)
        if type(module).forward is not nn.Sequential.forward:
            continue
        for i, conv in enumerate(module):
            if not (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
                    and not conv._forward_hooks and not conv._forward_pre_hooks):
                continue
            j = i + 1
            while j < len(module) and type(module[j]) is nn.Identity:
                j += 1
            if j < len(module) and type(module[j]) is nn.ReLU and not module[j]._forward_hooks:
                module[i], module[j] = FusedConvReLU(conv), nn.Identity()
    return fused


def fuse_for_inference(folded: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The network covseg runs in ``dtype`` on ``device`` from a batch-norm-folded model: in bf16 on a CPU,
    :func:`fuse_conv_relu_bf16` of it; elsewhere ``folded`` itself. Shapes are those of ``folded``."""
    return fuse_conv_relu_bf16(folded) if device.type == "cpu" and dtype == torch.bfloat16 else folded
