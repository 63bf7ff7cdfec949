"""Counted nouns in covseg's messages and reports: "1 image", "10 images"."""
from __future__ import annotations

__all__ = ["counted"]


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, the noun plural unless the number is 1 (``plural``, else ``noun + "s"``):
    ``counted(1, "epoch")`` is "1 epoch", ``counted(0, "label map")`` "0 label maps"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"
