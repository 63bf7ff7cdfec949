"""Static int8 quantization of a covseg network for ONNX Runtime on a CPU.

The network (batch norm folded into its convolutions) is traced to an fp32 ONNX graph and quantized with
ONNX Runtime's static quantizer in QDQ form: weights int8 per output channel, activations uint8 with ranges
calibrated (min-max) on real network inputs — for ``covseg export --int8``, the run's own training slices,
prepared as the Predictor prepares them. The first convolution (which reads the image itself) and the last (which
writes the logits) stay fp32; every other convolution runs as int8 (VNNI on CPUs that have it).
:func:`int8_agreement` measures how many pixels get the same label as the fp32 graph.
"""
from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["quantize_network", "int8_agreement", "fp32_io_nodes"]


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
    """ONNX Runtime's quantizer logs advice at WARNING level through the root logger; keep it off stderr."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
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
        fp32 = Path(tmp) / "fp32.onnx"
        prepared = Path(tmp) / "prepared.onnx"
        write_graph(model.eval(), input_size, str(fp32))
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=fp32_io_nodes(prepared))
        if fp32_out is not None:
            fp32_out.write_bytes(fp32.read_bytes())


def int8_agreement(fp32_session, int8_session, batches: Sequence[np.ndarray]) -> float:
    """Fraction of pixels (over all ``batches``, at the network's input size) whose arg-max label is the same
    under two ONNX Runtime sessions."""
    same = total = 0
    for b in batches:
        feed = {"image": np.ascontiguousarray(b, dtype=np.float32)}
        a = fp32_session.run(["logits"], feed)[0].argmax(1)
        c = int8_session.run(["logits"], feed)[0].argmax(1)
        same += int((a == c).sum())
        total += a.size
    return same / total
