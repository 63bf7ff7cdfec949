"""covseg.experiment's checks before any training: fold inputs of every seed, and reused folds against today's split."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from covseg import experiment
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.run import _prepare_folder

from conftest import TINY_OVERRIDES


def _no_training(*args, **kwargs):
    raise AssertionError("training began before the checks refused the run")


def test_cv_with_seeds_and_jobs_checks_every_folds_inputs_before_the_workers_train(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _no_training)
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    samples = load_dataset(str(tiny_data), "binary", split="train")
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, f"train.init={tmp_path / 'no-pretraining'}"])
    for call in (lambda out: experiment.cross_validate(config, samples, str(tiny_data), out, 3, False, jobs=2),
                 lambda out: experiment.cross_validate_seeds(config, samples, str(tiny_data), out, 3, [0, 1], False,
                                                             jobs=2)):
        # before: cross_validate_seeds handed 6 runs to the workers, each to fail there
        with pytest.raises(CovsegError, match="no pretrained weights there"):
            call(tmp_path / "cv")
        assert not (tmp_path / "cv").exists()


def _begun_fold(config, samples, data: str, fold_dir: Path) -> None:
    """A fold folder as training leaves it (``last.pt`` stands for a begun run: only its presence is checked)."""
    _prepare_folder(fold_dir, config, samples, data, force=False)
    (fold_dir / "last.pt").write_bytes(b"")


def test_a_begun_cv_fold_is_refused_when_the_data_folder_has_other_images_now(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _no_training)
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    config = apply_overrides(load_recipe("tiny"), TINY_OVERRIDES)
    out = tmp_path / "cv"
    _begun_fold(experiment._fold_config(config, 0, 3), samples, data, out / "fold-0")
    for k in range(3):  # the same images: fold 0 is reused as it is
        experiment._check_reusable(out / f"fold-{k}", experiment._fold_config(config, k, 3), samples, data,
                                   experiment._CV_REMEDY)
    # one image more (the old ones unchanged): a fresh 3-fold split of the 13 holds out other images in fold 0
    more = [*samples, dataclasses.replace(samples[0], name="zz_new")]
    pattern = (rf"^{re.escape(str(out / 'fold-0'))}: was split from other images than {re.escape(data)} holds now: its held-out images are not "
               r"split cv:0's of the current data \(.* differ\), so they would overlap or miss other runs' "
               r"\(images added or removed since it began\?\); remove it to retrain it, or use another -o$")
    with pytest.raises(CovsegError, match=pattern):  # before: reused, beside folds 1-2 split afresh
        experiment._check_reusable(out / "fold-0", experiment._fold_config(config, 0, 3), more, data,
                                   experiment._CV_REMEDY)
    for jobs in (1, 2):
        with pytest.raises(CovsegError, match="was split from other images"):
            experiment.cross_validate(config, more, data, out, 3, False, jobs=jobs)
    with pytest.raises(CovsegError, match="was split from other images"):
        seed_fold = out / "seeds" / "seed-0" / "fold-0"
        _begun_fold(experiment._fold_config(config, 0, 3), samples, data, seed_fold)
        experiment.cross_validate_seeds(config, more, data, out / "seeds", 3, [0, 1], False, jobs=2)
    # compare (and any reuse through train_or_resume) tells the same, naming --force
    begun = tmp_path / "cmp" / "unet"
    _begun_fold(experiment._fold_config(config, 0, 3), samples, data, begun)
    with pytest.raises(CovsegError, match="was split from other images.*pass --force to retrain it"):
        experiment._check_reusable(begun, experiment._fold_config(config, 0, 3), more, data)
