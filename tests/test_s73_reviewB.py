"""Session 73's review (helper reviewB) of the day's cv / compare / training-life changes: comparison.md's way to the
per-image differences for a split cv-compare cannot pair, a resume whose recorded data folder is gone, a run of a
library call (no data folder recorded) refused by cv / compare for other images, and cv --jobs with a fold its
worker left unfinished."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from covseg import experiment, paired
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.run import read_run_config

from conftest import TINY_OVERRIDES, write_semiseg


def _fake_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    """compare_models without training or scoring: each model's metrics made up, 2 held-out images each."""
    def metrics(dice: float) -> dict:
        return {"images_with_class": {"background": 2, "infection": 2}, "n_images": 2,
                "per_image": {"dice": {"infection": dice, "mean_foreground": dice}, "iou": {"mean_foreground": dice}},
                "pixel_accuracy": 0.9, "mean_class_accuracy": 0.8, "infnet": {"meanDic": dice}}

    fake = {"unet": metrics(0.7), "segnet": metrics(0.6)}
    monkeypatch.setattr(experiment, "train_or_resume", lambda cfg, *args: 1.0)
    monkeypatch.setattr(experiment, "evaluate_run", lambda run, *args, **kwargs: (dict(fake[run.name]), run))
    monkeypatch.setattr(experiment, "plot_comparison", lambda *args, **kwargs: None)


@pytest.mark.parametrize("split, extra", [("seed", []), ("official", ["data.val_fraction=0.2"])])
def test_compare_of_a_split_cv_compare_refuses_names_the_per_image_tables_instead(
        split: str, extra: list[str], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compare(monkeypatch)
    data = str(tiny_data)
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("data.folds=")]  # folds: cv:K only
    config = apply_overrides(load_recipe("tiny"), [*tiny, f"data.split={split}", *extra])
    out = tmp_path / "cmp"
    experiment.compare_models(["unet", "segnet"], config, load_dataset(data, "binary", split="train"), data, out,
                              progress=False, log=lambda message: None)
    last = (out / "comparison.md").read_text(encoding="utf-8").splitlines()[-1]
    # before: "... `covseg cv-compare OUT/unet OUT/segnet`.", which cv-compare refuses for a run of this split
    assert "`covseg cv-compare" not in last
    assert last == (f"Each model's figures rest on 2 held-out images; image by image: "
                    f"{out / 'unet' / 'eval-heldout' / 'per_image.csv'} and "
                    f"{out / 'segnet' / 'eval-heldout' / 'per_image.csv'} (covseg cv-compare pairs runs of a cv:K "
                    f"split only; this is split {split}).")
    # the refusal the old line led to: a single run of this split is no fold cv-compare can pair
    run = tmp_path / "run"
    (run / "eval-heldout").mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  split: {split}\n")
    with pytest.raises(CovsegError, match="a single run is compared only when it trained on a cross-validation fold"):
        paired._fold_of_run(run)


def test_compare_of_a_cv_split_still_names_cv_compare(tiny_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_compare(monkeypatch)
    data = str(tiny_data)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:1"])
    out = tmp_path / "cmp"
    experiment.compare_models(["unet", "segnet"], config, load_dataset(data, "binary", split="train"), data, out,
                              progress=False, log=lambda message: None)
    assert (out / "comparison.md").read_text(encoding="utf-8").splitlines()[-1] == (
        f"Each model's figures rest on 2 held-out images; image by image, with the spread of the differences: "
        f"`covseg cv-compare {out / 'unet'} {out / 'segnet'}`.")


def _with_data(run: Path, where: Path, data: str | None) -> Path:
    """A copy of ``run`` at ``where`` whose run.json records ``data`` as its data folder."""
    shutil.copytree(run, where)
    info = json.loads((where / "run.json").read_text(encoding="utf-8"))
    info["data"] = data
    (where / "run.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return where


def test_a_resume_whose_data_folder_is_gone_says_to_give_data(tiny_run: Path, tmp_path: Path, capsys) -> None:
    gone = tmp_path / "moved-away"
    run = _with_data(tiny_run, tmp_path / "run", str(gone))
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    # before: "covseg: error: …/moved-away: data folder not found; check the path or run `covseg download`"
    assert err == (f"covseg: error: {run}: the data folder it was trained on, {gone} (its run.json), is not there; "
                   "give --data DIR, the folder that holds its images now (a downloaded data set: fetch it again "
                   "with covseg download)\n")


def test_a_library_run_of_other_images_is_refused_as_such_not_asked_for_data(tiny_run: Path, tmp_path: Path) -> None:
    run = _with_data(tiny_run, tmp_path / "run", None)  # as train_run writes it without data_path
    other = write_semiseg(tmp_path / "other", seed=5)
    samples = load_dataset(str(other), "binary", split="train")
    # before: "…/run.json: the run records no data folder (it was trained from Python without data_path); give
    # --data DIR", though cv and compare were given one
    with pytest.raises(CovsegError, match=rf"^{run}: was trained on other data, and the training images in {other} "
                                          "are not those"):
        experiment._check_same_data(run, read_run_config(run), samples, str(other))


def test_cv_jobs_trains_a_fold_its_worker_left_unfinished_before_scoring_it(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[Path] = []

    def workers_that_train_nothing(runs, samples, data, jobs, log=print, again=""):
        handed.extend(run_dir for _, run_dir in runs)  # as a worker stopped before its first epoch would leave them

    monkeypatch.setattr(experiment, "train_runs_in_parallel", workers_that_train_nothing)
    data = str(tiny_data)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=1"])
    out = tmp_path / "cv"
    experiment.cross_validate(replace(config), load_dataset(data, "binary", split="train"), data, out, 2, False,
                              lambda message: None, jobs=2)
    assert handed == [out / "fold-0", out / "fold-1"]
    for k in (0, 1):  # trained here, then scored: never scored as a finished run it was not
        assert experiment.epochs_done(out / f"fold-{k}") == 1
        assert (out / f"fold-{k}" / "eval-heldout" / "metrics.json").is_file()


def test_a_resume_given_other_images_after_its_folder_was_moved_does_not_send_back_to_the_gone_folder(
        tiny_run: Path, tmp_path: Path, capsys) -> None:
    gone = tmp_path / "moved-away"
    run = _with_data(tiny_run, tmp_path / "run", str(gone))
    other = write_semiseg(tmp_path / "other", seed=5)  # the same names, other masks
    assert main(["train", "--resume", str(run), "--data", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"covseg: error: {run}: was trained on {gone}, and --data {other} "
                                                   "does not hold those images: ")
    # before: "resume with --data …/moved-away (or without --data)", a folder that is not there
    assert err.endswith(f"; resume with --data DIR, the folder that holds them now ({gone} is not there any more), "
                        f"or train a new run on {other} with -o NEW_RUN\n")
