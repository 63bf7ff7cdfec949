"""Own-data masks against the task: multiclass training on masks that hold only 0 and 1 (lesion-vs-background masks
read as "GGO only") is refused, and a multiclass evaluation of them gets a caveat that says GGO alone is scored."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.datasets import (Sample, lesion_only_caveat, lesion_only_masks, load_dataset,
                             refuse_lesion_only_masks)
from covseg.cli import main
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES


def _sample(name: str, mask: np.ndarray | None) -> Sample:
    return Sample(name, np.zeros((4, 4), np.float32), mask, f"/d/{name}.png")


def _mask(*values: int) -> np.ndarray:
    """A 4x4 label map holding ``values`` in its first pixels, the rest 0."""
    m = np.zeros(16, np.int64)
    m[: len(values)] = values
    return m.reshape(4, 4)


def _own_data(root: Path, masks: list[np.ndarray]) -> Path:
    """An image/mask folder pair under ``root``: one 4x4 grey slice per mask, masks as 8-bit greyscale PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, mask in enumerate(masks):
        Image.fromarray(np.full(mask.shape, 100, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{i}.png")
    return root


@pytest.mark.parametrize(("masks", "expected"), [
    ([_mask(1), _mask(0), _mask(1, 1)], True),  # 0/1 everywhere, a lesion in two: lesion-vs-background masks
    ([_mask(1)], True),
    ([_mask(1), _mask(2)], False),  # consolidation in one mask of the whole data: multiclass masks
    ([_mask(1), _mask(0, 3)], False),  # pleural effusion alone also counts
    ([_mask(0), _mask(0)], False),  # no lesion at all: nothing to tell apart
    ([], False),
    ([None, None], False),  # unlabelled slices
    ([None, _mask(1)], True),  # an unlabelled slice is skipped, not read as holding no lesion
    ([_mask(2), _mask(1)], False),  # the label above 1 in the first mask, before any 1
])
def test_lesion_only_masks(masks: list, expected: bool) -> None:
    assert lesion_only_masks([_sample(str(i), m) for i, m in enumerate(masks)]) is expected


def test_multiclass_training_on_0_1_masks_is_refused_in_one_line(tmp_path: Path) -> None:
    data = _own_data(tmp_path / "own", [_mask(1, 1), _mask(0), _mask(1)])
    samples = load_dataset(data, "multiclass")  # read as GGO: the loader alone cannot tell
    assert [int(s.mask.max()) for s in samples] == [1, 0, 1]
    with pytest.raises(CovsegError) as err:
        refuse_lesion_only_masks(samples, "multiclass", data)
    message = str(err.value)
    assert message == (f"{data}: its masks hold only the labels 0 and 1 (no 2 consolidation or 3 pleural effusion in "
                       "any of its 3 slices), so a multiclass model would learn GGO alone; for lesion-vs-background "
                       "masks use --task binary (masks that truly mark GGO only train the same lesion model that way)")
    assert "\n" not in message


def test_one_slice_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match=r"no 2 consolidation or 3 pleural effusion in its one slice\)"):
        refuse_lesion_only_masks([_sample("a", _mask(1))], "multiclass", tmp_path)


def test_multiclass_masks_binary_task_and_empty_masks_pass(tmp_path: Path) -> None:
    data = _own_data(tmp_path / "own", [_mask(1, 1), _mask(0), _mask(1, 2)])
    refuse_lesion_only_masks(load_dataset(data, "multiclass"), "multiclass", data)  # one 2 in three masks: fine
    binary = load_dataset(data, "binary")  # ids 1..3 collapse to 1: the binary task takes it as it is
    assert [int(s.mask.sum()) for s in binary] == [2, 0, 2]
    refuse_lesion_only_masks(binary, "binary", data)
    refuse_lesion_only_masks([_sample("a", _mask(0))], "multiclass", data)  # no lesion: not this refusal's matter


def test_multiclass_training_on_0_255_masks_is_refused_by_the_reader(tmp_path: Path) -> None:
    data = _own_data(tmp_path / "own", [_mask(255, 255), _mask(0)])
    with pytest.raises(CovsegError, match=r"holds only 0/255, a binary mask, but the task is multiclass; .*--task binary"):
        load_dataset(data, "multiclass")
    assert [int(s.mask.sum()) for s in load_dataset(data, "binary")] == [2, 0]


def test_unknown_task_is_told() -> None:
    with pytest.raises(CovsegError, match="unknown task 'multi'"):
        refuse_lesion_only_masks([_sample("a", _mask(1))], "multi", "d")


def test_caveat_for_a_multiclass_evaluation_of_0_1_masks() -> None:
    samples = [_sample("a", _mask(1)), _sample("b", _mask(0)), _sample("c", None)]
    assert lesion_only_caveat(samples, "multiclass") == (
        "no mask of these 2 images holds a label above 1 (2 consolidation, 3 pleural effusion), so GGO alone is "
        "scored; if the masks mark lesion vs background (0/1) rather than GGO, the model's consolidation counts here "
        "as missed GGO: score a binary model on them instead (covseg train --task binary)")
    assert lesion_only_caveat([_sample("a", _mask(1))], "multiclass").startswith(
        "this image's mask holds no label above 1 (2 consolidation, 3 pleural effusion), so GGO alone is scored;")
    assert lesion_only_caveat(samples, "binary") is None
    assert lesion_only_caveat([*samples, _sample("d", _mask(3))], "multiclass") is None
    assert lesion_only_caveat([_sample("a", _mask(0))], "multiclass") is None


@pytest.mark.parametrize("command", [["train", "--split", "cv:0"], ["cv"], ["compare", "--models", "unet"]])
def test_multiclass_training_on_0_1_masks_exits_2_writing_nothing(command: list[str], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = _own_data(tmp_path / "own", [_mask(1, 1), _mask(0), _mask(1)])
    out = tmp_path / "out"
    argv = [command[0], "--recipe", "tiny", "--task", "multiclass", "--data", str(data), *command[1:], "-o", str(out),
            "--quiet", *TINY_OVERRIDES]
    if command[0] == "compare":  # --models takes the names up to the next option
        argv = [command[0], "--recipe", "tiny", "--task", "multiclass", "--data", str(data), "-o", str(out), "--quiet",
                *TINY_OVERRIDES, "--models", "unet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its masks hold only the labels 0 and 1" in err and "--task binary" in err
    assert not out.exists()
