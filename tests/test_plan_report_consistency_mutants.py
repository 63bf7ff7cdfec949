"""Tests written against surviving mutants of covseg.consistency (CutMix partners and box shape), covseg.predict_plan
(empty scan names, relative scan paths, --no-overlays beside scans) and covseg.report_html (rounding of the views'
heights, the coronal row, the montage's aspect ratio in the page)."""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from conftest import tiny_air_scan, tiny_grey_image

import covseg.consistency
from covseg import report_html
from covseg.consistency import ConsistencyTerm
from covseg.errors import CovsegError
from covseg.labels import BINARY
from covseg.predict_plan import PredictPlan, plan_predict
from covseg.training import weight_average


# --- covseg.consistency ------------------------------------------------------------------------------------------

def _left_half_boxes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every CutMix box is the left half of the slice (columns < W // 2); returns the (n, H, W) of each call."""
    calls: list[tuple[int, int, int]] = []

    def left_half(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        calls.append((n, height, width))
        masks = torch.zeros(n, 1, height, width)
        masks[..., : width // 2] = 1.0
        return masks

    monkeypatch.setattr(covseg.consistency, "box_masks", left_half)
    return calls


def _term(images: torch.Tensor, batch: int) -> tuple[ConsistencyTerm, nn.Module]:
    student = nn.Conv2d(1, 2, 1)
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=batch, weight=1.0)
    term.update(student)
    return term, student


def test_a_batch_of_two_non_square_slices_swaps_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    # kills: the partner shift drawn only for batches of more than 2 (a pair mixed with itself: no CutMix at all);
    # the box's height and width swapped (a 4 x 6 slice given a 6 x 4 box)
    calls = _left_half_boxes(monkeypatch)
    images = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1).expand(2, 1, 4, 6).half()
    term, student = _term(images, batch=2)
    for seed in range(4):
        mixed, target = term.batch_for(student, torch.Generator().manual_seed(seed), None, torch.device("cpu"))
        assert mixed.shape == (2, 1, 4, 6) and target.shape == (2, 2, 4, 6)
        left, right = mixed[:, 0, 0, 0].tolist(), mixed[:, 0, 0, -1].tolist()
        assert sorted(right) == [0.25, 0.75]  # each slice keeps its own right half ...
        assert left == right[::-1]  # ... and takes its box from the other one
    assert calls == [(2, 4, 6)] * 4


def test_slice_i_takes_its_box_from_slice_i_plus_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    # kills: the batch rolled the other way (slice i taking the box of slice i - shift, not i + shift as documented);
    # the draws replayed by hand: randperm picks the slices, then one randint(1, k) draws the shift
    _left_half_boxes(monkeypatch)
    levels = torch.tensor([0.125, 0.25, 0.5, 0.75])
    images = levels.view(4, 1, 1, 1).expand(4, 1, 4, 4).half()
    term, student = _term(images, batch=3)
    shifts = set()
    for seed in range(6):
        mixed, _ = term.batch_for(student, torch.Generator().manual_seed(seed), None, torch.device("cpu"))
        g = torch.Generator().manual_seed(seed)
        pick = torch.randperm(4, generator=g)[:3].tolist()
        shift = int(torch.randint(1, 3, (1,), generator=g))
        shifts.add(shift)
        assert mixed[:, 0, 0, -1].tolist() == [levels[p].item() for p in pick], seed  # own right half
        assert mixed[:, 0, 0, 0].tolist() == [levels[pick[(i + shift) % 3]].item() for i in range(3)], seed
    assert shifts == {1, 2}  # both shifts seen: each tells i + shift from i - shift


# --- covseg.predict_plan -----------------------------------------------------------------------------------------

_scan, _image = tiny_air_scan, tiny_grey_image


def test_a_scan_with_an_empty_name_beside_images_is_refused(tmp_path: Path) -> None:
    # kills: the empty stem dropped from the clash check: a scan named ".nii.gz" beside 2-D images would write its
    # outputs into the output folder itself, among the images' label maps, instead of a subfolder
    scan = _scan(tmp_path / ".nii.gz")
    image = _image(tmp_path / "x.png")
    with pytest.raises(CovsegError, match=rf"^several scans would write to {tmp_path / 'out'}; give scans distinct"):
        plan_predict([scan, image], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_scan_given_by_a_relative_path_is_not_replaced_by_its_own_output(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # kills: the scan's folder compared with the output folder without resolving either ("." is not /tmp/...)
    _scan(tmp_path / "lesions.nii.gz")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CovsegError, match=r"^lesions\.nii\.gz: covseg predict would write its own lesions\.nii\.gz "
                                          r"over this scan; give -o another folder$"):
        plan_predict([Path("lesions.nii.gz")], tmp_path)
    _scan(tmp_path / "chest.nii.gz")  # another name in the same folder is fine
    assert plan_predict([Path("chest.nii.gz")], tmp_path) == PredictPlan([Path("chest.nii.gz")], [tmp_path], [])


def test_without_overlays_a_scan_may_be_named_overlays_beside_images(tmp_path: Path) -> None:
    # kills: the overlays folder counted among the images' outputs even with --no-overlays
    scan = _scan(tmp_path / "overlays.nii.gz")
    image = _image(tmp_path / "x.png")
    out = tmp_path / "out"
    assert plan_predict([scan, image], out, overlays=False) == PredictPlan([scan], [out / "overlays"], [image])
    with pytest.raises(CovsegError, match=r"the 2-D images' overlays folder; rename the scan"):
        plan_predict([scan, image], out)  # with overlays it is one


def test_without_overlays_a_file_where_the_overlays_folder_goes_does_not_block(tmp_path: Path) -> None:
    # kills: the images' outputs checked as if overlays were drawn (a file named "overlays" refused for nothing)
    scan = _scan(tmp_path / "chest.nii.gz")
    image = _image(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").write_text("not a folder")
    assert plan_predict([scan, image], out, overlays=False) == PredictPlan([scan], [out / "chest"], [image])
    with pytest.raises(CovsegError, match=rf"^{out / 'overlays'}: is a file"):
        plan_predict([scan, image], out)


# --- covseg.report_html ------------------------------------------------------------------------------------------

def test_the_coronal_row_is_the_lung_rows_mean_rounded_down() -> None:
    # kills: the mean rounded to nearest (lung rows 1 and 2: mean 1.5 -> row 1, not row 2)
    z, y = np.meshgrid(np.arange(3), np.arange(6), indexing="ij")
    grey = np.repeat(((z * 6 + y) / 20.0)[..., None], 8, axis=2)  # each (z, y) row its own grey
    lungs = np.zeros((3, 6, 8), np.uint8)
    lungs[:, 1:3, 2:6] = 1
    view = report_html.coronal_view(grey, np.zeros((3, 6, 8), np.int64), lungs, BINARY, (1.0, 1.0, 1.0))
    assert view.shape == (3, 8, 3)
    np.testing.assert_array_equal(view[:, 0, 0], (grey[::-1, 1, 0] * 255).astype(np.uint8))


def test_the_views_heights_are_rounded_to_the_nearest_row() -> None:
    # kills: int() truncation in place of rounding: 4 rows x 1.9 / 1.0 = 7.6 -> 8 montage rows (not 7), and
    # 4 slices x 0.9 mm / 1 mm = 3.6 -> 4 coronal rows (not 3)
    grey = np.zeros((2, 4, 4))
    none = np.zeros((2, 4, 4), np.int64)
    assert report_html.axial_montage(grey, none, BINARY, spacing=(5.0, 1.9, 1.0)).shape == (8, 8, 3)
    view = report_html.coronal_view(np.zeros((4, 6, 5)), np.zeros((4, 6, 5), np.int64), np.ones((4, 6, 5), np.uint8),
                                    BINARY, (0.9, 1.0, 1.0))
    assert view.shape == (4, 5, 3)


def _embedded(page: str, alt: str) -> np.ndarray:
    uri = re.search(rf'<img alt="{alt}" src="data:image/png;base64,([^"]+)"', page).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))


def test_the_page_s_montage_shows_the_scan_s_pixel_aspect_ratio() -> None:
    # kills: render_report drawing the montage without the scan's spacing (rows 2 mm apart shown as 1 mm)
    part = {"lung_ml": 100.0, "lesion_ml": 3.0, "lesion_percent": 3.0, "severity": 1,
            "class_ml": {"infection": 3.0}, "class_percent": {"infection": 3.0}}
    report = {"input": {"path": "chest.nii.gz", "kind": "nifti", "shape": [2, 16, 16], "spacing_mm": [1.0, 2.0, 1.0],
                        "sha256": "0" * 64},
              "model": {"name": "unet", "task": "binary"}, "figures": {"right": part, "left": part, "total": part},
              "warnings": [], "seconds": {"total": 1.0}}
    page = report_html.render_report(report, np.full((2, 16, 16), -800.0), True, np.zeros((2, 16, 16), np.int64),
                                     np.ones((2, 16, 16), np.uint8), BINARY, (1.0, 2.0, 1.0))
    # two slices without lesion, side by side; each 16 x 16 pixels of 2 x 1 mm: 32 rows high
    assert _embedded(page, "axial montage").shape[:2] == (32, 32)
    assert _embedded(page, "coronal view").shape[:2] == (2, 16)  # 2 slices of 1 mm over 1 mm columns
