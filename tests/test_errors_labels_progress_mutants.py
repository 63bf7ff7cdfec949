"""Checks that mutation testing of covseg.errors, covseg.labels and covseg.progress found missing: where the two
exception types sit among Python's (and so which handlers catch them, and the CLI's exit statuses), the whole one-line
refusals of an unknown task and of out-of-scheme label values, the overlay colours of each class, immutable (and
hashable) label schemes, and a bar wiped also where ``sys.exit`` ends its work."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest

import covseg.cli
from covseg.errors import CovsegError, Terminated
from covseg.labels import BINARY, MULTICLASS, check_labels, get_scheme, overlay
from covseg.progress import progress_bar


# ---- covseg.errors ----------------------------------------------------------------------------------------------

def test_a_covseg_error_is_an_ordinary_error_of_its_own_kind_and_terminated_is_ctrl_c() -> None:
    # `except Exception` (a library caller's, or a fallback's) catches a CovsegError; the handlers that relabel a file
    # system refusal (OSError), a bad number (ValueError) or torch's out-of-memory (RuntimeError) must not take it
    assert issubclass(CovsegError, Exception)
    assert not issubclass(CovsegError, (OSError, ValueError, RuntimeError, KeyboardInterrupt))
    # SIGTERM runs every clean-up of Ctrl-C (`except KeyboardInterrupt`), and no `except Exception` swallows it
    assert issubclass(Terminated, KeyboardInterrupt) and not issubclass(Terminated, Exception)
    assert not issubclass(Terminated, CovsegError)


@pytest.mark.parametrize(("raised", "status", "line"), [
    (CovsegError("data/x.png: cannot be read\n   as an image"), 2, "covseg: error: data/x.png: cannot be read as an image"),
    (Terminated(), 143, "covseg: terminated (SIGTERM)"),
    (KeyboardInterrupt(), 130, "covseg: interrupted"),
])
def test_the_cli_turns_each_exception_type_into_its_one_line_and_exit_status(
        raised: BaseException, status: int, line: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def command(args):
        raise raised

    monkeypatch.setitem(covseg.cli.COMMANDS, "evaluate", command)
    assert covseg.cli.main(["evaluate", "nowhere"]) == status
    assert capsys.readouterr().err == line + "\n"


# ---- covseg.labels ----------------------------------------------------------------------------------------------

def test_an_unknown_task_is_refused_naming_both_tasks_without_the_key_error_behind_it() -> None:
    with pytest.raises(CovsegError) as caught:
        get_scheme("three")
    assert str(caught.value) == "unknown task 'three': use one of binary, multiclass"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # `from None`: no KeyError shown
    assert get_scheme("multiclass") is MULTICLASS


def test_out_of_scheme_values_are_listed_once_each_in_order_with_the_valid_range_and_the_fix() -> None:
    mask = np.array([[0, 5, 5], [-1, 3, 5]])  # -1 and 5 are outside both schemes; 3 only outside binary
    with pytest.raises(CovsegError) as caught:
        check_labels(mask, MULTICLASS, "m.png")
    assert str(caught.value) == ("m.png: label values [-1, 5] are outside the multiclass scheme (0..3); fix the mask or "
                                 "choose the other --task")
    with pytest.raises(CovsegError) as caught:
        check_labels(mask, BINARY, "m.png")
    assert str(caught.value) == ("m.png: label values [-1, 3, 5] are outside the binary scheme (0..1); fix the mask or "
                                 "choose the other --task")
    with pytest.raises(CovsegError) as caught:  # an 8-bit 0/255 mask given to a check: 255 named as a plain number
        check_labels(np.array([0, 255, 1], np.uint8), BINARY, "b.png")
    assert str(caught.value).startswith("b.png: label values [255] are outside the binary scheme (0..1)")


def test_each_class_is_blended_in_its_own_colour() -> None:
    # overlay: 0.55 * grey + 0.45 * colour; on a black image, 0.45 * colour, truncated to uint8
    labels = np.array([[0, 1, 2, 3]])
    shown = overlay(np.zeros((1, 4)), labels, MULTICLASS)
    # background left grey; GGO gold (255, 215, 0); consolidation red (255, 64, 64); effusion blue (64, 160, 255)
    assert shown[0].tolist() == [[0, 0, 0], [114, 96, 0], [114, 28, 28], [28, 72, 114]]
    # binary infection: consolidation's red, so a binary and a multiclass figure of a slice read alike
    assert overlay(np.zeros((1, 2)), labels[:, :2], BINARY)[0].tolist() == [[0, 0, 0], [114, 28, 28]]


def test_the_label_schemes_cannot_be_changed_and_can_be_dict_keys() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        MULTICLASS.pleural = ()  # type: ignore[misc]  # a shared scheme changed would change every later caller
    assert {BINARY: "b", MULTICLASS: "m"}[get_scheme("multiclass")] == "m"


# ---- covseg.progress --------------------------------------------------------------------------------------------

def test_a_bar_ended_by_sys_exit_is_wiped_too() -> None:
    shown = io.StringIO()
    with pytest.raises(SystemExit):
        with progress_bar(total=3, desc="predict", file=shown) as bar:
            bar.update(1)
            raise SystemExit(2)
    assert "predict" in shown.getvalue() and shown.getvalue().rsplit("\r", 1)[-1].strip() == ""
    assert "\n" not in shown.getvalue()


def test_a_mask_with_thousands_of_bad_values_is_refused_in_a_short_line(tmp_path: Path) -> None:
    """Helper 182: a 16-bit image given as a multiclass mask gave a 23,575-character "one-line" error."""
    from PIL import Image

    from covseg.datasets import read_mask
    from covseg.labels import MULTICLASS

    path = tmp_path / "m16.png"
    Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64)).save(path)
    with pytest.raises(CovsegError) as refused:
        read_mask(path, MULTICLASS)
    message = str(refused.value)
    assert len(message) < 300 and "\n" not in message, message
    assert "label values [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, … (4092 in all)]" in message, message
