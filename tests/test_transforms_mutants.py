"""Augmentation and intensity checks that mutation testing of covseg/transforms.py and covseg/intensity.py asked for.

Each test pins a behaviour that a small change of the code (a dropped clause, a swapped bound, a constant) would break
while the older tests passed; expected values are worked out by hand in the comments.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from covseg.config import AugmentConfig
from covseg.intensity import equalize, raw_ct_warning, scale_stored_grey, to_unit_range
from covseg.transforms import (augment_batch, box_masks, cutmix, fit_box, gaussian_blur, lesion_paste, random_crop,
                               simulate_low_resolution, stack_resized)


def _draws(seed: int, n: int = 6, b: int = 2) -> list[torch.Tensor]:
    """The first ``n`` per-image draws of augment_batch: hflip, vflip, angle, zoom, gamma, shift."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, generator=g) for _ in range(n)]


# --- resizing into the model's input ---------------------------------------------------------------------------------

def test_fit_box_keeps_at_least_one_pixel_of_a_very_thin_image() -> None:
    # 1000 x 1 into 16: scale 0.016, the width 0.016 rounds to 0 but is kept at 1 pixel, centred at (16 - 1) // 2 = 7
    assert fit_box(1000, 1, 16, "pad") == (0, 7, 16, 1)
    assert fit_box(1, 1000, 16, "pad") == (7, 0, 1, 16)
    x, y = stack_resized([np.ones((1000, 1), np.float32)], [np.ones((1000, 1), np.int64)], 16, "pad")
    assert (x[0, 0, :, 7] == 1).all() and x[0, 0].sum() == 16  # one bright column, the rest padding
    assert (y[0, :, 7] == 1).all() and y[0].sum() == 16


def test_stack_resized_antialiases_when_it_shrinks_and_clamps_to_the_unit_range() -> None:
    # one bright pixel at (3, 3) of 8 x 8, shrunk 4 times to 2 x 2. Antialiased bilinear = a triangle filter 4 pixels
    # wide: output 0 is centred at input 1.5 and weighs pixels 0..5 by 1 - |j - 1.5| / 4 = 5/8, 7/8, 7/8, 5/8, 3/8, 1/8
    # (sum 3.5), so pixel 3 gets 5/28; output 1 (centre 5.5, pixels 2..7) gives it 3/8 / 3.5 = 3/28. Without
    # antialiasing the samples at 1.5 and 5.5 read pixels 1, 2, 5, 6 only and the lesion pixel vanished.
    image = np.zeros((8, 8), np.float32)
    image[3, 3] = 1.0
    x, y = stack_resized([image], None, 2)
    assert y is None  # no masks given: no label maps made up
    torch.testing.assert_close(x[0, 0], torch.tensor([[25.0, 15.0], [15.0, 9.0]]) / 784, atol=1e-6, rtol=0)
    # grey levels above 1 (a caller that skipped normalisation) come out clamped to 1
    bright, _ = stack_resized([np.full((6, 6), 1.5, np.float32)], None, 4)
    assert torch.equal(bright, torch.ones(1, 1, 4, 4))


# --- geometric augmentation ------------------------------------------------------------------------------------------

def test_certain_vflip_mirrors_the_rows_of_image_and_mask_together() -> None:
    images = torch.linspace(0.1, 0.9, 2 * 4 * 4).reshape(2, 1, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, 0, 1] = 1  # a lesion pixel on the top row
    out_x, out_y = augment_batch(images, masks, AugmentConfig(vflip=1.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out_x, images.flip(-2))
    assert torch.equal(out_y, masks.flip(-2)) and out_y[:, 3, 1].tolist() == [1, 1]


def _bar_angle(image: torch.Tensor) -> float:
    """The principal axis of a grey image ``(H, W)`` in degrees (x to the right, y down), from its second moments."""
    ys, xs = torch.meshgrid(torch.arange(image.shape[0]).float(), torch.arange(image.shape[1]).float(), indexing="ij")
    m = image.sum()
    cy, cx = (image * ys).sum() / m, (image * xs).sum() / m
    sxx, syy = (image * (xs - cx) ** 2).sum(), (image * (ys - cy) ** 2).sum()
    sxy = (image * (xs - cx) * (ys - cy)).sum()
    return math.degrees(0.5 * math.atan2(2 * float(sxy), float(sxx - syy)))


def test_rotation_turns_a_bar_by_the_drawn_angle_in_degrees_either_way() -> None:
    size = 65
    images = torch.zeros(2, 1, size, size)
    images[:, :, 30:35, 8:57] = 1.0  # a horizontal bar through the centre: principal axis 0 degrees
    masks = torch.zeros(2, size, size, dtype=torch.long)
    drawn = (-40 + 80 * _draws(0)[2]).tolist()  # uniform in [-40, 40] degrees: seed 0 draws -15.4 and +10.7
    assert drawn[0] < -10 and drawn[1] > 10
    out, _ = augment_batch(images, masks, AugmentConfig(rotate_deg=40), torch.Generator().manual_seed(0))
    turned = [_bar_angle(out[i, 0]) for i in range(2)]
    for angle, want in zip(turned, drawn):
        assert abs(abs(angle) - abs(want)) < 0.5  # turned by the drawn number of degrees (not radians)
    assert turned[0] * turned[1] < 0  # a negative and a positive draw turn the two images opposite ways


def test_zoom_in_and_out_by_the_drawn_factor_pads_image_and_labels_with_zeros_together() -> None:
    size = 64
    u = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1  # pixel centres in [-1, 1]
    cone = (u[:, None] ** 2 + u[None, :] ** 2).sqrt() / math.sqrt(2)
    images = cone.expand(2, 1, size, size).contiguous()
    zoom = 0.8 + 0.4 * _draws(5)[3]  # seed 5: 0.866 (out: the image shrinks) and 1.095 (in)
    assert zoom[0] < 0.9 and zoom[1] > 1.05
    ring = (cone * math.sqrt(2) > 0.1) & (cone * math.sqrt(2) < 0.6)
    masks = torch.zeros(2, size, size, dtype=torch.long)
    out, _ = augment_batch(images, masks, AugmentConfig(scale=0.2), torch.Generator().manual_seed(5))
    # output u samples the input at u / zoom, where the cone is cone / zoom
    torch.testing.assert_close(out[:, 0][:, ring], (images / zoom.view(2, 1, 1, 1))[:, 0][:, ring], atol=0.01, rtol=0)
    # zooming out samples beyond the slice at the corners (|u| / 0.866 > 1): zero grey and background there, in the
    # image and its label map alike, not the slice's edge repeated
    ones, labels = torch.ones(2, 1, size, size), torch.ones(2, size, size, dtype=torch.long)
    out_x, out_y = augment_batch(ones, labels, AugmentConfig(scale=0.2), torch.Generator().manual_seed(5))
    assert out_x[0, 0, 0, 0] == 0 and out_y[0, 0, 0] == 0 and out_x[0, 0, 32, 32] == 1 and out_y[0, 32, 32] == 1
    assert (out_y[0][out_x[0, 0] == 0] == 0).all() and (out_y[0][out_x[0, 0] == 1] == 1).all()
    assert (out_y[0] == 0).sum() > 4 * size  # a whole frame of background around the shrunken slice
    assert torch.equal(out_y[1], labels[1])  # zoomed in: nothing from outside the slice
    torch.testing.assert_close(out_x[1], ones[1])


def test_gamma_clamps_the_input_first_so_out_of_range_grey_stays_finite() -> None:
    images = torch.tensor([-0.1, 0.25, 0.5, 1.2]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    masks = torch.zeros(2, 2, 2, dtype=torch.long)
    out, _ = augment_batch(images, masks, AugmentConfig(gamma=0.5), torch.Generator().manual_seed(1))
    gamma = 0.5 + 1.0 * _draws(1)[4]  # uniform in [0.5, 1.5]; brightness off: shift 0
    expected = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2) ** gamma.view(2, 1, 1, 1)
    assert torch.isfinite(out).all()  # (-0.1) ** 0.7 would be NaN
    torch.testing.assert_close(out, expected)


# --- noise, blur, low resolution ---------------------------------------------------------------------------------------

def test_blur_sigma_is_drawn_per_image_across_its_range() -> None:
    size = 31
    impulse = torch.zeros(2, 1, size, size)
    impulse[:, 0, 15, 15] = 1.0
    out = gaussian_blur(impulse, 1.0, torch.Generator().manual_seed(1), sigmas=(0.5, 2.0))
    sigmas = (0.5 + 1.5 * _draws(1, n=2)[1]).tolist()  # the second draw: 1.105 and 1.602 pixels
    for i, sigma in enumerate(sigmas):
        radius = math.ceil(3 * sigma)
        total = sum(math.exp(-x * x / (2 * sigma * sigma)) for x in range(-radius, radius + 1))
        assert out[i, 0, 15, 15].item() == pytest.approx(1 / total ** 2, rel=1e-4)  # the centre keeps w0 * w0
    assert out[0, 0, 15, 15] > 1.4 * out[1, 0, 15, 15]  # the narrower kernel keeps more of the impulse


def test_low_resolution_share_is_drawn_per_image_across_its_range() -> None:
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = simulate_low_resolution(images, 1.0, torch.Generator().manual_seed(6), shares=(0.5, 1.0))
    sides = [round(8 * s) for s in (0.5 + 0.5 * _draws(6, n=2)[1]).tolist()]
    assert sides == [8, 6]  # seed 6: full resolution for image 0, 6 x 6 for image 1
    torch.testing.assert_close(out[0], images[0])  # 8 -> 8 -> 8: nothing lost
    keep = [0, 1, 2, 4, 5, 6]  # nearest 8 -> 6 keeps rows / columns floor(j * 8 / 6)
    small = images[1:, :, keep][:, :, :, keep]
    torch.testing.assert_close(out[1:], F.interpolate(small, size=(8, 8), mode="bicubic", align_corners=False).clamp(0, 1))


# --- CutMix, lesion paste, crops ---------------------------------------------------------------------------------------

def test_box_masks_have_the_drawn_sides_and_reach_every_position() -> None:
    n, height, width = 300, 20, 30
    masks = box_masks(n, height, width, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    share = torch.rand(n, generator=g)  # the area share u: sides height sqrt(u) x width sqrt(u), rounded
    corner = torch.rand(n, 2, generator=g)  # a uniform position among the height - h + 1 (width - w + 1) possible
    bottom = right = 0
    for i in range(n):
        h, w = round(height * math.sqrt(float(share[i]))), round(width * math.sqrt(float(share[i])))
        top, left = int(float(corner[i, 0]) * (height - h + 1)), int(float(corner[i, 1]) * (width - w + 1))
        expected = torch.zeros(height, width)
        expected[top:top + h, left:left + w] = 1
        assert torch.equal(masks[i, 0], expected), i
        bottom += h > 0 and top + h == height
        right += w > 0 and left + w == width
    assert bottom > 5 and right > 5  # boxes touch the last row and column too
    assert 0.45 < float(masks.mean()) < 0.55  # mean area share E[u] = 1/2 (not E[u^2] = 1/3)


def test_cutmix_of_a_single_image_returns_it_unchanged() -> None:
    images, masks = torch.rand(1, 1, 8, 8), torch.ones(1, 8, 8, dtype=torch.long)
    out_x, out_y = cutmix(images, masks, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(out_x, images) and torch.equal(out_y, masks)


def test_lesion_paste_margin_is_a_share_of_the_shorter_side() -> None:
    # 20 x 200 slices: the largest margin is int(0.03 * 20) = 0 pixels, so exactly the lesion comes over
    images = torch.stack([torch.zeros(1, 20, 200), torch.ones(1, 20, 200)])
    masks = torch.zeros(2, 20, 200, dtype=torch.int64)
    masks[0, 5:8, 50:60] = 1
    masks[1, 10:12, 120:125] = 2
    for seed in range(5):
        out_x, out_y = lesion_paste(images, masks, 1.0, torch.Generator().manual_seed(seed))
        assert torch.equal(out_x[0, 0] == 1, masks[1] > 0) and torch.equal(out_x[1, 0] == 0, masks[0] > 0)
        assert torch.equal(out_y[0], masks[0] + masks[1]) and torch.equal(out_y[1], masks[0] + masks[1])


def test_random_crop_of_a_wide_image_cuts_only_where_it_is_larger() -> None:
    height, width = 8, 16
    grid = (torch.arange(height)[:, None] * 100 + torch.arange(width)[None, :])
    masks = torch.stack([grid, grid + 1000])
    images = masks[:, None].float()
    for size in (8, 12):  # the crop fits the height: all 8 rows kept, a window of the 16 columns drawn
        out_x, out_y = random_crop(images, masks, size, torch.Generator().manual_seed(3))
        assert out_x.shape == (2, 1, 8, size) and out_y.shape == (2, 8, size)
        g = torch.Generator().manual_seed(3)
        top = torch.randint(0, 1, (2,), generator=g).tolist()
        left = torch.randint(0, width - size + 1, (2,), generator=g).tolist()
        assert top == [0, 0]
        for i in range(2):
            assert torch.equal(out_y[i], masks[i, :, left[i]:left[i] + size])
            assert torch.equal(out_x[i, 0], out_y[i].float())  # image and labels cut at the same place


# --- intensity -----------------------------------------------------------------------------------------------------------

def test_8_bit_grey_is_divided_by_255_on_every_path() -> None:
    grey = np.array([[0, 51, 255]], np.uint8)
    for out in (to_unit_range(grey, is_hu=False), scale_stored_grey(grey)):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, [[0.0, 0.2, 1.0]], atol=1e-7)  # 255 is white, not 255 / 256 or / 65535
    # uint8 is 8-bit grey even when every value is 0 or 1 (a very dark slice): / 255, not read as [0, 1] data
    np.testing.assert_allclose(to_unit_range(np.array([0, 1], np.uint8), is_hu=False), [0.0, 1 / 255], atol=1e-9)


def test_16_bit_grey_reads_within_the_unit_range() -> None:
    np.testing.assert_allclose(scale_stored_grey(np.array([0, 13107, 65535], np.uint16)), [0.0, 0.2, 1.0], atol=1e-7)
    # signed 32-bit samples of a 16-bit PNG (Pillow's mode "I") are clipped into [0, 1] whatever they hold
    np.testing.assert_allclose(scale_stored_grey(np.array([-5, 65535, 70000], np.int32), sixteen_bit=True),
                               [0.0, 1.0, 1.0])
    assert scale_stored_grey(np.array([-5, 100], np.int32)) is None  # signed samples without the flag: may be HU


def test_raw_ct_warning_of_an_empty_image_is_none() -> None:
    assert raw_ct_warning(np.zeros((0, 4), np.uint16), "empty.png") is None
    assert raw_ct_warning(np.zeros((0, 4), np.int32), "empty.png", sixteen_bit=True) is None


def test_to_unit_range_keeps_0_and_1_and_reads_whole_numbers_up_to_2_as_8_bit() -> None:
    # a binary [0, 1] slice (whole numbers, reaching both ends) is already in range: kept, not / 255
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 1.0, 1.0]), is_hu=False), [0.0, 1.0, 1.0])
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 0.5, 1.0]), is_hu=False), [0.0, 0.5, 1.0])
    # a fractional overshoot reaching exactly 2 is still [0, 1] data: clipped
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 0.5, 2.0]), is_hu=False), [0.0, 0.5, 1.0])
    # whole numbers 0..2 are very dark 8-bit grey: / 255, not clipped to [0, 1]
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 1.0, 2.0]), is_hu=False), [0.0, 1 / 255, 2 / 255],
                               atol=1e-7)


@pytest.mark.parametrize("value", [-5.0, 300.0])
def test_to_unit_range_of_a_flat_slice_out_of_range_is_zeros_not_nan(value: float) -> None:
    out = to_unit_range(np.full((2, 3), value), is_hu=False)  # min-max scaling with max == min
    assert out.dtype == np.float32 and out.shape == (2, 3) and not out.any()


def test_equalize_puts_grey_level_1_in_the_top_bin_with_the_levels_just_below() -> None:
    # 1024 bins of [0, 1]: the top bin holds [1023/1024, 1], so 1023/1024 and 1 share it: both mid-rank 1/2
    out = equalize(np.array([1023 / 1024, 1.0], np.float32))
    np.testing.assert_allclose(out, [0.5, 0.5])
    # 1022.5/1024 lies in the bin below: mid-ranks 1/4 and 3/4 for it and a pixel at 1
    np.testing.assert_allclose(equalize(np.array([1022.5 / 1024, 1.0], np.float32)), [0.25, 0.75])
