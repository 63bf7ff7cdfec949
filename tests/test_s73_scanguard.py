"""`covseg predict SCAN -o OUT` into a folder holding ANOTHER scan's outputs is refused before the scan is segmented
and before anything is written (a shell loop giving every scan the same -o kept only the last scan's outputs); the
same scan again replaces its own outputs. The terminal's one-line summary gives the whole-lung severity too."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import covseg.predict
import covseg.predict_plan
import covseg.scan
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.phantom import chest_phantom
from covseg.predict import check_same_scan, earlier_scan, scan_summary
from covseg.predict_plan import plan_predict

from test_volumes import write_dicom_series

SHAPE, SPACING = (8, 64, 64), (2.5, 0.8, 0.8)


def _nifti(path: Path, seed: int) -> Path:
    """A small phantom chest NIfTI at ``path``; another ``seed`` gives other noise, so another file and digest."""
    hu, _ = chest_phantom(shape=SHAPE, spacing=SPACING, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-SPACING[2], -SPACING[1], SPACING[0], 1.0])
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), affine), str(path))
    return path


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _predict(*args: object, tiny_run: Path) -> int:
    return main(["predict", *map(str, args), "--model", str(tiny_run), "--quiet"])


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _not_reached(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} was reached")
    return fail


def test_a_scan_into_a_folder_holding_another_scan_s_outputs_is_refused_before_the_models_load(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = _nifti(tmp_path / "a.nii.gz", 0), _nifti(tmp_path / "b.nii.gz", 1)
    out = tmp_path / "out"
    assert _predict(first, "-o", out, tiny_run=tiny_run) == 0
    capsys.readouterr()
    before = _tree(tmp_path)
    assert sorted(_tree(out)) == ["lesions.nii.gz", "lungs.nii.gz", "report.html", "report.json"]
    monkeypatch.setattr(covseg.predict, "open_models", _not_reached("loading the models"))
    monkeypatch.setattr(covseg.scan, "segment_scan", _not_reached("segmenting"))
    assert _predict(second, "-o", out, tiny_run=tiny_run) == 2
    assert _one_error_line(capsys) == (
        f"covseg: error: {out}: holds the outputs of another scan, {first} (its SHA-256 differs), which those of "
        f"{second} would replace; give each scan its own -o, or give all the scans in one command with a new -o "
        f"(each is then written to its <stem>/ folder there), or remove the earlier outputs from {out}")
    assert _tree(tmp_path) == before  # nothing written, nothing staged, nothing left behind
    assert json.loads((out / "report.json").read_text())["input"]["path"] == str(first)


def test_the_same_scan_again_replaces_its_outputs_wherever_it_lies_now(tiny_run: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    scan = _nifti(tmp_path / "a.nii.gz", 0)
    out = tmp_path / "out"
    assert _predict(scan, "-o", out, tiny_run=tiny_run) == 0
    (out / "report.json").write_text((out / "report.json").read_text().replace('"seconds"', '"marker": 1, "seconds"'))
    assert _predict(scan, "-o", out, tiny_run=tiny_run) == 0  # the same file again
    report = json.loads((out / "report.json").read_text())
    assert "marker" not in report and report["input"]["sha256"] == hashlib.sha256(scan.read_bytes()).hexdigest()
    copy = tmp_path / "moved" / "renamed.nii.gz"  # the same scan, copied elsewhere: the same digest
    copy.parent.mkdir()
    shutil.copyfile(scan, copy)
    assert _predict(copy, "-o", out, tiny_run=tiny_run) == 0
    assert json.loads((out / "report.json").read_text())["input"]["path"] == str(copy)
    assert "error" not in capsys.readouterr().err


def test_several_scans_apply_the_rule_to_each_one_s_own_folder(tiny_run: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (_nifti(tmp_path / f"{name}.nii.gz", seed) for seed, name in enumerate("abc"))
    other_a = _nifti(tmp_path / "elsewhere" / "a.nii.gz", 3)  # another scan by a's name: it would go to out/a
    out = tmp_path / "out"
    assert _predict(a, b, "-o", out, tiny_run=tiny_run) == 0
    capsys.readouterr()
    before = _tree(tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(covseg.predict, "open_models", _not_reached("loading the models"))
        assert _predict(c, other_a, "-o", out, tiny_run=tiny_run) == 2
    assert _one_error_line(capsys) == (
        f"covseg: error: {out / 'a'}: holds the outputs of another scan, {a} (its SHA-256 differs), which those of "
        f"{other_a} would replace; give -o a new folder, or remove the earlier outputs from {out / 'a'}")
    assert _tree(tmp_path) == before and not (out / "c").exists()  # c, given first, is not written either
    # the same a again beside a new scan: a's outputs replaced, c's written
    assert _predict(c, a, "-o", out, tiny_run=tiny_run) == 0
    assert {json.loads((out / n / "report.json").read_text())["input"]["path"] for n in "abc"} == {str(a), str(b),
                                                                                                  str(c)}


def test_a_dicom_series_into_another_series_outputs_is_refused_once_read_before_it_is_segmented(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # a series' digest spans its files in slice order, known once its headers are read: refused then, unsegmented
    for seed, name in ((0, "p1"), (1, "p2")):
        write_dicom_series(tmp_path / name, chest_phantom(shape=SHAPE, spacing=SPACING, seed=seed)[0])
    out = tmp_path / "out"
    assert _predict(tmp_path / "p1", "-o", out, tiny_run=tiny_run) == 0
    assert _predict(tmp_path / "p1", "-o", out, tiny_run=tiny_run) == 0  # the same series again
    capsys.readouterr()
    before = _tree(tmp_path)
    monkeypatch.setattr(covseg.scan, "segment_scan", _not_reached("segmenting"))
    assert _predict(tmp_path / "p2", "-o", out, tiny_run=tiny_run) == 2
    assert _one_error_line(capsys) == (
        f"covseg: error: {out}: holds the outputs of another scan, {tmp_path / 'p1'} (its SHA-256 differs), which "
        f"those of {tmp_path / 'p2'} would replace; give each scan its own -o, or give all the scans in one command with a new -o "
        f"(each is then written to its <stem>/ folder there), or remove the earlier outputs from {out}")
    assert _tree(tmp_path) == before


def test_a_scan_is_hashed_in_the_plan_only_where_a_report_is_there(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scan = _nifti(tmp_path / "a.nii.gz", 0)
    monkeypatch.setattr(covseg.predict_plan, "file_sha256", _not_reached("hashing"))
    for out in (tmp_path / "new", tmp_path / "empty"):  # no report.json: a new folder costs no disk read
        (tmp_path / "empty").mkdir(exist_ok=True)
        assert plan_predict([scan], out).scan_outputs == [out]
    (tmp_path / "empty" / "report.json").write_text('{"input": {"path": "x.nii.gz", "sha256": "00"}}')
    with pytest.raises(AssertionError, match="hashing was reached"):
        plan_predict([scan], tmp_path / "empty")


def test_a_folder_without_a_covseg_scan_report_holds_no_scan(tmp_path: Path) -> None:
    assert earlier_scan(tmp_path / "missing") is None and earlier_scan(tmp_path) is None
    for text in ("{not json", "[1]", '{"input": "x"}', '{"input": {"path": "x"}}', '{"input": {"path": "x", '
                 '"sha256": ""}}', '{"input": {"path": 3, "sha256": "ab"}}', b"\xff\xfe".decode("latin-1")):
        (tmp_path / "report.json").write_text(text, encoding="latin-1")
        assert earlier_scan(tmp_path) is None, text
        check_same_scan(Path("s.nii.gz"), "cd", tmp_path)  # as before covseg knew: replaced
    (tmp_path / "report.json").write_text('{"input": {"path": "x.nii.gz", "sha256": "ab"}}')
    assert earlier_scan(tmp_path) == ("x.nii.gz", "ab")
    check_same_scan(Path("s.nii.gz"), "ab", tmp_path)  # the same digest: the same scan, under any name
    with pytest.raises(CovsegError, match=r"holds the outputs of another scan, x\.nii\.gz \(its SHA-256 differs\)"):
        check_same_scan(Path("s.nii.gz"), "cd", tmp_path)


def _part(lung_ml: float, lesion_ml: float, severity: int | None) -> dict:
    percent = 100 * lesion_ml / lung_ml if lung_ml else 0.0
    return {"lung_ml": lung_ml, "lesion_ml": lesion_ml, "lesion_percent": percent, "severity": severity,
            "class_ml": {"infection": lesion_ml}}


def test_the_scan_summary_gives_the_whole_lung_severity_with_each_side_s() -> None:
    # right 99.4 of 2000 mL = 4.97 % (1), left 0 of 1000 mL (0): both 99.4 of 3000 mL = 3.313 % -> severity 1
    report = {"figures": {"right": _part(2000.0, 99.4, 1), "left": _part(1000.0, 0.0, 0),
                          "total": _part(3000.0, 99.4, 1), "pleural": []}}
    assert scan_summary(Path("chest.nii.gz"), report, Path("out")) == (
        "chest.nii.gz: lesions 99.4 mL = 3.3 % of 3000 mL lung, severity 1 (right 1, left 0); report out/report.html")
    # both lungs 4.97 % -> severity 1: shown "4.97 %", not "5.0 %", which would read as severity 2
    report["figures"]["total"] = _part(2000.0, 99.4, 1)
    assert "= 4.97 % of 2000 mL lung, severity 1 (" in scan_summary(Path("s"), report, Path("o"))
    # no lung volume anywhere: nothing assessed
    none = _part(0.0, 0.0, None)
    report = {"figures": {"right": none, "left": none, "total": none, "pleural": []}}
    assert scan_summary(Path("s"), report, Path("o")) == (
        "s: lesions 0.0 mL = 0.0 % of 0 mL lung, severity n/a (right n/a, left n/a); report o/report.html")
