"""Session 73, scanquant: `covseg predict` on whole scans checked against hand counts, and the fixes of that walk:
the image's middle column as quantify's fallback midline, -o the folder of an input image, predictions.json fractions
that never read as 0 or 1 when they are not, one checkpoint named twice in an ensemble."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from covseg.cli import main
from covseg.errors import CovsegError
from covseg.labels import BINARY, MULTICLASS
from covseg.phantom import chest_phantom
from covseg.predict_plan import plan_predict
from covseg.quantify import quantify

from test_volumes import SPACING, write_dicom_series


class _SliceOracle:
    """A stand-in model answering one-hot ``truth`` ((Z, Y, X) class ids) in each crop segment_scan asks for, in the
    order it asks."""

    batch_size = 4
    backend = SimpleNamespace(description="oracle")

    def __init__(self, truth: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> None:
        from covseg.lungmask import body_midline, lung_mask
        from covseg.scan import scan_crop_boxes

        self.truth = truth
        self.boxes = scan_crop_boxes(lung_mask(hu, spacing), spacing, 10.0, body_midline(hu, spacing))
        self.todo = [z for z, b in enumerate(self.boxes) if b is not None]

    def __call__(self, crops):
        out = []
        for _ in crops:
            z = self.todo.pop(0)
            y0, y1, x0, x1 = self.boxes[z]
            out.append(np.moveaxis(np.eye(4)[self.truth[z, y0:y1, x0:x1]], -1, 0))
        return out


def test_scan_figures_match_hand_counts_for_nifti_and_dicom_alike(tmp_path: Path) -> None:
    """A phantom (24 x 160 x 128 voxels of 2.5 x 0.7 x 0.8 mm = 1.4 uL) with GGO in the right lung (1224 voxels), the
    left lung's 9 lowest slices consolidated (+20 HU: 9408 voxels, outside the threshold mask) and an effusion below
    it (699 voxels), as NIfTI (stored RAS) and as a DICOM series: report.json, the terminal line and the written
    label maps agree with counts by hand (walked through in session 73)."""
    from covseg.predict import predict_scan, scan_summary
    from covseg.scan import ScanOptions
    from covseg.volumes import read_volume

    shape, spacing = (24, 160, 128), SPACING  # (2.5, 0.7, 0.8)
    hu, parts = chest_phantom(shape=shape, spacing=spacing, noise=0.0)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    cons = parts["left"] & (zz < 9)
    eff = parts["body"] & ~parts["lungs"] & (zz >= 6) & (zz < 14) & (yy >= 118) & (yy < 124) & (xx >= 76) & (xx < 100)
    hu[cons], hu[eff] = 20.0, 16.0  # both exact under the DICOM writer's slope 2 / intercept -1024
    truth = np.zeros(shape, np.int64)
    truth[parts["ggo"]], truth[cons], truth[eff] = 1, 2, 3
    assert (int(parts["ggo"].sum()), int(cons.sum()), int(eff.sum())) == (1224, 9408, 699)
    nifti = tmp_path / "chest.nii.gz"
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1, :]).astype(np.int16), affine),
             str(nifti))
    write_dicom_series(tmp_path / "dicom", hu)
    uL = 2.5 * 0.7 * 0.8 / 1000
    reports = {}
    for name, path in (("nifti", nifti), ("dicom", tmp_path / "dicom")):
        volume = read_volume(path)
        assert volume.spacing == spacing and np.array_equal(volume.hu, hu.astype(volume.hu.dtype))
        out = tmp_path / f"out-{name}"
        report = predict_scan(path, _SliceOracle(truth, volume.hu, spacing), MULTICLASS, out, {"name": "oracle"},
                              ScanOptions(), progress=False)
        reports[name] = report
        # lung = mask + lung lesions on its side; the right mask is 34603 voxels (the phantom's 34528 + 75 by the
        # closing), the left 25186 + the 9408 consolidated: 34594
        f = report["figures"]
        assert f["voxel_ml"] == pytest.approx(uL) and f["lesion_outside_mask_ml"] == pytest.approx(9408 * uL)
        assert f["right"]["lung_ml"] == pytest.approx(34603 * uL) and f["left"]["lung_ml"] == pytest.approx(34594 * uL)
        assert f["right"]["class_ml"] == pytest.approx({"ggo": 1224 * uL, "consolidation": 0.0,
                                                        "pleural_effusion": 0.0})
        assert f["left"]["class_ml"] == pytest.approx({"ggo": 0.0, "consolidation": 9408 * uL,
                                                       "pleural_effusion": 699 * uL})
        assert f["right"]["lesion_percent"] == pytest.approx(100 * 1224 / 34603)  # 3.54 %: severity 1
        assert f["left"]["lesion_percent"] == pytest.approx(100 * 9408 / 34594)  # 27.2 %: severity 3
        assert f["total"]["lesion_percent"] == pytest.approx(100 * 10632 / 69197)  # 15.4 %: severity 2
        assert f["total"]["class_percent"] == pytest.approx({"ggo": 100 * 1224 / 69197,
                                                             "consolidation": 100 * 9408 / 69197})
        assert [f[s]["severity"] for s in ("right", "left", "total")] == [1, 3, 2]
        assert scan_summary(path, report, out) == (
            f"{path}: lesions 14.9 mL = 15.4 % of 97 mL lung, severity 2 (right 1, left 3); pleural effusion 1.0 mL; "
            f"report {out}/report.html")
        assert json.loads((out / "report.json").read_text())["figures"] == json.loads(json.dumps(f))
    assert reports["nifti"]["figures"] == reports["dicom"]["figures"]
    # the NIfTI's label maps, stored as the input (RAS), hold those voxels
    lesions = np.asarray(nib.load(str(tmp_path / "out-nifti" / "lesions.nii.gz")).dataobj)[::-1, ::-1, :]
    lesions = lesions.transpose(2, 1, 0)
    assert np.array_equal(lesions, truth)
    lungs = np.asarray(nib.load(str(tmp_path / "out-nifti" / "lungs.nii.gz")).dataobj)[::-1, ::-1, :].transpose(2, 1, 0)
    assert [int((lungs == s).sum()) for s in (1, 2)] == [34603, 25186]


def test_without_a_midline_the_middle_column_of_an_odd_width_goes_left_as_the_lung_mask_splits_sides() -> None:
    # 5 columns: the middle is column 2 (as body_midline gives a volume with no body, (5 - 1) / 2); the lung mask
    # puts X >= midline on the left, so does quantify. Before: the middle taken as 5 / 2 = 2.5, column 2 went right
    lesions = np.zeros((1, 1, 5), np.uint8)
    lesions[0, 0, 2] = 1
    result = quantify(lesions, np.zeros_like(lesions), (1.0, 1.0, 1.0), {1: "infection"})
    assert result["left"]["lesion_ml"] == pytest.approx(0.001) and result["right"]["lesion_ml"] == 0.0
    lesions[0, 0, 1] = 1  # column 1 lies right of the middle
    result = quantify(lesions, np.zeros_like(lesions), (1.0, 1.0, 1.0), {1: "infection"})
    assert result["right"]["lesion_ml"] == pytest.approx(0.001) and result["left"]["lesion_ml"] == pytest.approx(0.001)
    # the same as with the midline given at that column
    assert quantify(lesions, np.zeros_like(lesions), (1.0, 1.0, 1.0), {1: "infection"}, midline_x=2.0) == result


def _grey(path: Path, size: tuple[int, int] = (16, 16), value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def test_an_output_folder_that_holds_an_input_image_is_refused_before_anything_is_written(tmp_path: Path,
                                                                                          capsys) -> None:
    # before: `predict in/0.jpg -o in` wrote in/0.png over the user's own image of that name, and overlays beside it
    image = _grey(tmp_path / "in" / "0.jpg")
    own = _grey(tmp_path / "in" / "0.png", value=200)
    before = own.read_bytes()
    assert main(["predict", str(image), "-o", str(tmp_path / "in"), "--model", str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {tmp_path / 'in'}: is the folder of the input image {image}, where predictions "
                   "would be mixed with the images and replace any of the same name (0.png); give -o a folder of "
                   "its own"]
    assert own.read_bytes() == before and sorted(p.name for p in (tmp_path / "in").iterdir()) == ["0.jpg", "0.png"]
    # given as "." from inside it, too; a NIfTI slice names its own label map
    with pytest.raises(CovsegError, match=r"\(0\.png\); give -o"):
        plan_predict([image], tmp_path / "in" / "sub" / "..")
    # a folder of its own, beside or below the images, is fine
    assert plan_predict([image], tmp_path / "out").files == [image]
    assert plan_predict([image], tmp_path / "in" / "predictions").files == [image]


def test_a_class_on_a_few_pixels_of_a_large_image_does_not_read_as_absent(tmp_path: Path) -> None:
    # 2048 x 2048, one pixel of infection: 2.4e-7, which 6 decimals made 0.0 (and background 1.0)
    from covseg.predict import predict_files

    class OnePixel:
        batch_size = 8
        backend = SimpleNamespace(description="stand-in")

        def __call__(self, images):
            for image in images:
                probs = np.zeros((2, *image.shape), np.float32)
                probs[0] = 1.0
                probs[1, 0, 0] = 2.0
                yield probs

    image = _grey(tmp_path / "big.png", size=(2048, 2048))
    summary = predict_files(OnePixel(), BINARY, [image], tmp_path / "out", {"name": "stand-in"}, overlays=False,
                            progress=False)
    fractions = summary["images"][0]["fractions"]
    assert fractions == {"background": 0.9999998, "infection": 2.38419e-07}
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["images"][0]["fractions"] == fractions
    # 6 significant digits otherwise; exact shares kept as they are
    from covseg.predict import pixel_fraction

    assert [pixel_fraction(c, t) for c, t in ((21, 32), (0, 7), (7, 7), (1, 262144), (123456789, 10**9))] == [
        0.65625, 0.0, 1.0, 3.8147e-06, 0.123457]


def test_a_run_folder_and_the_checkpoint_it_resolves_to_are_one_model_not_an_ensemble(tiny_run: Path) -> None:
    # before: --model RUN --model RUN/last.pt averaged the model with itself, reported as a 2-model ensemble
    from covseg.checkpoint import find_checkpoint
    from covseg.predict import open_ensemble

    checkpoint = find_checkpoint(tiny_run, "auto")
    with pytest.raises(CovsegError, match=rf"^{tiny_run} and {checkpoint} are one model \({checkpoint}\); an "
                                          "ensemble of a model with itself is that model: name it once$"):
        open_ensemble([tiny_run, checkpoint])
    other = next(p for p in (tiny_run / "best.pt", tiny_run / "last.pt") if p != checkpoint)  # another checkpoint
    _, _, info = open_ensemble([tiny_run, other])
    assert [m["file"] for m in info["members"]] == [str(checkpoint), str(other)]
