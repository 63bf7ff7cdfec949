"""Splits, label schemes, int8 quantization and parallel training runs: checks that pin details the broader tests
in test_config_splits.py, test_datasets.py, test_export.py and test_training.py leave open (found by mutation
testing)."""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_run_folder
from covseg.errors import CovsegError


# ---- covseg.splits --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split, keys", [("cv:2", ("split", "folds", "split_seed")),
                                         ("official", ("split", "split_seed", "val_fraction")),
                                         ("seed", ("split", "split_seed")), ("paper", ("split", "split_seed"))])
def test_split_settings_name_every_setting_that_decides_the_held_out_images(split: str, keys: tuple) -> None:
    # cv:K with another split_seed (or seed / paper with another seed) holds out other images: a teacher or a
    # pretraining made so has seen this run's held-out images
    from covseg.splits import split_settings

    assert split_settings(split) == keys


def test_save_split_writes_the_folds_and_load_split_reads_back_the_three_lists(tmp_path: Path) -> None:
    from covseg.splits import load_split, save_split

    path = tmp_path / "split.json"
    split = {"train": ["a", "b"], "val": ["c"], "test": []}
    save_split(split, path, [["a"], ["b"], ["c"]])
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == {**split, "folds": [["a"], ["b"], ["c"]]}
    assert load_split(path) == split  # the folds are written for reference, not read back as a part
    save_split(split, path)
    assert json.loads(path.read_text(encoding="utf-8")) == split


@pytest.mark.parametrize("text", ["{\"train\": [\"a\"], \"val\": [", "", "\xff"])
def test_a_split_json_that_is_not_json_is_refused_in_one_line(text: str, tmp_path: Path) -> None:
    from covseg.splits import load_split

    path = tmp_path / "split.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(path))}: cannot read the split \(.*\); is this a covseg "
                                          r"run folder\?$"):
        load_split(path)
    with pytest.raises(CovsegError, match="cannot read the split"):
        load_split(tmp_path / "missing.json")


@pytest.mark.parametrize("text", ["3", "null", "[\"train\", \"val\"]", "\"train val\"",
                                  "{\"train\": [1, 2], \"val\": []}", "{\"train\": \"ab\", \"val\": []}",
                                  "{\"train\": [\"a\"], \"val\": [], \"test\": [null]}"])
def test_a_split_json_that_does_not_hold_lists_of_names_is_refused_as_damaged(text: str, tmp_path: Path) -> None:
    from covseg.splits import load_split

    path = tmp_path / "split.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(path))}: a damaged split"):
        load_split(path)


# ---- covseg.labels --------------------------------------------------------------------------------------------------

def test_a_label_outside_the_scheme_names_the_valid_range() -> None:
    from covseg.labels import BINARY, MULTICLASS, check_labels

    with pytest.raises(CovsegError, match=r"^m\.png: label values \[4, 7\] are outside the multiclass scheme "
                                          r"\(0\.\.3\); fix the mask or choose the other --task$"):
        check_labels(np.array([[0, 7], [4, 3]]), MULTICLASS, "m.png")
    with pytest.raises(CovsegError, match=r"^m\.png: label values \[2\] are outside the binary scheme \(0\.\.1\)"):
        check_labels(np.array([2, 1, 0]), BINARY, "m.png")


def test_an_unknown_task_names_the_tasks_there_are() -> None:
    from covseg.labels import get_scheme

    with pytest.raises(CovsegError, match=r"^unknown task 'three': use one of binary, multiclass$"):
        get_scheme("three")


# ---- covseg.quantize ------------------------------------------------------------------------------------------------

def _small_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1)).eval()


def _tiny_config():
    from covseg.config import apply_overrides, load_recipe

    return apply_overrides(load_recipe("tiny"), ["data.input_size=32"])


def test_a_transposed_convolution_reading_the_image_or_writing_the_logits_stays_fp32(tmp_path: Path) -> None:
    import torch

    from covseg.export import write_graph
    from covseg.quantize import fp32_io_nodes

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(1, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, padding=1),
                                torch.nn.ReLU(), torch.nn.ConvTranspose2d(4, 2, 1)).eval()
    write_graph(model, 16, str(tmp_path / "g.onnx"))
    import onnx

    ops = {n.name: n.op_type for n in onnx.load(str(tmp_path / "g.onnx")).graph.node}
    kept = fp32_io_nodes(tmp_path / "g.onnx")
    assert [ops[name] for name in kept] == ["ConvTranspose", "ConvTranspose"]  # the middle Conv is quantized


def test_the_quantizer_s_log_is_silenced_and_the_root_logger_restored() -> None:
    from covseg.quantize import _quiet_quantizer

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.INFO)
    try:
        with _quiet_quantizer():
            assert root.level == logging.ERROR  # ONNX Runtime's WARNING advice is dropped
            assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
        assert root.level == logging.INFO and root.handlers == handlers
    finally:
        root.setLevel(level)


def test_quantizing_without_calibration_batches_is_refused(tmp_path: Path) -> None:
    from covseg.quantize import quantize_network

    with pytest.raises(ValueError, match="^int8 calibration needs at least one input batch$"):
        quantize_network(_small_net(), 32, [], tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()


def test_a_run_without_validation_slices_is_checked_on_its_training_slices(tmp_path: Path) -> None:
    import onnx

    from covseg.quantize import quantize_run

    rng = np.random.default_rng(0)
    train = [rng.normal(size=(2, 1, 32, 32)).astype(np.float32), rng.normal(size=(1, 1, 32, 32)).astype(np.float32)]
    pixels = [np.ones((2, 32, 32), bool), np.ones((1, 32, 32), bool)]
    out = tmp_path / "int8.onnx"
    meta = quantize_run(_small_net(), _tiny_config(), {"train": train, "val": [], "train_pixels": pixels,
                                                       "val_pixels": []}, out)
    assert meta["covseg_precision"] == "int8"
    assert meta["covseg_int8_checked_on"] == "3 training slices"
    assert 0.5 <= float(meta["covseg_int8_agreement"]) <= 1.0
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_int8_agreement_is_measured_on_the_validation_batches_with_their_pixel_masks(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    import covseg.quantize as quantize

    seen: dict = {}

    def fake_agreement(fp32_session, int8_session, batches, image_pixels=None):
        seen["batches"], seen["pixels"] = batches, image_pixels
        return 0.75

    monkeypatch.setattr(quantize, "int8_agreement", fake_agreement)
    rng = np.random.default_rng(1)
    batch = [rng.normal(size=(n, 1, 32, 32)).astype(np.float32) for n in (2, 2, 1)]
    masks = [np.zeros((n, 32, 32), bool) for n in (2, 2, 1)]
    inputs = {"train": batch[:1], "val": batch[1:], "train_pixels": masks[:1], "val_pixels": masks[1:]}
    meta = quantize.quantize_run(_small_net(), _tiny_config(), inputs, tmp_path / "int8.onnx")
    assert meta == {"covseg_precision": "int8", "covseg_int8_agreement": "0.75",
                    "covseg_int8_checked_on": "3 validation slices"}
    assert seen["batches"] is inputs["val"] and seen["pixels"] is inputs["val_pixels"]


def test_calibration_inputs_refuse_a_split_whose_slices_are_not_in_the_data(tiny_data: Path, tmp_path: Path) -> None:
    from covseg.quantize import calibration_inputs

    run = fake_run_folder(tmp_path, {"train": ["0", "nope", "gone"], "val": ["1"]}, str(tiny_data))
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run))}: its train slices \(nope, gone …\) are not in "
                                          rf"{re.escape(str(tiny_data))}; pass --data DIR with the data it trained on$"):
        calibration_inputs(run, None, _tiny_config(), ("train", "val"))


def test_calibration_inputs_refuse_data_that_is_not_there(tmp_path: Path) -> None:
    from covseg.quantize import calibration_inputs

    gone = str(tmp_path / "gone")
    run = fake_run_folder(tmp_path, {"train": ["0"], "val": []}, gone)
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run))}: the data it trained on \({re.escape(gone)}\) is "
                                          r"not here; pass --data DIR with its slices$"):
        calibration_inputs(run, None, _tiny_config(), ("train",))
    with pytest.raises(CovsegError, match=rf"^--data {re.escape(gone)}: no such folder; pass the data the run "
                                          r"trained on$"):
        calibration_inputs(run, gone, _tiny_config(), ("train",))


def test_calibration_inputs_come_in_batches_of_eight_and_an_empty_part_gets_none(tiny_data: Path,
                                                                                  tmp_path: Path) -> None:
    from covseg.quantize import calibration_inputs

    from covseg.config import apply_overrides
    from covseg.datasets import load_dataset
    from covseg.inference import network_input

    names = [str(i) for i in range(10)]
    run = fake_run_folder(tmp_path, {"train": names, "val": []}, str(tiny_data))
    config = apply_overrides(_tiny_config(), ["data.normalize=percentile"])
    inputs = calibration_inputs(run, None, config, ("train", "val"))
    assert [b.shape for b in inputs["train"]] == [(8, 1, 32, 32), (2, 1, 32, 32)]
    # prepared as the Predictor prepares them: the run's own normalisation, then resized
    by_name = {s.name: s.image for s in load_dataset(tiny_data, "binary", split="train", window=config.data.window)}
    expected = network_input([by_name[n] for n in names], 32, "percentile", config.data.resize).numpy()
    np.testing.assert_allclose(np.concatenate(inputs["train"]), expected, rtol=0, atol=1e-6)
    assert [m.shape for m in inputs["train_pixels"]] == [(8, 32, 32), (2, 32, 32)]
    assert inputs["val"] == [] and inputs["val_pixels"] == []


def test_int8_export_of_a_run_without_training_slices_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    from covseg.quantize import int8_calibration

    run = fake_run_folder(tmp_path, {"train": [], "val": ["0", "1"]}, str(tiny_data))
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run))}: its split.json has no training slices to "
                                          r"calibrate int8 on; export it without --int8"):
        int8_calibration(_tiny_config(), run, None)


# ---- covseg.parallel_runs -------------------------------------------------------------------------------------------

class _Logged(Exception):
    pass


def _stop_at_log(message: str) -> None:  # the first line comes before any worker starts: stop there
    raise _Logged(message)


def test_parallel_runs_take_no_more_jobs_than_runs(tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.config import load_recipe

    asked: list[int] = []
    monkeypatch.setattr(parallel_runs, "threads_per_job", lambda jobs: asked.append(jobs) or 12 // jobs)
    runs = [(load_recipe("tiny"), tmp_path / f"fold-{k}") for k in range(2)]
    with pytest.raises(_Logged, match=r"^training 2 runs, 2 at a time, 6 torch threads each$"):
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=5, log=_stop_at_log)
    assert asked == [2]  # the cores are shared out among the two workers there will be, not five


def test_parallel_runs_log_the_range_of_threads_their_configs_set(tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.config import apply_overrides, load_recipe

    monkeypatch.setattr(parallel_runs, "threads_per_job", lambda jobs: 2)
    config = load_recipe("tiny")
    runs = [(apply_overrides(config, ["train.threads=3"]), tmp_path / "a"), (config, tmp_path / "b"),
            (apply_overrides(config, ["train.threads=1"]), tmp_path / "c")]
    with pytest.raises(_Logged, match=r"^training 3 runs, 3 at a time, 1-3 torch threads each$"):
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=3, log=_stop_at_log)


def test_parallel_runs_of_nothing_do_nothing() -> None:
    from covseg.parallel_runs import train_runs_in_parallel

    assert train_runs_in_parallel([], [], "data", jobs=2, log=_stop_at_log) is None


def test_a_worker_sets_its_share_of_threads_only_when_the_config_sets_none(tmp_path: Path, monkeypatch) -> None:
    import torch

    import covseg.experiment
    from covseg import parallel_runs
    from covseg.config import apply_overrides, load_recipe

    during: list[int] = []
    monkeypatch.setattr(covseg.experiment, "train_or_resume", lambda *args: during.append(torch.get_num_threads()))
    monkeypatch.setattr(parallel_runs, "_training", False)
    monkeypatch.setattr(parallel_runs, "_interrupted", False)
    before = torch.get_num_threads()
    config = load_recipe("tiny")
    assert parallel_runs._train_in_worker(config, [], tmp_path / "run", "data", before + 1) is True
    torch.set_num_threads(before)
    own = apply_overrides(config, ["train.threads=1"])  # the run sets its own threads (train_or_resume)
    assert parallel_runs._train_in_worker(own, [], tmp_path / "run", "data", before + 1) is True
    assert during == [before + 1, before]


def test_a_worker_and_cv_pass_on_how_to_go_on_after_ctrl_c(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    # a fold stopped in a worker said "continue with covseg train --resume", which finishes that fold alone
    import covseg.experiment
    from covseg import parallel_runs
    from covseg.config import load_recipe
    from covseg.datasets import load_dataset

    said: list[str] = []
    monkeypatch.setattr(covseg.experiment, "train_or_resume", lambda *args: said.append(args[-1]))
    monkeypatch.setattr(parallel_runs, "_training", False)
    monkeypatch.setattr(parallel_runs, "_interrupted", False)
    assert parallel_runs._train_in_worker(load_recipe("tiny"), [], tmp_path / "run", "data", 1, "run it again")
    assert said == ["run it again"]
    handed: list[str] = []

    def parallel(runs, samples, data, jobs, log, again):
        handed.append(again)
        raise KeyboardInterrupt

    monkeypatch.setattr(covseg.experiment, "train_runs_in_parallel", parallel)
    samples = load_dataset(tiny_data, "binary")
    with pytest.raises(KeyboardInterrupt):
        covseg.experiment.cross_validate(load_recipe("tiny"), samples, str(tiny_data), tmp_path / "cv", 3,
                                         progress=False, log=lambda message: None, jobs=2)
    assert handed == ["to go on, run the same covseg cv command again (it keeps the folds already trained)"]


def _stopped_worker(config, samples, run_dir: Path, data: str, threads: int, again: str) -> bool:
    """A worker body that saw Ctrl-C at once (importable by name, so a spawned worker can run it)."""
    Path(run_dir).mkdir()
    return False


def test_parallel_runs_start_nothing_after_a_worker_saw_ctrl_c_and_raise_it(tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.config import load_recipe

    monkeypatch.setattr(parallel_runs, "_train_in_worker", _stopped_worker)
    runs = [(load_recipe("tiny"), tmp_path / f"fold-{k}") for k in range(3)]
    with pytest.raises(KeyboardInterrupt):
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=1, log=lambda message: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold-0"]


def _failing_worker(config, samples, run_dir: Path, data: str, threads: int, again: str) -> bool:
    """fold-0 fails at once, in words that name its folder; fold-1 fails once the parent has seen that (``data``
    is the file the parent's wait writes then)."""
    if Path(run_dir).name == "fold-0":
        raise CovsegError(f"{run_dir}: the first failure")
    deadline = time.monotonic() + 120
    while not Path(data).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    raise CovsegError("the second failure")


def test_parallel_runs_raise_the_first_failure_naming_its_run_once(tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs
    from covseg.config import load_recipe

    seen = tmp_path / "first-failure-seen"
    real_wait = parallel_runs.wait

    def wait(futures, *args, **kwargs):
        done, not_done = real_wait(futures, *args, **kwargs)
        if any(f.exception() is not None for f in done):
            seen.touch()
        return done, not_done

    monkeypatch.setattr(parallel_runs, "_train_in_worker", _failing_worker)
    monkeypatch.setattr(parallel_runs, "wait", wait)
    runs = [(load_recipe("tiny"), tmp_path / f"fold-{k}") for k in range(2)]
    fold0 = re.escape(str(tmp_path / "fold-0"))
    with pytest.raises(CovsegError, match=rf"^{fold0}: the first failure$"):
        parallel_runs.train_runs_in_parallel(runs, [], str(seen), jobs=2, log=lambda message: None)
