"""Whole-scan prediction: phantom NIfTI and DICOM series in, lesion/lung maps and reports out."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg import report_html
from covseg.cli import main
from covseg.scan import grey_to_hu, lung_crop_boxes

from conftest import REAL_SEMISEG  # noqa: F401  (keeps the shared-data convention in one place)
from covseg.phantom import chest_phantom
from test_volumes import write_dicom_series

DICOM_2SLICES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "dicom-ct-2slices"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, dict, np.ndarray]:
    hu, parts = chest_phantom(shape=(24, 128, 128), spacing=(2.5, 0.9, 0.9))
    path = tmp_path_factory.mktemp("phantom") / "chest.nii.gz"
    affine = np.diag([-0.9, -0.9, 2.5, 1.0])  # stored (x, y, z) with axis codes L, P, S
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), affine), str(path))
    return path, parts, affine


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_nifti_scan_outputs_overlay_the_input(phantom, tiny_run: Path, tmp_path: Path, capsys) -> None:
    path, parts, affine = phantom
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 0
    assert "report" in capsys.readouterr().out
    for name in ("lesions.nii.gz", "lungs.nii.gz", "report.json", "report.html"):
        assert (out / name).is_file(), name
    lungs = nib.load(str(out / "lungs.nii.gz"))
    assert lungs.shape == (128, 128, 24) and np.allclose(lungs.affine, affine)
    canonical = np.transpose(np.asarray(lungs.dataobj), (2, 1, 0))
    truth = parts["right"] | parts["left"] if "right" in parts else parts["lungs"]
    assert _dice(canonical > 0, truth) >= 0.97
    # right lung (label 1) at low X in canonical order = patient right
    assert np.mean(np.nonzero(canonical == 1)[2]) < np.mean(np.nonzero(canonical == 2)[2])
    report = json.loads((out / "report.json").read_text())
    for side in ("right", "left", "total"):
        assert {"lung_ml", "lesion_ml", "lesion_percent", "severity", "class_ml", "class_percent"} <= set(report["figures"][side])
    expected_ml = truth.sum() * 2.5 * 0.9 * 0.9 / 1000
    assert report["figures"]["total"]["lung_ml"] == pytest.approx(expected_ml, rel=0.05)
    assert report["model"]["name"] == "unet" and len(report["input"]["sha256"]) == 64
    assert report["seconds"]["total"] > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "http://" not in page and "https://" not in page


def test_dicom_series_scan(tiny_run: Path, tmp_path: Path) -> None:
    hu, _ = chest_phantom(shape=(12, 96, 96), spacing=(2.5, 0.8, 0.8))
    write_dicom_series(tmp_path / "series", hu)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "series"), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["kind"] == "dicom" and report["input"]["shape"][0] == 12
    assert nib.load(str(out / "lesions.nii.gz")).shape[2] == 12


def test_real_two_slice_dicom_scan(tiny_run: Path, tmp_path: Path) -> None:
    if not DICOM_2SLICES.is_dir():
        pytest.skip("shared DICOM series not present")
    out = tmp_path / "out"
    assert main(["predict", str(DICOM_2SLICES), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    # two 512x512 slices of 0.625 mm pixels: both lungs, a plausible slab volume
    assert report["figures"]["right"]["lung_ml"] > 1 and report["figures"]["left"]["lung_ml"] > 1
    assert report["slices_segmented"] == 2
    # a 1.25 mm slab: its figures are of the slab, which the report says (before: "severity 3" and no word of it)
    assert any("reach the scan's top (superior) and bottom (inferior) slices" in w for w in report["warnings"])


def test_failure_leaves_nothing_under_out(phantom, tiny_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    path, _, _ = phantom

    def broken(*args, **kwargs):
        from covseg.errors import CovsegError
        raise CovsegError("simulated failure while drawing the report")

    monkeypatch.setattr(report_html, "render_report", broken)
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 2
    assert not out.exists() or not any(out.iterdir())
    assert not list(tmp_path.glob(".out.*"))
    # nor the folders made for an output that never came: -o new/deeper/out leaves no new/
    assert main(["predict", str(path), "-o", str(tmp_path / "new" / "deeper" / "out"), "--model", str(tiny_run),
                 "--quiet"]) == 2
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before stays
    assert main(["predict", str(path), "-o", str(tmp_path / "kept" / "sub" / "out"), "--model", str(tiny_run),
                 "--quiet"]) == 2
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())


@pytest.mark.parametrize("case", ["single_slice_dicom", "truncated_nifti"])
def test_bad_scans(case: str, tiny_run: Path, tmp_path: Path, capsys) -> None:
    if case == "single_slice_dicom":
        hu, _ = chest_phantom(shape=(1, 64, 64), spacing=(2.5, 0.8, 0.8))
        write_dicom_series(tmp_path / "one", hu)
        target = tmp_path / "one"
    elif case == "truncated_nifti":
        hu, _ = chest_phantom(shape=(8, 64, 64), spacing=(2.5, 0.8, 0.8))
        full = tmp_path / "full.nii"
        nib.save(nib.Nifti1Image(hu.astype(np.int16), np.eye(4)), str(full))
        target = tmp_path / "cut.nii"
        target.write_bytes(full.read_bytes()[:5000])
    assert main(["predict", str(target), "-o", str(tmp_path / "o"), "--model", str(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error:")
    assert not (tmp_path / "o").exists()


def test_image_folder_is_a_scan_only_with_spacing(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    hu, _ = chest_phantom(shape=(6, 64, 64), spacing=(2.5, 0.8, 0.8))
    grey = np.clip((hu + 1350) / 1500 * 255, 0, 255).astype(np.uint8)  # lung-window 8-bit slices
    (tmp_path / "stack").mkdir()
    for z, plane in enumerate(grey):
        Image.fromarray(plane).save(tmp_path / "stack" / f"{z}.png")
    assert main(["predict", str(tmp_path / "stack"), "-o", str(tmp_path / "scan"), "--model", str(tiny_run),
                 "--spacing", "2.5", "0.8", "0.8", "--quiet"]) == 0
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["input"]["kind"] == "images" and report["figures"]["total"]["lung_ml"] > 0
    assert main(["predict", str(tmp_path / "stack"), "-o", str(tmp_path / "slices"), "--model", str(tiny_run),
                 "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "slices").glob("*.png")) == [f"{z}.png" for z in range(6)]


def test_crop_boxes_and_grey_to_hu() -> None:
    lungs = np.zeros((2, 20, 20), np.uint8)
    lungs[1, 5:8, 4:15] = 1
    boxes = lung_crop_boxes(lungs, (1.0, 1.0, 1.0), margin_mm=2.0)
    assert boxes == [None, (3, 10, 2, 17)]
    assert grey_to_hu(np.array([0.0, 255.0])).tolist() == pytest.approx([-1350.0, 150.0])


def test_scans_of_the_same_name_are_refused_before_any_work(tiny_run: Path, tmp_path: Path, capsys) -> None:
    hu, _ = chest_phantom(shape=(4, 64, 64), spacing=(2.5, 0.8, 0.8))
    for patient in ("p1", "p2"):
        write_dicom_series(tmp_path / patient / "CT", hu)
    out = tmp_path / "o"
    args = ["predict", str(tmp_path / "p1" / "CT"), str(tmp_path / "p2" / "CT"), "-o", str(out), "--model",
            str(tiny_run), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distinct names" in err[0] and not out.exists()


def test_a_bad_2d_image_beside_a_scan_is_refused_before_the_scan_is_segmented(phantom, tiny_run: Path, tmp_path: Path,
                                                                                capsys) -> None:
    # before: the scan was segmented and published into OUT, then the broken slice ended the call with exit 2
    path, _, _ = phantom
    broken = tmp_path / "slice.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "o"
    assert main(["predict", str(path), str(broken), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(broken) in err[0], err
    assert not out.exists()


def test_a_dicom_series_without_geometry_beside_a_scan_is_refused_before_the_scan_is_segmented(
        phantom, tiny_run: Path, tmp_path: Path, capsys) -> None:
    # before (session 72's README audit): the NIfTI scan was segmented and written to OUT/chest, then the series
    # without ImagePositionPatient ended the call with exit 2
    from test_volumes import _untag, truth_hu

    path, _, _ = phantom
    series = tmp_path / "series"
    series.mkdir()
    write_dicom_series(series, truth_hu()[:3])
    _untag(series, "ImagePositionPatient")
    out = tmp_path / "o"
    assert main(["predict", str(path), str(series), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ImagePositionPatient is missing or invalid" in err[0], err
    assert not out.exists()


def test_a_scan_is_never_replaced_by_its_own_output(phantom, tiny_run: Path, tmp_path: Path, capsys) -> None:
    path, _, _ = phantom
    folder = tmp_path / "patient"
    folder.mkdir()
    scan = folder / "lesions.nii.gz"  # named as one of the files predict writes
    scan.write_bytes(path.read_bytes())
    assert main(["predict", str(scan), "-o", str(folder), "--model", str(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would write its own lesions.nii.gz over this scan" in err[0], err
    assert scan.read_bytes() == path.read_bytes() and sorted(p.name for p in folder.iterdir()) == ["lesions.nii.gz"]


def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(phantom, tiny_run: Path, tmp_path: Path,
                                                                           capsys) -> None:
    path, _, _ = phantom
    (tmp_path / "a-file").write_text("")
    assert main(["predict", str(path), "-o", str(tmp_path / "a-file" / "out"), "--model", str(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be written" in err[0] and "is a file, not a folder" in err[0], err


def test_a_folder_holding_a_3d_nifti_points_to_the_file(phantom, tiny_run: Path, tmp_path: Path, capsys) -> None:
    path, _, _ = phantom
    folder = tmp_path / "patient"
    folder.mkdir()
    (folder / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "o"
    assert main(["predict", str(folder), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give the file itself" in err[0] and path.name in err[0] and not out.exists()


def test_effusion_is_kept_outside_the_lungs_and_is_not_involvement(tmp_path: Path) -> None:
    from covseg.labels import MULTICLASS
    from covseg.scan import segment_scan
    from covseg.volumes import read_volume

    hu, _ = chest_phantom(shape=(6, 96, 96), spacing=(2.5, 0.8, 0.8))
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.diag([-0.8, -0.8, 2.5, 1.0])),
             str(tmp_path / "chest.nii.gz"))
    volume = read_volume(tmp_path / "chest.nii.gz")

    class EffusionEverywhere:  # a stand-in model that calls every pixel of each lung crop pleural effusion
        batch_size = 4

        def __call__(self, crops):
            return [np.stack([np.zeros(c.shape), np.zeros(c.shape), np.zeros(c.shape), np.ones(c.shape)])
                    for c in crops]

    result = segment_scan(volume, EffusionEverywhere(), MULTICLASS, progress=False)
    total, voxel_ml = result.figures["total"], result.figures["voxel_ml"]
    assert (result.lesions[result.lungs == 0] == 3).any()  # not dropped with the voxels outside the lung mask
    assert total["lesion_ml"] == 0.0 and total["severity"] is None  # no lung left: not assessed
    assert total["lung_ml"] == pytest.approx(float((result.lungs > 0).sum() - (result.lesions[result.lungs > 0] == 3).sum()) * voxel_ml)
    assert total["class_ml"]["pleural_effusion"] == pytest.approx(float((result.lesions == 3).sum()) * voxel_ml)
    assert "pleural_effusion" not in total["class_percent"]


def test_a_scan_that_cuts_the_lungs_off_says_its_figures_are_of_the_part_scanned(tmp_path: Path) -> None:
    from covseg.labels import BINARY
    from covseg.lungmask import check_lung_coverage
    from covseg.scan import segment_scan
    from covseg.volumes import read_volume

    mask = np.zeros((4, 3, 3), np.uint8)
    assert check_lung_coverage(mask) == []  # no lung: check_lung_mask says so
    mask[1:3, 1, 1] = 1
    assert check_lung_coverage(mask) == []
    mask[3, 1, 1] = 2  # slice 3: the top (superior) end in canonical orientation
    assert check_lung_coverage(mask) == ["the lungs reach the scan's top (superior) slice, so the scan may not hold "
                                         "the whole lungs: the volumes and percentages are of the part scanned"]
    mask[3], mask[0, 1, 1] = 0, 1
    assert "scan's bottom (inferior) slice, so" in check_lung_coverage(mask)[0]

    class NoLesion:
        batch_size = 8

        def __call__(self, crops):
            return [np.stack([np.ones(c.shape), np.zeros(c.shape)]) for c in crops]

    hu, _ = chest_phantom(shape=(20, 64, 64), spacing=(2.5, 1.2, 1.2))  # lungs on slices 2..17 of 20
    warned = {}
    for name, part in (("whole", hu), ("upper half cut off", hu[:10])):
        nib.save(nib.Nifti1Image(np.transpose(part, (2, 1, 0)).astype(np.int16), np.diag([-1.2, -1.2, 2.5, 1.0])),
                 str(tmp_path / "chest.nii.gz"))
        result = segment_scan(read_volume(tmp_path / "chest.nii.gz"), NoLesion(), BINARY, progress=False)
        warned[name] = [w for w in result.warnings if "reach the scan's" in w]
    assert warned["whole"] == []
    assert len(warned["upper half cut off"]) == 1 and "top (superior) slice, so" in warned["upper half cut off"][0]


def test_a_lung_lesion_speck_beside_an_effusion_is_dropped_as_any_speck(tmp_path: Path) -> None:
    from covseg.labels import MULTICLASS
    from covseg.scan import ScanOptions, segment_scan
    from covseg.volumes import read_volume

    hu, _ = chest_phantom(shape=(6, 96, 96), spacing=(2.5, 0.8, 0.8))
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.diag([-0.8, -0.8, 2.5, 1.0])),
             str(tmp_path / "chest.nii.gz"))
    volume = read_volume(tmp_path / "chest.nii.gz")

    class EffusionWithASpeck:  # effusion over each lung crop but its centre pixel, which is GGO
        batch_size = 4

        def __call__(self, crops):
            out = []
            for c in crops:
                probs = np.stack([np.zeros(c.shape), np.zeros(c.shape), np.zeros(c.shape), np.ones(c.shape)])
                probs[1, c.shape[0] // 2, c.shape[1] // 2] = 2.0
                out.append(probs)
            return out

    options = ScanOptions(min_lesion_ml=0.05, inside_lungs_only=False)  # one voxel 0.0016 mL, 6 slices 0.0096 mL
    result = segment_scan(volume, EffusionWithASpeck(), MULTICLASS, options, progress=False)
    assert not (result.lesions == 1).any()  # the GGO column is below 0.05 mL on its own
    assert (result.lesions == 3).sum() > 1000  # the effusion stays
    assert result.figures["total"]["class_ml"]["ggo"] == 0.0


def _page_of(figures: dict, name: str = "chest.nii.gz") -> str:
    from covseg.labels import BINARY

    report = {"input": {"path": name, "kind": "nifti", "shape": [2, 16, 16], "spacing_mm": [1.0, 1.0, 1.0],
                        "sha256": "0" * 64},
              "model": {"name": "unet", "task": "binary"}, "figures": figures, "warnings": [],
              "seconds": {"total": 1.0}}
    lungs = np.zeros((2, 16, 16), np.uint8)
    lungs[:, 4:12, 2:7], lungs[:, 4:12, 9:14] = 1, 2
    lesions = np.zeros((2, 16, 16), np.int64)
    lesions[:, 5:7, 3:5] = 1
    return report_html.render_report(report, np.full((2, 16, 16), -800.0), True, lesions, lungs, BINARY, (1.0, 1.0, 1.0))


@pytest.mark.parametrize("percent, severity, shown", [(4.97, 1, "4.97 %"), (0.01, 1, "0.01 %"), (25.04, 3, "25.04 %"),
                                                       (49.97, 3, "49.97 %"), (75.04, 5, "75.04 %"), (12.34, 2, "12.3 %")])
def test_html_percent_beside_a_severity_reads_as_that_severity(percent, severity, shown) -> None:
    part = {"lung_ml": 100.0, "lesion_ml": percent, "lesion_percent": percent, "severity": severity,
            "class_ml": {"infection": percent}, "class_percent": {"infection": percent}}
    page = _page_of({"right": part, "left": part, "total": part})
    assert page.count(f"mL ({shown})</td><td>{severity}</td>") == 3
    # the one class of a binary model is every lesion: its cell shows the same number, not 5.0 beside 4.97
    ml = "0.01" if percent == 0.01 else f"{percent:.1f}"  # a volume that is not zero never reads as 0.0 mL
    assert page.count(f"<td>{ml} mL ({shown})</td><td>{ml} mL ({shown})</td>") == 3


def test_percent_text_never_shows_a_non_zero_share_as_zero() -> None:
    from covseg.quantify import percent_text

    assert percent_text(0.004) == "0.004" and percent_text(0.0) == "0.0" and percent_text(12.34) == "12.3"
    assert percent_text(0.00004, decimals=2) == "0.00004" and percent_text(4.97, decimals=2) == "4.97"
    assert percent_text(4.97, severity=1) == "4.97" and percent_text(4.97) == "5.0"


def test_volumes_that_are_not_zero_never_read_as_zero_millilitres() -> None:
    from covseg.quantify import nonzero_text

    assert nonzero_text(0.04) == "0.04" and nonzero_text(0.0) == "0.0" and nonzero_text(1234.56) == "1234.6"
    part = {"lung_ml": 100.0, "lesion_ml": 0.04, "lesion_percent": 0.04, "severity": 1,
            "class_ml": {"infection": 0.04}, "class_percent": {"infection": 0.04}}
    page = _page_of({"right": part, "left": part, "total": part})
    assert page.count("<td>0.04 mL (0.04 %)</td><td>0.04 mL (0.04 %)</td>") == 3 and "0.0 mL" not in page


def test_html_severity_legend_covers_every_percentage_it_scores() -> None:
    part = {"lung_ml": 100.0, "lesion_ml": 25.3, "lesion_percent": 25.3, "severity": 3,
            "class_ml": {"infection": 25.3}, "class_percent": {"infection": 25.3}}
    page = _page_of({"right": part, "left": part, "total": part})
    assert "mL (25.3 %)</td><td>3</td>" in page
    assert "3 &gt;25 and &lt;50 %" in page and "26–49" not in page  # 25.3 % scores 3, outside a "26–49 %" legend


def test_html_colours_are_the_overlay_colours_and_named(monkeypatch) -> None:
    drawn = []
    real = report_html._fig_uri
    monkeypatch.setattr(report_html, "_fig_uri", lambda fig: drawn.append(fig) or real(fig))
    part = {"lung_ml": 100.0, "lesion_ml": 3.0, "lesion_percent": 3.0, "severity": 1,
            "class_ml": {"infection": 3.0}, "class_percent": {"infection": 3.0}}
    page = _page_of({"right": part, "left": part, "total": part})
    assert '<span style="background:rgb(255, 64, 64);padding:0 .6em"></span> infection' in page
    bars = drawn[0].axes[0].patches
    assert bars and all(tuple(round(255 * v) for v in b.get_facecolor()[:3]) == (255, 64, 64) for b in bars)


def test_a_spacing_in_metres_is_refused_for_a_folder_of_images(tmp_path: Path, tiny_run: Path, capsys) -> None:
    """--spacing 0.0025 0.0009 0.0009 (metres) made the lung mask allocate tens of GB; now one line, exit 2."""
    from PIL import Image

    (tmp_path / "stack").mkdir()
    for z in range(3):
        Image.fromarray(np.full((16, 16), 40 * z, np.uint8)).save(tmp_path / "stack" / f"{z}.png")
    out = tmp_path / "o"
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "stack"), "-o", str(out), "--model", str(tiny_run),
                 "--spacing", "0.0025", "0.0009", "0.0009", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: --spacing 0.0025 0.0009 0.0009: voxel size"), err
    assert "they look like metres" in err[0] and not out.exists()
    # a micro-CT's 0.05 mm is a CT's voxel size (the bound catches metres, which stay under about 0.01)
    from covseg.volumes import check_voxel_size

    check_voxel_size((0.05, 0.05, 0.05), "micro-CT", "as given")


def test_segment_scan_refuses_a_volume_whose_spacing_is_not_mm(phantom, monkeypatch) -> None:
    import dataclasses

    import covseg.scan
    from covseg.errors import CovsegError
    from covseg.labels import BINARY
    from covseg.scan import segment_scan
    from covseg.volumes import read_volume

    def never(*args, **kwargs):  # were the check to go, the real lung mask of a metre volume would take ~23 GB
        raise AssertionError("the lung mask was made for a volume in metres")

    monkeypatch.setattr(covseg.scan, "lung_mask", never)
    volume = dataclasses.replace(read_volume(phantom[0]), spacing=(0.0025, 0.0009, 0.0009))
    with pytest.raises(CovsegError, match=r"voxel size 0\.0025 x 0\.0009 x 0\.0009 mm .* they look like metres"):
        segment_scan(volume, None, BINARY, progress=False)  # refused before the lung mask, or any model


def test_pytorch_running_out_of_memory_is_one_line_too(monkeypatch, capsys) -> None:
    import covseg.cli as cli

    def allocate(args):  # the CPU allocator's RuntimeError, without allocating anything
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] . DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1152921504606846976 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setitem(cli.COMMANDS, "predict", allocate)
    assert main(["predict", "scan.nii.gz", "-o", "out", "--model", "m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: out of memory ([enforce fail"), err

    def other(args):
        raise RuntimeError("some other failure")

    monkeypatch.setitem(cli.COMMANDS, "predict", other)
    with pytest.raises(RuntimeError, match="some other failure"):  # other errors are not dressed up as memory
        main(["predict", "scan.nii.gz", "-o", "out", "--model", "m"])


def test_running_out_of_memory_is_one_line_not_a_traceback(monkeypatch, capsys) -> None:
    import covseg.cli as cli

    def allocate(args):  # numpy's own MemoryError, without allocating anything
        return np.zeros(1 << 62, np.uint8)

    monkeypatch.setitem(cli.COMMANDS, "predict", allocate)
    assert main(["predict", "scan.nii.gz", "-o", "out", "--model", "m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: out of memory (Unable to allocate"), err


class _Oracle:
    """A stand-in model that "finds" exactly ``truth`` ((Z, Y, X) class ids) in each lung crop: it works out the
    crops :func:`covseg.scan.segment_scan` asks for, in the same order, and answers one-hot probabilities."""

    batch_size = 4

    def __init__(self, truth: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], margin_mm: float,
                 n_classes: int) -> None:
        from covseg.lungmask import body_midline, lung_mask
        from covseg.scan import scan_crop_boxes

        self.truth, self.n_classes = truth, n_classes
        self.boxes = scan_crop_boxes(lung_mask(hu, spacing), spacing, margin_mm, body_midline(hu, spacing))
        self.todo = [z for z, b in enumerate(self.boxes) if b is not None]
        self.seen = np.zeros(truth.shape, bool)
        for z in self.todo:
            y0, y1, x0, x1 = self.boxes[z]
            self.seen[z, y0:y1, x0:x1] = True

    def __call__(self, crops):
        out = []
        for crop in crops:
            z = self.todo.pop(0)
            y0, y1, x0, x1 = self.boxes[z]
            assert crop.shape == (y1 - y0, x1 - x0)
            out.append(np.moveaxis(np.eye(self.n_classes)[self.truth[z, y0:y1, x0:x1]], -1, 0))
        return out


def _volume_of(hu: np.ndarray, spacing: tuple[float, float, float], path: Path):
    from covseg.volumes import read_volume

    affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), affine), str(path))
    volume = read_volume(path)
    assert np.array_equal(volume.hu, hu.astype(np.int16)) and volume.spacing == spacing
    return volume


def test_consolidation_the_lung_mask_leaves_out_is_kept_and_counted_as_lung(tmp_path: Path) -> None:
    """The left lung's lateral half consolidated (+20 HU): the mask holds its aerated half only. By default the
    consolidation touching it stays and counts as lung (it was dropped: 0 %, severity 0); a lesion apart from
    the lungs is dropped, with its volume in the warnings."""
    from covseg.labels import MULTICLASS
    from covseg.quantify import severity_score
    from covseg.scan import ScanOptions, segment_scan

    spacing = (2.5, 1.4, 1.4)
    hu, parts = chest_phantom(shape=(16, 96, 96), spacing=spacing, noise=0.0)
    left = parts["left"]
    cons = left & (np.arange(96)[None, None, :] > np.quantile(np.nonzero(left)[2], 0.5))
    hu[cons] = 20.0
    truth = np.zeros(hu.shape, np.int64)
    truth[cons] = 2
    truth[3:6, 30:33, 47:50] = 1  # 27 voxels in the mediastinum, 4 columns or more from either lung
    volume = _volume_of(hu, spacing, tmp_path / "chest.nii.gz")
    voxel_ml = 2.5 * 1.4 * 1.4 / 1000

    oracle = _Oracle(truth, volume.hu, spacing, 10.0, 4)
    found = oracle.seen & cons  # what the crops show of the consolidation
    result = segment_scan(volume, oracle, MULTICLASS, progress=False)
    assert not (result.lungs[cons] > 0).any() and found.sum() > 0.5 * cons.sum()
    assert (result.lesions[found] == 2).all() and not result.lesions[truth == 1].any()
    left_fig = result.figures["left"]
    n_lung = int((result.lungs == 2).sum()) + int(found.sum())
    assert left_fig["lung_ml"] == pytest.approx(n_lung * voxel_ml)
    assert left_fig["class_ml"]["consolidation"] == pytest.approx(found.sum() * voxel_ml)
    assert left_fig["lesion_percent"] == pytest.approx(100.0 * found.sum() / n_lung)
    assert left_fig["severity"] == severity_score(left_fig["lesion_percent"]) >= 3
    assert f"{27 * voxel_ml:.1f} mL of lesion not touching the lung mask was dropped; --keep-outside-lungs keeps it" \
        in result.warnings

    # a lesion apart that the small-component filter removes anyway (0.13 mL under 0.2) is not worth a warning
    oracle = _Oracle(truth, volume.hu, spacing, 10.0, 4)
    quiet = segment_scan(volume, oracle, MULTICLASS, ScanOptions(min_lesion_ml=0.2), progress=False)
    assert not quiet.lesions[truth == 1].any() and not any("dropped" in w for w in quiet.warnings)

    # --keep-outside-lungs: everything kept, nothing reported dropped
    oracle = _Oracle(truth, volume.hu, spacing, 10.0, 4)
    kept = segment_scan(volume, oracle, MULTICLASS, ScanOptions(inside_lungs_only=False), progress=False)
    assert (kept.lesions[truth == 1] == 1).all() and not any("dropped" in w for w in kept.warnings)
    assert kept.figures["left"]["class_ml"]["consolidation"] == left_fig["class_ml"]["consolidation"]


def test_an_off_centre_patient_s_missed_lung_is_given_to_its_own_side(tmp_path: Path) -> None:
    """Left lung wholly consolidated, so only the right lung is in the mask, and 60 columns of air on the patient's
    left: the image's middle column (78) lies beyond the left lung's medial half, the body's midline (47.5) does
    not. Its lesions were split at the image's middle, the medial part given to the right lung."""
    from covseg.labels import MULTICLASS
    from covseg.scan import ScanOptions, segment_scan

    spacing = (2.5, 1.4, 1.4)
    hu, parts = chest_phantom(shape=(16, 96, 96), spacing=spacing, noise=0.0)
    hu[parts["left"]] = 20.0
    hu = np.pad(hu, ((0, 0), (0, 0), (0, 60)), constant_values=-1000.0)
    left = np.pad(parts["left"], ((0, 0), (0, 0), (0, 60)))
    truth = np.where(left, 2, 0)
    volume = _volume_of(hu, spacing, tmp_path / "chest.nii.gz")
    options = ScanOptions(margin_mm=40.0, inside_lungs_only=False)  # crops wide enough to show the left lung
    oracle = _Oracle(truth, volume.hu, spacing, options.margin_mm, 4)
    found = oracle.seen & left
    result = segment_scan(volume, oracle, MULTICLASS, options, progress=False)
    assert set(np.unique(result.lungs).tolist()) == {0, 1} and found.sum() > 0
    assert np.nonzero(found)[2].min() < hu.shape[2] / 2  # part of it lies right of the image's middle column
    voxel_ml = 2.5 * 1.4 * 1.4 / 1000
    assert result.figures["right"]["class_ml"]["consolidation"] == 0.0
    assert result.figures["left"]["class_ml"]["consolidation"] == pytest.approx(found.sum() * voxel_ml)
    assert result.figures["left"]["lesion_percent"] == 100.0


def test_a_scan_whose_file_name_is_not_utf8_gets_its_html_report(phantom, tiny_run: Path, tmp_path: Path) -> None:
    import os

    from covseg.labels import get_scheme
    from covseg.predict import open_predictor, predict_scan

    path, _, _ = phantom
    name = tmp_path / os.fsdecode(b"M\xfcller.nii.gz")  # Latin-1 bytes: not UTF-8
    name.write_bytes(path.read_bytes())
    out = tmp_path / "out"
    predictor, config, info = open_predictor(tiny_run)
    predict_scan(name, predictor, get_scheme(config.data.task), out, info, progress=False)  # raised UnicodeEncodeError
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "M\ufffdller.nii.gz" in page and "<title>covseg report — " in page
    assert json.loads((out / "report.json").read_text())["input"]["path"] == str(name)  # the exact name
    # every text in the page is made showable: a warning naming such a file too
    figures = json.loads((out / "report.json").read_text())["figures"]
    page = _page_of(figures, name=os.fsdecode(b"<b>\xe9.nii"))
    assert "&lt;b&gt;\ufffd.nii" in page and page.encode("utf-8")


def test_the_covseg_program_prints_a_non_utf8_scan_name_on_a_strict_utf8_stdout(phantom, tiny_run: Path,
                                                                                tmp_path: Path) -> None:
    # the summary line names the scan; a strict UTF-8 stdout raised UnicodeEncodeError there (a traceback, exit 1)
    import os
    import subprocess
    import sys

    path, _, _ = phantom
    name = tmp_path / os.fsdecode(b"M\xfcller.nii.gz")
    name.write_bytes(path.read_bytes())
    done = subprocess.run([sys.executable, "-m", "covseg", "predict", str(name), "-o", str(tmp_path / "out"),
                           "--model", str(tiny_run), "--quiet"], capture_output=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-400:]
    assert b"M\\udcfcller.nii.gz: lesions" in done.stdout and b"Traceback" not in done.stderr


def test_a_lung_missing_from_the_mask_is_shown_to_the_model_and_its_lesions_counted(tmp_path: Path) -> None:
    """Left lung wholly consolidated, so the mask holds the right lung only. With the default 10 mm margin the
    crops (the right lung's box) showed none of the left lung (0 of its voxels), so its consolidation was never
    segmented: the report said left lung 0 mL. The crops are now mirrored about the body's midline, and with one
    lung in the mask nothing outside it is dropped."""
    from covseg.labels import MULTICLASS
    from covseg.lungmask import body_midline, lung_mask
    from covseg.quantify import severity_score
    from covseg.scan import lung_crop_boxes, segment_scan

    spacing = (2.5, 1.4, 1.4)
    hu, parts = chest_phantom(shape=(16, 96, 96), spacing=spacing, noise=0.0)
    left = parts["left"]
    hu[left] = 20.0
    truth = np.where(left, 2, 0)
    volume = _volume_of(hu, spacing, tmp_path / "chest.nii.gz")
    lungs = lung_mask(volume.hu, spacing)
    plain = np.zeros(hu.shape, bool)  # what the right lung's own boxes show
    for z, box in enumerate(lung_crop_boxes(lungs, spacing, 10.0)):
        if box is not None:
            plain[z, box[0]:box[1], box[2]:box[3]] = True
    assert set(np.unique(lungs).tolist()) == {0, 1} and (plain & left).sum() < 0.05 * left.sum()
    mid = body_midline(volume.hu, spacing)
    assert lung_crop_boxes(lungs, spacing, 10.0, mid) != lung_crop_boxes(lungs, spacing, 10.0)

    oracle = _Oracle(truth, volume.hu, spacing, 10.0, 4)
    found = oracle.seen & left
    assert found.sum() > 0.9 * left.sum()
    result = segment_scan(volume, oracle, MULTICLASS, progress=False)
    voxel_ml = 2.5 * 1.4 * 1.4 / 1000
    assert result.figures["left"]["class_ml"]["consolidation"] == pytest.approx(found.sum() * voxel_ml)
    assert result.figures["right"]["class_ml"]["consolidation"] == 0.0
    assert severity_score(result.figures["left"]["lesion_percent"]) == result.figures["left"]["severity"] == 5
    assert any("with one lung in the mask, lesions outside it are kept" in w for w in result.warnings)


def test_slices_where_the_mask_holds_one_lung_are_cropped_to_show_both_sides() -> None:
    """Left lung consolidated below a 9-slice aerated apical remnant, so both lungs are in the volume's mask: the
    crops were mirrored only when the whole mask held one lung, so in the slices holding the right lung only the
    model saw the right lung + 10 mm and 4 % of the consolidated left lung."""
    from covseg.lungmask import LEFT_LUNG, RIGHT_LUNG, body_midline, lung_mask
    from covseg.scan import scan_crop_boxes

    spacing = (2.5, 1.0, 1.0)
    hu, parts = chest_phantom(shape=(40, 128, 128), spacing=spacing, noise=0.0)
    left = parts["left"]
    cons = left & (np.arange(40)[:, None, None] < np.nonzero(left)[0].max() - 8)
    hu[cons] = 20.0
    lungs = lung_mask(hu, spacing)
    assert (lungs == RIGHT_LUNG).any() and (lungs == LEFT_LUNG).any()
    boxes = scan_crop_boxes(lungs, spacing, 10.0, body_midline(hu, spacing))
    seen = np.zeros(hu.shape, bool)
    for z, box in enumerate(boxes):
        if box is not None:
            seen[z, box[0]:box[1], box[2]:box[3]] = True
    assert (seen & cons).sum() >= 0.95 * cons.sum()
    both = [z for z in range(40) if (lungs[z] == RIGHT_LUNG).any() and (lungs[z] == LEFT_LUNG).any()]
    assert both and all(boxes[z] == lung_crop_boxes(lungs, spacing, 10.0)[z] for z in both)  # unchanged there
    assert boxes[0] is None and boxes[-1] is None  # outside the lungs' Z range: skipped


def test_a_slice_without_lung_between_slices_with_lung_is_cropped_to_the_lungs() -> None:
    lungs = np.zeros((5, 20, 30), np.uint8)
    lungs[1, 4:10, 3:10], lungs[1, 5:12, 18:26] = 1, 2
    lungs[3, 6:9, 4:8] = 1  # slice 2: no lung (both consolidated); slice 3: the right lung only
    from covseg.scan import scan_crop_boxes

    boxes = scan_crop_boxes(lungs, (1.0, 1.0, 1.0), 2.0, midline_x=14.0)
    assert boxes[0] is None and boxes[4] is None
    assert boxes[1] == (2, 14, 1, 28)  # both lungs: its own box
    assert boxes[2] == (2, 14, 1, 28)  # the volume's lungs' box, mirrored about the midline (columns 1..27)
    assert boxes[3] == (4, 11, 1, 28)  # its own rows, both sides' columns


def test_html_severity_of_a_lung_without_volume_reads_not_assessed() -> None:
    part = {"lung_ml": 100.0, "lesion_ml": 3.0, "lesion_percent": 3.0, "severity": 1,
            "class_ml": {"infection": 3.0}, "class_percent": {"infection": 3.0}}
    none = {"lung_ml": 0.0, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": None,
            "class_ml": {"infection": 0.0}, "class_percent": {"infection": 0.0}}
    page = _page_of({"right": part, "left": none, "total": part})
    assert page.count("mL (0.0 %)</td><td>n/a</td>") == 1 and "<td>None</td>" not in page


def _nifti_scan(path: Path, shape: tuple[int, ...]) -> Path:
    """Write a small NIfTI of ``shape`` (air-and-water HU, 0.8 x 0.8 x 2.5 mm voxels) to ``path``; returns ``path``."""
    data = np.where(np.indices(shape)[0] % 2 == 0, -1000, 0).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def _covseg_stderr(*args: str) -> str:
    """The stderr (text, carriage returns kept) of the covseg program run with ``args`` in a subprocess."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "covseg", *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-400:]
    return done.stderr


@pytest.mark.parametrize("case", ["four_d_scan", "blocked_slice_output"])
def test_a_bad_later_input_is_refused_before_the_first_scan_is_segmented(case: str, phantom, tiny_run: Path,
                                                                          tmp_path: Path, capsys) -> None:
    # each scan was read, segmented and published in turn: a bad second input failed with OUT/chest/ already written
    path, _, _ = phantom
    out = tmp_path / "out"
    if case == "four_d_scan":
        later = _nifti_scan(tmp_path / "series.nii.gz", (16, 16, 4, 3))
    else:  # a 2-D slice whose label map's place in OUT is a folder (predict_files runs after the scans)
        later = tmp_path / "slice.png"
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(later)
        (out / "slice.png").mkdir(parents=True)
    assert main(["predict", str(path), str(later), "--model", str(tiny_run), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error:"), err
    if case == "four_d_scan":
        assert not out.exists()
    else:
        assert [p.name for p in out.iterdir()] == ["slice.png"]


def test_nibabel_says_nothing_before_the_refusal_of_a_nifti_with_a_zero_voxel_size(tiny_run: Path,
                                                                                  tmp_path: Path) -> None:
    # is_scan loaded the NIfTI outside covseg's quiet readers: nibabel's "pixdim[1,2,3] should be non-zero" came first
    scan = _nifti_scan(tmp_path / "zero.nii", (16, 16, 4))
    img = nib.load(str(scan))
    img.set_sform(None, code=0)
    img.set_qform(np.diag([0.8, 0.8, 2.5, 1.0]), code=1)
    nib.save(img, str(scan))
    raw = bytearray(scan.read_bytes())
    raw[88:92] = np.asarray([0.0], "<f4").tobytes()  # pixdim[3] = 0, with a qform and no sform
    scan.write_bytes(bytes(raw))
    err = [line for line in _covseg_stderr("predict", str(scan), "--model", str(tiny_run), "-o", str(tmp_path / "o"),
                                           "--quiet").splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("covseg: error:") and "pixdim 0.8, 0.8, 0" in err[0], err


@pytest.mark.parametrize("name", ["garbage.nii.gz", "garbage.png"])
def test_an_unreadable_input_s_error_is_the_one_line_after_any_progress_bar(name: str, tiny_run: Path,
                                                                           tmp_path: Path) -> None:
    # a .nii.gz nibabel could not load went down the 2-D path, and the progress bar left open there (and in the
    # lesion loop) took the error onto its line and was drawn again after it
    bad = tmp_path / name
    bad.write_bytes(b"not an image at all" * 10)
    err = _covseg_stderr("predict", str(bad), "--model", str(tiny_run), "-o", str(tmp_path / "o"))
    at = err.find("covseg: error:")
    assert at >= 0 and (at == 0 or err[at - 1] == "\n"), repr(err)  # a line of its own, not the bar's
    assert "\r" not in err[at:] and err[at:].rstrip("\n").count("\n") == 0, repr(err)  # no bar drawn after it
    before = [part for line in err[:at].split("\n") for part in line.split("\r") if part.strip()]
    assert all("%|" in part for part in before), repr(err)  # above it, bar frames only
    if name.endswith(".nii.gz"):  # refused as a scan, before the models load: no bar at all
        assert not before and "cannot be read as NIfTI" in err, repr(err)
    assert not (tmp_path / "o").exists()


def _slices(values: list[float], shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A grey volume whose slice z is ``values[z]`` everywhere."""
    return np.asarray(values, dtype=np.float64)[:, None, None] * np.ones((1, *shape))


def test_the_montage_shows_the_slices_with_most_lesion_superior_first() -> None:
    from covseg.labels import BINARY

    grey = _slices([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])  # slice z reads int(z * 25.5) where it holds no lesion
    lesions = np.zeros((6, 4, 4), np.int64)
    lesions[1, 3, :3], lesions[2, 3, :2], lesions[4, 3, 0] = 1, 1, 1  # areas 3, 2 and 1
    two = report_html.axial_montage(grey, lesions, BINARY, n=2)
    assert two.shape == (4, 8, 3) and [two[0, x, 0] for x in (0, 4)] == [51, 25]  # slices 2 and 1, z descending
    every = report_html.axial_montage(grey, lesions, BINARY)  # only the 3 slices with lesion, not the clear ones
    assert every.shape == (4, 12, 3) and [every[0, x, 0] for x in (0, 4, 8)] == [102, 51, 25]


def test_the_montage_shows_non_square_pixels_at_their_true_aspect_ratio() -> None:
    from covseg.labels import BINARY

    grey = _slices([0.0, 0.1])
    none = np.zeros((2, 4, 4), np.int64)
    # rows 1.5 mm apart, columns 0.75 mm: a 4 x 4 slice is 6 mm tall and 3 mm wide, shown 8 x 4 pixels
    assert report_html.axial_montage(grey, none, BINARY, spacing=(5.0, 1.5, 0.75)).shape == (8, 8, 3)
    assert report_html.axial_montage(grey, none, BINARY, spacing=(5.0, 0.7, 0.7)).shape == (4, 8, 3)  # square


def test_the_montage_of_a_scan_without_lesion_spreads_over_it_4_per_row() -> None:
    from covseg.labels import BINARY

    grey = _slices([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    none = np.zeros((7, 4, 4), np.int64)
    spread = report_html.axial_montage(grey, none, BINARY, n=3)  # slices 0, 3 and 6
    assert spread.shape == (4, 12, 3) and [spread[0, x, 0] for x in (0, 4, 8)] == [153, 76, 0]
    all7 = report_html.axial_montage(grey, none, BINARY)  # 7 slices: 4 in the first row, 3 and a black tile after
    assert all7.shape == (8, 16, 3) and [all7[0, x, 0] for x in (0, 12)] == [153, 76]
    assert [all7[4, x, 0] for x in (0, 8)] == [51, 0] and not all7[4:, 12:].any()
    wide = report_html.axial_montage(np.zeros((4, 10, 500)), np.zeros((4, 10, 500), np.int64), BINARY)
    assert wide.shape == (8, 1600, 3)  # 2000 pixels wide, scaled down to 1600 for a light page


def test_the_coronal_view_cuts_through_the_lungs_centre_superior_at_the_top() -> None:
    from covseg.labels import BINARY, overlay

    z, y = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
    grey = np.repeat(((z * 6 + y) / 30.0)[..., None], 5, axis=2)  # (4, 6, 5): each (z, y) row its own grey
    lesions = np.zeros((4, 6, 5), np.int64)
    lesions[3, 2, 1] = 1
    lungs = np.zeros((4, 6, 5), np.uint8)
    lungs[:, 1:4, 1:4] = 1  # lung rows 1-3: centre row 2
    view = report_html.coronal_view(grey, lesions, lungs, BINARY, (1.0, 1.0, 1.0))
    assert np.array_equal(view, overlay(grey[::-1, 2, :], lesions[::-1, 2, :], BINARY))
    assert view[0, 0, 0] > view[-1, 0, 0]  # the top row is the last (superior) slice, the brightest
    assert report_html.coronal_view(grey, lesions, lungs, BINARY, (2.0, 1.0, 1.0)).shape == (8, 5, 3)  # 2 mm slices
    no_lungs = report_html.coronal_view(grey, lesions, np.zeros_like(lungs), BINARY, (1.0, 1.0, 1.0))
    assert np.array_equal(no_lungs, overlay(grey[::-1, 3, :], lesions[::-1, 3, :], BINARY))  # the middle row


def test_html_names_the_input_s_digest_and_lists_its_warnings_escaped() -> None:
    from covseg.labels import BINARY

    part = {"lung_ml": 100.0, "lesion_ml": 3.0, "lesion_percent": 3.0, "severity": 1,
            "class_ml": {"infection": 3.0}, "class_percent": {"infection": 3.0}}
    report = {"input": {"path": "a<b>.nii.gz", "kind": "nifti", "shape": [2, 16, 16], "spacing_mm": [1.0, 1.0, 1.0],
                        "sha256": "0123456789abcdef" + "f" * 48},
              "model": {"name": "unet", "task": "binary"}, "figures": {"right": part, "left": part, "total": part},
              "warnings": [], "seconds": {"total": 1.0}}
    lungs = np.ones((2, 16, 16), np.uint8)
    args = (np.full((2, 16, 16), -800.0), True, np.zeros((2, 16, 16), np.int64), lungs, BINARY, (1.0, 1.0, 1.0))
    page = report_html.render_report(report, *args)
    assert "SHA-256 0123456789abcdef…)" in page and "<ul><li>none</li></ul>" in page
    assert "a&lt;b&gt;.nii.gz" in page and "a<b>" not in page
    page = report_html.render_report(dict(report, warnings=["spacing < 1 mm", "second"]), *args)
    assert "<ul><li>spacing &lt; 1 mm</li><li>second</li></ul>" in page
