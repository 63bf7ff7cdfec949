"""The seed article's recipe, its class weights, the two networks as published and the metrics' empty-image
conventions, against hand-computed values (session 73, seedcmp)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.config import AugmentConfig, load_recipe
from covseg.datasets import load_dataset
from covseg.labels import get_scheme
from covseg.losses import median_frequency_weights
from covseg.metrics import aggregate_per_image, confusion_matrix, mean_class_accuracy, per_image_counts, pixel_accuracy
from covseg.models import create_model
from covseg.splits import make_split

README = Path(__file__).resolve().parent.parent / "README.md"


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- median-frequency balancing -------------------------------------------------------------------------------------

def test_median_frequency_weights_by_hand_on_masks_of_different_sizes() -> None:
    # Eigen & Fergus 2015 (SegNet's balancing): f_c = pixels of c / pixels of the images holding c
    a = np.array([[0, 0], [0, 1]])  # 4 pixels: 0 x3, 1 x1
    b = np.array([[0, 0, 0], [0, 2, 2]])  # 6 pixels: 0 x4, 2 x2
    c = np.array([[0, 0]])  # 2 pixels: 0 x2
    # f0 = 9 / 12 (every image), f1 = 1 / 4 (a only), f2 = 2 / 6 (b only); class 3 absent: weight 0, not in the median
    # median(3/4, 1/4, 1/3) = 1/3
    weights = median_frequency_weights([a, b, c], 4)
    np.testing.assert_allclose(weights, [(1 / 3) / (3 / 4), (1 / 3) / (1 / 4), 1.0, 0.0])
    # f_c is not the share of c among ALL pixels (1/12 and 2/12 would weigh 1 and 2 as 2 : 1, not 4/3 : 1)
    assert weights[1] / weights[2] == pytest.approx(4 / 3)


def test_median_frequency_weights_take_nested_lists_as_label_maps() -> None:
    # array-likes, as the docstring says: the image's pixel count is the label map's, not a list's
    np.testing.assert_allclose(median_frequency_weights([[[0, 1], [1, 1]]], 2), [2.0, 2 / 3])  # f = 1/4, 3/4


def test_a_runs_class_weights_are_those_of_its_training_masks_only(tiny_run: Path, tiny_data: Path) -> None:
    split = json.loads((tiny_run / "split.json").read_text(encoding="utf-8"))
    samples = load_dataset(str(tiny_data), "binary", split="train")
    saved = json.loads((tiny_run / "class_weights.json").read_text(encoding="utf-8"))["weights"]
    train = median_frequency_weights([s.mask for s in samples if s.name in split["train"]], 2)
    every = median_frequency_weights([s.mask for s in samples], 2)
    assert not np.allclose(train, every, atol=1e-5)  # else the check below could not tell them apart
    np.testing.assert_allclose([saved["background"], saved["infection"]], train, atol=1e-6)


# --- the seed recipe ------------------------------------------------------------------------------------------------

def test_the_seed_recipe_is_the_articles() -> None:
    seed = load_recipe("seed")
    d, m, t = seed.data, seed.model, seed.train
    # the article's task: four classes C0-C3 (background / GGO / consolidation / pleural effusion)
    assert d.task == "multiclass"
    assert get_scheme(d.task).names == ("background", "ggo", "consolidation", "pleural_effusion")
    assert (d.split, d.input_size, d.normalize) == ("seed", 512, "none")
    assert (m.name, m.width, m.depth, m.deep_supervision, m.block, m.attention) == ("unet", 64, 4, False, "plain",
                                                                                      False)
    assert (t.loss, t.optimizer, t.lr, t.weight_decay, t.schedule, t.epochs) == ("mfb_ce", "adam", 3e-5, 0.0,
                                                                                   "constant", 50)
    assert t.val_every == 1  # per-epoch validation accuracy and loss curves
    assert t.augment == AugmentConfig()  # none
    assert (t.progressive_size, t.swa_epochs, t.ema, t.consistency, t.mixup_alpha, t.sampling) == (0, 0, 0, 0, 0,
                                                                                                    "uniform")
    # the study's other task stays one flag away
    assert load_recipe("seed", task="binary").data.task == "binary"


@pytest.mark.parametrize("split, sizes", [("seed", (84, 16, 0)), ("paper", (72, 10, 18))])
def test_the_article_and_study_splits_of_the_100_medseg_slices(split: str, sizes: tuple[int, int, int]) -> None:
    parts = make_split([f"slice{i:03d}" for i in range(100)], split)
    assert tuple(len(parts[k]) for k in ("train", "val", "test")) == sizes
    assert len(set().union(*parts.values())) == 100


# --- the networks ---------------------------------------------------------------------------------------------------

def _readme_millions(pattern: str) -> float:
    found = re.search(pattern, README.read_text(encoding="utf-8"))
    assert found, pattern
    return float(found.group(1))


def test_readmes_parameter_counts_are_create_models() -> None:
    unet = _parameters(create_model("unet", num_classes=2, width=64, depth=4))
    segnet = _parameters(create_model("segnet", num_classes=2, width=64, depth=5))
    assert _readme_millions(r"`width=64, depth=4` is the original \(([\d.]+) M parameters\)") == round(unet / 1e6, 1)
    assert _readme_millions(r"mirrored decoder \(([\d.]+) M parameters at `width=64`\)") == round(segnet / 1e6, 1)


def test_segnet_is_vgg16_down_and_unpooling_up_with_the_one_extra_decoder_convolution_it_documents() -> None:
    width = 8
    model = create_model("segnet", num_classes=4, width=width, depth=5)
    decoder = [m for m in model.decoders.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.decoders.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(decoder) == len(norms) == 13 and all(c.kernel_size == (3, 3) for c in decoder)
    assert [c.out_channels for c in decoder] == [8 * width] * 5 + [4 * width] * 3 + [2 * width] * 2 + [width] * 3
    assert (model.head.kernel_size, model.head.out_channels) == ((3, 3), 4)
    # the published decoder (Caffe's conv1_1_D is the classifier) lacks the last width -> width convolution and its
    # batch norm: width * width * 9 + 2 * width parameters, as segnet.py's docstring says
    last, norm = model.decoders[-1][-3], model.decoders[-1][-2]
    assert (last.in_channels, last.out_channels, last.bias) == (width, width, None)
    assert _parameters(last) + _parameters(norm) == width * width * 9 + 2 * width
    full = create_model("segnet", num_classes=2, width=64, depth=5)
    assert round((_parameters(full) - (64 * 64 * 9 + 2 * 64)) / 1e6, 1) == 29.4  # vs covseg's 29.5 M


def test_the_seed_unet_keeps_the_size_and_concatenates_each_skip() -> None:
    model = create_model("unet", num_classes=4, width=4, depth=4).eval()
    assert [e[0].out_channels for e in model.encoders] == [4, 8, 16, 32, 64]
    assert [d[0].in_channels for d in model.decoders] == [64, 32, 16, 8]  # upsampled + skip, concatenated
    assert model(torch.zeros(1, 1, 32, 48)).shape == (1, 4, 32, 48)


# --- metrics: empty truth and empty prediction ----------------------------------------------------------------------

def test_per_image_metrics_by_hand_with_empty_truth_and_empty_prediction() -> None:
    z = np.zeros((2, 4), int)
    hit = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])  # truth: 2 lesion pixels
    half = np.array([[1, 0, 0, 0], [0, 0, 0, 1]])  # TP 1, FP 1, FN 1
    images = [
        (hit, half),  # A: dice 2/4, iou 1/3, sens 1/2, prec 1/2, spec 5/6
        (hit, z),  # B: lesion missed: dice 0, iou 0, sens 0, precision undefined (nothing called), spec 6/6
        (z, half),  # C: no lesion, 2 false positives: skipped for lesion figures (MONAI ignore_empty), spec 6/8
        (z, z),  # D: no lesion, none called: skipped, spec 8/8
    ]
    cms = [confusion_matrix(pred, truth, 2) for truth, pred in images]
    agg, counts = aggregate_per_image(cms), per_image_counts(cms)
    assert agg["dice"][1] == pytest.approx((2 / 4 + 0) / 2)
    assert agg["iou"][1] == pytest.approx((1 / 3 + 0) / 2)
    assert agg["sensitivity"][1] == pytest.approx((1 / 2 + 0) / 2)
    assert agg["precision"][1] == pytest.approx(1 / 2)  # B called nothing: undefined, left out
    assert agg["specificity"][1] == pytest.approx((5 / 6 + 6 / 6 + 6 / 8 + 8 / 8) / 4)  # every image
    assert [int(counts[k][1]) for k in ("dice", "iou", "sensitivity", "precision", "specificity")] == [2, 2, 2, 1, 4]
    # background is held by every image; in D truth and prediction are all background: Dice 1
    assert agg["dice"][0] == pytest.approx(np.mean([2 * 5 / (2 * 5 + 1 + 1), 2 * 6 / (2 * 6 + 2), 2 * 6 / (12 + 2),
                                                    1.0]))
    pooled = sum(cms)  # TP 1, FP 3, FN 3 over 32 pixels
    assert pixel_accuracy(pooled) == pytest.approx((32 - 6) / 32)
    assert mean_class_accuracy(pooled) == pytest.approx((25 / 28 + 1 / 4) / 2)


def test_an_image_that_is_all_lesion_leaves_specificity_undefined_not_one() -> None:
    cm = confusion_matrix(np.ones((2, 2), int), np.ones((2, 2), int), 2)
    agg = aggregate_per_image([cm])
    assert agg["dice"][1] == 1.0 and math.isnan(agg["specificity"][1]) and math.isnan(agg["dice"][0])
