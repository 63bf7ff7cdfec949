"""Figures: training curves, image | truth | prediction grids, model comparison bars. PNG, atomic."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure  # pyplot-free: no global backend or figure state is touched
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
import numpy as np

from covseg.fileio import atomic_path, display_text
from covseg.labels import LabelScheme, overlay

__all__ = ["plain_text", "plot_curves", "plot_grid", "plot_comparison"]


def plain_text(text: object) -> str:
    """``text`` (a file or run name) as matplotlib draws it letter for letter: encodable (:func:`display_text`) and
    with every ``$`` escaped, as a pair of them starts mathtext (``a$^$b`` was a parse error at saving)."""
    return display_text(text).replace("$", r"\$")


def _save(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")


def plot_curves(history: Sequence[dict[str, float]], path: Path, title: str = "") -> None:
    """Per-epoch loss and pixel accuracy (train and validation) and validation Dice, as the seed shows; epochs
    without a figure (not validated: ``train.val_every``) are left out of that line, and a line without any (a run
    without validation images; validation images whose truths hold no lesion, so no Dice) is not drawn, nor named
    in the legend."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)

    def plot(ax, key: str, label: str) -> None:
        points = [(int(r["epoch"]), float(r[key])) for r in history if math.isfinite(float(r[key]))]
        if not points:  # an empty line would still be listed in the legend, as if it were drawn
            return
        # a line needs two points: a lone one (a 1-epoch run, one validated epoch) is drawn as a marker
        ax.plot([e for e, _ in points], [v for _, v in points], label=label,
                marker="o" if len(points) == 1 else None, markersize=4)

    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        plot(axes[0], key, label)
    axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
    for key, label in (("train_acc", "train pixel accuracy"), ("val_acc", "validation pixel accuracy"),
                       ("val_dice", "validation mean Dice")):
        plot(axes[1], key, label)
    axes[1].set(xlabel="epoch", ylabel="score", title="accuracy and Dice", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        # epochs are whole numbers; one tick suffices (the default asks for 2 integers in view, and a 1-epoch run's
        # view, 0.945-1.055, holds 1: it fell back to ticks at 0.945, 0.96, ...)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if title:
        fig.suptitle(plain_text(title))
    _save(fig, path)


def plot_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], scheme: LabelScheme,
              path: Path, title: str = "") -> None:
    """One row per ``(caption, image, truth, prediction)``: image ``(H, W)`` grey in [0, 1] | truth overlay |
    prediction overlay (truth and prediction ``(H, W)`` labels of ``scheme``). The legend names the foreground classes
    some truth or prediction shown holds (none where they hold none): a class absent from every panel, such as pleural
    effusion on COVID-SemiSeg, is not listed as if it were there. Constrained layout keeps the title and the legend
    beside the panels, not a band of blank figure away."""
    fig = Figure(figsize=(9, 3 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for (caption, image, truth, pred), ax in zip(rows, axes):
        ax[0].imshow(image, cmap="gray", vmin=0, vmax=1)
        ax[1].imshow(overlay(image, truth, scheme))
        ax[2].imshow(overlay(image, pred, scheme))
        ax[0].set_title(plain_text(caption), fontsize=9)
        ax[1].set_title("ground truth", fontsize=9)
        ax[2].set_title("prediction", fontsize=9)
        for a in ax:
            a.axis("off")
    shown = [c for c in scheme.foreground if any(np.any(truth == c) or np.any(pred == c) for _, _, truth, pred in rows)]
    if shown:
        fig.legend(handles=[Patch(color=np.asarray(scheme.colors[c]) / 255, label=scheme.titles[c]) for c in shown],
                   loc="outside lower center", ncol=len(shown), fontsize=8, frameon=False)
    if title:
        fig.suptitle(plain_text(title))
    _save(fig, path)


def plot_comparison(models: Sequence[str], metrics: dict[str, Sequence[float]], path: Path,
                    title: str = "") -> None:
    """Grouped bars: one group per metric name, one bar per model. A value that is not a number (NaN: a metric
    undefined for that model, such as a Dice over truths without lesion) has no bar but "n/a" where it would stand,
    so that it does not read as a bar missing or lost."""
    names = list(metrics)
    x = np.arange(len(names))
    width = 0.8 / max(len(models), 1)
    fig = Figure(figsize=(max(5, 1.4 * len(names)), 3.8))
    ax = fig.subplots()
    for i, model in enumerate(models):
        values = [metrics[n][i] for n in names]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=plain_text(model))
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        for bar, value in zip(bars, values):  # bar_label leaves a NaN bar unlabelled: its place empty, without a word
            if math.isnan(float(value)):
                ax.text(bar.get_x() + bar.get_width() / 2, 0.01, "n/a", ha="center", va="bottom", fontsize=7,
                        color="#666")
    ax.set_xticks(x, [plain_text(n) for n in names], rotation=20, fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="score")
    ax.legend()
    if title:
        ax.set_title(plain_text(title))
    _save(fig, path)
