"""Tests found missing by mutation testing of covseg.pretrain: the corruptions' box and window bounds, the options'
edges, malformed or unfinished pretrained files, --force's refusals, and the pretraining loop's history."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import covseg.pretrain as pretrain_module
from covseg.checkpoint import build_model
from covseg.config import apply_overrides, load_recipe
from covseg.errors import CovsegError
from covseg.pretrain import (PRETRAINED_FILE, PretrainOptions, _inpaint, _outpaint, _shuffle_locally, check_options,
                             check_output_folder, check_pretrained, init_from_pretrained, pretrain, pretrained_path,
                             read_pretrained, restoration_network)

PRETRAIN_OVERRIDES = ["data.input_size=32", "model.width=4", "model.depth=2", "train.precision=fp32"]


def _config(*extra: str):
    return apply_overrides(load_recipe("tiny"), [*PRETRAIN_OVERRIDES, *extra])


class ScriptedRng:
    """A stand-in for numpy's Generator: ``integers`` gives its low end and records its bounds, ``random()`` gives
    the scripted numbers in turn, ``random(shape)`` a constant 0.25 array, ``permutation`` the reverse."""

    def __init__(self, randoms: list[float]) -> None:
        self.randoms = list(randoms)
        self.calls: list[tuple[int, int]] = []

    def random(self, size: object = None, dtype: object = np.float64) -> object:
        if size is None:
            return self.randoms.pop(0)
        return np.full(size, 0.25, dtype)

    def integers(self, low: int, high: int) -> int:
        self.calls.append((int(low), int(high)))
        return low

    def permutation(self, x: np.ndarray) -> np.ndarray:
        return x[::-1].copy()


def test_inpainting_draws_up_to_five_boxes_a_sixth_to_a_third_of_each_side_inside_a_3_pixel_margin() -> None:
    image = np.full((48, 42), 0.5, np.float32)
    rng = ScriptedRng([0.0] * 5)  # never the 5 % chance of stopping early
    out = _inpaint(image, rng)
    # bh from 48 // 6 = 8 to 48 // 3 = 16 (high exclusive: 17), bw 7 to 14; top from 3 to 48 - 8 - 2 = 38 (exclusive)
    assert rng.calls == [(8, 17), (7, 15), (3, 38), (3, 33)] * 5
    expected = image.copy()
    expected[3:11, 3:10] = 0.25  # every box at its lowest: rows 3..10, columns 3..9
    assert np.array_equal(out, expected) and np.array_equal(image, np.full((48, 42), 0.5, np.float32))
    stopped = ScriptedRng([0.0, 0.95])  # a draw >= 0.95 after the second box stops there
    _inpaint(image, stopped)
    assert len(stopped.calls) == 8 and stopped.randoms == []


def test_outpainting_keeps_up_to_five_boxes_of_three_to_four_sevenths_of_each_side() -> None:
    image = np.arange(49 * 42, dtype=np.float32).reshape(49, 42) / (49 * 42)
    rng = ScriptedRng([0.0] * 5)
    out = _outpaint(image, rng)
    # bh = 49 - integers(21, 29) = 28 at its low end, bw = 42 - integers(18, 25) = 24; top 3 .. 49 - 28 - 2 = 19
    assert rng.calls == [(21, 29), (18, 25), (3, 19), (3, 16)] * 5
    expected = np.full((49, 42), 0.25, np.float32)
    expected[3:31, 3:27] = image[3:31, 3:27]
    assert np.array_equal(out, expected)
    stopped = ScriptedRng([0.99])  # stops after the first box
    _outpaint(image, stopped)
    assert len(stopped.calls) == 4


def test_local_shuffling_uses_windows_up_to_a_tenth_of_each_side_anywhere_in_the_slice() -> None:
    image = np.arange(48 * 42, dtype=np.float32).reshape(48, 42)
    rng = ScriptedRng([])
    _shuffle_locally(image, rng, blocks=2)
    assert len(rng.calls) == 8 and rng.calls[:4] == rng.calls[4:]
    (bh_low, bh_high), (bw_low, bw_high), top, left = rng.calls[:4]
    # window sides from 1 to at most a tenth of each side (numpy's high end is exclusive: at most 48 // 10 + 1)
    assert bh_low == bw_low == 1 and 2 <= bh_high <= 48 // 10 + 1 and 2 <= bw_high <= 42 // 10 + 1
    assert top == (0, 48) and left == (0, 42)  # a 1 x 1 window (the scripted low end) may sit on the last row
    # with a real generator the last row and column are shuffled too (the windows reach the slice's edge)
    out = _shuffle_locally(image, np.random.default_rng(0))
    assert not np.array_equal(out[-1], image[-1]) and not np.array_equal(out[:, -1], image[:, -1])
    for seed in range(5):  # one window moves pixels inside a box of at most 4 x 4 (a tenth of 48 and 42)
        one = _shuffle_locally(image, np.random.default_rng(seed), blocks=1)
        rows, cols = np.nonzero(one != image)
        if rows.size:
            assert rows.max() - rows.min() <= 3 and cols.max() - cols.min() <= 3


def test_check_options_edges() -> None:
    config = _config()
    positive = "the pretraining learning rate must be a positive number"
    check_options(PretrainOptions(weight_decay=0.0, crop=32, seed=2 ** 32 - 1, lr=1.0), config)  # all allowed
    check_options(PretrainOptions(crop=0), _config("data.input_size=16"))  # 16 is the smallest input size
    for options, message in ((PretrainOptions(crop=0, steps=0), "at least one step"),
                             (PretrainOptions(crop=0, batch_size=0), "a batch of at least one slice"),
                             (PretrainOptions(crop=0, lr=0.0), positive),
                             (PretrainOptions(crop=0, lr=math.nan), positive),
                             (PretrainOptions(crop=0, weight_decay=-1e-4), "weight decay"),
                             (PretrainOptions(crop=0, seed=2 ** 32), f"got {2 ** 32}"),
                             (PretrainOptions(crop=0, seed=-1), "got -1")):
        with pytest.raises(CovsegError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_options(options, config)
    with pytest.raises(CovsegError, match="data.input_size 12 is too small to pretrain on; use at least 16"):
        check_options(PretrainOptions(crop=0), _config("data.input_size=12"))


def _payload(config, **changes: object) -> dict:
    """A well-formed finished covseg-pretrained-1 payload for ``config``'s network (no training needed)."""
    network = restoration_network(config.model)
    return {"format": "covseg-pretrained-1", "model_config": asdict(config.model), "normalize": config.data.normalize,
            "options": asdict(PretrainOptions(steps=60)), "steps": 60, "model": network.state_dict(), **changes}


def test_another_format_and_the_advice_s_folder_are_refused(tmp_path: Path) -> None:
    # (negative and boolean steps, weights under names that are no text: tests/test_pretrain.py's malformed cases)
    good = _payload(_config())
    other = tmp_path / "other.pt"
    torch.save({**good, "format": "something-else"}, other)
    with pytest.raises(CovsegError) as caught:
        read_pretrained(other)
    assert str(caught.value).startswith(f"train.init: {other}: not a covseg pretrained checkpoint (format "
                                        "covseg-pretrained-1 expected)")
    # the advice names the folder to pretrain into: the folder given, or the one holding the .pt file given
    with pytest.raises(CovsegError, match=rf"make them with `covseg pretrain -o {tmp_path / 'nowhere'}`"):
        read_pretrained(tmp_path / "nowhere")
    with pytest.raises(CovsegError, match=rf"make them with `covseg pretrain -o {tmp_path}` "):
        read_pretrained(tmp_path / "missing.pt")


def test_check_pretrained_edges_and_init_refusing_weights_that_fit_nothing(tmp_path: Path) -> None:
    config = _config()
    unfinished = tmp_path / "unfinished.pt"
    torch.save(_payload(config, steps=59), unfinished)  # one step short is unfinished too
    with pytest.raises(CovsegError, match="stopped at step 59 of 60"):
        check_pretrained(unfinished, config)
    good = tmp_path / "good.pt"
    torch.save(_payload(config), good)
    check_pretrained(good, _config("model.decoder_dropout=0.3"))  # decoder dropout has no weights: it may differ
    # a folder holding both pretrained.pt and a last.pt: pretrained.pt is the one read
    both = tmp_path / "both"
    both.mkdir()
    (both / PRETRAINED_FILE).write_bytes(good.read_bytes())
    (both / "last.pt").write_bytes(b"not read")
    assert pretrained_path(both) == both / PRETRAINED_FILE and read_pretrained(both)[0] == both / PRETRAINED_FILE
    fits_nothing = tmp_path / "nothing-fits.pt"
    torch.save(_payload(config, model={"elsewhere.weight": torch.zeros(2)}), fits_nothing)
    with pytest.raises(CovsegError, match="none of its weights fit this unet; pretrain it again"):
        init_from_pretrained(build_model(config), fits_nothing, config)


def test_force_refuses_a_link_under_a_pretraining_name_and_a_folder_without_weights(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("step,loss\n")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / PRETRAINED_FILE).write_bytes(b"weights")
    (linked / "history.csv").symlink_to(elsewhere)
    with pytest.raises(CovsegError, match=r"is not a pretraining folder \(it holds history.csv\)"):
        check_output_folder(linked, True)
    history_only = tmp_path / "history-only"
    history_only.mkdir()
    (history_only / "history.csv").write_text("step,loss\n")
    with pytest.raises(CovsegError, match=rf"is not a pretraining folder \(it has no {PRETRAINED_FILE}\)"):
        check_output_folder(history_only, True)
    (history_only / PRETRAINED_FILE).write_bytes(b"weights")
    check_output_folder(history_only, True)  # a finished pretraining's own files: --force may replace them


def _images() -> list[np.ndarray]:
    left_dark = np.zeros((32, 32), np.float32)
    left_dark[:, 16:] = 1.0  # dark on the left, bright on the right: a flip shows
    return [left_dark, np.full((32, 32), 0.5, np.float32)]


def test_the_history_averages_the_losses_of_each_ten_steps_and_the_last_and_follows_the_cosine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    losses: list[float] = []
    inputs: list[torch.Tensor] = []
    cleans: list[torch.Tensor] = []

    def mse_loss(restored: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        inputs.append(restored.detach().clone())
        loss = F.mse_loss(restored, clean)
        losses.append(loss.item())
        return loss

    real = pretrain_module.corrupt_batch

    def corrupt_batch(clean: torch.Tensor, rng: np.random.Generator, options: PretrainOptions) -> torch.Tensor:
        cleans.append(clean.clone())
        return real(clean, rng, options)

    monkeypatch.setattr(pretrain_module, "F", SimpleNamespace(mse_loss=mse_loss))
    monkeypatch.setattr(pretrain_module, "corrupt_batch", corrupt_batch)
    out = tmp_path / "pre"
    summary = pretrain(_config(), _images(), out, PretrainOptions(steps=12, batch_size=2, crop=0, lr=0.01),
                       progress=False, log=lambda message: None)
    assert len(losses) == 12
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 12]
    first, last = sum(losses[:10]) / 10, sum(losses[10:]) / 2
    assert float(rows[0]["loss"]) == pytest.approx(first, rel=1e-5)
    assert float(rows[1]["loss"]) == pytest.approx(last, rel=1e-5)
    # the lr of steps 10 and 12 (indices 9 and 11 of 12): 0.01 * (1 + cos(pi * 9/12)) / 2 and
    # 0.01 * (1 + cos(pi * 11/12)) / 2
    assert float(rows[0]["lr"]) == pytest.approx(0.01 * (1 - math.sqrt(0.5)) / 2, rel=1e-5)  # 0.00146447
    assert float(rows[1]["lr"]) == pytest.approx(0.01 * (1 - (math.sqrt(6) + math.sqrt(2)) / 4) / 2, rel=1e-5)
    assert summary["steps"] == 12 and summary["loss"] == pytest.approx(last, rel=1e-9)
    assert read_pretrained(out)[1]["steps"] == 12
    # the restoration is compared after a sigmoid: the network's output as a grey level in [0, 1]
    assert all(0.0 <= float(x.min()) and float(x.max()) <= 1.0 for x in inputs)
    assert any(float(x.min()) < 0.5 for x in inputs) or any(float(x.max()) > 0.5 for x in inputs)
    # slices are flipped at random: the dark-left slice shows up dark-right too
    sides = {(float(c[i, 0, :, 0].mean()), float(c[i, 0, :, -1].mean())) for c in cleans for i in range(len(c))}
    assert (0.0, 1.0) in sides and (1.0, 0.0) in sides


def test_the_same_seed_gives_the_same_weights_whatever_torch_and_numpy_did_before(tmp_path: Path) -> None:
    weights = []
    for run in range(2):
        torch.manual_seed(100 + run)  # global state that must not leak into a seeded pretraining
        np.random.seed(100 + run)
        pretrain(_config(), _images(), tmp_path / f"p{run}", PretrainOptions(steps=3, batch_size=2, crop=16, seed=5),
                 progress=False, log=lambda message: None)
        weights.append(read_pretrained(tmp_path / f"p{run}")[1]["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_no_slices_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match="^no unlabelled slices to pretrain on$"):
        pretrain(_config(), [], tmp_path / "p", PretrainOptions(steps=1, crop=0), progress=False,
                 log=lambda message: None)
    assert not (tmp_path / "p").exists()
