"""Second round of mutation testing of covseg.config, and of `covseg predict`'s input checks (covseg.cli._cmd_predict):
each test pins a bound, a refusal or a reported value that no other test held, with the expected values by hand."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from covseg.config import DataConfig, apply_overrides, check_new_run, data_differences, load_recipe, text_override
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES


def _refused(overrides: list[str], message: str, recipe: str = "tiny") -> None:
    with pytest.raises(CovsegError, match="^" + re.escape(message)):
        apply_overrides(load_recipe(recipe), overrides)


# ---- data_differences (pretrain and distill compare another run's data settings with it) ---------------------------

def test_data_differences_names_only_the_keys_that_differ_and_skips_a_key_the_other_run_lacks() -> None:
    here = DataConfig(split="seed", folds=5, val_fraction=0.1)
    there = {"split": "seed", "folds": 3}  # saved before data.val_fraction existed
    assert data_differences(there, here, ["split", "folds", "val_fraction"]) == ["data.folds 3 there, 5 here"]
    assert data_differences({"split": "seed", "folds": 5}, here, ["split", "folds", "val_fraction"]) == []


# ---- recipe files --------------------------------------------------------------------------------------------------

def test_a_recipe_file_is_named_by_its_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my_recipe.yaml"
    path.write_text("model: {width: 8}\n", encoding="utf-8")
    config = load_recipe(str(path))
    assert (config.recipe, config.model.width) == ("my_recipe", 8)


def test_a_task_entry_left_empty_in_a_recipe_adds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("train: {epochs: 4}\ntasks:\n  binary:\n  multiclass: {train: {epochs: 7}}\n", encoding="utf-8")
    assert load_recipe(str(path)).train.epochs == 4
    assert load_recipe(str(path), task="multiclass").train.epochs == 7


def test_a_recipe_whose_data_section_is_not_a_mapping_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("data: 5\n", encoding="utf-8")
    with pytest.raises(CovsegError, match="^" + re.escape(f"{path}: data: expected a mapping, got 5")):
        load_recipe(str(path))


# ---- single options ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("train.val_every=0", "override: train.val_every must be positive and finite, got 0"),
    ("data.window_width=0", "override: data.window_width must be positive and finite, got 0.0"),
    ("train.grad_clip=.inf", "override: train.grad_clip is inf; it must be a gradient norm > 0"),
    ("train.seed=-1", "override: train.seed is -1; it must be >= 0, e.g. 0"),
    ("data.split_seed=-1", "override: data.split_seed is -1; it must be >= 0, e.g. 0"),
    ("model.decoder_dropout=1", "override: model.decoder_dropout is 1.0; it must be a share in [0, 1)"),
    ("train.swa_epochs=-1", "override: train.swa_epochs is -1; it must be >= 0 (0 = no averaging)"),
])
def test_a_value_out_of_its_range_is_refused(override: str, message: str) -> None:
    _refused([override], message)


def test_values_on_a_closed_bound_are_taken() -> None:
    config = apply_overrides(load_recipe("tiny"), ["train.consistency=1", "train.teacher_decay=0", "train.grad_clip=12",
                                                   "train.val_every=1", "data.window_width=1"])
    assert (config.train.teacher_decay, config.train.grad_clip, config.data.window_width) == (0.0, 12.0, 1.0)


def test_consistency_does_not_combine_with_a_crop() -> None:
    _refused([*TINY_OVERRIDES, "train.augment.crop=16", "train.consistency=1"], "override: train.consistency does not "
             "combine with train.augment.crop; set one of them to 0 / false")


def test_distillation_does_not_combine_with_a_type_model() -> None:
    _refused(["data.task=multiclass", "train.distill=runs/a", "train.types_only=true"], "override: train.distill does "
             "not combine with train.types_only")


# ---- stochastic weight averaging -----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ([], "override: train.swa_lr is 0; with train.swa_epochs set it must be a learning rate in (0, train.lr = 0.01]"),
    (["train.swa_lr=0.005", "train.ema=0.99"], "override: train.swa_epochs and train.ema are two weight averages; "
                                               "set one of them to 0"),
    (["train.swa_lr=0.005", "train.schedule=onecycle"], "override: train.schedule onecycle has a warm-up and an "
                                                        "anneal of its own"),
])
def test_swa_refuses_a_zero_rate_a_second_average_and_onecycle(extra: list[str], message: str) -> None:
    _refused(["train.epochs=10", "train.swa_epochs=2", *extra], message)


def test_an_swa_rate_without_swa_epochs_is_refused() -> None:
    _refused(["train.swa_lr=0.005"], "override: train.swa_lr is 0.005 but train.swa_epochs is 0; set train.swa_epochs "
             "too")


# ---- new-run checks ------------------------------------------------------------------------------------------------

def test_a_learning_rate_of_exactly_the_largest_passes_the_new_run_checks() -> None:
    check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.lr=1"]))
    with pytest.raises(CovsegError, match=r"^train.lr is 1.01, above the largest learning rate a run takes \(1;"):
        check_new_run(apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.lr=1.01"]))


# ---- text overrides ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["~", "null", "Null", "NULL", ""])
def test_every_yaml_spelling_of_no_value_unsets_a_text_option(text: str) -> None:
    assert text_override(text) is None
    assert apply_overrides(load_recipe("tiny"), ["train.init=runs/a", f"train.init={text}"]).train.init == ""


def test_a_quoted_text_override_is_read_as_apply_overrides_reads_it_trailing_tab_included() -> None:
    # YAML refuses a tab after a quoted scalar; text_override reads the override as typed, as apply_overrides does
    with pytest.raises(yaml.YAMLError):
        text_override('"a b"\t')
    _refused(['train.init="a b"\t'], "override 'train.init=\"a b\"\\t': not a YAML value")
    assert text_override(' "a b" ') == "a b"


# ---- covseg predict: input checks and what it prints (covseg.cli._cmd_predict) -------------------------------------
# No trained model: the refusals come before the model opens (a missing model is the first thing after them), and
# the printed figures come from stand-ins for open_models and predict_scan.

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _nifti_scan(path: Path) -> Path:
    import nibabel as nib
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((16, 16, 6), -800, np.int16), np.eye(4)), str(path))
    return path


def _png(path: Path) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(path)
    return path


def test_predict_refuses_an_unreadable_nifti_in_a_folder_as_unreadable(tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    (tmp_path / "patient").mkdir()
    (tmp_path / "patient" / "x.nii.gz").write_bytes(b"garbage")
    assert main(["predict", str(tmp_path / "patient"), "-o", str(tmp_path / "o"), "--model",
                 str(tmp_path / "no-model")]) == 2
    error = _one_line_error(capsys)
    assert "x.nii.gz: cannot be read as NIfTI" in error and "give the file itself" not in error


def test_predict_names_the_first_scan_only_option_of_several_given(tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    image = _png(tmp_path / "a.png")
    assert main(["predict", str(image), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no-model"),
                 "--series", "1.2.3", "--min-lesion-ml", "1"]) == 2
    assert _one_line_error(capsys) == ("covseg: error: --series acts on 3-D scans only, and every input here is a 2-D "
                                       "image; leave --series out")


def test_predict_refuses_a_scan_whose_name_leaves_no_output_folder_name(tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    nameless = _nifti_scan(tmp_path / "a" / ".nii.gz")  # its output folder would be -o itself
    other = _nifti_scan(tmp_path / "b" / "ct.nii.gz")
    out = tmp_path / "o"
    assert main(["predict", str(nameless), str(other), "-o", str(out), "--model", str(tmp_path / "no-model")]) == 2
    assert _one_line_error(capsys).startswith(f"covseg: error: several scans would write to {out};")


@pytest.fixture()
def fake_models(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path, object]]:
    """open_models and predict_scan stand-ins: every scan gets the figures below; returns (scan, out, options) per
    scan predicted."""
    import covseg.predict as predict
    from covseg.config import RunConfig
    from covseg.inference import Predictor

    from conftest import ConstantBackend

    calls: list[tuple[Path, Path, object]] = []

    def fake_open(*args, **kwargs):
        return Predictor(ConstantBackend((1.0, 0.0)), 32), RunConfig(), {"name": "t", "backend": "constant"}

    def fake_scan(path, predictor, scheme, out, info, options, series, spacing, progress=True, together=False):
        calls.append((Path(path), Path(out), options))
        total = {"lesion_ml": 12.34, "lesion_percent": 4.56, "lung_ml": 3456.7, "severity": 1,
                 "class_ml": {"pleural_effusion": 20.0, "none_here": 0.0}}
        return {"figures": {"total": total, "pleural": ["pleural_effusion", "none_here"],
                            "right": {"severity": 2}, "left": {"severity": None}},
                "warnings": ["a warning"]}

    monkeypatch.setattr(predict, "open_models", fake_open)
    monkeypatch.setattr(predict, "predict_scan", fake_scan)
    return calls


def test_predict_prints_a_scan_s_figures_by_hand(fake_models, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    scan = _nifti_scan(tmp_path / "in" / "ct.nii.gz")
    out = tmp_path / "in"  # the scan's own folder: it writes lesions.nii.gz etc. beside ct.nii.gz, not over it
    assert main(["predict", str(scan), "-o", str(out), "--model", str(tmp_path), "--quiet"]) == 0
    assert [(p, o) for p, o, _ in fake_models] == [(scan, out)]
    captured = capsys.readouterr()
    # 12.34 mL -> 12.3; 4.56 % -> 4.6; 3456.7 mL -> 3457; the pleural class with 0 mL is left out; no left severity
    assert captured.out == (f"{scan}: lesions 12.3 mL = 4.6 % of 3457 mL lung, severity 1 (right 2, left n/a); "
                            f"pleural effusion 20.0 mL; report {out}/report.html\n")
    assert captured.err == "covseg: warning: a warning\n"


def test_two_scans_each_write_into_their_own_folder(fake_models, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    a = _nifti_scan(tmp_path / "a.nii.gz")
    b = _nifti_scan(tmp_path / "b.nii.gz")
    out = tmp_path / "o"
    assert main(["predict", str(a), str(b), "-o", str(out), "--model", str(tmp_path), "--quiet"]) == 0
    assert [(p, o) for p, o, _ in fake_models] == [(a, out / "a"), (b, out / "b")]
    assert capsys.readouterr().out.splitlines()[1].endswith(f"; report {out / 'b'}/report.html")
