"""covseg.paired and `covseg cv-compare`: paired per-image differences between two cross-validations."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from covseg.cli import main
from covseg.errors import CovsegError
from covseg.evaluation import evaluate_image, summarise, write_report
from covseg.labels import get_scheme
from covseg.paired import compare_cross_validations, compute_fold_difference, default_metrics, format_comparison, \
    read_fold_scores, unpaired_folds_warning

BINARY_HEADER = ("name,pixels,fg_dice,dice_background,dice_infection,iou_background,iou_infection,pixel_accuracy,"
                 "infnet_meanDic,infnet_mae")

OWN_MODEL = {"file": "last.pt", "epoch": 3, "flip_tta": False}  # metrics.json's model: what covseg evaluate scored


def write_fold(cv_dir: Path, fold: int, dice: dict[str, float]) -> None:
    """A binary per_image.csv with the given infection Dice per image (other columns filler), beside the
    metrics.json that marks a finished evaluation (of a fold folder without checkpoints)."""
    folder = cv_dir / f"fold-{fold}" / "eval-heldout"
    folder.mkdir(parents=True)
    rows = [f"{name},100,{d},0.9,{d},0.8,{d / 2},0.95,0.7,0.05" for name, d in dice.items()]
    (folder / "per_image.csv").write_text("\n".join([BINARY_HEADER, *rows]) + "\n", encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps({"model": OWN_MODEL}), encoding="utf-8")


@pytest.fixture()
def two_cvs(tmp_path: Path) -> tuple[Path, Path]:
    reference, candidate = tmp_path / "ref", tmp_path / "new"
    write_fold(reference, 0, {"a": 0.5, "b": 0.7, "c": math.nan})
    write_fold(candidate, 0, {"a": 0.8, "b": 0.6, "c": math.nan})
    write_fold(reference, 1, {"d": 0.9, "e": 0.3, "f": math.nan})
    write_fold(candidate, 1, {"d": 0.9, "e": 0.4, "f": 0.2})  # f: no value in the reference, so not paired
    write_fold(candidate, 2, {"g": 0.1})  # a fold only the candidate has scored
    return reference, candidate


def test_paired_differences_by_hand(two_cvs: tuple[Path, Path]) -> None:
    comparison = compare_cross_validations(*two_cvs)
    differences = comparison.differences
    assert [(d.fold, d.metric) for d in differences] == [("fold-0", "dice_infection"), ("fold-1", "dice_infection")]
    first, second = differences
    # fold 0: reference (0.5 + 0.7) / 2 = 0.6, candidate (0.8 + 0.6) / 2 = 0.7; a went up, b down
    assert (first.reference, first.candidate, first.images, first.images_up) == pytest.approx((0.6, 0.7, 2, 1))
    assert first.difference == pytest.approx(0.1)
    # fold 1: f is nan in the reference; d is tied (not up), e went up: 0.6 -> 0.65
    assert (second.reference, second.candidate, second.images, second.images_up) == pytest.approx((0.6, 0.65, 2, 1))
    assert (comparison.reference_only, comparison.candidate_only) == ([], ["fold-2"])
    table = format_comparison(comparison, "ref", "new")
    # mean of +0.1 and +0.05 is +0.075; sample std sqrt(2 * 0.025**2) = 0.0354
    assert "| 2 folds | 0.6000 | 0.6750 | **+0.0750 ± 0.0354** | 2 of 2 folds up |" in table
    assert "sample standard deviation (ddof 1)" in table  # 0.05 and 0.10: sd 0.0354, not the population's 0.025
    assert "| fold-1 | 0.6000 | 0.6500 | +0.0500 | 1 of 2 |" in table
    assert "fold-2 (candidate only)" in table and "neither table has truth_<class>" in table


def test_chosen_metrics_and_their_refusal(two_cvs: tuple[Path, Path]) -> None:
    chosen = ["iou_infection", "pixel_accuracy", "iou_infection"]  # a repeat is compared once
    differences = compare_cross_validations(*two_cvs, metrics=chosen).differences
    assert [d.metric for d in differences] == ["iou_infection"] * 2 + ["pixel_accuracy"] * 2
    assert differences[0].difference == pytest.approx(0.05)  # the IoU column holds Dice / 2 here
    assert differences[2].difference == 0.0
    with pytest.raises(CovsegError, match="per_image.csv: no column 'dice_ggo'; choose from fg_dice"):
        compare_cross_validations(*two_cvs, metrics=["dice_ggo"])
    with pytest.raises(CovsegError, match="per_image.csv: 'pixels' is a count, not a score; choose from fg_dice"):
        compare_cross_validations(*two_cvs, metrics=["pixels"])  # was compared as if a score


def test_different_held_out_images_are_refused() -> None:
    with pytest.raises(CovsegError, match="fold-3: the two cross-validations held out different images"):
        compute_fold_difference({"a": 0.5, "b": 0.6}, {"a": 0.5, "z": 0.6}, "fold-3", "dice_infection")
    with pytest.raises(CovsegError, match="no image has a value"):
        compute_fold_difference({"a": math.nan}, {"a": 0.4}, "fold-0", "dice_consolidation")


def test_folders_without_shared_scored_folds_are_refused(tmp_path: Path) -> None:
    write_fold(tmp_path / "ref", 0, {"a": 0.5})
    write_fold(tmp_path / "new", 1, {"b": 0.5})
    with pytest.raises(CovsegError, match="share no scored fold"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CovsegError, match="no scored folds.*run covseg cv into it first"):
        read_fold_scores(tmp_path / "empty")
    (tmp_path / "empty" / "config.yaml").write_text("data: {split: 'cv:0'}\n")  # an unscored train run
    with pytest.raises(CovsegError, match="no scored folds.*score it first: covseg evaluate"):
        read_fold_scores(tmp_path / "empty")
    with pytest.raises(CovsegError, match="no such folder"):
        read_fold_scores(tmp_path / "missing")


def test_a_single_cv_fold_run_counts_as_its_fold(tmp_path: Path, two_cvs: tuple[Path, Path]) -> None:
    run = tmp_path / "screen-f1"
    write_fold(tmp_path, 9, {"d": 0.8, "e": 0.5, "f": 0.3})
    (tmp_path / "fold-9").rename(run)
    (run / "config.yaml").write_text("data:\n  split: cv:1\n", encoding="utf-8")
    (only,) = compare_cross_validations(two_cvs[0], run).differences
    assert (only.fold, only.candidate, only.images_up) == ("fold-1", pytest.approx(0.65), 1)  # f: nan in ref
    # a column it lacks names the run's own table, not a fold-1 folder it does not have
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run / 'eval-heldout' / 'per_image.csv'))}: no column"):
        compare_cross_validations(run, two_cvs[0], metrics=["dice_ggo"])
    (run / "config.yaml").write_text("data:\n  split: official\n", encoding="utf-8")
    with pytest.raises(CovsegError, match="only when it trained on a cross-validation fold"):
        read_fold_scores(run)
    (run / "config.yaml").write_text("data:\n  split: cv:x\n", encoding="utf-8")
    with pytest.raises(CovsegError, match="write cv:K with a fold number"):
        read_fold_scores(run)
    (run / "config.yaml").unlink()
    with pytest.raises(CovsegError, match="no readable config.yaml"):
        read_fold_scores(run)


def test_reads_what_evaluate_writes_and_picks_the_classes_the_truths_hold(tmp_path: Path) -> None:
    scheme = get_scheme("multiclass")
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:4, :5] = 1  # 20 GGO pixels
    truth[6:, 6:] = 2  # 16 consolidation pixels
    pred = truth.copy()
    pred[:2, :5] = 0  # half the GGO missed: Dice 2 * 10 / (20 + 10)
    probs = np.eye(scheme.num_classes)[pred].transpose(2, 0, 1)
    write_report(summarise([evaluate_image("s1", probs, truth, scheme)], scheme), tmp_path / "fold-0" / "eval-heldout",
                 "test", {"model": OWN_MODEL})
    scores = read_fold_scores(tmp_path)
    assert default_metrics(scores) == ["dice_ggo", "dice_consolidation"]  # pleural effusion: no truth, all nan
    assert scores["fold-0"]["s1"]["dice_ggo"] == pytest.approx(2 * 10 / 30, abs=1e-6)
    assert scores["fold-0"]["s1"]["dice_consolidation"] == 1.0


def test_cli_prints_and_writes_the_tables(two_cvs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "paired.md"
    assert main(["cv-compare", str(two_cvs[0]), str(two_cvs[1]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**+0.0750 ± 0.0354**" in printed
    assert out.read_text(encoding="utf-8").strip() == printed.strip()


def test_cli_bad_folder_is_one_line_and_writes_nothing(two_cvs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "paired.md"
    assert main(["cv-compare", str(tmp_path / "nope"), str(two_cvs[1]), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]
    assert not out.exists()


def test_cli_warns_of_folds_scored_on_one_side_only(two_cvs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    # before: exit 0 and nothing on stderr; the summary rows silently averaged the shared folds alone
    reference, candidate = two_cvs
    assert main(["cv-compare", str(reference), str(candidate)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: warning: fold-2 scored in {candidate} only: left out, so the summary rows average only 2 "
                   f"of 3 folds; to compare all 3, finish and score fold-2 in {reference} (covseg cv -o {reference} "
                   "again, with its own settings)"]
    write_fold(tmp_path / "old", 0, {"a": 0.5, "b": 0.7, "c": math.nan})  # fold-1 and fold-2 in the candidate only
    assert main(["cv-compare", str(candidate), str(tmp_path / "old")]) == 0
    assert "fold-1, fold-2 scored in" in capsys.readouterr().err
    shutil.rmtree(candidate / "fold-2")  # both sides score the same folds: no warning
    assert main(["cv-compare", str(reference), str(candidate)]) == 0
    assert capsys.readouterr().err == ""


def test_a_single_runs_missing_folds_are_told_to_come_from_its_cross_validation(tmp_path: Path,
                                                                                 two_cvs: tuple[Path, Path]) -> None:
    run = tmp_path / "screen-f1"
    write_fold(tmp_path, 9, {"d": 0.8, "e": 0.5, "f": 0.3})
    (tmp_path / "fold-9").rename(run)
    (run / "config.yaml").write_text("data:\n  split: cv:1\n", encoding="utf-8")
    warning = unpaired_folds_warning(compare_cross_validations(two_cvs[1], run), two_cvs[1], run)
    assert warning == (f"fold-0, fold-2 scored in {two_cvs[1]} only: left out, so the summary rows average only 1 of "
                       f"3 folds; to compare all 3, give the whole cross-validation of the single run {run}")


def test_cross_validations_of_different_tasks_are_refused_up_front(tmp_path: Path, capsys) -> None:
    # before: "…/per_image.csv: no column 'dice_infection'; choose from … dice_ggo …", as if --metrics would do
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:4, :5] = 1
    write_multiclass_fold(tmp_path / "mc", 0, [("a", truth, truth)])  # its metrics.json records the task
    write_fold(tmp_path / "bin", 0, {"a": 0.5})
    (tmp_path / "bin" / "fold-0" / "config.yaml").write_text("data:\n  task: binary\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(tmp_path / 'bin'))} is a binary cross-validation and "
                                          rf"{re.escape(str(tmp_path / 'mc'))} a multiclass one, so .* cannot be "
                                          r"compared; compare two cross-validations of the same task"):
        compare_cross_validations(tmp_path / "bin", tmp_path / "mc", metrics=["pixel_accuracy"])
    assert main(["cv-compare", str(tmp_path / "mc"), str(tmp_path / "bin")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a multiclass cross-validation and" in err[0] and "no column" not in err[0]


def test_a_file_given_for_a_cross_validation_is_called_a_file(two_cvs: tuple[Path, Path], tmp_path: Path,
                                                              capsys) -> None:
    # before: "cmp.md: no such folder", of a file that is there (meant for -o)
    (tmp_path / "cmp.md").write_text("# an earlier table\n", encoding="utf-8")
    with pytest.raises(CovsegError, match="cmp.md: is a file, not a cross-validation folder; .* with -o$"):
        read_fold_scores(tmp_path / "cmp.md")
    assert main(["cv-compare", str(two_cvs[0]), str(tmp_path / "cmp.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: error: {tmp_path / 'cmp.md'}: is a file")


def write_multiclass_fold(cv_dir: Path, fold: int, images: list[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """per_image.csv as covseg evaluate writes it, for (name, truth, prediction) label maps."""
    scheme = get_scheme("multiclass")
    results = [evaluate_image(name, np.eye(scheme.num_classes)[pred].transpose(2, 0, 1), truth, scheme)
               for name, truth, pred in images]
    write_report(summarise(results, scheme), cv_dir / f"fold-{fold}" / "eval-heldout", "test", {"model": OWN_MODEL})


def test_a_false_positive_on_an_empty_truth_does_not_count(tmp_path: Path) -> None:
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:4, :5] = 1  # 20 GGO pixels, no consolidation
    wrong = truth.copy()
    wrong[8:, 8:] = 2  # 4 consolidation pixels where the truth has none: that image's consolidation Dice is 0
    both = truth.copy()
    both[6:, 6:] = 2  # 16 consolidation pixels
    half = both.copy()
    half[6:8, 6:] = 0  # half of them missed: Dice 2 * 8 / (16 + 8)
    write_multiclass_fold(tmp_path / "ref", 0, [("s1", truth, truth), ("s2", both, half)])
    write_multiclass_fold(tmp_path / "new", 0, [("s1", truth, wrong), ("s2", both, both)])
    scores = read_fold_scores(tmp_path / "new")
    assert scores["fold-0"]["s1"]["dice_consolidation"] == 0.0 and scores["fold-0"]["s1"]["truth_consolidation"] == 0
    ggo, consolidation = compare_cross_validations(tmp_path / "ref", tmp_path / "new").differences
    assert (ggo.metric, ggo.images, ggo.difference) == ("dice_ggo", 2, 0.0)
    # s1 (no consolidation in its truth) is left out as in metrics.json; s2 goes from 2/3 to 1
    assert (consolidation.images, consolidation.reference, consolidation.candidate) == (1, pytest.approx(2 / 3), 1.0)


@pytest.mark.parametrize(("cell", "message"), [("", "'' is not a number"), ("inf", "'inf' is not a number"),
                                               ("0.5,7", "columns expected")])
def test_bad_cells_are_refused_with_their_place(tmp_path: Path, cell: str, message: str) -> None:
    write_fold(tmp_path / "cv", 0, {"a": 0.5})
    path = tmp_path / "cv" / "fold-0" / "eval-heldout" / "per_image.csv"
    header, row = path.read_text(encoding="utf-8").splitlines()
    path.write_text(f"{header}\n{row.replace(',0.95,', f',{cell},', 1)}\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=f"line 2.*{message}"):
        read_fold_scores(tmp_path / "cv")
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(CovsegError, match="cannot read it as a per-image table"):
        read_fold_scores(tmp_path / "cv")


def test_folds_in_number_order_and_one_fold_without_spread(tmp_path: Path) -> None:
    for fold in (10, 2):
        write_fold(tmp_path / "ref", fold, {f"i{fold}": 0.5})
        write_fold(tmp_path / "new", fold, {f"i{fold}": 0.5})
    assert [d.fold for d in compare_cross_validations(tmp_path / "ref", tmp_path / "new").differences] == \
        ["fold-2", "fold-10"]
    (tmp_path / "ref" / "fold-10").rename(tmp_path / "ref-fold-10")
    table = format_comparison(compare_cross_validations(tmp_path / "ref", tmp_path / "new"), "r", "n")
    assert "| 1 fold | 0.5000 | 0.5000 | **+0.0000** | 0 of 1 fold up |" in table
    assert "fold-10 (candidate only)" in table


def test_a_seed_folder_is_named_when_its_parent_is_given(tmp_path: Path) -> None:
    write_fold(tmp_path / "cv" / "seed-1", 0, {"a": 0.5})
    with pytest.raises(CovsegError, match=r"give one of its seed folders \(seed-1\)"):
        read_fold_scores(tmp_path / "cv")


def test_cli_refuses_a_folder_as_output(two_cvs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    assert main(["cv-compare", str(two_cvs[0]), str(two_cvs[1]), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder; give -o a Markdown file name" in err[0]


def drop_truth_counts(cv_dir: Path, fold: int) -> None:
    """Make a fold's per_image.csv look as tables did before they carried truth_<class>."""
    path = cv_dir / f"fold-{fold}" / "eval-heldout" / "per_image.csv"
    rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()]
    keep = [i for i, column in enumerate(rows[0]) if not column.startswith("truth_")]
    path.write_text("\n".join(",".join(row[i] for i in keep) for row in rows) + "\n", encoding="utf-8")


def test_one_sides_truth_counts_serve_both(tmp_path: Path) -> None:
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:4, :5] = 1  # GGO only
    wrong = truth.copy()
    wrong[8:, 8:] = 2  # a false consolidation: Dice 0 where the truth has none
    both = truth.copy()
    both[6:, 6:] = 2
    write_multiclass_fold(tmp_path / "ref", 0, [("s1", truth, wrong), ("s2", both, both)])
    write_multiclass_fold(tmp_path / "new", 0, [("s1", truth, wrong), ("s2", both, both)])
    drop_truth_counts(tmp_path / "ref", 0)  # an older reference
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["dice_consolidation"])
    (only,) = comparison.differences
    assert only.images == 1 and only.reference == 1.0  # s1 left out by the candidate's truth counts
    assert comparison.truth_counts
    drop_truth_counts(tmp_path / "new", 0)
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["dice_consolidation"])
    assert (comparison.differences[0].images, comparison.differences[0].reference) == (2, 0.5)  # s1 counts as 0
    assert not comparison.truth_counts


def test_a_column_missing_from_any_compared_fold_is_refused(tmp_path: Path) -> None:
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:4, :5] = 1
    for side in ("ref", "new"):
        for fold in (0, 1):
            write_multiclass_fold(tmp_path / side, fold, [(f"s{fold}", truth, truth)])
    path = tmp_path / "new" / "fold-1" / "eval-heldout" / "per_image.csv"  # fold 1's table without its iou_ggo
    rows = [line.split(",") for line in path.read_text(encoding="utf-8").splitlines()]
    keep = [i for i, column in enumerate(rows[0]) if column != "iou_ggo"]
    path.write_text("\n".join(",".join(row[i] for i in keep) for row in rows) + "\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=r"fold-1.*per_image.csv: no column 'iou_ggo'"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["iou_ggo"])
    with pytest.raises(CovsegError, match=r"fold-0.*per_image.csv: 'truth_ggo' is a count, not a score"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["truth_ggo"])


def test_images_of_one_name_scored_on_other_data_are_refused(tmp_path: Path) -> None:
    write_fold(tmp_path / "ref", 0, {"a": 0.5, "b": 0.7})
    write_fold(tmp_path / "new", 0, {"a": 0.6, "b": 0.7})
    path = tmp_path / "new" / "fold-0" / "eval-heldout" / "per_image.csv"
    header, first, second = path.read_text(encoding="utf-8").splitlines()
    assert header.split(",")[1] == "pixels"
    path.write_text(f"{header}\n{first.replace(',100,', ',400,', 1)}\n{second}\n", encoding="utf-8")
    with pytest.raises(CovsegError, match="fold-0: image a has pixels 100 in one cross-validation and 400 in the "
                                          "other, so they were scored on different data"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new")


def test_a_repeated_image_row_is_refused_with_its_line(tmp_path: Path) -> None:
    write_fold(tmp_path / "cv", 0, {"a": 0.5, "b": 0.7})
    path = tmp_path / "cv" / "fold-0" / "eval-heldout" / "per_image.csv"
    header, first, second = path.read_text(encoding="utf-8").splitlines()
    path.write_text(f"{header}\n{first}\n{second}\n{first.replace(',0.5,', ',0.9,')}\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=r"per_image.csv, line 4: image a again \(first on line 2\)"):
        read_fold_scores(tmp_path / "cv")


def test_a_report_without_metrics_json_is_an_unfinished_evaluation(tmp_path: Path) -> None:
    write_fold(tmp_path / "cv", 0, {"a": 0.5})
    report = tmp_path / "cv" / "fold-0" / "eval-heldout" / "metrics.json"
    report.write_text("{not json", encoding="utf-8")
    with pytest.raises(CovsegError, match="metrics.json: unreadable, or it does not record which model"):
        read_fold_scores(tmp_path / "cv")
    report.unlink()  # what an interrupted write_report leaves: per_image.csv without metrics.json
    with pytest.raises(CovsegError, match="has per_image.csv but no metrics.json, so its evaluation did not finish; "
                                          "score it again: covseg evaluate"):
        read_fold_scores(tmp_path / "cv")


def test_a_report_of_the_run_at_an_earlier_epoch_is_refused(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval-heldout", ignore_errors=True)
    assert main(["evaluate", str(run), "--quiet"]) == 0
    assert list(read_fold_scores(run)) == ["fold-0"]  # scored last.pt at the epoch it holds: taken
    report = run / "eval-heldout" / "metrics.json"
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["model"]["epoch"] == 3
    data["model"]["epoch"] = 2  # scored while the run was at epoch 2, then resumed to its planned 3
    report.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CovsegError, match=r"scored last.pt at epoch 2, but it holds epoch 3 now .*; score it again: "
                                          "covseg evaluate"):
        read_fold_scores(run)
    assert main(["cv-compare", str(run), str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "at epoch 2, but it holds epoch 3 now" in err[0]
    report.unlink()
    with pytest.raises(CovsegError, match="no metrics.json"):
        read_fold_scores(run)


def test_an_error_metric_counts_images_and_folds_down(tmp_path: Path) -> None:
    reference, candidate = tmp_path / "ref", tmp_path / "new"
    mae = {reference: [{"a": 0.10, "b": 0.20}, {"d": 0.10, "e": 0.10}],
           candidate: [{"a": 0.05, "b": 0.22}, {"d": 0.08, "e": 0.09}]}
    for side, folds in mae.items():
        for fold, errors in enumerate(folds):
            write_fold(side, fold, {name: 0.5 for name in errors})
            csv_path = side / f"fold-{fold}" / "eval-heldout" / "per_image.csv"
            lines = csv_path.read_text(encoding="utf-8").splitlines()
            csv_path.write_text("\n".join([lines[0], *(line.rsplit(",", 1)[0] + f",{errors[line.split(',')[0]]}"
                                                       for line in lines[1:])]) + "\n", encoding="utf-8")
    comparison = compare_cross_validations(reference, candidate, metrics=["infnet_mae"])
    first, second = comparison.differences
    # fold 0: 0.15 -> 0.135 (a down, b up); fold 1: 0.10 -> 0.085 (both down)
    assert (first.difference, first.images_up, first.images_down) == (pytest.approx(-0.015), 1, 1)
    assert (second.difference, second.images_up, second.images_down) == (pytest.approx(-0.015), 0, 2)
    table = format_comparison(comparison, "ref", "new")
    assert "## infnet_mae (lower is better)" in table and "| fold | reference | candidate | Δ | images down |" in table
    assert "| fold-1 | 0.1000 | 0.0850 | -0.0150 | 2 of 2 |" in table
    assert "**-0.0150 ± 0.0000** | 2 of 2 folds down |" in table  # both folds' error fell (counted as "0 of 2 folds up" before)


def test_the_summary_row_is_the_unweighted_mean_of_the_fold_means(tmp_path: Path) -> None:
    """Fold 0 holds one image (+0.2), fold 1 three (+0.1 each): the folds weigh the same, +0.15, not the images'
    +0.125; the spread is the sample std of +0.2 and +0.1, 0.0707."""
    write_fold(tmp_path / "ref", 0, {"a": 0.5})
    write_fold(tmp_path / "new", 0, {"a": 0.7})
    write_fold(tmp_path / "ref", 1, {"b": 0.5, "c": 0.5, "d": 0.5})
    write_fold(tmp_path / "new", 1, {"b": 0.6, "c": 0.6, "d": 0.6})
    table = format_comparison(compare_cross_validations(tmp_path / "ref", tmp_path / "new"), "ref", "new")
    assert "| 2 folds | 0.5000 | 0.6500 | **+0.1500 ± 0.0707** | 2 of 2 folds up |" in table


def test_one_fold_counts_ties_neither_up_nor_down_and_leaves_out_a_candidates_nan() -> None:
    # a tied (0.5 -> 0.5), b down (0.7 -> 0.6), c up (0.4 -> 0.9), d nan in the candidate only: not paired
    reference = {"a": 0.5, "b": 0.7, "c": 0.4, "d": 0.3}
    candidate = {"a": 0.5, "b": 0.6, "c": 0.9, "d": math.nan}
    fold = compute_fold_difference(reference, candidate, "fold-0", "dice_infection")
    assert (fold.images, fold.images_up, fold.images_down) == (3, 1, 1)
    # reference (0.5 + 0.7 + 0.4) / 3 = 0.5333; candidate (0.5 + 0.6 + 0.9) / 3 = 0.6667
    assert (fold.reference, fold.candidate) == pytest.approx((1.6 / 3, 2.0 / 3))


def test_a_fold_whose_error_did_not_move_is_not_counted_down() -> None:
    from covseg.paired import Comparison, FoldDifference
    # infnet_mae: fold-0 0.1 -> 0.1 (Δ 0, not down), fold-1 0.1 -> 0.08 (Δ -0.02, down)
    rows = [FoldDifference("fold-0", "infnet_mae", 0.1, 0.1, 2, 0, 0),
            FoldDifference("fold-1", "infnet_mae", 0.1, 0.08, 2, 0, 2)]
    table = format_comparison(Comparison(rows, [], [], [], True), "ref", "new")
    # mean Δ -0.01, sample std sqrt(2 * 0.01**2 / 1) = 0.0141; one fold of two went down
    assert "| 2 folds | 0.1000 | 0.0900 | **-0.0100 ± 0.0141** | 1 of 2 folds down |" in table


def test_truth_counts_are_claimed_only_when_every_fold_has_them(tmp_path: Path) -> None:
    truth = np.zeros((10, 10), dtype=np.int64)
    truth[:4, :5] = 1
    both = truth.copy()
    both[6:, 6:] = 2
    for side in ("ref", "new"):
        write_multiclass_fold(tmp_path / side, 0, [("s1", truth, truth), ("s2", both, both)])
        write_multiclass_fold(tmp_path / side, 1, [("s3", both, both)])
        drop_truth_counts(tmp_path / side, 1)  # fold 1's tables are older on both sides: no truth_<class>
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new", metrics=["dice_ggo"])
    assert not comparison.truth_counts  # fold 0 has them, fold 1 does not: the note must be printed
    assert "written before session 23" in format_comparison(comparison, "ref", "new")


def test_a_fold_of_a_weight_averaged_run_must_score_its_swa_pt(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval-heldout", ignore_errors=True)
    assert main(["evaluate", str(run), "--quiet"]) == 0  # scores last.pt, the run's own model
    shutil.copy(run / "last.pt", run / "swa.pt")  # now the run's own model (find_checkpoint "final") is swa.pt
    with pytest.raises(CovsegError, match="scored last.pt, not the run's own swa.pt"):
        read_fold_scores(run)


def test_a_fold_of_a_run_stopped_one_epoch_short_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    import yaml
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval-heldout", ignore_errors=True)
    assert main(["evaluate", str(run), "--quiet"]) == 0
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    config["train"]["epochs"] = 4  # last.pt holds 3 epochs: one short of the plan
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(CovsegError, match="stopped after epoch 3 of 4"):
        read_fold_scores(run)


def test_the_folds_mean_difference_gets_a_paired_bootstrap_interval(two_cvs: tuple[Path, Path]) -> None:
    from covseg.paired import compute_difference_interval

    comparison = compare_cross_validations(*two_cvs)
    first, second = comparison.differences
    assert first.deltas == pytest.approx((0.3, -0.1)) and second.deltas == pytest.approx((0.0, 0.1))  # a, b; d, e
    # fold 0's resampled mean is 0.3, 0.1 or -0.1 (1/4, 1/2, 1/4), fold 1's 0, 0.05 or 0.1; their average reaches
    # (-0.1 + 0) / 2 and (0.3 + 0.1) / 2 each with probability 1/16 > 2.5 %, so those are the bounds
    assert compute_difference_interval(comparison.differences) == pytest.approx((-0.05, 0.2))
    table = format_comparison(comparison, "ref", "new")
    assert ("95 % interval of the folds' mean Δ from the images alone (paired bootstrap within each fold, 2000 "
            "resamples; a training seed's spread is not in it): -0.0500 to +0.2000.") in table


def test_the_interval_resamples_within_each_fold() -> None:
    from covseg.paired import Comparison, FoldDifference, compute_difference_interval

    # a fold of two images and a fold of two alike: the folds weigh alike, (0 or 0.1 or 0.2) and 0.1 averaged
    rows = [FoldDifference("fold-0", "dice_infection", 0.5, 0.6, 2, 1, 0, (0.0, 0.2)),
            FoldDifference("fold-1", "dice_infection", 0.5, 0.6, 2, 2, 0, (0.1, 0.1))]
    assert compute_difference_interval(rows) == pytest.approx((0.05, 0.15))
    assert compute_difference_interval(rows, level=0.4) == pytest.approx((0.1, 0.1))  # half the draws give 0.1
    # a fold of one image has no spread to resample: no interval, rather than a zero-width one
    one = [FoldDifference("fold-0", "dice_infection", 0.5, 0.52, 1, 1, 0, (0.02,)),
           FoldDifference("fold-1", "dice_infection", 0.5, 0.54, 2, 2, 0, (0.04, 0.01))]
    assert compute_difference_interval(one) is None
    assert "95 % interval" not in format_comparison(Comparison(one, [], [], [], True), "ref", "new")
    # no per-image differences (a FoldDifference made without them): no interval
    assert compute_difference_interval([FoldDifference("fold-0", "dice_infection", 0.5, 0.6, 2, 1, 0)]) is None
    # fold-K is drawn with seed K, whichever folds stand beside it
    assert compute_difference_interval(rows[1:] + rows[:1]) == compute_difference_interval(rows)
