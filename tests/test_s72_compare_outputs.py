"""Session 72's review of the comparison workflows: `covseg cv-compare` refuses to pair a run with itself and tells a
seed ensemble's folder from a cross-validation's; `covseg cv`, `cv --seeds` and `compare` refuse an -o that holds
another of them."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from covseg import experiment
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.paired import compare_cross_validations, read_fold_scores

from conftest import TINY_OVERRIDES

HEADER = "name,pixels,fg_dice,dice_background,dice_infection,iou_background,iou_infection,pixel_accuracy"


def _scored_fold(folder: Path, dice: dict[str, float]) -> Path:
    """``folder/eval-heldout`` as covseg evaluate leaves it (a binary per_image.csv with these infection Dice, and
    the metrics.json of a finished report); returns ``folder``."""
    report = folder / "eval-heldout"
    report.mkdir(parents=True)
    rows = [f"{name},100,{d},0.9,{d},0.8,{d / 2},0.95" for name, d in dice.items()]
    (report / "per_image.csv").write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    (report / "metrics.json").write_text(json.dumps({"model": {"file": "last.pt", "epoch": 3, "flip_tta": False}}),
                                         encoding="utf-8")
    return folder


def _cv(folder: Path) -> Path:
    """A two-fold cross-validation folder; fold-1's run carries its config.yaml, as a `covseg train --split cv:1`
    run does."""
    _scored_fold(folder / "fold-0", {"a": 0.5, "b": 0.7})
    _scored_fold(folder / "fold-1", {"c": 0.6, "d": 0.4})
    (folder / "fold-1" / "config.yaml").write_text("data:\n  split: cv:1\n", encoding="utf-8")
    return folder


def test_a_run_is_not_paired_with_the_cross_validation_it_belongs_to(tmp_path: Path, capsys) -> None:
    cv = _cv(tmp_path / "cv")
    # before: exit 0 and a table of Δ +0.0000 on fold-1 (the same per_image.csv on both sides), as if a finding
    for reference, candidate in ((cv, cv / "fold-1"), (cv / "fold-1", cv)):
        with pytest.raises(CovsegError, match=rf"^{re.escape(str(reference))} and {re.escape(str(candidate))} hold the "
                                              r"same run of fold-1 \(.*fold-1/eval-heldout/per_image.csv\), so its "
                                              r"difference is 0 by construction; give two different"):
            compare_cross_validations(reference, candidate)
    out = tmp_path / "paired.md"
    assert main(["cv-compare", str(cv), str(cv / "fold-1"), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and not out.exists()
    # the same folder on both sides keeps its own message
    with pytest.raises(CovsegError, match="is both the reference and the candidate"):
        compare_cross_validations(cv, tmp_path / "cv" / ".." / "cv")
    other = _cv(tmp_path / "other")  # two cross-validations still pair
    assert len(compare_cross_validations(cv, other).differences) == 2


def test_a_seed_ensembles_folder_is_told_apart_from_an_unscored_cross_validation(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    for seed in (0, 1):
        _cv(root / f"seed-{seed}")
    for k in (0, 1):  # what cross_validate_seeds writes: each fold's report in ensemble/fold-K itself
        (root / "ensemble" / f"fold-{k}").mkdir(parents=True)
        (root / "ensemble" / f"fold-{k}" / "per_image.csv").write_text(HEADER + "\na,100,1,1,1,1,1,1\n")
    # before: "no scored folds (fold-K/eval-heldout/per_image.csv); run covseg cv into it first"
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(root / 'ensemble'))}: a seed ensemble's reports .*give "
                                          rf"one of the seed folders beside it \({re.escape(str(root / 'seed-0'))}, "
                                          rf"{re.escape(str(root / 'seed-1'))}\); the ensemble's figures are in "
                                          rf"{re.escape(str(root / 'seeds.md'))}$"):
        read_fold_scores(root / "ensemble")
    (tmp_path / "empty").mkdir()  # a folder without any table keeps the old hint
    with pytest.raises(CovsegError, match="run covseg cv into it first"):
        read_fold_scores(tmp_path / "empty")


def _no_training(*args, **kwargs):
    raise AssertionError("training began before the checks refused the run")


@pytest.mark.parametrize(("made", "workflow", "shown"), [
    ("seeds", "cv", "seed-0, seed-1, seeds.json"),
    ("cv", "seeds", "fold-0, fold-1, cv.json"),
    ("cv", "compare", "fold-0, fold-1, cv.json"),
    ("compare", "cv", "comparison.json"),
    ("compare", "seeds", "comparison.json"),
])
def test_an_output_folder_of_another_workflow_is_refused_before_anything_trains(
        made: str, workflow: str, shown: str, tiny_data: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _no_training)
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    config = apply_overrides(load_recipe("tiny"), TINY_OVERRIDES)
    out = tmp_path / "out"
    layout = {"seeds": ["seed-0/", "seed-1/", "seeds.json"], "cv": ["fold-0/", "fold-1/", "cv.json"],
              "compare": ["unet/", "comparison.json"]}[made]
    for entry in layout:
        (out / entry).mkdir(parents=True) if entry.endswith("/") else (out / entry).write_text("{}\n")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    calls = {"cv": lambda: experiment.cross_validate(config, samples, data, out, 3, False),
             "seeds": lambda: experiment.cross_validate_seeds(config, samples, data, out, 3, [0, 1], False),
             "compare": lambda: experiment.compare_models(["unet"], experiment._fold_config(config, 0, 3), samples,
                                                          data, out, progress=False)}
    names = {"cv": "covseg cv", "seeds": "covseg cv --seeds", "compare": "covseg compare"}
    # before: the workflow trained into the folder beside the other's output (a plain cv's fold-K beside a --seeds
    # folder's seed-S: `covseg evaluate OUT --split test` then took the plain folds for the whole folder)
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(out))}: holds the output of {re.escape(names[made])} "
                                          rf"\({re.escape(shown)}\), not of {re.escape(names[workflow])}; give -o a "
                                          r"folder of its own"):
        calls[workflow]()
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_each_workflow_goes_on_in_its_own_folder(tiny_data: Path, tmp_path: Path) -> None:
    for made in ("seeds", "cv", "compare"):
        out = tmp_path / made
        (out / {"seeds": "seed-0", "cv": "fold-0", "compare": "unet"}[made]).mkdir(parents=True)
        if made == "compare":
            (out / "comparison.json").write_text("{}\n")
        experiment._check_same_workflow(out, made)  # its own folder (resumed): no refusal
        assert experiment._workflow_of(out)[0] == made
    assert experiment._workflow_of(tmp_path / "new") is None
    (tmp_path / "empty").mkdir()
    assert experiment._workflow_of(tmp_path / "empty") is None


def test_a_seed_ensembles_report_folder_is_not_taken_for_a_model(tmp_path: Path) -> None:
    """``covseg cv --seeds``'s ``ensemble/`` holds the seed ensemble's reports (fold-K/per_image.csv), no model:
    evaluating it names what it is and the members to give instead, not "no run.json"."""
    from covseg.predict import ensemble_members

    root = tmp_path / "seeds"
    for seed in (0, 1, 10):
        (root / f"seed-{seed}" / "fold-0").mkdir(parents=True)
    (root / "ensemble" / "fold-0").mkdir(parents=True)
    (root / "ensemble" / "fold-0" / "per_image.csv").write_text("image,fg_dice\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=r"seed-ensemble reports, not models; evaluate its members together, e\.g\. "
                                          rf"covseg evaluate {re.escape(str(root / 'seed-0' / 'fold-0'))} "
                                          rf"{re.escape(str(root / 'seed-1' / 'fold-0'))} "
                                          rf"{re.escape(str(root / 'seed-10' / 'fold-0'))} -o OUT$"):
        ensemble_members([root / "ensemble"])
