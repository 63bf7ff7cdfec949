"""ONNX export, ONNX Runtime backend and int8 quantization: checks that pin details the broader tests in
test_export.py leave open (found by mutation testing)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from covseg import export
from covseg.checkpoint import load_model
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.export import load_onnx


@pytest.fixture(scope="module")
def fp32_file(tiny_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx-mut") / "model.onnx"
    assert main(["export", str(tiny_run), "-o", str(out)]) == 0
    return out


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _save_with_meta(graph: onnx.ModelProto, meta: dict[str, str], target: Path) -> Path:
    del graph.metadata_props[:]
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(graph, str(target))
    return target


def test_a_graph_with_three_input_channels_or_without_logits_is_refused(fp32_file: Path, tmp_path: Path) -> None:
    """Input ``image`` and output ``logits`` with the right class count but three input channels, or one channel in
    but no ``logits`` out: not covseg's network, refused as such (not a KeyError)."""
    other = tmp_path / "rgb.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 3, padding=1), (torch.rand(1, 3, 32, 32),), str(other), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    meta = {k: v for k, v in _meta(fp32_file).items() if k not in export.CHECKSUM_KEYS}
    _save_with_meta(onnx.load(str(other)), meta, other)
    with pytest.raises(CovsegError, match="its graph is not a covseg network"):
        load_onnx(other)
    # one channel in, but no ``logits`` output
    unnamed = tmp_path / "unnamed.onnx"
    torch.onnx.export(torch.nn.Conv2d(1, 2, 3, padding=1), (torch.rand(1, 1, 32, 32),), str(unnamed), dynamo=False,
                      input_names=["image"], output_names=["out"],
                      dynamic_axes={"image": {0: "batch"}, "out": {0: "batch"}})
    _save_with_meta(onnx.load(str(unnamed)), meta, unnamed)
    with pytest.raises(CovsegError, match="its graph is not a covseg network"):
        load_onnx(unnamed)


def test_exported_from_says_none_for_a_file_that_does_not_record_its_checkpoint(fp32_file: Path,
                                                                                  tmp_path: Path) -> None:
    assert export.exported_from(fp32_file) == _meta(fp32_file)["covseg_checkpoint"]
    assert export.exported_from(fp32_file) in ("best.pt", "last.pt", "swa.pt", "ema.pt")
    meta = {k: v for k, v in _meta(fp32_file).items() if k != "covseg_checkpoint"}
    old = _save_with_meta(onnx.load(str(fp32_file)), meta, tmp_path / "old.onnx")
    assert export.exported_from(old) is None
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    assert export.exported_from(junk) is None


def test_load_onnx_runs_with_the_threads_asked_for(fp32_file: Path) -> None:
    backend, _ = load_onnx(fp32_file, threads=1)
    assert backend.session.get_session_options().intra_op_num_threads == 1


def test_weights_checksum_covers_which_initializer_holds_which_weights(fp32_file: Path) -> None:
    """Two initializers' names swapped (the nodes left as they are, so the graph checksum stays): the network would
    run with each tensor's weights in the other's place, so the weights checksum must change."""
    graph = onnx.load(str(fp32_file))
    base = export.weights_sha256(graph)
    first, second = graph.graph.initializer[0], graph.graph.initializer[1]
    first.name, second.name = second.name, first.name
    assert export.weights_sha256(graph) != base
    renamed = onnx.load(str(fp32_file))
    renamed.graph.initializer[0].name = "renamed"
    assert export.weights_sha256(renamed) != base


def test_export_records_the_checkpoint_s_epoch(fp32_file: Path, tiny_run: Path) -> None:
    state = load_model(tiny_run / _meta(fp32_file)["covseg_checkpoint"])[2]
    assert state.get("epoch") is not None
    assert _meta(fp32_file)["covseg_epoch"] == str(state["epoch"])


def test_int8_export_of_a_lesion_type_model_is_refused(tiny_run: Path) -> None:
    from covseg.quantize import int8_calibration

    config = load_model(tiny_run)[1]
    types = dataclasses.replace(config, train=dataclasses.replace(config.train, types_only=True))
    with pytest.raises(CovsegError, match="lesion-type model"):
        int8_calibration(types, tiny_run, None)


def test_calibration_pixels_follow_each_batch_of_padded_slices(tiny_run: Path, tmp_path: Path) -> None:
    """More than one batch of 8 under ``data.resize=pad``: each batch's pixel masks are those of its own slices."""
    from covseg.datasets import load_dataset
    from covseg.inference import image_pixels
    from covseg.quantize import calibration_inputs
    from covseg.transforms import fit_box

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    split = json.loads((run / "split.json").read_text())
    split["train"] = sorted(split["train"] + split["val"], key=int)  # 12 slices: batches of 8 and 4
    (run / "split.json").write_text(json.dumps(split))
    config = load_model(run)[1]
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, resize="pad"))
    inputs = calibration_inputs(run, None, config, ("train",))
    assert [len(b) for b in inputs["train"]] == [8, 4]
    assert [m.shape[0] for m in inputs["train_pixels"]] == [8, 4]
    data = json.loads((run / "run.json").read_text())["data"]
    by_name = {s.name: s.image for s in load_dataset(data, config.data.task, split="train",
                                                     window=config.data.window)}
    size = config.data.input_size
    expected = image_pixels([fit_box(*by_name[n].shape[:2], size, "pad") for n in split["train"]], size).numpy()
    np.testing.assert_array_equal(np.concatenate(inputs["train_pixels"]), expected)
    assert not expected.all()  # the slices are not square: padding is left out


def test_int8_export_records_its_agreement_and_warns_below_99_9_percent(tiny_run: Path, tmp_path: Path,
                                                                       monkeypatch, capsys) -> None:
    """The share measured on the validation slices' own pixels is stored in full and warned of on stderr
    below 99.9 %; the graph quantizes weights per channel and activations to uint8."""
    import covseg.quantize as quantize

    seen: dict = {}

    def fake_agreement(fp32_session, int8_session, batches, image_pixels=None):
        seen["batches"], seen["pixels"] = batches, image_pixels
        return 0.99854321

    monkeypatch.setattr(quantize, "int8_agreement", fake_agreement)
    out = tmp_path / "int8.onnx"
    assert main(["export", str(tiny_run), "-o", str(out), "--int8"]) == 0
    captured = capsys.readouterr()
    assert "int8 labels agree with fp32 on 99.854% of the pixels of 4 validation slices" in captured.out
    assert "warning: that is below the 99.9% covseg asks of bf16" in captured.err
    assert "warning" not in captured.out
    meta = _meta(out)
    assert meta["covseg_int8_agreement"] == "0.99854321"  # in full: rounded to 6 places, 0.9989996 read as 0.999
    assert meta["covseg_int8_checked_on"] == "4 validation slices"
    # checked on the validation batches with their pixel masks
    split = json.loads((tiny_run / "split.json").read_text())
    assert sum(len(b) for b in seen["batches"]) == len(split["val"])
    assert seen["pixels"] is not None and [m.shape[0] for m in seen["pixels"]] == [len(b) for b in seen["batches"]]
    # per-channel int8 weights, uint8 activations
    graph = onnx.load(str(out)).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    produced_by = {o: n for n in graph.node for o in n.output}
    per_channel = []
    for node in graph.node:
        if node.op_type == "Conv" and produced_by.get(node.input[1]) is not None \
                and produced_by[node.input[1]].op_type == "DequantizeLinear":
            dq = produced_by[node.input[1]]
            per_channel.append(inits[dq.input[1]].size > 1 and inits[dq.input[0]].dtype == np.int8)
    assert per_channel and all(per_channel)
    activation_zero_points = [inits[n.input[2]].dtype for n in graph.node
                              if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]
    assert activation_zero_points and all(dtype == np.uint8 for dtype in activation_zero_points)


@pytest.mark.parametrize("agreement,warned", [("0.999000", False), ("0.998999", True), ("1.000000", False),
                                               ("0.9989996", True)])
def test_the_int8_warning_bar_is_99_9_percent_inclusive(agreement: str, warned: bool, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.setattr(export, "export_onnx", lambda *args, **kwargs: {
        "covseg_int8_agreement": agreement, "covseg_int8_checked_on": "4 validation slices"})
    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx"), "--int8"]) == 0
    assert ("below the 99.9%" in capsys.readouterr().err) == warned
