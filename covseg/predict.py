"""Apply a trained model to image files: label maps at each input's size, overlays, class fractions.

Outputs in ``OUT``:
    ``<stem>.png``            label map, pixel value = class id (uint8), the input's own size
    ``<stem>.nii.gz``         for NIfTI input instead: the label map with the input's affine and shape
    ``overlays/<stem>.png``   RGB overlay of the prediction on the image
    ``predictions.json``      per image: size and each class's pixel fraction
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from covseg import __version__
from covseg.checkpoint import find_checkpoint, load_model
from covseg.config import RunConfig
from covseg.datasets import read_image
from covseg.errors import CovsegError
from covseg.fileio import atomic_path, atomic_write_text
from covseg.figures import overlay
from covseg.inference import Predictor, TorchBackend
from covseg.labels import LabelScheme
from covseg.runtime import resolve_device, resolve_precision

__all__ = ["open_predictor", "predict_files", "output_stem", "write_label_nifti"]


def open_predictor(model_path: Path, task: str | None = None, which: str = "best", backend: str = "auto",
                   device: str = "cpu", precision: str = "auto", batch_size: int = 8,
                   flip_tta: bool = False) -> tuple[Predictor, RunConfig, dict[str, Any]]:
    """A :class:`Predictor` for a run folder, checkpoint or covseg ONNX file.

    ``backend``: ``torch``, ``onnx`` (needs a ``.onnx`` file from ``covseg export``) or ``auto`` (by the
    file's suffix). Returns the predictor, the model's run config and a description for reports.
    """
    is_onnx = Path(model_path).suffix == ".onnx"
    if backend == "auto":
        backend = "onnx" if is_onnx else "torch"
    if backend == "onnx":
        from covseg.export import load_onnx

        if not is_onnx:
            raise CovsegError(f"{model_path}: --backend onnx needs a .onnx file; make one with "
                              f"covseg export {model_path} -o model.onnx")
        onnx_backend, config = load_onnx(Path(model_path), task)
        info = {"file": str(model_path), "backend": onnx_backend.description}
        predictor = Predictor(onnx_backend, config.data.input_size, batch_size, flip_tta)
    elif backend == "torch":
        if is_onnx:
            raise CovsegError(f"{model_path}: an ONNX file runs with --backend onnx (or auto)")
        checkpoint = find_checkpoint(model_path, which)
        model, config, state = load_model(checkpoint, task=task)
        dev = resolve_device(device)
        torch_backend = TorchBackend(model, dev, resolve_precision(precision, dev))
        info = {"file": str(checkpoint), "epoch": state.get("epoch"), "backend": torch_backend.description}
        predictor = Predictor(torch_backend, config.data.input_size, batch_size, flip_tta)
    else:
        raise CovsegError(f"unknown backend {backend!r}: use torch, onnx or auto")
    info.update({"name": config.model.name, "recipe": config.recipe, "task": config.data.task,
                 "covseg": __version__, "flip_tta": flip_tta})
    return predictor, config, info


def output_stem(path: Path) -> str:
    """File name without its image extension(s): ``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``."""
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def write_label_nifti(labels: np.ndarray, reference: Path, out: Path) -> None:
    """Save ``(H, W)`` labels as NIfTI in ``reference``'s geometry (affine, shape; rows = y, cols = x)."""
    ref = nib.load(str(reference))
    data = labels.T.astype(np.uint8)  # (H, W) rows=y -> nibabel (x, y)
    data = data.reshape(ref.shape)
    img = nib.Nifti1Image(data, ref.affine, header=ref.header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    with atomic_path(out) as tmp:
        nib.save(img, str(tmp))


def predict_files(predictor: Predictor, scheme: LabelScheme, files: Sequence[Path], out_dir: Path,
                  model_info: dict[str, Any], overlays: bool = True, progress: bool = True) -> dict[str, Any]:
    """Predict every file, writing outputs atomically; returns the ``predictions.json`` content."""
    if not files:
        raise CovsegError("no input images; give image files or folders")
    stems = [output_stem(f) for f in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CovsegError(f"several inputs would write {dupes[0]}.png; give inputs distinct file names")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = tqdm(total=len(files), desc="predict", unit="image", disable=not progress, dynamic_ncols=True)
    step = predictor.batch_size
    for start in range(0, len(files), step):
        chunk = list(files[start:start + step])
        images = [read_image(f) for f in chunk]
        for path, stem, image, probs in zip(chunk, stems[start:start + step], images, predictor(images)):
            labels = probs.argmax(0).astype(np.uint8)
            is_nifti = path.name.lower().endswith((".nii", ".nii.gz"))
            target = out_dir / (f"{stem}.nii.gz" if is_nifti else f"{stem}.png")
            if is_nifti:
                write_label_nifti(labels, path, target)
            else:
                with atomic_path(target) as tmp:
                    Image.fromarray(labels, mode="L").save(tmp, format="PNG")
            if overlays:
                with atomic_path(out_dir / "overlays" / f"{stem}.png") as tmp:
                    Image.fromarray(overlay(image, labels, scheme)).save(tmp, format="PNG")
            counts = np.bincount(labels.ravel(), minlength=scheme.num_classes)
            records.append({"input": str(path), "output": target.name, "height": int(labels.shape[0]),
                            "width": int(labels.shape[1]),
                            "fractions": {n: round(float(c) / labels.size, 6)
                                          for n, c in zip(scheme.names, counts)}})
            bar.update(1)
    bar.close()
    summary = {"model": model_info, "task": scheme.task, "labels": dict(enumerate(scheme.names)),
               "images": records}
    atomic_write_text(out_dir / "predictions.json", json.dumps(summary, indent=1) + "\n")
    return summary
