"""Volume reading: DICOM series and the equivalent NIfTI give the same canonical array and geometry."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from covseg.dicom import read_dicom_slice
from covseg.errors import CovsegError
from covseg.volumes import (
    Volume,
    check_volume,
    from_input_geometry,
    read_volume,
    to_input_geometry,
    write_like_input,
)

REAL_2SLICES = Path(__file__).resolve().parents[2] / "shared/data/dicom-ct-2slices"

Z, Y, X = 12, 48, 64
SPACING = (2.5, 0.7, 0.8)  # (slice, row, column) mm
ORIGIN_LPS = np.array([-25.0, -16.0, -100.0])  # world position of canonical voxel (0, 0, 0)


def truth_hu() -> np.ndarray:
    """Canonical (Z, Y, X) HU volume, all values 2 * v - 1024 (exact under slope 2 / intercept -1024)."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 1200, (Z, Y, X))
    stored[:, :5, :] = 5  # an anterior band (rows) and a right-side band (columns) of air, as orientation marks
    stored[:, :, :3] = 10
    return (2 * stored - 1024).astype(np.float32)


def _ct_slice(pixels: np.ndarray, ipp, iop, uid: str, *, slope=2.0, intercept=-1024.0, modality="CT",
              study: str = "1.2.3") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = uid
    if modality:
        ds.Modality = modality
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = [SPACING[1], SPACING[2]]
    ds.SliceThickness = SPACING[0]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if pixels.ndim == 3:
        ds.set_pixel_data(pixels.astype(np.uint8), "RGB", 8)
    else:
        ds.set_pixel_data(pixels, "MONOCHROME2", 16)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_dicom_series(folder: Path, hu: np.ndarray, *, uid: str | None = None, skip=(), duplicate=False,
                       seed=0, z_jitter: dict[int, float] | None = None,
                       shift: dict[int, tuple[float, float, float]] | None = None, **kwargs) -> str:
    """Write canonical ``hu`` as an axial series with flipped rows (column cosine +A), shuffled file names.

    Row r of slice k is canonical row Y-1-r: ImageOrientationPatient ``1\\0\\0\\0\\-1\\0`` (rows run towards
    anterior), ImagePositionPatient of the first row at the posterior edge (plus ``z_jitter[k]`` mm along z and
    ``shift[k]``, LPS mm, where given). Returns the series UID.
    """
    folder.mkdir(parents=True, exist_ok=True)
    uid = uid or generate_uid()
    n_z, n_y = hu.shape[:2]
    slope, intercept = kwargs.get("slope", 2.0), kwargs.get("intercept", -1024.0)
    stored = np.rint((hu - (intercept or 0.0)) / (slope or 1.0))
    dtype = np.int16 if stored.min() < 0 else np.uint16
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_z)
    for i, k in enumerate(order):
        if k in skip:
            continue
        ipp = ORIGIN_LPS + [0.0, (n_y - 1) * SPACING[1], k * SPACING[0] + (z_jitter or {}).get(k, 0.0)]
        ipp = ipp + np.asarray((shift or {}).get(k, (0.0, 0.0, 0.0)))
        ds = _ct_slice(stored[k, ::-1].astype(dtype), ipp, [1, 0, 0, 0, -1, 0], uid, **kwargs)
        ds.InstanceNumber = int(rng.integers(1, 1000))  # meaningless on purpose
        ds.save_as(folder / f"IM{rng.integers(0, 10**8):08d}_{i}", enforce_file_format=True)
        if duplicate and i == 0:
            ds.SOPInstanceUID = generate_uid()
            ds.save_as(folder / f"copy_{i}.dcm", enforce_file_format=True)
    return uid


def write_nifti(path: Path, hu: np.ndarray) -> np.ndarray:
    """The same volume as a RAS-stored NIfTI (i -> R, j -> A, k -> S), int16 with scl_slope 2 / inter -1024."""
    n_z, n_y, n_x = hu.shape
    data = hu.transpose(2, 1, 0)[::-1, ::-1, :]  # data[i, j, k] = hu[k, Y-1-j, X-1-i]
    raw = np.rint((data + 1024) / 2).astype(np.int16)
    affine = np.array([
        [SPACING[2], 0, 0, -ORIGIN_LPS[0] - (n_x - 1) * SPACING[2]],
        [0, SPACING[1], 0, -ORIGIN_LPS[1] - (n_y - 1) * SPACING[1]],
        [0, 0, SPACING[0], ORIGIN_LPS[2]],
        [0, 0, 0, 1],
    ])
    img = nib.Nifti1Image(raw, affine)
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(path))
    return affine


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol")
    hu = truth_hu()
    write_dicom_series(root / "dicom", hu)
    write_nifti(root / "ct.nii.gz", hu)
    return root, hu, read_volume(root / "dicom"), read_volume(root / "ct.nii.gz")


def test_dicom_and_nifti_read_identically(pair):
    _, hu, dcm, nii = pair
    for vol in (dcm, nii):
        assert isinstance(vol, Volume) and vol.hu.dtype == np.float32 and vol.is_hu
        assert vol.hu.shape == (Z, Y, X)
        assert np.array_equal(vol.hu, hu)  # canonical: inferior->superior, anterior->posterior, right->left
        assert vol.spacing == pytest.approx(SPACING)
        assert vol.warnings == []
    np.testing.assert_allclose(dcm.affine, nii.affine, atol=1e-6)
    # canonical voxel (z, y, x) lies at LPS ORIGIN + (x sx, y sy, z sz), i.e. RAS (-Lx, -Py, Sz)
    lps = ORIGIN_LPS + np.array([5 * SPACING[2], 7 * SPACING[1], 3 * SPACING[0]])
    np.testing.assert_allclose(dcm.affine @ [3, 7, 5, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-6)
    assert dcm.kind == "dicom" and nii.kind == "nifti" and dcm.series_uid


def test_a_series_uid_for_a_nifti_file_is_ignored_with_a_warning(pair):
    root, hu, _, _ = pair
    vol = read_volume(root / "ct.nii.gz", series_uid="1.2.3.4")
    assert np.array_equal(vol.hu, hu)
    assert vol.warnings == ["--series 1.2.3.4 ignored: ct.nii.gz is not a DICOM series"]


def test_write_like_input_overlays_nifti(pair, tmp_path):
    root, _, _, nii = pair
    labels = np.zeros((Z, Y, X), np.uint8)
    labels[3, 7, 5] = 2
    out = write_like_input(labels, nii, tmp_path / "labels.nii.gz")
    src, img = nib.load(str(root / "ct.nii.gz")), nib.load(str(out))
    assert img.shape == src.shape and img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, src.affine)
    data = np.asarray(img.dataobj)
    assert list(zip(*np.nonzero(data))) == [(X - 1 - 5, Y - 1 - 7, 3)]
    assert np.array_equal(from_input_geometry(data, nii), labels)
    assert not list(tmp_path.glob(".*part*"))  # atomic: no temporary left


def test_write_like_input_for_dicom_lands_on_the_same_world_point(pair, tmp_path):
    _, _, dcm, nii = pair
    labels = np.zeros((Z, Y, X), np.uint8)
    labels[3, 7, 5] = 1
    assert to_input_geometry(labels, dcm).shape == dcm.input_shape == (X, Y, Z)
    img = nib.load(str(write_like_input(labels, dcm, tmp_path / "labels.nii")))
    voxel = np.argwhere(np.asarray(img.dataobj))[0]
    np.testing.assert_allclose(img.affine @ [*voxel, 1], nii.affine @ [3, 7, 5, 1], atol=1e-6)
    assert np.array_equal(read_volume(tmp_path / "labels.nii").hu, labels)  # round trip to canonical
    with pytest.raises(CovsegError, match="nii"):
        write_like_input(labels, dcm, tmp_path / "labels.png")


def test_sha256_of_single_file(pair):
    root, _, _, nii = pair
    assert nii.sha256 == hashlib.sha256((root / "ct.nii.gz").read_bytes()).hexdigest()


def test_two_series_largest_wins_or_choose(tmp_path):
    hu = truth_hu()
    big = write_dicom_series(tmp_path, hu)
    small = write_dicom_series(tmp_path, hu[:4] + 100, seed=1)
    vol = read_volume(tmp_path)
    assert vol.series_uid == big and vol.hu.shape[0] == Z
    assert len(vol.warnings) == 1 and small in vol.warnings[0]
    chosen = read_volume(tmp_path, series_uid=small)
    assert chosen.hu.shape[0] == 4 and np.array_equal(chosen.hu, hu[:4] + 100)
    with pytest.raises(CovsegError, match="no series"):
        read_volume(tmp_path, series_uid="1.2.3.4")


def test_missing_slices_are_filled_from_their_neighbours_on_the_series_grid(tmp_path):
    write_dicom_series(tmp_path / "whole", truth_hu())
    write_dicom_series(tmp_path / "gap", truth_hu(), skip=(5, 6))
    whole, vol = read_volume(tmp_path / "whole"), read_volume(tmp_path / "gap")
    # place 5 takes slice 4, place 6 slice 7 (the nearer); every other slice holds its own pixels, and the voxel
    # grid is the whole series'
    truth = truth_hu()
    assert vol.hu.shape == whole.hu.shape and vol.spacing == pytest.approx(SPACING)
    for place, source in ((5, 4), (6, 7)):
        assert np.array_equal(vol.hu[place], truth[source]), place
    assert np.array_equal(np.delete(vol.hu, [5, 6], axis=0), np.delete(truth, [5, 6], axis=0))
    np.testing.assert_allclose(vol.input_affine, whole.input_affine, atol=1e-6)
    assert any("missing slices" in w and "2 slice places filled with the nearest acquired slice" in w
               for w in vol.warnings)


def test_slices_off_any_even_grid_are_refused_and_small_jitter_is_not(tmp_path):
    write_dicom_series(tmp_path / "uneven", truth_hu(), z_jitter={4: 0.4 * SPACING[0], 5: 0.4 * SPACING[0]})
    with pytest.raises(CovsegError, match="not evenly spaced .* resample the series to even spacing"):
        read_volume(tmp_path / "uneven")
    write_dicom_series(tmp_path / "jitter", truth_hu(), z_jitter={4: 0.05 * SPACING[0]})
    assert read_volume(tmp_path / "jitter").hu.shape[0] == Z


def test_duplicate_positions_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu(), duplicate=True)
    with pytest.raises(CovsegError, match="same slice position"):
        read_volume(tmp_path)


def test_single_slice_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:1])
    with pytest.raises(CovsegError, match="at least 2 slices"):
        read_volume(tmp_path)
    with pytest.raises(CovsegError, match="at least 2 slices"):
        read_volume(get_testdata_file("CT_small.dcm"))


def test_real_ct_small_hu_is_plausible():
    hu, warnings = read_dicom_slice(get_testdata_file("CT_small.dcm"))
    assert hu.shape == (128, 128) and hu.dtype == np.float32 and warnings == []
    assert hu.min() < -800  # lung / air
    assert -50 < float(np.median(hu)) < 100  # soft tissue


def test_colour_and_non_ct_refused(tmp_path):
    uid = generate_uid()
    (tmp_path / "rgb").mkdir()
    for k in range(3):
        ds = _ct_slice(np.zeros((8, 8, 3)), [0, 0, k], [1, 0, 0, 0, 1, 0], uid, slope=None, intercept=None)
        ds.save_as(tmp_path / "rgb" / f"{k}.dcm", enforce_file_format=True)
    with pytest.raises(CovsegError, match="samples per pixel"):
        read_volume(tmp_path / "rgb")
    write_dicom_series(tmp_path / "mr", truth_hu()[:3], modality="MR")
    with pytest.raises(CovsegError, match="Modality is MR"):
        read_volume(tmp_path / "mr")


def test_missing_rescale_tags(tmp_path):
    # signed values already in HU: read, with a warning
    write_dicom_series(tmp_path / "signed", truth_hu()[:3], slope=None, intercept=None)
    vol = read_volume(tmp_path / "signed")
    assert np.array_equal(vol.hu, truth_hu()[:3]) and any("RescaleIntercept" in w for w in vol.warnings)
    # unsigned values without an intercept are not HU: refused, with or without a RescaleSlope
    for slope in (1.0, None):
        write_dicom_series(tmp_path / f"unsigned-{slope}", truth_hu()[:3] + 1024, slope=slope, intercept=None)
        with pytest.raises(CovsegError, match="no RescaleIntercept and its values .* not Hounsfield units"):
            read_volume(tmp_path / f"unsigned-{slope}")


def test_zero_rescale_slope_is_read_as_one_with_a_warning(tmp_path):
    # RescaleSlope 0 is not valid DICOM (every pixel would be the intercept): read as 1, and said so, once per series
    # with the count of slices, and per file for one slice
    write_dicom_series(tmp_path / "zero", truth_hu()[:3], slope=0.0, intercept=-1024.0)
    vol = read_volume(tmp_path / "zero")
    assert np.array_equal(vol.hu, truth_hu()[:3])
    assert "3 of 3 slices: RescaleSlope 0 (not valid DICOM) read as 1" in vol.warnings
    one = sorted((tmp_path / "zero").iterdir())[0]
    hu, warnings = read_dicom_slice(one)
    assert any(np.array_equal(hu, truth_hu()[k, ::-1]) for k in range(3))  # stored rows run flipped
    assert warnings == [f"{one.name}: RescaleSlope 0 (not valid DICOM) read as 1"]
    # a valid slope says nothing
    write_dicom_series(tmp_path / "two", truth_hu()[:3], slope=2.0, intercept=-1024.0)
    assert not any("RescaleSlope" in w for w in read_volume(tmp_path / "two").warnings)
    assert read_dicom_slice(sorted((tmp_path / "two").iterdir())[0])[1] == []


def test_truncated_file_named(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:4])
    victim = sorted(tmp_path.iterdir())[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size * 2 // 3])
    with pytest.raises(CovsegError, match=victim.name):
        read_volume(tmp_path)


def test_image_stack_needs_spacing(tmp_path):
    for k in range(3):
        Image.fromarray(np.full((20, 30), 10 * k, np.uint8)).save(tmp_path / f"{k + 1}.png")
    Image.fromarray(np.full((20, 30), 99, np.uint8)).save(tmp_path / "10.png")  # numeric name order: last
    with pytest.raises(CovsegError, match="--spacing"):
        read_volume(tmp_path)
    vol = read_volume(tmp_path, spacing=(3.0, 0.5, 0.6))
    assert vol.hu.shape == (4, 20, 30) and not vol.is_hu and vol.kind == "images"
    assert [float(vol.hu[k, 0, 0]) for k in range(4)] == pytest.approx([0.0, 10 / 255, 20 / 255, 99 / 255])
    assert vol.spacing == pytest.approx((3.0, 0.5, 0.6))
    Image.fromarray(np.dstack([np.zeros((20, 30), np.uint8), np.full((20, 30), 200, np.uint8),
                               np.zeros((20, 30), np.uint8)])).save(tmp_path / "11.png")
    with pytest.raises(CovsegError, match="colour"):
        read_volume(tmp_path, spacing=(3.0, 0.5, 0.6))


def test_16_bit_image_stacks_read_as_their_8_bit_twins(tmp_path):
    from covseg.scan import grey_to_hu

    grey = np.array([0, 51, 102, 204], np.uint8)  # 8-bit display values of four slices
    for k, g in enumerate(grey):
        (tmp_path / "8").mkdir(exist_ok=True)
        (tmp_path / "16").mkdir(exist_ok=True)
        Image.fromarray(np.full((20, 30), g, np.uint8)).save(tmp_path / "8" / f"{k}.png")
        Image.fromarray(np.full((20, 30), int(g) * 257, np.uint16)).save(tmp_path / "16" / f"{k}.png")  # 0..65535
    eight, sixteen = (read_volume(tmp_path / bits, spacing=(2.0, 0.7, 0.7)) for bits in ("8", "16"))
    np.testing.assert_allclose(sixteen.hu, eight.hu, atol=1e-6)
    np.testing.assert_allclose(grey_to_hu(sixteen.hu)[:, 0, 0], grey / 255 * 1500 - 1350, atol=1e-3)
    Image.fromarray(np.full((20, 30), 9, np.uint8)).save(tmp_path / "16" / "9.png")
    with pytest.raises(CovsegError, match="mix sample types"):
        read_volume(tmp_path / "16", spacing=(2.0, 0.7, 0.7))


def test_real_two_slice_series():
    if not REAL_2SLICES.is_dir():
        pytest.skip(f"{REAL_2SLICES} not present")
    vol = read_volume(REAL_2SLICES)  # the folder also holds SOURCE.md, which is skipped
    assert vol.hu.shape == (2, 512, 512) and vol.is_hu
    assert vol.spacing == pytest.approx((1.0, 0.625, 0.625))
    assert -1050 < np.median(vol.hu[0, 30:80, 200:300]) < -950  # room air above the patient
    assert -900 < np.median(vol.hu[0, 250:330, 100:160]) < -600  # right lung
    chest = vol.hu[0, 150:450, 60:450]
    assert np.mean((chest > 0) & (chest < 100)) > 0.05  # soft tissue
    assert vol.hu.max() < 3100 and vol.hu.min() >= -2048


def test_uid_and_ima_named_series_are_scans(tmp_path):
    from covseg.predict import is_scan, output_stem

    write_dicom_series(tmp_path / "a", truth_hu()[:3])
    for k, f in enumerate(sorted((tmp_path / "a").iterdir())):
        f.rename(f.with_name(f"1.2.840.113619.2.55.3.{k}"))  # named by SOP instance UID: suffix ".0", ".1", ...
    write_dicom_series(tmp_path / "b", truth_hu()[:3])
    for k, f in enumerate(sorted((tmp_path / "b").iterdir())):
        f.rename(f.with_name(f"CT.{k:04d}.IMA"))
    (tmp_path / "b" / "README.txt").write_text("not DICOM")
    for folder in ("a", "b"):
        assert is_scan(tmp_path / folder)
        assert read_volume(tmp_path / folder).shape == (3, Y, X)
    assert not is_scan(tmp_path / "b" / "README.txt")
    assert output_stem(tmp_path / "1.2.840.113619.2.55.3") == "1.2.840.113619.2.55"  # not a folder: suffix dropped
    (tmp_path / "1.2.840.113619.2.55.3").mkdir()
    assert output_stem(tmp_path / "1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"  # a folder: whole name


def test_bad_geometry_is_one_line_error(tmp_path):
    raw = np.full((8, 8, 4), -1000, np.int16)
    singular = np.diag([0.7, 0.7, 2.5, 1.0])
    singular[2] = 0  # no z row: the sform maps every voxel onto one plane
    img = nib.Nifti1Image(raw, None)  # nibabel refuses to derive a qform from it: an sform alone, as some tools write
    img.header.set_sform(singular, code=1)
    nib.save(img, str(tmp_path / "singular.nii.gz"))
    with pytest.raises(CovsegError, match="affine is singular"):
        read_volume(tmp_path / "singular.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((0, 8, 4), np.int16), np.eye(4)), str(tmp_path / "empty.nii.gz"))
    with pytest.raises(CovsegError, match="no voxels"):
        read_volume(tmp_path / "empty.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 0, 1), np.int16), np.eye(4)), str(tmp_path / "no_slices.nii.gz"))
    with pytest.raises(CovsegError, match="no voxels"):
        read_volume(tmp_path / "no_slices.nii.gz")
    uid = generate_uid()
    (tmp_path / "parallel").mkdir()
    for k in range(3):  # row and column directions both +x
        ds = _ct_slice(np.full((8, 8), 24, np.uint16), [0, 0, 2.5 * k], [1, 0, 0, 1, 0, 0], uid)
        ds.save_as(tmp_path / "parallel" / f"{k}.dcm", enforce_file_format=True)
    with pytest.raises(CovsegError, match="parallel row and column directions; the slice geometry is unknown; re-export "
                                          "the series with valid geometry tags$"):
        read_volume(tmp_path / "parallel")


def test_write_like_input_keeps_a_trailing_axis_of_length_one(tmp_path):
    raw = np.full((8, 6, 4, 1), -1000, np.int16)
    raw[2, 3, 1, 0] = 40
    nib.save(nib.Nifti1Image(raw, np.diag([0.7, 0.7, 2.5, 1.0])), str(tmp_path / "ct4d.nii.gz"))
    volume = read_volume(tmp_path / "ct4d.nii.gz")
    assert volume.shape == (4, 6, 8)
    labels = (volume.hu > 0).astype(np.uint8)
    img = nib.load(str(write_like_input(labels, volume, tmp_path / "labels.nii.gz")))
    assert img.shape == (8, 6, 4, 1)
    assert list(zip(*np.nonzero(np.asarray(img.dataobj)))) == [(2, 3, 1, 0)]


def test_uid_named_series_beside_a_preview_image_or_a_nifti_is_read_as_dicom(tmp_path):
    # DICOM is told by content (files of any name): a stray JPG/PNG preview or a converted NIfTI left beside a
    # series whose files have no .dcm suffix must not turn the folder into an image stack or a NIfTI folder
    from covseg.predict import is_scan

    hu = truth_hu()
    write_dicom_series(tmp_path, hu)  # files named IM########_k, no suffix
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "preview.jpg")
    assert is_scan(tmp_path)
    vol = read_volume(tmp_path)
    assert vol.kind == "dicom" and np.array_equal(vol.hu, hu)
    assert read_volume(tmp_path, spacing=(2.5, 0.7, 0.8)).kind == "dicom"  # --spacing does not make it a stack
    write_nifti(tmp_path / "converted.nii.gz", hu)
    vol = read_volume(tmp_path)
    assert vol.kind == "dicom" and np.array_equal(vol.hu, hu)
    for k in range(12):  # more stray files than a sample of the first few names would look past
        (tmp_path / f"000_notes_{k}.txt").write_text("not DICOM")
    assert is_scan(tmp_path) and read_volume(tmp_path).kind == "dicom"


@pytest.mark.parametrize(("units", "to_file"), [("meter", 1e-3), ("micron", 1e3)])
def test_nifti_in_metres_or_micrometres_is_read_in_mm(pair, tmp_path, units, to_file):
    """nibabel's affine is in the file's xyzt_units: a scan stored in metres has the same voxels in mm."""
    _, hu, _, nii = pair
    mm = write_nifti(tmp_path / "mm.nii.gz", hu)
    img = nib.load(str(tmp_path / "mm.nii.gz"))
    scaled = np.diag([to_file, to_file, to_file, 1.0]) @ mm
    other = nib.Nifti1Image(img.dataobj.get_unscaled(), scaled, header=img.header)  # the stored int16
    other.header.set_xyzt_units(units)
    other.header.set_slope_inter(2.0, -1024.0)
    nib.save(other, str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert vol.spacing == pytest.approx(SPACING) and np.array_equal(vol.hu, hu)
    np.testing.assert_allclose(vol.affine, nii.affine, atol=1e-6)
    out = nib.load(str(write_like_input(np.ones((Z, Y, X), np.uint8), vol, tmp_path / "labels.nii.gz")))
    np.testing.assert_allclose(out.affine, scaled)  # the input's own geometry and units
    assert out.header.get_xyzt_units()[0] == units


def test_nifti_without_an_sform_and_with_a_zero_voxel_size_is_refused(tmp_path):
    hu = truth_hu()
    img = nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), None)
    img.header.set_qform(np.diag([0.7, 0.7, 2.5, 1.0]), code=1)
    img.header.set_sform(None, code=0)
    img.header["pixdim"][3] = 0.0  # the slice thickness lost
    nib.save(img, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(CovsegError, match=r"voxel sizes \(pixdim 0.7, 0.7, 0\) are not all positive and it has no sform"):
        read_volume(tmp_path / "flat.nii.gz")
    img.header["pixdim"][3] = 2.5  # with the thickness back it reads, at 2.5 mm
    nib.save(img, str(tmp_path / "ok.nii.gz"))
    assert read_volume(tmp_path / "ok.nii.gz").spacing == pytest.approx((2.5, 0.7, 0.7))


@pytest.mark.parametrize("shape, plane", [((30, 1, 20), "coronal"), ((1, 30, 20), "sagittal")])
def test_one_coronal_or_sagittal_plane_is_not_a_scan(tmp_path, shape, plane):
    path = tmp_path / "plane.nii.gz"
    nib.save(nib.Nifti1Image(np.full(shape, -800, np.int16), np.diag([0.7, 0.7, 2.5, 1.0])), str(path))
    with pytest.raises(CovsegError, match=f"holds a single {plane} plane"):
        read_volume(path)


def test_label_maps_keep_a_nifti_s_own_qform_and_sform(tmp_path):
    hu = truth_hu()
    qform = np.diag([-0.7, -0.7, 2.5, 1.0])
    qform[:3, 3] = [10.0, 20.0, -30.0]
    sform = qform.copy()
    sform[:3, 3] += [0.5, -0.5, 1.0]  # a registration's small shift kept in the sform only
    img = nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    out = nib.load(str(write_like_input(np.zeros(vol.shape, np.uint8), vol, tmp_path / "labels.nii.gz")))
    q, qcode = out.header.get_qform(coded=True)
    s, scode = out.header.get_sform(coded=True)
    np.testing.assert_allclose(q, qform, atol=1e-5)
    np.testing.assert_allclose(s, sform, atol=1e-5)
    assert (int(qcode), int(scode)) == (1, 2)


def test_a_sheared_affine_is_written_as_the_sform_only(pair, tmp_path):
    import dataclasses

    from covseg.volumes import _sheared

    _, _, dcm, _ = pair
    tilted = dcm.input_affine.copy()
    tilted[1, 2] += 0.3 * tilted[2, 2]  # the slice step leans along y: a gantry tilt
    assert _sheared(tilted) and not _sheared(dcm.input_affine)
    for affine, qcode in ((dcm.input_affine, 1), (tilted, 0)):
        volume = dataclasses.replace(dcm, input_affine=affine)
        out = nib.load(str(write_like_input(np.zeros(volume.shape, np.uint8), volume, tmp_path / "l.nii.gz")))
        s, scode = out.header.get_sform(coded=True)
        np.testing.assert_allclose(s, affine, atol=1e-5)
        assert int(scode) == 1 and int(out.header.get_qform(coded=True)[1]) == qcode


@pytest.mark.parametrize("tag, value", [("RescaleSlope", "abc"), ("RescaleSlope", "nan"), ("RescaleIntercept", "inf"),
                                        ("NumberOfFrames", "x")])
def test_a_rescale_or_frame_tag_that_is_not_a_number_is_refused(tmp_path, tag: str, value: str):
    import pydicom

    write_dicom_series(tmp_path, truth_hu()[:4])
    victim = sorted(tmp_path.iterdir())[1]
    ds = pydicom.dcmread(victim)
    keyword = {"RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052, "NumberOfFrames": 0x00280008}[tag]
    ds.add_new(keyword, "IS" if tag == "NumberOfFrames" else "DS", "0")
    ds[keyword]._value = value  # written as stored, bypassing pydicom's own checks, as a damaged file holds it
    ds.save_as(victim, enforce_file_format=True)
    with pytest.raises(CovsegError, match=f"{victim.name}: DICOM {tag} is '{value}', not a finite number"):
        read_volume(tmp_path)


def test_a_ct_slice_cut_short_in_its_header_is_refused_not_dropped(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:5])
    victim = sorted(tmp_path.iterdir())[-1]
    victim.write_bytes(victim.read_bytes()[:400])  # the file meta and the first tags: no Rows left
    with pytest.raises(CovsegError, match=f"{victim.name}: a CT image file without its image .* cut short"):
        read_volume(tmp_path)


def test_the_ct_series_is_read_beside_a_larger_series_of_another_modality(tmp_path):
    hu = truth_hu()
    ct = write_dicom_series(tmp_path, hu[:5])
    pet = write_dicom_series(tmp_path, hu, seed=1, modality="PT")
    vol = read_volume(tmp_path)
    assert vol.series_uid == ct and vol.hu.shape[0] == 5
    assert len(vol.warnings) == 1 and "largest CT series" in vol.warnings[0]
    assert f"left out: {pet} ({hu.shape[0]} images, PT)" in vol.warnings[0]  # what was left out, by modality
    with pytest.raises(CovsegError, match="Modality is PT"):
        read_volume(tmp_path, series_uid=pet)


def test_of_two_stacks_equally_large_in_one_series_the_axial_one_is_read(tmp_path):
    hu = truth_hu()[:5]
    uid = write_dicom_series(tmp_path, hu)
    stored = np.rint((hu + 1024.0) / 2.0).astype(np.uint16)
    for k in range(5):  # a coronal stack of as many images, same size, in the same series; its names sort first
        ds = _ct_slice(stored[k], ORIGIN_LPS + [0.0, 10.0 * k, 0.0], [1, 0, 0, 0, 0, -1], uid)
        ds.save_as(tmp_path / f"A_coronal_{k}", enforce_file_format=True)
    vol = read_volume(tmp_path)
    assert np.array_equal(vol.hu, hu)  # the axial stack, whatever the file order
    assert len(vol.warnings) == 1 and "the largest 5 images each; read the one nearest axial" in vol.warnings[0]
    assert "left out 5 images (e.g. A_coronal_" in vol.warnings[0]


def test_orientations_a_hair_apart_are_one_stack(tmp_path):
    import pydicom

    write_dicom_series(tmp_path, truth_hu())
    for i, f in enumerate(sorted(tmp_path.iterdir())):  # 0.0005 +- 1e-8 rounds to 0.0 or 0.001 at 3 decimals
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0005 + (1e-8 if i % 2 else -1e-8)]
        ds.save_as(f, enforce_file_format=True)
    vol = read_volume(tmp_path)
    assert vol.hu.shape[0] == Z and not any("left out" in w for w in vol.warnings)


def test_nan_voxels_of_a_float_tiff_stack_are_filled_and_the_stack_stays_hu(tmp_path):
    hu = truth_hu()[:4, :20, :30]
    for k in range(4):
        plane = hu[k].copy()
        if k == 2:
            plane[5:8, 5:8] = np.nan
        Image.fromarray(plane.astype(np.float32), mode="F").save(tmp_path / f"{k}.tif")
    vol = read_volume(tmp_path, spacing=(2.5, 0.7, 0.7))
    assert vol.is_hu and np.isfinite(vol.hu).all()
    assert any("9 NaN/infinite voxels were set to" in w for w in vol.warnings)


def test_reading_a_nifti_with_negative_voxel_sizes_prints_nothing_of_nibabel_s(tmp_path):
    import logging

    img = nib.Nifti1Image(truth_hu()[:4].transpose(2, 1, 0).astype(np.int16), np.diag([-0.8, 0.7, 2.5, 1.0]))
    nib.save(img, str(tmp_path / "neg.nii"))
    raw = bytearray((tmp_path / "neg.nii").read_bytes())
    raw[80:84] = np.asarray([-0.8], "<f4").tobytes()  # pixdim[1] < 0, as some converters write; the sform holds
    (tmp_path / "neg.nii").write_bytes(bytes(raw))  # the geometry, and nibabel logs it straight to stderr
    records: list[logging.LogRecord] = []
    catcher = logging.Handler()
    catcher.emit = records.append  # type: ignore[method-assign]
    nibabel_log = logging.getLogger("nibabel.global")
    nibabel_log.addHandler(catcher)
    try:
        vol = read_volume(tmp_path / "neg.nii")
        nib.load(str(tmp_path / "neg.nii")).header  # outside covseg's reader nibabel still says it: the check bites
    finally:
        nibabel_log.removeHandler(catcher)
    assert vol.hu.shape[0] == 4
    assert len(records) == 1 and "pixdim" in records[0].getMessage()


def test_a_single_dicom_slice_with_a_rescale_slope_that_is_not_a_number_is_refused(tmp_path):
    from covseg.datasets import read_image

    ds = _ct_slice(np.full((16, 16), 600, np.uint16), [0, 0, 0], [1, 0, 0, 0, 1, 0], generate_uid())
    ds["RescaleSlope"]._value = "nan"
    ds.save_as(tmp_path / "one.dcm", enforce_file_format=True)
    with pytest.raises(CovsegError, match="one.dcm: DICOM RescaleSlope is 'nan', not a finite number"):
        read_image(tmp_path / "one.dcm")


def test_a_stray_slice_position_far_from_the_series_is_refused_not_filled_in(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:6], z_jitter={5: 3000.0})  # slice 5 at +3 m: 1200 places for 6 slices
    with pytest.raises(CovsegError, match="its 6 slices span .* places .* a slice with a wrong ImagePositionPatient"):
        read_volume(tmp_path)


def _file_at_z(folder: Path, z: float) -> str:
    """Name of the file of ``folder`` whose ImagePositionPatient z is ``z`` (mm)."""
    import pydicom

    return next(f.name for f in folder.iterdir() if abs(float(pydicom.dcmread(f).ImagePositionPatient[2]) - z) < 1e-6)


def test_label_maps_of_a_nifti_without_a_qform_or_sform_carry_neither_and_its_voxel_sizes(tmp_path):
    # both codes 0: readers place the scan by pixdim alone (nibabel centred with x mirrored, ITK voxel 0 at the
    # origin); labels given a form of code 1 landed elsewhere in ITK (shifted and mirrored)
    img = nib.Nifti1Image(truth_hu().transpose(2, 1, 0).astype(np.int16), None)  # (X, Y, Z) = (64, 48, 12)
    img.header.set_zooms((0.8, 0.7, 2.5))
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    src = nib.load(str(tmp_path / "ct.nii.gz"))
    assert (int(src.header["qform_code"]), int(src.header["sform_code"])) == (0, 0)
    volume = read_volume(tmp_path / "ct.nii.gz")
    labels = np.zeros(volume.shape, np.uint8)
    labels[3, 7, 5] = 1
    out = nib.load(str(write_like_input(labels, volume, tmp_path / "labels.nii.gz")))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (0, 0)
    assert out.header.get_zooms() == src.header.get_zooms()
    np.testing.assert_allclose(out.header.get_zooms(), (0.8, 0.7, 2.5), rtol=1e-6)
    # nibabel's fallback for both: diag(-0.8, 0.7, 2.5), centred: ((64-1)/2 * 0.8, -(48-1)/2 * 0.7, -(12-1)/2 * 2.5)
    fallback = np.array([[-0.8, 0, 0, 25.2], [0, 0.7, 0, -16.45], [0, 0, 2.5, -13.75], [0, 0, 0, 1]])
    np.testing.assert_allclose(src.affine, fallback, atol=1e-5)
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-6)
    # i runs right->left as canonical x does, j anterior->posterior reversed, k inferior->superior
    assert [tuple(v) for v in np.argwhere(np.asarray(out.dataobj))] == [(5, Y - 1 - 7, 3)]


@pytest.mark.parametrize("k", [0, 6, Z - 1])  # 0 and Z-1 are the series' ends, whose shift tilts the first-to-last line
def test_a_slice_shifted_within_its_plane_is_refused_and_named(tmp_path, k):
    write_dicom_series(tmp_path, truth_hu(), shift={k: (30.0, 0.0, 0.0)})  # 30 mm along x, in the axial plane
    victim = _file_at_z(tmp_path, ORIGIN_LPS[2] + k * SPACING[0])
    with pytest.raises(CovsegError, match=f"{victim} lies 30 mm off the line of the other slices within its plane"):
        read_volume(tmp_path)


def test_two_slices_on_one_place_of_the_grid_are_refused_not_collapsed(tmp_path):
    import pydicom

    write_dicom_series(tmp_path, truth_hu())
    slice4 = _file_at_z(tmp_path, -90.0)  # canonical slice 4: -100 + 4 * 2.5
    ds = pydicom.dcmread(tmp_path / slice4)
    ds.ImagePositionPatient = [-25.0, 16.9, -89.7]  # 0.3 mm above it: 0.12 of a step, rounded to the same place
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
    # slice order runs along the normal, -z (ImageOrientationPatient 1\\0\\0\\0\\-1\\0): -89.7 before -90
    with pytest.raises(CovsegError, match=f"extra.dcm and {slice4} lie 0.3 mm apart, under half the series' 2.5 mm"):
        read_volume(tmp_path)


def _axial_series(folder: Path, z: Sequence[float]) -> list[str]:
    """Write 16x16 axial slices (ImageOrientationPatient 1\\0\\0\\0\\1\\0, normal +z) at heights ``z``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    uid, names = generate_uid(), []
    for k, zk in enumerate(z):
        ds = _ct_slice(np.full((16, 16), 500 + k, np.uint16), [0.0, 0.0, zk], [1, 0, 0, 0, 1, 0], uid)
        names.append(f"{k:03d}.dcm")
        ds.save_as(folder / names[-1], enforce_file_format=True)
    return names


def test_a_slow_drift_of_the_slice_spacing_is_refused(tmp_path):
    # 10 steps of 2.4 mm, then 10 of 2.6: each within 10 % of the 2.5 mm median, but the affine's grid (2.5 mm from
    # the first slice to the last) puts slice 10 at 25 mm, where it lies at 24: 1 mm, 40 % of a step, off
    z = np.concatenate([[0.0], np.cumsum([2.4] * 10 + [2.6] * 10)])
    names = _axial_series(tmp_path / "drift", z)
    with pytest.raises(CovsegError, match=rf"not evenly spaced \(steps 2.4..2.6 mm; {names[10]} lies 1 mm off a "
                                          r"2.5 mm grid\)"):
        read_volume(tmp_path / "drift")
    # the same steps alternating stay within 0.1 mm of the grid: read, on it
    z = np.concatenate([[0.0], np.cumsum([2.4, 2.6] * 10)])
    _axial_series(tmp_path / "alternating", z)
    vol = read_volume(tmp_path / "alternating")
    assert vol.shape == (21, 16, 16) and vol.spacing == pytest.approx((2.5, 0.7, 0.8)) and vol.warnings == []


def test_a_gantry_tilted_series_reads_on_its_leaning_grid_and_a_shifted_slice_of_it_is_refused(tmp_path):
    lean = SPACING[0] * np.tan(np.radians(15.0))  # each slice 0.67 mm further posterior: a 15 degree gantry tilt
    tilt = {k: (0.0, k * lean, 0.0) for k in range(Z)}
    write_dicom_series(tmp_path / "tilted", truth_hu(), shift=tilt)
    vol = read_volume(tmp_path / "tilted")
    assert np.array_equal(vol.hu, truth_hu()) and vol.spacing == pytest.approx(SPACING)  # slice planes 2.5 mm apart
    assert vol.warnings == ["gantry tilt of 15.0 degrees: the geometry is kept as a sheared affine"]
    for k in (0, 5, Z - 1):  # canonical slice k's first row (row 0 of the file: canonical row Y-1) lies at its IPP
        lps = ORIGIN_LPS + [0.0, (Y - 1) * SPACING[1] + k * lean, k * SPACING[0]]
        np.testing.assert_allclose(vol.affine @ [k, Y - 1, 0, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-6)
    tilt[6] = (30.0, 6 * lean, 0.0)
    write_dicom_series(tmp_path / "shifted", truth_hu(), shift=tilt)
    victim = _file_at_z(tmp_path / "shifted", ORIGIN_LPS[2] + 6 * SPACING[0])
    with pytest.raises(CovsegError, match=f"{victim} lies 30 mm off the line of the other slices within its plane"):
        read_volume(tmp_path / "shifted")


# ---------------------------------------------------------------------------------- implausible voxel sizes


@pytest.mark.parametrize(("units", "found", "hint"), [
    ("micron", "0.0025 x 0.0007 x 0.0008 mm", "its affine looks like mm while its xyzt_units say micron"),
    ("meter", "2500 x 700 x 800 mm", "its affine looks like mm while its xyzt_units say meter"),
])
def test_a_nifti_whose_units_do_not_fit_its_mm_affine_is_refused_with_a_unit_hint(tmp_path, units, found, hint):
    """An mm affine whose xyzt_units say micron reads 1000x too small (the lung mask then asked for tens of GB), one
    that says meter 1000x too large (billions of mL): refused in one line naming the voxel size and its source."""
    write_nifti(tmp_path / "mm.nii.gz", truth_hu()[:4])
    img = nib.load(str(tmp_path / "mm.nii.gz"))
    img.header.set_xyzt_units(units)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(CovsegError) as refused:
        read_volume(tmp_path / "ct.nii.gz")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'ct.nii.gz'}: voxel size {found}")
    assert f"xyzt_units {units}" in message and hint in message


def test_a_nifti_without_orientation_is_read_with_a_warning_that_left_and_right_may_be_swapped(tmp_path):
    """Both qform_code and sform_code 0: nibabel falls back on its Analyze default (LAS), so the lungs' sides in
    the figures rest on a guess, which the reader is told (it was silent)."""
    write_nifti(tmp_path / "coded.nii.gz", truth_hu()[:4])
    coded = nib.load(str(tmp_path / "coded.nii.gz"))
    img = nib.Nifti1Image(np.asarray(coded.dataobj), None)
    img.header.set_zooms(coded.header.get_zooms())
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "bare.nii.gz"))
    assert not [w for w in read_volume(tmp_path / "coded.nii.gz").warnings if "orientation" in w]
    volume = read_volume(tmp_path / "bare.nii.gz")
    assert [w for w in volume.warnings if "orientation" in w] == [
        "bare.nii.gz: its header holds no orientation (qform_code and sform_code 0), so nibabel's default (LAS) was "
        "assumed: right and left may be swapped; set the qform or sform, or convert the scan again"]


@pytest.mark.parametrize(("units", "scale", "guess"), [
    ("micron", 1e6, "like micrometres (/ 1000 gives mm)"),  # an affine in nm: 2.5e6 um -> 2500 mm slices
    ("meter", 1e-6, "like metres (x 1000 gives mm)"),  # an affine in km: 2.5e-6 m -> 0.0025 mm slices
])
def test_a_nifti_off_the_other_way_from_its_units_gets_the_general_hint_not_set_the_units_to_mm(
        tmp_path, units, scale, guess):
    """A file whose affine is 1000x off in the direction its own units do not explain: setting the units to mm would
    make it 1000x worse still, so the message says what the sizes look like instead ("micrometres" holds "metres":
    the micron case used to get the meter file's advice)."""
    img = nib.Nifti1Image(np.full((8, 8, 4), -1000, np.int16), np.diag([0.7 * scale, 0.7 * scale, 2.5 * scale, 1.0]))
    img.header.set_xyzt_units(units)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(CovsegError) as refused:
        read_volume(tmp_path / "ct.nii.gz")
    message = str(refused.value)
    assert "\n" not in message and f"xyzt_units {units}" in message
    assert "looks like mm while its xyzt_units say" not in message
    assert f"covseg expects mm: they look {guess}; fix the affine or its xyzt_units" in message


def test_a_dicom_series_with_pixel_spacing_in_metres_is_refused(tmp_path):
    import pydicom

    write_dicom_series(tmp_path, truth_hu()[:4])
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0.0007, 0.0008]
        ds.save_as(path)
    with pytest.raises(CovsegError, match=r"voxel size 2\.5 x 0\.0007 x 0\.0008 mm \(Z Y X, from PixelSpacing .* "
                                          r"the pixel size looks like metres"):
        read_volume(tmp_path)


def test_a_spacing_in_metres_or_micrometres_is_refused_and_the_plausible_bounds_are_read(tmp_path):
    from covseg.volumes import PIXEL_MM_RANGE, SLICE_MM_RANGE

    for k in range(3):
        Image.fromarray(np.full((20, 30), 10 * k, np.uint8)).save(tmp_path / f"{k}.png")
    for spacing, unit in (((0.0025, 0.0009, 0.0009), "metres"), ((2500, 900, 900), "micrometres")):
        with pytest.raises(CovsegError, match=rf"^--spacing {' '.join(f'{v:g}' for v in spacing)}: voxel size .*"
                                              rf"covseg expects mm: they look like {unit}"):
            read_volume(tmp_path, spacing=spacing)
    with pytest.raises(CovsegError, match="the pixel size looks like micrometres"):  # only what is off is named
        read_volume(tmp_path, spacing=(2.5, 900, 0.9))
    with pytest.raises(CovsegError, match="outside what covseg expects of a CT; check it"):  # no single unit fits
        read_volume(tmp_path, spacing=(0.001, 900, 0.9))
    edges = (SLICE_MM_RANGE[1], PIXEL_MM_RANGE[1], PIXEL_MM_RANGE[0])
    assert read_volume(tmp_path, spacing=edges).spacing == pytest.approx(edges)


def test_a_16_bit_png_stack_of_raw_ct_numbers_reads_as_before_with_a_warning(tmp_path):
    """HU + 1024 stored in 16-bit PNGs reads almost black / 65535: the numbers are kept, one warning says so."""
    raw = (truth_hu()[:3] + 1024).clip(0, 4095).astype(np.uint16)
    for k, plane in enumerate(raw):
        Image.fromarray(plane).save(tmp_path / f"{k}.png")
    vol = read_volume(tmp_path, spacing=(2.5, 0.7, 0.8))
    assert float(vol.hu.max()) == pytest.approx(int(raw.max()) / 65535)  # unchanged: / 65535
    lines = [w for w in vol.warnings if "raw 12-bit CT numbers" in w]
    assert len(lines) == 1 and "\n" not in lines[0] and lines[0].startswith(f"{tmp_path.name}: 16-bit values")
    assert "NIfTI or DICOM in HU" in lines[0] and "8-bit lung-windowed PNG" in lines[0]


def _jpeg_lossless_series(folder: Path) -> None:
    """Three CT slices whose pixel data are JPEG Lossless compressed (stub bitstreams: no decoder gets as far)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    folder.mkdir()
    uid = generate_uid()
    for k in range(3):
        ds = _ct_slice(np.zeros((8, 8), np.uint16), [0, 0, 2.0 * k], [1, 0, 0, 0, 1, 0], uid)
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.BitsStored, ds.HighBit = 12, 11
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 60 + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)


def _jpeg_decoder_installed() -> bool:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    return get_decoder(JPEGLosslessSV1).is_available


@pytest.mark.skipif(_jpeg_decoder_installed(), reason="a JPEG Lossless decoder is installed here")
def test_a_compressed_series_without_a_decoder_says_what_to_install_not_to_replace_it(tmp_path):
    _jpeg_lossless_series(tmp_path / "jpeg")
    with pytest.raises(CovsegError, match=r"\.dcm: its pixel data are compressed \(JPEG Lossless.*\) and no installed "
                       r"decoder reads them; install pylibjpeg and pylibjpeg-libjpeg \(or python-gdcm\), or decompress "
                       r"the series \(e\.g\. gdcmconv --raw\)$") as info:
        read_volume(tmp_path / "jpeg")
    assert "replace the file" not in str(info.value)


def test_a_single_nifti_slice_turns_as_the_scan_s_slices_in_every_stored_orientation(tmp_path):
    from covseg.volumes import nifti_slice_to_view, view_to_nifti_slice

    view = np.arange(4 * 6, dtype=np.float32).reshape(4, 6) - 1000  # rows anterior -> posterior, columns right -> left
    lps = np.diag([-0.7, -0.8, 2.5, 1.0])  # stored view.T: i -> patient left, j -> posterior
    for transpose in (False, True):
        for flip_i in (1, -1):
            for flip_j in (1, -1):
                # the same world stored in another voxel order: flips and a transpose, the affine following them
                transform = np.array([[1, flip_i], [0, flip_j], [2, 1]], float)
                if transpose:
                    transform[:2] = transform[1::-1]
                data = nib.orientations.apply_orientation(view.T[:, :, None], transform)
                affine = lps @ nib.orientations.inv_ornt_aff(transform, (6, 4, 1))
                np.testing.assert_array_equal(nifti_slice_to_view(data[:, :, 0], affine), view)
                np.testing.assert_array_equal(view_to_nifti_slice(view, affine), data[:, :, 0])
                nib.save(nib.Nifti1Image(np.repeat(data, 2, 2), affine), str(tmp_path / "scan.nii.gz"))
                np.testing.assert_array_equal(read_volume(tmp_path / "scan.nii.gz").hu[0], view)
    # a coronal slice (i -> patient right, j -> superior): head up, the patient's right on the viewer's left
    coronal = np.array([[0.8, 0, 0, 0], [0, 0, -2.5, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]])
    data = view.T[::-1, ::-1]  # so that data[i, j] sits at view[rows = superior first, columns = right first]
    np.testing.assert_array_equal(nifti_slice_to_view(data, coronal), view)
    np.testing.assert_array_equal(view_to_nifti_slice(view, coronal), data)
    # an affine without in-plane directions keeps the stored order, transposed
    np.testing.assert_array_equal(nifti_slice_to_view(view.T, np.zeros((4, 4))), view)


def test_an_empty_rescale_intercept_counts_as_missing(tmp_path):
    """An empty RescaleIntercept tag was taken as 0: raw unsigned CT numbers (air about 24) passed as HU."""
    write_dicom_series(tmp_path / "unsigned", truth_hu()[:3] + 1024, slope=1.0, intercept="")
    with pytest.raises(CovsegError, match=r"has no RescaleIntercept and its values \(min \d+\) are not Hounsfield units"):
        read_volume(tmp_path / "unsigned")
    # values already in HU (air below -100) are read as without the tag: HU, with the missing-intercept warning
    write_dicom_series(tmp_path / "signed", truth_hu()[:3], slope=1.0, intercept="")
    vol = read_volume(tmp_path / "signed")
    assert np.array_equal(vol.hu, truth_hu()[:3]) and any("no RescaleIntercept" in w for w in vol.warnings)


# --------------------------------------------------------------------------------------------
# tests added by mutation testing: each kills a source mutant that the tests above let through


def test_to_and_from_input_geometry_refuse_an_array_of_another_shape(pair):
    _, _, _, nii = pair
    wrong = np.zeros((nii.shape[0], nii.shape[2], nii.shape[1]), np.uint8)  # Y and X swapped: same size, other shape
    with pytest.raises(ValueError, match="canonical shape"):
        to_input_geometry(wrong, nii)
    with pytest.raises(ValueError, match="input shape"):
        from_input_geometry(np.zeros(nii.shape, np.uint8), nii)  # canonical (Z, Y, X), not the stored (X, Y, Z)


def test_label_values_0_to_255_are_written_and_others_refused(pair, tmp_path):
    _, _, _, nii = pair
    labels = np.zeros(nii.shape, np.int16)
    labels[1, 2, 3] = 255
    out = nib.load(str(write_like_input(labels, nii, tmp_path / "l.nii.gz")))
    assert out.get_data_dtype() == np.uint8 and int(np.asarray(out.dataobj).max()) == 255
    for bad in (-1, 256):
        labels[1, 2, 3] = bad
        with pytest.raises(ValueError, match="0..255"):
            write_like_input(labels, nii, tmp_path / "bad.nii.gz")


@pytest.mark.parametrize("low, is_hu", [(-100.0, False), (-101.0, True)])
def test_a_nifti_is_hu_only_when_its_minimum_is_below_minus_100(tmp_path, low, is_hu):
    data = np.full((6, 5, 4), 40.0, np.float32)
    data[0, 0, 0] = low
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert vol.is_hu is is_hu
    assert any("do not look like Hounsfield units" in w for w in vol.warnings) is (not is_hu)


@pytest.mark.parametrize("dtype, hi, refused", [(np.uint16, 1139, True), (np.int16, 4095, True),
                                                (np.uint8, 255, False), (np.uint16, 4096, False),
                                                (np.float32, 1139, True), (np.float32, 1139.5, False)])
def test_a_nifti_of_raw_ct_numbers_without_its_rescale_is_refused(tmp_path, dtype, hi, refused):
    """HU + 1024 stored as whole numbers without scl_inter (0..1139 here) was min-max scaled as grey values: soft tissue
    (1064) read as about -900 HU, the lung mask and every reported volume wrong, with only a 'treated as grey values'
    warning. Refused like a DICOM series without RescaleIntercept, also as floats holding only whole numbers (a
    conversion to float32 keeps them so; session 74); 8-bit grey, 16-bit grey beyond 12 bits and floats with fractions
    are still read as grey values."""
    data = np.full((6, 5, 4), 40, dtype)
    data[0, 0, 0], data[1, 1, 1] = 0, hi
    nib.save(nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0])), str(tmp_path / "ct.nii.gz"))
    if refused:
        with pytest.raises(CovsegError, match=r"look like raw CT numbers \(HU \+ 1024\).*set_slope_inter\(1, -1024\)"):
            read_volume(tmp_path / "ct.nii.gz")
    else:
        vol = read_volume(tmp_path / "ct.nii.gz")
        assert not vol.is_hu and any("treated as grey values" in w for w in vol.warnings)


def test_a_nifti_whose_header_rescales_its_integers_is_not_called_raw_ct_numbers(tmp_path):
    """The refusal says the values were stored "without the header's rescale": one whose header has one (here
    scl_slope 0.5, values 0..2000 after it) is read as grey values with the warning, as before the refusal."""
    data = np.full((6, 5, 4), 40, np.uint16)
    data[0, 0, 0], data[1, 1, 1] = 0, 4000
    img = nib.Nifti1Image(data, np.diag([0.7, 0.7, 2.5, 1.0]))
    img.header.set_slope_inter(0.5, 0)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert not vol.is_hu and any("values 0..2000 do not look like Hounsfield units" in w for w in vol.warnings)


def test_a_dicom_series_without_rescale_tags_is_hu_only_when_it_reaches_below_minus_100(tmp_path):
    hu = truth_hu()[:3]
    hu = hu - hu.min() - 100.0  # minimum exactly -100: not below it
    write_dicom_series(tmp_path / "edge", hu, slope=None, intercept=None)
    with pytest.raises(CovsegError, match=r"no RescaleIntercept and its values \(min -100\)"):
        read_volume(tmp_path / "edge")
    write_dicom_series(tmp_path / "below", hu - 1.0, slope=None, intercept=None)
    assert np.array_equal(read_volume(tmp_path / "below").hu, hu - 1.0)


@pytest.mark.parametrize("implicit", [True, False])
def test_bare_dcm_files_without_file_meta_are_read_pixels_and_all(tmp_path, implicit):
    import pydicom

    hu = truth_hu()[:3]
    write_dicom_series(tmp_path / "full", hu)
    bare = tmp_path / "bare"
    bare.mkdir()
    for k, f in enumerate(sorted((tmp_path / "full").iterdir())):  # ACR-NEMA style: no preamble, no group 0002
        ds = pydicom.dcmread(f)
        del ds.file_meta
        ds.preamble = None
        ds.save_as(bare / f"{k}.dcm", enforce_file_format=False, implicit_vr=implicit, little_endian=True)
        assert (bare / f"{k}.dcm").read_bytes()[128:132] != b"DICM"
    check_volume(bare)
    assert np.array_equal(read_volume(bare).hu, hu)
    slice_hu, _ = read_dicom_slice(bare / "0.dcm")
    assert slice_hu.shape == hu.shape[1:]


def test_a_gap_of_under_two_steps_counts_as_a_missing_slice(tmp_path):
    # slice positions 0, 1, 2, 3.85, 4.85, 5.85 steps: the 1.85-step gap (> 1.5 x the median) holds one missing place
    shift = 0.85 * SPACING[0]
    write_dicom_series(tmp_path, truth_hu()[:6], z_jitter={3: shift, 4: shift, 5: shift})
    vol = read_volume(tmp_path)
    assert vol.hu.shape[0] == 7
    np.testing.assert_array_equal(vol.hu[4], truth_hu()[3])  # slice 3 (at 3.85 steps) on place 4; place 3 is filled
    assert any("missing slices: 1 gap longer" in w and "1 slice place filled" in w for w in vol.warnings)
    assert not any("non-uniform" in w for w in vol.warnings)


def test_as_many_places_to_fill_as_slices_read_is_filled_one_more_is_refused(tmp_path):
    # 4 slices at places 0, 1, 2, 7: 4 empty places are filled; at 0, 1, 2, 8: 5 empty places for 4 slices refused
    write_dicom_series(tmp_path / "filled", truth_hu()[:4], z_jitter={3: 4 * SPACING[0]})
    vol = read_volume(tmp_path / "filled")
    assert vol.hu.shape[0] == 8 and vol.spacing == pytest.approx(SPACING)
    write_dicom_series(tmp_path / "stray", truth_hu()[:4], z_jitter={3: 5 * SPACING[0]})
    with pytest.raises(CovsegError, match="its 4 slices span 9 places"):
        read_volume(tmp_path / "stray")


def test_a_sagittal_nifti_slice_shows_head_up_and_anterior_on_the_left():
    from covseg.volumes import nifti_slice_to_view, view_to_nifti_slice

    view = np.arange(4 * 6, dtype=np.float32).reshape(4, 6)  # rows superior -> inferior, columns anterior -> posterior
    # i -> anterior (RAS +y), j -> superior (+z), the normal along x
    sagittal = np.array([[0, 0, 2.5, 0], [0.8, 0, 0, 0], [0, 0.7, 0, 0], [0, 0, 0, 1]], float)
    data = view.T[::-1, ::-1]  # data[i, j] = view[rows from the top (superior), columns from anterior]
    np.testing.assert_array_equal(nifti_slice_to_view(data, sagittal), view)
    np.testing.assert_array_equal(view_to_nifti_slice(view, sagittal), data)


def test_an_image_stack_keeps_each_slice_as_shown_and_columns_run_to_the_patient_s_left(tmp_path):
    plane = np.zeros((20, 30), np.uint8)
    plane[:4, :6] = 200  # a mark at the top left of the image: anterior, patient right
    for k in range(3):
        Image.fromarray(plane).save(tmp_path / f"{k}.png")
    vol = read_volume(tmp_path, spacing=(3.0, 0.5, 0.6))
    for k in range(3):
        np.testing.assert_allclose(vol.hu[k], plane / 255, atol=1e-6)
    # canonical voxel index (z, y, x) -> RAS: x runs to the patient's left (-R), y to posterior (-A), z up (+S)
    np.testing.assert_allclose(vol.affine[:3, :3], [[0, 0, -0.6], [0, -0.5, 0], [3.0, 0, 0]], atol=1e-9)
    np.testing.assert_array_equal(to_input_geometry(vol.hu, vol)[:, :, 0], plane.T / np.float32(255))


@pytest.mark.parametrize("degrees, warned", [(0.3, False), (1.0, True)])
def test_a_gantry_tilt_over_half_a_degree_is_warned(tmp_path, degrees, warned):
    lean = SPACING[0] * np.tan(np.radians(degrees))  # each slice shifted along y by this much per step
    write_dicom_series(tmp_path, truth_hu()[:4], shift={k: (0.0, k * lean, 0.0) for k in range(4)})
    vol = read_volume(tmp_path)
    assert any(f"gantry tilt of {degrees:.1f} degrees" in w for w in vol.warnings) is warned


def test_a_spacing_given_for_a_nifti_other_than_its_own_is_ignored_with_a_warning(pair):
    root, _, _, _ = pair
    vol = read_volume(root / "ct.nii.gz", spacing=(1.0, 1.0, 1.0))
    assert vol.spacing == pytest.approx(SPACING)
    assert any("--spacing (1.0, 1.0, 1.0) ignored" in w for w in vol.warnings)
    assert not any("--spacing" in w for w in read_volume(root / "ct.nii.gz", spacing=SPACING).warnings)


@pytest.mark.parametrize(("units", "to_file"), [("meter", 1e-3), ("micron", 1e3)])
def test_the_input_affine_of_a_nifti_in_metres_or_micrometres_is_its_own_in_its_units(pair, tmp_path, units, to_file):
    _, hu, _, nii = pair
    mm = write_nifti(tmp_path / "mm.nii.gz", hu)
    scaled = np.diag([to_file, to_file, to_file, 1.0]) @ mm
    img = nib.Nifti1Image(np.zeros((X, Y, Z), np.int16) - 1000, scaled)
    img.header.set_xyzt_units(units)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    vol = read_volume(tmp_path / "ct.nii.gz")
    assert vol.xyz_units == units
    np.testing.assert_allclose(vol.input_affine, scaled, atol=1e-9)  # in the file's units, as xyz_units says
    np.testing.assert_allclose(vol.affine, nii.affine, atol=1e-6)  # the canonical one always in mm


def _retag(folder: Path, z: float | None, **tags) -> None:
    """Set DICOM ``tags`` in the file of ``folder`` at ImagePositionPatient z ``z`` mm (every file when None)."""
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        if z is None or abs(float(ds.ImagePositionPatient[2]) - z) < 1e-6:
            for key, value in tags.items():
                setattr(ds, key, value)
            ds.save_as(f)


def _untag(folder: Path, *keywords: str) -> None:
    """Remove the DICOM tags ``keywords`` from every file of ``folder``."""
    import pydicom

    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        for keyword in keywords:
            delattr(ds, keyword)
        ds.save_as(f)


def test_a_pixel_spacing_of_three_values_is_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:3])
    _retag(tmp_path, None, PixelSpacing=[0.7, 0.8, 0.9])
    with pytest.raises(CovsegError, match="PixelSpacing is missing or invalid"):
        read_volume(tmp_path)


def test_a_series_without_slice_positions_is_refused_with_the_way_out(tmp_path):
    """A series whose slices lack ImagePositionPatient has no volume; the refusal says what can still be done."""
    write_dicom_series(tmp_path, truth_hu()[:3])
    _untag(tmp_path, "ImagePositionPatient")
    with pytest.raises(CovsegError, match=r"DICOM ImagePositionPatient is missing or invalid; the slice geometry is "
                                          r"unknown; give its slices as \.dcm files to predict them as 2-D slices "
                                          r"\(no volumes in mL\), or re-export the series with its geometry tags$"):
        read_volume(tmp_path)


def test_a_slice_of_another_pixel_spacing_is_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:3])
    _retag(tmp_path, ORIGIN_LPS[2] + SPACING[0], PixelSpacing=[0.7, 0.81])
    with pytest.raises(CovsegError, match=r"PixelSpacing \[0.7, 0.81\] differs from"):
        read_volume(tmp_path)


def test_a_two_frame_dicom_is_refused(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:3])
    _retag(tmp_path, ORIGIN_LPS[2], NumberOfFrames=2)
    with pytest.raises(CovsegError, match=r"multi-frame DICOM \(2 frames\)"):
        read_volume(tmp_path)


def test_a_slice_whose_orientation_differs_by_more_than_a_thousandth_is_another_stack(tmp_path):
    write_dicom_series(tmp_path, truth_hu()[:4])
    _retag(tmp_path, ORIGIN_LPS[2] + 3 * SPACING[0], ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, -1.0, 0.005])
    vol = read_volume(tmp_path)
    assert vol.hu.shape[0] == 3 and np.array_equal(vol.hu, truth_hu()[:3])
    assert any("1 images of another size or orientation" in w for w in vol.warnings)


def test_of_two_axial_stacks_equally_large_the_first_named_is_read_and_the_warning_says_why(tmp_path):
    hu = truth_hu()[:4]
    uid = write_dicom_series(tmp_path, hu)
    small = np.rint((hu[:, :20, :20] + 1024.0) / 2.0).astype(np.uint16)
    for k in range(4):  # as many axial images of another size, named to sort first
        _ct_slice(small[k], ORIGIN_LPS + [0.0, 0.0, 2.5 * k], [1, 0, 0, 0, 1, 0], uid).save_as(
            tmp_path / f"A_small_{k}", enforce_file_format=True)
    vol = read_volume(tmp_path)
    assert vol.hu.shape == (4, 20, 20)
    assert "read the one whose file name sorts first (with A_small_0)" in vol.warnings[0]
