"""plan_predict: every input and output of a prediction checked, and placed, before a model loads; scan_summary."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_air_scan, tiny_grey_image

from covseg.errors import CovsegError
from covseg.predict import scan_summary
from covseg.predict_plan import PredictPlan, plan_predict


_scan, _image = tiny_air_scan, tiny_grey_image


def test_one_scan_alone_writes_into_the_output_folder_itself(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "chest.nii.gz")
    assert plan_predict([scan], tmp_path / "out") == PredictPlan([scan], [tmp_path / "out"], [])


def test_scans_beside_images_each_get_a_subfolder_and_folders_are_expanded(tmp_path: Path) -> None:
    a, b = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "b.nii")
    (tmp_path / "slices").mkdir()
    images = [_image(tmp_path / "slices" / f"{n}.png") for n in (10, 2)]
    plan = plan_predict([a, tmp_path / "slices", b], tmp_path / "out")
    assert plan.scans == [a, b]
    assert plan.scan_outputs == [tmp_path / "out" / "a", tmp_path / "out" / "b"]
    assert plan.files == images[::-1]  # numbers sorted numerically: 2 before 10


def test_refusals_come_before_any_model_loads(tmp_path: Path) -> None:
    image = _image(tmp_path / "x.png")
    with pytest.raises(CovsegError, match=r"^--min-lesion-ml acts on 3-D scans only, and every input here is a 2-D "
                                          r"image; leave --min-lesion-ml out$"):
        plan_predict([image], tmp_path / "out", scan_only=["--min-lesion-ml", "--series"])
    assert plan_predict([image], tmp_path / "out").files == [image]  # the same inputs without it are fine
    scan = _scan(tmp_path / "s.nii.gz")
    with pytest.raises(CovsegError, match="--no-overlays acts on 2-D images only"):
        plan_predict([scan], tmp_path / "out", overlays=False)
    with pytest.raises(CovsegError, match="several scans would write to .*/out/s; give scans distinct names"):
        plan_predict([scan, _scan(tmp_path / "s.nii")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_scan_summary_names_each_side_and_says_n_a_for_a_side_without_lung() -> None:
    part = {"lung_ml": 0.0, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": None,
            "class_ml": {"infection": 0.0}}
    right = {**part, "lung_ml": 2500.4, "lesion_ml": 250.0, "lesion_percent": 10.0, "severity": 2}
    total = {**right, "lung_ml": 2500.4}
    report = {"figures": {"right": right, "left": part, "total": total, "pleural": []}}
    assert scan_summary(Path("chest.nii.gz"), report, Path("out")) == (
        "chest.nii.gz: lesions 250.0 mL = 10.0 % of 2500 mL lung, severity 2 (right 2, left n/a); "
        "report out/report.html")


def test_scan_summary_adds_pleural_findings_with_a_volume_only() -> None:
    part = {"lung_ml": 1000.0, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": 0,
            "class_ml": {"ggo": 0.0, "pleural_effusion": 12.34, "other_fluid": 0.0}}
    report = {"figures": {"right": part, "left": part, "total": {**part, "lung_ml": 2000.0},
                          "pleural": ["pleural_effusion", "other_fluid"]}}
    assert scan_summary(Path("s"), report, Path("o")) == (
        "s: lesions 0.0 mL = 0.0 % of 2000 mL lung, severity 0 (right 0, left 0); pleural effusion 12.3 mL; "
        "report o/report.html")


@pytest.mark.parametrize("name, what", [("predictions.json", "summary"), ("overlays.nii.gz", "overlays folder"),
                                        ("x.png.nii.gz", "label map")])
def test_a_scan_whose_folder_would_be_one_of_the_slices_outputs_is_refused_first(tmp_path: Path, name: str,
                                                                                   what: str) -> None:
    # found by mutation helper 166: such a scan was segmented and published, then the slices failed (or mixed in)
    scan = _scan(tmp_path / name) if name.endswith(".nii.gz") else tmp_path / name
    if not name.endswith(".nii.gz"):  # a folder of PNG slices read as a scan with --spacing
        scan.mkdir()
        for z in range(3):
            _image(scan / f"{z}.png")
    image = _image(tmp_path / "x.png")
    spacing = None if name.endswith(".nii.gz") else (2.5, 0.7, 0.7)
    stem = name.removesuffix(".nii.gz")
    with pytest.raises(CovsegError, match=rf"^{scan}: its outputs would go to {tmp_path / 'out' / stem}, the 2-D "
                                          rf"images' {what}; rename the scan"):
        plan_predict([scan, image], tmp_path / "out", spacing=spacing)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("blocker", ["report.html", "lesions.nii.gz"])
def test_a_folder_where_a_scan_s_output_file_goes_is_refused_in_the_plan(tmp_path: Path, blocker: str) -> None:
    # helper 169: the plan let it through, and the scan was segmented before publishing refused it
    scan = _scan(tmp_path / "chest.nii.gz")
    alone = tmp_path / "alone"
    (alone / blocker).mkdir(parents=True)
    with pytest.raises(CovsegError, match=rf"^{alone / blocker}: is a folder where covseg writes an output file"):
        plan_predict([scan], alone)
    several = tmp_path / "several"  # two scans: each writes into several/<stem>/
    (several / "chest" / blocker).mkdir(parents=True)
    other = _scan(tmp_path / "other.nii.gz")
    with pytest.raises(CovsegError, match=rf"^{several / 'chest' / blocker}: is a folder where covseg writes"):
        plan_predict([scan, other], several)
    (several / "other").parent.mkdir(exist_ok=True)
    (several / "other").write_text("a file where the scan's folder goes")
    (several / "chest" / blocker).rmdir()
    with pytest.raises(CovsegError, match=rf"^{several / 'other'}: is a file where covseg writes a folder of outputs"):
        plan_predict([scan, other], several)


def _write_ct_slice(path: Path) -> None:
    """One 4 x 4 CT slice (explicit VR little endian, HU = stored - 1024) as a DICOM file at ``path``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SeriesInstanceUID, ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = generate_uid(), "CT", 1, -1024
    ds.set_pixel_data(np.full((4, 4), 24, np.uint16), "MONOCHROME2", 16)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def test_a_dicom_file_of_a_transfer_syntax_pydicom_does_not_know_is_one_line(tmp_path: Path) -> None:
    # helper 169: UID.is_compressed raises ValueError for an unknown UID, which escaped as a traceback
    from covseg.dicom import read_dicom_slice

    path = tmp_path / "0.dcm"
    _write_ct_slice(path)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0"))  # the same length
    with pytest.raises(CovsegError, match=rf"^{path}: cannot read its pixel data \(.*1\.2\.840\.10008\.9\.9\.9"):
        read_dicom_slice(path)


@pytest.mark.parametrize("name", ["1.2.840.113619.2.55.3", "IM000001", "CT.0001.IMA"])
def test_a_dicom_file_without_the_dcm_suffix_is_named_as_dicom_with_the_way_to_read_it(tmp_path: Path,
                                                                                       name: str) -> None:
    # a file from a DICOM CD given on its own was "unsupported file type '.3'; use one of ..., .dcm"
    (tmp_path / "series").mkdir()
    path = tmp_path / "series" / name
    _write_ct_slice(path)
    with pytest.raises(CovsegError, match=rf"^{path}: is a DICOM file without the \.dcm suffix; give the folder holding "
                                          rf"its series \(covseg predict {path.parent} -o OUT"):
        plan_predict([path], tmp_path / "out")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(CovsegError, match=r"unsupported file type '\.txt'"):  # other files: as before
        plan_predict([text], tmp_path / "out")


def test_scan_summary_shows_a_lung_of_under_half_a_millilitre_as_not_0_ml() -> None:
    part = {"lung_ml": 0.1666, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": 0, "class_ml": {"infection": 0.0}}
    report = {"figures": {"right": part, "left": part, "total": part, "pleural": []}}
    assert scan_summary(Path("s"), report, Path("o")).startswith("s: lesions 0.0 mL = 0.0 % of 0.2 mL lung, severity 0")
