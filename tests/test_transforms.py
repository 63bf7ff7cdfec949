"""Batch augmentation against hand-computed results."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from covseg.config import AugmentConfig, apply_overrides, load_recipe
from covseg.errors import CovsegError
from covseg.inference import Predictor
from covseg.transforms import (augment_batch, fit_box, gaussian_blur, gaussian_noise, resize_probs,
                               simulate_low_resolution, stack_resized)

from conftest import TINY_OVERRIDES


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


def test_elastic_warp_moves_no_pixel_further_than_its_bound() -> None:
    size = 64
    ramp = torch.linspace(0.0, 1.0, size)
    # two images whose grey level is the pixel's column / row: a warped pixel's value says where it came from
    images = torch.stack([ramp.expand(size, size), ramp[:, None].expand(size, size)])[:, None].contiguous()
    masks = torch.zeros(2, size, size, dtype=torch.long)
    masks[:, 20:40, 20:40] = 2
    cfg = AugmentConfig(elastic=0.05)
    out_x, out_y = augment_batch(images, masks, cfg, torch.Generator().manual_seed(1))
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))  # away from the zero-padded border
    moved = (out_x - images)[inner].abs()
    # 0.05 of the side is 3.2 pixels; one pixel is 1/63 of the ramp, and bilinear sampling stays in between
    assert moved.max() <= 0.05 * size / (size - 1) + 1e-5
    assert moved.max() > 0.01  # it did warp
    assert set(out_y.unique().tolist()) <= {0, 2}  # nearest sampling: no new labels
    assert 0.8 < (out_y == 2).sum().item() / (masks == 2).sum().item() < 1.2


def test_elastic_off_draws_as_before_and_on_is_reproducible() -> None:
    images, masks = _batch()
    plain = AugmentConfig(rotate_deg=10)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    augment_batch(images, masks, plain, g1)
    [torch.rand(2, generator=g2) for _ in range(6)]
    assert torch.equal(g1.get_state(), g2.get_state())
    on = AugmentConfig(rotate_deg=10, elastic=0.1)
    a = augment_batch(images, masks, on, torch.Generator().manual_seed(7))
    b = augment_batch(images, masks, on, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert not torch.allclose(a[0], augment_batch(images, masks, plain, torch.Generator().manual_seed(7))[0])


def test_fit_box_keeps_the_aspect_ratio_only_when_padding() -> None:
    assert fit_box(277, 153, 352, "stretch") == (0, 0, 352, 352)
    # 352 / 277 = 1.2708; 153 * 1.2708 = 194.4 -> 194 wide, (352 - 194) // 2 = 79 to the left
    assert fit_box(277, 153, 352, "pad") == (0, 79, 352, 194)
    assert fit_box(6, 12, 16, "pad") == (4, 0, 8, 16)
    assert fit_box(16, 16, 16, "pad") == (0, 0, 16, 16)
    with pytest.raises(ValueError, match="stretch, pad"):
        fit_box(6, 12, 16, "crop")


def _half_bright() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((6, 12), np.float32)
    image[:, :6] = 1.0  # left half bright, and its label 1
    return image, (image > 0.5).astype(np.int64)


def test_stack_resized_pads_and_resize_probs_crops_the_padding_off() -> None:
    image, mask = _half_bright()
    x, y = stack_resized([image], [mask], 16, "pad")  # box (4, 0, 8, 16)
    assert x[0, 0, :4].abs().sum() == 0 and x[0, 0, 12:].abs().sum() == 0 and x[0, 0, 4:12, :7].min() == 1
    assert (y[0, 4:12, :8] == 1).all() and y[0, 4:12, 8:].sum() == 0 and y[0, :4].sum() == 0 and y[0, 12:].sum() == 0
    probs = F.one_hot(y, 2).permute(0, 3, 1, 2).float()
    back = resize_probs(probs, 6, 12, fit_box(6, 12, 16, "pad"))
    assert np.array_equal(back.argmax(1)[0].numpy(), mask)
    assert not np.array_equal(resize_probs(probs, 6, 12).argmax(1)[0].numpy(), mask)  # padding left in: rows shift


def test_stack_resized_takes_flipped_float_masks() -> None:
    image, mask = _half_bright()
    flipped = mask.astype(np.float32)[::-1, ::-1]  # negative strides, which torch.from_numpy refuses
    for resize in ("stretch", "pad"):
        x, y = stack_resized([image[::-1, ::-1]], [flipped], 16, resize)
        x_copy, y_copy = stack_resized([image[::-1, ::-1].copy()], [flipped.copy()], 16, resize)
        assert torch.equal(x, x_copy) and torch.equal(y, y_copy) and y.sum() > 0


class _BrightIsLesion:
    """Logits ``(B, 2, S, S)``: class 1 wherever the input is brighter than 1/2; keeps its last input."""

    description = "threshold"
    seen: torch.Tensor

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        self.seen = x
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_predictor_maps_labels_back_onto_the_image_either_way(resize: str) -> None:
    image, mask = _half_bright()
    backend = _BrightIsLesion()
    probs = next(iter(Predictor(backend, 16, resize=resize)([image])))
    assert probs.shape == (2, 6, 12) and np.array_equal(probs.argmax(0), mask)
    rows = backend.seen[0, 0].amax(1)  # the brightest value of each input row: 0 only in the padding
    assert (rows == 0).tolist() == ([True] * 4 + [False] * 8 + [True] * 4 if resize == "pad" else [False] * 16)


def test_a_model_trained_with_padding_predicts_with_it(tiny_data: Path, tmp_path: Path) -> None:
    from covseg.cli import main
    from covseg.predict import open_predictor

    run = tmp_path / "pad"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1", "-o",
                 str(run), "--quiet", "data.resize=pad", *TINY_OVERRIDES]) == 0
    assert main(["export", str(run), "-o", str(tmp_path / "pad.onnx")]) == 0
    for model, backend in ((run, "torch"), (run, "auto"), (tmp_path / "pad.onnx", "onnx")):
        predictor, config, _ = open_predictor(model, backend=backend, precision="fp32")
        assert config.data.resize == "pad" and predictor.resize == "pad"


def test_resize_mode_is_a_checked_recipe_setting() -> None:
    config = apply_overrides(load_recipe("tiny"), ["data.resize=pad"])
    assert config.data.resize == "pad" and load_recipe("tiny").data.resize == "stretch"
    with pytest.raises(CovsegError, match="stretch"):
        apply_overrides(load_recipe("tiny"), ["data.resize=crop"])


def test_random_crop_cuts_image_and_mask_at_the_same_drawn_offset() -> None:
    size = 16
    # grey level = 100 * row + column, so a crop's first pixel says where it was cut
    grid = (torch.arange(size)[:, None] * 100 + torch.arange(size)[None, :]).float()
    images = torch.stack([grid, grid + 10_000])[:, None].contiguous()
    masks = images[:, 0].long()  # the mask holds the same numbers: image and mask must move together
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    out_x, out_y = augment_batch(images / 20_000, masks, AugmentConfig(crop=8), g1)
    assert out_x.shape == (2, 1, 8, 8) and out_y.shape == (2, 8, 8)
    [torch.rand(2, generator=g2) for _ in range(6)]  # hflip, vflip, angle, zoom, gamma, shift
    top = torch.randint(0, 9, (2,), generator=g2).tolist()
    left = torch.randint(0, 9, (2,), generator=g2).tolist()
    for i in range(2):
        assert torch.equal(out_y[i], masks[i, top[i]:top[i] + 8, left[i]:left[i] + 8])
        torch.testing.assert_close(out_x[i, 0] * 20_000, out_y[i].float())
    assert torch.equal(g1.get_state(), g2.get_state())
    # a crop as large as the image changes nothing
    same_x, same_y = augment_batch(images, masks, AugmentConfig(crop=size), torch.Generator().manual_seed(4))
    assert torch.equal(same_y, masks) and torch.equal(same_x, images)


def test_crop_is_a_checked_recipe_setting() -> None:
    config = apply_overrides(load_recipe("default"), ["train.augment.crop=256"])
    assert config.train.augment.crop == 256 and load_recipe("default").train.augment.crop == 0
    with pytest.raises(CovsegError, match="larger than data.input_size"):
        apply_overrides(load_recipe("default"), ["train.augment.crop=384"])
    with pytest.raises(CovsegError, match="crop"):
        apply_overrides(load_recipe("default"), ["train.augment.crop=-1"])
    with pytest.raises(CovsegError, match="multiple of 16, such as 240"):
        apply_overrides(load_recipe("default"), ["train.augment.crop=250"])


def test_progressive_size_resamples_the_whole_slice_and_draws_as_before() -> None:
    images = torch.zeros(2, 1, 32, 32)
    images[:, :, :, :16] = 1.0  # left half bright
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 8:24, 0:16] = 1  # an even-aligned block: each output pixel samples between two of its input pixels
    out_x, out_y = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(0), size=16)
    assert out_x.shape == (2, 1, 16, 16) and out_y.shape == (2, 16, 16)
    expected_x = torch.zeros(2, 1, 16, 16)
    expected_x[:, :, :, :8] = 1.0  # the same field of view at half the resolution
    torch.testing.assert_close(out_x, expected_x)
    expected_y = torch.zeros(2, 16, 16, dtype=torch.long)
    expected_y[:, 4:12, 0:8] = 1
    assert torch.equal(out_y, expected_y)
    # a flip at the smaller size is the flip of the smaller image
    flipped_x, flipped_y = augment_batch(images, masks, AugmentConfig(hflip=1.0), torch.Generator().manual_seed(0),
                                         size=16)
    torch.testing.assert_close(flipped_x, expected_x.flip(-1))
    assert torch.equal(flipped_y, expected_y.flip(-1))
    # every augmentation on: the same random numbers are drawn with and without the size, so the epochs after the
    # progressive ones draw exactly what they would have drawn; the input's own size changes nothing
    cfg = AugmentConfig(hflip=0.5, rotate_deg=10, scale=0.1, gamma=0.2, brightness=0.05, contrast=0.1, elastic=0.02)
    g1, g2, g3 = (torch.Generator().manual_seed(7) for _ in range(3))
    small, _ = augment_batch(images, masks, cfg, g1, size=16)
    full, full_y = augment_batch(images, masks, cfg, g2)
    same, same_y = augment_batch(images, masks, cfg, g3, size=32)
    assert small.shape[-1] == 16 and full.shape[-1] == 32
    assert torch.equal(g1.get_state(), g2.get_state())
    torch.testing.assert_close(same, full)
    assert torch.equal(same_y, full_y)


def test_cutmix_pastes_a_box_of_another_image_with_its_labels() -> None:
    from covseg.transforms import cutmix

    b, size = 4, 32
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, size, size).contiguous()
    masks = torch.arange(b).view(b, 1, 1).expand(b, size, size).contiguous()  # image k's labels are all k
    out_x, out_y = cutmix(images, masks, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(images[:, 0, 0, 0], torch.arange(b, dtype=torch.float32))  # inputs untouched
    for i in range(b):
        pasted = out_y[i] != i
        assert pasted.any()  # probability 1: every image got a box
        rows, cols = pasted.nonzero().unbind(1)
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert pasted[box].all() and int(pasted.sum()) == pasted[box].numel()  # one rectangle
        assert len(out_y[i][pasted].unique()) == 1 and int(out_y[i][pasted][0]) != i  # from one other image
        torch.testing.assert_close(out_x[i, 0], out_y[i].float())  # the image moved with its labels
    same_x, same_y = cutmix(images, masks, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(same_x, images) and torch.equal(same_y, masks)


def test_mixup_blends_each_image_with_a_shifted_partner_by_one_beta_weight() -> None:
    from covseg.transforms import mixup

    b, size = 5, 8
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, size, size).contiguous()
    before = images.clone()
    out, partner, lam = mixup(images, 0.4, torch.Generator().manual_seed(7))
    assert torch.equal(images, before)  # the input is untouched
    shift = int(partner[0])
    assert 1 <= shift < b and torch.equal(partner, (torch.arange(b) + shift) % b)  # a cyclic shift, never itself
    assert 0 < lam < 1
    for i in range(b):  # image i holds the value i + 1 everywhere: the mix is lam (i + 1) + (1 - lam) (partner + 1)
        torch.testing.assert_close(out[i], torch.full((1, size, size), lam * (i + 1) + (1 - lam) * (int(partner[i]) + 1)))
    # lam follows Beta(alpha, alpha): mean 1/2, variance 1 / (4 (2 alpha + 1)); a small alpha keeps most batches
    # near one image, alpha 1 is uniform
    g = torch.Generator().manual_seed(0)
    for alpha, variance in [(0.2, 1 / (4 * 1.4)), (1.0, 1 / 12)]:
        lams = np.array([mixup(images, alpha, g)[2] for _ in range(4000)])
        assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - variance) < 0.01
    # one image: returned as it came, its own partner, weight 1; it draws what a larger batch does, so later batches do not shift
    one = images[:1]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    same, own, weight = mixup(one, 0.4, g1)
    assert same is one and own.tolist() == [0] and weight == 1.0
    mixup(images[:2], 0.4, g2)  # a batch of two draws as much
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_cutmix_mixes_after_the_progressive_resize_in_augment_batch() -> None:
    b, size = 3, 32
    images = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, size, size).contiguous() / b
    masks = torch.arange(b).view(b, 1, 1).expand(b, size, size).contiguous()
    cfg = AugmentConfig(hflip=0.5, cutmix=1.0)
    x, y = augment_batch(images, masks, cfg, torch.Generator().manual_seed(0), size=16)
    assert x.shape == (b, 1, 16, 16) and y.shape == (b, 16, 16)  # mixed after the progressive resize
    for i in range(b):
        assert set(y[i].unique().tolist()) == {i, (i + 1) % b} or set(y[i].unique().tolist()) == {i, (i + 2) % b}
    plain = augment_batch(images, masks, AugmentConfig(hflip=0.5), torch.Generator().manual_seed(0), size=16)
    assert torch.equal(plain[1], masks[:, :16, :16])  # without CutMix each image keeps its own labels


def test_lesion_paste_carries_another_images_lesion_and_margin_with_its_labels() -> None:
    from covseg.transforms import LESION_PASTE_MARGIN, lesion_paste

    b, size = 3, 64
    images = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, size, size).contiguous() / 10
    masks = torch.zeros(b, size, size, dtype=torch.int64)
    masks[0, 10:20, 10:20] = 1  # image 0: one GGO square
    masks[1, 40:50, 30:34] = 2  # image 1: one consolidation bar
    masks[1, 10:20, 20:22] = 1  # ... and GGO right beside image 0's square, inside any margin it is pasted with
    masks[0, 40:50, 34:36] = 2  # image 0: consolidation right beside image 1's bar
    # image 2 holds no lesion: whoever draws it as partner is left as it was
    largest = int(LESION_PASTE_MARGIN * size)
    out_x, out_y = lesion_paste(images, masks, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(images[:, 0, 0, 0], torch.tensor([0.1, 0.2, 0.3]))  # inputs untouched
    changed = overwritten = 0
    for i in range(b):
        moved = out_x[i, 0] != images[i, 0]
        if not moved.any():
            continue
        changed += 1
        partner = int(round(float(out_x[i, 0][moved][0]) * 10)) - 1
        assert partner != i and masks[partner].any()
        lesion = masks[partner] > 0
        assert moved[lesion].all()  # the whole lesion came over
        assert torch.equal(out_y[i][moved], masks[partner][moved])  # labels moved with the pixels (margin: 0)
        rim = moved & (masks[partner] == 0)  # the margin: background with the partner's pixels
        assert (out_y[i][rim] == 0).all()
        overwritten += int((rim & (masks[i] > 0)).sum())  # the recipient's own lesion under the margin
        assert torch.equal(out_y[i][~moved], masks[i][~moved])  # the rest keeps its own labels
        grown_by = [F.max_pool2d(lesion[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0].bool()
                    for r in range(largest + 1)]
        assert any(torch.equal(moved, region) for region in grown_by)  # the lesions grown by one square margin
    assert changed >= 2 and overwritten > 0  # seed 0: a margin fell on a recipient's lesion, which went with it
    same_x, same_y = lesion_paste(images, masks, 0.0, torch.Generator().manual_seed(5))
    assert torch.equal(same_x, images) and torch.equal(same_y, masks)
    one_x, one_y = lesion_paste(images[:1], masks[:1], 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(one_x, images[:1]) and torch.equal(one_y, masks[:1])


def test_lesion_paste_margin_is_drawn_per_image_up_to_the_largest() -> None:
    from covseg.transforms import LESION_PASTE_MARGIN, lesion_paste

    b, size = 2, 100
    images = torch.stack([torch.zeros(1, size, size), torch.ones(1, size, size)])
    masks = torch.zeros(b, size, size, dtype=torch.int64)
    masks[0, 20, 20] = 1  # one-pixel lesions: each image receives a (2r + 1)-pixel square of the other's
    masks[1, 50, 50] = 1
    sides, differ = set(), 0
    for seed in range(40):
        out_x, _ = lesion_paste(images, masks, 1.0, torch.Generator().manual_seed(seed))
        side_0 = int(out_x[0, 0, 50].sum())  # ones pasted into image 0
        side_1 = int((out_x[1, 0, 20] == 0).sum())  # zeros pasted into image 1
        assert int(out_x[0, 0].sum()) == side_0 * side_0 and int((out_x[1, 0] == 0).sum()) == side_1 * side_1
        sides |= {side_0, side_1}
        differ += side_0 != side_1
    largest = int(LESION_PASTE_MARGIN * size)
    assert sides <= set(range(1, 2 * largest + 2, 2)) and len(sides) >= 3  # odd sides 1 .. 2 * largest + 1
    assert differ >= 10  # each image draws its own margin


def test_lesion_paste_is_applied_by_augment_batch_from_its_stream() -> None:
    b, size = 4, 32
    images = torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(b, size, size, dtype=torch.int64)
    masks[:, 8:12, 8:12] = 1
    plain = augment_batch(images, masks, AugmentConfig(hflip=0.5), torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    augment_batch(images, masks, AugmentConfig(hflip=0.5), generator)
    after_plain = torch.rand(1, generator=generator)
    generator = torch.Generator().manual_seed(0)
    pasted = augment_batch(images, masks, AugmentConfig(hflip=0.5, lesion_paste=1.0), generator)
    assert not torch.equal(torch.rand(1, generator=generator), after_plain)  # it drew from the same stream
    assert pasted[0].shape == plain[0].shape and pasted[1].shape == plain[1].shape
    assert not torch.equal(pasted[0], plain[0])  # lesion pixels came from other (random) images


def test_simulated_low_resolution_keeps_every_other_pixel_and_resamples_it_back_up() -> None:
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = simulate_low_resolution(images, 1.0, torch.Generator().manual_seed(0), shares=(0.5, 0.5))
    # nearest at half size keeps rows and columns 0, 2, 4, 6; bicubic brings them back to 8 x 8
    expected = F.interpolate(images[:, :, ::2, ::2], size=(8, 8), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(out, expected)
    assert out.min() >= 0 and out.max() <= 1
    flat = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(simulate_low_resolution(flat, 1.0, torch.Generator().manual_seed(0)), flat)
    untouched = simulate_low_resolution(images, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(untouched, images)


def test_low_resolution_in_augment_batch_leaves_labels_and_other_recipes_draws_alone() -> None:
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    masks = (images[:, 0] > 0.5).long()
    out_x, out_y = augment_batch(images, masks, AugmentConfig(lowres=1.0), torch.Generator().manual_seed(3))
    assert torch.equal(out_y, masks) and not torch.allclose(out_x, images)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    augment_batch(images, masks, AugmentConfig(rotate_deg=10), g1)
    [torch.rand(2, generator=g2) for _ in range(6)]
    assert torch.equal(g1.get_state(), g2.get_state())
    with pytest.raises(CovsegError, match="train.augment.lowres is 1.5; it must be a probability"):
        apply_overrides(load_recipe("tiny"), ["train.augment.lowres=1.5"])


def test_gaussian_noise_has_the_drawn_deviation_per_image_and_stays_in_range() -> None:
    images = torch.full((3, 1, 64, 64), 0.5)
    out = gaussian_noise(images, 1.0, torch.Generator().manual_seed(0), max_std=0.1)
    g = torch.Generator().manual_seed(0)
    torch.rand(3, generator=g)  # the choices
    drawn = 0.1 * torch.rand(3, generator=g)  # the deviations the noise was drawn with
    measured = (out - images).flatten(1).std(dim=1)
    torch.testing.assert_close(measured, drawn, rtol=0.05, atol=1e-3)  # 4096 pixels: ~1 % sampling error
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(gaussian_noise(images, 0.0, torch.Generator().manual_seed(0)), images)
    edge = gaussian_noise(torch.ones(1, 1, 16, 16), 1.0, torch.Generator().manual_seed(1), max_std=0.5)
    assert edge.max() == 1.0 and edge.min() < 1.0  # clamped at the top of the range


def test_gaussian_blur_spreads_an_impulse_as_the_hand_computed_kernel_and_keeps_flat_images() -> None:
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    out = gaussian_blur(impulse, 1.0, torch.Generator().manual_seed(0), sigmas=(1.0, 1.0))
    # sigma 1, radius 3: the 1-D weights exp(-x^2 / 2) / (1 + 2 (e^-0.5 + e^-2 + e^-4.5)) = 0.39905, 0.24203, ...
    k0, k1 = 1 / 2.505950, math.exp(-0.5) / 2.505950
    assert out[0, 0, 7, 7].item() == pytest.approx(k0 * k0, abs=1e-5)  # 0.15924
    assert out[0, 0, 7, 8].item() == pytest.approx(k0 * k1, abs=1e-5)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)  # mass kept away from the edges
    assert out[0, 0, 7, 11].item() == 0.0  # beyond the radius of 3
    flat = torch.full((2, 1, 6, 6), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.0, torch.Generator().manual_seed(0)), flat)
    torch.testing.assert_close(gaussian_blur(impulse, 0.0, torch.Generator().manual_seed(0)), impulse)


def test_noise_and_blur_in_augment_batch_leave_labels_and_other_recipes_draws_alone() -> None:
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    masks = (images[:, 0] > 0.5).long()
    for cfg in (AugmentConfig(noise=1.0), AugmentConfig(blur=1.0)):
        out_x, out_y = augment_batch(images, masks, cfg, torch.Generator().manual_seed(3))
        assert torch.equal(out_y, masks) and not torch.allclose(out_x, images)
    for key in ("noise", "blur"):
        with pytest.raises(CovsegError, match=f"train.augment.{key} is -0.1; it must be a probability"):
            apply_overrides(load_recipe("tiny"), [f"train.augment.{key}=-0.1"])


def test_fit_box_rounds_the_side_and_puts_the_odd_pixel_after_the_image() -> None:
    # 16 / 7 = 2.2857; 3 * 2.2857 = 6.86 -> 7 rows (nearest, not truncated), (16 - 7) // 2 = 4 rows above
    assert fit_box(3, 7, 16, "pad") == (4, 0, 7, 16)
    # scale 1: 5 rows in 16, 11 rows of padding: 11 // 2 = 5 above, 6 below
    assert fit_box(5, 16, 16, "pad") == (5, 0, 5, 16)


def test_stack_resized_samples_masks_at_pixel_centres() -> None:
    # 3 -> 2 columns: output centres 0.5 and 1.5 map to input 0.75 and 2.25 (scale 3 / 2): columns 0 and 2
    mask = np.tile(np.arange(3), (3, 1))
    _, y = stack_resized([np.zeros((3, 3), np.float32)], [mask], 2)
    assert y[0].tolist() == [[0, 2], [0, 2]]


def _cone(size: int) -> torch.Tensor:
    """Distance from the image centre in grid_sample's [-1, 1] coordinates (pixel centres), / sqrt(2)."""
    u = (2 * torch.arange(size, dtype=torch.float32) + 1) / size - 1
    return (u[:, None] ** 2 + u[None, :] ** 2).sqrt() / math.sqrt(2)


def test_rotation_keeps_a_cone_and_zoom_divides_it_by_the_drawn_zoom() -> None:
    size = 64
    cone = _cone(size)
    images = cone.expand(2, 1, size, size).contiguous()
    masks = torch.zeros(2, size, size, dtype=torch.long)
    ring = (cone * math.sqrt(2) > 0.1) & (cone * math.sqrt(2) < 0.6)  # inside the image after any draw, off the tip
    # a rotation about the centre moves no pixel's distance from it: the cone comes back unchanged
    g = torch.Generator().manual_seed(4)
    draws = [torch.rand(2, generator=g) for _ in range(6)]  # hflip, vflip, angle, zoom, gamma, shift
    assert ((-45 + 90 * draws[2]).abs() > 10).all()  # this seed turns both images by more than 10 degrees
    out, _ = augment_batch(images, masks, AugmentConfig(rotate_deg=45), torch.Generator().manual_seed(4))
    assert (out - images)[:, 0][:, ring].abs().max() < 0.01
    # zoom z samples the input at u / z: the cone's value there is cone / z
    zoom = 0.8 + 0.4 * draws[3]
    assert ((zoom - 1).abs() > 0.05).all()
    out, _ = augment_batch(images, masks, AugmentConfig(scale=0.2), torch.Generator().manual_seed(4))
    torch.testing.assert_close(out[:, 0][:, ring], (images / zoom.view(2, 1, 1, 1))[:, 0][:, ring], atol=0.01, rtol=0)


def test_brightness_keeps_the_image_in_range() -> None:
    images = torch.ones(2, 1, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    out, _ = augment_batch(images, masks, AugmentConfig(brightness=0.5), torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    shift = -0.5 + 1.0 * [torch.rand(2, generator=g) for _ in range(6)][5]  # hflip, ..., gamma, shift
    assert (shift > 0).any()  # a white image brightened stays at 1, not above 1 (gamma is off: 1 ** 1 = 1)
    torch.testing.assert_close(out, (1 + shift.view(2, 1, 1, 1)).clamp(0, 1).expand(2, 1, 4, 4))
    assert out.max() <= 1.0


def test_elastic_field_passes_through_control_points_drawn_up_to_twice_the_magnitude() -> None:
    from covseg.transforms import elastic_offsets

    # 37 pixels = 6 * 6 + 1: with align_corners the 7 x 7 control points sit on every 6th pixel, where bicubic
    # interpolation returns them exactly; they are uniform in [-2m, 2m] grid units (m of the side = 2m of [-1, 1])
    field = elastic_offsets(2, 37, 37, 0.05, torch.Generator().manual_seed(0))
    control = (torch.rand(2, 2, 7, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.1
    torch.testing.assert_close(field[:, ::6, ::6], control.permute(0, 2, 3, 1))
    assert field.abs().max() <= 0.1 + 1e-6 and field.abs().max() > 0.09


def test_simulated_low_resolution_rounds_the_smaller_side() -> None:
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = simulate_low_resolution(images, 1.0, torch.Generator().manual_seed(0), shares=(0.7, 0.7))
    # 8 * 0.7 = 5.6 -> 6 pixels (not 5); nearest keeps rows / columns floor(j * 8 / 6) = 0, 1, 2, 4, 5, 6
    keep = [0, 1, 2, 4, 5, 6]
    small = images[:, :, keep][:, :, :, keep]
    torch.testing.assert_close(out, F.interpolate(small, size=(8, 8), mode="bicubic", align_corners=False).clamp(0, 1))
