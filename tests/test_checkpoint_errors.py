"""covseg.checkpoint's one-line errors: a checkpoint that cannot be written (a full disk), and weights that do not
fit the model their checkpoint's settings describe."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import covseg.checkpoint as checkpoint
from covseg.checkpoint import build_model, load_model, read_checkpoint, save_checkpoint
from covseg.cli import main
from covseg.config import load_recipe
from covseg.errors import CovsegError


def _config():
    return load_recipe("tiny", task="binary")


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_old_checkpoint(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    model = build_model(config)
    path = tmp_path / "run" / "last.pt"
    path.parent.mkdir()
    (path.parent / "config.yaml").write_text("recipe: tiny\n", encoding="utf-8")  # a run folder: resuming is the fix
    save_checkpoint(path, model, config, 1, 0.5)
    good = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04half")  # a partly written archive, then torch's failure
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CovsegError) as caught:
        save_checkpoint(path, model, config, 2, 0.6)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: the checkpoint could not be written (RuntimeError: [enforce fail")
    assert "disk full" in message and f"covseg train --resume {path.parent}" in message
    assert "last.pt already there is kept" in message
    assert path.read_bytes() == good  # the good checkpoint is not replaced by a half-written one
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml", "last.pt"]  # no temporary file left

    fresh = tmp_path / "run" / "best.pt"  # nothing there before: nothing there after
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(CovsegError, match=r"best.pt: the checkpoint could not be written \(OSError: .*No space left"):
        save_checkpoint(fresh, model, config, 2, 0.6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml", "last.pt"]
    elsewhere = tmp_path / "bench" / "untrained.pt"  # not a run folder (the bench's own model): no resume advice
    with pytest.raises(CovsegError) as caught:
        save_checkpoint(elsewhere, model, config, 0, None)
    assert "disk full? Free space on it" in str(caught.value) and "--resume" not in str(caught.value)


def test_weights_of_another_shape_name_the_first_mismatch_and_the_fix(tmp_path: Path) -> None:
    config = _config()
    path = tmp_path / "wrongshape.pt"
    save_checkpoint(path, build_model(config), config, 1, None)
    data = read_checkpoint(path)
    data["config"]["model"]["width"] = config.model.width * 2  # settings that describe another model
    torch.save(data, path)
    first = next(iter(build_model(config).state_dict()))
    with pytest.raises(CovsegError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message
    assert f"its weights do not fit the unet its settings describe (width {config.model.width * 2}" in message
    shape = "x".join(str(n) for n in build_model(config).state_dict()[first].shape)
    assert f": {first} is {shape} in the file but " in message and "more differences)" in message
    assert "config.yaml" in message and "recipe it was trained with" in message

    data["config"]["model"]["width"] = config.model.width  # the right shapes, one weight missing, one too many
    data["model"]["stray.weight"] = data["model"].pop(first)
    torch.save(data, path)
    with pytest.raises(CovsegError, match=rf": {first.replace('.', '[.]')} is missing from the file \(and 1 more "
                                          r"difference\); "):
        load_model(path)


def test_the_mismatch_falls_back_to_torch_s_first_line() -> None:
    err = RuntimeError("Error(s) in loading state_dict for UNet:\n\tsomething else")
    assert checkpoint.weights_mismatch({}, {}, err) == "RuntimeError: Error(s) in loading state_dict for UNet:"


@pytest.mark.parametrize("epoch", [None, "3x", -1, True, 2.5])
def test_a_checkpoint_whose_epoch_is_not_a_whole_number_is_refused_in_one_line(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], epoch: object) -> None:
    # int(saved["epoch"]) of None or "3x" was a TypeError / ValueError traceback
    teacher = shutil.copytree(tiny_run, tmp_path / "teacher")
    state = read_checkpoint(teacher / "last.pt")
    state["epoch"] = epoch
    torch.save(state, teacher / "last.pt")
    out = tmp_path / "p"
    capsys.readouterr()
    assert main(["pseudo-label", str(teacher), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{teacher / 'last.pt'}: a damaged covseg checkpoint (its 'epoch' entry, {epoch!r}, is not a whole " in err
    assert err.count("\n") == 1 and not out.exists()
    with pytest.raises(CovsegError, match="is not a whole number of epochs"):
        read_checkpoint(teacher / "last.pt")
    del state["epoch"]  # a file without an epoch entry at all is still read, as before
    torch.save(state, teacher / "last.pt")
    assert "epoch" not in read_checkpoint(teacher / "last.pt")
    assert checkpoint.epochs_done(teacher) == 0  # counted as none, as read_checkpoint reads it (was a KeyError)
