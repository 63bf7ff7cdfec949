"""Session 75, predict walk (helper h8): `predict_scan` called from Python refuses, before it reads the scan, an
output folder where an output would replace the scan itself or could not be moved into place, as the command's plan
does (the scan was replaced by its own label map, or the refusal came once it was segmented); a 2-D label map or
predictions.json whose place is an earlier scan's folder (a scan named 1.png.nii.gz) is named as that scan's outputs,
not "a folder ...; remove it", which would lose them; a DICOM CD's root (or its DICOMDIR), or a study's folder of
series folders, is refused naming a series folder to give, not as a folder without images. No test here needs a
model: all is refused before one runs."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import tiny_grey_image

import covseg.volumes
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.labels import BINARY
from covseg.predict import predict_scan
from covseg.predict_plan import plan_predict
from covseg.volumes import read_volume

from test_volumes import write_dicom_series


def _scan(path: Path) -> Path:
    """A tiny 4-slice NIfTI scan at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((24, 20, 4), -1000, np.int16), np.diag([0.7, 0.7, 2.5, 1.0])), str(path))
    return path


def _scan_outputs(folder: Path, scan: Path) -> Path:
    """What a predict of ``scan`` leaves in ``folder``, its report naming the scan and its SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("lesions.nii.gz", "lungs.nii.gz", "report.html"):
        (folder / name).write_bytes(b"earlier")
    digest = hashlib.sha256(scan.read_bytes()).hexdigest()
    (folder / "report.json").write_text(json.dumps({"input": {"path": str(scan), "sha256": digest}}))
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _not_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("the scan was read")


def test_predict_scan_from_python_never_replaces_the_scan_with_its_own_output(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _scan(tmp_path / "lesions.nii.gz")  # named as one of the files predict writes, in the folder given by -o
    (tmp_path / "sub").mkdir()
    before = _tree(tmp_path)
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    with pytest.raises(CovsegError, match="^" + re.escape(f"{scan}: covseg predict would write its own "
                                                          "lesions.nii.gz over this scan; give -o another folder")):
        predict_scan(scan, None, BINARY, tmp_path / "sub" / "..", {}, progress=False)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("blocker", ["report.html", "lungs.nii.gz"])
def test_predict_scan_from_python_refuses_a_blocked_output_before_reading_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blocker: str) -> None:
    scan = _scan(tmp_path / "chest.nii.gz")
    out = tmp_path / "out"
    (out / blocker).mkdir(parents=True)
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    with pytest.raises(CovsegError, match="^" + re.escape(f"{out / blocker}: is a folder where covseg writes an "
                                                          "output file")):
        predict_scan(scan, None, BINARY, out, {}, progress=False)
    (out / blocker).rmdir()
    (out.parent / "file").write_text("x")
    with pytest.raises(CovsegError, match="^" + re.escape(f"{out.parent / 'file'}: is a file where covseg writes a "
                                                          "folder of outputs")):
        predict_scan(scan, None, BINARY, out.parent / "file", {}, progress=False)


@pytest.mark.parametrize("name, what", [("1.png", "label map"), ("predictions.json", "summary")])
def test_a_2d_output_whose_place_is_an_earlier_scan_s_folder_names_that_scan(
        tmp_path: Path, capsys: pytest.CaptureFixture, name: str, what: str) -> None:
    # predict 1.png.nii.gz b.nii.gz -o out made out/1.png/ (predictions.json.nii.gz: out/predictions.json/); a later
    # predict of the slice 1.png into out said "is a folder ...; remove it", which would lose that scan's outputs
    scan = _scan(tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    _scan_outputs(out / name, scan)
    (tmp_path / "slices").mkdir()
    image = tiny_grey_image(tmp_path / "slices" / "1.png")
    expected = (f"{out / name}: holds the outputs of the scan {scan}, where the 2-D images' {what} would go; give -o "
                "a new folder")
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        plan_predict([image], out)
    before = _tree(tmp_path)
    assert main(["predict", str(image), "-o", str(out), "--model", str(tmp_path / "no-model"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"covseg: error: {expected}"]
    assert _tree(tmp_path) == before


def _cd(root: Path) -> Path:
    """A DICOM CD's layout at ``root``: a DICOMDIR index (a stand-in with DICOM's preamble), a viewer folder, and one
    series four folders down, DICOM/PA0/ST0/SE0 (files named as CDs name them, without a suffix)."""
    root.mkdir(parents=True)
    (root / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    (root / "AUTORUN.INF").write_text("[autorun]\n")
    (root / "Viewer").mkdir()
    tiny_grey_image(root / "Viewer" / "icon.png")
    write_dicom_series(root / "DICOM" / "PA0" / "ST0" / "SE0", np.full((2, 8, 8), -1000.0))
    return root / "DICOM" / "PA0" / "ST0" / "SE0"


def test_a_dicom_cd_s_root_or_a_study_folder_names_a_series_folder_to_give(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    # a clinician's CD: "holds no DICOM images, NIfTI or PNG/JPG slices", and its DICOMDIR given alone was "a DICOM
    # file without the .dcm suffix; give the folder holding its series (covseg predict CD ...)", the root again
    series = _cd(tmp_path / "cd")
    cd = tmp_path / "cd"
    expected = (f"{cd}: holds no images itself, but DICOM files in its subfolder DICOM/PA0/ST0/SE0; give the folder of "
                f"one series, e.g. {series}")
    for given in (cd, cd / "DICOMDIR"):
        with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
            plan_predict([given], tmp_path / "out")
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        read_volume(cd)
    study = series.parent  # a study's folder of series folders: was "no images found in ..."
    write_dicom_series(study / "SE1", np.full((2, 8, 8), -1000.0))
    expected = f"{study}: holds no images itself, but DICOM files in its subfolder SE0; give the folder of one series"
    with pytest.raises(CovsegError, match="^" + re.escape(f"{expected}, e.g. {series}") + "$"):
        plan_predict([study], tmp_path / "out")
    assert main(["predict", str(study), "-o", str(tmp_path / "out"), "--model", str(tmp_path / "none"),
                 "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert plan_predict([series], tmp_path / "out").scans == [series]


def test_a_folder_without_images_or_series_below_is_refused_as_before(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images")
    with pytest.raises(CovsegError, match=r"^no images found in "):
        plan_predict([tmp_path / "empty"], tmp_path / "out")
