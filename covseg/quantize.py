"""Static int8 quantization of a covseg network for ONNX Runtime on a CPU.

The network (batch norm folded into its convolutions) is traced to an fp32 ONNX graph and quantized with
ONNX Runtime's static quantizer in QDQ form: weights int8 per output channel, activations uint8 with ranges
calibrated (min-max) on real network inputs — for ``covseg export --int8`` (:func:`quantize_run`), the run's own
training slices, prepared as the Predictor prepares them. The first convolution (which reads the image itself) and
the last (which writes the logits) keep fp32 weights; every other convolution is quantized (ONNX Runtime runs
them with int8 kernels, VNNI on CPUs that have it). :func:`int8_agreement` measures how many pixels get the same
label as the fp32 graph.
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from covseg.config import RunConfig
from covseg.errors import CovsegError
from covseg.splits import load_split
from covseg.wording import counted

__all__ = ["int8_calibration", "quantize_run", "calibration_inputs", "quantize_network", "int8_agreement",
           "fp32_io_nodes"]


def fp32_io_nodes(graph_path: Path) -> list[str]:
    """Names of the convolutions kept fp32: those reading the graph's input and those writing its output."""
    import onnx

    graph = onnx.load(str(graph_path)).graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.op_type in ("Conv", "ConvTranspose")
            and (set(n.input) & inputs or set(n.output) & outputs)]


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice at WARNING level through the root logger (``logging.warning``, which
    also installs a stderr handler when the root has none); keep it off stderr and leave the root as it was."""
    root = logging.getLogger()
    level, silent = root.level, logging.NullHandler()
    root.setLevel(logging.ERROR)
    root.addHandler(silent)
    try:
        yield
    finally:
        root.removeHandler(silent)
        root.setLevel(level)


def quantize_network(model: torch.nn.Module, input_size: int, batches: Sequence[np.ndarray], out: Path,
                     fp32_out: Path | None = None) -> None:
    """Write ``model`` (CPU, eval mode; fold batch norm first) as a static-int8 ONNX graph at ``out``.

    ``batches``: calibration inputs, each ``(B, 1, S, S)`` float32 as the network sees them (normalised,
    resized). ``fp32_out``, when given, also receives the fp32 graph the int8 one was made from. Dynamic batch,
    height and width, as :func:`covseg.export.export_onnx`.
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from covseg.export import write_graph

    if not batches:
        raise ValueError("int8 calibration needs at least one input batch")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter([{"image": np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        fp32 = fp32_out if fp32_out is not None else Path(tmp) / "fp32.onnx"
        prepared = Path(tmp) / "prepared.onnx"
        write_graph(model.eval(), input_size, str(fp32))
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=fp32_io_nodes(prepared))


def int8_agreement(fp32_session: Any, int8_session: Any, batches: Sequence[np.ndarray],
                   image_pixels: Sequence[np.ndarray] | None = None) -> float:
    """Fraction of pixels (over all ``batches``, each ``(B, 1, S, S)`` float32, at the network's input size) whose
    arg-max label is the same under two ONNX Runtime sessions (graph input ``image``, output ``logits``).
    ``image_pixels``: one ``(B, S, S)`` bool mask per batch of the pixels that hold the slice (``data.resize=pad``
    leaves zero padding around it, which would count as agreeing); default every pixel."""
    from covseg.inference import label_agreement

    feeds = [{"image": np.ascontiguousarray(b, dtype=np.float32)} for b in batches]
    logits = [torch.from_numpy(np.concatenate([session.run(["logits"], feed)[0] for feed in feeds]))
              for session in (fp32_session, int8_session)]
    inside = None if image_pixels is None else torch.from_numpy(np.concatenate(image_pixels))
    return label_agreement(*logits, inside)


def calibration_inputs(run_dir: Path, data: str | None, config: RunConfig,
                       parts: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """The network inputs ``(B, 1, S, S)`` float32 (batches of 8) of each of ``parts`` (``train``, ``val``) of a
    run's split, read once from ``data`` (default: the data the run trained on), prepared as the Predictor
    prepares them, and under ``PART_pixels`` one ``(B, S, S)`` bool mask per batch of the pixels that hold each slice
    (all of them for ``data.resize=stretch``; the slice's box, not the padding, for ``pad``:
    :func:`covseg.transforms.fit_box`). A part the split leaves empty gets no batches. A ``data`` given whose
    training slices are not the run's (other masks under the same names: :func:`_refuse_other_slices`), or a
    run with no ``run.json`` and no ``data``, is refused in one line."""
    from covseg.datasets import load_dataset
    from covseg.inference import image_pixels, network_input
    from covseg.run import read_run_info
    from covseg.splits import load_split
    from covseg.transforms import fit_box

    recorded = data is None
    if data is None:
        if not (run_dir / "run.json").is_file():
            raise CovsegError(f"{run_dir}: no run.json to say which data it trained on; pass --data DIR with its "
                              "slices")
        data = read_run_info(run_dir).get("data")
        if not data or not Path(data).exists():
            raise CovsegError(f"{run_dir}: the data it trained on ({data}) is not here; pass --data DIR with its "
                              "slices")
    elif not Path(data).exists():
        raise CovsegError(f"--data {data}: no such folder; pass the data the run trained on")
    split = load_split(run_dir / "split.json")
    samples = load_dataset(data, config.data.task, split="train", window=config.data.window)
    by_name = {s.name: s.image for s in samples}
    inputs = {}
    for part in parts:
        missing = [name for name in split[part] if name not in by_name]
        if missing:
            raise CovsegError(f"{run_dir}: its {part} slices ({', '.join(missing[:3])} …) are not in {data}; pass "
                              "--data DIR with the data it trained on")
        if part == "train" and not recorded:
            _refuse_other_slices(run_dir, data, samples)
        images = [by_name[name] for name in split[part]]
        inputs[part] = [network_input(images[i:i + 8], config.data.input_size, config.data.normalize,
                                      config.data.resize).numpy() for i in range(0, len(images), 8)]
        boxes = [fit_box(*image.shape[:2], config.data.input_size, config.data.resize) for image in images]
        inputs[f"{part}_pixels"] = [image_pixels(boxes[i:i + 8], config.data.input_size).numpy()
                                    for i in range(0, len(images), 8)]
    return inputs


def _refuse_other_slices(run_dir: Path, data: str, samples: Sequence[Any]) -> None:
    """Refuse ``--data`` ``data`` (``samples``, its training split) where it holds the run's training slices by name
    but not their masks (:func:`covseg.run.trained_on`: their class weights against the run's
    ``class_weights.json``, the check ``covseg train --resume --data`` makes): another data set, whose images int8
    would be calibrated on and checked against under the name of the run's own. A folder without
    ``class_weights.json`` or ``config.yaml`` is not checked."""
    from covseg.run import trained_on

    if not ((run_dir / "class_weights.json").is_file() and (run_dir / "config.yaml").is_file()):
        return
    if not trained_on(run_dir, list(samples)):
        raise CovsegError(f"{run_dir}: --data {data} does not hold the slices it was trained on (the masks of its "
                          "training slices there give other class weights than its class_weights.json), so int8 "
                          "would be calibrated and checked on other images; pass --data DIR with the data it "
                          "trained on")


def int8_calibration(config: RunConfig, run_dir: Path, data: str | None) -> dict[str, list[np.ndarray]]:
    """The slices ``covseg export --int8`` calibrates on and checks with (:func:`calibration_inputs` of the run's
    ``train`` and ``val`` splits), after refusing a run it cannot quantize. Called before anything is written."""
    if not (run_dir / "split.json").is_file():
        raise CovsegError(f"{run_dir}: no split.json; --int8 calibrates on a run's training slices, so export "
                          "from a covseg run folder")
    if config.train.types_only:
        raise CovsegError(f"{run_dir}: a lesion-type model (train.types_only) has an untrained background output, "
                          "so its labels cannot be checked against fp32; export it without --int8")
    if not load_split(run_dir / "split.json")["train"]:
        raise CovsegError(f"{run_dir}: its split.json has no training slices to calibrate int8 on; export it "
                          "without --int8, or from a run trained on a split with training slices")
    return calibration_inputs(run_dir, data, config, ("train", "val"))


def quantize_run(model: torch.nn.Module, config: RunConfig, inputs: dict[str, list[np.ndarray]],
                 out: Path) -> dict[str, str]:
    """Write ``model`` (a run's network, batch norm folded) as static int8 at ``out``, calibrated on ``inputs``
    (:func:`int8_calibration`); returns covseg's int8 metadata: the share of the run's validation pixels (its
    training pixels when it has none) whose label the int8 graph keeps from the fp32 one."""
    import onnxruntime as ort

    calibration, has_val = inputs["train"], bool(inputs["val"])
    checked = "val" if has_val else "train"
    checked_word = "validation" if has_val else "training"
    check = inputs[checked]
    # the fp32 graph goes to a short name in a folder of its own: a name derived from ``out`` (itself a temporary
    # name cut to fit 255 bytes beside a long -o) could be too long to make
    with tempfile.TemporaryDirectory(prefix="covseg-int8-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        quantize_network(model, config.data.input_size, calibration, out, fp32)
        fp32_session, int8_session = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                                      for path in (fp32, out))
        agreement = int8_agreement(fp32_session, int8_session, check, inputs.get(f"{checked}_pixels"))
        del fp32_session, int8_session  # close the file before its folder goes
    return {"covseg_precision": "int8", "covseg_int8_agreement": repr(float(agreement)),
            "covseg_int8_checked_on": counted(sum(len(b) for b in check), f"{checked_word} slice")}
