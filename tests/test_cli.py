"""End-to-end CLI behaviour through ``covseg.cli.main``: evaluate, predict, compare, cv, download, bad input."""
from __future__ import annotations

import io
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from covseg import experiment
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.paired import read_fold_scores

from conftest import REAL_SEMISEG, TINY_OVERRIDES, ctrl_c_at_epoch, record_syncs_and_renames


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("covseg: error: ") and "Traceback" not in err[0]
    return err[0]


@pytest.mark.real_figures  # the report's figure, drawn, end to end
def test_evaluate_writes_report(tiny_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiny_run), "-o", str(out), "--quiet"]) == 0
    assert "Inf-Net meanDic" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["task"] == "binary"
    for kind in ("per_image", "pooled"):
        assert set(metrics[kind]) == {"dice", "iou", "sensitivity", "specificity", "precision"}
    assert 0 <= metrics["pixel_accuracy"] <= 1 and 0 <= metrics["infnet"]["meanDic"] <= 1
    rows = (out / "per_image.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("name,pixels,fg_dice")
    assert (out / "best_worst.png").stat().st_size > 1000
    assert "| dice |" in (out / "metrics.md").read_text()


def test_evaluate_a_checkpoint_file_inside_its_run_folder(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval-heldout", ignore_errors=True)
    assert main(["evaluate", str(run / "best.pt"), "--quiet"]) == 0  # the run's data and held-out images
    report = json.loads((run / "eval-heldout-best" / "metrics.json").read_text())
    assert report["model"]["file"].endswith("best.pt") and report["n_images"] == 4
    assert not (run / "eval-heldout").exists()  # the run's own report (last.pt for its held-out fold) stays its own
    assert main(["evaluate", str(run / "last.pt"), "--quiet"]) == 0
    assert json.loads((run / "eval-heldout" / "metrics.json").read_text())["model"]["file"].endswith("last.pt")


def test_evaluate_pixel_accuracy_matches_predictions(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    # predict the held-out images, then recompute pixel accuracy by hand from the written PNGs
    split = json.loads((tiny_run / "split.json").read_text())
    imgs = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label"
    files = [str(imgs / "Imgs" / f"{n}.jpg") for n in split["val"]]
    assert main(["predict", *files, "-o", str(tmp_path / "pred"), "--model", str(tiny_run), "--quiet",
                 "--precision", "fp32"]) == 0
    assert main(["evaluate", str(tiny_run), "-o", str(tmp_path / "eval"), "--quiet", "--precision", "fp32",
                 "--checkpoint", "best"]) == 0
    correct = total = 0
    for n in split["val"]:
        pred = np.array(Image.open(tmp_path / "pred" / f"{n}.png"))
        truth = np.array(Image.open(imgs / "GT" / f"{n}.png")) > 0
        assert pred.shape == truth.shape
        correct += int((pred == truth).sum())
        total += truth.size
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["pixel_accuracy"] == pytest.approx(correct / total, abs=1e-6)


def test_predict_png_nifti_overlays_json(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    hu = np.linspace(-1000, 100, 48 * 40, dtype=np.float32).reshape(48, 40)  # nibabel (x, y)
    affine = np.diag([0.7, 0.8, 5.0, 1.0])
    affine[:3, 3] = [10, -20, 30]
    nib.save(nib.Nifti1Image(hu[..., None], affine), str(tmp_path / "slice.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", str(src / "0.jpg"), str(src / "1.jpg"), str(tmp_path / "slice.nii.gz"), "-o", str(out),
                 "--model", str(tiny_run), "--quiet"]) == 0
    label = Image.open(out / "0.png")
    assert label.size == Image.open(src / "0.jpg").size and label.mode == "L"
    assert set(np.unique(np.array(label))) <= {0, 1}
    nii = nib.load(str(out / "slice.nii.gz"))
    assert nii.shape == (48, 40, 1) and np.allclose(nii.affine, affine)
    assert (out / "overlays" / "0.png").is_file() and (out / "overlays" / "slice.png").is_file()
    summary = json.loads((out / "predictions.json").read_text())
    assert [r["output"] for r in summary["images"]] == ["0.png", "1.png", "slice.nii.gz"]
    fractions = summary["images"][0]["fractions"]
    assert sum(fractions.values()) == pytest.approx(1.0)
    pred = np.array(label)
    assert fractions["infection"] == pytest.approx((pred == 1).mean(), abs=1e-6)


def test_predict_of_one_image_says_one_label_map(tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    # before: "wrote 1 label maps to OUT"
    image = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg"
    out = tmp_path / "out"
    assert main(["predict", str(image), "-o", str(out), "--model", str(tiny_run), "--no-overlays", "--quiet"]) == 0
    assert capsys.readouterr().out == f"wrote 1 label map to {out}\n"


def test_predict_without_overlays_removes_the_stale_overlay_of_each_image_it_predicts(tiny_run: Path, tiny_data: Path,
                                                                                      tmp_path: Path) -> None:
    # before: 0.png was the new label map while overlays/0.png still drew the earlier prediction
    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    out = tmp_path / "out"
    assert main(["predict", str(src / "0.jpg"), str(src / "1.jpg"), "-o", str(out), "--model", str(tiny_run),
                 "--quiet"]) == 0
    assert (out / "overlays" / "0.png").is_file() and (out / "overlays" / "1.png").is_file()
    assert main(["predict", str(src / "0.jpg"), "-o", str(out), "--model", str(tiny_run), "--quiet",
                 "--no-overlays"]) == 0
    assert (out / "0.png").is_file() and not (out / "overlays" / "0.png").exists()
    assert (out / "overlays" / "1.png").is_file()  # an image not predicted again keeps its outputs


class _ThresholdBackend:
    """Logits that call lesion wherever the network's input is above 0.5: the label map is the input's bright region."""

    description = "threshold"

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_a_nifti_label_map_sits_on_the_voxels_of_its_lesion(resize: str, tmp_path: Path) -> None:
    from covseg.inference import Predictor
    from covseg.labels import get_scheme
    from covseg.predict import predict_files

    # an off-centre, non-square blob in a non-square slice: a label map written without the (H, W) -> (x, y)
    # transpose has the right size (50 x 30 voxels either way) but its blob elsewhere
    hu = np.full((50, 30), -900.0, np.float32)  # nibabel's (x, y); -900 HU is 0.3 in the lung window, 0 HU 0.9
    hu[35:45, 5:10] = 0.0
    nib.save(nib.Nifti1Image(hu[..., None], np.eye(4)), str(tmp_path / "s.nii.gz"))
    out = tmp_path / "out"
    predict_files(Predictor(_ThresholdBackend(), 32, resize=resize), get_scheme("binary"), [tmp_path / "s.nii.gz"],
                  out, {"name": "threshold", "backend": "threshold"}, overlays=False, progress=False)
    called = np.asarray(nib.load(str(out / "s.nii.gz")).dataobj)[..., 0] > 0
    blob = hu > -500
    assert 2 * (called & blob).sum() / (called.sum() + blob.sum()) > 0.9  # resampling blurs only the blob's rim


@pytest.mark.parametrize("iop", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)],
                         ids=["supine", "prone", "transposed"])
def test_a_dicom_label_map_sits_on_the_stored_pixels_of_its_lesion(iop: tuple[int, ...], tmp_path: Path) -> None:
    """A DICOM slice is read turned by its ImageOrientationPatient (as a series would be), but its label map PNG is
    written in the file's own pixel order and size, so that it overlays the stored slice: a prone slice's map was
    turned 180 degrees, a transposed one's W x H (review helper 159)."""
    from covseg.inference import Predictor
    from covseg.labels import get_scheme
    from covseg.predict import predict_files
    from test_datasets import write_dicom

    stored = np.full((50, 30), 124, np.uint16)  # -900 HU through slope 2 / intercept -1024
    stored[35:45, 5:10] = 512  # an off-centre, non-square blob at 0 HU
    path = write_dicom(tmp_path / "s.dcm", stored)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = list(map(float, iop))
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    summary = predict_files(Predictor(_ThresholdBackend(), 32), get_scheme("binary"), [path], out,
                            {"name": "threshold", "backend": "threshold"}, progress=False)
    called = np.asarray(Image.open(out / "s.png")) > 0
    blob = stored > 300
    assert called.shape == blob.shape == (50, 30)
    assert (summary["images"][0]["height"], summary["images"][0]["width"]) == (50, 30)
    assert 2 * (called & blob).sum() / (called.sum() + blob.sum()) > 0.9
    assert np.asarray(Image.open(out / "overlays" / "s.png")).shape[:2] == (50, 30)


def _record_evaluation_devices(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``device`` of every ``evaluate_run`` call ``compare`` and ``cv`` make from now on (each still runs)."""
    devices: list[str] = []
    evaluate_run = experiment.evaluate_run

    def recording(*args, **kwargs):
        devices.append(kwargs.get("device", "cpu"))
        return evaluate_run(*args, **kwargs)

    monkeypatch.setattr(experiment, "evaluate_run", recording)
    return devices


def test_compare_and_cv(tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    devices = _record_evaluation_devices(monkeypatch)  # each model is scored on the device it trained on
    common = ["--recipe", "tiny", "--data", str(tiny_data), "--epochs", "1", "--quiet", "--device", "auto",
              *TINY_OVERRIDES]
    assert main(["compare", "--models", "unet", "segnet", "--split", "cv:0", "-o", str(tmp_path / "cmp"), *common]) == 0
    assert devices == ["auto", "auto"]
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| metric | unet | segnet |" in table and "mean Dice" in table
    split = json.loads((tmp_path / "cmp" / "unet" / "split.json").read_text())
    held_out = len(split["test"] or split["val"])  # cv:0's held-out fold is its validation part
    assert f"| held-out images | {held_out} | {held_out} |" in table
    assert f"rest on {held_out} held-out images; image by image" in table
    assert (tmp_path / "cmp" / "comparison.png").is_file()
    # a second compare reuses the finished runs; other settings in the same folder are refused
    mtime = (tmp_path / "cmp" / "segnet" / "last.pt").stat().st_mtime_ns
    assert main(["compare", "--models", "unet", "segnet", "--split", "cv:0", "-o", str(tmp_path / "cmp"), *common]) == 0
    assert (tmp_path / "cmp" / "segnet" / "last.pt").stat().st_mtime_ns == mtime
    capsys.readouterr()
    assert main(["compare", "--models", "unet", "--split", "cv:1", "-o", str(tmp_path / "cmp"), *common]) == 2
    assert "other settings" in capsys.readouterr().err
    assert "name: segnet" in (tmp_path / "cmp" / "segnet" / "config.yaml").read_text()
    assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), *common]) == 0
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert len(cv["columns"]["mean Dice (per image)"]) == 3
    table = (tmp_path / "cv" / "cv.md").read_text().splitlines()
    mean_row = [row for row in table if row.startswith("| mean ± std |")][0].split(" | ")
    assert mean_row[-1].split(" ± ")[0].isdigit()  # train seconds in whole seconds
    # the interval of the folds' mean per-image Dice, from each fold's per_image.csv read here by hand: the images
    # whose truth holds a lesion, resampled within their fold (fold K with seed K)
    import csv

    from covseg.metrics import bootstrap_interval, bootstrap_means
    folds = []
    for k in range(3):
        with (tmp_path / "cv" / f"fold-{k}" / "eval-heldout" / "per_image.csv").open() as handle:
            rows = sorted(csv.DictReader(handle), key=lambda r: r["name"])  # image-name order, as string names sort
            folds.append([float(r["dice_infection"]) for r in rows if float(r["truth_infection"])])
    means = np.mean([bootstrap_means(np.array(f)[:, None], 2000, seed=k)[:, 0] for k, f in enumerate(folds)], axis=0)
    fold_means = [np.mean(f) for f in folds]
    assert np.mean(fold_means) == pytest.approx(cv["summary"]["Dice infection (per image)"][0], abs=1e-5)
    assert cv["intervals"]["Dice infection (per image)"] == pytest.approx(bootstrap_interval(means), abs=1e-9)
    low, high = cv["intervals"]["Dice infection (per image)"]
    assert f"from the held-out images alone (each fold's images resampled within the fold, 2000 resamples, seeded; a " \
           f"training seed's spread is not in it): infection {low:.4f}–{high:.4f}." in "\n".join(table)
    # finished folds are not trained again
    mtime = (tmp_path / "cv" / "fold-1" / "best.pt").stat().st_mtime_ns
    assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), *common]) == 0
    assert (tmp_path / "cv" / "fold-1" / "best.pt").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(("name", "average", "described"), [
    ("ema", ("train.ema=0.5",), "`ema.pt`, decay 0.5"),
    ("swa", ("train.swa_epochs=1", "train.swa_lr=0.005"), "average over the last epoch (`swa.pt`, SWA at lr 0.005)"),
])
def test_cv_with_a_weight_average_scores_it_beside_last(tiny_data: Path, tmp_path: Path, name: str,
                                                        average: tuple[str, ...], described: str) -> None:
    common = ["--recipe", "tiny", "--data", str(tiny_data), "--epochs", "2", "--quiet", *TINY_OVERRIDES, *average]
    assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), *common]) == 0
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    key = "mean Dice (per image)"
    # an EMA run's own model is last.pt, with ema.pt beside it; an SWA run's own model is swa.pt, with last.pt beside
    own, beside = ("last", "ema") if name == "ema" else ("swa", "last")
    for k in range(3):
        fold = tmp_path / "cv" / f"fold-{k}"
        main_report = json.loads((fold / "eval-heldout" / "metrics.json").read_text())
        side_report = json.loads((fold / f"eval-heldout-{beside}" / "metrics.json").read_text())
        assert main_report["model"]["file"].endswith(f"{own}.pt")
        assert side_report["model"]["file"].endswith(f"{beside}.pt")
        dice = {c: m["per_image"]["dice"]["mean_foreground"] for c, m in ((own, main_report), (beside, side_report))}
        assert cv["columns"][key][k] == dice[own] and cv[name]["columns"][key][k] == dice[name]
        assert cv[name]["minus_last"]["columns"][key][k] == pytest.approx(dice[name] - dice["last"])
        if name == "swa":
            assert cv["last"]["columns"][key][k] == dice["last"]
    assert "train seconds" not in cv[name]["columns"]
    table = (tmp_path / "cv" / "cv.md").read_text()
    assert described in table and f"| {name} − last, mean ± std |" in table
    if name == "swa":
        # a fold report that scored last.pt (as before swa.pt became the run's model) is not taken for swa.pt's:
        # cv-compare refuses it, and cv scores the fold again
        fold = tmp_path / "cv" / "fold-1"
        shutil.rmtree(fold / "eval-heldout")
        shutil.copytree(fold / "eval-heldout-last", fold / "eval-heldout")
        with pytest.raises(CovsegError, match="scored last.pt, not the run's own swa.pt"):
            read_fold_scores(tmp_path / "cv")
        assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), *common]) == 0
        again = json.loads((fold / "eval-heldout" / "metrics.json").read_text())
        assert again["model"]["file"].endswith("swa.pt")
        assert json.loads((tmp_path / "cv" / "cv.json").read_text()) == cv


def test_cv_with_seeds_repeats_the_folds_and_scores_seed_ensembles(tiny_data: Path, tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    devices = _record_evaluation_devices(monkeypatch)  # every run and ensemble is scored on the training device
    common = ["--recipe", "tiny", "--data", str(tiny_data), "--epochs", "1", "--quiet", "--device", "auto",
              *TINY_OVERRIDES]
    out = tmp_path / "cvs"
    assert main(["cv", "--folds", "3", "--seeds", "1", "1", "-o", str(out), *common]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds 0 1 2" in err[0] and not out.exists()
    assert main(["cv", "--folds", "3", "--seeds", "0", "1", "-o", str(out), *common]) == 0
    assert "seed ensemble" in capsys.readouterr().out
    assert devices == ["auto"] * (3 * 2 + 3)  # each seed's folds, then each fold's seed ensemble
    expected = "cuda" if torch.cuda.is_available() else "cpu"  # what `auto` resolves to here
    report = json.loads((out / "ensemble" / "fold-2" / "metrics.json").read_text())
    assert all(f" {expected} " in member["backend"] for member in report["model"]["members"])
    assert "seed: 1" in (out / "seed-1" / "fold-2" / "config.yaml").read_text()
    summary = json.loads((out / "seeds.json").read_text())
    key = "mean Dice (per image)"
    means = [json.loads((out / f"seed-{s}" / "cv.json").read_text())["summary"][key][0] for s in (0, 1)]
    assert summary["per_seed"]["1"][key][0] == pytest.approx(means[1])
    assert summary["over_seeds"][key] == pytest.approx([(means[0] + means[1]) / 2, abs(means[0] - means[1]) / 2])
    every = [v for s in (0, 1) for v in json.loads((out / f"seed-{s}" / "cv.json").read_text())["columns"][key]]
    assert summary["every_model"][key][0] == pytest.approx(np.mean(every))
    for k in range(3):
        report = json.loads((out / "ensemble" / f"fold-{k}" / "metrics.json").read_text())
        assert [Path(m["file"]) for m in report["model"]["members"]] == \
            [out / f"seed-{s}" / f"fold-{k}" / "last.pt" for s in (0, 1)]
        assert summary["ensemble"]["columns"][key][k] == report["per_image"]["dice"]["mean_foreground"]
    seconds = [json.loads((out / f"seed-{s}" / "cv.json").read_text())["columns"]["train seconds"][0] for s in (0, 1)]
    assert summary["ensemble"]["columns"]["train seconds"][0] == pytest.approx(sum(seconds))
    # the seed ensemble's interval, from its folds' own per_image.csv (fold K drawn with seed K), beside the seeds'
    import csv

    from covseg.metrics import stratified_bootstrap_interval
    groups = []
    for k in range(3):
        with (out / "ensemble" / f"fold-{k}" / "per_image.csv").open() as handle:
            rows = sorted(csv.DictReader(handle), key=lambda r: r["name"])  # image-name order, as string names sort
            groups.append([float(r["dice_infection"]) for r in rows if float(r["truth_infection"])])
    expected = stratified_bootstrap_interval(groups, seeds=[0, 1, 2])
    assert summary["ensemble"]["intervals"]["Dice infection (per image)"] == pytest.approx(expected, abs=1e-6)
    assert (f"95 % interval of the seed ensemble's folds' mean per-image Dice from the held-out images alone (each "
            f"fold's images resampled within the fold, 2000 resamples, seeded; a training seed's spread is not in it): "
            f"infection {expected[0]:.4f}–{expected[1]:.4f}.") in (out / "seeds.md").read_text()
    # a second run trains and scores nothing again
    mtimes = [(out / "seed-1" / "fold-0" / "last.pt").stat().st_mtime_ns,
              (out / "ensemble" / "fold-0" / "metrics.json").stat().st_mtime_ns]
    assert main(["cv", "--folds", "3", "--seeds", "0", "1", "-o", str(out), *common]) == 0
    assert [(out / "seed-1" / "fold-0" / "last.pt").stat().st_mtime_ns,
            (out / "ensemble" / "fold-0" / "metrics.json").stat().st_mtime_ns] == mtimes
    # another seed set re-scores the ensembles, and going back re-scores them again with the named members only
    assert main(["cv", "--folds", "3", "--seeds", "0", "2", "-o", str(out), *common]) == 0
    assert main(["cv", "--folds", "3", "--seeds", "0", "1", "-o", str(out), *common]) == 0
    assert (out / "seed-1" / "fold-0" / "last.pt").stat().st_mtime_ns == mtimes[0]
    members = json.loads((out / "ensemble" / "fold-1" / "metrics.json").read_text())["model"]["members"]
    assert [Path(m["file"]).parent.parent.name for m in members] == ["seed-0", "seed-1"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--split", "test", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seed-0, seed-1, seed-2" in err[0]


def test_multiclass_run_and_task_mismatch(tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "mc"
    assert main(["train", "--recipe", "tiny", "--task", "multiclass", "--data", str(tiny_data), "--split", "cv:1",
                 "--epochs", "1", "-o", str(run), "--quiet", *TINY_OVERRIDES]) == 0
    assert main(["evaluate", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "eval-heldout" / "metrics.json").read_text())
    assert set(metrics["per_image"]["dice"]) == {"background", "ggo", "consolidation", "pleural_effusion",
                                                 "mean_foreground"}
    assert metrics["images_with_class"]["pleural_effusion"] == 0
    assert metrics["per_image"]["dice"]["pleural_effusion"] is None
    capsys.readouterr()
    imgs = tiny_data / "Dataset/TrainingSet/MultiClassInfection-Train/Imgs"
    assert main(["predict", str(imgs), "-o", str(tmp_path / "p"), "--model", str(run), "--task", "binary"]) == 2
    assert "multiclass task" in _one_line_error(capsys)
    # an ensemble of a binary and a multiclass model is refused before anything is written
    out = tmp_path / "ens"
    assert main(["evaluate", str(tiny_run), str(run), "--split", "all", "-o", str(out), "--quiet"]) == 2
    assert "models of one task" in _one_line_error(capsys) and not out.exists()
    # scored on masks of 0 and 1 alone (lesion-vs-background masks?), the report says GGO alone was scored and why
    own = tmp_path / "own"
    (own / "images").mkdir(parents=True)
    (own / "masks").mkdir()
    for i, lesion in enumerate((1, 0)):
        Image.fromarray(np.full((32, 32), 100, np.uint8)).save(own / "images" / f"{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:16, 8:16] = lesion
        Image.fromarray(mask).save(own / "masks" / f"{i}.png")
    assert main(["evaluate", str(run), "--data", str(own), "--split", "all", "-o", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    assert "covseg: warning: no mask of these 2 images holds a label above 1" in capsys.readouterr().err
    assert "so GGO alone is scored" in (tmp_path / "ev" / "metrics.md").read_text()
    caveats = json.loads((tmp_path / "ev" / "metrics.json").read_text())["caveats"]
    assert sum("so GGO alone is scored" in c for c in caveats) == 1


@pytest.mark.parametrize("case", ["missing_data", "no_masks", "bad_label", "size_mismatch", "empty",
                                  "not_a_checkpoint", "plain_state_dict", "missing_input", "bad_override"])
def test_bad_input_one_line_exit_2(case: str, tiny_data: Path, tiny_run: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    run = tmp_path / "run"
    train = ["train", "--recipe", "tiny", "--data", str(data), "-o", str(run), "--quiet"]
    if case == "missing_data":
        argv = train
    elif case in ("no_masks", "bad_label", "size_mismatch", "empty"):
        shutil.copytree(tiny_data, data)
        gt = data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/GT"
        if case == "no_masks":
            (gt / "3.png").unlink()
        elif case == "bad_label":
            Image.fromarray(np.full((40, 40), 7, np.uint8)).save(gt / "3.png")
            shape = Image.open(data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/3.jpg").size
            Image.fromarray(np.full(shape[::-1], 7, np.uint8)).save(gt / "3.png")
        elif case == "size_mismatch":
            Image.fromarray(np.zeros((5, 5), np.uint8)).save(gt / "3.png")
        else:
            for f in (data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label").rglob("*.*"):
                f.unlink()
        argv = train
    elif case == "not_a_checkpoint":
        (tmp_path / "x.pt").write_bytes(b"garbage")
        argv = ["evaluate", str(tmp_path / "x.pt"), "--data", str(tiny_data)]
    elif case == "plain_state_dict":
        torch.save({"weight": torch.zeros(2)}, tmp_path / "y.pt")
        argv = ["predict", str(tiny_data), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "y.pt")]
    elif case == "missing_input":
        argv = ["predict", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o"), "--model", str(tiny_run)]
    else:
        argv = ["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(run), "train.nope=1"]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    if case == "not_a_checkpoint":  # what was wrong (torch's reason, never a bare number) and what to give
        assert "not a readable covseg checkpoint (" in err and "give a .pt file that covseg train wrote" in err
    assert not run.exists() or not any(run.iterdir())
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bad_input_part_way_leaves_output_untouched(tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    (tmp_path / "in").mkdir()
    shutil.copy(src / "0.jpg", tmp_path / "in" / "a.jpg")
    (tmp_path / "in" / "b.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "in"), "-o", str(out), "--model", str(tiny_run), "--batch-size", "1",
                 "--quiet"]) == 2
    assert "b.png" in _one_line_error(capsys)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_predict_into_its_input_folder_never_overwrites_an_input(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                                 capsys) -> None:
    # a PNG slice's label map is <stem>.png: written into the slices' own folder it would replace the slice
    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    folder = tmp_path / "slices"
    folder.mkdir()
    Image.open(src / "0.jpg").save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    Image.open(src / "0.jpg").save(folder / "b.jpg")  # its label map b.png would replace nothing, yet join the inputs
    for out in (folder, folder / "predictions"):  # -o the folder itself, or one inside it (fuzz helper 168)
        assert main(["predict", str(folder), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 2
        assert _one_line_error(capsys).endswith(f"{out}: is inside the input folder {folder}, where predictions "
                                                "would be taken for inputs by the next run; give -o a folder outside it")
    assert (folder / "a.png").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.png", "b.jpg"]


def test_predict_refuses_no_overlays_when_every_input_is_a_scan(tmp_path: Path, capsys) -> None:
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((16, 16, 6), -800, np.int16), np.eye(4)), str(scan))
    # refused before the model is opened: --model names a folder holding no run
    assert main(["predict", str(scan), "-o", str(tmp_path / "o"), "--model", str(tmp_path), "--no-overlays"]) == 2
    assert "--no-overlays acts on 2-D images only, and every input here is a 3-D scan" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_predict_min_lesion_ml_must_be_a_volume(value: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["predict", str(tmp_path), "-o", str(tmp_path / "o"), "--model", str(tmp_path), "--min-lesion-ml", value])
    assert refused.value.code == 2 and "--min-lesion-ml: must be a finite number >= 0" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--series", "1.2.3"], ["--spacing", "1", "1", "1"], ["--keep-outside-lungs"],
                                  ["--min-lesion-ml", "0.5"]])
def test_predict_refuses_scan_only_options_when_every_input_is_a_slice(flag: list[str], tiny_data: Path,
                                                                      tmp_path: Path, capsys) -> None:
    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    # refused before the model is opened: --model names a folder holding no run
    assert main(["predict", str(src / "0.jpg"), "-o", str(tmp_path / "o"), "--model", str(tmp_path), *flag]) == 2
    error = _one_line_error(capsys)
    assert f"{flag[0]} acts on 3-D scans only, and every input here is a 2-D image" in error
    assert ("give the folder" in error) == (flag[0] == "--spacing")
    assert not (tmp_path / "o").exists()


def test_predict_into_an_existing_file_is_refused_first(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                        capsys) -> None:
    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["predict", str(src / "0.jpg"), "-o", str(tmp_path / "notes.txt"), "--model", str(tiny_run),
                 "--quiet"]) == 2
    assert "notes.txt: is a file; give -o a folder" in _one_line_error(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_predict_into_an_existing_folder_on_another_file_system(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # -o a mount point (a Docker volume, a USB disk): nothing can be renamed into it from its parent folder
    import errno
    import os

    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    out = tmp_path / "mnt"
    out.mkdir()
    rename = os.replace

    def replace_within_mount(a, b) -> None:
        inside = [Path(p).resolve().is_relative_to(out.resolve()) for p in (a, b)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(a))
        rename(a, b)

    monkeypatch.setattr(os, "replace", replace_within_mount)
    assert main(["predict", str(src / "0.jpg"), "-o", str(out), "--model", str(tiny_run), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.png", "overlays", "predictions.json"]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (relative, as text): a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def test_predict_into_a_folder_with_a_file_named_overlays_leaves_it_as_it_was(
        tiny_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # the overlays folder cannot be made: refused before any image is predicted, not after 0.png replaced the old
    # label map while predictions.json stayed the last run's
    import covseg.predict

    def never(*args, **kwargs):
        raise AssertionError("an image was read before the outputs' places were checked")

    src = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    out = tmp_path / "out"
    out.mkdir()
    (out / "0.png").write_text("old label map\n")
    (out / "predictions.json").write_text('{"old": true}\n')
    (out / "overlays").write_text("a file where the overlays folder goes\n")
    before = _tree(out)
    monkeypatch.setattr(covseg.predict, "read_image", never)
    assert main(["predict", str(src / "0.jpg"), str(src / "1.jpg"), "-o", str(out), "--model", str(tiny_run),
                 "--quiet"]) == 2
    error = _one_line_error(capsys)
    assert f"{out / 'overlays'}: is a file where covseg writes a folder" in error
    assert "remove it or choose another output folder" in error
    assert _tree(out) == before


@pytest.mark.parametrize("blocker", ["overlays", "b.png"])
def test_outputs_are_moved_all_or_none(blocker: str, tmp_path: Path) -> None:
    # a file where a folder goes, or a folder where a file goes: refused before the first file is moved
    from covseg.predict import _publish

    stage, out = tmp_path / "stage", tmp_path / "out"
    (stage / "overlays").mkdir(parents=True)
    for name in ("a.png", "b.png", "overlays/a.png", "predictions.json"):
        (stage / name).write_text("new")
    out.mkdir()
    (out / "a.png").write_text("old")
    if blocker == "overlays":
        (out / "overlays").write_text("mine")
    else:
        (out / "b.png" / "sub").mkdir(parents=True)
    before = _tree(out)
    with pytest.raises(CovsegError, match=f"{out / blocker}: is a (file|folder) where covseg writes"):
        _publish(stage, out)
    assert _tree(out) == before


def test_published_outputs_reach_the_disk_before_the_renames_that_name_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.predict import _publish

    stage, out = tmp_path / "stage", tmp_path / "out"
    (stage / "overlays").mkdir(parents=True)
    for name in ("a.png", "overlays/a.png", "predictions.json"):
        (stage / name).write_text("new")
    (tmp_path / "out").mkdir()
    (out / "stale.png").write_text("an earlier run's output")
    events = record_syncs_and_renames(monkeypatch)
    _publish(stage, out, stale=["stale.png"])
    renames = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    assert [events[i][1] for i in renames] == [str(out / n) for n in ("a.png", "overlays/a.png", "predictions.json")]
    synced_first = {Path(p).relative_to(stage).as_posix() for kind, p in events[:renames[0]] if kind == "fsync"}
    assert {"a.png", "overlays/a.png", "predictions.json"} <= synced_first  # every file, before any rename
    # after the last rename: the folders renamed into, deepest first, then the one that holds the output folder
    assert events[renames[-1] + 1:] == [("fsync", str(out / "overlays")), ("fsync", str(out)),
                                        ("fsync", str(tmp_path))]
    assert not (out / "stale.png").exists() and (out / "overlays" / "a.png").read_text() == "new"


def test_inputs_whose_outputs_clash_are_told_the_output_they_would_share(tmp_path: Path) -> None:
    from covseg.inference import Predictor
    from covseg.labels import get_scheme
    from covseg.predict import predict_files

    def predict(*names: str, overlays: bool = True) -> None:
        files = [tmp_path / n for n in names]
        for f in files:
            f.touch()
        predict_files(Predictor(_ThresholdBackend(), 32), get_scheme("binary"), files, tmp_path / "out",
                      {"name": "threshold", "backend": "threshold"}, overlays=overlays, progress=False)

    with pytest.raises(CovsegError, match="several inputs would write s.nii.gz; "):
        predict("s.nii", "s.nii.gz")
    with pytest.raises(CovsegError, match="several inputs would write overlays/a.png; "):
        predict("a.jpg", "a.nii.gz")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, message", [("model.width=0", "must be positive"),
                                               ("train.batch_size=0", "must be positive"),
                                               ("train.schedule=linear", "use one of"),
                                               ("data.input_size=30", "divisible"),
                                               ("train.lr=[0.1", "train.lr=[0.1': not a YAML value"),
                                               ("data.split_seed=-1", "data.split_seed is -1; it must be >= 0"),
                                               ("train.seed=-2", "train.seed is -2; it must be >= 0"),
                                               ("train.weight_decay=-1", "train.weight_decay is -1; it must be"),
                                               ("train.lr=.inf", "train.lr is inf; it must be a finite"),
                                               ("train.threads=-1", "train.threads is -1; it must be 0 (torch's"),
                                               ("train.threads=100000", "train.threads is 100000; it must be 0"),
                                               ("train.consistency_batch=1000000",
                                                "train.consistency_batch is 1000000; at most 256"),
                                               ("train.momentum=1", "train.momentum is 1.0; it must be in [0, 1)"),
                                               ("train.grad_clip=.nan", "train.grad_clip is nan; it must be"),
                                               ("data.window_width=0", "data.window_width must be positive"),
                                               ("data.pseudo_ratio=.inf", "data.pseudo_ratio must be positive and finite"),
                                               ("train.augment.rotate_deg=.inf", "train.augment.rotate_deg is inf"),
                                               ("train.seed=9223372036854775808", "it must be below 2**32"),
                                               ("data.input_size=4", "needs at least 8 (2 x 2**depth)")])
def test_bad_settings_refused_before_anything_is_written(override: str, message: str, tiny_data: Path,
                                                         tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(run), "--quiet", override]) == 2
    assert message in _one_line_error(capsys)
    assert not run.exists()


def test_a_setting_refused_names_the_recipe_and_options_not_an_override(tiny_data: Path, tmp_path: Path,
                                                                        capsys) -> None:
    # review helper 167: `--split cv:5` was reported as "override: data.split is cv:5", an override never typed
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(run), "--quiet", "--split",
                 "cv:5"]) == 2
    assert _one_line_error(capsys) == ("covseg: error: the tiny recipe with the options given: data.split is cv:5, but "
                                       "data.folds is 5; use cv:0 to cv:4, or more folds")
    assert main(["train", "--data", str(tiny_data), "-o", str(run), "--quiet", "--epochs", "1",
                 "model.width=0"]) == 2
    assert _one_line_error(capsys).startswith("covseg: error: the default recipe with the options given: model.width")
    assert not run.exists()


def test_force_only_replaces_run_folders(tiny_data: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(tmp_path / "precious"),
                 "--force", "--quiet"]) == 2
    assert "not a covseg run folder" in _one_line_error(capsys)
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "years of work"


def test_a_non_run_folder_without_force_is_not_offered_force_or_resume(tiny_data: Path, tmp_path: Path,
                                                                      capsys) -> None:
    # before: "precious: run folder exists; pass --force to overwrite it or --resume precious to continue it", and
    # --force then refused it as no run folder, --resume as having no last.pt
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("years of work")
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(tmp_path / "precious"),
                 "--quiet"]) == 2
    assert _one_line_error(capsys) == (f"covseg: error: {tmp_path / 'precious'}: is not empty and not a covseg run "
                                       "folder; --force only replaces run folders, so choose a new -o")
    assert [p.name for p in (tmp_path / "precious").iterdir()] == ["thesis.tex"]


def test_resume_refuses_new_settings(tiny_run: Path, capsys) -> None:
    assert main(["train", "--resume", str(tiny_run), "--epochs", "9"]) == 2
    assert "drop --epochs" in _one_line_error(capsys)
    # an explicit --recipe is refused even when it names the default recipe: the run keeps its own settings
    assert main(["train", "--resume", str(tiny_run), "--recipe", "default"]) == 2
    assert "drop --recipe" in _one_line_error(capsys)


def test_a_tta_score_goes_beside_the_plain_report_and_cv_compare_refuses_one_in_its_place(tiny_run: Path,
                                                                                         tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["evaluate", str(run), "--tta", "--quiet"]) == 0
    assert json.loads((run / "eval-heldout-tta" / "metrics.json").read_text())["model"]["flip_tta"] is True
    assert not (run / "eval-heldout").exists()
    # a TTA report where the plain one belongs (as covseg evaluate --tta wrote before) is not paired with plain ones
    assert main(["evaluate", str(run), "--tta", "-o", str(run / "eval-heldout"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["cv-compare", str(run), str(run)]) == 2
    assert "was scored with flip TTA" in _one_line_error(capsys)


def test_evaluate_refuses_a_run_folder_as_its_report_folder(tiny_run: Path, tmp_path: Path, capsys) -> None:
    cv = tmp_path / "cv"
    run = cv / "fold-0"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    for out in (run, cv):  # the run's own folder, and a cross-validation folder holding it
        before = sorted(p.name for p in out.rglob("*"))
        assert main(["evaluate", str(run), "-o", str(out), "--quiet"]) == 2
        assert "is a run or cross-validation folder" in _one_line_error(capsys)
        assert sorted(p.name for p in out.rglob("*")) == before


def test_evaluate_refuses_a_file_as_its_report_folder_before_scoring(tiny_run: Path, tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.experiment

    def never(*args, **kwargs):
        raise AssertionError("scored before the report folder was checked")

    monkeypatch.setattr(covseg.experiment, "open_models", never)
    out = tmp_path / "report.txt"
    out.write_text("mine\n")
    assert main(["evaluate", str(tiny_run), "-o", str(out), "--quiet"]) == 2
    assert "report.txt: is a file, not a folder; give -o a folder" in _one_line_error(capsys)
    assert out.read_text() == "mine\n"
    # a report folder under that file cannot be made either: told before scoring too
    assert main(["evaluate", str(tiny_run), "-o", str(out / "sub"), "--quiet"]) == 2
    assert f"cannot be written ({out} is a file, not a folder)" in _one_line_error(capsys)


def test_an_output_path_through_a_file_is_told_as_such(tmp_path: Path, capsys) -> None:
    from covseg.cli import _file_system_refusal

    blocker = tmp_path / "afile.txt"
    blocker.write_text("")
    for err in (FileExistsError(17, "File exists", str(blocker)), NotADirectoryError(20, "Not a directory",
                                                                                    str(blocker))):
        assert _file_system_refusal(err) == 2
        assert _one_line_error(capsys) == f"covseg: error: {blocker} is a file, not a folder; give an output path " \
                                          "outside it"
    assert _file_system_refusal(PermissionError(13, "Permission denied", str(tmp_path / "x"))) == 2
    assert "x: Permission denied; check the path and permissions" in _one_line_error(capsys)


def test_ctrl_c_while_torch_is_imported_is_one_line_and_130(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.runtime
    from covseg.cli import entry

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(covseg.runtime, "keep_freed_memory", interrupted)
    assert entry(["evaluate", "nowhere"]) == 130
    assert capsys.readouterr().err == "covseg: interrupted\n"


@pytest.mark.parametrize("models, message", [(["unet", "segnet", "data.input_size=32"], "put KEY=VALUE overrides before"),
                                             (["unet", "unet"], "names a model twice")])
def test_compare_refuses_settings_or_repeats_in_its_model_list(models: list[str], message: str, tiny_data: Path,
                                                               tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(out), "--quiet",
                 "--models", *models]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_force_replaces_a_run_folder_cut_short_while_it_was_made(tiny_data: Path, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    import errno
    import os

    from covseg import run as run_module

    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    run = tmp_path / "run"
    command = ["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1",
               "-o", str(run), "--quiet", *TINY_OVERRIDES]
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "save_split", disk_full)
        assert main(command) != 0
    capsys.readouterr()
    assert (run / "config.yaml").is_file() and not (run / "split.json").exists()
    assert main([*command, "--force"]) == 0
    assert (run / "split.json").is_file() and (run / "last.pt").is_file()


def test_download_cli_from_directory_mirror(tmp_path: Path, capsys) -> None:
    if not REAL_SEMISEG.is_dir():
        pytest.skip("shared data mirror not present")
    assert main(["download", "--mirror", str(REAL_SEMISEG), "--data-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "training split: 200 files verified" in out and "test split" in out
    assert len(list((tmp_path / "covid-semiseg/Dataset/TrainingSet/MultiClassInfection-Train/GT").iterdir())) == 50


def test_the_program_keeps_freed_memory_except_for_download(monkeypatch, tmp_path: Path) -> None:
    from covseg import runtime
    from covseg.cli import entry

    calls: list[int] = []
    fitted: list[int] = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(runtime, "fit_threads_to_cpu_quota", lambda: fitted.append(1))
    assert main(["train", "--resume", str(tmp_path / "none")]) == 2
    assert calls == fitted == []  # the library's main() leaves the process's allocator and threads alone
    assert entry(["train", "--resume", str(tmp_path / "none")]) == 2
    assert calls == fitted == [1]
    assert entry(["download", "--mirror", str(tmp_path / "none"), "--data-dir", str(tmp_path / "data")]) == 2
    assert calls == fitted == [1]


def test_cv_jobs_trains_folds_in_worker_processes_as_one_at_a_time(tiny_data: Path, tmp_path: Path, capfd) -> None:
    from covseg.parallel_runs import threads_per_job

    common = ["--recipe", "tiny", "--data", str(tiny_data), "--epochs", "2", "--quiet", *TINY_OVERRIDES]
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(2))  # the threads each of two workers gets, so the runs can match
    try:
        assert main(["cv", "--folds", "3", "-o", str(tmp_path / "one"), *common]) == 0
    finally:
        torch.set_num_threads(threads)
    capfd.readouterr()
    assert main(["cv", "--folds", "3", "--jobs", "2", "-o", str(tmp_path / "two"), *common]) == 0
    err = capfd.readouterr().err  # the workers' lines too (their own processes: captured at the file descriptor)
    assert "training 3 runs, 2 at a time" in err and "finished run reused" not in err
    assert all(f"two/fold-{k}] training unet" in err for k in range(3))
    for k in range(3):
        one, two = (torch.load(tmp_path / d / f"fold-{k}" / "last.pt", weights_only=True)["model"] for d in ("one", "two"))
        assert one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one), k
    columns = [json.loads((tmp_path / d / "cv.json").read_text())["columns"] for d in ("one", "two")]
    assert columns[0].keys() == columns[1].keys()
    for name in columns[0]:
        if name != "train seconds":
            assert columns[1][name] == pytest.approx(columns[0][name]), name
    # a second call finds every fold finished and trains nothing
    mtime = (tmp_path / "two" / "fold-2" / "last.pt").stat().st_mtime_ns
    assert main(["cv", "--folds", "3", "--jobs", "2", "-o", str(tmp_path / "two"), *common]) == 0
    assert (tmp_path / "two" / "fold-2" / "last.pt").stat().st_mtime_ns == mtime
    assert "training 3 runs" not in capfd.readouterr().err
    # with --seeds every seed x fold run is trained first, then each seed's folds and the seed ensembles are scored
    two_folds = [o for o in common if not o.startswith("data.folds=")]
    assert main(["cv", "--folds", "2", "--seeds", "0", "1", "--jobs", "2", "-o", str(tmp_path / "seeds"),
                 *two_folds]) == 0
    assert "training 4 runs, 2 at a time" in capfd.readouterr().err
    assert all((tmp_path / "seeds" / f"seed-{s}" / f"fold-{k}" / "eval-heldout" / "metrics.json").is_file()
               for s in (0, 1) for k in (0, 1)) and (tmp_path / "seeds" / "seeds.md").is_file()


def test_cv_jobs_passes_a_workers_error_on_as_one_line(tiny_data: Path, tmp_path: Path, capfd,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--recipe", "tiny", "--data", str(tiny_data), "--epochs", "1", "--quiet",
              *[o for o in TINY_OVERRIDES if not o.startswith("data.folds=")]]
    with pytest.raises(SystemExit) as exit_:
        main(["cv", "--folds", "2", "--jobs", "0", "-o", str(tmp_path / "cv"), *common])
    assert exit_.value.code == 2 and "--jobs: must be a positive whole number" in capfd.readouterr().err
    # a worker's own refusal (here: training from a pretraining that is not there) reaches the user as one line.
    # cv refuses that before any worker starts (experiment._check_fold_inputs); here that check is skipped and this
    # process may not train, so the refusal can only come from a worker (a fresh process, its own covseg)
    monkeypatch.setattr(experiment, "_check_fold_inputs", lambda *args, **kwargs: None)
    monkeypatch.setattr(experiment, "train_or_resume", _trains_here)
    assert main(["cv", "--folds", "2", "--jobs", "2", "-o", str(tmp_path / "cv"), *common,
                 f"train.init={tmp_path / 'nothing'}"]) == 2
    err = capfd.readouterr().err
    assert "training 2 runs, 2 at a time" in err  # the runs went to the workers
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("covseg: error: ") and "no pretrained weights" in errors[0]
    # and it names the fold that failed (before: the refusal alone, whichever of the runs it came from)
    assert re.match(rf"covseg: error: {re.escape(str(tmp_path / 'cv'))}/fold-[01]: ", errors[0]), errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "cv" / "fold-0" / "last.pt").exists()


@pytest.mark.parametrize("force", [False, True])
def test_ctrl_c_during_compare_says_to_run_compare_again(force: bool, tiny_data: Path, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run

    common = ["--models", "unet", "segnet", "--recipe", "tiny", "--data", str(tiny_data), "--epochs", "2", "--quiet",
              "--split", "cv:0", *TINY_OVERRIDES, "-o", str(tmp_path / "cmp")]
    real = covseg.run.train_one_epoch

    def ctrl_c_in_segnet_s_second_epoch(*args, **kwargs):
        if args[6] == 1 and "segnet" in str(args[0].__class__).lower():
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "train_one_epoch", ctrl_c_in_segnet_s_second_epoch)
    capsys.readouterr()
    assert main(["compare", *common, *(["--force"] if force else [])]) == 130
    err = capsys.readouterr().err
    # with --force, running without it would reuse old runs of the models not reached yet (review helper 172)
    advice = (f"with --force every model trains again from the start; without it, each run in {tmp_path / 'cmp'} is "
              "kept or resumed, an old one too" if force else "it keeps the models already trained")
    assert (f"interrupted: 1 of 2 epochs saved; to go on, run the same covseg compare command again ({advice})"
            in err) and "--resume" not in err, err
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    unet_history = (tmp_path / "cmp" / "unet" / "history.csv").read_text()
    assert main(["compare", *common]) == 0  # as it says: U-Net kept, SegNet resumed
    assert (tmp_path / "cmp" / "unet" / "history.csv").read_text() == unet_history
    assert torch.load(tmp_path / "cmp" / "segnet" / "last.pt", weights_only=True)["epoch"] == 2


def _trains_here(*args, **kwargs):
    raise AssertionError("a run was trained in the main process, not in a worker")


def test_cv_finishes_an_interrupted_fold_even_when_someone_scored_it(tiny_data: Path, tmp_path: Path, capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run

    common = ["--recipe", "tiny", "--data", str(tiny_data), "--epochs", "2", "--quiet", *TINY_OVERRIDES]
    real = ctrl_c_at_epoch(1, monkeypatch)
    capsys.readouterr()
    assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), *common]) == 130
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    fold = tmp_path / "cv" / "fold-0"
    # the advice is the cv command again (review helper 167: it named covseg train --resume, which finishes one fold)
    err = capsys.readouterr().err
    assert ("interrupted: 1 of 2 epochs saved; to go on, run the same covseg cv command again (it keeps the folds "
            "already trained)\ncovseg: interrupted\n") in err and "--resume" not in err, err
    assert torch.load(fold / "last.pt", weights_only=True)["epoch"] == 1
    assert main(["evaluate", str(fold), "--quiet"]) == 0  # a look at the half-trained fold
    assert (fold / "eval-heldout" / "metrics.json").is_file()
    with pytest.raises(CovsegError, match="stopped after epoch 1 of 2; finish it"):  # cv-compare refuses it too
        read_fold_scores(tmp_path / "cv")
    assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), *common]) == 0
    assert torch.load(fold / "last.pt", weights_only=True)["epoch"] == 2
    report = json.loads((fold / "eval-heldout" / "metrics.json").read_text())
    cv = json.loads((tmp_path / "cv" / "cv.json").read_text())
    assert cv["columns"]["mean Dice (per image)"][0] == report["per_image"]["dice"]["mean_foreground"]
    assert (fold / "eval-heldout" / "metrics.json").stat().st_mtime >= (fold / "last.pt").stat().st_mtime


def test_cv_and_compare_refuse_runs_trained_on_other_data_and_rescore_moved_data(tiny_data: Path, tmp_path: Path,
                                                                                capsys) -> None:
    from conftest import write_semiseg

    other = write_semiseg(tmp_path / "other", seed=5)  # the same file names, other pixels
    moved = tmp_path / "moved"
    shutil.copytree(tiny_data, moved)  # the same data at another path
    tiny = ["--recipe", "tiny", "--epochs", "1", "--quiet", *TINY_OVERRIDES]
    common = [*tiny, "--folds", "3", "-o", str(tmp_path / "cv")]
    assert main(["cv", "--data", str(tiny_data), *common]) == 0
    table = (tmp_path / "cv" / "cv.md").read_text()
    folds = [tmp_path / "cv" / f"fold-{k}" for k in range(3)]
    mtimes = [(fold / "last.pt").stat().st_mtime_ns for fold in folds]
    recorded = json.loads((folds[0] / "run.json").read_text())["data"]
    capsys.readouterr()
    assert main(["cv", "--data", str(other), *common]) == 2
    err = _one_line_error(capsys)
    assert f"{folds[0]}: was trained on {recorded}, and the training images in {other} are not those" in err
    assert err.endswith("remove it to retrain it, or use another -o")
    assert (tmp_path / "cv" / "cv.md").read_text() == table
    assert [(fold / "last.pt").stat().st_mtime_ns for fold in folds] == mtimes
    # the same images at another path: the folds are reused, and scored again on that data
    assert main(["cv", "--data", str(moved), *common]) == 0
    assert [(fold / "last.pt").stat().st_mtime_ns for fold in folds] == mtimes
    scored_on = [json.loads((fold / "eval-heldout" / "metrics.json").read_text())["data"] for fold in folds]
    assert scored_on == [str(moved)] * 3
    assert (tmp_path / "cv" / "cv.md").read_text().split("| train seconds |")[0] == table.split("| train seconds |")[0]
    # compare reuses its finished runs the same way: another data set is refused, naming --force
    compare = ["compare", "--models", "unet", "--split", "cv:0", "-o", str(tmp_path / "cmp"), *tiny]
    assert main([*compare, "--data", str(tiny_data)]) == 0
    mtime = (tmp_path / "cmp" / "unet" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*compare, "--data", str(other)]) == 2
    err = _one_line_error(capsys)
    assert f"unet: was trained on {recorded}" in err
    assert err.endswith("pass --force to retrain it or use another output folder")
    assert (tmp_path / "cmp" / "unet" / "last.pt").stat().st_mtime_ns == mtime


def test_cv_refuses_a_fold_of_other_settings_before_training_any(tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cv"
    (out / "fold-2").mkdir(parents=True)
    (out / "fold-2" / "config.yaml").write_text("recipe: other\n")
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", "3", "--epochs", "1", "-o", str(out),
                 "--quiet", *TINY_OVERRIDES]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["fold-2"]  # fold 0 and fold 1 were not trained first
    assert f"{out / 'fold-2'}: holds a run with other settings" in _one_line_error(capsys)


@pytest.mark.parametrize("folds", ["0", "1", "-2"])
def test_cv_refuses_fewer_than_two_folds(folds: str, tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cv"
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("data.folds=")]
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", folds, "-o", str(out), "--quiet",
                 *overrides]) == 2
    assert f"--folds is {folds}" in _one_line_error(capsys)
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", folds, "--seeds", "0", "1",
                 "-o", str(out), "--quiet", *overrides]) == 2
    assert f"--folds is {folds}" in _one_line_error(capsys)
    assert not out.exists()


def test_cv_takes_its_fold_count_from_data_folds_unless_folds_is_given(tiny_data: Path, tmp_path: Path) -> None:
    # TINY_OVERRIDES set data.folds=3: without --folds that is the cross-validation's fold count
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--epochs", "1", "-o", str(tmp_path / "cv"),
                 "--quiet", *TINY_OVERRIDES]) == 0
    assert len(json.loads((tmp_path / "cv" / "cv.json").read_text())["columns"]["train seconds"]) == 3
    assert sorted(p.name for p in (tmp_path / "cv").glob("fold-*")) == ["fold-0", "fold-1", "fold-2"]
    assert len(json.loads((tmp_path / "cv" / "fold-0" / "split.json").read_text())["folds"]) == 3


def test_cv_does_not_offer_a_force_it_does_not_have(tiny_data: Path, tmp_path: Path, capsys) -> None:
    common = ["--recipe", "tiny", "--data", str(tiny_data), "--folds", "3", "-o", str(tmp_path / "cv"), "--quiet",
              *TINY_OVERRIDES]
    (tmp_path / "cv" / "fold-0").mkdir(parents=True)
    (tmp_path / "cv" / "fold-0" / "config.yaml").write_text("recipe: other\n")
    assert main(["cv", "--epochs", "1", *common]) == 2
    err = _one_line_error(capsys)
    assert "other settings" in err and "--force" not in err and "remove it" in err
    assert main(["cv", "--epochs", "1", "--force", *common]) == 2  # not silently ignored
    assert "--force" in _one_line_error(capsys)
    assert (tmp_path / "cv" / "fold-0" / "config.yaml").read_text() == "recipe: other\n"
    with pytest.raises(SystemExit):
        main(["cv", "--help"])
    assert "--force" not in capsys.readouterr().out  # nor listed in its help


def _damage(case: str, source: Path, target: Path) -> None:
    """Write ``target``: ``source`` (a covseg checkpoint) damaged as ``case`` says."""
    if case == "bytes_changed":  # a flipped run of bytes inside a tensor's storage, the archive's frame intact
        raw = bytearray(source.read_bytes())
        with zipfile.ZipFile(source) as archive:
            info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        middle = start + info.file_size // 2
        raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])
        target.write_bytes(bytes(raw))
        return
    data = torch.load(source, map_location="cpu", weights_only=True)
    if case == "no_model":
        del data["model"]
    elif case == "no_config":
        del data["config"]
    elif case == "model_a_tensor":
        data["model"] = torch.zeros(3)
    elif case == "model_a_list":
        data["model"] = [torch.zeros(3)]
    else:  # nan_weights
        name = next(k for k, v in data["model"].items() if v.is_floating_point())
        data["model"][name] = torch.full_like(data["model"][name], float("nan"))
    torch.save(data, target)


@pytest.mark.parametrize("case, message", [
    ("bytes_changed", "fails its CRC check"),
    ("no_model", "without model weights"),
    ("model_a_tensor", "without model weights"),
    ("model_a_list", "without model weights"),
    ("no_config", "without its run's settings"),
    ("nan_weights", "not finite numbers"),
])
def test_a_damaged_checkpoint_is_refused_in_one_line(case: str, message: str, tiny_run: Path, tiny_data: Path,
                                                       tmp_path: Path, capsys) -> None:
    bad = tmp_path / "last.pt"
    _damage(case, tiny_run / "last.pt", bad)
    assert main(["evaluate", str(bad), "--data", str(tiny_data), "-o", str(tmp_path / "report")]) == 2
    err = _one_line_error(capsys)
    assert message in err and str(bad) in err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("flags, overrides, message", [
    (["--folds", "2"], [], "covseg cv sets data.folds itself (--folds 2)"),  # TINY_OVERRIDES: data.folds=3
    (["--folds", "3"], ["data.split=official"], "covseg cv sets data.split itself"),
    # before: reset to its default in every fold without a word (train --split cv:K refuses it)
    (["--folds", "3"], ["data.val_fraction=0.3"], "covseg cv sets data.val_fraction itself"),
    ([], ["train.seed=5"], "covseg cv sets train.seed itself"),  # with --seeds 0 1, last
    (["--folds", "3"], [], "seeds must be 0 or more and below 2**32"),  # with --seeds 4294967296 0, last
])
def test_cv_refuses_overrides_it_would_drop_and_seeds_out_of_range(flags: list[str], overrides: list[str],
                                                                  message: str, tiny_data: Path, tmp_path: Path,
                                                                  capsys) -> None:
    out = tmp_path / "cv"
    seeds = ["4294967296", "0"] if "2**32" in message else ["0", "1"] if "train.seed" in message else []
    argv = ["cv", "--recipe", "tiny", "--data", str(tiny_data), *flags, "-o", str(out), "--quiet",
            *TINY_OVERRIDES, *overrides]
    assert main(argv + (["--seeds", *seeds] if seeds else [])) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()  # refused before any fold trained


def test_compare_refuses_a_model_name_override(tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(out),
                 "--quiet", "model.name=segnet", "--models", "unet"]) == 2
    assert "covseg compare sets model.name itself" in _one_line_error(capsys)
    assert not out.exists()


def test_a_flag_and_an_override_that_say_the_same_number_agree(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES, "train.epochs=1.0"]) == 0


def test_an_unwritable_output_names_the_file_asked_for_not_the_temporary_one(tmp_path: Path) -> None:
    """atomic_path's temporary file beside ``-o`` is an implementation detail: a refusal names ``-o`` itself."""
    import errno

    from covseg.fileio import atomic_path, atomic_write_text

    final = tmp_path / "out" / "cmp.md"
    with pytest.raises(OSError) as raised:
        with atomic_path(final) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert raised.value.filename == str(final)
    with pytest.raises(OSError) as raised:
        with atomic_path(final):
            raise OSError(errno.EIO, "other file", str(tmp_path / "elsewhere"))
    assert raised.value.filename == str(tmp_path / "elsewhere")  # a file of its own is named as it is
    real_mkstemp = tempfile.mkstemp

    def refused(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system", str(final.parent / ".cmp.md.abc.part.md"))

    tempfile.mkstemp = refused
    try:
        with pytest.raises(OSError) as raised:
            atomic_write_text(final, "x")
    finally:
        tempfile.mkstemp = real_mkstemp
    assert raised.value.filename == str(final) and not final.parent.exists()


def test_overrides_are_taken_on_both_sides_of_an_option(tiny_data: Path, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: argparse gave the KEY=VALUE positional only the overrides before ``-o``; ``model.depth=2`` after it was
    refused with the top-level usage line ("usage: covseg [-h] ... unrecognized arguments")."""
    import covseg.run

    seen = []

    def record(config, *args, **kwargs):
        seen.append(config)
        raise CovsegError("recorded")

    monkeypatch.setattr(covseg.run, "train_run", record)
    out = tmp_path / "mix"
    common = ["--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0"]
    assert main(["train", *common, "model.width=8", "-o", str(out), "model.depth=3", "--quiet", "data.input_size=48",
                 "model.width=16"]) == 2
    assert _one_line_error(capsys) == "covseg: error: recorded"
    assert (seen[0].model.width, seen[0].model.depth, seen[0].data.input_size) == (16, 3, 48)  # the last one wins
    # an override after an option is checked as any other: one line, nothing written
    assert main(["train", *common, "-o", str(out), "--quiet", "model.depth=0"]) == 2
    assert "model.depth must be positive" in _one_line_error(capsys)
    # cv and compare take them after -o too (cv: not straight after its seeds, which are numbers)
    assert main(["cv", *common[:4], "--folds", "3", "--seeds", "0", "1", "-o", str(tmp_path / "cv"),
                 "train.seed=3"]) == 2
    assert "covseg cv sets train.seed itself" in _one_line_error(capsys)
    assert main(["compare", *common, "--models", "unet", "-o", str(tmp_path / "cmp"), "model.name=segnet"]) == 2
    assert "covseg compare sets model.name itself" in _one_line_error(capsys)
    assert not out.exists() and not (tmp_path / "cv").exists() and not (tmp_path / "cmp").exists()
    # any other stray argument is refused with the command's own usage line
    with pytest.raises(SystemExit) as refused:
        main(["train", *common, "model.depth=2", "-o", str(out), "--quiet", "stray"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.startswith("usage: covseg train ")
    assert err.splitlines()[-1] == "covseg train: error: unrecognized arguments: stray"


class _ReaderGone(io.TextIOBase):
    """A standard output whose reader has left (``covseg ... | head`` after head exits): every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_left_standard_output_ends_quietly_with_sigpipe_s_status(tiny_run: Path, tmp_path: Path,
                                                                                capsys, monkeypatch) -> None:
    # before: "covseg: error: Broken pipe; check the path and permissions" and exit 2, as if a path were wrong
    monkeypatch.setattr(sys, "stdout", _ReaderGone())
    assert main(["evaluate", str(tiny_run), "-o", str(tmp_path / "report"), "--quiet"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_one_model_given_twice_is_refused_not_scored_as_an_ensemble(command: str, tiny_run: Path, tiny_data: Path,
                                                                     tmp_path: Path, capsys) -> None:
    # before: the model was scored (or predicted) as a 2-model ensemble of itself
    out = tmp_path / "out"
    if command == "evaluate":
        argv = ["evaluate", str(tiny_run), str(tiny_run), "-o", str(out), "--quiet"]
    else:
        image = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg"
        argv = ["predict", str(image), "-o", str(out), "--model", str(tiny_run), "--model", f"{tiny_run}/", "--quiet"]
    assert main(argv) == 2
    assert "names a model twice" in _one_line_error(capsys)
    assert not out.exists()


def test_resuming_a_finished_run_says_it_trained_nothing(tiny_run: Path, tmp_path: Path, capsys) -> None:
    # before: "trained 3 epochs in 0 s", the run's epochs, not this call's
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing left to resume: the run has all 3 epochs; best validation mean Dice ")
    assert "trained" not in out


def test_resume_goes_on_with_another_device_its_settings_unchanged(tiny_run: Path, tmp_path: Path, capsys,
                                                                  monkeypatch) -> None:
    # a run begun on a GPU (train.device cuda) resumed on a machine without one: --device was refused with --resume
    import torch
    import yaml

    from covseg.checkpoint import read_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state = read_checkpoint(run / "last.pt")
    state["config"]["train"]["device"] = "cuda"
    state["history"], state["epoch"] = state["history"][:2], 2  # one of its 3 epochs left
    torch.save(state, run / "last.pt")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["device"] = "cuda"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "no GPU is visible" in _one_line_error(capsys)
    assert main(["train", "--resume", str(run), "--device", "cpu", "--quiet"]) == 0
    assert "trained 1 more epoch (3 of 3)" in capsys.readouterr().out
    assert read_checkpoint(run / "last.pt")["epoch"] == 3
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["device"] == "cuda"  # the run's own setting


def test_resume_takes_the_same_run_folder_as_o_however_it_is_written(tiny_run: Path, tmp_path: Path, capsys,
                                                                     monkeypatch) -> None:
    # before: --resume /abs/run -o run (the same folder) was refused as "not both"
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(run), "-o", "run", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "-o", str(tmp_path / "other"), "--quiet"]) == 2
    assert "not both" in _one_line_error(capsys)


def test_cv_compare_refuses_one_folder_twice_and_an_output_inside_either(tiny_run: Path, tmp_path: Path,
                                                                        capsys) -> None:
    reference, candidate = tmp_path / "ref", tmp_path / "new"
    shutil.copytree(tiny_run, reference, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["evaluate", str(reference), "--quiet"]) == 0
    shutil.copytree(reference, candidate)
    capsys.readouterr()
    # before: a table of zero differences
    assert main(["cv-compare", str(reference), f"{reference}/"]) == 2
    assert "is both the reference and the candidate" in _one_line_error(capsys)
    # before: written into the folder (over its cv.md when named so)
    for out in (reference / "paired.md", candidate / "eval-heldout" / "metrics.md"):
        before = out.read_bytes() if out.exists() else None
        assert main(["cv-compare", str(reference), str(candidate), "-o", str(out)]) == 2
        assert "is inside the cross-validation folder" in _one_line_error(capsys)
        assert (out.read_bytes() if out.exists() else None) == before
    assert main(["cv-compare", str(reference), str(candidate), "-o", str(tmp_path / "paired.md")]) == 0


def test_an_override_after_the_seeds_is_told_to_go_before_them(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cv"
    with pytest.raises(SystemExit) as caught:
        main(["cv", "--recipe", "tiny", "--seeds", "0", "1", "train.lr=0.1", "-o", str(out)])
    assert caught.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "argument --seeds: train.lr=0.1 is an override, not a seed: put KEY=VALUE overrides before --seeds" in err
    with pytest.raises(SystemExit):
        main(["cv", "--recipe", "tiny", "--seeds", "0", "x", "-o", str(out)])
    assert "argument --seeds: must be a whole number, got 'x'" in capsys.readouterr().err


def test_ctrl_c_while_cv_scores_a_fold_says_how_to_go_on(tiny_data: Path, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop while a trained fold's held-out images are scored gives the same advice as one during its training
    (walkthrough helper 183: it said only "covseg: interrupted")."""
    import covseg.experiment

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(covseg.experiment, "evaluate_run", ctrl_c)
    capsys.readouterr()
    assert main(["cv", "--folds", "3", "-o", str(tmp_path / "cv"), "--recipe", "tiny", "--data", str(tiny_data),
                 "--epochs", "1", "--quiet", *TINY_OVERRIDES]) == 130
    err = capsys.readouterr().err
    assert ("interrupted while scoring fold-0's held-out images; the models trained are kept; to go on, run the same "
            "covseg cv command again (it keeps the folds already trained)\ncovseg: interrupted\n") in err, err
    assert (tmp_path / "cv" / "fold-0" / "last.pt").is_file() and not (tmp_path / "cv" / "fold-1").exists()


@pytest.mark.parametrize("folds", ["1", "0", "-2"])
def test_cv_refuses_fewer_than_two_folds_before_reading_the_data(folds: str, tmp_path: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Walkthrough helper 183: on a busy machine the refusal came only after the whole data set had loaded."""
    import covseg.datasets

    def no_data(*args, **kwargs):
        raise AssertionError("the data set was read before --folds was checked")

    monkeypatch.setattr(covseg.datasets, "load_dataset", no_data)
    capsys.readouterr()
    assert main(["cv", "--recipe", "tiny", "--folds", folds, "-o", str(tmp_path / "cv"), "--quiet"]) == 2
    assert f"--folds is {folds}; a cross-validation needs 2 or more folds" in _one_line_error(capsys)
    assert main(["cv", "--recipe", "tiny", "data.folds=1", "-o", str(tmp_path / "cv"), "--quiet"]) == 2
    assert "--folds is 1" in _one_line_error(capsys)  # the recipe's fold count too
    assert not (tmp_path / "cv").exists()


def test_evaluating_a_run_that_held_out_nothing_says_so_and_names_the_splits_left(tiny_data: Path, tmp_path: Path,
                                                                                 capsys) -> None:
    # before: "covseg: error: the run's val split is empty; use another --split", for the default --split heldout
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "official", "--epochs", "1",
                 "-o", str(run), "--quiet", *(o for o in TINY_OVERRIDES if o != "data.folds=3"),
                 "data.val_fraction=0"]) == 0
    out = capsys.readouterr()
    assert "images, no validation images (best.pt: the last epoch), 32x32" in out.out + out.err  # not "on 0"
    assert main(["evaluate", str(run), "--quiet"]) == 2
    assert _one_line_error(capsys) == (f"covseg: error: {run}: the run held out no images (its split.json has no val "
                                       "or test image, as with data.val_fraction=0), so it has no held-out figure; "
                                       "score it on the official test split (--split testset with a --data that holds "
                                       "it) or on --split train or all")
    assert main(["evaluate", str(run), "--split", "val", "--quiet"]) == 2
    assert _one_line_error(capsys) == (f"covseg: error: {run}: the run's val part is empty (no image in its "
                                       "split.json's 'val'); score it on --split testset (with a --data that holds "
                                       "the official test split), train or all")
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("eval")) == []
