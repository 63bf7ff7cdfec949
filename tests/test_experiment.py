"""covseg.experiment's checks before any training (fold inputs of every seed, reused folds against today's split,
every compared model's settings), and which reports `covseg cv` takes as a fold's or a seed ensemble's score."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from covseg import experiment
from covseg.checkpoint import build_model, save_checkpoint
from covseg.cli import main
from covseg.config import RunConfig, apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError
from covseg.run import _OldRun, _prepare_folder, read_run_config

from conftest import TINY_OVERRIDES


def _no_training(*args, **kwargs):
    raise AssertionError("training began before the checks refused the run")


def _refusal_setup(tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, list, RunConfig]:
    """Make any training fail the test (the checks must refuse first); returns the tiny data folder, its training
    samples (binary) and the tiny recipe's config."""
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _no_training)
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    data = str(tiny_data)
    return data, load_dataset(data, "binary", split="train"), apply_overrides(load_recipe("tiny"), TINY_OVERRIDES)


def test_cv_with_seeds_and_jobs_checks_every_folds_inputs_before_the_workers_train(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _no_training)
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    samples = load_dataset(str(tiny_data), "binary", split="train")
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, f"train.init={tmp_path / 'no-pretraining'}"])
    for call in (lambda out: experiment.cross_validate(config, samples, str(tiny_data), out, 3, False, jobs=2),
                 lambda out: experiment.cross_validate_seeds(config, samples, str(tiny_data), out, 3, [0, 1], False,
                                                             jobs=2)):
        # before: cross_validate_seeds handed 6 runs to the workers, each to fail there
        with pytest.raises(CovsegError, match="no pretrained weights there"):
            call(tmp_path / "cv")
        assert not (tmp_path / "cv").exists()


def _begun_fold(config, samples, data: str, fold_dir: Path, trained=None) -> None:
    """A fold folder as training leaves it (``last.pt``, of an untrained network, stands for a begun run; its settings
    are ``trained``'s, by default ``config``'s)."""
    _prepare_folder(fold_dir, config, samples, data, force=False, old=_OldRun(fold_dir), log=lambda message: None)
    trained = trained or config
    save_checkpoint(fold_dir / "last.pt", build_model(trained), trained, 0, None)


def test_a_begun_cv_fold_is_refused_when_the_data_folder_has_other_images_now(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, samples, config = _refusal_setup(tiny_data, monkeypatch)
    out = tmp_path / "cv"
    _begun_fold(experiment._fold_config(config, 0, 3), samples, data, out / "fold-0")
    for k in range(3):  # the same images: fold 0 is reused as it is
        experiment._check_reusable(out / f"fold-{k}", experiment._fold_config(config, k, 3), samples, data,
                                   experiment._CV_REMEDY)
    # one image more (the old ones unchanged): a fresh 3-fold split of the 13 holds out other images in fold 0
    more = [*samples, dataclasses.replace(samples[0], name="zz_new")]
    pattern = (rf"^{re.escape(str(out / 'fold-0'))}: was split from other images than {re.escape(data)} holds now: its held-out images are not "
               r"split cv:0's of the current data \(.* differ\), so they would overlap or miss other runs' "
               r"\(images added or removed since it began\?\); remove it to retrain it, or use another -o$")
    with pytest.raises(CovsegError, match=pattern):  # before: reused, beside folds 1-2 split afresh
        experiment._check_reusable(out / "fold-0", experiment._fold_config(config, 0, 3), more, data,
                                   experiment._CV_REMEDY)
    for jobs in (1, 2):
        with pytest.raises(CovsegError, match="was split from other images"):
            experiment.cross_validate(config, more, data, out, 3, False, jobs=jobs)
    with pytest.raises(CovsegError, match="was split from other images"):
        seed_fold = out / "seeds" / "seed-0" / "fold-0"
        _begun_fold(experiment._fold_config(config, 0, 3), samples, data, seed_fold)
        experiment.cross_validate_seeds(config, more, data, out / "seeds", 3, [0, 1], False, jobs=2)
    # compare (and any reuse through train_or_resume) tells the same, naming --force
    begun = tmp_path / "cmp" / "unet"
    _begun_fold(experiment._fold_config(config, 0, 3), samples, data, begun)
    with pytest.raises(CovsegError, match="was split from other images.*pass --force to retrain it"):
        experiment._check_reusable(begun, experiment._fold_config(config, 0, 3), more, data)


# 2 folds (data.folds from --folds) x 2 seeds of 1 epoch: 4 tiny trainings
_CV_OPTIONS = ["--recipe", "tiny", "--epochs", "1", "--folds", "2", "--quiet",
               *(o for o in TINY_OVERRIDES if not o.startswith("data.folds="))]


@pytest.fixture(scope="module")
def tiny_seeds_cv(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``covseg cv --folds 2 --seeds 0 1`` of the tiny recipe (read-only: tests work on copies)."""
    out = tmp_path_factory.mktemp("cv") / "seeds"
    assert main(["cv", "--data", str(tiny_data), *_CV_OPTIONS, "--seeds", "0", "1", "-o", str(out)]) == 0
    return out


def _report(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def test_cv_scores_a_fold_again_whose_report_is_a_flip_tta_or_other_split_score(tiny_seeds_cv: Path, tiny_data: Path,
                                                                                tmp_path: Path) -> None:
    cv = tmp_path / "cv"
    shutil.copytree(tiny_seeds_cv / "seed-1", cv)  # a plain cross-validation of seed 1
    again = ["cv", "--data", str(tiny_data), *_CV_OPTIONS, "train.seed=1", "-o", str(cv)]
    before = json.loads((cv / "cv.json").read_text())
    held_out = {k: json.loads((cv / f"fold-{k}" / "split.json").read_text())["val"] for k in range(2)}
    # someone scores a fold with flip TTA, or on every image, where its plain held-out report belongs
    # (over its plain report: --force, since session 75)
    assert main(["evaluate", str(cv / "fold-1"), "--tta", "-o", str(cv / "fold-1" / "eval-heldout"), "--quiet",
                 "--force"]) == 0
    assert main(["evaluate", str(cv / "fold-0"), "--split", "all", "-o", str(cv / "fold-0" / "eval-heldout"),
                 "--quiet", "--force"]) == 0
    assert _report(cv / "fold-1" / "eval-heldout")["model"]["flip_tta"] is True
    assert _report(cv / "fold-0" / "eval-heldout")["n_images"] == 12
    assert main(again) == 0  # before: cv.md and cv.json took both as the folds' held-out scores
    for k in range(2):
        report = _report(cv / f"fold-{k}" / "eval-heldout")
        assert report["split"] == "heldout" and report["model"]["flip_tta"] is False
        assert report["n_images"] == len(held_out[k])
    after = json.loads((cv / "cv.json").read_text())
    assert after["columns"].keys() == before["columns"].keys()
    for column, values in before["columns"].items():
        assert after["columns"][column] == pytest.approx(values), column


@pytest.mark.parametrize("change", ["tta or all", "damaged", "moved data"])
def test_cv_seeds_scores_a_seed_ensemble_again_unless_its_report_is_its_plain_held_out_score(
        change: str, tiny_seeds_cv: Path, tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cvs"
    shutil.copytree(tiny_seeds_cv, out)
    for k in range(2):  # the copy's reports name its own members, as if it had been scored here
        metrics = out / "ensemble" / f"fold-{k}" / "metrics.json"
        metrics.write_text(metrics.read_text().replace(str(tiny_seeds_cv), str(out)))
    before = json.loads((out / "seeds.json").read_text())
    members = {k: [str(out / f"seed-{s}" / f"fold-{k}") for s in (0, 1)] for k in range(2)}
    data = tiny_data
    if change == "tta or all":  # the two seeds' models share the fold's split, so may be scored on every image too
        assert main(["evaluate", *members[0], "--tta", "-o", str(out / "ensemble" / "fold-0"), "--quiet",
                     "--force"]) == 0
        assert main(["evaluate", *members[1], "--split", "all", "-o", str(out / "ensemble" / "fold-1"),
                     "--quiet", "--force"]) == 0
    elif change == "damaged":  # before: covseg cv --seeds ended in a JSONDecodeError traceback
        (out / "ensemble" / "fold-0" / "metrics.json").write_text('{"model": {"members": [', encoding="utf-8")
    else:  # the same images in another folder: every report is of the other folder's images
        data = tmp_path / "data"
        shutil.copytree(tiny_data, data)
    assert main(["cv", "--data", str(data), *_CV_OPTIONS, "--seeds", "0", "1", "-o", str(out)]) == 0
    for k in range(2):
        scored = _report(out / "ensemble" / f"fold-{k}")
        assert scored["split"] == "heldout" and scored["model"]["flip_tta"] is False
        assert scored["data"] == str(data.resolve())
        assert [m["file"] for m in scored["model"]["members"]] == [f"{m}/last.pt" for m in members[k]]
    after = json.loads((out / "seeds.json").read_text())
    for column, values in before["ensemble"]["columns"].items():
        assert after["ensemble"]["columns"][column] == pytest.approx(values), column


@pytest.mark.parametrize("text", ["{", "[]", '{"model": 1}', '{"model": {"members": [1]}}',
                                  '{"model": {"members": []}, "split": "heldout"}'])
def test_a_damaged_seed_ensemble_report_is_not_current(text: str, tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(text, encoding="utf-8")
    members = [tmp_path / "seed-0" / "fold-0", tmp_path / "seed-1" / "fold-0"]
    assert experiment._report_of(tmp_path / "metrics.json", members, str(tmp_path)) is False


def test_a_damaged_history_is_told_in_one_line_when_its_run_is_reused(tiny_run: Path, tiny_data: Path,
                                                                      tmp_path: Path, capsys) -> None:
    compared = tmp_path / "cmp"
    run = compared / "unet"
    shutil.copytree(tiny_run, run)
    history = run / "history.csv"
    lines = history.read_text().splitlines()
    lines[2] = lines[2][:lines[2].rindex(",") + 1]  # epoch 2's seconds cut off
    history.write_text("\n".join(lines) + "\n")
    samples = load_dataset(str(tiny_data), "binary", split="train")
    pattern = (rf"^{re.escape(str(history))}: damaged \(row 2 has '' for its seconds, not a number\); retrain the "
               rf"run: remove {re.escape(str(run))} and run the command again$")
    with pytest.raises(CovsegError, match=pattern):  # before: ValueError: could not convert string to float: ''
        experiment.train_or_resume(read_run_config(run), samples, run, str(tiny_data), False, False, lambda m: None)
    # covseg compare run again over the finished run: one line, exit 2
    assert main(["compare", "--models", "unet", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0",
                 "--epochs", "3", "-o", str(compared), "--quiet", *TINY_OVERRIDES]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # after its progress lines ("finished run reused")
    assert err[-1].startswith(f"covseg: error: {history}: damaged (row 2") and not any("Traceback" in e for e in err)


def test_compare_checks_every_models_new_run_before_the_first_trains(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    base = experiment._fold_config(apply_overrides(load_recipe("tiny"), TINY_OVERRIDES), 0, 3)
    # only U-Net may leave out normalisation (before: unet trained its whole budget, then segnet was refused)
    no_norm = apply_overrides(base, ["model.batch_norm=false"])
    with pytest.raises(CovsegError, match="only U-Net can leave out normalisation; leave model.batch_norm at true for "
                                          "segnet"):
        experiment.compare_models(["unet", "segnet"], no_norm, samples, data, tmp_path / "cmp", progress=False)
    # weights of a U-Net (tiny_run: the same split, none of its held-out images seen) cannot start a SegNet
    pretrained = apply_overrides(base, [f"train.init={tiny_run / 'last.pt'}"])
    with pytest.raises(CovsegError, match="pretrained for another network"):
        experiment.compare_models(["unet", "segnet"], pretrained, samples, data, tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()


def test_a_run_of_other_settings_is_refused_naming_the_first_that_differs(tiny_run: Path) -> None:
    config = read_run_config(tiny_run)
    other = dataclasses.replace(config, train=dataclasses.replace(
        config.train, lr=0.02, augment=dataclasses.replace(config.train.augment, hflip=0.25)))
    pattern = (rf"^{re.escape(str(tiny_run))}: holds a run with other settings \(train.lr 0.01 there, 0.02 here, and 1 "
               r"more setting\); pass --force to retrain it or use another output folder$")
    with pytest.raises(CovsegError, match=pattern):  # before: no word of which
        experiment._check_same_settings(tiny_run, other)
    moved = dataclasses.replace(config, data=dataclasses.replace(config.data, split="cv:1"))
    with pytest.raises(CovsegError, match=r"other settings \(data.split cv:0 there, cv:1 here\); remove it"):
        experiment._check_same_settings(tiny_run, moved, experiment._CV_REMEDY)
    assert experiment.setting_differences({"train": {"init": ""}}, {"train": {"init": "w.pt"}}) == \
        ['train.init "" there, w.pt here']


def test_cv_folds_of_a_recipe_that_sets_val_fraction_pass_the_new_run_checks() -> None:
    from covseg.config import apply_overrides, check_new_run, load_recipe
    from covseg.experiment import _fold_config

    config = apply_overrides(load_recipe("default"), ["data.split=official", "data.val_fraction=0.2"])
    check_new_run(config)  # train on the official split reads it
    fold = _fold_config(config, 0, 5)
    assert (fold.data.split, fold.data.val_fraction) == ("cv:0", 0.1)
    check_new_run(fold)  # cv fixes its held-out images, so the fold leaves it at its default rather than refuse


def test_a_fold_whose_last_pt_has_other_settings_is_refused_before_any_fold_trains(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, samples, config = _refusal_setup(tiny_data, monkeypatch)
    out = tmp_path / "cv"
    fold1, fold2 = (experiment._fold_config(config, k, 3) for k in (1, 2))
    # fold 2's last.pt is fold 1's, copied in: the same shapes, another held-out fold
    _begun_fold(fold2, samples, data, out / "fold-2", trained=fold1)
    pattern = (rf"^{re.escape(str(out / 'fold-2'))}: its last.pt was trained with other settings than the run's "
               r"\(data.split cv:1 in last.pt, cv:2 in config.yaml\); is it another run's last.pt copied in\? "
               r"remove it to retrain it, or use another -o$")
    for jobs in (1, 2):  # before: folds 0 and 1 trained, then fold 2 resumed from fold 1's model
        with pytest.raises(CovsegError, match=pattern):
            experiment.cross_validate(config, samples, data, out, 3, False, jobs=jobs)
    assert not (out / "fold-0").exists()
    with pytest.raises(CovsegError, match="its last.pt was trained with other settings.*pass --force to retrain it"):
        experiment._check_reusable(out / "fold-2", fold2, samples, data)
    _begun_fold(fold1, samples, data, out / "fold-1")  # its own last.pt passes
    experiment._check_reusable(out / "fold-1", fold1, samples, data, experiment._CV_REMEDY)


def test_compare_refuses_a_split_without_held_out_images_before_training(tiny_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(experiment, "train_or_resume", _no_training)
    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("data.folds=")]
    config = apply_overrides(load_recipe("tiny"), [*overrides, "data.split=official", "data.val_fraction=0"])
    # before: the first model trained, then its scoring failed ("the run's val split is empty")
    with pytest.raises(CovsegError, match=r"^split official with data.val_fraction 0 holds out none of the 12 images, "
                                          r"so covseg compare would have none to score the models on; raise "
                                          r"data.val_fraction \(e.g. 0.1\) or use another --split$"):
        experiment.compare_models(["unet", "segnet"], config, samples, data, tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()


def test_cv_and_compare_refuse_a_non_run_folder_before_anything_trains(tiny_data: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data, samples, config = _refusal_setup(tiny_data, monkeypatch)
    out = tmp_path / "cv"
    (out / "fold-2").mkdir(parents=True)
    (out / "fold-2" / "notes.txt").write_text("note\n")
    pattern = (rf"^{re.escape(str(out / 'fold-2'))}: is not empty and not a covseg run folder; remove it \(or move "
               r"what it holds elsewhere\) or choose a new -o$")
    for jobs in (1, 2):  # before: folds 0 and 1 trained, then fold 2 was refused, naming --force (which cv refuses)
        with pytest.raises(CovsegError, match=pattern):
            experiment.cross_validate(config, samples, data, out, 3, False, jobs=jobs)
    junk = tmp_path / "cvs" / "seed-1" / "fold-2"
    junk.mkdir(parents=True)
    (junk / "notes.txt").write_text("note\n")
    with pytest.raises(CovsegError, match=rf"^{re.escape(str(junk))}: is not empty and not a covseg run folder"):
        experiment.cross_validate_seeds(config, samples, data, tmp_path / "cvs", 3, [0, 1], False)
    cmp = tmp_path / "cmp"
    (cmp / "segnet").mkdir(parents=True)
    (cmp / "segnet" / "notes.txt").write_text("note\n")
    fold0 = experiment._fold_config(config, 0, 3)
    for force in (False, True):  # --force replaces run folders only: before, unet trained, then segnet was refused
        with pytest.raises(CovsegError, match=rf"^{re.escape(str(cmp / 'segnet'))}: is not empty and not a covseg "
                                              r"run folder; .* or choose a new -o$"):
            experiment.compare_models(["unet", "segnet"], fold0, samples, data, cmp, force=force, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["fold-2"] and sorted(p.name for p in cmp.iterdir()) == ["segnet"]


@pytest.mark.parametrize("option", [["--device", "cuda"], ["--precision", "bf16"]])
def test_cv_and_compare_refuse_a_device_or_precision_this_machine_lacks_before_the_first_fold(
        option: list[str], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # before: "== fold 0 ==" (or "== unet ==") was printed, then the refusal, as if a fold had begun
    import torch

    import covseg.runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(covseg.runtime, "cpu_supports_bf16", lambda: False)
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("train.precision", "data.folds"))]
    for command in (["cv", "--folds", "2"], ["cv", "--folds", "2", "--seeds", "0", "1"],
                    ["compare", "--models", "unet", "segnet", "--split", "cv:0"]):
        out = tmp_path / command[0]
        assert main([*command, "--recipe", "tiny", "--data", str(tiny_data), "--epochs", "1", *option, "-o", str(out),
                     "--quiet", *overrides]) == 2
        captured = capsys.readouterr()
        assert captured.out == "", captured.out
        assert captured.err.count("\n") == 1 and captured.err.startswith("covseg: error: "), captured.err
        assert ("no GPU is visible" if option[0] == "--device" else "use --precision fp32 or auto") in captured.err
        assert not out.exists()


def test_cv_takes_no_report_of_another_runs_checkpoint_as_a_folds_score(tiny_run: Path, tiny_data: Path,
                                                                       tmp_path: Path) -> None:
    run, other = tmp_path / "fold-0", tmp_path / "other"
    for folder in (run, other):
        shutil.copytree(tiny_run, folder, ignore=shutil.ignore_patterns("eval-*"))
    report = run / "eval-heldout"
    # someone scores another run's last.pt into this run's eval-heldout: the same file name, not the same file.
    # evaluate refuses that -o (since session 74), so the report is written elsewhere and moved there
    assert main(["evaluate", str(other / "last.pt"), "--split", "heldout", "-o", str(report), "--quiet"]) == 2
    assert not report.exists()
    assert main(["evaluate", str(other / "last.pt"), "--split", "heldout", "-o", str(tmp_path / "elsewhere"),
                 "--quiet"]) == 0
    (tmp_path / "elsewhere").rename(report)
    assert experiment._is_current(report / "metrics.json", run, "final", str(tiny_data)) is False  # before: True
    assert main(["evaluate", str(run / "last.pt"), "--split", "heldout", "-o", str(report), "--quiet",
                 "--force"]) == 0  # over the other run's report: --force (since session 75)
    assert experiment._is_current(report / "metrics.json", run, "final", str(tiny_data)) is True
    # nor is an ensemble's report whose first member is this run's last.pt (its "file" is that member's)
    state = torch.load(other / "last.pt", map_location="cpu", weights_only=False)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1e-3  # another network (one named twice is refused)
    torch.save(state, other / "last.pt")
    assert main(["evaluate", str(run / "last.pt"), str(other / "last.pt"), "--split", "heldout", "-o",
                 str(tmp_path / "ensemble"), "--quiet"]) == 0
    shutil.rmtree(report)
    (tmp_path / "ensemble").rename(report)
    assert json.loads((report / "metrics.json").read_text())["model"]["file"] == str(run / "last.pt")
    assert experiment._is_current(report / "metrics.json", run, "final", str(tiny_data)) is False  # before: True


def test_mean_std_is_the_population_spread_of_the_folds_that_have_a_value() -> None:
    # folds 0.6, –, 0.8, 1.0: the fold without a value is left out (not 0); mean 2.4 / 3 = 0.8;
    # population std (ddof 0) sqrt((0.2² + 0 + 0.2²) / 3) = sqrt(0.08 / 3) = 0.1633 (ddof 1 would give 0.2)
    mean, std = experiment._mean_std({"Dice": [0.6, None, 0.8, 1.0]})["Dice"]
    assert (mean, std) == pytest.approx((0.8, (0.08 / 3) ** 0.5))


def test_seeds_summary_is_taken_over_the_seeds_cv_means_and_every_fold_model(tiny_seeds_cv: Path) -> None:
    import numpy as np
    summary = json.loads((tiny_seeds_cv / "seeds.json").read_text(encoding="utf-8"))
    per_seed = {s: json.loads((tiny_seeds_cv / f"seed-{s}" / "cv.json").read_text(encoding="utf-8")) for s in (0, 1)}
    for column, (mean, std) in summary["over_seeds"].items():
        means = [per_seed[s]["summary"][column][0] for s in (0, 1)]  # each seed's mean over its folds, not its std
        assert (mean, std) == pytest.approx((np.mean(means), np.std(means))), column
        models = [v for s in (0, 1) for v in per_seed[s]["columns"][column] if v is not None]
        assert summary["every_model"][column] == pytest.approx([np.mean(models), np.std(models)]), column


def test_testset_scores_the_data_sets_test_split_even_for_a_run_with_a_test_part_of_its_own(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from conftest import write_semiseg
    from covseg.splits import save_split

    data = write_semiseg(tmp_path / "data", n=12)
    test = data / "Dataset/TestingSet/LungInfection-Test"
    for name in ("t0", "t1", "t2"):
        for sub, value in (("Imgs", 80), ("GT", 255)):
            (test / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(test / sub / f"{name}.png")
    run = tmp_path / "run"
    run.mkdir()
    names = [str(i) for i in range(12)]
    save_split({"train": names[:8], "val": names[8:10], "test": names[10:]}, run / "split.json")  # a `paper` run
    assert sorted(s.name for s in experiment.select_samples(run, str(data), "binary", "test")) == ["10", "11"]
    assert sorted(s.name for s in experiment.select_samples(run, str(data), "binary", "testset")) == ["t0", "t1", "t2"]
    assert sorted(s.name for s in experiment.select_samples(run, str(data), "binary", "heldout")) == ["10", "11"]
    # every labelled training image holds the validation images that chose best.pt: scored with the final weights
    assert experiment._evaluates_validation(run, "all") and experiment._evaluates_validation(run, "val")
    assert not experiment._evaluates_validation(run, "heldout") and not experiment._evaluates_validation(run, "testset")
    experiment._check_ensemble_split([run, tmp_path / "no-split-here"], "testset")  # no member's split matters


def test_evaluate_all_scores_the_final_weights_not_best_pt(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "all"
    assert main(["evaluate", str(tiny_run), "--split", "all", "-o", str(out), "--quiet"]) == 0
    model = json.loads((out / "metrics.json").read_text())["model"]
    assert Path(model["file"]).name == "last.pt", model


def test_seeds_md_says_the_ensembles_train_seconds_are_its_members_sum(tiny_seeds_cv: Path) -> None:
    text = (tiny_seeds_cv / "seeds.md").read_text(encoding="utf-8")
    summary = json.loads((tiny_seeds_cv / "seeds.json").read_text(encoding="utf-8"))
    per_seed = [json.loads((tiny_seeds_cv / f"seed-{s}" / "cv.json").read_text(encoding="utf-8")) for s in (0, 1)]
    for k, seconds in enumerate(summary["ensemble"]["columns"]["train seconds"]):  # the sum, not one model's
        assert seconds == pytest.approx(sum(cv["columns"]["train seconds"][k] for cv in per_seed))
    # before: the ensemble row's train seconds (twice a model's with two seeds) stood unexplained beside the models'
    assert "its train seconds are the sum over those models" in text
    assert "\n| models | " in text and "|  |" not in text  # the seeds' table's first column is named
