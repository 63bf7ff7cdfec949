"""Deterministic train/validation/test splits, saved with every run as ``split.json``.

A split maps ``"train"``, ``"val"`` and ``"test"`` to lists of sample names. Given the same names and
seed, every function here returns the same split on every machine.

* ``official``: all given images train (the COVID-SemiSeg training split); ``val_fraction`` of them
  are carved off for validation; the official test split is evaluated separately.
* ``cv:K``: fold ``K`` of ``folds`` folds is the validation set, the rest train.
* ``seed``: the seed article's 84 % / 16 % train / evaluation split.
* ``paper``: Saood & Hatem's 72 % / 10 % / 18 % train / validation / test split.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from covseg.errors import CovsegError
from covseg.fileio import atomic_write_text
from covseg.wording import counted

__all__ = ["Split", "kfold", "make_split", "save_split", "load_split", "parse_split_name", "split_settings"]

Split = dict[str, list[str]]


def _permuted(names: list[str], seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(names))
    ordered = sorted(names)
    return [ordered[i] for i in order]


def kfold(names: list[str], folds: int, seed: int = 0) -> list[list[str]]:
    """Partition ``names`` into ``folds`` folds of near-equal size after a seeded shuffle. Fewer than 2 names, or
    ``folds`` outside ``2..len(names)``, are refused in one line naming the setting to change."""
    if len(names) < 2:
        raise CovsegError(f"cannot make folds from {counted(len(names), 'image')}: cross-validation needs at least 2; "
                          "add images, or use --split official with data.val_fraction=0 to train on all of them")
    if folds < 2 or folds > len(names):
        nearest = min(max(folds, 2), len(names))
        raise CovsegError(f"cannot make {counted(folds, 'fold')} from {counted(len(names), 'image')}; use 2 to "
                          f"{len(names)} folds (data.folds={nearest}, or covseg cv --folds {nearest})")
    shuffled = _permuted(names, seed)
    return [sorted(part.tolist()) for part in np.array_split(np.array(shuffled, dtype=object), folds)]


def _fractions(names: list[str], fractions: tuple[float, ...], seed: int) -> list[list[str]]:
    shuffled = _permuted(names, seed)
    bounds = np.round(np.cumsum(fractions) * len(names)).astype(int)
    parts, start = [], 0
    for end in bounds:
        parts.append(sorted(shuffled[start:end]))
        start = end
    return parts


def parse_split_name(split: str) -> tuple[str, int | None]:
    """``"cv:3"`` -> ``("cv", 3)``; ``"official"`` -> ``("official", None)``."""
    kind, _, fold = split.partition(":")
    if kind == "cv":
        if not (fold.isascii() and fold.isdigit()):
            raise CovsegError(f"split {split!r}: write cv:K with a fold number K, e.g. cv:0")
        return "cv", int(fold)
    if kind in ("official", "seed", "paper") and not fold:
        return kind, None
    raise CovsegError(f"unknown split {split!r}: use official, cv:K (K = 0..folds-1), seed or paper")


def split_settings(split: str) -> tuple[str, ...]:
    """The ``data.*`` keys that decide which images the split named ``split`` holds out: ``cv:K`` uses ``folds``
    and ``split_seed``, ``official`` ``split_seed`` and ``val_fraction``, ``seed`` and ``paper`` ``split_seed``
    alone (each with ``split`` itself). Two runs whose split names and these settings agree hold out the same
    images of the same data."""
    kind, _ = parse_split_name(split)
    used = {"cv": ("folds", "split_seed"), "official": ("split_seed", "val_fraction")}.get(kind, ("split_seed",))
    return ("split", *used)


def make_split(names: list[str], split: str, seed: int = 0, folds: int = 5, val_fraction: float = 0.1) -> Split:
    """Build the named split of ``names`` (see the module docstring)."""
    if not names:
        raise CovsegError("cannot split an empty data set; check --data")
    if len(set(names)) != len(names):
        raise CovsegError("sample names are not unique; give every image a distinct file name")
    kind, fold = parse_split_name(split)
    if kind == "cv":
        parts = kfold(names, folds, seed)
        if fold is None or fold >= folds:
            raise CovsegError(f"split {split!r}: fold must be 0..{folds - 1}")
        train = sorted(n for i, part in enumerate(parts) if i != fold for n in part)
        return {"train": train, "val": parts[fold], "test": []}
    if kind == "official":
        n_val = int(round(val_fraction * len(names)))
        val, train = _fractions(names, (n_val / len(names), 1 - n_val / len(names)), seed)
        return {"train": train, "val": val, "test": []}
    if kind == "seed":
        train, val = _fractions(names, (0.84, 0.16), seed)
        return {"train": train, "val": val, "test": []}
    train, val, test = _fractions(names, (0.72, 0.10, 0.18), seed)
    return {"train": train, "val": val, "test": test}


def save_split(split: Split, path: Path, folds: list[list[str]] | None = None) -> None:
    """Write ``split`` (and, for cross-validation, all folds) as JSON, atomically."""
    data: dict[str, object] = dict(split)
    if folds is not None:
        data["folds"] = folds
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_split(path: Path) -> Split:
    """Read a split written by :func:`save_split`."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CovsegError(f"{path}: cannot read the split ({err}); is this a covseg run folder?") from None
    missing = [key for key in ("train", "val") if key not in data] if isinstance(data, dict) else []
    if missing:
        raise CovsegError(f"{path}: a damaged split (no {' or '.join(repr(k) for k in missing)} list of image names); "
                          "train the run again (covseg train ... -o RUN --force)")
    parts = {key: data.get(key, []) for key in ("train", "val", "test")} if isinstance(data, dict) else None
    if parts is None or not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in parts.values()):
        raise CovsegError(f"{path}: a damaged split (not lists of image names under train/val/test); train the run "
                          "again (covseg train ... -o RUN --force)")
    return parts
