"""The CLI: the exit status on every torchrun rank of a stopped run, a refusal of an output path through a file, and
the defaults its help states."""
from __future__ import annotations

from pathlib import Path

import pytest

from covseg.cli import main

from conftest import TINY_OVERRIDES


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("terminated, status", [(False, 130), (True, 143)])
def test_every_rank_of_a_stopped_run_exits_with_the_stops_status(
        rank: int, terminated: bool, status: int, tiny_data: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # before: ranks other than 0 returned 0 for a run stopped by Ctrl-C or SIGTERM (the rank check came first), so
    # torchrun and a batch scheduler saw those processes end as if the run had finished
    import covseg.run
    import covseg.runtime
    from covseg.run import RunResult
    from covseg.runtime import DistContext

    closed: list[bool] = []
    monkeypatch.setattr(covseg.runtime, "init_distributed", lambda device: (DistContext(rank, 2), device))
    monkeypatch.setattr(covseg.runtime, "close_distributed", lambda wait_for_peers=False: closed.append(wait_for_peers))
    run = tmp_path / "run"
    monkeypatch.setattr(covseg.run, "train_run", lambda *args, **kwargs: RunResult(
        run, 1, 3, 0.5, stopped=True, terminated=terminated))
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(run),
                 "--quiet", *TINY_OVERRIDES]) == status
    assert closed == [False]  # a stopped run skips the barrier
    assert capsys.readouterr().out == ""  # no summary line, on any rank


def test_an_output_path_through_a_file_names_that_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # before: "FILE/run/sub: Not a directory; check the path and permissions" (only err.filename itself was looked at)
    from covseg.cli import _file_system_refusal

    blocker = tmp_path / "afile"
    blocker.write_text("mine\n")
    told = f"covseg: error: {blocker} is a file, not a folder; give an output path outside it\n"
    for path in (blocker, blocker / "run", blocker / "run" / "sub"):
        assert _file_system_refusal(NotADirectoryError(20, "Not a directory", str(path))) == 2
        assert capsys.readouterr().err == told
    # mkdir's "File exists" names the path itself: a folder above it that is a file is not what is in the way
    assert _file_system_refusal(FileExistsError(17, "File exists", str(tmp_path / "dir"))) == 2
    assert capsys.readouterr().err == (f"covseg: error: {tmp_path / 'dir'}: File exists; check the path and "
                                       "permissions\n")
    # no file on the way (gone by now): the system's own words
    assert _file_system_refusal(NotADirectoryError(20, "Not a directory", str(tmp_path / "gone" / "run"))) == 2
    assert capsys.readouterr().err == (f"covseg: error: {tmp_path / 'gone' / 'run'}: Not a directory; check the path "
                                       "and permissions\n")
    assert blocker.read_text() == "mine\n"


def test_train_into_a_folder_under_a_file_names_the_file(tiny_data: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # every other command with -o (evaluate, predict, cv, compare, pretrain, pseudo-label, bench --out) refuses such a
    # path up front (fileio.unwritable_reason) and export names the file already; train met it at mkdir
    blocker = tmp_path / "afile"
    blocker.write_text("mine\n")
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(blocker / "run"), "--quiet", *TINY_OVERRIDES]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"covseg: error: {blocker} is a file, not a folder; give an "
                                                        "output path outside it")
    assert blocker.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_every_option_with_a_number_as_its_default_says_it_in_its_help() -> None:
    # before: pseudo-label's --min-confidence, --min-fraction and --max-fraction did not say theirs (0.9, 0.005, 0.5)
    import argparse

    from covseg.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    unsaid = [f"{name} {action.option_strings[-1]} {action.default:g}"
              for name, command in commands.items() for action in command._actions
              if isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
              and f"default {action.default:g}" not in (action.help or "")]
    assert unsaid == []


def test_a_rank_that_does_not_find_the_run_folder_rank_0_wrote_says_it_must_be_shared(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "RUN/split.json: cannot read the split ([Errno 2] No such file or directory: ...); is this a covseg run
    # folder?" on a node whose disk does not hold the folder rank 0 wrote (a multi-node job, -o on a local disk)
    import covseg.run
    from covseg.config import apply_overrides, load_recipe
    from covseg.datasets import load_dataset
    from covseg.errors import CovsegError
    from covseg.runtime import DistContext

    monkeypatch.setattr(covseg.run, "raise_on_every_rank", lambda failure, dist: None)  # rank 0 wrote it elsewhere
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0"])
    samples = load_dataset(str(tiny_data), config.data.task, split="train", window=config.data.window)
    run = tmp_path / "run"
    with pytest.raises(CovsegError, match=r"rank 1 of this torchrun job does not find the split.json rank 0 wrote "
                                          r"there; on several nodes give -o a folder on a file system every node "
                                          r"shares"):
        covseg.run.train_run(config, samples, run, data_path=str(tiny_data), progress=False, log=lambda m: None,
                             dist=DistContext(1, 2))
    assert not run.exists()
