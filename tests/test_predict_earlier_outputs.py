"""`covseg predict` into a folder that holds an earlier predict's label maps: the ones the new predictions.json no
longer lists are named in a warning (they stay: covseg never deletes what it did not write in this run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from covseg.cli import main
from covseg.predict import earlier_outputs, unlisted_outputs

IMGS = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"


def _predict(tiny_run: Path, inputs: list[Path], out: Path, capsys: pytest.CaptureFixture) -> list[str]:
    assert main(["predict", *map(str, inputs), "-o", str(out), "--model", str(tiny_run), "--quiet",
                 "--no-overlays"]) == 0
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("covseg: warning:")]


def test_label_maps_of_an_earlier_predict_left_unlisted_are_named(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    images = [tiny_data / IMGS / f"{i}.jpg" for i in range(3)]
    out = tmp_path / "out"
    assert _predict(tiny_run, images, out, capsys) == []  # a new folder
    assert earlier_outputs(out) == ["0.png", "1.png", "2.png"]
    assert _predict(tiny_run, images[:1], out, capsys) == [
        f"covseg: warning: {out}: 2 label maps of an earlier predict stay there (e.g. 1.png), which "
        "predictions.json no longer lists; remove them, or give -o a new folder"]
    assert (out / "1.png").is_file() and (out / "2.png").is_file()  # kept, not deleted
    assert [r["output"] for r in json.loads((out / "predictions.json").read_text())["images"]] == ["0.png"]
    (out / "1.png").unlink()
    (out / "2.png").unlink()
    assert _predict(tiny_run, images[:1], out, capsys) == []  # the same image again: nothing left behind


def test_earlier_outputs_of_a_folder_without_a_readable_listing_are_none(tmp_path: Path) -> None:
    assert earlier_outputs(tmp_path) == []
    (tmp_path / "predictions.json").write_text("{not json")
    assert earlier_outputs(tmp_path) == []
    (tmp_path / "predictions.json").write_text('{"images": [{"output": "a.png"}, {"output": "b.nii.gz"}]}')
    assert earlier_outputs(tmp_path) == ["a.png", "b.nii.gz"]
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    # a.png is gone already; b.nii.gz stays unlisted; c.png is listed anew
    assert unlisted_outputs(tmp_path, ["a.png", "b.nii.gz", "c.png"], {"images": [{"output": "c.png"}]}) == [
        "b.nii.gz"]
