"""Boundaries and messages of the config and split checks that the other config tests leave open (mutation testing
of covseg.config and covseg.splits): each test pins a value just on or just past a bound, by hand."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from covseg.config import apply_overrides, check_new_run, config_from_dict, load_recipe
from covseg.errors import CovsegError
from covseg.splits import load_split, make_split, parse_split_name

from conftest import TINY_OVERRIDES

NAMES = [str(i) for i in range(50)]


def _refused(overrides: list[str], message: str, recipe: str = "tiny") -> None:
    with pytest.raises(CovsegError, match="^" + re.escape(message)):
        apply_overrides(load_recipe(recipe), overrides)


# ---- progressive resizing ------------------------------------------------------------------------------------------

def test_progressive_epochs_round_before_the_floor() -> None:
    # 0.58 * 50 is 28.999999999999996 in floating point: 29 epochs, not 28
    config = apply_overrides(load_recipe("default"), ["train.epochs=50", "train.progressive_fraction=0.58"])
    assert config.train.progressive_epochs() == 29
    # the default recipe: floor(0.667 * 120) = floor(80.04) = 80
    assert load_recipe("default").train.progressive_epochs() == 80


def test_a_progressive_fraction_of_one_is_refused() -> None:
    _refused(["train.progressive_fraction=1"], "override: train.progressive_size is 256 and train.progressive_fraction "
             "is 1.0; set both, the fraction in (0, 1)", recipe="default")
    assert apply_overrides(load_recipe("default"), ["train.progressive_fraction=0.99"]).train.progressive_fraction \
        == 0.99


def test_a_progressive_size_equal_to_the_input_size_is_refused() -> None:
    _refused(["train.progressive_size=352"], "override: train.progressive_size is 352, not smaller than "
             "data.input_size 352; use a smaller size", recipe="default")
    assert apply_overrides(load_recipe("default"), ["train.progressive_size=336"]).train.progressive_size == 336


def test_a_progressive_size_the_depth_cannot_divide_or_too_small_for_the_bottleneck_is_refused() -> None:
    _refused(["train.progressive_size=250"], "override: train.progressive_size is 250; a model of depth 4 needs a "
             "multiple of 16, such as 240", recipe="default")
    _refused(["train.progressive_size=16"], "override: train.progressive_size is 16; a model of depth 4 needs at "
             "least 32 (2 x 2**depth), so that its bottleneck keeps 2 x 2 pixels", recipe="default")
    assert apply_overrides(load_recipe("default"), ["train.progressive_size=32"]).train.progressive_size == 32


def test_the_least_progressive_fraction_advised_is_rounded_up() -> None:
    # 3 epochs: floor(0.3 * 3) = 0 progressive epochs; 1 / 3 = 0.3333 must become 0.334 (0.333 * 3 still floors to 0)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=3", "train.progressive_size=16",
                                                   "train.progressive_fraction=0.3"])
    with pytest.raises(CovsegError, match=r"raise train.progressive_fraction to at least 0\.334, or set"):
        check_new_run(config)


def test_a_crop_equal_to_the_progressive_size_passes_the_new_run_checks() -> None:
    base = [*TINY_OVERRIDES, "train.epochs=10", "train.progressive_size=16", "train.progressive_fraction=0.5"]
    check_new_run(apply_overrides(load_recipe("tiny"), [*base, "train.augment.crop=16"]))
    with pytest.raises(CovsegError, match=r"^train.augment.crop is 20, larger than train.progressive_size 16"):
        check_new_run(apply_overrides(load_recipe("tiny"), [*base, "train.augment.crop=20"]))


# ---- augmentation and crop -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["hflip", "vflip", "cutmix", "lesion_paste", "lowres", "noise", "blur"])
def test_an_augment_probability_of_one_is_taken_and_above_one_refused(key: str) -> None:
    assert getattr(apply_overrides(load_recipe("tiny"), [f"train.augment.{key}=1"]).train.augment, key) == 1.0
    _refused([f"train.augment.{key}=1.5"], f"override: train.augment.{key} is 1.5; it must be a probability in [0, 1]")


def test_a_crop_equal_to_the_input_size_is_taken_and_one_below_the_step_names_the_step() -> None:
    assert apply_overrides(load_recipe("default"), ["train.augment.crop=352"]).train.augment.crop == 352
    _refused(["train.augment.crop=368"], "override: train.augment.crop is 368, larger than data.input_size 352",
             recipe="default")
    # 8 is no multiple of 16: the advice is 16 (the step), not 8 // 16 * 16 = 0
    _refused(["train.augment.crop=8"], "override: train.augment.crop is 8; a model of depth 4 needs a multiple of 16, "
             "such as 16", recipe="default")


# ---- override parsing ----------------------------------------------------------------------------------------------

def test_an_override_without_a_key_is_refused_for_its_form() -> None:
    _refused(["=3"], "override '=3' is not of the form section.key=value (e.g. train.epochs=3)")


def test_an_empty_number_override_is_refused_as_the_empty_text() -> None:
    _refused(["train.epochs="], "override: train.epochs: expected a number, got ''")


def test_a_text_override_with_an_unclosed_quote_after_a_space_is_refused_in_one_line() -> None:
    _refused(['train.init= "runs/a'], "override 'train.init= \"runs/a': not a YAML value; close its brackets or quotes")
    assert apply_overrides(load_recipe("tiny"), ['train.init= "runs/a b"']).train.init == "runs/a b"


# ---- bounds of single options --------------------------------------------------------------------------------------

def test_a_learning_rate_of_exactly_float32s_largest_number_still_loads() -> None:
    assert apply_overrides(load_recipe("tiny"), ["train.lr=3.4028234663852886e38"]).train.lr == 3.4028234663852886e38
    _refused(["train.lr=3.5e38"], "override: train.lr is 3.5e+38; it must be a finite learning rate in float32")


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "override: train.epochs must be positive and finite, got 0"),
    ("data.pseudo_ratio=0", "override: data.pseudo_ratio must be positive and finite, got 0.0"),
    ("train.momentum=1", "override: train.momentum is 1.0; it must be in [0, 1)"),
    ("train.threads=-1", "override: train.threads is -1; it must be "),
    ("train.seed=4294967296", "override: train.seed is 4294967296; it must be below 2**32 (4294967296), e.g. 0"),
    ("data.val_fraction=1", "override: data.val_fraction must be in [0, 1), got 1.0"),
    ("train.consistency_batch=1", "override: train.consistency 0.0, train.consistency_batch 1, train.teacher_decay "
                                  "0.99: need a weight >= 0, a batch >= 2 and a decay in [0, 1)"),
    ("train.teacher_decay=1", "override: train.consistency 0.0, train.consistency_batch 4, train.teacher_decay 1.0"),
    ("train.distill_temperature=0", "override: train.distill_temperature is 0.0; it must be > 0"),
    ("train.ema=1", "override: train.ema is 1.0; it must be a decay in [0, 1)"),
])
def test_a_value_on_an_open_bound_is_refused(override: str, message: str) -> None:
    _refused([override], message)


def test_the_largest_seeds_below_2_to_the_32_are_taken() -> None:
    config = apply_overrides(load_recipe("tiny"), ["train.seed=4294967295", "data.split_seed=2147483648"])
    assert (config.train.seed, config.data.split_seed) == (4294967295, 2147483648)


def test_the_most_threads_and_consistency_slices_are_taken_and_one_more_refused() -> None:
    config = apply_overrides(load_recipe("tiny"), ["train.threads=1024", "train.consistency=1",
                                                   "train.consistency_batch=256"])
    assert (config.train.threads, config.train.consistency_batch) == (1024, 256)
    _refused(["train.threads=1025"], "override: train.threads is 1025; it must be ")
    _refused(["train.consistency=1", "train.consistency_batch=257"], "override: train.consistency_batch is 257; at "
             "most 256 unlabelled slices join a step")


def test_consistency_does_not_combine_with_a_type_model() -> None:
    _refused(["train.consistency=1", "train.types_only=true"], "override: train.consistency does not combine with "
             "train.types_only; set one of them to 0 / false")


# ---- stochastic weight averaging -----------------------------------------------------------------------------------

def test_swa_over_every_epoch_is_refused_and_over_all_after_the_progressive_ones_taken() -> None:
    _refused(["train.epochs=10", "train.swa_epochs=10", "train.swa_lr=0.005"], "override: train.swa_epochs is 10 with "
             "train.epochs 10 (of which 0 at train.progressive_size)")
    # 10 epochs, floor(0.5 * 10) = 5 progressive: the last 5 may be averaged, not 6
    base = [*TINY_OVERRIDES, "train.epochs=10", "train.progressive_size=16", "train.progressive_fraction=0.5",
            "train.swa_lr=0.01"]
    assert apply_overrides(load_recipe("tiny"), [*base, "train.swa_epochs=5"]).train.swa_epochs == 5
    _refused([*base, "train.swa_epochs=6"], "override: train.swa_epochs is 6 with train.epochs 10 (of which 5 at "
             "train.progressive_size)")


def test_an_swa_rate_equal_to_the_learning_rate_is_taken() -> None:
    config = apply_overrides(load_recipe("tiny"), ["train.epochs=10", "train.swa_epochs=2", "train.swa_lr=0.01"])
    assert (config.train.swa_lr, config.train.lr) == (0.01, 0.01)
    _refused(["train.epochs=10", "train.swa_epochs=2", "train.swa_lr=0.02"], "override: train.swa_lr is 0.02; with "
             "train.swa_epochs set it must be a learning rate in (0, train.lr = 0.01]")


# ---- depth advice --------------------------------------------------------------------------------------------------

def test_the_deepest_fit_of_a_power_of_two_input_keeps_a_2x2_bottleneck() -> None:
    # 512 = 2 x 2**8: depth 8 is the deepest (depth 9 would leave 1 x 1)
    _refused(["data.input_size=512", "model.depth=10"], "override: data.input_size is 512; a model of depth 10 needs "
             "at least 2048 (2 x 2**depth), so that its bottleneck keeps 2 x 2 pixels; use a data.input_size of at "
             "least 2048 (a multiple of 1024), or model.depth=8 or less")


# ---- recipes -------------------------------------------------------------------------------------------------------

def test_a_recipes_own_task_picks_its_task_settings(tmp_path: Path) -> None:
    recipe = tmp_path / "mc.yaml"
    recipe.write_text("data: {task: multiclass, input_size: 64}\nmodel: {depth: 2}\n"
                      "tasks:\n  multiclass: {train: {epochs: 7}}\n  binary: {train: {epochs: 3}}\n", encoding="utf-8")
    config = load_recipe(str(recipe))
    assert (config.data.task, config.train.epochs) == ("multiclass", 7)
    config = load_recipe(str(recipe), task="binary")
    assert (config.data.task, config.train.epochs) == ("binary", 3)


def test_a_missing_yml_recipe_is_refused_as_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yml"
    with pytest.raises(CovsegError, match="^" + re.escape(f"{path}: recipe file not found; give a path to a YAML file")):
        load_recipe(str(path))


@pytest.mark.parametrize("text, value", [("yes", True), ("YES", True), ("true", True), ("1", True), ("no", False),
                                         ("0", False)])
def test_a_switch_given_as_text_reads_yes_and_no(text: str, value: bool) -> None:
    assert config_from_dict({"model": {"attention": text}}).model.attention is value


# ---- splits --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["cv:\u00b2", "cv:\u0661", "cv:1\u00b2"])
def test_a_cv_fold_in_other_digits_is_refused_in_one_line(split: str) -> None:
    # "²" and Arabic-Indic "١" are str.isdigit(); int() reads the second as 1 and fails on the first
    with pytest.raises(CovsegError, match="^" + re.escape(f"split {split!r}: write cv:K with a fold number K, e.g. cv:0")):
        parse_split_name(split)
    with pytest.raises(CovsegError, match="write cv:K with a fold number K"):
        make_split(NAMES, split)


@pytest.mark.parametrize("split", ["official:3", "seed:0", "paper:1"])
def test_a_fold_number_on_a_split_without_folds_is_refused(split: str) -> None:
    with pytest.raises(CovsegError, match="^" + re.escape(f"unknown split {split!r}: use official, cv:K")):
        parse_split_name(split)


def test_duplicate_sample_names_are_refused() -> None:
    with pytest.raises(CovsegError, match="^sample names are not unique; give every image a distinct file name$"):
        make_split(["a", "b", "a", "c"], "seed")


def test_a_split_file_without_a_validation_list_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a", "b"], "test": []}), encoding="utf-8")
    with pytest.raises(CovsegError, match=r"a damaged split \(no 'val' list of image names\)"):
        load_split(path)
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}), encoding="utf-8")
    assert load_split(path) == {"train": ["a", "b"], "val": ["c"], "test": []}
