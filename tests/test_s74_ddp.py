"""Data-parallel training (torchrun) without starting processes: the pieces each process runs, with the collective
calls stood in for."""
from __future__ import annotations

import pytest
import torch

from covseg import runtime
from covseg.config import TrainConfig
from covseg.errors import CovsegError
from covseg.runtime import DistContext
from covseg import training
from covseg.training import train_one_epoch


class _GradRecorder(torch.optim.SGD):
    """An optimizer whose step keeps a copy of every gradient and changes no weight."""

    def __init__(self, params) -> None:  # noqa: ANN001
        super().__init__(params, lr=0.0)
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure=None) -> None:  # noqa: ANN001
        self.grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])


def _step_gradients(rank: int, world: int, images: torch.Tensor, masks: torch.Tensor,
                    cfg: TrainConfig) -> list[list[torch.Tensor]]:
    """The gradients rank ``rank`` of ``world`` computes at each step of one epoch (no process group: the model is
    not wrapped, so these are the gradients DistributedDataParallel would average)."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    optimizer = _GradRecorder(model.parameters())
    train_one_epoch(model, torch.nn.CrossEntropyLoss(), optimizer, images, masks, cfg, 0, torch.device("cpu"),
                    torch.float32, DistContext(rank, world))
    return optimizer.grads


def test_an_uneven_batch_split_averages_to_the_single_process_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    # batches of 3 on 2 processes split 2 + 1; DDP averages the two processes' gradients equally, which gave the
    # one image as much weight as the other two together; weighted by their shares, the average is the gradient of
    # the whole batch's mean, as one process computes it
    import torch.distributed as torch_dist

    monkeypatch.setattr(torch_dist, "all_reduce", lambda totals: totals, raising=False)
    g = torch.Generator().manual_seed(1)
    images, masks = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 2, (6, 8, 8), generator=g)
    cfg = TrainConfig(optimizer="sgd", lr=0.0, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1,
                      batch_size=3)
    single = _step_gradients(0, 1, images, masks, cfg)
    ranks = [_step_gradients(rank, 2, images, masks, cfg) for rank in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 2
    for step in range(2):
        for whole, first, second in zip(single[step], ranks[0][step], ranks[1][step]):
            torch.testing.assert_close((first + second) / 2, whole, rtol=1e-5, atol=1e-7)
    # the shares' own gradients differ, so the weighting matters: the unweighted average is not the whole's
    unweighted = [(a / (4 / 3) + b / (2 / 3)) / 2 for a, b in zip(ranks[0][0], ranks[1][0])]
    assert not torch.allclose(unweighted[0], single[0][0], rtol=1e-3, atol=1e-6)


def test_share_weights_are_the_shares_against_an_even_split() -> None:
    weight = training.share_weight
    assert weight(2, 3, 2) == pytest.approx(4 / 3) and weight(1, 3, 2) == pytest.approx(2 / 3)
    assert weight(2, 4, 2) == 1.0 and weight(3, 8, 3) == pytest.approx(9 / 8)
    assert 2 * weight(3, 8, 3) + weight(2, 8, 3) == pytest.approx(3.0)  # the weights average to 1


def test_more_processes_than_the_batch_or_the_images_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # every batch had fewer images than processes, so every one was skipped and the epoch's mean divided by zero
    # (ZeroDivisionError, one traceback per process)
    import torch.distributed as torch_dist

    monkeypatch.setattr(torch_dist, "all_reduce", lambda totals: totals, raising=False)
    model = torch.nn.Conv2d(1, 2, 1)
    cfg = TrainConfig(optimizer="sgd", lr=0.0, momentum=0.0, weight_decay=0.0, schedule="constant", epochs=1,
                      batch_size=2)
    images, masks = torch.rand(8, 1, 8, 8), torch.zeros(8, 8, 8, dtype=torch.int64)
    args = (torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0))
    with pytest.raises(CovsegError, match=r"^train\.batch_size 2 is smaller than the 4 processes torchrun started: .*"
                                          r"raise train\.batch_size to 4 or more .* or start at most 2 "):
        train_one_epoch(model, *args, images, masks, cfg, 0, torch.device("cpu"), torch.float32, DistContext(1, 4))
    cfg.batch_size = 4
    with pytest.raises(CovsegError, match=r"^3 training images for the 4 processes torchrun started: .*start at "
                                          r"most 3 \(torchrun --nproc-per-node\), or train on more images$"):
        train_one_epoch(model, *args, images[:3], masks[:3], cfg, 0, torch.device("cpu"), torch.float32,
                        DistContext(0, 4))
    training.check_data_parallel(4, 4, 4)  # one image each: trains
    training.check_data_parallel(1, 1, 1)  # one process: nothing to share
    with pytest.raises(CovsegError, match=r"^1 training image for"):
        training.check_data_parallel(4, 1, 2)


class _Broadcast:
    """``torch.distributed.broadcast_object_list`` as one process sees it: the main process's list arrives."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, sent: str | None) -> None:
        import torch.distributed as torch_dist

        self.sent, self.calls = sent, []
        monkeypatch.setattr(torch_dist, "broadcast_object_list", self, raising=False)

    def __call__(self, objects: list, src: int = 0) -> None:
        self.calls.append((list(objects), src))
        objects[0] = self.sent


def test_an_error_the_main_process_found_alone_is_raised_by_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # rank 0 alone writes a new run's folder; its refusal (a finished run there, no --force) used to end rank 0 only,
    # and rank 1, waiting at the barrier, died with gloo's "Connection closed by peer" traceback
    message = "runs/x: holds a finished run (2 epochs); pass --force to replace it, or choose another -o"
    found = CovsegError(message)
    broadcast = _Broadcast(monkeypatch, message)
    with pytest.raises(CovsegError) as raised:
        runtime.raise_on_every_rank(found, DistContext(0, 2))
    assert raised.value is found and broadcast.calls == [([message], 0)]  # rank 0 sends its text, raises its own
    with pytest.raises(CovsegError) as raised:
        runtime.raise_on_every_rank(None, DistContext(1, 2))
    assert str(raised.value) == message and broadcast.calls[1] == ([None], 0)  # rank 1 sends nothing, raises it
    broadcast.sent = None  # the step went well: nobody raises, every process took part
    runtime.raise_on_every_rank(None, DistContext(0, 2))
    runtime.raise_on_every_rank(None, DistContext(1, 2))
    assert len(broadcast.calls) == 4
    with pytest.raises(CovsegError) as raised:  # one process: no collective call, the error as it is
        runtime.raise_on_every_rank(found, DistContext())
    assert raised.value is found and len(broadcast.calls) == 4
    runtime.raise_on_every_rank(None, DistContext())


def test_a_peer_gone_is_told_from_other_runtime_errors() -> None:
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
            "[127.0.0.1]:28590. This is typically caused by a remote worker crashing.")
    assert runtime.peer_failed(RuntimeError(gloo))
    assert runtime.peer_failed(RuntimeError("[pair.cc:598] Connection reset by peer"))
    assert not runtime.peer_failed(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not runtime.peer_failed(ValueError(gloo))


def test_commands_other_than_train_are_refused_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    # each process ran the whole command: N copies of covseg cv trained and replaced the same folds at once
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CovsegError, match=r"^covseg cv runs as one process, and torchrun started 2 of it, .*run covseg "
                                          r"cv without torchrun; covseg cv --jobs N trains N folds at once$"):
        runtime.refuse_under_torchrun("cv")
    with pytest.raises(CovsegError, match=r"run covseg evaluate without torchrun$"):
        runtime.refuse_under_torchrun("evaluate")
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1: one process, as without torchrun
    runtime.refuse_under_torchrun("cv")
    monkeypatch.delenv("WORLD_SIZE")
    runtime.refuse_under_torchrun("evaluate")


def test_more_processes_than_gpus_on_a_machine_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # torchrun --nproc-per-node 4 on a machine with 2 GPUs: set_device(cuda:2) failed with "invalid device ordinal"
    import torch.distributed as torch_dist

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in dict(WORLD_SIZE="4", RANK="2", LOCAL_RANK="2", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch_dist, "is_available", lambda: True)
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: False)

    def no_such_gpu(device: torch.device) -> None:
        raise RuntimeError("CUDA error: invalid device ordinal")

    monkeypatch.setattr(torch.cuda, "set_device", no_such_gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(CovsegError, match=r"^torchrun started a process for GPU 2 \(LOCAL_RANK\) on this machine, but "
                                          r"2 GPUs are visible to PyTorch; start at most 2 processes per machine"):
        runtime.init_distributed(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)  # the GPU is there: another failure, as it is
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        runtime.init_distributed(torch.device("cuda"))


def test_a_train_run_under_torchrun_with_a_batch_below_its_processes_is_refused_before_writing(
        tiny_data, tmp_path) -> None:
    # run.py checks the batch against the processes before the run folder is made (train_one_epoch checks it again
    # each epoch); no process group is needed for a refusal made before the first collective call
    from covseg.config import apply_overrides, load_recipe
    from covseg.datasets import load_dataset
    from covseg.run import train_run
    from conftest import TINY_OVERRIDES

    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.batch_size=2", "data.split=cv:0"])
    samples = load_dataset(str(tiny_data), config.data.task, split="train", window=config.data.window)
    with pytest.raises(CovsegError, match=r"^train.batch_size 2 is smaller than the 4 processes torchrun started"):
        train_run(config, samples, tmp_path / "run", data_path=str(tiny_data), progress=False,
                  log=lambda message: None, dist=DistContext(0, 4))
    assert not (tmp_path / "run").exists()


def test_covseg_commands_other_than_train_are_refused_under_torchrun_and_a_gone_peer_is_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from covseg import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["cv", "--folds", "2", "-o", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("covseg: error: covseg cv runs as one process, and torchrun started 2 of it") \
        and err.count("\n") == 1 and "covseg cv --jobs N" in err
    # a collective call that finds another process gone: one line, not gloo's traceback
    def gone(args) -> int:  # noqa: ANN001
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    monkeypatch.setitem(cli.COMMANDS, "train", gone)
    assert cli.main(["train", "-o", "nowhere"]) == 2
    assert capsys.readouterr().err == ("covseg: error: another process of this torchrun job stopped, so this one "
                                       "could not go on; its own message says why\n")


@pytest.mark.parametrize("value", ["", "abc", "1"])
def test_a_world_size_torchrun_cannot_have_set_does_not_stop_other_commands(value: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # before: an exported WORLD_SIZE= refused every command ("start the run with torchrun") where none read it
    monkeypatch.setenv("WORLD_SIZE", value)
    runtime.refuse_under_torchrun("evaluate")
