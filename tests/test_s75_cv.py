"""covseg cv (session 75, helper q3): a folder of another number of folds refused once with how to go on, the folds
kept on a rerun said, and cv.json / cv.md's mean ± std against the folds' own metrics.json."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from covseg import experiment
from covseg.config import RunConfig, apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES


def _setup(tiny_data: Path) -> tuple[str, list, RunConfig]:
    """The tiny data folder, its training samples (binary) and a 1-epoch tiny config."""
    data = str(tiny_data)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=1"])
    return data, load_dataset(data, "binary", split="train"), config


@pytest.fixture(scope="module")
def two_fold_cv(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-fold, 1-epoch cross-validation of the tiny data (read-only for tests: copy it to change it)."""
    data, samples, config = _setup(tiny_data)
    out = tmp_path_factory.mktemp("cv") / "cv"
    experiment.cross_validate(config, samples, data, out, 2, progress=False, log=lambda message: None)
    return out


def _no_training(*args, **kwargs):
    raise AssertionError("trained before the refusal")


def test_a_cv_folder_of_another_number_of_folds_is_refused_once_with_how_to_go_on(
        two_fold_cv: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, samples, config = _setup(tiny_data)
    out = tmp_path / "cv"
    shutil.copytree(two_fold_cv, out)
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _no_training)
    pattern = (rf"^{re.escape(str(out))}: holds a 2-fold cross-validation \(fold-0 has data.folds 2\), not 3 folds; "
               r"pass --folds 2 to go on with it, or use another -o$")
    # before: "fold-0: holds a run with other settings (data.folds 2 there, 3 here); remove it to retrain it", then
    # the same of fold-1 once fold-0 was removed, and so on
    with pytest.raises(CovsegError, match=pattern):
        experiment.cross_validate(config, samples, data, out, 3, progress=False)
    # a fold beyond the new ones left by hand (another fold count's fold-4): before, folds 0-2 trained beside it
    left = tmp_path / "left"
    shutil.copytree(two_fold_cv / "fold-1", left / "fold-4")
    with pytest.raises(CovsegError, match=r"\(fold-4 has data.folds 2\), not 3 folds; pass --folds 2"):
        experiment.cross_validate(config, samples, data, left, 3, progress=False)
    assert [p.name for p in left.iterdir()] == ["fold-4"]
    # --seeds: a seed folder of another number of folds, refused before any seed trains
    seeds_out = tmp_path / "seeds"
    (seeds_out / "seed-1" / "fold-0").mkdir(parents=True)
    shutil.copy(two_fold_cv / "fold-0" / "config.yaml", seeds_out / "seed-1" / "fold-0" / "config.yaml")
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(seeds_out / 'seed-1'))}: holds a 2-fold cross-validation"):
        experiment.cross_validate_seeds(config, samples, data, seeds_out, 3, [0, 1], progress=False)
    assert not (seeds_out / "seed-0").exists()


def test_a_rerun_says_which_folds_it_keeps(tiny_data: Path, tmp_path: Path) -> None:
    data, samples, config = _setup(tiny_data)
    out = tmp_path / "cv"  # its own: a copy's reports scored the original's models, so they are scored again
    experiment.cross_validate(config, samples, data, out, 2, progress=False, log=lambda message: None)
    said: list[str] = []
    experiment.cross_validate(config, samples, data, out, 2, progress=False, log=said.append)
    assert said == [f"{out}: fold-0 and fold-1 trained and scored already; kept as they are"]  # before: nothing
    shutil.rmtree(out / "fold-1")  # a fold folder removed by hand: trained again, the other kept
    said.clear()
    experiment.cross_validate(config, samples, data, out, 2, progress=False, log=said.append)
    assert said[:2] == [f"{out}: fold-0 trained and scored already; kept as they are", "== fold 1 =="]
    assert (out / "fold-1" / "eval-heldout" / "metrics.json").is_file()


def test_cv_mean_and_std_are_the_folds_own_figures_averaged(two_fold_cv: Path) -> None:
    cv = json.loads((two_fold_cv / "cv.json").read_text(encoding="utf-8"))
    folds = [json.loads((two_fold_cv / f"fold-{k}" / "eval-heldout" / "metrics.json").read_text(encoding="utf-8"))
             for k in range(2)]
    per_image = [m["per_image"]["dice"]["infection"] for m in folds]
    pooled = [m["pooled"]["dice"]["infection"] for m in folds]
    assert cv["columns"]["Dice infection (per image)"] == per_image
    assert cv["columns"]["Dice infection (pooled)"] == pooled
    for column, values in (("Dice infection (per image)", per_image), ("Dice infection (pooled)", pooled)):
        mean = (values[0] + values[1]) / 2
        std = abs(values[0] - values[1]) / 2  # population std (ddof 0) of two values
        assert cv["summary"][column] == pytest.approx([mean, std])
    mean, std = cv["summary"]["Dice infection (per image)"]
    table = (two_fold_cv / "cv.md").read_text(encoding="utf-8")
    assert f"| mean ± std | {mean:.4f} ± {std:.4f} |" in table
    low, high = cv["intervals"]["Dice infection (per image)"]
    assert low <= mean <= high
    assert f"infection {low:.4f}–{high:.4f}." in table
    assert np.isfinite([low, high]).all()
