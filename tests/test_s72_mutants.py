"""Tests written against hand-made mutants of the code sessions 70-72 added or changed (covseg.lungmask's
check_lung_coverage, the raw-CT NIfTI refusal and the DICOM series listing / geometry refusals of covseg.volumes,
predict_plan's DICOM-without-.dcm message, export's --force refusal, the ``slices`` that open_ensemble / open_models
pass on), each one a mutant the other tests let through. Expected values are worked out by hand."""
from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import covseg.predict as predict
from covseg.config import RunConfig
from covseg.errors import CovsegError
from covseg.inference import Predictor
from covseg.volumes import NO_SERIES_GEOMETRY, read_volume

from conftest import ConstantBackend
from test_volumes import _retag, _untag, truth_hu, write_dicom_series

# ---- covseg.lungmask.check_lung_coverage -------------------------------------------------------------------------


def test_lungs_reaching_both_end_slices_are_named_top_then_bottom_in_the_plural() -> None:
    # kills: the two ends listed bottom first; " slice" for both ends; the ends joined by something other than "and"
    from covseg.lungmask import check_lung_coverage

    mask = np.zeros((3, 2, 2), np.uint8)
    mask[0, 0, 0] = 1  # the bottom (inferior) slice
    mask[2, 1, 1] = 2  # the top (superior) slice
    assert check_lung_coverage(mask) == [
        "the lungs reach the scan's top (superior) and bottom (inferior) slices, so the scan may not hold the whole "
        "lungs: the volumes and percentages are of the part scanned"
    ]


# ---- covseg.volumes: a NIfTI of raw CT numbers -------------------------------------------------------------------


def _nifti(path: Path, data: np.ndarray, slope_inter: tuple[float, float] | None = None) -> Path:
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0]))
    if slope_inter is not None:
        img.header.set_slope_inter(*slope_inter)
    nib.save(img, str(path))
    return path


def test_stored_integers_reaching_256_are_the_first_refused_as_raw_ct_numbers(tmp_path: Path) -> None:
    # kills: "256 < hi" (the refusal starts one above 8-bit grey's 255, not two)
    data = np.full((6, 5, 4), 40, np.uint16)
    data[0, 0, 0], data[1, 1, 1] = 0, 256
    with pytest.raises(CovsegError, match=r"its values 0\.\.256 look like raw CT numbers \(HU \+ 1024\)"):
        read_volume(_nifti(tmp_path / "ct.nii.gz", data))


def test_stored_integers_below_zero_are_not_raw_ct_numbers(tmp_path: Path) -> None:
    # kills: "0 <= lo" dropped. HU + 1024 is never negative; -1 is above the -100 HU threshold, so these are grey
    # values (with the warning), not HU and not raw CT numbers
    data = np.full((6, 5, 4), 40, np.int16)
    data[0, 0, 0], data[1, 1, 1] = -1, 1139
    vol = read_volume(_nifti(tmp_path / "ct.nii.gz", data))
    assert not vol.is_hu
    assert any("values -1..1139 do not look like Hounsfield units" in w for w in vol.warnings)


def test_a_nifti_whose_header_adds_an_intercept_alone_is_not_called_raw_ct_numbers(tmp_path: Path) -> None:
    # kills: the scl_inter test dropped from `unscaled` (slope 1 with an intercept of 10 is a header that rescales:
    # stored 0..1139 read as 10..1149, grey values with the warning, as a slope other than 1 is)
    data = np.full((6, 5, 4), 40, np.uint16)
    data[0, 0, 0], data[1, 1, 1] = 0, 1139
    vol = read_volume(_nifti(tmp_path / "ct.nii.gz", data, (1.0, 10.0)))
    assert not vol.is_hu
    assert any("values 10..1149 do not look like Hounsfield units" in w for w in vol.warnings)


# ---- covseg.volumes: the series listing names a series' modality where it is not CT -------------------------------


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # the lower-case "ct", on purpose
def test_the_series_listing_names_a_modality_only_where_it_is_not_ct(tmp_path: Path) -> None:
    # kills: a series without Modality labelled "(2 images, )"; a lower-case "ct" (ranked as CT) labelled with it;
    # the modality placed after the description instead of before it
    hu = truth_hu()
    lower = write_dicom_series(tmp_path, hu[:4], modality="ct", seed=1)
    untagged = write_dicom_series(tmp_path, hu[:3], modality=None, seed=2)
    pet = write_dicom_series(tmp_path, hu[:5], modality="PT", seed=3)
    import pydicom

    for f in tmp_path.iterdir():
        ds = pydicom.dcmread(f)
        if ds.SeriesInstanceUID == pet:
            ds.SeriesDescription = "PET AC"
            ds.save_as(f)
    # CT first (no Modality counts as CT), the larger first; then the PET series, though larger
    with pytest.raises(CovsegError, match=r"holds no series nope; the series there are: (.*)$") as refused:
        read_volume(tmp_path, series_uid="nope")
    listing = str(refused.value).split("the series there are: ", 1)[1]
    assert listing == f"{lower} (4 images); {untagged} (3 images); {pet} (5 images, PT, 'PET AC')"


# ---- covseg.volumes: every missing or invalid geometry tag of a series gives the way out ---------------------------


def _first_sorted(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


@pytest.mark.parametrize("tag, value, where", [
    ("ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, -1.0], "all"),  # five values: no orientation
    ("PixelSpacing", [0.7, 0.8, 0.9], "all"),  # the first slice's spacing is invalid
    ("PixelSpacing", [0.7, 0.8, 0.9], "others"),  # the first slice's is valid, a later one's not
])
def test_a_series_without_valid_geometry_tags_is_refused_with_the_way_out(tmp_path: Path, tag: str, value: list,
                                                                          where: str) -> None:
    # kills: NO_SERIES_GEOMETRY left out of the ImageOrientationPatient, the first PixelSpacing or a later slice's
    # PixelSpacing refusal (the ImagePositionPatient one is pinned in test_volumes.py)
    import pydicom

    write_dicom_series(tmp_path, truth_hu()[:3])
    first = _first_sorted(tmp_path)
    if where == "all":
        _retag(tmp_path, None, **{tag: value})
    else:
        for f in tmp_path.iterdir():
            if f != first:
                ds = pydicom.dcmread(f)
                setattr(ds, tag, value)
                ds.save_as(f)
    with pytest.raises(CovsegError) as refused:
        read_volume(tmp_path)
    message = str(refused.value)
    # a malformed orientation would refuse the slices read one by one too: only re-exporting helps (review, session 72)
    remedy = ("; re-export the series with valid geometry tags" if tag == "ImageOrientationPatient"
              else NO_SERIES_GEOMETRY)
    assert message.endswith(f"DICOM {tag} is missing or invalid; the slice geometry is unknown{remedy}")
    if where == "others":  # the refusal is of a later slice, not of the first one read
        assert not message.startswith(str(first))


# ---- covseg.predict_plan: DICOM files without the .dcm suffix ----------------------------------------------------


def test_a_dicom_file_named_dcm_in_any_case_is_planned_as_a_2d_slice(tmp_path: Path) -> None:
    # kills: the suffix test dropped (every .dcm file given alone refused as "without the .dcm suffix", since
    # looks_like_dicom is true by name) and the name not lower-cased (a CD's SLICE.DCM refused)
    from covseg.predict_plan import plan_predict
    from test_predict_plan import _write_ct_slice

    for name in ("slice.dcm", "SLICE.DCM"):
        path = tmp_path / name
        _write_ct_slice(path)
        plan = plan_predict([path], tmp_path / f"out-{name}")
        assert plan.files == [path] and plan.scans == []


# ---- covseg.export: an existing -o is refused without --force ----------------------------------------------------


def test_export_refuses_an_existing_output_by_default_and_a_dangling_link(tiny_run: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # kills: export_onnx's force defaulting to True (a library caller's file replaced silently); os.path.exists
    # for lexists (a link to nothing there is replaced by the rename too)
    from covseg.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # the refusal comes before onnx loads (and makes this fast)
    kept = tmp_path / "kept.onnx"
    kept.write_bytes(b"an earlier export")
    with pytest.raises(CovsegError, match=r"kept\.onnx: exists; pass --force to replace it or choose another -o$"):
        export_onnx(tiny_run, kept)
    assert kept.read_bytes() == b"an earlier export"
    link = tmp_path / "link.onnx"
    os.symlink(tmp_path / "nowhere.onnx", link)
    with pytest.raises(CovsegError, match=r"link\.onnx: exists; pass --force to replace it or choose another -o$"):
        export_onnx(tiny_run, link, force=False)
    assert os.path.islink(link) and not (tmp_path / "nowhere.onnx").exists()


# ---- covseg.predict: the number of slices reaches every model opened ---------------------------------------------


def _config(task: str) -> RunConfig:
    c = RunConfig()
    return dataclasses.replace(c, data=dataclasses.replace(c.data, task=task))


def test_every_member_and_the_lesion_model_are_told_how_many_slices(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # kills: slices dropped from an ensemble's members and from the --lesion-model side (each would trace its
    # model into ONNX Runtime for a predict of a few slices)
    seen: dict[str, tuple] = {}
    tasks = {"a": "multiclass", "b": "multiclass", "lesion": "binary"}

    def fake_open(path, task=None, which="auto", backend="auto", device="cpu", precision="auto", batch_size=8,
                  flip_tta=False, slices=None):
        name = Path(path).name
        seen[name] = (slices, flip_tta)
        info = {"name": name, "file": str(path), "backend": "fake", "recipe": "r", "task": tasks[name],
                "flip_tta": flip_tta, "types_only": False}
        return Predictor(ConstantBackend((0.0,) * (2 if tasks[name] == "binary" else 4)), 32), _config(tasks[name]), info

    for name in tasks:
        (tmp_path / name).mkdir()
    monkeypatch.setattr(predict, "open_predictor", fake_open)
    predict.open_models([tmp_path / "a", tmp_path / "b"], [tmp_path / "lesion"], flip_tta=True, slices=5)
    assert seen == {"a": (5, True), "b": (5, True), "lesion": (5, True)}


def test_a_modality_with_stray_spaces_is_read_alike_everywhere() -> None:
    """Modality " ct " (not valid DICOM, yet kept by pydicom) is CT for the series' ranking, the CT check and the
    listing alike (session 72: the listing stripped it, the other two did not)."""
    from types import SimpleNamespace

    from covseg.dicom import check_ct_modality, dicom_modality

    assert dicom_modality(SimpleNamespace(Modality=" ct ")) == "CT"
    assert dicom_modality(SimpleNamespace()) == "" and dicom_modality(SimpleNamespace(Modality=None)) == ""
    check_ct_modality(SimpleNamespace(Modality=" CT"), Path("x.dcm"), "a CT series")  # not refused
    with pytest.raises(CovsegError, match=r"^x\.dcm: Modality is MR, not CT; give a CT series$"):
        check_ct_modality(SimpleNamespace(Modality="mr "), Path("x.dcm"), "a CT series")


def test_a_series_with_no_orientation_tag_is_told_its_slices_can_be_read_one_by_one(tmp_path: Path) -> None:
    """Missing (not malformed) ImageOrientationPatient: each slice alone still reads (stored order), so the refusal
    offers that way out."""
    write_dicom_series(tmp_path, truth_hu()[:3])
    _untag(tmp_path, "ImageOrientationPatient")
    with pytest.raises(CovsegError, match=f"ImageOrientationPatient is missing or invalid; the slice geometry is "
                                          f"unknown{re.escape(NO_SERIES_GEOMETRY)}$"):
        read_volume(tmp_path)


def test_export_of_an_upper_case_onnx_file_says_it_is_one_already(tmp_path: Path) -> None:
    from covseg.export import export_onnx

    model = tmp_path / "m.ONNX"
    model.write_bytes(b"junk")
    with pytest.raises(CovsegError, match=r"m\.ONNX: is an ONNX file already"):
        export_onnx(model, tmp_path / "out.onnx")


def test_parameter_counts_just_under_a_hundred_thousand_read_in_millions() -> None:
    from covseg.run import parameter_count

    assert parameter_count(99_949) == "99.9k" and parameter_count(99_950) == "0.10M"
