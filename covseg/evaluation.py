"""Evaluation of predicted label maps against ground truth, at each image's own size.

All figures come from one confusion matrix per image (:func:`covseg.metrics.confusion_matrix`):

* ``per_image``: for each class, the mean over the images whose ground truth holds the class
  (images with an empty truth for a class are skipped for that class, as MONAI's ``ignore_empty``;
  their false positives still count in ``pooled``). Specificity is averaged over every image; precision
  only over the images where it is defined (the prediction calls the class).
* ``per_image_ci95``: for each per-image mean, a 95 % percentile bootstrap interval (2000 resamples of the images,
  seed 0, the same draws for every class; :func:`covseg.metrics.bootstrap_means`), ``None`` where fewer than 2
  images count for it: how far the mean could move with other images of the same kind.
* ``pooled``: the metric of the sum of all confusion matrices (every pixel of every image).
* ``mean`` rows average the foreground classes that occur in the truth (pleural effusion, absent from
  COVID-SemiSeg, is left out rather than counted as 0 or 1).
* ``infnet`` (binary task): Inf-Net's protocol over 256 thresholds of the min-max-normalised foreground
  probability, averaged over images (comparable with SEED.md's table).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from covseg.errors import CovsegError
from covseg.fileio import (current_umask, display_text, folders_made_for, interrupts_deferred, staging_folder,
                           sync_path, sync_tree)
from covseg.figures import plot_grid
from covseg.labels import LabelScheme
from covseg.wording import counted
from covseg.metrics import (
    aggregate_per_image,
    bootstrap_interval,
    bootstrap_means,
    class_metrics,
    confusion_matrix,
    infnet_metrics,
    mean_class_accuracy,
    per_image_counts,
    per_image_values,
    pixel_accuracy,
)

__all__ = ["ImageResult", "Evaluation", "evaluate_image", "summarise", "write_report", "format_figure",
           "format_interval", "no_interval_reason", "foreground_called", "EMPTY_TRUTH_RULE", "CI_RULE",
           "BOOTSTRAP_RESAMPLES", "models_sentence"]

EMPTY_TRUTH_RULE = ("per-image means skip images whose ground truth lacks the class (MONAI ignore_empty; "
                    "specificity is averaged over every image instead) and images where a figure is undefined "
                    "(precision where the class is not predicted, specificity where the truth holds nothing but the "
                    "class): per_image_images counts the images behind each mean; pooled figures count every pixel")
BOOTSTRAP_RESAMPLES = 2000
CI_RULE = (f"per_image_ci95: 95 % percentile bootstrap intervals of the per-image means ({BOOTSTRAP_RESAMPLES} "
           "resamples of the images, seed 0, the same draws for every class); none where fewer than 2 images count for "
           "the figure")


@dataclass
class ImageResult:
    """One image's confusion matrix, Inf-Net figures (binary) and arrays kept for figures."""

    name: str
    cm: np.ndarray
    infnet: dict[str, float] | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    truth: np.ndarray | None = field(default=None, repr=False)
    pred: np.ndarray | None = field(default=None, repr=False)

    def foreground_dice(self) -> float:
        """Mean Dice over the foreground classes present in this image's truth (NaN if none)."""
        d = class_metrics(self.cm)["dice"][1:]
        present = self.cm.sum(axis=1)[1:] > 0
        return float(np.mean(d[present])) if present.any() else float("nan")


def evaluate_image(name: str, probs: np.ndarray, truth: np.ndarray, scheme: LabelScheme,
                   image: np.ndarray | None = None) -> ImageResult:
    """Score one image: ``probs`` ``(C, H, W)`` class probabilities, ``truth`` ``(H, W)`` labels. Probabilities that
    are not finite (a diverged model) are refused: numpy's arg-max would rank NaN first and score nonsense."""
    if not np.all(np.isfinite(probs)):
        raise CovsegError(f"{name}: the model gave non-finite probabilities (NaN or infinity); its weights have "
                          "diverged: train it again (a lower train.lr) before scoring it")
    pred = probs.argmax(0)
    cm = confusion_matrix(pred, truth, scheme.num_classes)
    infnet = infnet_metrics(probs[1], truth > 0) if scheme.task == "binary" else None
    return ImageResult(name, cm, infnet, image, truth, pred.astype(np.int64))


def _mean_fg(values: np.ndarray, in_truth: np.ndarray) -> float:
    """Mean of ``values`` ``(n,)`` over the foreground classes (ids >= 1) that some image's truth holds
    (``in_truth`` ``(n,)`` bool) and where it is defined; NaN if none. A class absent from every truth (pleural
    effusion) stays out even where it has a value (its specificity, or its pooled Dice after false positives)."""
    fg = values[1:][in_truth[1:]]
    return float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")


def _intervals(cms: Sequence[np.ndarray], names: Sequence[str], in_truth: np.ndarray) -> dict[str, Any]:
    """:data:`CI_RULE`'s intervals: metric -> class name (and ``mean_foreground``) -> ``[low, high]``, NaN bounds
    where fewer than 2 images count. Every metric and class shares one set of draws. ``mean_foreground`` averages,
    in each resample, the same classes :func:`_mean_fg` averages for the figure itself (the foreground classes some
    truth holds and whose mean is defined); it needs 2 images for each, and a resample that drew none of some such
    class's images is left out, rather than averaged over fewer classes than the figure is."""
    per_metric = per_image_values(cms)  # metric -> (N, n)
    stacked = np.concatenate(list(per_metric.values()), axis=1)  # (N, n * metrics): one set of draws for all
    all_means = bootstrap_means(stacked, BOOTSTRAP_RESAMPLES, seed=0)
    out: dict[str, Any] = {}
    n = len(names)
    for i, (metric, values) in enumerate(per_metric.items()):
        means = all_means[:, i * n:(i + 1) * n]  # (resamples, n)
        bounds = bootstrap_interval(means)  # (n, 2)
        defined = np.isfinite(values).sum(axis=0)
        row = {name: (bounds[c] if defined[c] >= 2 else np.full(2, np.nan)) for c, name in enumerate(names)}
        # the classes _mean_fg averages: foreground, held by some truth, with a defined mean over all the images
        averaged = [c for c in range(1, n) if in_truth[c] and defined[c] > 0]
        row["mean_foreground"] = np.full(2, np.nan)
        if averaged and all(defined[c] >= 2 for c in averaged):
            fg = means[:, averaged]
            row["mean_foreground"] = bootstrap_interval(np.where(np.isfinite(fg).all(axis=1), fg.mean(axis=1),
                                                                 np.nan))
        out[metric] = {name: [float(x) for x in pair] for name, pair in row.items()}
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class Evaluation:
    """Summary figures over a set of images (see the module docstring for definitions)."""

    scheme: LabelScheme
    results: list[ImageResult]
    per_image: dict[str, np.ndarray]
    pooled: dict[str, np.ndarray]
    pixel_accuracy: float
    mean_class_accuracy: float
    infnet: dict[str, float] | None

    def to_dict(self) -> dict[str, Any]:
        names = self.scheme.names
        present = np.stack([r.cm.sum(axis=1) > 0 for r in self.results]).sum(axis=0)

        def table(values: dict[str, np.ndarray]) -> dict[str, Any]:
            out = {}
            for metric, v in values.items():
                out[metric] = {n: float(x) for n, x in zip(names, v)}
                out[metric]["mean_foreground"] = _mean_fg(v, present > 0)
            return out

        return _clean({
            "task": self.scheme.task,
            "n_images": len(self.results),
            "images_with_class": {n: int(c) for n, c in zip(names, present)},
            "predicted_pixels": {n: int(c) for n, c in zip(names, np.sum([r.cm.sum(axis=0) for r in self.results],
                                                                          axis=0))},
            "empty_truth": EMPTY_TRUTH_RULE,
            "per_image_images": {metric: {n: int(c) for n, c in zip(names, counts)}
                                 for metric, counts in per_image_counts([r.cm for r in self.results]).items()},
            "per_image": table(self.per_image),
            "per_image_ci95": _intervals([r.cm for r in self.results], names, present > 0),
            "ci95": CI_RULE,
            "pooled": table(self.pooled),
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "infnet": self.infnet,
        })


def summarise(results: Sequence[ImageResult], scheme: LabelScheme) -> Evaluation:
    """Aggregate per-image results per image and pooled. ``results``: one or more images (each ``cm`` ``(n, n)``,
    ``n`` = ``scheme.num_classes``); none raises ValueError (there is nothing to summarise)."""
    if not results:
        raise ValueError("no images to summarise: evaluation needs at least one scored image")
    cms = [r.cm for r in results]
    total = np.sum(cms, axis=0)
    infnet = None
    if scheme.task == "binary":
        infnet = {k: _nanmean([r.infnet[k] for r in results]) for k in results[0].infnet}
    return Evaluation(scheme, list(results), aggregate_per_image(cms), class_metrics(total),
                      pixel_accuracy(total), mean_class_accuracy(total), infnet)


def _nanmean(values: Sequence[float]) -> float:
    """The mean of the finite ``values``; NaN, without numpy's "Mean of empty slice" warning, when none is finite."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def format_figure(value: float | None) -> str:
    """A figure for tables: 4 decimals, or "–" where it is undefined (None / NaN)."""
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def foreground_called(metrics: dict[str, Any]) -> dict[str, int]:
    """The pixels a report's model called each foreground class it called at all (``metrics``: ``metrics.json``'s
    contents; its ``predicted_pixels``, empty for a report written before covseg counted them)."""
    return {n: c for n, c in metrics.get("predicted_pixels", {}).items() if n != "background" and c}


def _all_images(n: int) -> str:
    """Every one of ``n`` scored images, in a sentence: "the 1 image", "all 10 images"."""
    return "the 1 image" if n == 1 else f"all {n} images"


def _model_file(member: dict[str, Any]) -> str:
    """One model file of a report's ``model`` entry, as metrics.md names it: "`RUN/last.pt` (epoch 3)", an ONNX
    file with the checkpoint it was exported from."""
    said = ([f"exported from {member['exported_from']}"] if member.get("exported_from") else []) + (
        [f"epoch {member['epoch']}"] if member.get("epoch") is not None else [])
    return f"`{member['file']}`" + (f" ({', '.join(said)})" if said else "")


def _model_files(info: dict[str, Any]) -> str:
    """The model files of one side of a report's ``model`` entry: one file, or an ensemble's members (mean
    probabilities)."""
    members = info.get("members") or [info]
    files = ", ".join(_model_file(m) for m in members)
    return files if len(members) == 1 else f"the mean probabilities of {len(members)} models: {files}"


def models_sentence(model: dict[str, Any]) -> str:
    """metrics.md's sentence on what produced the figures, from a report's ``model`` entry (``metrics.json``'s, as
    :func:`covseg.predict.describe_after_use` gives it): each model file scored and its epoch (an ensemble's every
    member; with a ``lesion_model``, the binary models that found the lesions and those that typed them), and
    whether each prediction was averaged with its left-right flip (flip TTA)."""
    if "lesion_model" in model:
        said = (f"Lesions found by {_model_files(model['lesion_model'])}; their types given by "
                f"{_model_files(model)}")
    else:
        said = f"Scored by {_model_files(model)}"
    tta = ("with flip TTA (each prediction averaged with that of the left-right mirrored image)"
           if model.get("flip_tta") else "without flip TTA")
    return f"{said}; {tta}."


def _markdown(ev: Evaluation, title: str, d: dict[str, Any] | None = None) -> str:
    """metrics.md; ``d``: ``ev.to_dict()`` where the caller has it already (its bootstrap is not redone), with the
    ``model`` that produced it where there is one (:func:`models_sentence`, under the title)."""
    d = ev.to_dict() if d is None else d
    names = [n for n, c in d["images_with_class"].items() if c > 0]
    fg = [n for n in names if n != "background"]
    lines = [f"# {title}", ""]
    model = d.get("model")
    if isinstance(model, dict) and "file" in model:  # the report of covseg evaluate: which models, flip TTA or not
        lines += [models_sentence(model), ""]
    caveats = [f"**Caveat:** {c}." for c in d.get("caveats", [])]
    lines += caveats + ([""] if caveats else []) + [f"{counted(d['n_images'], 'image')}; {EMPTY_TRUTH_RULE}.", ""]
    counts = d["per_image_images"]
    # specificity is never averaged over "the images whose truth holds the class" (it needs pixels outside the
    # class), so its images are always named, even where their count happens to match
    differ = [m for m in counts
              if m == "specificity" or any(counts[m][n] != d["images_with_class"][n] for n in names)]
    over = {"per_image": "mean of each image's figure over the images whose truth holds the class: "
                         + ", ".join(f"{n} {d['images_with_class'][n]}" for n in names) + f" of {d['n_images']}"
                         + "".join(f"; {m} over " + ", ".join(f"{n} {counts[m][n]}" for n in names)
                                   + " (" + ("every image where it is defined" if m == "specificity"
                                             else "where the class is also predicted") + ")" for m in differ),
            "pooled": f"one figure from every pixel of {_all_images(d['n_images'])}"}
    for kind in ("per_image", "pooled"):
        lines += [f"## {kind.replace('_', '-')}", "", f"{over[kind][0].upper()}{over[kind][1:]}.", "",
                  "| metric | " + " | ".join(names) + " | mean foreground |",
                  "|---|" + "---|" * (len(names) + 1)]
        for metric, values in d[kind].items():
            cells = [format_figure(values[n]) for n in names] + [format_figure(values["mean_foreground"])]
            lines.append(f"| {metric} | " + " | ".join(cells) + " |")
        lines.append("")
        if kind == "per_image" and fg:
            lines += [_dice_interval_line(d, fg), ""]
    lines += [f"Pixel accuracy {format_figure(d['pixel_accuracy'])}; mean class accuracy {format_figure(d['mean_class_accuracy'])}.", ""]
    if d["infnet"]:
        i = d["infnet"]
        lines += ["## Inf-Net protocol (binary)", "", f"Means over {_all_images(d['n_images'])}, as Inf-Net's evaluation "
                  "takes them: an image without lesion scores 0 for meanDic, meanSen and meanSpe (an image that is lesion "
                  "everywhere has no meanSpe, and its mean skips it).", "",
                  "| meanDic | meanSen | meanSpe | MAE |", "|---|---|---|---|",
                  "| " + " | ".join(format_figure(i[k]) for k in ("meanDic", "meanSen", "meanSpe", "mae")) + " |", ""]
    if fg:
        lines.append(f"Foreground classes: {', '.join(fg)}.")
    else:
        called = foreground_called(d)
        said = (", ".join(f"{c} pixels {n}" for n, c in called.items()) + ", all false positives (metrics.json "
                "holds every class's pooled figures)") if called else "no pixel foreground either"
        lines.append("No image's truth holds a foreground class, so none has a foreground Dice; the model called "
                     f"{said}.")
    return "\n".join(lines) + "\n"


def format_interval(pair: Sequence[float | None] | None) -> str | None:
    """A ``[low, high]`` interval as "low–high" (4 decimals), or None where it is undefined."""
    if not pair or any(x is None or (isinstance(x, float) and math.isnan(x)) for x in pair):
        return None
    return f"{pair[0]:.4f}–{pair[1]:.4f}"


def no_interval_reason(d: dict[str, Any], name: str) -> str:
    """Why the per-image Dice of ``name`` (a class, or ``mean_foreground``) has no bootstrap interval in the report
    ``d`` (:meth:`Evaluation.to_dict`): a class's mean needs 2 images, and the mean over the classes 2 of each class
    (:func:`_intervals`), so there it names the classes short of them rather than claiming the mean itself counts
    fewer than 2 images: "fewer than 2 images", "fewer than 2 images hold pleural effusion"."""
    if name != "mean_foreground":
        return "fewer than 2 images"
    counts = d["per_image_images"]["dice"]
    short = [n.replace("_", " ") for n, held in d["images_with_class"].items()
             if n != "background" and held > 0 and counts[n] < 2]
    return f"fewer than 2 images hold {' or '.join(short)}" if short else "fewer than 2 images"


def _dice_interval_line(d: dict[str, Any], fg: Sequence[str]) -> str:
    """metrics.md's sentence on the per-image Dice's bootstrap intervals (``d``: :meth:`Evaluation.to_dict`; ``fg``
    the foreground classes some truth holds)."""
    dice = d["per_image_ci95"]["dice"]
    shown = [*fg, *(["mean_foreground"] if len(fg) > 1 else [])]
    parts = [f"{name.replace('_', ' ')} " + (format_interval(dice[name]) or f"– ({no_interval_reason(d, name)})")
             for name in shown]
    return (f"95 % confidence interval of the per-image Dice (percentile bootstrap: {BOOTSTRAP_RESAMPLES} resamples of "
            f"the {counted(d['n_images'], 'image')}, seed 0; metrics.json's per_image_ci95 has every figure's): "
            + "; ".join(parts) + ".")


def _per_image_csv(ev: Evaluation) -> str:
    buffer = io.StringIO()
    names = ev.scheme.names
    header = ["name", "pixels", "fg_dice"] + [f"{m}_{n}" for m in ("dice", "iou") for n in names] + ["pixel_accuracy"]
    if ev.infnet:
        header += ["infnet_meanDic", "infnet_mae"]
    header += [f"truth_{n}" for n in names]  # truth pixels of each class: which images a per-image mean counts
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in ev.results:
        m = class_metrics(r.cm)
        row: list[Any] = [r.name, int(r.cm.sum()), r.foreground_dice()]
        row += list(m["dice"]) + list(m["iou"]) + [pixel_accuracy(r.cm)]
        if r.infnet:
            row += [r.infnet["meanDic"], r.infnet["mae"]]
        row += [int(n) for n in r.cm.sum(axis=1)]
        writer.writerow([f"{v:.6f}" if isinstance(v, (float, np.floating)) else v for v in row])
    return buffer.getvalue()


REPORT_FILES = ("metrics.md", "per_image.csv", "best_worst.png", "metrics.json")  # metrics.json last: it marks a
# finished evaluation (covseg cv relies on it)


def write_report(ev: Evaluation, out_dir: Path, title: str, extra: dict[str, Any] | None = None,
                 n_figure: int = 3) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.md``, ``per_image.csv`` and ``best_worst.png`` into ``out_dir``.

    The report appears whole or not at all: its files are written into a temporary folder beside a new ``out_dir``,
    which becomes ``out_dir`` once every file is complete. Where ``out_dir`` exists already (an older report, or a
    folder given with ``-o`` that holds other files too, which are kept) they are written into a temporary folder
    inside it (so a read-only parent or a mount point does not matter) and then moved into place (renames, which need
    no disk space), ``metrics.json`` last, a Ctrl-C among them held back until the last is made; the files reach the
    disk before the renames that name them, the folder holding those names after them
    (:func:`covseg.fileio.sync_tree`). A write that fails (a full disk) before the moves changes nothing there.
    Failures raise a one-line :class:`CovsegError` naming ``out_dir``.
    ``best_worst.png`` is left out (an old one removed) when no image has a foreground Dice."""
    out_dir = Path(out_dir)
    data = {**(extra or {}), **ev.to_dict()}
    with folders_made_for(out_dir):  # a failed first report leaves no empty folders behind
        existed = out_dir.is_dir()
        try:
            stage = staging_folder(out_dir)
        except OSError as err:
            raise CovsegError(f"{out_dir}: cannot write the report there ({err.strerror or err}); check the path and "
                              "permissions, or give -o another folder") from None
        try:
            try:
                _write_report_files(ev, stage, title, data, n_figure)
                sync_tree(stage)  # on the disk before the renames that name them
                os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes 0700; give the report the usual permissions
                if not existed:
                    os.replace(stage, out_dir)
                    sync_path(out_dir.parent)
                    return data
                # renames within one folder's file system, which need no space; metrics.json last, as it marks a
                # finished evaluation, and an old one never stays beside new tables. A Ctrl-C among them waits for
                # the last: it would leave the new tables beside the old figure, without a metrics.json
                with interrupts_deferred():
                    (out_dir / "metrics.json").unlink(missing_ok=True)
                    for name in REPORT_FILES:
                        if (stage / name).is_file():
                            os.replace(stage / name, out_dir / name)
                        else:
                            (out_dir / name).unlink(missing_ok=True)  # an older report's figure, of other images
                    sync_path(out_dir)
            except OSError as err:
                raise CovsegError(f"{out_dir}: the report could not be written ({type(err).__name__}: "
                                  f"{err.strerror or err}); is the disk full? Free space there or give -o another "
                                  "folder") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return data


def _write_report_files(ev: Evaluation, folder: Path, title: str, data: dict[str, Any], n_figure: int) -> None:
    """Write the report's files into ``folder`` (:func:`write_report`'s temporary folder)."""
    # a file name that is not UTF-8 (its bytes read as lone surrogates) is written with U+FFFD for them
    (folder / "metrics.md").write_text(display_text(_markdown(ev, title, data)), encoding="utf-8")
    (folder / "per_image.csv").write_text(display_text(_per_image_csv(ev)), encoding="utf-8")
    scored = [r for r in ev.results if r.image is not None and math.isfinite(r.foreground_dice())]
    scored.sort(key=lambda r: r.foreground_dice(), reverse=True)
    k = min(n_figure, len(scored) // 2) or min(1, len(scored))
    picks = scored[:k] + (scored[-k:] if len(scored) > k else [])
    if picks:
        rows = [(f"{r.name} ({'best' if i < k else 'worst'}, foreground Dice {r.foreground_dice():.3f})", r.image,
                 r.truth, r.pred) for i, r in enumerate(picks)]
        plot_grid(rows, ev.scheme, folder / "best_worst.png", title=title)
    (folder / "metrics.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
