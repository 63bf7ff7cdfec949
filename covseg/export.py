"""ONNX export of a trained model and an ONNX Runtime backend for inference.

The exported graph takes ``image`` ``(B, 1, H, W)`` float32 in [0, 1] (B, H and W dynamic; H and W must be
divisible by ``2**depth``) and returns ``logits`` ``(B, C, H, W)``. The run's config travels inside the
file as metadata (``covseg_config``), so a model of another task or architecture can be refused. The
graph holds the network only: callers outside covseg prepare its input as covseg's Predictor does — normalise
each image first as ``data.normalize`` says (:func:`covseg.intensity.normalize_image`: ``equalize``,
``percentile``), then bring it to ``data.input_size`` square as ``data.resize`` says (``stretch``: resize each
side; ``pad``: scale the longer side, centre, zero-pad, and crop the logits back;
:func:`covseg.transforms.fit_box`).
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covseg.checkpoint import load_model
from covseg.config import RunConfig, config_from_dict, config_to_dict
from covseg.errors import CovsegError
from covseg.fileio import atomic_path

__all__ = ["export_onnx", "OnnxBackend", "onnx_backend_of", "load_onnx", "ONNX_OPSET"]

ONNX_OPSET = 17


def _write_graph(model: torch.nn.Module, input_size: int, target: Any) -> None:
    """Trace ``model`` (eval mode, CPU) into an ONNX graph with dynamic batch, height and width at ``target``
    (a path or a binary file object)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (torch.rand(1, 1, input_size, input_size),), target, dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=ONNX_OPSET,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})


def export_onnx(model_path: Path, out: Path, which: str = "best") -> Path:
    """Export a run folder's (or checkpoint's) model to ONNX at ``out``, atomically."""
    import onnx

    model, config, state = load_model(model_path, which)
    with atomic_path(out) as tmp:
        _write_graph(model, config.data.input_size, str(tmp))
        graph = onnx.load(str(tmp))
        meta = {"covseg_format": "covseg-onnx-1", "covseg_config": json.dumps(config_to_dict(config)),
                "covseg_epoch": str(state.get("epoch"))}
        for key, value in meta.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(tmp))
    return out


def _session(source: str | bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnx_backend_of(model: torch.nn.Module, input_size: int, threads: int = 0) -> OnnxBackend:
    """An ONNX Runtime backend for an in-memory ``model`` (CPU, eval mode), traced at ``input_size`` but
    accepting any batch and any size the model does. ``threads``: ONNX Runtime's intra-op threads (0: its
    default, one per physical core). Nothing is written to disk."""
    buffer = io.BytesIO()
    _write_graph(model.eval(), input_size, buffer)
    return OnnxBackend(_session(buffer.getvalue(), threads))


class OnnxBackend:
    """An ONNX Runtime session as an inference backend (CPU execution provider)."""

    description = "onnxruntime cpu float32"

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(["logits"], {"image": np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)


def load_onnx(path: Path, task: str | None = None, threads: int = 0) -> tuple[OnnxBackend, RunConfig]:
    """Open a covseg ONNX file; ``task``, when given, must match the model's."""
    if not Path(path).is_file():
        raise CovsegError(f"{path}: no such ONNX file; make one with covseg export RUN_DIR -o {path}")
    try:
        session = _session(str(path), threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise CovsegError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:100]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("covseg_format") != "covseg-onnx-1":
        raise CovsegError(f"{path}: not exported by covseg (no covseg metadata); export it with covseg export")
    config = config_from_dict(json.loads(meta["covseg_config"]), source=str(path))
    if task is not None and task != config.data.task:
        raise CovsegError(f"{path}: this model was trained for the {config.data.task} task, not {task}; "
                          f"use --task {config.data.task} or another model")
    return OnnxBackend(session), config
