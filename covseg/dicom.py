"""One DICOM file: read it (a ``.dcm`` without the 128-byte preamble too), check that it is a greyscale CT slice,
and turn its stored values into Hounsfield units.

Shared by :mod:`covseg.datasets` (a DICOM slice as a 2-D image) and :mod:`covseg.volumes` (a DICOM series as a
scan). Every refusal is a one-line :class:`~covseg.errors.CovsegError` naming the file and what to do.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from covseg.errors import CovsegError
from covseg.intensity import HU_MIN_THRESHOLD

__all__ = [
    "NO_RESCALE_WARNING",
    "ZERO_SLOPE_WARNING",
    "looks_like_dicom",
    "read_dataset",
    "load_dicom",
    "has_dicom_value",
    "dicom_floats",
    "dicom_modality",
    "dicom_slice_affine",
    "dicom_number",
    "check_greyscale",
    "check_ct_modality",
    "rescale_slope",
    "rescale_to_hu",
    "dicom_pixels",
    "slice_pixels",
    "read_dicom_slice",
]


def looks_like_dicom(path: Path) -> bool:
    """True for a ``.dcm`` name or a file with DICOM's ``DICM`` magic at byte 128 (a DICOM file of any name)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_floats(ds: object, keyword: str, n: int, path: Path, remedy: str = "") -> np.ndarray:
    """The multi-valued DICOM tag ``keyword`` of ``ds`` as ``n`` finite float64 numbers (ImagePositionPatient: 3,
    PixelSpacing: 2, ImageOrientationPatient: 6); missing, malformed or non-finite raises a one-line
    :class:`CovsegError` saying the slice geometry is unknown, then ``remedy`` (the way out, ``"; ..."``)."""
    value = getattr(ds, keyword, None)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64) if value is not None else None
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise CovsegError(f"{path}: DICOM {keyword} is missing or invalid; the slice geometry is unknown{remedy}")
    return arr


def _name_transfer_syntax(ds) -> None:
    """Give a data set read without its file meta (a bare ACR-NEMA-style ``.dcm``: no preamble, no group 0002) the
    transfer syntax its bytes were read in, so that its pixels decode: pydicom finds the encoding (implicit or
    explicit VR, endianness) while reading, but decodes pixel data only by a named ``TransferSyntaxUID``."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    # pydicom 3's original_encoding; pydicom 2 keeps the encoding read as is_implicit_VR / is_little_endian
    implicit, little = getattr(ds, "original_encoding", None) or (getattr(ds, "is_implicit_VR", None),
                                                                 getattr(ds, "is_little_endian", None))
    if implicit is None:  # nothing read to tell by
        return
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                              else ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def read_dataset(path: Path, data: bytes | None = None, header_only: bool = False,
             fix: str = "remove it from the series folder"):  # -> pydicom Dataset
    """``path`` (or its bytes ``data``) as a pydicom Dataset, or None when it is not DICOM and not named ``.dcm``
    (a stray file in a series folder). A ``.dcm`` file without the 128-byte preamble is read anyway (and given the
    transfer syntax its bytes were read in); a ``.dcm`` that is not DICOM is refused with ``fix``; an unreadable
    file raises a one-line :class:`CovsegError`. ``header_only``: stop before the pixel data."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    source = io.BytesIO(data) if data is not None else str(path)
    try:
        return pydicom.dcmread(source, stop_before_pixels=header_only)
    except InvalidDicomError:
        if path.suffix.lower() != ".dcm":
            return None
        try:  # a .dcm file without the 128-byte preamble
            if data is not None:
                source = io.BytesIO(data)
            ds = pydicom.dcmread(source, stop_before_pixels=header_only, force=True)
        except Exception as exc:
            raise CovsegError(
                f"{path}: cannot be read as DICOM ({type(exc).__name__}: {exc}); replace the file"
            ) from None
        if "Rows" not in ds and "SOPClassUID" not in ds:
            raise CovsegError(f"{path}: is not a DICOM file; {fix}")
        _name_transfer_syntax(ds)
        return ds
    except Exception as exc:  # truncated header, bad values
        raise CovsegError(f"{path}: cannot be read as DICOM ({type(exc).__name__}: {exc}); replace the file") from None


def load_dicom(path: Path, fix: str, header_only: bool = False):  # -> pydicom Dataset
    """One DICOM file, read as the scan reader reads its files (a ``.dcm`` without the 128-byte preamble and
    ``DICM`` prefix too); a file that is not DICOM, or cannot be read, raises a one-line :class:`CovsegError`
    (``fix``: what to do when it is not DICOM). ``header_only``: stop before the pixel data."""
    ds = read_dataset(path, header_only=header_only, fix=fix)
    if ds is None:
        raise CovsegError(f"{path}: is not a DICOM file; {fix}")
    return ds


def has_dicom_value(ds: object, keyword: str) -> bool:
    """Whether the DICOM tag ``keyword`` of ``ds`` is present with a value: an empty tag counts as missing, as
    :func:`dicom_number` reads it (its default)."""
    value = getattr(ds, keyword, None)
    return value is not None and not (isinstance(value, str) and not value.strip())


def dicom_slice_affine(ds: object, path: Path) -> np.ndarray | None:
    """A 4x4 voxel -> RAS+ affine (directions only) for one DICOM slice's ``(i = column, j = row)`` array, i.e. its
    ``pixel_array.T``, from ``ImageOrientationPatient`` as :func:`covseg.volumes.read_volume` builds a series' (LPS x and y
    negated); :func:`covseg.volumes.nifti_slice_to_view` of ``pixel_array.T`` with it is the slice as ``read_volume`` shows it
    (identity for IOP ``1\\0\\0\\0\\1\\0``). None when the tag is missing or empty (the stored order then stands);
    a malformed tag raises a one-line :class:`CovsegError`."""
    if not has_dicom_value(ds, "ImageOrientationPatient"):
        return None
    iop = dicom_floats(ds, "ImageOrientationPatient", 6, path)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[:3], iop[3:], np.cross(iop[:3], iop[3:])
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def dicom_number(ds: object, keyword: str, default: float, path: Path) -> float:
    """The DICOM tag ``keyword`` of ``ds`` as a finite number (``default`` when absent or empty); a value that is
    not a finite number raises a one-line :class:`CovsegError` naming the file and the tag."""
    value = getattr(ds, keyword, None)
    if value is None or value == "":
        return float(default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise CovsegError(f"{path}: DICOM {keyword} is {str(value)!r}, not a finite number; replace the file or "
                          "fix the tag")
    return number


def check_greyscale(ds: object, path: Path) -> None:
    """Refuse, in one line, a colour or multi-sample image, a multi-frame file, or a Modality other than CT."""
    samples = int(dicom_number(ds, "SamplesPerPixel", 1, path) or 1)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples != 1 or not photometric.startswith("MONOCHROME"):
        raise CovsegError(
            f"{path}: has {samples} samples per pixel ({photometric}), a colour image, not a CT slice; "
            "give the original greyscale CT series"
        )
    frames = int(dicom_number(ds, "NumberOfFrames", 1, path) or 1)
    if frames > 1:
        raise CovsegError(
            f"{path}: is a multi-frame DICOM ({frames} frames); export the series as one slice per file"
        )
    check_ct_modality(ds, path, "a CT series")


def dicom_modality(ds: object) -> str:
    """``ds``'s Modality as covseg compares it: upper case, without surrounding spaces; ``""`` where absent."""
    return str(getattr(ds, "Modality", "") or "").strip().upper()


def check_ct_modality(ds: object, path: Path, give: str) -> None:
    """Refuse, in one line, a DICOM dataset whose Modality is present and not CT (MR, OT secondary capture, ...):
    its values are no Hounsfield units. ``give``: what to give instead ("a CT series")."""
    modality = dicom_modality(ds)
    if modality and modality != "CT":
        raise CovsegError(f"{path}: Modality is {modality}, not CT; give {give}")


def rescale_slope(ds: object, path: Path) -> tuple[float, bool]:
    """``ds``'s RescaleSlope (1 where missing or empty), and whether it was 0: not valid DICOM (every pixel would be
    the intercept), read as 1, as GDCM does; the caller warns (:data:`ZERO_SLOPE_WARNING`)."""
    slope = dicom_number(ds, "RescaleSlope", 1, path)
    return (slope or 1.0), slope == 0


def rescale_to_hu(ds: object, pixels: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    """Stored values -> HU with RescaleSlope/RescaleIntercept; also the warnings, without the file's name
    (:data:`NO_RESCALE_WARNING`, :data:`ZERO_SLOPE_WARNING`).

    A RescaleSlope of 0 (not valid DICOM: every pixel would be the intercept) is read as 1, with a warning.

    Without RescaleIntercept (missing or empty; with or without RescaleSlope), stored values reaching below -100
    are taken as HU;
    others raise (see :func:`read_dicom_slice`).
    """
    # an empty tag is no value (dicom_number gives its default): raw unsigned values must not pass as HU
    has_slope, has_inter = has_dicom_value(ds, "RescaleSlope"), has_dicom_value(ds, "RescaleIntercept")
    slope, zero = rescale_slope(ds, path) if has_slope else (1.0, False)
    notes = [ZERO_SLOPE_WARNING] if zero else []
    intercept = dicom_number(ds, "RescaleIntercept", 0, path) if has_inter else 0.0
    data = pixels.astype(np.float32)
    if slope != 1.0:
        data *= np.float32(slope)
    if intercept != 0.0:
        data += np.float32(intercept)
    missing = not has_inter  # the intercept holds the offset (-1024 for unsigned data): a slope alone is no HU
    if missing and not (data.size and float(data.min()) < HU_MIN_THRESHOLD):
        raise CovsegError(
            f"{path}: has no RescaleIntercept and its values (min {float(data.min()):g}) are not "
            "Hounsfield units; give the original CT series (with rescale tags)"
        )
    return data, ([NO_RESCALE_WARNING] if missing else []) + notes


NO_RESCALE_WARNING = "no RescaleIntercept; stored values (reaching below -100) taken as Hounsfield units"
"""The warning for a slice read by :func:`rescale_to_hu` without its RescaleIntercept."""

ZERO_SLOPE_WARNING = "RescaleSlope 0 (not valid DICOM) read as 1"
"""The warning for a slice read by :func:`rescale_to_hu` whose RescaleSlope is 0."""


def _no_decoder(ds: object, exc: Exception) -> str | None:
    """The name of ``ds``'s compressed transfer syntax when no installed pydicom plugin decodes it (the file is fine:
    a decoder is missing), else None."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = syntax is not None and bool(syntax.is_compressed)
    except (AttributeError, ValueError):  # not a transfer syntax pydicom knows: its UID's property raises ValueError
        return None
    if not compressed:
        return None
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2: its message says the handlers miss their dependencies
        missing = "missing" in str(exc) and "dependenc" in str(exc)
    else:
        try:
            missing = not get_decoder(syntax).is_available
        except NotImplementedError:  # pydicom has no decoder for it at all: decompressing is the way
            missing = True
    return str(getattr(syntax, "name", syntax)) if missing else None


def dicom_pixels(ds: object, path: Path) -> np.ndarray:
    """``ds.pixel_array``; a failure raises a one-line :class:`CovsegError`: for compressed pixel data that no
    installed decoder reads, what to install (or how to decompress the files), else that the file is damaged."""
    try:
        return ds.pixel_array  # type: ignore[attr-defined]
    except Exception as exc:  # truncated pixel data, compression without a decoder, no pixel data
        syntax = _no_decoder(ds, exc)
        if syntax is not None:
            raise CovsegError(
                f"{path}: its pixel data are compressed ({syntax}) and no installed decoder reads them; install "
                "pylibjpeg and pylibjpeg-libjpeg (or python-gdcm), or decompress the series (e.g. gdcmconv --raw)"
            ) from None
        raise CovsegError(
            f"{path}: cannot read its pixel data ({type(exc).__name__}: {exc}); replace the file"
        ) from None


def slice_pixels(ds: object, path: Path) -> np.ndarray:
    """:func:`dicom_pixels`, refused in one line unless they are one 2-D ``(rows, cols)`` slice."""
    pixels = dicom_pixels(ds, path)
    if pixels.ndim != 2:
        raise CovsegError(f"{path}: pixel data has shape {tuple(pixels.shape)}, not one greyscale slice; "
                          "give the original greyscale CT series")
    return pixels


def read_dicom_slice(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read one DICOM CT slice as ``(rows, cols)`` float32 Hounsfield units, plus warnings.

    Pixel array as stored (row 0 first; no reorientation), ``RescaleSlope``/``RescaleIntercept`` applied.
    Refused: colour / multi-sample or multi-frame images, Modality other than CT, unreadable files. Without
    RescaleIntercept, stored values that already reach below -100 are taken as HU (with a warning); others are
    refused, since e.g. unsigned values with a missing -1024 intercept would be read 1024 HU too high.
    """
    path = Path(path)
    if not path.is_file():
        raise CovsegError(f"{path}: file not found; check the path")
    ds = load_dicom(path, "give a DICOM CT slice")
    check_greyscale(ds, path)
    data, notes = rescale_to_hu(ds, slice_pixels(ds, path), path)
    return data, [f"{path.name}: {note}" for note in notes]
