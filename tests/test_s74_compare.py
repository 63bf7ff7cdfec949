"""Session 74's review of `covseg compare` and `covseg cv-compare`: comparison.md says each network's depth, width
and parameters (SegNet under the default recipe runs at the U-Net's depth 4, the published VGG16-based SegNet has 5
encoder stages); a model named twice is refused by the library before anything trains; cv-compare's figures checked
by hand."""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from covseg import experiment
from covseg.config import apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.paired import compute_fold_difference, format_comparison, Comparison
from covseg.run import parameter_count

from conftest import TINY_OVERRIDES


def _fake_metrics() -> dict:
    return {"images_with_class": {"background": 4, "infection": 4}, "n_images": 4,
            "per_image": {"dice": {"infection": 0.5, "mean_foreground": 0.5}, "iou": {"mean_foreground": 0.4}},
            "pixel_accuracy": 0.9, "mean_class_accuracy": 0.8, "infnet": {"meanDic": 0.45}}


def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand-ins for training, scoring and the figure; returns the names of the models 'trained', in order."""
    trained: list[str] = []

    def train(cfg, *args, **kwargs) -> float:
        trained.append(cfg.model.name)
        return 1.0

    monkeypatch.setattr(experiment, "train_or_resume", train)
    monkeypatch.setattr(experiment, "evaluate_run", lambda run, *args, **kwargs: (_fake_metrics(), run))
    monkeypatch.setattr(experiment, "plot_comparison", lambda *args, **kwargs: None)
    return trained


def _tiny_config(*extra: str):
    return experiment._fold_config(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, *extra]), 0, 3)


def test_comparison_states_each_networks_depth_width_and_parameters(tiny_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _no_training(monkeypatch)
    config = _tiny_config("model.depth=2", "model.width=4")
    data = str(tiny_data)
    out = tmp_path / "cmp"
    experiment.compare_models(["segnet", "unet"], config, load_dataset(data, "binary", split="train"), data, out,
                              progress=False, log=lambda message: None)
    lines = (out / "comparison.md").read_text(encoding="utf-8").splitlines()
    sizes = {m: sum(p.numel() for p in experiment.build_model(replace(config, model=replace(config.model, name=m)))
                    .parameters()) for m in ("unet", "segnet")}
    assert sizes["unet"] != sizes["segnet"]
    rows = ["| depth (encoder stages) | 2 | 2 |", "| width (first-stage channels) | 4 | 4 |",
            f"| parameters | {parameter_count(sizes['segnet'])} | {parameter_count(sizes['unet'])} |"]
    start = lines.index(rows[0])
    assert lines[start:start + 3] == rows  # together, in the order of --models
    networks = json.loads((out / "comparison.json").read_text(encoding="utf-8"))["networks"]
    assert networks == {"segnet": {"depth": 2, "width": 4, "parameters": sizes["segnet"]},
                        "unet": {"depth": 2, "width": 4, "parameters": sizes["unet"]}}


def test_network_rows_tell_each_models_own_depth_and_width() -> None:
    unet = _tiny_config("model.name=unet", "model.depth=2", "model.width=4")
    segnet = _tiny_config("model.name=segnet", "model.depth=3", "model.width=8")
    rows = experiment._network_rows({"unet": unet, "segnet": segnet}, {"unet": 850, "segnet": 12_345})
    assert rows == ["| depth (encoder stages) | 2 | 3 |", "| width (first-stage channels) | 4 | 8 |",
                    "| parameters | 850 | 12.3k |"]


def test_a_model_named_twice_is_refused_before_anything_trains(tiny_data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    trained = _no_training(monkeypatch)
    data = str(tiny_data)
    out = tmp_path / "cmp"
    with pytest.raises(CovsegError, match=r"models name unet more than once \(unet segnet unet\); name each model "
                                          "once"):
        experiment.compare_models(["unet", "segnet", "unet"], _tiny_config(), load_dataset(data, "binary",
                                  split="train"), data, out, progress=False, log=lambda message: None)
    assert trained == [] and not out.exists()


def test_cv_compare_figures_by_hand() -> None:
    """Two folds' Δ, images up and the summary row's mean ± sample std, against values worked out by hand."""
    fold0 = compute_fold_difference({"a": 0.5, "b": 0.7, "c": 0.2}, {"a": 0.6, "b": 0.65, "c": 0.2}, "fold-0",
                                    "dice_infection")
    fold1 = compute_fold_difference({"d": 0.4, "e": 0.8}, {"d": 0.7, "e": 0.9}, "fold-1", "dice_infection")
    # fold-0: Δ = (0.1 - 0.05 + 0) / 3 = 0.016667, 1 up, 1 down, 1 tie; fold-1: Δ = (0.3 + 0.1) / 2 = 0.2, 2 up
    assert fold0.difference == pytest.approx(0.05 / 3) and (fold0.images_up, fold0.images_down) == (1, 1)
    assert fold1.difference == pytest.approx(0.2) and (fold1.images_up, fold1.images_down) == (2, 0)
    text = format_comparison(Comparison([fold0, fold1], [], [], [], True), "REF", "NEW")
    mean = (0.05 / 3 + 0.2) / 2  # 0.108333
    std = abs(0.2 - 0.05 / 3) / 2 ** 0.5  # two values: |a - b| / sqrt(2) = 0.129636
    assert std == pytest.approx(statistics.stdev([0.05 / 3, 0.2]))
    assert "| fold-0 | 0.4667 | 0.4833 | +0.0167 | 1 of 3 |" in text
    assert f"| 2 folds | 0.5333 | 0.6417 | **+{mean:.4f} ± {std:.4f}** | 2 of 2 folds up |" in text
    assert "**+0.1083 ± 0.1296**" in text


def test_a_model_takes_its_own_depth(tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SegNet at depth 3 beside a depth-2 U-Net: its run trains at 3, the U-Net's at 2, and the table says so."""
    depths: dict[str, int] = {}
    _no_training(monkeypatch)
    monkeypatch.setattr(experiment, "train_or_resume",
                        lambda cfg, *args, **kwargs: depths.setdefault(cfg.model.name, cfg.model.depth) and 1.0)
    data = str(tiny_data)
    out = tmp_path / "cmp"
    experiment.compare_models(["unet", "segnet"], _tiny_config("model.depth=2"), load_dataset(data, "binary",
                              split="train"), data, out, progress=False, log=lambda message: None,
                              model_overrides={"segnet": ["model.depth=3"]})
    assert depths == {"unet": 2, "segnet": 3}
    assert "| depth (encoder stages) | 2 | 3 |" in (out / "comparison.md").read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("overrides, message", [
    ({"vgg": ["model.depth=3"]}, r"settings given for vgg \(model.depth=3\), which is not among the models compared "
                                 r"\(unet segnet\)"),
    ({"segnet": ["train.lr=0.1"]}, r"segnet's own setting train.lr=0.1: a model takes only model.\* settings"),
    ({"segnet": ["model.name=unet"]}, r"segnet's own setting model.name=unet: a model takes only model.\* settings"),
    ({"segnet": ["model.depth=9"]}, r"--models segnet with model.depth=9"),
])
def test_a_models_own_settings_are_refused_before_anything_trains(overrides: dict, message: str, tiny_data: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    trained = _no_training(monkeypatch)
    data = str(tiny_data)
    with pytest.raises(CovsegError, match=message):
        experiment.compare_models(["unet", "segnet"], _tiny_config(), load_dataset(data, "binary", split="train"),
                                  data, tmp_path / "cmp", progress=False, log=lambda message: None,
                                  model_overrides=overrides)
    assert trained == [] and not (tmp_path / "cmp").exists()


def test_the_command_line_gives_one_model_its_own_settings(monkeypatch: pytest.MonkeyPatch, tiny_data,
                                                            tmp_path) -> None:
    # NAME:KEY=VALUE reaches compare_models as that model's own settings; a KEY=VALUE among the names is refused
    import covseg.experiment
    from covseg.cli import main
    from conftest import TINY_OVERRIDES

    seen = {}
    monkeypatch.setattr(covseg.experiment, "compare_models",
                        lambda models, *args, model_overrides=None, **kwargs: seen.update(
                            models=models, own=model_overrides) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["compare", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(tmp_path / "c"), "--quiet",
              *TINY_OVERRIDES, "--models", "unet", "segnet:model.depth=3:model.width=8"])
    assert seen == {"models": ["unet", "segnet"], "own": {"segnet": ["model.depth=3", "model.width=8"]}}


@pytest.mark.parametrize("token", ["segnet:", "segnet::model.depth=3"])
def test_an_empty_setting_after_a_colon_is_told_so(token: str, tiny_data, tmp_path, capsys) -> None:
    from covseg.cli import main

    assert main(["compare", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(tmp_path / "c"), "--quiet",
                 "--models", "unet", token]) == 2
    assert capsys.readouterr().err == (f"covseg: error: --models {token}: an empty setting after ':'; give "
                                       "NAME:KEY=VALUE, e.g. segnet:model.depth=5\n")
    assert not (tmp_path / "c").exists()
