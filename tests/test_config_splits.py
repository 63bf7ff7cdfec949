"""Recipes, overrides and deterministic splits."""
from __future__ import annotations

import numpy as np
import pytest

from covseg.config import ModelConfig, apply_overrides, available_recipes, config_to_dict, load_recipe
from covseg.errors import CovsegError
from covseg.run import _training_loss
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


def test_a_run_folder_named_like_a_recipe_does_not_hide_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()  # e.g. covseg train --recipe tiny -o tiny
    assert load_recipe("tiny").recipe == "tiny"
    (tmp_path / "mine.yaml").write_text("recipe: mine\ndata: {task: binary}\n")
    assert load_recipe("mine.yaml").recipe == "mine"  # a path is still read as one
    with pytest.raises(CovsegError, match="recipe file not found"):
        load_recipe("./tiny")


def test_overrides_and_their_errors(tmp_path) -> None:
    cfg = apply_overrides(load_recipe("default"), ["train.epochs=3", "train.augment.hflip=0", "model.name=segnet"])
    assert (cfg.train.epochs, cfg.train.augment.hflip, cfg.model.name) == (3, 0.0, "segnet")
    for bad, message in [("train.epoch=3", "unknown option 'epoch'"), ("epochs", "section.key=value"),
                         ("train.epochs=abc", "expected a number"), ("optim.lr=1", "no section 'optim'"),
                         ("train.augment.hflip=1.5", r"hflip is 1.5; it must be a probability in \[0, 1\]"),
                         ("train.augment.cutmix=2", r"cutmix is 2.0; it must be a probability in \[0, 1\]"),
                         ("train.augment.lesion_paste=-0.5",
                          r"lesion_paste is -0.5; it must be a probability in \[0, 1\]"),
                         ("train.augment.elastic=1", r"elastic is 1.0; it must be in \[0, 1\)"),
                         ("train.augment.rotate_deg=-5", "rotate_deg is -5.0; it must be >= 0"),
                         ("model.block=dense", "model.block is 'dense'; use one of plain, residual"),
                         ("model.block=residual", "only U-Net has other blocks; leave model.block at plain for segnet"),
                         ("model.norm=layer", "model.norm is 'layer'; use one of batch, instance, group"),
                         ("model.norm=instance", "only U-Net has other normalisations; leave model.norm at batch for segnet"),
                         ("model.dropout=1", r"model.dropout is 1.0; it must be a share in \[0, 1\)"),
                         ("model.dropout=0.2", "only U-Net has dropout; leave model.dropout at 0 for segnet"),
                         ("train.distill=[runs/a, runs/b]", r"train.distill: expected text, got a YAML list "
                                                             r"\(\['runs/a', 'runs/b'\]\); write it as plain text"),
                         ("data.split={cv: 0}", "data.split: expected text, got a YAML mapping"),
                         ("model.decoder_dropout=-0.1",
                          r"model.decoder_dropout is -0.1; it must be a share in \[0, 1\)"),
                         ("model.attention=true",
                          "only U-Net has attention gates; leave model.attention at false for segnet"),
                         ("model.decoder_dropout=0.2",
                          "only U-Net has dropout; leave model.decoder_dropout at 0 for segnet"),
                         ("train.tversky_beta=1", r"tversky_beta is 1.0; it must lie in \(0, 1\)"),
                         ("train.lovasz_weight=-1", "train.lovasz_weight is -1.0; it must be >= 0"),
                         ("train.lovasz_weight=true", "train.lovasz_weight: expected a number, got true"),
                         ("train.ce_topk=0", r"train.ce_topk is 0.0; it must lie in \(0, 1\]"),
                         ("train.ce_topk=1.5", r"train.ce_topk is 1.5; it must lie in \(0, 1\]"),
                         ("train.focal_gamma=-1", r"train.focal_gamma is -1.0; it must be >= 0"),
                         ("train.focal_gamma=inf", r"train.focal_gamma is inf; it must be >= 0"),
                         ("train.mixup_alpha=-0.2", r"train.mixup_alpha is -0.2; it must be >= 0"),
                         ("train.mixup_alpha=nan", r"train.mixup_alpha is nan; it must be >= 0"),
                         ("train.label_smoothing=1", r"train.label_smoothing is 1.0; it must lie in \[0, 1\)"),
                         ("train.label_smoothing=-0.1", r"train.label_smoothing is -0.1; it must lie in \[0, 1\)"),
                         ("train.label_smoothing=nan", r"train.label_smoothing is nan; it must lie in \[0, 1\)"),
                         ("train.epochs=false", "train.epochs: expected a number, got false"),
                         ("train.tversky_lesion_only=true", "tversky_lesion_only is for the multiclass task")]:
        with pytest.raises(CovsegError, match=message):
            apply_overrides(cfg, [bad])
    assert apply_overrides(load_recipe("default"), ["model.block=residual"]).model.block == "residual"
    # mixup blends the images of a batch with each other: a batch of one would leave it silently off
    with pytest.raises(CovsegError, match=r"train.mixup_alpha mixes the images of a batch with each other, and "
                                          r"train.batch_size is 1; set train.batch_size to 2 or more"):
        apply_overrides(load_recipe("default"), ["train.mixup_alpha=0.2", "train.batch_size=1"])
    assert apply_overrides(load_recipe("default"), ["train.mixup_alpha=0.2", "train.batch_size=2"]).train.batch_size == 2
    assert apply_overrides(load_recipe("default"), ["train.batch_size=1"]).train.mixup_alpha == 0.0
    assert apply_overrides(load_recipe("default"), ["model.norm=instance"]).model.norm == "instance"
    assert apply_overrides(load_recipe("default"), ["model.dropout=0.3"]).model.dropout == 0.3
    assert apply_overrides(load_recipe("default"), ["model.decoder_dropout=0.3"]).model.decoder_dropout == 0.3
    assert apply_overrides(load_recipe("default"), ["model.attention=true"]).model.attention is True
    assert apply_overrides(load_recipe("default"), ["train.augment.crop=256"]).train.augment.crop == 256
    assert apply_overrides(load_recipe("default"), ["train.distill='runs/a, runs/b'"]).train.distill == "runs/a, runs/b"
    # a text option keeps the text as typed where YAML would read a number or a truth value
    typed = apply_overrides(load_recipe("default"), ["train.init=06", "train.distill=1.10", "data.pseudo_labels=on"])
    assert (typed.train.init, typed.train.distill, typed.data.pseudo_labels) == ("06", "1.10", "on")
    assert apply_overrides(load_recipe("default"), ["train.init=null"]).train.init == ""  # unset, as before
    assert apply_overrides(load_recipe("default"), ["train.augment.crop=320", "train.progressive_size=0",
                                                    "train.progressive_fraction=0"]).train.augment.crop == 320
    # a saved config with a crop above the progressive size (trained before covseg refused one) still loads
    assert apply_overrides(load_recipe("default"), ["train.augment.crop=320"]).train.augment.crop == 320
    tversky = apply_overrides(load_recipe("default"), ["train.tversky_beta=0.7"]).train
    assert _training_loss(tversky, np.ones(3)).dice.fn_weight == 0.7
    assert _training_loss(load_recipe("default", task="multiclass").train, np.ones(4)).dice.fn_weight == 0.5
    multiclass = load_recipe("default", task="multiclass")
    with pytest.raises(CovsegError, match="tversky_lesion_only .* Dice term; set train.lesion_dice=true and a "
                                          "train.tversky_beta other than 0.5, e.g. 0.7$"):
        apply_overrides(multiclass, ["train.tversky_lesion_only=true"])
    with pytest.raises(CovsegError, match="Dice term; set train.lesion_dice=true$"):
        apply_overrides(multiclass, ["train.tversky_lesion_only=true", "train.tversky_beta=0.7"])
    with pytest.raises(CovsegError, match="Dice term; set a train.tversky_beta other than 0.5, e.g. 0.7$"):
        apply_overrides(multiclass, ["train.tversky_lesion_only=true", "train.lesion_dice=true"])
    lesion_only = apply_overrides(load_recipe("default", task="multiclass"), [
        "train.lesion_dice=true", "train.tversky_beta=0.7", "train.tversky_lesion_only=true"]).train
    dice_term = _training_loss(lesion_only, np.ones(3)).dice
    assert (dice_term.lesion_region, dice_term.fn_weight, dice_term.fn_weight_lesion_only) == (True, 0.7, True)
    lovasz = apply_overrides(load_recipe("default"), ["train.lovasz_weight=0.5"]).train
    assert _training_loss(lovasz, np.ones(2)).lovasz_weight == 0.5
    topk = apply_overrides(load_recipe("default"), ["train.ce_topk=0.1"]).train
    assert _training_loss(topk, np.ones(2)).ce.topk == 0.1
    focal = apply_overrides(load_recipe("default"), ["train.focal_gamma=2"]).train
    assert _training_loss(focal, np.ones(2)).ce.focal_gamma == 2.0
    smoothed = apply_overrides(load_recipe("default"), ["train.label_smoothing=0.1"]).train
    assert _training_loss(smoothed, np.ones(2)).ce.label_smoothing == 0.1
    assert _training_loss(load_recipe("default").train, np.ones(2)).ce.label_smoothing == 0.0
    with pytest.raises(CovsegError, match="unknown recipe"):
        load_recipe("nope")
    path = tmp_path / "r.yaml"
    path.write_text("train: {lr: 0.5}\nmodel: {width: 8}\n")
    assert load_recipe(str(path)).train.lr == 0.5
    path.write_text("train: [1, 2\n")
    with pytest.raises(CovsegError, match="not valid YAML"):
        load_recipe(str(path))


def test_per_task_settings_merge_over_the_shared_ones(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("data: {input_size: 64}\ntrain: {lr: 0.5, augment: {hflip: 0.5, rotate_deg: 15}}\n"
                    "tasks:\n  binary: {train: {augment: {rotate_deg: 5}}}\n  multiclass: {model: {width: 8}}\n")
    binary, multiclass = load_recipe(str(path), task="binary"), load_recipe(str(path), task="multiclass")
    assert (binary.data.task, binary.train.augment.rotate_deg, binary.train.augment.hflip) == ("binary", 5, 0.5)
    assert (binary.train.lr, binary.model.width) == (0.5, ModelConfig().width)
    assert (multiclass.data.task, multiclass.train.augment.rotate_deg, multiclass.model.width) == ("multiclass", 15, 8)
    assert load_recipe(str(path)).train.augment.rotate_deg == 5  # no task given: the recipe's data.task, binary
    # the shipped default: both tasks take the milder rotation and zoom (multiclass since session 36); binary its own lr
    default_binary, default_multiclass = load_recipe("default", task="binary"), load_recipe("default", task="multiclass")
    assert default_binary.train.augment.rotate_deg == default_multiclass.train.augment.rotate_deg == 5
    assert default_binary.train.augment.scale == default_multiclass.train.augment.scale == 0.05
    assert default_binary.train.lr < default_multiclass.train.lr
    assert default_binary.data.normalize == default_multiclass.data.normalize == "percentile"
    # progressive resizing, chosen by CV for both tasks (docs/recipes.md, sessions 19 and 20)
    assert (default_binary.train.progressive_size, default_binary.train.progressive_epochs()) == (256, 80)
    assert (default_multiclass.train.progressive_size, default_multiclass.train.progressive_epochs()) == (256, 80)
    # one architecture but the norm: multiclass takes instance norm (docs/recipes.md, session 25), binary batch norm
    assert (default_binary.model.norm, default_multiclass.model.norm) == ("batch", "instance")
    assert {**config_to_dict(default_binary)["model"], "norm": "instance"} == config_to_dict(default_multiclass)["model"]
    # binary learns at 1e-3 (docs/recipes.md, session 34), multiclass at the shared 2e-3
    assert (default_binary.train.lr, default_multiclass.train.lr) == (1e-3, 2e-3)
    # and batch 4 for both (docs/recipes.md, session 28)
    assert (default_binary.train.batch_size, default_multiclass.train.batch_size) == (4, 4)
    # binary's Dice term leans towards recall, a Tversky index (docs/recipes.md, session 40); multiclass keeps Dice
    assert (default_binary.train.tversky_beta, default_multiclass.train.tversky_beta) == (0.7, 0.5)
    for text, message in [("tasks: {ternary: {}}\n", "tasks: unknown task 'ternary'.*; known: binary, multiclass$"),
                          ("tasks: [1]\n", "tasks must map"),
                          ("tasks: {binary: {train: {lr: abc}}}\n", "expected a number")]:
        path.write_text(text)
        with pytest.raises(CovsegError, match=message):
            load_recipe(str(path), task="binary")
    with pytest.raises(CovsegError, match="task 'ternary' is not one of"):
        load_recipe("default", task="ternary")


def test_cli_picks_the_task_settings_from_task_or_an_override() -> None:
    from covseg.cli import _recipe_config, build_parser

    parser = build_parser()
    for argv, task in [(["train", "--task", "multiclass"], "multiclass"), (["train"], "binary"),
                       (["train", "data.task=multiclass"], "multiclass"),
                       (["train", "--task", "binary", "data.task=binary"], "binary")]:
        config = _recipe_config(parser.parse_args(argv))
        assert config.data.task == task
        assert config.train.augment.rotate_deg == load_recipe("default", task=task).train.augment.rotate_deg
    with pytest.raises(CovsegError, match="--task binary and data.task=multiclass contradict each other"):
        _recipe_config(parser.parse_args(["train", "--task", "binary", "data.task=multiclass"]))
    config = _recipe_config(parser.parse_args(["train", "--task", "binary", "train.augment.rotate_deg=30"]))
    assert config.train.augment.rotate_deg == 30  # command-line overrides win over the recipe's per-task settings


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


def test_a_recipe_that_is_not_utf8_is_refused_in_one_line(tmp_path) -> None:
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes("# Lovász term, réglage\ntrain:\n  epochs: 3\n".encode("latin-1"))
    with pytest.raises(CovsegError, match="not UTF-8 text .*save the recipe as UTF-8"):
        load_recipe(str(recipe))


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_a_window_level_that_is_not_finite_is_refused(value: str) -> None:
    with pytest.raises(CovsegError, match="data.window_level is .*it must be a finite HU value"):
        apply_overrides(load_recipe("default"), [f"data.window_level={value}"])


@pytest.mark.parametrize("key", ["train.init", "train.distill", "data.pseudo_labels"])
def test_a_null_path_option_means_unset_not_the_text_none(key: str, tmp_path) -> None:
    section, name = key.split(".")
    assert getattr(getattr(apply_overrides(load_recipe("tiny"), [f"{key}=null"]), section), name) == ""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{section}:\n  {name}:\n", encoding="utf-8")
    assert getattr(getattr(load_recipe(str(recipe)), section), name) == ""


def test_an_input_size_the_model_depth_cannot_divide_is_refused_with_the_config() -> None:
    """data.input_size is checked against 2**depth when a config is read (a recipe, overrides, an ONNX file's
    metadata), in the words training's own size check used, not first by the network."""
    with pytest.raises(CovsegError, match=r"^override: data.input_size is 350; unet with depth 4 needs height and "
                                          r"width divisible by 16, got 350x350; use a multiple of 16, such as 352$"):
        apply_overrides(load_recipe("default"), ["data.input_size=350"])
    assert apply_overrides(load_recipe("default"), ["data.input_size=336"]).data.input_size == 336


def test_a_segnet_deeper_than_vgg16_is_refused_for_its_depth_before_any_size() -> None:
    from covseg.models.segnet import VGG16_BLOCKS

    # 352 is no multiple of 2**6, and 64 is below 2 x 2**6: the depth is what is wrong, and what is named
    for size in (352, 64):
        with pytest.raises(CovsegError, match=rf"^override: model.depth is 6; segnet has at most {len(VGG16_BLOCKS)} "
                                              rf"stages, so it must be 1\.\.{len(VGG16_BLOCKS)}$"):
            apply_overrides(load_recipe("segnet"), ["model.depth=6", f"data.input_size={size}"])
    assert apply_overrides(load_recipe("segnet"), ["model.depth=5", "data.input_size=352"]).model.depth == 5


@pytest.mark.parametrize("text, message", [
    ("train: {lr: 0.01, batch_size: 4}\nmodel: {width: 8}\ntrain: {epochs: 3}\n",
     "line 3: key 'train' appears twice; merge the two sections"),
    ("tasks:\n  binary:\n    train: {lr: 0.01}\n  multiclass:\n    train: {lr: 0.02}\n"
     "  binary:\n    model: {width: 8}\n",
     "line 6: key 'binary' appears twice; merge the two sections"),
    ("train:\n  lr: 0.01\n  epochs: 3\n  lr: 0.02\n", "line 4: key 'lr' appears twice; keep one of them"),
    ("train: {lr: 0.01, lr: 0.02}\n", "line 1: key 'lr' appears twice; keep one of them"),
])
def test_a_key_named_twice_in_a_recipe_is_refused_in_one_line(text: str, message: str, tmp_path) -> None:
    # before: yaml.safe_load kept the last, so the first train section's lr and batch_size were dropped unsaid
    recipe = tmp_path / "twice.yaml"
    recipe.write_text(text, encoding="utf-8")
    with pytest.raises(CovsegError, match=f"^{recipe}: {message}$"):
        load_recipe(str(recipe))


def test_yaml_merge_keys_and_a_key_repeated_in_separate_sections_still_load(tmp_path) -> None:
    recipe = tmp_path / "merge.yaml"
    recipe.write_text("model: {width: 8}\ntrain: {lr: 0.01, epochs: 3}\ntasks:\n  binary: {train: {lr: 0.02}}\n"
                      "  multiclass: {train: {lr: 0.03}}\n", encoding="utf-8")
    assert load_recipe(str(recipe)).train.lr == 0.02 and load_recipe(str(recipe), "multiclass").train.lr == 0.03
    # a YAML merge key's values give way to the mapping's own, as YAML says: not a key named twice
    recipe.write_text("train:\n  <<: {epochs: 3, lr: 0.5}\n  lr: 0.02\n", encoding="utf-8")
    assert (load_recipe(str(recipe)).train.epochs, load_recipe(str(recipe)).train.lr) == (3, 0.02)


def test_kfold_fold_count_bounds_and_sorted_folds() -> None:
    # 2..len(names) folds: one fold would leave nothing to train on; as many folds as images is leave-one-out
    for bad in (1, 51):
        with pytest.raises(CovsegError, match="cannot make"):
            kfold(NAMES, bad)
    assert sorted(kfold(["c", "a", "b"], 3)) == [["a"], ["b"], ["c"]]
    # every fold, and every list of a split, is sorted by name (split.json reads the same on every machine)
    for fold in kfold(NAMES, 5, seed=3):
        assert fold == sorted(fold)
    for split in ("cv:1", "official", "seed", "paper"):
        s = make_split(NAMES, split, seed=3)
        assert all(s[key] == sorted(s[key]) for key in ("train", "val", "test"))


def test_a_cv_fold_number_equal_to_the_fold_count_is_refused() -> None:
    # folds 0..4 exist for folds=5: cv:5 is one past the last, a CovsegError, not an IndexError
    with pytest.raises(CovsegError, match=r"fold must be 0\.\.4"):
        make_split(NAMES, "cv:5", folds=5)
    assert make_split(NAMES, "cv:4", folds=5)["val"] == kfold(NAMES, 5)[4]


def test_split_sizes_round_to_the_nearest_image() -> None:
    # official, 19 images: 0.1 * 19 = 1.9 -> 2 validation images (not 1, as truncation gives)
    s = make_split([f"n{i}" for i in range(19)], "official")
    assert (len(s["train"]), len(s["val"])) == (17, 2)
    # paper, 7 images: boundaries 0.72 * 7 = 5.04 -> 5 and 0.82 * 7 = 5.74 -> 6: 5 / 1 / 1 (floor would give 5 / 0 / 2)
    s = make_split([f"n{i}" for i in range(7)], "paper")
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (5, 1, 1)


def test_named_splits_cut_one_seeded_order_in_their_documented_order() -> None:
    # kfold and the fraction splits cut the same seeded permutation of the sorted names: with 50 names, fold k is
    # positions 10k..10k+9; official's validation set is positions 0..4 (carved off first), seed's evaluation set
    # positions 42..49 (after 84 % train), paper's test set positions 41..49 (after 72 % train and 10 % val)
    folds = kfold(NAMES, 5, seed=2)
    assert set(make_split(NAMES, "official", seed=2)["val"]) <= set(folds[0])
    assert set(make_split(NAMES, "seed", seed=2)["val"]) <= set(folds[4])
    paper = make_split(NAMES, "paper", seed=2)
    assert set(paper["test"]) <= set(folds[4]) and set(paper["val"]) <= set(folds[3]) | set(folds[4])
    assert set(paper["train"]) <= set(folds[0]) | set(folds[1]) | set(folds[2]) | set(folds[3])


@pytest.mark.parametrize("depth", ["11", "20", "1100", "100000"])
def test_a_unet_too_deep_for_any_input_is_refused_for_its_depth(depth: str) -> None:
    # before: depth 20 advised "use a multiple of 1048576", depth 1100 raised OverflowError (step / 2 on 2**depth)
    with pytest.raises(CovsegError, match=rf"^override: model.depth is \d+; unet takes at most 10 \(its bottleneck "
                                          r"must keep 2 x 2 pixels of an input of at most 2048\); at data.input_size "
                                          r"352 use model.depth=5 or less$"):
        apply_overrides(load_recipe("default"), [f"model.depth={depth}"])


def test_a_depth_too_deep_for_the_input_size_names_the_deepest_that_fits() -> None:
    # before: depth 8 at 352 was refused as "use a multiple of 256, such as 256", which then fails the bottleneck
    with pytest.raises(CovsegError, match=r"^override: data.input_size is 352; a model of depth 8 needs at least 512 "
                                          r"\(2 x 2\*\*depth\), so that its bottleneck keeps 2 x 2 pixels; use a "
                                          r"data.input_size of at least 512 \(a multiple of 256\), or model.depth=5 "
                                          r"or less$"):
        apply_overrides(load_recipe("default"), ["model.depth=8"])
    deepest = ["model.depth=10", "data.input_size=2048", "train.progressive_size=0", "train.progressive_fraction=0"]
    assert apply_overrides(load_recipe("default"), deepest).model.depth == 10
    assert apply_overrides(load_recipe("default"), ["model.depth=5"]).model.depth == 5


@pytest.mark.parametrize("size", ["4096", "1e300", "2049"])
def test_an_input_size_larger_than_any_ct_slice_is_refused_in_one_line(size: str) -> None:
    # before: 1e300 reached torch (C++ backtrace) and 4096 got the process killed for memory
    with pytest.raises(CovsegError, match=r"^override: data.input_size is \S+, larger than covseg takes \(at most 2048: "
                                          r"the largest CT slices are 512 to 1024 pixels wide; the recipes use 64 to "
                                          r"512\); use a smaller size, e.g. 352 or 512$"):
        apply_overrides(load_recipe("default"), [f"data.input_size={size}"])
    assert apply_overrides(load_recipe("default"), ["data.input_size=2048"]).data.input_size == 2048
