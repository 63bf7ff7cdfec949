"""train.consistency_norm=own: each batch normalised by its own statistics (the mean teacher of Tarvainen & Valpola
2017), the running statistics left to the labelled slices; and the option's refusals."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from covseg.cli import main
from covseg.config import TrainConfig
from covseg.consistency import ConsistencyTerm
from covseg.training import batch_statistics, make_optimizer, train_one_epoch, weight_average

from conftest import TINY_OVERRIDES, add_unlabelled, write_semiseg


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _with_stats(net: nn.Module) -> nn.Module:
    with torch.no_grad():  # running statistics far from any batch's, so using them or not shows
        net[1].running_mean.copy_(torch.tensor([0.5, -0.3, 0.2, 0.1]))
        net[1].running_var.copy_(torch.tensor([4.0, 0.25, 2.0, 9.0]))
        net[1].num_batches_tracked.fill_(7)
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batch_statistics_normalise_by_the_batch_and_leave_the_running_ones(dtype: torch.dtype) -> None:
    net = _with_stats(_net()).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(3, 1, 8, 8)
    with batch_statistics(net), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        out = net(x)
        out.float().sum().backward()  # a backward pass through the block works
    # the output is the training-mode one (batch statistics), computed on a copy
    reference = copy.deepcopy(net)
    for key, value in before.items():
        reference.state_dict()[key].copy_(value)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        expected = reference.train()(x)
    torch.testing.assert_close(out.float(), expected.float())
    assert not torch.allclose(out.float(), net(x).float(), atol=1e-2)  # eval mode would normalise otherwise
    for key, value in net.state_dict().items():  # the running statistics and batch count, bit for bit
        assert torch.equal(value, before[key]), key
    assert not net.training and not net[1].training and net[1].momentum == 0.1  # mode and momentum restored


def test_the_own_teacher_normalises_the_drawn_slices_by_their_own_statistics() -> None:
    student = _with_stats(_net())
    images = torch.rand(6, 1, 8, 8)
    targets = {}
    for norm in ("shared", "own"):
        term = ConsistencyTerm(images, weight_average(student, 0.9), batch=4, weight=1.0, norm=norm)
        term.update(student)
        mixed, targets[norm] = term.batch_for(student, torch.Generator().manual_seed(4), None, torch.device("cpu"))
        assert not term.teacher.module.training
    pick = torch.randperm(6, generator=torch.Generator().manual_seed(4))[:4]
    with torch.no_grad():  # the teacher's weights are the student's after one update
        own = torch.softmax(copy.deepcopy(student).train()(images[pick]), dim=1)
        shared = torch.softmax(copy.deepcopy(student).eval()(images[pick]), dim=1)
    # a pixel outside every box keeps its own slice's probabilities: compare where the mix left the slice alone
    alone = (mixed == images[pick]).all(dim=1, keepdim=True).expand_as(own)
    assert alone.any()
    torch.testing.assert_close(targets["own"][alone], own[alone])
    torch.testing.assert_close(targets["shared"][alone], shared[alone])
    assert student[1].num_batches_tracked.item() == 7


@pytest.mark.parametrize("norm, same", [("own", True), ("shared", False)])
def test_under_own_the_running_statistics_are_the_labelled_slices_alone(norm: str, same: bool) -> None:
    """One step (the consistency weight is 0 at step 0, so the weights move as without the term): under ``own`` the
    running statistics are exactly those of a run without the term; under ``shared`` the mixed slices moved them."""
    images, masks = torch.rand(4, 1, 16, 16), (torch.rand(4, 16, 16) > 0.5).long()
    unlabelled = torch.rand(6, 1, 16, 16) * 3.0  # other grey levels than the labelled slices'
    cfg = TrainConfig(optimizer="adam", lr=1e-3, schedule="constant", epochs=1, batch_size=4, consistency=1.0)
    runs = {}
    for name in ("off", "on"):
        net = _net()
        term = (ConsistencyTerm(unlabelled, weight_average(net, 0.99), batch=2, weight=1.0, norm=norm)
                if name == "on" else None)
        train_one_epoch(net, nn.CrossEntropyLoss(), make_optimizer(net, cfg), images, masks, cfg, 0,
                        torch.device("cpu"), torch.float32, consistency=term)
        runs[name] = net
    stats = [(runs["off"][1].running_mean, runs["on"][1].running_mean),
             (runs["off"][1].running_var, runs["on"][1].running_var)]
    assert all(torch.equal(a, b) for a, b in stats) is same
    if norm == "own":  # and the labelled forward pass is the one without the term (its weight is 0 at step 0)
        torch.testing.assert_close(runs["on"][0].weight, runs["off"][0].weight)


@pytest.fixture(scope="module")
def semi_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return add_unlabelled(write_semiseg(tmp_path_factory.mktemp("norm"), n=9, seed=3), n=6, seed=5)


@pytest.mark.parametrize("extra, message", [
    (("train.consistency=1", "train.consistency_norm=batch"), "train.consistency_norm"),
    (("train.consistency_norm=own",), "train.consistency"),  # an option the run would never read
])
def test_bad_consistency_norms_are_refused(semi_data: Path, tmp_path: Path, capsys, extra: tuple[str, ...],
                                           message: str) -> None:
    code = main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:0", "-o", str(tmp_path / "r"),
                 "--quiet", "--epochs", "1", *TINY_OVERRIDES, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_the_run_says_its_batches_keep_their_own_statistics(semi_data: Path, tmp_path: Path, capsys) -> None:
    code = main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:0", "-o", str(tmp_path / "r"),
                 "--epochs", "1", *TINY_OVERRIDES, "train.consistency=1", "train.consistency_batch=2",
                 "train.consistency_norm=own"])
    out = capsys.readouterr()
    assert code == 0 and "weight 1, each batch normalised by its own statistics" in out.out + out.err


class _DeepSupervised(nn.Module):
    """A network with deep supervision's outputs in training mode (the full-size logits first, then a half-size
    head), the full-size logits alone in eval mode, as covseg's U-Net."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.net(x)
        return [out, nn.functional.avg_pool2d(out, 2)] if self.training else out


def test_own_takes_the_full_size_logits_of_a_deep_supervised_network() -> None:
    images, masks = torch.rand(4, 1, 16, 16), (torch.rand(4, 16, 16) > 0.5).long()
    cfg = TrainConfig(optimizer="adam", lr=1e-3, schedule="constant", epochs=1, batch_size=2, consistency=1.0)
    net = _DeepSupervised()
    term = ConsistencyTerm(torch.rand(6, 1, 16, 16), weight_average(net, 0.99), batch=2, weight=1.0, norm="own")
    seen = []
    real = term.loss
    term.loss = lambda logits, target, step, total: seen.append(logits.shape) or real(logits, target, step, total)

    def loss_fn(outputs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs[0], y)

    train_one_epoch(net, loss_fn, make_optimizer(net, cfg), images, masks, cfg, 0, torch.device("cpu"), torch.float32,
                    consistency=term)
    assert seen == [torch.Size([2, 2, 16, 16])] * 2  # the mixed slices' full-size logits, one per step
