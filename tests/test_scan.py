"""Whole-scan prediction: phantom NIfTI and DICOM series in, lesion/lung maps and reports out."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

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
    assert total["lesion_ml"] == 0.0 and total["severity"] == 0
    assert total["lung_ml"] == pytest.approx(float((result.lungs > 0).sum() - (result.lesions[result.lungs > 0] == 3).sum()) * voxel_ml)
    assert total["class_ml"]["pleural_effusion"] == pytest.approx(float((result.lesions == 3).sum()) * voxel_ml)
    assert "pleural_effusion" not in total["class_percent"]


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
    assert page.count(f"<td>{percent:.1f} mL ({shown})</td><td>{percent:.1f} mL ({shown})</td>") == 3


def test_percent_text_never_shows_a_non_zero_share_as_zero() -> None:
    from covseg.quantify import percent_text

    assert percent_text(0.004) == "0.004" and percent_text(0.0) == "0.0" and percent_text(12.34) == "12.3"
    assert percent_text(0.00004, decimals=2) == "0.00004" and percent_text(4.97, decimals=2) == "4.97"
    assert percent_text(4.97, severity=1) == "4.97" and percent_text(4.97) == "5.0"


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


def test_segment_scan_refuses_a_volume_whose_spacing_is_not_mm(phantom) -> None:
    import dataclasses

    from covseg.errors import CovsegError
    from covseg.labels import BINARY
    from covseg.scan import segment_scan
    from covseg.volumes import read_volume

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
