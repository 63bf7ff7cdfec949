"""Session 75, the one line a scan prints: it says when the figures are unreliable (report.json's
``figures.unreliable``), and a share of no lung reads "n/a", as its severity. Needs covseg/predict.py's scan_summary
to read them (the patch beside this file's session report)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from covseg.predict import scan_summary
from covseg.quantify import quantify

from test_s75_scanfigures import CM, _mostly_outside


def test_the_summary_line_says_the_figures_are_unreliable() -> None:
    # right 3 of 5 mL (60 %, severity 4), left 5 of 10 (50 %, 4); both 8 of 15 mL = 53.3 % (4)
    lesions, lungs = _mostly_outside()
    report = {"figures": quantify(lesions, lungs, CM, {1: "infection"}, midline_x=4.5)}
    assert scan_summary(Path("s"), report, Path("o")) == (
        "s: lesions 8.0 mL = 53.3 % of 15 mL lung, severity 4 (right 4, left 4), figures unreliable (see the "
        "warnings); report o/report.html")


def test_the_summary_line_shows_a_share_of_no_lung_as_n_a() -> None:
    none = np.zeros((1, 2, 4), np.uint8)
    report = {"figures": quantify(none, none, CM, {1: "infection"})}
    assert scan_summary(Path("s"), report, Path("o")) == (
        "s: lesions 0.0 mL = n/a of 0 mL lung, severity n/a (right n/a, left n/a); report o/report.html")
