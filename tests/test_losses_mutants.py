"""Losses: hand-computed cases that the other loss tests leave open (each one fails on a small change of the code)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from covseg.errors import CovsegError
from covseg.losses import (DeepSupervisionLoss, DiceLoss, LesionAndTypeLoss, compute_topk_cross_entropy, create_loss,
                           median_frequency_weights)


def _two_class_logits(foreground: list[float]) -> torch.Tensor:
    """Logits ``(1, 2, 1, N)`` whose softmax gives class 1 the probabilities ``foreground``."""
    p = torch.tensor(foreground, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None, :, None].float()


def test_median_frequency_weights_accept_an_empty_mask() -> None:
    ok = np.array([[0, 1], [1, 1]])  # f = 1/4, 3/4; median 1/2
    empty = np.zeros((0, 5), dtype=np.int64)  # no pixel: adds nothing, and has no label to refuse
    np.testing.assert_allclose(median_frequency_weights([empty, ok, empty], 2), [2.0, 2 / 3])


def test_topk_cross_entropy_refuses_a_fraction_of_zero_or_less() -> None:
    logits, target = _two_class_logits([0.9, 0.6, 0.2, 0.5]), torch.tensor([[[1, 1, 1, 0]]])
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
            compute_topk_cross_entropy(logits, target, fraction)


def test_topk_cross_entropy_keeps_at_least_one_pixel() -> None:
    # 1e-12 of 4 pixels rounds to 0 at 9 decimals: one pixel is kept (the hardest, -ln 0.2), not none (a NaN mean)
    logits, target = _two_class_logits([0.9, 0.6, 0.2, 0.5]), torch.tensor([[[1, 1, 1, 0]]])
    assert compute_topk_cross_entropy(logits, target, 1e-12).item() == pytest.approx(-np.log(0.2), abs=1e-5)


def test_topk_cross_entropy_rounds_only_away_float_error() -> None:
    # 0.07001 of 100 pixels is 7.001: 8 pixels (the rounding to 9 decimals must not drop the real 0.001)
    logits = torch.zeros(1, 2, 10, 10)
    logits[0, 1] = torch.linspace(-3.0, 3.0, 100).view(10, 10)
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten().sort(descending=True).values
    assert compute_topk_cross_entropy(logits, target, 0.07001).item() == pytest.approx(per_pixel[:8].mean().item(),
                                                                                      abs=1e-6)


def test_type_loss_weighted_ce_divides_by_summed_weights_under_one() -> None:
    # uniform type logits: CE ln 2 on each of the 3 lesion pixels whatever the weights; weights 1/4 sum to 3/4 over
    # those pixels, so the weighted mean is (3/4 ln 2) / (3/4) = ln 2 (not 3/4 ln 2)
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.zeros(1, 3, 2, 2)
    loss = create_loss("mfb_dice_ce", np.array([1.0, 0.25, 0.25]), dice="present", types_only=True)(logits, target)
    # Dice GGO 2 * 1 / (3/2 + 2) = 4/7, consolidation 2 * 1/2 / (3/2 + 1) = 2/5
    assert loss.item() == pytest.approx(np.log(2) + 1 - (4 / 7 + 2 / 5) / 2, abs=1e-5)


def test_lesion_and_type_loss_lesion_dice_is_per_image_by_hand() -> None:
    # background logit ln 6 against logsumexp(0, 0) = ln 2: lesion probability 1/4 on every pixel, types 1/2 each
    target = torch.tensor([[[0, 1], [0, 0]], [[1, 1], [2, 0]]])
    logits = torch.zeros(2, 3, 2, 2)
    logits[:, 0] = float(np.log(6))
    # lesion CE: 4 lesion pixels -ln(1/4), 4 background pixels -ln(3/4)
    ce = (np.log(4) + np.log(4 / 3)) / 2
    # lesion Dice per image: A 2 * 1/4 / (1 + 1) = 1/4, B 2 * 3/4 / (1 + 3) = 3/8 (batch Dice would be 1/3)
    lesion_dice = 1 - (1 / 4 + 3 / 8) / 2
    # types: CE ln 2; Dice over present pairs: A GGO 2 * 1/2 / (1/2 + 1) = 2/3, B GGO 2 / (3/2 + 2) = 4/7,
    # B consolidation 1 / (3/2 + 1) = 2/5 (A's consolidation skipped)
    types = np.log(2) + 1 - (2 / 3 + 4 / 7 + 2 / 5) / 3
    assert LesionAndTypeLoss()(logits, target).item() == pytest.approx(ce + lesion_dice + types, abs=1e-5)
    via_factory = create_loss("dice_ce", np.ones(3), dice="present", lesion_and_type=True)(logits, target)
    assert via_factory.item() == pytest.approx(ce + lesion_dice + types, abs=1e-5)


@pytest.mark.parametrize("option", ["types_only", "lesion_and_type"])
def test_ce_topk_refused_with_a_type_loss(option: str) -> None:
    with pytest.raises(CovsegError, match=rf"^train.ce_topk=0.5 keeps the hardest pixels .* 'dice_ce' with "
                                          r"train.types_only / train.lesion_and_type does not have"):
        create_loss("dice_ce", np.ones(3), dice="present", ce_topk=0.5, **{option: True})


@pytest.mark.parametrize("name", ["mfb_ce", "mfb_dice_ce"])
def test_mfb_losses_need_class_weights(name: str) -> None:
    with pytest.raises(ValueError, match=rf"loss '{name}' needs class weights"):
        create_loss(name)


def test_batch_dice_keeps_a_class_absent_from_the_batch_by_hand() -> None:
    # three classes, uniform logits (p = 1/3) on one 2x2 image holding classes 0 and 1: class 1 2 * (1/3) / (4/3 + 1)
    # = 2/7; class 2 is absent from the batch and scores ~0, yet stays in the batch Dice mean (only present skips it)
    target = torch.tensor([[[0, 1], [0, 0]]])
    uniform = torch.zeros(1, 3, 2, 2)
    for name in ("dice", "dice_ce"):
        dice = create_loss(name, np.ones(3), dice="batch")(uniform, target).item()
        if name == "dice_ce":
            dice -= F.cross_entropy(uniform, target).item()
        assert dice == pytest.approx(1 - (2 / 7 + 0) / 2, abs=1e-5), name
        present = create_loss(name, np.ones(3), dice="present")(uniform, target).item()
        if name == "dice_ce":
            present -= F.cross_entropy(uniform, target).item()
        assert present == pytest.approx(1 - 2 / 7, abs=1e-5), name


def test_dice_loss_alone_takes_its_reduction_and_lesion_region_from_the_factory() -> None:
    # as test_present_dice_skips_absent_image_class_pairs_by_hand: present skips image A's class 2
    target = torch.tensor([[[0, 1], [0, 0]], [[1, 2], [2, 2]]])
    uniform = torch.zeros(2, 3, 2, 2)
    present = create_loss("dice", np.ones(3), dice="present")(uniform, target).item()
    assert present == pytest.approx(1 - (2 / 7 + 2 / 7 + 6 / 13) / 3, abs=1e-5)
    # all GGO, uniform over 3 classes: GGO 2 * (4/3) / (4/3 + 4) = 1/2, the lesion region 2 * (8/3) / (8/3 + 4) = 4/5
    ggo = torch.ones(1, 2, 2, dtype=torch.long)
    region = create_loss("dice", np.ones(3), dice="present", lesion_region=True)(torch.zeros(1, 3, 2, 2), ggo).item()
    assert region == pytest.approx(1 - (1 / 2 + 4 / 5) / 2, abs=1e-5)
    assert DiceLoss(batch=False, skip_absent=True, lesion_region=True)(torch.zeros(1, 3, 2, 2), ggo).item() == \
        pytest.approx(region, abs=1e-6)


def test_deep_supervision_down_samples_a_level_that_differs_in_height_only() -> None:
    base = torch.nn.CrossEntropyLoss()
    target = torch.tensor([[[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0]]])
    generator = torch.Generator().manual_seed(0)
    full, half_height = torch.randn(1, 2, 4, 4, generator=generator), torch.randn(1, 2, 2, 4, generator=generator)
    # nearest-exact to 2 rows samples rows 1 and 3; weights 2/3 and 1/3
    expected = (2 * base(full, target) + base(half_height, target[:, 1::2])) / 3
    torch.testing.assert_close(DeepSupervisionLoss(base)([full, half_height], target), expected)
