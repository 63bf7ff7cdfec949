"""Median-frequency weights and losses against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from covseg.errors import CovsegError
from covseg.losses import DiceLoss, LesionAndTypeLoss, LesionTypeLoss, create_loss, median_frequency_weights
from covseg.training import predicted_labels


def test_median_frequency_weights_hand_computed() -> None:
    a = np.array([[0, 0, 0, 1]])  # 4 pixels: class 0 x3, class 1 x1
    b = np.array([[0, 0, 2, 2]])  # 4 pixels: class 0 x2, class 2 x2
    w = median_frequency_weights([a, b], 4)
    # f0 = 5/8 (appears in both), f1 = 1/4 (appears in a only), f2 = 2/4 ; class 3 absent -> weight 0
    f = np.array([5 / 8, 1 / 4, 1 / 2])
    median = np.median(f)  # 1/2
    np.testing.assert_allclose(w, [median / f[0], median / f[1], median / f[2], 0.0])
    assert w[1] > w[2] > w[0]  # rare classes weigh more


def test_median_frequency_weights_refuse_a_label_outside_the_classes() -> None:
    ok = np.array([[0, 1], [1, 1]])
    for bad, label in ((np.array([[0, 2], [1, 1]]), 2), (np.array([[0, -1], [1, 1]]), -1)):
        with pytest.raises(CovsegError, match=rf"^cannot compute class weights: a training mask holds label {label}, "
                                              r"outside the 2 classes 0\.\.1"):
            median_frequency_weights([ok, bad], 2)
    assert np.allclose(median_frequency_weights([ok], 2), [2.0, 2 / 3])  # f = 1/4, 3/4; median 1/2


def test_median_frequency_weights_empty() -> None:
    with pytest.raises(CovsegError):
        median_frequency_weights([], 2)


def test_weighted_ce_matches_torch() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    w = np.array([0.5, 2.0, 1.0])
    loss = create_loss("mfb_ce", w)(logits, target)
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, weight=torch.tensor(w, dtype=torch.float32)))


def test_dice_loss_values() -> None:
    target = torch.tensor([[[0, 1], [1, 0]]])
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 100
    assert DiceLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-5)
    # uniform logits: p = 0.5 everywhere; class 1: inter 2*0.5 = 1, sum p = 2, sum y = 2 -> dice 2/4
    uniform = torch.zeros(1, 2, 2, 2)
    assert DiceLoss()(uniform, target).item() == pytest.approx(0.5, abs=1e-5)


def test_sample_dice_weighs_each_image_equally_by_hand() -> None:
    # uniform logits: p = 0.5 on every pixel of two 2x2 images
    target = torch.tensor([[[0, 1], [0, 0]], [[1, 1], [1, 0]]])
    uniform = torch.zeros(2, 2, 2, 2)
    # image A: inter 0.5, sum p 2, sum y 1 -> 1/3; image B: inter 1.5, sum p 2, sum y 3 -> 3/5
    assert DiceLoss(batch=False)(uniform, target).item() == pytest.approx(1 - (1 / 3 + 3 / 5) / 2, abs=1e-5)
    # batch Dice pools the pixels: inter 2, sum p 4, sum y 4 -> 1/2
    assert DiceLoss(batch=True)(uniform, target).item() == pytest.approx(0.5, abs=1e-5)
    sample = create_loss("dice_ce", dice="sample")(uniform, target)
    torch.testing.assert_close(sample, F.cross_entropy(uniform, target) + DiceLoss(batch=False)(uniform, target))
    with pytest.raises(CovsegError, match="Dice reduction"):
        create_loss("dice_ce", dice="pooled")


def test_present_dice_skips_absent_image_class_pairs_by_hand() -> None:
    # three classes, uniform logits: p = 1/3 on every pixel of two 2x2 images (sum p = 4/3 per image/class)
    target = torch.tensor([[[0, 1], [0, 0]], [[1, 2], [2, 2]]])
    uniform = torch.zeros(2, 3, 2, 2)
    # image A: class 1 has 1 pixel -> 2*(1/3) / (4/3 + 1) = 2/7; class 2 is absent -> ~0
    # image B: class 1 has 1 pixel -> 2/7; class 2 has 3 pixels -> 2*1 / (4/3 + 3) = 6/13
    present = DiceLoss(batch=False, skip_absent=True)(uniform, target).item()
    assert present == pytest.approx(1 - (2 / 7 + 2 / 7 + 6 / 13) / 3, abs=1e-5)
    sample = DiceLoss(batch=False)(uniform, target).item()
    assert sample == pytest.approx(1 - (2 / 7 + 0 + 2 / 7 + 6 / 13) / 4, abs=1e-5)
    via_factory = create_loss("dice_ce", dice="present")(uniform, target)
    torch.testing.assert_close(via_factory, F.cross_entropy(uniform, target) + present, atol=1e-6, rtol=0)
    # a batch without any foreground has no present pair: a zero Dice term that still back-propagates
    logits = torch.zeros(1, 3, 2, 2, requires_grad=True)
    empty = DiceLoss(batch=False, skip_absent=True)(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    assert empty.item() == 0.0
    empty.backward()
    assert logits.grad is not None


def test_lesion_region_scores_the_union_of_foreground_classes_by_hand() -> None:
    # one 2x2 image, truth all GGO (class 1); the model calls every pixel consolidation (class 2)
    target = torch.ones(1, 2, 2, dtype=torch.long)
    wrong_type = F.one_hot(torch.full((1, 2, 2), 2), 3).permute(0, 3, 1, 2).float() * 100
    # per class: GGO Dice ~0, consolidation absent (skipped); the lesion region 1 - p_0 ~ 1 matches y > 0 -> Dice ~1
    plain = DiceLoss(batch=False, skip_absent=True)(wrong_type, target).item()
    region = DiceLoss(batch=False, skip_absent=True, lesion_region=True)(wrong_type, target).item()
    assert plain == pytest.approx(1.0, abs=1e-4)
    assert region == pytest.approx(0.5, abs=1e-4)
    # uniform logits over 3 classes: GGO 2*(4/3) / (4/3 + 4) = 1/2; lesion 2*(8/3) / (8/3 + 4) = 4/5
    uniform = torch.zeros(1, 3, 2, 2)
    value = DiceLoss(batch=False, skip_absent=True, lesion_region=True)(uniform, target).item()
    assert value == pytest.approx(1 - (1 / 2 + 4 / 5) / 2, abs=1e-5)
    via_factory = create_loss("dice_ce", np.ones(3), dice="present", lesion_region=True)(uniform, target)
    torch.testing.assert_close(via_factory, F.cross_entropy(uniform, target) + value, atol=1e-6, rtol=0)


def test_lesion_region_refused_where_it_means_nothing() -> None:
    with pytest.raises(CovsegError, match="needs a Dice loss"):
        create_loss("mfb_ce", np.ones(3), lesion_region=True)
    with pytest.raises(CovsegError, match="multiclass"):
        create_loss("dice_ce", np.ones(2), lesion_region=True)


def test_dice_ce_is_sum_and_unknown_loss() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 2, 4, 4)
    target = torch.randint(0, 2, (1, 4, 4))
    total = create_loss("dice_ce")(logits, target)
    torch.testing.assert_close(total, F.cross_entropy(logits, target) + DiceLoss()(logits, target))
    with pytest.raises(CovsegError, match="unknown loss"):
        create_loss("focal")


def test_dice_weight_scales_the_dice_term_by_hand() -> None:
    # one 1x2 image, two classes: logits favour class 1 on both pixels, the truth is [0, 1]
    logits = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]]])
    target = torch.tensor([[[0, 1]]])
    p1 = 1 / (1 + np.exp(-1.0))  # softmax probability of class 1 on each pixel
    ce = -(np.log(1 - p1) + np.log(p1)) / 2
    dice = 1 - 2 * p1 / (2 * p1 + 1)  # foreground Dice: intersection p1, sums 2 p1 and 1
    loss = create_loss("dice_ce", dice="present", dice_weight=0.5)(logits, target)
    assert loss.item() == pytest.approx(ce + 0.5 * dice, abs=1e-5)
    default = create_loss("dice_ce", dice="present")(logits, target)
    assert default.item() == pytest.approx(ce + dice, abs=1e-5)


def test_dice_weight_refused_where_it_means_nothing() -> None:
    with pytest.raises(CovsegError, match="not of 'ce'"):
        create_loss("ce", dice_weight=0.5)
    with pytest.raises(CovsegError, match="not of 'dice'"):
        create_loss("dice", dice_weight=2.0)
    with pytest.raises(CovsegError, match="types_only"):
        create_loss("dice_ce", np.ones(3), dice="present", types_only=True, dice_weight=0.5)
    with pytest.raises(CovsegError, match="must be positive"):
        create_loss("dice_ce", dice_weight=0.0)


def test_dice_reduction_refused_without_a_dice_term() -> None:
    # train.dice used to be dropped without a word under train.loss=ce / mfb_ce, unlike dice_weight or tversky_beta
    for name in ("ce", "mfb_ce"):
        for dice in ("sample", "present"):
            with pytest.raises(CovsegError, match=rf"^train.dice={dice} picks .* train.loss={name} has no Dice term; set "
                                                  r"train.dice=batch .*$"):
                create_loss(name, np.ones(2), dice=dice)
        assert isinstance(create_loss(name, np.ones(2), dice="batch"), torch.nn.Module)  # the default is no choice
    for name in ("dice", "dice_ce", "mfb_dice_ce"):
        create_loss(name, np.ones(2), dice="present")


def test_tversky_beta_weighs_false_negatives_by_hand() -> None:
    # one 1x3 image, two classes: class 1's probability p on the first two pixels, q on the third; truth [0, 1, 1]
    logits = torch.tensor([[[[0.0, 0.0, 0.0]], [[1.0, 1.0, -2.0]]]])
    target = torch.tensor([[[0, 1, 1]]])
    p, q = 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(2.0))
    tp, fp, fn = p + q, p, (1 - p) + (1 - q)  # soft counts of class 1
    for beta in (0.5, 0.7, 0.2):
        expected = 1 - 2 * tp / (2 * tp + 2 * (1 - beta) * fp + 2 * beta * fn)
        got = DiceLoss(fn_weight=beta)(logits, target).item()
        assert got == pytest.approx(expected, abs=1e-5), beta
    # beta 0.5 is the plain Dice score, 2 TP / (sum p + sum y)
    assert DiceLoss(fn_weight=0.5)(logits, target).item() == pytest.approx(1 - 2 * tp / (2 * p + q + 2), abs=1e-5)
    # here misses outweigh false alarms (fn > fp), so leaning on recall raises the loss
    assert DiceLoss(fn_weight=0.7)(logits, target) > DiceLoss()(logits, target) > DiceLoss(fn_weight=0.2)(logits, target)
    ce = F.cross_entropy(logits, target).item()
    loss = create_loss("dice_ce", dice="present", tversky_beta=0.7)(logits, target).item()
    assert loss == pytest.approx(ce + 1 - 2 * tp / (2 * tp + 0.6 * fp + 1.4 * fn), abs=1e-5)


def test_tversky_beta_refused_where_it_means_nothing() -> None:
    with pytest.raises(CovsegError, match="does not have"):
        create_loss("ce", tversky_beta=0.7)
    with pytest.raises(CovsegError, match="types_only"):
        create_loss("dice_ce", np.ones(3), dice="present", types_only=True, tversky_beta=0.7)
    for beta in (0.0, 1.0, -0.3):
        with pytest.raises(CovsegError, match=r"\(0, 1\)"):
            create_loss("dice_ce", tversky_beta=beta)


def test_tversky_on_the_lesion_region_alone_by_hand() -> None:
    # one 1x3 image, classes background / A / B, truth [0, 1, 2]: the types keep plain Dice, the lesion union
    # (probability 1 - p0 against truth > 0) gets the Tversky index
    logits = torch.tensor([[[[1.0, 0.0, 0.5]], [[0.0, 2.0, 1.0]], [[-1.0, 0.5, 0.0]]]])
    target = torch.tensor([[[0, 1, 2]]])
    probs = torch.softmax(logits, dim=1)[0, :, 0].numpy().astype(np.float64)  # (3 classes, 3 pixels)
    truth = np.eye(3)[[0, 1, 2]].T  # (3 classes, 3 pixels)

    def score(p: np.ndarray, y: np.ndarray, beta: float) -> float:
        tp = (p * y).sum()
        return 2 * tp / (2 * tp + 2 * (1 - beta) * (p.sum() - tp) + 2 * beta * (y.sum() - tp))

    lesion_p, lesion_y = 1 - probs[0], 1 - truth[0]
    for beta in (0.7, 0.3):
        expected = 1 - np.mean([score(probs[1], truth[1], 0.5), score(probs[2], truth[2], 0.5),
                                score(lesion_p, lesion_y, beta)])
        got = DiceLoss(lesion_region=True, fn_weight=beta, fn_weight_lesion_only=True)(logits, target).item()
        assert got == pytest.approx(expected, abs=1e-5), beta
        everywhere = 1 - np.mean([score(probs[1], truth[1], beta), score(probs[2], truth[2], beta),
                                  score(lesion_p, lesion_y, beta)])
        got_all = DiceLoss(lesion_region=True, fn_weight=beta)(logits, target).item()
        assert got_all == pytest.approx(everywhere, abs=1e-5), beta
        assert abs(got - got_all) > 1e-3  # the two placements differ on this image
    # per image (batch=False), two images: the lesion's beta reaches each image's last region
    logits2 = torch.cat([logits, logits.flip(-1)])
    target2 = torch.cat([target, torch.tensor([[[2, 0, 0]]])])
    probs2 = torch.softmax(logits2, dim=1)[:, :, 0].numpy().astype(np.float64)  # (2 images, 3 classes, 3 pixels)
    truth2 = np.stack([np.eye(3)[t].T for t in ([0, 1, 2], [2, 0, 0])])
    per_image = [[score(probs2[i, 1], truth2[i, 1], 0.5), score(probs2[i, 2], truth2[i, 2], 0.5),
                  score(1 - probs2[i, 0], 1 - truth2[i, 0], 0.7)] for i in range(2)]
    present = [True, True, True, False, True, True]  # image 2 holds no class 1
    expected = 1 - np.mean([v for v, keep in zip(np.ravel(per_image), present) if keep])
    got = DiceLoss(batch=False, skip_absent=True, lesion_region=True, fn_weight=0.7,
                   fn_weight_lesion_only=True)(logits2, target2).item()
    assert got == pytest.approx(expected, abs=1e-5)
    loss = create_loss("dice_ce", np.ones(3), dice="present", lesion_region=True, tversky_beta=0.7,
                       tversky_lesion_only=True)
    assert loss.dice.fn_weight_lesion_only and loss.dice.fn_weight == 0.7
    with pytest.raises(CovsegError, match="lesion_dice=true"):
        DiceLoss(fn_weight=0.7, fn_weight_lesion_only=True)
    with pytest.raises(CovsegError, match="tversky_beta is 0.5"):
        create_loss("dice_ce", np.ones(3), dice="present", lesion_region=True, tversky_lesion_only=True)


def _two_class_logits(foreground: list[float]) -> torch.Tensor:
    """Logits ``(1, 2, 1, N)`` whose softmax gives class 1 the probabilities ``foreground``."""
    p = torch.tensor(foreground, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None, :, None].float()


def test_lovasz_softmax_by_hand() -> None:
    from covseg.losses import compute_lovasz_softmax
    # a hard prediction scores exactly 1 - IoU: truth [0, 1, 1, 0], prediction [0, 1, 1, 1] -> IoU 2/3
    hard = torch.tensor([[[[9.0, -30, -30, -30]], [[-30.0, 9, 9, 9]]]]) * 2
    assert compute_lovasz_softmax(hard, torch.tensor([[[0, 1, 1, 0]]])).item() == pytest.approx(1 / 3, abs=1e-5)
    # soft: truth [1, 1, 0], p = [0.8, 0.4, 0.3]; errors 0.2, 0.6, 0.3 sorted 0.6 (truth), 0.3 (not), 0.2 (truth);
    # the Jaccard loss of the growing error sets: 1/2, 2/3, 3/3
    soft = compute_lovasz_softmax(_two_class_logits([0.8, 0.4, 0.3]), torch.tensor([[[1, 1, 0]]])).item()
    assert soft == pytest.approx(0.6 * 1 / 2 + 0.3 * (2 / 3 - 1 / 2) + 0.2 * (1 - 2 / 3), abs=1e-5)
    # an image without the class is skipped (as the metric), a batch without any scores 0
    both = torch.cat([_two_class_logits([0.8, 0.4, 0.3]), _two_class_logits([0.9, 0.1, 0.2])])
    skipped = compute_lovasz_softmax(both, torch.tensor([[[1, 1, 0]], [[0, 0, 0]]])).item()
    assert skipped == pytest.approx(soft, abs=1e-6)
    assert compute_lovasz_softmax(both, torch.zeros(2, 1, 3, dtype=torch.long)).item() == 0.0
    # dice_ce with a Lovász weight adds that multiple of the term
    logits, target = _two_class_logits([0.8, 0.4, 0.3]), torch.tensor([[[1, 1, 0]]])
    plain = create_loss("dice_ce", dice="present")(logits, target).item()
    assert create_loss("dice_ce", dice="present", lovasz_weight=0.5)(logits, target).item() == pytest.approx(
        plain + 0.5 * soft, abs=1e-5)
    with pytest.raises(CovsegError, match="not to 'dice'"):
        create_loss("dice", lovasz_weight=1.0)
    with pytest.raises(CovsegError, match="types_only"):
        create_loss("dice_ce", np.ones(3), dice="present", types_only=True, lovasz_weight=1.0)


def _lovasz_extension(errors: list[float], truth: list[int]) -> float:
    """The Lovász extension of the Jaccard loss from its definition: errors sorted in decreasing order, each
    weighted by the growth of ``|M| / |truth ∪ M|`` as its pixel joins the mispredicted set ``M``."""
    order = sorted(range(len(errors)), key=lambda i: -errors[i])
    positives = {i for i, t in enumerate(truth) if t}
    total, previous, mispredicted = 0.0, 0.0, set()
    for i in order:
        mispredicted.add(i)
        value = len(mispredicted) / len(positives | mispredicted)
        total += errors[i] * (value - previous)
        previous = value
    return total


def test_lovasz_softmax_multiclass_pairs_and_gradient() -> None:
    from covseg.losses import compute_lovasz_softmax
    # two images, two foreground classes; image 1 lacks class 2: the mean over the three present pairs, each
    # the Lovász extension of its own errors |y - p_c|
    logits = torch.randn(2, 3, 2, 3, generator=torch.Generator().manual_seed(3), requires_grad=True)
    target = torch.tensor([[[0, 1, 2], [2, 1, 0]], [[1, 1, 0], [0, 0, 1]]])
    probs = logits.detach().double().softmax(1)
    values = []
    for b, c in ((0, 1), (0, 2), (1, 1)):
        truth = (target[b] == c).flatten().int().tolist()
        errors = [abs(t - p) for t, p in zip(truth, probs[b, c].flatten().tolist())]
        values.append(_lovasz_extension(errors, truth))
    loss = compute_lovasz_softmax(logits, target)
    assert loss.item() == pytest.approx(np.mean(values), abs=1e-5)
    # the gradient: raising the truth class's logit where it is under-called lowers the loss
    loss.backward()
    assert logits.grad[0, 1, 0, 1] < 0 and logits.grad[1, 1, 0, 0] < 0


def test_deep_supervision_loss_weights_levels_by_hand() -> None:
    from covseg.losses import DeepSupervisionLoss

    base = torch.nn.CrossEntropyLoss()
    loss = DeepSupervisionLoss(base)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1  # the top-left quarter
    full, half, quarter = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 2, 2), torch.randn(1, 2, 1, 1)
    # nearest-exact: the 2x2 map samples pixels (1, 1), (1, 3), (3, 1), (3, 3); the 1x1 map samples (2, 2)
    t_half = torch.tensor([[[1, 0], [0, 0]]])
    t_quarter = torch.tensor([[[0]]])
    expected = (4 * base(full, target) + 2 * base(half, t_half) + base(quarter, t_quarter)) / 7
    assert torch.allclose(loss([full, half, quarter], target), expected)
    assert torch.allclose(loss(full, target), base(full, target))


def test_lesion_type_loss_by_hand() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])  # one 2x2 image: background, GGO x2, consolidation x1
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = torch.tensor([[5.0, -3.0], [9.0, 1.0]])  # the background output plays no part
    logits.requires_grad_(True)
    loss = LesionTypeLoss()(logits, target)
    # on the 3 lesion pixels both types have probability 1/2: CE = ln 2;
    # Dice GGO = 2 * (1/2 + 1/2) / (3/2 + 2) = 4/7, consolidation = 2 * 1/2 / (3/2 + 1) = 2/5
    assert loss.item() == pytest.approx(np.log(2) + 1 - (4 / 7 + 2 / 5) / 2, abs=1e-5)
    loss.backward()
    assert logits.grad[:, 0].abs().max() == 0 and logits.grad[:, 1:].abs().max() > 0
    assert LesionTypeLoss()(logits, torch.zeros_like(target)).item() == 0.0
    assert isinstance(create_loss("dice_ce", np.ones(3), dice="present", types_only=True), LesionTypeLoss)


def test_types_only_refused_where_it_means_nothing() -> None:
    with pytest.raises(CovsegError, match="multiclass"):
        create_loss("dice_ce", np.ones(2), dice="present", types_only=True)
    with pytest.raises(CovsegError, match="train.loss=dice_ce"):
        create_loss("mfb_ce", np.ones(3), types_only=True)
    with pytest.raises(CovsegError, match="train.dice=present"):
        create_loss("dice_ce", np.ones(3), dice="batch", types_only=True)


def test_predicted_labels_of_a_type_model_type_the_truth_lesion() -> None:
    logits = torch.tensor([[[[9.0, 9.0]], [[1.0, 0.0]], [[0.0, 2.0]]]])  # background wins both pixels
    target = torch.tensor([[[0, 2]]])
    assert predicted_labels(logits, target).tolist() == [[[0, 0]]]
    assert predicted_labels(logits, target, types_only=True).tolist() == [[[0, 2]]]


def test_lesion_type_loss_weights_its_cross_entropy_as_torch_does() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    target = torch.randint(0, 3, (2, 5, 6), generator=generator)  # no pleural effusion, as in COVID-SemiSeg
    weights = np.array([0.1, 1.0, 1.5, 0.0])
    lesion = target > 0
    types = logits[:, 1:].permute(0, 2, 3, 1)[lesion]  # (N, 3) lesion pixels
    plain = F.cross_entropy(types, target[lesion] - 1)
    weighted = F.cross_entropy(types, target[lesion] - 1, weight=torch.tensor(weights[1:], dtype=torch.float32))
    unweighted_loss = create_loss("dice_ce", weights, dice="present", types_only=True)(logits, target)
    weighted_loss = create_loss("mfb_dice_ce", weights, dice="present", types_only=True)(logits, target)
    assert (weighted_loss - unweighted_loss).item() == pytest.approx((weighted - plain).item(), abs=1e-5)
    assert abs((weighted - plain).item()) > 1e-3  # the weights matter here


def test_lesion_and_type_loss_by_hand() -> None:
    target = torch.tensor([[[0, 1], [2, 1]]])  # background, GGO x2, consolidation x1
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = float(np.log(6))  # background logit ln 6 against logsumexp(0, 0) = ln 2: lesion probability 1/4
    logits.requires_grad_(True)
    loss = create_loss("dice_ce", np.ones(3), dice="present", lesion_and_type=True)(logits, target)
    # lesion: CE = (ln 4/3 + 3 ln 4) / 4 (background pixel 3/4, lesion pixels 1/4); Dice = 2 * 3/4 / (1 + 3) = 3/8
    # type (as test_lesion_type_loss_by_hand): ln 2 + 1 - (4/7 + 2/5) / 2
    expected = (np.log(4 / 3) + 3 * np.log(4)) / 4 + 1 - 3 / 8 + np.log(2) + 1 - (4 / 7 + 2 / 5) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert logits.grad[:, 0].abs().max() > 0  # unlike a type model, the background output learns
    # a slice without lesion: only the lesion term's CE, -ln(3/4); its Dice skips the image, the type term is 0
    no_lesion = LesionAndTypeLoss()(logits.detach(), torch.zeros_like(target))
    assert no_lesion.item() == pytest.approx(np.log(4 / 3), abs=1e-5)


def test_lesion_and_type_loss_weights_only_its_type_term() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    target = torch.randint(0, 3, (2, 5, 6), generator=generator)
    weights = np.array([0.1, 1.0, 1.5, 0.0])
    plain = create_loss("dice_ce", weights, dice="present", lesion_and_type=True)(logits, target)
    weighted = create_loss("mfb_dice_ce", weights, dice="present", lesion_and_type=True)(logits, target)
    type_plain = create_loss("dice_ce", weights, dice="present", types_only=True)(logits, target)
    type_weighted = create_loss("mfb_dice_ce", weights, dice="present", types_only=True)(logits, target)
    assert (weighted - plain).item() == pytest.approx((type_weighted - type_plain).item(), abs=1e-5)
    assert abs((weighted - plain).item()) > 1e-3


def test_lesion_and_type_refused_where_it_means_nothing() -> None:
    with pytest.raises(CovsegError, match="multiclass"):
        create_loss("dice_ce", np.ones(2), dice="present", lesion_and_type=True)
    with pytest.raises(CovsegError, match="not train.loss=dice_ce with train.dice=sample"):
        create_loss("dice_ce", np.ones(3), dice="sample", lesion_and_type=True)
    with pytest.raises(CovsegError, match="train.loss=dice_ce"):
        create_loss("ce", np.ones(3), dice="present", lesion_and_type=True)
    with pytest.raises(CovsegError, match="train.lesion_dice=false"):
        create_loss("dice_ce", np.ones(3), dice="present", lesion_region=True, lesion_and_type=True)
    with pytest.raises(CovsegError, match="lesion_and_type=false"):
        create_loss("dice_ce", np.ones(3), dice="present", types_only=True, lesion_and_type=True)


def test_topk_cross_entropy_by_hand() -> None:
    from covseg.losses import compute_topk_cross_entropy
    # class-1 probabilities 0.9, 0.6, 0.2, 0.5 against truth 1, 1, 1, 0: per-pixel CE -ln 0.9, -ln 0.6, -ln 0.2, -ln 0.5
    logits, target = _two_class_logits([0.9, 0.6, 0.2, 0.5]), torch.tensor([[[1, 1, 1, 0]]])
    ce = [-np.log(0.9), -np.log(0.6), -np.log(0.2), -np.log(0.5)]
    assert compute_topk_cross_entropy(logits, target, 0.5).item() == pytest.approx((ce[2] + ce[3]) / 2, abs=1e-5)
    assert compute_topk_cross_entropy(logits, target, 0.3).item() == pytest.approx((ce[2] + ce[3]) / 2, abs=1e-5)
    assert compute_topk_cross_entropy(logits, target, 0.25).item() == pytest.approx(ce[2], abs=1e-5)
    assert compute_topk_cross_entropy(logits, target, 1.0).item() == pytest.approx(np.mean(ce), abs=1e-5)
    # class weights multiply each pixel's term before the pick (nnU-Net's): background x 4 makes pixel 3 the hardest
    weight = torch.tensor([4.0, 1.0])
    assert compute_topk_cross_entropy(logits, target, 0.25, weight).item() == pytest.approx(4 * ce[3], abs=1e-5)
    # the losses: dice_ce's CE term and ce alone
    dice_term = create_loss("dice_ce", dice="present")(logits, target).item() - np.mean(ce)
    topk = create_loss("dice_ce", dice="present", ce_topk=0.5)(logits, target).item()
    assert topk == pytest.approx((ce[2] + ce[3]) / 2 + dice_term, abs=1e-5)
    assert create_loss("ce", ce_topk=0.25)(logits, target).item() == pytest.approx(ce[2], abs=1e-5)
    assert create_loss("mfb_ce", np.array([4.0, 1.0]), ce_topk=0.25)(logits, target).item() == pytest.approx(
        4 * ce[3], abs=1e-5)
    with pytest.raises(CovsegError, match="train.ce_topk=0.1 keeps the hardest pixels .* 'dice' does not have"):
        create_loss("dice", ce_topk=0.1)


def test_focal_loss_by_hand() -> None:
    from covseg.losses import compute_focal_loss
    # class-1 probabilities 0.9, 0.6, 0.2, 0.5 against truth 1, 1, 1, 0: p_t 0.9, 0.6, 0.2, 0.5
    logits, target = _two_class_logits([0.9, 0.6, 0.2, 0.5]), torch.tensor([[[1, 1, 1, 0]]])
    p_t = np.array([0.9, 0.6, 0.2, 0.5])
    focal = (1 - p_t) ** 2 * -np.log(p_t)  # 0.01 * 0.105, 0.16 * 0.511, 0.64 * 1.609, 0.25 * 0.693
    assert compute_focal_loss(logits, target, 2.0).item() == pytest.approx(focal.mean(), abs=1e-6)
    assert compute_focal_loss(logits, target, 0.0).item() == pytest.approx(-np.log(p_t).mean(), abs=1e-6)
    # class weights: the background pixel x 4, the sum over the summed weights (1 + 1 + 1 + 4)
    weighted = (focal[:3].sum() + 4 * focal[3]) / 7
    assert compute_focal_loss(logits, target, 2.0, torch.tensor([4.0, 1.0])).item() == pytest.approx(weighted, abs=1e-6)
    assert create_loss("ce", focal_gamma=2.0)(logits, target).item() == pytest.approx(focal.mean(), abs=1e-6)
    assert create_loss("mfb_ce", np.array([4.0, 1.0]), focal_gamma=2.0)(logits, target).item() == pytest.approx(
        weighted, abs=1e-6)
    dice_term = create_loss("dice_ce", dice="present")(logits, target).item() + np.log(p_t).mean()
    assert create_loss("dice_ce", dice="present", focal_gamma=2.0)(logits, target).item() == pytest.approx(
        focal.mean() + dice_term, abs=1e-5)
    with pytest.raises(CovsegError, match="train.focal_gamma=2.0 makes a cross-entropy term focal, which 'dice'"):
        create_loss("dice", focal_gamma=2.0)
    with pytest.raises(CovsegError, match="train.focal_gamma and train.ce_topk both change the cross-entropy term"):
        create_loss("dice_ce", focal_gamma=2.0, ce_topk=0.5)
    with pytest.raises(CovsegError, match="train.focal_gamma and train.label_smoothing both change"):
        create_loss("dice_ce", focal_gamma=2.0, label_smoothing=0.1)
    with pytest.raises(CovsegError, match="must be >= 0, got -1"):
        create_loss("ce", focal_gamma=-1.0)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_focal_loss_gradient_is_finite_at_a_pixel_predicted_with_certainty(gamma: float) -> None:
    # review helper 172: at p_t = 1 in float32 (a logit margin over ~17) gamma under 1 gave NaN gradients
    from covseg.losses import compute_focal_loss

    logits = torch.tensor([[30.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2).requires_grad_()  # pixel 0 certain
    loss = compute_focal_loss(logits, torch.tensor([[[0, 1]]]), gamma)
    loss.backward()
    assert torch.isfinite(logits.grad).all(), logits.grad
    # pixel 1 (p_t 0.5): d/dz1 of -(0.5^g) log p_t over 2 pixels is finite and nonzero; pixel 0 adds ~nothing
    assert loss.item() == pytest.approx(0.5 ** gamma * np.log(2) / 2, abs=1e-6)
    assert logits.grad[0, :, 0, 0].abs().max() < 1e-6


def test_label_smoothing_by_hand() -> None:
    # class-1 probabilities 0.75 and 0.4 against truth 1 and 0; eps 0.2 over 2 classes smooths a one-hot target to
    # (0.1, 0.9), so each pixel's CE is -(0.9 ln p_truth + 0.1 ln p_other)
    logits, target = _two_class_logits([0.75, 0.4]), torch.tensor([[[1, 0]]])
    smoothed = [-(0.9 * np.log(0.75) + 0.1 * np.log(0.25)), -(0.9 * np.log(0.6) + 0.1 * np.log(0.4))]
    assert create_loss("ce", label_smoothing=0.2)(logits, target).item() == pytest.approx(np.mean(smoothed), abs=1e-5)
    assert create_loss("ce")(logits, target).item() == pytest.approx(-(np.log(0.75) + np.log(0.6)) / 2, abs=1e-5)
    # the Dice term of dice_ce keeps the hard labels: only the CE term changes
    plain = create_loss("dice_ce", dice="present")(logits, target).item()
    dice_term = plain + (np.log(0.75) + np.log(0.6)) / 2
    assert create_loss("dice_ce", dice="present", label_smoothing=0.2)(logits, target).item() == pytest.approx(
        np.mean(smoothed) + dice_term, abs=1e-5)
    # with TopK, the hardest pixel by its smoothed CE (pixel 1's); with class weights, torch's weighted mean
    assert create_loss("ce", ce_topk=0.5, label_smoothing=0.2)(logits, target).item() == pytest.approx(
        smoothed[1], abs=1e-5)
    weighted = create_loss("mfb_ce", np.array([3.0, 1.0]), label_smoothing=0.2)(logits, target).item()
    torch_weighted = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor([3.0, 1.0]),
                                                       label_smoothing=0.2).item()
    assert weighted == pytest.approx(torch_weighted, abs=1e-6) and weighted != pytest.approx(np.mean(smoothed))
    with pytest.raises(CovsegError, match="train.label_smoothing=0.1 smooths the targets .* 'dice' does not have"):
        create_loss("dice", label_smoothing=0.1)
    with pytest.raises(CovsegError, match="label_smoothing=0.1 .* with train.types_only"):
        create_loss("dice_ce", np.ones(3), dice="present", types_only=True, label_smoothing=0.1)
    with pytest.raises(CovsegError, match=r"must lie in \[0, 1\), got 1.0"):
        create_loss("ce", label_smoothing=1.0)


@pytest.mark.parametrize("lesion_and_type", [False, True])
def test_lesion_type_loss_leaves_out_the_pixels_of_a_class_weighted_zero(lesion_and_type: bool) -> None:
    # before: a batch whose lesion pixels were all of a class weighted 0 (absent from the training masks, e.g.
    # pleural effusion) gave a cross-entropy of 0 / 0, a NaN loss, and training stopped with "lower train.lr"
    option = {"lesion_and_type" if lesion_and_type else "types_only": True}
    loss = create_loss("mfb_dice_ce", np.array([0.75, 1.0, 1.5, 0.0]), dice="present", **option)
    logits = torch.zeros(1, 4, 2, 2, requires_grad=True)  # each of the 3 types 1/3, the lesion 3/4
    # only effusion (3): its CE is left out, so the type term is its Dice alone,
    # 1 - 2 * (2/3) / (2/3 + 2) = 1/2 (probability 1/3 on each of the 2 lesion pixels)
    effusion = torch.tensor([[[0, 3], [3, 0]]])
    types = 0.5
    # the lesion term: CE (2 ln 4 + 2 ln 4/3) / 4, Dice 1 - 2 * (3/2) / (3 + 2) = 2/5
    lesion = (np.log(4) + np.log(4 / 3)) / 2 + 2 / 5 if lesion_and_type else 0.0
    value = loss(logits, effusion)
    assert torch.isfinite(value) and value.item() == pytest.approx(lesion + types, abs=1e-5)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # beside a GGO pixel (1, weight 1) the effusion pixel still adds nothing to the CE: ln 3 from the GGO pixel;
    # Dice of GGO and of effusion 2 * (1/3) / (2/3 + 1) = 2/5 each (probability 1/3 on each of the 2 lesion pixels)
    mixed = torch.tensor([[[0, 3], [1, 0]]])
    types = np.log(3) + 1 - 2 / 5
    lesion = (np.log(4) + np.log(4 / 3)) / 2 + 2 / 5 if lesion_and_type else 0.0
    assert loss(logits.detach(), mixed).item() == pytest.approx(lesion + types, abs=1e-5)


def test_topk_cross_entropy_keeps_the_ceiling_of_the_fraction_without_float_error() -> None:
    from covseg.losses import compute_topk_cross_entropy
    # before: ceil(0.07 * 100) = ceil(7.000000000000001) = 8 pixels, not the 7 the docstring promises
    logits = torch.zeros(1, 2, 10, 10)
    logits[0, 1] = torch.linspace(-3.0, 3.0, 100).view(10, 10)  # 100 distinct per-pixel losses against class 0
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    per_pixel = F.cross_entropy(logits, target, reduction="none").flatten().sort(descending=True).values
    assert compute_topk_cross_entropy(logits, target, 0.07).item() == pytest.approx(per_pixel[:7].mean().item(),
                                                                                   abs=1e-6)
    assert compute_topk_cross_entropy(logits, target, 0.071).item() == pytest.approx(per_pixel[:8].mean().item(),
                                                                                    abs=1e-6)


def test_dice_of_a_class_absent_and_never_called_is_one_by_the_smoothing() -> None:
    # logits (100, -100): p(foreground) = e^-200, 0 in float32; the truth is all background, so the foreground
    # class (background is left out by default) has TP 0, sum p 0, sum y 0 -> (0 + s) / (0 + s) = 1, loss 0
    logits = torch.tensor([100.0, -100.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2).contiguous()
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    assert DiceLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)
