"""Tests added by mutation testing of covseg/volumes.py: each kills a source mutant that the other tests let through.

Expected values are worked out by hand from the fixtures (see the comments); the DICOM and NIfTI writers are
test_volumes.py's.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from covseg.errors import CovsegError
from covseg.dicom import read_dicom_slice
from covseg.volumes import check_volume, read_volume, write_like_input
from test_volumes import (ORIGIN_LPS, SPACING, Y, Z, _ct_slice, _file_at_z, _retag, truth_hu, write_dicom_series,
                          write_nifti)


def _png_stack(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((20, 30), 10 * k, np.uint8)).save(folder / f"{k}.png")
    return folder


# ---------------------------------------------------------------------------------- voxel-size refusals and hints


def test_the_lower_slice_spacing_bound_is_accepted_and_a_column_size_out_of_range_is_refused(tmp_path):
    from covseg.volumes import PIXEL_MM_RANGE, SLICE_MM_RANGE

    stack = _png_stack(tmp_path / "png")
    edges = (SLICE_MM_RANGE[0], PIXEL_MM_RANGE[1], PIXEL_MM_RANGE[1])  # 0.02 mm slices, 10 mm pixels: inclusive
    assert read_volume(stack, spacing=edges).spacing == pytest.approx(edges)
    # only the column size (X) is off: refused, and the hint names the pixel size
    with pytest.raises(CovsegError, match=r"voxel size 2\.5 x 0\.9 x 900 mm .* the pixel size looks like micrometres"):
        read_volume(stack, spacing=(2.5, 0.9, 900))


def test_the_hint_names_slice_spacing_and_pixel_size_when_both_are_off(tmp_path):
    stack = _png_stack(tmp_path / "png")
    # Z 2500 and Y 900 are off (X 0.9 is not): both named; / 1000 gives 2.5 and 0.9 mm
    with pytest.raises(CovsegError, match="the slice spacing and pixel size look like micrometres"):
        read_volume(stack, spacing=(2500, 900, 0.9))


def test_a_tenth_of_a_mm_given_in_metres_is_named_metres(tmp_path):
    stack = _png_stack(tmp_path / "png")
    # 0.0001 m = 0.1 mm: x 1000 fits every range (x 100 = 0.01 mm would not)
    with pytest.raises(CovsegError, match=r"they look like metres \(x 1000 gives mm\)"):
        read_volume(stack, spacing=(0.0001, 0.0001, 0.0001))


def test_a_nifti_in_mm_with_an_implausible_voxel_size_names_its_units_mm(tmp_path):
    img = nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), np.diag([0.7, 0.7, 2500.0, 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(CovsegError,
                       match=r"voxel size 2500 x 0\.7 x 0\.7 mm \(Z Y X, from its affine, xyzt_units mm\)"):
        read_volume(tmp_path / "ct.nii.gz")


# ---------------------------------------------------------------------------------- NIfTI refusals


def test_a_nifti_with_a_non_finite_affine_is_refused(tmp_path):
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[0, 3] = np.nan  # the 3x3 part is fine (determinant 1.225): only the finiteness check catches it
    img = nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), None)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(tmp_path / "nan.nii.gz"))
    with pytest.raises(CovsegError, match="its voxel-to-world affine is singular or not finite"):
        read_volume(tmp_path / "nan.nii.gz")


def test_a_complex_nifti_is_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), -1000 + 0j, np.complex64), np.diag([0.7, 0.7, 2.5, 1.0])),
             str(tmp_path / "c.nii.gz"))
    with pytest.raises(CovsegError, match=r"holds complex64 \(colour or complex\) voxels"):
        read_volume(tmp_path / "c.nii.gz")


def test_a_4d_nifti_and_a_2d_nifti_are_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.full((8, 8, 4, 2), -1000, np.int16), np.diag([0.7, 0.7, 2.5, 1.0])),
             str(tmp_path / "4d.nii.gz"))
    with pytest.raises(CovsegError, match=r"is a 4-D NIfTI of shape \(8, 8, 4, 2\), not one CT volume"):
        check_volume(tmp_path / "4d.nii.gz")
    nib.save(nib.Nifti1Image(np.full((8, 8), -1000, np.int16), np.diag([0.7, 0.7, 2.5, 1.0])),
             str(tmp_path / "2d.nii.gz"))
    with pytest.raises(CovsegError, match=r"holds a single slice of shape \(8, 8\); a scan needs at least 2 slices"):
        read_volume(tmp_path / "2d.nii.gz")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # nibabel's qform of inf
def test_an_infinite_voxel_size_without_an_sform_is_refused_as_such(tmp_path):
    img = nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), None)
    img.header.set_qform(np.diag([0.7, 0.7, 2.5, 1.0]), code=1)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][3] = np.inf
    nib.save(img, str(tmp_path / "inf.nii.gz"))
    with pytest.raises(CovsegError, match=r"voxel sizes \(pixdim 0\.7, 0\.7, inf\) are not all positive"):
        read_volume(tmp_path / "inf.nii.gz")


# ---------------------------------------------------------------------------------- label maps


def test_boolean_labels_are_written_and_float_labels_refused(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", truth_hu())
    volume = read_volume(tmp_path / "ct.nii.gz")
    mask = np.zeros(volume.shape, bool)
    mask[3, 7, 5] = True
    out = nib.load(str(write_like_input(mask, volume, tmp_path / "mask.nii.gz")))
    data = np.asarray(out.dataobj)
    assert out.get_data_dtype() == np.uint8 and int(data.sum()) == 1
    with pytest.raises(ValueError, match="integers in 0..255"):
        write_like_input(mask.astype(np.float32), volume, tmp_path / "float.nii.gz")


def test_a_slightly_sheared_affine_gets_no_qform(tmp_path):
    # a 0.3 degree gantry tilt: the step leans by tan(0.3 deg) = 0.0052 of its length, a shear a qform cannot hold
    write_dicom_series(tmp_path / "dicom", truth_hu()[:4])
    dcm = read_volume(tmp_path / "dicom")
    tilted = dcm.input_affine.copy()
    tilted[1, 2] += np.tan(np.radians(0.3)) * tilted[2, 2]
    volume = dataclasses.replace(dcm, input_affine=tilted)
    out = nib.load(str(write_like_input(np.zeros(volume.shape, np.uint8), volume, tmp_path / "l.nii.gz")))
    assert int(out.header.get_sform(coded=True)[1]) == 1 and int(out.header.get_qform(coded=True)[1]) == 0


# ---------------------------------------------------------------------------------- DICOM series


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS:UserWarning")  # pydicom on writing the nan
def test_a_slice_position_that_is_not_a_number_is_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:4])
    _retag(tmp_path, ORIGIN_LPS[2] + SPACING[0], ImagePositionPatient=["-25", "16.9", "nan"])
    with pytest.raises(CovsegError, match="DICOM ImagePositionPatient is missing or invalid"):
        read_volume(tmp_path)


def test_a_slice_of_three_samples_is_refused_by_its_header(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:3])
    _retag(tmp_path, None, SamplesPerPixel=3)  # still MONOCHROME2: the sample count alone says colour
    with pytest.raises(CovsegError, match=r"has 3 samples per pixel \(MONOCHROME2\), a colour image"):
        check_volume(tmp_path)


def test_a_zero_pixel_spacing_is_refused_as_not_positive(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:3])
    _retag(tmp_path, None, PixelSpacing=[0.0, 0.8])
    with pytest.raises(CovsegError, match=r"DICOM PixelSpacing \[0\.0, 0\.8\] is not positive; the slice geometry is "
                                          r"unknown; give its slices as \.dcm files"):
        read_volume(tmp_path)


def test_a_single_slice_without_rescale_tags_warns_that_its_values_are_taken_as_hu(tmp_path):
    hu = truth_hu()[0].astype(np.int16)  # signed, down to -1014: already HU
    _ct_slice(hu, [0, 0, 0], [1, 0, 0, 0, 1, 0], generate_uid(), slope=None, intercept=None).save_as(
        tmp_path / "one.dcm", enforce_file_format=True)
    data, warnings = read_dicom_slice(tmp_path / "one.dcm")
    assert np.array_equal(data, hu)
    assert warnings == ["one.dcm: no RescaleIntercept; stored values (reaching below -100) taken as Hounsfield units"]


def test_every_slice_without_rescale_tags_is_counted(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:3], slope=None, intercept=None)
    vol = read_volume(tmp_path)
    assert vol.warnings == ["3 of 3 slices: no RescaleIntercept; stored values (reaching below -100) taken as "
                            "Hounsfield units"]


def test_of_two_series_equally_large_the_one_whose_uid_sorts_first_is_read(tmp_path):
    hu = truth_hu()[:4]
    write_dicom_series(tmp_path, hu, uid="1.2.826.0.2")
    for f in tmp_path.iterdir():
        f.rename(tmp_path / f"A_{f.name}")  # the later UID's files sort first (before "IM...")
    write_dicom_series(tmp_path, hu + 100, uid="1.2.826.0.1", seed=1)
    vol = read_volume(tmp_path)
    assert vol.series_uid == "1.2.826.0.1" and np.array_equal(vol.hu, hu + 100)
    assert len(vol.warnings) == 1 and "left out: 1.2.826.0.2 (4 images)" in vol.warnings[0]


def test_a_slice_without_an_orientation_is_another_stack(tmp_path):
    import pydicom

    hu = truth_hu()[:5]
    write_dicom_series(tmp_path, hu[:4])
    name = _file_at_z(tmp_path, ORIGIN_LPS[2] + 3 * SPACING[0])
    ds = pydicom.dcmread(tmp_path / name)
    ds.ImagePositionPatient = [float(v) for v in ORIGIN_LPS + [0.0, (Y - 1) * SPACING[1], 4 * SPACING[0]]]
    del ds.ImageOrientationPatient
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "zz_no_orientation", enforce_file_format=True)  # sorts last: the stack key is oriented
    vol = read_volume(tmp_path)
    assert vol.shape[0] == 4 and np.array_equal(vol.hu, hu[:4])
    assert any("1 images of another size or orientation (e.g. zz_no_orientation" in w for w in vol.warnings)


def test_uneven_steps_within_the_grid_tolerance_are_warned(tmp_path):
    # slice 3 raised by 0.15 of a step (0.375 mm): steps 2.875 and 2.125 mm, 15 % off the 2.5 mm median (> 10 %)
    write_dicom_series(tmp_path, truth_hu()[:6], z_jitter={3: 0.15 * SPACING[0]})
    vol = read_volume(tmp_path)
    assert vol.warnings == ["non-uniform slice spacing: steps 2.12..2.88 mm, each slice within 20% of a step of a "
                            "2.5 mm grid, which is used"]


def test_a_slice_a_quarter_step_off_the_grid_is_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:8], z_jitter={4: 0.25 * SPACING[0]})  # 0.625 mm > 0.2 x 2.5 mm
    with pytest.raises(CovsegError, match="not evenly spaced"):
        read_volume(tmp_path)


def test_a_slice_0_4_steps_from_its_neighbour_shares_its_place(tmp_path):
    import pydicom

    write_dicom_series(tmp_path, truth_hu())
    slice4 = _file_at_z(tmp_path, -90.0)  # canonical slice 4
    ds = pydicom.dcmread(tmp_path / slice4)
    ds.ImagePositionPatient = [-25.0, 16.9, -89.0]  # 1 mm = 0.4 of a step above it: rounds onto its place
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
    with pytest.raises(CovsegError, match=f"extra.dcm and {slice4} lie 1 mm apart, under half the series' 2.5 mm"):
        read_volume(tmp_path)


def test_the_missing_slices_warning_names_the_largest_gap(tmp_path):
    # slice 7 and slices 2, 3 missing: gaps of 5 and 7.5 mm. Slice order runs along the normal, -z
    # (ImageOrientationPatient 1\\0\\0\\0\\-1\\0): the 5 mm gap (after slice 8) comes first, the 7.5 mm one after
    # slice 4
    write_dicom_series(tmp_path, truth_hu(), skip=(2, 3, 7))
    after = _file_at_z(tmp_path, ORIGIN_LPS[2] + 4 * SPACING[0])
    vol = read_volume(tmp_path)
    assert vol.shape[0] == Z
    assert len(vol.warnings) == 1
    assert vol.warnings[0].startswith(f"missing slices: 2 gaps longer than 1.5x the median spacing 2.5 mm (largest "
                                      f"7.5 mm after {after}): 3 slice places filled")


def test_a_series_drifting_sideways_as_a_whole_names_the_slice_farthest_off_its_grid(tmp_path):
    # x shifts along a bowed curve, 0.018 k (k - 11) + 0.0005 k (k - 11) (k - 5.5) mm: slice 6 lies 0.5475 mm (more
    # than 0.2 x 2.5 mm) off the line from the first slice to the last, slice 5 0.5325 mm; no single slice stands out
    # from the others (at most 0.4 mm off their median line), so the slice farthest off the grid is named
    shift = {k: (0.018 * k * (k - 11) + 0.0005 * k * (k - 11) * (k - 5.5), 0.0, 0.0) for k in range(Z)}
    write_dicom_series(tmp_path, truth_hu(), shift=shift)
    victim = _file_at_z(tmp_path, ORIGIN_LPS[2] + 6 * SPACING[0])
    with pytest.raises(CovsegError, match=rf"{victim} lies 0\.54\d mm off the line of the other slices"):
        read_volume(tmp_path)


def test_the_sha256_of_a_series_is_of_its_files_in_slice_order(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:4])
    # slice order runs along the normal (-z here): canonical slice 3 first
    order = [_file_at_z(tmp_path, ORIGIN_LPS[2] + k * SPACING[0]) for k in (3, 2, 1, 0)]
    expected = hashlib.sha256(b"".join((tmp_path / name).read_bytes() for name in order)).hexdigest()
    assert read_volume(tmp_path).sha256 == expected


def _blank_tag(folder: Path, keyword: str) -> None:
    """Store DICOM ``keyword`` of every file in ``folder`` as one space (pydicom reads it back as ``''``)."""
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        ds[keyword]._value = " "
        ds.save_as(f, enforce_file_format=True)


def test_a_blank_rescale_intercept_counts_as_missing(tmp_path):
    # unsigned raw CT numbers (air about 24) with an intercept of spaces: not HU, refused like a missing tag
    write_dicom_series(tmp_path, truth_hu()[:3] + 1024, slope=1.0)
    _blank_tag(tmp_path, "RescaleIntercept")
    with pytest.raises(CovsegError,
                       match=r"has no RescaleIntercept and its values \(min \d+\) are not Hounsfield units"):
        read_volume(tmp_path)


def test_bare_dcm_files_without_a_sop_class_are_read(tmp_path):
    """ACR-NEMA style files (no preamble, no file meta, no SOPClassUID) but with Rows: still images."""
    import pydicom

    hu = truth_hu()[:3]
    write_dicom_series(tmp_path / "full", hu)
    bare = tmp_path / "bare"
    bare.mkdir()
    for k, f in enumerate(sorted((tmp_path / "full").iterdir())):
        ds = pydicom.dcmread(f)
        del ds.file_meta
        del ds.SOPClassUID
        ds.preamble = None
        ds.save_as(bare / f"{k}.dcm", enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert np.array_equal(read_volume(bare).hu, hu)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bare / "preview.png")  # the .dcm names say DICOM, not images
    assert read_volume(bare).kind == "dicom"


# ---------------------------------------------------------------------------------- folders of 2-D images


def test_a_multi_page_tiff_a_blue_image_and_a_1_bit_image_are_refused(tmp_path):
    grey = np.full((20, 30), 60, np.uint8)
    (tmp_path / "pages").mkdir()
    Image.fromarray(grey).save(tmp_path / "pages" / "0.tif", save_all=True, append_images=[Image.fromarray(grey)])
    Image.fromarray(grey).save(tmp_path / "pages" / "1.tif")
    with pytest.raises(CovsegError, match="0.tif: holds 2 pages; save one slice per file"):
        read_volume(tmp_path / "pages", spacing=(2.5, 0.7, 0.7))
    (tmp_path / "blue").mkdir()
    for k in range(2):  # red equal to green, blue not
        Image.fromarray(np.dstack([grey, grey, np.full((20, 30), 200, np.uint8)])).save(tmp_path / "blue" / f"{k}.png")
    with pytest.raises(CovsegError, match="0.png: is a colour image, not a CT slice"):
        read_volume(tmp_path / "blue", spacing=(2.5, 0.7, 0.7))
    (tmp_path / "bits").mkdir()
    for k in range(2):
        Image.fromarray(grey > 50).convert("1").save(tmp_path / "bits" / f"{k}.png")
    with pytest.raises(CovsegError, match="0.png: is a 1-bit image, not a CT slice"):
        read_volume(tmp_path / "bits", spacing=(2.5, 0.7, 0.7))


def test_check_spacing_wants_three_positive_numbers():
    from covseg.volumes import check_spacing

    assert check_spacing(None) is None
    assert check_spacing(["2.5", 0.7, 0.8]) == (2.5, 0.7, 0.8)
    for bad in ((2.5, 0.7), (2.5, 0.7, 0.8, 1.0), (0.0, 0.7, 0.8), (2.5, 0.7, float("inf")), ("a", 1, 1)):
        with pytest.raises(CovsegError, match="give three positive numbers Z Y X in mm"):
            check_spacing(bad)


def test_a_folder_of_two_images_passes_the_header_check_and_of_one_does_not(tmp_path):
    stack = _png_stack(tmp_path / "png", n=2)
    assert check_volume(stack, spacing=(2.5, 0.7, 0.7)) is None
    (stack / "1.png").unlink()
    with pytest.raises(CovsegError, match="has 1 axial slice; a scan needs at least 2 slices"):
        check_volume(stack, spacing=(2.5, 0.7, 0.7))


def test_a_32_bit_tiff_stack_keeps_its_values(tmp_path):
    # signed 32-bit samples (Pillow mode "I") are not 16-bit PNG grey: kept as stored, not / 65535
    for k in range(2):
        Image.fromarray(np.full((20, 30), 1000 + k, np.int32)).save(tmp_path / f"{k}.tif")
    vol = read_volume(tmp_path, spacing=(2.5, 0.7, 0.7))
    assert [float(vol.hu[k, 0, 0]) for k in range(2)] == [1000.0, 1001.0] and not vol.is_hu


@pytest.mark.parametrize("low, is_hu", [(-100.0, False), (-100.5, True)])
def test_a_float_tiff_stack_is_hu_only_below_minus_100(tmp_path, low, is_hu):
    for k in range(2):
        plane = np.full((20, 30), 40.0, np.float32)
        plane[0, 0] = low
        Image.fromarray(plane, mode="F").save(tmp_path / f"{k}.tif")
    assert read_volume(tmp_path, spacing=(2.5, 0.7, 0.7)).is_hu is is_hu


def test_the_sha256_of_an_image_stack_is_of_its_files_in_slice_order(tmp_path):
    for k, name in enumerate(("1.png", "2.png", "10.png")):  # numeric order: 1, 2, 10 (not 1, 10, 2)
        Image.fromarray(np.full((20, 30), 10 * k, np.uint8)).save(tmp_path / name)
    expected = hashlib.sha256(b"".join((tmp_path / n).read_bytes() for n in ("1.png", "2.png", "10.png"))).hexdigest()
    vol = read_volume(tmp_path, spacing=(2.5, 0.7, 0.7))
    assert vol.sha256 == expected
    assert [float(vol.hu[k, 0, 0]) for k in range(3)] == pytest.approx([0, 10 / 255, 20 / 255])


# ---------------------------------------------------------------------------------- what read_volume is given


def test_a_spacing_a_few_percent_off_a_nifti_s_own_is_ignored_with_a_warning(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", truth_hu()[:4])
    vol = read_volume(tmp_path / "ct.nii.gz", spacing=(2.5, 0.7, 0.75))  # X 0.75 mm, 6 % under its 0.8 mm
    assert vol.spacing == pytest.approx(SPACING)
    assert vol.warnings == ["--spacing (2.5, 0.7, 0.75) ignored: ct.nii.gz carries its own voxel size "
                            "(2.5, 0.7, 0.8) mm"]


def test_a_folder_of_nifti_files_is_refused_naming_one(tmp_path):
    write_nifti(tmp_path / "ct.nii.gz", truth_hu()[:4])
    with pytest.raises(CovsegError, match=r"holds NIfTI files \(ct.nii.gz, ...\); give the .nii/.nii.gz file itself"):
        read_volume(tmp_path)


def test_an_oblique_series_stepping_along_its_normal_reads_untilted(tmp_path):
    # rows along (0.28, 0.96, 0) (mostly posterior), columns along -z, slices 2.5 mm along the normal
    # row x col = (-0.96, 0.28, 0) (mostly right): |step . normal| / |step| comes out 1.0000000000000002 in floating
    # point here, which the tilt angle's acos must take as 1 (no tilt), not fail on
    row, col = np.array([0.28, 0.96, 0.0]), np.array([0.0, 0.0, -1.0])
    normal = np.cross(row, col)
    uid = generate_uid()
    for k in range(4):
        _ct_slice(np.full((8, 8), 500, np.uint16), [10.0, -20.0, 30.0] + k * 2.5 * normal, [*row, *col], uid).save_as(
            tmp_path / f"{k}.dcm", enforce_file_format=True)
    vol = read_volume(tmp_path)
    # canonical Z runs down the columns (0.7 mm rows), Y along the rows (0.8 mm), X along the normal (2.5 mm)
    assert vol.spacing == pytest.approx((0.7, 0.8, 2.5)) and vol.shape == (8, 8, 4) and vol.warnings == []


def test_nan_voxels_of_a_nifti_are_set_to_its_minimum_with_a_warning(tmp_path):
    data = np.full((6, 5, 4), 40.0, np.float32)
    data[0, 0, 0] = -1000.0
    data[1, 2, 3] = data[2, 2, 2] = np.nan
    data[3, 3, 3] = np.inf
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert np.isfinite(vol.hu).all() and vol.is_hu
    assert int((vol.hu == -1000.0).sum()) == 4 and float(vol.hu.max()) == 40.0
    assert vol.warnings == ["ct.nii.gz: 3 NaN/infinite voxels were set to -1000"]


def test_a_series_without_a_series_uid_reads_with_none(tmp_path):
    import pydicom

    write_dicom_series(tmp_path, truth_hu()[:3])
    for f in tmp_path.iterdir():
        ds = pydicom.dcmread(f)
        del ds.SeriesInstanceUID
        ds.save_as(f, enforce_file_format=True)
    vol = read_volume(tmp_path)
    assert vol.kind == "dicom" and vol.series_uid is None and vol.shape[0] == 3
