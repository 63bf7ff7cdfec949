"""covseg.checkpoint's one-line errors: a checkpoint that cannot be written (a full disk), and weights that do not
fit the model their checkpoint's settings describe."""
from __future__ import annotations

import re
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


def _touch_run(run: Path, *names: str) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    for name in names:
        (run / name).write_bytes(b"")
    return run


def test_find_checkpoint_picks_the_run_s_model_and_refuses_a_which_a_file_does_not_match(tmp_path: Path) -> None:
    find = checkpoint.find_checkpoint
    run = _touch_run(tmp_path / "run", "best.pt", "last.pt")
    assert [find(run, w).name for w in ("auto", "final", "best", "last")] == ["best.pt", "last.pt", "best.pt",
                                                                            "last.pt"]
    only_last = _touch_run(tmp_path / "only_last", "last.pt")  # no validation images: best falls back to last
    assert [find(only_last, w).name for w in ("auto", "best", "final")] == ["last.pt"] * 3
    with pytest.raises(CovsegError, match="no ema.pt in this folder"):
        find(only_last, "ema")
    with pytest.raises(CovsegError, match="no swa.pt in this folder"):
        find(only_last, "swa")
    swa = _touch_run(tmp_path / "swa", "best.pt", "last.pt", "swa.pt")
    assert [find(swa, w).name for w in ("auto", "final", "best", "last")] == ["swa.pt", "swa.pt", "best.pt", "last.pt"]
    assert find(run / "best.pt", "best") == run / "best.pt" and find(run / "last.pt", "final") == run / "last.pt"
    with pytest.raises(CovsegError, match="--checkpoint last picks one of a run folder's checkpoints"):
        find(run / "best.pt", "last")
    (run / "config.yaml").touch()
    (run / "run.json").touch()
    with pytest.raises(CovsegError, match=rf"checkpoint file already; give its run folder \({re.escape(str(run))}\)"):
        find(run / "best.pt", "last")
    exported = tmp_path / "models" / "unet.onnx"  # an export kept outside any run folder: its folder is no run
    exported.parent.mkdir()
    exported.touch()
    with pytest.raises(CovsegError, match=r"checkpoint file already; drop --checkpoint$"):
        find(exported, "best")
    with pytest.raises(CovsegError, match="no such checkpoint or run folder"):
        find(tmp_path / "missing.pt")
    with pytest.raises(CovsegError, match=r"no last\.pt in this folder; is it a finished covseg run\?"):
        find(_touch_run(tmp_path / "empty"), "final")
    # a run without the checkpoint asked for names those it holds (fuzz helper 168: evaluate of a run without
    # last.pt asked whether it was a finished run, though its best.pt was there)
    only_best = _touch_run(tmp_path / "only-best")
    (only_best / "best.pt").touch()
    with pytest.raises(CovsegError, match=r"no last\.pt in this folder; it holds best\.pt: give --checkpoint best or "
                                          rf"the file itself \({re.escape(str(only_best / 'best.pt'))}\)$"):
        find(only_best, "final")
    (only_best / "ema.pt").touch()
    with pytest.raises(CovsegError, match=r"no swa\.pt .* only finished runs trained with train.swa_epochs"):
        find(only_best, "swa")
    (only_best / "best.pt").unlink()
    with pytest.raises(CovsegError, match=r"no last\.pt in this folder; it holds ema\.pt: give --checkpoint ema"):
        find(only_best, "last")
    (only_best / "best.pt").touch()
    with pytest.raises(CovsegError, match=r"it holds best\.pt, ema\.pt: give --checkpoint best or the file itself \("):
        find(only_best, "last")
    # a caller without --checkpoint (train.distill's teachers, cv-compare) names them, without the option
    with pytest.raises(CovsegError, match=r"no last\.pt in this folder; it holds only best\.pt, ema\.pt: is it a "
                                          r"finished covseg run\?$"):
        find(only_best, "final", choosable=False)


def test_error_first_line_keeps_a_line_that_fits_and_cuts_a_longer_one_at_a_word() -> None:
    fits = ValueError("x" * 113)  # "ValueError: " + 113 = 125 characters
    assert checkpoint.error_first_line(fits, limit=125) == f"ValueError: {'x' * 113}"
    long = OSError("disk " * 40 + "\nsecond line")
    cut = checkpoint.error_first_line(long, limit=40)
    assert cut == "OSError: disk disk disk disk disk disk …" and len(cut) == 40  # the last whole word that fits
    assert checkpoint.error_first_line(KeyError()) == "KeyError"
    # a word that ends just where " …" still fits is kept whole (it used to be dropped with the word after it)
    assert checkpoint.error_first_line(ValueError("aaaaa bbbb cccc"), limit=20) == "ValueError: aaaaa …"
    assert checkpoint.cut_at_word("x" * 30, 10) == "xxxxxxxx …"  # no space to cut at: cut at limit - 2
    assert checkpoint.cut_at_word("a  b" + "c" * 10, 6) == "a …"  # no blank left before the ellipsis


def test_a_file_torch_cannot_read_is_named_with_torch_s_reason(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    path.write_bytes(b"abc")  # not a zip archive: left to torch.load, whose short reason is shown
    with pytest.raises(CovsegError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == (f"{path}: not a readable covseg checkpoint (no zip archive, as torch saves them: cut "
                                 "short, damaged or another kind of file; IndexError: pop from empty list); give a "
                                 ".pt file that covseg train wrote, or its run folder")
    cut = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(64)}, cut)
    cut.write_bytes(cut.read_bytes()[:300])  # a copy cut short: no longer a zip archive
    with pytest.raises(CovsegError, match=r"not a readable covseg checkpoint \(no zip archive, as torch saves them: "
                                          r"cut short, damaged or another kind of file; "):
        read_checkpoint(cut)
    pickled = tmp_path / "pickled.pt"
    torch.save({"path": Path("x")}, pickled)  # an object beyond tensors: torch's weights_only advice is not shown
    with pytest.raises(CovsegError, match=r"\(UnpicklingError: not a PyTorch file, or one holding pickled objects "
                                          r"beyond tensors\); "):
        read_checkpoint(pickled)


def _saved(tmp_path: Path, **changes: object) -> Path:
    config = _config()
    path = tmp_path / "c.pt"
    save_checkpoint(path, build_model(config), config, 3, 0.75)
    data = torch.load(path, weights_only=True)
    data.update(changes)
    torch.save(data, path)
    return path


def test_infinite_or_no_weights_are_refused(tmp_path: Path) -> None:
    data = read_checkpoint(_saved(tmp_path))
    name = next(k for k, v in data["model"].items() if v.is_floating_point())
    inf = dict(data["model"], **{name: torch.full_like(data["model"][name], float("inf"))})
    with pytest.raises(CovsegError, match=rf"\({name.replace('.', '[.]')} holds NaN or inf; the training diverged\)"):
        read_checkpoint(_saved(tmp_path, model=inf))
    with pytest.raises(CovsegError, match="without model weights"):
        read_checkpoint(_saved(tmp_path, model={}))


def test_a_saved_checkpoint_loads_back_as_it_was_written(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    model, config, data = load_model(path, task="binary", model_name="unet")
    assert (data["epoch"], data["score"], data["format"]) == (3, 0.75, checkpoint.FORMAT)
    assert not model.training  # in eval mode, ready to predict
    assert checkpoint.epochs_done(tmp_path / "missing") == 0
    with pytest.raises(CovsegError, match="trained for the binary task, not multiclass; use --task binary"):
        load_model(path, task="multiclass")
    with pytest.raises(CovsegError, match="this checkpoint holds a unet, not a segnet"):
        load_model(path, model_name="segnet")


def test_refuse_unfinished_takes_a_run_with_all_its_planned_epochs(tmp_path: Path) -> None:
    checkpoint.refuse_unfinished(tmp_path / "last.pt", {"epoch": 5}, 5, "")  # finished: taken
    checkpoint.refuse_unfinished(tmp_path / "last.pt", {"epoch": 6}, 5, "")
    with pytest.raises(CovsegError, match=r"^train.distill: .*last.pt holds epoch 4 of 5, an unfinished run"):
        checkpoint.refuse_unfinished(tmp_path / "last.pt", {"epoch": 4}, 5, "train.distill: ")
