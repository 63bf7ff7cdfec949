"""Apply a trained model to image files: label maps at each input's size, overlays, class fractions.

Outputs in ``OUT``:
    ``<stem>.png``            label map, pixel value = class id (uint8), the input's own size (a DICOM slice's in its
                              stored pixel order, as a viewer shows it, whatever its ImageOrientationPatient)
    ``<stem>.nii.gz``         for NIfTI input instead: the label map with the input's affine and shape
    ``overlays/<stem>.png``   RGB overlay of the prediction on the image
    ``predictions.json``      per image: size and each class's pixel fraction
"""
from __future__ import annotations

import errno
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from covseg import __version__
from covseg.checkpoint import find_checkpoint, load_model
from covseg.config import RunConfig
from covseg.datasets import DICOM_SUFFIXES, dicom_view_to_stored, read_image
from covseg.dicom import looks_like_dicom
from covseg.errors import CovsegError
from covseg.fileio import (NAME_MAX, atomic_path, check_output_folder, folders_made_for, interrupts_deferred,
                           staging_folder, sync_path, sync_tree)
from covseg.inference import EnsemblePredictor, LesionTypePredictor, Predictor, TorchBackend, backends_used
from covseg.intensity import LUNG_WINDOW
from covseg.labels import LabelScheme, class_title, overlay
from covseg.paired import by_number, fold_runs, seed_ensemble_beside
from covseg.progress import progress_bar
from covseg.run import read_class_weights, read_run_config
from covseg.runtime import resolve_device, resolve_precision
from covseg.volumes import quiet_file_readers, view_to_nifti_slice

__all__ = ["ONNX_MIN_SLICES", "SCAN_OUTPUTS", "open_predictor", "open_ensemble", "open_models", "ensemble_members", "describe_after_use",
           "predict_files", "check_file_outputs", "check_destinations", "predict_scan", "scan_summary", "earlier_scan",
           "check_same_scan", "check_scan_not_overwritten", "is_scan", "output_stem",
           "label_name", "pixel_fraction", "write_label_nifti"]


ONNX_MIN_SLICES = 32
"""With ``--backend auto``, the fewest slice passes (slices, twice that with ``--tta``) for which a checkpoint's fp32
passes on a CPU go through ONNX Runtime. Tracing the model into ONNX first (importing ``onnx``, exporting, opening
the session) costs about 1.7 s, which a few slices do not win back: ``covseg predict`` of a default multiclass model on 1 / 8 / 16 / 32 / 64 / 100
COVID-SemiSeg slices took 6.7 / 7.6 / 9.5 / 11.9 / 14.9 / 17.5 s with ONNX Runtime against 3.9 / 6.3 / 9.1 / 12.7 /
17.5 / 20.1 s in PyTorch (medians of 3, the engines alternating, on a 2-core AVX2 EPYC beside other work, session 71;
``benchmarks/predict_engine.py``, benchmarks/RESULTS.md)."""


def open_predictor(model_path: Path, task: str | None = None, which: str = "auto", backend: str = "auto",
                   device: str = "cpu", precision: str = "auto", batch_size: int = 8,
                   flip_tta: bool = False, slices: int | None = None) -> tuple[Predictor, RunConfig, dict[str, Any]]:
    """A :class:`Predictor` for a run folder, checkpoint or covseg ONNX file.

    ``backend``: ``torch``, ``onnx`` (needs a ``.onnx`` file from ``covseg export``) or ``auto``: an ONNX
    file runs in ONNX Runtime; a checkpoint runs in PyTorch, except that its fp32 passes on a CPU (``--precision
    fp32``, or bf16 refused by the agreement check) run through ONNX Runtime, the faster fp32 engine there
    (:class:`TorchBackend`'s ``fp32_engine``), unless ``slices`` (how many slices the predictor will segment,
    where the caller knows; twice as many passes with ``flip_tta``) makes fewer passes than
    :data:`ONNX_MIN_SLICES`. ``torch`` keeps every pass in PyTorch. Returns the
    predictor, the model's run config and a description for reports.
    """
    suffix = Path(model_path).suffix
    if suffix.lower() == ".onnx" and suffix != ".onnx":  # else read as a checkpoint: "not a readable checkpoint"
        raise CovsegError(f"{model_path}: covseg knows ONNX files by the suffix .onnx in lower case (as covseg export "
                          f"writes them); rename it to {Path(model_path).with_suffix('.onnx')}")
    is_onnx = suffix == ".onnx"
    auto = backend == "auto"
    if auto:
        backend = "onnx" if is_onnx else "torch"
    if backend == "onnx":
        from covseg.export import load_onnx

        if not is_onnx:
            raise CovsegError(f"{model_path}: --backend onnx needs a .onnx file; make one with "
                              f"covseg export {model_path} -o model.onnx")
        if device == "cuda" or precision == "bf16":  # ONNX Runtime runs covseg's graphs on the CPU, as exported
            asked = "--device cuda" if device == "cuda" else "--precision bf16"
            raise CovsegError(f"{model_path}: an ONNX model runs on the CPU in the precision it was exported in, so "
                              f"{asked} cannot apply; drop it, or give the run folder to run it in PyTorch")
        onnx_backend, config = load_onnx(Path(model_path), task)
        if onnx_backend.int8 and precision == "fp32":  # its covseg_precision says int8: it has no fp32 weights
            raise CovsegError(f"{model_path}: an int8 ONNX model (covseg export --int8) runs in int8 only, so "
                              "--precision fp32 cannot apply; drop it, or use an fp32 export or the run folder")
        find_checkpoint(model_path, which)  # the file as it is: a --checkpoint naming another is refused
        # which checkpoint, at which epoch, the graph holds: as a checkpoint's report says (its file and epoch)
        info = {"file": str(model_path), "exported_from": onnx_backend.exported_from, "epoch": onnx_backend.epoch,
                "backend": onnx_backend.description}
        if onnx_backend.agreement is not None:
            info["int8_agreement"] = onnx_backend.agreement  # the share of pixels whose fp32 label it kept at export
        predictor = Predictor(onnx_backend, config.data.input_size, batch_size, flip_tta, config.data.normalize,
                              config.data.resize)
    elif backend == "torch":
        if is_onnx:
            raise CovsegError(f"{model_path}: an ONNX file runs with --backend onnx (or auto)")
        checkpoint = find_checkpoint(model_path, which)
        model, config, state = load_model(checkpoint, task=task)
        dev = resolve_device(device)
        passes = None if slices is None else slices * (2 if flip_tta else 1)  # a flipped pass more per slice
        few = passes is not None and passes < ONNX_MIN_SLICES  # tracing would cost more than it saves
        fp32_engine = "onnxruntime" if auto and dev.type == "cpu" and not few else "torch"
        torch_backend = TorchBackend(model, dev, resolve_precision(precision, dev), fp32_engine, name=str(checkpoint))
        info = {"file": str(checkpoint), "epoch": state.get("epoch"), "backend": torch_backend.description}
        predictor = Predictor(torch_backend, config.data.input_size, batch_size, flip_tta, config.data.normalize,
                              config.data.resize)
    else:
        raise CovsegError(f"unknown backend {backend!r}: use torch, onnx or auto")
    info.update({"name": config.model.name, "recipe": config.recipe, "task": config.data.task,
                 "covseg": __version__, "flip_tta": flip_tta, "types_only": config.train.types_only})
    return predictor, config, info


def ensemble_members(model_paths: Sequence[Path]) -> list[Path]:
    """Expand each path: a cross-validation folder (``covseg cv`` output) becomes its ``fold-K`` runs, in fold
    order; a run folder, checkpoint or ONNX file stays itself.

    A cross-validation folder must be complete: every one of its ``data.folds`` folds trained and scored
    (``fold-K/eval-heldout/metrics.json``), so a folder still training is not taken for a smaller ensemble.
    """
    members: list[Path] = []
    for path in map(Path, model_paths):
        if not path.exists():
            raise CovsegError(f"{path}: no such model file or folder")
        folds = fold_runs(path)  # in fold order
        seeds = sorted((p.name for p in path.glob("seed-*") if p.is_dir()), key=by_number)
        if path.is_dir() and not folds and not (path / "config.yaml").is_file() and seeds:
            raise CovsegError(f"{path}: a covseg cv --seeds folder; name its cross-validations ({', '.join(seeds)}) "
                              f"or fold runs one by one, e.g. {path / seeds[0]}")
        if not folds and (beside := seed_ensemble_beside(path)):  # `covseg cv --seeds`'s ensemble/: no models
            raise CovsegError(f"{path}: a covseg cv --seeds folder's seed-ensemble reports, not models; evaluate its "
                              f"members together, e.g. covseg evaluate {' '.join(str(p / 'fold-0') for p in beside)} "
                              "-o OUT")
        if not path.is_dir() or (path / "config.yaml").is_file() or not folds:
            members.append(path)
            continue
        expected = read_run_config(folds[0]).data.folds
        unfinished = [p.name for p in folds if not (p / "eval-heldout" / "metrics.json").is_file()]
        if len(folds) != expected or unfinished:
            raise CovsegError(f"{path}: a {expected}-fold cross-validation with {len(folds)} fold folders"
                              f"{', unfinished: ' + ', '.join(unfinished) if unfinished else ''}; finish it with "
                              "covseg cv (it resumes), or name the finished fold runs one by one")
        members.extend(folds)
    return members


def open_ensemble(model_paths: Sequence[Path], task: str | None = None, which: str = "auto", backend: str = "auto",
                  device: str = "cpu", precision: str = "auto", batch_size: int = 8, flip_tta: bool = False,
                  slices: int | None = None) -> tuple[Predictor | EnsemblePredictor, RunConfig, dict[str, Any]]:
    """:func:`open_predictor` for one model; for several (or a cross-validation folder, see
    :func:`ensemble_members`) an :class:`EnsemblePredictor` that averages their probabilities. ``slices``: as for
    :func:`open_predictor`.

    Members must share the label scheme and the CT window their images are read with. Returns the
    predictor, the first member's config and a description whose ``members`` lists every member's.
    """
    paths = ensemble_members(model_paths)
    if len(paths) == 1:
        return open_predictor(paths[0], task, which, backend, device, precision, batch_size, flip_tta, slices)
    opened = [open_predictor(p, task, which, backend, device, precision, batch_size, flip_tta, slices) for p in paths]
    config = opened[0][1]
    for path, (_, other, _) in zip(paths[1:], opened[1:]):
        if other.data.task != config.data.task:
            raise CovsegError(f"{path} predicts {other.data.task} labels but {paths[0]} predicts "
                              f"{config.data.task}; an ensemble needs models of one task")
        if other.data.window != config.data.window:
            raise CovsegError(f"{path} reads images with CT window {other.data.window} but {paths[0]} with "
                              f"{config.data.window}; an ensemble needs models that read images alike")
    _refuse_one_checkpoint_twice(paths, [info for _, _, info in opened])
    members = [info for _, _, info in opened]
    info = {"name": "ensemble of " + ", ".join(sorted({m["name"] for m in members})), "recipe": config.recipe,
            "task": config.data.task, "covseg": __version__, "flip_tta": flip_tta, "file": members[0]["file"],
            "backend": ", ".join(sorted({m["backend"] for m in members})), "members": members,
            "types_only": any(m["types_only"] for m in members)}
    return EnsemblePredictor([p for p, _, _ in opened]), config, info


def _refuse_one_checkpoint_twice(paths: Sequence[Path], infos: Sequence[dict[str, Any]]) -> None:
    """Refuse ensemble members (``paths``, each opened into ``infos``) that are one file: a run folder and the
    checkpoint it resolves to (``RUN`` and ``RUN/best.pt``), which would average a model with itself."""
    seen: dict[Path, Path] = {}
    for path, info in zip(paths, infos):
        file = Path(info["file"]).resolve()
        if file in seen:
            raise CovsegError(f"{seen[file]} and {path} are one model ({info['file']}); an ensemble of a model with "
                              "itself is that model: name it once")
        seen[file] = path


def open_models(model_paths: Sequence[Path], lesion_paths: Sequence[Path] | None = None, task: str | None = None,
                which: str = "auto", backend: str = "auto", device: str = "cpu", precision: str = "auto",
                batch_size: int = 8, flip_tta: bool = False, slices: int | None = None
                ) -> tuple[Predictor | EnsemblePredictor | LesionTypePredictor, RunConfig, dict[str, Any]]:
    """:func:`open_ensemble` of ``model_paths``; with ``lesion_paths`` (binary models), a
    :class:`~covseg.inference.LesionTypePredictor` that takes where the lesion is from them and its type from
    the multiclass ``model_paths``. Returns the predictor, the multiclass config and a description whose
    ``lesion_model`` describes the binary side. ``slices``: as for :func:`open_predictor`."""
    predictor, config, info = open_ensemble(model_paths, task, which, backend, device, precision, batch_size, flip_tta,
                                            slices)
    if not lesion_paths:
        if info["types_only"]:
            raise CovsegError(f"{', '.join(map(str, model_paths))}: a model that learnt lesion types only "
                              "(train.types_only), not where lesions are, needs --lesion-model BINARY_MODEL")
        return predictor, config, info
    check_type_model_task(model_paths[0], config.data.task)
    lesion, lesion_config, lesion_info = open_ensemble(lesion_paths, None, which, backend, device, precision,
                                                      batch_size, flip_tta, slices)
    check_lesion_task(lesion_paths[0], lesion_config.data.task)
    if lesion_config.data.window != config.data.window:
        raise CovsegError(f"--lesion-model {lesion_paths[0]} reads images with CT window {lesion_config.data.window} "
                          f"but {model_paths[0]} with {config.data.window}; use models that read images alike")
    info = {**info, "name": f"{info['name']} typing the lesions of {lesion_info['name']}", "lesion_model": lesion_info}
    return LesionTypePredictor(lesion, predictor, learnt_lesion_classes(info)), config, info


def check_type_model_task(path: Path, task: str) -> None:
    """Refuse a model (at ``path``) whose ``task`` is not multiclass as the one typing a ``--lesion-model``'s lesions."""
    if task != "multiclass":
        raise CovsegError(f"--lesion-model types lesions with a multiclass model, but {path} predicts {task} labels; "
                          "pass a multiclass model as the model")


def check_lesion_task(path: Path, task: str) -> None:
    """Refuse a ``--lesion-model`` (at ``path``) whose ``task`` is not binary."""
    if task != "binary":
        raise CovsegError(f"--lesion-model {path} predicts {task} labels; it must be a binary (lesion / background) "
                          "model")


def describe_after_use(info: dict[str, Any], predictor: Predictor | EnsemblePredictor | LesionTypePredictor
                       ) -> dict[str, Any]:
    """``info`` from :func:`open_models` (or :func:`open_ensemble`, :func:`open_predictor`) with every ``backend``
    entry (the whole model's, each ensemble member's, the lesion model's) read again from ``predictor`` after
    use: a bf16 backend whose labels disagreed with fp32 has switched to fp32 since the model was opened."""
    if isinstance(predictor, LesionTypePredictor):
        types = describe_after_use({k: v for k, v in info.items() if k != "lesion_model"}, predictor.types)
        return {**types, "lesion_model": describe_after_use(info["lesion_model"], predictor.lesion),
                "backend": backends_used(predictor)}
    if isinstance(predictor, EnsemblePredictor):
        members = [describe_after_use(m, p) for m, p in zip(info["members"], predictor.members)]
        return {**info, "members": members, "backend": backends_used(predictor)}
    return {**info, "backend": backends_used(predictor)}


def learnt_lesion_classes(info: dict[str, Any]) -> list[int] | None:
    """The foreground classes a model (or any member of an ensemble) saw in training: those whose weight in its
    run's class weights is not 0 — for an ONNX file those it carries (``covseg_class_weights``, written at export),
    else its run folder's ``class_weights.json``. ``None`` when a model has neither (an ONNX file exported before
    covseg recorded them and kept outside its run, a checkpoint kept alone), since then nothing says so."""
    from covseg.export import exported_class_weights

    learnt: set[int] = set()
    for member in info.get("members", [info]):
        file = Path(member["file"])
        weights = exported_class_weights(file) if file.suffix == ".onnx" else None
        if weights is None:
            if not (file.parent / "class_weights.json").is_file():
                return None
            weights = read_class_weights(file.parent, member.get("task"))
        learnt.update(c for c, w in enumerate(weights) if c > 0 and w > 0)
    return sorted(learnt) or None


def pixel_fraction(count: int, total: int) -> float:
    """``count / total`` (``0 <= count <= total``, ``total > 0``) as ``predictions.json`` gives each class's share of
    an image: 6 significant digits, or as many more as it takes for a class on some pixels not to read as 0 nor one
    on all but some as 1 (6 decimals made 1 pixel of 2048 x 2048, 2.4e-7, 0.0, as if the class were absent)."""
    share = count / total
    for digits in range(6, 18):
        shown = float(f"{share:.{digits}g}")
        if (shown == 0.0) == (count == 0) and (shown == 1.0) == (count == total):
            return shown
    return share


def output_stem(path: Path) -> str:
    """File name without its image extension(s): ``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``; a folder's own name
    whole (``1.2.840.5`` stays ``1.2.840.5``; ``.`` is the current folder's name)."""
    if path.is_dir():
        return path.resolve().name
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def write_label_nifti(labels: np.ndarray, reference: Path, out: Path) -> None:
    """Save ``(H, W)`` labels of :func:`covseg.datasets.read_image`'s view of the NIfTI slice ``reference`` in its
    geometry (affine, shape, voxel order), so that they overlay it."""
    ref = nib.load(str(reference))
    data = view_to_nifti_slice(labels, ref.affine).astype(np.uint8)  # the view -> the file's (x, y)
    data = data.reshape(ref.shape)
    img = nib.Nifti1Image(data, ref.affine, header=ref.header)
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1, 0)
    img.header["cal_min"], img.header["cal_max"] = 0, 0  # the CT's display range means nothing for labels
    with atomic_path(out) as tmp:
        nib.save(img, str(tmp))


def _stage_dir(out_dir: Path) -> Path:
    """:func:`covseg.fileio.staging_folder` of ``out_dir``, refused in one line where it cannot be made."""
    try:
        return staging_folder(out_dir)
    except OSError as err:
        raise CovsegError(f"{err.filename}: cannot write there ({err.strerror}); check the path and "
                          "permissions") from None


def check_destinations(out_dir: Path, outputs: Iterable[str | os.PathLike]) -> None:
    """Refuse, in one line, outputs (paths relative to ``out_dir``) that could not be moved into place: a folder
    one goes in (``out_dir`` or one below it) is a file, or the output's own path is a folder. Checked before any
    output is moved, so that ``out_dir`` is never left with some outputs new and the others old."""
    for output in outputs:
        dst = out_dir / output
        for folder in [out_dir / p for p in reversed(Path(output).parents)]:  # out_dir first, dst's parent last
            if os.path.lexists(folder) and not folder.is_dir():
                raise CovsegError(f"{folder}: is a file where covseg writes a folder of outputs; remove it or choose "
                                  "another output folder")
        if dst.is_dir() and not dst.is_symlink():
            raise CovsegError(f"{dst}: is a folder where covseg writes an output file; remove it or choose another "
                              "output folder")


def _publish(stage: Path, out_dir: Path, stale: Sequence[str] = ()) -> None:
    """Move every file under ``stage`` to the same place under ``out_dir``: all of them or, where a destination
    is blocked (:func:`check_destinations`), none; then delete the files ``stale`` names (paths relative to
    ``out_dir``; where they are files), outputs of an earlier run that the new ones leave wrong. Ctrl-C waits until
    the last is moved and deleted. The staged files are synced to the disk before the renames that name them, and
    the folders renamed into after them (:func:`covseg.fileio.sync_tree`), so a crash cannot leave an output that
    is named but empty."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    check_destinations(out_dir, [src.relative_to(stage) for src in files])
    sync_tree(stage)  # the data on the disk before the renames that name them
    touched: set[Path] = set()
    with interrupts_deferred():
        for src in files:
            dst = out_dir / src.relative_to(stage)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            touched.update(out_dir / part for part in [*src.relative_to(stage).parents])  # up to out_dir itself
        for name in stale:
            old = out_dir / name
            if old.is_file() and not old.is_symlink():
                old.unlink()
                touched.add(old.parent)
    for folder in sorted(touched, key=lambda f: len(f.parts), reverse=True):  # the renames themselves, deepest first
        sync_path(folder)
    if out_dir.parent != out_dir:
        sync_path(out_dir.parent)  # out_dir itself may have been made for these files


def label_name(path: Path, stem: str | None = None) -> str:
    """The label map's file name for input ``path`` (output stem ``stem``, by default :func:`output_stem`'s): NIfTI
    for a NIfTI slice, else PNG."""
    stem = output_stem(path) if stem is None else stem
    return f"{stem}.nii.gz" if path.name.lower().endswith((".nii", ".nii.gz")) else f"{stem}.png"


def check_file_outputs(files: Sequence[Path], out_dir: Path, overlays: bool = True
                       ) -> tuple[list[str], list[str], list[str]]:
    """What :func:`predict_files` checks before any input is read: inputs there are, label map names a file system
    takes (at most 255 bytes: a NIfTI slice ``a.nii`` gets ``a.nii.gz``, 3 bytes more), distinct output names, no input
    overwritten by a prediction, no destination blocked (:func:`check_destinations`). Refused in one line; returns
    each file's output stem, label map name and (with ``overlays``) overlay path."""
    if not files:
        raise CovsegError("no input images; give image files or folders")
    stems = [output_stem(f) for f in files]
    names = [label_name(f, stem) for f, stem in zip(files, stems)]
    for path, stem, name in zip(files, stems, names):  # a.nii's a.nii.gz: 3 bytes more; an overlay is never longer
        size = len(os.fsencode(name))
        if size > NAME_MAX:  # else it fails once predicted, when the label map is written
            room = NAME_MAX - size + len(os.fsencode(stem))
            raise CovsegError(f"{path}: its label map, named as the file with {name[len(stem):]}, would have a name of "
                              f"{size} bytes, more than the {NAME_MAX} a file name may have; rename the file (or copy "
                              f"it) to a shorter name, at most {room} bytes before its extension")
    drawn = [f"overlays/{stem}.png" for stem in stems] if overlays else []
    dupes = (sorted(n for n, k in Counter(names).items() if k > 1)  # Counter: a folder of thousands is checked at once
             or sorted(n for n, k in Counter(drawn).items() if k > 1))
    if dupes:
        raise CovsegError(f"several inputs would write {dupes[0]}; give inputs distinct file names")
    inputs = {f.resolve() for f in files}
    for stem, name in zip(stems, names):
        for target in [out_dir / name] + ([out_dir / "overlays" / f"{stem}.png"] if overlays else []):
            if target.resolve() in inputs:
                raise CovsegError(f"{target}: is an input and would be overwritten by a prediction; give -o "
                                  "another folder")
    check_destinations(out_dir, [*names, *drawn, "predictions.json"])  # before any input is read or predicted
    return stems, names, drawn


def earlier_outputs(out_dir: Path) -> list[str]:
    """The label maps (paths relative to ``out_dir``) that an earlier ``predictions.json`` in ``out_dir`` lists;
    empty where there is none or it cannot be read."""
    try:
        listed = json.loads((Path(out_dir) / "predictions.json").read_text(encoding="utf-8"))["images"]
        return [str(record["output"]) for record in listed]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def unlisted_outputs(out_dir: Path, earlier: Sequence[str], summary: dict[str, Any]) -> list[str]:
    """Of the label maps ``earlier`` (:func:`earlier_outputs`, read before a predict), those still in ``out_dir``
    that the new ``predictions.json`` (``summary``) does not list: another run's, which nothing names any more. A
    name that no file can have (one an old or edited ``predictions.json`` lists: over 255 bytes, a NUL in it) is none
    of them."""
    listed = {record["output"] for record in summary["images"]}
    # os.path.isfile: a name no file can have (over 255 bytes, a NUL in it) is no file there; Path.is_file raised
    return [name for name in earlier if name not in listed and os.path.isfile(Path(out_dir) / name)]


def predict_files(predictor: Predictor, scheme: LabelScheme, files: Sequence[Path], out_dir: Path,
                  model_info: dict[str, Any], overlays: bool = True, progress: bool = True,
                  window: tuple[float, float] = LUNG_WINDOW) -> dict[str, Any]:
    """Predict every file (HU input through ``window``, the model's training window); returns the
    ``predictions.json`` content.

    Outputs are written into a staging folder on ``out_dir``'s file system (a hidden one inside ``out_dir`` where
    it exists, else beside it: :func:`covseg.fileio.staging_folder`) and moved into ``out_dir`` only after every
    input was read and predicted, so a bad input part-way leaves ``out_dir`` as it was; a destination blocked by
    a file or folder already there is refused before any input is read.
    """
    import shutil

    stems, names, drawn = check_file_outputs(files, out_dir, overlays)
    with folders_made_for(out_dir):  # a failure leaves no empty folders behind
        stage = _stage_dir(out_dir)
        try:
            records = []
            step = predictor.batch_size
            with progress_bar(total=len(files), desc="predict", unit="image", disable=not progress,
                              dynamic_ncols=True) as bar:  # wiped on an error, before the error is printed
                for start in range(0, len(files), step):
                    chunk = list(files[start:start + step])
                    images = [read_image(f, window) for f in chunk]
                    for path, stem, name, image, probs in zip(chunk, stems[start:start + step],
                                                              names[start:start + step], images, predictor(images)):
                        labels = probs.argmax(0).astype(np.uint8)
                        if path.suffix.lower() in DICOM_SUFFIXES:  # the view -> the file's own pixel order
                            image, labels = (dicom_view_to_stored(a, path) for a in (image, labels))
                        if name.endswith(".nii.gz"):
                            write_label_nifti(labels, path, stage / name)
                        else:
                            Image.fromarray(labels, mode="L").save(stage / name, format="PNG")
                        if overlays:
                            (stage / "overlays").mkdir(exist_ok=True)
                            Image.fromarray(overlay(image, labels, scheme)).save(
                                stage / "overlays" / f"{stem}.png", format="PNG")
                        counts = np.bincount(labels.ravel(), minlength=scheme.num_classes)
                        records.append({"input": str(path), "output": name, "height": int(labels.shape[0]),
                                        "width": int(labels.shape[1]),
                                        "fractions": {n: pixel_fraction(int(c), labels.size)
                                                      for n, c in zip(scheme.names, counts)}})
                        bar.update(1)
            summary = {"model": describe_after_use(model_info, predictor), "task": scheme.task,
                       "labels": dict(enumerate(scheme.names)), "images": records}
            (stage / "predictions.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
            # without overlays, an earlier run's overlay of the same image would show another prediction than the
            # label map beside it: it goes
            _publish(stage, out_dir, stale=() if overlays else [f"overlays/{stem}.png" for stem in stems])
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return summary


def is_scan(path: Path, spacing: Sequence[float] | None = None) -> bool:
    """True for inputs read as a 3-D scan: a NIfTI with several slices (or one nibabel cannot load, which the scan
    reader then refuses), a folder with DICOM files, or a folder of 2-D images when ``spacing`` is given. Single slices
    and image folders without spacing are 2-D."""
    path = Path(path)
    if path.is_file():
        if path.name.lower().endswith((".nii", ".nii.gz")):
            try:
                with quiet_file_readers():  # nibabel's own log lines would come before covseg's refusal
                    shape = nib.load(str(path)).shape
            except Exception:  # unreadable: a scan, so that read_volume's refusal comes before the models load
                return True
            return len(shape) >= 3 and int(np.prod(shape[2:])) > 1
        return False
    if path.is_dir():
        from covseg.datasets import PIL_SUFFIXES

        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if any(p.suffix.lower() == ".dcm" for p in files):
            return True
        if spacing is not None and any(p.suffix.lower() in PIL_SUFFIXES for p in files):
            return True
        # DICOM files named otherwise (by UID, "1.2.840....7", or *.IMA, or without extension): by their preamble
        others = [p for p in files if p.suffix.lower() not in PIL_SUFFIXES and not p.name.lower().endswith((".nii", ".nii.gz"))]
        return any(looks_like_dicom(p) for p in others)
    return False


LESIONS_FILE, LUNGS_FILE, REPORT_JSON, REPORT_HTML = "lesions.nii.gz", "lungs.nii.gz", "report.json", "report.html"
SCAN_OUTPUTS = (LESIONS_FILE, LUNGS_FILE, REPORT_JSON, REPORT_HTML)
"""The files :func:`predict_scan` writes into its output folder."""


def earlier_scan(out_dir: Path) -> tuple[str, str] | None:
    """The scan whose outputs ``out_dir`` holds: the input path and SHA-256 that its ``report.json`` records
    (:func:`predict_scan`'s ``input`` ``path`` and ``sha256``); None where there is no such file, it cannot be read
    or it records no digest (not a covseg scan report)."""
    try:
        recorded = json.loads((Path(out_dir) / REPORT_JSON).read_text(encoding="utf-8"))["input"]
        path, digest = recorded["path"], recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(path, str) or not isinstance(digest, str) or not digest:
        return None
    return path, digest


def check_same_scan(scan: Path, digest: str, out_dir: Path, together: bool = False) -> None:
    """Refuse, in one line, to write the outputs of ``scan`` (``digest``: its SHA-256 as
    :class:`~covseg.volumes.Volume` gives it, which ``report.json`` records) into ``out_dir`` where they would replace
    another scan's: ``out_dir``'s ``report.json`` (:func:`earlier_scan`) records another digest. The same scan
    again, wherever it lies now, replaces its own outputs; so does any scan in a folder without a readable report.
    ``together``: ``scan`` is one of several in one command, each written into ``-o``'s ``<stem>`` folder, which
    changes the ways out the error names."""
    earlier = earlier_scan(out_dir)
    if earlier is None or earlier[1] == digest:
        return
    if together:
        ways = f"give -o a new folder, or remove the earlier outputs from {out_dir}"
    else:
        # not "in one command with this -o": several scans' folders beside a lone scan's files are refused
        # (covseg.predict_plan.check_earlier_layout)
        ways = (f"give each scan its own -o, or give all the scans in one command with a new -o (each is then "
                f"written to its <stem>/ folder there), or remove the earlier outputs from {out_dir}")
    raise CovsegError(f"{out_dir}: holds the outputs of another scan, {earlier[0]} (its SHA-256 differs), which "
                      f"those of {scan} would replace; {ways}")


def check_scan_not_overwritten(scan: Path, out_dir: Path) -> None:
    """Refuse, in one line, to write the outputs of ``scan`` into ``out_dir`` where one of them (:data:`SCAN_OUTPUTS`)
    would replace the scan itself: a file of that name in ``out_dir`` (given by any path, ``out_dir`` too), whether
    the scan is named so there or is a symbolic link that leads to such a file (written over, the link would lead to
    the label map)."""
    if not scan.is_file():
        return
    out = out_dir.resolve()
    if scan.absolute().parent.resolve() == out and scan.name in SCAN_OUTPUTS:
        raise CovsegError(f"{scan}: covseg predict would write its own {scan.name} over this scan; give -o "
                          "another folder")
    target = scan.resolve()
    if target.parent == out and target.name in SCAN_OUTPUTS:
        raise CovsegError(f"{scan}: is a link to {target}, which covseg predict would replace with its own "
                          f"{target.name}; give -o another folder")


def _check_no_link_loop(out_dir: Path) -> None:
    """Refuse, in one line, an ``out_dir`` on whose path a symbolic link leads back to itself (``ln -s out out``), in
    :func:`covseg.fileio.check_output_folder`'s words: ``Path.resolve`` raises RuntimeError there (Python 3.11-3.12)
    and :func:`check_destinations` would take the link for a file."""
    try:
        os.stat(out_dir)
    except OSError as err:
        if err.errno != errno.ELOOP:
            return
        check_output_folder(out_dir)  # names the link
        raise CovsegError(f"{out_dir}: cannot be written (a symbolic link on its path leads back to itself); give -o "
                          "a folder you can write") from None


def predict_scan(path: Path, predictor: Predictor, scheme: LabelScheme, out_dir: Path, model_info: dict[str, Any],
                 options: Any = None, series_uid: str | None = None, spacing: Sequence[float] | None = None,
                 progress: bool = True, together: bool = False) -> dict[str, Any]:
    """Segment one CT scan; writes ``lesions.nii.gz``, ``lungs.nii.gz``, ``report.json`` and ``report.html``.

    Everything is written into a staging folder first and moved into ``out_dir`` only once complete. An ``out_dir``
    where an output would replace the scan itself (:func:`check_scan_not_overwritten`), could not be moved into
    place (:func:`check_destinations`) or that cannot be written (:func:`covseg.fileio.check_output_folder`: a
    read-only folder, or one whose nearest existing parent is) is refused before the scan is read, as the command's
    :func:`covseg.predict_plan.plan_predict` refuses it (its other checks weigh a command's inputs and ``-o`` as a
    whole). Outputs of another scan in ``out_dir`` are refused (:func:`check_same_scan`; ``together`` as there) once
    the scan is read, before it is segmented and before anything is written: :func:`covseg.predict_plan.plan_predict`
    refuses them already for a NIfTI file, whose digest is that of the file, but a DICOM series' or image folder's
    spans the files read, in their slice order, known only here.
    """
    import shutil
    import time

    from covseg.report_html import render_report
    from covseg.scan import ScanOptions, segment_scan
    from covseg.volumes import read_volume, write_like_input

    path, out_dir = Path(path), Path(out_dir)
    _check_no_link_loop(out_dir)  # before the checks that resolve it (Python 3.11-3.12 raise RuntimeError there)
    check_scan_not_overwritten(path, out_dir)  # before minutes of reading and segmenting, as the command's plan
    check_destinations(out_dir.parent, [Path(out_dir.name, name) for name in SCAN_OUTPUTS])
    check_output_folder(out_dir)  # a read-only folder: refused now, not once the scan is segmented
    began = time.perf_counter()
    volume = read_volume(path, series_uid=series_uid, spacing=spacing)
    read_seconds = time.perf_counter() - began
    check_same_scan(path, volume.sha256, out_dir, together)
    result = segment_scan(volume, predictor, scheme, options or ScanOptions(), progress)
    with folders_made_for(out_dir):  # a failure leaves no empty folders behind
        stage = _stage_dir(out_dir)
        try:
            write_like_input(result.lesions, volume, stage / LESIONS_FILE)
            write_like_input(result.lungs, volume, stage / LUNGS_FILE)
            seconds = {"read": round(read_seconds, 3), **{k: round(v, 3) for k, v in result.seconds.items()}}
            report = {
                "input": {"path": str(path), "kind": volume.kind, "sha256": volume.sha256, "shape": list(volume.shape),
                          "spacing_mm": list(volume.spacing), "series_uid": volume.series_uid},
                "model": describe_after_use(model_info, predictor),
                "labels": {"lesions": dict(enumerate(scheme.names)), "lungs": {"1": "right lung", "2": "left lung"}},
                "options": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in vars(options or ScanOptions()).items()},
                "slices_segmented": result.slices_segmented,
                "figures": result.figures,
                "warnings": result.warnings,
                "seconds": seconds,
            }
            report["seconds"]["total"] = round(time.perf_counter() - began, 3)
            page = render_report(report, volume.hu, volume.is_hu, result.lesions, result.lungs, scheme, volume.spacing)
            report["seconds"]["total"] = round(time.perf_counter() - began, 3)
            (stage / REPORT_HTML).write_text(page, encoding="utf-8")
            (stage / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
            _publish(stage, out_dir)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return report


def scan_summary(scan: Path, report: dict[str, Any], out_dir: Path) -> str:
    """One line on a scan's :func:`predict_scan` report for the terminal: lesion volume and share of the lungs, the
    severity of both lungs together and of each side (``n/a`` where there is no lung volume: not assessed), pleural
    findings with a volume, that the figures are unreliable where report.json's ``figures.unreliable`` says why
    (:func:`covseg.scan.segment_scan`), and where the report is. The share (``n/a`` with no lung volume) is shown to
    as many places as it takes to fall in the severity's bucket beside it (:func:`covseg.quantify.share_text`), as
    report.html shows it."""
    from covseg.quantify import nonzero_text, share_text

    figures = report["figures"]
    total = figures["total"]
    pleural = "".join(f"; {class_title(cls)} {nonzero_text(total['class_ml'][cls])} mL"
                      for cls in figures.get("pleural", []) if total["class_ml"][cls] > 0)
    shown = {side: "n/a" if figures[side]["severity"] is None else figures[side]["severity"]
             for side in ("total", "right", "left")}
    unreliable = ", figures unreliable (see the warnings)" if figures.get("unreliable") else ""
    return (f"{scan}: lesions {nonzero_text(total['lesion_ml'])} mL = "
            f"{share_text(total['lesion_percent'], total['severity'])} of "
            f"{nonzero_text(total['lung_ml'], decimals=0)} mL lung, "
            f"severity {shown['total']} (right {shown['right']}, left {shown['left']}){unreliable}{pleural}; "
            f"report {out_dir}/report.html")
