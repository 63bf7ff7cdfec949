"""`covseg evaluate`'s and `covseg cv-compare`'s report folders (session 77): an -o inside the data folder, or one
whose report file names are taken by folders, is refused before any model loads; the run's own report folder
(`RUN/eval-heldout`, picked or given as -o) does not take a scoring of another data folder, even empty, without
--force; cv-compare refuses a fold whose report scored another data folder than its run's, and says where every
image scored the same on both sides (a copy of a cross-validation folder)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import covseg.experiment as experiment
from covseg.cli import main
from covseg.errors import CovsegError
import covseg.paired as paired
from covseg.paired import compare_cross_validations, format_comparison

from test_paired import OWN_MODEL, write_fold  # a fake fold's per_image.csv and metrics.json
from test_s75_eval import _refused  # the one line of stderr of a refused `covseg ARGS` (exit status 2)
from test_s76_evaluate import FAST, no_model_loads, run_and_other_data  # noqa: F401 (fixtures)


def test_an_output_inside_the_data_folder_is_refused_before_any_model_loads(
        tiny_run: Path, tiny_data: Path, capsys: pytest.CaptureFixture, no_model_loads: None) -> None:
    """Before, the models loaded first (an ensemble's, one by one), then -o inside --data was refused."""
    out = tiny_data / "eval-report"
    line = _refused(["evaluate", str(tiny_run), "-o", str(out), *FAST], capsys)
    assert line.startswith(f"covseg: error: {out}: is inside the data folder "), line
    assert not out.exists()


def test_a_folder_in_a_report_files_place_is_refused_before_any_model_loads(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_model_loads: None) -> None:
    (tmp_path / "report" / "metrics.json").mkdir(parents=True)
    assert _refused(["evaluate", str(tiny_run), "-o", str(tmp_path / "report"), *FAST], capsys) == (
        f"covseg: error: {tmp_path / 'report' / 'metrics.json'}: is a folder, where the report writes its file "
        "metrics.json; move it out of the way, or give -o another folder")


def test_the_runs_own_report_folder_takes_no_other_datas_scoring_even_empty(
        run_and_other_data: tuple[Path, Path], tiny_data: Path, capsys: pytest.CaptureFixture,
        no_model_loads: None) -> None:
    """Before, `-o RUN/eval-heldout --data OTHER` (and the same without -o) into an absent folder wrote OTHER's report
    there, which cv-compare then read as the run's figure."""
    run, other = run_and_other_data
    for split in ("heldout", "all"):
        out = run / f"eval-{split}"
        line = (f"covseg: error: {out}: is where the report of the run's own data {tiny_data.resolve()} goes (covseg "
                f"cv-compare reads it as the run's figure), not of {other}; give -o a folder of its own for this "
                f"scoring, e.g. {run.parent / 'eval-NAME'}, or --force to write it there")
        for given in (["-o", str(out)], []):
            assert _refused(["evaluate", str(run), "--data", str(other), "--split", split, *given, *FAST],
                            capsys) == line
            assert not out.exists()


def test_other_data_in_the_runs_folder_is_let_through_where_session_76_let_it(
        run_and_other_data: tuple[Path, Path], tmp_path: Path) -> None:
    """The data set's test split (another folder holds it), a --data mistyped (its own line comes later), a run whose
    data folder moved away, a folder not of the run's own reports."""
    run, other = run_and_other_data
    refuse = experiment._refuse_other_data_in_the_runs_own_folder
    refuse(run / "eval-testset", run, str(other), "testset")
    refuse(run / "eval-heldout", run, str(tmp_path / "typo"), "heldout")
    refuse(tmp_path / "eval-heldout", run, str(other), "heldout")
    with pytest.raises(CovsegError, match="is where the report of the run's own data"):
        refuse(run / "eval-heldout-best-tta", run, str(other), "heldout")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data": str(tmp_path / "gone")}))
    refuse(run / "eval-heldout", run, str(other), "heldout")


def _fold_of_run(cv: Path, data: Path, scored: Path) -> None:
    """Fold 0 of ``cv`` as a run trained on ``data`` whose eval-heldout report scored ``scored``."""
    write_fold(cv, 0, {"a": 0.5, "b": 0.7})
    (cv / "fold-0" / "run.json").write_text(json.dumps({"data": str(data)}))
    (cv / "fold-0" / "eval-heldout" / "metrics.json").write_text(json.dumps({"model": OWN_MODEL,
                                                                            "data": str(scored)}))


def test_cv_compare_refuses_a_fold_scored_on_another_data_folder_than_its_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before, such a fold was paired with the other side's images by name and its Δ printed without a word."""
    own, other = tmp_path / "data", tmp_path / "other"
    own.mkdir(), other.mkdir()
    _fold_of_run(tmp_path / "ref", own, own)
    _fold_of_run(tmp_path / "new", own, other)
    assert _refused(["cv-compare", str(tmp_path / "ref"), str(tmp_path / "new")], capsys) == (
        f"covseg: error: {tmp_path / 'new' / 'fold-0'}/eval-heldout scored data {other.resolve()}, not the run's own "
        f"{own.resolve()}, so its images are not the ones the run held out; score it on its own data: covseg "
        f"evaluate {tmp_path / 'new' / 'fold-0'} --force")
    other.rmdir()  # a data folder no longer there (moved) is not a reason to refuse, as in covseg evaluate
    compare_cross_validations(tmp_path / "ref", tmp_path / "new")


def test_a_copy_of_a_cross_validation_compared_with_it_says_every_image_scored_the_same(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before, a copy of a cv folder against its original printed Δ 0 everywhere without a word."""
    write_fold(tmp_path / "ref", 0, {"a": 0.5, "b": 0.7})
    write_fold(tmp_path / "ref", 1, {"c": 0.6, "d": 0.2})
    shutil.copytree(tmp_path / "ref", tmp_path / "copy")
    assert main(["cv-compare", str(tmp_path / "ref"), str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert (f"\nEvery image scored exactly the same in {tmp_path / 'copy'} as in {tmp_path / 'ref'}, so each Δ is 0 "
            "by construction: its models predict as the reference's (a copy of that folder, or a change that left "
            "training as it was).\n") in out, out
    write_fold(tmp_path / "new", 0, {"a": 0.5, "b": 0.8})  # one image moved: no such line
    comparison = compare_cross_validations(tmp_path / "ref", tmp_path / "new")
    assert paired.identical_scores_warning(comparison, tmp_path / "ref", tmp_path / "new") is None
    assert "exactly the same" not in format_comparison(comparison, "ref", "new")
