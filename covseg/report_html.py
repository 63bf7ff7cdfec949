"""A self-contained HTML report of one scan: montage, coronal reformat, figures table, bar chart.

Images are PNGs embedded as base64 data URIs, so the page works offline as a single file.
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from matplotlib.figure import Figure  # pyplot-free: no global backend or figure state is touched
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from covseg.fileio import display_text
from covseg.intensity import LUNG_WINDOW, stretch_percentiles, window_hu
from covseg.labels import LabelScheme, class_title, overlay
from covseg.quantify import nonzero_text, percent_text, share_text
from covseg.wording import counted

__all__ = ["render_report", "lung_lesion", "montage_slices", "axial_montage", "coronal_view", "coronal_row",
           "slice_number", "KIND_TITLES", "CORONAL_WIDTH", "CORONAL_MAX_HEIGHT", "LABELLED_TILE"]

CORONAL_WIDTH, CORONAL_MAX_HEIGHT = 800, 640
"""CSS pixels the page shows the coronal reformat in: this wide, or less where it would be taller than the height
(:func:`_coronal_width`); the PNG keeps one pixel per column of the scan."""

LABELLED_TILE = (64, 32)
"""The smallest montage tile, ``(width, height)`` pixels as shown, that gets its slice number drawn into it."""

KIND_TITLES: dict[str, str] = {"nifti": "NIfTI file", "dicom": "DICOM series", "images": "stack of 2-D images"}
"""``report.json``'s ``input.kind`` in words."""


def slice_number(z: int) -> int:
    """The number the page gives canonical axial slice ``z`` (0-based, inferior to superior): ``z + 1``, so slice 1
    is the most inferior (feet end) and slice Z the most superior."""
    return z + 1


def _png_uri(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fig_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def lung_lesion(lesions: np.ndarray, pleural: tuple[int, ...] = ()) -> np.ndarray:
    """Where ``lesions`` (labels) holds lung lesion: any foreground class but ``pleural`` (a scheme's pleural
    effusion, outside the lung parenchyma, which the figures count neither as lung nor as involvement)."""
    return (lesions > 0) & ~np.isin(lesions, pleural)


def montage_slices(lesions: np.ndarray, n: int = 12, pleural: tuple[int, ...] = ()) -> list[int]:
    """The axial slices (indices into ``lesions`` ``(Z, Y, X)`` labels, ascending) :func:`axial_montage` shows: the up
    to ``n`` with the largest lung-lesion area (classes ``pleural``, pleural effusion, not counted), or, where no
    slice holds lung lesion, up to ``n`` spread evenly over the scan."""
    area = lung_lesion(lesions, pleural).reshape(len(lesions), -1).sum(1)
    if area.any():
        return sorted(int(z) for z in np.argsort(area)[::-1][: min(n, int((area > 0).sum()))])
    return sorted({int(z) for z in np.linspace(0, len(lesions) - 1, min(n, len(lesions))).round().astype(int)})


def axial_montage(grey: np.ndarray, lesions: np.ndarray, scheme: LabelScheme, n: int = 12,
                  spacing: tuple[float, float, float] | None = None) -> np.ndarray:
    """RGB montage of up to ``n`` axial slices (:func:`montage_slices`: those with most lesion, else spread over the
    scan), 4 per row.

    ``grey``: ``(Z, Y, X)`` in [0, 1]; ``lesions``: ``(Z, Y, X)`` labels. Superior slices come first. With
    ``spacing`` ``(Z, Y, X)`` mm each slice is shown at its true aspect ratio (rows resized by Y / X spacing).
    Each tile at least :data:`LABELLED_TILE` large (as finally shown) carries its :func:`slice_number` and the
    number of slices (``17/30``) in its top-left corner, white on a dark outline; smaller tiles have no room for it.
    """
    picks = montage_slices(lesions, n, scheme.pleural)[::-1]
    tiles = [overlay(grey[z], lesions[z], scheme) for z in picks]
    if spacing is not None and not math.isclose(spacing[1], spacing[2], rel_tol=1e-3):  # non-square pixels
        height = max(1, int(round(tiles[0].shape[0] * spacing[1] / spacing[2])))
        tiles = [np.asarray(Image.fromarray(t).resize((t.shape[1], height), Image.Resampling.BILINEAR)) for t in tiles]
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    canvas = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i, tile in enumerate(tiles):
        canvas[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = tile
    scale = 1.0
    if canvas.shape[1] > 1600:  # keep the page light
        scale = 1600 / canvas.shape[1]
        canvas = np.asarray(Image.fromarray(canvas).resize((1600, int(canvas.shape[0] * scale))))
    return _number_tiles(canvas, [f"{slice_number(z)}/{len(grey)}" for z in picks], cols, (h * scale, w * scale))


def _number_tiles(canvas: np.ndarray, texts: list[str], cols: int, tile: tuple[float, float]) -> np.ndarray:
    """``canvas`` (RGB montage) with ``texts[i]`` drawn into the top-left corner of tile ``i`` (row-major, ``cols``
    per row, each ``tile`` ``(height, width)`` pixels), where the tiles are at least :data:`LABELLED_TILE`."""
    h, w = tile
    if w < LABELLED_TILE[0] or h < LABELLED_TILE[1]:
        return canvas
    size = int(min(28, max(11, round(w / 14))))
    font = ImageFont.load_default(size=size)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    pad = max(2, size // 4)
    for i, text in enumerate(texts):
        x, y = round((i % cols) * w) + pad, round((i // cols) * h) + pad
        draw.text((x, y), text, fill=(255, 255, 255), font=font, stroke_width=max(1, size // 8), stroke_fill=(0, 0, 0))
    return np.asarray(image)


def coronal_view(grey: np.ndarray, lesions: np.ndarray, lungs: np.ndarray, scheme: LabelScheme,
                 spacing: tuple[float, float, float]) -> np.ndarray:
    """RGB coronal reformat through the lungs' centre row (:func:`coronal_row`), superior at the top, the patient's
    right on the left, true aspect ratio: ``(Z * spacing Z / spacing X, X, 3)``, one pixel per column of the scan."""
    y = coronal_row(lungs)
    image = overlay(grey[::-1, y, :], lesions[::-1, y, :], scheme)
    height = max(1, int(round(image.shape[0] * spacing[0] / spacing[2])))
    return np.asarray(Image.fromarray(image).resize((image.shape[1], height), Image.Resampling.BILINEAR))


def coronal_row(lungs: np.ndarray) -> int:
    """The row (Y index, anterior to posterior) of ``lungs`` ``(Z, Y, X)`` that :func:`coronal_view` cuts through: the
    mean of the rows holding lung, rounded down; the middle row where no row does."""
    rows = np.flatnonzero(lungs.any(axis=(0, 2)))
    return int(rows.mean()) if rows.size else lungs.shape[1] // 2


def _coronal_width(view: np.ndarray) -> int:
    """CSS width of the coronal ``view`` (RGB ``(H, W, 3)``) on the page: :data:`CORONAL_WIDTH`, or less so that it
    stands at most :data:`CORONAL_MAX_HEIGHT` tall, at its own aspect ratio. A thin scan's few slices make a wide
    flat strip that one pixel per column would show too small to read; a tall one is not shown taller than a screen."""
    h, w = view.shape[:2]
    return max(1, round(min(CORONAL_WIDTH, CORONAL_MAX_HEIGHT * w / h)))


def _bar_chart(figures: dict[str, Any], names: list[str], scheme: LabelScheme) -> str:
    """PNG data URI of grouped bars: each class in ``names`` as a percentage of the right, left and both lungs'
    volume (``figures`` as :func:`covseg.quantify.quantify` returns them), in the class's overlay colour."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    sides = ["right", "left", "total"]
    x = np.arange(len(sides))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [figures[s]["class_percent"].get(name) or 0.0 for s in sides]  # None: no lung there, no bar
        colour = np.asarray(scheme.colors[scheme.names.index(name)]) / 255  # the class's overlay colour
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=class_title(name), color=colour)
    ax.set_xticks(x, ["right lung", "left lung", "both lungs"])
    ax.set_ylabel("% of lung volume")
    # a share of a volume is never negative: the axis starts at 0, and a chart of zeros (matplotlib centres those
    # on 0, with negative ticks) spans 0-1 % with a word on why it is empty: no lung lesion (pleural effusion, which
    # the table may list, is no share of the lungs and never a bar)
    if any((figures[s]["class_percent"].get(n) or 0.0) > 0 for s in sides for n in names):
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no lung lesion found", transform=ax.transAxes, ha="center", va="center", color="#666")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _fig_uri(fig)


def render_report(report: dict[str, Any], hu: np.ndarray, is_hu: bool, lesions: np.ndarray, lungs: np.ndarray,
                  scheme: LabelScheme, spacing: tuple[float, float, float]) -> str:
    """The HTML page of ``report`` (the ``report.json`` content) with figures drawn from the arrays: ``hu``,
    ``lesions`` (labels of ``scheme``) and ``lungs`` (0 none, 1 right, 2 left) ``(Z, Y, X)`` canonical, ``spacing``
    ``(Z, Y, X)`` mm. Classes are named by :func:`class_title`, slices by :func:`slice_number`."""
    # grey values of any range (8- or 16-bit, 0..1) are shown by their own 1st-99th percentiles
    grey = window_hu(hu) if is_hu else stretch_percentiles(hu)
    figures = report["figures"]
    names = [n for n in scheme.names[1:]]

    def esc(text: object) -> str:  # every text in the page, paths and warnings included: escaped, encodable
        return html.escape(display_text(text))

    rows = []
    for side, label in (("right", "Right lung"), ("left", "Left lung"), ("total", "Both lungs")):
        part = figures[side]
        lesion = share_text(part["lesion_percent"], part["severity"])  # "n/a" for no lung, as its severity
        # each type as precisely as the lesions beside it (binary: the same)
        places = len(percent_text(part["lesion_percent"], part["severity"]).partition(".")[2])
        cells = "".join(f"<td>{nonzero_text(part['class_ml'].get(n, 0))} mL"
                        + (f" ({share_text(part['class_percent'][n], decimals=places)})"
                           if n in part["class_percent"] else "") + "</td>"
                        for n in names)
        # whole mL, but a lung of under 0.5 mL (one the model called effusion nearly whole) not as "0 mL" beside
        # its severity: 0 mL is the lung that is not assessed (n/a)
        rows.append(f"<tr><th>{label}</th><td>{nonzero_text(part['lung_ml'], decimals=0)} mL</td>{cells}"
                    f"<td>{nonzero_text(part['lesion_ml'])} mL ({lesion})</td>"
                    f"<td>{'n/a' if part['severity'] is None else part['severity']}</td></tr>")
    key = " ".join(f'<span style="background:rgb{scheme.colors[c]};padding:0 .6em"></span> '
                   f'{esc(class_title(scheme.names[c]))}' for c in scheme.foreground)
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report.get("warnings", [])) or "<li>none</li>"
    doubts = figures.get("unreliable", [])
    # said above the table, not only among the warnings at the foot of the page
    unreliable = ('<p style="color:#a00"><b>These figures are unreliable</b> (check the lung mask):</p>'
                  '<ul style="color:#a00">' + "".join(f"<li>{esc(why)}</li>" for why in doubts) + "</ul>"
                  ) if doubts else ""
    picks = montage_slices(lesions, pleural=scheme.pleural)[::-1]  # as the montage shows them: superior first
    of_scan = f"{counted(len(picks), 'slice')} of {len(lesions)}"
    # lesion as the figures count it (lung lesion): a slice of effusion alone is no slice "with the most lesion"
    montage_heading = (f"Axial slices with the most lesion ({of_scan}, superior first)"  # the picks hold lung lesion
                       if lung_lesion(lesions[picks], scheme.pleural).any() else  # only where the scan does
                       f"Axial slices: no {'lung ' if lesions.any() else ''}lesion found ({of_scan} spread over the "
                       "scan, superior first)")  # "lung": beside the pleural effusion the table lists
    shown_as = ("is shown in the lung window (level "  # the grey the views show: window_hu's, or stretch_percentiles'
                f"{LUNG_WINDOW[0]:g} HU, width {LUNG_WINDOW[1]:g} HU)" if is_hu else
                "is not in Hounsfield units: its grey values are shown from their 1st to 99th percentile")
    montage_note = (f"Slices left to right, then down: {', '.join(str(slice_number(z)) for z in picks)} (slice 1 is "
                    f"the most inferior of the scan's {len(lesions)}, slice {len(lesions)} the most superior). Each "
                    "slice is shown anterior up, the patient's right on the viewer's left.")
    coronal = coronal_view(grey, lesions, lungs, scheme, spacing)
    cut = "the lungs' centre front to back" if lungs.any() else "the middle of the scan front to back (no lung found)"
    coronal_note = (f"Through {cut}: row {coronal_row(lungs) + 1} of {lungs.shape[1]}, counted from the front. "
                    "Superior at the top, the patient's right on the viewer's left, at true proportions.")
    kind = esc(KIND_TITLES.get(report["input"]["kind"], report["input"]["kind"]))
    model = report["model"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>covseg report — {esc(report['input']['path'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.35em .7em;text-align:right}}
th{{background:#f4f4f4}}img{{max-width:100%;border:1px solid #ddd}}.note{{color:#666;font-size:.9em}}</style></head>
<body><h1>Lung involvement report</h1>
<p><b>Input</b> {esc(report['input']['path'])} ({kind}, {report['input']['shape'][0]} slices,
spacing {' × '.join(f'{s:.3g}' for s in report['input']['spacing_mm'])} mm; SHA-256 {report['input']['sha256'][:16]}…)<br>
<b>Model</b> {esc(str(model.get('name')))} ({esc(str(model.get('task')))}, recipe {esc(str(model.get('recipe')))}, covseg
{esc(str(model.get('covseg')))}) · {esc(str(model.get('backend')))} · {report['seconds']['total']:.1f} s to read, segment
and quantify the scan and write its label maps (report.json's total also counts drawing this page)</p>
<h2>Figures</h2>{unreliable}
<table><tr><th></th><th>lung volume</th>{''.join(f'<th>{esc(class_title(n))}</th>' for n in names)}
<th>all lung lesions</th>
<th>severity (0–5)</th></tr>{''.join(rows)}</table>
<p class="note">Severity per lung: 0 none, 1 &lt;5 %, 2 5–25 %, 3 &gt;25 and &lt;50 %, 4 50–75 %, 5 &gt;75 % of that lung's volume.
A percentage beside a volume is of the volume of the lung on its row (both lungs': of the two together).
Lung = HU-based lung mask plus every lung-lesion voxel the model found, less what it calls pleural effusion, which counts
neither as lung nor as involvement (its volume only). Research use only, not a diagnostic device.</p>
<img alt="bar chart" src="{_bar_chart(figures, [n for n in names if n in figures['total']['class_percent']], scheme)}">
<p class="note">Colours in the views below: {key}; the CT {shown_as}.</p>
<h2>{montage_heading}</h2><p class="note">{montage_note}</p>
<img alt="axial montage" src="{_png_uri(axial_montage(grey, lesions, scheme, spacing=spacing))}">
<h2>Coronal reformat</h2><p class="note">{coronal_note}</p>
<img alt="coronal view" src="{_png_uri(coronal)}" width="{_coronal_width(coronal)}">
<h2>Warnings</h2><ul>{warnings}</ul>
</body></html>
"""
