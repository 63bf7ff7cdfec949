"""Tests written against surviving mutants of covseg.experiment and covseg.paired: the cross-validation table's
columns and cells, which reports `covseg cv` takes as current, and the paired comparison's edge cases. Every
expected value is worked out by hand; no test trains a network."""
from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from covseg import experiment
from covseg.errors import CovsegError
from covseg.paired import compare_cross_validations
from covseg.run import parameter_count

BINARY_HEADER = ("name,pixels,fg_dice,dice_background,dice_infection,iou_background,iou_infection,pixel_accuracy,"
                 "infnet_meanDic,infnet_mae")
OWN_MODEL = {"file": "last.pt", "epoch": 3, "flip_tta": False}


def _fold_metrics(per_image: dict[str, float], pooled: dict[str, float], with_class: dict[str, int],
                  mean: float, meandic: float | None = None) -> dict:
    """The parts of a fold's metrics.json that _cv_columns reads."""
    metrics = {"per_image": {"dice": {**per_image, "mean_foreground": mean}}, "pooled": {"dice": pooled},
               "images_with_class": with_class}
    if meandic is not None:
        metrics["infnet"] = {"meanDic": meandic}
    return metrics


def test_cv_columns_of_a_multiclass_cv_by_hand() -> None:
    # fold 0 holds GGO and consolidation; fold 1 GGO only; neither holds pleural effusion (no column for it)
    fold0 = _fold_metrics({"ggo": 0.70, "consolidation": 0.40, "pleural_effusion": None},
                          {"ggo": 0.75, "consolidation": 0.45, "pleural_effusion": 0.0},
                          {"background": 3, "ggo": 3, "consolidation": 2, "pleural_effusion": 0}, 0.55)
    fold1 = _fold_metrics({"ggo": 0.60, "consolidation": None, "pleural_effusion": None},
                          {"ggo": 0.65, "consolidation": 0.0, "pleural_effusion": 0.0},
                          {"background": 3, "ggo": 3, "consolidation": 0, "pleural_effusion": 0}, 0.60)
    columns = experiment._cv_columns([(fold0, 12.0), (fold1, 30.0)], "multiclass")
    assert columns == {"Dice ggo (per image)": [0.70, 0.60], "Dice ggo (pooled)": [0.75, 0.65],
                       "Dice consolidation (per image)": [0.40, None],
                       # fold 1's pooled 0.0 is of no consolidation truth at all: left out, not a 0
                       "Dice consolidation (pooled)": [0.45, None],
                       "mean Dice (per image)": [0.55, 0.60], "train seconds": [12.0, 30.0]}
    # consolidation over the fold that has it only: mean 0.45, std 0
    assert experiment._mean_std(columns)["Dice consolidation (pooled)"] == (0.45, 0.0)


def test_cv_columns_of_a_binary_cv_carry_inf_net_mean_dic() -> None:
    fold = _fold_metrics({"infection": 0.8}, {"infection": 0.85}, {"background": 2, "infection": 2}, 0.8, 0.77)
    columns = experiment._cv_columns([(fold, 5.0)], "binary")
    assert list(columns) == ["Dice infection (per image)", "Dice infection (pooled)", "mean Dice (per image)",
                             "Inf-Net meanDic", "train seconds"]
    assert columns["Inf-Net meanDic"] == [0.77]


def test_summary_row_is_mean_then_std_with_seconds_whole() -> None:
    summary = {"mean Dice (per image)": (0.81234, 0.0125), "train seconds": (12.4, 3.6)}
    assert experiment._summary_row(summary) == ["0.8123 ± 0.0125", "12 ± 4"]
    assert experiment._cv_row({"mean Dice (per image)": [None, 0.5], "train seconds": [7.6, 8.0]}, 0) == ["–", "8"]


def _fake_run(folder: Path) -> Path:
    """A run folder with an (empty) last.pt: enough for find_checkpoint's "final"."""
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"")
    return folder


def _report(path: Path, data: Path, files: list[Path] | None = None, file: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    model: dict = {"flip_tta": False}
    if files is not None:
        model["members"] = [{"file": str(f)} for f in files]
    if file is not None:
        model["file"] = str(file)
    path.write_text(json.dumps({"split": "heldout", "data": str(data), "model": model}), encoding="utf-8")
    return path


def _age(path: Path, seconds: float) -> None:
    """Set ``path``'s modification time to ``seconds`` after 2020-09-13 12:26:40 UTC."""
    os.utime(path, (1_600_000_000 + seconds, 1_600_000_000 + seconds))


def test_a_fold_report_older_than_its_last_pt_is_not_current(tmp_path: Path) -> None:
    run, data = _fake_run(tmp_path / "fold-0"), tmp_path / "data"
    report = _report(run / "eval-heldout" / "metrics.json", data, file=run / "last.pt")
    _age(run / "last.pt", 100)
    _age(report, 100)  # written the same second: current
    assert experiment._is_current(report, run, "final", str(data)) is True
    _age(report, 99)  # a second before last.pt was written (the run trained on after it was scored)
    assert experiment._is_current(report, run, "final", str(data)) is False


def test_a_seed_ensemble_report_older_than_a_members_last_pt_is_not_current(tmp_path: Path) -> None:
    members, data = [_fake_run(tmp_path / f"seed-{s}" / "fold-0") for s in (0, 1)], tmp_path / "data"
    report = _report(tmp_path / "ensemble" / "fold-0" / "metrics.json", data, files=[m / "last.pt" for m in members])
    _age(members[0] / "last.pt", 50)
    _age(members[1] / "last.pt", 100)
    _age(report, 100)
    assert experiment._report_of(report, members, str(data)) is True
    _age(report, 99)  # newer than seed 0's last.pt, older than seed 1's
    assert experiment._report_of(report, members, str(data)) is False
    _age(report, 100)
    # the members in the other order are not this report's ensemble
    assert experiment._report_of(report, members[::-1], str(data)) is False


def _write_fold(cv_dir: Path, fold: int, rows: list[str]) -> None:
    folder = cv_dir / f"fold-{fold}" / "eval-heldout"
    folder.mkdir(parents=True)
    (folder / "per_image.csv").write_text("\n".join([BINARY_HEADER, *rows]) + "\n", encoding="utf-8")
    (folder / "metrics.json").write_text(json.dumps({"model": OWN_MODEL}), encoding="utf-8")


def test_images_whose_pixel_count_is_nan_on_both_sides_are_paired(tmp_path: Path) -> None:
    # nan is a cell covseg reads (both sides unknown alike): not a sign of other data
    _write_fold(tmp_path / "ref", 0, ["a,nan,0.5,0.9,0.5,0.8,0.25,0.95,0.7,0.05"])
    _write_fold(tmp_path / "new", 0, ["a,nan,0.7,0.9,0.7,0.8,0.35,0.95,0.7,0.05"])
    (only,) = compare_cross_validations(tmp_path / "ref", tmp_path / "new").differences
    assert (only.reference, only.candidate, only.images, only.images_up) == (0.5, 0.7, 1, 1)
    assert math.isclose(only.difference, 0.2)


def test_a_short_row_is_refused_with_its_line(tmp_path: Path) -> None:
    # one cell short: csv fills the last column with None, refused as the wrong column count, not a TypeError
    _write_fold(tmp_path / "cv", 0, ["a,100,0.5,0.9,0.5,0.8,0.25,0.95,0.7,0.05", "b,100,0.5,0.9,0.5,0.8,0.25,0.95,0.7"])
    with pytest.raises(CovsegError, match=r"per_image.csv, line 3: 10 columns expected; score the fold again$"):
        compare_cross_validations(tmp_path / "cv", tmp_path / "cv")


@pytest.mark.parametrize("split", ["seed", "paper", "official"])
def test_a_single_run_of_a_split_other_than_cv_is_not_a_fold(tmp_path: Path, split: str) -> None:
    run = tmp_path / "run"
    _write_fold(tmp_path, 0, ["a,100,0.5,0.9,0.5,0.8,0.25,0.95,0.7,0.05"])
    (tmp_path / "fold-0").rename(run)
    (run / "config.yaml").write_text(f"data:\n  split: {split}\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"only when it trained on a cross-validation fold .*says '{split}'\)$"):
        compare_cross_validations(run, run)


def test_a_fold_scored_with_flip_tta_is_refused(tmp_path: Path) -> None:
    for side in ("ref", "new"):
        _write_fold(tmp_path / side, 0, ["a,100,0.5,0.9,0.5,0.8,0.25,0.95,0.7,0.05"])
    report = tmp_path / "new" / "fold-0" / "eval-heldout" / "metrics.json"
    report.write_text(json.dumps({"model": {**OWN_MODEL, "flip_tta": True}}), encoding="utf-8")
    with pytest.raises(CovsegError, match=r"fold-0/eval-heldout was scored with flip TTA .*score it again without "
                                          r"--tta"):
        compare_cross_validations(tmp_path / "ref", tmp_path / "new")


@pytest.mark.parametrize("seeds", [[3], [], [0, 1, 0]])
def test_seeds_must_be_two_or_more_different_ones(seeds: list[int]) -> None:
    with pytest.raises(CovsegError, match="--seeds needs two or more different seeds"):
        experiment.check_seeds(seeds)
    experiment.check_seeds([0, 2**32 - 1])  # the largest seed there is


def test_a_reused_runs_changed_held_out_images_are_named_three_at_most(tiny_data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.checkpoint import build_model, save_checkpoint
    from covseg.config import apply_overrides, load_recipe
    from covseg.datasets import load_dataset
    from covseg.run import _OldRun, _prepare_folder
    from conftest import TINY_OVERRIDES

    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    config = experiment._fold_config(apply_overrides(load_recipe("tiny"), TINY_OVERRIDES), 0, 3)
    run = tmp_path / "fold-0"
    _prepare_folder(run, config, samples, data, force=False, old=_OldRun(run), log=lambda message: None)
    save_checkpoint(run / "last.pt", build_model(config), config, 0, None)
    experiment._check_same_data(run, config, samples, data)  # its own split: reused
    saved = json.loads((run / "split.json").read_text(encoding="utf-8"))
    held, trained = sorted(saved["val"] + saved.get("test", [])), sorted(saved["train"])
    # today's split (as if images had been added): its held-out images less one, plus two training ones
    now = {"train": sorted(set(trained[2:]) | {held[0]}), "val": sorted(held[1:] + trained[:2]), "test": []}
    monkeypatch.setattr(experiment, "make_split", lambda *args, **kwargs: now)
    three = ", ".join(sorted([held[0], *trained[:2]]))  # exactly 3 differ: all named, no "..."
    with pytest.raises(CovsegError, match=rf"current data \({three} differ\), so"):
        experiment._check_same_data(run, config, samples, data)
    now = {"train": sorted(set(trained[2:]) | set(held[:2])), "val": sorted(held[2:] + trained[:2]), "test": []}
    three = ", ".join(sorted([*held[:2], *trained[:2]])[:3])  # four differ: the first three, then "..."
    with pytest.raises(CovsegError, match=rf"current data \({three}, \.\.\. differ\), so"):
        experiment._check_same_data(run, config, samples, data)


def test_an_empty_folder_or_a_run_folder_may_hold_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()  # made beforehand (mkdir -p OUT/unet): training fills it
    experiment._check_run_folder(tmp_path / "empty")
    experiment._check_run_folder(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("note\n")
    with pytest.raises(CovsegError, match="is not empty and not a covseg run folder"):
        experiment._check_run_folder(tmp_path / "junk")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CovsegError, match="is a file, not a run folder"):
        experiment._check_run_folder(tmp_path / "file")


@pytest.mark.parametrize("bad", ["inf", "-inf", "nan", "x"])
def test_train_seconds_sums_the_last_column_and_refuses_a_non_finite_one(tmp_path: Path, bad: str) -> None:
    history = tmp_path / "history.csv"
    history.write_text("epoch,train_loss,seconds\n1,0.5,1.5\n2,0.4,2.25\n3,0.3,4\n", encoding="utf-8")
    assert experiment._train_seconds(tmp_path) == 7.75  # 1.5 + 2.25 + 4, the header left out
    history.write_text(f"epoch,train_loss,seconds\n1,0.5,1.5\n2,0.4,{bad}\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"history.csv: damaged \(row 2 has '{bad}' for its seconds, not a number\)"):
        experiment._train_seconds(tmp_path)


def test_a_fold_where_no_image_counts_is_skipped_and_told(tmp_path: Path) -> None:
    from covseg.paired import format_comparison

    for side, dice in (("ref", 0.5), ("new", 0.6)):
        _write_fold(tmp_path / side, 0, [f"a,100,{dice},0.9,{dice},0.8,0.25,0.95,0.7,0.05"])
        _write_fold(tmp_path / side, 1, ["b,100,nan,0.9,nan,0.8,nan,0.95,0.7,0.05"])  # no infection, none called
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    assert [d.fold for d in comparison.differences] == ["fold-0"]
    assert comparison.skipped == [("dice_infection", "fold-1")]
    table = format_comparison(comparison, "ref", "new")
    assert "No image counts: dice_infection on fold-1." in table
    assert "| 1 fold | 0.5000 | 0.6000 | **+0.1000** | 1 of 1 fold up |" in table


def test_a_table_without_a_name_column_is_refused(tmp_path: Path) -> None:
    _write_fold(tmp_path / "cv", 0, ["a,100,0.5,0.9,0.5,0.8,0.25,0.95,0.7,0.05"])
    path = tmp_path / "cv" / "fold-0" / "eval-heldout" / "per_image.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("name,", "image,", 1), encoding="utf-8")
    with pytest.raises(CovsegError, match=r"per_image.csv: not a per-image table of covseg evaluate; score the fold "
                                          r"again$"):
        compare_cross_validations(tmp_path / "cv", tmp_path / "cv")


def test_only_a_plain_held_out_score_of_the_same_data_is_a_cv_score(tmp_path: Path) -> None:
    data = tmp_path / "data"
    plain = {"split": "heldout", "data": str(data), "model": {"flip_tta": False, "file": "last.pt"}}
    assert experiment._heldout_report(plain, str(data)) is True
    assert experiment._heldout_report(plain, str(tmp_path / "data" / ".." / "data")) is True  # the same folder
    behind = {**plain, "model": {**plain["model"], "lesion_model": {"file": "binary/last.pt"}}}
    assert experiment._heldout_report(behind, str(data)) is False  # typed behind a binary model: not this fold's own
    assert experiment._heldout_report({**plain, "model": {**plain["model"], "flip_tta": True}}, str(data)) is False
    assert experiment._heldout_report({**plain, "split": "all"}, str(data)) is False
    assert experiment._heldout_report(plain, str(tmp_path / "other")) is False


def _split_run(folder: Path, split: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps(split), encoding="utf-8")
    return folder


def test_heldout_is_a_runs_test_part_where_it_has_one(tiny_data: Path, tmp_path: Path) -> None:
    names = [str(i) for i in range(12)]  # tiny_data's images 0.jpg … 11.jpg
    paper = _split_run(tmp_path / "paper", {"train": names[5:], "val": names[:2], "test": names[2:5]})
    cv = _split_run(tmp_path / "cv", {"train": names[4:], "val": names[:4], "test": []})
    picked = {run.name: sorted(s.name for s in experiment.select_samples(run, str(tiny_data), "binary", "heldout"))
              for run in (paper, cv)}
    assert picked == {"paper": ["2", "3", "4"], "cv": ["0", "1", "2", "3"]}
    assert sorted(s.name for s in experiment.select_samples(paper, str(tiny_data), "binary", "val")) == ["0", "1"]
    # the validation images chose best.pt: "val" always, "heldout" only where it means them
    assert [experiment._evaluates_validation(paper, s) for s in ("val", "heldout", "test")] == [True, False, False]
    assert [experiment._evaluates_validation(cv, s) for s in ("val", "heldout", "test")] == [True, True, False]


def test_an_ensemble_of_two_runs_of_other_splits_is_refused_on_their_own_parts(tmp_path: Path) -> None:
    names = [str(i) for i in range(6)]
    fold0 = _split_run(tmp_path / "fold-0", {"train": names[3:], "val": names[:3], "test": []})
    fold1 = _split_run(tmp_path / "fold-1", {"train": names[:3], "val": names[3:], "test": []})
    twin = _split_run(tmp_path / "twin", {"train": names[3:], "val": names[:3], "test": []})
    for split in ("heldout", "val", "train", "all"):
        with pytest.raises(CovsegError, match="the ensemble's models were trained on different splits"):
            experiment._check_ensemble_split([fold0, fold1], split)
        experiment._check_ensemble_split([fold0, twin], split)  # one split: scored together
    experiment._check_ensemble_split([fold0, fold1], "test")  # the data set's test split: neither trained on it


def test_compare_tables_the_foreground_classes_of_each_model_in_order(tiny_data: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.config import apply_overrides, load_recipe
    from covseg.datasets import load_dataset
    from conftest import TINY_OVERRIDES

    def metrics(dice: float, iou: float | None, seconds: float) -> dict:
        return {"images_with_class": {"background": 4, "infection": 4},
                "per_image": {"dice": {"infection": dice, "mean_foreground": dice}, "iou": {"mean_foreground": iou}},
                "pixel_accuracy": 0.9, "mean_class_accuracy": 0.8, "infnet": {"meanDic": dice - 0.01}}

    fake = {"unet": (metrics(0.7, 0.55, 0), 12.34), "segnet": (metrics(0.6, None, 0), 34.56)}
    monkeypatch.setattr(experiment, "train_or_resume", lambda cfg, *args: fake[cfg.model.name][1])
    monkeypatch.setattr(experiment, "evaluate_run", lambda run, *args, **kwargs: (dict(fake[run.name][0]), run))
    monkeypatch.setattr(experiment, "plot_comparison", lambda *args, **kwargs: None)
    data = str(tiny_data)
    config = experiment._fold_config(apply_overrides(load_recipe("tiny"), TINY_OVERRIDES), 0, 3)
    out = tmp_path / "cmp"
    result = experiment.compare_models(["unet", "segnet"], config, load_dataset(data, "binary", split="train"), data,
                                       out, progress=False, log=lambda message: None)
    assert result["table"] == {"Dice infection": [0.7, 0.6], "mean Dice": [0.7, 0.6], "mean IoU": [0.55, None],
                               "pixel accuracy": [0.9, 0.9], "mean class accuracy": [0.8, 0.8],
                               "Inf-Net meanDic": [pytest.approx(0.69), pytest.approx(0.59)]}
    lines = (out / "comparison.md").read_text(encoding="utf-8").splitlines()
    assert "| mean IoU | 0.5500 | – |" in lines and "| train seconds | 12 | 35 |" in lines
    # the networks' sizes, and what the means rest on (these fakes record no image count)
    sizes = {m: sum(p.numel() for p in experiment.build_model(replace(config, model=replace(config.model, name=m)))
                    .parameters()) for m in ("unet", "segnet")}
    assert f"| parameters | {parameter_count(sizes['unet'])} | {parameter_count(sizes['segnet'])} |" in lines
    assert "| held-out images | – | – |" in lines
    assert lines[-1] == (f"Each model's figures rest on its held-out images; image by image, with the spread of the "
                         f"differences: `covseg cv-compare {out / 'unet'} {out / 'segnet'}`.")
    # which figures are per-image means and which pooled, said above the table
    assert lines[2].startswith("Dice and IoU: means over the held-out images (per image") and "(pooled)" in lines[2]
    runs = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["runs"]
    assert (runs["unet"]["train_seconds"], runs["segnet"]["train_seconds"]) == (12.3, 34.6)


def test_a_finished_run_is_reused_not_trained_again(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    from covseg.datasets import load_dataset
    from covseg.run import read_run_config

    run = tmp_path / "unet"
    shutil.copytree(tiny_run, run)
    history = (run / "history.csv").read_text(encoding="utf-8").strip().splitlines()
    seconds = sum(float(line.split(",")[-1]) for line in history[1:])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiment, "train_run", no_training)
    told: list[str] = []
    samples = load_dataset(str(tiny_data), "binary", split="train")
    assert experiment.train_or_resume(read_run_config(run), samples, run, str(tiny_data), False, False,
                                      told.append) == seconds
    assert told == [f"{run}: finished run reused (3 epochs)"]
