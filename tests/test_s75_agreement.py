"""Label agreement, session 75: counted exactly (a float32 mean read 60,938 alike of 60,999 pixels, just under the
99.9 % bf16 bar, as at it, and one pixel differing among 2**24 + 4 as none), and printed rounded down wherever a
share is shown (the bf16 fallback warning, ``covseg bench``'s scan line), never up to the bar or to 100 %."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from covseg import export, inference, wording
from covseg.inference import BF16_MIN_AGREEMENT, TorchBackend, label_agreement


def _logits(pixels: int, differing: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two logit batches ``(pixels, 2, 1, 1)`` (one pixel an image: the arg-max stays cheap at 2**24 pixels) whose
    labels differ on the first ``differing`` pixels."""
    a = torch.zeros(pixels, 2, 1, 1, dtype=dtype)
    b = a.clone()
    b[:differing, 1] = 1
    return a, b


def test_an_agreement_just_under_the_bf16_bar_is_not_read_as_the_bar() -> None:
    a, b = _logits(60_999, 61)
    assert label_agreement(a, b) == 60_938 / 60_999 < BF16_MIN_AGREEMENT


def test_the_pixels_mask_is_counted_exactly_too() -> None:
    a, b = _logits(61_009, 61)
    pixels = torch.ones(61_009, 1, 1, dtype=torch.bool)
    pixels[-10:] = False  # 60,999 pixels checked, the 61 differing among them
    assert label_agreement(a, b, pixels) == 60_938 / 60_999 < BF16_MIN_AGREEMENT


def test_one_pixel_differing_among_more_than_2_to_the_24_is_not_full_agreement() -> None:
    a, b = _logits(2**24 + 4, 1, torch.uint8)
    assert label_agreement(a, b) == 1 - 1 / (2**24 + 4) < 1


def test_no_pixel_checked_is_nan_as_before() -> None:
    a, b = _logits(4, 1)
    assert math.isnan(label_agreement(a, b, torch.zeros(4, 1, 1, dtype=torch.bool)))


def test_the_bf16_fallback_warning_does_not_round_up_to_the_bar(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """0.99899996 as ``.4%`` read "only 99.9000% of pixels", the bar itself, beside its refusal."""
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: 0.99899996)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16)
    backend(torch.rand(2, 1, 8, 8))
    assert backend.dtype == torch.float32
    assert "agree with fp32 on only 99.8999% of pixels; using fp32" in capsys.readouterr().err


@pytest.mark.parametrize("share, decimals, shown", [(0.99899996, 4, "99.8999%"), (0.9985, 4, "99.8500%"),
                                                    (1.0, 4, "100.0000%"), (0.9999996, 3, "99.999%")])
def test_agreement_percent_rounds_down_to_the_decimals_asked(share: float, decimals: int, shown: str) -> None:
    assert wording.agreement_percent(share, decimals) == shown
    assert export.agreement_percent is wording.agreement_percent  # still importable where it was first put
