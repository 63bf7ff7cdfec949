"""Tests that pin down what covseg.predict (and ``covseg predict``'s checks in covseg.cli) promise, each one written
against a hand-made mutant of that code that the other tests let through. Most need no trained model: a backend
whose logits are fixed by hand, or a stand-in for ``open_models`` / ``open_predictor``."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import covseg.predict as predict
from covseg.cli import main
from covseg.config import RunConfig, config_to_dict
from covseg.errors import CovsegError
from covseg.inference import EnsemblePredictor, LesionTypePredictor, Predictor
from covseg.labels import get_scheme

from conftest import ConstantBackend


class _ThresholdBackend:
    """Logits that call lesion wherever the network's input is above 0.5."""

    description = "threshold"

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


class _Named:
    """A backend (tests) that only has a description, which a test changes as a bf16 fallback would."""

    def __init__(self, description: str) -> None:
        self.description = description


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


def _scan(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.full((16, 16, 6), -800, np.int16), np.eye(4)), str(path))
    return path


# --- output names -------------------------------------------------------------------------------------------------

def test_output_stem_drops_an_upper_case_nifti_extension_whole(tmp_path: Path) -> None:
    assert predict.output_stem(tmp_path / "A.NII.GZ") == "A"
    assert predict.output_stem(tmp_path / "b.Nii") == "b"
    assert predict.output_stem(tmp_path / "c.nii.gz") == "c"
    # and an upper-case NIfTI slice gets a NIfTI label map, not a PNG
    stems, names, drawn = predict.check_file_outputs([tmp_path / "S.NII.GZ"], tmp_path / "out")
    assert (stems, names, drawn) == (["S"], ["S.nii.gz"], ["overlays/S.png"])


def test_output_stem_of_the_current_folder_is_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "1.2.840.5"
    folder.mkdir()
    monkeypatch.chdir(folder)
    assert predict.output_stem(Path(".")) == "1.2.840.5"
    assert predict.output_stem(folder) == "1.2.840.5"


# --- checks before any input is read ------------------------------------------------------------------------------

def test_no_input_images_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match="no input images; give image files or folders"):
        predict.check_file_outputs([], tmp_path / "out")


def test_an_input_where_its_overlay_goes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    image = _png(out / "overlays" / "a.png", np.full((8, 8), 100))
    with pytest.raises(CovsegError, match="overlays/a.png: is an input and would be overwritten"):
        predict.check_file_outputs([image], out)
    predict.check_file_outputs([image], out, overlays=False)  # without overlays nothing is written over it


def test_a_folder_named_predictions_json_is_refused_before_any_input_is_read(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "predictions.json").mkdir(parents=True)
    image = _png(tmp_path / "a.png", np.full((8, 8), 100))
    with pytest.raises(CovsegError, match=r"predictions.json: is a folder where covseg writes an output file"):
        predict.check_file_outputs([image], out)


def test_a_dangling_link_where_the_overlays_folder_goes_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").symlink_to(tmp_path / "gone")
    image = _png(tmp_path / "a.png", np.full((8, 8), 100))
    with pytest.raises(CovsegError, match=r"overlays: is a file where covseg writes a folder"):
        predict.check_file_outputs([image], out)


def test_a_link_to_a_folder_where_a_label_map_goes_is_replaced_not_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "a.png").symlink_to(tmp_path / "elsewhere")
    image = _png(tmp_path / "a.png", np.full((8, 8), 200))
    predict.predict_files(Predictor(_ThresholdBackend(), 32), get_scheme("binary"), [image], out,
                          {"name": "t", "backend": "t"}, overlays=False, progress=False)
    assert not (out / "a.png").is_symlink() and (np.array(Image.open(out / "a.png")) == 1).all()
    assert (tmp_path / "elsewhere").is_dir()


def test_without_overlays_a_linked_stale_overlay_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    mine = tmp_path / "mine.png"
    mine.write_text("someone's own file")
    (out / "overlays" / "a.png").symlink_to(mine)
    image = _png(tmp_path / "a.png", np.full((8, 8), 200))
    predict.predict_files(Predictor(_ThresholdBackend(), 32), get_scheme("binary"), [image], out,
                          {"name": "t", "backend": "t"}, overlays=False, progress=False)
    assert (out / "overlays" / "a.png").is_symlink() and mine.read_text() == "someone's own file"


# --- what predict_files writes and reports ------------------------------------------------------------------------

def test_predictions_json_by_hand(tmp_path: Path) -> None:
    # 32 x 32 at input size 32: the label map is the threshold of the image itself; rows 0-10 bright
    square = np.full((32, 32), 20)
    square[:11] = 220
    wide = np.full((20, 30), 220)  # H 20, W 30, all lesion
    files = [_png(tmp_path / "sq.png", square), _png(tmp_path / "wide.png", wide), _png(tmp_path / "c.png", square)]
    out = tmp_path / "out"
    summary = predict.predict_files(Predictor(_ThresholdBackend(), 32, batch_size=1), get_scheme("binary"), files,
                                    out, {"name": "t", "backend": "stale"}, overlays=True, progress=False)
    assert summary == json.loads((out / "predictions.json").read_text()) | {"labels": {0: "background",
                                                                                      1: "infection"}}
    assert json.loads((out / "predictions.json").read_text())["labels"] == {"0": "background", "1": "infection"}
    assert summary["model"] == {"name": "t", "backend": "threshold"}  # read again after use
    sq, wd, c = summary["images"]
    assert (sq["height"], sq["width"]) == (32, 32) and (wd["height"], wd["width"]) == (20, 30)
    assert sq["fractions"] == {"background": 0.65625, "infection": 0.34375}  # 21 and 11 rows of 32
    assert wd["fractions"] == {"background": 0.0, "infection": 1.0}
    assert c["output"] == "c.png" and (out / "c.png").is_file() and (out / "overlays" / "c.png").is_file()
    labels = np.array(Image.open(out / "sq.png"))
    assert labels.shape == (32, 32) and (labels[:11] == 1).all() and (labels[11:] == 0).all()
    assert np.array(Image.open(out / "wide.png")).shape == (20, 30)


def test_a_class_no_pixel_has_is_reported_as_zero(tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png", np.full((10, 12), 200))
    summary = predict.predict_files(Predictor(ConstantBackend((3.0, 0.0, 0.0, 0.0)), 32), get_scheme("multiclass"),
                                    [image], tmp_path / "out", {"name": "c", "backend": "c"}, progress=False)
    assert summary["images"][0]["fractions"] == {"background": 1.0, "ggo": 0.0, "consolidation": 0.0,
                                                 "pleural_effusion": 0.0}


def _hu_slice(path: Path) -> Path:
    hu = np.full((12, 10), -500.0, np.float32)  # lung window (-600, 1500): 0.567; window (-300, 400): 0
    hu[0, 0] = -1024.0  # CT numbers: read through the window
    nib.save(nib.Nifti1Image(hu[..., None], np.eye(4)), str(path))
    return path


def test_nifti_slices_are_read_through_the_given_window(tmp_path: Path) -> None:
    scheme = get_scheme("binary")
    image = _hu_slice(tmp_path / "s.nii.gz")
    lung = predict.predict_files(Predictor(_ThresholdBackend(), 32), scheme, [image], tmp_path / "lung",
                                 {"name": "t", "backend": "t"}, overlays=False, progress=False)
    narrow = predict.predict_files(Predictor(_ThresholdBackend(), 32), scheme, [image], tmp_path / "narrow",
                                   {"name": "t", "backend": "t"}, overlays=False, progress=False,
                                   window=(-300.0, 400.0))
    assert lung["images"][0]["fractions"]["infection"] > 0.9
    assert narrow["images"][0]["fractions"]["infection"] == 0.0


def test_a_nifti_label_map_is_uint8_with_no_display_range(tmp_path: Path) -> None:
    ref = nib.Nifti1Image(np.full((6, 4, 1), -700, np.int16), np.eye(4))
    ref.header["cal_min"], ref.header["cal_max"] = -1000, 400
    nib.save(ref, str(tmp_path / "ref.nii.gz"))
    labels = np.zeros((4, 6), np.uint8)
    predict.write_label_nifti(labels, tmp_path / "ref.nii.gz", tmp_path / "lab.nii.gz")
    out = nib.load(str(tmp_path / "lab.nii.gz"))
    assert out.shape == (6, 4, 1) and out.get_data_dtype() == np.uint8
    assert (float(out.header["cal_min"]), float(out.header["cal_max"])) == (0.0, 0.0)


# --- model descriptions -------------------------------------------------------------------------------------------

def test_describe_after_use_reads_every_backend_again() -> None:
    one = Predictor(_Named("bf16"), 32)
    assert predict.describe_after_use({"name": "a", "backend": "bf16"}, one)["backend"] == "bf16"
    one.backend.description = "fp32"
    assert predict.describe_after_use({"name": "a", "backend": "bf16"}, one) == {"name": "a", "backend": "fp32"}
    a, b = Predictor(_Named("x"), 32), Predictor(_Named("y"), 32)
    info = {"backend": "old", "members": [{"backend": "old-a"}, {"backend": "old-b"}]}
    assert predict.describe_after_use(info, EnsemblePredictor([a, b])) == {
        "backend": "x, y", "members": [{"backend": "x"}, {"backend": "y"}]}
    lesion = LesionTypePredictor(Predictor(_Named("l"), 32), Predictor(_Named("t"), 32))
    described = predict.describe_after_use({"backend": "old", "lesion_model": {"backend": "old-l"}}, lesion)
    assert described == {"backend": "l, t", "lesion_model": {"backend": "l"}}


def _weights(run: Path, values: list[float]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    names = ["background", "ggo", "consolidation", "pleural_effusion"][:len(values)]
    (run / "class_weights.json").write_text(json.dumps({"weights": dict(zip(names, values))}))
    return run / "best.pt"


def test_learnt_lesion_classes_by_hand(tmp_path: Path) -> None:
    a = _weights(tmp_path / "a", [0.5, 0.0, 2.0, 0.7])
    b = _weights(tmp_path / "b", [0.5, 1.5, 0.0, 0.0])
    assert predict.learnt_lesion_classes({"file": str(a)}) == [2, 3]
    assert predict.learnt_lesion_classes({"members": [{"file": str(a)}, {"file": str(b)}]}) == [1, 2, 3]
    # a member whose classes nothing records: nothing can be said
    lone = tmp_path / "lone"
    lone.mkdir()
    assert predict.learnt_lesion_classes({"members": [{"file": str(a)}, {"file": str(lone / "x.pt")}]}) is None
    assert predict.learnt_lesion_classes({"file": str(_weights(tmp_path / "c", [1.0, 0.0, 0.0, 0.0]))}) is None


# --- ensembles ----------------------------------------------------------------------------------------------------

def _config(task: str = "binary", folds: int = 5, level: float = -600.0, types_only: bool = False) -> RunConfig:
    c = RunConfig()
    return dataclasses.replace(c, data=dataclasses.replace(c.data, task=task, folds=folds, window_level=level),
                               train=dataclasses.replace(c.train, types_only=types_only))


def _cv_folder(root: Path, folds: int, made: int, finished: int | None = None) -> Path:
    text = yaml.safe_dump(config_to_dict(_config(folds=folds)))
    for k in range(made):
        (root / f"fold-{k}").mkdir(parents=True)
        (root / f"fold-{k}" / "config.yaml").write_text(text)
        if k < (made if finished is None else finished):
            (root / f"fold-{k}" / "eval-heldout").mkdir()
            (root / f"fold-{k}" / "eval-heldout" / "metrics.json").write_text("{}")
    return root


def test_a_cv_folder_expands_to_its_folds_in_number_order(tmp_path: Path) -> None:
    cv = _cv_folder(tmp_path / "cv", 11, 11)
    (cv / "fold-old").mkdir()  # not a fold run: its name has no number
    (cv / "fold-old" / "config.yaml").write_text((cv / "fold-0" / "config.yaml").read_text())
    assert predict.ensemble_members([cv]) == [cv / f"fold-{k}" for k in range(11)]


def test_an_incomplete_cv_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match="a 3-fold cross-validation with 2 fold folders; finish it"):
        predict.ensemble_members([_cv_folder(tmp_path / "short", 3, 2)])
    with pytest.raises(CovsegError, match="a 2-fold cross-validation with 2 fold folders, unfinished: fold-1; "):
        predict.ensemble_members([_cv_folder(tmp_path / "unscored", 2, 2, finished=1)])


def test_a_seeds_folder_and_a_missing_model_are_refused(tmp_path: Path) -> None:
    (tmp_path / "seeds" / "seed-0").mkdir(parents=True)
    with pytest.raises(CovsegError, match="a covseg cv --seeds folder; name its cross-validations \\(seed-0\\)"):
        predict.ensemble_members([tmp_path / "seeds"])
    with pytest.raises(CovsegError, match="nope: no such model file or folder"):
        predict.ensemble_members([tmp_path / "nope"])


@pytest.fixture
def fake_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, RunConfig]:
    """Model folders named by the test, opened by a stand-in for open_predictor with the config the test gives."""
    configs: dict[str, RunConfig] = {}

    def fake_open(path, task=None, which="auto", backend="auto", device="cpu", precision="auto", batch_size=8,
                  flip_tta=False, slices=None):
        config = configs[Path(path).name]
        info = {"name": Path(path).name, "file": str(Path(path) / "best.pt"), "backend": "fake " + Path(path).name,
                "recipe": config.recipe, "task": config.data.task, "flip_tta": flip_tta,
                "types_only": config.train.types_only}
        classes = 2 if config.data.task == "binary" else 4
        return Predictor(ConstantBackend(tuple([0.0] * classes)), 32), config, info

    monkeypatch.setattr(predict, "open_predictor", fake_open)
    original = dict.__setitem__

    class Configs(dict):
        def __setitem__(self, name: str, config: RunConfig) -> None:
            (tmp_path / name).mkdir(exist_ok=True)
            original(self, name, config)
            original(configs, name, config)

    return Configs()


def test_open_ensemble_by_hand(fake_models, tmp_path: Path) -> None:
    fake_models["a"] = _config()
    fake_models["b"] = _config(types_only=True)
    predictor, config, info = predict.open_ensemble([tmp_path / "a"])
    assert isinstance(predictor, Predictor) and info["name"] == "a"  # one model: itself, not an ensemble of one
    predictor, config, info = predict.open_ensemble([tmp_path / "a", tmp_path / "b"])
    assert isinstance(predictor, EnsemblePredictor) and config is fake_models["a"]
    assert info["file"] == str(tmp_path / "a" / "best.pt") and info["types_only"] is True
    assert info["name"] == "ensemble of a, b" and [m["name"] for m in info["members"]] == ["a", "b"]


def test_an_ensemble_of_other_windows_or_tasks_is_refused(fake_models, tmp_path: Path) -> None:
    fake_models["a"] = _config()
    fake_models["w"] = _config(level=-500.0)
    fake_models["m"] = _config(task="multiclass")
    with pytest.raises(CovsegError, match="reads images with CT window \\(-500.0, 1500.0\\)"):
        predict.open_ensemble([tmp_path / "a", tmp_path / "w"])
    with pytest.raises(CovsegError, match="an ensemble needs models of one task"):
        predict.open_ensemble([tmp_path / "a", tmp_path / "m"])


def test_open_models_refusals_by_hand(fake_models, tmp_path: Path) -> None:
    fake_models["bin"] = _config()
    fake_models["mc"] = _config(task="multiclass")
    fake_models["types"] = _config(task="multiclass", types_only=True)
    fake_models["mcw"] = _config(task="multiclass", level=-500.0)
    with pytest.raises(CovsegError, match="needs --lesion-model BINARY_MODEL"):
        predict.open_models([tmp_path / "types"])
    with pytest.raises(CovsegError, match="types lesions with a multiclass model, but .*bin predicts binary"):
        predict.open_models([tmp_path / "bin"], [tmp_path / "bin"])
    with pytest.raises(CovsegError, match="mc predicts multiclass labels; it must be a binary"):
        predict.open_models([tmp_path / "mc"], [tmp_path / "mc"])
    with pytest.raises(CovsegError, match="--lesion-model .*bin reads images with CT window \\(-600.0, 1500.0\\)"):
        predict.open_models([tmp_path / "mcw"], [tmp_path / "bin"])
    predictor, config, info = predict.open_models([tmp_path / "types"], [tmp_path / "bin"])
    assert isinstance(predictor, LesionTypePredictor) and info["lesion_model"]["name"] == "bin"


def test_open_predictor_passes_tta_on_and_names_the_checkpoint_s_epoch(tiny_run: Path) -> None:
    predictor, config, info = predict.open_predictor(tiny_run, backend="torch", flip_tta=True)
    assert predictor.flip_tta is True and info["flip_tta"] is True
    saved = torch.load(info["file"], map_location="cpu", weights_only=False)["epoch"]
    assert info["epoch"] == saved and saved in (1, 2, 3)


# --- is_scan ------------------------------------------------------------------------------------------------------

def test_a_hidden_dcm_beside_images_does_not_make_a_folder_a_scan(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", np.full((8, 8), 100))
    (tmp_path / "._a.dcm").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert predict.is_scan(tmp_path) is False


# --- covseg predict's checks and options --------------------------------------------------------------------------

def test_a_missing_input_is_named_as_such(tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model", str(tmp_path)]) == 2
    assert f"{tmp_path / 'nope.png'}: no such file or folder" in _one_line_error(capsys)


def test_a_lesion_model_given_twice_is_refused(tmp_path: Path, capsys) -> None:
    image = _png(tmp_path / "a.png", np.full((8, 8), 100))
    (tmp_path / "les").mkdir()
    assert main(["predict", str(image), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no-model"),
                 "--lesion-model", str(tmp_path / "les"), "--lesion-model", str(tmp_path / "les")]) == 2
    assert "--lesion-model names a model twice" in _one_line_error(capsys)


def test_a_scan_beside_images_checks_them_as_such(tmp_path: Path, capsys) -> None:
    # every case gets as far as opening the model (missing here): the checks before it let them through or refuse
    (tmp_path / "scans").mkdir()
    (tmp_path / "imgs").mkdir()
    scan = _scan(tmp_path / "scans" / "lesions.nii.gz")
    a = _png(tmp_path / "imgs" / "a.png", np.full((8, 8), 100))
    a_jpg = tmp_path / "imgs" / "a.jpg"
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(a_jpg)
    model = ["--model", str(tmp_path / "no-model"), "--quiet"]
    # --no-overlays acts on the images: allowed
    assert main(["predict", str(scan), str(a), "-o", str(tmp_path / "o"), "--no-overlays", *model]) == 2
    assert "no-model: no such model file or folder" in _one_line_error(capsys)
    # beside images the scan writes into -o/lesions, so its own lesions.nii.gz in -o is not overwritten
    assert main(["predict", str(scan), str(a), "-o", str(tmp_path / "scans"), *model]) == 2
    assert "no-model: no such model file or folder" in _one_line_error(capsys)
    # two images that would write one label map are refused before the model is opened
    assert main(["predict", str(scan), str(a), str(a_jpg), "-o", str(tmp_path / "o"), *model]) == 2
    assert "several inputs would write a.png" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_predict_passes_the_scan_options_and_the_model_s_window_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys) -> None:
    config = _config(level=-100.0)  # window (-100, 1500): -500 HU reads as 0.1, below the threshold
    taken: list = []

    def fake_open(*args, **kwargs):
        return Predictor(_ThresholdBackend(), 32), config, {"name": "t", "backend": "threshold"}

    def fake_scan(path, predictor, scheme, out, info, options, series, spacing, progress=True, together=False):
        taken.append(options)
        side = {"severity": None}
        return {"figures": {"total": {"lesion_ml": 0.0, "lesion_percent": 0.0, "lung_ml": 0.0, "class_ml": {},
                                      "severity": None},
                            "right": side, "left": side}, "warnings": []}

    monkeypatch.setattr(predict, "open_models", fake_open)
    monkeypatch.setattr(predict, "predict_scan", fake_scan)
    scan = _scan(tmp_path / "scan.nii.gz")
    image = _hu_slice(tmp_path / "s.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(scan), str(image), "-o", str(out), "--model", str(tmp_path), "--quiet",
                 "--min-lesion-ml", "0.5", "--keep-outside-lungs"]) == 0
    (options,) = taken
    assert options.min_lesion_ml == 0.5 and options.inside_lungs_only is False
    assert tuple(options.window) == (-100.0, 1500.0)
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["images"][0]["fractions"]["infection"] == 0.0
    assert main(["predict", str(scan), "-o", str(tmp_path / "out2"), "--model", str(tmp_path), "--quiet"]) == 0
    assert taken[1].min_lesion_ml == 0.05 and taken[1].inside_lungs_only is True
    capsys.readouterr()


def test_an_unreadable_nifti_is_refused_as_a_scan_before_the_model_is_opened(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    assert predict.is_scan(bad) is True
    assert main(["predict", str(bad), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "no-model")]) == 2
    error = _one_line_error(capsys)
    assert "bad.nii.gz" in error and "no such model" not in error


def test_predict_s_modules_leave_matplotlib_unimported() -> None:
    """A 2-D `covseg predict` draws its overlays with PIL; matplotlib (about 1 s of a 6-7 s predict of one slice
    on 2 AVX2 cores) loads only where a figure is drawn: a scan's HTML report, training curves, evaluation."""
    import subprocess
    import sys

    code = "import sys, covseg.cli, covseg.predict; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
