"""Self-training: pseudo-labels from a teacher (run or CV folder), honest use by a student."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covseg.cli import main
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.intensity import grey_quantiles, match_quantiles
from covseg.selftrain import (PseudoLabelRule, epoch_pseudo_indices, load_pseudo_labels, resolve_pseudo_folder,
                              slice_statistics)
from conftest import TINY_OVERRIDES, add_unlabelled, interrupt_after_touching, write_semiseg


def test_slice_statistics_by_hand() -> None:
    # 2 classes on a 2x2 slice: pixels 0 and 1 are lesion (p = 0.8 and 0.6), pixels 2 and 3 background
    fg = np.array([[0.8, 0.6], [0.3, 0.1]])
    labels, fraction, confidence = slice_statistics(np.stack([1 - fg, fg]))
    assert labels.tolist() == [[1, 1], [0, 0]]
    assert fraction == pytest.approx(0.5)
    assert confidence == pytest.approx(0.7)
    _, fraction, confidence = slice_statistics(np.stack([np.ones((2, 2)), np.zeros((2, 2))]))
    assert fraction == 0 and confidence == 0


def test_rule_refuses_nonsense() -> None:
    with pytest.raises(CovsegError, match="min-confidence"):
        PseudoLabelRule(min_confidence=1.5)
    with pytest.raises(CovsegError, match="max-fraction"):
        PseudoLabelRule(min_fraction=0.6, max_fraction=0.5)


def test_epoch_draw_is_seeded_and_sized() -> None:
    a = epoch_pseudo_indices(100, 40, 0.5, seed=0, epoch=3)
    assert len(a) == 20 and len(set(a.tolist())) == 20
    assert a.tolist() == epoch_pseudo_indices(100, 40, 0.5, seed=0, epoch=3).tolist()
    assert a.tolist() != epoch_pseudo_indices(100, 40, 0.5, seed=0, epoch=4).tolist()
    assert len(epoch_pseudo_indices(10, 40, 1.0, 0, 0)) == 10  # never more than there are


@pytest.fixture(scope="module")
def semi_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 labelled synthetic slices plus 8 unlabelled ones in the COVID-SemiSeg layout."""
    return add_unlabelled(write_semiseg(tmp_path_factory.mktemp("semi"), n=9, seed=3), n=8, seed=5)


@pytest.fixture(scope="module")
def teacher_cv(semi_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cv") / "teacher"
    assert main(["cv", "--recipe", "tiny", "--task", "binary", "--data", str(semi_data), "--folds", "3",
                 "-o", str(out), "--quiet", "train.epochs=12", *TINY_OVERRIDES]) == 0
    return out


def test_pseudo_label_per_fold_and_student(semi_data: Path, teacher_cv: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pseudo = tmp_path / "pseudo"
    assert main(["pseudo-label", str(teacher_cv), "-o", str(pseudo), "--min-confidence", "0",
                 "--min-fraction", "0", "--max-fraction", "1", "--quiet"]) == 0
    for k in range(3):
        summary = json.loads((pseudo / f"fold-{k}" / "pseudo.json").read_text())
        split = json.loads((teacher_cv / f"fold-{k}" / "split.json").read_text())
        assert summary["teacher_images"] == sorted(split["train"])
        assert summary["total"] == 8 and summary["task"] == "binary"
        kept = [r["name"] for r in summary["slices"] if r["kept"]]
        assert summary["kept"] == len(kept)
        for name in kept:  # a label map at the slice's own size, class ids only
            mask = np.asarray(Image.open(pseudo / f"fold-{k}" / "masks" / f"{name}.png"))
            assert mask.shape == (48, 44) and set(np.unique(mask)) <= {0, 1}
        assert sorted(p.stem for p in (pseudo / f"fold-{k}" / "masks").iterdir()) == sorted(kept)
    assert not list(tmp_path.glob(".pseudo*"))  # nothing staged left behind

    # the student of fold 1 reads fold-1's pseudo-labels ...
    assert resolve_pseudo_folder(pseudo, "cv:1") == pseudo / "fold-1"
    rows1 = json.loads((pseudo / "fold-1" / "pseudo.json").read_text())["slices"]
    kept1 = sum(r["kept"] for r in rows1)
    assert kept1 > 0 and kept1 == sum(r["fraction"] > 0 for r in rows1)  # the rule above keeps every non-empty slice
    student = tmp_path / "student"
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:1", "--epochs", "2",
                 "-o", str(student), "--quiet", f"data.pseudo_labels={pseudo}", "data.pseudo_ratio=0.5",
                 *TINY_OVERRIDES]) == 0
    n_train = len(json.loads((student / "split.json").read_text())["train"])
    drawn = min(kept1, round(0.5 * n_train))
    assert (f"self-training: {kept1} pseudo-labelled slices from {pseudo / 'fold-1'}, {drawn} drawn each epoch "
            "(data.pseudo_ratio 0.5 per labelled image)\n") in capsys.readouterr().err
    assert (student / "last.pt").is_file()
    # a ratio asking more slices than were kept draws them all, and says so (it said "2 per labelled image")
    greedy = tmp_path / "greedy"
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:1", "--epochs", "1",
                 "-o", str(greedy), "--quiet", f"data.pseudo_labels={pseudo}", "data.pseudo_ratio=2",
                 *TINY_OVERRIDES]) == 0
    assert 2 * n_train > kept1
    assert (f"{kept1} drawn each epoch (data.pseudo_ratio 2 per labelled image; it asks {2 * n_train}, more than "
            "were kept)\n") in capsys.readouterr().err

    # ... a ratio that draws no pseudo-labelled slice is refused (it would be plain training) ...
    tiny_ratio = tmp_path / "tiny-ratio"
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:1", "--epochs", "2",
                 "-o", str(tiny_ratio), "--quiet", f"data.pseudo_labels={pseudo}",
                 f"data.pseudo_ratio={0.4 / n_train}", *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert f"of {n_train} training images draws no pseudo-labelled slice per epoch" in err.splitlines()[-1]
    # refused first: no "self-training: ..., 0 drawn each epoch" line before it (tests/test_s72_fixes.py)
    assert "Traceback" not in err and "self-training" not in err and err.count("\n") == 1, err
    assert not tiny_ratio.exists()

    # ... and a student scored on images its teacher trained on is refused before anything is written
    leaky = tmp_path / "leaky"
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:1", "--epochs", "2",
                 "-o", str(leaky), "--quiet", f"data.pseudo_labels={pseudo / 'fold-0'}", *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert "teacher trained on held-out image" in err and err.count("\n") == 1
    assert not leaky.exists()


def test_load_refuses_wrong_task_and_missing_slices(semi_data: Path, teacher_cv: Path, tmp_path: Path) -> None:
    pseudo = tmp_path / "p"
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(pseudo), "--min-confidence", "0",
                 "--min-fraction", "0", "--max-fraction", "1", "--quiet"]) == 0
    heldout = json.loads((teacher_cv / "fold-0" / "split.json").read_text())["val"]
    samples = load_pseudo_labels(pseudo, str(semi_data), "binary", (-600, 1500), heldout)
    assert len(samples) == json.loads((pseudo / "pseudo.json").read_text())["kept"] > 0
    assert all(s.mask.dtype == np.int64 and s.mask.shape == s.image.shape for s in samples)
    with pytest.raises(CovsegError, match="binary task, not multiclass"):
        load_pseudo_labels(pseudo, str(semi_data), "multiclass", (-600, 1500), heldout)
    other = write_semiseg(tmp_path / "other", n=3)
    (other / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(
        other / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs/x.jpg")
    with pytest.raises(CovsegError, match="has no unlabelled slice"):
        load_pseudo_labels(pseudo, str(other), "binary", (-600, 1500), heldout)
    # an existing output is not overwritten without --force
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(pseudo), "--quiet"]) == 2
    assert main(["pseudo-label", str(tmp_path / "nowhere"), "-o", str(tmp_path / "q"), "--quiet"]) == 2
    assert not (tmp_path / "q").exists()


def test_pseudo_labels_of_other_images_of_the_same_names_are_refused(semi_data: Path, teacher_cv: Path,
                                                                     tmp_path: Path, capsys) -> None:
    """Pseudo-labels were matched to the student's unlabelled slices by name alone: a student whose --data held other
    slices of the same names trained silently on masks of other images."""
    pseudo = tmp_path / "p"
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(pseudo), "--min-confidence", "0",
                 "--min-fraction", "0", "--max-fraction", "1", "--quiet"]) == 0
    summary = json.loads((pseudo / "pseudo.json").read_text())
    unlabelled = {s.name: s.source for s in load_dataset(semi_data, "binary", split="unlabelled")}
    kept = [row for row in summary["slices"] if row["kept"]]
    assert kept
    heldout = json.loads((teacher_cv / "fold-0" / "split.json").read_text())["val"]
    assert len(load_pseudo_labels(pseudo, str(semi_data), "binary", (-600, 1500), heldout)) == len(kept)
    # the same names and sizes, other pixels
    other = tmp_path / "other"
    shutil.copytree(semi_data, other)
    shutil.rmtree(other / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label")
    add_unlabelled(other, n=8, seed=99)
    with pytest.raises(CovsegError, match="was made from another image than .*re-run `covseg pseudo-label` on this "
                                          "--data, or pass the --data the labels were made from"):
        load_pseudo_labels(pseudo, str(other), "binary", (-600, 1500), heldout)
    student = tmp_path / "student"
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--data", str(other), "--split", "cv:0", "--epochs", "1",
                 "-o", str(student), "--quiet", f"data.pseudo_labels={pseudo}", *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was made from another image than" in err and str(semi_data) in err, err
    assert not student.exists()
    # each kept slice's row holds its source file's SHA-256
    assert all(row.get("sha256") == hashlib.sha256(Path(unlabelled[row["name"]]).read_bytes()).hexdigest()
               for row in kept)
    # a pseudo.json written before covseg recorded the digests is matched by name, as before
    for row in summary["slices"]:
        row.pop("sha256", None)
    (pseudo / "pseudo.json").write_text(json.dumps(summary))
    assert len(load_pseudo_labels(pseudo, str(other), "binary", (-600, 1500), heldout)) == len(kept)


def test_pseudo_label_refuses_unsafe_outputs_and_counts_best_checkpoint_selection(
        semi_data: Path, teacher_cv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keep_all = ["--min-confidence", "0", "--min-fraction", "0", "--max-fraction", "1", "--quiet"]
    # --force never deletes the teacher or a folder that holds no pseudo-labels
    assert main(["pseudo-label", str(teacher_cv), "-o", str(teacher_cv), "--force", *keep_all]) == 2
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(teacher_cv), "--force", *keep_all]) == 2
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(other), "--force", *keep_all]) == 2
    assert (other / "notes.txt").read_text() == "keep me" and (teacher_cv / "fold-0" / "last.pt").is_file()
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("covseg: error: ") for e in errors)

    # a teacher's best.pt was chosen on its validation fold: those images count as seen
    best = tmp_path / "best"
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(best), "--checkpoint", "best", *keep_all]) == 0
    split = json.loads((teacher_cv / "fold-0" / "split.json").read_text())
    assert json.loads((best / "pseudo.json").read_text())["teacher_images"] == sorted(split["train"] + split["val"])
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(tmp_path / "student"), "--quiet", f"data.pseudo_labels={best}", *TINY_OVERRIDES]) == 2
    assert "teacher trained on held-out image" in capsys.readouterr().err
    # a corrupt summary is one line, not a traceback
    (best / "pseudo.json").write_text('{"task": "binary"}')
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:1", "--epochs", "1",
                 "-o", str(tmp_path / "student2"), "--quiet", f"data.pseudo_labels={best}", *TINY_OVERRIDES]) == 2
    assert "not a covseg pseudo-label summary" in capsys.readouterr().err


def test_pseudo_label_refuses_a_cross_validation_with_a_fold_missing_or_unfinished(
        teacher_cv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(teacher_cv, partial)
    shutil.rmtree(partial / "fold-1" / "eval-heldout")  # as a fold still training (it has a last.pt) looks
    assert main(["pseudo-label", str(partial), "-o", str(tmp_path / "p1"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a 3-fold cross-validation with 3 fold folders, unfinished: fold-1" in err and err.count("\n") == 1
    shutil.rmtree(partial / "fold-1")
    assert main(["pseudo-label", str(partial), "-o", str(tmp_path / "p2"), "--quiet"]) == 2
    assert "a 3-fold cross-validation with 2 fold folders" in capsys.readouterr().err
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def test_pseudo_label_refuses_an_output_it_cannot_make_in_one_line(teacher_cv: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("mine")
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(tmp_path / "afile" / "sub"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"afile/sub: cannot be written ({tmp_path / 'afile'} is a file, not a folder)" in err
    assert err.count("\n") == 1 and (tmp_path / "afile").read_text() == "mine"


def test_pseudo_label_says_a_teacher_that_is_not_there_does_not_exist(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "last.pt").write_bytes(b"")
    for teacher, what in ((tmp_path / "gone", "does not exist"), (tmp_path / "last.pt", "is a file, not a folder")):
        assert main(["pseudo-label", str(teacher), "-o", str(tmp_path / "out"), "--quiet"]) == 2
        # a mistyped path read "X: the teacher must be a run folder ...", as if X were there but of the wrong kind
        assert capsys.readouterr().err == (f"covseg: error: {teacher}: {what}; the teacher must be a run folder or a "
                                           "cross-validation folder\n")
    assert not (tmp_path / "out").exists()


def test_pseudo_label_refuses_an_output_inside_a_data_folder_it_reads(semi_data: Path, teacher_cv: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # fuzz helper 168: pseudo-labels written into the data folder would be read by the next run given that folder
    data = tmp_path / "data"
    shutil.copytree(semi_data, data)
    for teacher, read, given in ((teacher_cv / "fold-0", semi_data, []),  # the teacher's own data folder
                                 (teacher_cv, data, ["--data", str(data)])):  # or the one given
        inside = read / "Dataset" / "pl"
        assert main(["pseudo-label", str(teacher), "-o", str(inside), "--quiet", *given]) == 2
        assert capsys.readouterr().err == (f"covseg: error: {inside}: is inside the data folder {read}, where its "
                                           "files would be read as images or masks; give -o a folder outside it\n")
        assert not inside.exists()
    # the teachers' data folder is refused even where the slices come from another (--data)
    assert main(["pseudo-label", str(teacher_cv), "-o", str(semi_data / "pl"), "--data", str(data), "--quiet"]) == 2
    assert f"is inside the data folder {semi_data}," in capsys.readouterr().err
    assert not (semi_data / "pl").exists()


def test_pseudo_label_runs_the_teacher_where_and_as_asked(teacher_cv: Path, tmp_path: Path, monkeypatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # the teacher ran on the CPU at auto precision whatever the machine had: no --device / --precision
    import torch

    from covseg import predict

    asked = []
    real = predict.open_predictor
    monkeypatch.setattr(predict, "open_predictor", lambda *a, **k: asked.append(a[4:6]) or real(*a, **k))
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(tmp_path / "p"), "--precision", "fp32",
                 "--min-confidence", "0", "--quiet"]) == 0
    assert asked == [("cpu", "fp32")]
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(tmp_path / "q"), "--device", "cuda",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no GPU is visible" in err and err.count("\n") == 1 and not (tmp_path / "q").exists()


def test_match_grey_labels_and_serves_the_slices_mapped_onto_the_teachers_grey_levels(
        semi_data: Path, teacher_cv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher = teacher_cv / "fold-0"
    out = tmp_path / "matched"
    keep_all = ["--min-confidence", "0", "--min-fraction", "0", "--max-fraction", "1", "--quiet"]
    assert main(["pseudo-label", str(teacher), "-o", str(out), "--match-grey", *keep_all]) == 0
    summary = json.loads((out / "pseudo.json").read_text())
    reference = np.asarray(summary["grey_reference"])
    # the mean quantile function of the teacher's own training slices, as read for training
    train = set(json.loads((teacher / "split.json").read_text())["train"])
    own = [s.image for s in load_dataset(str(semi_data), "binary", split="train") if s.name in train]
    np.testing.assert_allclose(reference, grey_quantiles(own), atol=1e-6)
    heldout = json.loads((teacher / "split.json").read_text())["val"]
    served = load_pseudo_labels(out, str(semi_data), "binary", (-600, 1500), heldout)
    raw = {s.name: s.image for s in load_dataset(str(semi_data), "binary", split="unlabelled")}
    assert served and summary["kept"] == len(served)
    for sample in served:  # the student reads each slice mapped as the teacher labelled it
        np.testing.assert_allclose(sample.image, match_quantiles(raw[sample.name], reference), atol=1e-5)
    # a damaged reference is refused in one line
    summary["grey_reference"] = [0.5, 0.2]
    (out / "pseudo.json").write_text(json.dumps(summary))
    with pytest.raises(CovsegError, match="grey_reference is not a list of non-decreasing grey levels"):
        load_pseudo_labels(out, str(semi_data), "binary", (-600, 1500), heldout)


def test_pseudo_label_refuses_an_unfinished_run_as_teacher(teacher_cv: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from covseg.checkpoint import read_checkpoint

    teacher = shutil.copytree(teacher_cv / "fold-0", tmp_path / "teacher")
    state = read_checkpoint(teacher / "last.pt")
    state["epoch"] = 5  # as a run still training (or stopped by Ctrl-C) looks
    torch.save(state, teacher / "last.pt")
    out = tmp_path / "p"
    assert main(["pseudo-label", str(teacher), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"the teacher {teacher / 'last.pt'} holds epoch 5 of 12, an unfinished run; finish it first" in err
    assert "covseg train --resume" in err and err.count("\n") == 1 and not out.exists()


def test_cv_refuses_pseudo_labels_a_later_fold_may_not_use_before_fold_0_trains(
        semi_data: Path, teacher_cv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # fold 0's teacher trained on folds 1 and 2's held-out images: fine for fold 0, a leak for the others
    pseudo = tmp_path / "pseudo"
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(pseudo), "--min-confidence", "0",
                 "--min-fraction", "0", "--max-fraction", "1", "--quiet"]) == 0
    cv = tmp_path / "cv"
    capsys.readouterr()
    assert main(["cv", "--recipe", "tiny", "--data", str(semi_data), "--folds", "3", "--epochs", "1", "--quiet",
                 "-o", str(cv), *TINY_OVERRIDES, f"data.pseudo_labels={pseudo}"]) == 2
    err = capsys.readouterr().err
    assert "teacher trained on held-out image" in err and err.count("\n") == 1
    assert not list(cv.glob("fold-*/last.pt"))


def test_pseudo_label_refuses_a_lesion_type_teacher(semi_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    types = tmp_path / "types"  # its background output is untrained: its arg-max would call every pixel lesion
    assert main(["train", "--recipe", "tiny", "--task", "multiclass", "--data", str(semi_data), "--split", "cv:0",
                 "--epochs", "1", "-o", str(types), "--quiet", *TINY_OVERRIDES, "train.types_only=true",
                 "train.dice=present"]) == 0
    capsys.readouterr()
    out = tmp_path / "p"
    assert main(["pseudo-label", str(types), "-o", str(out), "--min-confidence", "0", "--max-fraction", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the teacher is a lesion-type model (train.types_only)" in err and err.count("\n") == 1
    assert not out.exists()


def test_force_replaces_only_a_folder_of_pseudo_labels(teacher_cv: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    keep_all = ["--min-confidence", "0", "--min-fraction", "0", "--max-fraction", "1", "--quiet"]
    out = tmp_path / "p"
    assert main(["pseudo-label", str(teacher_cv), "-o", str(out), *keep_all]) == 0
    for extra in ("notes.txt", "fold-1/notes.txt", "fold-2/masks/notes.txt", "student/last.pt"):
        (out / extra).parent.mkdir(parents=True, exist_ok=True)
        (out / extra).write_text("mine")
        before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        capsys.readouterr()
        assert main(["pseudo-label", str(teacher_cv), "-o", str(out), "--force", *keep_all]) == 2
        err = capsys.readouterr().err
        named = extra.split("/last.pt")[0]  # a foreign folder is named, not what it holds
        assert f"is not a pseudo-label folder (it holds {named}), and --force replaces only" in err
        assert err.count("\n") == 1 and sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
        (out / extra).unlink()
    (out / "student").rmdir()
    shutil.rmtree(out / "fold-0" / "masks")  # a fold folder with no pseudo.json is no pseudo-label output either
    (out / "fold-0" / "pseudo.json").unlink()
    assert main(["pseudo-label", str(teacher_cv), "-o", str(out), "--force", *keep_all]) == 2
    assert "(it has no fold-0/pseudo.json)" in capsys.readouterr().err
    shutil.rmtree(out / "fold-0")
    # what covseg pseudo-label wrote, and nothing else, is replaced whole
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(out), "--force", *keep_all]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["masks", "pseudo.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # nothing staged or set aside left


def test_ctrl_c_while_force_replaces_pseudo_labels_leaves_a_whole_folder(
        teacher_cv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.selftrain import make_pseudo_labels

    out = tmp_path / "p"
    rule = PseudoLabelRule(0, 0, 1)
    make_pseudo_labels(teacher_cv / "fold-0", out, rule=rule, progress=False, log=lambda message: None)
    (out / "pseudo.json").write_text(json.dumps({**json.loads((out / "pseudo.json").read_text()), "old": True}))
    fired = interrupt_after_touching(out, monkeypatch)  # a real Ctrl-C just after the old folder first goes
    with pytest.raises(KeyboardInterrupt):
        make_pseudo_labels(teacher_cv / "fold-0", out, rule=rule, force=True, progress=False,
                           log=lambda message: None)
    monkeypatch.undo()
    assert fired and sorted(p.name for p in out.iterdir()) == ["masks", "pseudo.json"]
    summary = json.loads((out / "pseudo.json").read_text())
    assert "old" not in summary and len(list((out / "masks").iterdir())) == summary["kept"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]


def test_no_slice_kept_is_refused_naming_the_limits_and_the_student_error_names_them_too(
        semi_data: Path, teacher_cv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from covseg.selftrain import check_pseudo_labels

    out = tmp_path / "p"
    capsys.readouterr()
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(out), "--min-confidence", "0",
                 "--min-fraction", "1", "--max-fraction", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: error: {teacher_cv / 'fold-0'}: kept none of 8 slices as "
                                               "pseudo-labels (--min-confidence 0.0, --min-fraction 1.0, "
                                               "--max-fraction 1.0), so a student would have none to train on; ")
    assert ("lower --min-fraction (it refused" in err[0] or "the teacher found lesion on none of them" in err[0])
    assert err[0].endswith("; nothing was written") and not out.exists()
    # a summary that kept none (covseg wrote them before session 73) is refused by a student, naming its limits
    assert main(["pseudo-label", str(teacher_cv / "fold-0"), "-o", str(out), "--min-confidence", "0",
                 "--min-fraction", "0", "--max-fraction", "1", "--quiet"]) == 0
    summary = json.loads((out / "pseudo.json").read_text())
    summary.update(rule={"min_confidence": 0.0, "min_fraction": 1.0, "max_fraction": 1.0}, kept=0,
                   slices=[{**row, "kept": False} for row in summary["slices"]])
    (out / "pseudo.json").write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--data", str(semi_data), "--split", "cv:0", "--epochs", "1",
                 "-o", str(tmp_path / "student"), "--quiet", f"data.pseudo_labels={out}", *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err
    assert ("no slice was kept as a pseudo-label (--min-confidence 0.0, --min-fraction 1.0, --max-fraction 1.0); "
            "make them again with looser limits") in err and err.count("\n") == 1
    # the leak error counts the other leaked images only when there are some
    seen = summary["teacher_images"]
    with pytest.raises(CovsegError, match=rf"held-out image {seen[0]}; make pseudo-labels"):
        check_pseudo_labels(out, "binary", seen[:1])
    with pytest.raises(CovsegError, match=rf"held-out image {seen[0]} \(and 1 more\); make"):
        check_pseudo_labels(out, "binary", seen[:2])


@pytest.mark.parametrize("train", [None, "0123456789", "missing"])
def test_pseudo_label_refuses_a_teacher_whose_split_json_is_damaged_in_one_line(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], train: object) -> None:
    # without its "train" list the held-out leak check had no teacher images and let any student through;
    # a string gave one-character names, null a TypeError traceback
    teacher = shutil.copytree(tiny_run, tmp_path / "teacher")
    split = json.loads((teacher / "split.json").read_text(encoding="utf-8"))
    if train == "missing":
        del split["train"]
    else:
        split["train"] = train
    (teacher / "split.json").write_text(json.dumps(split), encoding="utf-8")
    out = tmp_path / "p"
    capsys.readouterr()
    assert main(["pseudo-label", str(teacher), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{teacher / 'split.json'}: a damaged split" in err and err.count("\n") == 1
    assert not out.exists()


def test_the_rules_limits_are_inclusive_and_an_empty_slice_is_never_kept() -> None:
    from covseg.selftrain import keeps
    rule = PseudoLabelRule(min_confidence=0.9, min_fraction=0.1, max_fraction=0.5)
    assert keeps(rule, 0.1, 0.95)  # fraction at the lower limit: kept (min_fraction <= fraction)
    assert keeps(rule, 0.5, 0.95)  # fraction at the upper limit: kept (fraction <= max_fraction)
    assert keeps(rule, 0.3, 0.9)  # confidence at its limit: kept (confidence >= min_confidence)
    assert not keeps(rule, 0.09, 0.95) and not keeps(rule, 0.51, 0.95) and not keeps(rule, 0.3, 0.89)
    assert not keeps(PseudoLabelRule(0, 0, 1), 0.0, 0.0)  # no lesion: never kept, even by the loosest rule
    # the limits may meet: one fraction only, and a confidence of exactly 1
    assert keeps(PseudoLabelRule(min_confidence=1.0, min_fraction=0.25, max_fraction=0.25), 0.25, 1.0)


def test_a_teacher_given_as_dot_is_named_and_its_checkpoint_recorded_in_full(teacher_cv: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    # before: ": kept 8 of 8 slices" (the name of ".") and "checkpoint": "last.pt" (relative to where it ran)
    monkeypatch.chdir(teacher_cv / "fold-0")
    assert main(["pseudo-label", ".", "-o", str(tmp_path / "pl"), "--min-confidence", "0", "--min-fraction", "0",
                 "--max-fraction", "1", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "fold-0: kept " in err and "\n: kept" not in "\n" + err
    summary = json.loads((tmp_path / "pl" / "pseudo.json").read_text())
    assert summary["teacher"] == str((teacher_cv / "fold-0").resolve())
    assert summary["checkpoint"] == str((teacher_cv / "fold-0" / "last.pt").resolve())


def test_pseudo_json_keeps_five_significant_digits_so_one_lesion_pixel_is_not_zero() -> None:
    from covseg.selftrain import significant

    one_pixel = 1 / (512 * 512)
    assert significant(one_pixel) == 3.8147e-06 and significant(one_pixel) > 0
    assert significant(7 / 2112) == 0.0033144 and significant(0.5) == 0.5 and significant(0.0) == 0.0
    assert significant(0.87654321) == 0.87654

