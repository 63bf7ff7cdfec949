"""Session 72's walkthrough of 2-D prediction and exported models: an ONNX file named with an upper-case suffix,
a folder of runs given to export, and the checkpoint and epoch an ONNX model's reports name."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from covseg.cli import main


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s72-onnx") / "model.onnx"
    assert main(["export", str(tiny_run), "--checkpoint", "last", "-o", str(out)]) == 0
    return out


def _slice(tiny_data: Path) -> Path:
    return next((tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs").glob("*.jpg"))


def test_an_onnx_file_with_an_upper_case_suffix_is_told_to_be_renamed(exported: Path, tiny_data: Path,
                                                                      tmp_path: Path, capsys) -> None:
    # it was read as a checkpoint: "not a readable covseg checkpoint (no zip archive ...)", which hid the cause
    upper = tmp_path / "MODEL.ONNX"
    shutil.copy(exported, upper)
    out = tmp_path / "out"
    assert main(["predict", str(_slice(tiny_data)), "-o", str(out), "--model", str(upper), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {upper}: covseg knows ONNX files by the suffix .onnx in lower case (as covseg "
                   f"export writes them); rename it to {tmp_path / 'MODEL.onnx'}"]
    assert not out.exists()


def test_evaluate_tells_an_upper_case_onnx_suffix_too(exported: Path, tiny_data: Path, tmp_path: Path,
                                                      capsys) -> None:
    upper = tmp_path / "model.Onnx"
    shutil.copy(exported, upper)
    assert main(["evaluate", str(upper), "--data", str(tiny_data), "--split", "all", "-o", str(tmp_path / "ev"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"rename it to {tmp_path / 'model.onnx'}" in err[0], err


@pytest.mark.parametrize("layout", ["fold-0", "seed-1/fold-0", "unet"])
def test_export_of_a_folder_of_runs_names_one_of_them(layout: str, tiny_run: Path, tmp_path: Path,
                                                      capsys) -> None:
    # it said "no best.pt in this folder; is it a finished covseg run?" of a finished cross-validation
    folder = tmp_path / "cv"
    shutil.copytree(tiny_run, folder / layout)
    out = tmp_path / "model.onnx"
    assert main(["export", str(folder), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    kind = "a cross-validation's fold runs" if "fold" in layout else "runs"
    assert err == [f"covseg: error: {folder}: holds {kind}, not one run, and an ONNX file holds one model; export "
                   f"one of them, e.g. covseg export {folder / layout} -o {out}"]
    assert not out.exists()
    assert main(["export", str(folder / layout), "-o", str(out)]) == 0  # the run itself exports


def test_a_run_folder_is_not_taken_for_a_folder_of_runs(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run, run / "fold-0")  # a run that happens to hold another run's copy
    assert main(["export", str(run), "-o", str(tmp_path / "model.onnx")]) == 0


def test_an_onnx_model_s_predictions_name_the_checkpoint_and_epoch_it_holds(exported: Path, tiny_run: Path,
                                                                            tiny_data: Path, tmp_path: Path) -> None:
    # a checkpoint's predictions.json gave its epoch, an exported file's neither the checkpoint nor the epoch
    from covseg.checkpoint import read_checkpoint

    out = tmp_path / "out"
    assert main(["predict", str(_slice(tiny_data)), "-o", str(out), "--model", str(exported), "--quiet"]) == 0
    model = json.loads((out / "predictions.json").read_text())["model"]
    assert model["exported_from"] == "last.pt"
    assert model["epoch"] == int(read_checkpoint(tiny_run / "last.pt")["epoch"]) == 3


def test_a_model_file_outside_its_run_folder_is_told_both_options_it_needs(tiny_run: Path, tmp_path: Path,
                                                                          capsys) -> None:
    lone = tmp_path / "lone.pt"
    shutil.copy(tiny_run / "last.pt", lone)
    assert main(["evaluate", str(lone), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # before: only --data was named, and giving it alone met a second refusal (the held-out split needs a run folder)
    assert len(err) == 1 and "pass --data DIR and --split all, test or testset" in err[0], err


def test_a_folder_of_single_dicom_slices_is_told_how_to_predict_them_one_by_one(tmp_path: Path) -> None:
    from covseg.errors import CovsegError
    from covseg.volumes import read_volume

    from test_volumes import truth_hu, write_dicom_series

    write_dicom_series(tmp_path, truth_hu()[:1])
    with pytest.raises(CovsegError, match=r"the series has only 1 slice; a scan needs at least 2 slices \(give the "
                                          r"folder holding the whole series; to predict single slices, give the files "
                                          r"themselves, named \.dcm, rather than their folder\)$"):
        read_volume(tmp_path)


def test_bf16_refused_names_the_flag_and_the_setting_alike(monkeypatch) -> None:
    import torch

    from covseg import runtime
    from covseg.errors import CovsegError

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with pytest.raises(CovsegError, match=r"use --precision fp32 or auto \(in a recipe or override: "
                                          r"train\.precision\)$"):
        runtime.resolve_precision("bf16", torch.device("cpu"))
