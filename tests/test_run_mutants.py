"""Run-folder bookkeeping of covseg/run.py pinned by hand: tests added by a second round of mutation testing (each
kills a source mutant of covseg/run.py that tests/test_training.py and tests/test_training_mutants.py let through)."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from covseg.datasets import load_dataset
from covseg.run import read_run_config, trained_on


def _training_samples(data: Path, run: Path) -> list:
    return load_dataset(data, "binary", split="train", window=read_run_config(run).data.window)


def test_trained_on_tells_masks_apart_by_one_pixel(tiny_data: Path, tiny_run: Path) -> None:
    samples = _training_samples(tiny_data, tiny_run)
    assert trained_on(tiny_run, samples)
    first = json.loads((tiny_run / "split.json").read_text())["train"][0]
    changed = []
    for s in samples:
        if s.name == first:  # one background pixel becomes lesion: the weights move by far more than the 1e-6 rounding
            mask = s.mask.copy()
            assert mask[0, 0] == 0
            mask[0, 0] = 1
            s = dataclasses.replace(s, mask=mask)
        changed.append(s)
    assert not trained_on(tiny_run, changed)


def test_trained_on_is_false_where_one_training_image_is_missing(tiny_data: Path, tiny_run: Path) -> None:
    samples = _training_samples(tiny_data, tiny_run)
    train = json.loads((tiny_run / "split.json").read_text())["train"]
    assert not trained_on(tiny_run, [s for s in samples if s.name != train[-1]])
    assert not trained_on(tiny_run, [])


def test_trained_on_refuses_class_weights_off_by_far_less_than_one_pixel_moves_them(tiny_data: Path, tiny_run: Path,
                                                                                    tmp_path: Path) -> None:
    # class_weights.json rounds to 6 decimals, so the check allows ~1e-6; weights 1e-4 off are another run's
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    samples = _training_samples(tiny_data, run)
    saved = json.loads((run / "class_weights.json").read_text())
    for shift, expected in ((1e-6, True), (1e-4, False), (-1e-4, False)):
        record = dict(saved, weights={k: v + shift for k, v in saved["weights"].items()})
        (run / "class_weights.json").write_text(json.dumps(record))
        assert trained_on(run, samples) is expected, shift


def test_setting_differences_names_every_level_and_the_settings_only_there() -> None:
    from covseg.run import differences_note, setting_differences

    there = {"train": {"augment": {"hflip": True, "rot": 5}, "lr": 0.1}, "old": 1}
    here = {"train": {"augment": {"hflip": False, "rot": 5}, "lr": 0.1}, "model": ""}
    differ = setting_differences(there, here)
    assert differ == ["train.augment.hflip True there, False here", 'model None there, "" here',
                      "old 1 there, None here"]
    assert differences_note(differ) == "train.augment.hflip True there, False here, and 2 more settings"
    assert differences_note(differ[:2]) == "train.augment.hflip True there, False here, and 1 more setting"
    assert setting_differences(here, here) == []


def test_never_saved_an_epoch_by_hand(tmp_path: Path) -> None:
    from covseg.run import never_saved_an_epoch

    run = tmp_path / "run"
    run.mkdir()
    assert not never_saved_an_epoch(run)  # empty: no run at all
    (run / "split.json").write_text("{}")
    assert not never_saved_an_epoch(run)  # neither config.yaml nor run.json
    (run / "config.yaml").write_text("{}")
    (run / ".class_weights.json.abcd1234.part.json").write_text("")  # a write cut short
    assert never_saved_an_epoch(run)
    (run / ".hidden").write_text("")  # any other file, hidden or not, is something to lose
    assert not never_saved_an_epoch(run)
    (run / ".hidden").unlink()
    (run / "history.csv").write_text("epoch\n")
    assert not never_saved_an_epoch(run)


def test_history_csv_holds_last_pt_history_to_six_significant_digits(tiny_run: Path) -> None:
    import csv

    from covseg.checkpoint import read_checkpoint
    from covseg.run import HISTORY_FIELDS

    history = read_checkpoint(tiny_run / "last.pt")["history"]
    with open(tiny_run / "history.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == HISTORY_FIELDS
        rows = list(reader)
    assert [int(r["epoch"]) for r in rows] == [h["epoch"] for h in history] == [1, 2, 3]
    for row, saved in zip(rows, history):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_dice", "lr"):
            assert row[key] == f"{saved[key]:.6g}", key
            assert float(row[key]) == pytest.approx(saved[key], rel=1e-5, abs=1e-12), key


def test_force_refuses_to_replace_a_folder_that_holds_no_run(tiny_data: Path, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    from conftest import TINY_OVERRIDES

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    capsys.readouterr()
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "-o", str(folder),
                 "--force", "--quiet", *TINY_OVERRIDES, "train.epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a covseg run folder" in err[0], err
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_new_run_refuses_to_read_its_own_folder_or_anything_inside_it(tmp_path: Path) -> None:
    from covseg.errors import CovsegError
    from covseg.run import _refuse_reading_from_inside

    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    for path in (run, run / "sub", run / "sub" / ".." / "x.pt"):
        with pytest.raises(CovsegError, match="from inside its own folder"):
            _refuse_reading_from_inside(run, [(tmp_path / "elsewhere", "train.init"), (path, "--data")])
    _refuse_reading_from_inside(run, [(tmp_path / "run2", "--data"), (tmp_path, "train.init")])  # beside or above


def test_resume_names_a_validation_image_missing_from_the_data_in_one_line(tiny_run: Path, tmp_path: Path,
                                                                           capsys) -> None:
    from covseg.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    split = json.loads((run / "split.json").read_text())
    split["val"] = ["no-such-image", *split["val"][1:]]
    (run / "split.json").write_text(json.dumps(split))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split.json names 1 image not there (first: no-such-image)" in err[0], err


@pytest.mark.parametrize(("name", "text", "message"), [
    ("run.json", "[1, 2]\n", "not a covseg run record (a JSON object)"),
    ("run.json", '{"data": ["a"]}\n', "a damaged run.json (no 'data' entry"),
    ("config.yaml", "- data\n- model\n", "not a covseg run config (a mapping"),
    ("class_weights.json", '{"weights": {"background": 1.0, "lesion": NaN}}', "weights are not finite numbers"),
    ("class_weights.json", '{"weights": [1.0, 2.0]}', "unreadable or damaged (AttributeError)"),
    ("class_weights.json", '{"weights": {}}', "damaged (0 class weights, not one per class)"),
    ("class_weights.json", '{"weights": {"background": 1.0}}', "damaged (1 class weights, not one per class)"),
])
def test_a_run_record_of_the_wrong_shape_is_refused_in_one_line(name: str, text: str, message: str,
                                                                 tmp_path: Path) -> None:
    from covseg.errors import CovsegError
    from covseg.run import read_class_weights, read_run_info

    (tmp_path / name).write_text(text)
    read = {"run.json": read_run_info, "config.yaml": read_run_config, "class_weights.json": read_class_weights}[name]
    with pytest.raises(CovsegError) as caught:
        read(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_class_weights_of_another_task_s_class_count_are_refused_when_the_task_is_given(tmp_path: Path) -> None:
    from covseg.errors import CovsegError
    from covseg.run import read_class_weights

    (tmp_path / "class_weights.json").write_text('{"weights": {"background": 0.5, "infection": 3.0}}')
    assert read_class_weights(tmp_path).tolist() == [0.5, 3.0]  # no task: any count of two or more
    assert read_class_weights(tmp_path, "binary").tolist() == [0.5, 3.0]
    with pytest.raises(CovsegError, match=r"class_weights.json: damaged \(2 class weights, not one per class of the "
                                          r"multiclass task's 4\); train the run again"):
        read_class_weights(tmp_path, "multiclass")


def _train(data: Path, out: Path, *extra: str) -> int:
    from covseg.cli import main

    from conftest import TINY_OVERRIDES

    return main(["train", "--recipe", "tiny", "--data", str(data), "--split", "cv:0", "-o", str(out), "--quiet",
                 *TINY_OVERRIDES, *extra])


def test_an_empty_output_folder_is_trained_into_without_force(tiny_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert _train(tiny_data, run, "train.epochs=1") == 0
    assert (run / "last.pt").is_file() and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_a_swa_run_stopped_inside_its_averaged_epochs_writes_no_swa_pt(tiny_data: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # swa.pt is the run's model ("auto"): a partial average of an unfinished run must not pose as it
    import covseg.run
    from covseg.checkpoint import read_checkpoint

    real = covseg.run.train_one_epoch

    def stop_at_the_third_epoch(*args, **kwargs):
        if args[6] == 2:  # 0-based epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "train_one_epoch", stop_at_the_third_epoch)
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=3", "train.swa_epochs=2", "train.swa_lr=0.005") == 130
    state = read_checkpoint(run / "last.pt")
    assert (state["epoch"], state["swa_n"]) == (2, 1)  # epoch 2 (of 2 and 3) averaged before the stop
    assert not (run / "swa.pt").exists()


def test_a_resumed_self_training_run_draws_each_epoch_s_pseudo_labels_by_its_own_epoch(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the draw of epoch e depends on (seed, e) only, so a resumed run draws what the uninterrupted one would have
    import torch

    import covseg.run
    from covseg.cli import main

    pseudo = covseg.run._Pseudo(torch.rand(5, 1, 32, 32).half(), torch.zeros(5, 32, 32, dtype=torch.uint8), "digest")
    monkeypatch.setattr(covseg.run, "_pseudo_slices", lambda *args: pseudo)
    drawn: list[int] = []
    real_draw, real_epoch = covseg.run.epoch_pseudo_indices, covseg.run.train_one_epoch

    def draw(*args):
        drawn.append(args[4])  # the epoch
        return real_draw(*args)

    def stop_at_the_third_epoch(*args, **kwargs):
        if args[6] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "epoch_pseudo_indices", draw)
    monkeypatch.setattr(covseg.run, "train_one_epoch", stop_at_the_third_epoch)
    run = tmp_path / "run"
    assert _train(tiny_data, run, "train.epochs=3") == 130
    monkeypatch.setattr(covseg.run, "train_one_epoch", real_epoch)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert drawn == [0, 1, 2, 2]  # epoch 2 drawn when Ctrl-C came, and again when the resumed run trained it
