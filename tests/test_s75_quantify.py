"""Session 75, quantify: lesion quantification and the scan path walked through as a user. A scan in which no lung is
found is refused in one line before any slice goes to the model (it was segmented nowhere and reported as 0 mL of
lesion, 0 % of 0 mL lung, which reads as a scan without lesions); every figure of a small hand-made scan with
anisotropic voxels, counted by hand."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import covseg.predict as predict
import covseg.scan as scan
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.inference import Predictor
from covseg.labels import BINARY
from covseg.quantify import quantify
from covseg.scan import segment_scan
from covseg.volumes import Volume

from test_predict_mutants import _config, _ThresholdBackend


class _NeverCalled:
    """A stand-in model that fails the test when a slice reaches it."""

    batch_size = 4

    def __call__(self, crops):
        raise AssertionError("a slice went to the model")


def _no_lung_hu(shape: tuple[int, int, int] = (4, 40, 40)) -> np.ndarray:
    """A body of soft tissue (40 HU) in air (-1000 HU) with nothing below the air threshold inside it: no lung."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 5:35, 5:35] = 40.0
    return hu


def _volume(hu: np.ndarray, is_hu: bool = True) -> Volume:
    return Volume(hu=np.asarray(hu, np.float32), spacing=(2.5, 0.8, 0.8), affine=np.eye(4), input_affine=np.eye(4),
                  input_shape=hu.shape, input_ornt=np.array([[0, 1], [1, 1], [2, 1]]), is_hu=is_hu,
                  source="abdomen.nii.gz")


# --- a scan without lung ----------------------------------------------------------------------------------------------

def test_a_scan_in_which_no_lung_is_found_is_refused_before_any_slice_goes_to_the_model() -> None:
    # before: no slice was segmented (only slices with lung are), and the figures read 0 mL of lesion, 0 % of 0 mL lung
    with pytest.raises(CovsegError) as refused:
        segment_scan(_volume(_no_lung_hu()), _NeverCalled(), BINARY, progress=False)
    assert str(refused.value) == (
        "abdomen.nii.gz: no lung found: the lung mask is empty (is this a chest CT in Hounsfield units?); lesions are "
        "looked for only on slices with lung and given as a share of it, so this scan gets no lesion figures and no "
        "outputs")
    # grey values (an image stack) read through the lung window: the reason names the window, not HU
    grey = (_no_lung_hu() + 1350.0) / 1500.0
    with pytest.raises(CovsegError, match=r"^abdomen\.nii\.gz: no lung found: .*lung window.*no outputs$"):
        segment_scan(_volume(np.clip(grey, 0, 1), is_hu=False), _NeverCalled(), BINARY, progress=False)


def test_predict_refuses_a_scan_without_lung_in_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys
                                                                            ) -> None:
    path = tmp_path / "abdomen.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(_no_lung_hu(), (2, 1, 0)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1.0])),
             str(path))
    monkeypatch.setattr(predict, "open_models", lambda *a, **k: (Predictor(_ThresholdBackend(), 32), _config(),
                                                                 {"name": "t", "backend": "threshold"}))
    out = tmp_path / "out"
    assert main(["predict", str(path), "-o", str(out), "--model", str(tmp_path), "--quiet"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: error: {path}: no lung found: the lung mask is empty"), err
    assert captured.out == "" and not out.exists()  # no "lesions 0.0 mL = 0.0 % of 0 mL lung" line, no report


# --- every figure counted by hand -------------------------------------------------------------------------------------

def test_every_figure_of_a_hand_made_scan_with_anisotropic_voxels_counted_by_hand(monkeypatch) -> None:
    """2 slices x 4 rows x 10 columns of 5 x 4 x 2.5 mm = 50 mm^3 = 0.05 mL. Mask: right lung columns 1-3, left 6-8
    (24 voxels each); the body's midline at column 4.5 (right: columns 0-4). Labels (multiclass):

    right: GGO 2 voxels in the mask; consolidation 4 + 2 voxels outside it (columns 0 and 4): lung 24 + 6 = 30,
    lesion 8 = 26.67 % (severity 3; GGO 6.67 %, consolidation 20 %);
    left: GGO 3 in the mask, consolidation 1 outside it (column 5), effusion 1 in the mask (the closing took it in: not
    lung) and 5 outside (column 9): lung 24 - 1 + 1 = 24, lesion 4 = 16.67 % (severity 2), effusion 6 voxels;
    total: lung 54 voxels = 2.7 mL, lesion 12 = 0.6 mL = 22.22 % (severity 2); outside the mask 7 lung-lesion voxels.
    """
    from covseg.labels import MULTICLASS
    from covseg.predict import scan_summary

    lungs = np.zeros((2, 4, 10), np.uint8)
    lungs[:, :, 1:4], lungs[:, :, 6:9] = 1, 2
    truth = np.zeros(lungs.shape, np.int64)
    truth[0, 0:2, 1] = 1  # right, in the mask
    truth[0, :, 0] = 2  # right, outside
    truth[1, 0:2, 4] = 2  # right of the midline (4 < 4.5), outside
    truth[1, 3, 5] = 2  # left of it, outside
    truth[1, 1:4, 7] = 1  # left, in the mask
    truth[0, 3, 8] = 3  # effusion in the left mask
    truth[0, :, 9] = 3  # effusion outside it
    truth[1, 0, 9] = 3
    monkeypatch.setattr(scan, "lung_mask", lambda h, s: lungs.copy())
    monkeypatch.setattr(scan, "body_midline", lambda h, s: 4.5)

    class Oracle:  # the truth in each crop, in the order asked (every slice holds both lungs: the whole slice + 10 mm)
        batch_size = 8

        def __call__(self, crops):
            assert [c.shape for c in crops] == [(4, 10), (4, 10)]
            return [np.moveaxis(np.eye(4)[truth[z]], -1, 0) for z in range(2)]

    volume = Volume(hu=np.full(lungs.shape, -800.0, np.float32), spacing=(5.0, 4.0, 2.5), affine=np.eye(4),
                    input_affine=np.eye(4), input_shape=lungs.shape, input_ornt=np.array([[0, 1], [1, 1], [2, 1]]))
    result = segment_scan(volume, Oracle(), MULTICLASS, scan.ScanOptions(min_lesion_ml=0.0), progress=False)
    assert np.array_equal(result.lesions, truth)
    f = result.figures
    ml = 0.05
    assert f["voxel_ml"] == pytest.approx(ml) and f["spacing_mm"] == [5.0, 4.0, 2.5]
    assert f["lesion_outside_mask_ml"] == pytest.approx(7 * ml)
    right, left, total = f["right"], f["left"], f["total"]
    assert right["lung_ml"] == pytest.approx(30 * ml) and right["lesion_ml"] == pytest.approx(8 * ml)
    assert right["lesion_percent"] == pytest.approx(800 / 30) and right["severity"] == 3
    assert right["class_ml"] == pytest.approx({"ggo": 2 * ml, "consolidation": 6 * ml, "pleural_effusion": 0.0})
    assert right["class_percent"] == pytest.approx({"ggo": 200 / 30, "consolidation": 20.0})
    assert left["lung_ml"] == pytest.approx(24 * ml) and left["lesion_ml"] == pytest.approx(4 * ml)
    assert left["lesion_percent"] == pytest.approx(400 / 24) and left["severity"] == 2
    assert left["class_ml"] == pytest.approx({"ggo": 3 * ml, "consolidation": ml, "pleural_effusion": 6 * ml})
    assert left["class_percent"] == pytest.approx({"ggo": 12.5, "consolidation": 100 / 24})
    assert total["lung_ml"] == pytest.approx(54 * ml) and total["lesion_ml"] == pytest.approx(12 * ml)
    assert total["lesion_percent"] == pytest.approx(1200 / 54) and total["severity"] == 2
    assert total["class_ml"] == pytest.approx({"ggo": 5 * ml, "consolidation": 7 * ml, "pleural_effusion": 6 * ml})
    assert total["class_percent"] == pytest.approx({"ggo": 500 / 54, "consolidation": 700 / 54})
    # the lungs reach both end slices of this 2-slice scan: the figures are of the part scanned
    assert any("may not hold the whole lungs" in w for w in result.warnings)
    assert scan_summary(Path("s"), {"figures": f}, Path("o")) == (
        "s: lesions 0.6 mL = 22.2 % of 3 mL lung, severity 2 (right 3, left 2); pleural effusion 0.3 mL; "
        "report o/report.html")
    # quantify itself, given the same maps, agrees (the scan path adds nothing of its own to the figures)
    assert quantify(truth, lungs, (5.0, 4.0, 2.5), dict(enumerate(MULTICLASS.names)), MULTICLASS.pleural,
                    midline_x=4.5) == f
