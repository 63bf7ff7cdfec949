"""Session 77, predict (helper): a 2-D NIfTI slice whose label map's name (the file's stem with .nii.gz) would pass the
255 bytes a file name may have is refused before the models load, not once predicted; an earlier predictions.json
listing a name no file can have (over 255 bytes, a NUL in it) does not fail a predict once its outputs are written;
``predict_scan`` called from Python with an output folder on a symbolic link loop raises a one-line CovsegError, not
Python's RuntimeError. No test here needs a trained model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import ConstantBackend, tiny_air_scan, tiny_grey_image

import covseg.predict
import covseg.report_html  # noqa: F401  predict and predict_scan import these on first call: seconds
import covseg.scan  # noqa: F401
import covseg.volumes
from covseg.cli import main
from covseg.config import RunConfig
from covseg.errors import CovsegError
from covseg.inference import Predictor
from covseg.labels import BINARY
from covseg.predict import check_file_outputs, predict_files, predict_scan, unlisted_outputs
from covseg.predict_plan import plan_predict


class _NeverRun:
    """A backend (tests) that fails if the model is run."""

    description = "never run"

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        raise AssertionError("the model ran")


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _nifti_slice(path: Path) -> Path:
    """A one-slice 8 x 8 NIfTI of -900 HU at ``path``."""
    nib.save(nib.Nifti1Image(np.full((8, 8, 1), -900, np.int16), np.eye(4)), str(path))
    return path


def _not_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("the scan was read")


def test_a_nifti_slice_whose_label_map_name_would_be_too_long_is_refused_before_the_models_load(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a.nii (stem of 249 bytes, 253 in all) gets a.nii.gz, 256 bytes: the model ran, then writing it failed
    (tmp_path / "in").mkdir()
    image = _nifti_slice(tmp_path / "in" / ("a" * 249 + ".nii"))
    out = tmp_path / "out"
    expected = (f"{image}: its label map, named as the file with .nii.gz, would have a name of 256 bytes, more than "
                "the 255 a file name may have; rename the file (or copy it) to a shorter name, at most 248 bytes "
                "before its extension")
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        plan_predict([image], out)
    before = _tree(tmp_path)
    assert main(["predict", str(image), "-o", str(out), "--model", str(tmp_path / "no-model"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"covseg: error: {expected}"]
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        predict_files(Predictor(_NeverRun(), 32), BINARY, [image], out, {"name": "t", "backend": "t"}, progress=False)
    assert _tree(tmp_path) == before and not out.exists()
    # one byte shorter fits; PNG, JPEG and DICOM inputs keep their name's length (or shorten it), so always fit
    assert check_file_outputs([_nifti_slice(tmp_path / "in" / ("a" * 248 + ".nii"))], out)[1] == ["a" * 248 + ".nii.gz"]
    for suffix in (".png", ".jpg", ".dcm", ".nii.gz"):
        assert check_file_outputs([tmp_path / "in" / ("b" * (255 - len(suffix)) + suffix)], out)[0]


def test_an_earlier_predictions_json_listing_a_name_no_file_can_have_does_not_fail_the_predict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # Path.is_file raised "File name too long" (a NUL: ValueError) once the new outputs were written: exit 2
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.png").write_bytes(b"an earlier label map")
    too_long, with_nul = "b" * 300 + ".png", "c\0.png"
    (out / "predictions.json").write_text(json.dumps({"images": [{"output": n} for n in (too_long, with_nul,
                                                                                            "old.png")]}))
    assert unlisted_outputs(out, [too_long, with_nul, "old.png"], {"images": [{"output": "a.png"}]}) == ["old.png"]
    monkeypatch.setattr(covseg.predict, "open_models", lambda *args, **kwargs: (
        Predictor(ConstantBackend((1.0, 0.0)), 32), RunConfig(), {"name": "t", "backend": "constant"}))
    image = tiny_grey_image(tmp_path / "a.png")
    assert main(["predict", str(image), "-o", str(out), "--model", str(tmp_path), "--quiet", "--no-overlays"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: warning: {out}: 1 label map of an earlier predict stays "
                                               "there (e.g. old.png)"), err
    assert [r["output"] for r in json.loads((out / "predictions.json").read_text())["images"]] == ["a.png"]


@pytest.mark.parametrize("below", [False, True])
def test_predict_scan_refuses_an_output_folder_on_a_symbolic_link_loop_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: bool) -> None:
    # Path.resolve raised RuntimeError("Symlink loop from ...") from Python; the command refused it in its plan
    scan = tiny_air_scan(tmp_path / "chest.nii.gz")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out = loop / "sub" if below else loop
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    expected = (f"{out}: cannot be written ({loop} is a symbolic link loop (a link that leads back to itself)); give "
                "-o a folder you can write")
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        predict_scan(scan, None, BINARY, out, {}, progress=False)
    assert loop.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["chest.nii.gz", "loop"]
