"""Data-parallel training (torchrun): a failure of the main process while it alone writes the run folder, and the
up-front check of the images each epoch gives the processes."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covseg import runtime
from covseg.errors import CovsegError
from covseg.runtime import DistContext

from conftest import TINY_OVERRIDES

_STOPPED = ("the main process (rank 0) of this torchrun job stopped while it wrote the run folder, so this one could "
            "not go on; its own message says why")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_main_process_failing_otherwise_than_with_a_refusal_stops_every_process_in_one_line(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # -o through a file: rank 0's mkdir raised NotADirectoryError, which the broadcast of its refusals (CovsegError
    # only) let through, so rank 1 was left waiting at that broadcast (NCCL: until torchrun killed it; gloo: until it
    # saw the connection close, and said only that another process stopped). Rank 0 runs covseg's CLI here, rank 1
    # in a process of its own, joined as torchrun joins them (its environment variables, gloo).
    import datetime

    import torch.distributed as torch_dist

    from covseg.cli import main

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder\n")
    port = _free_port()
    argv = ["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(blocker / "run"),
            "--quiet", *TINY_OVERRIDES]
    joined = dict(WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    other = subprocess.Popen([sys.executable, "-c", "import sys; from covseg.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", *argv],
                             env=dict(os.environ, **joined, RANK="1", OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for name, value in dict(joined, RANK="0").items():
        monkeypatch.setenv(name, value)
    try:  # joined here with a timeout (the CLI keeps a group it finds), so a process that never comes fails the test
        torch_dist.init_process_group("gloo", rank=0, world_size=2, timeout=datetime.timedelta(seconds=60))
        assert main(argv) == 2
        err = other.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        pytest.fail("rank 1 still waits for rank 0, which has stopped")
    finally:
        other.kill()
        if torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    refusal = f"covseg: error: {blocker} is a file, not a folder; give an output path outside it\n"
    assert capsys.readouterr().err == refusal  # rank 0's own line, as one process says it
    assert other.returncode == 2 and err == f"covseg: error: {_STOPPED}\n"
    assert blocker.read_text() == "a file, not a folder\n"


class _Broadcast:
    """``torch.distributed.broadcast_object_list`` as one process sees it: the main process's list arrives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import torch.distributed as torch_dist

        self.sent: list = []
        monkeypatch.setattr(torch_dist, "broadcast_object_list", self, raising=False)

    def __call__(self, objects: list, src: int = 0) -> None:
        self.sent.append(list(objects))


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_any_exception_of_the_main_process_is_sent_to_the_others(error: BaseException,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the main process raises its own exception (the CLI's one line for an OSError, Ctrl-C's stop), after sending
    # the others the line that says it stopped, so none waits at the broadcast for it
    broadcast = _Broadcast(monkeypatch)
    with pytest.raises(type(error)) as raised:
        runtime.raise_on_every_rank(error, DistContext(0, 2))
    assert raised.value is error and broadcast.sent == [[_STOPPED]]
    refusal = CovsegError("runs/x: run folder exists; pass --force to overwrite it")
    with pytest.raises(CovsegError):  # a refusal is sent as it is, for every process to say
        runtime.raise_on_every_rank(refusal, DistContext(0, 2))
    assert broadcast.sent[1] == [str(refusal)]


class _Reached(Exception):
    """Raised where the run reaches the main process's step, past every check."""


def _until_the_folder_step(monkeypatch: pytest.MonkeyPatch, tiny_data: Path, tmp_path: Path, world: int,
                           pseudo: int, overrides: list[str]) -> None:
    """Train (as rank 0 of ``world`` processes, no process group) up to the broadcast after the run folder is
    written, with ``pseudo`` pseudo-labelled slices stood in for; raises :class:`_Reached` there."""
    import covseg.run
    from covseg.config import apply_overrides, load_recipe
    from covseg.datasets import load_dataset

    folder = tmp_path / "pl"
    folder.mkdir(parents=True)
    (folder / "pseudo.json").write_text("{}\n")  # what names the folder as pseudo-labels; its slices stood in for
    size = 32
    slices = covseg.run._Pseudo(torch.zeros(pseudo, 1, size, size, dtype=torch.float16),
                                torch.zeros(pseudo, size, size, dtype=torch.uint8), "0" * 64)
    monkeypatch.setattr(covseg.run, "_pseudo_slices", lambda *args: slices)

    def reached(failure, dist) -> None:  # noqa: ANN001
        raise _Reached

    monkeypatch.setattr(covseg.run, "raise_on_every_rank", reached)
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, f"data.input_size={size}", "data.split=cv:0",
                                                   f"data.pseudo_labels={folder}", *overrides])
    samples = load_dataset(str(tiny_data), config.data.task, split="train", window=config.data.window)
    covseg.run.train_run(config, samples, tmp_path / "run", data_path=str(tiny_data), progress=False,
                         log=lambda message: None, dist=DistContext(0, world))


def test_pseudo_labelled_slices_count_among_the_images_each_process_needs(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 labelled training images and 8 pseudo-labelled slices drawn each epoch give 16 processes one image each, as
    # train_one_epoch's own check of the epoch counts them; the check before the run folder counted the labelled
    # images alone and refused the run ("8 training images for the 16 processes")
    with pytest.raises(_Reached):
        _until_the_folder_step(monkeypatch, tiny_data, tmp_path, 16, 20, ["train.batch_size=16"])
    with pytest.raises(CovsegError, match=r"^12 training images for the 16 processes torchrun started"):
        _until_the_folder_step(monkeypatch, tiny_data, tmp_path / "half", 16, 20,  # 8 + 4 drawn
                               ["train.batch_size=16", "data.pseudo_ratio=0.5"])
    with pytest.raises(CovsegError, match=r"^11 training images for the 16 processes"):  # 8 + the 3 kept
        _until_the_folder_step(monkeypatch, tiny_data, tmp_path / "few", 16, 3, ["train.batch_size=16"])
