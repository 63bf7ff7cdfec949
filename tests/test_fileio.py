"""Atomic folder replacement (covseg.fileio.atomic_dir): permissions, failures and Ctrl-C while swapping."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import covseg.fileio as fileio
from conftest import interrupt_after_touching
from covseg.fileio import atomic_dir


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
