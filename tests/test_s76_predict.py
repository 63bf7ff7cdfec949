"""Session 76, predict paths (helper): a scan's output folder that cannot be written is refused before the scan is
read (``predict_scan`` from Python) or before the models load (``covseg predict`` of several scans, where an earlier
scan's folder ``-o/<stem>`` was read-only), not once a scan is segmented; a scan given as a symbolic link is refused
where an output would replace the file it leads to (the link named otherwise), or the link itself named as an output
in ``-o`` (it then led to the label map), and not where neither is replaced. No test here needs a model."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import tiny_air_scan

import covseg.report_html  # noqa: F401  predict_scan imports these on its first call: seconds, not the tests'
import covseg.scan  # noqa: F401
import covseg.volumes
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.labels import BINARY
from covseg.predict import predict_scan
from covseg.predict_plan import plan_predict


def _not_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("the scan was read")


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _scan(path: Path) -> Path:
    """A tiny 4-slice air NIfTI scan at ``path``, its folder made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tiny_air_scan(path)


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only (0o555) for the block; skips the test where this process writes there anyway
    (root: chmod does not stop it), where the refusal cannot be seen."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("this process (root?) may write into a read-only folder, so chmod cannot make one it cannot")
        yield
    finally:
        folder.chmod(0o755)


def _no_new_files_folder() -> Path:
    """A folder that makes no new files, even for root: /proc/self; skips where there is none or it does."""
    proc = Path("/proc/self")
    if not proc.is_dir():
        pytest.skip("no /proc here: a folder that makes no new files even for root")
    try:
        handle, probe = tempfile.mkstemp(dir=proc)
    except OSError:
        return proc
    os.close(handle)
    os.unlink(probe)
    pytest.skip("/proc/self makes new files here")


def _unwritable(out: Path) -> str:
    return "^" + re.escape(f"{out}: cannot be written (") + r".*\); give -o a folder you can write$"


def _unwritable_scan_folder(out: Path) -> str:
    return ("^" + re.escape(f"{out}: cannot be written (") + r".*\); this scan's folder inside -o "
            + re.escape(f"{out.parent}: make it writable or remove it, or give -o another folder") + "$")


@pytest.mark.parametrize("below", [False, True])
def test_predict_scan_refuses_a_read_only_output_folder_before_reading_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, below: bool) -> None:
    # it read and segmented the whole scan, then said "cannot write there" of the staging folder
    scan = _scan(tmp_path / "chest.nii.gz")
    folder = tmp_path / "out"
    out = folder / "new" if below else folder  # a new folder in a read-only one, or the read-only folder itself
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    with _read_only(folder):
        with pytest.raises(CovsegError, match=_unwritable(out)):
            predict_scan(scan, None, BINARY, out, {}, progress=False)
    assert not out.exists() or not any(out.iterdir())


def test_predict_scan_refuses_a_folder_that_makes_no_new_files_before_reading_the_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as root too: chmod does not stop root, /proc makes no files for anyone
    scan = _scan(tmp_path / "chest.nii.gz")
    out = _no_new_files_folder() / "covseg-out"
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    with pytest.raises(CovsegError, match=_unwritable(out)):
        predict_scan(scan, None, BINARY, out, {}, progress=False)


def _refused_before_the_models_load(scans: list[Path], output: Path, folder: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """``plan_predict`` and ``covseg predict`` of ``scans`` into ``output`` refuse ``folder`` as unwritable, the
    command in one line before it opens its (missing) model, leaving ``tmp_path`` as it was."""
    with pytest.raises(CovsegError, match=_unwritable_scan_folder(folder)):
        plan_predict(scans, output)
    before = _tree(tmp_path)
    assert main(["predict", *map(str, scans), "-o", str(output), "--model", str(tmp_path / "no-model"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(_unwritable_scan_folder(folder), err[0].removeprefix("covseg: error: ")), err
    assert _tree(tmp_path) == before


def test_predict_of_several_scans_refuses_a_read_only_scan_folder_before_the_models_load(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # -o was checked, not -o/<stem>: a.nii.gz was segmented and published, b.nii.gz segmented, then refused
    scans = [_scan(tmp_path / "in" / f"{name}.nii.gz") for name in ("a", "b")]
    output = tmp_path / "out"
    with _read_only(output / "b"):
        _refused_before_the_models_load(scans, output, output / "b", tmp_path, capsys)


def test_predict_of_several_scans_refuses_a_scan_folder_that_makes_no_new_files_before_the_models_load(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # as root too: -o/b is a link to /proc/self, where no file can be made
    scans = [_scan(tmp_path / "in" / f"{name}.nii.gz") for name in ("a", "b")]
    output = tmp_path / "out"
    output.mkdir()
    (output / "b").symlink_to(_no_new_files_folder(), target_is_directory=True)
    _refused_before_the_models_load(scans, output, output / "b", tmp_path, capsys)


def test_a_link_to_a_file_an_output_would_replace_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    # chest.nii.gz -> out/lesions.nii.gz: the guard compared the link's own name, so the scan was segmented and its
    # file replaced by its own label map (the link then led to that)
    out = tmp_path / "out"
    real = _scan(out / "lesions.nii.gz")
    link = tmp_path / "chest.nii.gz"
    link.symlink_to(real)
    expected = (f"{link}: is a link to {real}, which covseg predict would replace with its own lesions.nii.gz; give -o "
                "another folder")
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        plan_predict([link], out)
    before = _tree(tmp_path)
    assert main(["predict", str(link), "-o", str(out), "--model", str(tmp_path / "no-model"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"covseg: error: {expected}"]
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        predict_scan(link, None, BINARY, out, {}, progress=False)
    assert _tree(tmp_path) == before


def test_a_link_named_as_an_output_in_the_output_folder_is_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # out/lungs.nii.gz -> scans/chest.nii.gz: the guard compared the folder of the file it leads to, so the link
    # given as the scan was replaced by the lung mask (the path given then named a label map)
    real = _scan(tmp_path / "scans" / "chest.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    link = out / "lungs.nii.gz"
    link.symlink_to(real)
    expected = f"{link}: covseg predict would write its own lungs.nii.gz over this scan; give -o another folder"
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        plan_predict([link], out)
    monkeypatch.setattr(covseg.volumes, "read_volume", _not_read)
    with pytest.raises(CovsegError, match="^" + re.escape(expected) + "$"):
        predict_scan(link, None, BINARY, out, {}, progress=False)
    assert link.is_symlink() and link.resolve() == real


def test_a_link_named_as_an_output_elsewhere_to_a_scan_in_the_output_folder_is_predicted(tmp_path: Path) -> None:
    # elsewhere/lesions.nii.gz -> out/chest.nii.gz: writing out/lesions.nii.gz replaces neither, yet it was refused
    out = tmp_path / "out"
    real = _scan(out / "chest.nii.gz")
    link = tmp_path / "elsewhere" / "lesions.nii.gz"
    link.parent.mkdir()
    link.symlink_to(real)
    assert plan_predict([link], out).scans == [link]
