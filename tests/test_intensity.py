"""Intensity normalisation: windowing and per-slice histogram equalisation, against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.errors import CovsegError
from covseg.intensity import (equalize, grey_quantiles, match_quantiles, normalize_image, stretch_percentiles,
                              to_unit_range, window_hu)
from conftest import TINY_OVERRIDES


def test_window_by_hand() -> None:
    assert window_hu(np.array([-1350.0, -600.0, 150.0, 400.0])).tolist() == [0.0, 0.5, 1.0, 1.0]


def test_equalize_midranks_by_hand() -> None:
    # grey levels 0.1 x2, 0.5 x1, 0.9 x1 -> mid-ranks (0 + 2/2)/4, (2 + 1/2)/4, (3 + 1/2)/4
    out = equalize(np.array([[0.1, 0.1], [0.5, 0.9]], np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.25, 0.25], [0.625, 0.875]])


def test_equalize_ignores_the_window_a_slice_was_exported_with() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 250, (64, 64))
    lung = window_hu(hu, -600, 1500)  # two exports of the same slice with different CT windows
    wide = window_hu(hu, -500, 2000)
    assert np.abs(lung - wide).mean() > 0.02
    np.testing.assert_allclose(equalize(lung), equalize(wide), atol=0.01)
    np.testing.assert_allclose(equalize(lung ** 0.7), equalize(lung), atol=0.01)  # and a gamma change


def test_stretch_percentiles_by_hand() -> None:
    ramp = np.linspace(0.0, 1.0, 101, dtype=np.float32).reshape(1, 101)  # 1st / 99th percentiles: 0.01 / 0.99
    out = stretch_percentiles(ramp)
    assert out.dtype == np.float32 and out.shape == ramp.shape
    np.testing.assert_allclose(out[0, [0, 1, 50, 99, 100]], [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[0, 25], (0.25 - 0.01) / 0.98, atol=1e-6)
    assert not stretch_percentiles(np.full((4, 4), 0.3, np.float32)).any()  # flat image: no division by zero


def test_stretch_percentiles_undoes_another_window_but_keeps_grey_levels_linear() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-700, 250, (64, 64))  # 1st / 99th percentiles ≈ -1280 / -120 HU: inside both windows
    lung, wide = window_hu(hu, -600, 1500), window_hu(hu, -500, 2000)
    assert np.abs(lung - wide).mean() > 0.02
    np.testing.assert_allclose(stretch_percentiles(lung), stretch_percentiles(wide), atol=1e-4)
    inside = (hu > np.percentile(hu, 1)) & (hu < np.percentile(hu, 99))
    slope = np.diff(stretch_percentiles(lung)[inside][:2]) / np.diff(hu[inside][:2])
    np.testing.assert_allclose(stretch_percentiles(lung)[inside], (hu[inside] - hu[inside][0]) * slope[0]
                               + stretch_percentiles(lung)[inside][0], atol=1e-4)  # a linear map of HU
    assert np.array_equal(normalize_image(lung, "percentile"), stretch_percentiles(lung))


def test_normalize_image_names() -> None:
    image = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(normalize_image(image, "none"), image)
    with pytest.raises(CovsegError, match="equalize"):
        normalize_image(image, "zscore")
    with pytest.raises(CovsegError, match="data.normalize"):
        apply_overrides(load_recipe("tiny"), ["data.normalize=zscore"])


def test_a_model_trained_with_equalisation_predicts_with_it(tiny_data, tmp_path, capsys) -> None:
    run = tmp_path / "eq"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "2", "-o",
                 str(run), "--quiet", "data.normalize=equalize", *TINY_OVERRIDES]) == 0
    from covseg.predict import open_predictor

    predictor, config, _ = open_predictor(run)
    assert config.data.normalize == "equalize" and predictor.normalize == "equalize"
    image = np.random.default_rng(1).random((40, 44)).astype(np.float32)

    class Identity:  # a backend whose foreground logit is the input grey value itself
        description = "identity"

        def __call__(self, x, pixels=None):
            return torch.cat([-4 * x, 4 * x], dim=1)

    predictor.backend = Identity()
    # equalisation makes the prediction blind to a monotone grey-level change of the input ...
    equalized = np.abs(next(iter(predictor([image]))) - next(iter(predictor([np.sqrt(image)])))).max()
    predictor.normalize = "none"  # ... which, without it, changes the output a lot (control)
    plain = np.abs(next(iter(predictor([image]))) - next(iter(predictor([np.sqrt(image)])))).max()
    assert equalized < 5e-3 and plain > 0.1


def test_training_inputs_are_equalised() -> None:
    from covseg.config import DataConfig
    from covseg.datasets import Sample
    from covseg.run import _stack

    image = (np.arange(64, dtype=np.float32).reshape(8, 8) / 640.0)  # a dark ramp in [0, 0.1)
    sample = Sample("a", image, np.zeros((8, 8), np.int64), "a")
    plain, _ = _stack([sample], DataConfig(input_size=8, normalize="none"))
    equalized, _ = _stack([sample], DataConfig(input_size=8, normalize="equalize"))
    assert float(plain.max()) < 0.1
    # 64 distinct levels -> mid-ranks (i + 0.5) / 64
    np.testing.assert_allclose(equalized[0, 0].numpy().ravel(), (np.arange(64) + 0.5) / 64, atol=1e-6)


def test_match_quantiles_by_hand() -> None:
    image = np.array([[0.0, 0.2], [0.4, 0.6]], np.float32)  # each value holds 1/4 of the pixels
    out = match_quantiles(image, np.array([0.0, 0.5, 1.0]))  # the reference: grey 0.5 at the median, 1 at the top
    # value k (k = 1..4) sits at share k/4 of the pixels -> the reference's grey at k/4: 0.25, 0.5, 0.75, 1
    np.testing.assert_allclose(out, [[0.25, 0.5], [0.75, 1.0]])
    assert out.dtype == np.float32 and out.shape == image.shape
    ties = match_quantiles(np.array([[0.1, 0.1], [0.1, 0.9]]), np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(ties, [[0.75, 0.75], [0.75, 1.0]])  # three pixels at or below 0.1: share 3/4


def test_grey_quantiles_average_the_images_quantile_functions() -> None:
    a, b = np.linspace(0, 0.5, 101).reshape(1, -1), np.linspace(0.5, 1.0, 101).reshape(1, -1)
    reference = grey_quantiles([a, b], levels=5)
    np.testing.assert_allclose(reference, [0.25, 0.375, 0.5, 0.625, 0.75])  # (q_a + q_b) / 2 at 0, 1/4, ... 1
    # a slice exported with another window, matched to a reference made from slices of the first, gets its grey levels
    rng = np.random.default_rng(0)
    lung = np.clip(rng.normal(0.3, 0.1, (64, 64)), 0, 1)
    other_window = 0.2 + 0.5 * lung  # the same anatomy, darker and flatter
    matched = match_quantiles(other_window, grey_quantiles([lung]))
    error = np.abs(matched - lung)  # back to the first window's grey levels, up to the quantiles' spacing
    assert np.median(error) < 0.001 and error.max() < 0.03  # (coarsest in the tails)
    assert np.abs(other_window - lung).mean() > 0.05  # which was 60 times further off before
    with pytest.raises(ValueError, match="at least one image"):
        grey_quantiles([])


def test_to_unit_range_reads_0_to_255_data_as_8_bit_and_clips_a_small_overshoot_of_0_to_1_data() -> None:
    # a [0, 1] slice resampled with a little overshoot (max 1.02) is clipped, not read as 8-bit / 255 (near black)
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 0.51, 1.02]), is_hu=False), [0.0, 0.51, 1.0], atol=1e-6)
    # fractional 8-bit grey values (a float TIFF) are / 255 as well, the same scale whatever a slice's maximum
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 100.5, 200.25]), is_hu=False),
                               [0.0, 100.5 / 255, 200.25 / 255], atol=1e-6)
    # 8-bit grey values stored as floats or 16-bit integers are still / 255
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 51.0, 255.0]), is_hu=False), [0.0, 0.2, 1.0], atol=1e-6)
    np.testing.assert_allclose(to_unit_range(np.array([0, 51, 102], np.int16), is_hu=False), [0.0, 0.2, 0.4],
                               atol=1e-6)
    # values in [0, 1] are kept as they are
    np.testing.assert_allclose(to_unit_range(np.array([0.25, 0.5, 1.0]), is_hu=False), [0.25, 0.5, 1.0])


def test_raw_ct_warning_only_for_16_bit_data_within_12_bits() -> None:
    from covseg.intensity import RAW_CT_MAX, raw_ct_warning

    raw = np.array([[0, 1024], [2000, RAW_CT_MAX]], np.uint16)  # HU + 1024 of air .. bone
    message = raw_ct_warning(raw, "ct.png")
    assert message is not None and "\n" not in message and message.startswith("ct.png: 16-bit values 0..4095 ")
    assert raw_ct_warning(raw.astype(np.int32), "ct.png", sixteen_bit=True) == message  # Pillow's mode "I"
    assert raw_ct_warning(raw.astype(np.int32), "ct.tif") is None  # signed samples: may be HU
    assert raw_ct_warning(np.array([[0, RAW_CT_MAX + 1]], np.uint16), "grey.png") is None  # display grey
    assert raw_ct_warning(np.zeros((2, 2), np.uint16), "black.png") is None
    assert raw_ct_warning(np.array([[0, 200]], np.uint8), "eight.png") is None


def test_stretch_percentiles_keeps_a_small_bright_region_of_an_otherwise_flat_image() -> None:
    # 0.49 % of the pixels bright (a small lesion): the 1st and 99th percentiles coincide at the dark level, and a
    # stretch between them turned the whole slice black; the image is min-max scaled instead
    image = np.full((100, 100), 0.2, np.float32)
    image[:7, :7] = 0.8
    out = stretch_percentiles(image)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:7, :7], 1.0)
    assert not out[7:].any() and not out[:, 7:].any()
    assert not stretch_percentiles(np.full((100, 100), 0.8, np.float32)).any()  # a flat image still becomes zeros


def test_to_unit_range_boundaries_of_its_three_readings() -> None:
    # non-integer data reaching up to 2 is [0, 1] data with an overshoot: clipped, not / 255
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 0.5, 1.8]), is_hu=False), [0.0, 0.5, 1.0], atol=1e-6)
    # data whose maximum is exactly 255 is 8-bit grey: / 255 (51 -> 0.2), not min-max scaled (51 -> 0)
    np.testing.assert_allclose(to_unit_range(np.array([51.0, 255.0]), is_hu=False), [0.2, 1.0], atol=1e-6)
    # other ranges are min-max scaled: -100..300 -> (x + 100) / 400, so 0 -> 0.25
    np.testing.assert_allclose(to_unit_range(np.array([-100.0, 0.0, 300.0]), is_hu=False), [0.0, 0.25, 1.0],
                               atol=1e-6)
