"""ONNX export of a trained model and an ONNX Runtime backend for inference.

The exported graph takes ``image`` ``(B, 1, H, W)`` float32 in [0, 1] (B, H and W dynamic; H and W must be
divisible by ``2**depth``) and returns ``logits`` ``(B, C, H, W)``. The run's config travels inside the
file as metadata (``covseg_config``), so a model of another task or architecture can be refused. Its
``covseg_checkpoint`` names the checkpoint it came from (``best.pt``, ``last.pt``, ``swa.pt``, ``ema.pt``), so that
``covseg evaluate`` can refuse a ``best.pt`` graph on the validation images that chose it, and
``covseg_checkpoint_sha256`` holds that file's SHA-256 (:func:`covseg.fileio.file_sha256`; of the very bytes
loaded: a file replaced while it is read is refused) and ``covseg_model_sha256`` that of its network's weights
(:func:`model_sha256`, one for ``best.pt`` and ``last.pt`` of one epoch), so that an ensemble naming the
checkpoint and its export, or two exports of it (fp32 and int8 alike), is refused as one network named twice
(:func:`exported_metadata`). The graph holds the network only: callers outside covseg prepare its input as
covseg's Predictor does — normalise each image first as ``data.normalize`` says
(:func:`covseg.intensity.normalize_image`: ``equalize``, ``percentile``), then bring it to ``data.input_size``
square as ``data.resize`` says (``stretch``: resize each side; ``pad``: scale the longer side, centre, zero-pad,
and crop the logits back; :func:`covseg.transforms.fit_box`).

``export_onnx(..., int8=True)`` (``covseg export --int8``) writes the same graph, batch norm folded, quantized
to static int8 (:mod:`covseg.quantize`): ``covseg_precision`` says ``int8``, and ``covseg_int8_agreement`` the share
of the run's validation pixels (``val`` of its split: a ``cv:K`` fold's held-out images; its training pixels when
it has none, as ``covseg_int8_checked_on`` says) whose label the int8 graph keeps from the fp32 one.

More entries make the file stand alone: ``covseg_class_weights`` (JSON list), the run's ``class_weights.json``
weights, so that the classes the model learnt (weight above 0) are known away from its run folder
(:func:`exported_class_weights`); ``covseg_weights_sha256``, the SHA-256 of the graph's initializers
(:func:`weights_sha256`); ``covseg_graph_sha256``, the SHA-256 of the rest of the graph — its nodes and their
attributes (pads, strides, Constant values), inputs and outputs, without the initializers and the metadata
(:func:`graph_sha256`); and ``covseg_metadata_sha256``, the SHA-256 of every other ``covseg_`` entry, the settings
above (:func:`metadata_sha256`). :func:`load_onnx` checks all three, so that a file whose weights, graph or settings
were damaged on disk is refused, not run (a damaged ``covseg_config`` would otherwise run with other settings, such as
another normalisation; a damaged padding, with other logits). Files exported before covseg wrote these entries load
as before: each checksum a file lacks is not checked (one without ``covseg_graph_sha256`` has its weights and
settings checked, one without ``covseg_metadata_sha256`` only its weights, one without all three nothing).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from covseg.checkpoint import find_checkpoint, load_model
from covseg.config import RunConfig, config_from_dict, config_to_dict
from covseg.errors import CovsegError
from covseg.fileio import atomic_path, file_sha256
from covseg.models.shapes import check_input_size
from covseg.wording import agreement_percent  # in __all__ too: where it was first put (session 75)

__all__ = ["export_onnx", "agreement_percent", "exported_from", "exported_class_weights", "exported_metadata",
           "model_sha256", "weights_sha256", "graph_sha256", "metadata_sha256",
           "OnnxBackend", "onnx_backend_of", "ort_session", "load_onnx", "write_graph", "ONNX_OPSET"]

ONNX_OPSET = 17
CHECKSUM_KEYS = ("covseg_weights_sha256", "covseg_graph_sha256", "covseg_metadata_sha256")
"""The metadata entries that hold checksums, and so are left out of :func:`metadata_sha256`."""


def write_graph(model: torch.nn.Module, input_size: int, target: Any) -> None:
    """Trace ``model`` (eval mode, CPU) into an ONNX graph with dynamic batch, height and width at ``target``
    (a path or a binary file object)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(model, (torch.rand(1, 1, input_size, input_size),), target, dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=ONNX_OPSET,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})


def export_onnx(model_path: Path, out: Path, which: str = "auto", int8: bool = False,
                data: str | None = None, force: bool = False) -> dict[str, Any]:
    """Export a run folder's (or checkpoint's) model to ONNX at ``out``, atomically; returns its covseg metadata.

    An existing ``out`` is replaced only with ``force`` (refused before any slow work otherwise).

    ``int8``: quantize it statically (:func:`covseg.quantize.quantize_run`), calibrated on the run's training slices
    (read from ``data``, default: the data the run trained on), and measure how many pixels of the run's validation
    slices get the fp32 graph's label (``covseg_int8_agreement``; its training slices when it has none). Needs a
    run folder.
    """
    if Path(model_path).suffix.lower() == ".onnx":  # told before onnx loads
        raise CovsegError(f"{model_path}: is an ONNX file already; export takes the run folder or .pt checkpoint "
                          "it came from")
    if Path(out).suffix != ".onnx":
        raise CovsegError(f"{out}: export writes an ONNX file; give -o a name ending in .onnx, e.g. "
                          f"{_onnx_name(Path(out))}")
    if os.path.lexists(out) and not force:  # a link too: the rename would replace it
        raise CovsegError(f"{out}: exists; pass --force to replace it or choose another -o")
    _refuse_folder_of_runs(Path(model_path), Path(out))
    import onnx

    from covseg.models import fold_batch_norm

    checkpoint = find_checkpoint(model_path, which)
    model, config, state, sha256 = _load_unchanging(checkpoint)
    meta = {"covseg_format": "covseg-onnx-1", "covseg_config": json.dumps(config_to_dict(config)),
            "covseg_epoch": str(state.get("epoch")), "covseg_checkpoint": checkpoint.name,
            "covseg_checkpoint_sha256": sha256, "covseg_model_sha256": model_sha256(state["model"]),
            "covseg_precision": "float32"}
    if (checkpoint.parent / "class_weights.json").is_file():  # which classes it learnt, for use outside its run
        from covseg.run import read_class_weights

        meta["covseg_class_weights"] = json.dumps(read_class_weights(checkpoint.parent, config.data.task).tolist())
    if int8:  # every refusal and the slices it reads before -o (or a folder for it) is made
        from covseg.quantize import int8_calibration, quantize_run

        run_dir = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
        calibration = int8_calibration(config, run_dir, data)
    tmp: Path | None = None  # atomic_path's temporary file beside -o, once made
    try:
        with atomic_path(out) as tmp:
            if int8:
                meta.update(quantize_run(fold_batch_norm(model), config, calibration, tmp))
            else:
                write_graph(model, config.data.input_size, str(tmp))
            graph = onnx.load(str(tmp))
            meta["covseg_weights_sha256"] = weights_sha256(graph)
            meta["covseg_graph_sha256"] = graph_sha256(graph)  # before the metadata is added: it hashes none
            meta["covseg_metadata_sha256"] = metadata_sha256(meta)
            for key, value in meta.items():
                entry = graph.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.save(graph, str(tmp))
    except OSError as err:  # name -o, not the hidden temporary file beside it that could not be made or written
        # the writer (torch.onnx.export, onnx.save) names no file when it fails on the open one: a full disk, a limit
        if err.filename is not None and Path(os.fsdecode(err.filename)) not in (Path(out), tmp):
            raise
        if err.filename is None or err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise CovsegError(f"{out}: could not be written ({err.strerror or err}); is the disk full? Free space "
                              "there or give -o another folder") from None
        raise CovsegError(f"{out}: cannot write there ({err.strerror or err}); check the path and "
                          "permissions") from None
    return meta


def _load_unchanging(checkpoint: Path) -> tuple[torch.nn.Module, RunConfig, dict[str, Any], str]:
    """:func:`covseg.checkpoint.load_model` of ``checkpoint`` and the SHA-256 of the bytes it loaded, hashed before
    and after the load: a file replaced in between (a training run saving ``best.pt`` or ``last.pt`` again) is
    refused, where its hash would otherwise be recorded for weights it does not hold."""
    before = file_sha256(checkpoint)
    model, config, state = load_model(checkpoint)
    if file_sha256(checkpoint) != before:
        raise CovsegError(f"{checkpoint}: changed while it was read (is a training run still saving it?); export "
                          "again once it is finished")
    return model, config, state, before


def _onnx_name(out: Path) -> Path:
    """A name ending in ``.onnx`` for a refused ``-o`` ``out``: its own with that suffix in place of another
    (``model.pt``: ``model.onnx``; ``model.``: ``model.onnx``), or ``model.onnx`` in its folder for a name that is
    no more than the suffix (``.onnx``, which is a hidden file's name with no suffix)."""
    stem = (out.stem if out.suffix else out.name).rstrip(".")
    return out.parent / ("model.onnx" if stem.lower() in ("", ".onnx") else f"{stem}.onnx")


def _refuse_folder_of_runs(path: Path, out: Path) -> None:
    """Refuse a folder of runs as the model to export, naming one of them: a ``covseg cv`` folder (``fold-K`` runs
    inside; with ``--seeds``, ``seed-S/fold-K``) or another that holds runs (``covseg compare``'s, a run per model).
    One ONNX file holds one network, and :func:`covseg.checkpoint.find_checkpoint` would only say that the folder
    holds no ``best.pt``."""
    if not path.is_dir() or (path / "config.yaml").is_file() or (path / "run.json").is_file():
        return
    runs = sorted((p.parent for p in [*path.glob("fold-*/config.yaml"), *path.glob("seed-*/fold-*/config.yaml"),
                                      *path.glob("*/config.yaml")]),
                  key=lambda p: (len(p.relative_to(path).parts), p.as_posix()))
    if runs:
        kind = "a cross-validation's fold runs" if runs[0].name.startswith("fold-") else "runs"
        raise CovsegError(f"{path}: holds {kind}, not one run, and an ONNX file holds one model; export one of "
                          f"them, e.g. covseg export {runs[0]} -o {out}")


def model_sha256(weights: Mapping[str, torch.Tensor]) -> str:
    """The hex SHA-256 of a checkpoint's network: its ``model`` state dict, each entry in order, its name, dtype,
    shape and bytes. One network saved in two files has one: ``best.pt`` and ``last.pt`` of one epoch (``last.pt``
    also holds the optimizer state, so their file hashes differ). Stored at export as ``covseg_model_sha256``."""
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(graph: Any) -> str:
    """The hex SHA-256 of an ONNX model's (``onnx.ModelProto``'s) weights: each graph initializer in order, its
    name and its raw bytes (``raw_data``; the typed fields' values for one stored without it). fp32 and int8
    graphs alike; stored at export as ``covseg_weights_sha256``."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for tensor in graph.graph.initializer:
        digest.update(tensor.name.encode())
        digest.update(tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes())
    return digest.hexdigest()


def graph_sha256(graph: Any) -> str:
    """The hex SHA-256 of an ONNX model (``onnx.ModelProto``) but for its weights and metadata: a copy with the graph's
    initializers (:func:`weights_sha256`'s part) and the model's metadata entries (:func:`metadata_sha256`'s part,
    and the checksums themselves) cleared, serialised deterministically. It covers the nodes and their attributes
    (a convolution's pads and strides, a Constant's value), the inputs, outputs and opsets, so that such bytes
    damaged on disk are not run silently. Stored at export as ``covseg_graph_sha256``; the same for the model
    ``onnx.load`` reads back, as protobuf parsing and serialising keep every field."""
    import onnx

    rest = onnx.ModelProto()
    rest.CopyFrom(graph)
    del rest.graph.initializer[:]
    del rest.metadata_props[:]
    return hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()


def metadata_sha256(meta: dict[str, str]) -> str:
    """The hex SHA-256 of a covseg ONNX file's settings: its metadata entries ``meta`` whose keys start with
    ``covseg_``, but for the checksums (:data:`CHECKSUM_KEYS`), sorted by key, as the UTF-8 bytes of a JSON list of
    ``[key, value]`` pairs. Stored at export as ``covseg_metadata_sha256``."""
    entries = sorted([key, value] for key, value in meta.items()
                     if key.startswith("covseg_") and key not in CHECKSUM_KEYS)
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def exported_from(path: Path) -> str | None:
    """The checkpoint file name (``best.pt``, ``last.pt``, ``swa.pt``, ``ema.pt``) a covseg ONNX file was exported
    from (its ``covseg_checkpoint`` metadata); None for a file that does not say (exported before covseg recorded
    it) or cannot be read."""
    return _metadata(path).get("covseg_checkpoint")


def exported_metadata(path: Path) -> dict[str, str]:
    """A covseg ONNX file's metadata entries (``covseg_checkpoint``, ``covseg_checkpoint_sha256``,
    ``covseg_weights_sha256``, ...; see the module's notes), unchecked; empty for a file that cannot be read
    (:func:`load_onnx` reports those)."""
    return _metadata(path)


def _metadata(path: Path) -> dict[str, str]:
    """A covseg ONNX file's metadata entries; empty for a file that cannot be read (load_onnx reports those)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises several types for unreadable files
        return {}
    return {entry.key: entry.value for entry in graph.metadata_props}


def exported_class_weights(path: Path) -> list[float] | None:
    """The class weights of the run a covseg ONNX file was exported from (its ``covseg_class_weights`` metadata;
    0 for a class absent from the training masks, one it never learnt); None for a file that does not say
    (exported before covseg recorded them, or from a checkpoint kept alone) or cannot be read."""
    value = _metadata(path).get("covseg_class_weights")
    if value is None:
        return None
    try:
        parsed = json.loads(value)
        if not isinstance(parsed, list):
            raise TypeError("not a list")
        weights = [float(w) for w in parsed]
    except (ValueError, TypeError):
        raise CovsegError(f"{path}: its covseg_class_weights metadata is damaged (not a JSON list of numbers); "
                          "export the run again with covseg export") from None
    if not all(np.isfinite(weights)):
        raise CovsegError(f"{path}: its covseg_class_weights metadata is damaged (weights that are not finite "
                          "numbers); export the run again with covseg export")
    return weights


def ort_session(source: str | bytes, threads: int) -> Any:
    """An ONNX Runtime CPU session of ``source`` (a path or the serialised model) with ``threads`` intra-op threads
    (0: ONNX Runtime's default, one per physical core)."""
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
    write_graph(model.eval(), input_size, buffer)
    return OnnxBackend(ort_session(buffer.getvalue(), threads), depth=getattr(model, "depth", None))


class OnnxBackend:
    """An ONNX Runtime session as an inference backend (CPU execution provider).

    Called with images ``(B, 1, H, W)`` float, returns logits ``(B, C, H, W)``; with ``depth`` (the network's
    down-steps, from the file's config) H and W must be multiples of ``2**depth``, as for the torch models. A
    wrong shape is refused as a :class:`CovsegError`, not an ONNX Runtime exception."""

    def __init__(self, session: Any, int8: bool = False, agreement: float | None = None,
                 depth: int | None = None, exported_from: str | None = None, epoch: int | None = None) -> None:
        self.session = session
        self.exported_from = exported_from
        """The checkpoint file name the graph was exported from (``covseg_checkpoint``), where the file says."""
        self.epoch = epoch
        """That checkpoint's epoch (``covseg_epoch``), where the file records a whole number."""
        self.depth = depth
        self.int8 = int8
        """Whether the graph is static int8 (``covseg export --int8``), which runs in no other precision."""
        self.description = "onnxruntime cpu int8 (static QDQ)" if int8 else "onnxruntime cpu float32"
        self.agreement = agreement
        """For an int8 file: the share of pixels whose label it kept from fp32 at export."""

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, C, H, W)`` of ``(B, 1, H, W)`` images; ``pixels`` is ignored (the graph runs in the one
        precision it was saved in)."""
        if x.ndim != 4 or x.shape[1] != 1:
            raise CovsegError(f"the ONNX model takes images of shape (B, 1, H, W), got {tuple(x.shape)}")
        if self.depth is not None:
            check_input_size(x.shape[-2], x.shape[-1], self.depth, "the ONNX model")
        out = self.session.run(["logits"], {"image": np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)


def load_onnx(path: Path, task: str | None = None, threads: int = 0) -> tuple[OnnxBackend, RunConfig]:
    """Open a covseg ONNX file; ``task``, when given, must match the model's."""
    if not Path(path).is_file():
        raise CovsegError(f"{path}: no such ONNX file; make one with covseg export RUN_DIR -o {path}")
    try:
        data = Path(path).read_bytes()  # read once: the session and the weights check both parse these bytes
        session = ort_session(data, threads)
    except Exception as err:  # onnxruntime raises its own exception types
        raise CovsegError(f"{path}: not a readable ONNX model ({str(err).splitlines()[0][:100]}); export the run "
                          f"again with covseg export RUN_DIR -o {path}") from None
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("covseg_format") != "covseg-onnx-1":
        raise CovsegError(f"{path}: not exported by covseg (no covseg metadata); export it with covseg export")
    # files exported before covseg stored it have their weights checked only (below)
    if "covseg_metadata_sha256" in meta and meta["covseg_metadata_sha256"] != metadata_sha256(meta):
        raise CovsegError(f"{path}: is damaged: its settings do not match the checksum stored at export; export it "
                          "again with covseg export")
    try:
        config = config_from_dict(json.loads(meta["covseg_config"]), source=str(path))
    except (KeyError, ValueError):
        raise CovsegError(f"{path}: its covseg_config metadata is missing or not JSON; export the run again with "
                          f"covseg export RUN_DIR -o {path}") from None
    except CovsegError as err:  # valid JSON but not a config (a list, a bad value): say how to get a good one
        raise CovsegError(f"{err}; export the run again with covseg export RUN_DIR -o {path}") from None
    if task is not None and task != config.data.task:
        raise CovsegError(f"{path}: this model was trained for the {config.data.task} task, not {task}; "
                          f"use --task {config.data.task} or another model")
    _check_graph(session, config, path)
    _check_weights(path, data, meta)
    epoch = meta.get("covseg_epoch", "")
    return OnnxBackend(session, meta.get("covseg_precision") == "int8", _agreement(meta), config.model.depth,
                       meta.get("covseg_checkpoint"), int(epoch) if epoch.isdigit() else None), config


def _check_weights(path: Path, data: bytes, meta: dict[str, str]) -> None:
    """Refuse the file at ``path`` (its bytes ``data``, its metadata ``meta``) if its weights or the rest of its graph
    are not those it was exported with (``covseg_weights_sha256``, ``covseg_graph_sha256``): bytes changed on disk or
    in a copy would otherwise run as a silently wrong model. A checksum the file does not hold (exported before
    covseg stored it) is not checked."""
    import onnx

    checks = [(key, part, function) for key, part, function in
              (("covseg_weights_sha256", "weights", weights_sha256), ("covseg_graph_sha256", "graph", graph_sha256))
              if key in meta]
    if not checks:
        return
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # onnx raises several types for files it cannot parse
        model = None
    for key, part, function in checks:
        if model is None or function(model) != meta[key]:
            verb = "do" if part == "weights" else "does"
            raise CovsegError(f"{path}: is damaged: its {part} {verb} not match the checksum stored at export; "
                              "export it again with covseg export")


def _check_graph(session: Any, config: RunConfig, path: Path) -> None:
    """Refuse a graph that is not covseg's network for ``config``: one input ``image`` of 1 channel and an output
    ``logits`` with one channel per class of the config's task."""
    from covseg.labels import get_scheme

    inputs, outputs = session.get_inputs(), {o.name: o for o in session.get_outputs()}
    if [i.name for i in inputs] != ["image"] or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 1 \
            or "logits" not in outputs:
        found = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise CovsegError(f"{path}: its graph is not a covseg network (input {found}, outputs "
                          f"{', '.join(outputs)}; covseg's take image [batch, 1, height, width] and give logits); "
                          "export the run again with covseg export")
    classes = get_scheme(config.data.task).num_classes
    channels = outputs["logits"].shape[1] if len(outputs["logits"].shape) == 4 else None
    if isinstance(channels, int) and channels != classes:
        raise CovsegError(f"{path}: its graph gives {channels} channels but its config's {config.data.task} task has "
                          f"{classes} classes; export the run again with covseg export")


def _agreement(meta: dict[str, str]) -> float | None:
    """An int8 file's export-time agreement with fp32 (``covseg_int8_agreement``), if it holds a readable one."""
    try:
        return float(meta["covseg_int8_agreement"])
    except (KeyError, ValueError):
        return None
