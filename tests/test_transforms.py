"""Batch augmentation against hand-computed results."""
from __future__ import annotations

import torch

from covseg.config import AugmentConfig
from covseg.transforms import augment_batch


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.linspace(0.1, 0.9, 2 * 4 * 4).reshape(2, 1, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, 1, 0] = 1  # one lesion pixel on the left edge of each image
    return images, masks


def test_no_augmentation_is_identity() -> None:
    images, masks = _batch()
    out_x, out_y = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_x, images)
    assert torch.equal(out_y, masks)


def test_certain_hflip_mirrors_image_and_mask_together() -> None:
    images, masks = _batch()
    out_x, out_y = augment_batch(images, masks, AugmentConfig(hflip=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_x, images.flip(-1))
    assert torch.equal(out_y, masks.flip(-1))
    assert out_y[:, 1, 3].tolist() == [1, 1]


def test_contrast_scales_about_each_images_mean() -> None:
    images, masks = _batch()
    cfg = AugmentConfig(contrast=0.5)
    out_x, out_y = augment_batch(images, masks, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(out_y, masks)  # intensity changes leave the labels alone
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    # recover each image's factor from one pixel, then check every other pixel obeys m + c (x - m)
    factor = (out_x[:, :, 0, 0] - mean[:, :, 0, 0]) / (images[:, :, 0, 0] - mean[:, :, 0, 0])
    assert ((factor >= 0.5) & (factor <= 1.5)).all()
    expected = (mean + factor.view(2, 1, 1, 1) * (images - mean)).clamp(0, 1)
    torch.testing.assert_close(out_x, expected)
    assert not torch.allclose(out_x, images)
    # off, the same generator draws exactly what it drew before contrast existed
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    plain = AugmentConfig(gamma=0.2, brightness=0.05)
    a, _ = augment_batch(images, masks, plain, g1)
    b = images.clamp(0, 1)
    draws = [torch.rand(2, generator=g2) for _ in range(6)]  # hflip, vflip, angle, zoom, gamma, shift
    gamma = 0.8 + 0.4 * draws[4]
    shift = -0.05 + 0.1 * draws[5]
    torch.testing.assert_close(a, (b.pow(gamma.view(2, 1, 1, 1)) + shift.view(2, 1, 1, 1)).clamp(0, 1))
    assert torch.equal(g1.get_state(), g2.get_state())  # and no further draw moves later batches' randomness
