"""Session 73, the cross-validation / compare / command-line layer: what `cv --jobs` says of the folds its workers
trained, which workflow an output folder belongs to (an interrupted compare, a seed ensemble's reports), one sort
key for numbered folders, typos in any `tasks:` entry of a recipe, `train -o` a file, and the commands' help."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from covseg import experiment, paired
from covseg.cli import build_parser, main
from covseg.config import TrainConfig, apply_overrides, load_recipe
from covseg.datasets import load_dataset
from covseg.errors import CovsegError

from conftest import TINY_OVERRIDES


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("covseg: error: ") and "Traceback" not in err[0]
    return err[0]


def _workers_here(trained: list[Path], worker_log: list[str]):
    """A stand-in for :func:`covseg.parallel_runs.train_runs_in_parallel` that trains each run here, one after
    another, as a worker would (its lines into ``worker_log``), and records which runs it was handed."""
    def train_runs_in_parallel(runs, samples, data, jobs, log=print, again=""):
        for config, run_dir in runs:
            trained.append(run_dir)
            experiment.train_or_resume(config, samples, run_dir, data, False, False, worker_log.append, again)
    return train_runs_in_parallel


@pytest.mark.parametrize("seeds", [None, [0, 1]])
def test_cv_jobs_does_not_call_the_folds_its_workers_just_trained_reused(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seeds: list[int] | None) -> None:
    trained: list[Path] = []
    worker_log: list[str] = []
    monkeypatch.setattr(experiment, "train_runs_in_parallel", _workers_here(trained, worker_log))
    data = str(tiny_data)
    samples = load_dataset(data, "binary", split="train")
    config = apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "train.epochs=1"])
    out = tmp_path / "cv"
    said: list[str] = []
    if seeds is None:
        experiment.cross_validate(config, samples, data, out, 2, False, said.append, jobs=2)
        folds = [out / "fold-0", out / "fold-1"]
    else:
        experiment.cross_validate_seeds(config, samples, data, out, 2, seeds, False, said.append, jobs=2)
        folds = [out / f"seed-{s}" / f"fold-{k}" for s in seeds for k in (0, 1)]
    assert trained == folds  # every run went to the "workers"
    # before: "… finished run reused (1 epochs)" for each fold, right after the workers had trained it
    assert not [line for line in said if "reused" in line], said
    assert said.count("== fold 0 ==") == said.count("== fold 1 ==") == (1 if seeds is None else 2)
    assert all((fold / "eval-heldout" / "metrics.json").is_file() for fold in folds)
    assert (out / ("cv.json" if seeds is None else "seeds.json")).is_file()
    # a fold finished by an earlier call, whose report is gone, is what "reused" says: it still says so
    (folds[0] / "eval-heldout" / "metrics.json").unlink()
    said.clear()
    if seeds is None:
        experiment.cross_validate(config, samples, data, out, 2, False, said.append, jobs=2)
    else:
        experiment.cross_validate_seeds(config, samples, data, out, 2, seeds, False, said.append, jobs=2)
    assert trained == folds  # nothing more to train
    assert [line for line in said if "reused" in line] == [f"{folds[0]}: finished run reused (1 epoch)"]


def _fake_run(folder: Path) -> Path:
    """A folder that reads as a covseg run (``config.yaml``, :func:`covseg.run.is_run_folder`)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("recipe: tiny\n")
    return folder


def test_a_compare_stopped_before_its_comparison_json_is_still_a_compare_folder(tmp_path: Path, tiny_data: Path,
                                                                                capsys) -> None:
    out = tmp_path / "cmp"
    _fake_run(out / "segnet")
    _fake_run(out / "unet")
    assert experiment._workflow_of(out) == ("compare", "unet, segnet")  # before: None, a new folder
    experiment._check_same_workflow(out, "compare")  # compare goes on in it
    with pytest.raises(CovsegError, match=r"holds the output of covseg compare \(unet, segnet\), not of covseg cv "
                                          r"--seeds; give -o a folder of its own$"):
        experiment._check_same_workflow(out, "seeds")
    assert main(["cv", "--recipe", "tiny", "--data", str(tiny_data), "--folds", "3", "--epochs", "1", "-o", str(out),
                 "--quiet", *TINY_OVERRIDES]) == 2
    assert _one_line_error(capsys) == (f"covseg: error: {out}: holds the output of covseg compare (unet, segnet), not "
                                       "of covseg cv; give -o a folder of its own")
    assert sorted(p.name for p in out.iterdir()) == ["segnet", "unet"]  # no fold-K made beside them
    # a run under another name is no model's run of a compare: the folder is not taken for one
    other = tmp_path / "mine"
    _fake_run(other / "run1")
    assert experiment._workflow_of(other) is None


def _seed_ensemble(seeds_dir: Path, folds: int = 2) -> Path:
    """A ``covseg cv --seeds`` folder's layout: ``seed-0``, ``seed-1`` (each with fold runs) and the seed ensemble's
    reports, ``ensemble/fold-K/per_image.csv``; returns ``ensemble/``."""
    for seed in (0, 1):
        for k in range(folds):
            _fake_run(seeds_dir / f"seed-{seed}" / f"fold-{k}")
    for k in range(folds):
        (seeds_dir / "ensemble" / f"fold-{k}").mkdir(parents=True)
        (seeds_dir / "ensemble" / f"fold-{k}" / "per_image.csv").write_text("name,dice_infection\na,0.5\n")
    return seeds_dir / "ensemble"


@pytest.mark.parametrize("workflow", ["compare", "cv", "seeds"])
def test_a_seed_ensembles_report_folder_is_named_as_such_and_refused_to_every_workflow(tmp_path: Path,
                                                                                      workflow: str) -> None:
    ensemble = _seed_ensemble(tmp_path / "seeds")
    assert experiment._workflow_of(ensemble) == ("ensemble", "fold-0, fold-1")  # before: ("cv", …)
    command = experiment._WORKFLOWS[workflow]
    # before: "holds the output of covseg cv (fold-0, fold-1)" for compare and --seeds, and cv was let in
    with pytest.raises(CovsegError) as refused:
        experiment._check_same_workflow(ensemble, workflow)
    assert str(refused.value) == (f"{ensemble}: holds the seed ensemble's reports (fold-0, fold-1) of the covseg cv "
                                  f"--seeds folder {tmp_path / 'seeds'}, not the output of {command}; give -o a "
                                  "folder of its own")
    assert experiment._workflow_of(tmp_path / "seeds") == ("seeds", "seed-0, seed-1")  # the --seeds folder itself


def test_numbered_names_sort_by_their_number() -> None:
    names = ["seed-10", "seed-2", "seed-007", "seed-1", "seed-x", "fold-0"]
    assert sorted(names, key=paired.by_number) == ["seed-x", "fold-0", "seed-1", "seed-2", "seed-007", "seed-10"]


def test_seed_folders_are_named_in_seed_order(tmp_path: Path) -> None:
    folder = tmp_path / "seeds"
    for name in ("seed-10", "seed-2"):
        (folder / name).mkdir(parents=True)
    # cv-compare given a --seeds folder names its seed folders in seed order (before: seed-10, seed-2)
    with pytest.raises(CovsegError, match=r"give one of its seed folders \(seed-2, seed-10\)$"):
        paired.read_fold_scores(folder)
    assert experiment._numbered(folder, "seed-") == ["seed-2", "seed-10"]
    for name in ("seed-007", "seed-10"):  # the seed ensemble's members beside it: by number too
        (tmp_path / "s2" / name).mkdir(parents=True)
    (tmp_path / "s2" / "ensemble" / "fold-0").mkdir(parents=True)
    (tmp_path / "s2" / "ensemble" / "fold-0" / "per_image.csv").write_text("name\n")
    # before: seed-10 first (the shorter name)
    assert paired.seed_ensemble_beside(tmp_path / "s2" / "ensemble") == [tmp_path / "s2" / n
                                                                          for n in ("seed-007", "seed-10")]


def test_fold_runs_are_a_cv_folders_numbered_fold_runs_in_fold_order(tmp_path: Path) -> None:
    cv = tmp_path / "cv"
    for name in ("fold-10", "fold-2", "fold-0", "fold-x"):
        _fake_run(cv / name)
    (cv / "fold-3").mkdir()  # no run in it (yet)
    assert paired.fold_runs(cv) == [cv / "fold-0", cv / "fold-2", cv / "fold-10"]
    assert paired.fold_runs(cv / "fold-0") == []  # a run folder itself
    assert paired.fold_runs(tmp_path / "none") == []
    assert paired.fold_runs(_seed_ensemble(tmp_path / "seeds")) == []  # reports, not runs
    assert paired.fold_runs(tmp_path / "seeds") == []  # its runs are one level down


@pytest.mark.parametrize("entry, message", [
    ("multiclass:\n    train: {lrr: 0.001}\n",
     r"tasks: multiclass: train: unknown option 'lrr' \(did you mean 'lr'\?\); known: loss, "),
    ("multiclass:\n    tarin: {lr: 0.001}\n",
     r"tasks: multiclass: unknown option 'tarin' \(did you mean 'train'\?\); known: recipe, data, model, train$"),
    ("multiclass:\n    train: {augment: {hflipp: 0.5}}\n",
     r"tasks: multiclass: train.augment: unknown option 'hflipp' \(did you mean 'hflip'\?\)"),
    ("binary:\n    train: {lrr: 0.001}\n",  # the task in use: its entry named (before: "train: unknown option")
     r"tasks: binary: train: unknown option 'lrr' \(did you mean 'lr'\?\)"),
])
def test_a_mistyped_key_in_any_tasks_entry_is_refused_with_a_close_match(tmp_path: Path, entry: str,
                                                                         message: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {task: binary}\ntasks:\n  " + entry)
    # before: an entry of the task not in use was never read, so its typo passed until that task was trained
    with pytest.raises(CovsegError, match=rf"^{recipe}: {message}"):
        load_recipe(str(recipe))
    with pytest.raises(CovsegError, match=message):
        load_recipe(str(recipe), task="multiclass")
    recipe.write_text("data: {task: binary}\ntasks:\n  multiclass:\n    train: {lr: 0.002}\n  binary:\n")
    assert load_recipe(str(recipe)).train.lr == TrainConfig().lr  # binary: its empty entry, the shared default
    assert load_recipe(str(recipe), task="multiclass").train.lr == 0.002  # a correct entry still applies


def test_train_into_a_file_says_to_give_a_folder(tiny_data: Path, tmp_path: Path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--epochs", "1", "-o", str(afile), "--quiet",
                 *TINY_OVERRIDES]) == 2
    # before: "… is a file, not a folder; give an output path outside it"
    assert _one_line_error(capsys) == (f"covseg: error: {afile}: is a file, not a run folder; give -o a folder for "
                                       "the run (it is made if missing), or move the file")
    assert afile.read_text() == "mine"


def _commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_says_what_it_is_for() -> None:
    unexplained = [f"covseg {name} {action.option_strings[0] if action.option_strings else action.dest}"
                   for name, parser in _commands().items() for action in parser._actions
                   if not isinstance(action, argparse._HelpAction) and not action.help]
    # before: download --dataset, --quiet; evaluate and predict --device, --batch-size, --quiet; predict -o,
    # --no-overlays; pretrain --batch-size, --seed
    assert unexplained == []


def test_the_help_says_only_what_applies_to_the_command() -> None:
    commands = _commands()

    def help_of(command: str, option: str) -> str:
        action = next(a for a in commands[command]._actions if option in a.option_strings)
        return " ".join(action.help.split())

    # evaluate scores images it does not count to decide on tracing: predict's rule is predict's alone
    assert "a predict of fewer than" not in help_of("evaluate", "--backend")
    assert "a predict of fewer than" in help_of("predict", "--backend")
    # --device of cv and compare serves no --resume (they have none); train's does
    assert help_of("cv", "--device") == help_of("compare", "--device") == "shorthand for train.device"
    assert "--resume" in help_of("train", "--device")
    assert "cross-validate" in build_parser().description


def test_a_task_entry_naming_another_task_is_refused(tmp_path: Path) -> None:
    from covseg.config import load_recipe
    from covseg.errors import CovsegError

    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks:\n  binary:\n    data: {task: multiclass}\n")
    with pytest.raises(CovsegError, match=r"^.*r\.yaml: tasks: binary: data\.task is 'multiclass', but an entry under "
                                          r"tasks is the binary task's own settings; remove data\.task there"):
        load_recipe(str(recipe), "multiclass")
    recipe.write_text("tasks:\n  binary:\n    data: {task: binary, input_size: 256}\n")
    assert load_recipe(str(recipe), "binary").data.input_size == 256  # its own task, said again: fine
