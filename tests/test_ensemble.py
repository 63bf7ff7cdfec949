"""Ensembles of models: probability averaging by hand, and the CLI's leak checks."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from covseg.cli import main
from covseg.inference import EnsemblePredictor, LesionTypePredictor, Predictor

from conftest import ConstantBackend


def test_ensemble_averages_member_probabilities_by_hand() -> None:
    # member A: logits (0, 0) -> p = (1/2, 1/2); member B: logits (0, ln 3) -> p = (1/4, 3/4)
    a = Predictor(ConstantBackend((0.0, 0.0)), input_size=8, batch_size=2)
    b = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=16, batch_size=3)
    images = [np.full((5, 7), 0.3, np.float32), np.full((9, 4), 0.6, np.float32), np.zeros((6, 6), np.float32)]
    ensemble = EnsemblePredictor([a, b])
    assert ensemble.batch_size == 2
    out = list(ensemble(images))
    assert [p.shape for p in out] == [(2, 5, 7), (2, 9, 4), (2, 6, 6)]
    for p in out:
        assert p.dtype == np.float32
        np.testing.assert_allclose(p[0], 0.375, atol=1e-6)  # (1/2 + 1/4) / 2
        np.testing.assert_allclose(p[1], 0.625, atol=1e-6)  # (1/2 + 3/4) / 2


def test_lesion_type_predictor_by_hand() -> None:
    # binary: logits (0, ln 3) -> lesion q = 3/4; multiclass: logits (ln 6, 0, ln 2, ln 1) -> p = (6, 1, 2, 1) / 10
    lesion = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=8, batch_size=2)
    types = Predictor(ConstantBackend((math.log(6.0), 0.0, math.log(2.0), 0.0)), input_size=8, batch_size=3)
    images = [np.full((5, 7), 0.3, np.float32), np.zeros((6, 6), np.float32)]
    every = list(LesionTypePredictor(lesion, types)(images))
    learnt = list(LesionTypePredictor(lesion, types, lesion_classes=[1, 2])(images))
    assert [p.shape for p in every] == [(4, 5, 7), (4, 6, 6)]
    for p in every:  # background 1 - 3/4; lesion types share 3/4 as 1 : 2 : 1
        assert p.dtype == np.float32
        np.testing.assert_allclose(p[:, 0, 0], [1 / 4, 3 / 16, 3 / 8, 3 / 16], atol=1e-6)
        np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-6)
    for p in learnt:  # class 3 left out: types share 3/4 as 1 : 2
        np.testing.assert_allclose(p[:, 2, 3], [1 / 4, 1 / 4, 1 / 2, 0.0], atol=1e-6)
    with pytest.raises(ValueError, match="foreground"):
        LesionTypePredictor(lesion, types, lesion_classes=[0, 1])


def test_evaluate_and_predict_with_a_lesion_model(tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys) -> None:
    from conftest import TINY_OVERRIDES

    mc = tmp_path / "mc"
    assert main(["train", "--recipe", "tiny", "--task", "multiclass", "--data", str(tiny_data), "--split", "cv:0",
                 "--epochs", "1", "-o", str(mc), "--quiet", *TINY_OVERRIDES]) == 0
    mc_other_fold = tmp_path / "mc1"
    assert main(["train", "--recipe", "tiny", "--task", "multiclass", "--data", str(tiny_data), "--split", "cv:1",
                 "--epochs", "1", "-o", str(mc_other_fold), "--quiet", *TINY_OVERRIDES]) == 0
    out = tmp_path / "fused"
    assert main(["evaluate", str(mc), "--lesion-model", str(tiny_run), "-o", str(out), "--quiet", "--precision", "fp32"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "multiclass" and metrics["model"]["lesion_model"]["file"] == str(tiny_run / "last.pt")
    imgs = tiny_data / "Dataset/TrainingSet/MultiClassInfection-Train/Imgs"
    assert main(["predict", str(imgs), "-o", str(tmp_path / "p"), "--model", str(mc), "--lesion-model", str(tiny_run),
                 "--quiet", "--precision", "fp32"]) == 0
    assert main(["predict", str(imgs), "-o", str(tmp_path / "pb"), "--model", str(tiny_run), "--quiet",
                 "--precision", "fp32"]) == 0
    # a fused lesion pixel has q * (its type's share) > 1 - q, so q > 1/2: the binary model calls it lesion too
    label_files = sorted((tmp_path / "pb").glob("*.png"))
    assert label_files
    for label_file in label_files:
        fused = np.asarray(Image.open(tmp_path / "p" / label_file.name))
        assert set(np.unique(fused)) <= {0, 1, 2}  # pleural effusion, unseen in training, is never called
        assert not (fused > 0)[np.asarray(Image.open(label_file)) == 0].any()
    capsys.readouterr()
    # the wrong way round, or without a report folder: one line, nothing written
    for argv, message in [(["evaluate", str(tiny_run), "--lesion-model", str(mc), "-o", str(tmp_path / "x")], "multiclass model"),
                          (["evaluate", str(mc), "--lesion-model", str(mc), "-o", str(tmp_path / "x")], "must be a binary"),
                          (["evaluate", str(mc), "--lesion-model", str(mc_other_fold), "-o", str(tmp_path / "x")],
                           "must be a binary"),  # the task first, not that the splits differ
                          (["evaluate", str(mc), "--lesion-model", str(tiny_run)], "needs -o"),
                          # models of two folds: said of the lesion model, not of an "ensemble" the user never asked for
                          (["evaluate", str(mc_other_fold), "--lesion-model", str(tiny_run), "-o", str(tmp_path / "x")],
                           "the model and its --lesion-model were trained on different splits, so some of the "
                           "heldout images were another model's training images; give --lesion-model a run of the "
                           "same split (the same fold), or score them together with --split test")]:
        assert main([*argv, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "x").exists() and not (mc / "eval-heldout").exists()


def _distinct_copy(run: Path, copy: Path, ignore=None, nudge: float = 1e-6) -> Path:
    """``run`` copied to ``copy`` with each checkpoint's first weight moved by ``nudge``: another network by its bytes
    (an ensemble of byte-identical checkpoints is refused as one model named twice) that predicts as ``run`` does."""
    shutil.copytree(run, copy, ignore=ignore)
    for checkpoint in copy.glob("*.pt"):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        first = next(iter(state["model"]))
        state["model"][first] = state["model"][first] + nudge
        torch.save(state, checkpoint)
        kept = (run / checkpoint.name).stat()
        os.utime(checkpoint, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    return copy


def _fake_cv(tiny_run: Path, root: Path) -> Path:
    """A finished 3-fold cross-validation folder of copies of tiny_run's model (fold 0 of 3); folds 1 and 2
    get tiny_run's split with the roles of two images swapped."""
    for k in range(3):
        fold = root / f"fold-{k}"
        _distinct_copy(tiny_run, fold, ignore=shutil.ignore_patterns("eval-*"), nudge=(k + 1) * 1e-6)
        (fold / "eval-heldout").mkdir()
        (fold / "eval-heldout" / "metrics.json").write_text("{}")
        if k:
            split = json.loads((fold / "split.json").read_text())
            split["train"][k], split["val"][0] = split["val"][0], split["train"][k]
            (fold / "split.json").write_text(json.dumps(split))
    return root


def test_evaluate_ensemble_of_same_split_runs(tiny_run: Path, tmp_path: Path, capsys) -> None:
    twin = _distinct_copy(tiny_run, tmp_path / "twin")
    single, ensemble = tmp_path / "single", tmp_path / "ensemble"
    assert main(["evaluate", str(tiny_run), "-o", str(single), "--quiet", "--precision", "fp32"]) == 0
    assert main(["evaluate", str(tiny_run), str(twin), "-o", str(ensemble), "--quiet", "--precision", "fp32"]) == 0
    one = json.loads((single / "metrics.json").read_text())
    two = json.loads((ensemble / "metrics.json").read_text())
    # two copies of one model (one weight moved by 1e-6) average to its own probabilities: the same scores
    assert two["per_image"]["dice"] == pytest.approx(one["per_image"]["dice"], abs=1e-6)
    assert [m["file"] for m in two["model"]["members"]] == [str(tiny_run / "last.pt"), str(twin / "last.pt")]
    assert "(2 models)" in (ensemble / "metrics.md").read_text()
    # members of one split may be scored on every image too, as one run may
    every = tmp_path / "every"
    assert main(["evaluate", str(tiny_run), str(twin), "--split", "all", "-o", str(every), "--quiet",
                 "--precision", "fp32"]) == 0
    assert json.loads((every / "metrics.json").read_text())["n_images"] == 12


def test_cv_folder_ensemble_only_on_images_no_member_trained_on(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                                capsys) -> None:
    from test_cli import _one_line_error

    cv = _fake_cv(tiny_run, tmp_path / "cv")
    assert main(["evaluate", str(cv), "--quiet"]) == 2
    assert "different splits" in _one_line_error(capsys)
    assert not (cv / "eval-heldout").exists()
    # nor on every labelled image (each a training image of some folds: before, all 12 were scored into eval-all),
    # given as run folders or as the checkpoints inside them
    for models in ([str(cv)], [str(cv / "fold-0"), str(cv / "fold-1")],
                   [str(cv / "fold-0" / "last.pt"), str(cv / "fold-1" / "last.pt")]):
        assert main(["evaluate", *models, "--split", "all", "--data", str(tiny_data), "-o", str(tmp_path / "all"),
                     "--quiet"]) == 2
        err = _one_line_error(capsys)
        assert "trained on different splits" in err and "--split test" in err
    assert not (cv / "eval-all").exists() and not (tmp_path / "all").exists()
    # several loose models need a report folder
    assert main(["evaluate", str(cv / "fold-0"), str(cv / "fold-1"), "--split", "all", "--quiet"]) == 2
    assert "-o REPORT_DIR" in _one_line_error(capsys)
    # a cross-validation still running is not taken for a smaller ensemble; a mistyped path says so
    (cv / "fold-2" / "eval-heldout" / "metrics.json").unlink()
    assert main(["evaluate", str(cv), "--split", "all", "--quiet", "-o", str(tmp_path / "x")]) == 2
    assert "unfinished: fold-2" in _one_line_error(capsys)
    shutil.rmtree(cv / "fold-2")
    assert main(["evaluate", str(cv), "--split", "all", "--quiet", "-o", str(tmp_path / "x")]) == 2
    assert "3-fold cross-validation with 2 fold folders" in _one_line_error(capsys)
    assert main(["evaluate", str(tmp_path / "nope"), str(cv / "fold-0"), "--quiet", "-o", str(tmp_path / "x")]) == 2
    assert "no such model file or folder" in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()


def test_a_mistyped_split_of_an_ensemble_is_told_so_not_that_its_splits_differ(tiny_run: Path, tmp_path: Path,
                                                                                capsys) -> None:
    from test_cli import _one_line_error

    cv = _fake_cv(tiny_run, tmp_path / "cv")
    for models in ([str(cv)], [str(cv / "fold-0"), str(cv / "fold-1"), "-o", str(tmp_path / "out")]):
        assert main(["evaluate", *models, "--split", "bogus", "--quiet"]) == 2
        assert _one_line_error(capsys) == ("covseg: error: unknown evaluation split 'bogus': use one of heldout, val, "
                                           "test, testset, train, all")
    assert not (cv / "eval-bogus").exists() and not (tmp_path / "out").exists()


def test_predict_with_a_cv_folder_writes_ensemble_labels(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    cv = _fake_cv(tiny_run, tmp_path / "cv")
    image = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg"
    out = tmp_path / "pred"
    assert main(["predict", str(image), "-o", str(out), "--quiet", "--model", str(cv)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert len(summary["model"]["members"]) == 3
    # repeated --model options make an ensemble too; the image after them stays an input
    out2 = tmp_path / "pred2"
    assert main(["predict", "--model", str(cv / "fold-0"), "--model", str(cv / "fold-1"), str(image),
                 "-o", str(out2), "--quiet"]) == 0
    assert len(json.loads((out2 / "predictions.json").read_text())["model"]["members"]) == 2
    assert (out / "0.png").is_file()


def test_a_types_only_model_is_scored_behind_a_lesion_model(tiny_data: Path, tiny_run: Path, tmp_path: Path,
                                                             capsys) -> None:
    from conftest import TINY_OVERRIDES

    typer = tmp_path / "typer"
    options = [*TINY_OVERRIDES, "train.loss=dice_ce", "train.dice=present", "train.types_only=true"]
    common = ["--recipe", "tiny", "--task", "multiclass", "--data", str(tiny_data), "--quiet"]
    assert main(["train", *common, "--split", "cv:0", "--epochs", "1", "-o", str(typer), *options]) == 0
    history = (typer / "history.csv").read_text().splitlines()
    assert len(history) == 2 and "nan" not in history[1]
    capsys.readouterr()
    assert main(["evaluate", str(typer), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--lesion-model" in err[0] and not (typer / "eval-heldout").exists()
    assert main(["cv", *common, "--folds", "3", "-o", str(tmp_path / "cv"), *options]) == 2
    assert "covseg evaluate RUN --lesion-model" in capsys.readouterr().err and not (tmp_path / "cv").exists()
    out = tmp_path / "fused"
    assert main(["evaluate", str(typer), "--lesion-model", str(tiny_run), "-o", str(out), "--quiet",
                 "--precision", "fp32"]) == 0
    assert json.loads((out / "metrics.json").read_text())["task"] == "multiclass"


def test_type_ensemble_averages_normalised_odds_by_hand() -> None:
    # lesion q = 3/4; type model A: p = (6, 1, 2, 1) / 10 -> shares of classes 1, 2 = 1/3, 2/3;
    # type model B, background output untrained (logit ln 96): p = (96, 3, 1, 0) / 100 -> shares 3/4, 1/4
    lesion = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=8, batch_size=2)
    a = Predictor(ConstantBackend((math.log(6.0), 0.0, math.log(2.0), 0.0)), input_size=8, batch_size=3)
    b = Predictor(ConstantBackend((math.log(96.0), math.log(3.0), 0.0, -50.0)), input_size=8, batch_size=2)
    out = list(LesionTypePredictor(lesion, EnsemblePredictor([a, b]), lesion_classes=[1, 2])([np.zeros((5, 4), np.float32)]))
    shares = np.array([(1 / 3 + 3 / 4) / 2, (2 / 3 + 1 / 4) / 2])  # not the shares of the mean probabilities
    np.testing.assert_allclose(out[0][:, 1, 2], [1 / 4, *(3 / 4 * shares), 0.0], atol=1e-6)


class _ColumnBackend:
    """Lesion logit ``4 * col / S - 2`` growing left to right, the same for every image: not mirror-symmetric."""

    description = "column"

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        size = x.shape[-1]
        col = torch.arange(size, dtype=torch.float32).expand(x.shape[0], 1, *x.shape[-2:])
        return torch.cat([torch.zeros_like(col), 4 * col / size - 2], 1)


def test_flip_tta_averages_with_the_mirrored_pass_flipped_back() -> None:
    image = np.zeros((16, 16), np.float32)
    plain = next(iter(Predictor(_ColumnBackend(), input_size=16)([image])))
    tta = next(iter(Predictor(_ColumnBackend(), input_size=16, flip_tta=True)([image])))
    # by hand: p(col) and the mirrored pass p(15 - col), put back in place, averaged (so symmetric left-right)
    np.testing.assert_allclose(tta, (plain + plain[..., ::-1]) / 2, atol=1e-6)
    np.testing.assert_allclose(tta[:, :, :8], tta[:, :, :7:-1], atol=1e-6)
    assert not np.allclose(plain, plain[..., ::-1], atol=1e-3)  # the test would pass vacuously otherwise


@pytest.mark.parametrize("gap", [95.0, 120.0])
def test_lesion_types_shared_when_the_type_model_is_sure_of_background(gap: float) -> None:
    # lesion q = 3/4; the type model's lesion probabilities underflow (gap 95: float32 denormals ~5e-42 and 1e-41;
    # gap 120: exactly 0): the binary model's lesion keeps q, spread 1 : 2 or evenly, so the pixel is not background
    lesion = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=8)
    types = Predictor(ConstantBackend((gap, 0.0, math.log(2.0), 0.0)), input_size=8)
    out = next(LesionTypePredictor(lesion, types, lesion_classes=[1, 2])([np.zeros((3, 5), np.float32)]))
    shares = [1 / 3, 2 / 3] if gap < 100 else [1 / 2, 1 / 2]
    np.testing.assert_allclose(out[:, 1, 2], [1 / 4, *(3 / 4 * np.array(shares)), 0.0], atol=1e-3)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-3)
    assert (out.argmax(0) > 0).all()


def test_a_lesion_class_the_type_model_lacks_is_refused_in_one_line() -> None:
    from covseg.errors import CovsegError

    # class 5 of a 4-class type model (a class_weights.json of another label scheme): told, not an IndexError
    lesion = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=8)
    types = Predictor(ConstantBackend((0.0, 0.0, math.log(2.0), 0.0)), input_size=8)
    with pytest.raises(CovsegError, match=r"lesion class 5 is not one of the type model's 4 classes \(0 to 3\)"):
        next(LesionTypePredictor(lesion, types, lesion_classes=[1, 5])([np.zeros((3, 5), np.float32)]))


def test_a_lesion_class_given_twice_counts_once() -> None:
    # the type model sure of background (its lesion probabilities exactly 0): even shares of q over classes 1 and 2,
    # not 1/3 of q to each of three entries (two of them class 1), which left a quarter of q nowhere
    lesion = Predictor(ConstantBackend((0.0, math.log(3.0))), input_size=8)
    types = Predictor(ConstantBackend((120.0, 0.0, 0.0, 0.0)), input_size=8)
    predictor = LesionTypePredictor(lesion, types, lesion_classes=[1, 1, 2])
    out = next(predictor([np.zeros((3, 5), np.float32)]))
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 1, 2], [1 / 4, 3 / 8, 3 / 8, 0.0], atol=1e-6)
    assert predictor.lesion_classes == [1, 2]
