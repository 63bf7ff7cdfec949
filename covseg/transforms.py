"""Resizing to the model's input size and back, and batch augmentation on tensors.

Shapes: images ``(B, 1, H, W)`` float32 in [0, 1]; label maps ``(B, H, W)`` int64.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from covseg.config import RESIZE_MODES, AugmentConfig

__all__ = ["Box", "fit_box", "stack_resized", "resize_probs", "elastic_offsets", "augment_batch", "random_crop",
           "gaussian_noise", "gaussian_blur", "simulate_low_resolution", "cutmix", "lesion_paste", "mixup"]

Box = tuple[int, int, int, int]  # (top, left, height, width) of an image inside the square input

ELASTIC_CONTROL_POINTS = 7  # per side, as TorchIO's RandomElasticDeformation


def fit_box(height: int, width: int, size: int, resize: str = "stretch") -> Box:
    """Where an ``(height, width)`` image lies in the ``size x size`` input: ``(top, left, h, w)``.

    ``stretch``: the whole square (each side scaled on its own, so the aspect ratio changes). ``pad``: scaled by
    ``size / max(height, width)``, aspect ratio kept, centred; the rest of the square is zero padding.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}: use one of {', '.join(RESIZE_MODES)}")
    if resize == "stretch":
        return (0, 0, size, size)
    scale = size / max(height, width)
    h, w = max(1, min(size, round(height * scale))), max(1, min(size, round(width * scale)))
    return ((size - h) // 2, (size - w) // 2, h, w)


def stack_resized(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None, size: int, resize: str = "stretch"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize ``(H, W)`` images (bilinear, antialiased) and masks (nearest) into ``size x size`` and stack.

    ``resize`` places each image as :func:`fit_box` says; padding is 0 in images and label 0 (background) in
    masks. Returns images ``(N, 1, size, size)`` float32 and label maps ``(N, size, size)`` int64 (or None).
    """
    out_images = torch.zeros(len(images), 1, size, size)
    boxes = [fit_box(*np.shape(image)[-2:], size, resize) for image in images]
    for i, (image, (top, left, h, w)) in enumerate(zip(images, boxes)):
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        out_images[i, :, top:top + h, left:left + w] = F.interpolate(t, size=(h, w), mode="bilinear",
                                                                     align_corners=False, antialias=True)[0].clamp_(0.0, 1.0)
    if masks is None:
        return out_images, None
    out_masks = torch.zeros(len(masks), size, size, dtype=torch.int64)
    for i, (mask, (top, left, h, w)) in enumerate(zip(masks, boxes)):
        t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
        out_masks[i, top:top + h, left:left + w] = F.interpolate(t, size=(h, w), mode="nearest-exact")[0, 0].round().long()
    return out_images, out_masks


def resize_probs(probs: torch.Tensor, height: int, width: int, box: Box | None = None) -> torch.Tensor:
    """Class probabilities ``(B, C, S, S)`` of the square input back to ``(B, C, height, width)``: cropped to
    ``box`` (:func:`fit_box`; None = the whole square), then resized bilinearly."""
    if box is not None:
        top, left, h, w = box
        probs = probs[..., top:top + h, left:left + w]
    if probs.shape[-2:] == (height, width):
        return probs
    return F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)


def elastic_offsets(batch: int, height: int, width: int, magnitude: float,
                    generator: torch.Generator) -> torch.Tensor:
    """A smooth random displacement field ``(batch, height, width, 2)`` in ``affine_grid`` units.

    Shifts are drawn uniformly in ``[-magnitude, magnitude]`` (a fraction of the image side) on a 7 x 7 grid
    of control points, then interpolated bicubically over the image and clipped to the same bound, so no
    pixel moves by more than ``magnitude`` times the image side along either axis (``2 * magnitude`` in
    the ``[-1, 1]`` coordinates of :func:`torch.nn.functional.grid_sample`).
    """
    n = ELASTIC_CONTROL_POINTS
    bound = 2.0 * magnitude
    control = (torch.rand(batch, 2, n, n, generator=generator) * 2.0 - 1.0) * bound
    field = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
    return field.clamp_(-bound, bound).permute(0, 2, 3, 1)


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, rotation, zoom and elastic warp (one resampling per image), then gamma, contrast and
    brightness, then Gaussian noise (``cfg.noise``) and blur (``cfg.blur``), then simulated low resolution
    (``cfg.lowres``), a random crop (``cfg.crop`` > 0), CutMix
    (``cfg.cutmix``) and lesion paste (``cfg.lesion_paste``).

    ``images``: ``(B, 1, H, W)`` in [0, 1]; ``masks``: label maps ``(B, H, W)``. Images are warped bilinearly
    (zero padding), label maps with nearest sampling. ``size`` (progressive resizing, ``train.progressive_size``)
    resamples the whole field of view to ``(B, 1, size, size)`` / ``(B, size, size)`` in that same single
    resampling (no anti-aliasing), drawing the random numbers it draws without ``size`` except where a draw's count
    depends on the side: Gaussian noise (one draw per pixel) and a crop (none when ``cfg.crop`` is not smaller than
    the side; config validation refuses a crop larger than ``train.progressive_size``). Intensity:
    ``x ** g``, then ``m + c (x - m)`` with ``m`` the image's mean (contrast), then ``+ b``, clamped to [0, 1]. All randomness comes from ``generator``
    so a run is reproducible; elastic, contrast, noise, blur and low resolution draw only when they are on, so
    recipes without them draw as before.
    """
    b = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    sx = torch.where(torch.rand(b, generator=generator) < cfg.hflip, -1.0, 1.0)
    sy = torch.where(torch.rand(b, generator=generator) < cfg.vflip, -1.0, 1.0)
    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180.0
    zoom = uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    gamma = uniform(1.0 - cfg.gamma, 1.0 + cfg.gamma)
    shift = uniform(-cfg.brightness, cfg.brightness)
    resize = size is not None and (size, size) != tuple(images.shape[-2:])
    if cfg.rotate_deg or cfg.scale or cfg.hflip or cfg.vflip or cfg.elastic or resize:
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack([torch.stack([cos * sx, -sin * sy, torch.zeros(b)], 1),
                             torch.stack([sin * sx, cos * sy, torch.zeros(b)], 1)], 1)
        out_shape = [b, images.shape[1], size, size] if resize else list(images.shape)
        grid = F.affine_grid(theta, out_shape, align_corners=False)
        if cfg.elastic:
            grid = grid + elastic_offsets(b, out_shape[-2], out_shape[-1], cfg.elastic, generator)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        masks = F.grid_sample(masks[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[:, 0].long()
    if cfg.gamma or cfg.brightness or cfg.contrast:
        images = images.clamp(0.0, 1.0).pow(gamma.view(b, 1, 1, 1))
        if cfg.contrast:
            factor = uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast).view(b, 1, 1, 1)
            mean = images.mean(dim=(1, 2, 3), keepdim=True)
            images = mean + factor * (images - mean)
        images = (images + shift.view(b, 1, 1, 1)).clamp(0.0, 1.0)
    if cfg.noise:
        images = gaussian_noise(images, cfg.noise, generator)
    if cfg.blur:
        images = gaussian_blur(images, cfg.blur, generator)
    if cfg.lowres:
        images = simulate_low_resolution(images, cfg.lowres, generator)
    if cfg.crop:
        images, masks = random_crop(images, masks, cfg.crop, generator)
    if cfg.cutmix:
        images, masks = cutmix(images, masks, cfg.cutmix, generator)
    if cfg.lesion_paste:
        images, masks = lesion_paste(images, masks, cfg.lesion_paste, generator)
    return images, masks


NOISE_MAX_STD = 0.1  # nnU-Net's noise variance reaches 0.1 of z-scored data; a slice's grey levels span ~0.3 std
BLUR_SIGMAS = (0.5, 1.0)  # nnU-Net's GaussianBlurTransform range, in pixels


def gaussian_noise(images: torch.Tensor, probability: float, generator: torch.Generator,
                   max_std: float = NOISE_MAX_STD) -> torch.Tensor:
    """nnU-Net's Gaussian noise: each image of ``(B, 1, H, W)`` in [0, 1] gets, with ``probability``, independent
    zero-mean Gaussian noise per pixel of a standard deviation drawn uniformly in ``[0, max_std]``, clamped to
    [0, 1]. Every image draws its choice, its deviation and its noise field whether or not it is changed, so the
    draws per batch are fixed. Returns a new tensor."""
    b = images.shape[0]
    chosen = torch.rand(b, generator=generator) < probability
    std = max_std * torch.rand(b, generator=generator) * chosen
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return (images + noise * std.to(images.dtype).view(b, 1, 1, 1)).clamp(0.0, 1.0)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian ``(2r + 1,)`` with radius ``r = ceil(3 sigma)`` pixels."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(images: torch.Tensor, probability: float, generator: torch.Generator,
                  sigmas: tuple[float, float] = BLUR_SIGMAS) -> torch.Tensor:
    """nnU-Net's Gaussian blur: each image of ``(B, 1, H, W)`` is, with ``probability``, convolved with a separable
    Gaussian of a sigma drawn uniformly in ``sigmas`` (pixels; edges replicated, so a flat image stays flat). Every
    image draws its two numbers whether or not it is changed. Returns a new tensor; label maps are not touched."""
    b, channels, height, width = images.shape
    chosen = torch.rand(b, generator=generator) < probability
    sigma = sigmas[0] + (sigmas[1] - sigmas[0]) * torch.rand(b, generator=generator)
    out = images.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        kernel = gaussian_kernel(float(sigma[i])).to(images.dtype)
        radius = kernel.numel() // 2
        image = images[i:i + 1].reshape(channels, 1, height, width)
        image = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        image = F.conv2d(F.pad(image, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
        out[i] = image.reshape(channels, height, width)
    return out


def simulate_low_resolution(images: torch.Tensor, probability: float, generator: torch.Generator,
                            shares: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """nnU-Net's simulated low resolution: each image of ``(B, 1, H, W)`` in [0, 1] is, with ``probability``,
    resampled to a uniform share in ``shares`` of its height and width (nearest) and back (bicubic, clamped to
    [0, 1]). Every image draws its two numbers whether or not it is changed, so the draws per batch are fixed.
    Returns a new tensor; label maps are not touched (the anatomy stays where it was)."""
    b, _, height, width = images.shape
    chosen = torch.rand(b, generator=generator) < probability
    share = shares[0] + (shares[1] - shares[0]) * torch.rand(b, generator=generator)
    out = images.clone()
    for i in torch.nonzero(chosen).flatten().tolist():
        small = (max(1, round(height * float(share[i]))), max(1, round(width * float(share[i]))))
        low = F.interpolate(images[i:i + 1], size=small, mode="nearest")
        out[i:i + 1] = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False).clamp(0.0, 1.0)
    return out


def box_masks(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` CutMix boxes ``(n, 1, height, width)`` float, 1 inside: area a uniform share ``u`` of the image
    (sides ``height sqrt(u)`` x ``width sqrt(u)``, rounded), at a uniform position."""
    share = torch.rand(n, generator=generator).sqrt()
    corner = torch.rand(n, 2, generator=generator)
    masks = torch.zeros(n, 1, height, width)
    for i in range(n):
        h, w = round(height * float(share[i])), round(width * float(share[i]))
        top, left = int(corner[i, 0] * (height - h + 1)), int(corner[i, 1] * (width - w + 1))
        masks[i, :, top:top + h, left:left + w] = 1.0
    return masks


def cutmix(images: torch.Tensor, masks: torch.Tensor, probability: float, generator: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix for segmentation: each image ``(B, 1, H, W)`` and its label map ``(B, H, W)`` gets, with
    ``probability``, the pixels and labels of a box (:func:`box_masks`) from the next image of a random cyclic
    shift of the batch.

    Every image draws its box whether or not it is mixed, so the draws per batch are fixed. A batch of one image
    is returned unchanged. Returns new tensors; the inputs are unchanged.
    """
    b, height, width = masks.shape
    if b < 2:
        return images, masks
    other, mixed = _partners(b, probability, generator)
    return _paste(images, masks, other, box_masks(b, height, width, generator).bool() & mixed)


def mixup(images: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al., ICLR 2018) of a batch of images ``(B, 1, H, W)``: ``lam x + (1 - lam) x[partner]``,
    one ``lam`` per batch drawn from Beta(``alpha``, ``alpha``) (``alpha`` > 0), each image's partner the next
    image of a random cyclic shift of the batch, so never itself.

    Returns the mixed images (a new tensor), the partners ``(B,)`` int64 and ``lam``; the caller scores the
    prediction as ``lam loss(y) + (1 - lam) loss(y[partner])``. A batch of one image is returned as it came, its
    own partner, with ``lam`` 1. Two draws from ``generator``, whatever the batch size.
    """
    b = images.shape[0]
    shift = int(torch.randint(1, max(b, 2), (1,), generator=generator))
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    if b < 2:
        return images, torch.zeros(b, dtype=torch.int64), 1.0
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))  # torch.distributions.Beta takes no generator
    partner = (torch.arange(b) + shift) % b
    return lam * images + (1 - lam) * images[partner], partner, lam


LESION_PASTE_MARGIN = 0.03  # the largest margin around pasted lesions, a fraction of the image side


def lesion_paste(images: torch.Tensor, masks: torch.Tensor, probability: float, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesion paste, after CarveMix (Zhang et al., MICCAI 2021): each image ``(B, 1, H, W)`` and its label map
    ``(B, H, W)`` gets, with ``probability``, the pixels and labels of another image's lesion region at the same
    place: that image's foreground (every label > 0) grown by a square margin of ``r`` pixels, ``r`` drawn
    uniformly per image from 0 to :data:`LESION_PASTE_MARGIN` of the shorter side. The other image is the next
    one of a random cyclic shift of the batch; where it holds no lesion nothing changes.

    Every image draws its margin whether or not it is mixed, so the draws per batch are fixed. A batch of one
    image is returned as it came; otherwise the results are new tensors and the inputs are unchanged.
    """
    b, height, width = masks.shape
    if b < 2:
        return images, masks
    other, mixed = _partners(b, probability, generator)
    largest = int(LESION_PASTE_MARGIN * min(height, width))
    margins = torch.randint(0, largest + 1, (b,), generator=generator).tolist()
    lesion = (masks[other] > 0).float()[:, None]
    region = torch.stack([F.max_pool2d(lesion[i:i + 1], 2 * r + 1, stride=1, padding=r)[0] if r else lesion[i]
                          for i, r in enumerate(margins)]).bool()
    return _paste(images, masks, other, region & mixed)


def _partners(b: int, probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch of ``b`` >= 2 images: each image's partner, the next image of a random cyclic shift ``(b,)``,
    and whether it is mixed, with ``probability``, as ``(b, 1, 1, 1)`` bool (two draws from ``generator``)."""
    shift = int(torch.randint(1, b, (1,), generator=generator))
    mixed = torch.rand(b, generator=generator) < probability
    return (torch.arange(b) + shift) % b, mixed.view(b, 1, 1, 1)


def _paste(images: torch.Tensor, masks: torch.Tensor, other: torch.Tensor, region: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image ``(B, 1, H, W)`` and label map ``(B, H, W)`` with the pixels and labels of image ``other[i]``
    inside ``region`` ``(B, 1, H, W)`` bool; new tensors."""
    return torch.where(region, images[other], images), torch.where(region[:, 0], masks[other], masks)


def random_crop(images: torch.Tensor, masks: torch.Tensor, size: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``size`` x ``size`` window of each image ``(B, 1, H, W)`` and its label map ``(B, H, W)``, at an offset
    drawn uniformly per image from ``generator`` (the whole side where it is not larger than ``size``)."""
    b, height, width = masks.shape
    if size >= height and size >= width:
        return images, masks
    h, w = min(size, height), min(size, width)
    top = torch.randint(0, height - h + 1, (b,), generator=generator).tolist()
    left = torch.randint(0, width - w + 1, (b,), generator=generator).tolist()
    images = torch.stack([images[i, :, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(top, left))])
    masks = torch.stack([masks[i, y:y + h, x:x + w] for i, (y, x) in enumerate(zip(top, left))])
    return images, masks
