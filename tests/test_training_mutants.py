"""The training loop, schedules, optimisers, weight averages and run-folder bookkeeping pinned by hand: tests added by
mutation testing (each kills a source mutant of covseg/training.py or covseg/run.py the other tests let through)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from covseg.config import AugmentConfig, TrainConfig
from covseg.training import (batch_confusion, epoch_average, epoch_generator, learning_rate, lr_factor,
                             make_optimizer, mean_foreground_dice, predicted_labels, side_generator,
                             train_one_epoch, validate)

from conftest import TINY_OVERRIDES

CPU = torch.device("cpu")


class _ConstantLogits(nn.Module):
    """Logits ``values`` at every pixel whatever the input, through one trainable (but here unmoved) bias."""

    def __init__(self, *values: float) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(values))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.view(1, -1, 1, 1).expand(x.shape[0], -1, *x.shape[-2:]) + 0 * x.sum()


def _uniform_masks(*labels: int, side: int = 4) -> torch.Tensor:
    """(N, side, side) label maps, map i holding labels[i] at every pixel."""
    return torch.tensor(labels).view(-1, 1, 1).expand(-1, side, side).clone()


def _ce(logits: tuple[float, ...], label: int) -> float:
    return float(torch.logsumexp(torch.tensor(logits), 0) - logits[label])


# --- schedules ---------------------------------------------------------------------------------------------------

def test_lr_factor_holds_its_last_value_past_the_end_and_by_hand_in_between() -> None:
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 150, 100) == pytest.approx(0.0, abs=1e-12)  # not back up the cosine
    assert lr_factor("onecycle", 15, 100) == pytest.approx(0.04 + 0.96 * 0.5)  # half way up the warm-up
    assert lr_factor("onecycle", 65, 100) == pytest.approx(0.5)  # half way down the cosine after it


def test_plain_learning_rate_spans_every_epoch_of_the_run() -> None:
    cfg = TrainConfig(lr=0.01, epochs=10, schedule="cosine")
    assert learning_rate(cfg, 27, 3) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 27 / 30)))


def test_swa_with_a_constant_schedule_switches_to_swa_lr_at_the_first_averaged_step() -> None:
    cfg = TrainConfig(lr=0.01, epochs=4, swa_epochs=2, swa_lr=0.002, schedule="constant")
    assert learning_rate(cfg, 5, 3) == 0.01  # the last step before the averaged epochs
    assert learning_rate(cfg, 6, 3) == 0.002  # the first step of them


def test_every_step_of_an_epoch_gets_its_own_learning_rate() -> None:
    cfg = TrainConfig(lr=0.01, epochs=2, schedule="cosine", batch_size=2, augment=AugmentConfig(), loss="ce")
    model = _ConstantLogits(0.0, 1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    images, masks = torch.rand(4, 1, 4, 4), _uniform_masks(0, 1, 0, 1)
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, images, masks, cfg, 1, CPU, torch.float32)
    # epoch 1 of 2 steps each: its last step is step 3 of 4
    assert optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(cfg, 3, 2))
    assert optimizer.param_groups[0]["lr"] != pytest.approx(learning_rate(cfg, 2, 2))


# --- optimisers --------------------------------------------------------------------------------------------------

def _one_step(optimizer_name: str, grad: float) -> float:
    weight = nn.Parameter(torch.tensor([1.0]))
    cfg = TrainConfig(optimizer=optimizer_name, lr=0.1, weight_decay=0.1)
    optimizer = make_optimizer(nn.ParameterList([weight]), cfg)
    weight.grad = torch.tensor([grad])
    optimizer.step()
    return float(weight.detach()[0])


def test_adam_couples_the_weight_decay_into_the_gradient_and_adamw_decouples_it() -> None:
    # Adam: the decay joins the gradient (0 + 0.1 * 1), and the first step moves by lr along its sign
    assert _one_step("adam", 0.0) == pytest.approx(1.0 - 0.1, abs=1e-6)
    # AdamW: the weight shrinks by lr * decay, then the first step moves by lr along the gradient's sign
    assert _one_step("adamw", 1.0) == pytest.approx(1.0 * (1 - 0.1 * 0.1) - 0.1, abs=1e-6)
    assert _one_step("adamw", 0.0) == pytest.approx(1.0 * (1 - 0.1 * 0.1), abs=1e-6)


# --- random streams ----------------------------------------------------------------------------------------------

def test_epoch_streams_of_different_seeds_and_epochs_do_not_collide() -> None:
    def draws(g: torch.Generator) -> list[int]:
        return torch.randint(0, 1 << 30, (4,), generator=g).tolist()

    # seed 0 epoch 1 and seed 1 epoch 0 are different runs' epochs: they draw differently
    assert draws(epoch_generator(0, 1)) != draws(epoch_generator(1, 0))
    assert draws(epoch_generator(3, 2)) == draws(epoch_generator(3, 2))
    # each tag has its own stream
    assert draws(side_generator(0, 1, 1)) != draws(side_generator(0, 1, 2))
    assert draws(side_generator(0, 1, 1)) == draws(side_generator(0, 1, 1))


# --- what an epoch and a validation pass report ------------------------------------------------------------------

def test_train_loss_and_accuracy_weigh_a_short_last_batch_by_its_images() -> None:
    # 5 images in batches of 4 and 1; the rate is 0, so the constant logits (0, 1) stay and every pixel predicts 1
    cfg = TrainConfig(lr=0.0, epochs=1, schedule="constant", batch_size=4, augment=AugmentConfig(), loss="ce",
                      optimizer="sgd", momentum=0.0, weight_decay=0.0)
    model = _ConstantLogits(0.0, 1.0)
    labels = (1, 0, 0, 1, 0)
    images, masks = torch.rand(5, 1, 4, 4), _uniform_masks(*labels)
    fit = train_one_epoch(model, nn.CrossEntropyLoss(), make_optimizer(model, cfg), images, masks, cfg, 0, CPU,
                          torch.float32)
    assert fit.loss == pytest.approx(sum(_ce((0.0, 1.0), c) for c in labels) / 5)
    assert fit.accuracy == pytest.approx(2 / 5)


def test_train_accuracy_of_a_type_model_counts_the_typed_lesions() -> None:
    # the background logit wins everywhere, lesion type 1 beats type 2: a type model types every lesion pixel right
    cfg = TrainConfig(lr=0.0, epochs=1, schedule="constant", batch_size=2, augment=AugmentConfig(), loss="ce",
                      optimizer="sgd", momentum=0.0, weight_decay=0.0, types_only=True)
    model = _ConstantLogits(5.0, 1.0, 0.0)
    masks = torch.zeros(2, 4, 4, dtype=torch.long)
    masks[:, :2] = 1  # half of every map is a type-1 lesion
    fit = train_one_epoch(model, nn.CrossEntropyLoss(), make_optimizer(model, cfg), torch.rand(2, 1, 4, 4), masks,
                          cfg, 0, CPU, torch.float32)
    assert fit.accuracy == 1.0


def test_predicted_labels_of_a_type_model_by_hand() -> None:
    logits = torch.tensor([[9.0, 9.0, 9.0], [1.0, 3.0, 0.0], [0.0, 2.0, 5.0]]).view(1, 3, 1, 3)
    target = torch.tensor([[[0, 1, 2]]])
    assert predicted_labels(logits, target).tolist() == [[[0, 0, 0]]]
    # background truth stays 0; lesion pixels take the best lesion class (1 or 2), never the background
    assert predicted_labels(logits, target, types_only=True).tolist() == [[[0, 1, 2]]]
    assert predicted_labels(logits, torch.tensor([[[1, 0, 1]]]), types_only=True).tolist() == [[[1, 0, 2]]]


def test_mean_foreground_dice_skips_the_background_and_classes_no_truth_holds() -> None:
    # image 0: truth class 1 on 2 pixels, predicted on 1 of them and 1 more (Dice 2*1/(2+2) = 0.5); no class 2
    target = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 1, 0]], [[0, 0, 0, 2]]])
    cms = batch_confusion(pred, target, 3)
    assert len(cms) == 2 and cms[0].shape == (3, 3)
    # class 1: image 0 only (0.5); class 2: no truth holds it, skipped (not nan, not 0); background not counted
    assert mean_foreground_dice(cms) == pytest.approx(0.5)


def test_validation_loss_weighs_a_short_last_batch_by_its_images_and_runs_in_eval_mode() -> None:
    model = nn.Sequential(_ConstantLogits(0.0, 1.0), nn.Dropout(0.9))
    model.train()
    labels = (1, 0, 0, 1, 0)
    images, masks = torch.rand(5, 1, 4, 4), _uniform_masks(*labels)
    res = validate(model, nn.CrossEntropyLoss(), images, masks, 2, 4, CPU, torch.float32)
    assert res.loss == pytest.approx(sum(_ce((0.0, 1.0), c) for c in labels) / 5)  # dropout off: exact logits
    assert res.accuracy == pytest.approx(2 / 5) and not model.training
    assert res.dice == pytest.approx(1.0)  # the two all-lesion maps are predicted whole


# --- weight averages ---------------------------------------------------------------------------------------------

def test_epoch_average_leaves_the_batch_norm_statistics_alone() -> None:
    model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))
    average = epoch_average(model)
    for mean in (4.0, -8.0):
        with torch.no_grad():
            model[1].running_mean.fill_(mean)
        average.update_parameters(model)
    # the statistics follow the model's own (the last ones), not an average of them ((4 - 8) / 2)
    assert average.module[1].running_mean.tolist() == [-8.0]


# --- the run folder ----------------------------------------------------------------------------------------------

def _train(data: Path, out: Path, *extra: str) -> int:
    from covseg.cli import main

    return main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(out),
                 "--quiet", *TINY_OVERRIDES, *extra])


def _scripted_validation(monkeypatch: pytest.MonkeyPatch, *dice: float) -> None:
    import covseg.run
    from covseg.training import EpochResult

    scores = iter(dice)
    monkeypatch.setattr(covseg.run, "validate", lambda *args, **kwargs: EpochResult(1.0, 0.9, next(scores)))


def _interrupt_at_epoch(monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    import covseg.run

    real = covseg.run.train_one_epoch

    def interrupting(*args, **kwargs):
        if args[6] == stop:  # 0-based epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "train_one_epoch", interrupting)


def test_a_later_epoch_that_only_ties_the_best_dice_leaves_best_pt_alone(tiny_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.checkpoint import read_checkpoint

    _scripted_validation(monkeypatch, 0.5, 0.5, 0.3)
    assert _train(tiny_data, tmp_path / "run", "train.epochs=3") == 0
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert (best["epoch"], best["score"]) == (1, 0.5)


def test_a_resumed_run_keeps_the_best_dice_of_the_epochs_before_it(tiny_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run
    from covseg.checkpoint import read_checkpoint
    from covseg.cli import main

    real = covseg.run.train_one_epoch
    _scripted_validation(monkeypatch, 0.5)
    _interrupt_at_epoch(monkeypatch, 1)
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=2") == 130
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    _scripted_validation(monkeypatch, 0.2)  # the resumed epoch scores worse than the saved best
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    best, last = read_checkpoint(run / "best.pt"), read_checkpoint(run / "last.pt")
    assert (best["epoch"], best["score"]) == (1, 0.5)
    assert (last["epoch"], last["score"], last["best"]) == (2, 0.2, 0.5)


def test_a_run_without_validation_interrupted_part_way_writes_no_best_pt(tiny_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.cli import main

    _interrupt_at_epoch(monkeypatch, 1)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "official", "--epochs", "3",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES, "data.folds=5", "data.val_fraction=0"]) == 130
    assert (run / "last.pt").is_file() and not (run / "best.pt").exists()  # the last epoch's weights are not the run's


def test_a_stopped_run_is_interrupted_only_with_epochs_left() -> None:
    from covseg.run import RunResult

    assert RunResult(Path("r"), 2, 3, None, stopped=True).interrupted
    assert not RunResult(Path("r"), 3, 3, None, stopped=True).interrupted
    assert not RunResult(Path("r"), 2, 3, None, stopped=False).interrupted


def test_a_run_resumed_after_two_averaged_epochs_ends_with_the_uninterrupted_swa(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.run
    from covseg.checkpoint import read_checkpoint
    from covseg.cli import main

    swa = ("train.epochs=4", "train.swa_epochs=3", "train.swa_lr=0.005")
    assert _train(tiny_data, tmp_path / "full", *swa) == 0
    real = covseg.run.train_one_epoch
    _interrupt_at_epoch(monkeypatch, 3)
    cut = tmp_path / "cut"
    assert _train(tiny_data, cut, *swa) == 130
    assert read_checkpoint(cut / "last.pt")["swa_n"] == 2  # epochs 2 and 3 averaged before the stop
    monkeypatch.setattr(covseg.run, "train_one_epoch", real)
    assert main(["train", "--resume", str(cut), "--quiet"]) == 0
    resumed, full = read_checkpoint(cut / "swa.pt")["model"], read_checkpoint(tmp_path / "full" / "swa.pt")["model"]
    for key, value in full.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6)


def test_resume_tells_training_masks_apart_by_a_few_pixels(tiny_data: Path, tmp_path: Path) -> None:
    import dataclasses
    import json

    from covseg.datasets import load_dataset
    from covseg.run import read_run_config, trained_on

    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=1") == 0
    samples = load_dataset(tiny_data, "binary", split="train", window=read_run_config(run).data.window)
    assert trained_on(run, samples)
    first = json.loads((run / "split.json").read_text())["train"][0]
    changed = []
    for s in samples:
        if s.name == first:  # 4 background pixels of one training mask become lesion: the weights move by ~1e-3
            mask = s.mask.copy()
            mask[:2, :2] = 1
            s = dataclasses.replace(s, mask=mask)
        changed.append(s)
    assert not trained_on(run, changed)
