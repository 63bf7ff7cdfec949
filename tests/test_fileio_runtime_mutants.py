"""Checks that a second round of mutation testing of covseg.fileio and covseg.runtime found missing: the output-folder
refusals, error relabelling, a failed sync, the temporary names at the 255-byte limit, held-back SIGTERM, cgroup quotas
of zero, a C library without mallopt, and joining a process group (already joined, or on a GPU)."""
from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import torch

import covseg.fileio as fileio
from conftest import record_syncs_and_renames
from covseg import runtime
from covseg.errors import CovsegError, Terminated
from test_runtime import _cgroup_tree  # a fake cgroup file system


# ---- covseg.fileio ----------------------------------------------------------------------------------------------

def test_check_output_folder_refuses_a_file_and_an_unwritable_folder_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(CovsegError) as caught:
        fileio.check_output_folder(tmp_path / "afile")
    assert str(caught.value) == f"{tmp_path / 'afile'}: is a file; give -o a folder (it is made if missing)"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(CovsegError) as caught:
        fileio.check_output_folder(loop / "out")
    assert str(caught.value) == (f"{loop / 'out'}: cannot be written ({loop} is a symbolic link loop (a link that "
                                 "leads back to itself)); give -o a folder you can write")
    fileio.check_output_folder(tmp_path)  # an existing folder: fine
    fileio.check_output_folder(tmp_path / "new" / "deeper")  # a folder still to be made: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "loop"]  # nothing made by the checks


def test_refuse_output_in_data_refuses_the_data_folder_and_folders_inside_it_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    (data / "masks").mkdir(parents=True)
    for out in (data, data / "masks", data / "masks" / "new"):
        with pytest.raises(CovsegError) as caught:
            fileio.refuse_output_in_data(out, data)
        assert str(caught.value) == (f"{out}: is inside the data folder {data}, where its files would be read as "
                                     "images or masks; give -o a folder outside it")
    fileio.refuse_output_in_data(tmp_path, data)  # the folder holding the data folder: its files are not read
    fileio.refuse_output_in_data(tmp_path / "data-out", data)  # a sibling whose name begins the same
    monkeypatch.chdir(data)
    fileio.refuse_output_in_data(data / "out", "")  # no data folder given: nothing to refuse (not the current one)


def test_relabelled_keeps_the_message_of_an_error_without_an_errno() -> None:
    copy = fileio._relabelled(OSError("the disk went away"), "out.png")
    assert type(copy) is OSError and (copy.errno, copy.strerror, copy.filename) == (None, "the disk went away",
                                                                                   "out.png")
    copy = fileio._relabelled(PermissionError(errno.EACCES, "Permission denied", ".out.png.x.part", "other"), "out.png")
    assert type(copy) is PermissionError and str(copy) == "[Errno 13] Permission denied: 'out.png'"


def test_relabelled_names_the_file_on_an_error_it_cannot_copy() -> None:
    class OwnError(OSError):
        def __init__(self) -> None:  # a constructor of its own: no copy can be made
            super().__init__(errno.EIO, "Input/output error", ".out.png.x.part")

    err = OwnError()
    same = fileio._relabelled(err, "out.png")
    assert same is err and same.filename == "out.png"


def test_an_error_about_another_file_inside_atomic_path_keeps_its_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:  # the writer failed to read its input: that file is named
        with fileio.atomic_path(tmp_path / "out.png"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.png"))
    assert caught.value.filename == str(tmp_path / "input.png")
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_a_file_whose_contents_cannot_be_synced_is_not_published(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fileio.os, "fsync", failing)
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(OSError, match="Input/output error"):
        fileio.sync_path(tmp_path / "a.txt")
    fileio.sync_path(tmp_path)  # a folder that cannot be synced is let be
    with pytest.raises(OSError, match="Input/output error"):
        fileio.atomic_write_text(tmp_path / "out.txt", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # neither the output nor its temporary file


def test_a_suffix_that_just_fits_beside_the_random_characters_is_kept(tmp_path: Path) -> None:
    name = "x." + "a" * 239  # ".." + ".part." + 239 + 8 random characters = 255 bytes: the suffix still fits
    with fileio.atomic_path(tmp_path / name) as tmp:
        assert tmp.name.startswith("..") and tmp.name.endswith(".part." + "a" * 239) and len(tmp.name) == 255
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_atomic_dir_does_not_sync_a_folder_that_a_staged_link_points_to(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    events = record_syncs_and_renames(monkeypatch)
    with fileio.atomic_dir(tmp_path / "out") as staged:
        (staged / "a.png").write_bytes(b"a")
        os.symlink(elsewhere, staged / "linked")
    synced = [Path(p) for kind, p in events if kind == "fsync"]
    assert elsewhere not in synced and len(synced) == 3  # a.png, the staged folder, then tmp_path after the rename
    assert (tmp_path / "out" / "linked").is_symlink()


def test_atomic_dir_with_force_is_not_stopped_by_an_old_folder_left_aside_earlier(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    for tail in (".old", "1-00000000.old"):  # what a run killed between the two renames could leave
        (tmp_path / f".out.{tail}").mkdir()
        (tmp_path / f".out.{tail}" / "older.txt").write_text("older")
    with fileio.atomic_dir(final, force=True) as staged:
        (staged / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out..old", ".out.1-00000000.old", "out"]


def test_staging_folder_for_a_file_is_made_beside_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("mine")
    staged = fileio.staging_folder(tmp_path / "afile")
    assert staged.parent == tmp_path and staged.name.startswith(".afile.") and staged.name.endswith(".part")
    assert staged.is_dir() and (tmp_path / "afile").read_text() == "mine"


def _outcome_of_signals(signums: list[int]) -> BaseException | None:
    """What leaves an interrupts_deferred block in which ``signums`` were sent to this process (caught here, so that a
    KeyboardInterrupt does not end the test session)."""
    try:
        with fileio.interrupts_deferred():
            for signum in signums:
                os.kill(os.getpid(), signum)
    except BaseException as err:  # noqa: BLE001 - the outcome is checked by the caller
        return err
    return None


def test_a_sigterm_held_back_is_raised_as_terminated_even_beside_a_ctrl_c() -> None:
    def program_handler(signum: int, frame: object) -> None:  # the covseg program's: SIGTERM raises Terminated
        raise Terminated

    signal.signal(signal.SIGTERM, program_handler)  # put back after the test by conftest
    assert type(_outcome_of_signals([signal.SIGTERM])) is Terminated
    assert type(_outcome_of_signals([signal.SIGINT, signal.SIGTERM])) is Terminated
    assert type(_outcome_of_signals([signal.SIGINT])) is KeyboardInterrupt
    assert _outcome_of_signals([]) is None
    assert signal.getsignal(signal.SIGTERM) is program_handler


def test_a_sigterm_without_a_handler_of_the_program_is_not_held_back() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # put back after the test by conftest
    with fileio.interrupts_deferred():
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a kill still ends the process as it would have
        assert signal.getsignal(signal.SIGINT) not in (signal.SIG_DFL, signal.default_int_handler)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ---- covseg.runtime ---------------------------------------------------------------------------------------------

def test_keep_freed_memory_changes_nothing_without_mallopt_or_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[object] = []

    def libc_without_mallopt(name: object) -> object:
        opened.append(name)
        return type("Libc", (), {})()

    monkeypatch.setattr(runtime.platform, "system", lambda: "Linux")
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime.ctypes, "CDLL", libc_without_mallopt)
    assert runtime.keep_freed_memory() is False and opened == [None]
    monkeypatch.setattr(runtime.platform, "system", lambda: "Darwin")
    assert runtime.keep_freed_memory() is False and opened == [None]  # not even looked for


def test_a_quota_of_zero_is_no_quota(tmp_path: Path) -> None:
    member = _cgroup_tree(tmp_path, {"cpu.max": "0 100000\n"}, "0::/\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) is None
    (tmp_path / "cpu.max").write_text("350000 100000\n")  # 3.5 cores: three threads
    assert runtime.cgroup_cpu_limit(tmp_path, member) == 3


class _FakeDist:
    """torch.distributed as a test sees it: records init_process_group's backend, answers rank and world size."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, initialized: bool, rank: int, world: int) -> None:
        import torch.distributed as dist

        self.backends: list[str] = []
        self.initialized = initialized
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(dist, "init_process_group", self.init_process_group)
        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        monkeypatch.setattr(dist, "get_world_size", lambda: world)

    def init_process_group(self, backend: str) -> None:
        assert not self.initialized, "joined a process group twice"
        self.backends.append(backend)
        self.initialized = True


def _torchrun_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_a_process_group_joined_already_is_taken_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_env(monkeypatch, WORLD_SIZE="2")  # no RANK, MASTER_ADDR, MASTER_PORT: the group was set up otherwise
    fake = _FakeDist(monkeypatch, initialized=True, rank=1, world=2)
    cpu = torch.device("cpu")
    assert runtime.init_distributed(cpu) == (runtime.DistContext(1, 2), cpu) and fake.backends == []


def test_a_cpu_job_joins_with_gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_env(monkeypatch, WORLD_SIZE="3", RANK="2", LOCAL_RANK="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    fake = _FakeDist(monkeypatch, initialized=False, rank=2, world=3)
    cpu = torch.device("cpu")
    assert runtime.init_distributed(cpu) == (runtime.DistContext(2, 3), cpu) and fake.backends == ["gloo"]


def test_a_gpu_job_joins_with_nccl_on_the_local_rank_s_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _torchrun_env(monkeypatch, WORLD_SIZE="4", RANK="3", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    fake = _FakeDist(monkeypatch, initialized=False, rank=3, world=4)
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert runtime.init_distributed(torch.device("cuda")) == (runtime.DistContext(3, 4), torch.device("cuda", 1))
    assert chosen == [torch.device("cuda", 1)] and fake.backends == ["nccl"]
    _torchrun_env(monkeypatch, WORLD_SIZE="4", RANK="3", LOCAL_RANK="-1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    with pytest.raises(CovsegError, match=r"^LOCAL_RANK='-1' is not a whole number >= 0"):
        runtime.init_distributed(torch.device("cuda"))


def test_fp32_autocast_is_no_autocast_and_says_nothing() -> None:
    import warnings

    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.autocast(cpu, float32) warns "target dtype is not supported"
        with runtime.autocast(torch.device("cpu"), torch.float32):
            assert (a @ b).dtype == torch.float32
