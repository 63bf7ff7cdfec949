"""Label schemes: one explicit mapping from class id to meaning per task, and the colour overlay of a label map.

Label maps are ``(H, W)`` (or ``(B, H, W)``) int64 arrays whose pixel value is the class id:

* ``binary``:     0 background, 1 infection (any lesion class)
* ``multiclass``: 0 background (incl. normal lung), 1 ground-glass opacity (GGO),
  2 consolidation, 3 pleural effusion (absent from COVID-SemiSeg)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from covseg.errors import CovsegError

__all__ = ["LabelScheme", "SCHEMES", "get_scheme", "BINARY", "MULTICLASS", "CLASS_TITLES", "class_title",
           "check_labels", "overlay"]

CLASS_TITLES: dict[str, str] = {"ggo": "ground-glass opacity", "pleural_effusion": "pleural effusion"}
"""Readable names of the schemes' classes where the class name (a file- and key-friendly word) is not one."""


def class_title(name: str) -> str:
    """A class name as a reader reads it, for figures and pages: ``ggo`` is "ground-glass opacity",
    ``pleural_effusion`` "pleural effusion"; other names with their underscores as spaces."""
    return CLASS_TITLES.get(name, name.replace("_", " "))


@dataclass(frozen=True)
class LabelScheme:
    """A task's classes: ``names[c]`` is the meaning of label ``c``; ``colors[c]`` its RGB overlay colour."""

    task: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    pleural: tuple[int, ...] = ()
    """Class ids of findings outside the lung parenchyma (pleural effusion): not lung, not lung involvement."""

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def foreground(self) -> tuple[int, ...]:
        """Class ids of the lesion classes (all but background 0)."""
        return tuple(range(1, self.num_classes))

    @property
    def titles(self) -> tuple[str, ...]:
        """``titles[c]``: class ``c``'s name as figures and pages show it (:func:`class_title`)."""
        return tuple(class_title(n) for n in self.names)


BINARY = LabelScheme("binary", ("background", "infection"), ((0, 0, 0), (255, 64, 64)))
MULTICLASS = LabelScheme(
    "multiclass",
    ("background", "ggo", "consolidation", "pleural_effusion"),
    ((0, 0, 0), (255, 215, 0), (255, 64, 64), (64, 160, 255)),
    pleural=(3,),
)
SCHEMES: dict[str, LabelScheme] = {s.task: s for s in (BINARY, MULTICLASS)}


def get_scheme(task: str) -> LabelScheme:
    """Return the label scheme of ``task`` (``binary`` or ``multiclass``)."""
    try:
        return SCHEMES[task]
    except KeyError:
        raise CovsegError(f"unknown task {task!r}: use one of {', '.join(SCHEMES)}") from None


def check_labels(mask: np.ndarray, scheme: LabelScheme, source: str) -> None:
    """Raise if ``mask`` holds a value outside ``scheme`` (``source`` names the file in the message)."""
    values = np.unique(mask)
    bad = [int(v) for v in values if v < 0 or v >= scheme.num_classes]
    if bad:  # the first ten: a 16-bit image given as a mask holds thousands
        shown = f"{bad[:10]}" if len(bad) <= 10 else f"{str(bad[:10])[:-1]}, … ({len(bad)} in all)]"
        raise CovsegError(
            f"{source}: label values {shown} are outside the {scheme.task} scheme "
            f"(0..{scheme.num_classes - 1}); fix the mask or choose the other --task"
        )


def overlay(image: np.ndarray, labels: np.ndarray, scheme: LabelScheme, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)`` of a grey ``(H, W)`` [0, 1] image with label colours blended in."""
    grey = (np.clip(image, 0, 1) * 255).astype(np.float32)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    colors = np.asarray(scheme.colors, dtype=np.float32)
    fg = labels > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colors[labels[fg]]
    return rgb.clip(0, 255).astype(np.uint8)
