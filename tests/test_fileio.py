"""Atomic outputs (covseg.fileio): atomic_dir's permissions, failures and Ctrl-C while swapping; atomic_path's
temporary names, error messages and the folders it leaves after a failed write."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import covseg.fileio as fileio
from conftest import interrupt_after_touching
from covseg.fileio import atomic_dir, atomic_path, atomic_write_text, staging_folder


def _old_folder(final: Path) -> Path:
    final.mkdir()
    (final / "old.txt").write_text("old")
    return final


def _write_new(final: Path, force: bool = True) -> None:
    with atomic_dir(final, force=force) as staged:
        (staged / "new.txt").write_text("new")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)])
def test_atomic_dir_gives_the_folder_the_usual_permissions(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        _write_new(tmp_path / "out", force=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == mode  # not mkdtemp's 0o700


def test_a_failed_move_in_puts_the_old_folder_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = _old_folder(tmp_path / "out")
    real = os.replace

    def failing(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        if Path(src).name.endswith(".part"):  # the staged folder moving in
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        _write_new(final)
    monkeypatch.undo()
    assert [p.name for p in final.iterdir()] == ["old.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_while_the_old_folder_is_replaced_leaves_the_new_one_whole(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    final = _old_folder(tmp_path / "out")
    interrupt_after_touching(final, monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # held back until the new folder is in place, then raised
        _write_new(final)
    monkeypatch.undo()
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old copy set aside is deleted


_UID = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567"  # a 63-character DICOM UID


@pytest.mark.parametrize("name", [f"{_UID}_{_UID}_lesions.nii.gz",  # 142 characters, nearly all "suffixes"
                                  "a" * 251 + ".png",  # 255 bytes: the longest name a file system takes
                                  "é" * 125 + "x.png"])  # 255 bytes, 130 characters
def test_a_long_name_that_a_plain_write_takes_is_written_atomically(tmp_path: Path, name: str) -> None:
    assert len(os.fsencode(name)) <= 255
    atomic_write_text(tmp_path / name, "x")
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == "x"


@pytest.mark.parametrize("name, suffix", [("scan.nii.gz", ".part.nii.gz"), ("scan.NII.GZ", ".part.NII.GZ"),
                                          (f"{_UID}.png", ".part.png"), (f"{_UID}_mask.nii", ".part.nii"),
                                          ("README", ".part")])
def test_the_temporary_name_keeps_the_format_suffix_only(tmp_path: Path, name: str, suffix: str) -> None:
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(f".{name}.") and tmp.name.endswith(suffix)
        assert len(tmp.name) == len(f".{name}.") + 8 + len(suffix)  # the final name, 8 random characters, the suffix
        tmp.write_text("x")
    assert (tmp_path / name).read_text() == "x"


def test_an_output_name_taken_by_a_folder_is_named_in_one_plain_line(tmp_path: Path) -> None:
    final = tmp_path / "out.txt"
    final.mkdir()
    with pytest.raises(IsADirectoryError) as caught:  # the same type as os.replace raised, for callers catching it
        atomic_write_text(final, "x")
    err = caught.value
    assert str(err) == f"[Errno {errno.EISDIR}] Is a directory: {str(final)!r}"  # no trailing " -> None"
    assert (err.errno, err.filename, err.filename2) == (errno.EISDIR, str(final), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # the temporary file is gone


def test_a_temporary_file_that_cannot_be_made_is_reported_under_the_final_name(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".out.png.abcdefgh.part.png"))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refused)
    monkeypatch.setattr(fileio.tempfile, "mkdtemp", refused)
    with pytest.raises(PermissionError) as caught:
        with atomic_path(tmp_path / "out.png"):
            pass
    assert str(caught.value) == f"[Errno {errno.EACCES}] Permission denied: {str(tmp_path / 'out.png')!r}"
    with pytest.raises(PermissionError) as caught:
        staging_folder(tmp_path / "new" / "run")
    assert str(caught.value) == f"[Errno {errno.EACCES}] Permission denied: {str(tmp_path / 'new')!r}"


def test_a_failed_write_removes_only_the_folders_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kept").mkdir()  # there before, empty: stays
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "kept" / "new" / "deeper" / "out.png") as tmp:
            assert tmp.parent.is_dir()
            raise RuntimeError("writer failed")
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["kept"]
    real = os.replace

    def no_space(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(src), str(dst))

    monkeypatch.setattr(fileio.os, "replace", no_space)
    with pytest.raises(OSError, match="No space left on device"):  # an OSError from the rename: the same
        atomic_write_text(tmp_path / "made" / "out.txt", "x")
    monkeypatch.setattr(fileio.os, "replace", real)
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["kept"]
    (tmp_path / "kept" / "new").mkdir()
    (tmp_path / "kept" / "new" / "other.png").write_bytes(b"")
    with pytest.raises(RuntimeError):  # a folder made for the output, but holding a file written meanwhile: stays
        with atomic_path(tmp_path / "kept" / "new" / "deeper" / "out.png"):
            raise RuntimeError("writer failed")
    assert [p.name for p in (tmp_path / "kept" / "new").iterdir()] == ["other.png"]  # "deeper" removed
    atomic_write_text(tmp_path / "ok" / "out.txt", "x")  # a write that succeeds keeps the folders made for it
    assert (tmp_path / "ok" / "out.txt").read_text() == "x"
