"""int8 quantization (covseg.quantize) and label schemes (covseg.labels): checks that pin details the broader tests
in test_export.py, test_export_mutants.py, test_splits_mutants.py and test_datasets.py leave open (found by mutation
testing)."""
from __future__ import annotations

import gc
import re
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest

from conftest import fake_run_folder
from covseg.errors import CovsegError


def _small_net():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1)).eval()


def _tiny_config(*overrides: str):
    from covseg.config import apply_overrides, load_recipe

    return apply_overrides(load_recipe("tiny"), ["data.input_size=32", *overrides])


def _initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx

    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


# ---- covseg.quantize ------------------------------------------------------------------------------------------------

def test_int8_calibration_reads_every_batch(tmp_path: Path) -> None:
    """Min-max calibration over batches [a, b] is calibration over their concatenation, not over one of them: the
    activation ranges (the graph's scales) come from every batch."""
    import torch

    from covseg.quantize import quantize_network

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():  # the first convolution copies its input to its 4 outputs: their range is the input's
        net[0].weight.zero_()
        net[0].weight[:, 0, 1, 1] = 1.0
        net[0].bias.zero_()
    rng = np.random.default_rng(0)
    a = rng.uniform(-4, 0.5, (2, 1, 16, 16)).astype(np.float32)
    b = rng.uniform(-0.5, 4, (2, 1, 16, 16)).astype(np.float32)
    a[0, 0, 0, :2] = [-4, 0.5]  # a holds the low end, b the high end
    b[1, 0, 3, 4:6] = [-0.5, 4]
    for name, batches in (("both", [a, b]), ("first", [a]), ("last", [b]), ("reversed", [b, a])):
        quantize_network(net, 16, batches, tmp_path / f"{name}.onnx")
    both = _initializers(tmp_path / "both.onnx")
    for same in ("reversed",):
        other = _initializers(tmp_path / f"{same}.onnx")
        assert other.keys() == both.keys()
        for key, value in both.items():
            np.testing.assert_array_equal(other[key], value, err_msg=f"{same}: {key}")
    # uint8 activations over [min, max] (0 included): [-4, 4] -> 8 / 255; a alone [-4, 0.5], b alone [-0.5, 4]
    scale = "/0/Conv_output_0_scale"
    assert float(both[scale]) == pytest.approx(8 / 255, rel=1e-6)
    for partial in ("first", "last"):
        assert float(_initializers(tmp_path / f"{partial}.onnx")[scale]) == pytest.approx(4.5 / 255, rel=1e-6)


def test_int8_agreement_pools_the_pixels_of_every_batch() -> None:
    """Two batches that disagree on different shares: the agreement is over all their pixels (not the first
    batch's share, nor the mean of the batches' shares), each batch masked by its own pixel mask."""
    from covseg.quantize import int8_agreement

    class Fixed:  # logits by batch size: the (1, ...) batch and the (2, ...) batch get their own
        def __init__(self, by_size: dict[int, np.ndarray]) -> None:
            self.by_size = by_size

        def run(self, names, feed):
            return [self.by_size[len(feed["image"])]]

    one = np.zeros((1, 2, 2, 2), np.float32)
    one[:, 1] = 1.0  # label 1 everywhere
    two = np.zeros((2, 2, 2, 2), np.float32)
    two[:, 1] = 1.0
    one_b, two_b = one.copy(), two.copy()
    one_b[0, 0] = 2.0  # batch 1: all 4 pixels differ
    two_b[1, 0, 0, 0] = 2.0  # batch 2: 1 of its 8 pixels differs
    batches = [np.zeros((1, 1, 2, 2), np.float32), np.zeros((2, 1, 2, 2), np.float32)]
    fp32, int8 = Fixed({1: one, 2: two}), Fixed({1: one_b, 2: two_b})
    # 12 pixels, 5 differ: 7/12 (first batch alone: 0; mean of the batches' shares: (0 + 7/8) / 2)
    assert int8_agreement(fp32, int8, batches) == pytest.approx(7 / 12)
    # masks: batch 1 keeps 1 pixel (differs), batch 2 keeps its image 1 (1 of 4 differs) -> 3 of 5 agree
    masks = [np.zeros((1, 2, 2), bool), np.zeros((2, 2, 2), bool)]
    masks[0][0, 1, 1] = True
    masks[1][1] = True
    assert int8_agreement(fp32, int8, batches, masks) == pytest.approx(3 / 5)


def test_calibration_inputs_name_the_first_three_missing_slices(tiny_data: Path, tmp_path: Path) -> None:
    from covseg.quantize import calibration_inputs

    run = fake_run_folder(tmp_path, {"train": ["0", "a", "b", "c", "d"], "val": []}, str(tiny_data))
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(run))}: its train slices \(a, b, c …\) are not in "):
        calibration_inputs(run, None, _tiny_config(), ("train", "val"))


def test_calibration_pixels_of_stretched_slices_are_every_pixel(tiny_data: Path, tmp_path: Path) -> None:
    """``data.resize=stretch`` fills the whole input with the slice: every pixel counts (under ``pad`` the same
    non-square slices leave padding out)."""
    from PIL import Image

    from covseg.quantize import calibration_inputs

    names = ["0", "1", "2"]
    shapes = [Image.open(tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs" / f"{n}.jpg").size
              for n in names]
    assert any(w != h for w, h in shapes)  # the check below means something only for non-square slices
    run = fake_run_folder(tmp_path, {"train": names, "val": []}, str(tiny_data))
    stretched = calibration_inputs(run, None, _tiny_config("data.resize=stretch"), ("train",))["train_pixels"]
    assert [m.shape for m in stretched] == [(3, 32, 32)] and stretched[0].all()
    padded = calibration_inputs(run, None, _tiny_config("data.resize=pad"), ("train",))["train_pixels"]
    assert not padded[0].all()


def test_a_last_batch_of_one_slice_is_kept(tiny_data: Path, tmp_path: Path) -> None:
    """9 slices: batches of 8 and 1, inputs and pixel masks alike (a part of 1 slice gets its one batch)."""
    from covseg.quantize import calibration_inputs

    run = fake_run_folder(tmp_path, {"train": [str(i) for i in range(9)], "val": ["9"]}, str(tiny_data))
    inputs = calibration_inputs(run, None, _tiny_config(), ("train", "val"))
    assert [len(b) for b in inputs["train"]] == [8, 1] and [len(m) for m in inputs["train_pixels"]] == [8, 1]
    assert [b.shape for b in inputs["val"]] == [(1, 1, 32, 32)] and [m.shape for m in inputs["val_pixels"]] == [
        (1, 32, 32)]


def test_calibration_inputs_read_hu_slices_through_the_run_s_lung_window(tmp_path: Path) -> None:
    """HU data (MedSeg arrays) are windowed with the run's data.window_level / window_width, as it trained."""
    from covseg.datasets import load_dataset
    from covseg.inference import network_input
    from covseg.quantize import calibration_inputs

    data = tmp_path / "medseg"
    data.mkdir()
    hu = np.linspace(-1200, 300, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    np.save(data / "images_medseg.npy", hu)
    masks = np.zeros((2, 8, 8, 4), np.float32)
    masks[..., 3] = 1  # all background
    np.save(data / "masks_medseg.npy", masks)
    names = ["images_medseg_000", "images_medseg_001"]
    run = fake_run_folder(tmp_path, {"train": names, "val": []}, str(data))
    config = _tiny_config("data.window_level=-200", "data.window_width=400")
    got = np.concatenate(calibration_inputs(run, None, config, ("train",))["train"])
    windowed = [s.image for s in load_dataset(data, "binary", window=(-200.0, 400.0))]
    expected = network_input(windowed, 32, config.data.normalize, config.data.resize).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    default = [s.image for s in load_dataset(data, "binary")]
    assert not np.allclose(got, network_input(default, 32, config.data.normalize, config.data.resize).numpy())


def test_quantize_run_closes_its_sessions_before_removing_their_folder(tmp_path: Path, monkeypatch) -> None:
    """The fp32 and int8 sessions are let go before the temporary folder holding the fp32 graph is removed (an open
    file cannot be deleted on Windows)."""
    import onnxruntime

    from covseg.quantize import quantize_run

    live: list[weakref.ref] = []
    alive_at_removal: list[int] = []
    real_session, real_rmtree = onnxruntime.InferenceSession, shutil.rmtree

    class Tracked(real_session):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            live.append(weakref.ref(self))

    def rmtree(path, *args, **kwargs):
        if Path(path).name.startswith("covseg-int8-"):
            gc.collect()
            alive_at_removal.append(sum(ref() is not None for ref in live))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Tracked)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    rng = np.random.default_rng(2)
    train = [rng.normal(size=(2, 1, 32, 32)).astype(np.float32)]
    meta = quantize_run(_small_net(), _tiny_config(), {"train": train, "val": [], "train_pixels": [np.ones((2, 32, 32), bool)],
                                                       "val_pixels": []}, tmp_path / "int8.onnx")
    assert meta["covseg_int8_checked_on"] == "2 training slices"
    assert live and alive_at_removal == [0]


# ---- covseg.labels --------------------------------------------------------------------------------------------------

def test_overlay_colours_of_each_class() -> None:
    """The overlay colours (figures, HTML reports): black background; binary infection red; multiclass GGO gold,
    consolidation red, pleural effusion blue."""
    from covseg.labels import BINARY, MULTICLASS

    assert BINARY.colors == ((0, 0, 0), (255, 64, 64))
    assert MULTICLASS.colors == ((0, 0, 0), (255, 215, 0), (255, 64, 64), (64, 160, 255))


def test_an_unknown_task_is_refused_without_the_key_error_behind_it() -> None:
    from covseg.labels import get_scheme

    with pytest.raises(CovsegError) as caught:
        get_scheme("ternary")
    assert caught.value.__suppress_context__ and caught.value.__cause__ is None  # no "During handling of ..." trace
    with pytest.raises(CovsegError, match=r"^unknown task 'Binary': use one of binary, multiclass$"):
        get_scheme("Binary")  # task names are exact
