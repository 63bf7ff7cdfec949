"""`covseg evaluate` says when its figure is not a held-out one: best.pt scored on the images that chose it, or
images the model trained on (a warning on stderr, `caveats` in metrics.json, a line in metrics.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from covseg.cli import main
from covseg.splits import load_split


def _evaluate(args: list[str], out: Path, capsys: pytest.CaptureFixture) -> tuple[dict, str, list[str]]:
    assert main(["evaluate", *args, "-o", str(out), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("covseg: warning:")]
    return json.loads((out / "metrics.json").read_text()), (out / "metrics.md").read_text(), warnings


def test_the_run_s_own_held_out_figure_carries_no_caveat(tiny_run: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    metrics, md, warnings = _evaluate([str(tiny_run)], tmp_path / "own", capsys)
    assert "caveats" not in metrics and warnings == [] and "Caveat" not in md
    assert md.splitlines()[0].endswith("· heldout (4 images) · last.pt")  # which checkpoint the figure is of


def test_best_pt_on_the_images_that_chose_it_is_called_optimistic(tiny_run: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    expected = ("best.pt was chosen on these heldout images (its best validation epoch), so this figure is "
                "optimistic; the run's own report scores last.pt")
    for args in ([str(tiny_run / "best.pt")], [str(tiny_run), "--checkpoint", "best"]):
        metrics, md, warnings = _evaluate(args, tmp_path / "best", capsys)
        assert metrics["caveats"] == [expected]
        assert warnings == [f"covseg: warning: {expected}"]
        assert f"**Caveat:** {expected}." in md and md.splitlines()[0].endswith("· best.pt")
    # last.pt on the same images, or best.pt on images that did not choose it, is no caveat
    assert "caveats" not in _evaluate([str(tiny_run / "last.pt")], tmp_path / "last", capsys)[0]
    metrics, _, _ = _evaluate([str(tiny_run), "--checkpoint", "best", "--split", "train"], tmp_path / "train", capsys)
    assert not any(c.startswith("best.pt") for c in metrics["caveats"])


def test_images_the_model_trained_on_are_counted(tiny_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    parts = load_split(tiny_run / "split.json")
    n_train, n_all = len(parts["train"]), len(parts["train"]) + len(parts["val"])
    assert (n_train, n_all) == (8, 12)
    metrics, md, warnings = _evaluate([str(tiny_run), "--split", "all"], tmp_path / "all", capsys)
    expected = (f"8 of these 12 images were this model's training images, so this is no held-out figure; the "
                f"run's held-out figure: covseg evaluate {tiny_run}")
    assert metrics["caveats"] == [expected] and warnings == [f"covseg: warning: {expected}"]
    assert f"**Caveat:** {expected}." in md
    metrics, _, _ = _evaluate([str(tiny_run), "--split", "train"], tmp_path / "train", capsys)
    assert metrics["caveats"] == [expected.replace("8 of these 12", "8 of these 8")]


def test_images_of_another_data_folder_are_not_matched_by_name(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """A copy of the data elsewhere holds the same names, but covseg cannot know they are the same images."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    metrics, _, warnings = _evaluate([str(tiny_run), "--split", "all", "--data", str(other)], tmp_path / "all",
                                     capsys)
    assert "caveats" not in metrics and warnings == []


def test_a_missing_test_split_is_told_before_any_model_loads(tiny_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    """`evaluate RUN --split test` on a data folder without the test split refuses at once (a cross-validation
    folder's five models took up to a minute to load before the same refusal)."""
    import covseg.experiment

    def no_models(*args, **kwargs):
        raise AssertionError("the models were loaded before the data folder was checked")

    monkeypatch.setattr(covseg.experiment, "open_models", no_models)
    for split in ("test", "testset"):
        capsys.readouterr()
        assert main(["evaluate", str(tiny_run), "--split", split, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the test split is not in this data folder" in err[0], err
    assert not (tiny_run / "eval-test").exists() and not (tiny_run / "eval-testset").exists()


def test_a_model_file_outside_its_run_folder_on_every_image_says_its_training_images_are_unknown(
        tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A copied checkpoint (or an exported graph) carries no split: scored on every image it gave a figure with
    no word that 8 of the 12 were its training images, where the same weights in their run folder were told so."""
    import shutil

    outside = tmp_path / "copied.pt"
    shutil.copy(tiny_run / "last.pt", outside)
    metrics, md, warnings = _evaluate([str(outside), "--data", str(tiny_data), "--split", "all"], tmp_path / "all",
                                      capsys)
    expected = ("this model file lies outside its run folder, so which of these 12 images it trained on is not "
                "known: if it was trained on them, this is no held-out figure; for a held-out figure, score it from "
                "its run folder (covseg evaluate RUN_DIR) or on --split test")
    assert metrics["caveats"] == [expected] and warnings == [f"covseg: warning: {expected}"]
    assert f"**Caveat:** {expected}." in md


def test_best_pt_on_every_image_is_said_to_be_chosen_on_the_validation_images_among_them(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Not "chosen on these all images": only the run's validation images (4 of the 12) chose best.pt."""
    metrics, _, _ = _evaluate([str(tiny_run / "best.pt"), "--split", "all"], tmp_path / "all", capsys)
    assert metrics["caveats"][0] == ("best.pt was chosen on the validation images among these (its best validation "
                                     "epoch), so this figure is optimistic; the run's own report scores last.pt")
