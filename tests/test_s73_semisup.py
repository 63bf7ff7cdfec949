"""Session 73, semi-supervised workflows: a teacher that keeps no slice is refused with nothing written, and a Ctrl-C
around the end of `covseg pseudo-label` and `covseg pretrain` leaves their output whole and says so.

Predictions are scripted (a fake predictor yields hand-made class probabilities), so the counts and ranges in the
messages are computed by hand; the only networks trained are the session's ``tiny_run`` and a 2-step pretraining."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import covseg.fileio
from covseg.cli import main
from covseg.errors import CovsegError
from covseg.selftrain import PSEUDO_FILE, PseudoLabelRule, make_pseudo_labels
from conftest import ConstantBackend, add_unlabelled, write_semiseg

H, W = 48, 44  # the unlabelled slices' size (add_unlabelled's default): 2112 pixels


def _probs(lesion_pixels: int, p: float) -> np.ndarray:
    """Binary class probabilities ``(2, H, W)``: the first ``lesion_pixels`` pixels (row-major) lesion with
    probability ``p``, the rest background with probability 0.9."""
    fg = np.full(H * W, 0.1, np.float32)
    fg[:lesion_pixels] = p
    return np.stack([1 - fg.reshape(H, W), fg.reshape(H, W)])


# four slices: (fraction, confidence) = (0, 0), (1056 / 2112 = 0.5, 0.75), (7 / 2112 = 0.0033144, 0.875), (0.25, 0.625)
SCRIPT = [_probs(0, 0.0), _probs(1056, 0.75), _probs(7, 0.875), _probs(528, 0.625)]
NO_LESION = [_probs(0, 0.0)] * 4
KEEP_ALL = PseudoLabelRule(0, 0, 1)  # keeps the 3 slices with lesion of SCRIPT


class ScriptedPredictor:
    """Yields the next script of ``scripts`` (one per teacher opened) whatever the images; ``on_call`` runs as
    labelling starts."""

    def __init__(self, script: list[np.ndarray], on_call=None) -> None:
        self.backend = ConstantBackend((0.0, 0.0))
        self.script, self.on_call = script, on_call

    def __call__(self, images):
        assert len(images) == len(self.script)
        if self.on_call is not None:
            self.on_call()
        yield from self.script


def _script_teachers(monkeypatch: pytest.MonkeyPatch, scripts: list[list[np.ndarray]], on_call=None) -> list[Path]:
    """Each teacher opened in turn predicts the next of ``scripts``; returns the list of the teachers opened."""
    from covseg import predict

    real, opened = predict.open_predictor, []

    def scripted(run_dir, *args, **kwargs):
        _, config, info = real(run_dir, *args, **kwargs)
        opened.append(Path(run_dir))
        return ScriptedPredictor(scripts[len(opened) - 1], on_call), config, info

    monkeypatch.setattr(predict, "open_predictor", scripted)
    return opened


def _ctrl_c_once_renamed_to(out: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Send this process a Ctrl-C just after covseg.fileio renames a folder to ``out`` (the first time only); the
    list returned gets ``True`` when it has."""
    real, fired = os.replace, []

    def replace(src, dst, *args, **kwargs):
        result = real(src, dst, *args, **kwargs)
        if Path(dst) == out and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(covseg.fileio.os, "replace", replace)
    return fired


def _quiet(message: str) -> None:
    pass


# --- a teacher that keeps no slice ---------------------------------------------------------------------------------

def test_a_teacher_that_keeps_no_slice_is_refused_with_the_limit_to_relax_and_nothing_written(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # before: a warning, "wrote OUT" and exit 0, and a folder every student refused
    _script_teachers(monkeypatch, [SCRIPT])
    out = tmp_path / "p"
    capsys.readouterr()
    assert main(["pseudo-label", str(tiny_run), "-o", str(out), "--data", str(unl_data), "--min-fraction", "0.01",
                 "--max-fraction", "0.2", "--quiet"]) == 2
    captured = capsys.readouterr()
    # confidence refuses all 3 slices with lesion (0.75, 0.875, 0.625 < 0.9), max-fraction 2 (0.5, 0.25 > 0.2),
    # min-fraction 1 (0.0033 < 0.01); their fractions span 7 / 2112 = 0.00331 to 0.5, confidences 0.625 to 0.875
    assert captured.err == (
        f"covseg: error: {tiny_run}: kept none of 4 slices as pseudo-labels (--min-confidence 0.9, --min-fraction "
        "0.01, --max-fraction 0.2), so a student would have none to train on; lower --min-confidence (it refused 3 "
        "of the 3 slices with lesion) or raise --max-fraction (it refused 2 of the 3 slices with lesion) or lower "
        "--min-fraction (it refused 1 of the 3 slices with lesion); the teacher's lesion covered 0.00331-0.5 of a "
        "slice, at confidence 0.625-0.875; nothing was written\n")
    assert captured.out == "" and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_teacher_that_finds_no_lesion_is_refused_and_an_old_folder_is_left_as_it_was(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p"
    _script_teachers(monkeypatch, [SCRIPT, NO_LESION])
    make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=KEEP_ALL, progress=False, log=_quiet)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == 4  # pseudo.json and the 3 masks of the slices with lesion
    with pytest.raises(CovsegError, match=r"kept none of 4 slices as pseudo-labels \(--min-confidence 0, "
                                          r"--min-fraction 0, --max-fraction 1\), so a student would have none to "
                                          r"train on; the teacher found lesion on none of them, which no limit "
                                          r"changes; check the teacher and --data; nothing was written$"):
        make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=KEEP_ALL, force=True, progress=False, log=_quiet)
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def _cv_teacher(tiny_run: Path, cv: Path) -> Path:
    """A cross-validation folder of three copies of ``tiny_run`` (each scored, as covseg cv leaves them)."""
    for k in range(3):
        fold = shutil.copytree(tiny_run, cv / f"fold-{k}")
        (fold / "eval-heldout").mkdir(exist_ok=True)
        (fold / "eval-heldout" / "metrics.json").write_text("{}")
    return cv


def test_a_fold_that_keeps_no_slice_stops_the_folds_after_it_and_writes_nothing(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cv = _cv_teacher(tiny_run, tmp_path / "cv")
    opened = _script_teachers(monkeypatch, [SCRIPT, NO_LESION, SCRIPT])
    logged: list[str] = []
    with pytest.raises(CovsegError, match=rf"^{cv / 'fold-1'}: kept none of 4 slices as pseudo-labels"):
        make_pseudo_labels(cv, tmp_path / "p", data=str(unl_data), rule=KEEP_ALL, progress=False, log=logged.append)
    assert opened == [cv / "fold-0", cv / "fold-1"]  # fold 2's teacher is not run for a set that is refused anyway
    assert logged == ["fold-0: kept 3 of 4 slices as pseudo-labels"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv"]


def test_one_slice_kept_of_one_is_counted_in_the_singular(tiny_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = add_unlabelled(write_semiseg(tmp_path / "data", n=2), n=1, seed=3)
    _script_teachers(monkeypatch, [[_probs(528, 0.95)]])  # lesion 0.25 of the slice, confidence 0.95: kept
    logged: list[str] = []
    summary = make_pseudo_labels(tiny_run, tmp_path / "p", data=str(data), progress=False, log=logged.append)
    assert summary["kept"] == 1 and logged == [f"{tiny_run.name}: kept 1 of 1 slice as pseudo-labels"]


# --- Ctrl-C around the end of pseudo-label --------------------------------------------------------------------------

def _ctrl_c_while_removing_the_old_folder(out: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """A real SIGINT once covseg.fileio has deleted part of the old ``out`` set aside (``.NAME.….old``)."""
    real, fired = shutil.rmtree, []

    def rmtree(path, *args, **kwargs):
        if Path(path).name.startswith(f".{out.name}") and Path(path).name.endswith(".old") and not fired:
            fired.append(True)
            for mask in sorted((Path(path) / "masks").iterdir())[:2]:
                mask.unlink()
            os.kill(os.getpid(), signal.SIGINT)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(covseg.fileio.shutil, "rmtree", rmtree)
    return fired


def test_ctrl_c_while_force_deletes_the_old_folder_leaves_no_part_of_it_and_says_the_new_one_is_complete(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # before: the Ctrl-C cut the old folder's deletion short, leaving part of it hidden beside the new one
    out = tmp_path / "p"
    _script_teachers(monkeypatch, [SCRIPT, SCRIPT])
    make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=KEEP_ALL, progress=False, log=_quiet)
    fired = _ctrl_c_while_removing_the_old_folder(out, monkeypatch)
    logged: list[str] = []
    rule = PseudoLabelRule(0.7, 0, 1)  # keeps 2 of the 3 slices with lesion (0.75 and 0.875): a new folder
    with pytest.raises(KeyboardInterrupt):
        make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=rule, force=True, progress=False,
                           log=logged.append)
    assert fired == [True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # nothing set aside or staged left
    summary = json.loads((out / PSEUDO_FILE).read_text())
    assert summary["rule"]["min_confidence"] == 0.7 and summary["kept"] == 2
    assert len(list((out / "masks").iterdir())) == 2
    assert logged == [f"{tiny_run.name}: kept 2 of 4 slices as pseudo-labels",
                      f"interrupted once {out} was written; its pseudo-labels are complete"]


def test_ctrl_c_as_the_new_folder_goes_in_exits_130_saying_the_output_is_complete(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # before: only "covseg: interrupted", though the folder was written whole
    out = tmp_path / "p"
    _script_teachers(monkeypatch, [SCRIPT])
    fired = _ctrl_c_once_renamed_to(out, monkeypatch)
    capsys.readouterr()
    assert main(["pseudo-label", str(tiny_run), "-o", str(out), "--data", str(unl_data), "--min-confidence", "0",
                 "--min-fraction", "0", "--quiet"]) == 130
    assert fired == [True]
    assert capsys.readouterr().err.splitlines() == [
        f"{tiny_run.name}: kept 3 of 4 slices as pseudo-labels",
        f"interrupted once {out} was written; its pseudo-labels are complete", "covseg: interrupted"]
    assert json.loads((out / PSEUDO_FILE).read_text())["kept"] == 3 and len(list((out / "masks").iterdir())) == 3


def test_ctrl_c_while_the_teacher_labels_says_nothing_was_written(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p"
    _script_teachers(monkeypatch, [SCRIPT])
    make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=KEEP_ALL, progress=False, log=_quiet)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.undo()  # the teacher scripted anew, not through the first script
    _script_teachers(monkeypatch, [SCRIPT, SCRIPT], on_call=ctrl_c)
    logged: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=KEEP_ALL, force=True, progress=False,
                           log=logged.append)
    assert logged == [f"interrupted while the teacher labelled; nothing written ({out} is left as it was)"]
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    logged.clear()
    with pytest.raises(KeyboardInterrupt):
        make_pseudo_labels(tiny_run, tmp_path / "q", data=str(unl_data), rule=KEEP_ALL, progress=False,
                           log=logged.append)
    assert logged == [f"interrupted while the teacher labelled; nothing written ({tmp_path / 'q'} was not made)"]


def test_the_masks_written_are_the_teachers_label_maps(tiny_run: Path, unl_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    _script_teachers(monkeypatch, [SCRIPT])
    summary = make_pseudo_labels(tiny_run, tmp_path / "p", data=str(unl_data), rule=KEEP_ALL, progress=False,
                                 log=_quiet)
    kept = [r["name"] for r in summary["slices"] if r["kept"]]
    assert len(kept) == 3 and summary["kept"] == 3
    for name, pixels in zip(kept, (1056, 7, 528)):  # the first `pixels` pixels, row-major, are lesion
        mask = np.asarray(Image.open(tmp_path / "p" / "masks" / f"{name}.png"))
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        assert int(mask.sum()) == pixels and mask.reshape(-1)[:pixels].all() and not mask.reshape(-1)[pixels:].any()
    assert summary == json.loads((tmp_path / "p" / PSEUDO_FILE).read_text())


# --- Ctrl-C around the end of pretrain ------------------------------------------------------------------------------

def test_ctrl_c_as_the_pretraining_is_written_exits_130_saying_it_is_complete_and_how_to_use_it(
        unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # before: only "covseg: interrupted" after a pretraining whose pretrained.pt was written whole
    from covseg.pretrain import read_pretrained

    out = tmp_path / "pre"
    fired = _ctrl_c_once_renamed_to(out, monkeypatch)
    capsys.readouterr()
    assert main(["pretrain", "--recipe", "tiny", "--data", str(unl_data), "-o", str(out), "--steps", "2",
                 "--batch-size", "2", "data.input_size=32", "model.width=4", "model.depth=2", "--quiet"]) == 130
    assert fired == [True]
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [f"interrupted once {out / 'pretrained.pt'} was written (2 steps, complete); start a run from "
                       f"it with train.init={out}", "covseg: interrupted"]
    file, data = read_pretrained(out)
    assert file == out / "pretrained.pt" and data["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"]


def test_a_seed_ensemble_s_report_folder_is_not_called_a_cross_validation_by_distill(tmp_path: Path) -> None:
    # cv --seeds' ensemble/ holds fold-K report folders, not runs: the one cv-folder rule (paired.fold_runs) says so
    from covseg.config import apply_overrides, load_recipe
    from covseg.distill import check_teachers

    ensemble = tmp_path / "ensemble"
    (ensemble / "fold-0" / "eval-heldout").mkdir(parents=True)
    config = apply_overrides(load_recipe("tiny", "binary"), [f"train.distill={ensemble}"])
    with pytest.raises(CovsegError) as err:
        check_teachers(config)
    assert "cross-validation folder" not in str(err.value)
