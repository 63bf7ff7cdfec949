"""Session 74, semi-supervised training on unlabelled slices: slices that look like label masks are warned of (by
train.consistency and covseg pseudo-label), what run.json records of a consistency run's unlabelled slices (a digest
a resume checks), and, by hand, one mean-teacher update and one CutMix of the teacher's targets.

No network is trained: the networks are 1x1 convolutions (and a batch norm) set by hand, the slices are written here."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import covseg.consistency
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.consistency import (ConsistencyTerm, check_unlabelled_unchanged, load_unlabelled, mask_like_slices,
                                unlabelled_record, warn_mask_like)
from covseg.datasets import Sample, load_dataset
from covseg.errors import CovsegError
from covseg.fileio import file_sha256
from covseg.selftrain import _split_once
from covseg.training import weight_average
from covseg.transforms import box_masks

from conftest import TINY_OVERRIDES, ctrl_c_at_epoch

UNLABELLED = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"


def _ct_like(seed: int, shape: tuple[int, int] = (40, 36)) -> np.ndarray:
    """An 8-bit grey 'slice' of noise around 60 and 150: dozens of grey levels, as a CT slice has."""
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 8, shape)
    image[10:25, 8:20] += 90
    return np.clip(image, 0, 255).astype(np.uint8)


def _binary_mask(shape: tuple[int, int] = (40, 36)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[5:20, 5:15] = 255
    return mask


def _sample(name: str, pixels: np.ndarray, source: str = "") -> Sample:
    return Sample(name, pixels.astype(np.float32) / 255, None, source or f"/data/{name}.png")


def _unlabelled_folder(root: Path, slices: dict[str, np.ndarray]) -> Path:
    """A COVID-SemiSeg tree at ``root`` holding only the unlabelled slices ``slices`` (name -> 8-bit pixels)."""
    folder = root / UNLABELLED
    folder.mkdir(parents=True)
    for name, pixels in slices.items():
        Image.fromarray(pixels).save(folder / f"{name}.png")
    return root


def test_slices_of_at_most_three_grey_levels_are_mask_like_and_ct_slices_are_not() -> None:
    three = np.zeros((40, 36), np.uint8)
    three[:, 12:24], three[:, 24:] = 76, 150  # a three-class mask shown in grey
    four = three.copy()
    four[:4] = 200  # a fourth level: no mask of covseg's tasks holds one
    samples = [_sample("binary", _binary_mask()), _sample("ct", _ct_like(0)), _sample("three", three),
               _sample("blank", np.zeros((40, 36), np.uint8)), _sample("four", four)]
    assert [s.name for s in mask_like_slices(samples)] == ["binary", "three", "blank"]
    # only every 4th row and column is read: a level on rows 1-3 alone is not seen
    hidden = _binary_mask()
    hidden[1:4, :] = 77
    assert [s.name for s in mask_like_slices([_sample("hidden", hidden)])] == ["hidden"]


def test_a_folder_with_masks_among_the_slices_is_warned_of_in_one_line(tmp_path: Path, capsys) -> None:
    root = _unlabelled_folder(tmp_path, {"a": _binary_mask(), "b": _ct_like(1), "c": _binary_mask()})
    config = apply_overrides(load_recipe("tiny"), ["data.input_size=32", "train.consistency=1",
                                                   "train.consistency_batch=2"])
    logged: list[str] = []
    loaded = load_unlabelled(config, str(root), logged.append)
    err = capsys.readouterr().err.strip().splitlines()
    folder = root / UNLABELLED
    assert err == [f"covseg: warning: 2 of 3 unlabelled slices that train.consistency reads hold at most 3 grey levels, "
                   f"like label masks or blank images, not CT slices (first: {folder / 'a.png'}); take them out of "
                   f"{folder}"]
    assert logged == ["consistency: 3 unlabelled slices, 2 per step, weight 1"]
    assert loaded is not None and loaded.images.shape == (3, 1, 32, 32) and loaded.images.dtype == torch.float16
    assert loaded.folders == [folder] and loaded.record["slices"] == 3
    warn_mask_like([_sample("b", _ct_like(1))], "x")  # CT slices alone: no warning
    warn_mask_like([_sample("m", _binary_mask())], "covseg pseudo-label")  # one of one: "holds"
    assert capsys.readouterr().err == ("covseg: warning: 1 of 1 unlabelled slice that covseg pseudo-label reads holds "
                                       "at most 3 grey levels, like label masks or blank images, not CT slices (first: "
                                       "/data/m.png); take them out of /data\n")
    volume = [_sample(f"val_im_{z:03d}", pixels, "/data/val_im.nii.gz") for z, pixels in enumerate([_ct_like(6),
                                                                                                  _binary_mask()])]
    warn_mask_like(volume, "train.consistency")  # slices of one file: none can be taken out alone
    assert capsys.readouterr().err.endswith("(first: /data/val_im.nii.gz); check /data/val_im.nii.gz\n")


def test_pseudo_label_warns_of_mask_like_slices_once_for_all_its_fold_teachers(tmp_path: Path, capsys) -> None:
    root = _unlabelled_folder(tmp_path, {"a": _ct_like(2), "b": _binary_mask()})
    config = load_recipe("tiny")
    loaded: dict = {}
    first = _split_once(loaded, str(root), config, "unlabelled")
    again = _split_once(loaded, str(root), config, "unlabelled")  # the next fold's teacher: read once, told once
    assert first is again and [s.name for s in first] == ["a", "b"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: warning: 1 of 2 unlabelled slices that covseg pseudo-label "
                                               "reads holds at most 3 grey levels")


def test_the_record_of_the_unlabelled_slices_is_a_digest_of_their_names_and_files(tmp_path: Path,
                                                                                 monkeypatch) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"slice a")
    b.write_bytes(b"slice b")
    samples = [_sample("b", _ct_like(3), str(b)), _sample("a", _ct_like(4), str(a))]
    by_hand = hashlib.sha256(f"a\t{hashlib.sha256(b'slice a').hexdigest()}\n"
                             f"b\t{hashlib.sha256(b'slice b').hexdigest()}\n".encode()).hexdigest()
    record = unlabelled_record(samples)
    assert record == {"slices": 2, "folders": [str(tmp_path)], "sha256": by_hand}
    assert unlabelled_record(samples[::-1]) == record  # the order they were read in does not count
    renamed = [_sample("c", _ct_like(3), str(b)), samples[1]]
    assert unlabelled_record(renamed)["sha256"] != by_hand
    assert unlabelled_record(samples[1:]) == {"slices": 1, "folders": [str(tmp_path)],
                                             "sha256": hashlib.sha256(f"a\t{file_sha256(a)}\n".encode()).hexdigest()}
    b.write_bytes(b"slice B")  # the same names, another image
    assert unlabelled_record(samples)["sha256"] != by_hand
    # the slices of one volume (MedSeg's val_im.nii.gz): the file is hashed once
    hashed: list[str] = []
    monkeypatch.setattr(covseg.consistency, "file_sha256", lambda p: hashed.append(p) or "d")
    volume = [_sample(f"val_im_{z:03d}", _ct_like(z), "/data/val_im.nii.gz") for z in range(3)]
    assert unlabelled_record(volume)["slices"] == 3 and hashed == ["/data/val_im.nii.gz"]


def test_an_unreadable_slice_file_is_one_line_naming_it(tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match=r"^/nowhere/a.png: cannot read the unlabelled slice's file \("):
        unlabelled_record([_sample("a", _ct_like(5), "/nowhere/a.png")])


def test_a_resume_refuses_unlabelled_slices_that_changed_and_takes_a_run_recorded_before(tmp_path: Path) -> None:
    began = {"slices": 1600, "folders": ["/data/Imgs"], "sha256": "1" * 64}
    now = {"slices": 1599, "folders": ["/data/Imgs"], "sha256": "2" * 64}
    with pytest.raises(CovsegError) as err:
        check_unlabelled_unchanged(tmp_path / "run", began, now)
    assert str(err.value) == (f"{tmp_path / 'run'}: the unlabelled slices of train.consistency changed since the run "
                              "began (1600 slices in /data/Imgs; now 1599 slices there, not all of the same names and "
                              "images); put them back as they were, or train a new run")
    check_unlabelled_unchanged(tmp_path / "run", began, {**now, "slices": 1600, "sha256": "1" * 64})
    check_unlabelled_unchanged(tmp_path / "run", None, now)  # a run that began before covseg recorded them
    with pytest.raises(CovsegError, match=r"began \(other slices in its data folder; now 1599 slices in /data/Imgs, "):
        check_unlabelled_unchanged(tmp_path / "run", {"sha256": "3" * 64}, now)
    with pytest.raises(CovsegError, match=r"began \(1 slice in /old/Imgs; now 1599 slices in /data/Imgs, "):
        check_unlabelled_unchanged(tmp_path / "run", {"slices": 1, "folders": ["/old/Imgs"], "sha256": "3" * 64}, now)


def test_one_teacher_update_by_hand_averages_the_weights_and_not_the_batch_norm_statistics() -> None:
    student = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    term = ConsistencyTerm(torch.rand(4, 1, 8, 8), weight_average(student, 0.75), batch=2, weight=1.0)
    term.update(student)  # the first update copies the student
    t0 = {k: v.clone() for k, v in student.state_dict().items()}
    with torch.no_grad():
        student[0].weight.fill_(2.0)
        student[0].bias.fill_(-1.0)
        student[1].weight.fill_(3.0)
    student.train()(torch.rand(4, 1, 8, 8))  # new running statistics
    term.update(student)
    teacher = term.teacher.module
    for key, value in teacher.named_parameters():  # 0.75 teacher + 0.25 student, by hand
        torch.testing.assert_close(value, 0.75 * t0[key] + 0.25 * student.state_dict()[key])
    torch.testing.assert_close(teacher[0].weight, 0.75 * t0["0.weight"] + 0.5)
    # the teacher's statistics are not averaged: it labels with the student's current ones
    term.batch_for(student, torch.Generator().manual_seed(0), None, torch.device("cpu"))
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.equal(teacher.state_dict()[key], student.state_dict()[key])
    assert int(student[1].num_batches_tracked) == 1 and not teacher.training


def test_the_teacher_targets_take_the_box_the_mixed_slices_take_on_the_last_two_axes() -> None:
    # four slices of one grey level each; a 1x1 convolution (no batch norm) makes per-pixel logits from it
    student = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[[[4.0]]], [[[-4.0]]]]))
        student.bias.zero_()
    images = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(4, 1, 1, 1).expand(4, 1, 12, 12).half()
    term = ConsistencyTerm(images, weight_average(student, 0.9), batch=3, weight=1.0)
    mixed, target = term.batch_for(student, torch.Generator().manual_seed(11), None, torch.device("cpu"))
    # the same draws by hand: which slices, the cyclic shift, the boxes
    g = torch.Generator().manual_seed(11)
    pick = torch.randperm(4, generator=g)[:3]
    shift = int(torch.randint(1, 3, (1,), generator=g))
    boxes = box_masks(3, 12, 12, g).bool()
    levels = images[pick, 0, 0, 0].float()
    for i in range(3):
        inside, outside = levels[(i + shift) % 3], levels[i]
        want = torch.where(boxes[i, 0], inside, outside)
        assert torch.equal(mixed[i, 0], want)
        fg = torch.sigmoid(-8 * want)  # softmax of (4 x, -4 x): class 1 has probability sigmoid(-8 x)
        torch.testing.assert_close(target[i, 1], fg)
        torch.testing.assert_close(target[i].sum(0), torch.ones(12, 12))
    assert any(0 < int(b.sum()) < 144 for b in boxes)  # a box neither empty nor whole: the check above has teeth

def test_run_json_records_the_unlabelled_slices_and_a_resume_refuses_them_changed(unl_data: Path, tmp_path: Path,
                                                                                  monkeypatch, capsys) -> None:
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(unl_data, data)
    real = ctrl_c_at_epoch(1, monkeypatch)
    assert main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "--epochs", "2", "-o", str(run),
                 "--quiet", *TINY_OVERRIDES, "train.consistency=1", "train.consistency_batch=2"]) == 130
    monkeypatch.setattr("covseg.run.train_one_epoch", real)
    folder = data / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"
    recorded = json.loads((run / "run.json").read_text())["unlabelled"]
    assert recorded == unlabelled_record(load_dataset(str(data), "binary", split="unlabelled"))
    assert recorded["slices"] == 4 and recorded["folders"] == [str(folder)]
    capsys.readouterr()
    kept = (folder / "u0.jpg").read_bytes()
    (folder / "u0.jpg").write_bytes((folder / "u1.jpg").read_bytes())  # another image under the same name
    last = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"covseg: error: {run}: the unlabelled slices of train.consistency changed since the run began "
                   f"(4 slices in {folder}; now 4 slices there, not all of the same names and images); put them back "
                   "as they were, or train a new run")
    assert (run / "last.pt").read_bytes() == last  # refused before anything was written
    (folder / "u0.jpg").write_bytes(kept)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out.startswith("trained 1 more epoch (2 of 2)") \
        and f"; mean teacher on 4 unlabelled slices; run folder {run}" in out
