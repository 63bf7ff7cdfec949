"""`covseg evaluate`'s report folder (session 76): an -o holding another scoring's report is refused before any model
loads (an ensemble's models took their time to load first); an -o named as a file (`report.md`) is refused, not made
a folder of that name; a run's own report folder holding the report of one data folder is not replaced by a scoring
of another (`--data OTHER`) unless --force."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import covseg.experiment as experiment
from covseg.cli import main

from test_s75_eval import _refused  # the one line of stderr of a refused `covseg ARGS` (exit status 2)

FAST = ["--quiet", "--backend", "torch", "--precision", "fp32"]


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test where `covseg evaluate` opens a model."""
    def never(*args, **kwargs):
        raise AssertionError("a model was loaded before the report folder was checked")

    monkeypatch.setattr(experiment, "open_models", never)


def _report(folder: Path, model_file: Path, data: Path, split: str = "heldout") -> bytes:
    """Write into ``folder`` the metrics.json of a scoring of ``model_file`` on ``data``; returns its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"model": {"file": str(model_file.resolve()), "epoch": 3, "flip_tta": False}, "split": split,
                       "data": str(data.resolve())}).encode()
    (folder / "metrics.json").write_bytes(text)
    return text


@pytest.mark.parametrize("models", [["RUN"], ["RUN", "RUN/best.pt"]], ids=["one model", "ensemble"])
def test_an_output_holding_another_scorings_report_is_refused_before_any_model_loads(
        models: list[str], tiny_run: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        no_model_loads: None) -> None:
    """Before, the refusal came once every model had loaded (an ensemble's, one by one)."""
    out = tmp_path / "report"
    other = tmp_path / "other" / "last.pt"
    before = _report(out, other, tiny_data)
    given = [m.replace("RUN", str(tiny_run)) for m in models]
    assert _refused(["evaluate", *given, "-o", str(out), *FAST], capsys) == (
        f"covseg: error: {out}: holds the report of {other.resolve()} (--split heldout, data {tiny_data.resolve()}), "
        "not of this evaluation; give -o another folder to keep it, or --force to replace it")
    assert (out / "metrics.json").read_bytes() == before


def test_the_planned_model_entry_is_the_one_a_report_records(tiny_run: Path, tmp_path: Path) -> None:
    """What the early check compares (before loading) is what the report of that scoring records (after loading)."""
    scoring = {"model": experiment._planned_model([tiny_run / "last.pt", tiny_run / "best.pt"], [tiny_run / "swa.pt"],
                                                  True), "split": "val", "data": str(tmp_path)}
    recorded = {"model": {"file": str(tiny_run / "last.pt"), "flip_tta": True, "epoch": 3,
                          "members": [{"file": str(tiny_run / "best.pt"), "epoch": 1},
                                      {"file": str(tiny_run / "last.pt"), "epoch": 3}],
                          "lesion_model": {"file": str(tiny_run / "swa.pt"), "epoch": 3}},
                "split": "val", "data": str(tmp_path)}
    assert experiment._report_subject(scoring) == experiment._report_subject(recorded)


@pytest.mark.parametrize("name", ["report.md", "metrics.json", "per_image.CSV", "report.html"])
def test_an_output_named_as_a_file_is_refused_naming_the_files_written_in_the_folder(
        name: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_model_loads: None) -> None:
    """Before, `-o report.md` made a folder called report.md holding the report."""
    out = tmp_path / name
    assert _refused(["evaluate", str(tiny_run), "-o", str(out), *FAST], capsys) == (
        f"covseg: error: {out}: -o takes a folder, not a file: covseg evaluate writes metrics.md, per_image.csv, "
        f"best_worst.png and metrics.json into it; give a folder, e.g. -o {out.with_suffix('')}")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_named_as_a_file_is_written_into(tmp_path: Path) -> None:
    (tmp_path / "results.json").mkdir()  # made so on purpose: taken as the folder it is
    experiment._refuse_a_file_name_for_the_report_folder(tmp_path / "results.json")
    experiment._refuse_a_file_name_for_the_report_folder(tmp_path / "v1.2")  # a dotted folder name


@pytest.fixture
def run_and_other_data(tiny_run: Path, tiny_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of tiny_run without reports, and a copy of tiny_data in another folder (the same image names)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    other = tmp_path / "other-data"
    shutil.copytree(tiny_data, other)
    return run, other


def test_a_scoring_of_other_data_does_not_replace_the_runs_report_of_its_own_data(
        run_and_other_data: tuple[Path, Path], tiny_data: Path, capsys: pytest.CaptureFixture,
        no_model_loads: None) -> None:
    """Before, `covseg evaluate RUN --data OTHER` replaced RUN/eval-heldout, the report of the run's own data (which
    covseg cv and cv-compare read as the fold's figure), without a word; and the other way round."""
    run, other = run_and_other_data
    for split in ("heldout", "all"):
        before = _report(run / f"eval-{split}", run / "last.pt", tiny_data, split)
        assert _refused(["evaluate", str(run), "--data", str(other), "--split", split, *FAST], capsys) == (
            f"covseg: error: {run / f'eval-{split}'}: holds the report of data {tiny_data.resolve()}, not of {other}; "
            "give -o a folder for this scoring to keep it, or --force to replace it")
        assert (run / f"eval-{split}" / "metrics.json").read_bytes() == before
    before = _report(run / "eval-heldout-best", run / "best.pt", other)  # another checkpoint's folder; own data now
    assert _refused(["evaluate", str(run), "--checkpoint", "best", *FAST], capsys) == (
        f"covseg: error: {run / 'eval-heldout-best'}: holds the report of data {other.resolve()}, not of "
        f"{tiny_data}; give -o a folder for this scoring to keep it, or --force to replace it")
    assert (run / "eval-heldout-best" / "metrics.json").read_bytes() == before


def test_force_replaces_another_datas_report_and_the_same_data_replaces_it_as_before(
        run_and_other_data: tuple[Path, Path], tiny_data: Path) -> None:
    run, other = run_and_other_data
    _report(run / "eval-heldout", run / "last.pt", tiny_data)
    assert main(["evaluate", str(run), "--data", str(other), "--force", *FAST]) == 0
    assert json.loads((run / "eval-heldout" / "metrics.json").read_text())["data"] == str(other.resolve())
    experiment._refuse_replacing_another_datas_report(run / "eval-heldout", str(other))  # the same data: replaced


def test_a_report_of_a_data_folder_moved_away_or_recorded_relative_is_not_a_reason_to_refuse(tmp_path: Path) -> None:
    """Only a report of another data folder that is still there refuses: a data folder moved (the run's own data, now
    elsewhere) or a report of older code that recorded ``data`` as typed is written over as before (review)."""
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "gone").mkdir()
    _report(tmp_path / "moved", tmp_path / "last.pt", tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    experiment._refuse_replacing_another_datas_report(tmp_path / "moved", str(data))
    (tmp_path / "relative").mkdir()
    (tmp_path / "relative" / "metrics.json").write_text(json.dumps({"data": "data", "split": "heldout"}))
    experiment._refuse_replacing_another_datas_report(tmp_path / "relative", str(data))
    (tmp_path / "other").mkdir()
    _report(tmp_path / "there", tmp_path / "last.pt", tmp_path / "other")
    with pytest.raises(experiment.CovsegError, match="holds the report of data"):
        experiment._refuse_replacing_another_datas_report(tmp_path / "there", str(data))


def test_a_mistyped_data_folder_is_told_so_not_that_a_report_would_be_replaced(
        run_and_other_data: tuple[Path, Path], tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
        no_model_loads: None) -> None:
    run, _ = run_and_other_data
    _report(run / "eval-test", run / "last.pt", tiny_data, "test")
    line = _refused(["evaluate", str(run), "--data", str(tmp_path / "typo"), "--split", "test", *FAST], capsys)
    assert "typo" in line and "--force" not in line, line
