"""progress_bar / close_bar: a bar stays once its work is done and is wiped where an error or Ctrl-C ends it."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from covseg.cli import main
from covseg.progress import progress_bar


def _visible_lines(text: str) -> list[str]:
    """The lines a terminal shows at the end: each line's text after its last carriage return, blank ones dropped."""
    return [shown.rstrip() for line in text.split("\n") if (shown := line.rsplit("\r", 1)[-1]).strip()]


def _after_last_return(text: str) -> str:
    """What a terminal shows on the bar's line at the end: the text after the last carriage return."""
    return text.rsplit("\r", 1)[-1]


@pytest.mark.parametrize("stop", [ValueError, KeyboardInterrupt])
def test_a_bar_ended_by_an_error_is_wiped(stop: type[BaseException]) -> None:
    shown = io.StringIO()
    with pytest.raises(stop):
        with progress_bar(total=3, desc="predict", file=shown) as bar:
            bar.update(1)
            raise stop
    assert "predict" in shown.getvalue() and _after_last_return(shown.getvalue()).strip() == ""
    assert "\n" not in shown.getvalue()  # nothing left on a line of its own: the error's line is next


def test_a_finished_bar_stays() -> None:
    shown = io.StringIO()
    with progress_bar(total=2, desc="predict", file=shown) as bar:
        bar.update(2)
    assert shown.getvalue().endswith("\n") and "predict: 100%" in _after_last_return(shown.getvalue())


def test_an_unreadable_image_s_error_is_not_preceded_by_a_bar(tiny_run: Path, tmp_path: Path, capsys) -> None:
    # fuzz helper 168: without --quiet a "predict: 0%" bar line came before the one-line error
    from PIL import Image
    import numpy as np

    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(images / "a.png")
    (images / "b.png").write_text("not an image")
    assert main(["predict", str(images), "-o", str(tmp_path / "out"), "--model", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.endswith("\n") and err.count("\n") == 1, repr(err)
    assert _after_last_return(err).startswith("covseg: error: ") and "b.png" in err


def test_ctrl_c_during_training_prints_its_message_on_its_own_line_and_no_bar_after(
        tiny_data: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # fuzz helper 168: after "covseg: interrupted" tqdm drew the training bar once more
    from conftest import TINY_OVERRIDES, ctrl_c_at_epoch

    ctrl_c_at_epoch(1, monkeypatch)
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "-o", str(run), "--epochs", "3",
                 *TINY_OVERRIDES]) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"interrupted: 1 of 3 epochs saved; continue with covseg train --resume {run}\n"), \
        repr(err[-300:])
    assert _visible_lines(err)[-1] == f"interrupted: 1 of 3 epochs saved; continue with covseg train --resume {run}"
    assert not any(line.startswith("train:") for line in _visible_lines(err)), repr(err)  # the bar is wiped


def test_ctrl_c_during_evaluation_ends_with_its_one_line_and_no_bar_after_it(
        tiny_run: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # fuzz helper 168: after "covseg: interrupted" tqdm drew the bar once more (an unclosed bar, closed later)
    import gc

    import covseg.experiment

    real = covseg.experiment.evaluate_image
    scored: list[str] = []

    def ctrl_c_at_the_second_image(name, *args, **kwargs):
        if scored:
            raise KeyboardInterrupt
        scored.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(covseg.experiment, "evaluate_image", ctrl_c_at_the_second_image)
    assert main(["evaluate", str(tiny_run), "--split", "all"]) == 130
    gc.collect()  # where an unclosed bar would be closed, and drawn
    err = capsys.readouterr().err
    assert err.endswith("covseg: interrupted\n") and _visible_lines(err)[-1] == "covseg: interrupted", repr(err)
    assert not any(line.startswith("evaluate:") for line in _visible_lines(err)), repr(err)
