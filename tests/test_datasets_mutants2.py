"""covseg.datasets edge cases that a second mutation round found unpinned: each test writes real files (or, for the
sort key, gives paths in both orders) and checks hand-computed values or exact messages."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg import datasets
from covseg.datasets import (
    dicom_view_to_stored,
    list_images,
    load_dataset,
    load_folder_pairs,
    load_medseg_nifti,
    load_medseg_npy,
    read_image,
    read_mask,
)
from covseg.errors import CovsegError
from covseg.labels import BINARY, MULTICLASS

RADIOLOGICAL = np.diag([-1.0, -1.0, 1.0, 1.0])  # axes L, P, S: a slice that reads as data.T


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray = RADIOLOGICAL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(np.ascontiguousarray(array), mode) if mode else Image.fromarray(np.ascontiguousarray(array))
     ).save(path)
    return path


def _dicom(path: Path, pixels: np.ndarray, iop: tuple[float, ...] | None = None, *, ct_intercept: float | None = None
           ) -> Path:
    """A DICOM slice without Modality or rescale tags (grey values, or class ids of a mask), optionally with an
    ImageOrientationPatient; with ``ct_intercept``, a CT slice (Modality CT, slope 1, that intercept)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SeriesInstanceUID = generate_uid()
    if ct_intercept is not None:
        ds.Modality = "CT"
        ds.RescaleSlope = 1
        ds.RescaleIntercept = ct_intercept
    ds.set_pixel_data(pixels, "MONOCHROME2", 8 * pixels.itemsize)
    if iop is not None:
        ds.ImageOrientationPatient = list(iop)
        ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _onehot(labels: np.ndarray) -> np.ndarray:
    """Kaggle one-hot channels (GGO, consolidation, other lung, background) from channel indices."""
    return np.eye(4, dtype=np.float32)[labels]


# ---------------------------------------------------------------------------------- file order and list_images


def test_stems_equal_but_for_case_or_leading_zeros_sort_by_the_stem_whatever_the_input_order() -> None:
    # "x01" and "x1" (and "B" and "b") have one natural key; the stem itself breaks the tie: "0" < "1", "B" < "b"
    for names in (["x1.png", "x01.png"], ["x01.png", "x1.png"]):
        assert [p.name for p in datasets._sorted_paths(Path(n) for n in names)] == ["x01.png", "x1.png"]
    for names in (["b.png", "B.png"], ["B.png", "b.png"]):
        assert [p.name for p in datasets._sorted_paths(Path(n) for n in names)] == ["B.png", "b.png"]


def test_list_images_refuses_a_single_unsupported_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(CovsegError, match=r"notes\.txt: unsupported file type '\.txt'; use one of \.png, "):
        list_images(path)


# ---------------------------------------------------------------------------------- read_image / read_mask


def test_a_nifti_slice_with_two_trailing_unit_axes_is_one_slice(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1) * 51  # (x, y, 1, 1), whole numbers 0..255: / 255
    path = _nifti(tmp_path / "s.nii.gz", data)
    # radiological affine: read as data[:, :, 0, 0].T
    np.testing.assert_allclose(read_image(path), [[0.0, 0.6], [0.2, 0.8], [0.4, 1.0]], atol=1e-6)


def test_a_grey_dicom_slice_without_modality_is_turned_by_its_orientation(tmp_path: Path) -> None:
    stored = np.array([[0, 51, 102], [153, 204, 255]], np.uint8)  # grey values (no air), BitsStored 8
    path = _dicom(tmp_path / "prone.dcm", stored, iop=(-1, 0, 0, 0, -1, 0))
    # a prone slice is turned 180 degrees, as for HU slices; grey / 255
    np.testing.assert_allclose(read_image(path), stored[::-1, ::-1] / 255.0, atol=1e-6)


def test_an_rgba_mask_whose_channels_agree_reads_its_grey(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    for c in range(3):
        rgba[..., c] = [[0, 1], [2, 3]]
    rgba[..., 3] = 255
    path = _png(tmp_path / "rgba.png", rgba, "RGBA")
    np.testing.assert_array_equal(read_mask(path, MULTICLASS), [[0, 1], [2, 3]])


def test_a_cmyk_mask_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.tif"
    Image.new("CMYK", (3, 2)).save(path)
    with pytest.raises(CovsegError, match=r"m\.tif: mask has PIL mode CMYK; save it as a palette or greyscale PNG"):
        read_mask(path, BINARY)


def test_a_mask_of_0_1_and_255_is_not_a_0_255_mask(tmp_path: Path) -> None:
    path = _png(tmp_path / "m.png", np.array([[0, 1], [255, 0]], np.uint8))
    with pytest.raises(CovsegError, match=r"m\.png: label values \[255\] are neither binary"):
        read_mask(path, BINARY)


@pytest.mark.parametrize("iop, view_shape", [((-1, 0, 0, 0, -1, 0), (2, 3)), ((0, 1, 0, 1, 0, 0), (3, 2))])
def test_dicom_view_to_stored_gives_back_the_stored_pixel_order(tmp_path: Path, iop, view_shape) -> None:
    stored = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    path = _dicom(tmp_path / "m.dcm", stored, iop=iop)
    view = read_mask(path, MULTICLASS)
    assert view.shape == view_shape
    back = dicom_view_to_stored(view, path)
    assert back.shape == (2, 3)
    np.testing.assert_array_equal(back, stored)
    if iop[0] == -1:  # prone: the view is the stored slice turned 180 degrees
        np.testing.assert_array_equal(dicom_view_to_stored(stored[::-1, ::-1], path), stored)


# ---------------------------------------------------------------------------------- layouts


def test_a_png_image_paired_with_a_nifti_mask_is_turned_by_the_mask_affine(tmp_path: Path) -> None:
    # affine axes R, P, S: a NIfTI (x, y) slice reads as data.T[:, ::-1]; the PNG, taken as that NIfTI's stored
    # voxels transposed (rows = y), is flipped left-right alike
    affine = np.diag([1.0, -1.0, 1.0, 1.0])
    pixels = np.array([[0, 51], [102, 153], [204, 255]], np.uint8)  # H 3, W 2
    _png(tmp_path / "images" / "0.png", pixels)
    mask_xy = np.array([[1, 0, 0], [0, 0, 1]], np.uint8)  # (x 2, y 3)
    _nifti(tmp_path / "masks" / "0.nii.gz", mask_xy, affine)
    [sample] = load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")
    np.testing.assert_allclose(sample.image, pixels[:, ::-1] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(sample.mask, [[0, 1], [0, 0], [1, 0]])


def test_a_medseg_volume_with_a_nan_voxel_is_filled_with_its_minimum(tmp_path: Path) -> None:
    data = np.array([[-1350.0, np.nan], [150.0, -600.0]], np.float32)[:, :, None]
    image = _nifti(tmp_path / "val_im.nii.gz", data)
    [sample] = load_medseg_nifti(image, None, "binary")
    assert sample.name == "val_im_000" and sample.mask is None
    # data.T; NaN -> -1350 (the minimum); lung window (v + 1350) / 1500
    np.testing.assert_allclose(sample.image, [[0.0, 1.0], [0.0, 0.5]], atol=1e-6)


def test_kaggle_masks_with_one_pixel_without_a_channel_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "images_medseg.npy", np.full((1, 2, 2, 1), -1000.0, np.float32))
    masks = _onehot(np.full((1, 2, 2), 3))
    masks[0, 0, 1] = 0  # the other three pixels are background
    np.save(tmp_path / "masks_medseg.npy", masks)
    with pytest.raises(CovsegError, match=r"masks_medseg\.npy: slice 0 has pixels with no channel set"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "binary")


def test_kaggle_masks_of_another_slice_size_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "images_medseg.npy", np.full((1, 2, 2, 1), -1000.0, np.float32))
    np.save(tmp_path / "masks_medseg.npy", _onehot(np.full((1, 3, 2), 3)))
    with pytest.raises(CovsegError, match=r"masks have shape \(1, 3, 2\) but images_medseg\.npy has \(1, 2, 2\)"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "binary")


def test_load_dataset_refuses_an_unknown_split_by_name(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "0.png", np.zeros((2, 2), np.uint8))
    _png(tmp_path / "masks" / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(CovsegError, match=r"^unknown split 'val': use one of train, test, unlabelled$"):
        load_dataset(tmp_path, "binary", "val")


def test_load_dataset_refuses_a_file(tmp_path: Path) -> None:
    path = _png(tmp_path / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(CovsegError, match=r"0\.png: is a file, not a data folder; accepted layouts: COVID-SemiSeg"):
        load_dataset(path, "binary")


def test_a_lone_kaggle_image_array_beside_image_mask_folders_is_not_the_kaggle_layout(tmp_path: Path) -> None:
    np.save(tmp_path / "images_medseg.npy", np.full((1, 2, 2, 1), -1000.0, np.float32))
    _png(tmp_path / "images" / "0.png", np.full((2, 2), 51, np.uint8))
    _png(tmp_path / "masks" / "0.png", np.array([[0, 255], [0, 0]], np.uint8))
    [sample] = load_dataset(tmp_path, "binary")
    assert sample.name == "0"
    np.testing.assert_allclose(sample.image, np.full((2, 2), 0.2), atol=1e-6)
    np.testing.assert_array_equal(sample.mask, [[0, 1], [0, 0]])


# ---------------------------------------------------------------------------------- the window reaches every reader

WINDOW = (0.0, 2000.0)  # level 0, width 2000: (HU + 1000) / 2000, where the lung window gives (HU + 1350) / 1500
HU_XY = np.array([[-1000.0, 0.0], [1000.0, -500.0]], np.float32)  # a NIfTI slice (x, y); radiological: read as .T
WINDOWED_VIEW = [[0.0, 1.0], [0.5, 0.25]]  # HU_XY.T windowed


def test_a_ct_dicom_slice_and_its_pair_take_the_window(tmp_path: Path) -> None:
    stored = np.array([[0, 1000], [2000, 500]], np.uint16)  # HU = stored - 1000
    expected = [[0.0, 0.5], [1.0, 0.25]]
    path = _dicom(tmp_path / "images" / "0.dcm", stored, ct_intercept=-1000.0)
    np.testing.assert_allclose(read_image(path, WINDOW), expected, atol=1e-6)
    _png(tmp_path / "masks" / "0.png", np.array([[0, 255], [0, 0]], np.uint8))
    [sample] = load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary", WINDOW)
    np.testing.assert_allclose(sample.image, expected, atol=1e-6)


def test_covid_semiseg_hu_slices_take_the_window(tmp_path: Path) -> None:
    train = tmp_path / "Dataset" / "TrainingSet" / "LungInfection-Train"
    _nifti(train / "Doctor-label" / "Imgs" / "0.nii.gz", HU_XY)
    _png(train / "Doctor-label" / "GT" / "0.png", np.array([[0, 255], [0, 0]], np.uint8))
    _nifti(train / "Pseudo-label" / "Imgs" / "u0.nii.gz", HU_XY)
    for split in ("train", "unlabelled"):
        [sample] = load_dataset(tmp_path, "binary", split, WINDOW)
        np.testing.assert_allclose(sample.image, WINDOWED_VIEW, atol=1e-6, err_msg=split)


def test_medseg_volumes_and_kaggle_arrays_take_the_window(tmp_path: Path) -> None:
    [sample] = load_medseg_nifti(_nifti(tmp_path / "val_im.nii.gz", HU_XY[:, :, None]), None, "binary", WINDOW)
    np.testing.assert_allclose(sample.image, WINDOWED_VIEW, atol=1e-6)
    np.save(tmp_path / "images_medseg.npy", HU_XY[None, :, :, None])  # Kaggle arrays are (N, rows, cols, 1) as is
    np.save(tmp_path / "masks_medseg.npy", _onehot(np.full((1, 2, 2), 3)))
    [sample] = load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "binary", WINDOW)
    np.testing.assert_allclose(sample.image, [[0.0, 0.5], [1.0, 0.25]], atol=1e-6)


# ---------------------------------------------------------------------------------- messages for missing parts


def test_medseg_without_val_im_says_what_to_add_for_unlabelled_slices(tmp_path: Path) -> None:
    _nifti(tmp_path / "tr_im.nii.gz", np.full((2, 2, 1), -1000.0, np.float32))
    _nifti(tmp_path / "tr_mask.nii.gz", np.zeros((2, 2, 1), np.float32))
    with pytest.raises(CovsegError, match=r"val_im\.nii\.gz: MedSeg unlabelled slices not found; add val_im\.nii\.gz$"):
        load_dataset(tmp_path, "binary", "unlabelled")


def test_folder_pairs_without_the_mask_folder_say_so(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "0.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(CovsegError, match=r"nomasks: mask folder not found; check the data path$"):
        load_folder_pairs(tmp_path / "images", tmp_path / "nomasks", "binary")


# ---------------------------------------------------------------------------------- rarer files


def test_a_palette_alpha_tiff_mask_reads_its_palette_indices(tmp_path: Path) -> None:
    pa = np.zeros((2, 3, 2), np.uint8)
    pa[..., 0] = [[0, 1, 2], [3, 0, 1]]  # palette indices = class ids
    pa[..., 1] = 255  # alpha
    path = tmp_path / "pa.tif"
    image = Image.new("PA", (3, 2))
    image.putdata([(int(i), 255) for i in pa[..., 0].ravel()])
    image.save(path)
    assert Image.open(path).mode == "PA"
    np.testing.assert_array_equal(read_mask(path, MULTICLASS), [[0, 1, 2], [3, 0, 1]])


def _nan_affine_nifti(path: Path, data: np.ndarray) -> Path:
    """An uncompressed NIfTI whose sform (used as its affine) holds a NaN: no voxel orientation can be told.
    nibabel refuses to write such an affine, so the first float of srow_x (header byte 280) is patched."""
    _nifti(path, data)
    raw = bytearray(path.read_bytes())
    raw[280:284] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(raw))
    assert np.isnan(nib.load(str(path)).affine[0, 0])
    return path


def test_a_nifti_slice_without_orientation_and_a_mask_with_one_are_refused(tmp_path: Path) -> None:
    _nan_affine_nifti(tmp_path / "images" / "0.nii", np.full((2, 3), -1000.0, np.float32))
    _nifti(tmp_path / "masks" / "0.nii.gz", np.zeros((2, 3), np.uint8))
    with pytest.raises(CovsegError, match=r"0\.nii\.gz: its affine orders the slice's voxels differently from its "
                                          r"image's \(0\.nii\); save the mask with the image's affine$"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")


def test_a_medseg_volume_without_orientation_names_its_axes_unknown(tmp_path: Path) -> None:
    image = _nan_affine_nifti(tmp_path / "im.nii", np.full((2, 2, 1), -1000.0, np.float32))
    mask = _nifti(tmp_path / "mask.nii.gz", np.zeros((2, 2, 1), np.uint8))
    with pytest.raises(CovsegError, match=r"mask\.nii\.gz: its affine orders the voxels LPS but im\.nii's orders "
                                          r"them unknown, so the mask would lie mirrored"):
        load_medseg_nifti(image, mask, "binary")


def test_a_float_dicom_slice_with_a_nan_and_air_is_hu(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.array([[-1000.0, np.nan], [0.0, 300.0]], np.float32)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = pixels.astype("<f4").tobytes()
    path = tmp_path / "float.dcm"
    ds.save_as(path, enforce_file_format=True)
    # no Modality: the NaN is set to the minimum -1000 (air), so the slice is HU: lung window (v + 1350) / 1500
    np.testing.assert_allclose(read_image(path), [[350 / 1500, 350 / 1500], [0.9, 1.0]], atol=1e-6)
