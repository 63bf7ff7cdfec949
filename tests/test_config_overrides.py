"""Command-line overrides and config checks: whole sections, decimal numbers, crops and normalisation options."""
from __future__ import annotations

import dataclasses
import re
from importlib import resources
from pathlib import Path

import pytest

from covseg.config import (ModelConfig, TrainConfig, apply_overrides, check_new_run, config_from_dict, config_to_dict,
                           load_recipe)
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES


@pytest.mark.parametrize("override, example", [("model={width: 8}", "model.width=8"),
                                               ("train.augment={hflip: 1}", "train.augment.hflip=1"),
                                               ("train={epochs: 3}", "train.epochs=3"),
                                               ("data=5", "data.task=binary")])
def test_a_whole_section_override_is_refused_not_reset_to_defaults(override: str, example: str) -> None:
    # before: model={width: 8} gave width 8 and every other model option its dataclass default (the recipe's lost)
    with pytest.raises(CovsegError, match=rf"^override '{override}': .* is a section, not an option; set its keys "
                                          rf"one by one, e.g. {example}$".replace("{", r"\{").replace("}", r"\}")):
        apply_overrides(load_recipe("default"), [override])
    assert apply_overrides(load_recipe("default"), ["model.width=8"]).model.depth == load_recipe("default").model.depth


@pytest.mark.parametrize("override, key, value", [("train.epochs=010", "epochs", 10), ("model.width=016", "width", 16),
                                                  ("train.epochs=3.0", "epochs", 3), ("train.lr=.5", "lr", 0.5),
                                                  ("train.lr=2e-3", "lr", 0.002), ("train.epochs=1e2", "epochs", 100),
                                                  ("train.epochs=+7", "epochs", 7)])
def test_number_overrides_are_read_as_decimal_numbers(override: str, key: str, value: float) -> None:
    config = apply_overrides(load_recipe("default"), [override])
    assert getattr(config.model if key == "width" else config.train, key) == value  # YAML 1.1: 010 was octal 8


@pytest.mark.parametrize("override, message", [("train.epochs=1:30", r"train.epochs: expected a number, got '1:30'"),
                                               ("train.lr=1:0", r"train.lr: expected a number, got '1:0'"),
                                               ("train.seed=0b101", r"train.seed: expected a number, got '0b101'"),
                                               ("train.batch_size=0x10", r"batch_size: expected a number, got '0x10'"),
                                               ("train.epochs=3.5", "train.epochs: expected a whole number"),
                                               ("train.epochs=abc", "train.epochs: expected a number, got 'abc'"),
                                               ("train.epochs=true", "train.epochs: expected a number, got true"),
                                               ("train.lr=.inf", "train.lr is inf; it must be a finite learning rate"),
                                               ("data.window_level=.nan", "data.window_level is nan; it must be a finite"),
                                               ("train.lr=-.inf", "train.lr is -inf; it must be a finite")])
def test_numbers_yaml_reads_in_another_base_are_refused(override: str, message: str) -> None:
    # before: 1:30 was 90 (base 60), 1:0 a learning rate of 60, 0b101 seed 5, 0x10 batch 16
    with pytest.raises(CovsegError, match=message):
        apply_overrides(load_recipe("default"), [override])


def test_a_crop_too_small_for_the_bottleneck_is_refused_for_a_new_run(tmp_path: Path) -> None:
    # before: accepted, and training crashed at its first step (instance norm on a 1 x 1 bottleneck)
    message = (r"^config: train.augment.crop is 4; a model of depth 2 needs at least 8 \(2 x 2\*\*depth\), so that its "
               r"bottleneck keeps 2 x 2 pixels$")
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "model.norm=instance", "train.augment.crop=4"])
    with pytest.raises(CovsegError, match=message):
        check_new_run(config)
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.augment.crop=8"]))
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.augment.crop=0"]))
    # a run saved with it by older covseg still loads (to evaluate, predict or export it)
    assert config_from_dict(config_to_dict(config)).train.augment.crop == 4


def test_batch_norm_false_is_refused_for_a_new_run_where_it_would_be_ignored_or_contradict_model_norm() -> None:
    with pytest.raises(CovsegError, match="^model.batch_norm is false, but only U-Net can leave out "
                                          "normalisation; leave model.batch_norm at true for segnet$"):
        check_new_run(apply_overrides(load_recipe("segnet"), ["model.batch_norm=false"]))
    with pytest.raises(CovsegError, match="^model.batch_norm is false \\(no normalisation\\) but model.norm "
                                          "is 'instance'; pick one: model.norm=instance with model.batch_norm=true, "
                                          "or model.batch_norm=false with model.norm=batch$"):
        check_new_run(apply_overrides(load_recipe("default", task="multiclass"), ["model.batch_norm=false"]))
    plain = apply_overrides(load_recipe("default"), ["model.batch_norm=false"])  # U-Net without normalisation
    check_new_run(plain)
    assert (plain.model.batch_norm, plain.model.norm) == (False, "batch")
    # a saved config of an older covseg still loads
    saved = config_to_dict(load_recipe("segnet"))
    saved["model"]["batch_norm"] = False
    assert config_from_dict(saved).model.batch_norm is False


def test_train_refuses_those_settings_before_writing_anything(tiny_data: Path, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(out), "--quiet",
                 *TINY_OVERRIDES, "model.norm=instance", "train.augment.crop=4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.augment.crop is 4" in err[0] and not out.exists()


def test_the_segnet_recipe_says_how_to_compare_under_todays_default_and_those_commands_work() -> None:
    from covseg.checkpoint import build_model
    from covseg.cli import _recipe_config, build_parser
    from covseg.experiment import _model_config

    header = [line for line in (resources.files("covseg") / "recipes" / "segnet.yaml").read_text().splitlines()
              if line.startswith("#")]
    assert not any("under the default recipe's training settings" in line for line in header)
    commands = [line.lstrip("# ").split("   (")[0].split() for line in header if line.lstrip("# ").startswith("covseg ")]
    assert len(commands) == 3
    parser = build_parser()
    for command in commands:
        for task in ("binary", "multiclass"):
            argv = [part.replace("binary", task) for part in command[1:]]
            if task == "multiclass":  # as the header says: SegNet takes model.norm=batch (its own, in compare)
                if "--models" in argv:
                    argv = [f"{part}:model.norm=batch" if part.split(":")[0] == "segnet" else part for part in argv]
                else:
                    argv.append("model.norm=batch")
            args = parser.parse_args(argv)
            config = _recipe_config(args)
            assert config.data.task == task and config.recipe == "default"
            for token in getattr(args, "models", None) or [config.model.name]:
                name, *own = token.split(":")
                build_model(_model_config(config, name, own))


@pytest.mark.parametrize("overrides, message, enabled_by", [
    (["data.val_fraction=0.5"], "data.val_fraction=0.5 only acts with data.split=official (data.split cv:0 here); "
                                "drop data.val_fraction or set data.split=official", ["data.split=official",
                                                                                      "data.folds=5"]),
    (["data.split=seed", "data.val_fraction=0"], "data.val_fraction=0 only acts with data.split=official "
                                                 "(data.split seed here)", ["data.split=official", "data.folds=5"]),
    (["train.momentum=0.99"], "train.momentum=0.99 only acts with train.optimizer=sgd (train.optimizer adamw here); "
                              "drop train.momentum or set train.optimizer=sgd", ["train.optimizer=sgd"]),
    (["train.optimizer=adam", "train.momentum=0"], "train.momentum=0 only acts with train.optimizer=sgd "
                                                   "(train.optimizer adam here)", ["train.optimizer=sgd"]),
    (["train.teacher_decay=0.9"], "train.teacher_decay=0.9 only acts with train.consistency (train.consistency 0 "
                                  "here); drop train.teacher_decay or set train.consistency", ["train.consistency=1"]),
    (["train.consistency_batch=8"], "train.consistency_batch=8 only acts with train.consistency",
     ["train.consistency=1"]),
    (["train.distill_weight=5"], "train.distill_weight=5 only acts with train.distill (train.distill empty here); "
                                 "drop train.distill_weight or set train.distill", ["train.distill=runs/teacher"]),
    (["train.distill_temperature=2"], "train.distill_temperature=2 only acts with train.distill",
     ["train.distill=runs/teacher"]),
    (["data.pseudo_ratio=0.5"], "data.pseudo_ratio=0.5 only acts with data.pseudo_labels (data.pseudo_labels empty "
                                "here); drop data.pseudo_ratio or set data.pseudo_labels", ["data.pseudo_labels=pl"]),
    # TINY_OVERRIDES' data.folds=3: official, seed and paper hold out their own images, whatever data.folds says
    (["data.split=official"], "data.folds=3 only acts with data.split=cv:K (data.split official here); drop "
                              "data.folds or set data.split=cv:K", ["data.split=cv:1"]),
    (["data.split=paper"], "data.folds=3 only acts with data.split=cv:K (data.split paper here)", ["data.split=cv:2"]),
])
def test_an_option_its_settings_never_read_is_refused_for_a_new_run(overrides: list[str], message: str,
                                                                    enabled_by: list[str]) -> None:
    # before: accepted, and the run trained exactly as without the option (rc 0, nothing said)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, *overrides])
    with pytest.raises(CovsegError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_new_run(config)
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, *overrides, *enabled_by]))
    # a run saved with it by older covseg still loads (to evaluate, predict, export or resume it)
    assert config_to_dict(config_from_dict(config_to_dict(config))) == config_to_dict(config)


def test_the_shipped_recipes_and_their_defaults_pass_the_new_run_checks() -> None:
    from covseg.config import TASKS, available_recipes

    for name in available_recipes():
        for task in TASKS:
            check_new_run(load_recipe(name, task=task))
            check_new_run(apply_overrides(load_recipe(name, task=task), ["data.split=cv:2"]))  # covseg cv's folds
    # options set to their defaults are not refused, whatever the settings they tune
    check_new_run(apply_overrides(load_recipe("default"), ["data.val_fraction=0.1", "train.momentum=0.9",
                                                           "train.teacher_decay=0.99", "train.consistency_batch=4",
                                                           "train.distill_weight=1", "data.pseudo_ratio=1"]))


def test_train_refuses_an_option_it_would_not_read_before_writing_anything(tiny_data: Path, tmp_path: Path,
                                                                           capsys) -> None:
    from covseg.cli import main

    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(out), "--quiet",
                 *TINY_OVERRIDES, "data.val_fraction=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["covseg: error: data.val_fraction=0.5 only acts with data.split=official (data.split cv:0 here); "
                   "drop data.val_fraction or set data.split=official"]
    assert not out.exists()


@pytest.mark.parametrize("override, section, key, value", [
    ("train.init=#pre", "train", "init", "#pre"),  # YAML: a comment, so "" (random weights)
    ("train.init=runs/a #1", "train", "init", "runs/a #1"),  # YAML: runs/a
    ("data.pseudo_labels=pl #2", "data", "pseudo_labels", "pl #2"),  # YAML: pl
    ("train.distill=runs/a,runs/b #3", "train", "distill", "runs/a,runs/b #3"),
    ("train.init=&anchor", "train", "init", "&anchor"),  # YAML: an anchor on an empty value, so ""
    ("train.init=|pre", "train", "init", "|pre"),  # YAML: a block scalar, refused as not a YAML value
    ("train.init=>pre", "train", "init", ">pre"),
    ("train.init=  runs/b  ", "train", "init", "runs/b"),  # stripped, as YAML did
    ("train.init=\"runs/my run\"", "train", "init", "runs/my run"),  # a quoted text is still unquoted
    ("train.init=~", "train", "init", ""),  # null and ~ unset the option, as before
    ("train.init=null", "train", "init", ""),
    ("train.init=", "train", "init", ""),
])
def test_a_text_override_is_the_text_as_typed_not_yaml(override: str, section: str, key: str, value: str) -> None:
    config = apply_overrides(load_recipe("tiny"), [override])
    assert getattr(getattr(config, section), key) == value


def test_a_text_option_with_a_choice_refuses_a_trailing_comment() -> None:
    # before: train.optimizer=sgd #x was read as sgd
    with pytest.raises(CovsegError, match=r"^override: train.optimizer is 'sgd #x'; use one of adam, adamw, sgd$"):
        apply_overrides(load_recipe("tiny"), ["train.optimizer=sgd #x"])


@pytest.mark.parametrize("degrees", ["1e308", "181", "360", "-1", "inf"])
def test_a_rotation_beyond_180_degrees_is_refused(degrees: str) -> None:
    # before: 1e308 was accepted, and its angle (1e308 * pi / 180 overflows) turned every training image into NaN
    with pytest.raises(CovsegError, match=r"^override: train.augment.rotate_deg is \S+; it must be >= 0 and <= 180 "
                                          r"\(degrees: 180 already reaches every angle\)$"):
        apply_overrides(load_recipe("tiny"), [f"train.augment.rotate_deg={degrees}"])
    for fine in ("0", "15", "180"):
        assert apply_overrides(load_recipe("tiny"), [f"train.augment.rotate_deg={fine}"]).train.augment.rotate_deg \
            == float(fine)


def test_progressive_resizing_of_no_epoch_is_refused_for_a_new_run() -> None:
    # before: floor(0.05 * 10) = 0 progressive epochs, and the run trained at data.input_size throughout, silently
    base = [*TINY_OVERRIDES, "train.epochs=10", "train.progressive_size=16"]
    config = apply_overrides(load_recipe("tiny"), [*base, "train.progressive_fraction=0.05"])
    assert config.train.progressive_epochs() == 0
    with pytest.raises(CovsegError, match=r"^train.progressive_fraction 0.05 of 10 epochs makes no progressive epoch; "
                                          r"raise train.progressive_fraction to at least 0.1, or set "
                                          r"train.progressive_size=0 train.progressive_fraction=0$"):
        check_new_run(config)
    one_epoch = apply_overrides(load_recipe("tiny"), [*base, "train.epochs=1", "train.progressive_fraction=0.5"])
    with pytest.raises(CovsegError, match=r"makes no progressive epoch; raise train.epochs, or set"):
        check_new_run(one_epoch)
    check_new_run(apply_overrides(load_recipe("tiny"), [*base, "train.progressive_fraction=0.1"]))  # 1 epoch
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=3", "train.progressive_size=16",
                                                        "train.progressive_fraction=0.334"]))  # the least for 3
    # a run saved with it by older covseg still loads (to evaluate, predict, export or resume it)
    assert config_to_dict(config_from_dict(config_to_dict(config))) == config_to_dict(config)


def test_distillation_weighted_zero_is_refused_for_a_new_run() -> None:
    # before: the teachers were loaded and run on every batch for a KL term weighted 0
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.distill=runs/teacher",
                                                   "train.distill_weight=0"])
    with pytest.raises(CovsegError, match=r"^train.distill is set but train.distill_weight is 0, .*; set "
                                          r"train.distill_weight > 0 or leave train.distill empty$"):
        check_new_run(config)
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.distill=runs/teacher",
                                                        "train.distill_weight=0.5"]))
    assert config_to_dict(config_from_dict(config_to_dict(config))) == config_to_dict(config)


def test_deep_supervision_at_depth_one_is_refused_for_a_new_run() -> None:
    # before: accepted, and the model built no aux head (no decoder level below the top), so it trained without any
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "model.depth=1", "model.deep_supervision=true"])
    with pytest.raises(CovsegError, match=r"^model.deep_supervision is true but model.depth is 1, which has no coarser "
                                          r"decoder level to supervise; set model.depth to 2 or more, or "
                                          r"model.deep_supervision=false$"):
        check_new_run(config)
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "model.depth=1"]))
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "model.deep_supervision=true"]))
    # a run saved with it by older covseg still loads (to evaluate, predict, export or resume it)
    assert config_to_dict(config_from_dict(config_to_dict(config))) == config_to_dict(config)


def test_a_learning_rate_past_float32_or_above_1_is_refused(tiny_data: Path, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    # before: 1e39 (finite in Python, inf in float32) passed, and the optimiser's first step raised a traceback
    with pytest.raises(CovsegError, match=r"train.lr is 1e\+39; it must be a finite learning rate in float32"):
        apply_overrides(load_recipe("tiny"), ["train.lr=1e39"])
    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(out), "--quiet",
                 *TINY_OVERRIDES, "train.lr=1e39"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr is 1e+39" in err[0] and not out.exists()
    # above 1 (config.MAX_LR): refused for a new run, while a saved run that holds one still loads
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.lr=2"])
    with pytest.raises(CovsegError, match=r"^train.lr is 2, above the largest learning rate a run takes \(1; "):
        check_new_run(config)
    assert config_from_dict(config_to_dict(config)).train.lr == 2
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.lr=1"]))


@pytest.mark.parametrize("width", ["1e30", "2048"])
def test_a_width_no_network_could_have_is_refused_in_one_line(width: str) -> None:
    # before: accepted, and building the network failed with a C++ backtrace
    with pytest.raises(CovsegError, match=r"^override: model.width is \d+, wider than covseg builds \(at most 1024; "):
        apply_overrides(load_recipe("tiny"), [f"model.width={width}"])
    assert apply_overrides(load_recipe("tiny"), ["model.width=1024"]).model.width == 1024


HUGE = "1" + "0" * 400  # a whole number past float's range (1e308)


@pytest.mark.parametrize("override", [f"train.epochs={HUGE}", f"model.width={HUGE}", f"train.lr={HUGE}",
                                      f"train.epochs={HUGE}0" + "0" * 4000])
def test_a_number_too_large_for_a_float_is_refused_in_one_line(override: str) -> None:
    # before: OverflowError (int too large to convert to float) with a traceback, or ValueError past 4300 digits
    with pytest.raises(CovsegError, match=r"(too large for any setting; use a value of sensible size, such as \S+|"
                                          r"a value YAML cannot read \(.*\); use a value of sensible size)$"):
        apply_overrides(load_recipe("tiny"), [override])


@pytest.mark.parametrize("digits", [400, 5000])
def test_a_recipe_with_a_number_too_large_for_a_float_is_refused_in_one_line(digits: int, tmp_path: Path) -> None:
    recipe = tmp_path / "huge.yaml"
    recipe.write_text("data: {input_size: 64}\ntrain:\n  epochs: 1" + "0" * digits + "\n")
    with pytest.raises(CovsegError, match=rf"^{recipe}(: train\.epochs: expected a number, got one past 1e308, too "
                                          r"large for any setting|: a value YAML cannot read \(.*\); fix the recipe)"):
        load_recipe(str(recipe))


@pytest.mark.parametrize("override", ["recipe=seed", "recipe=tiny", "epochs=3", "foo=1"])
def test_an_override_that_is_not_a_section_option_is_refused(override: str) -> None:
    # before: recipe=seed was accepted and only renamed the recorded recipe (its settings never used); the others
    # were refused with a list of "known" options that offered recipe
    key = override.partition("=")[0]
    advice = (r"recipe: set the recipe with --recipe; " if key == "recipe"
              else rf"'{key}' is not a section.option; ")
    with pytest.raises(CovsegError, match=rf"^override '{override}': {advice}overrides are data\.\*, model\.\* or "
                                          r"train\.\* options \(e\.g\. train\.epochs=3\)$"):
        apply_overrides(load_recipe("default"), [override])


@pytest.mark.parametrize("quoted", ['"multiclass"', "'multiclass'", ' "multiclass" '])
def test_a_quoted_task_override_picks_the_task_as_apply_overrides_reads_it(quoted: str) -> None:
    # before: the raw text reached load_recipe(task=...): "task '\"multiclass\"' is not one of binary, multiclass"
    import argparse

    from covseg.cli import _recipe_config

    args = argparse.Namespace(overrides=[f"data.task={quoted}"], recipe="default", task=None, split=None, epochs=None,
                              device=None, precision=None)
    assert _recipe_config(args).data.task == "multiclass"
    args.task = "multiclass"  # the flag and the quoted override say the same
    assert _recipe_config(args).data.task == "multiclass"


@pytest.mark.parametrize(("override", "message"), [
    ("model.name=foo", "model.name is 'foo'; use one of unet, segnet"),
    ("train.loss=foo", "train.loss is 'foo'; use one of ce, mfb_ce, dice, dice_ce, mfb_dice_ce"),
    ("data.split=bogus", "data.split: unknown split 'bogus': use official, cv:K"),
    ("data.split=cv:-1", "data.split: split 'cv:-1': write cv:K with a fold number K"),
    ("data.split=cv:5", "data.split is cv:5, but data.folds is 5; use cv:0 to cv:4, or more folds"),
])
def test_a_model_loss_or_split_name_is_checked_with_the_other_settings(override: str, message: str) -> None:
    # before: accepted here, and refused only once the training data had loaded
    with pytest.raises(CovsegError, match=re.escape(message)):
        apply_overrides(load_recipe("default"), [override])
    assert apply_overrides(load_recipe("default"), ["data.split=cv:4"]).data.split == "cv:4"


def test_the_configs_model_and_loss_names_are_the_registries() -> None:
    from covseg.config import _CHOICES
    from covseg.losses import LOSSES
    from covseg.models import MODELS
    from covseg.training import SAMPLINGS

    assert set(_CHOICES["model", "name"]) == set(MODELS) and set(_CHOICES["train", "loss"]) == set(LOSSES)
    assert set(_CHOICES["train", "sampling"]) == set(SAMPLINGS)
    from covseg.pretrain import INIT_PARTS
    assert set(_CHOICES["train", "init_parts"]) == set(INIT_PARTS)


def test_init_parts_takes_its_choices_and_needs_train_init() -> None:
    from covseg.config import check_new_run
    with pytest.raises(CovsegError, match="train.init_parts.*encoder"):
        apply_overrides(load_recipe("default"), ["train.init_parts=decoder"])
    config = apply_overrides(load_recipe("default"), ["train.init_parts=encoder"])
    with pytest.raises(CovsegError, match=r"^train.init_parts=encoder only acts with train.init \(empty here\)"):
        check_new_run(config)
    check_new_run(apply_overrides(load_recipe("default"), ["train.init_parts=encoder", "train.init=runs/x"]))
    check_new_run(apply_overrides(load_recipe("default"), ["train.init_parts=all"]))  # the default: nothing unread


def test_an_unknown_sampling_is_refused_with_the_choices() -> None:
    with pytest.raises(CovsegError, match="train.sampling.*class_balanced"):
        apply_overrides(load_recipe("default"), ["train.sampling=balanced"])
    assert apply_overrides(load_recipe("default"), ["train.sampling=class_balanced"]).train.sampling == "class_balanced"


def test_an_empty_recipe_section_leaves_its_settings_at_their_defaults(tmp_path: Path) -> None:
    # before: "expected a mapping, got None" for a `train:` line with nothing under it
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("data:\n  input_size: 64\nmodel:\ntrain:\n  augment:\n", encoding="utf-8")
    config = load_recipe(str(recipe))
    assert config.data.input_size == 64
    assert config.model == ModelConfig() and config.train == TrainConfig()


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("0", False), ("true", True), ("no", False)])
def test_a_switch_written_as_yaml_1_or_0_reads_as_the_text_1_or_0(tmp_path: Path, value: str, expected: bool) -> None:
    # before: `attention: 1` in a recipe was refused while the override model.attention=1 was taken
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"model:\n  attention: {value}\n", encoding="utf-8")
    assert load_recipe(str(recipe)).model.attention is expected
    assert apply_overrides(load_recipe("default"), [f"model.attention={value}"]).model.attention is expected


def test_a_switch_written_as_another_number_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model:\n  attention: 2\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=re.escape("model.attention: expected true/false, got 2")):
        load_recipe(str(recipe))


def test_a_fold_written_with_a_leading_zero_is_the_same_split() -> None:
    # cv:01 holds out cv:1's images; before, it was kept as typed, and pseudo-label folds and train.init (which
    # compare the names) refused it with a false reason
    assert apply_overrides(load_recipe("default"), ["data.split=cv:01"]).data.split == "cv:1"
    assert apply_overrides(load_recipe("default"), ["data.split=official"]).data.split == "official"


@pytest.mark.parametrize("text", ["", "# my recipe, to be written\n", "{}\n", "---\n"])
def test_a_recipe_file_with_no_settings_is_refused_not_trained_with_every_default(tmp_path: Path, text: str) -> None:
    # before: an empty or comment-only file started a full 50-epoch default-sized training (fuzz helper 168)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(text, encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"^{recipe}: holds no settings; give data/model/train sections \(or name a "
                                          r"built-in recipe, e\.g\. --recipe default\)$"):
        load_recipe(str(recipe))


def test_a_wrong_type_names_the_source_and_the_option_apart(tmp_path: Path, capsys) -> None:
    # before: "covseg: error: the tiny recipe with the options given.train.lr: expected a number, got 'abc'" and
    # "wt.yaml.train.epochs: ...", the option glued onto the source's words with a dot
    from covseg.cli import main

    assert main(["train", "--recipe", "tiny", "-o", str(tmp_path / "run"), "train.lr=abc"]) == 2
    assert capsys.readouterr().err == ("covseg: error: the tiny recipe with the options given: train.lr: expected a "
                                       "number, got 'abc'\n")
    recipe = tmp_path / "wt.yaml"
    recipe.write_text("train:\n  augment:\n    hflip: often\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"^{recipe}: train\.augment\.hflip: expected a number, got 'often'$"):
        load_recipe(str(recipe))
    assert not (tmp_path / "run").exists()


def test_a_mistyped_key_gets_the_close_match_suggested(tmp_path: Path) -> None:
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("data:\n  input_sise: 64\n", encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"^{recipe}: data: unknown option 'input_sise' \(did you mean "
                                          r"'input_size'\?\); known: task, "):
        load_recipe(str(recipe))
    for override, message in (("train.lrr=0.1", "unknown option 'lrr' (did you mean 'lr'?); known: loss, "),
                              ("train.augment.hfilp=0.5", "unknown option 'hfilp' (did you mean 'hflip'?); known: "),
                              ("trian.lr=0.1", "no section 'trian' (did you mean 'train'?); sections: data, model, "
                                               "train"),
                              ("train.augmnt.hflip=0.5", "no section 'augmnt' (did you mean 'augment'?); sections: "
                                                         "augment")):
        with pytest.raises(CovsegError, match="^" + re.escape(f"override {override!r}: {message}")):
            apply_overrides(load_recipe("tiny"), [override])
    with pytest.raises(CovsegError, match=r"unknown option 'zzz'; known: "):  # nothing close: no guess
        apply_overrides(load_recipe("tiny"), ["train.zzz=1"])
