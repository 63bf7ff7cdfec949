"""Session 75's walk through ``covseg pretrain`` and ``train.init``: a stop by SIGTERM named as such, another
architecture's refusal naming only the options both networks take, slices that look like label masks warned of,
and an unlabelled folder without slices saying what it should hold."""
from __future__ import annotations

import contextlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import covseg.pretrain
from covseg.cli import main
from covseg.config import ModelConfig, apply_overrides, load_recipe
from covseg.errors import CovsegError, Terminated
from covseg.pretrain import PRETRAINED_FILE, PretrainOptions, check_pretrained, pretrain, restoration_network

PRETRAIN_OVERRIDES = ["data.input_size=32", "model.width=4", "model.depth=2", "train.precision=fp32"]
UNLABELLED = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"


def _config(*extra: str):
    return apply_overrides(load_recipe("tiny"), [*PRETRAIN_OVERRIDES, *extra])


def _images() -> list[np.ndarray]:
    return [np.random.default_rng(seed).random((32, 32), dtype=np.float32) for seed in range(2)]


def _stopped_at_second_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pretraining's second batch raise SIGTERM as the covseg program does (:class:`Terminated`)."""
    real, calls = covseg.pretrain.corrupt_batch, {"n": 0}

    def corrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Terminated
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.pretrain, "corrupt_batch", corrupt)


def test_sigterm_during_the_steps_is_named_as_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: "interrupted at step 2 of 3; ...", then the program's own "covseg: terminated (SIGTERM)"
    _stopped_at_second_batch(monkeypatch)
    said: list[str] = []
    with pytest.raises(Terminated):
        pretrain(_config(), _images(), tmp_path / "out", PretrainOptions(steps=3, batch_size=1, crop=0),
                 progress=False, log=said.append)
    assert said[-1].startswith("terminated (SIGTERM) at step 2 of 3; nothing written"), said[-1]
    assert not (tmp_path / "out").exists()


def test_sigterm_while_the_outputs_are_written_is_named_as_sigterm(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def held_back_then_raised():  # what interrupts_deferred does with a SIGTERM that arrived inside its block
        yield
        raise Terminated

    monkeypatch.setattr(covseg.pretrain, "interrupts_deferred", held_back_then_raised)
    said: list[str] = []
    out = tmp_path / "out"
    with pytest.raises(Terminated):
        pretrain(_config(), _images(), out, PretrainOptions(steps=2, batch_size=1, crop=0), progress=False,
                 log=said.append)
    # before: "interrupted once ... was written"
    assert said[-1] == (f"terminated (SIGTERM) once {out / PRETRAINED_FILE} was written (2 steps, complete); start a "
                        f"run from it with train.init={out}")
    assert (out / PRETRAINED_FILE).is_file() and (out / "history.csv").is_file()

    def history_stopped(*args, **kwargs) -> None:
        raise Terminated

    monkeypatch.setattr(covseg.pretrain, "_write_history", history_stopped)
    again = tmp_path / "again"
    with pytest.raises(Terminated):
        pretrain(_config(), _images(), again, PretrainOptions(steps=1, batch_size=1, crop=0), progress=False,
                 log=said.append)
    assert said[-1].startswith("terminated (SIGTERM); nothing written"), said[-1]  # before: "interrupted; ..."
    assert not again.exists()


def _segnet_pretraining(path: Path, width: int) -> Path:
    model = ModelConfig(name="segnet", width=width, depth=2)
    torch.save({"format": "covseg-pretrained-1", "model_config": asdict(model), "normalize": "none",
                "options": asdict(PretrainOptions(steps=1)), "steps": 1,
                "model": restoration_network(model).state_dict()}, path)
    return path


def test_a_pretraining_of_another_architecture_names_only_the_options_both_take(tmp_path: Path) -> None:
    # before: "(model.name segnet there, unet here, model.batch_norm None there, True here, model.block None there,
    # plain here, model.norm None there, batch here, model.attention None there, False here)": settings a SegNet
    # pretraining never had
    same_width = _segnet_pretraining(tmp_path / "segnet-4.pt", width=4)
    with pytest.raises(CovsegError) as caught:
        check_pretrained(same_width, _config())
    assert str(caught.value) == (f"train.init: {same_width}: pretrained for another network (model.name segnet there, "
                                 "unet here); pretrain this recipe's network with `covseg pretrain` and the same "
                                 "model.* settings")
    wider = _segnet_pretraining(tmp_path / "segnet-8.pt", width=8)
    with pytest.raises(CovsegError, match=r"\(model.name segnet there, unet here, model.width 8 there, 4 here\);"):
        check_pretrained(wider, _config())
    with pytest.raises(CovsegError, match=r"\(model.name segnet there, unet here, model.width 8 there, 4 here\);"):
        check_pretrained(wider, _config("model.norm=instance", "model.attention=true"))


def _ct_like(seed: int) -> np.ndarray:
    """An 8-bit 'slice' of noise around 60 and 150: dozens of grey levels, as a CT slice has."""
    image = np.random.default_rng(seed).normal(60, 8, (40, 36))
    image[10:25, 8:20] += 90
    return np.clip(image, 0, 255).astype(np.uint8)


def test_pretrain_warns_of_slices_that_look_like_label_masks(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data" / UNLABELLED
    folder.mkdir(parents=True)
    mask = np.zeros((40, 36), np.uint8)
    mask[5:20, 5:15] = 255
    for name, pixels in (("a", _ct_like(0)), ("b", mask), ("c", _ct_like(1))):
        Image.fromarray(pixels).save(folder / f"{name}.png")
    assert main(["pretrain", "--recipe", "tiny", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "pre"),
                 "--steps", "1", "--batch-size", "1", "--crop", "0", "--quiet", *PRETRAIN_OVERRIDES]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("covseg: warning")]
    # before: nothing said; the pretraining learnt to restore label masks among the slices
    assert warned == [f"covseg: warning: 1 of 3 unlabelled slices that covseg pretrain reads holds at most 3 grey "
                      f"levels, like label masks or blank images, not CT slices (first: {folder / 'b.png'}); take "
                      f"them out of {folder}"]


def test_an_unlabelled_folder_without_slices_says_what_it_should_hold(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data" / UNLABELLED
    folder.mkdir(parents=True)
    command = ["pretrain", "--recipe", "tiny", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "pre"),
               "--steps", "1", "--quiet", *PRETRAIN_OVERRIDES]
    assert main(command) == 2
    # before: "no images found in FOLDER; check the data path", though the data path was right
    err = capsys.readouterr().err
    assert err.startswith(f"covseg: error: no images found in {folder}; it should hold the unlabelled slices "
                          "(COVID-SemiSeg's 1600 Pseudo-label/Imgs JPEGs") and err.count("\n") == 1, err
    assert "check the data path" not in err and not (tmp_path / "pre").exists()
    (folder / "a.bmp").write_bytes(b"BM")
    (folder / "notes.txt").write_text("slices to come\n")
    assert main(command) == 2
    err = capsys.readouterr().err
    # before: the same "check the data path", the two files not named
    assert err == (f"covseg: error: no images found in {folder}: it holds 2 files of other types (a.bmp, ...); "
                   "save the slices as one of .png, .jpg, .jpeg, .tif, .tiff, .nii, .nii.gz, .dcm\n")
    assert not (tmp_path / "pre").exists()


@pytest.mark.parametrize("steps", ["2.5", "many"])
def test_steps_that_are_no_whole_number_are_refused_as_zero_is(steps: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["pretrain", "-o", str(tmp_path / "pre"), "--steps", steps])
    # before: "argument --steps: invalid _positive_int value: '2.5'", naming covseg.cli's private function
    assert refused.value.code == 2
    assert capsys.readouterr().err.endswith(f"argument --steps: must be a positive whole number, got {steps}\n")
    assert not (tmp_path / "pre").exists()
