"""covseg export --int8 (covseg.quantize): where the calibration slices come from, and what the export says it
checked. Fast: fake run folders over ``tiny_data`` and a three-convolution network, no training."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import fake_run_folder, write_semiseg
from covseg.errors import CovsegError

TRAIN, VAL = ["0", "1", "3", "4"], ["2"]


def _config():
    from covseg.config import apply_overrides, load_recipe

    return apply_overrides(load_recipe("tiny"), ["data.input_size=32", "model.width=4", "model.depth=2"])


def _run_over(data: Path, parent: Path) -> Path:
    """A run folder as ``covseg train`` leaves one, as far as calibration reads it: ``split.json``, ``run.json``
    naming ``data``, ``config.yaml`` and the class weights of ``TRAIN``'s masks in ``data``, rounded as saved."""
    from covseg.config import config_to_dict
    from covseg.datasets import load_dataset
    from covseg.losses import median_frequency_weights

    run = fake_run_folder(parent, {"train": TRAIN, "val": VAL, "test": []}, str(data))
    (run / "config.yaml").write_text(yaml.safe_dump(config_to_dict(_config()), sort_keys=False), encoding="utf-8")
    masks = [s.mask for s in load_dataset(data, "binary") if s.name in TRAIN]
    weights = median_frequency_weights(masks, 2)
    (run / "class_weights.json").write_text(json.dumps(
        {"weights": {"background": round(float(weights[0]), 6), "infection": round(float(weights[1]), 6)}}))
    return run


@pytest.fixture(scope="module")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another data set of the same layout and the same slice names as ``tiny_data``, with other images and masks."""
    return write_semiseg(tmp_path_factory.mktemp("other"), n=6, seed=1)


def test_int8_calibration_reads_the_run_s_own_training_slices(tiny_data: Path, tmp_path: Path) -> None:
    """The control for the refusals below: the run's data, recorded or named by --data, gives the inputs of its
    training slices (4: one batch) and of its validation slice."""
    from covseg.quantize import calibration_inputs

    run = _run_over(tiny_data, tmp_path)
    for data in (None, str(tiny_data)):
        inputs = calibration_inputs(run, data, _config(), ("train", "val"))
        assert [b.shape for b in inputs["train"]] == [(4, 1, 32, 32)] and [b.shape for b in inputs["val"]] == [
            (1, 1, 32, 32)]


def test_int8_calibration_refuses_data_whose_slices_share_the_names_but_not_the_masks(
        tiny_data: Path, other_data: Path, tmp_path: Path) -> None:
    """--data of another data set with the same slice names used to be read without a word: int8 calibrated on its
    images, and its agreement figure measured there but reported as the run's validation slices'."""
    from covseg.quantize import calibration_inputs

    run = _run_over(tiny_data, tmp_path)
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run))}: --data {re.escape(str(other_data))} does not hold "
                                          r"the slices it was trained on \(the masks of its training slices there give "
                                          r"other class weights than its class_weights.json\), so int8 would be "
                                          r"calibrated and checked on other images; pass --data DIR with the data it "
                                          r"trained on$"):
        calibration_inputs(run, str(other_data), _config(), ("train", "val"))


def test_int8_export_of_other_data_writes_nothing_and_says_so_in_one_line(tiny_data: Path, other_data: Path,
                                                                          tmp_path: Path, capsys) -> None:
    """Through the CLI: refused in one line before -o (or its folder) is made; the run's own data exports, and says
    what it checked on (one validation slice: in the singular)."""
    import torch

    from covseg.checkpoint import build_model, save_checkpoint
    from covseg.cli import main

    run = _run_over(tiny_data, tmp_path)
    torch.manual_seed(0)
    save_checkpoint(run / "last.pt", build_model(_config()), _config(), epoch=1, score=None)
    out = tmp_path / "new" / "m.onnx"
    assert main(["export", str(run / "last.pt"), "-o", str(out), "--int8", "--data", str(other_data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not hold the slices it was trained on" in err[0], err
    assert not out.parent.exists()
    assert main(["export", str(run / "last.pt"), "-o", str(out), "--int8", "--data", str(tiny_data)]) == 0
    assert "of the pixels of 1 validation slice\n" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]


def test_a_run_folder_without_run_json_is_told_to_pass_data(tiny_data: Path, tmp_path: Path) -> None:
    """It used to say only "no run.json; is it a covseg run folder?", though --data DIR is all it lacks."""
    from covseg.quantize import calibration_inputs

    run = _run_over(tiny_data, tmp_path)
    (run / "run.json").unlink()
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run))}: no run.json to say which data it trained on; "
                                          r"pass --data DIR with its slices$"):
        calibration_inputs(run, None, _config(), ("train",))
    assert len(calibration_inputs(run, str(tiny_data), _config(), ("train",))["train"]) == 1  # with it: read


def test_one_validation_slice_is_named_in_the_singular(tmp_path: Path) -> None:
    """It used to say "1 validation slices"."""
    import torch

    from covseg.quantize import quantize_run

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    rng = np.random.default_rng(0)
    inputs = {"train": [rng.random((2, 1, 32, 32), dtype=np.float32)], "train_pixels": [np.ones((2, 32, 32), bool)],
              "val": [rng.random((1, 1, 32, 32), dtype=np.float32)], "val_pixels": [np.ones((1, 32, 32), bool)]}
    meta = quantize_run(net, _config(), inputs, tmp_path / "int8.onnx")
    assert meta["covseg_int8_checked_on"] == "1 validation slice"
    inputs["val"] = [np.concatenate([inputs["val"][0]] * 3)]
    inputs["val_pixels"] = [np.ones((3, 32, 32), bool)]
    assert quantize_run(net, _config(), inputs, tmp_path / "int8b.onnx")["covseg_int8_checked_on"] == \
        "3 validation slices"
