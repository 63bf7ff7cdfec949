"""Inference and whole-scan behaviour pinned by hand: tests added by mutation testing (each kills a source mutant the
other tests let through)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from covseg import inference
from covseg.inference import EnsemblePredictor, LesionTypePredictor, Predictor, TorchBackend

from conftest import ConstantBackend


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_bf16_fallback_keeps_the_best_agreement_tried_not_the_last(monkeypatch, capsys) -> None:
    measured = iter([0.9985, 0.998])  # the folded copy agrees better than the trained model; neither enough
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: next(measured))
    backend = TorchBackend(_tiny_model(), torch.device("cpu"), torch.bfloat16)
    backend(torch.rand(2, 1, 8, 8))
    assert backend.dtype == torch.float32 and backend.agreement == 0.9985
    assert "only 99.8500% of pixels" in capsys.readouterr().err


def test_bf16_is_kept_at_exactly_the_least_agreement(monkeypatch) -> None:
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: inference.BF16_MIN_AGREEMENT)
    backend = TorchBackend(_tiny_model(), torch.device("cpu"), torch.bfloat16)
    backend(torch.rand(2, 1, 8, 8))
    assert backend.dtype == torch.bfloat16 and backend.agreement == inference.BF16_MIN_AGREEMENT


def test_the_bf16_check_runs_on_the_first_batch_a_predictor_gives_with_its_pixels(monkeypatch) -> None:
    seen = []

    def agreement(a, b, pixels=None):
        seen.append(None if pixels is None else pixels.clone())
        return 1.0

    monkeypatch.setattr(inference, "label_agreement", agreement)
    backend = TorchBackend(_tiny_model(), torch.device("cpu"), torch.bfloat16)
    images = [np.zeros((4, 8), np.float32), np.zeros((8, 8), np.float32)]
    out = list(Predictor(backend, input_size=8, resize="pad")(images))
    assert [p.shape for p in out] == [(2, 4, 8), (2, 8, 8)]
    assert backend.agreement == 1.0 and backend.dtype == torch.bfloat16 and len(seen) == 1
    assert seen[0] is not None and seen[0].sum(dim=(1, 2)).tolist() == [32, 64]  # the 4x8 image's own pixels only


class _RowBackend:
    """Lesion logit ``row - 8`` (background 0) at every column: not the same on every row."""

    description = "row"

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        row = torch.arange(x.shape[-2], dtype=torch.float32).view(1, 1, -1, 1).expand(x.shape[0], 1, -1, x.shape[-1])
        return torch.cat([torch.zeros_like(row), row - 8], 1)


def test_padded_inputs_are_cropped_back_to_the_image_s_own_rows() -> None:
    # a 4x16 image padded to 16x16 lies on rows 6..9 of the input: its lesion logits are -2, -1, 0, 1 by row
    probs = next(iter(Predictor(_RowBackend(), input_size=16, resize="pad")([np.zeros((4, 16), np.float32)])))
    expected = 1 / (1 + np.exp(-(np.arange(6, 10) - 8.0)))
    np.testing.assert_allclose(probs[1], np.repeat(expected[:, None], 16, 1), atol=1e-5)


def test_a_lesion_class_equal_to_the_type_model_s_class_count_is_refused() -> None:
    from covseg.errors import CovsegError

    lesion = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=8)
    types = Predictor(ConstantBackend((0.0, 0.0, math.log(2.0), 0.0)), input_size=8)  # 4 classes: 0..3
    with pytest.raises(CovsegError, match="lesion class 4 is not one of the type model's 4 classes"):
        next(LesionTypePredictor(lesion, types, lesion_classes=[1, 4])([np.zeros((3, 5), np.float32)]))
    out = next(LesionTypePredictor(lesion, types, lesion_classes=[1, 3])([np.zeros((3, 5), np.float32)]))
    np.testing.assert_allclose(out[:, 0, 0], [1 / 4, 3 / 8, 0.0, 3 / 8], atol=1e-6)


def test_a_lesion_type_predictor_batches_as_its_smaller_side() -> None:
    lesion = Predictor(ConstantBackend((0.0, 0.0)), input_size=8, batch_size=5)
    types = EnsemblePredictor([Predictor(ConstantBackend((0.0, 0.0, 0.0)), input_size=8, batch_size=3),
                               Predictor(ConstantBackend((0.0, 0.0, 0.0)), input_size=8, batch_size=4)])
    assert LesionTypePredictor(lesion, types).batch_size == 3


def test_scan_crop_boxes_by_hand() -> None:
    from covseg.scan import lung_crop_boxes, scan_crop_boxes

    lungs = np.zeros((5, 20, 30), np.uint8)
    for z in (0, 1):
        lungs[z, 5:9, 6:10] = 1  # right lung: rows 5..8, columns 6..9
    for z in (0, 3):
        lungs[z, 6:11, 18:23] = 2  # left lung: rows 6..10, columns 18..22
    spacing, margin = (2.0, 1.0, 0.5), 2.0  # margin: 2 rows, 4 columns
    # slice 0 both lungs, 1 right only, 2 none between slices with lung, 3 left only, 4 none past the lungs
    assert lung_crop_boxes(lungs, spacing, margin) == [(3, 13, 2, 27), (3, 11, 2, 14), None, (4, 13, 14, 27), None]
    # the volume's lungs: rows 3..12 with margin, columns 2..26 and their mirror about 15.5: 4..29, so 2..29
    assert scan_crop_boxes(lungs, spacing, margin, midline_x=15.5) == [
        (3, 13, 2, 27), (3, 11, 2, 30), (3, 13, 2, 30), (4, 13, 2, 30), None]


def test_lesions_apart_from_the_lungs_are_dropped_and_reported_but_pleural_ones_kept(tmp_path) -> None:
    import nibabel as nib

    from covseg.labels import MULTICLASS
    from covseg.phantom import chest_phantom
    from covseg.scan import ScanOptions, segment_scan
    from covseg.volumes import read_volume

    hu, _ = chest_phantom(shape=(6, 96, 96), spacing=(2.5, 0.8, 0.8))
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.diag([-0.8, -0.8, 2.5, 1.0])),
             str(tmp_path / "chest.nii.gz"))
    volume = read_volume(tmp_path / "chest.nii.gz")

    class Corners:  # effusion (3) in each crop's top-left 3x3 pixels, ground glass (1) in its top-right ones
        batch_size = 4

        def __call__(self, crops):
            for c in crops:
                labels = np.zeros(c.shape, int)
                labels[:3, :3], labels[:3, -3:] = 3, 1
                yield np.eye(4)[labels].transpose(2, 0, 1)

    result = segment_scan(volume, Corners(), MULTICLASS, ScanOptions(min_lesion_ml=0.0), progress=False)
    n = result.slices_segmented
    assert n > 0 and not (result.lungs[result.lesions > 0] > 0).any()  # the corners lie outside the lung mask
    assert int((result.lesions == 3).sum()) == 9 * n and not (result.lesions == 1).any()
    ml = 9 * n * 2.5 * 0.8 * 0.8 / 1000  # under 0.1 mL: two significant digits, not 0.1
    assert ml < 0.1 and f"{ml:.2g} mL of lesion not touching the lung mask was dropped" in " ".join(result.warnings)
