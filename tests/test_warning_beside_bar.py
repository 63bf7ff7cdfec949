"""A reader's warning printed while predict's progress bar is drawn starts a line of its own."""
from __future__ import annotations

import sys

import pytest

from covseg import datasets
from covseg.progress import progress_bar


def _lines(text: str) -> list[str]:
    """What a terminal shows of each line: the text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def test_a_warning_while_a_bar_is_drawn_stands_on_its_own_line(capsys: pytest.CaptureFixture,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "_WARNED", set())
    with progress_bar(total=2, desc="predict", unit="image", file=sys.stderr) as bar:
        bar.update(1)
        datasets._warn_once("test-kind", "x.png: something to say")
        datasets._warn_once("test-kind", "y.png: said once per kind")
        bar.update(1)
    err = capsys.readouterr().err
    assert "covseg: warning: x.png: something to say" in _lines(err)
    assert "y.png" not in err
    assert _lines(err)[-2].startswith("predict: 100%")  # the bar drawn again below, and left finished
