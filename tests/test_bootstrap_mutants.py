"""Tests written against surviving mutants of the bootstrap-interval code (covseg.metrics' bootstrap functions,
covseg.evaluation's intervals and their text, covseg.paired's difference interval and per-image reading,
covseg.experiment's cross-validation intervals, covseg.cli's summary line). Expected values are worked out by hand."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from covseg import evaluation
from conftest import binary_result
from covseg.cli import _print_summary
from covseg.evaluation import CI_RULE, ImageResult, format_interval, summarise, write_report
from covseg.experiment import _cv_intervals
from covseg.labels import get_scheme
from covseg.metrics import BOOTSTRAP_BLOCK, bootstrap_interval, bootstrap_means, stratified_bootstrap_interval
from covseg.paired import FoldDifference, _fold_number, compute_difference_interval, counted_values

NAN = float("nan")


# --- covseg.metrics -------------------------------------------------------------------------------------------------

def test_a_resample_count_off_the_block_size_gives_that_many_draws_the_same_as_in_blocks():
    values = np.array([[0.2], [0.6], [1.0]])
    assert bootstrap_means(values, resamples=1, seed=0).shape == (1, 1)
    more = bootstrap_means(values, resamples=BOOTSTRAP_BLOCK + 3, seed=4)
    assert more.shape == (BOOTSTRAP_BLOCK + 3, 1)
    # every resample mean is a mean of 3 of the values: a multiple of 0.2 / 3 between 0.2 and 1
    assert np.allclose(np.round(more * 15) / 15, more) and more.min() >= 0.2 - 1e-12 and more.max() <= 1.0 + 1e-12
    # the first block's draws do not depend on how many follow
    assert np.array_equal(more[:BOOTSTRAP_BLOCK], bootstrap_means(values, resamples=BOOTSTRAP_BLOCK, seed=4))


@pytest.mark.parametrize("level", [0.0, -0.5, 1.5])
def test_a_level_of_zero_or_outside_the_unit_interval_is_refused(level):
    with pytest.raises(ValueError, match="between 0 and 1"):
        bootstrap_interval(np.zeros((3, 1)), level=level)


def test_the_stratified_interval_refuses_seeds_that_do_not_match_the_groups():
    with pytest.raises(ValueError, match="3 seeds for 2 groups"):
        stratified_bootstrap_interval([[0.1, 0.2], [0.3, 0.4]], seeds=[0, 1, 2])


def test_a_group_that_is_not_a_flat_list_of_values_gives_no_interval():
    assert stratified_bootstrap_interval([[[0.1, 0.2], [0.3, 0.4]]]) is None


def test_the_stratified_interval_takes_its_resample_count():
    # one resample: both bounds are that resample's average of the two groups' means
    low, high = stratified_bootstrap_interval([[0.0, 1.0], [0.0, 1.0]], resamples=1)
    assert low == high
    draws = [bootstrap_means(np.array([[0.0], [1.0]]), 1, seed)[0, 0] for seed in (0, 1)]
    assert low == pytest.approx(np.mean(draws))


# --- covseg.evaluation ----------------------------------------------------------------------------------------------

def test_format_interval_by_hand():
    assert format_interval([0.25, 0.5]) == "0.2500–0.5000"
    assert format_interval(None) is None
    assert format_interval([]) is None
    assert format_interval([None, 0.5]) is None
    assert format_interval([NAN, 0.5]) is None
    assert format_interval([0.25, NAN]) is None


def _multiclass_result(name: str, ggo_called: int, cons_called: int) -> ImageResult:
    """4 GGO and 4 consolidation pixels in the truth, of which the prediction calls the given numbers."""
    n = get_scheme("multiclass").num_classes
    cm = np.zeros((n, n), np.int64)
    cm[1, 1], cm[1, 0] = ggo_called, 4 - ggo_called
    cm[2, 2], cm[2, 0] = cons_called, 4 - cons_called
    cm[0, 0] = 64 - cm.sum()
    return ImageResult(name, cm)


def test_the_report_bootstraps_once_and_states_the_interval_once_under_the_per_image_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    calls = []
    original = evaluation._intervals

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_intervals", counting)
    results = [binary_result("a", 2), binary_result("b", 4), binary_result("c", 0, lesion=False)]
    write_report(summarise(results, get_scheme("binary")), tmp_path / "eval", "three")
    assert len(calls) == 1  # metrics.md reuses metrics.json's dict: its bootstrap is not redone
    text = (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert text.count("95 % confidence interval") == 1
    assert text.index("## per-image") < text.index("95 % confidence interval") < text.index("## pooled")


def test_the_mean_foreground_interval_leaves_out_classes_no_truth_holds():
    # GGO in every truth, called exactly, plus 0, 6 and 12 false-positive pixels: its specificity 60/60, 54/60 and
    # 48/60. Consolidation and pleural effusion are in no truth, yet have a specificity (1) on every image: they stay
    # out, so the mean foreground's interval is GGO's alone: all "c" (1/27 > 2.5 %) gives 0.8, all "a" 1.
    n = get_scheme("multiclass").num_classes
    results = []
    for name, false_positives in (("a", 0), ("b", 6), ("c", 12)):
        cm = np.zeros((n, n), np.int64)
        cm[1, 1], cm[0, 1] = 4, false_positives
        cm[0, 0] = 64 - cm.sum()
        results.append(ImageResult(name, cm))
    ci = summarise(results, get_scheme("multiclass")).to_dict()["per_image_ci95"]["specificity"]
    assert ci["ggo"] == pytest.approx([0.8, 1.0])
    assert ci["mean_foreground"] == pytest.approx([0.8, 1.0])
    assert ci["consolidation"] == [1.0, 1.0]


def test_no_lesion_in_any_truth_gives_no_interval_sentence(tmp_path: Path):
    results = [binary_result("c", 0, lesion=False), binary_result("d", 2, lesion=False)]
    metrics = write_report(summarise(results, get_scheme("binary")), tmp_path / "eval", "none")
    assert metrics["per_image_ci95"]["dice"]["infection"] == [None, None]
    assert "confidence interval" not in (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")


def test_the_rule_states_the_resamples_the_seed_and_the_minimum():
    assert "2000 resamples" in CI_RULE and "seed 0" in CI_RULE and "fewer than 2 images" in CI_RULE


def test_the_summary_gives_the_mean_foreground_its_interval(tmp_path: Path, capsys):
    # per-image Dice: GGO 1, 2/3, 1 and consolidation 0, 1, 2/3; the images' class averages 1/2, 5/6, 5/6. A resample
    # of all "a" (1/27 > 2.5 %) averages 1/2; one without "a" (8/27 > 2.5 %) 5/6: the bounds. The figure is the mean
    # of GGO's 8/9 and consolidation's 5/9, 13/18.
    results = [_multiclass_result("a", 4, 0), _multiclass_result("b", 2, 4), _multiclass_result("c", 4, 2)]
    metrics = write_report(summarise(results, get_scheme("multiclass")), tmp_path / "eval", "types")
    assert metrics["per_image_ci95"]["dice"]["mean_foreground"] == pytest.approx([0.5, 5 / 6], abs=1e-6)
    _print_summary(metrics, tmp_path / "eval")
    out = capsys.readouterr().out
    assert "; mean 0.7222 (95 % CI 0.5000–0.8333); pixel accuracy " in out
    line = next(l for l in (tmp_path / "eval" / "metrics.md").read_text().splitlines() if l.startswith("95 %"))
    assert "of the 3 images, seed 0;" in line and line.endswith("mean foreground 0.5000–0.8333.")


def test_the_summary_of_a_report_without_intervals_shows_the_figures_alone(tmp_path: Path, capsys):
    metrics = {"per_image": {"dice": {"background": 0.9, "infection": 0.5, "mean_foreground": 0.5}},
               "pixel_accuracy": 0.95, "infnet": None}  # a report written before per_image_ci95
    _print_summary(metrics, tmp_path)
    assert capsys.readouterr().out.startswith("Dice (per image): infection 0.5000; pixel accuracy 0.9500\n")


# --- covseg.paired --------------------------------------------------------------------------------------------------

def _rows() -> list[FoldDifference]:
    rng = np.random.default_rng(11)
    return [FoldDifference(f"fold-{k}", "dice_infection", 0.5, 0.6, 12, 6, 6, tuple(rng.normal(0.05, 0.1, 12)))
            for k in (3, 7)]


def test_fold_k_is_drawn_with_the_seed_plus_k():
    rows = _rows()
    groups = [row.deltas for row in rows]
    assert compute_difference_interval(rows) == stratified_bootstrap_interval(groups, seeds=[3, 7])
    assert compute_difference_interval(rows, seed=10) == stratified_bootstrap_interval(groups, seeds=[13, 17])
    assert compute_difference_interval(rows) != stratified_bootstrap_interval(groups, seeds=[0, 0])
    assert compute_difference_interval(rows, seed=10) != compute_difference_interval(rows)


def test_the_difference_interval_takes_its_resample_count():
    low, high = compute_difference_interval(_rows(), resamples=1)
    assert low == high


def test_fold_number_by_hand():
    assert _fold_number("fold-12") == 12
    assert _fold_number("fold-0") == 0
    assert _fold_number("heldout") == 0
    assert _fold_number("fold-x") == 0


def test_counted_values_by_hand():
    with_truth = {"b": {"dice_infection": 0.5, "truth_infection": 4.0},
                  "a": {"dice_infection": 0.25, "truth_infection": 2.0},
                  "c": {"dice_infection": NAN, "truth_infection": 3.0},  # no value: left out
                  "d": {"dice_infection": 0.0, "truth_infection": 0.0}}  # truth without the class: does not count
    assert counted_values(with_truth, "dice_infection") == [0.25, 0.5]  # image-name order
    without = {"c": {"dice_infection": 0.0}, "a": {"dice_infection": NAN}, "b": {"dice_infection": 0.5}}
    assert counted_values(without, "dice_infection") == [0.5, 0.0]


# --- covseg.experiment ----------------------------------------------------------------------------------------------

def _fold_table(out_dir: Path, k: int, rows: dict[str, tuple[float, int]]) -> None:
    folder = out_dir / f"fold-{k}" / "eval-heldout"
    folder.mkdir(parents=True)
    lines = ["name,pixels,dice_background,dice_infection,truth_background,truth_infection"]
    lines += [f"{name},64,0.9,{dice},{64 - truth},{truth}" for name, (dice, truth) in rows.items()]
    (folder / "per_image.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


COLUMNS = {"Dice infection (per image)": [0.5, None, 0.5], "mean Dice (per image)": [0.5, None, 0.5]}


def test_cv_intervals_by_hand(tmp_path: Path):
    # fold 0: Dice 0 and 1 (its mean 0, 1/2 or 1: a quarter, half, a quarter); fold 1 holds no lesion (left out, as
    # the column's mean leaves it out); fold 2: 1/2 twice. Averaged: 1/4, 1/2, 3/4, so the bounds are 1/4 and 3/4.
    _fold_table(tmp_path, 0, {"a": (0.0, 4), "b": (1.0, 4), "z": (NAN, 0)})
    _fold_table(tmp_path, 1, {"c": (NAN, 0), "d": (0.0, 0)})
    _fold_table(tmp_path, 2, {"e": (0.5, 2), "f": (0.5, 3)})
    assert _cv_intervals(tmp_path, 3, "binary", COLUMNS) == {"Dice infection (per image)": pytest.approx((0.25, 0.75))}
    assert _cv_intervals(tmp_path, 3, "binary", {"train seconds": [1, 2, 3]}) == {}  # no such column, no interval


def test_cv_intervals_draw_fold_k_with_seed_k_even_where_a_fold_is_left_out(tmp_path: Path):
    rng = np.random.default_rng(2)
    fold0, fold2 = rng.random(6).round(3).tolist(), rng.random(6).round(3).tolist()
    _fold_table(tmp_path, 0, {f"a{i}": (v, 4) for i, v in enumerate(fold0)})
    _fold_table(tmp_path, 1, {"c": (NAN, 0)})
    _fold_table(tmp_path, 2, {f"e{i}": (v, 4) for i, v in enumerate(fold2)})
    got = _cv_intervals(tmp_path, 3, "binary", COLUMNS)["Dice infection (per image)"]
    assert got == stratified_bootstrap_interval([fold0, fold2], seeds=[0, 2])
    assert got != stratified_bootstrap_interval([fold0, fold2], seeds=[0, 1])


def test_cv_intervals_without_a_fold_s_table_are_none_rather_than_an_error(tmp_path: Path):
    _fold_table(tmp_path, 0, {"a": (0.0, 4), "b": (1.0, 4)})
    _fold_table(tmp_path, 2, {"e": (0.5, 2), "f": (0.5, 3)})  # fold 1 has no per_image.csv
    assert _cv_intervals(tmp_path, 3, "binary", COLUMNS) == {}


def test_cv_json_and_cv_md_carry_the_interval_and_its_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # three scored folds, written by covseg's own report code, with the training and its checks left out: fold 0
    # Dice 1 and 0, fold 1 no lesion, fold 2 Dice 2/3 twice. Fold means 0, 1/2, 1 (a quarter, half, a quarter) and
    # 2/3, averaged over the two folds with a lesion: 1/3, 7/12, 5/6, so the bounds are 1/3 and 5/6.
    from covseg import experiment
    from covseg.config import load_recipe

    folds = {0: [binary_result("a", 4), binary_result("b", 0)],
             1: [binary_result("c", 0, lesion=False), binary_result("d", 1, lesion=False)],
             2: [binary_result("e", 2), binary_result("f", 2)]}
    out = tmp_path / "cv"
    for k, results in folds.items():
        write_report(summarise(results, get_scheme("binary")), out / f"fold-{k}" / "eval-heldout", f"fold {k}")
    for name in ("_check_output_folder", "_check_reusable", "_check_fold_inputs"):
        monkeypatch.setattr(experiment, name, lambda *a, **k: None)
    monkeypatch.setattr(experiment, "epochs_done", lambda *a, **k: 10 ** 6)
    monkeypatch.setattr(experiment, "_is_current", lambda *a, **k: True)
    monkeypatch.setattr(experiment, "_train_seconds", lambda *a, **k: 1.0)
    result = experiment.cross_validate(load_recipe("tiny"), [], "data", out, 3, False, log=lambda _: None)
    cv = json.loads((out / "cv.json").read_text(encoding="utf-8"))
    assert cv["intervals"]["rule"] == experiment.CV_INTERVAL_RULE
    assert cv["intervals"]["Dice infection (per image)"] == pytest.approx([1 / 3, 5 / 6], abs=1e-5)
    assert result["intervals"]["Dice infection (per image)"] == pytest.approx((1 / 3, 5 / 6), abs=1e-5)
    assert ("95 % interval of the folds' mean per-image Dice from the held-out images alone (each fold's images "
            "resampled within the fold, 2000 resamples, seeded; a training seed's spread is not in it): infection "
            "0.3333–0.8333.") in (out / "cv.md").read_text(encoding="utf-8")
