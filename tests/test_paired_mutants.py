"""Mutation-testing gaps of covseg.paired and covseg.consistency: refusals of bad tables and folders, which folds
and metrics are compared, the notes of the report, and the consistency term's input checks and CutMix draws."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covseg.cli import main
from covseg.consistency import ConsistencyTerm, warmup
from covseg.errors import CovsegError
from covseg.paired import compare_cross_validations, compute_fold_difference, default_metrics, format_comparison, \
    read_fold_scores
from covseg.training import weight_average

OWN_MODEL = {"file": "last.pt", "epoch": 3, "flip_tta": False}


def write_table(cv_dir: Path, fold: int, rows: dict[str, dict[str, float]], model: object = None) -> Path:
    """fold-K/eval-heldout/per_image.csv with the given rows (image -> column -> value), beside a metrics.json of a
    finished evaluation (a fold folder without checkpoints, so only metrics.json's model is checked)."""
    folder = cv_dir / f"fold-{fold}" / "eval-heldout"
    folder.mkdir(parents=True)
    columns = list(next(iter(rows.values())))
    lines = [",".join(["name", *columns])] + [",".join([name, *(str(v[c]) for c in columns)])
                                              for name, v in rows.items()]
    (folder / "per_image.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps({"model": OWN_MODEL if model is None else model}), encoding="utf-8")
    return folder / "per_image.csv"


def infection(dice: float, truth: float = 10.0) -> dict[str, float]:
    return {"pixels": 100, "dice_infection": dice, "truth_infection": truth}


# --- compute_fold_difference -------------------------------------------------------------------------------------

def test_an_image_only_the_candidate_holds_is_refused_too() -> None:
    with pytest.raises(CovsegError, match=r"fold-1: the two cross-validations held out different images \(e\.g\. z\)"):
        compute_fold_difference({"a": 0.5}, {"a": 0.5, "z": 0.6}, "fold-1", "dice_infection")


def test_the_refusal_names_three_of_the_differing_images() -> None:
    # symmetric difference b, c, d (reference only) and w, x, y (candidate only): the first three in order
    with pytest.raises(CovsegError, match=r"\(e\.g\. b, c, d\); compare runs made with the same --folds"):
        compute_fold_difference({"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.1}, {"a": 0.1, "w": 0.1, "x": 0.1, "y": 0.1},
                                "fold-0", "dice_infection")


# --- tables and folders refused ----------------------------------------------------------------------------------

def test_images_whose_truth_counts_differ_are_refused_and_nan_on_both_sides_is_the_same(tmp_path: Path) -> None:
    write_table(tmp_path / "ref", 0, {"a": infection(0.5, 20), "b": infection(0.7)})
    write_table(tmp_path / "new", 0, {"a": infection(0.6, 30), "b": infection(0.7)})
    with pytest.raises(CovsegError, match="fold-0: image a has truth_infection 20 in one cross-validation and 30 in "
                                          "the other, so they were scored on different data"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    shutil.rmtree(tmp_path / "new")
    write_table(tmp_path / "new", 0, {"a": infection(0.6, 20), "b": infection(0.7)})
    for side in ("ref", "new"):  # a nan truth count on both sides: the same truth, not refused
        path = tmp_path / side / "fold-0" / "eval-heldout" / "per_image.csv"
        path.write_text(path.read_text(encoding="utf-8").replace("b,100,0.7,10.0", "b,100,0.7,nan"), encoding="utf-8")
    (only,) = compare_cross_validations(tmp_path / "ref", tmp_path / "new").differences
    # b's truth count is nan (not > 0): only a counts, 0.5 -> 0.6
    assert (only.images, only.reference, only.candidate) == (1, 0.5, 0.6)


def test_a_candidate_without_truth_counts_is_served_by_the_references(tmp_path: Path) -> None:
    write_table(tmp_path / "ref", 0, {"a": infection(0.5), "b": infection(0.0, 0)})
    write_table(tmp_path / "new", 0, {"a": {"pixels": 100, "dice_infection": 0.7},
                                      "b": {"pixels": 100, "dice_infection": 0.0}})  # an older candidate table
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    (only,) = comparison.differences
    assert (only.images, only.reference, only.candidate) == (1, 0.5, 0.7)  # b: no infection in its truth
    assert comparison.truth_counts


@pytest.mark.parametrize("text", ["image,pixels,dice_infection\na,100,0.5\n", "name,pixels,dice_infection\n"],
                         ids=["no name column", "no rows"])
def test_a_table_that_is_not_a_per_image_table_is_refused(tmp_path: Path, text: str) -> None:
    path = write_table(tmp_path / "cv", 0, {"a": infection(0.5)})
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CovsegError, match="per_image.csv: not a per-image table of covseg evaluate"):
        read_fold_scores(tmp_path / "cv")


def test_a_row_with_too_few_cells_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write_table(tmp_path / "cv", 0, {"a": infection(0.5)})
    path.write_text("name,pixels,dice_infection,truth_infection\na,100,0.5,10\nb,100\n", encoding="utf-8")
    with pytest.raises(CovsegError, match="per_image.csv, line 3: 4 columns expected"):
        read_fold_scores(tmp_path / "cv")


@pytest.mark.parametrize(("split", "shown"), [("seed", "'seed'"), ("paper", "'paper'"), ("3", "3")])
def test_a_single_run_of_another_split_is_refused(tmp_path: Path, split: str, shown: str) -> None:
    write_table(tmp_path, 9, {"a": infection(0.5)})
    run = tmp_path / "fold-9"
    (run / "config.yaml").write_text(f"data:\n  split: {split}\n", encoding="utf-8")  # 3: a number, not a name
    with pytest.raises(CovsegError, match=f"only when it trained on a cross-validation fold .*says {shown}\\)"):
        read_fold_scores(run)


@pytest.mark.parametrize("text", ["", "data: 5\n", "- 1\n"], ids=["empty", "data not a mapping", "a list"])
def test_a_run_whose_config_yaml_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    write_table(tmp_path, 9, {"a": infection(0.5)})
    (tmp_path / "fold-9" / "config.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(CovsegError, match="no readable config.yaml with data.split"):
        read_fold_scores(tmp_path / "fold-9")


@pytest.mark.parametrize("report", [{}, {"model": {"epoch": 3}}, [], {"model": None}],
                         ids=["no model", "no file", "a list", "model null"])
def test_a_report_that_does_not_name_its_model_is_refused(tmp_path: Path, report: object) -> None:
    write_table(tmp_path / "cv", 0, {"a": infection(0.5)})
    (tmp_path / "cv" / "fold-0" / "eval-heldout" / "metrics.json").write_text(json.dumps(report), encoding="utf-8")
    with pytest.raises(CovsegError, match="metrics.json: unreadable, or it does not record which model it scored"):
        read_fold_scores(tmp_path / "cv")


def test_a_file_named_like_a_seed_folder_is_not_offered(tmp_path: Path) -> None:
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "seed-1").write_text("not a folder", encoding="utf-8")
    with pytest.raises(CovsegError, match="no scored folds.*; run covseg cv into it first$"):
        read_fold_scores(tmp_path / "cv")


# --- which metrics and folds are compared, and the report's notes ------------------------------------------------

def multiclass(ggo: float, consolidation: float, truth_ggo: float, truth_consolidation: float) -> dict[str, float]:
    return {"pixels": 100, "dice_background": 0.9, "dice_ggo": ggo, "dice_consolidation": consolidation,
            "truth_ggo": truth_ggo, "truth_consolidation": truth_consolidation}


def test_a_class_only_predicted_on_empty_truths_is_not_a_default_metric(tmp_path: Path) -> None:
    # s1: consolidation predicted where its truth has none (Dice 0, not nan); no truth of the fold holds it
    for side, dice in (("ref", 0.6), ("new", 0.8)):
        write_table(tmp_path / side, 0, {"s1": multiclass(dice, 0.0, 20, 0), "s2": multiclass(0.5, math.nan, 20, 0)})
    assert default_metrics(read_fold_scores(tmp_path / "ref")) == ["dice_ggo"]
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    assert [d.metric for d in comparison.differences] == ["dice_ggo"] and comparison.skipped == []
    # (0.6 + 0.5) / 2 -> (0.8 + 0.5) / 2
    assert comparison.differences[0].difference == pytest.approx(0.1)


def test_default_metrics_come_from_the_shared_folds_only(tmp_path: Path) -> None:
    for side in ("ref", "new"):
        write_table(tmp_path / side, 0, {"s1": multiclass(0.6, math.nan, 20, 0)})
    write_table(tmp_path / "ref", 1, {"s2": multiclass(0.6, 0.7, 20, 16)})  # reference only: not compared
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    assert [(d.metric, d.fold) for d in comparison.differences] == [("dice_ggo", "fold-0")]
    assert comparison.skipped == [] and comparison.reference_only == ["fold-1"]


def test_one_sided_folds_are_listed_in_number_order_and_noted(tmp_path: Path) -> None:
    for side, folds in (("ref", (0, 10, 2)), ("new", (0, 11, 3))):
        for fold in folds:
            write_table(tmp_path / side, fold, {f"i{fold}": infection(0.5)})
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    assert (comparison.reference_only, comparison.candidate_only) == (["fold-2", "fold-10"], ["fold-3", "fold-11"])
    table = format_comparison(comparison, "ref", "new")
    assert ("Not compared (scored on one side only): fold-2, fold-10 (reference only); fold-3, fold-11 "
            "(candidate only).") in table
    shutil.rmtree(tmp_path / "new" / "fold-3")
    shutil.rmtree(tmp_path / "new" / "fold-11")
    table = format_comparison(compare_cross_validations(tmp_path / "ref", tmp_path / "new"), "ref", "new")
    assert "Not compared (scored on one side only): fold-2, fold-10 (reference only)." in table


def test_a_fold_where_no_image_counts_is_skipped_and_noted(tmp_path: Path) -> None:
    for side, dice in (("ref", 0.5), ("new", 0.75)):
        write_table(tmp_path / side, 0, {"s1": multiclass(0.6, dice, 20, 16)})
        write_table(tmp_path / side, 1, {"s2": multiclass(0.6, math.nan, 20, 0)})  # no consolidation in fold 1
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["dice_consolidation"])
    assert [d.fold for d in comparison.differences] == ["fold-0"]
    assert comparison.skipped == [("dice_consolidation", "fold-1")]
    table = format_comparison(comparison, "ref", "new")
    assert "| 1 fold | 0.5000 | 0.7500 | **+0.2500** | 1 of 1 fold up |" in table
    assert table.endswith("No image counts: dice_consolidation on fold-1.\n")


def test_metrics_no_fold_can_pair_are_refused(tmp_path: Path) -> None:
    for side in ("ref", "new"):
        write_table(tmp_path / side, 0, {"a": infection(math.nan), "b": infection(math.nan)})
        write_table(tmp_path / side, 1, {"c": infection(0.5, 0)})
    with pytest.raises(CovsegError, match="no fold has an image with a value of dice_infection in both runs"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["dice_infection"])


# --- a run's own model as it is now --------------------------------------------------------------------------------

@pytest.fixture()
def scored_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run, scored by covseg evaluate (last.pt at epoch 3)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["evaluate", str(run), "--quiet"]) == 0
    return run


def _set_model(run: Path, **fields: object) -> None:
    report = run / "eval-heldout" / "metrics.json"
    data = json.loads(report.read_text(encoding="utf-8"))
    data["model"] = {k: v for k, v in {**data["model"], **fields}.items() if v is not None}
    report.write_text(json.dumps(data), encoding="utf-8")


def test_a_weight_averaged_model_is_checked_at_the_epoch_its_swa_pt_holds(scored_run: Path) -> None:
    from covseg.checkpoint import read_checkpoint

    saved = read_checkpoint(scored_run / "last.pt")
    saved["epoch"] = 2  # swa.pt records epoch 2 while last.pt holds 3
    torch.save(saved, scored_run / "swa.pt")
    _set_model(scored_run, file=str(scored_run / "swa.pt"), epoch=2)
    assert list(read_fold_scores(scored_run)) == ["fold-0"]  # scored swa.pt at the epoch swa.pt holds: taken
    _set_model(scored_run, epoch=3)  # last.pt's epoch is not swa.pt's
    with pytest.raises(CovsegError, match=r"scored swa.pt at epoch 3, but it holds epoch 2 now"):
        read_fold_scores(scored_run)


def test_a_report_without_the_epoch_it_scored_is_refused(scored_run: Path) -> None:
    _set_model(scored_run, epoch=None)  # the key dropped
    with pytest.raises(CovsegError, match=r"scored last.pt at an unrecorded epoch, but it holds epoch 3 now"):
        read_fold_scores(scored_run)


# --- covseg.consistency ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (4, 3, 8, 8), (4, 1, 8), (2, 1, 8, 8, 1)],
                         ids=["one slice", "three channels", "3-D", "5-D"])
def test_unlabelled_images_of_the_wrong_shape_are_refused(shape: tuple[int, ...]) -> None:
    student = nn.Sequential(nn.Conv2d(1, 2, 1))
    with pytest.raises(ValueError, match=r"unlabelled images must be \(U, 1, S, S\) with U >= 2, got " +
                       str(shape).replace("(", r"\(").replace(")", r"\)")):
        ConsistencyTerm(torch.zeros(shape), weight_average(student, 0.9), batch=2, weight=1.0)


def _identity_term(images: torch.Tensor, batch: int) -> tuple[ConsistencyTerm, nn.Module]:
    student = nn.Sequential(nn.Conv2d(1, 2, 1))
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=batch, weight=1.0)
    term.update(student)
    return term, student


def test_every_mixed_slice_takes_its_box_from_another_slice() -> None:
    # four slices of distinct constant grey levels: a slice mixed with itself would keep one level
    images = torch.tensor([0.1, 0.4, 0.7, 0.9]).view(4, 1, 1, 1).expand(4, 1, 16, 16).half()
    term, student = _identity_term(images, batch=3)
    for seed in range(12):
        mixed, _ = term.batch_for(student, torch.Generator().manual_seed(seed), None, torch.device("cpu"))
        assert max(len(m.unique()) for m in mixed) == 2, seed  # never a batch of unmixed slices


def test_each_epoch_draws_other_slices() -> None:
    images = torch.arange(8, dtype=torch.float16).view(8, 1, 1, 1).expand(8, 1, 4, 4) / 8
    term, student = _identity_term(images, batch=4)
    draws = [term.batch_for(student, ConsistencyTerm.generator(7, epoch), None, torch.device("cpu"))[0]
             for epoch in (0, 1)]
    again = term.batch_for(student, ConsistencyTerm.generator(7, 0), None, torch.device("cpu"))[0]
    assert torch.equal(draws[0], again) and not torch.equal(draws[0], draws[1])


def test_resized_slices_are_resampled_bilinearly_in_float32() -> None:
    # one slice a left-right ramp, the other its mirror: a 2x downsampling averages pixel pairs
    ramp = torch.linspace(0.0, 1.0, 8).expand(8, 8)
    images = torch.stack([ramp, ramp.flip(-1)]).unsqueeze(1).half()
    term, student = _identity_term(images, batch=2)
    generator = torch.Generator().manual_seed(0)
    mixed, _ = term.batch_for(student, generator, 4, torch.device("cpu"))
    assert mixed.dtype == torch.float32 and mixed.shape == (2, 1, 4, 4)
    small = F.interpolate(images.float(), size=(4, 4), mode="bilinear", align_corners=False)
    assert set(mixed.flatten().tolist()) <= set(small.flatten().tolist())
    assert not set(mixed.flatten().tolist()) <= set(images.float().flatten().tolist())  # not nearest-picked


def test_the_warmup_of_a_run_without_steps_is_zero() -> None:
    assert warmup(0, 0) == 0.0  # a ramp of at least one step: no division by zero
