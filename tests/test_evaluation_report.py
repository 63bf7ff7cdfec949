"""covseg.evaluation's report as a whole: an interrupted rewrite, a full disk, images without lesion, nothing to summarise,
and `covseg evaluate` on data that lacks some of the run's held-out images or beside a damaged split.json."""
from __future__ import annotations

import csv
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

import covseg.evaluation as evaluation
from conftest import record_syncs_and_renames
from covseg.cli import _print_summary, main
from covseg.errors import CovsegError
from covseg.evaluation import Evaluation, evaluate_image, summarise, write_report
from covseg.experiment import _evaluates_validation, select_samples
from covseg.labels import get_scheme

BINARY = get_scheme("binary")


pytestmark = pytest.mark.real_figures  # these tests check the figures themselves, drawn


def _evaluation(pred_pixels: list[int], lesion: bool = True) -> Evaluation:
    """Binary results on 8x8 images: image i predicts ``pred_pixels[i]`` pixels of infection in its first row; the
    truth holds a 2x2 lesion there, or (``lesion`` False) nothing."""
    results = []
    for i, called in enumerate(pred_pixels):
        truth = np.zeros((8, 8), np.int64)
        if lesion:
            truth[0, :2] = truth[1, :2] = 1
        pred = np.zeros((8, 8), np.int64)
        pred[0, :called] = 1
        probs = np.eye(2, dtype=np.float32)[pred].transpose(2, 0, 1)
        results.append(evaluate_image(f"im{i}", probs, truth, BINARY, np.zeros((8, 8), np.float32)))
    return summarise(results, BINARY)


def test_an_interrupted_rewrite_leaves_the_old_report_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eval"
    first = write_report(_evaluation([2, 3]), out, "first", {"model": {"file": "last.pt", "epoch": 1}})
    assert (out / "metrics.json").is_file()
    (out / "notes.txt").write_text("mine", encoding="utf-8")  # a file of the user's in the -o folder
    old = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "plot_grid", interrupted)  # Ctrl-C while the figure is drawn
    with pytest.raises(KeyboardInterrupt):
        write_report(_evaluation([4, 4]), out, "second", {"model": {"file": "last.pt", "epoch": 2}})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # the first report, whole, and nothing of the second
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # no temporary folder left beside it
    monkeypatch.undo()
    data = write_report(_evaluation([4, 4]), out, "second", {"model": {"file": "last.pt", "epoch": 2}})
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == data
    assert (out / "metrics.md").read_text(encoding="utf-8").startswith("# second")
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"  # an existing folder's other files are kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]


def test_a_full_disk_leaves_no_half_report_and_names_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(rows, scheme, path, title=""):  # metrics.md and per_image.csv are written by now
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(evaluation, "plot_grid", full_disk)
    out = tmp_path / "reports" / "eval"
    with pytest.raises(CovsegError) as caught:
        write_report(_evaluation([2, 3]), out, "first")
    message = str(caught.value)
    assert message.startswith(f"{out}: the report could not be written (OSError: No space left on device); ")
    assert "\n" not in message and "disk full" in message
    assert list(tmp_path.iterdir()) == []  # no metrics.md or per_image.csv without metrics.json, no empty folders

    monkeypatch.undo()
    first = write_report(_evaluation([2, 3]), out, "first")
    assert sorted(p.name for p in out.iterdir()) == ["best_worst.png", "metrics.json", "metrics.md", "per_image.csv"]
    assert (out / "metrics.md").stat().st_mode & 0o777 == (out / "metrics.json").stat().st_mode & 0o777
    assert out.stat().st_mode & 0o777 == (tmp_path / "reports").stat().st_mode & 0o777  # not mkdtemp's 0700
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(evaluation, "plot_grid", full_disk)
    with pytest.raises(CovsegError, match="the report could not be written"):
        write_report(_evaluation([4, 4]), out, "second")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # the older report stays, whole
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval"]


def test_a_report_into_an_existing_folder_is_staged_inside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing -o may sit in a read-only folder or be a mount point: the report is staged inside it (renames
    within its file system), not beside it; a stage that cannot be made is one line naming -o."""
    import tempfile

    out = tmp_path / "parent" / "eval"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    real = tempfile.mkdtemp
    stages: list[Path] = []

    def recording(*args, **kwargs):
        stages.append(Path(kwargs["dir"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    write_report(_evaluation([2, 3]), out, "first")
    assert stages == [out]
    assert sorted(p.name for p in out.iterdir()) == ["best_worst.png", "metrics.json", "metrics.md", "notes.txt",
                                                    "per_image.csv"]

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(Path(kwargs["dir"]) / ".report.x.part"))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)
    with pytest.raises(CovsegError, match=rf"^{out}: cannot write the report there \(Permission denied\)"):
        write_report(_evaluation([2, 3]), out, "second")


def test_no_lesion_in_any_truth_says_what_the_model_called(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    metrics = write_report(_evaluation([0, 3, 2], lesion=False), out, "healthy")
    assert metrics["predicted_pixels"] == {"background": 3 * 64 - 5, "infection": 5}
    assert metrics["pooled"]["precision"]["infection"] == 0.0
    assert "Foreground classes: ." not in (out / "metrics.md").read_text(encoding="utf-8")
    assert "the model called 5 pixels infection, all false positives" in (out / "metrics.md").read_text()
    _print_summary(metrics, out)
    printed = capsys.readouterr().out.splitlines()[0]
    assert printed.startswith("no image's truth holds a lesion, so there is no Dice; the model called 5 pixels "
                              "infection (pooled precision 0); pixel accuracy ")
    _print_summary(write_report(_evaluation([0, 0], lesion=False), out, "healthy"), out)
    assert "the model called no pixel a lesion; pixel accuracy 1.0000" in capsys.readouterr().out
    _print_summary(write_report(_evaluation([2, 0]), out, "lesions"), out)  # with lesions: the Dice, as before
    # (2/3 + 0) / 2; two images: the bootstrap means are 0, 1/3 or 2/3 (a quarter, half, a quarter), so 0–2/3
    assert capsys.readouterr().out.startswith("Dice (per image): infection 0.3333 (95 % CI 0.0000–0.6667); pixel "
                                              "accuracy ")
    assert (out / "best_worst.png").is_file()
    write_report(_evaluation([1], lesion=False), out, "healthy")  # no image with a Dice to show: no figure
    assert not (out / "best_worst.png").exists()  # (not the lesion report's, of other images)


def test_nothing_to_summarise_is_said_plainly() -> None:
    with pytest.raises(ValueError, match="no images to summarise"):
        summarise([], BINARY)


def test_evaluate_refuses_data_lacking_some_held_out_images(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                            capsys) -> None:
    held_out = json.loads((tiny_run / "split.json").read_text(encoding="utf-8"))["val"]
    assert len(select_samples(tiny_run, str(tiny_data), "binary", "heldout")) == len(held_out)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_data, partial)
    gone = sorted(held_out)[0]
    for path in partial.rglob(f"{gone}.*"):
        path.unlink()
    with pytest.raises(CovsegError, match=rf"1 of the {len(held_out)} images of the run's val split are not in "
                                          rf".*partial \(e.g. {gone}\); point --data at the data the run was trained on"):
        select_samples(tiny_run, str(partial), "binary", "heldout")
    assert main(["evaluate", str(tiny_run), "--data", str(partial), "-o", str(tmp_path / "eval"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of the" in err[0] and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("damage", ['{"train": ["0"], "val": ["1"', "[1, 2]", '{"train": [], "val": "3"}'])
def test_a_damaged_split_json_is_refused_in_one_line_not_scored(damage: str, tiny_run: Path, tiny_data: Path,
                                                                 tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    (run / "split.json").write_text(damage, encoding="utf-8")
    message = rf"^{re.escape(str(run / 'split.json'))}: (cannot read the split|a damaged split)"
    with pytest.raises(CovsegError, match=message):  # before: JSONDecodeError, AttributeError, or image "3" alone
        select_samples(run, str(tiny_data), "binary", "heldout")
    with pytest.raises(CovsegError, match=message):
        _evaluates_validation(run, "heldout")
    for split in ("heldout", "train"):
        assert main(["evaluate", str(run), "--split", split, "-o", str(tmp_path / "eval"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.match(rf"covseg: error: {message[1:]}", err[0]), err
    assert not (tmp_path / "eval").exists()


def test_training_curves_draw_a_lone_point_as_a_marker_on_whole_epochs(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes
    from PIL import Image

    from covseg.figures import plot_curves

    drawn: list[tuple[str, list, str | None]] = []
    plot = Axes.plot

    def recording(self, x, y, *args, **kwargs):
        drawn.append((kwargs.get("label"), list(x), kwargs.get("marker")))
        return plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", recording)
    nan = float("nan")
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": v, "val_acc": v, "val_dice": v}
               for e, v in ((1, nan), (2, nan), (3, nan), (4, 0.4))]  # validated at epoch 4 only (val_every 4)
    plot_curves(history, tmp_path / "curves.png")
    lines = {label: (x, marker) for label, x, marker in drawn}
    # a line needs two points: the lone validation point is a marker (it drew nothing before), the others lines
    assert lines["validation"] == ([4], "o") and lines["validation mean Dice"] == ([4], "o")
    assert lines["train"] == ([1, 2, 3, 4], None)
    assert Image.open(tmp_path / "curves.png").size[0] > 0


def test_per_image_specificity_names_its_images_even_where_the_counts_match(tmp_path: Path) -> None:
    # image A is lesion everywhere (its truth holds no background), image B holds no lesion: one image holds each
    # class, and one image defines each class's specificity, but not the same one, so the table must say so
    whole = np.ones((4, 4), np.int64)
    called_a = np.ones((4, 4), np.int64)
    called_a[0] = 0
    called_b = np.zeros((4, 4), np.int64)
    called_b[0, 0] = 1
    results = [evaluate_image(name, np.eye(2, dtype=np.float32)[pred].transpose(2, 0, 1), truth, BINARY)
               for name, pred, truth in (("A", called_a, whole), ("B", called_b, 0 * whole))]
    ev = summarise(results, BINARY)
    d = write_report(ev, tmp_path / "eval", "t")
    assert d["per_image_images"]["specificity"] == d["images_with_class"] == {"background": 1, "infection": 1}
    assert d["per_image"]["specificity"]["background"] == pytest.approx(12 / 16)   # image A: 12 TN of 16 non-bg
    line = next(l for l in (tmp_path / "eval" / "metrics.md").read_text().splitlines() if l.startswith("Mean of each"))
    assert "specificity over background 1, infection 1 (every image where it is defined)" in line


def test_meanspe_undefined_on_every_image_is_nan_without_a_numpy_warning() -> None:
    # a lesion-everywhere truth has no pixel whose specificity Inf-Net could measure: meanSpe is NaN, quietly
    truth = np.ones((4, 4), np.int64)
    probs = np.stack([np.full((4, 4), 0.2), np.full((4, 4), 0.8)]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        infnet = summarise([evaluate_image("A", probs, truth, BINARY)], BINARY).infnet
    assert infnet is not None and np.isnan(infnet["meanSpe"]) and np.isfinite(infnet["meanDic"])


def _scored(name: str, truth: np.ndarray, pred: np.ndarray) -> evaluation.ImageResult:
    """A binary image scored from its ``truth`` and ``pred`` labels (one-hot probabilities), with an image kept."""
    probs = np.eye(2, dtype=np.float32)[pred].transpose(2, 0, 1)
    return evaluate_image(name, probs, truth, BINARY, np.zeros(truth.shape, np.float32))


def test_foreground_dice_is_the_dice_not_the_iou_in_the_per_image_table(tmp_path: Path) -> None:
    # confusion matrix [[1, 1], [1, 1]] (rows truth): TP 1, FP 1, FN 1 -> Dice 2/4 = 0.5, IoU 1/3
    assert evaluation.ImageResult("a", np.array([[1, 1], [1, 1]])).foreground_dice() == pytest.approx(0.5)
    truth = np.array([[0, 1], [0, 1]])
    pred = np.array([[0, 1], [1, 0]])  # TN, TP / FP, FN: the same matrix
    write_report(summarise([_scored("a", truth, pred)], BINARY), tmp_path / "eval", "t")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").read_text(encoding="utf-8").splitlines()))
    assert [(r["name"], r["fg_dice"], r["dice_infection"], r["iou_infection"]) for r in rows] == [
        ("a", "0.500000", "0.500000", "0.333333")]


def test_foreground_dice_averages_only_the_classes_the_truth_holds() -> None:
    # rows truth, columns prediction: ggo 2 of 2 right (Dice 1); consolidation absent from the truth but called once
    # (Dice 0 / (0 + 1 + 0) = 0); pleural effusion nowhere (Dice undefined): the mean over ggo alone is 1
    cm = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert evaluation.ImageResult("a", cm).foreground_dice() == 1.0


def test_pooled_mean_foreground_skips_a_class_whose_figure_is_undefined() -> None:
    # ggo: 2 right, 2 consolidation pixels called ggo -> precision 2 / 4 = 0.5; consolidation is in the truth but
    # never called, so its precision is undefined (NaN) and stays out of the mean rather than counting as 0
    cm = np.array([[4, 0, 0, 0], [0, 2, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0]])
    d = summarise([evaluation.ImageResult("a", cm)], get_scheme("multiclass")).to_dict()
    assert d["pooled"]["precision"]["ggo"] == pytest.approx(0.5) and d["pooled"]["precision"]["consolidation"] is None
    assert d["pooled"]["precision"]["mean_foreground"] == pytest.approx(0.5)


def test_best_worst_figure_puts_the_highest_dice_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    titles: list[str] = []
    monkeypatch.setattr(evaluation, "plot_grid",
                        lambda rows, scheme, path, title="": titles.extend(caption for caption, *_ in rows))
    truth = np.array([[0, 1], [0, 1]])
    bad = _scored("bad", truth, np.array([[0, 1], [1, 0]]))  # TP 1, FP 1, FN 1: Dice 2/4
    good = _scored("good", truth, truth)  # Dice 1
    write_report(summarise([bad, good], BINARY), tmp_path / "eval", "t")
    # two images: one best and one worst, the best first
    assert titles == ["good (best, foreground Dice 1.000)", "bad (worst, foreground Dice 0.500)"]


def test_names_with_dollars_or_undecodable_bytes_are_written_into_every_report_file(tmp_path: Path) -> None:
    import os

    from covseg.figures import plain_text, plot_comparison

    # a $ pair started matplotlib's mathtext ("x$^$y": a ValueError traceback at saving); a Latin-1 file name read as
    # lone surrogates could not be written as UTF-8 (UnicodeEncodeError) nor drawn (TypeError)
    latin = os.fsdecode(b"M\xfcller")
    truth = np.array([[0, 1], [0, 1]])
    ev = summarise([_scored(n, truth, truth) for n in ("x$^$y", latin, "plain")], BINARY)
    write_report(ev, tmp_path / "eval", "run $a$ " + latin, n_figure=2)
    assert (tmp_path / "eval" / "best_worst.png").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").read_text(encoding="utf-8").splitlines()))
    assert {r["name"] for r in rows} == {"x$^$y", "M\ufffdller", "plain"}
    assert "M\ufffdller" in (tmp_path / "eval" / "metrics.md").read_text(encoding="utf-8")
    assert plain_text("a$^$b " + latin) == "a\\$^\\$b M\ufffdller"  # drawn letter for letter
    plot_comparison(["run $1$", latin], {"dice": [0.5, 0.6]}, tmp_path / "cmp.png", title="x$^$y")
    assert (tmp_path / "cmp.png").stat().st_size > 0


def test_overlay_blends_each_label_s_colour_into_the_clipped_grey() -> None:
    from covseg.labels import overlay

    image = np.array([[1.0, 1.0], [0.5, 2.0]])  # 2.0: out of range, shown as white
    labels = np.array([[0, 1], [1, 1]])  # background: left grey
    rgb = overlay(image, labels, BINARY)  # infection (255, 64, 64) at 0.45 over the grey
    assert rgb.dtype == np.uint8
    assert rgb.tolist() == [[[255, 255, 255], [255, 169, 169]], [[184, 98, 98], [255, 169, 169]]]


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    import covseg.figures as figures

    drawn: list = []
    real = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.append(fig) or real(fig, path))
    return drawn


def test_the_grid_shows_the_image_its_truth_and_the_prediction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.figures import plot_grid
    from covseg.labels import overlay

    drawn = _drawn(monkeypatch)
    image = np.linspace(0, 1, 16).reshape(4, 4)
    truth, pred = np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64)
    truth[0], pred[3] = 1, 1
    plot_grid([("case", image, truth, pred)], BINARY, tmp_path / "grid.png")
    axes = drawn[0].axes
    assert [a.get_title() for a in axes] == ["case", "ground truth", "prediction"]
    assert np.array_equal(axes[1].images[0].get_array(), overlay(image, truth, BINARY))
    assert np.array_equal(axes[2].images[0].get_array(), overlay(image, pred, BINARY))
    assert [t.get_text() for t in drawn[0].legends[0].get_texts()] == ["infection"]  # the foreground only
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")


def test_comparison_bars_stand_in_groups_with_each_model_s_values(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.figures import plot_comparison

    drawn = _drawn(monkeypatch)
    plot_comparison(["a", "b"], {"dice": [0.5, 0.6], "iou": [0.3, 0.4]}, tmp_path / "cmp.png")
    bars = drawn[0].axes[0].patches  # a's two bars, then b's; each 0.4 wide, the pair centred on its metric
    assert [round(b.get_x(), 6) for b in bars] == [-0.4, 0.6, 0.0, 1.0]
    assert [round(b.get_height(), 6) for b in bars] == [0.5, 0.3, 0.6, 0.4]
    assert [t.get_text() for t in drawn[0].axes[0].get_xticklabels()] == ["dice", "iou"]


def test_training_curves_of_two_epochs_are_lines_without_markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes

    from covseg.figures import plot_curves

    drawn: list = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, *a, **k: drawn.append((list(x), list(y), k.get("marker")))
                        or plot(self, x, y, *a, **k))
    history = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_loss": 0.9, "val_acc": 0.6, "val_dice": 0.3}
               for e in (1, 2)]
    plot_curves(history, tmp_path / "curves.png")
    assert drawn[0] == ([1, 2], [1.0, 0.5], None) and all(marker is None for _, _, marker in drawn)


@pytest.mark.parametrize("existed", [False, True])
def test_the_report_files_reach_the_disk_before_the_renames_that_name_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existed: bool) -> None:
    out = tmp_path / "eval"
    if existed:
        write_report(_evaluation([2, 3]), out, "first")
    events = record_syncs_and_renames(monkeypatch)
    write_report(_evaluation([4, 4]), out, "second")
    # the renames that name the report (the figure's own atomic write renames within the staging folder first)
    renames = [i for i, (kind, p) in enumerate(events) if kind == "replace" and not Path(p).parent.name.startswith(".")]
    first_rename, last_rename = renames[0], renames[-1]
    synced_first = {Path(p).name for kind, p in events[:first_rename] if kind == "fsync"}
    assert set(evaluation.REPORT_FILES) <= synced_first  # every file of the report, before any rename
    # the folder that now names the report (the parent of a new one, the report folder itself when it existed)
    assert events[last_rename + 1:] == [("fsync", str(out if existed else tmp_path))]
