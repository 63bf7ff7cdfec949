"""Atomic outputs (covseg.fileio): atomic_dir's permissions, failures and Ctrl-C while swapping; atomic_path's
temporary names, error messages and the folders it leaves after a failed write."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import covseg.fileio as fileio
from conftest import interrupt_after_touching, record_syncs_and_renames
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
                                          ("README", ".part"), (".nii.gz", ".part.gz")])
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


def test_display_text_replaces_each_undecodable_byte_of_a_file_name() -> None:
    assert fileio.display_text(os.fsdecode(b"M\xfcller.nii.gz")) == "M\ufffdller.nii.gz"
    assert fileio.display_text("\ud800x") == "?x"  # a lone surrogate surrogateescape does not stand for
    assert fileio.display_text(Path("plain/é.png")) == "plain/é.png"


def test_file_sha256_is_the_sha256_of_the_whole_file(tmp_path: Path) -> None:
    (tmp_path / "abc").write_bytes(b"abc")
    assert fileio.file_sha256(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = bytes(range(256)) * 600  # 150 KiB: more than two 64 KiB chunks
    (tmp_path / "big").write_bytes(big)
    import hashlib
    assert fileio.file_sha256(str(tmp_path / "big")) == hashlib.sha256(big).hexdigest()


def test_a_failed_write_keeps_a_folder_it_made_once_a_file_was_written_in_it(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "new" / "deeper" / "out.png"):
            (tmp_path / "new" / "other.png").write_bytes(b"x")  # another output, written meanwhile
            raise RuntimeError("writer failed")
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["new", "new/deeper",
                                                                                   "new/other.png"]  # left whole


def test_unwritable_reason_names_a_file_in_the_way_and_a_read_only_folder(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("x")
    assert fileio.unwritable_reason(tmp_path / "afile" / "out.png") == f"{tmp_path / 'afile'} is a file, not a folder"
    assert fileio.unwritable_reason(tmp_path / "afile", folder=True) == f"{tmp_path / 'afile'} is a file, not a folder"
    assert fileio.unwritable_reason(tmp_path / "afile") is None  # a file to be replaced: its folder is writable
    assert fileio.unwritable_reason(tmp_path / "new" / "deeper", folder=True) is None
    (tmp_path / "ro").mkdir()
    real = os.access
    # a folder the process may read and enter but not write into (chmod 555 is no barrier to root)
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: not (mode & os.W_OK) and real(p, mode))
    assert fileio.unwritable_reason(tmp_path / "ro" / "x.png") == f"{tmp_path / 'ro'} is not a folder you can write into"
    assert fileio.unwritable_reason(tmp_path / "ro", folder=True) == f"{tmp_path / 'ro'} is not a folder you can write into"


def test_unwritable_reason_tries_a_file_where_os_access_says_yes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # fuzz helper 168: root passes os.access on /proc, /sys and read-only mounts, so evaluate scored every image and
    # pretrain loaded every slice before the write failed
    (tmp_path / "ro").mkdir()
    real = fileio.tempfile.mkstemp

    def read_only(*args, **kwargs):
        if Path(kwargs["dir"]) == tmp_path / "ro":
            raise OSError(errno.EROFS, "Read-only file system")
        return real(*args, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", read_only)
    assert fileio.unwritable_reason(tmp_path / "ro" / "out", folder=True) == (
        f"{tmp_path / 'ro'} is not a folder you can write into (Read-only file system)")
    assert fileio.unwritable_reason(tmp_path / "ro" / "x.png") == (
        f"{tmp_path / 'ro'} is not a folder you can write into (Read-only file system)")
    assert fileio.unwritable_reason(tmp_path / "new", folder=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ro"]  # the file tried is gone
    monkeypatch.undo()
    if os.path.isdir("/proc/self"):  # Linux: nobody, root included, makes a file in /proc
        assert fileio.unwritable_reason("/proc/covseg-out", folder=True).startswith(
            "/proc is not a folder you can write into")


def test_replacing_output_refuses_a_non_empty_folder_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert fileio.replacing_output(out, force=False) is False  # not there yet
    out.mkdir()
    assert fileio.replacing_output(out, force=False) is False  # empty: nothing to replace
    assert fileio.replacing_output(out, force=True) is False
    (out / "old.txt").write_text("old")
    with pytest.raises(fileio.CovsegError, match="exists; pass --force to replace it"):
        fileio.replacing_output(out, force=False)
    assert fileio.replacing_output(out, force=True) is True
    with pytest.raises(fileio.CovsegError, match="cannot be written .*is a file, not a folder"):
        fileio.replacing_output(out / "old.txt", force=True)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_atomic_path_gives_the_file_the_usual_permissions(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        assert fileio.current_umask() == umask and fileio.current_umask() == umask  # read, left as it was
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == mode  # not mkstemp's 0o600


def test_atomic_write_text_writes_utf8(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "r.html", "Müller – ✓")
    assert (tmp_path / "r.html").read_bytes() == "Müller – ✓".encode("utf-8")


def test_the_temporary_name_beside_a_255_byte_name_takes_all_255_bytes(tmp_path: Path) -> None:
    with atomic_path(tmp_path / ("a" * 251 + ".png")) as tmp:
        assert len(os.fsencode(tmp.name)) == 255 and tmp.name.endswith(".part.png")
        tmp.write_text("x")


def test_atomic_dir_without_force_leaves_an_existing_folder_alone(tmp_path: Path) -> None:
    final = _old_folder(tmp_path / "out")
    with pytest.raises(OSError):
        _write_new(final, force=False)
    assert [p.name for p in final.iterdir()] == ["old.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_with_force_replaces_a_link_not_the_folder_it_points_to(tmp_path: Path) -> None:
    target = _old_folder(tmp_path / "target")
    final = tmp_path / "out"
    final.symlink_to(target)
    _write_new(final)
    assert not final.is_symlink() and [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]  # the folder linked to is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]  # the link set aside is deleted


def test_staging_folder_is_made_inside_an_existing_folder_else_beside_it(tmp_path: Path) -> None:
    inside = staging_folder(tmp_path)
    assert inside.parent == tmp_path and inside.name.startswith(".covseg-") and inside.is_dir()
    beside = staging_folder(tmp_path / "new" / "run")  # its parent made as needed
    assert beside.parent == tmp_path / "new" and beside.name.startswith(".run.") and beside.name.endswith(".part")
    assert beside.is_dir() and not (tmp_path / "new" / "run").exists()


def test_atomic_path_syncs_the_file_before_the_rename_and_its_folder_after(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_syncs_and_renames(monkeypatch)
    final = tmp_path / "out" / "metrics.json"
    atomic_write_text(final, "{}")
    assert final.read_text() == "{}"
    (kind0, synced), (kind1, replaced), (kind2, folder) = events
    assert (kind0, kind1, kind2) == ("fsync", "replace", "fsync")
    assert Path(synced).name.startswith(".metrics.json.") and Path(synced).parent == final.parent
    assert replaced == str(final) and folder == str(final.parent)


def test_atomic_dir_syncs_every_staged_file_and_folder_before_the_rename_and_the_parent_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_syncs_and_renames(monkeypatch)
    final = tmp_path / "pred"
    with atomic_dir(final) as staged:
        (staged / "sub").mkdir()
        (staged / "a.png").write_bytes(b"a")  # written straight into the staged folder, not through atomic_path
        (staged / "sub" / "b.png").write_bytes(b"b")
        os.symlink(staged / "a.png", staged / "link.png")  # a link is not followed
    assert (final / "a.png").read_bytes() == b"a" and (final / "sub" / "b.png").read_bytes() == b"b"
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync"] * 4 + ["replace", "fsync"]
    synced = [Path(p) for _, p in events[:4]]
    assert sorted(p.name for p in synced[:2]) == ["a.png", "b.png"]  # the files first, then the folders, deepest up
    assert synced[2].name == "sub" and synced[3] == Path(staged)
    assert events[4][1] == str(final) and events[5][1] == str(tmp_path)


def test_atomic_dir_that_fails_removes_the_folders_it_made_for_the_output(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "new" / "deeper" / "out") as staged:
            (staged / "half.png").write_bytes(b"x")
            raise RuntimeError("the work failed")
    assert list(tmp_path.iterdir()) == []  # neither the staged folder nor the empty folders made for it
    (tmp_path / "kept").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "kept" / "out"):
            raise RuntimeError("the work failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_unwritable_reason_names_a_symbolic_link_loop_on_the_way(tmp_path: Path) -> None:
    # before: train/predict/cv printed a RuntimeError traceback for `-o loop`, evaluate asked whether the disk was full
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    told = f"{loop} is a symbolic link loop (a link that leads back to itself)"
    assert fileio.unwritable_reason(loop, folder=True) == told
    assert fileio.unwritable_reason(loop / "sub" / "report.md") == told
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # a link to nothing yet is no loop
    assert fileio.unwritable_reason(tmp_path / "dangling", folder=True) is None


@pytest.mark.parametrize("command", [["train", "--recipe", "tiny"], ["cv", "--recipe", "tiny"],
                                     ["cv", "--recipe", "tiny", "--seeds", "0", "1"], ["compare", "--recipe", "tiny"],
                                     ["pretrain", "--data", "nowhere"]])
def test_a_symbolic_link_loop_given_as_output_is_one_line_not_a_traceback(tmp_path: Path, capsys, tiny_data: Path,
                                                                          command: list[str]) -> None:
    from covseg.cli import main

    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    data = [] if command[0] == "pretrain" else ["--data", str(tiny_data)]
    assert main([*command, *data, "-o", str(loop)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("covseg: error: ") and "symbolic link loop" in err, err


@pytest.mark.parametrize("command", [["cv", "--recipe", "tiny"], ["compare", "--recipe", "tiny"]])
def test_cv_and_compare_refuse_an_output_file_before_the_first_fold(tmp_path: Path, capsys, tiny_data: Path,
                                                                   command: list[str]) -> None:
    # before: "== fold 0 ==", then "afile/fold-0: Not a directory" (fuzz helper 168)
    from covseg.cli import main

    (tmp_path / "afile").write_text("mine")
    assert main([*command, "--data", str(tiny_data), "-o", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == (f"covseg: error: {tmp_path / 'afile'}: is a file; give -o a folder (it is made "
                                       "if missing)\n")
    assert (tmp_path / "afile").read_text() == "mine"


def test_outputs_that_would_land_in_a_command_s_own_inputs_are_refused_before_any_work(
        tmp_path: Path, capsys, tiny_data: Path, tiny_run: Path) -> None:
    # fuzz helper 168: evaluate and compare wrote their reports into the data's masks folder (and the next run took
    # best_worst.png for a mask without an image); predict -o a run folder replaced its curves.png; cv and compare
    # wrote their folds into a training run's folder
    import shutil

    from covseg.cli import main

    def refused(argv: list[str], message: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    masks = data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/GT"
    before = sorted(p.name for p in masks.iterdir())
    inside = f"{masks}: is inside the data folder {data}, where its files would be read as images or masks"
    refused(["evaluate", str(tiny_run), "--data", str(data), "-o", str(masks), "--quiet"], inside)
    for command in ("cv", "compare"):
        refused([command, "--recipe", "tiny", "--data", str(data), "-o", str(masks), "--quiet"], inside)
    assert sorted(p.name for p in masks.iterdir()) == before
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    files = sorted(p.name for p in run.iterdir())
    for command in ("cv", "compare"):
        refused([command, "--recipe", "tiny", "--data", str(data), "-o", str(run), "--quiet"],
                f"{run}: is a training run's folder; give -o a folder of its own")
    image = tmp_path / "curves.png"
    shutil.copy(run / "curves.png", image)
    refused(["predict", str(image), "-o", str(run), "--model", str(tiny_run), "--quiet"],
            f"{run}: is a run or cross-validation folder; its files could be replaced by predictions")
    assert sorted(p.name for p in run.iterdir()) == files


def test_train_refuses_a_run_folder_inside_the_data_folder(tmp_path: Path, capsys, tiny_data: Path) -> None:
    # covseg train -o DATA/run trained and wrote its run folder among the images (README: an -o inside the data
    # folder is refused), though evaluate, cv, compare, pseudo-label and pretrain refused it
    import shutil

    from conftest import TINY_OVERRIDES
    from covseg.cli import main

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for inside in (data / "run", data):
        assert main(["train", "--recipe", "tiny", "--data", str(data), "--epochs", "1", "-o", str(inside), "--quiet",
                     *TINY_OVERRIDES]) == 2
        assert capsys.readouterr().err == (f"covseg: error: {inside}: is inside the data folder {data}, where its "
                                           "files would be read as images or masks; give -o a folder outside it\n")
    assert not (data / "run").exists() and not list(data.glob("*.yaml"))


def test_a_folder_that_makes_no_new_files_is_not_said_to_be_missing() -> None:
    # /proc exists; it answers "No such file or directory" for a file it will not make, which misled (helper 204)
    why = fileio.unwritable_reason(Path("/proc/x.md"))
    assert why is not None and why.startswith("/proc is not a folder you can write into")
    if os.geteuid() == 0:  # as root, os.access passes and the file tried is refused by the file system
        assert why == "/proc is not a folder you can write into (it makes no new files)"


def test_a_ctrl_c_inside_nested_deferrals_is_raised_once_the_outer_block_ends() -> None:
    # helper 201: the inner block raised at its own end, under the outer one, so the outer's files were cut short
    import signal

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with fileio.interrupts_deferred():
            with fileio.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                steps.append("inner done")
            steps.append("outer done")  # reached: the inner block handed the Ctrl-C on
    assert steps == ["inner done", "outer done"]
    with pytest.raises(KeyboardInterrupt):  # one block alone raises it at its end, as before
        with fileio.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("alone done")
    assert steps[-1] == "alone done"


def test_a_ctrl_c_while_atomic_dir_deletes_the_old_folder_leaves_no_part_of_it(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    for i in range(3):
        (out / "sub" / f"{i}.txt").write_text("old")
    real = fileio.shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the old folder is being deleted
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fileio.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_dir(out, force=True) as staged:
            (staged / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no hidden .out.*.old left behind
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_a_ctrl_c_in_an_inner_block_that_fails_is_still_raised_by_the_outer_block() -> None:
    # review A: the inner block handed its Ctrl-C on only when it ended without an error; caught in between, it was lost
    import signal

    with pytest.raises(KeyboardInterrupt):
        with fileio.interrupts_deferred():
            try:
                with fileio.interrupts_deferred():
                    os.kill(os.getpid(), signal.SIGINT)
                    raise OSError("a write failed")
            except OSError:
                pass  # the caller handles the failed write and goes on
