"""Session 77's small fixes: overrides typed with spaces around '=' or in the wrong case, a NaN bar in
comparison.png, the report montage's lesion (no pleural effusion), a pretraining file given as a model."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg import figures, report_html
from covseg.checkpoint import check_checkpoint
from covseg.cli import _parse_args, main
from covseg.config import RunConfig, apply_overrides
from covseg.errors import CovsegError
from covseg.labels import MULTICLASS


@pytest.mark.parametrize("words, fixed", [
    (["train.lr =0.1"], "train.lr=0.1"), (["train.lr = 0.1"], "train.lr=0.1"),
    (["train.lr", "=", "0.1"], "train.lr=0.1"), (["train.lr", "=0.1"], "train.lr=0.1"),
    (["train.lr=", "0.1"], "train.lr=0.1")])
def test_an_override_with_spaces_around_its_equals_sign_is_refused_with_the_one_word(words: list[str],
                                                                                      fixed: str) -> None:
    with pytest.raises(CovsegError, match=rf"without spaces: {fixed}$"):
        apply_overrides(RunConfig(), words)


def test_pretrain_refuses_a_split_override_before_its_own_checks() -> None:
    from covseg.cli import build_parser

    with pytest.raises(CovsegError, match=r"split into 3 words .* without spaces: train\.lr=0\.1$"):
        _parse_args(build_parser(), ["pretrain", "-o", "out", "train.lr", "=", "0.1"])


@pytest.mark.parametrize("argv", [["train", "-o", "R", "train.lr", "=", "0.1"],
                                  ["train", "train.epochs=2", "-o", "R", "train.lr", "=", "0.1"]])
def test_the_command_refuses_a_split_override_in_one_line_wherever_it_stands(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [str(tmp_path / word) if word == "R" else word for word in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("covseg: error: ") and err.rstrip().endswith("train.lr=0.1")
    assert not (tmp_path / "R").exists()


@pytest.mark.parametrize("item, suggested", [("TRAIN.lr=0.1", "'train'"), ("train.LR=0.1", "'lr'"),
                                             ("MODEL.Width=8", "'model'")])
def test_an_override_in_the_wrong_case_gets_a_suggestion(item: str, suggested: str) -> None:
    with pytest.raises(CovsegError, match=rf"\(did you mean {suggested}\?\)"):
        apply_overrides(RunConfig(), [item])


def test_comparison_marks_a_nan_metric_n_a(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig))
    figures.plot_comparison(["unet", "segnet"], {"dice": [0.5, float("nan")], "iou": [0.4, 0.3]}, tmp_path / "c.png")
    texts = [t.get_text() for t in drawn[0].axes[0].texts]
    assert texts.count("n/a") == 1 and "nan" not in texts


def test_the_montage_picks_lung_lesion_not_pleural_effusion() -> None:
    lesions = np.zeros((4, 8, 8), np.int64)
    lesions[0, :6] = 3  # a large effusion
    lesions[2, :1, :2] = 1  # a little GGO
    assert report_html.montage_slices(lesions, n=1, pleural=MULTICLASS.pleural) == [2]
    grey = np.zeros(lesions.shape)
    assert report_html.axial_montage(grey, lesions, MULTICLASS, n=1)[0, 0].tolist() != [0, 0, 0]  # GGO's colour
    effusion = np.where(lesions == 3, 3, 0)
    report = {"input": {"path": "c.nii.gz", "kind": "nifti", "shape": [4, 8, 8], "spacing_mm": [1.0] * 3,
                        "sha256": "0" * 64}, "model": {"name": "unet", "task": "multiclass"}, "warnings": [],
              "seconds": {"total": 1.0}}
    part = {"lung_ml": 1.0, "lesion_ml": 0.0, "lesion_percent": 0.0, "severity": 0,
            "class_ml": {"ggo": 0.0, "consolidation": 0.0, "pleural_effusion": 0.1},
            "class_percent": {"ggo": 0.0, "consolidation": 0.0}}
    report["figures"] = {"right": part, "left": part, "total": part}
    page = report_html.render_report(report, np.full(lesions.shape, -800.0), True, effusion,
                                     np.ones(lesions.shape, np.uint8), MULTICLASS, (1.0, 1.0, 1.0))
    assert "<h2>Axial slices: no lung lesion found (4 slices of 4 spread over the scan, superior first)</h2>" in page


def test_a_pretraining_file_given_as_a_model_is_named_so(tmp_path: Path) -> None:
    file = tmp_path / "pretrained.pt"
    with pytest.raises(CovsegError, match=rf"^{file}: a pretraining checkpoint \(the weights covseg pretrain "
                                          rf"wrote\), not a segmentation model; start a run from it with "
                                          rf"train\.init={file}, or"):
        check_checkpoint({"format": "covseg-pretrained-1", "model": {"w": torch.zeros(1)}}, file)
