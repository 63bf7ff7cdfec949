"""Classical (threshold + morphology) lung masks of CT volumes in Hounsfield units.

Shape and label conventions: input ``hu`` is ``(Z, Y, X)`` float HU in the canonical orientation of
:mod:`covseg.volumes` (Z inferior->superior, Y anterior->posterior, X patient right->left); the mask is
``(Z, Y, X)`` uint8 with 0 outside the lungs, :data:`RIGHT_LUNG` (1) the patient's right lung, which lies at
the *low* column indices (the left half of a radiologically displayed slice), and :data:`LEFT_LUNG` (2) the
patient's left lung at the high column indices.

Method (scipy.ndimage only), on a copy block-averaged to about :data:`COARSE_MM` per voxel, then refined:

1. air = HU below :data:`AIR_HU` (-320); air connected, within its axial slice, to the image border is
   outside the body (room air, the table's surroundings) and dropped; the body is, per axial slice, the largest
   connected region of the rest (the patient: a table or blanket separated from it by air is left out), and its
   midline (:func:`body_midline`) is the mean column of all its voxels, so that a thin table wider than the
   patient, touching it, moves the midline little (the mean of the columns holding any body followed the table);
2. enclosed air that cannot be lung is dropped: a 3-D component lying mostly outside the body, or one spanning
   at least 90 % of the body's width in at least 75 % of its slices (the ~ -900 HU foam core of a scanner table
   inside its dense shell, which runs through every slice and, on a scan reaching well below the lungs, was the
   largest component and was taken for a lung; two touching lungs span that much at their widest slices only);
   small enclosed air pockets (< 0.5 % of the largest) are dropped; the trachea and main bronchi are traced
   from the top slice down, slice by slice, as small (< :data:`AIRWAY_MAX_MM2`) air regions near the
   midline and their continuations, until they enter a lung, and removed;
3. the largest 3-D component is a lung, and so is the largest other component that lies on the other side of the
   body's midline (:func:`body_midline`), has its centre within the first's Z range and its top above the first's
   lowest third (gas below the diaphragm, such as a stomach bubble beside a single lung, does not reach that high),
   and has at least 10 % of its size; a single component spanning both sides (lungs touching at the
   anterior/posterior junction) whose smaller side holds at least 10 % of its larger side (the same rule: one
   lung mostly airless still counts) is cut, slice by slice, at the column of least lung near the midline and
   between the two sides' centres of mass, when those columns hold at most 45 % of the fullest column's lung (a
   junction; one lung crossing the midline is not cut);
4. per lung and per axial slice: holes filled, then a closing with a disc (an octagon) of radius
   ``closing_mm`` (default :data:`CLOSING_MM`, 15 mm) and holes filled again, so that tissue denser than
   the threshold (consolidation ~ +20 HU, vessels) stays in the lung: inside it, or as a dent in its
   wall narrower than about ``2 * closing_mm`` (a +20 HU ball of 7 mm radius centred on the wall of the
   test phantom ends up about 85 % inside; the rest is its rim at the wall);
5. back at full resolution, the voxels within one coarse voxel of each lung's boundary are decided by the
   full-resolution threshold; the interior and the filled voxels are kept as they are, and air not connected to
   them is dropped (a lung one or two coarse slices thick, a thin slab of thin slices, has no interior along Z: its
   interior within the slices stands in for it there).

Limits: dense lesions forming a dent wider/deeper than the closing along the pleura, large pleural
effusions (outside the lung by definition) and dents seen only along Z (a consolidation on the diaphragm) are
left out: the quantification (:mod:`covseg.quantify`) therefore counts GGO and consolidation voxels outside the mask as lung.
A lung touching the image border (a field of view cut through the lung) is taken for outside air. A table
touching the patient and narrower than 90 % of the body (arms down at its sides, a very wide patient) is not
recognised as such by its width (it still loses to the lungs when smaller than them). A fully
airless lung has no air to start from and is missed, and so is one aerated in its lowest third only (its air is
taken for gas below the diaphragm; :func:`check_lung_mask` then warns that one lung is missing). Enclosed gas (air in
the oesophagus or the stomach) parted from a lung by a wall thinner than about one block (:data:`COARSE_MM`: one
slice of 1 mm or less, one pixel of 0.7 mm) is averaged into the air of its block and joins that lung
(a wall of two such voxels can too, where a block edge splits it). The airway tracing starts in the most superior
slice, so image stacks given from superior to inferior lose it (no harm beyond the trachea staying in the mask; the
phantom's whole trachea and bronchi then stay). NIfTI and DICOM scans reach this function in the canonical order by
their affine or slice positions, whatever their stored order; only an image stack, read in name order, can be upside
down.
Slightly more mediastinal tissue may be included at the hila, where vessels enter the lung.

Speed: about 1.5 s for a 300 x 512 x 512 volume (1.0 x 0.7 x 0.7 mm) on one CPU core.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "AIR_HU",
    "COARSE_MM",
    "CLOSING_MM",
    "AIRWAY_MAX_MM2",
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "lung_mask",
    "check_lung_coverage",
    "check_lung_mask",
    "body_midline",
]

AIR_HU: float = -320.0
"""Voxels below this many Hounsfield units are air or aerated lung."""
COARSE_MM: float = 2.0
"""Target voxel size (mm) of the block-averaged copy the heavy steps run on."""
CLOSING_MM: float = 15.0
"""Default radius (mm) of the in-plane closing that keeps dense lesions on the lung wall inside."""
AIRWAY_MAX_MM2: float = 800.0
"""Largest axial cross-section (mm^2) of an air region still traced as trachea / main bronchus."""
RIGHT_LUNG: int = 1
LEFT_LUNG: int = 2

_MIN_POCKET_FRACTION = 0.005
_SECOND_LUNG_FRACTION = 0.1
_JUNCTION_FRACTION = 0.45  # the most lung a cut through touching lungs may cross, as a share of the fullest column
_TABLE_WIDTH_FRACTION = 0.9  # an air component this wide, relative to the body, in most slices is no lung
_TABLE_SLICE_FRACTION = 0.75  # "most slices" (touching lungs of a thin patient: ~0.9 at their widest only)
_SECOND_LUNG_REACH = 1.0 / 3.0  # a second lung reaches above this share of the first lung's Z range (from below)
_TINY_AREA_MM2 = 1000.0  # 10 cm^2: a lung's largest axial cross-section is 50-250 cm^2

_INPLANE4 = np.zeros((3, 3, 3), bool)
_INPLANE4[1] = ndimage.generate_binary_structure(2, 1)
_INPLANE8 = np.zeros((3, 3, 3), bool)
_INPLANE8[1] = True


def _factors(spacing: Sequence[float]) -> tuple[int, int, int]:
    return tuple(max(1, int(round(COARSE_MM / float(s)))) for s in spacing)  # type: ignore[return-value]


def _block_mean(hu: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mean over ``f``-sized blocks (the volume is edge-padded to a multiple of ``f``), float32."""
    if f == (1, 1, 1):
        return np.asarray(hu, dtype=np.float32)
    pad = [(0, (-n) % k) for n, k in zip(hu.shape, f)]
    if any(p for _, p in pad):
        hu = np.pad(hu, pad, mode="edge")
    z, y, x = hu.shape
    out = hu.reshape(z // f[0], f[0], y, x).sum(axis=1, dtype=np.float32)
    out = out.reshape(z // f[0], y // f[1], f[1], x).sum(axis=2)
    out = out.reshape(z // f[0], y // f[1], x // f[2], f[2]).sum(axis=3)
    out /= np.float32(f[0] * f[1] * f[2])
    return out


def _upsample(a: np.ndarray, f: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour inverse of :func:`_block_mean`, cropped to ``shape``."""
    if f == (1, 1, 1):
        return a
    zc, yc, xc = a.shape
    big = np.broadcast_to(a[:, None, :, None, :, None], (zc, f[0], yc, f[1], xc, f[2]))
    return big.reshape(zc * f[0], yc * f[1], xc * f[2])[: shape[0], : shape[1], : shape[2]]


def _outside_air(air: np.ndarray) -> np.ndarray:
    """Air connected, within its axial slice, to the slice border."""
    lab, n = ndimage.label(air, structure=_INPLANE8)
    border = np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()])
    lut = np.zeros(n + 1, bool)
    lut[border] = True
    lut[0] = False
    return lut[lab]


def _body(outside: np.ndarray) -> np.ndarray:
    """Per axial slice, the largest 4-connected region of voxels not ``outside``: the patient (lungs included); a
    table, blanket or arm separated from it by air is left out (a table touching the patient stays in)."""
    body = np.zeros_like(outside)
    st = ndimage.generate_binary_structure(2, 1)
    for z in range(outside.shape[0]):
        lab, n = ndimage.label(~outside[z], structure=st)
        if n:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            body[z] = lab == int(np.argmax(sizes))
    return body


def _midline(body: np.ndarray) -> float:
    """The body's midline column: the mean column of the ``body`` voxels (weighted by area, so that a thin table
    wider than the patient moves it little)."""
    cols = np.nonzero(body.any(axis=1))[1]
    if cols.size == 0:
        return (body.shape[2] - 1) / 2.0
    per_x = body.sum(axis=(0, 1), dtype=np.float64)
    return float((per_x * np.arange(body.shape[2])).sum() / per_x.sum())


def body_midline(hu: np.ndarray, spacing: Sequence[float], threshold: float = AIR_HU) -> float:
    """The column (full-resolution X index, fractional) of the body's midline, as :func:`lung_mask` finds it.

    Shape: ``hu`` ``(Z, Y, X)`` Hounsfield units in the canonical orientation; ``spacing`` ``(Z, Y, X)`` mm.
    The body is, in each slice, the largest connected region of everything but the air (below ``threshold``)
    connected, within the slice, to the image border (so a scanner table separated from the patient by air is
    left out); the midline is the mean column of all its voxels (area-weighted: a table touching the patient,
    thin, moves it little). Columns below it are the patient's right side. A volume with no body gives the
    middle column.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a (Z, Y, X) volume, got shape {hu.shape}")
    f = _factors(tuple(float(s) for s in spacing))
    mid = _midline(_body(_outside_air(_block_mean(hu, f) < threshold)))
    return min(mid * f[2] + (f[2] - 1) / 2.0, hu.shape[2] - 1.0)  # coarse column k covers columns k*f .. k*f+f-1


def _not_lung(lab: np.ndarray, sizes: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Which air components of ``lab`` (3-D labels, ``sizes`` their voxel counts) cannot be lung, as a boolean
    array indexed by label: those lying mostly (> half their voxels) outside the ``body`` (:func:`_body`), and
    those spanning at least :data:`_TABLE_WIDTH_FRACTION` of the body's width in at least
    :data:`_TABLE_SLICE_FRACTION` of their slices (the scanner table's foam core under the patient)."""
    n = sizes.size - 1
    bad = np.zeros(n + 1, bool)
    if n == 0:
        return bad
    idx = np.arange(1, n + 1)
    in_body = ndimage.sum_labels(body, lab, idx)
    bad[1:] = in_body < 0.5 * sizes[1:]
    bprof = body.any(axis=1)  # (Z, X)
    brows = bprof.any(axis=1)
    bw = np.where(brows, bprof.shape[1] - np.argmax(bprof[:, ::-1], axis=1) - np.argmax(bprof, axis=1), 0)
    for c, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or bad[c]:
            continue
        prof = (lab[sl] == c).any(axis=1)  # (z, x) within the bounding box
        rows = prof.any(axis=1)
        w = prof.shape[1] - np.argmax(prof[:, ::-1], axis=1) - np.argmax(prof, axis=1)
        wide = w[rows] >= _TABLE_WIDTH_FRACTION * bw[sl[0]][rows]
        bad[c] = wide.mean() >= _TABLE_SLICE_FRACTION
    return bad


def _airways(cand: np.ndarray, mid_x: float, half_width: float, max_px: float) -> np.ndarray:
    """Trace trachea / main bronchi from the most superior slice downwards (see module docstring)."""
    airway = np.zeros_like(cand)
    zs = np.flatnonzero(cand.any(axis=(1, 2)))
    if zs.size == 0:
        return airway
    st = ndimage.generate_binary_structure(2, 2)
    top = int(zs[-1])
    lab, n = ndimage.label(cand[top], structure=st)
    if n == 0:
        return airway
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(lab), lab, idx)
    cx = np.asarray([c[1] for c in ndimage.center_of_mass(np.ones_like(lab), lab, idx)])
    seeds = idx[(sizes <= max_px) & (np.abs(cx - mid_x) <= 0.15 * half_width)]
    prev = np.isin(lab, seeds)
    airway[top] = prev
    for z in range(top - 1, -1, -1):
        if not prev.any():
            break
        lab, n = ndimage.label(cand[z], structure=st)
        hit = np.unique(lab[ndimage.binary_dilation(prev, structure=st) & (lab > 0)])
        if hit.size == 0:
            break
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, hit)
        cur = np.isin(lab, hit[sizes <= max_px])
        airway[z] = cur
        prev = cur
    return airway


def _assign_sides(cand: np.ndarray, mid_x: float, half_width: float) -> np.ndarray:
    """Pick the lungs among the air components of ``cand``: coarse (Z, Y, X) uint8 0 / 1 right / 2 left."""
    out = np.zeros(cand.shape, np.uint8)
    lab, n = ndimage.label(cand)
    if n == 0:
        return out
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    order = np.argsort(sizes, kind="stable")[::-1][:n]  # component ids, largest first
    xs = np.arange(cand.shape[2])

    def right_fraction(c: int) -> float:
        per_x = (lab == c).sum(axis=(0, 1))
        return float(per_x[xs < mid_x].sum()) / float(max(per_x.sum(), 1))

    c1 = int(order[0])
    f1 = right_fraction(c1)
    # both lungs in one component (touching at the junction): cut it when its smaller side would count as a second
    # lung by the rule for two separate components, at least _SECOND_LUNG_FRACTION of the larger side
    if min(f1, 1.0 - f1) >= _SECOND_LUNG_FRACTION * max(f1, 1.0 - f1):
        comp = lab == c1
        profile = comp.sum(axis=1).astype(np.float64)  # (Z, X)
        per_x = profile.sum(axis=0)
        right_x, left_x = xs < mid_x, xs >= mid_x
        # the cut lies between the two sides' centres of mass (and near the midline): never beyond a small lung
        com_r = float((per_x * xs)[right_x].sum() / max(per_x[right_x].sum(), 1.0))
        com_l = float((per_x * xs)[left_x].sum() / max(per_x[left_x].sum(), 1.0))
        lo = max(0, int(mid_x - 0.3 * half_width), int(np.ceil(com_r)))
        hi = min(cand.shape[2], int(mid_x + 0.3 * half_width) + 1, int(np.floor(com_l)) + 1)
        if hi <= lo:
            lo, hi = int(np.ceil(com_r)), int(np.floor(com_l)) + 1
        score = profile[:, lo:hi] + 1e-3 * np.abs(xs[lo:hi] - mid_x)
        cut = lo + np.argmin(score, axis=1)  # per slice: right lung at x < cut
        # a junction is a narrowing: one lung crossing the midline (a shifted mediastinum) has none between the
        # centres, and its cut would run through it (phantoms: touching lungs 0.004-0.31 of the fullest column,
        # one lung 9-28 % past the midline 0.62-0.82)
        junction = float(profile[np.arange(len(cut)), cut].sum())
        if junction <= _JUNCTION_FRACTION * per_x.max():
            right = xs[None, None, :] < cut[:, None, None]
            out[comp & right] = 1
            out[comp & ~right] = 2
            return out
    out[lab == c1] = 1 if f1 >= 0.5 else 2
    # the second lung: the largest other component that passes the tests, not just the second largest (which can
    # be bowel gas below the lungs, or an air pocket on the first lung's side)
    z1 = np.flatnonzero((lab == c1).any(axis=(1, 2)))
    for c2 in (int(c) for c in order[1:]):
        if sizes[c2] < _SECOND_LUNG_FRACTION * sizes[c1]:
            break  # the rest are smaller still
        f2 = right_fraction(c2)
        z2 = ndimage.center_of_mass(lab == c2)[0]
        top2 = int(np.flatnonzero((lab == c2).any(axis=(1, 2)))[-1])
        # the lungs' apices lie level: a pocket that stays in the first lung's lowest third is gas below the
        # diaphragm (a stomach bubble beside a single lung after pneumonectomy), not the other lung
        reaches_up = top2 >= z1[0] + _SECOND_LUNG_REACH * (z1[-1] - z1[0])
        if (f2 >= 0.5) != (f1 >= 0.5) and z1[0] <= z2 <= z1[-1] and reaches_up:
            out[lab == c2] = 1 if f2 >= 0.5 else 2
            break
    return out


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    for i in range(r):
        m = ndimage.binary_dilation(m, structure=_INPLANE8 if i % 2 else _INPLANE4)
    return m


def _erode(m: np.ndarray, r: int) -> np.ndarray:
    for i in range(r):
        m = ndimage.binary_erosion(m, structure=_INPLANE8 if i % 2 else _INPLANE4, border_value=1)
    return m


def _close_lung(m: np.ndarray, r: int) -> np.ndarray:
    """Per axial slice: fill holes, close with an octagon of radius ``r`` px, fill holes (on a padded crop)."""
    out = np.zeros_like(m)
    ys, xs = np.flatnonzero(m.any(axis=(0, 2))), np.flatnonzero(m.any(axis=(0, 1)))
    if ys.size == 0:
        return out
    pad = r + 2
    y0, y1 = max(0, ys[0] - pad), min(m.shape[1], ys[-1] + pad + 1)
    x0, x1 = max(0, xs[0] - pad), min(m.shape[2], xs[-1] + pad + 1)
    crop = np.pad(m[:, y0:y1, x0:x1], ((0, 0), (pad, pad), (pad, pad)))
    crop = ndimage.binary_fill_holes(crop, structure=_INPLANE4)
    if r > 0:
        crop = _erode(_dilate(crop, r), r)
        crop = ndimage.binary_fill_holes(crop, structure=_INPLANE4)
    out[:, y0:y1, x0:x1] = crop[:, pad:-pad, pad:-pad]
    return out


def _inplane_interior(region: np.ndarray) -> np.ndarray:
    """``region``'s voxels whose 8 in-plane neighbours are all in it (the whole region where none are)."""
    inner = ndimage.binary_erosion(region, structure=_INPLANE8, border_value=0)
    return inner if inner.any() else region


def lung_mask(hu: np.ndarray, spacing: Sequence[float], closing_mm: float = CLOSING_MM,
              threshold: float = AIR_HU) -> np.ndarray:
    """Segment the right and left lung of a CT volume.

    Shape: ``hu`` ``(Z, Y, X)`` Hounsfield units in the canonical orientation (see the module docstring);
    ``spacing`` ``(Z, Y, X)`` mm. Returns ``(Z, Y, X)`` uint8: 0 outside, 1 right lung (low X), 2 left lung
    (high X). Dense lesions inside the lung or in narrow dents of its wall are included; see the module
    docstring for the method and its limits. No lung found gives an all-zero mask (see
    :func:`check_lung_mask`). Works on two or more slices.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be a (Z, Y, X) volume, got shape {hu.shape}")
    spacing = tuple(float(s) for s in spacing)
    f = _factors(spacing)
    cs = tuple(s * k for s, k in zip(spacing, f))
    coarse = _block_mean(hu, f)
    air = coarse < threshold
    outside = _outside_air(air)
    inside = air & ~outside
    out = np.zeros(hu.shape, np.uint8)
    if not inside.any():
        return out

    body = _body(outside)
    body_x = np.flatnonzero(body.any(axis=(0, 1)))
    mid_x = _midline(body)
    half_width = (body_x[-1] - body_x[0] + 1) / 2.0

    lab, n = ndimage.label(inside)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    sizes[_not_lung(lab, sizes, body)] = 0  # the scanner table's foam core and the like
    if not sizes.any():
        return out
    keep = sizes >= _MIN_POCKET_FRACTION * sizes.max()
    keep[0] = False
    cand = keep[lab]
    airway = _airways(cand, mid_x, half_width, AIRWAY_MAX_MM2 / (cs[1] * cs[2]))
    cand &= ~airway
    sides = _assign_sides(cand, mid_x, half_width)

    r = max(0, int(round(closing_mm / ((cs[1] + cs[2]) / 2.0))))
    core = np.zeros(coarse.shape, np.uint8)
    band = np.zeros(coarse.shape, np.uint8)
    seed = np.zeros(coarse.shape, bool)  # what the full-resolution lungs must touch (islands elsewhere are dropped)
    z_st = _INPLANE8.copy()
    if f[0] > 1:
        z_st[0, 1, 1] = z_st[2, 1, 1] = True
    for k in (RIGHT_LUNG, LEFT_LUNG):
        region = _close_lung(sides == k, r) & (core == 0)
        if not region.any():
            continue
        # outside the volume counts as not lung: a lung that ends inside the first or last block of slices has its
        # edge block decided at full resolution too (with border_value=1 the block was interior, its tissue lung)
        interior = ndimage.binary_erosion(region, structure=z_st, border_value=0)
        filled = region & ~air  # dense voxels taken in by hole filling / closing
        mine = (interior | filled) & (core == 0)
        core[mine] = k
        # a lung one or two coarse slices thick (a thin slab, e.g. 2 slices of 1 mm) has no interior along Z: its
        # interior within the slices seeds it, else the step below dropped it as an island (the mask came out empty)
        seed |= mine if interior.any() else mine | _inplane_interior(region)
        ring = ndimage.binary_dilation(region, structure=z_st) & ~interior & ~outside & ~airway
        band[ring & (band == 0)] = k
    if not band.any():
        return out
    # full resolution, inside the lungs' bounding box: refined boundary, islands dropped
    zs, ys, xs = (np.flatnonzero(band.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    box_c = tuple(slice(a[0], a[-1] + 1) for a in (zs, ys, xs))
    box = tuple(slice(s.start * k, min(s.stop * k, n)) for s, k, n in zip(box_c, f, hu.shape))
    shape = tuple(s.stop - s.start for s in box)
    part = np.where(hu[box] < threshold, _upsample(band[box_c], f, shape), np.uint8(0))
    up_core = _upsample(core[box_c], f, shape)
    np.copyto(part, up_core, where=up_core > 0)
    lab, n = ndimage.label(part > 0)
    keep = np.zeros(n + 1, bool)
    keep[lab[_upsample(seed[box_c], f, shape)]] = True
    keep[0] = False
    part[~keep[lab]] = 0
    out[box] = part
    return out


def check_lung_coverage(mask: np.ndarray) -> list[str]:
    """A warning (one line) where a :func:`lung_mask` result ``(Z, Y, X)``, in canonical orientation (slice 0 the most
    inferior), reaches the scan's top or bottom axial slice: the scan may cut the lungs off there, and every volume
    and percentage is then of the part scanned (a slab of a few slices reads as the whole lungs). Empty otherwise,
    and for an empty mask (:func:`check_lung_mask` tells that)."""
    mask = np.asarray(mask)
    ends = [name for z, name in ((-1, "top (superior)"), (0, "bottom (inferior)")) if mask[z].any()]
    if not ends:
        return []
    where = " and ".join(ends) + (" slices" if len(ends) == 2 else " slice")
    return [f"the lungs reach the scan's {where}, so the scan may not hold the whole lungs: the volumes and "
            "percentages are of the part scanned"]


def check_lung_mask(mask: np.ndarray, spacing: Sequence[float] | None = None, is_hu: bool = True) -> list[str]:
    """Warnings (one line each) about a :func:`lung_mask` result; empty when it looks like two lungs.

    Reported: an empty mask, only one lung, and a lung whose largest axial cross-section is tiny (below
    10 cm^2 when ``spacing`` ``(Z, Y, X)`` mm is given, else below 0.2 % of the slice's pixels). An empty mask of a
    scan given as grey values (``is_hu`` False: an image stack, a NIfTI without air below -100), read back through the
    lung window, asks about that window rather than about Hounsfield units.
    """
    mask = np.asarray(mask)
    if not mask.any():
        if not is_hu:
            return ["no lung found: the lung mask is empty (grey values are read as a chest CT in the lung window, "
                    "lungs dark grey inside a light body; a soft-tissue window or values scaled from the whole CT "
                    "range show no lungs: give the scan in HU, as NIfTI or DICOM, or as lung-windowed slices)"]
        return ["no lung found: the lung mask is empty (is this a chest CT in Hounsfield units?)"]
    warnings = []
    names = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
    present = [k for k in names if np.any(mask == k)]
    if len(present) == 1:
        other = names[LEFT_LUNG if present[0] == RIGHT_LUNG else RIGHT_LUNG]
        warnings.append(f"only the {names[present[0]]} lung was found; the {other} lung is missing from the mask")
    for k in present:
        area_px = float((mask == k).sum(axis=(1, 2)).max())
        if spacing is not None:
            area = area_px * float(spacing[1]) * float(spacing[2])
            if area < _TINY_AREA_MM2:
                warnings.append(f"the {names[k]} lung is tiny (largest cross-section {area / 100:.1f} cm^2); "
                                "check the mask")
        elif area_px < 0.002 * mask.shape[1] * mask.shape[2]:
            warnings.append(f"the {names[k]} lung is tiny ({int(area_px)} pixels in its largest slice); check the mask")
    return warnings
