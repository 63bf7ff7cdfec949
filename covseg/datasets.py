"""Reading CT slices and label masks from the data layouts covseg accepts.

Shape and label conventions (see :mod:`covseg.labels`):

* images are ``(H, W)`` float32 in ``[0, 1]`` (8-bit files / 255, 16-bit PNG-style files / 65535,
  Hounsfield-unit data through the lung window of :func:`covseg.intensity.window_hu`);
* masks are ``(H, W)`` int64 label maps in the task's scheme: ``binary`` {0 background, 1 infection},
  ``multiclass`` {0 background, 1 GGO, 2 consolidation, 3 pleural effusion}.

Orientation: rows are the first array axis. PIL and DICOM pixel arrays are already ``(rows, cols)``.
nibabel arrays are ``(x, y[, z])``; a single-slice NIfTI is turned by its affine into the view
:func:`covseg.volumes.read_volume` gives a scan's slices (:func:`covseg.volumes.nifti_slice_to_view`: anterior up,
the patient's right on the viewer's left; ``(rows=y, cols=x)``, a transpose, for one stored radiologically), for
images and masks alike, so they always stay aligned. The MedSeg NIfTI volumes' slices are turned by the image's affine
the same way (``(rows=y, cols=x)``, a transpose, for their radiological affine); a DICOM slice by its
ImageOrientationPatient as in a series. Kaggle ``.npy`` arrays are already ``(N, rows, cols, C)``.

Hounsfield-unit rule: DICOM slices of ``Modality`` CT are HU after ``RescaleSlope``/``RescaleIntercept`` (without
``RescaleIntercept`` only if their values reach below -100; otherwise refused); a slice of another Modality is
refused; a slice without Modality is HU when its rescaled values reach below -100, else stored grey values (/ the
largest value ``BitsStored`` holds, ``2**BitsStored - 1``, clipped to ``[0, 1]``, inverted when ``MONOCHROME1``). An
empty ``RescaleIntercept`` counts as missing. NIfTI data and signed or float TIFF data are taken
as HU when their minimum is below ``HU_MIN_THRESHOLD`` (-100): any CT slice with air in it reaches about -1000,
while 8-bit, 16-bit, ``[0, 1]`` or z-scored data never go that low. Other data go through
:func:`covseg.intensity.to_unit_range`. Kaggle MedSeg arrays are always HU.

File order: numeric stems sort as numbers (``0, 1, 2, ..., 10``); other stems in natural order
(runs of digits compared as numbers, the rest case-insensitively).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covseg.errors import CovsegError
from covseg.dicom import (ZERO_SLOPE_WARNING, check_ct_modality, dicom_modality, dicom_number, dicom_pixels,
                          dicom_slice_affine, has_dicom_value, load_dicom, rescale_slope)
from covseg.intensity import (HU_MIN_THRESHOLD, LUNG_WINDOW, fill_non_finite, raw_ct_warning, scale_stored_grey,
                              to_unit_range, window_hu)
from covseg.labels import MULTICLASS, LabelScheme, check_labels, get_scheme
from covseg.wording import counted

__all__ = [
    "Sample",
    "dicom_view_to_stored",
    "IMAGE_SUFFIXES",
    "PIL_SUFFIXES",
    "NIFTI_SUFFIXES",
    "DICOM_SUFFIXES",
    "SPLITS",
    "read_image",
    "read_mask",
    "list_images",
    "load_covid_semiseg",
    "load_medseg_nifti",
    "load_medseg_npy",
    "load_folder_pairs",
    "load_dataset",
    "lesion_only_masks",
    "refuse_lesion_only_masks",
    "lesion_only_caveat",
]

PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
LOSSY_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg")  # fine for images, refused for masks
NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm",)
IMAGE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + NIFTI_SUFFIXES + DICOM_SUFFIXES
"""File name endings (lower case) that :func:`read_image` and :func:`read_mask` accept."""

SPLITS: tuple[str, ...] = ("train", "test", "unlabelled")

_SEMISEG_DIRS: dict[tuple[str, str], str] = {
    ("train", "binary"): "TrainingSet/LungInfection-Train/Doctor-label",
    ("train", "multiclass"): "TrainingSet/MultiClassInfection-Train",
    ("test", "binary"): "TestingSet/LungInfection-Test",
    ("test", "multiclass"): "TestingSet/MultiClassInfection-Test",
}
_SEMISEG_UNLABELLED = "TrainingSet/LungInfection-Train/Pseudo-label/Imgs"

_MEDSEG_NIFTI = ("tr_im.nii.gz", "tr_mask.nii.gz")
_MEDSEG_UNLABELLED = "val_im.nii.gz"
_MEDSEG_NPY = ("images_medseg.npy", "masks_medseg.npy")
_NPY_CHANNEL_LABELS = np.array([1, 2, 0, 0], dtype=np.int64)
"""Kaggle one-hot channels (GGO, consolidation, other lung, background) -> multiclass labels."""

_IMAGE_DIR_NAMES = ("images", "imgs")
_MASK_DIR_NAMES = ("masks", "gt", "labels")

_LAYOUTS = (
    "COVID-SemiSeg (a folder holding Dataset/TrainingSet), "
    "MedSeg NIfTI (tr_im.nii.gz + tr_mask.nii.gz), "
    "MedSeg Kaggle arrays (images_medseg.npy + masks_medseg.npy), "
    "or image/mask folders (images/ or imgs/ beside masks/, GT/ or labels/, files matched by name)"
)


@dataclass
class Sample:
    """One 2-D slice. image: (H, W) float32 in [0, 1]; mask: (H, W) int64 label map in the task's scheme, or None."""

    name: str
    """Unique id within a data set, e.g. the file stem ``"12"`` or ``"tr_im_007"``."""
    image: np.ndarray
    mask: np.ndarray | None
    source: str
    """Path of the image file (for messages)."""


# --------------------------------------------------------------------------------------------
# file names


def _suffix(path: Path) -> str:
    """The lower-case format suffix of ``path`` (``.nii.gz`` counts as one suffix)."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _stem(path: Path) -> str:
    """``path``'s name without its format suffix (``a.nii.gz`` -> ``a``)."""
    return path.name[: len(path.name) - len(_suffix(path))]


def _sort_key(stem: str) -> tuple[list[str | int], str]:
    parts: list[str | int] = [
        int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", stem))
    ]
    return parts, stem


def _sorted_paths(paths: Iterable[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: _sort_key(_stem(p)))


def _supported_files(folder: Path) -> list[Path]:
    """Supported image files directly in ``folder`` (hidden files skipped), in stem order. A symbolic link of a
    supported name that leads nowhere (its target gone, or a loop) is refused in one line, not skipped: the image
    it stood for would be left out without a word."""
    files = []
    for p in folder.iterdir():
        if p.name.startswith(".") or _suffix(p) not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            files.append(p)
        elif p.is_symlink() and not p.exists():
            raise CovsegError(f"{p}: is a symbolic link that leads nowhere (its target is gone, or it leads back to "
                              "itself); fix the link or remove it")
    return _sorted_paths(files)


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in _supported_files(folder):
        stem = _stem(path)
        if stem in files:
            raise CovsegError(
                f"{path}: {what} {files[stem].name} has the same name; keep one file per name in {folder}"
            )
        files[stem] = path
    return files


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CovsegError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise CovsegError(f"{path}: is not a file; give the path of an image file")


def _require_supported(path: Path) -> None:
    if _suffix(path) not in IMAGE_SUFFIXES:
        raise CovsegError(
            f"{path}: unsupported file type {_suffix(path) or '(none)'!r}; "
            f"use one of {', '.join(IMAGE_SUFFIXES)}"
        )


# --------------------------------------------------------------------------------------------
# raw readers: each returns a 2-D array as stored (no scaling) plus whether it is Hounsfield units


_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA")
"""PIL modes an image may hold colour in (checked before it is converted to grey)."""

_WARNED: set[str] = set()
"""Kinds of :func:`read_image` warning already printed by this process: each is printed once (one line on stderr),
so a folder of thousands of such slices gives one line, naming the first."""


def _warn_once(kind: str, message: str) -> None:
    from covseg.progress import print_beside_bars

    if kind not in _WARNED:
        _WARNED.add(kind)
        print_beside_bars(f"covseg: warning: {message}")  # a folder's slices are read while predict's bar runs


def _read_pil(path: Path, for_mask: bool) -> tuple[np.ndarray, str]:
    """Return the pixel array and the PIL mode. Images come back grey; masks keep raw values."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise CovsegError(
                    f"{path}: holds {im.n_frames} pages; save one slice per file"
                )
            im.load()
            mode = im.mode
            if for_mask:
                if mode in ("RGB", "RGBA"):
                    rgb = np.asarray(im.convert("RGB"))
                    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                        raise CovsegError(
                            f"{path}: is a colour mask; save it as a palette or greyscale PNG "
                            "whose pixel values are the class ids"
                        )
                    return np.array(rgb[..., 0]), "L"
                if mode == "LA":
                    return np.array(im.getchannel("L")), "L"
                if mode == "PA":
                    return np.array(im.getchannel("P")), "P"
                if mode == "1":
                    return np.array(im, dtype=np.uint8), "L"
                if mode not in ("L", "P", "F") and not mode.startswith("I"):
                    raise CovsegError(
                        f"{path}: mask has PIL mode {mode}; save it as a palette or greyscale PNG "
                        "whose pixel values are the class ids"
                    )
                return np.array(im), mode
            if mode not in ("L", "F") and not mode.startswith("I"):
                if mode in _COLOUR_MODES:
                    rgb = np.asarray(im.convert("RGB"))
                    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                        _warn_once("colour", f"{path}: is a colour image (its red, green and blue differ), converted "
                                   "to grey by luminance; a CT slice is grey, so predictions may be poor: give "
                                   "greyscale slices")
                im = im.convert("L")
                mode = "L"
            return np.array(im), mode
    except CovsegError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise CovsegError(f"{path}: cannot be read as an image ({exc}); replace the file") from None


_NUMBER_KINDS = "iufb"
"""numpy dtype kinds of grey levels and class ids (signed, unsigned, float, bool); others (complex, strings, colour
records, objects) are refused."""


def _check_numbers(dtype: np.dtype, path: Path, what: str) -> None:
    if dtype.names is not None or dtype.kind not in _NUMBER_KINDS:
        raise CovsegError(f"{path}: {what} holds {dtype} values (colour, complex or text), not grey levels or class "
                          "ids; save real numbers (integers or floats)")


def _nifti_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole NIfTI array (scaled by scl_slope/scl_inter when set), as float32, and its affine (voxel -> world)."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        dtype = img.get_data_dtype()
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise CovsegError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); replace the file") from None
    _check_numbers(dtype, path, "NIfTI")
    try:
        return np.asarray(img.get_fdata(dtype=np.float32)), np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # truncated data, bad compression
        raise CovsegError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); replace the file") from None


def _squeeze_trailing(data: np.ndarray, keep: int) -> np.ndarray:
    while data.ndim > keep and data.shape[-1] == 1:
        data = data[..., 0]
    return data


def _read_nifti_slice(path: Path) -> np.ndarray:
    """A single-slice NIfTI as ``(rows, cols)`` float32, turned by its affine as a scan's slices are
    (:func:`covseg.volumes.nifti_slice_to_view`)."""
    from covseg.volumes import nifti_slice_to_view

    data, affine = _nifti_data(path)
    data = _squeeze_trailing(data, 2)
    if data.ndim != 2:
        raise CovsegError(
            f"{path}: is a volume of shape {tuple(data.shape)}, not one slice; "
            "load volumes with the MedSeg NIfTI layout (tr_im.nii.gz + tr_mask.nii.gz) or save one slice per file"
        )
    return nifti_slice_to_view(data, affine)


def _dicom_file(path: Path):  # -> pydicom Dataset
    """A ``.dcm`` slice or mask as the scan reader reads DICOM files (without the 128-byte preamble too)."""
    return load_dicom(path, "replace the file")


def _dicom_pixels(ds: object, path: Path, what: str) -> np.ndarray:
    pixels = dicom_pixels(ds, path)
    if pixels.ndim != 2:
        raise CovsegError(
            f"{path}: DICOM {what} has shape {tuple(pixels.shape)}, not one greyscale slice; "
            "export one greyscale slice per file"
        )
    return pixels


def _dicom_grey(ds: object, pixels: np.ndarray, path: Path) -> np.ndarray:
    """Stored DICOM grey values -> float32 ``[0, 1]``: divided by the largest value ``BitsStored`` holds
    (``2**BitsStored - 1``; ``BitsAllocated`` when BitsStored is missing, else the pixel type's bits), clipped; dark on
    bright (``MONOCHROME1``) inverted, so that dense tissue is bright as in every other slice."""

    bits = int(dicom_number(ds, "BitsStored", 0, path)) or int(dicom_number(ds, "BitsAllocated", 0, path))
    if not 1 <= bits <= 32:
        bits = 8 * pixels.dtype.itemsize
    grey = fill_non_finite(pixels.astype(np.float64), str(path))[0] / float(2**bits - 1)
    grey = np.clip(grey, 0.0, 1.0)
    if str(getattr(ds, "PhotometricInterpretation", "") or "").upper() == "MONOCHROME1":
        grey = 1.0 - grey
    return grey.astype(np.float32)


def _dicom_view(ds: object, data: np.ndarray, path: Path) -> np.ndarray:
    """A DICOM slice's ``(rows, cols)`` array turned by its ImageOrientationPatient into the view
    :func:`covseg.volumes.read_volume` gives the same slice in a series (unchanged for IOP ``1\\0\\0\\0\\1\\0`` or
    without the tag)."""
    from covseg.volumes import nifti_slice_to_view

    affine = dicom_slice_affine(ds, path)
    return data if affine is None else nifti_slice_to_view(data.T, affine)


def dicom_view_to_stored(view: np.ndarray, path: Path) -> np.ndarray:
    """Inverse of :func:`_dicom_view` for the DICOM slice at ``path``: a ``(rows, cols)`` array of its view (a label
    map predicted on :func:`read_image`'s output) -> the file's own pixel order and shape (``pixel_array``'s), so
    that it overlays the stored slice (a prone slice's view is turned 180 degrees, a transposed one's is W x H).
    Unchanged without ImageOrientationPatient; read from the header alone."""
    from covseg.volumes import view_to_nifti_slice

    affine = dicom_slice_affine(load_dicom(path, "replace the file", header_only=True), path)
    return np.asarray(view) if affine is None else np.ascontiguousarray(view_to_nifti_slice(view, affine).T)


def _read_dicom(path: Path) -> tuple[np.ndarray, bool]:
    """A single-frame DICOM as ``(rows, cols)`` float32, turned by its ImageOrientationPatient as
    :func:`covseg.volumes.read_volume` shows it (:func:`_dicom_view`), and whether it is HU: HU after rescale, else grey
    values already in ``[0, 1]`` (:func:`_dicom_grey`). See the module's Hounsfield-unit rule."""

    ds = _dicom_file(path)
    check_ct_modality(ds, path, "a CT slice")
    pixels = _dicom_view(ds, _dicom_pixels(ds, path, "pixel data"), path)
    slope, zero = rescale_slope(ds, path)
    if zero:
        _warn_once("zero-slope", f"{path}: {ZERO_SLOPE_WARNING}")
    intercept = dicom_number(ds, "RescaleIntercept", 0, path)
    data = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    finite = fill_non_finite(data, str(path))[0]  # NaN pixels (float pixel data) do not hide the air
    if dicom_modality(ds) == "CT":
        if not has_dicom_value(ds, "RescaleIntercept") and not _looks_like_hu(finite):  # an empty tag is none
            # unsigned CT values with a missing -1024 intercept would be windowed 1024 HU too bright
            raise CovsegError(
                f"{path}: CT slice has no RescaleIntercept and its values (min {float(finite.min()):g}) are not "
                "Hounsfield units; give the original CT slice (with rescale tags)"
            )
        return data, True
    # no Modality: air below -100 tells HU (as for NIfTI and TIFF slices); a secondary capture's 0..255 (whatever its
    # identity rescale tags) is display grey
    if _looks_like_hu(finite):
        return data, True
    return _dicom_grey(ds, pixels, path), False


def _looks_like_hu(data: np.ndarray) -> bool:
    return bool(data.size) and float(np.min(data)) < HU_MIN_THRESHOLD


# --------------------------------------------------------------------------------------------
# public readers


def read_image(path: str | Path, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Read one CT slice as ``(H, W)`` float32 in ``[0, 1]``.

    * PNG / JPG / JPEG / TIF / TIFF: colour is converted to grey (PIL ``"L"``); 8-bit / 255;
      16-bit unsigned / 65535; signed or float data by the HU rule, else min-max via
      :func:`covseg.intensity.to_unit_range`. A colour image whose channels differ, and a 16-bit image that looks like
      raw 12-bit CT numbers (:func:`covseg.intensity.raw_ct_warning`), are read all the same, with a one-line
      ``covseg: warning:`` on stderr (each kind once per process).
    * NIfTI ``.nii`` / ``.nii.gz`` holding one slice (``(x, y)`` or ``(x, y, 1)``): turned by its affine into
      the view :func:`covseg.volumes.read_volume` gives a scan's slices (anterior up, patient right on the viewer's
      left; ``(rows=y, cols=x)`` for a radiologically stored slice); HU (minimum below :data:`HU_MIN_THRESHOLD`) through
      the lung window. Complex or colour voxels are refused.
    * DICOM ``.dcm`` (with or without the 128-byte preamble): ``RescaleSlope`` / ``RescaleIntercept`` applied; CT data
      through the lung window; a Modality other than CT refused; a slice without Modality whose values do not reach
      below -100 read as grey values (see the module's Hounsfield-unit rule).

    NaN/infinite pixels (float TIFF, NIfTI, DICOM) are set to the slice's finite minimum, as a scan's voxels are.
    Raises :class:`CovsegError` naming the file when it is missing, unsupported, unreadable or holds no finite value.
    """
    path = Path(path)
    _require_file(path)
    _require_supported(path)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        data = fill_non_finite(_read_nifti_slice(path), str(path))[0]
        return to_unit_range(data, is_hu=_looks_like_hu(data), window=window)
    if suffix in DICOM_SUFFIXES:
        data, is_hu = _read_dicom(path)
        if not is_hu:
            return data
        return to_unit_range(fill_non_finite(data, str(path))[0], is_hu=True, window=window)
    data, mode = _read_pil(path, for_mask=False)
    sixteen_bit = mode == "I" and suffix == ".png"
    grey = scale_stored_grey(data, sixteen_bit=sixteen_bit)
    if grey is not None:
        raw = raw_ct_warning(data, str(path), sixteen_bit)
        if raw is not None:
            _warn_once("raw-ct", raw)
        return grey
    data = fill_non_finite(data.astype(np.float32), str(path))[0]  # float TIFFs may hold NaN
    return to_unit_range(data, is_hu=_looks_like_hu(data), window=window)


def _integer_labels(data: np.ndarray, source: str) -> np.ndarray:
    """Cast a mask array to int64, refusing non-integer values (e.g. interpolated float masks)."""
    if data.dtype.kind in "iub":
        return data.astype(np.int64)
    if not np.all(np.isfinite(data)):
        raise CovsegError(f"{source}: mask holds NaN or infinite values; save class ids as integers")
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise CovsegError(
            f"{source}: mask holds non-integer values; save class ids as integers "
            "(resample masks with nearest-neighbour)"
        )
    return rounded.astype(np.int64)


def _to_scheme(labels: np.ndarray, scheme: LabelScheme, source: str) -> np.ndarray:
    """Map raw integer mask values to ``scheme``.

    0/255 masks become 0/1 (for ``binary``; for ``multiclass`` they are refused, since 255 cannot say
    which lesion class is meant). For ``binary``, multiclass ids 1..3 collapse to 1.
    """
    values = np.unique(labels)
    if values.size and set(values.tolist()) <= {0, 255} and 255 in values:
        if scheme.task != "binary":
            raise CovsegError(
                f"{source}: mask holds only 0/255, a binary mask, but the task is {scheme.task}; "
                "train or evaluate a binary model on it (--task binary; a multiclass model cannot be scored on "
                "binary masks), or give masks whose values are the class ids 0..3"
            )
        return (labels == 255).astype(np.int64)
    _refuse_ids_scaled_for_display([int(v) for v in values], source)
    if scheme.task == "binary":
        bad = [int(v) for v in values if v < 0 or v >= MULTICLASS.num_classes]
        if bad:
            raise CovsegError(
                f"{source}: label values {bad[:10]} are neither binary (0/1, 0/255) nor multiclass "
                f"(0..{MULTICLASS.num_classes - 1}) ids; fix the mask"
            )
        return (labels > 0).astype(np.int64)
    check_labels(labels, scheme, source)
    return labels.astype(np.int64, copy=False)


_DISPLAY_STEP_MIN = 50
"""The smallest step between class ids that a mask saved for display is taken to have (0/85/170/255 for ids 0..3,
0/127/254 for 0..2); a stray value such as 5 is a wrong label, not a scaled one."""


def _refuse_ids_scaled_for_display(values: list[int], source: str) -> None:
    """Refuse a mask whose values are class ids multiplied for display: every value a multiple of one step of at
    least :data:`_DISPLAY_STEP_MIN` (their greatest common divisor), the largest at most 3 steps, so that dividing
    gives ids 0..3 (0/85/170/255; a 0/255 mask is binary and read before this). Two values or more fix the factor
    (two ids of 1..3 have no common divisor) and it is named; one value alone does not (170 is id 2 times 85, as a
    0/85/170/255 mask holding consolidation only has it, or id 1 times 170), and each reading is named."""
    nonzero = [v for v in values if v != 0]
    if not nonzero or min(nonzero) < 0:
        return
    step = math.gcd(*nonzero)
    if step < _DISPLAY_STEP_MIN or max(nonzero) // step > MULTICLASS.num_classes - 1:
        return
    if len(set(nonzero)) > 1:
        ids = sorted({v // step for v in nonzero})
        raise CovsegError(
            f"{source}: mask values {nonzero[:10]} look like the class ids {ids} multiplied by {step}, as a mask saved "
            f"for viewing; save the class ids themselves (each value divided by {step}) as the pixel values"
        )
    readings = [f"id {k} times {step // k}" for k in range(1, MULTICLASS.num_classes)
                if step % k == 0 and step // k >= _DISPLAY_STEP_MIN]
    raise CovsegError(
        f"{source}: mask value {step} looks like a class id multiplied for viewing, which one this mask alone cannot "
        f"tell ({' or '.join(readings)}); save the class ids themselves as the pixel values, each value divided by "
        "the factor the masks were saved with"
    )


def read_mask(path: str | Path, scheme: LabelScheme) -> np.ndarray:
    """Read one label mask as an ``(H, W)`` int64 map in ``scheme``.

    Pixel values are class ids: palette PNGs (mode ``"P"``) give their raw indices, greyscale
    files their grey values. A mask holding only 0 and 255 is binary: 255 -> 1. For ``binary``,
    every multiclass id 1..3 becomes 1. Values outside the scheme, and JPEG masks (lossy: ids change along edges),
    raise :class:`CovsegError`.
    NIfTI masks are turned by their affine like :func:`read_image`'s NIfTI slices; DICOM masks use the
    stored values (no rescale), turned by their ImageOrientationPatient like :func:`read_image`'s DICOM slices.
    """
    path = Path(path)
    _require_file(path)
    _require_supported(path)
    suffix = _suffix(path)
    source = str(path)
    if suffix in LOSSY_SUFFIXES:
        raise CovsegError(f"{path}: a mask must be stored losslessly (JPEG compression changes class ids along lesion "
                          "edges); save it as PNG (or TIFF, NIfTI, DICOM)")
    if suffix in NIFTI_SUFFIXES:
        data = _read_nifti_slice(path)
    elif suffix in DICOM_SUFFIXES:
        ds = _dicom_file(path)
        data = _dicom_view(ds, _dicom_pixels(ds, path, "mask"), path)
    else:
        data, _ = _read_pil(path, for_mask=True)
    labels = _integer_labels(np.asarray(data), source)
    return _to_scheme(labels, scheme, source)


def list_images(path: str | Path) -> list[Path]:
    """The image files to predict on: ``path`` itself, or the supported files directly in folder ``path``.

    Folder contents are sorted by stem (numbers numerically); hidden and unsupported files are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise CovsegError(f"{path}: not found; give an image file or a folder of images")
    if path.is_dir():
        files = _supported_files(path)
        if not files:
            raise CovsegError(f"no images found in {path} (supported: {', '.join(IMAGE_SUFFIXES)}); check the path")
        return files
    _require_supported(path)
    return [path]


# --------------------------------------------------------------------------------------------
# layouts


def _check_same_size(image: np.ndarray, mask: np.ndarray, mask_source: str) -> None:
    if image.shape != mask.shape:
        raise CovsegError(
            f"{mask_source}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image is "
            f"{image.shape[0]}x{image.shape[1]}; give masks the size of their images"
        )


def _pairs(images_dir: Path, masks_dir: Path, scheme: LabelScheme, window: tuple[float, float] = LUNG_WINDOW) -> list[Sample]:
    images = _by_stem(images_dir, "image")
    masks = _by_stem(masks_dir, "mask")
    if not images:
        _refuse_no_supported_images(images_dir)
    if images and masks and not images.keys() & masks.keys():
        image, mask = next(iter(images.values())), next(iter(masks.values()))
        raise CovsegError(
            f"{masks_dir}: no mask has the name of an image in {images_dir} (first image {image.name}, first mask "
            f"{mask.name}); name each mask as its image, in any supported format "
            f"({masks_dir.name}/{_stem(image)}.png for {images_dir.name}/{image.name})"
        )
    for stem, mask_path in masks.items():
        if stem not in images:
            raise CovsegError(
                f"{mask_path}: mask without an image (no {stem}.* in {images_dir}); add the image or remove the mask"
            )
    samples: list[Sample] = []
    for stem, image_path in images.items():
        if stem not in masks:
            _refuse_unsupported(masks_dir, stem)  # masks/a.bmp is there, of a type not read
            raise CovsegError(
                f"{image_path}: image without a mask (no {stem}.* in {masks_dir}); add the mask or remove the image"
            )
        image = read_image(image_path, window)
        mask = read_mask(masks[stem], scheme)
        image, mask = _turned_alike(image, image_path, mask, masks[stem])
        _check_same_size(image, mask, str(masks[stem]))
        samples.append(Sample(stem, image, mask, str(image_path)))
    return samples


def _unsupported_files(folder: Path) -> list[Path]:
    """The visible files in ``folder`` of a type no reader takes (``.bmp``, ``.txt``), in stem order."""
    return _sorted_paths(p for p in folder.iterdir()
                         if not p.name.startswith(".") and p.is_file() and _suffix(p) not in IMAGE_SUFFIXES)


def _refuse_unsupported(folder: Path, stem: str) -> None:
    """Refuse (:func:`_require_supported`) a file of the name ``stem`` in ``folder`` of a type no reader takes, so
    that a mask saved as ``a.bmp`` is named, not reported missing."""
    for path in _unsupported_files(folder):
        if _stem(path) == stem:
            _require_supported(path)


def _first_of(paths: list[Path]) -> str:
    """The first of ``paths`` by name, ``...`` standing for the others where there are any: ``a.png, ...``."""
    return paths[0].name + (", ..." if len(paths) > 1 else "")


def _refuse_no_supported_images(folder: Path) -> None:
    """An images folder without one supported file: where it holds files of other types, say so in one line (an
    empty folder is told by :func:`_nonempty`)."""
    others = _unsupported_files(folder)
    if others:
        raise CovsegError(f"no images found in {folder}: it holds {counted(len(others), 'file')} of other types "
                          f"({_first_of(others)}); save the slices as one of {', '.join(IMAGE_SUFFIXES)}")


def _slice_affine(path: Path) -> np.ndarray | None:
    """A NIfTI slice file's affine (voxel -> world), or a DICOM slice's from its ImageOrientationPatient
    (:func:`covseg.dicom.dicom_slice_affine`, for its ``pixel_array.T``), else None; read from its header alone (the
    caller has read the whole file already)."""
    import nibabel as nib

    if _suffix(path) in DICOM_SUFFIXES:
        return dicom_slice_affine(load_dicom(path, "replace the file", header_only=True), path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        return None
    return np.asarray(nib.load(str(path)).affine, dtype=np.float64)


def _turned_alike(image: np.ndarray, image_path: Path, mask: np.ndarray, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask in one view. A NIfTI slice is turned by its affine (:func:`_read_nifti_slice`), a DICOM
    slice by its ImageOrientationPatient (:func:`_dicom_view`); its partner in a format without orientation is taken
    as stored in the same voxel order (a NIfTI's transposed, rows = y; a DICOM's pixel array) and turned alike. Two
    slices whose affines turn them differently are refused."""
    from covseg.volumes import _slice_ornts, nifti_slice_to_view

    image_affine, mask_affine = _slice_affine(image_path), _slice_affine(mask_path)
    if image_affine is not None and mask_affine is None:
        return image, nifti_slice_to_view(mask.T, image_affine)
    if image_affine is None and mask_affine is not None:
        return nifti_slice_to_view(image.T, mask_affine), mask
    if image_affine is not None:
        a, b = _slice_ornts(image_affine), _slice_ornts(mask_affine)
        if (a is None) != (b is None) or (a is not None and not np.array_equal(a[0], b[0])):
            raise CovsegError(f"{mask_path}: its affine orders the slice's voxels differently from its image's "
                              f"({image_path.name}); save the mask with the image's affine")
    return image, mask


def _nonempty(samples: list[Sample], where: Path) -> list[Sample]:
    if not samples:
        raise CovsegError(f"no images found in {where}; check the data path")
    return samples


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise CovsegError(f"{path}: {what} folder not found; check the data path")


def _semiseg_dataset_dir(root: Path) -> Path | None:
    """The ``Dataset`` folder of a COVID-SemiSeg tree given its parent or itself, else None."""
    for candidate in (root / "Dataset", root):
        if (candidate / "TrainingSet").is_dir() or (candidate / "TestingSet").is_dir():
            return candidate
    return None


def load_covid_semiseg(root: str | Path, task: str, split: str = "train", window: tuple[float, float] = LUNG_WINDOW) -> list[Sample]:
    """Load COVID-SemiSeg (Inf-Net) slices; ``root`` is the folder holding ``Dataset/`` (or ``Dataset`` itself).

    ``split``: ``train`` (50 slices), ``test`` (48, when present) or ``unlabelled`` (1600 pseudo-label
    slices, ``mask`` None). Binary masks are 0/255 PNGs -> {0, 1}; multiclass masks are palette PNGs
    {0 background, 1 GGO, 2 consolidation}. Images: 8-bit JPG -> ``(H, W)`` float32 in ``[0, 1]``.
    """
    root = Path(root)
    scheme = get_scheme(task)
    if split not in SPLITS:
        raise CovsegError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if not root.exists():
        raise CovsegError(f"{root}: data folder not found; check the path or run `covseg download`")
    dataset = _semiseg_dataset_dir(root)
    if dataset is None:
        raise CovsegError(
            f"{root}: not a COVID-SemiSeg folder (no Dataset/TrainingSet or Dataset/TestingSet); "
            "give the folder that holds Dataset/"
        )
    if split == "unlabelled":
        folder = dataset / _SEMISEG_UNLABELLED
        if not folder.is_dir():  # an http(s) mirror serves the manifest's files only, never these 1600 slices
            raise CovsegError(f"{folder}: unlabelled (Pseudo-label/Imgs) folder not found; they come with a download "
                              "from a folder mirror (covseg download --mirror DIR), not an http(s) one, or check "
                              "the data path")
        # one file per name: pseudo-labels are written and read back by the slice's name
        slices = _by_stem(folder, "unlabelled slice")
        if not slices:  # the folder is where it should be: say what it lacks, not "check the data path"
            _refuse_no_supported_images(folder)
            raise CovsegError(f"no images found in {folder}; it should hold the unlabelled slices (COVID-SemiSeg's "
                              "1600 Pseudo-label/Imgs JPEGs, which come with a download from a folder mirror: covseg "
                              f"download --mirror DIR), saved as one of {', '.join(IMAGE_SUFFIXES)}")
        return [Sample(stem, read_image(p, window), None, str(p)) for stem, p in slices.items()]
    folder = dataset / _SEMISEG_DIRS[(split, scheme.task)]
    if not folder.is_dir():
        if split == "test":
            raise CovsegError(
                f"{folder}: the test split is not in this data folder (it is held out here); "
                "run `covseg download --mirror URL` with a mirror that has it, or score a run's held-out fold instead "
                "(covseg evaluate RUN --split heldout; covseg train --split cv:K)"
            )
        raise CovsegError(f"{folder}: the {split} split is missing from this data folder; download the data again")
    images_dir, masks_dir = folder / "Imgs", folder / "GT"
    _require_dir(images_dir, "image (Imgs)")
    _require_dir(masks_dir, "mask (GT)")
    return _nonempty(_pairs(images_dir, masks_dir, scheme, window), images_dir)


def _volume(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as ``(x, y, z)`` float32 (a single slice counts as z = 1), and its affine (voxel -> world)."""
    _require_file(path)
    data, affine = _nifti_data(path)
    data = _squeeze_trailing(data, 3)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise CovsegError(f"{path}: {what} has shape {tuple(data.shape)}; expected (x, y, slices)")
    return data, affine


def _axcodes(affine: np.ndarray) -> tuple[str | None, ...] | None:
    """nibabel axis codes of ``affine`` (``("L", "P", "S")``...), None where it is not finite."""
    import nibabel as nib

    if not np.isfinite(affine).all():
        return None
    return tuple(nib.aff2axcodes(affine))


def _volume_images(image_path: Path, window: tuple[float, float] = LUNG_WINDOW
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """A MedSeg image volume ``(x, y, z)``, its affine and its slices' views in ``[0, 1]``, each turned as
    :func:`covseg.volumes.read_volume` shows an axial slice (:func:`covseg.volumes.nifti_slice_to_view`; ``data.T``
    for the radiological affine axes L, P)."""
    from covseg.volumes import nifti_slice_to_view

    volume, affine = _volume(image_path, "image volume")
    volume = fill_non_finite(volume, str(image_path))[0]
    is_hu = _looks_like_hu(volume)
    return volume, affine, [
        to_unit_range(nifti_slice_to_view(volume[:, :, z], affine), is_hu=is_hu, window=window)
        for z in range(volume.shape[2])
    ]


def load_medseg_nifti(
    image_path: str | Path, mask_path: str | Path | None, task: str, window: tuple[float, float] = LUNG_WINDOW
) -> list[Sample]:
    """Load the MedSeg volumes ``tr_im.nii.gz`` (HU, ``(512, 512, N)``) and ``tr_mask.nii.gz``.

    One sample per stored slice z, named ``"{stem}_{z:03d}"`` (``tr_im_000``...), each slice turned by the image's
    affine into the view :func:`covseg.volumes.read_volume` gives a scan's axial slices (anterior up, patient right on
    the viewer's left: :func:`covseg.volumes.nifti_slice_to_view`); for the MedSeg files' radiological affine (axes L,
    P, S) that is ``data[:, :, z].T``, ``(rows=y, cols=x)``. The mask takes the same view; a mask whose affine orders
    its voxels differently (other axis codes) is refused. Mask labels 0..3 (1 GGO, 2 consolidation, 3 pleural effusion)
    are kept for ``multiclass``; ``binary`` maps every lesion class to 1. ``mask_path`` None (e.g. ``val_im.nii.gz``)
    gives samples with ``mask`` None.
    """
    from covseg.volumes import nifti_slice_to_view

    image_path = Path(image_path)
    scheme = get_scheme(task)
    volume, affine, images = _volume_images(image_path, window)
    stem = _stem(image_path)
    if mask_path is None:
        return _nonempty([Sample(f"{stem}_{z:03d}", im, None, str(image_path)) for z, im in enumerate(images)], image_path)
    mask_path = Path(mask_path)
    masks, mask_affine = _volume(mask_path, "mask volume")
    if masks.shape != volume.shape:
        raise CovsegError(
            f"{mask_path}: mask volume has shape {tuple(masks.shape)} but {image_path.name} has "
            f"{tuple(volume.shape)}; give the mask volume of this image volume"
        )
    image_codes, mask_codes = _axcodes(affine), _axcodes(mask_affine)
    if image_codes != mask_codes:
        def show(codes: tuple[str | None, ...] | None) -> str:
            return "unknown" if codes is None else "".join(c or "?" for c in codes)

        raise CovsegError(
            f"{mask_path}: its affine orders the voxels {show(mask_codes)} but {image_path.name}'s orders them "
            f"{show(image_codes)}, so the mask would lie mirrored or turned on its image; save the mask with the "
            "image's affine (resample it onto the image)"
        )
    labels = _to_scheme(_integer_labels(masks, str(mask_path)), scheme, str(mask_path))
    return _nonempty(
        [
            Sample(f"{stem}_{z:03d}", im, nifti_slice_to_view(labels[:, :, z], affine), str(image_path))
            for z, im in enumerate(images)
        ],
        image_path,
    )


def _load_npy(path: Path) -> np.ndarray:
    _require_file(path)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # ValueError (pickled / bad header), OSError, EOFError
        raise CovsegError(f"{path}: cannot be read as a .npy array ({type(exc).__name__}: {exc}); replace the file") from None


def load_medseg_npy(images_path: str | Path, masks_path: str | Path, task: str, window: tuple[float, float] = LUNG_WINDOW) -> list[Sample]:
    """Load the Kaggle MedSeg arrays ``images_medseg.npy`` and ``masks_medseg.npy``.

    Images: ``(N, H, W, 1)`` (or ``(N, H, W)``) HU -> lung window. Masks: ``(N, H, W, 4)`` one-hot (values 0/1,
    exactly one channel set per pixel; else refused) with channels (GGO, consolidation, other lung, background)
    -> labels (1, 2, 0, 0); ``binary``
    maps both lesion classes to 1. Samples are named ``"{stem}_{i:03d}"`` (``images_medseg_000``...).
    """
    images_path, masks_path = Path(images_path), Path(masks_path)
    scheme = get_scheme(task)
    images = _load_npy(images_path)
    masks = _load_npy(masks_path)
    _check_numbers(images.dtype, images_path, "array")
    _check_numbers(masks.dtype, masks_path, "array")
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise CovsegError(f"{images_path}: array has shape {images.shape}; expected (N, H, W, 1) CT slices in HU")
    if masks.ndim != 4 or masks.shape[-1] != len(_NPY_CHANNEL_LABELS):
        raise CovsegError(
            f"{masks_path}: array has shape {masks.shape}; expected (N, H, W, 4) one-hot masks "
            "(GGO, consolidation, other lung, background)"
        )
    if masks.shape[:3] != images.shape:
        raise CovsegError(
            f"{masks_path}: masks have shape {masks.shape[:3]} but {images_path.name} has {images.shape}; "
            "give the masks of these images"
        )
    stem = _stem(images_path)
    samples: list[Sample] = []
    for i in range(images.shape[0]):
        onehot = np.asarray(masks[i])
        if onehot.dtype.kind == "f" and not np.isfinite(onehot).all():
            raise CovsegError(f"{masks_path}: slice {i} holds NaN or infinite values; masks must be one-hot (0/1)")
        stray = onehot[(onehot != 0) & (onehot != 1)]
        if stray.size:
            raise CovsegError(
                f"{masks_path}: slice {i} holds values other than 0 and 1 (e.g. {float(stray.flat[0]):g}); masks must "
                "be one-hot (exactly one channel 1 per pixel, the others 0)"
            )
        set_channels = onehot.astype(bool).sum(axis=-1)
        if np.any(set_channels == 0):
            raise CovsegError(
                f"{masks_path}: slice {i} has pixels with no channel set; masks must be one-hot"
            )
        if np.any(set_channels > 1):
            raise CovsegError(
                f"{masks_path}: slice {i} has {counted(int(np.count_nonzero(set_channels > 1)), 'pixel')} with several "
                "channels set; masks must be one-hot (exactly one channel 1 per pixel, the others 0)"
            )
        labels = _NPY_CHANNEL_LABELS[np.argmax(onehot, axis=-1)]
        if scheme.task == "binary":
            labels = (labels > 0).astype(np.int64)
        image = fill_non_finite(np.asarray(images[i], dtype=np.float32), f"{images_path} slice {i}")[0]
        image = window_hu(image, *window)
        samples.append(Sample(f"{stem}_{i:03d}", image, labels, str(images_path)))
    return _nonempty(samples, images_path)


def load_folder_pairs(images_dir: str | Path, masks_dir: str | Path, task: str, window: tuple[float, float] = LUNG_WINDOW) -> list[Sample]:
    """Load image/mask pairs matched by stem (``a.jpg`` <-> ``a.png``, any supported formats).

    Images as :func:`read_image`, masks as :func:`read_mask`; every image needs a mask of its size
    and every mask an image.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    scheme = get_scheme(task)
    _require_dir(images_dir, "image")
    _require_dir(masks_dir, "mask")
    return _nonempty(_pairs(images_dir, masks_dir, scheme, window), images_dir)


def _child_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() in names]
    if len(found) > 1:
        raise CovsegError(
            f"{folder}: has several folders {sorted(p.name for p in found)}; keep one"
        )
    return found[0] if found else None


def _no_split(path: Path, split: str, layout: str) -> None:
    if split == "unlabelled":  # cv:K folds hold out labelled slices: no help to what wants unlabelled ones
        raise CovsegError(
            f"{path}: the {layout} layout holds no unlabelled slices (what train.consistency, data.pseudo_labels, "
            "covseg pretrain and covseg pseudo-label read); use the unlabelled slices of a COVID-SemiSeg folder or "
            "of a MedSeg NIfTI folder (val_im.nii.gz), or train without train.consistency and data.pseudo_labels"
        )
    if split != "train":
        raise CovsegError(
            f"{path}: the {layout} layout holds only training data, no {split} split; "
            "use --split cv:K (covseg train --split cv:K) to hold out a fold of it, and score that fold with "
            "covseg evaluate RUN --split heldout"
        )


def load_dataset(path: str | Path, task: str, split: str = "train", window: tuple[float, float] = LUNG_WINDOW) -> list[Sample]:
    """Load the data at ``path``, recognising its layout (see ``_LAYOUTS``); returns samples in file order.

    ``split`` is ``train``, ``test`` or ``unlabelled``: the test split exists only in COVID-SemiSeg;
    ``unlabelled`` means the COVID-SemiSeg pseudo-label slices or MedSeg ``val_im.nii.gz``.
    """
    path = Path(path)
    get_scheme(task)
    if split not in SPLITS:
        raise CovsegError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if not path.exists():
        raise CovsegError(f"{path}: data folder not found; check the path or run `covseg download`")
    if not path.is_dir():
        raise CovsegError(f"{path}: is a file, not a data folder; accepted layouts: {_LAYOUTS}")
    if _semiseg_dataset_dir(path) is not None:
        return load_covid_semiseg(path, task, split, window)
    if all((path / name).is_file() for name in _MEDSEG_NIFTI):
        if split == "unlabelled":
            unlabelled = path / _MEDSEG_UNLABELLED
            if not unlabelled.is_file():
                raise CovsegError(f"{unlabelled}: MedSeg unlabelled slices not found; add val_im.nii.gz")
            return load_medseg_nifti(unlabelled, None, task, window)
        _no_split(path, split, "MedSeg NIfTI")
        return load_medseg_nifti(path / _MEDSEG_NIFTI[0], path / _MEDSEG_NIFTI[1], task, window)
    if all((path / name).is_file() for name in _MEDSEG_NPY):
        _no_split(path, split, "MedSeg Kaggle")
        return load_medseg_npy(path / _MEDSEG_NPY[0], path / _MEDSEG_NPY[1], task, window)
    images_dir = _child_dir(path, _IMAGE_DIR_NAMES)
    masks_dir = _child_dir(path, _MASK_DIR_NAMES)
    if images_dir is not None and masks_dir is not None:
        if split != "train":  # COVID-SemiSeg's Doctor-label is such a folder, of training slices only
            _refuse_semiseg_at_the_wrong_level(path)
        _no_split(path, split, "image/mask folder")
        return load_folder_pairs(images_dir, masks_dir, task, window)
    _refuse_semiseg_at_the_wrong_level(path)  # before "move the slices into ...": not to rearrange the data set
    _refuse_half_a_folder_pair(path, images_dir, masks_dir, split)
    raise CovsegError(f"{path}: no data layout recognised; accepted layouts: {_LAYOUTS}")


def _refuse_semiseg_at_the_wrong_level(path: Path) -> None:
    """Name the folder to give where ``path`` (no layout of its own) is one level above a COVID-SemiSeg data set
    (``covseg download``'s ``--data-dir``, which holds ``covid-semiseg/``) or a folder inside one
    (``.../Dataset/TrainingSet``); returns where it is neither."""
    try:
        below = next((p for p in sorted(path.iterdir()) if p.is_dir() and _semiseg_dataset_dir(p) is not None), None)
    except OSError:
        below = None
    if below is not None:
        raise CovsegError(f"{path}: is the folder above the COVID-SemiSeg data set {below}; give {below}, the folder "
                          "that holds Dataset/")
    where = path.resolve()
    above = next((p for p in list(where.parents)[:6]
                  if (p / "Dataset") in where.parents and _semiseg_dataset_dir(p / "Dataset") is not None), None)
    if above is not None:
        raise CovsegError(f"{path}: is a folder inside the COVID-SemiSeg data set {above}; give {above}, the folder "
                          "that holds Dataset/ (the split is chosen with --split)")


def _refuse_half_a_folder_pair(path: Path, images_dir: Path | None, masks_dir: Path | None, split: str) -> None:
    """Say what an image/mask folder layout at ``path`` lacks, in one line, where it is half there: an images folder
    without a masks folder beside it (or the other way round), or slices lying in ``path`` itself (for the
    ``unlabelled`` split: that the layout holds none). Returns where none of these is so (the caller names the
    accepted layouts)."""
    def beside(found: Path) -> str:
        others = sorted(p.name + "/" for p in path.iterdir()
                        if p.is_dir() and p != found and not p.name.startswith("."))
        return f" (other folders: {', '.join(others)})" if others else ""

    files = _supported_files(path)
    slices = files if not any(p.name in (*_MEDSEG_NIFTI, _MEDSEG_UNLABELLED) for p in files) else []
    if split == "unlabelled" and (images_dir is not None or masks_dir is not None or slices):
        _no_split(path, split, "image/mask folder")  # what reads unlabelled slices takes no folder of them
    if images_dir is not None:
        raise CovsegError(
            f"{path}: has {images_dir.name}/ but no masks/, GT/ or labels/ folder beside it{beside(images_dir)}; put "
            f"each image's mask, of the same name, in {path / 'masks'} (covseg predict takes images without masks)"
        )
    if masks_dir is not None:
        raise CovsegError(
            f"{path}: has {masks_dir.name}/ but no images/ or imgs/ folder beside it{beside(masks_dir)}; put the "
            f"slices, named as their masks, in {path / 'images'}"
        )
    if slices:  # not beside half a MedSeg pair: the accepted layouts say more there
        raise CovsegError(
            f"{path}: holds {counted(len(slices), 'image file')} ({_first_of(slices)}) but no images/ and masks/ "
            f"folders; move the slices into {path / 'images'} and their masks, of the same names, into "
            f"{path / 'masks'} (covseg predict takes a folder of images as it is)"
        )


# --------------------------------------------------------------------------------------------
# masks against the task


def lesion_only_masks(samples: Sequence[Sample]) -> bool:
    """Whether the masks of ``samples`` (``(H, W)`` label maps; samples without one skipped) look like lesion-vs-
    background masks read as multiclass: some mask holds label 1 (GGO) and no mask holds a label above 1 (2
    consolidation, 3 pleural effusion). False where no mask holds a lesion at all, or where any holds 2 or 3."""
    holds_one = False
    for sample in samples:
        if sample.mask is None or not sample.mask.size:
            continue
        top = int(sample.mask.max())
        if top > 1:
            return False
        holds_one = holds_one or top == 1
    return holds_one


def _in_slices(samples: Sequence[Sample]) -> str:
    """ "in its one slice" / "in any of its 50 slices": the labelled slices of ``samples``, for a message."""
    n = sum(s.mask is not None for s in samples)
    return "in its one slice" if n == 1 else f"in any of its {counted(n, 'slice')}"


def refuse_lesion_only_masks(samples: Sequence[Sample], task: str, data: str | Path) -> None:
    """Refuse to train a ``multiclass`` model on the training data ``samples`` of the folder ``data`` (every labelled
    slice of it, as :func:`load_dataset` gives them) whose masks hold only 0 and 1 (:func:`lesion_only_masks`): such
    masks are nearly always lesion-vs-background masks, and read as multiclass labels they would train a model that
    calls every lesion GGO and never learns consolidation or pleural effusion. A data set whose masks truly mark GGO
    alone loses nothing by ``--task binary``: the binary model learns the same lesion-vs-background map. Returns
    quietly for ``binary``, and where no mask holds a lesion (nothing to tell apart)."""
    if get_scheme(task).task != "multiclass" or not lesion_only_masks(samples):
        return
    raise CovsegError(
        f"{data}: its masks hold only the labels 0 and 1 (no 2 consolidation or 3 pleural effusion "
        f"{_in_slices(samples)}), so a multiclass model would learn GGO alone; for lesion-vs-background masks use "
        "--task binary (masks that truly mark GGO only train the same lesion model that way)"
    )


def lesion_only_caveat(samples: Sequence[Sample], task: str) -> str | None:
    """A caveat (one sentence, no closing full stop) for a ``multiclass`` evaluation of ``samples`` whose masks hold
    only 0 and 1 (:func:`lesion_only_masks`): its report shows GGO alone, with no word on why consolidation and
    pleural effusion are missing (a class no truth holds has no column), and where the masks are lesion-vs-background
    ones, the model's consolidation counts as missed GGO. None for ``binary`` and where the masks hold 2 or 3 (or no
    lesion at all: the report says so itself)."""
    if get_scheme(task).task != "multiclass" or not lesion_only_masks(samples):
        return None
    n = sum(s.mask is not None for s in samples)
    masks = "this image's mask holds no" if n == 1 else f"no mask of these {n} images holds a"
    return (f"{masks} label above 1 "
            "(2 consolidation, 3 pleural effusion), so GGO alone is scored; if the masks mark lesion vs background "
            "(0/1) rather than GGO, the model's consolidation counts here as missed GGO: score a binary model on them "
            "instead (covseg train --task binary)")
