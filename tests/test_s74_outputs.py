"""What `covseg predict` does with an -o that already holds another predict's outputs, of another layout.

One scan given alone writes into OUT itself; several scans, or scans beside 2-D images, each write into OUT/<stem>/;
2-D images write their label maps, overlays/ and predictions.json into OUT itself. Over two calls into one OUT, the
layouts of one call (several scans' folders beside 2-D images' outputs) may be built up; a layout no single call
makes (a lone scan's four files beside other scans' folders or among 2-D label maps, or other outputs beside a lone
scan's) is refused in the plan, before a model loads or a scan is read, naming what OUT holds and the way out.
No test here needs a model: the plan is checked before one loads.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import tiny_grey_image

import covseg.predict
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.predict import check_same_scan
from covseg.predict_plan import plan_predict

from test_volumes import write_dicom_series

SCAN_FILES = ["lesions.nii.gz", "lungs.nii.gz", "report.html", "report.json"]


def _scan(path: Path, hu: int = -1000) -> Path:
    """conftest's tiny 4-slice NIfTI scan at ``path``, of ``hu`` throughout (another ``hu``: another SHA-256)."""
    import nibabel as nib
    import numpy as np

    nib.save(nib.Nifti1Image(np.full((24, 20, 4), hu, np.int16), np.diag([0.7, 0.7, 2.5, 1.0])), str(path))
    return path


def _scan_outputs(folder: Path, scan: Path) -> Path:
    """The four files a predict of ``scan`` leaves in ``folder`` (the label maps as placeholders), its report
    recording the scan's path and SHA-256 as predict_scan's does."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SCAN_FILES[:3]:
        (folder / name).write_bytes(b"earlier")
    digest = hashlib.sha256(scan.read_bytes()).hexdigest()
    (folder / "report.json").write_text(json.dumps({"input": {"path": str(scan), "sha256": digest}}))
    return folder


def _slice_outputs(folder: Path, stems: list[str]) -> Path:
    """What a 2-D predict of ``stems`` leaves in ``folder``: label maps, overlays/ and predictions.json."""
    (folder / "overlays").mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (folder / f"{stem}.png").write_bytes(b"earlier")
        (folder / "overlays" / f"{stem}.png").write_bytes(b"earlier")
    records = [{"input": f"slices/{stem}.png", "output": f"{stem}.png"} for stem in stems]
    (folder / "predictions.json").write_text(json.dumps({"images": records}))
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _not_reached(*args: object, **kwargs: object) -> None:
    raise AssertionError("loading the models was reached")


# (a) a scan given alone into a folder of several scans' folders


def test_a_scan_alone_into_a_folder_of_other_scans_folders_is_refused_naming_its_own_folder(tmp_path: Path) -> None:
    a, b, c = (_scan(tmp_path / f"{n}.nii.gz", hu) for n, hu in zip("abc", (-1000, -900, -800)))
    out = tmp_path / "out"
    _scan_outputs(out / "a", a), _scan_outputs(out / "b", b)
    before = _tree(tmp_path)
    with pytest.raises(CovsegError, match="^" + _escaped(
            f"{out}: holds the outputs of 2 scans in folders of their own (a/, b/); a scan given alone writes into "
            f"-o itself, where its outputs would lie beside theirs; give -o {out / 'c'} (its folder when the scans "
            "are given together), or a new folder") + "$"):
        plan_predict([c], out)
    with pytest.raises(CovsegError, match=_escaped(f"give -o {out / 'a'} (its folder when")):  # a again: its own
        plan_predict([a], out)
    assert _tree(tmp_path) == before
    # the way out: the scan's own folder, where the report guard compares digests as for any scan
    assert plan_predict([c], out / "c").scan_outputs == [out / "c"]
    assert plan_predict([a], out / "a").scan_outputs == [out / "a"]  # the same scan: replaces its outputs
    with pytest.raises(CovsegError, match=_escaped(f"{out / 'b'}: holds the outputs of another scan, {b}")):
        plan_predict([a], out / "b")
    # given together again, each to its folder, as before
    assert plan_predict([a, c], out).scan_outputs == [out / "a", out / "c"]


def test_one_scan_folder_is_named_in_the_singular_and_many_are_cut_short(tmp_path: Path) -> None:
    scans = [_scan(tmp_path / f"s{n}.nii.gz") for n in range(6)]
    one, many = tmp_path / "one", tmp_path / "many"
    _scan_outputs(one / "s1", scans[1])
    with pytest.raises(CovsegError, match=_escaped(f"{one}: holds the outputs of 1 scan in a folder of its own "
                                                   f"(s1/); a scan given alone")):
        plan_predict([scans[0]], one)
    for n in range(1, 6):
        _scan_outputs(many / f"s{n}", scans[n])
    (many / ".covseg-x.part").mkdir()  # a staging folder a crash left: not a scan's folder
    _scan_outputs(many / ".covseg-x.part", scans[0])
    (many / "notes").mkdir()  # a folder of the user's, without a covseg report
    with pytest.raises(CovsegError, match=_escaped(f"{many}: holds the outputs of 5 scans in folders of their own "
                                                   "(s1/, s2/, s3/ and 2 more); a scan given alone")):
        plan_predict([scans[0]], many)
    plain = tmp_path / "plain"  # folders without covseg reports hold no scan: a scan alone writes there as before
    (plain / "notes").mkdir(parents=True)
    assert plan_predict([scans[0]], plain).scan_outputs == [plain]


def test_a_folder_that_cannot_be_listed_holds_no_scan_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a folder one may write in but not read (mode -wx): not a traceback
    from covseg.predict_plan import scan_folders

    _scan_outputs(tmp_path / "a", _scan(tmp_path / "a.nii.gz"))
    assert scan_folders(tmp_path) == ["a"] and scan_folders(tmp_path / "missing") == []

    def unreadable(self: Path):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", unreadable)
    assert scan_folders(tmp_path) == []


def test_a_dicom_series_alone_into_other_scans_folders_is_refused_in_the_plan(tmp_path: Path) -> None:
    # a series' digest is known only once it is read: before, it was segmented, then written beside the folders
    import numpy as np

    write_dicom_series(tmp_path / "p2", np.full((3, 8, 8), -1000.0))
    a = _scan(tmp_path / "a.nii.gz")
    out = _scan_outputs(tmp_path / "out" / "a", a).parent
    with pytest.raises(CovsegError, match=_escaped(f"give -o {out / 'p2'} (its folder when the scans are given")):
        plan_predict([tmp_path / "p2"], out)


def test_the_refusal_comes_from_the_command_before_a_model_loads_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    a, c = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "c.nii.gz")
    out = tmp_path / "out"
    _scan_outputs(out / "a", a)
    before = _tree(tmp_path)
    monkeypatch.setattr(covseg.predict, "open_models", _not_reached)
    assert main(["predict", str(c), "-o", str(out), "--model", str(tmp_path / "model"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {out}: holds the outputs of 1 scan in a folder of its own (a/); a scan given "
                   f"alone writes into -o itself, where its outputs would lie beside theirs; give -o {out / 'c'} (its "
                   "folder when the scans are given together), or a new folder"]
    assert _tree(tmp_path) == before


# (b) 2-D images' outputs and scans' outputs in one -o over two calls


def test_a_scan_alone_into_a_folder_of_2d_label_maps_is_refused(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "chest.nii.gz")
    out = _slice_outputs(tmp_path / "out", ["1", "2", "3"])
    with pytest.raises(CovsegError, match="^" + _escaped(
            f"{out}: holds the label maps of 3 2-D images (predictions.json); a scan given alone writes into -o "
            f"itself, where its outputs would lie among them; give -o {out / 'chest'} (its folder when given beside "
            "2-D images), or a new folder") + "$"):
        plan_predict([scan], out)
    assert plan_predict([scan], out / "chest").scan_outputs == [out / "chest"]


def test_2d_images_or_other_scans_into_a_lone_scan_s_folder_are_refused(tmp_path: Path) -> None:
    x, a, b = (_scan(tmp_path / f"{n}.nii.gz", hu) for n, hu in zip("xab", (-1000, -900, -800)))
    image = tiny_grey_image(tmp_path / "slice.png")
    out = _scan_outputs(tmp_path / "out", x)
    before = _tree(tmp_path)
    ways = "; give -o a new folder, or move the scan's outputs into a folder of their own"
    cases = [([image], "the 2-D images' label maps and predictions.json"),
             ([a, b], "the folders of this predict's scans"),
             ([a, image], "the folders of this predict's scans and the 2-D images' label maps"),
             ([x, a], "the folders of this predict's scans")]  # x itself again, beside another: x's twice
    for inputs, what in cases:
        with pytest.raises(CovsegError, match="^" + _escaped(
                f"{out}: holds the outputs of one scan given alone, {x}; {what} would lie beside them{ways}") + "$"):
            plan_predict(inputs, out)
    assert _tree(tmp_path) == before
    assert plan_predict([x], out).scan_outputs == [out]  # x alone again: replaces its own outputs, as before


def test_the_layouts_of_one_call_may_be_built_up_over_two(tmp_path: Path) -> None:
    a, b = _scan(tmp_path / "a.nii.gz"), _scan(tmp_path / "b.nii.gz")
    image = tiny_grey_image(tmp_path / "slice.png")
    slices_first = _slice_outputs(tmp_path / "slices-first", ["1"])  # scans beside 2-D outputs: their folders
    assert plan_predict([a, b], slices_first).scan_outputs == [slices_first / "a", slices_first / "b"]
    scans_first = tmp_path / "scans-first"  # 2-D images beside scans' folders: as one call of both writes them
    _scan_outputs(scans_first / "a", a)
    assert plan_predict([image], scans_first).files == [image]


def test_a_scan_whose_folder_is_the_overlays_of_earlier_2d_images_is_refused(tmp_path: Path) -> None:
    # its lesions.nii.gz ... would have gone into out/overlays among the overlay PNGs
    scan, other = _scan(tmp_path / "overlays.nii.gz"), _scan(tmp_path / "b.nii.gz")
    out = _slice_outputs(tmp_path / "out", ["1"])
    with pytest.raises(CovsegError, match="^" + _escaped(
            f"{scan}: its outputs would go to {out / 'overlays'}, the 2-D images' overlays folder; rename the scan, "
            "or predict it on its own with its own -o") + "$"):
        plan_predict([scan, other], out)
    label_map = _scan(tmp_path / "1.png.nii.gz")  # its folder would be the label map out/1.png
    with pytest.raises(CovsegError, match="^" + _escaped(
            f"{label_map}: its outputs would go to {out / '1.png'}, the 2-D images' label map; rename the scan")):
        plan_predict([label_map, other], out)
    (out / "overlays" / "1.png").unlink()
    (out / "overlays").rmdir()  # an earlier predict --no-overlays drew none: the name is free, as in one call
    assert plan_predict([scan, other], out).scan_outputs == [out / "overlays", out / "b"]


def test_2d_overlays_into_an_earlier_scan_s_folder_named_overlays_are_refused(tmp_path: Path) -> None:
    scan = _scan(tmp_path / "overlays.nii.gz")
    image = tiny_grey_image(tmp_path / "slice.png")
    out = tmp_path / "out"
    _scan_outputs(out / "overlays", scan)
    with pytest.raises(CovsegError, match="^" + _escaped(
            f"{out / 'overlays'}: holds the outputs of the scan {scan}, where the 2-D images' overlays would go; "
            "give -o a new folder, or leave the overlays out (--no-overlays)") + "$"):
        plan_predict([image], out)
    assert plan_predict([image], out, overlays=False).files == [image]


def test_the_report_guard_s_advice_for_a_lone_scan_names_a_new_folder(tmp_path: Path) -> None:
    # "give all the scans in one command (each is then written to OUT/<stem>/)" led, with the same -o, into the
    # refusal of scans' folders beside a lone scan's outputs
    (tmp_path / "report.json").write_text('{"input": {"path": "x.nii.gz", "sha256": "ab"}}')
    with pytest.raises(CovsegError, match="^" + _escaped(
            f"{tmp_path}: holds the outputs of another scan, x.nii.gz (its SHA-256 differs), which those of "
            f"s.nii.gz would replace; give each scan its own -o, or give all the scans in one command with a new -o "
            f"(each is then written to its <stem>/ folder there), or remove the earlier outputs from {tmp_path}")
            + "$"):
        check_same_scan(Path("s.nii.gz"), "cd", tmp_path)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)
