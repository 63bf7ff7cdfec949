"""`covseg evaluate`'s reports (session 75): metrics.json records the model files it scored as resolved paths (as it
records its data folder), so a report read, or a `covseg cv` run, from another working directory still finds them;
an -o holding the report of another scoring is refused before scoring (the same scoring again replaces it); an
ensemble's caveat on a best.pt given by path says to give the run folders, not to leave out a --checkpoint never
given."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import covseg.experiment as experiment
from covseg.cli import main
from test_s74_evaluate import FAST, _twin  # a second member of tiny_run's split, each checkpoint nudged


def _refused(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """The one line of stderr of a refused `covseg ARGS` (exit status 2)."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: "), err
    return err[0]


def test_the_report_records_the_resolved_model_file_and_cv_finds_it_from_another_directory(
        tiny_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, `covseg evaluate tiny` recorded "tiny/last.pt": relative to where it ran, so covseg cv run from
    elsewhere took the fold's report for another model's and scored the fold again."""
    out = tmp_path / "report"
    monkeypatch.chdir(tiny_run.parent)
    assert main(["evaluate", tiny_run.name, "-o", str(out), *FAST]) == 0
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert model["file"] == str((tiny_run / "last.pt").resolve())
    assert f"Scored by `{(tiny_run / 'last.pt').resolve()}` (epoch " in (out / "metrics.md").read_text()
    monkeypatch.chdir(tmp_path)
    assert experiment._is_current(out / "metrics.json", tiny_run, "final", str(tiny_data))


def test_every_model_file_of_an_ensemble_and_a_lesion_model_is_resolved(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = {"file": "a/last.pt", "flip_tta": False, "members": [{"file": "a/last.pt", "epoch": 2},
                                                                  {"file": "b/last.pt", "epoch": 2}],
             "lesion_model": {"file": "../c/swa.pt", "epoch": 9}}
    resolved = experiment._resolved_files(model)
    assert resolved == {"file": str(tmp_path / "a/last.pt"), "flip_tta": False,
                        "members": [{"file": str(tmp_path / "a/last.pt"), "epoch": 2},
                                    {"file": str(tmp_path / "b/last.pt"), "epoch": 2}],
                        "lesion_model": {"file": str(tmp_path.parent / "c/swa.pt"), "epoch": 9}}
    assert model["members"][0]["file"] == "a/last.pt"  # the entry given is left as it was


def test_an_output_folder_holding_another_scoring_s_report_is_refused_before_scoring(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before, `covseg evaluate OTHER -o OUT` replaced OUT's report of another model without a word."""
    other = _twin(tiny_run, tmp_path)
    out = tmp_path / "report"
    assert main(["evaluate", str(tiny_run), "-o", str(out), *FAST]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    theirs = (f"covseg: error: {out}: holds the report of {(tiny_run / 'last.pt').resolve()} (--split heldout, data "
              f"{json.loads((out / 'metrics.json').read_text())['data']}), not of this evaluation; give -o another "
              "folder to keep it, or --force to replace it")
    for args in ([str(other)], [str(tiny_run), "--split", "train"], [str(tiny_run), "--tta"],
                 [str(tiny_run), str(other)]):
        assert _refused(["evaluate", *args, "-o", str(out), *FAST], capsys) == theirs
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, nothing half-written
    # the same scoring again replaces it (a model trained on since, another backend): as covseg evaluate RUN does
    assert main(["evaluate", str(tiny_run / "last.pt"), "-o", str(out), "--quiet", "--backend", "torch"]) == 0
    # asked to replace it (--force), another model's report is
    experiment.evaluate_run(other, None, "heldout", out, backend="torch", precision="fp32",
                                         progress=False, force=True)
    assert json.loads((out / "metrics.json").read_text())["model"]["file"] == str((other / "last.pt").resolve())


def test_an_older_report_of_relative_paths_read_from_another_folder_says_so(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 235: such a report (paths as given, before session 75) read from elsewhere named a file never scored."""
    out = tmp_path / "report"
    assert main(["evaluate", str(tiny_run), "-o", str(out), *FAST]) == 0
    report = json.loads((out / "metrics.json").read_text())
    report["model"]["file"] = f"{tiny_run.name}/last.pt"  # as an older covseg run from tiny_run's folder wrote it
    (out / "metrics.json").write_text(json.dumps(report))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert _refused(["evaluate", str(tiny_run), "-o", str(out), *FAST], capsys) == (
        f"covseg: error: {out}: holds an older report of {tiny_run.name}/last.pt, paths relative to the folder it was "
        "scored from, which this is not; run this from that folder to replace a report of the same model, give -o "
        "another folder to keep it, or --force to replace it")
    monkeypatch.chdir(tiny_run.parent)  # from that folder, the same scoring replaces it
    assert main(["evaluate", str(tiny_run), "-o", str(out), *FAST]) == 0


def test_a_folder_without_a_readable_report_is_written_into_as_before(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    (out / "metrics.json").write_text("{not json")  # a damaged report: nothing it says can be lost
    assert main(["evaluate", str(tiny_run), "-o", str(out), *FAST]) == 0
    assert (out / "notes.txt").read_text() == "kept" and json.loads((out / "metrics.json").read_text())["model"]


def test_an_ensemble_of_best_pt_files_is_told_to_give_the_run_folders_not_to_drop_a_checkpoint_option(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before, `covseg evaluate A/best.pt B/best.pt -o OUT` was told "give the run folders without --checkpoint",
    though no --checkpoint was given."""
    twin = _twin(tiny_run, tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(tiny_run / "best.pt"), str(twin / "best.pt"), "-o", str(tmp_path / "a"), *FAST]) == 0
    caveats = json.loads((tmp_path / "a" / "metrics.json").read_text())["caveats"]
    assert caveats == [f"{tiny_run / 'best.pt'} and {twin / 'best.pt'} were chosen on these heldout images (the best "
                       "validation epoch of its run), so this figure is optimistic; give the run folders instead of "
                       "the checkpoint files to score each run's final model"]
    assert main(["evaluate", str(tiny_run), str(twin), "--checkpoint", "best", "-o", str(tmp_path / "b"), *FAST]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["caveats"][0].endswith(
        "optimistic; give the run folders without --checkpoint to score each run's final model")


def test_the_final_model_remedy_names_what_was_given() -> None:
    run, file = Path(__file__).parent, Path(__file__)  # a folder and a file that exist
    assert experiment._final_model_remedy([run, run], "best") == "give the run folders without --checkpoint"
    assert experiment._final_model_remedy([file, run], "auto") == "give the run folders instead of the checkpoint files"
    assert experiment._final_model_remedy([file], "best") == ("give the run folders instead of the checkpoint files, "
                                                             "without --checkpoint")


def test_cv_compare_refuses_a_fold_whose_report_is_an_ensemble_s_or_a_lesion_model_s(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before, an older covseg's `evaluate A B -o A/eval-heldout` passed for A's own figure: cv-compare checked only
    the name of the file it recorded (its first member's)."""
    reference, candidate = tmp_path / "ref", _twin(tiny_run, tmp_path)
    shutil.copytree(tiny_run, reference, ignore=shutil.ignore_patterns("eval-*"))
    for run in (reference, candidate):
        assert main(["evaluate", str(run), *FAST]) == 0
    assert main(["cv-compare", str(reference), str(candidate)]) == 0
    report = reference / "eval-heldout" / "metrics.json"
    metrics = json.loads(report.read_text())
    own = metrics["model"]
    other = {**own, "file": str((candidate / "last.pt").resolve())}
    for model, what in [({**own, "members": [own, other]}, "an ensemble's report (covseg evaluate A B -o)"),
                        ({**own, "lesion_model": other}, "a report of its model typing a --lesion-model's lesions")]:
        report.write_text(json.dumps({**metrics, "model": model}))
        assert _refused(["cv-compare", str(reference), str(candidate)], capsys) == (
            f"covseg: error: {reference}/eval-heldout holds {what}, which an older covseg wrote there, not the run's "
            f"own figure; score it again: covseg evaluate {reference}")


def test_a_folder_in_the_place_of_a_report_file_is_refused_before_scoring(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o RUN/eval-heldout/metrics.json` made a folder of that name; `covseg evaluate RUN` then scored every image and
    failed with "is the disk full?"."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    (run / "eval-heldout" / "metrics.json").mkdir(parents=True)
    scored: list[int] = []
    monkeypatch.setattr(experiment, "evaluate_samples", lambda *args, **kwargs: scored.append(1))
    assert _refused(["evaluate", str(run), *FAST], capsys) == (
        f"covseg: error: {run / 'eval-heldout' / 'metrics.json'}: is a folder, where the report writes its file "
        "metrics.json; move it out of the way, or give -o another folder")
    assert scored == [] and sorted(p.name for p in (run / "eval-heldout").iterdir()) == ["metrics.json"]
