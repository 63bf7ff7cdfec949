"""Recipes, overrides and deterministic splits."""
from __future__ import annotations

import pytest

from covseg.config import apply_overrides, available_recipes, load_recipe
from covseg.errors import CovsegError
from covseg.splits import kfold, make_split

NAMES = [str(i) for i in range(50)]


def test_shipped_recipes_load() -> None:
    assert {"default", "seed", "segnet", "tiny"} <= set(available_recipes())
    seed = load_recipe("seed")
    assert (seed.model.name, seed.model.width, seed.data.input_size) == ("unet", 64, 512)
    assert (seed.train.loss, seed.train.optimizer, seed.train.lr, seed.train.epochs) == ("mfb_ce", "adam", 3e-5, 50)
    for name in available_recipes():
        cfg = load_recipe(name)
        assert cfg.data.input_size % 2 ** cfg.model.depth == 0


def test_overrides_and_their_errors(tmp_path) -> None:
    cfg = apply_overrides(load_recipe("default"), ["train.epochs=3", "train.augment.hflip=0", "model.name=segnet"])
    assert (cfg.train.epochs, cfg.train.augment.hflip, cfg.model.name) == (3, 0.0, "segnet")
    for bad, message in [("train.epoch=3", "unknown option 'epoch'"), ("epochs", "section.key=value"),
                         ("train.epochs=abc", "expected a number"), ("optim.lr=1", "no section 'optim'")]:
        with pytest.raises(CovsegError, match=message):
            apply_overrides(cfg, [bad])
    with pytest.raises(CovsegError, match="unknown recipe"):
        load_recipe("nope")
    path = tmp_path / "r.yaml"
    path.write_text("train: {lr: 0.5}\nmodel: {width: 8}\n")
    assert load_recipe(str(path)).train.lr == 0.5
    path.write_text("train: [1, 2\n")
    with pytest.raises(CovsegError, match="not valid YAML"):
        load_recipe(str(path))


def test_kfold_partitions_deterministically() -> None:
    folds = kfold(NAMES, 5, seed=0)
    assert [len(f) for f in folds] == [10] * 5
    assert sorted(n for f in folds for n in f) == sorted(NAMES)
    assert folds == kfold(list(reversed(NAMES)), 5, seed=0)  # input order does not matter
    assert folds != kfold(NAMES, 5, seed=1)


@pytest.mark.parametrize("split, sizes", [("seed", (42, 8, 0)), ("paper", (36, 5, 9)), ("official", (45, 5, 0)),
                                          ("cv:2", (40, 10, 0))])
def test_named_splits(split: str, sizes: tuple[int, int, int]) -> None:
    s = make_split(NAMES, split)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == sizes
    parts = [set(s[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == set(NAMES)
    assert s == make_split(NAMES, split)


def test_bad_splits() -> None:
    for bad in ("cv", "cv:x", "random", "cv:7"):
        with pytest.raises(CovsegError):
            make_split(NAMES, bad)
    with pytest.raises(CovsegError, match="empty"):
        make_split([], "seed")
