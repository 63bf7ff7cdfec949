"""Reading CT volumes (NIfTI file, DICOM series folder, folder of 2-D images) in one canonical orientation.

Canonical orientation (nibabel axis codes ``("S", "P", "L")``, see :data:`CANONICAL_AXCODES`):

* axis 0 = Z: axial slices, index increasing from inferior to superior (feet -> head);
* axis 1 = Y: image rows, index increasing from anterior to posterior (row 0 is the front of the chest);
* axis 2 = X: image columns, index increasing from patient right to patient left, so that a slice
  ``hu[z]`` shown as an image (row 0 on top) is the usual radiological display: anterior up, the
  patient's right on the viewer's left.

This is DICOM's LPS patient system with the array indexed ``(z, y, x)``: an ordinary axial DICOM series
(ImageOrientationPatient ``1\\0\\0\\0\\1\\0``) stacks its pixel arrays into it unchanged, and a slice of it
equals :mod:`covseg.datasets`' 2-D view of the same slice saved as a single-slice NIfTI, stored in any orientation
(:func:`nifti_slice_to_view` turns it by its affine the same way; for a radiologically stored NIfTI, affine axes
L and P, that is ``data[:, :, k].T``).

Every input is turned into its *input array*: the NIfTI data array as stored (``(i, j, k)``, trailing
singleton dimensions dropped), or for DICOM series and image stacks the array a DICOM->NIfTI converter
writes: ``(i = column, j = row, k = slice in increasing position along the slice normal)``. The input
array and its voxel -> RAS+ world affine (``Volume.input_affine``, millimetres, the NIfTI convention, or a NIfTI's
own metres / micrometres, see ``Volume.xyz_units``; DICOM LPS coordinates are turned into RAS by negating x and y) map to the canonical array by flips and axis
permutations only (``nibabel.orientations``), so :func:`to_input_geometry` undoes the reorientation
exactly and :func:`write_like_input` writes label maps that overlay the input in any viewer.

Intensities: ``Volume.hu`` is float32 Hounsfield units when ``Volume.is_hu`` (DICOM after
RescaleSlope/RescaleIntercept, NIfTI after scl_slope/scl_inter). Stacks of 8-/16-bit images hold their grey values
scaled to ``[0, 1]`` (/ 255, / 65535: :func:`covseg.intensity.scale_stored_grey`, as single slices are read;
``is_hu`` False), which callers treat as already windowed (:func:`covseg.intensity.to_unit_range`).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import warnings as warnings_module
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from covseg.dicom import (check_greyscale, dicom_floats, dicom_modality, has_dicom_value, looks_like_dicom,
                          read_dataset, rescale_to_hu, slice_pixels)
from covseg.errors import CovsegError
from covseg.fileio import atomic_path
from covseg.intensity import HU_MIN_THRESHOLD, RAW_CT_MAX, fill_non_finite, raw_ct_warning, scale_stored_grey
from covseg.wording import counted

__all__ = [
    "CANONICAL_AXCODES",
    "MIN_SLICES",
    "GAP_FACTOR",
    "PIXEL_MM_RANGE",
    "SLICE_MM_RANGE",
    "Volume",
    "read_volume",
    "check_volume",
    "refuse_series_below",
    "quiet_file_readers",
    "check_voxel_size",
    "check_spacing",
    "to_input_geometry",
    "from_input_geometry",
    "nifti_slice_to_view",
    "view_to_nifti_slice",
    "write_like_input",
]

CANONICAL_AXCODES: tuple[str, str, str] = ("S", "P", "L")
"""nibabel axis codes of the canonical ``(Z, Y, X)`` array: inferior->superior, anterior->posterior, right->left."""

MIN_SLICES: int = 2
"""A scan needs at least this many slices (a single slice is refused)."""

NO_SERIES_GEOMETRY: str = ("; give its slices as .dcm files to predict them as 2-D slices (no volumes in mL), or "
                           "re-export the series with its geometry tags")
"""The way out appended to a DICOM series' missing or invalid geometry tag's refusal."""

GAP_FACTOR: float = 1.5
"""A step between consecutive slices longer than this times the median step counts as missing slices."""

PIXEL_MM_RANGE: tuple[float, float] = (0.02, 10.0)
"""Plausible in-plane voxel size of a CT in mm (between rows, between columns), inclusive. Clinical CT has about
0.2..1.5 mm pixels, small-field and micro-CT down to a few hundredths of a mm, resampled or thumbnail scans a few mm; a
voxel size outside this range is refused (by every reader, and for the ``--spacing`` of a folder of images) as given in
another unit: metres read as mm (at most about 0.01) or micrometres (hundreds) put it about 1000x off, which makes the
lung mask allocate tens of GB or the reported volumes absurd."""

SLICE_MM_RANGE: tuple[float, float] = (0.02, 30.0)
"""Plausible distance between a CT's slice planes in mm, inclusive (thin-slice 0.5 mm to thick 10 mm slices, and
sparse series with a few slices); outside it refused like :data:`PIXEL_MM_RANGE`."""

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_DUPLICATE_MM = 1e-3
_GRID_TOLERANCE = 0.2  # an unevenly spaced slice may lie this share of a step off its place on the median grid
_NIFTI_MM = {"meter": 1000.0, "micron": 1e-3}  # NIfTI xyzt_units other than mm -> mm
_TILT_DEGREES = 0.5
_SAME_ORIENTATION = 1e-3  # direction cosines this close are one orientation (one stack of a series)


@dataclass
class Volume:
    """A CT volume in the canonical orientation, plus what is needed to map results back onto the input.

    Shape: ``hu`` is ``(Z, Y, X)`` float32 (axes as :data:`CANONICAL_AXCODES`); ``spacing`` is the
    ``(Z, Y, X)`` voxel size in mm (Z: distance between slice planes, Y: between rows, X: between columns).
    """

    hu: np.ndarray
    """``(Z, Y, X)`` float32: Hounsfield units when ``is_hu``; else, for a stack of 8-/16-bit images, their grey values
    scaled to ``[0, 1]`` by :func:`covseg.intensity.scale_stored_grey`, or the values of a NIfTI or of signed or float
    images as stored (no air below -100 in them)."""
    spacing: tuple[float, float, float]
    affine: np.ndarray
    """4x4: canonical voxel index ``(z, y, x)`` -> RAS+ world mm."""
    input_affine: np.ndarray
    """4x4: input-array voxel index -> RAS+ world, in ``xyz_units`` (the NIfTI's own affine, or derived from DICOM)."""
    input_shape: tuple[int, int, int]
    input_ornt: np.ndarray
    """``(3, 2)`` nibabel orientation of the input array (``io_orientation(input_affine)``)."""
    is_hu: bool = True
    warnings: list[str] = field(default_factory=list)
    """One line per problem that did not stop reading (missing slices, other series, ...)."""
    source: str = ""
    """The path given to :func:`read_volume`."""
    sha256: str = ""
    """SHA-256 of the file's bytes; for a folder, of the used files' bytes concatenated in slice order."""
    kind: str = ""
    """``"nifti"``, ``"dicom"`` or ``"images"``."""
    series_uid: str | None = None
    """The DICOM SeriesInstanceUID read (None for other inputs)."""
    file_shape: tuple[int, ...] | None = None
    """A NIfTI's shape as stored when it has trailing axes of length 1 (``(X, Y, Z, 1)``); label maps are written
    in it. None otherwise (``input_shape`` then is the file's shape)."""
    xyz_units: str = "mm"
    """Unit of ``input_affine``: a NIfTI's xyzt_units (``"meter"``, ``"micron"``; ``"mm"`` when mm or unset), kept for
    the label maps; ``spacing`` and ``affine`` are always mm."""
    nifti_forms: tuple[tuple[np.ndarray | None, int], tuple[np.ndarray | None, int]] | None = None
    """A NIfTI input's ``(qform, code)`` and ``(sform, code)`` as stored (nibabel's ``get_qform(coded=True)``), which
    label maps copy; None for other inputs."""
    nifti_zooms: tuple[float, ...] | None = None
    """A NIfTI input's voxel sizes as stored (nibabel's ``header.get_zooms()``, one per stored axis), which label maps
    of an input with neither a qform nor an sform copy; None for other inputs."""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Canonical ``(Z, Y, X)`` shape."""
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# orientation


def _canonical_ornt() -> np.ndarray:
    import nibabel as nib

    return nib.orientations.axcodes2ornt(CANONICAL_AXCODES)


def _spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """``(Z, Y, X)`` spacing of a canonical affine: column lengths in-plane, slice-plane distance for Z."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    col_x, col_y = m[:, 2], m[:, 1]
    sx, sy = float(np.linalg.norm(col_x)), float(np.linalg.norm(col_y))
    cross = float(np.linalg.norm(np.cross(col_x, col_y)))
    sz = abs(float(np.linalg.det(m))) / cross if cross > 0 else float(np.linalg.norm(m[:, 0]))
    return round(sz, 6), round(sy, 6), round(sx, 6)


def _unit_hint(spacing: Sequence[float]) -> str:
    """Which unit the values of a ``(Z, Y, X)`` voxel size outside the plausible ranges look like (for the refusal)."""
    ranges = (SLICE_MM_RANGE, PIXEL_MM_RANGE, PIXEL_MM_RANGE)
    values = [float(v) for v in spacing]
    off = [i for i, (v, (lo, hi)) in enumerate(zip(values, ranges)) if not lo <= v <= hi]
    if len(off) == 3:
        what = "they look"
    elif 0 in off:
        what = "the slice spacing looks" if off == [0] else "the slice spacing and pixel size look"
    else:
        what = "the pixel size looks"

    def fits(scale: float) -> bool:
        return all(ranges[i][0] <= values[i] * scale <= ranges[i][1] for i in off)

    if fits(1e3):
        return f"{what} like metres (x 1000 gives mm)"
    if fits(1e-3):
        return f"{what} like micrometres (/ 1000 gives mm)"
    return "the voxel size is outside what covseg expects of a CT; check it"


def check_voxel_size(spacing: Sequence[float], source: str, origin: str, hint: str | None = None) -> None:
    """Refuse a ``(Z, Y, X)`` voxel size in mm outside :data:`SLICE_MM_RANGE` (Z) or :data:`PIXEL_MM_RANGE` (Y, X).

    Raises a one-line :class:`CovsegError` naming ``source`` (the file, folder or option), the voxel size, ``origin``
    (where it was read from) and ``hint`` (what to fix; by default the unit the numbers look like)."""
    z, y, x = (float(v) for v in spacing)
    if (SLICE_MM_RANGE[0] <= z <= SLICE_MM_RANGE[1]
            and all(PIXEL_MM_RANGE[0] <= v <= PIXEL_MM_RANGE[1] for v in (y, x))):
        return
    hint = hint or f"covseg expects mm: {_unit_hint((z, y, x))}"
    raise CovsegError(
        f"{source}: voxel size {z:g} x {y:g} x {x:g} mm (Z Y X, {origin}) is not a CT's (slices "
        f"{SLICE_MM_RANGE[0]:g}..{SLICE_MM_RANGE[1]:g} mm apart, pixels {PIXEL_MM_RANGE[0]:g}..{PIXEL_MM_RANGE[1]:g} "
        f"mm); {hint}"
    )


def _checked_affine(input_affine: np.ndarray, source: str) -> np.ndarray:
    """``input_affine`` as float64, refused in one line when singular or not finite."""
    input_affine = np.asarray(input_affine, dtype=np.float64)
    if not np.isfinite(input_affine).all() or abs(float(np.linalg.det(input_affine[:3, :3]))) < 1e-12:
        raise CovsegError(f"{source}: its voxel-to-world affine is singular or not finite "
                          f"({np.round(input_affine[:3], 4).tolist()}); fix the file's geometry (NIfTI sform/qform, "
                          "DICOM orientation and spacing)")
    return input_affine


def _canonical_geometry(input_affine: np.ndarray, shape: Sequence[int]
                        ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The nibabel orientation transform to canonical, the canonical affine and the ``(Z, Y, X)`` shape of a 3-D
    array of ``shape`` placed by ``input_affine``: :func:`_make_volume`'s reorientation, without the array."""
    import nibabel as nib

    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(input_affine), _canonical_ornt())
    canonical_shape = [0, 0, 0]
    for axis, (to, _) in enumerate(transform):
        canonical_shape[int(to)] = int(shape[axis])
    affine = input_affine @ nib.orientations.inv_ornt_aff(transform, shape)
    return transform, affine, tuple(canonical_shape)  # type: ignore[return-value]


def _make_volume(data: np.ndarray, input_affine: np.ndarray, **kwargs: object) -> Volume:
    """Reorient the 3-D input array ``data`` (voxel -> RAS via ``input_affine``) to canonical."""
    import nibabel as nib

    input_affine = _checked_affine(input_affine, str(kwargs.get("source", "the scan")))
    transform, affine, _ = _canonical_geometry(input_affine, data.shape)
    hu = np.ascontiguousarray(nib.orientations.apply_orientation(data, transform), dtype=np.float32)
    return Volume(
        hu=hu,
        spacing=_spacing_of(affine),
        affine=affine,
        input_affine=input_affine,
        input_shape=tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
        input_ornt=nib.orientations.io_orientation(input_affine),
        **kwargs,  # type: ignore[arg-type]
    )


def to_input_geometry(labels: np.ndarray, volume: Volume) -> np.ndarray:
    """Map a canonical ``(Z, Y, X)`` array (e.g. a label map) onto the input array's voxel order.

    Returns an array of shape ``volume.input_shape``, same dtype, voxel ``v`` of which lies at world
    position ``volume.input_affine @ v``. Exact: only flips and axis permutations.
    """
    import nibabel as nib

    labels = np.asarray(labels)
    if labels.shape != volume.hu.shape:
        raise ValueError(f"array shape {labels.shape} differs from the volume's canonical shape {volume.hu.shape}")
    transform = nib.orientations.ornt_transform(_canonical_ornt(), volume.input_ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(labels, transform))


def from_input_geometry(array: np.ndarray, volume: Volume) -> np.ndarray:
    """Inverse of :func:`to_input_geometry`: an array in the input's voxel order -> canonical ``(Z, Y, X)``."""
    import nibabel as nib

    array = np.asarray(array)
    if array.shape != volume.input_shape:
        raise ValueError(f"array shape {array.shape} differs from the input shape {volume.input_shape}")
    transform = nib.orientations.ornt_transform(volume.input_ornt, _canonical_ornt())
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, transform))


_VIEW_AXCODES: dict[int, tuple[str, str, str]] = {
    2: CANONICAL_AXCODES, 1: ("P", "I", "L"), 0: ("L", "I", "P"),
}
"""Axis codes (slice normal, rows, columns) a single slice is shown in, by the RAS axis its normal lies along: an axial
slice as a canonical ``hu[z]`` (anterior up, patient right on the viewer's left); a coronal or sagittal one as
radiologists show it (head up; patient right, or anterior, on the viewer's left)."""


def _slice_ornts(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """nibabel orientations of a single slice stored ``(i, j)`` with voxel -> world ``affine`` (4x4) and of its view
    (:data:`_VIEW_AXCODES`); None when the affine leaves the in-plane axes' directions unknown (singular, not
    finite, or both along one world axis)."""
    import nibabel as nib

    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        return None
    ornt = nib.orientations.io_orientation(affine)
    in_plane = ornt[:2, 0]
    if not np.isfinite(ornt[:2]).all() or in_plane[0] == in_plane[1]:
        return None
    normal = ({0, 1, 2} - {int(a) for a in in_plane}).pop()
    ornt[2] = [normal, 1.0]  # a slice's own third axis (length 1, any pixdim) only says which plane it is
    return ornt, nib.orientations.axcodes2ornt(_VIEW_AXCODES[normal])


def nifti_slice_to_view(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A single-slice NIfTI's ``(i, j)`` array -> ``(rows, cols)`` as :func:`read_volume` shows its slices, by the
    file's ``affine`` (4x4 voxel -> world): an axial slice stored in any orientation comes out as the canonical
    ``hu[z]`` of the same slice (anterior up, patient right on the viewer's left), so models see it as they see the
    slices of a scan (:data:`_VIEW_AXCODES` for coronal / sagittal slices). Only flips and a transpose, undone by
    :func:`view_to_nifti_slice`; an affine that gives no in-plane directions keeps the stored order, transposed
    (``data.T``)."""
    import nibabel as nib

    data = np.asarray(data)
    ornts = _slice_ornts(affine)
    if ornts is None:
        return np.ascontiguousarray(data.T)
    transform = nib.orientations.ornt_transform(*ornts)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data[:, :, None], transform)[0])


def view_to_nifti_slice(view: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`nifti_slice_to_view`: a ``(rows, cols)`` array (e.g. a label map predicted on the view) ->
    the slice file's ``(i, j)`` voxel order, so that it overlays the slice when saved with the same ``affine``."""
    import nibabel as nib

    view = np.asarray(view)
    ornts = _slice_ornts(affine)
    if ornts is None:
        return np.ascontiguousarray(view.T)
    transform = nib.orientations.ornt_transform(ornts[1], ornts[0])
    return np.ascontiguousarray(nib.orientations.apply_orientation(view[None], transform)[:, :, 0])


def _sheared(affine: np.ndarray) -> bool:
    """Whether the 3x3 part of ``affine`` has non-orthogonal columns (a shear a NIfTI qform cannot hold)."""
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(m, axis=0)
    gram = (m.T @ m) / np.outer(lengths, lengths)
    return bool(np.max(np.abs(gram - np.eye(3))) > 1e-6)


def write_like_input(labels: np.ndarray, volume: Volume, path: str | Path) -> Path:
    """Write a canonical ``(Z, Y, X)`` label map as a uint8 NIfTI that overlays the input.

    The file holds :func:`to_input_geometry` of ``labels``: for NIfTI input with the same shape as the input file and
    its qform and sform, codes included (``volume.nifti_forms``), or for a NIfTI with neither (both codes 0) none
    either and the input's voxel sizes (``volume.nifti_zooms``), so that every reader places the two files by the same
    fallback; otherwise ``volume.input_affine`` as the sform (code 1, scanner) and as the qform where it has no shear
    (a gantry-tilted DICOM series gets none, code 0), the geometry a DICOM->NIfTI converter gives the series.
    ``path`` must end in ``.nii`` or ``.nii.gz``. Label values must lie in 0..255. Written atomically; returns ``path``.
    """
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith(_NIFTI_SUFFIXES):
        raise CovsegError(f"{path}: label maps are written as NIfTI; name the output *.nii or *.nii.gz")
    labels = np.asarray(labels)
    if labels.size and (labels.dtype.kind not in "iub" or labels.min() < 0 or labels.max() > 255):
        raise ValueError("labels must be integers in 0..255 to be written as uint8")
    data = to_input_geometry(labels, volume).astype(np.uint8)
    if volume.file_shape is not None:
        data = data.reshape(volume.file_shape)
    forms = volume.nifti_forms
    if forms is not None and not (forms[0][1] or forms[1][1]):
        # the input has neither a qform nor an sform: readers place it by its voxel sizes alone, each by its own
        # fallback (nibabel centres it and mirrors x, ITK puts voxel 0 at the origin); labels written with a form
        # would lie elsewhere than the input in some of them, so they get none either and the same voxel sizes
        img = nib.Nifti1Image(data, None)  # no affine: nibabel saves both codes 0
        zooms = volume.nifti_zooms or tuple(float(z) for z in np.linalg.norm(volume.input_affine[:3, :3], axis=0))
        img.header.set_zooms((tuple(zooms) + (1.0,) * data.ndim)[:data.ndim])
    elif forms is not None:  # the input's own qform and sform, with their codes
        img = nib.Nifti1Image(data, volume.input_affine)
        (qform, qcode), (sform, scode) = forms
        img.set_qform(qform, code=int(qcode))
        img.set_sform(sform, code=int(scode))
    else:
        img = nib.Nifti1Image(data, volume.input_affine)
        img.set_sform(volume.input_affine, code=1)
        # a qform holds no shear (a gantry-tilted series): readers that prefer it would misplace the map, so omit it
        img.set_qform(volume.input_affine, code=0 if _sheared(volume.input_affine) else 1)
    img.header.set_xyzt_units(volume.xyz_units)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


# --------------------------------------------------------------------------------------------
# NIfTI


def _read_nifti(path: Path, header_only: bool = False) -> Volume | None:
    """A NIfTI scan as a :class:`Volume`; with ``header_only`` every refusal its header decides (voxel type, shape,
    voxel sizes, affine, slice counts) and None, the voxels left unread."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        dtype = img.get_data_dtype()
    except Exception as exc:  # ImageFileError, EOFError, zlib.error, ...
        raise CovsegError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); replace the file") from None
    if dtype.names is not None or dtype.kind == "c":
        raise CovsegError(f"{path}: holds {dtype} (colour or complex) voxels, not a CT volume; give a greyscale CT")
    shape = tuple(int(n) for n in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise CovsegError(
            f"{path}: is a {len(shape)}-D NIfTI of shape {shape}, not one CT volume; give a single 3-D volume"
        )
    if 0 in shape:
        raise CovsegError(f"{path}: holds no voxels (shape {shape}); replace the file")
    if len(shape) < 3 or shape[2] < 1:
        raise CovsegError(f"{path}: holds a single slice of shape {shape}; a scan needs at least {MIN_SLICES} slices")
    header = img.header
    if int(header["sform_code"]) == 0:  # the affine comes from the qform or pixdim, whose voxel sizes must be real
        with nib.openers.ImageOpener(str(path)) as stream:  # as stored: nibabel's check turns 0 into 1 on load
            zooms = np.asarray(type(header).from_fileobj(stream, check=False)["pixdim"][1:4], dtype=np.float64)
        if not (np.all(np.isfinite(zooms)) and np.all(zooms > 0)):
            sizes = ", ".join(f"{z:g}" for z in zooms)
            raise CovsegError(f"{path}: its voxel sizes (pixdim {sizes}) are not all positive and it has no "
                              "sform, so its geometry is unknown (nibabel would take 1 mm); set the voxel sizes in the "
                              "header, or convert the scan again")
    units = header.get_xyzt_units()[0]
    to_mm = _NIFTI_MM.get(units, 1.0)  # nibabel's affine is in the file's units; mm when unset ("unknown")
    input_affine = _checked_affine(np.diag([to_mm, to_mm, to_mm, 1.0]) @ img.affine, str(path))
    _, canonical, canonical_shape = _canonical_geometry(input_affine, shape)
    _check_nifti_voxel_size(_spacing_of(canonical), path, units)
    _check_slice_counts(canonical_shape, path)
    if header_only:
        return None
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # truncated data, bad compression
        raise CovsegError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); replace the file") from None
    warnings: list[str] = []
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        warnings.append(
            f"{path.name}: its header holds no orientation (qform_code and sform_code 0), so nibabel's default (LAS) "
            "was assumed: right and left may be swapped; set the qform or sform, or convert the scan again"
        )
    data = _finite(data, path, warnings)
    lo, hi = float(data.min()), float(data.max())
    is_hu = lo < HU_MIN_THRESHOLD
    # nibabel's effective scl_slope / scl_inter (1 and 0 where the header sets none, or sets 0 or NaN)
    unscaled = float(getattr(img.dataobj, "slope", 1.0)) == 1.0 and float(getattr(img.dataobj, "inter", 0.0)) == 0.0
    if not is_hu and unscaled and 0 <= lo and 255 < hi <= RAW_CT_MAX and (
            dtype.kind in "iu" or (dtype.kind == "f" and all(np.array_equal(plane, np.rint(plane)) for plane in data))):
        # stored integers (or floats holding only whole numbers, as a conversion to float32 leaves them) beyond
        # 8-bit grey within 12 bits: CT numbers stored as HU + 1024 without the header's
        # scl_inter (as a DICOM series without RescaleIntercept, which is refused too); min-max scaled as grey
        # values they put soft tissue below the air threshold, and the lung mask and every volume would be wrong.
        # A header that does rescale (a slope other than 1) holds no raw CT numbers: grey, with the warning below
        raise CovsegError(
            f"{path}: its values {lo:g}..{hi:g} look like raw CT numbers (HU + 1024) stored without the header's "
            "rescale (scl_slope / scl_inter), not Hounsfield units; set them (nibabel: "
            "img.header.set_slope_inter(1, -1024)) or convert the scan again in HU"
        )
    if not is_hu:
        warnings.append(
            f"{path.name}: values {lo:g}..{hi:g} do not look like Hounsfield units (no air below {HU_MIN_THRESHOLD:g}); "
            "treated as grey values"
        )
    volume = _make_volume(data, input_affine, is_hu=is_hu, warnings=warnings,
                          source=str(path), sha256=_sha256_files([path]), kind="nifti",
                          file_shape=tuple(int(n) for n in img.shape) if len(img.shape) > 3 else None)
    if units in _NIFTI_MM:  # label maps are written in the file's own affine and units
        volume.input_affine, volume.xyz_units = np.asarray(img.affine, dtype=np.float64), units
    volume.nifti_forms = (header.get_qform(coded=True), header.get_sform(coded=True))
    volume.nifti_zooms = tuple(float(z) for z in header.get_zooms())
    return volume


def _check_nifti_voxel_size(spacing: tuple[float, float, float], path: Path, units: str) -> None:
    """:func:`check_voxel_size` of a NIfTI, whose affine (``sform``/``qform``) is read in its xyzt_units ``units``."""
    named = units if units in _NIFTI_MM or units == "mm" else "unset, so mm"
    origin = f"from its affine, xyzt_units {named}"
    guess = _unit_hint(spacing)
    if units == "micron" and "like metres" in guess:  # not "like micrometres", which holds "metres" too
        hint = ("its affine looks like mm while its xyzt_units say micron: set them to mm (nibabel "
                "img.header.set_xyzt_units('mm')) or convert the scan again")
    elif units == "meter" and "micrometres" in guess:
        hint = ("its affine looks like mm while its xyzt_units say meter: set them to mm (nibabel "
                "img.header.set_xyzt_units('mm')) or convert the scan again")
    else:
        hint = f"covseg expects mm: {guess}; fix the affine or its xyzt_units, or convert the scan again"
    check_voxel_size(spacing, str(path), origin, hint)


def _finite(data: np.ndarray, path: Path, warnings: list[str]) -> np.ndarray:
    """``data`` with NaN/infinite voxels set to its finite minimum (air), with a warning; all non-finite: refused."""
    data, warning = fill_non_finite(data, path.name)
    if warning is not None:
        warnings.append(warning)
    return data


# --------------------------------------------------------------------------------------------
# DICOM series (one file: covseg.dicom)


def _sha256_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@dataclass
class _Header:
    path: Path
    uid: str
    rows: int
    cols: int
    description: str


_CT_IMAGE_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
"""SOP classes of CT images (CT, Enhanced CT, Legacy Converted Enhanced CT): such a file without Rows is cut short."""


def _sop_class(ds: object) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(ds, "SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")


def _dicom_headers(paths: Sequence[Path]) -> list[tuple[_Header, object]]:
    found = []
    for p in paths:
        ds = read_dataset(p, header_only=True)
        if ds is not None and ("Rows" not in ds or "Columns" not in ds) and _sop_class(ds) in _CT_IMAGE_STORAGE:
            raise CovsegError(f"{p}: a CT image file without its image (no Rows/Columns): the file is cut short; "
                              "replace it, or remove it from the series folder")
        if ds is None or "Rows" not in ds or "Columns" not in ds:
            continue  # not DICOM, or a DICOM object without an image (report, presentation state)
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        desc = str(getattr(ds, "SeriesDescription", "") or "")
        found.append((_Header(p, uid, int(ds.Rows), int(ds.Columns), desc), ds))
    return found


def _series_label(uid: str, items: list, description: str) -> str:
    """``UID (N images[, modality][, 'description'])``: the modality named where it is not CT."""
    name = uid or "(no SeriesInstanceUID)"
    modality = dicom_modality(items[0][1])
    kind = f", {modality}" if modality and modality != "CT" else ""
    desc = f", {description!r}" if description else ""
    return f"{name} ({len(items)} images{kind}{desc})"


def _same_stack(key: tuple, rows: int, cols: int, orientation: np.ndarray | None) -> bool:
    """Whether a slice of ``rows`` x ``cols`` and ``orientation`` (ImageOrientationPatient, or None) belongs to the
    stack ``key`` = (rows, cols, its first slice's orientation): the same size, orientations within
    ``_SAME_ORIENTATION`` of each other."""
    if key[:2] != (rows, cols) or (key[2] is None) != (orientation is None):
        return False
    return orientation is None or float(np.abs(np.asarray(key[2]) - orientation).max()) <= _SAME_ORIENTATION


def _choose_series(headers: list[tuple[_Header, object]], series_uid: str | None, folder: Path,
                   warnings: list[str]) -> list[tuple[_Header, object]]:
    series: dict[str, list[tuple[_Header, object]]] = {}
    for item in headers:
        series.setdefault(item[0].uid, []).append(item)
    def is_ct(items: list[tuple[_Header, object]]) -> bool:  # no Modality counts as CT (checked per slice later)
        return dicom_modality(items[0][1]) in ("", "CT")

    ranked = sorted(series.items(), key=lambda kv: (not is_ct(kv[1]), -len(kv[1]), kv[0]))
    if series_uid is not None:
        if series_uid not in series:
            listing = "; ".join(_series_label(uid, items, items[0][0].description) for uid, items in ranked)
            raise CovsegError(f"{folder}: holds no series {series_uid}; the series there are: {listing}")
        chosen_uid = series_uid
    else:
        chosen_uid = ranked[0][0]
        if len(ranked) > 1:
            others = "; ".join(_series_label(uid, items, items[0][0].description) for uid, items in ranked[1:])
            warnings.append(
                f"{folder.name}: holds {len(ranked)} series; read the largest CT series, "
                f"{_series_label(chosen_uid, series[chosen_uid], series[chosen_uid][0][0].description)}; "
                f"left out: {others} (choose one with --series UID)"
            )
    items = series[chosen_uid]
    # one stack: same image size and orientation (a localizer in the same series is left out)
    # orientations within _SAME_ORIENTATION of a stack's first count as that stack's (rounding would split
    # values a hair apart on either side of a rounding boundary)
    stacks: dict[tuple, list[tuple[_Header, object]]] = {}
    for h, ds in items:
        iop = getattr(ds, "ImageOrientationPatient", None)
        try:
            vector = np.asarray([float(v) for v in iop], dtype=np.float64) if iop is not None else None
        except (TypeError, ValueError):
            vector = None
        if vector is not None and (vector.shape != (6,) or not np.isfinite(vector).all()):
            vector = None
        key = next((k for k in stacks if _same_stack(k, h.rows, h.cols, vector)),
                   (h.rows, h.cols, None if vector is None else tuple(vector.tolist())))
        stacks.setdefault(key, []).append((h, ds))
    if len(stacks) > 1:
        # the largest stack; of stacks equally large, the most nearly axial (a CT scan's plane), then the first name
        ranked_keys = sorted(stacks, key=lambda k: (-len(stacks[k]), -_axialness(k[2]),
                                                    min(h.path.name for h, _ in stacks[k])))
        ranked_stacks = [stacks[k] for k in ranked_keys]
        left = sum(len(s) for s in ranked_stacks[1:])
        series_name = chosen_uid or "(no SeriesInstanceUID)"
        if len(ranked_stacks[1]) == len(ranked_stacks[0]):
            nearer = _axialness(ranked_keys[0][2]) > _axialness(ranked_keys[1][2])
            how = "the one nearest axial" if nearer else "the one whose file name sorts first"
            warnings.append(
                f"series {series_name}: holds {len(ranked_stacks)} stacks of images of different size or "
                f"orientation, the largest {len(ranked_stacks[0])} images each; read {how} "
                f"(with {ranked_stacks[0][0][0].path.name}) and left out {left} images (e.g. "
                f"{ranked_stacks[1][0][0].path.name}); to read another, put its files in a folder of their own"
            )
        else:
            warnings.append(
                f"series {series_name}: {left} images of another size or orientation "
                f"(e.g. {ranked_stacks[1][0][0].path.name}, a localizer?) were left out"
            )
        items = ranked_stacks[0]
    return items


def _axialness(orientation: tuple | None) -> float:
    """How nearly a stack of slices with ``orientation`` (ImageOrientationPatient's row and column direction
    cosines, or None) is axial: ``|n_z|`` of its slice normal ``row x col``, 1 for an axial plane, 0 for a sagittal or
    coronal one and for a stack without orientation."""
    if orientation is None:
        return 0.0
    row, col = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    length = float(np.linalg.norm(normal))
    return abs(float(normal[2])) / length if length > 0 else 0.0


SERIES_SEARCH_DEPTH: int = 4
"""How many folder levels below a folder without images :func:`refuse_series_below` looks for DICOM files: a DICOM
CD's ``DICOM/<patient>/<study>/<series>/`` lies four below its root."""


def _visible(folder: Path) -> tuple[list[Path], list[Path]]:
    """The files (a DICOMDIR left out) and the folders directly in ``folder``, hidden ones left out, in name order;
    none where it cannot be listed."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError:
        return [], []
    files = [p for p in entries if p.is_file() and p.name.upper() != "DICOMDIR"]
    return files, [p for p in entries if p.is_dir()]


def refuse_series_below(folder: Path) -> None:
    """Refuse, in one line, a ``folder`` that holds no image file itself but DICOM files in a folder below it (at most
    :data:`SERIES_SEARCH_DEPTH` levels down: a DICOM CD's root beside its DICOMDIR index, a patient's or a study's
    folder of series folders), naming the first such folder (breadth first, in name order); nothing otherwise. A
    DICOM series is read from the folder that holds its files."""
    files, level = _visible(folder)
    if any(p.name.lower().endswith(_NIFTI_SUFFIXES + _IMAGE_SUFFIXES) or looks_like_dicom(p) for p in files):
        return
    for _ in range(SERIES_SEARCH_DEPTH):
        below: list[Path] = []
        for sub in level:
            sub_files, sub_folders = _visible(sub)
            if any(looks_like_dicom(p) for p in sub_files):
                raise CovsegError(f"{folder}: holds no images itself, but DICOM files in its subfolder "
                                  f"{sub.relative_to(folder)}; give the folder of one series, e.g. {sub}")
            below.extend(sub_folders)
        level = below


def _off_grid_error(folder: Path, names: Sequence[str], positions: np.ndarray, places: np.ndarray,
                    normal: np.ndarray, step_vec: np.ndarray, steps: np.ndarray) -> CovsegError:
    """The refusal of a series (slice files ``names`` at ``positions``, in slice order) some slice of which lies more
    than ``_GRID_TOLERANCE`` of a step off its place ``positions[0] + places * step_vec`` on the affine's grid: off
    along the slice ``normal`` (uneven spacing), or within its plane (a slice shifted sideways)."""
    step = float(step_vec @ normal)
    off = positions - positions[0] - places[:, None] * step_vec
    along = off @ normal
    across = np.linalg.norm(off - along[:, None] * normal, axis=1)
    worst = int(np.argmax(np.linalg.norm(off, axis=1)))
    if abs(along[worst]) >= across[worst]:
        return CovsegError(
            f"{folder}: the slices are not evenly spaced (steps {steps.min():.3g}..{steps.max():.3g} mm; "
            f"{names[worst]} lies {abs(along[worst]):.3g} mm off a {step:.3g} mm grid), so no single voxel grid holds "
            "them and label maps would not overlay the scan; resample the series to even spacing first (e.g. "
            "dcm2niix, or SimpleITK's ResampleImageFilter) and give the NIfTI file"
        )
    # within their plane the slices lie on a line (one point, or a leaning line under a gantry tilt); a stray first
    # or last slice tilts the affine's line and puts the others off it, so name the slice farthest off the line
    # through the others (median lean per place, median offset)
    in_plane = positions - (positions @ normal)[:, None] * normal
    lean = np.median(np.diff(in_plane, axis=0) / np.diff(places)[:, None], axis=0)
    rest = in_plane - places[:, None] * lean
    rest -= np.median(rest, axis=0)
    stray = int(np.argmax(np.linalg.norm(rest, axis=1)))
    shift = float(np.linalg.norm(rest[stray]))
    if shift <= _GRID_TOLERANCE * step:  # no single stray slice: the series drifts sideways as a whole
        stray, shift = worst, float(across[worst])
    return CovsegError(
        f"{folder}: {names[stray]} lies {shift:.3g} mm off the line of the other slices within its plane (its "
        "ImagePositionPatient is shifted sideways), so no single voxel grid holds the series and label maps would not "
        "overlay the scan; a slice with a wrong ImagePositionPatient, or from another acquisition? remove it, or give "
        "the series as NIfTI"
    )


def _read_dicom_series(folder: Path, paths: Sequence[Path], series_uid: str | None,
                       header_only: bool = False) -> Volume | None:
    """A DICOM series as a :class:`Volume`; with ``header_only`` the refusals of its header pass (unreadable or cut
    short headers, no images, ``series_uid`` missing, colour, multi-frame or non-CT slices, too few slices, slice
    geometry tags missing, invalid or differing) and None, no pixel data read."""
    warnings: list[str] = []
    headers = _dicom_headers(paths)
    if not headers:
        refuse_series_below(folder)  # a DICOM CD's root: its DICOMDIR only lists the series, in folders below
        raise CovsegError(
            f"{folder}: holds no DICOM images, NIfTI or PNG/JPG slices; give a DICOM series folder, "
            "a .nii/.nii.gz file or a folder of 2-D images"
        )
    items = _choose_series(headers, series_uid, folder, warnings)
    first_path = items[0][0].path
    for h, ds in items:
        check_greyscale(ds, h.path)
    if len(items) < MIN_SLICES:
        raise CovsegError(
            f"{first_path}: the series has only {len(items)} slice; a scan needs at least {MIN_SLICES} slices "
            "(give the folder holding the whole series; to predict single slices, give the files themselves, named "
            ".dcm, rather than their folder)"
        )
    # the slice geometry is read from the headers too: a series without it is refused before any scan is segmented
    # a missing orientation leaves its slices readable one by one (stored order); a malformed one does not
    reexport = "; re-export the series with valid geometry tags"
    iop = dicom_floats(items[0][1], "ImageOrientationPatient", 6, first_path,
                       reexport if has_dicom_value(items[0][1], "ImageOrientationPatient") else NO_SERIES_GEOMETRY)
    lengths = np.linalg.norm(iop[:3]), np.linalg.norm(iop[3:])
    normal = np.cross(iop[:3], iop[3:])
    if min(lengths) < 1e-6 or np.linalg.norm(normal) < 1e-6 * lengths[0] * lengths[1]:
        raise CovsegError(f"{first_path}: DICOM ImageOrientationPatient {iop.tolist()} has zero or parallel row and "
                          f"column directions; the slice geometry is unknown{reexport}")
    row_cos, col_cos = iop[:3] / lengths[0], iop[3:] / lengths[1]
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)
    spacing_rc = dicom_floats(items[0][1], "PixelSpacing", 2, first_path, NO_SERIES_GEOMETRY)
    if np.any(spacing_rc <= 0):
        raise CovsegError(f"{first_path}: DICOM PixelSpacing {spacing_rc.tolist()} is not positive; the slice geometry "
                          f"is unknown{NO_SERIES_GEOMETRY}")
    positions = np.stack([dicom_floats(ds, "ImagePositionPatient", 3, h.path, NO_SERIES_GEOMETRY) for h, ds in items])
    for h, ds in items[1:]:
        other = dicom_floats(ds, "PixelSpacing", 2, h.path, NO_SERIES_GEOMETRY)
        if not np.allclose(other, spacing_rc, rtol=1e-4, atol=1e-4):
            raise CovsegError(f"{h.path}: PixelSpacing {other.tolist()} differs from {first_path.name}'s "
                              f"{spacing_rc.tolist()}; the series is not one volume")
    if header_only:
        return None
    proj = positions @ normal
    order = np.argsort(proj, kind="stable")
    items = [items[i] for i in order]
    positions, proj = positions[order], proj[order]
    steps = np.diff(proj)
    dup = np.flatnonzero(steps < _DUPLICATE_MM)
    if dup.size:
        a, b = items[dup[0]][0].path, items[dup[0] + 1][0].path
        raise CovsegError(
            f"{folder}: {a.name} and {b.name} lie at the same slice position ({proj[dup[0]]:.3f} mm; "
            f"{counted(int(dup.size), 'duplicate position')}); remove duplicate files or choose one series/acquisition"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    uneven = bool(np.max(np.abs(steps - median)) > 0.1 * median)
    # each slice's place on the series' grid, counted step by step: a step of about the median spacing is one place, a
    # longer one (missing slices) as many places as it holds median steps. Counted, not read off one median grid, so
    # that a slow drift of the spacing is not absorbed: it shows below, against the grid the affine holds
    places = np.concatenate([[0], np.cumsum(np.rint(steps / median))]).astype(int)
    n_places = int(places[-1]) + 1
    same = np.flatnonzero(np.diff(places) == 0)
    if same.size:
        a, b = items[same[0]][0].path, items[same[0] + 1][0].path
        raise CovsegError(
            f"{folder}: {a.name} and {b.name} lie {steps[same[0]]:.3g} mm apart, under half the series' "
            f"{median:.3g} mm slice spacing, so both fall on one slice of its grid ({counted(int(same.size), 'such pair')}); "
            "remove duplicate files or choose one series/acquisition"
        )
    if n_places - len(items) > len(items):  # more places to fill than slices read: a stray position, not gaps
        largest = int(np.argmax(steps))
        raise CovsegError(
            f"{folder}: its {len(items)} slices span {n_places} places of a {median:.3g} mm grid (a step of "
            f"{steps[largest]:.4g} mm after {items[largest][0].path.name}), so most of the volume would be filled in; "
            "a slice with a wrong ImagePositionPatient, or two acquisitions in one series? remove the stray files or "
            "give the series as NIfTI"
        )
    # the affine's grid: the first slice's position plus whole steps (along the normal, or leaning with a gantry
    # tilt); every slice must lie within a fifth of a step of its place on it, along the normal and within its plane
    step_vec = (positions[-1] - positions[0]) / max(n_places - 1, 1)
    step = float(step_vec @ normal)  # distance between the grid's slice planes
    check_voxel_size((step, spacing_rc[0], spacing_rc[1]), str(folder),
                     "from PixelSpacing and the ImagePositionPatient steps",
                     f"DICOM stores mm: {_unit_hint((step, spacing_rc[0], spacing_rc[1]))}; fix the tags or give the "
                     "series as NIfTI")
    off = positions - positions[0] - places[:, None] * step_vec
    if float(np.linalg.norm(off, axis=1).max()) > _GRID_TOLERANCE * step:
        raise _off_grid_error(folder, [h.path.name for h, _ in items], positions, places, normal, step_vec, steps)
    if gaps.size:
        largest = int(gaps[np.argmax(steps[gaps])])
        warnings.append(
            f"missing slices: {counted(int(gaps.size), 'gap')} longer than {GAP_FACTOR}x the median spacing "
            f"{median:.3g} mm (largest {steps[largest]:.3g} mm after {items[largest][0].path.name}): "
            f"{counted(n_places - len(items), 'slice place')} filled with the nearest acquired slice (nearest-neighbour "
            "along Z, as resampling to an "
            "even grid does) so that the label maps keep the scan's geometry; lung and lesion volumes there are "
            "estimated from those neighbours"
        )
    elif uneven:
        warnings.append(f"non-uniform slice spacing: steps {steps.min():.3g}..{steps.max():.3g} mm, each slice "
                        f"within {_GRID_TOLERANCE:.0%} of a step of a {step:.3g} mm grid, which is used")
    tilt = math.degrees(math.acos(min(1.0, abs(float(step_vec @ normal)) / float(np.linalg.norm(step_vec)))))
    if tilt > _TILT_DEGREES:
        warnings.append(f"gantry tilt of {tilt:.1f} degrees: the geometry is kept as a sheared affine")

    # pixel data, in slice order
    slices = []
    digest = hashlib.sha256()
    notes: dict[str, int] = {}  # each rescale warning and how many slices had it, in order of first sight
    for h, _ in items:
        raw = h.path.read_bytes()
        digest.update(raw)
        ds = read_dataset(h.path, data=raw)
        pixels = slice_pixels(ds, h.path)
        if pixels.shape != (items[0][0].rows, items[0][0].cols):
            raise CovsegError(f"{h.path}: pixel data has shape {pixels.shape}, not Rows x Columns "
                              f"{items[0][0].rows}x{items[0][0].cols}; replace the file")
        data, slice_notes = rescale_to_hu(ds, pixels, h.path)
        for note in slice_notes:
            notes[note] = notes.get(note, 0) + 1
        slices.append(data)
    stack = np.stack(slices)  # (k, row, col)
    if n_places != len(slices):  # missing slices: each place of the grid takes its nearest acquired slice
        nearest = np.abs(np.arange(n_places)[:, None] - places[None, :]).argmin(axis=1)
        stack = stack[nearest]
    warnings.extend(f"{count} of {len(items)} slices: {note}" for note, count in notes.items())

    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing_rc[1]  # i: along a row, column to column
    lps[:3, 1] = col_cos * spacing_rc[0]  # j: down a column, row to row
    lps[:3, 2] = step_vec
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    volume = _make_volume(stack.transpose(2, 1, 0), affine, is_hu=True, warnings=warnings, source=str(folder),
                          sha256=digest.hexdigest(), kind="dicom", series_uid=items[0][0].uid or None)
    _check_slice_counts(volume.hu.shape, folder)
    return volume


# --------------------------------------------------------------------------------------------
# 2-D image stacks


def _read_image_plane(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise CovsegError(f"{path}: holds {im.n_frames} pages; save one slice per file")
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "P", "PA", "LA"):
                rgb = np.asarray(im.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
                    raise CovsegError(f"{path}: is a colour image, not a CT slice; give greyscale slices")
                return np.array(rgb[..., 0])
            if mode == "1":
                raise CovsegError(f"{path}: is a 1-bit image, not a CT slice; give greyscale slices")
            return np.array(im)
    except CovsegError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise CovsegError(f"{path}: cannot be read as an image ({exc}); replace the file") from None


def check_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float] | None:
    """A ``--spacing Z Y X`` given in mm as three floats (None stays None); refused in one line when not three positive
    numbers. Whether the numbers are plausible (:func:`check_voxel_size`) is checked where they are used: for a folder
    of 2-D images (a NIfTI or DICOM scan carries its own voxel size, and ignores them with a warning)."""
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise CovsegError(f"--spacing {spacing!r}: give three positive numbers Z Y X in mm (slice, row, column)")
    return values  # type: ignore[return-value]


def _read_image_stack(folder: Path, paths: Sequence[Path], spacing: tuple[float, float, float] | None,
                      header_only: bool = False) -> Volume | None:
    """A folder of 2-D slices as a :class:`Volume`; with ``header_only`` the refusals of its ``spacing`` and slice
    count and None, no slice read."""
    if spacing is None:
        raise CovsegError(
            f"{folder}: a folder of 2-D images carries no voxel size; pass --spacing Z Y X (mm between slices, "
            "rows and columns)"
        )
    check_voxel_size(spacing, "--spacing " + " ".join(f"{v:g}" for v in spacing), f"given for {folder}")
    if header_only:
        if len(paths) < MIN_SLICES:
            raise CovsegError(f"{folder}: has {len(paths)} axial slice; a scan needs at least {MIN_SLICES} slices")
        return None
    planes = []
    for p in paths:
        plane = _read_image_plane(p)
        if planes and plane.shape != planes[0].shape:
            raise CovsegError(f"{p}: is {plane.shape[0]}x{plane.shape[1]} but {paths[0].name} is "
                              f"{planes[0].shape[0]}x{planes[0].shape[1]}; give slices of one size")
        planes.append(plane)
    depths = {plane.dtype for plane in planes}
    if len(depths) > 1:
        raise CovsegError(f"{folder}: its slices mix sample types ({', '.join(sorted(map(str, depths)))}); give slices "
                          "saved alike (one bit depth)")
    stack = np.stack(planes)  # (slice, row, col)
    pngs = all(p.suffix.lower() == ".png" for p in paths)  # Pillow loads 16-bit PNGs as int32 (mode "I")
    sixteen_bit = pngs and stack.dtype == np.int32 and stack.min() >= 0
    grey = scale_stored_grey(stack, sixteen_bit=sixteen_bit)
    warnings: list[str] = []
    raw = raw_ct_warning(stack, folder.name, sixteen_bit) if grey is not None else None
    if raw is not None:
        warnings.append(raw)
    stack = (stack if grey is None else grey).astype(np.float32)  # display grey values as single slices take them
    stack = _finite(stack, folder, warnings)  # float TIFFs may hold NaN
    is_hu = bool(stack.size) and float(stack.min()) < HU_MIN_THRESHOLD  # signed / float TIFF holding HU
    sz, sy, sx = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])  # like axial DICOM: columns -> patient left, rows -> posterior
    volume = _make_volume(stack.transpose(2, 1, 0), affine, is_hu=is_hu, warnings=warnings, source=str(folder),
                          sha256=_sha256_files(paths), kind="images")
    _check_slice_counts(volume.hu.shape, folder)
    return volume


# --------------------------------------------------------------------------------------------
# entry point


def _check_slice_counts(shape: Sequence[int], path: Path) -> None:
    """Refuse a canonical ``(Z, Y, X)`` shape with fewer than :data:`MIN_SLICES` axial slices, or a single coronal or
    sagittal plane stored as a 3-D volume."""
    if shape[0] < MIN_SLICES:
        raise CovsegError(
            f"{path}: has {shape[0]} axial slice; a scan needs at least {MIN_SLICES} slices"
        )
    if min(shape[1:]) < MIN_SLICES:  # one coronal or sagittal plane stored as a 3-D volume
        plane = "coronal" if shape[1] < MIN_SLICES else "sagittal"
        raise CovsegError(f"{path}: holds a single {plane} plane (axial slices of {shape[1]}x"
                          f"{shape[2]} voxels), not a scan; give the whole volume, or the plane as a 2-D "
                          "image to predict it as a slice")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def read_volume(path: str | Path, series_uid: str | None = None,
                spacing: Sequence[float] | None = None) -> Volume:
    """Read a CT scan into a canonical :class:`Volume` (see the module docstring for the orientation).

    ``path`` is one of:

    * a NIfTI file ``.nii`` / ``.nii.gz`` (scl_slope/scl_inter applied; HU when its minimum is below -100; stored
      integers within 0..:data:`~covseg.intensity.RAW_CT_MAX` reaching above 255, raw CT numbers without the header's
      scl_inter, refused; an affine in metres or micrometres, by its xyzt_units, is taken in mm);
    * a folder holding a DICOM series (files with any name, told by a ``.dcm`` suffix or the ``DICM`` preamble;
      non-DICOM files such as a README, a preview image or a converted NIfTI beside the series are skipped),
      or one DICOM file (refused: a single slice is not a scan). Several series: ``series_uid`` picks one,
      else the one with the most images is read and a warning names the others. Slices are ordered by
      ImagePositionPatient projected on the slice normal (row x column direction cosines), never by file
      name; RescaleSlope/RescaleIntercept applied (see :func:`covseg.dicom.read_dicom_slice`); Z spacing is the median
      step between slice positions, in-plane spacing is PixelSpacing;
    * a folder of 2-D PNG/JPG/TIFF images, read in name order (numbers numerically) as slices from inferior
      to superior, each shown radiologically (anterior up, patient right on the left). Needs
      ``spacing = (Z, Y, X)`` in mm. 8-/16-bit grey values are not HU: they are scaled to [0, 1] (/ 255, / 65535,
      as single slices are) and ``is_hu`` is False; signed or float slices holding HU keep them.

    ``spacing`` is ignored (with a warning) for NIfTI and DICOM, which carry their own; ``series_uid`` is ignored (with
    a warning) for anything but DICOM.

    Raises :class:`CovsegError` (one line, naming the file) for unreadable or truncated files, colour or
    multi-sample images, non-CT modalities, fewer than :data:`MIN_SLICES` slices, duplicate slice
    positions, DICOM slices that lie off any even grid (more than a fifth of a step off their place on it, along the
    slice normal or within the slice plane) or two on one place of it, CT data without rescale tags whose values
    are not HU, and voxel sizes (read, or ``spacing``) outside :data:`SLICE_MM_RANGE` / :data:`PIXEL_MM_RANGE`
    (metres or micrometres taken for mm, see :func:`check_voxel_size`). Missing slices (a step above
    :data:`GAP_FACTOR` x the median) are filled, on the series' grid, with their nearest acquired slice, so that label
    maps written like the input overlay it (and the lungs stay connected across the gap); they, slightly uneven
    spacing, other series and gantry tilt are ``warnings``.
    """
    with quiet_file_readers():
        return _read_volume(Path(path), series_uid, spacing)


@contextlib.contextmanager
def quiet_file_readers() -> Iterator[None]:
    """Keep nibabel's and pydicom's own messages (nibabel logs "pixdim[1,2,3] should be positive" straight to
    stderr, pydicom warns about each odd tag) off the terminal while a scan is read: covseg checks what matters
    itself and reports it as one line or in ``Volume.warnings``."""
    nibabel_log = logging.getLogger("nibabel.global")
    level = nibabel_log.level
    nibabel_log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings_module.catch_warnings():
            warnings_module.filterwarnings("ignore", module=r"pydicom(\.|$)")
            yield
    finally:
        nibabel_log.setLevel(level)


def check_volume(path: str | Path, series_uid: str | None = None, spacing: Sequence[float] | None = None) -> None:
    """Refuse, in one line and without reading voxel or pixel data, a scan that :func:`read_volume` would refuse on
    its headers alone, so that several scans can be checked before the first is segmented.

    A NIfTI gets every check its header decides (voxel type, shape, voxel sizes, affine, slice counts); a DICOM
    folder its header pass (unreadable or cut-short headers, no images, ``series_uid`` not there, colour, multi-frame
    or non-CT slices, too few slices, slice geometry tags missing, invalid or differing); a folder of 2-D images its
    ``spacing`` and slice count. What still fails only when the scan is read: a NIfTI's truncated or non-finite voxel
    data, a DICOM series' duplicate or off-grid slice positions and pixel data, and a 2-D slice that cannot be read or
    differs in size.
    """
    with quiet_file_readers():
        _read_volume(Path(path), series_uid, spacing, header_only=True)


def _read_volume(path: Path, series_uid: str | None, spacing: Sequence[float] | None,
                 header_only: bool = False) -> Volume | None:
    """:func:`read_volume` itself; with ``header_only`` :func:`check_volume`'s checks, returning None."""
    given = check_spacing(spacing)
    if not path.exists():
        raise CovsegError(f"{path}: not found; give a DICOM series folder, a .nii/.nii.gz file or a folder of images")
    if path.is_file():
        if _is_nifti(path):
            volume = _read_nifti(path, header_only)
        elif path.suffix.lower() in _IMAGE_SUFFIXES:
            raise CovsegError(f"{path}: is a single 2-D image; give the folder holding all slices (and --spacing)")
        else:
            ds = read_dataset(path, header_only=True)
            if ds is None:
                raise CovsegError(
                    f"{path}: is not a DICOM or NIfTI file; give a DICOM series folder, a .nii/.nii.gz file "
                    "or a folder of images"
                )
            volume = _read_dicom_series(path.parent, [path], series_uid, header_only)
    else:
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"),
            key=lambda p: p.name,
        )
        nifti = [p for p in files if _is_nifti(p)]
        images = [p for p in files if p.suffix.lower() in _IMAGE_SUFFIXES]
        others = [p for p in files if not _is_nifti(p) and p.suffix.lower() not in _IMAGE_SUFFIXES]
        # DICOM files of any name are told by their content, so that a preview image or a converted NIfTI left
        # beside a series named by UID (no .dcm suffix) is skipped rather than taken for the scan
        has_dicom = any(looks_like_dicom(p) for p in others)
        if images and not has_dicom:
            from covseg.datasets import list_images

            ordered = [p for p in list_images(path) if p.suffix.lower() in _IMAGE_SUFFIXES]
            volume = _read_image_stack(path, ordered, given, header_only)
            given = None
        elif nifti and not has_dicom:
            raise CovsegError(f"{path}: holds NIfTI files ({nifti[0].name}, ...); give the .nii/.nii.gz file itself")
        else:
            volume = _read_dicom_series(path, others, series_uid, header_only)
    if volume is None:  # header_only
        return None
    if given is not None and not np.allclose(given, volume.spacing, rtol=1e-3):
        volume.warnings.append(
            f"--spacing {given} ignored: {path.name} carries its own voxel size {volume.spacing} mm"
        )
    if series_uid is not None and volume.kind != "dicom":
        volume.warnings.append(f"--series {series_uid} ignored: {path.name} is not a DICOM series")
    return volume
