"""Bootstrap intervals of the per-image means (covseg.metrics.bootstrap_means / bootstrap_interval) and their place in
an evaluation's report: checked against hand-computed distributions and against scipy.stats.bootstrap."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import binary_result
from covseg.cli import _print_summary
from covseg.evaluation import ImageResult, summarise, write_report
from covseg.labels import get_scheme
from covseg.metrics import bootstrap_interval, bootstrap_means


def test_two_images_give_the_three_means_a_quarter_a_half_and_a_quarter_of_the_time():
    means = bootstrap_means(np.array([[0.2], [0.6]]), resamples=20000, seed=1)[:, 0]
    assert means.shape == (20000,)
    for value, share in ((0.2, 0.25), (0.4, 0.5), (0.6, 0.25)):
        assert abs(np.isclose(means, value).mean() - share) < 0.015
    assert np.isclose(means, 0.2).sum() + np.isclose(means, 0.4).sum() + np.isclose(means, 0.6).sum() == 20000
    assert bootstrap_interval(means) == pytest.approx([0.2, 0.6])


def test_the_classes_are_drawn_from_the_same_images():
    # class 1 counts on image 0 only: a resample without image 0 has no class-1 mean, and its class-0 mean is
    # image 1's alone
    values = np.array([[0.1, 0.9], [0.5, np.nan]])
    means = bootstrap_means(values, resamples=4000, seed=0)
    without_image_0 = np.isnan(means[:, 1])
    assert 0.2 < without_image_0.mean() < 0.3  # (1/2)^2
    assert np.all(means[without_image_0, 0] == 0.5)
    assert np.all(means[~without_image_0, 1] == 0.9)
    assert np.allclose(bootstrap_interval(means), [[0.1, 0.5], [0.9, 0.9]])


def test_the_draws_are_seeded():
    values = np.random.default_rng(3).random((12, 2))
    assert np.array_equal(bootstrap_means(values, 500, seed=7), bootstrap_means(values, 500, seed=7))
    assert not np.array_equal(bootstrap_means(values, 500, seed=7), bootstrap_means(values, 500, seed=8))


def test_the_interval_agrees_with_scipy_s_percentile_bootstrap():
    values = np.random.default_rng(0).beta(5, 2, size=20)  # per-image Dice-like figures
    ours = bootstrap_interval(bootstrap_means(values[:, None], resamples=40000, seed=0))[0]
    theirs = stats.bootstrap((values,), np.mean, n_resamples=40000, method="percentile", confidence_level=0.95,
                             random_state=np.random.default_rng(1)).confidence_interval
    assert ours == pytest.approx([theirs.low, theirs.high], abs=0.005)
    wider = bootstrap_interval(bootstrap_means(values[:, None], resamples=40000, seed=0), level=0.99)[0]
    assert wider[0] < ours[0] and wider[1] > ours[1]


def test_a_column_without_a_finite_sample_is_nan_without_a_warning():
    samples = np.array([[0.5, np.nan], [0.7, np.nan], [np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bounds = bootstrap_interval(samples, level=0.5)
    assert bounds[0] == pytest.approx([0.55, 0.65])  # the quartiles of {0.5, 0.7}, numpy's linear interpolation
    assert np.isnan(bounds[1]).all()


@pytest.mark.parametrize("call,message", [
    (lambda: bootstrap_means(np.zeros((0, 2))), "at least one image"),
    (lambda: bootstrap_means(np.zeros(3)), "images, classes"),
    (lambda: bootstrap_means(np.zeros((3, 2)), resamples=0), "at least one resample"),
    (lambda: bootstrap_interval(np.zeros((3, 2)), level=1.0), "between 0 and 1"),
])
def test_bad_arguments_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_report_holds_each_per_image_mean_s_interval(tmp_path: Path, capsys):
    # Dice 2/3 (2 of 4 lesion pixels called), 1 (all 4), and an image without lesion (no Dice)
    results = [binary_result("a", 2), binary_result("b", 4), binary_result("c", 0, lesion=False)]
    metrics = write_report(summarise(results, get_scheme("binary")), tmp_path / "eval", "three")
    ci = metrics["per_image_ci95"]
    assert ci["dice"]["infection"] == pytest.approx([2 / 3, 1.0], abs=1e-6)  # means 2/3, 5/6, 1: 1/4, 1/2, 1/4
    assert ci["dice"]["mean_foreground"] == ci["dice"]["infection"]  # one foreground class
    assert ci["dice"]["background"][1] == 1.0 and ci["dice"]["background"][0] < 1.0
    assert ci["sensitivity"]["infection"] == pytest.approx([0.5, 1.0], abs=1e-6)
    assert ci["precision"]["infection"] == [1.0, 1.0]  # both images that call lesion call only lesion
    assert "2000 resamples" in metrics["ci95"]
    text = (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert "95 % confidence interval of the per-image Dice (percentile bootstrap: 2000 resamples of the 3 images, " \
           "seed 0; metrics.json's per_image_ci95 has every figure's): infection 0.6667–1.0000." in text
    _print_summary(metrics, tmp_path / "eval")
    assert capsys.readouterr().out.startswith("Dice (per image): infection 0.8333 (95 % CI 0.6667–1.0000); pixel ")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image_ci95"] == ci


def test_one_image_with_the_class_gives_no_interval(tmp_path: Path, capsys):
    results = [binary_result("a", 2), binary_result("c", 1, lesion=False)]
    metrics = write_report(summarise(results, get_scheme("binary")), tmp_path / "eval", "one lesion")
    assert metrics["per_image_ci95"]["dice"]["infection"] == [None, None]
    assert metrics["per_image_ci95"]["dice"]["mean_foreground"] == [None, None]
    assert metrics["per_image_ci95"]["specificity"]["infection"] is not None  # specificity counts on both images
    assert "infection – (fewer than 2 images)." in (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    _print_summary(metrics, tmp_path / "eval")
    # the terminal says why there is no interval, as metrics.md does
    assert capsys.readouterr().out.startswith("Dice (per image): infection 0.6667 (no CI: fewer than 2 images); "
                                              "pixel accuracy ")


def test_the_mean_foreground_interval_averages_each_resample_s_class_means(tmp_path: Path):
    scheme = get_scheme("multiclass")
    n = scheme.num_classes
    results = []
    for name, (ggo_called, cons_called) in {"a": (4, 0), "b": (2, 4), "c": (4, 2)}.items():
        cm = np.zeros((n, n), np.int64)
        cm[1, 1], cm[1, 0] = ggo_called, 4 - ggo_called  # 4 GGO pixels in each truth
        cm[2, 2], cm[2, 0] = cons_called, 4 - cons_called  # 4 consolidation pixels in each truth
        cm[0, 0] = 64 - cm.sum()
        results.append(ImageResult(name, cm))
    metrics = write_report(summarise(results, scheme), tmp_path / "eval", "types")
    ggo, cons = [1.0, 2 / 3, 1.0], [0.0, 1.0, 2 / 3]  # per-image Dice
    means = bootstrap_means(np.array([ggo, cons]).T, resamples=2000, seed=0)
    expected = bootstrap_interval(means.mean(axis=1))
    assert metrics["per_image_ci95"]["dice"]["mean_foreground"] == pytest.approx(expected, abs=1e-6)
    assert metrics["per_image_ci95"]["dice"]["ggo"] == pytest.approx(bootstrap_interval(means[:, 0]), abs=1e-6)
    assert metrics["per_image_ci95"]["dice"]["pleural_effusion"] == [None, None]  # no truth holds it
    line = next(l for l in (tmp_path / "eval" / "metrics.md").read_text().splitlines() if l.startswith("95 %"))
    assert line.endswith(f"mean foreground {expected[0]:.4f}–{expected[1]:.4f}.")


def test_the_stratified_interval_keeps_each_group_s_weight():
    from covseg.metrics import stratified_bootstrap_interval

    # group means 0 / 0.5 / 1 (a quarter, half, a quarter) and always 0.5: averaged, 0.25 / 0.5 / 0.75
    assert stratified_bootstrap_interval([[0.0, 1.0], [0.5, 0.5]]) == pytest.approx((0.25, 0.75))
    # pooled into one group the values would give other bounds (a mean of 0 or 1 is possible there)
    assert stratified_bootstrap_interval([[0.0, 1.0, 0.5, 0.5]]) == pytest.approx((0.125, 0.875))
    # a group of one value has no spread to resample: no interval, rather than a zero-width one (five folds of one
    # image each would read "+0.03 to +0.03" beside a spread of ± 0.27)
    assert stratified_bootstrap_interval([[0.3, 0.2], [0.5], [0.7, 0.1]]) is None
    assert stratified_bootstrap_interval([[0.3, 0.2], []]) is None  # an empty group
    assert stratified_bootstrap_interval([]) is None
    # the seeds are the caller's (fold numbers): a group's draws do not depend on which groups come before it
    two = np.random.default_rng(5).random((2, 12)).tolist()
    assert stratified_bootstrap_interval(two, seeds=[3, 4]) != stratified_bootstrap_interval(two)
    assert stratified_bootstrap_interval(two, seeds=[0, 1]) == stratified_bootstrap_interval(two)
    with pytest.raises(ValueError, match="1 seeds for 2 groups"):
        stratified_bootstrap_interval(two, seeds=[0])


def _multiclass_result(name: str, ggo: tuple[int, int], consolidation: tuple[int, int]) -> ImageResult:
    """An 8x8 image: (truth pixels, of them called) for GGO and for consolidation; the rest background, called so."""
    n = get_scheme("multiclass").num_classes
    cm = np.zeros((n, n), np.int64)
    for c, (truth, called) in ((1, ggo), (2, consolidation)):
        cm[c, c], cm[c, 0] = called, truth - called
    cm[0, 0] = 64 - cm.sum()
    return ImageResult(name, cm)


def test_the_mean_foreground_interval_averages_the_figure_s_classes_in_every_resample(tmp_path: Path):
    # consolidation in 2 of 8 images: a resample that draws neither has no consolidation mean, and is left out rather
    # than averaged over GGO alone (the figure itself always averages both)
    results = [_multiclass_result(f"g{i}", (8, 4 + i % 4), (0, 0)) for i in range(6)]
    results += [_multiclass_result("c0", (8, 8), (4, 0)), _multiclass_result("c1", (8, 6), (4, 3))]
    evaluation = summarise(results, get_scheme("multiclass"))
    metrics = evaluation.to_dict()
    from covseg.metrics import per_image_values

    dice = per_image_values([r.cm for r in results])["dice"]  # (8, 4)
    means = bootstrap_means(dice, 2000, seed=0)[:, 1:3]  # the same draws: they depend on the images only
    both = np.isfinite(means).all(axis=1)
    assert 0.05 < 1 - both.mean() < 0.15  # (6/8)^8 = 0.10 of the resamples hold no consolidation image
    expected = bootstrap_interval(np.where(both, means.mean(axis=1), np.nan))
    assert metrics["per_image_ci95"]["dice"]["mean_foreground"] == pytest.approx(expected, abs=1e-6)
    ggo_alone_then = bootstrap_interval(np.where(both, means.mean(axis=1), means[:, 0]))
    assert metrics["per_image_ci95"]["dice"]["mean_foreground"] != pytest.approx(ggo_alone_then, abs=1e-3)
    # specificity is averaged over every image and pleural effusion has one, but no truth holds it: it stays out
    specificity = bootstrap_means(per_image_values([r.cm for r in results])["specificity"], 2000, seed=0)
    assert metrics["per_image_ci95"]["specificity"]["mean_foreground"] == pytest.approx(
        bootstrap_interval(specificity[:, 1:3].mean(axis=1)), abs=1e-6)


def test_a_class_in_one_image_leaves_the_mean_foreground_without_an_interval():
    results = [_multiclass_result(f"g{i}", (8, 4 + i % 4), (0, 0)) for i in range(20)]
    results.append(_multiclass_result("c0", (8, 6), (4, 0)))
    metrics = summarise(results, get_scheme("multiclass")).to_dict()
    assert metrics["per_image_ci95"]["dice"]["consolidation"] == [None, None]
    assert metrics["per_image_ci95"]["dice"]["mean_foreground"] == [None, None]
    assert None not in metrics["per_image_ci95"]["dice"]["ggo"]
