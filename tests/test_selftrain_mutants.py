"""Tests written against surviving mutants of covseg.selftrain and covseg.consistency: rounding and counts in
pseudo.json, the no-slice-kept advice, the output-folder and teacher-folder refusals, damaged summaries, masks and
grey references, the epoch draw's rounding and the consistency term's checks, resampling and CutMix partners.

Predictions are scripted (a fake predictor yields hand-made class probabilities), so every number is computed by
hand; the only network trained is the session's ``tiny_run``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import covseg.consistency
from covseg.consistency import ConsistencyTerm
from covseg.errors import CovsegError
from covseg.selftrain import (PSEUDO_FILE, PseudoLabelRule, _grey_reference, _limits, _relax_advice,
                              _teacher_grey_reference, _teacher_images, check_output_folder, check_pseudo_labels,
                              epoch_pseudo_indices, load_pseudo_labels, make_pseudo_labels, resolve_pseudo_folder)
from covseg.training import weight_average
from conftest import ConstantBackend, add_unlabelled

H, W = 48, 44  # the unlabelled slices' size (add_unlabelled's default): 2112 pixels


def _probs(lesion_pixels: int, p: float) -> np.ndarray:
    """Binary class probabilities ``(2, H, W)``: the first ``lesion_pixels`` pixels (row-major) lesion with
    probability ``p``, the rest background with probability 0.9."""
    fg = np.full(H * W, 0.1, np.float32)
    fg[:lesion_pixels] = p
    fg = fg.reshape(H, W)
    return np.stack([1 - fg, fg])


# four slices, in the order the data set yields them: fraction, confidence by hand
SCRIPT = [
    _probs(0, 0.0),      # no lesion: fraction 0, confidence 0
    _probs(1056, 0.75),  # fraction 1056 / 2112 = 0.5, confidence 0.75
    _probs(7, 0.875),    # fraction 7 / 2112 = 0.0033144, confidence 0.875
    _probs(528, 0.625),  # fraction 0.25, confidence 0.625
]


class ScriptedPredictor:
    """Yields ``SCRIPT``'s probabilities whatever the images; ``on_call`` runs once, as labelling starts."""

    def __init__(self, script: list[np.ndarray], on_call=None) -> None:
        self.backend = ConstantBackend((0.0, 0.0))
        self.script = script
        self.on_call = on_call

    def __call__(self, images):
        assert len(images) == len(self.script)
        if self.on_call is not None:
            self.on_call()
        yield from self.script


def _script_teacher(monkeypatch: pytest.MonkeyPatch, script: list[np.ndarray], on_call=None) -> None:
    from covseg import predict

    real = predict.open_predictor

    def scripted(*args, **kwargs):
        _, config, info = real(*args, **kwargs)
        return ScriptedPredictor(script, on_call), config, info

    monkeypatch.setattr(predict, "open_predictor", scripted)


def _quiet(message: str) -> None:
    pass


# --- pseudo.json: rows, counts, rounding -------------------------------------------------------------------------

def test_summary_rows_are_rounded_counted_and_only_kept_slices_carry_a_digest(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script_teacher(monkeypatch, SCRIPT)
    rule = PseudoLabelRule(min_confidence=0.75, min_fraction=0.01, max_fraction=0.5)
    out = tmp_path / "p"
    summary = make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=rule, progress=False, log=_quiet)
    assert summary == json.loads((out / PSEUDO_FILE).read_text())
    rows = summary["slices"]
    assert [(r["fraction"], r["confidence"], r["kept"]) for r in rows] == [
        (0.0, 0.0, False), (0.5, 0.75, True), (0.0033144, 0.875, False), (0.25, 0.625, False)]  # 7 / 2112
    assert summary["kept"] == 1 and summary["total"] == 4
    assert summary["data"] == str(unl_data.resolve())
    assert ["sha256" in r for r in rows] == [False, True, False, False]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{rows[1]['name']}.png"]
    mask = np.asarray(Image.open(out / "masks" / f"{rows[1]['name']}.png"))
    assert mask.shape == (H, W) and int(mask.sum()) == 1056 and mask[:24].all() and not mask[24:].any()


def test_the_teacher_picked_by_auto_is_best_pt_whose_validation_images_count_as_seen(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (tiny_run / "best.pt").is_file()
    _script_teacher(monkeypatch, SCRIPT)
    split = json.loads((tiny_run / "split.json").read_text())
    summary = make_pseudo_labels(tiny_run, tmp_path / "p", data=str(unl_data), rule=PseudoLabelRule(0, 0, 1),
                                 which="auto", progress=False, log=_quiet)
    assert summary["checkpoint"] == str((tiny_run / "best.pt").resolve())
    assert summary["teacher_images"] == sorted(split["train"] + split["val"])


def test_a_student_teachers_own_teacher_images_count_as_seen(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": ["b", "a"], "val": ["v"], "test": []}))
    pseudo = tmp_path / "pl"
    (pseudo / "fold-0").mkdir(parents=True)
    (pseudo / "fold-0" / PSEUDO_FILE).write_text(json.dumps({"task": "binary", "teacher_images": ["z", "a"],
                                                             "slices": []}))
    assert _teacher_images(run, "last", "cv:0", str(pseudo)) == ["a", "b", "z"]
    assert _teacher_images(run, "best", "cv:0", str(pseudo)) == ["a", "b", "v", "z"]
    assert _teacher_images(run, "last", "cv:0", "") == ["a", "b"]


# --- a teacher that keeps nothing: the advice -----------------------------------------------------------------------

def test_no_slice_kept_is_refused_with_every_refusing_limit_most_refusing_first(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _script_teacher(monkeypatch, SCRIPT)
    # the three slices with lesion: confidence refuses all 3, max-fraction 2 (0.5, 0.25), min-fraction 1 (0.0033)
    rule = PseudoLabelRule(min_confidence=0.9, min_fraction=0.01, max_fraction=0.2)
    with pytest.raises(CovsegError) as refused:
        make_pseudo_labels(tiny_run, tmp_path / "p", data=str(unl_data), rule=rule, progress=False, log=_quiet)
    assert str(refused.value) == (
        f"{tiny_run}: kept none of 4 slices as pseudo-labels (--min-confidence 0.9, --min-fraction 0.01, "
        "--max-fraction 0.2), so a student would have none to train on; lower --min-confidence (it refused 3 of the "
        "3 slices with lesion) or raise --max-fraction (it refused 2 of the 3 slices with lesion) or lower "
        "--min-fraction (it refused 1 of the 3 slices with lesion); the teacher's lesion covered 0.00331-0.5 of a "
        "slice, at confidence 0.625-0.875; nothing was written")
    assert not (tmp_path / "p").exists()


def test_relax_advice_limits_are_inclusive_and_unrefusing_limits_are_not_named() -> None:
    rule = PseudoLabelRule(min_confidence=0.5, min_fraction=0.125, max_fraction=0.375)
    # at every limit exactly: not refused by it; only the 0.25-confident slice is refused (by confidence)
    assert _relax_advice(rule, [(0.125, 0.5), (0.375, 0.25)]) == (
        "lower --min-confidence (it refused 1 of the 2 slices with lesion)")
    assert _relax_advice(rule, []) == ("the teacher found lesion on none of them, which no limit changes; check "
                                       "the teacher and --data")


def test_limits_of_a_summary_without_a_whole_rule_name_the_options() -> None:
    assert _limits({"min_confidence": 0.9}) == "limits --min-confidence, --min-fraction, --max-fraction"
    assert _limits(None) == "limits --min-confidence, --min-fraction, --max-fraction"
    assert _limits({"min_confidence": 0.9, "min_fraction": 0.0, "max_fraction": 1}) == (
        "--min-confidence 0.9, --min-fraction 0.0, --max-fraction 1")


def test_the_rule_refuses_negative_and_above_one_limits() -> None:
    for kwargs, option in [({"min_confidence": -0.1}, "min-confidence"), ({"min_fraction": -0.1}, "min-fraction"),
                           ({"max_fraction": 1.5}, "max-fraction")]:
        with pytest.raises(CovsegError, match=option):
            PseudoLabelRule(**kwargs)
    PseudoLabelRule(0.0, 0.0, 0.0)  # every limit at its edge is allowed
    PseudoLabelRule(1.0, 1.0, 1.0)


# --- where the output may go ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["same", "inside", "above"])
def test_the_output_may_not_be_the_teacher_inside_it_or_above_it(tiny_run: Path, unl_data: Path, where: str) -> None:
    out = {"same": tiny_run, "inside": tiny_run / "pl", "above": tiny_run.parent}[where]
    before = sorted(p.name for p in tiny_run.iterdir())
    with pytest.raises(CovsegError, match="the output may not be the teacher's folder, inside it or above it"):
        make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=PseudoLabelRule(0, 0, 1), progress=False,
                           log=_quiet)
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_something_appearing_at_the_output_while_labelling_is_not_deleted_by_force(
        tiny_run: Path, unl_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p"
    rule = PseudoLabelRule(0, 0, 1)
    _script_teacher(monkeypatch, SCRIPT)
    make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=rule, progress=False, log=_quiet)
    _script_teacher(monkeypatch, SCRIPT, on_call=lambda: (out / "notes.txt").write_text("mine"))
    with pytest.raises(CovsegError, match="the pseudo-labels were made, but nothing was written: .*it holds notes.txt"):
        make_pseudo_labels(tiny_run, out, data=str(unl_data), rule=rule, force=True, progress=False, log=_quiet)
    assert (out / "notes.txt").read_text() == "mine" and (out / PSEUDO_FILE).is_file()


def _pseudo_output(folder: Path) -> Path:
    (folder / "masks").mkdir(parents=True)
    (folder / "masks" / "a.png").write_bytes(b"png")
    (folder / PSEUDO_FILE).write_text("{}")
    return folder


def test_force_refuses_links_and_folds_inside_folds(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    check_output_folder(_pseudo_output(tmp_path / "ok"), force=True)  # the shape covseg writes: accepted

    linked = _pseudo_output(tmp_path / "linked")
    (linked / PSEUDO_FILE).unlink()
    (linked / PSEUDO_FILE).symlink_to(elsewhere)
    with pytest.raises(CovsegError, match=r"\(it holds pseudo.json\)"):
        check_output_folder(linked, force=True)

    png = _pseudo_output(tmp_path / "png")
    (png / "masks" / "b.png").symlink_to(elsewhere)
    with pytest.raises(CovsegError, match=r"\(it holds masks/b.png\)"):
        check_output_folder(png, force=True)

    nested = tmp_path / "nested"
    _pseudo_output(nested / "fold-0")
    _pseudo_output(nested / "fold-0" / "fold-1")
    with pytest.raises(CovsegError, match=r"\(it holds fold-0/fold-1\)"):
        check_output_folder(nested, force=True)


# --- a cross-validation teacher with an unfinished fold -------------------------------------------------------------

def test_a_cross_validation_teacher_with_an_unfinished_fold_run_is_refused(tiny_run: Path, unl_data: Path,
                                                                           tmp_path: Path) -> None:
    from covseg.checkpoint import read_checkpoint

    cv = tmp_path / "cv"
    for k in range(3):  # data.folds=3: three fold runs, each scored
        fold = shutil.copytree(tiny_run, cv / f"fold-{k}")
        (fold / "eval-heldout").mkdir(exist_ok=True)
        (fold / "eval-heldout" / "metrics.json").write_text("{}")
    state = read_checkpoint(cv / "fold-1" / "last.pt")
    state["epoch"] = 1  # stopped after 1 of its 3 epochs, though scored
    torch.save(state, cv / "fold-1" / "last.pt")
    with pytest.raises(CovsegError, match=r"fold-1/last.pt holds epoch 1 of 3, an unfinished run"):
        make_pseudo_labels(cv, tmp_path / "p", data=str(unl_data), rule=PseudoLabelRule(0, 0, 1), progress=False,
                           log=_quiet)
    assert not (tmp_path / "p").exists()


# --- reading pseudo-labels back -------------------------------------------------------------------------------------

def _summary_file(folder: Path, rows: list[dict], **extra: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PSEUDO_FILE).write_text(json.dumps({"task": "binary", "teacher_images": ["0"], "slices": rows,
                                                  **extra}))


def test_per_fold_pseudo_labels_name_the_split_that_is_not_one_of_their_folds(tmp_path: Path) -> None:
    _summary_file(tmp_path / "pl" / "fold-0", [])
    assert resolve_pseudo_folder(tmp_path / "pl", "cv:0") == tmp_path / "pl" / "fold-0"
    with pytest.raises(CovsegError, match="holds per-fold pseudo-labels, but split 'cv:5' is not one of its folds"):
        resolve_pseudo_folder(tmp_path / "pl", "cv:5")
    with pytest.raises(CovsegError, match="no pseudo.json; make pseudo-labels"):
        resolve_pseudo_folder(tmp_path / "empty", "cv:0")


def test_the_kept_count_is_that_of_the_rows_not_the_files_field(tmp_path: Path) -> None:
    rows = [{"name": "a", "kept": True}, {"name": "b", "kept": False}]
    _summary_file(tmp_path / "p", rows)  # no "kept" field at all
    assert check_pseudo_labels(tmp_path / "p", "binary", [])["kept"] == 1
    _summary_file(tmp_path / "q", [{"name": "a", "kept": False}], kept=5)  # a field that disagrees with the rows
    with pytest.raises(CovsegError, match="no slice was kept as a pseudo-label"):
        check_pseudo_labels(tmp_path / "q", "binary", [])


@pytest.mark.parametrize("field, value", [("slices", None), ("slices", [3]), ("teacher_images", 5),
                                          ("slices", ["name"])])
def test_a_summary_of_the_wrong_types_is_refused_in_one_line(tmp_path: Path, field: str, value: object) -> None:
    _summary_file(tmp_path / "p", [{"name": "a", "kept": True}])
    summary = json.loads((tmp_path / "p" / PSEUDO_FILE).read_text())
    summary[field] = value
    (tmp_path / "p" / PSEUDO_FILE).write_text(json.dumps(summary))
    with pytest.raises(CovsegError, match="not a covseg pseudo-label summary"):
        check_pseudo_labels(tmp_path / "p", "binary", [])


@pytest.mark.parametrize("mask, message", [
    (np.zeros((H, W - 1), np.uint8), "does not fit its slice or the binary labels"),
    (np.full((H, W), 2, np.uint8), "does not fit its slice or the binary labels"),
    (None, "missing or unreadable; make the pseudo-labels again"),
])
def test_a_mask_that_does_not_fit_or_is_missing_is_refused(unl_data: Path, tmp_path: Path, mask, message) -> None:
    folder = tmp_path / "p"
    _summary_file(folder, [{"name": "u0", "kept": True}])  # no sha256: matched by name, as older summaries
    (folder / "masks").mkdir()
    if mask is not None:
        Image.fromarray(mask).save(folder / "masks" / "u0.png")
    with pytest.raises(CovsegError, match=message):
        load_pseudo_labels(folder, str(unl_data), "binary", (-600, 1500), [])
    # a mask of the slice's size and the task's classes is served
    Image.fromarray(np.ones((H, W), np.uint8)).save(folder / "masks" / "u0.png")
    (sample,) = load_pseudo_labels(folder, str(unl_data), "binary", (-600, 1500), [])
    assert sample.name == "u0" and sample.mask.dtype == np.int64 and int(sample.mask.sum()) == H * W


@pytest.mark.parametrize("reference", [[0.5], [0.0, float("nan")], ["a", "b"], [[0.1, 0.2]], [0.3, 0.2]])
def test_a_damaged_grey_reference_is_refused(tmp_path: Path, reference: list) -> None:
    with pytest.raises(CovsegError, match="grey_reference is not a list of non-decreasing grey levels"):
        _grey_reference({"grey_reference": reference}, tmp_path)


def test_a_grey_reference_may_be_flat_in_places() -> None:
    np.testing.assert_array_equal(_grey_reference({"grey_reference": [0.2, 0.2, 0.4]}, Path(".")), [0.2, 0.2, 0.4])
    assert _grey_reference({}, Path(".")) is None


def test_match_grey_needs_the_teachers_training_slices() -> None:
    with pytest.raises(CovsegError, match="holds none of the teacher's training slices"):
        _teacher_grey_reference([], "elsewhere", ["0", "1"])


# --- the epoch's draw ---------------------------------------------------------------------------------------------

def test_the_epoch_draw_rounds_to_the_nearest_count() -> None:
    assert len(epoch_pseudo_indices(10, 3, 0.9, seed=0, epoch=0)) == 3  # 2.7 rounds up
    assert len(epoch_pseudo_indices(10, 3, 0.6, seed=0, epoch=0)) == 2  # 1.8
    assert len(epoch_pseudo_indices(10, 3, 0.1, seed=0, epoch=0)) == 0  # 0.3 rounds down


# --- the consistency term -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1, 4, 4), (3, 2, 4, 4), (3, 4, 4)])
def test_the_term_refuses_unlabelled_images_of_another_shape(shape: tuple[int, ...]) -> None:
    student = nn.Conv2d(1, 2, 1)
    with pytest.raises(ValueError, match="unlabelled images must be"):
        ConsistencyTerm(torch.zeros(shape), weight_average(student, 0.9), batch=2, weight=1.0)


def test_resized_slices_are_resampled_bilinearly_without_aligned_corners() -> None:
    # identical slices: CutMix changes nothing, so the mixed slices are the resampled slice itself
    ramp = (torch.arange(16, dtype=torch.float32) / 16).view(1, 16).expand(16, 16)
    image = (ramp + ramp.T / 2).view(1, 1, 16, 16)
    images = image.expand(4, 1, 16, 16).half()
    student = nn.Conv2d(1, 2, 1)
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=3, weight=1.0)
    term.update(student)
    mixed, _ = term.batch_for(student, torch.Generator().manual_seed(0), 8, torch.device("cpu"))
    expected = F.interpolate(images[:1].float(), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mixed, expected.expand(3, 1, 8, 8))


def test_each_slice_takes_its_box_from_another_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    def left_half(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        masks = torch.zeros(n, 1, height, width)
        masks[..., : width // 2] = 1.0
        return masks

    monkeypatch.setattr(covseg.consistency, "box_masks", left_half)
    images = torch.tensor([0.125, 0.25, 0.5, 0.75]).view(4, 1, 1, 1).expand(4, 1, 4, 4).half()
    student = nn.Conv2d(1, 2, 1)
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=3, weight=1.0)
    term.update(student)
    for seed in range(20):
        mixed, _ = term.batch_for(student, torch.Generator().manual_seed(seed), None, torch.device("cpu"))
        left, right = mixed[..., 0, 0], mixed[..., 0, -1]  # the box's slice, the slice's own
        assert (left != right).all(), seed
        assert sorted(left.flatten().tolist()) == sorted(right.flatten().tolist())  # a cyclic shift of the batch
