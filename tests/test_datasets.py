"""Tests of covseg.datasets: readers, label mapping and every accepted layout, on tiny fixtures."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg.datasets import (
    Sample,
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

REAL_SEMISEG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "covid-semiseg"

# lung window (level -600, width 1500): HU -1350 -> 0, -600 -> 0.5, 150 -> 1
LOW, WIDTH = -1350.0, 1500.0


def lung(hu: np.ndarray | list[float]) -> np.ndarray:
    return np.clip((np.asarray(hu, dtype=np.float64) - LOW) / WIDTH, 0.0, 1.0)


# ---------------------------------------------------------------------------------- fixture writers


def write_grey(path: Path, array: np.ndarray) -> Path:
    """Write a uint8/uint16 array as a greyscale image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def write_palette(path: Path, indices: np.ndarray) -> Path:
    """Write a palette PNG whose indices are ``indices``; its colours are not grey levels equal to them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = indices.shape
    im = Image.frombytes("P", (w, h), np.ascontiguousarray(indices, dtype=np.uint8).tobytes())
    im.putpalette([0, 0, 0, 255, 215, 0, 255, 64, 64, 64, 160, 255] + [9] * (3 * 252))
    im.save(path)
    return path


RADIOLOGICAL = np.diag([-1.0, -1.0, 1.0, 1.0])
"""A NIfTI affine whose x runs to the patient's left and y to the back: a slice stored so reads as ``data.T``."""


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = RADIOLOGICAL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_dicom(path: Path, stored: np.ndarray, slope: float = 2.0, intercept: float = -1024.0) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def grey_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def semiseg_tree(root: Path, stems: list[str], size: tuple[int, int] = (6, 5)) -> Path:
    """A miniature COVID-SemiSeg training tree under ``root/Dataset`` (8-bit JPGs, 0/255 and palette GTs)."""
    train = root / "Dataset" / "TrainingSet"
    h, w = size
    for i, stem in enumerate(stems):
        image = grey_image(h, w, seed=i)
        binary = np.zeros((h, w), np.uint8)
        binary[: i % h + 1, :2] = 255
        multi = np.zeros((h, w), np.uint8)
        multi[0, 0], multi[1, 1] = 1, 2
        write_grey(train / "LungInfection-Train/Doctor-label/Imgs" / f"{stem}.jpg", image)
        write_grey(train / "LungInfection-Train/Doctor-label/GT" / f"{stem}.png", binary)
        write_grey(train / "MultiClassInfection-Train/Imgs" / f"{stem}.jpg", image)
        write_palette(train / "MultiClassInfection-Train/GT" / f"{stem}.png", multi)
    for name in ("scan_2", "scan_10", "scan_1"):
        write_grey(train / "LungInfection-Train/Pseudo-label/Imgs" / f"{name}.jpg", grey_image(h, w))
    return root


def pairs_dir(root: Path, stems: list[str], image_ext: str = ".png", mask_ext: str = ".png") -> Path:
    for i, stem in enumerate(stems):
        write_grey(root / "images" / f"{stem}{image_ext}", grey_image(4, 3, seed=i))
        mask = np.zeros((4, 3), np.uint8)
        mask[i % 4, 0] = 1
        write_grey(root / "masks" / f"{stem}{mask_ext}", mask)
    return root


# ---------------------------------------------------------------------------------- read_image


def test_read_image_png_8bit_exact(tmp_path: Path) -> None:
    array = np.array([[0, 1, 128], [200, 254, 255]], np.uint8)
    image = read_image(write_grey(tmp_path / "a.png", array))
    assert image.shape == (2, 3) and image.dtype == np.float32
    np.testing.assert_array_equal(image, array.astype(np.float32) / np.float32(255))


def test_read_image_rgb_becomes_grey(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)  # PIL "L": 299/1000 * 255 -> 76
    rgb[1, 1] = (255, 255, 255)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    image = read_image(path)
    assert image.shape == (2, 2)
    np.testing.assert_array_equal(image, np.array([[76, 0], [0, 255]], np.float32) / np.float32(255))


def test_read_image_jpg(tmp_path: Path) -> None:
    image = read_image(write_grey(tmp_path / "a.JPEG", np.full((8, 16), 128, np.uint8)))
    assert image.shape == (8, 16) and image.dtype == np.float32
    np.testing.assert_allclose(image, 128 / 255, atol=2 / 255)


def test_read_image_16bit_png(tmp_path: Path) -> None:
    array = np.array([[0, 1000], [40000, 65535]], np.uint16)
    image = read_image(write_grey(tmp_path / "deep.png", array))
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, array.astype(np.float32) / np.float32(65535))


def test_read_image_tiff_8bit_and_float_hu(tmp_path: Path) -> None:
    array = np.array([[0, 51], [102, 255]], np.uint8)
    np.testing.assert_array_equal(read_image(write_grey(tmp_path / "a.tif", array)), array / np.float32(255))
    hu = np.array([[-2000, -1350, -600], [-225, 150, 900]], np.float32)
    path = tmp_path / "hu.tiff"
    Image.fromarray(hu).save(path)
    np.testing.assert_allclose(read_image(path), lung(hu), atol=1e-6)


def test_read_image_nifti_slice_transposed_and_windowed(tmp_path: Path) -> None:
    hu = np.array([[-1350, -600, 150], [-975, -225, 3000]], np.float32)  # nibabel (x=2, y=3)
    for name, data in (("flat.nii.gz", hu), ("one.nii", hu[:, :, None])):
        image = read_image(write_nifti(tmp_path / name, data))
        assert image.shape == (3, 2) and image.dtype == np.float32  # (rows=y, cols=x)
        np.testing.assert_allclose(image, lung(hu.T), atol=1e-6)
        assert image[0, 0] == 0.0 and image[1, 0] == 0.5 and image[2, 0] == 1.0


def test_read_image_nifti_non_hu_is_scaled(tmp_path: Path) -> None:
    data = np.array([[0, 255], [51, 102]], np.uint8)
    image = read_image(write_nifti(tmp_path / "u8.nii.gz", data))
    np.testing.assert_allclose(image, data.T / 255.0, atol=1e-6)


def test_read_image_nifti_volume_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "vol.nii.gz", np.zeros((4, 4, 3), np.int16))
    with pytest.raises(CovsegError, match=r"vol\.nii\.gz: is a volume of shape \(4, 4, 3\)"):
        read_image(path)


def test_read_image_dicom_rescale_and_window(tmp_path: Path) -> None:
    stored = np.array([[0, 162, 212], [300, 587, 1000]], np.uint16)
    hu = stored.astype(np.float64) * 2 - 1024  # [[-1024, -700, -600], [-424, 150, 976]]
    image = read_image(write_dicom(tmp_path / "slice.dcm", stored))
    assert image.shape == (2, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, lung(hu), atol=1e-6)
    assert image[0, 2] == 0.5 and image[1, 1] == 1.0 and image[1, 2] == 1.0


def test_read_image_dicom_ct_without_intercept(tmp_path: Path) -> None:
    """A CT slice without RescaleIntercept is HU only if its values reach below -100 (as the scan reader)."""
    stored = np.array([[0, 400], [1024, 2000]], np.uint16)  # unsigned, the -1024 offset lost
    path = write_dicom(tmp_path / "nointercept.dcm", stored)
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.RescaleIntercept
    ds.save_as(path)
    with pytest.raises(CovsegError, match=r"nointercept\.dcm: CT slice has no RescaleIntercept .*min 0\)"):
        read_image(path)
    signed = write_dicom(tmp_path / "signed.dcm", np.array([[0, 1]], np.uint16))
    ds = dcmread(signed)
    del ds.RescaleIntercept
    ds.RescaleSlope = 1.0
    ds.PixelRepresentation = 1
    ds.PixelData = np.array([[-1000, 40]], "<i2").tobytes()
    ds.save_as(signed)
    np.testing.assert_allclose(read_image(signed), lung(np.array([[-1000.0, 40.0]])), atol=1e-6)


def test_read_image_real_dicom() -> None:
    from pydicom.data import get_testdata_file

    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.shape == (128, 128) and image.dtype == np.float32
    assert 0.0 <= image.min() < image.max() <= 1.0


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CovsegError, match=r"notes\.txt: unsupported file type '\.txt'"):
        read_image(tmp_path / "notes.txt")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(CovsegError, match=r"junk\.png: cannot be read as an image"):
        read_image(tmp_path / "junk.png")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(CovsegError, match=r"junk\.nii\.gz: cannot be read as NIfTI"):
        read_image(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.dcm").write_bytes(b"garbage")
    with pytest.raises(CovsegError, match=r"junk\.dcm: is not a DICOM file; replace the file"):
        read_image(tmp_path / "junk.dcm")


def test_read_image_truncated_jpg(tmp_path: Path) -> None:
    path = write_grey(tmp_path / "cut.jpg", grey_image(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CovsegError, match=r"cut\.jpg: cannot be read as an image") as info:
        read_image(path)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- read_mask


def test_read_mask_palette_raw_indices(tmp_path: Path) -> None:
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    path = write_palette(tmp_path / "m.png", indices)
    multi = read_mask(path, MULTICLASS)
    assert multi.dtype == np.int64 and multi.shape == (2, 3)
    np.testing.assert_array_equal(multi, indices)
    np.testing.assert_array_equal(read_mask(path, BINARY), (indices > 0).astype(np.int64))


def test_read_mask_0_255_is_binary(tmp_path: Path) -> None:
    array = np.array([[0, 255], [255, 0]], np.uint8)
    path = write_grey(tmp_path / "b.png", array)
    mask = read_mask(path, BINARY)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, [[0, 1], [1, 0]])
    with pytest.raises(CovsegError, match=r"b\.png: mask holds only 0/255.*--task binary; a multiclass model cannot be scored on binary masks"):
        read_mask(path, MULTICLASS)
    all_zero = read_mask(write_grey(tmp_path / "z.png", np.zeros((2, 2), np.uint8)), BINARY)
    np.testing.assert_array_equal(all_zero, np.zeros((2, 2)))


def test_read_mask_greyscale_multiclass_and_collapse(tmp_path: Path) -> None:
    array = np.array([[0, 1], [2, 3]], np.uint8)
    path = write_grey(tmp_path / "g.png", array)
    np.testing.assert_array_equal(read_mask(path, MULTICLASS), array)
    np.testing.assert_array_equal(read_mask(path, BINARY), [[0, 1], [1, 1]])


def test_read_mask_bilevel_png(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    Image.fromarray(np.array([[0, 255], [0, 0]], np.uint8)).convert("1").save(path)
    np.testing.assert_array_equal(read_mask(path, BINARY), [[0, 1], [0, 0]])


@pytest.mark.parametrize("scheme", [BINARY, MULTICLASS])
def test_read_mask_label_5_refused(tmp_path: Path, scheme) -> None:
    path = write_grey(tmp_path / "five.png", np.array([[0, 1], [5, 0]], np.uint8))
    with pytest.raises(CovsegError, match=r"five\.png: label values \[5\]") as info:
        read_mask(path, scheme)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG"])
def test_a_jpeg_mask_is_refused_even_when_its_values_are_class_ids(tmp_path: Path, suffix: str) -> None:
    # a 0/1/2 map through JPEG compression: the ids ring along the edges yet every decoded value is still an id
    labels = np.zeros((32, 32), np.uint8)
    labels[8:20, 8:20], labels[12:16, 12:16] = 1, 2
    path = tmp_path / f"mask{suffix}"
    Image.fromarray(labels).save(path, format="JPEG", quality=75)
    decoded = np.asarray(Image.open(path))
    assert not np.array_equal(decoded, labels)  # what reading it would have given: changed ids
    with pytest.raises(CovsegError, match=rf"mask\{suffix}: a mask must be stored losslessly .* save it as PNG") as info:
        read_mask(path, MULTICLASS)
    assert "\n" not in str(info.value)
    pairs_dir(tmp_path / "pairs", ["0", "1"], mask_ext=suffix)
    with pytest.raises(CovsegError, match="a mask must be stored losslessly"):
        load_folder_pairs(tmp_path / "pairs" / "images", tmp_path / "pairs" / "masks", "binary")


def test_read_mask_colour_refused(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    path = tmp_path / "colour.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(CovsegError, match=r"colour\.png: is a colour mask"):
        read_mask(path, MULTICLASS)


def test_read_mask_nifti_transposed(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)  # (x=2, y=3)
    path = write_nifti(tmp_path / "m.nii.gz", labels[:, :, None])
    mask = read_mask(path, MULTICLASS)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, labels.T)
    np.testing.assert_array_equal(read_mask(path, BINARY), (labels.T > 0))
    soft = write_nifti(tmp_path / "soft.nii", np.array([[0.0, 0.5]], np.float32))
    with pytest.raises(CovsegError, match=r"soft\.nii: mask holds non-integer values"):
        read_mask(soft, MULTICLASS)


# ---------------------------------------------------------------------------------- folder pairs


def test_folder_pairs_numeric_order_and_stem_matching(tmp_path: Path) -> None:
    pairs_dir(tmp_path, ["10", "2", "0", "1"], image_ext=".jpg", mask_ext=".png")
    samples = load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")
    assert [s.name for s in samples] == ["0", "1", "2", "10"]
    for s in samples:
        assert isinstance(s, Sample)
        assert s.image.shape == s.mask.shape == (4, 3)
        assert s.image.dtype == np.float32 and s.mask.dtype == np.int64
        assert s.source == str(tmp_path / "images" / f"{s.name}.jpg")
    np.testing.assert_array_equal(samples[0].mask[:, 0], [0, 0, 1, 0])  # "0" was written third (i=2)
    np.testing.assert_array_equal(samples[3].mask[:, 0], [1, 0, 0, 0])  # "10" was written first (i=0)


def test_natural_order_for_text_stems(tmp_path: Path) -> None:
    for name in ("b_10", "b_2", "a", "B_1"):
        write_grey(tmp_path / f"{name}.png", grey_image(2, 2))
    (tmp_path / "readme.txt").write_text("skip me")
    (tmp_path / ".hidden.png").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "B_1.png", "b_2.png", "b_10.png"]


def test_folder_pairs_missing_mask(tmp_path: Path) -> None:
    pairs_dir(tmp_path, ["0", "1"])
    (tmp_path / "masks" / "1.png").unlink()
    with pytest.raises(CovsegError, match=r"images[/\\]1\.png: image without a mask"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")


def test_folder_pairs_mask_without_image(tmp_path: Path) -> None:
    pairs_dir(tmp_path, ["0", "1"])
    (tmp_path / "images" / "0.png").unlink()
    with pytest.raises(CovsegError, match=r"masks[/\\]0\.png: mask without an image"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")


def test_folder_pairs_size_mismatch(tmp_path: Path) -> None:
    pairs_dir(tmp_path, ["0", "3"])
    write_grey(tmp_path / "masks" / "3.png", np.zeros((5, 3), np.uint8))
    with pytest.raises(CovsegError, match=r"masks[/\\]3\.png: mask is 5x3 \(HxW\) but its image is 4x3; "
                                          r"give masks the size of their images"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "multiclass")


def test_folder_pairs_duplicate_stem(tmp_path: Path) -> None:
    pairs_dir(tmp_path, ["0"])
    write_grey(tmp_path / "images" / "0.jpg", grey_image(4, 3))
    with pytest.raises(CovsegError, match=r"has the same name; keep one file per name"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")


def test_folder_pairs_empty(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(CovsegError, match=r"no images found in .*images"):
        load_folder_pairs(tmp_path / "images", tmp_path / "masks", "binary")
    with pytest.raises(CovsegError, match=r"no images found in"):
        load_dataset(tmp_path, "binary")


# ---------------------------------------------------------------------------------- COVID-SemiSeg


def test_covid_semiseg_layout(tmp_path: Path) -> None:
    semiseg_tree(tmp_path, ["10", "0", "2", "1"])
    binary = load_covid_semiseg(tmp_path, "binary")
    assert [s.name for s in binary] == ["0", "1", "2", "10"]
    assert all(set(np.unique(s.mask)) <= {0, 1} for s in binary)
    assert int(binary[0].mask.sum()) == 2 * (1 % 6 + 1)  # "0" written second (i=1): rows 0..1, cols 0..1
    multi = load_covid_semiseg(tmp_path / "Dataset", "multiclass")  # the Dataset folder itself works too
    assert [s.name for s in multi] == ["0", "1", "2", "10"]
    for s in multi:
        assert s.image.shape == s.mask.shape == (6, 5)
        assert s.mask[0, 0] == 1 and s.mask[1, 1] == 2 and s.mask.sum() == 3
    np.testing.assert_array_equal(binary[2].image, multi[2].image)
    unlabelled = load_covid_semiseg(tmp_path, "binary", split="unlabelled")
    assert [s.name for s in unlabelled] == ["scan_1", "scan_2", "scan_10"]
    assert all(s.mask is None and s.image.shape == (6, 5) for s in unlabelled)
    assert [s.name for s in load_dataset(tmp_path, "binary")] == ["0", "1", "2", "10"]
    # two unlabelled slices of one name would share one pseudo-label file: refused
    folder = tmp_path / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"
    write_grey(folder / "scan_2.png", grey_image(6, 5))
    with pytest.raises(CovsegError, match=r"scan_2\.\w+: unlabelled slice scan_2\.\w+ has the same name; keep one"):
        load_covid_semiseg(tmp_path, "binary", split="unlabelled")
    # as after a download from an http(s) mirror, which fetches the manifest's files only: say where they come from
    import shutil

    shutil.rmtree(folder)
    with pytest.raises(CovsegError, match=r"Imgs: unlabelled \(Pseudo-label/Imgs\) folder not found; they come with "
                                          r"a download from a folder mirror \(covseg download --mirror DIR\)"):
        load_covid_semiseg(tmp_path, "binary", split="unlabelled")


def test_covid_semiseg_missing_test_split(tmp_path: Path) -> None:
    semiseg_tree(tmp_path, ["0"])
    with pytest.raises(CovsegError, match=r"LungInfection-Test: the test split is not in this data folder "
                                          r"\(it is held out here\); run `covseg download --mirror"):
        load_covid_semiseg(tmp_path, "binary", split="test")
    with pytest.raises(CovsegError, match=r"the test split is not in this data folder"):
        load_dataset(tmp_path, "multiclass", split="test")


def test_covid_semiseg_bad_arguments(tmp_path: Path) -> None:
    semiseg_tree(tmp_path, ["0"])
    with pytest.raises(CovsegError, match=r"unknown task 'three'"):
        load_covid_semiseg(tmp_path, "three")
    with pytest.raises(CovsegError, match=r"unknown split 'val'"):
        load_covid_semiseg(tmp_path, "binary", split="val")
    with pytest.raises(CovsegError, match=r"not a COVID-SemiSeg folder"):
        load_covid_semiseg(tmp_path / "Dataset" / "TrainingSet" / "LungInfection-Train", "binary")


# ---------------------------------------------------------------------------------- MedSeg


def medseg_volumes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    hu = np.stack([np.full((4, 3), v, np.float32) for v in (-1350.0, -600.0, 150.0)], axis=-1)
    hu[0, 2, 0] = -2048.0
    labels = np.zeros((4, 3, 3), np.float32)  # MedSeg stores labels as floats
    labels[1, 0, 0], labels[2, 1, 1], labels[3, 2, 2] = 1, 2, 3
    write_nifti(folder / "tr_im.nii.gz", hu)
    write_nifti(folder / "tr_mask.nii.gz", labels)
    return hu, labels


def test_medseg_nifti(tmp_path: Path) -> None:
    hu, labels = medseg_volumes(tmp_path)
    samples = load_medseg_nifti(tmp_path / "tr_im.nii.gz", tmp_path / "tr_mask.nii.gz", "multiclass")
    assert [s.name for s in samples] == ["tr_im_000", "tr_im_001", "tr_im_002"]
    for z, s in enumerate(samples):
        assert s.image.shape == s.mask.shape == (3, 4)  # (rows=y, cols=x)
        assert s.image.dtype == np.float32 and s.mask.dtype == np.int64
        np.testing.assert_allclose(s.image, lung(hu[:, :, z].T), atol=1e-6)
        np.testing.assert_array_equal(s.mask, labels[:, :, z].T)
    assert samples[1].image[0, 1] == 0.5 and samples[0].mask[0, 1] == 1 and samples[2].mask[2, 3] == 3
    binary = load_dataset(tmp_path, "binary")
    assert [s.name for s in binary] == ["tr_im_000", "tr_im_001", "tr_im_002"]
    np.testing.assert_array_equal(binary[2].mask, (labels[:, :, 2].T > 0))
    assert binary[2].mask.max() == 1


def test_medseg_nifti_unlabelled_and_errors(tmp_path: Path) -> None:
    hu, _ = medseg_volumes(tmp_path)
    write_nifti(tmp_path / "val_im.nii.gz", hu[:, :, :2])
    unlabelled = load_dataset(tmp_path, "multiclass", split="unlabelled")
    assert [s.name for s in unlabelled] == ["val_im_000", "val_im_001"]
    assert all(s.mask is None for s in unlabelled)
    with pytest.raises(CovsegError, match=r"MedSeg NIfTI layout holds only training data"):
        load_dataset(tmp_path, "binary", split="test")
    write_nifti(tmp_path / "short.nii.gz", np.zeros((4, 3, 2), np.float32))
    with pytest.raises(CovsegError, match=r"short\.nii\.gz: mask volume has shape \(4, 3, 2\)"):
        load_medseg_nifti(tmp_path / "tr_im.nii.gz", tmp_path / "short.nii.gz", "binary")
    bad = np.zeros((4, 3, 3), np.float32)
    bad[0, 0, 0] = 5
    write_nifti(tmp_path / "five.nii.gz", bad)
    with pytest.raises(CovsegError, match=r"five\.nii\.gz: label values \[5\]"):
        load_medseg_nifti(tmp_path / "tr_im.nii.gz", tmp_path / "five.nii.gz", "multiclass")


def write_npy_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    images = np.full((2, 2, 3, 1), -600.0, np.float32)
    images[1, 0, 0, 0] = -1350.0
    images[1, 1, 2, 0] = 400.0
    channel = np.array([[[0, 1, 2], [3, 0, 1]], [[3, 3, 3], [2, 2, 2]]])  # winning channel per pixel
    masks = np.eye(4, dtype=np.float32)[channel]
    np.save(folder / "images_medseg.npy", images)
    np.save(folder / "masks_medseg.npy", masks)
    return images, channel


def test_medseg_npy_channel_order(tmp_path: Path) -> None:
    images, channel = write_npy_pair(tmp_path)
    samples = load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "multiclass")
    assert [s.name for s in samples] == ["images_medseg_000", "images_medseg_001"]
    # channels (GGO, consolidation, other lung, background) -> labels (1, 2, 0, 0)
    np.testing.assert_array_equal(samples[0].mask, [[1, 2, 0], [0, 1, 2]])
    np.testing.assert_array_equal(samples[1].mask, [[0, 0, 0], [0, 0, 0]])
    assert samples[0].mask.dtype == np.int64 and samples[0].image.dtype == np.float32
    np.testing.assert_allclose(samples[1].image, lung(images[1, :, :, 0]), atol=1e-6)
    assert samples[0].image[0, 0] == 0.5 and samples[1].image[0, 0] == 0.0 and samples[1].image[1, 2] == 1.0
    binary = load_dataset(tmp_path, "binary")
    np.testing.assert_array_equal(binary[0].mask, [[1, 1, 0], [0, 1, 1]])


def test_medseg_npy_errors(tmp_path: Path) -> None:
    write_npy_pair(tmp_path)
    np.save(tmp_path / "three.npy", np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(CovsegError, match=r"three\.npy: array has shape \(2, 2, 3, 3\); expected \(N, H, W, 4\)"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "three.npy", "binary")
    np.save(tmp_path / "blank.npy", np.zeros((2, 2, 3, 4), np.float32))
    with pytest.raises(CovsegError, match=r"blank\.npy: slice 0 has pixels with no channel set"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "blank.npy", "binary")


# ---------------------------------------------------------------------------------- load_dataset / list_images


def test_load_dataset_folder_pairs_aliases(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i, stem in enumerate(["b", "a"]):
        write_grey(root / "Imgs" / f"{stem}.jpg", grey_image(4, 3, seed=i))
        write_palette(root / "GT" / f"{stem}.png", np.full((4, 3), i, np.uint8))
    samples = load_dataset(root, "multiclass")
    assert [s.name for s in samples] == ["a", "b"]
    assert samples[0].mask.max() == 1 and samples[1].mask.max() == 0
    with pytest.raises(CovsegError, match=r"image/mask folder layout holds only training data"):
        load_dataset(root, "multiclass", split="test")


def test_load_dataset_unrecognised(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match=r"no data layout recognised; accepted layouts: COVID-SemiSeg") as info:
        load_dataset(tmp_path, "binary")
    assert "tr_im.nii.gz" in str(info.value) and "images_medseg.npy" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(CovsegError, match=r"missing: data folder not found"):
        load_dataset(tmp_path / "missing", "binary")


def test_list_images(tmp_path: Path) -> None:
    for stem in ("10", "9", "1"):
        write_grey(tmp_path / f"{stem}.png", grey_image(2, 2))
    write_nifti(tmp_path / "5.nii.gz", np.zeros((2, 2), np.int16))
    assert [p.name for p in list_images(tmp_path)] == ["1.png", "5.nii.gz", "9.png", "10.png"]
    assert list_images(tmp_path / "9.png") == [tmp_path / "9.png"]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CovsegError, match=r"notes\.txt: unsupported file type"):
        list_images(tmp_path / "notes.txt")
    with pytest.raises(CovsegError, match=r"gone: not found"):
        list_images(tmp_path / "gone")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CovsegError, match=r"no images found in .*empty"):
        list_images(tmp_path / "empty")


# ---------------------------------------------------------------------------------- the real mirror


@pytest.mark.skipif(not REAL_SEMISEG.is_dir(), reason="shared COVID-SemiSeg mirror not present")
def test_real_covid_semiseg_mirror() -> None:
    for task, allowed in (("binary", {0, 1}), ("multiclass", {0, 1, 2})):
        samples = load_dataset(REAL_SEMISEG, task)
        assert len(samples) == 50
        assert [s.name for s in samples] == sorted((s.name for s in samples), key=int)
        for s in samples:
            assert s.image.dtype == np.float32 and s.mask.dtype == np.int64
            assert s.image.shape == s.mask.shape and s.image.ndim == 2
            assert 0.0 <= s.image.min() and s.image.max() <= 1.0
            assert set(np.unique(s.mask).tolist()) <= allowed
        assert any(s.mask.max() == max(allowed) for s in samples)
    with pytest.raises(CovsegError, match=r"the test split is not in this data folder"):
        load_covid_semiseg(REAL_SEMISEG, "binary", split="test")


def test_window_is_configurable(tmp_path: Path) -> None:
    hu = np.array([[-1000.0, -160.0], [40.0, 240.0]], dtype=np.float32)
    path = write_nifti(tmp_path / "s.nii.gz", hu.T.copy())  # stored (x, y); read back as rows = y
    soft = read_image(path, window=(40.0, 400.0))  # soft-tissue window: -160 -> 0, 240 -> 1
    np.testing.assert_allclose(soft, [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)
    np.testing.assert_allclose(read_image(path), lung(hu), atol=1e-6)


def test_a_nan_or_infinite_pixel_does_not_blank_a_slice(tmp_path: Path) -> None:
    from covseg.datasets import read_image

    hu = np.linspace(-1000, 400, 64, dtype=np.float32).reshape(8, 8)
    nib.save(nib.Nifti1Image(hu.T.copy(), RADIOLOGICAL), str(tmp_path / "ok.nii.gz"))
    clean = read_image(tmp_path / "ok.nii.gz")
    damaged = hu.copy()
    damaged[3, 3] = np.nan
    nib.save(nib.Nifti1Image(damaged.T.copy(), RADIOLOGICAL), str(tmp_path / "nan.nii.gz"))
    read = read_image(tmp_path / "nan.nii.gz")
    assert np.isfinite(read).all() and read.max() > 0.5  # windowed as HU, not a black slice
    np.testing.assert_array_equal(np.delete(read.ravel(), 27), np.delete(clean.ravel(), 27))
    assert read[3, 3] == read.min()  # the hole takes the slice's finite minimum (air)
    tiff = hu.copy()
    tiff[0, 0] = np.inf
    Image.fromarray(tiff, mode="F").save(tmp_path / "inf.tif")
    assert np.isfinite(read_image(tmp_path / "inf.tif")).all()
    Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F").save(tmp_path / "all.tif")
    with pytest.raises(CovsegError, match="all.tif: holds no finite values"):
        read_image(tmp_path / "all.tif")


def test_a_16_bit_png_of_raw_ct_numbers_warns_once_and_reads_as_before(tmp_path: Path, monkeypatch, capsys) -> None:
    """HU + 1024 in a 16-bit PNG reads almost black / 65535 and the model finds nothing: one line on stderr says so
    (once for all such files), the numbers stay those of the 16-bit rule."""
    import covseg.datasets as datasets

    monkeypatch.setattr(datasets, "_WARNED", set(), raising=False)  # raising=False: fails on the missing line alone
    raw = np.array([[0, 24], [1024, 2048]], np.uint16)  # air, lung, water, bone as HU + 1024
    first = write_grey(tmp_path / "ct1.png", raw)
    np.testing.assert_array_equal(read_image(first), raw.astype(np.float32) / np.float32(65535))
    read_image(write_grey(tmp_path / "ct2.png", raw + 1))
    read_image(write_grey(tmp_path / "grey.png", np.array([[0, 1000], [40000, 65535]], np.uint16)))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: warning: {first}: 16-bit values 0..2048 "), err
    assert "raw 12-bit CT numbers" in err[0] and "predictions will be poor" in err[0]


def test_a_dicom_slice_with_rescale_slope_0_reads_as_slope_1_and_warns_once(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.datasets as datasets

    monkeypatch.setattr(datasets, "_WARNED", set(), raising=False)
    stored = np.array([[0, 1024], [1064, 2048]], np.uint16)  # -1024, 0, 40, 1024 HU with slope 1
    first = write_dicom(tmp_path / "a.dcm", stored, slope=0.0)
    as_one = read_image(write_dicom(tmp_path / "one.dcm", stored, slope=1.0))
    assert capsys.readouterr().err == ""  # a valid slope says nothing
    np.testing.assert_array_equal(read_image(first), as_one)
    read_image(write_dicom(tmp_path / "b.dcm", stored, slope=0.0))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: warning: {first}: RescaleSlope 0 (not valid DICOM) read as 1"]


def test_a_colour_image_warns_once_when_made_grey(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.datasets as datasets

    monkeypatch.setattr(datasets, "_WARNED", set(), raising=False)  # raising=False: fails on the missing line alone
    grey = np.full((4, 6), 120, np.uint8)
    Image.fromarray(np.dstack([grey, grey, grey])).save(tmp_path / "grey_rgb.png")
    read_image(tmp_path / "grey_rgb.png")
    assert capsys.readouterr().err == ""  # an RGB file holding grey: nothing to say
    colour = np.dstack([grey, grey // 2, np.zeros_like(grey)])
    for name in ("a.png", "b.png"):
        Image.fromarray(colour).save(tmp_path / name)
        image = read_image(tmp_path / name)
    np.testing.assert_array_equal(image, np.asarray(Image.fromarray(colour).convert("L"), np.float32) / 255)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: warning: {tmp_path / 'a.png'}: is a colour image"), err


# ---------------------------------------------------------------------------------- DICOM slices of other kinds


def write_dicom_slice(path: Path, pixels: np.ndarray, *, modality: str | None = None, slope: float | None = None,
                      intercept: float | None = None, photometric: str = "MONOCHROME2", preamble: bool = True) -> Path:
    """A single DICOM slice (secondary capture SOP class), the tags not given left out."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SeriesInstanceUID = generate_uid()
    if modality is not None:
        ds.Modality = modality
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    ds.set_pixel_data(pixels, photometric, 8 * pixels.itemsize)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=preamble)
    return path


def test_a_dicom_slice_of_another_modality_is_refused_and_one_without_modality_is_hu_only_with_air(
        tmp_path: Path) -> None:
    grey = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    # a secondary capture (OT) or MR slice with identity rescale tags: its 0..255 were windowed as HU (0.9..1.0)
    for modality in ("OT", "MR"):
        path = write_dicom_slice(tmp_path / f"{modality}.dcm", grey, modality=modality, slope=1, intercept=0)
        with pytest.raises(CovsegError, match=rf"{modality}\.dcm: Modality is {modality}, not CT; give a CT slice$"):
            read_image(path)
    # no Modality: grey values unless they reach below -100 (air) after the rescale
    image = read_image(write_dicom_slice(tmp_path / "sc.dcm", grey, slope=1, intercept=0))
    np.testing.assert_allclose(image, grey / 255.0, atol=1e-6)
    image = read_image(write_dicom_slice(tmp_path / "dark-on-bright.dcm", grey, photometric="MONOCHROME1"))
    np.testing.assert_allclose(image, 1.0 - grey / 255.0, atol=1e-6)  # MONOCHROME1 shows 0 white: inverted
    stored = np.array([[0, 274, 1174, 1500]], np.uint16)  # HU -1024, -750, 150, 476 after intercept -1024
    image = read_image(write_dicom_slice(tmp_path / "hu.dcm", stored, intercept=-1024, photometric="MONOCHROME1"))
    np.testing.assert_allclose(image, lung(stored - 1024.0), atol=1e-6)  # HU: the lung window, not inverted
    # a CT slice is HU as before, whatever its photometric interpretation
    image = read_image(write_dicom_slice(tmp_path / "ct.dcm", stored, modality="CT", slope=1, intercept=-1024))
    np.testing.assert_allclose(image, lung(stored - 1024.0), atol=1e-6)


def test_a_dcm_slice_without_the_preamble_is_read_as_the_scan_reader_reads_it(tmp_path: Path) -> None:
    stored = np.array([[0, 274], [1174, 1500]], np.uint16)
    path = write_dicom_slice(tmp_path / "bare.dcm", stored, modality="CT", slope=1, intercept=-1024, preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_allclose(read_image(path), lung(stored - 1024.0), atol=1e-6)
    mask = write_dicom_slice(tmp_path / "mask.dcm", np.array([[0, 1], [2, 0]], np.uint8), preamble=False)
    np.testing.assert_array_equal(read_mask(mask, MULTICLASS), [[0, 1], [2, 0]])


def _jpeg_lossless_slice(path: Path) -> Path:
    """A CT slice whose pixel data are JPEG Lossless compressed (a stub bitstream: no decoder gets as far as it)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import CTImageStorage, JPEGLosslessSV1, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CT", 1, -1024
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 60 + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_decoder_installed() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    return get_decoder(JPEGLosslessSV1).is_available


@pytest.mark.skipif(jpeg_decoder_installed(), reason="a JPEG Lossless decoder is installed here")
def test_a_compressed_dicom_slice_without_a_decoder_says_what_to_install(tmp_path: Path) -> None:
    path = _jpeg_lossless_slice(tmp_path / "jpeg.dcm")
    for read in (read_image, lambda p: read_mask(p, BINARY)):
        with pytest.raises(CovsegError, match=r"jpeg\.dcm: its pixel data are compressed \(JPEG Lossless.*\) and no "
                           r"installed decoder reads them; install pylibjpeg and pylibjpeg-libjpeg \(or python-gdcm\), "
                           r"or decompress the series \(e\.g\. gdcmconv --raw\)$") as info:
            read(path)
        assert "replace the file" not in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------- NIfTI slices in any orientation


def test_a_nifti_slice_stored_in_any_orientation_reads_as_read_volume_shows_it(tmp_path: Path) -> None:
    from covseg import volumes

    # the radiological view (rows anterior -> posterior, columns patient right -> left), a marker at the front right
    view = np.full((6, 8), -1000.0, np.float32)
    view[0, 0] = 500.0
    labels = np.zeros((6, 8), np.uint8)
    labels[0, :2] = 1
    stored = {  # the same world, stored as x -> L, y -> P (radiological) and as x -> R, y -> A (RAS, e.g. dcm2niix)
        "lps": (view.T, labels.T, np.diag([-1.0, -1.0, 1.0, 1.0])),
        "ras": (view.T[::-1, ::-1], labels.T[::-1, ::-1], np.array(
            [[1.0, 0, 0, -7], [0, 1, 0, -5], [0, 0, 1, 0], [0, 0, 0, 1]])),
    }
    for name, (data, mask, affine) in stored.items():
        image = read_image(write_nifti(tmp_path / f"{name}.nii.gz", np.ascontiguousarray(data)[:, :, None], affine))
        np.testing.assert_allclose(image, lung(view), atol=1e-6, err_msg=name)
        scan = volumes.read_volume(write_nifti(tmp_path / f"{name}-scan.nii.gz", np.repeat(data[:, :, None], 2, 2),
                                               affine))
        np.testing.assert_allclose(image, lung(scan.hu[0]), atol=1e-6, err_msg=name)
        # its mask turns alike
        read = read_mask(write_nifti(tmp_path / f"{name}-mask.nii", np.ascontiguousarray(mask), affine), BINARY)
        np.testing.assert_array_equal(read, labels, err_msg=name)
    for name, (_, mask, affine) in stored.items():  # and a label map of the view goes back onto the file's voxels
        np.testing.assert_array_equal(volumes.view_to_nifti_slice(labels, affine), mask, err_msg=name)


# ---------------------------------------------------------------------------------- odd arrays


def test_kaggle_npy_nan_images_are_filled_and_nan_masks_refused(tmp_path: Path) -> None:
    images, _ = write_npy_pair(tmp_path)
    holed = images.astype(np.float32)
    holed[0, 0, 0, 0] = -1350.0
    holed[0, 0, 1, 0] = np.nan
    np.save(tmp_path / "images_medseg.npy", holed)
    samples = load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "masks_medseg.npy", "binary")
    assert np.isfinite(samples[0].image).all()
    assert samples[0].image[0, 1] == samples[0].image.min()  # the hole takes the slice's finite minimum (air)
    np.save(tmp_path / "nan_masks.npy", np.full(images.shape[:3] + (4,), np.nan, np.float32))
    with pytest.raises(CovsegError, match=r"nan_masks\.npy: slice 0 holds NaN or infinite values; masks must be "
                       r"one-hot \(0/1\)$"):
        load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "nan_masks.npy", "binary")


def test_arrays_of_strings_or_complex_numbers_are_refused_in_one_line(tmp_path: Path) -> None:
    images, _ = write_npy_pair(tmp_path)
    masks = tmp_path / "masks_medseg.npy"
    for name, array in (("text.npy", np.full(images.shape, "a")), ("complex.npy", images.astype(np.complex64))):
        np.save(tmp_path / name, array)
        with pytest.raises(CovsegError, match=rf"{name}: array holds .* values \(colour, complex or text\), not grey "
                           r"levels or class ids; save real numbers \(integers or floats\)$"):
            load_medseg_npy(tmp_path / name, masks, "binary")
        with pytest.raises(CovsegError, match=rf"{name}: array holds"):
            load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / name, "binary")
    path = write_nifti(tmp_path / "complex.nii.gz", np.full((4, 4), -1000 + 5j, np.complex64))
    for read in (read_image, lambda p: read_mask(p, BINARY)):
        with pytest.raises(CovsegError, match=r"complex\.nii\.gz: NIfTI holds complex64 values"):
            read(path)


def test_a_nifti_slice_and_its_mask_in_another_format_or_affine_stay_aligned(tmp_path) -> None:
    import nibabel as nib
    from PIL import Image

    # a 6x6 slice stored (x, y) with one bright lesion voxel at x=1, y=4; its mask marks that voxel
    x = np.full((6, 6), -1000.0, np.float32)
    x[1, 4] = 40.0
    m = np.zeros((6, 6), np.uint8)
    m[1, 4] = 1
    ras, lps = np.eye(4), np.diag([-1.0, -1.0, 1.0, 1.0])
    cases = {"png": (ras, None), "lps-png": (lps, None), "same": (lps, lps)}
    for name, (image_affine, mask_affine) in cases.items():
        images, masks = tmp_path / name / "images", tmp_path / name / "masks"
        images.mkdir(parents=True)
        masks.mkdir(parents=True)
        nib.save(nib.Nifti1Image(x, image_affine), images / "s1.nii.gz")
        if mask_affine is None:  # a PNG mask drawn rows = y, cols = x (the NIfTI's voxel order, transposed)
            Image.fromarray(m.T * 255).save(masks / "s1.png")
        else:
            nib.save(nib.Nifti1Image(m, mask_affine), masks / "s1.nii.gz")
        sample = load_folder_pairs(images, masks, "binary")[0]
        assert np.argwhere(sample.image > 0.5).tolist() == np.argwhere(sample.mask == 1).tolist(), name
    images, masks = tmp_path / "other" / "images", tmp_path / "other" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    nib.save(nib.Nifti1Image(x, lps), images / "s1.nii.gz")
    nib.save(nib.Nifti1Image(m, ras), masks / "s1.nii.gz")
    with pytest.raises(CovsegError, match="orders the slice's voxels differently from its image's"):
        load_folder_pairs(images, masks, "binary")


# ---------------------------------------------------------------------------------- reviewed defects


def test_a_medseg_mask_stored_in_another_orientation_is_refused(tmp_path: Path) -> None:
    """A mask stored x-flipped with a matching affine was read as stored: mirrored against its image."""
    hu = np.full((4, 3, 2), -1000.0, np.float32)
    hu[1, 2, :] = 100.0
    labels = np.zeros((4, 3, 2), np.float32)
    labels[1, 2, :] = 1
    write_nifti(tmp_path / "tr_im.nii.gz", hu)  # radiological: axes L, P, S
    flipped = np.array([[1.0, 0, 0, -3], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # axes R, P, S: same world
    write_nifti(tmp_path / "tr_mask.nii.gz", np.ascontiguousarray(labels[::-1]), flipped)
    with pytest.raises(CovsegError, match=r"tr_mask\.nii\.gz: its affine orders the voxels RPS but tr_im\.nii\.gz's "
                       r"orders them LPS, so the mask would lie mirrored or turned on its image; save the mask with "
                       r"the image's affine \(resample it onto the image\)$"):
        load_medseg_nifti(tmp_path / "tr_im.nii.gz", tmp_path / "tr_mask.nii.gz", "binary")
    with pytest.raises(CovsegError, match=r"orders the voxels RPS"):
        load_dataset(tmp_path, "binary")


@pytest.mark.parametrize("name, affine", [
    ("radiological", RADIOLOGICAL),  # the MedSeg files' affine: data[:, :, z].T, as before
    ("ras", np.diag([0.8, 0.8, 2.0, 1.0])),
    ("x-flipped", np.diag([0.8, -0.8, 2.0, 1.0])),
])
def test_medseg_slices_read_as_read_volume_shows_them(tmp_path: Path, name: str, affine: np.ndarray) -> None:
    """Training slices were data[:, :, z].T whatever the affine; prediction (read_volume) turns them by it."""
    from covseg import volumes

    hu = np.full((5, 4, 2), -1000.0, np.float32)
    hu[1, 3, :] = 100.0  # an off-centre marker: any flip or transpose moves it
    labels = (hu > 0).astype(np.float32)
    write_nifti(tmp_path / "tr_im.nii.gz", hu, affine)
    write_nifti(tmp_path / "tr_mask.nii.gz", labels, affine)
    samples = load_medseg_nifti(tmp_path / "tr_im.nii.gz", tmp_path / "tr_mask.nii.gz", "binary")
    scan = volumes.read_volume(tmp_path / "tr_im.nii.gz")
    for z, s in enumerate(samples):  # these affines keep z increasing to superior: stored z = canonical z
        np.testing.assert_allclose(s.image, lung(scan.hu[z]), atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(s.mask, scan.hu[z] > 0, err_msg=name)
        if name == "radiological":
            np.testing.assert_array_equal(s.mask, labels[:, :, z].T)


def test_a_dicom_slice_with_an_empty_rescale_intercept_is_not_taken_as_hu(tmp_path: Path) -> None:
    from pydicom import dcmread

    stored = np.array([[24, 1124], [424, 1024]], np.uint16)  # raw unsigned CT numbers: air 24 = HU -1000 + 1024
    path = write_dicom(tmp_path / "empty.dcm", stored, slope=1.0)
    ds = dcmread(path)
    ds.RescaleIntercept = ""
    ds.save_as(path)
    with pytest.raises(CovsegError, match=r"empty\.dcm: CT slice has no RescaleIntercept and its values \(min 24\) "
                       r"are not Hounsfield units"):
        read_image(path)


def test_a_dicom_grey_slice_without_modality_is_scaled_by_its_bits_stored(tmp_path: Path) -> None:
    """Grey values / (2**BitsStored - 1) as documented, not min-max per slice (which made every slice span 0..1)."""
    from pydicom import dcmread

    grey = np.array([[1000, 2000], [1500, 4095]], np.uint16)
    for name, bits, photometric in (("b12", 12, "MONOCHROME2"), ("b12-inverted", 12, "MONOCHROME1"),
                                    ("b16", 16, "MONOCHROME2")):
        path = write_dicom_slice(tmp_path / f"{name}.dcm", grey, photometric=photometric)
        ds = dcmread(path)
        ds.BitsStored, ds.HighBit = bits, bits - 1
        ds.save_as(path)
        expected = grey / (4095.0 if bits == 12 else 65535.0)
        if photometric == "MONOCHROME1":
            expected = 1.0 - expected
        np.testing.assert_allclose(read_image(path), expected, atol=1e-6, err_msg=name)
    # signed values below 0 (not reaching -100, so no HU) are clipped to 0
    path = write_dicom_slice(tmp_path / "signed.dcm", np.array([[-50, 4095]], np.int16))
    np.testing.assert_allclose(read_image(path), [[0.0, 4095 / 65535.0]], atol=1e-6)


def _oriented_dicom(path: Path, stored: np.ndarray, iop: tuple[float, ...], z: float = 0.0,
                    slope: float = 1.0, intercept: float | None = -1024.0) -> Path:
    from pydicom import dcmread

    write_dicom(path, stored, slope=slope, intercept=0.0 if intercept is None else intercept)
    ds = dcmread(path)
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.ImageOrientationPatient = list(iop)
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [0.7, 0.7]
    if intercept is None:
        del ds.RescaleIntercept
    ds.save_as(path)
    return path


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)])
def test_a_dicom_slice_reads_as_the_same_slice_in_its_series(tmp_path: Path, iop: tuple[float, ...]) -> None:
    """read_image kept the stored pixel order; read_volume turns a slice by ImageOrientationPatient (180 degrees
    apart for IOP -1\\0\\0\\0\\-1\\0)."""
    from covseg import volumes

    stored = np.full((4, 5), 24, np.uint16)  # HU -1000 after the -1024 intercept
    stored[0, 1] = 1224  # HU 200: an off-centre marker
    series = tmp_path / "series"
    for k in range(2):
        _oriented_dicom(series / f"{k}.dcm", stored, iop, z=2.0 * k)
    image = read_image(series / "0.dcm")
    scan = volumes.read_volume(series)
    np.testing.assert_allclose(image, lung(scan.hu[0]), atol=1e-6)
    # a DICOM mask of the slice turns alike; a PNG mask drawn on the stored pixel array too (paired with the image)
    marker = (stored > 1000).astype(np.uint8)
    mask_path = tmp_path / "masks" / "0.dcm"
    write_dicom_slice(mask_path, marker)
    ds = __import__("pydicom").dcmread(mask_path)
    ds.ImageOrientationPatient = list(iop)
    ds.save_as(mask_path)
    np.testing.assert_array_equal(read_mask(mask_path, BINARY), scan.hu[0] > 0)
    pairs = tmp_path / "pairs"
    _oriented_dicom(pairs / "images" / "0.dcm", stored, iop)
    write_grey(pairs / "masks" / "0.png", marker * 255)
    [sample] = load_dataset(pairs, "binary")
    np.testing.assert_allclose(sample.image, lung(scan.hu[0]), atol=1e-6)
    np.testing.assert_array_equal(sample.mask, scan.hu[0] > 0)


def test_kaggle_npy_masks_that_are_not_one_hot_are_refused(tmp_path: Path) -> None:
    """Several channels set, soft values and values like 3 were argmax-ed into one label."""
    write_npy_pair(tmp_path)
    base = np.eye(4, dtype=np.float32)[np.full((2, 2, 3), 3)]
    cases = {
        "several": ([1, 1, 0, 1], r"slice 1 has 1 pixel with several channels set; masks must be one-hot "
                                  r"\(exactly one channel 1 per pixel, the others 0\)$"),
        "soft": ([0.2, 0.0, 0.0, 0.8], r"slice 1 holds values other than 0 and 1 \(e\.g\. 0\.2\); masks must be one-hot"),
        "three": ([0, 3, 0, 0], r"slice 1 holds values other than 0 and 1 \(e\.g\. 3\); masks must be one-hot"),
        "negative": ([-1, 0, 0, 1], r"slice 1 holds values other than 0 and 1 \(e\.g\. -1\)"),
    }
    for name, (pixel, message) in cases.items():
        masks = base.copy()
        masks[1, 0, 2] = pixel
        np.save(tmp_path / f"{name}.npy", masks)
        with pytest.raises(CovsegError, match=rf"{name}\.npy: {message}"):
            load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / f"{name}.npy", "multiclass")
    np.save(tmp_path / "bool.npy", base.astype(bool))  # boolean one-hot masks are fine
    assert load_medseg_npy(tmp_path / "images_medseg.npy", tmp_path / "bool.npy", "binary")[0].mask.max() == 0


# ---------------------------------------------------------------------------------- label schemes


def test_label_schemes_pin_the_documented_class_ids() -> None:
    from covseg.labels import check_labels, get_scheme

    # covseg.labels: binary 0 background, 1 infection; multiclass 1 GGO, 2 consolidation, 3 pleural effusion
    assert BINARY.names == ("background", "infection") and get_scheme("binary") is BINARY
    assert MULTICLASS.names == ("background", "ggo", "consolidation", "pleural_effusion")
    assert (BINARY.num_classes, MULTICLASS.num_classes) == (2, 4)
    assert (BINARY.foreground, MULTICLASS.foreground) == ((1,), (1, 2, 3))  # every class but background 0
    assert (BINARY.pleural, MULTICLASS.pleural) == ((), (3,))  # effusion is outside the lung
    assert len(MULTICLASS.colors) == MULTICLASS.num_classes and MULTICLASS.colors[0] == (0, 0, 0)
    # the largest valid id is num_classes - 1; num_classes itself and negative ids are refused
    check_labels(np.array([0, 1]), BINARY, "m")
    check_labels(np.array([0, 3]), MULTICLASS, "m")
    for scheme, bad in ((BINARY, 2), (MULTICLASS, 4), (MULTICLASS, -1)):
        with pytest.raises(CovsegError, match=rf"m: label values \[{bad}\]"):
            check_labels(np.array([[0, 1], [bad, 0]]), scheme, "m")


def test_a_layout_without_unlabelled_slices_says_where_to_find_them(tmp_path: Path) -> None:
    # before: "use --split cv:K to hold out folds of it", which holds out labelled slices, no unlabelled ones
    folders = tmp_path / "folders"
    write_grey(folders / "Imgs" / "a.jpg", grey_image(4, 3))
    write_palette(folders / "GT" / "a.png", np.zeros((4, 3), np.uint8))
    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    write_npy_pair(kaggle)
    for root, layout in ((folders, "image/mask folder"), (kaggle, "MedSeg Kaggle")):
        with pytest.raises(CovsegError, match=rf"^{root}: the {layout} layout holds no unlabelled slices \(what "
                                              r"train.consistency, data.pseudo_labels, covseg pretrain and covseg "
                                              r"pseudo-label read\); use the unlabelled slices of a COVID-SemiSeg "
                                              r"folder or of a MedSeg NIfTI folder \(val_im.nii.gz\), or train without "
                                              r"train.consistency and data.pseudo_labels$"):
            load_dataset(root, "binary", split="unlabelled")
        with pytest.raises(CovsegError, match=rf"{layout} layout holds only training data, no test split; use "
                                              r"--split cv:K"):
            load_dataset(root, "binary", split="test")


@pytest.mark.parametrize("modality", ["CT", None])
def test_a_float_dicom_slice_with_a_nan_pixel_is_read_as_hu_with_or_without_modality(tmp_path: Path,
                                                                                   modality: str | None) -> None:
    """A float DICOM slice (FloatPixelData) without rescale tags whose air reads -1000 is HU though one pixel is NaN:
    the CT branch tested the minimum before the NaN was filled, and refused the slice as "min nan"."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if modality:
        ds.Modality = modality
    ds.Rows, ds.Columns = 2, 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.BitsAllocated = 1, "MONOCHROME2", 32
    ds.FloatPixelData = np.array([[-1000.0, np.nan], [0.0, 300.0]], "<f4").tobytes()
    ds.save_as(tmp_path / "s.dcm", enforce_file_format=True)
    image = read_image(tmp_path / "s.dcm")  # the lung window (-1000 HU -> 0.2333..., 0 HU -> 0.9), NaN as the air
    assert image.ravel().tolist() == pytest.approx([0.23333, 0.23333, 0.9, 1.0], abs=1e-4)


@pytest.mark.parametrize("link", ["gone", "loop"])
def test_a_link_of_an_image_name_that_leads_nowhere_is_refused_not_skipped(tmp_path: Path, link: str) -> None:
    # fuzz helper 168: such a file was skipped without a word, and its image left out of the prediction or data set
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "1.png")
    broken = tmp_path / "2.png"
    broken.symlink_to(tmp_path / "moved" / "2.png" if link == "gone" else broken)
    (tmp_path / "notes.txt").symlink_to(tmp_path / "nowhere.txt")  # not an image name: skipped as before
    with pytest.raises(CovsegError, match=rf"^{broken}: is a symbolic link that leads nowhere \(its target is gone, "
                                          r"or it leads back to itself\); fix the link or remove it$"):
        list_images(tmp_path)
    broken.unlink()
    assert [p.name for p in list_images(tmp_path)] == ["1.png"]
