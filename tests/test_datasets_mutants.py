"""covseg.datasets edge cases that mutation testing found unpinned: each test writes real files and checks
hand-computed values or exact messages."""
from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg import datasets
from covseg.datasets import (
    list_images,
    load_covid_semiseg,
    load_dataset,
    load_folder_pairs,
    load_medseg_nifti,
    load_medseg_npy,
    read_image,
    read_mask,
)
from covseg.errors import CovsegError
from covseg.labels import BINARY, MULTICLASS

RADIOLOGICAL = np.diag([-1.0, -1.0, 1.0, 1.0])  # a slice stored so reads as data.T


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = RADIOLOGICAL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _grey(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def _dicom(path: Path, pixels: np.ndarray, *, modality: str | None = None, intercept: float | None = None) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SeriesInstanceUID = generate_uid()
    if modality is not None:
        ds.Modality = modality
    if intercept is not None:
        ds.RescaleSlope = 1
        ds.RescaleIntercept = intercept
    ds.set_pixel_data(pixels, "MONOCHROME2", 8 * pixels.itemsize)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------- read_image


def test_a_folder_named_like_an_image_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "slice.png"
    folder.mkdir()
    with pytest.raises(CovsegError, match=r"slice\.png: is not a file; give the path of an image file$"):
        read_image(folder)
    with pytest.raises(CovsegError, match=r"slice\.png: is not a file; give the path of an image file$"):
        read_mask(folder, BINARY)


def test_a_two_page_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.tif"
    pages = [Image.fromarray(np.full((3, 4), v, np.uint8)) for v in (10, 20)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with pytest.raises(CovsegError, match=r"two\.tif: holds 2 pages; save one slice per file$"):
        read_image(path)


def test_a_colour_image_whose_blue_alone_differs_warns(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(datasets, "_WARNED", set())
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[..., 0] = colour[..., 1] = 100
    colour[..., 2] = 200  # red == green, blue differs: still colour
    _grey(tmp_path / "c.png", colour)
    image = read_image(tmp_path / "c.png")
    # PIL's luminance: (100*299 + 100*587 + 200*114) / 1000 = 111.4 -> 111
    np.testing.assert_array_equal(image, np.full((2, 2), 111 / 255, np.float32))
    err = capsys.readouterr().err
    assert err.startswith(f"covseg: warning: {tmp_path / 'c.png'}: is a colour image")


def test_the_hu_threshold_is_strictly_below_minus_100(tmp_path: Path) -> None:
    # stored x, y -> read as data.T; minimum exactly -100 is no HU: min-max scaled, (v + 100) / 200
    data = np.array([[-100.0, 0.0], [50.0, 100.0]], np.float32)
    np.testing.assert_allclose(read_image(_nifti(tmp_path / "edge.nii.gz", data)),
                               [[0.0, 0.75], [0.5, 1.0]], atol=1e-6)
    # one step lower is HU: the lung window (v + 1350) / 1500
    data[0, 0] = -101.0
    np.testing.assert_allclose(read_image(_nifti(tmp_path / "hu.nii.gz", data)),
                               np.array([[-101.0, 50.0], [0.0, 100.0]]) / 1500 + 1350 / 1500, atol=1e-6)


def test_a_32_bit_tiff_is_not_scaled_as_a_16_bit_png(tmp_path: Path) -> None:
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 500], [1000, 250]], np.int32)).save(path)
    assert Image.open(path).mode == "I"
    # signed data above -100: not HU, min-max scaled (0..1000), not / 65535 as a 16-bit PNG
    np.testing.assert_allclose(read_image(path), [[0.0, 0.5], [1.0, 0.25]], atol=1e-6)


def test_a_dicom_grey_slice_is_scaled_by_bits_stored_above_16(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    grey = np.array([[0, 2**23], [2**24 - 1, 2**22]], np.uint32)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 24, 23, 0
    ds.PixelData = grey.astype("<u4").tobytes()
    path = tmp_path / "b24.dcm"
    ds.save_as(path, enforce_file_format=True)
    # no Modality, no air: grey values / (2**24 - 1), not / (2**32 - 1)
    np.testing.assert_allclose(read_image(path), grey / float(2**24 - 1), atol=1e-6)


def test_a_lower_case_ct_modality_is_still_hu(tmp_path: Path) -> None:
    # values 0..900 never reach below -100, so only the Modality says HU: lung window (v + 1350) / 1500
    stored = np.array([[0, 150], [300, 900]], np.uint16)
    with pytest.warns(UserWarning, match="Invalid value for VR CS"):  # pydicom: CS is upper case
        path = _dicom(tmp_path / "ct.dcm", stored, modality="ct", intercept=0)
    np.testing.assert_allclose(read_image(path), np.clip((stored + 1350.0) / 1500.0, 0, 1), atol=1e-6)


# ---------------------------------------------------------------------------------- read_mask


def test_a_colour_mask_whose_blue_alone_differs_is_refused(tmp_path: Path) -> None:
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (1, 1, 2)
    path = _grey(tmp_path / "m.png", colour)
    with pytest.raises(CovsegError, match=r"m\.png: is a colour mask; save it as a palette or greyscale PNG"):
        read_mask(path, MULTICLASS)


def test_a_grey_alpha_mask_reads_its_grey_channel(tmp_path: Path) -> None:
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0] = [[0, 1], [2, 3]]
    la[..., 1] = 255
    path = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(path)
    np.testing.assert_array_equal(read_mask(path, MULTICLASS), [[0, 1], [2, 3]])


def test_a_nan_float_mask_says_nan(tmp_path: Path) -> None:
    path = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan], [1.0, 2.0]], np.float32)).save(path)
    with pytest.raises(CovsegError, match=r"nan\.tif: mask holds NaN or infinite values; save class ids as integers$"):
        read_mask(path, MULTICLASS)


@pytest.mark.parametrize(("value", "shown"), [(4, "[4]"), (-1, "[-1]")])
def test_binary_refuses_values_outside_the_multiclass_ids(tmp_path: Path, value: int, shown: str) -> None:
    path = _nifti(tmp_path / "m.nii.gz", np.array([[0, 1], [value, 0]], np.int16))
    with pytest.raises(CovsegError, match=r"m\.nii\.gz: label values " + re.escape(shown) + " are neither binary"):
        read_mask(path, BINARY)


def test_binary_names_up_to_ten_bad_values(tmp_path: Path) -> None:
    path = _grey(tmp_path / "many.png", np.arange(4, 16, dtype=np.uint8).reshape(3, 4))
    with pytest.raises(CovsegError, match=r"many\.png: label values \[4, 5, 6, 7, 8, 9, 10, 11, 12, 13\] are"):
        read_mask(path, BINARY)


# ---------------------------------------------------------------------------------- list_images and pairs


def test_stems_sort_without_their_suffix(tmp_path: Path) -> None:
    for name in ("a-b.png", "a.png"):
        _grey(tmp_path / name, np.zeros((2, 2), np.uint8))
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "a-b.png"]


def test_a_mask_of_another_width_is_refused(tmp_path: Path) -> None:
    _grey(tmp_path / "images" / "0.png", np.zeros((4, 3), np.uint8))
    _grey(tmp_path / "masks" / "0.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(CovsegError, match=r"0\.png: mask is 4x5 \(HxW\) but its image is 4x3; give masks the size"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")


def test_two_image_folders_are_refused(tmp_path: Path) -> None:
    for sub in ("images", "imgs", "masks"):
        _grey(tmp_path / sub / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(CovsegError, match=r"has several folders \['images', 'imgs'\]; keep one$"):
        load_dataset(tmp_path, "binary")


# ---------------------------------------------------------------------------------- layouts


def test_a_semiseg_folder_with_only_the_test_split(tmp_path: Path) -> None:
    test = tmp_path / "Dataset" / "TestingSet" / "LungInfection-Test"
    _grey(test / "Imgs" / "7.png", np.full((2, 3), 51, np.uint8))
    _grey(test / "GT" / "7.png", np.array([[0, 255, 0], [0, 0, 255]], np.uint8))
    for samples in (load_covid_semiseg(tmp_path, "binary", "test"), load_dataset(tmp_path, "binary", "test")):
        assert [s.name for s in samples] == ["7"]
        np.testing.assert_allclose(samples[0].image, np.full((2, 3), 0.2), atol=1e-6)
        np.testing.assert_array_equal(samples[0].mask, [[0, 1, 0], [0, 0, 1]])


def test_a_medseg_volume_of_one_2d_slice(tmp_path: Path) -> None:
    image = _nifti(tmp_path / "tr_im.nii.gz", np.array([[-1350.0, 150.0], [-600.0, -1350.0]], np.float32))
    mask = _nifti(tmp_path / "tr_mask.nii.gz", np.array([[0, 1], [2, 3]], np.float32))
    samples = load_medseg_nifti(image, mask, "multiclass")
    assert [s.name for s in samples] == ["tr_im_000"]
    np.testing.assert_allclose(samples[0].image, [[0.0, 0.5], [1.0, 0.0]], atol=1e-6)  # data.T, lung window
    np.testing.assert_array_equal(samples[0].mask, [[0, 2], [1, 3]])


def test_a_folder_with_only_the_medseg_image_volume_is_not_medseg(tmp_path: Path) -> None:
    _nifti(tmp_path / "tr_im.nii.gz", np.full((2, 2, 1), -1000.0, np.float32))
    with pytest.raises(CovsegError, match=r": no data layout recognised; accepted layouts: "):
        load_dataset(tmp_path, "binary")


def test_kaggle_images_with_several_channels_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "images_medseg.npy", np.zeros((1, 2, 2, 3), np.float32))
    np.save(tmp_path / "masks_medseg.npy", np.eye(4, dtype=np.float32)[np.full((1, 2, 2), 3)])
    with pytest.raises(CovsegError, match=r"images_medseg\.npy: array has shape \(1, 2, 2, 3\); expected \(N, H, W, 1\)"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "multiclass")


def test_kaggle_masks_with_exactly_two_channels_set_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "images_medseg.npy", np.full((1, 2, 2, 1), -1000.0, np.float32))
    masks = np.eye(4, dtype=np.float32)[np.full((1, 2, 2), 3)]
    masks[0, 1, 1] = [1, 1, 0, 0]  # GGO and consolidation at once
    np.save(tmp_path / "masks_medseg.npy", masks)
    with pytest.raises(CovsegError, match=r"slice 0 has 1 pixel with several channels set"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "multiclass")
