"""Tests added by mutation testing of covseg/dicom.py and covseg/predict_plan.py: each kills a source mutant that
the other tests let through.

Expected values are worked out by hand in the comments. The DICOM writer follows test_volumes.py's ``_ct_slice``
(copied, not imported): axial slices, ImageOrientationPatient ``1\\0\\0\\0\\1\\0`` (rows along L, columns along
P), so that slice ``k`` of the canonical ``(Z, Y, X)`` volume is the stored pixel array of the ``k``-th slice.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, generate_uid

from covseg.dicom import (
    check_greyscale,
    dicom_floats,
    dicom_number,
    has_dicom_value,
    looks_like_dicom,
    read_dicom_slice,
    slice_pixels,
)
from covseg.errors import CovsegError
from covseg.predict_plan import PredictPlan, plan_predict
from covseg.volumes import read_volume

PIXEL_MM = (0.7, 0.8)  # PixelSpacing: row spacing, column spacing
STEP_MM = 2.5


def _ct_slice(pixels: np.ndarray, k: int, uid: str, *, slope: float | None = 2.0,
              intercept: float | None = -1024.0) -> Dataset:
    """Axial CT slice ``k`` of series ``uid`` at z = 2.5 k mm, identity orientation."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", uid, "CT"
    ds.ImagePositionPatient = [0.0, 0.0, STEP_MM * k]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = list(PIXEL_MM)
    ds.SliceThickness = STEP_MM
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.set_pixel_data(pixels, "MONOCHROME2", 8 * pixels.itemsize)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _stored(n: int = 3) -> np.ndarray:
    """(n, 4, 5) stored values 0..: slice k holds 100 k + 5 row + column (HU 2 v - 1024 under the default tags)."""
    return (100 * np.arange(n)[:, None, None] + 5 * np.arange(4)[None, :, None]
            + np.arange(5)[None, None, :]).astype(np.uint16)


def _bare(ds: Dataset, path: Path, *, implicit: bool = False, little: bool = True) -> Path:
    """Save ``ds`` ACR-NEMA style: no preamble, no ``DICM``, no group 0002."""
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False, implicit_vr=implicit, little_endian=little)
    assert path.read_bytes()[128:132] != b"DICM"
    return path


def _image(path: Path) -> Path:
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path)
    return path


def _nifti_scan(path: Path) -> Path:
    nib.save(nib.Nifti1Image(np.full((24, 20, 4), -1000, np.int16), np.diag([0.7, 0.7, 2.5, 1.0])), str(path))
    return path


# ---------------------------------------------------------------------------------- which files are DICOM


def test_a_bare_upper_case_dcm_series_beside_a_preview_png_is_read_as_the_dicom_series(tmp_path: Path) -> None:
    # kills: looks_like_dicom and read_dataset comparing the suffix without lower() (a bare "x.DCM" has no DICM
    # magic: only its name says DICOM; without it the folder is a PNG stack, or holds no DICOM images)
    stored = _stored()
    uid = generate_uid()
    for k in range(3):
        _bare(_ct_slice(stored[k], k, uid), tmp_path / f"IM{k}.DCM")
    _image(tmp_path / "preview.png")
    assert looks_like_dicom(tmp_path / "IM0.DCM")
    vol = read_volume(tmp_path)
    assert vol.kind == "dicom"
    assert np.array_equal(vol.hu, 2.0 * stored - 1024.0)  # slope 2, intercept -1024
    assert vol.spacing == pytest.approx((STEP_MM, *PIXEL_MM))


def test_a_folder_or_a_short_file_does_not_look_like_dicom(tmp_path: Path) -> None:
    # kills: an unreadable path (a folder: IsADirectoryError) taken for DICOM; the magic read short
    assert not looks_like_dicom(tmp_path)
    (tmp_path / "short").write_bytes(b"\0" * 128 + b"DIC")
    assert not looks_like_dicom(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\0" * 128 + b"DICM")
    assert looks_like_dicom(tmp_path / "magic")
    (tmp_path / "wrong").write_bytes(b"\0" * 128 + b"DICX")
    assert not looks_like_dicom(tmp_path / "wrong")


def test_a_bare_big_endian_slice_is_read_in_its_own_byte_order(tmp_path: Path) -> None:
    # kills: the transfer syntax named for implicit/explicit swapped (big endian read as implicit little endian)
    stored = np.array([[1, 2, 300], [4000, 5, 1030]], np.uint16)
    ds = _ct_slice(stored, 0, generate_uid(), slope=1.0)
    ds.PixelData = stored.astype(">u2").tobytes()  # pydicom writes PixelData bytes as they are: swap them here
    path = _bare(ds, tmp_path / "be.dcm", implicit=False, little=False)
    hu, warnings = read_dicom_slice(path)
    assert hu.tolist() == [[-1023.0, -1022.0, -724.0], [2976.0, -1019.0, 6.0]]  # stored - 1024
    assert warnings == []


def _compressed_slice(syntax: str) -> Dataset:
    """A CT slice whose pixel data are compressed in transfer syntax ``syntax`` (a stub bitstream)."""
    from pydicom.encaps import encapsulate

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CT", 1, -1024
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 60 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    return ds


def _jpeg_without_preamble(path: Path) -> Path:
    """A JPEG Lossless CT slice with its group 0002 (naming the transfer syntax) but no preamble and no DICM."""
    from pydicom.uid import JPEGLosslessSV1

    ds = _compressed_slice(JPEGLosslessSV1)
    ds.preamble = None
    ds.save_as(path, enforce_file_format=False)
    assert path.read_bytes()[:2] == b"\x02\x00"  # starts with group 0002 itself
    return path


def _jpeg_decoder_installed() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    return get_decoder(JPEGLosslessSV1).is_available


@pytest.mark.skipif(_jpeg_decoder_installed(), reason="a JPEG Lossless decoder is installed here")
def test_a_dcm_without_preamble_keeps_the_transfer_syntax_its_file_meta_names(tmp_path: Path) -> None:
    # kills: the named transfer syntax overwritten by the body's encoding (explicit little endian), which reads
    # the compressed bytes as damaged pixel data instead of saying a decoder is missing
    path = _jpeg_without_preamble(tmp_path / "jpeg.dcm")
    with pytest.raises(CovsegError, match=r"jpeg\.dcm: its pixel data are compressed \(JPEG Lossless.*\) and no "
                                          r"installed decoder reads them"):
        read_dicom_slice(path)


# ---------------------------------------------------------------------------------- plan_predict: output folders


@pytest.mark.parametrize("marker", ["config.yaml", "run.json", "fold-0/config.yaml", "fold-3/run.json"])
def test_a_run_or_cross_validation_folder_as_the_output_is_refused(tmp_path: Path, marker: str) -> None:
    # kills: either half of the run-folder refusal dropped (the folder's own run files, or a fold-* run inside)
    scan = _nifti_scan(tmp_path / "chest.nii.gz")
    out = tmp_path / "runs" / "r1"
    (out / marker).parent.mkdir(parents=True)
    (out / marker).write_text("{}\n")
    with pytest.raises(CovsegError, match=rf"^{out}: is a run or cross-validation folder; its files could be "
                                          rf"replaced by predictions: give -o a folder of its own, e\.g\. "
                                          rf"{out / 'predictions'}$"):
        plan_predict([scan], out)
    (out / marker).unlink()  # the same folder without the run file is fine
    assert plan_predict([scan], out) == PredictPlan([scan], [out], [])


# ---------------------------------------------------------------------------------- empty tags


def test_an_empty_or_blank_tag_counts_as_missing() -> None:
    # kills: a blank value ("  ", DICOM's padding) taken as present; an empty string read as a bad number. pydicom 3
    # reads an empty numeric tag from a file as None, so these only show on a data set built in memory
    assert not has_dicom_value(SimpleNamespace(RescaleIntercept="  "), "RescaleIntercept")
    assert not has_dicom_value(SimpleNamespace(RescaleIntercept=""), "RescaleIntercept")
    assert not has_dicom_value(SimpleNamespace(), "RescaleIntercept")
    assert has_dicom_value(SimpleNamespace(RescaleIntercept="0"), "RescaleIntercept")
    assert has_dicom_value(SimpleNamespace(RescaleIntercept=0.0), "RescaleIntercept")
    assert dicom_number(SimpleNamespace(NumberOfFrames=""), "NumberOfFrames", 1, Path("x.dcm")) == 1.0
    assert dicom_number(SimpleNamespace(), "RescaleSlope", 1, Path("x.dcm")) == 1.0
    assert dicom_number(SimpleNamespace(RescaleSlope="2.5"), "RescaleSlope", 1, Path("x.dcm")) == 2.5


# ---------------------------------------------------------------------------------- greyscale, frames, modality


def _slice_file(path: Path, stored: np.ndarray, **tags) -> Path:
    """One CT slice (slope 1, intercept -1024 unless given) with ``tags`` set (None deletes one) before saving."""
    ds = _ct_slice(stored, 0, generate_uid(), slope=tags.pop("slope", 1.0), intercept=tags.pop("intercept", -1024.0))
    for key, value in tags.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_lower_case_monochrome_header_is_greyscale(tmp_path: Path) -> None:
    # kills: the photometric interpretation compared without upper(): a lower-case MONOCHROME header refused as a
    # colour image (pydicom itself then refuses to decode its pixels, as damaged pixel data)
    ds = _ct_slice(np.zeros((2, 2), np.uint16), 0, generate_uid())
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):  # pydicom: CS is upper case
        ds.PhotometricInterpretation = "monochrome1"
    check_greyscale(ds, tmp_path / "lc.dcm")  # no refusal
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(CovsegError, match=r"lc\.dcm: has 1 samples per pixel \(RGB\), a colour image"):
        check_greyscale(ds, tmp_path / "lc.dcm")


def test_a_one_sample_palette_colour_slice_is_refused_as_colour(tmp_path: Path) -> None:
    # kills: only RGB refused (PALETTE COLOR has one sample per pixel: the photometric interpretation alone tells)
    path = _slice_file(tmp_path / "pal.dcm", np.array([[24, 1124]], np.uint16),
                       PhotometricInterpretation="PALETTE COLOR")
    with pytest.raises(CovsegError, match=r"pal\.dcm: has 1 samples per pixel \(PALETTE COLOR\), a colour image, "
                                          r"not a CT slice; give the original greyscale CT series$"):
        read_dicom_slice(path)


def test_a_zero_sample_or_frame_count_reads_as_one(tmp_path: Path) -> None:
    # kills: SamplesPerPixel 0 taken as 0 (refused as colour) instead of the default 1
    ds = _ct_slice(np.zeros((2, 2), np.uint16), 0, generate_uid())
    ds.SamplesPerPixel, ds.NumberOfFrames = 0, 0
    check_greyscale(ds, tmp_path / "x.dcm")  # no refusal
    ds.NumberOfFrames = 2
    with pytest.raises(CovsegError, match=r"x\.dcm: is a multi-frame DICOM \(2 frames\); export the series as one "
                                          "slice per file$"):
        check_greyscale(ds, tmp_path / "x.dcm")


def test_a_single_slice_of_another_modality_is_refused_by_read_dicom_slice(tmp_path: Path) -> None:
    # kills: read_dicom_slice skipping check_greyscale (an MR slice read as HU)
    path = _slice_file(tmp_path / "mr.dcm", np.array([[24, 1124]], np.uint16), Modality="MR")
    with pytest.raises(CovsegError, match=r"mr\.dcm: Modality is MR, not CT; give a CT series$"):
        read_dicom_slice(path)


def test_read_dicom_slice_of_a_missing_path_says_not_found(tmp_path: Path) -> None:
    # kills: the not-a-file check dropped (a folder or a missing path then fails as unreadable DICOM)
    for path in (tmp_path / "missing.dcm", tmp_path):
        with pytest.raises(CovsegError, match=rf"^{path}: file not found; check the path$"):
            read_dicom_slice(path)


# ---------------------------------------------------------------------------------- rescale to HU


def test_an_intercept_without_a_slope_is_applied_and_is_no_missing_rescale(tmp_path: Path) -> None:
    # kills: the intercept read only when a slope is there; "missing" set when the slope (not the intercept) is
    stored = np.array([[24, 1124], [0, 2048]], np.uint16)
    path = _slice_file(tmp_path / "inter.dcm", stored, slope=None, intercept=-1024.0)
    hu, warnings = read_dicom_slice(path)
    assert hu.dtype == np.float32  # kills: float64 HU
    assert hu.tolist() == [[-1000.0, 100.0], [-1024.0, 1024.0]]  # stored - 1024
    assert warnings == []


def test_a_zero_slope_is_taken_as_one_and_a_fractional_slope_is_kept(tmp_path: Path) -> None:
    # kills: slope 0 applied (every voxel = intercept); the slope truncated to an integer
    stored = np.array([[24, 1124]], np.uint16)
    hu, _ = read_dicom_slice(_slice_file(tmp_path / "zero.dcm", stored, slope=0.0))
    assert hu.tolist() == [[-1000.0, 100.0]]  # 24 - 1024, 1124 - 1024
    hu, _ = read_dicom_slice(_slice_file(tmp_path / "half.dcm", stored, slope=0.5, intercept=-100.0))
    assert hu.tolist() == [[-88.0, 462.0]]  # 0.5 * 24 - 100, 0.5 * 1124 - 100
    hu, _ = read_dicom_slice(_slice_file(tmp_path / "frac.dcm", stored, slope=2.5, intercept=-1100.0))
    assert hu.tolist() == [[-1040.0, 1710.0]]  # 2.5 * 24 - 1100 = -1040, 2.5 * 1124 - 1100 = 1710


def test_without_an_intercept_a_minimum_of_exactly_minus_100_is_refused(tmp_path: Path) -> None:
    # kills: the threshold taken inclusively (-100 itself passing as HU); the maximum tested instead of the minimum
    stored = np.array([[-100, 50]], np.int16)
    with pytest.raises(CovsegError, match=r"edge\.dcm: has no RescaleIntercept and its values \(min -100\) are not "
                                          r"Hounsfield units; give the original CT series \(with rescale tags\)$"):
        read_dicom_slice(_slice_file(tmp_path / "edge.dcm", stored, slope=None, intercept=None))
    below = np.array([[-101, 50]], np.int16)
    hu, warnings = read_dicom_slice(_slice_file(tmp_path / "below.dcm", below, slope=None, intercept=None))
    assert hu.tolist() == [[-101.0, 50.0]]
    assert warnings == ["below.dcm: no RescaleIntercept; stored values (reaching below -100) taken as Hounsfield units"]


def test_a_slope_alone_is_applied_but_the_values_still_need_air_below_minus_100(tmp_path: Path) -> None:
    # a slope without an intercept: 2 * stored; -60 * 2 = -120 reaches below -100, so taken as HU with the warning
    stored = np.array([[-60, 50]], np.int16)
    hu, warnings = read_dicom_slice(_slice_file(tmp_path / "slope.dcm", stored, slope=2.0, intercept=None))
    assert hu.tolist() == [[-120.0, 100.0]]
    assert warnings == ["slope.dcm: no RescaleIntercept; stored values (reaching below -100) taken as Hounsfield units"]


def test_a_multi_valued_rescale_slope_is_refused_in_one_line(tmp_path: Path) -> None:
    # kills: TypeError (float() of a multi-value) not caught in dicom_number
    path = _slice_file(tmp_path / "mv.dcm", np.array([[24, 1124]], np.uint16), RescaleSlope=[1, 2])
    with pytest.raises(CovsegError, match=r"mv\.dcm: DICOM RescaleSlope is .*1.*2.*, not a finite number; replace "
                                          "the file or fix the tag$"):
        read_dicom_slice(path)


# ---------------------------------------------------------------------------------- plan_predict: inputs


def test_an_unreadable_nifti_in_a_folder_of_images_is_refused_as_unreadable(tmp_path: Path) -> None:
    # kills: the nested scan not read first (an unreadable .nii.gz pointed to as "the 3-D scan" to give alone)
    folder = tmp_path / "slices"
    folder.mkdir()
    _image(folder / "a.png")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(CovsegError) as info:
        plan_predict([folder], tmp_path / "out")
    assert str(info.value).startswith(f"{folder / 'broken.nii.gz'}:")
    assert "holds the 3-D scan" not in str(info.value)
    # a readable one is pointed to, to be given itself
    (folder / "broken.nii.gz").unlink()
    chest = _nifti_scan(folder / "chest.nii.gz")
    with pytest.raises(CovsegError, match=rf"^{folder}: holds the 3-D scan chest\.nii\.gz; give the file itself "
                                          rf"\(covseg predict {chest} -o OUT --model \.\.\.\)$"):
        plan_predict([folder], tmp_path / "out")


def test_a_scan_only_option_given_with_spacing_for_2d_images_hints_at_the_folder(tmp_path: Path) -> None:
    # kills: the --spacing hint added without --spacing (or left out with it)
    image = _image(tmp_path / "x.png")
    hint = " (--spacing reads a folder of 2-D images as one scan: give the folder)"
    with pytest.raises(CovsegError) as info:
        plan_predict([image], tmp_path / "out", spacing=(2.5, 0.7, 0.7), scan_only=["--spacing"])
    assert str(info.value) == f"--spacing acts on 3-D scans only, and every input here is a 2-D image{hint}; " \
                              "leave --spacing out"
    with pytest.raises(CovsegError) as info:
        plan_predict([image], tmp_path / "out", scan_only=["--series"])
    assert str(info.value) == "--series acts on 3-D scans only, and every input here is a 2-D image; leave --series out"


def test_a_series_uid_that_is_not_in_the_folder_is_refused_by_the_plan(tmp_path: Path) -> None:
    # kills: the plan checking a DICOM scan without the --series asked for
    uid, stored, folder = generate_uid(), _stored(), _mkdir(tmp_path / "ct")
    for k in range(3):
        _ct_slice(stored[k], k, uid).save_as(folder / f"{k}.dcm", enforce_file_format=True)
    assert plan_predict([tmp_path / "ct"], tmp_path / "out", series=uid).scans == [tmp_path / "ct"]
    with pytest.raises(CovsegError, match=rf"^{tmp_path / 'ct'}: holds no series 1\.2\.3\.4\.5; the series there "
                                          rf"are: {uid} \(3 images\)$"):
        plan_predict([tmp_path / "ct"], tmp_path / "out", series="1.2.3.4.5")
    assert not (tmp_path / "out").exists()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------- plan_predict: scan outputs


def test_two_scans_alone_each_get_a_subfolder_named_after_them(tmp_path: Path) -> None:
    # kills: only three or more scans given subfolders
    a, b = _nifti_scan(tmp_path / "a.nii.gz"), _nifti_scan(tmp_path / "b.nii")
    out = tmp_path / "out"
    assert plan_predict([a, b], out) == PredictPlan([a, b], [out / "a", out / "b"], [])


def test_a_scan_beside_an_image_gets_a_subfolder(tmp_path: Path) -> None:
    # kills: a single scan writing into -o itself when 2-D images are predicted beside it
    scan, image = _nifti_scan(tmp_path / "chest.nii.gz"), _image(tmp_path / "x.png")
    out = tmp_path / "out"
    assert plan_predict([scan, image], out) == PredictPlan([scan], [out / "chest"], [image])


def test_the_first_clashing_name_is_named_and_an_empty_stem_clashes(tmp_path: Path) -> None:
    # kills: the last clash named instead of the first (sorted); a scan with no name (".nii.gz") let through
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    scans = [_nifti_scan(tmp_path / "x" / "b.nii.gz"), _nifti_scan(tmp_path / "x" / "a.nii.gz"),
             _nifti_scan(tmp_path / "y" / "b.nii"), _nifti_scan(tmp_path / "y" / "a.nii")]
    out = tmp_path / "out"
    with pytest.raises(CovsegError, match=rf"^several scans would write to {out / 'a'}; give scans distinct names "
                                          r"\(or predict them one at a time, each with its own -o\)$"):
        plan_predict(scans, out)
    nameless = _nifti_scan(tmp_path / "y" / ".nii.gz")
    with pytest.raises(CovsegError, match=rf"^several scans would write to {out}; give scans distinct names"):
        plan_predict([nameless, scans[0]], out)


def test_a_scan_named_like_an_output_is_refused_only_where_it_would_be_overwritten(tmp_path: Path) -> None:
    # kills: the parent compared unresolved (-o given as sub/..); any scan in -o refused; the name check dropped
    scan = _nifti_scan(tmp_path / "lesions.nii.gz")
    (tmp_path / "sub").mkdir()
    with pytest.raises(CovsegError, match=rf"^{scan}: covseg predict would write its own lesions\.nii\.gz over this "
                                          r"scan; give -o another folder$"):
        plan_predict([scan], tmp_path / "sub" / "..")
    chest = _nifti_scan(tmp_path / "chest.nii.gz")  # not an output name: -o its own folder is fine
    assert plan_predict([chest], tmp_path) == PredictPlan([chest], [tmp_path], [])
    assert plan_predict([scan], tmp_path / "sub").scan_outputs == [tmp_path / "sub"]


# ---------------------------------------------------------------------------------- plan_predict: 2-D images


def test_images_alone_are_not_read_by_the_plan(tmp_path: Path) -> None:
    # kills: the images read (and refused) by the plan when no scan is published before them
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert plan_predict([broken], tmp_path / "out") == PredictPlan([], [], [broken])
    scan = _nifti_scan(tmp_path / "chest.nii.gz")
    with pytest.raises(CovsegError, match=r"broken\.png"):  # beside a scan: read, and refused, before any work
        plan_predict([scan, broken], tmp_path / "out")


def test_without_overlays_an_image_where_its_overlay_would_go_is_no_clash(tmp_path: Path) -> None:
    # kills: the images' outputs checked with overlays whatever --no-overlays says
    out = tmp_path / "out"
    image = _image(_mkdir(out / "overlays") / "x.png")
    scan = _nifti_scan(tmp_path / "chest.nii.gz")
    plan = plan_predict([scan, image], out, overlays=False)
    assert plan == PredictPlan([scan], [out / "chest"], [image])
    with pytest.raises(CovsegError, match=rf"^{out / 'overlays' / 'x.png'}: is an input and would be overwritten"):
        plan_predict([scan, image], out)


def test_a_compression_pydicom_has_no_decoder_for_at_all_says_what_to_do(tmp_path: Path) -> None:
    # kills: such a syntax (get_decoder raises NotImplementedError) told as a damaged file to replace
    from pydicom.uid import MPEG2MPML

    path = tmp_path / "mpeg.dcm"
    _compressed_slice(MPEG2MPML).save_as(path, enforce_file_format=True)
    with pytest.raises(CovsegError, match=r"mpeg\.dcm: its pixel data are compressed \(MPEG2 Main Profile / Main "
                                          r"Level\) and no installed decoder reads them; install pylibjpeg"):
        read_dicom_slice(path)


def test_pixel_data_of_more_than_two_dimensions_is_refused_as_no_single_slice() -> None:
    # kills: only arrays of four or more dimensions refused (a (frames, rows, cols) array taken for a slice)
    ds = SimpleNamespace(pixel_array=np.zeros((2, 3, 4), np.int16))
    with pytest.raises(CovsegError, match=r"^x\.dcm: pixel data has shape \(2, 3, 4\), not one greyscale slice; "
                                          "give the original greyscale CT series$"):
        slice_pixels(ds, Path("x.dcm"))
    assert slice_pixels(SimpleNamespace(pixel_array=np.ones((3, 4))), Path("x.dcm")).shape == (3, 4)


def test_a_position_of_text_is_refused_as_unknown_geometry() -> None:
    # kills: ValueError (float("a")) not caught in dicom_floats
    for value in (["a", "b", "c"], None, [1.0, 2.0], 5.0):
        with pytest.raises(CovsegError, match=r"^x\.dcm: DICOM ImagePositionPatient is missing or invalid; the slice "
                                              "geometry is unknown$"):
            dicom_floats(SimpleNamespace(ImagePositionPatient=value), "ImagePositionPatient", 3, Path("x.dcm"))
    got = dicom_floats(SimpleNamespace(ImagePositionPatient=["1", 2, 3.5]), "ImagePositionPatient", 3, Path("x"))
    assert got.dtype == np.float64 and got.tolist() == [1.0, 2.0, 3.5]
