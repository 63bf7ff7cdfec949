"""Shared phrasing in covseg's messages and reports: counted nouns ("1 image", "10 images") and shares of pixels
as percentages that never round up ("99.899%", not "99.900%", for a share just under covseg's 99.9 % bar)."""
from __future__ import annotations

from decimal import ROUND_DOWN, Decimal

__all__ = ["counted", "agreement_percent"]


def counted(number: int, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, the noun plural unless the number is 1 (``plural``, else ``noun + "s"``):
    ``counted(1, "epoch")`` is "1 epoch", ``counted(0, "label map")`` "0 label maps"."""
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def agreement_percent(share: float, decimals: int = 3) -> str:
    """A share of pixels (0 to 1: an int8 or bf16 check's label agreement with fp32) as a percentage to
    ``decimals`` decimals, rounded down from the shortest decimal that reads back as ``share``: one below 1 never
    reads as ``100.000%`` (0.9999996: ``99.999%``), nor one below a bar as the bar (0.9989996: ``99.899%``, below
    covseg's 99.9 %)."""
    exact = Decimal(repr(float(share))).scaleb(2)
    return f"{exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN)}%"
