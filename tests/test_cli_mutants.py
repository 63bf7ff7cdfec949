"""covseg.cli: argument checks, refusals, exit codes and which options reach the library (mutation-testing gaps).

Fast: each command's library function is replaced by a recorder, so nothing trains."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

import covseg.cli as cli
from covseg.cli import main
from covseg.errors import CovsegError


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: "), err
    return err[0]


# --- argument types -------------------------------------------------------------------------------------------

def test_positive_int_refuses_zero_and_takes_one() -> None:
    assert cli._positive_int("1") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="must be a positive whole number, got 0"):
        cli._positive_int("0")


def test_cv_jobs_zero_is_refused_by_the_parser(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["cv", "--jobs", "0", "-o", str(tmp_path / "cv")])
    assert refused.value.code == 2 and "--jobs: must be a positive whole number, got 0" in capsys.readouterr().err


def test_a_negative_seed_is_refused_as_out_of_range(tmp_path: Path, capsys) -> None:
    assert cli._seed("-1") == -1
    assert main(["cv", "--recipe", "tiny", "-o", str(tmp_path / "cv"), "--seeds", "-1", "0"]) == 2
    assert "--seeds -1 0: seeds must be 0 or more" in _error(capsys)
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("text, value", [("0", 0.0), ("0.25", 0.25)])
def test_non_negative_float_takes_zero(text: str, value: float) -> None:
    assert cli._non_negative_float(text) == value


@pytest.mark.parametrize("text", ["-0.5", "inf", "nan"])
def test_non_negative_float_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="must be a finite number >= 0"):
        cli._non_negative_float(text)


# --- overrides ----------------------------------------------------------------------------------------------

def test_a_flag_and_an_override_that_disagree_are_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--recipe", "tiny", "--epochs", "2", "-o", str(run), "train.epochs=3"]) == 2
    assert "--epochs 2 and train.epochs=3 contradict each other" in _error(capsys)
    assert main(["train", "--recipe", "tiny", "--device", "cpu", "-o", str(run), "train.device=cuda"]) == 2
    assert "--device cpu and train.device=cuda contradict each other" in _error(capsys)
    assert not run.exists()


def test_the_last_data_task_override_picks_the_recipe_task(tmp_path: Path, monkeypatch) -> None:
    seen: list[object] = []

    def load_recipe(name, task=None):
        seen.append((name, task))
        raise CovsegError("stop here")

    monkeypatch.setattr(cli, "load_recipe", load_recipe)
    assert main(["train", "-o", str(tmp_path / "r"), "data.task=binary", "data.task='multiclass'"]) == 2
    assert main(["train", "--recipe", "tiny", "--task", "binary", "-o", str(tmp_path / "r")]) == 2
    assert seen == [("default", "multiclass"), ("tiny", "binary")]


def test_an_unknown_option_with_an_equals_sign_is_not_taken_as_an_override(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as refused:
        main(["train", "--recipe", "tiny", "-o", str(tmp_path / "r"), "--bogus=1"])
    assert refused.value.code == 2 and "unrecognized arguments: --bogus=1" in capsys.readouterr().err


# --- train --resume ------------------------------------------------------------------------------------------

def test_resume_refuses_force_and_a_folder_without_last_pt(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert main(["train", "--resume", str(run), "--force"]) == 2
    assert "--resume continues a run with its saved settings; drop --force" in _error(capsys)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert f"{run}: not a covseg run folder (no config.yaml or run.json)" in _error(capsys)  # an empty folder
    assert main(["train", "--resume", str(run), "-o", str(tmp_path / "other")]) == 2
    assert "not both" in _error(capsys)
    assert list(run.iterdir()) == []
    # a mistyped path, or a file: said as such (was "nothing to resume (no last.pt); start it again with -o")
    assert main(["train", "--resume", str(tmp_path / "rnu"), "--quiet"]) == 2
    assert _error(capsys) == (f"covseg: error: {tmp_path / 'rnu'}: no such run folder; give --resume the run folder "
                              "covseg train -o wrote")
    (tmp_path / "last.pt").write_bytes(b"")
    assert main(["train", "--resume", str(tmp_path / "last.pt"), "--quiet"]) == 2
    assert "last.pt: is a file, not a run folder; give --resume the run folder" in _error(capsys)


# --- which options reach the library ------------------------------------------------------------------------

def _no_data(monkeypatch) -> None:
    import covseg.datasets

    monkeypatch.setattr(covseg.datasets, "load_dataset", lambda *args, **kwargs: [])


def test_cv_passes_data_folds_and_jobs_and_takes_the_default_val_fraction(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    import covseg.experiment

    _no_data(monkeypatch)
    calls: list[tuple] = []

    def cross_validate(config, samples, data, out, folds, progress, log, jobs=1):
        calls.append((folds, jobs, progress, data))
        out.mkdir(parents=True)
        (out / "cv.md").write_text("table\n")

    monkeypatch.setattr(covseg.experiment, "cross_validate", cross_validate)
    out = tmp_path / "cv"
    # data.val_fraction=0.1 is what every fold has anyway (DataConfig's default): accepted, not refused
    assert main(["cv", "--recipe", "tiny", "--data", str(tmp_path), "--jobs", "2", "-o", str(out), "--quiet",
                 "data.folds=4", "data.val_fraction=0.1"]) == 0
    assert calls == [(4, 2, False, str(tmp_path))]
    assert "table" in capsys.readouterr().out


def test_train_returns_130_when_the_run_stopped(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.run
    from covseg.run import RunResult

    _no_data(monkeypatch)
    monkeypatch.setattr(covseg.run, "train_run", lambda config, samples, run_dir, data, **kw: RunResult(
        run_dir, 1, 2, 0.5, stopped=True))
    assert main(["train", "--recipe", "tiny", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "r"), "--quiet"]) == 130
    monkeypatch.setattr(covseg.run, "train_run", lambda config, samples, run_dir, data, **kw: RunResult(
        run_dir, 0, 2, None, seconds=3.0))
    assert main(["train", "--recipe", "tiny", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "r"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("trained 0 epochs in 3 s; best validation mean Dice n/a")


def test_train_counts_one_epoch_in_the_singular(tmp_path: Path, monkeypatch, capsys) -> None:
    # before: "trained 1 epochs in 3 s", "trained 1 more epochs (2 of 2)", "the run has all 1 epochs"
    import covseg.run
    from covseg.config import load_recipe
    from covseg.run import RunResult

    _no_data(monkeypatch)
    monkeypatch.setattr(covseg.run, "train_run", lambda config, samples, run_dir, data, **kw: RunResult(
        run_dir, 1, 2, 0.5, seconds=3.0))
    assert main(["train", "--recipe", "tiny", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "r"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("trained 1 epoch in 3 s; best validation mean Dice 0.5000")
    run = tmp_path / "r"
    run.mkdir()
    (run / "last.pt").touch()
    monkeypatch.setattr(covseg.run, "read_run_config", lambda run_dir: load_recipe("tiny"))
    for done, before, total, said in ((2, 1, 2, "trained 1 more epoch (2 of 2) in 3 s;"),
                                      (3, 1, 3, "trained 2 more epochs (3 of 3) in 3 s;"),
                                      (1, 1, 1, "nothing left to resume: the run has its 1 epoch;"),
                                      (2, 2, 2, "nothing left to resume: the run has all 2 epochs;")):
        monkeypatch.setattr(covseg.run, "train_run", lambda config, samples, run_dir, data, **kw: RunResult(
            run_dir, done, total, 0.5, seconds=3.0, epochs_before=before))
        assert main(["train", "--resume", str(run), "--data", str(tmp_path), "--quiet"]) == 0
        assert capsys.readouterr().out.startswith(said)


def _export_recorder(monkeypatch, agreement: str) -> list[tuple]:
    import covseg.export

    calls: list[tuple] = []

    def export_onnx(model, output, checkpoint, int8=False, data=None, force=False):
        calls.append((model, output, checkpoint, int8, data))
        return {"covseg_int8_agreement": agreement, "covseg_int8_checked_on": "its validation images",
                "covseg_checkpoint": "last.pt" if checkpoint == "last" else "best.pt"}

    monkeypatch.setattr(covseg.export, "export_onnx", export_onnx)
    return calls


def test_export_refuses_data_without_int8_and_a_folder_as_output(tmp_path: Path, monkeypatch, capsys) -> None:
    calls = _export_recorder(monkeypatch, "1.0")
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "m.onnx"), "--data", str(tmp_path)]) == 2
    assert "--data is read only by --int8" in _error(capsys)
    assert main(["export", str(tmp_path), "-o", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; give -o an ONNX file name" in _error(capsys)
    assert calls == []


def test_export_int8_passes_its_data_and_warns_below_bf16_agreement(tmp_path: Path, monkeypatch, capsys) -> None:
    calls = _export_recorder(monkeypatch, "0.9")
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path), "-o", str(out), "--int8", "--data", "D", "--checkpoint", "last"]) == 0
    assert calls == [(tmp_path, out, "last", True, "D")]
    captured = capsys.readouterr()
    assert "int8 labels agree with fp32 on 90.000% of the pixels" in captured.out
    assert "covseg: warning: that is below the" in captured.err
    _export_recorder(monkeypatch, "1.0")
    assert main(["export", str(tmp_path), "-o", str(out), "--int8"]) == 0
    assert capsys.readouterr().err == ""


def test_export_names_the_checkpoint_it_exported(tmp_path: Path, monkeypatch, capsys) -> None:
    _export_recorder(monkeypatch, "1.0")
    out = tmp_path / "m.onnx"
    # before: "wrote OUT", whichever of the run's checkpoints it was
    assert main(["export", str(tmp_path), "-o", str(out), "--checkpoint", "last"]) == 0
    assert capsys.readouterr().out == f"wrote {out} (from {tmp_path / 'last.pt'})\n"
    assert main(["export", str(tmp_path / "best.pt"), "-o", str(out)]) == 0  # a checkpoint file: named as given
    assert capsys.readouterr().out == f"wrote {out} (from {tmp_path / 'best.pt'})\n"


def test_pseudo_label_passes_its_rule_and_options(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.selftrain

    calls: list[tuple] = []

    def make_pseudo_labels(teacher, output, data, rule, checkpoint, **kwargs):
        calls.append((teacher, output, data, rule, checkpoint, kwargs["force"], kwargs["progress"],
                      kwargs["match_grey"], kwargs["device"], kwargs["precision"]))

    monkeypatch.setattr(covseg.selftrain, "make_pseudo_labels", make_pseudo_labels)
    out = tmp_path / "p"
    assert main(["pseudo-label", "T", "-o", str(out), "--data", "D", "--min-confidence", "0.7", "--min-fraction",
                 "0.01", "--max-fraction", "0.4", "--match-grey", "--checkpoint", "best", "--force", "--quiet",
                 "--precision", "fp32"]) == 0
    rule = covseg.selftrain.PseudoLabelRule(0.7, 0.01, 0.4)
    assert calls == [(Path("T"), out, "D", rule, "best", True, False, True, "cpu", "fp32")]
    assert capsys.readouterr().out == f"wrote {out}\n"


def test_pretrain_crop_defaults_to_the_input_size_below_256_and_threads_pass(tmp_path: Path, monkeypatch,
                                                                             capsys) -> None:
    import covseg.pretrain

    _no_data(monkeypatch)
    seen: list[object] = []
    monkeypatch.setattr(covseg.pretrain, "check_options", lambda options, config: seen.append(options))
    monkeypatch.setattr(covseg.pretrain, "check_output_folder", lambda out, force: seen.append((out, force)))
    monkeypatch.setattr(covseg.pretrain, "pretrain", lambda config, images, out, options, data, force, **kw: {
        "file": out / "pretrained.pt", "steps": options.steps, "loss": 0.5, "seconds": 16.6})
    out = tmp_path / "pre"
    assert main(["pretrain", "--recipe", "tiny", "--data", "D", "-o", str(out), "--steps", "3", "--quiet",
                 "data.input_size=32", "train.threads=1"]) == 0
    assert seen[0].crop == 32 and seen[0].steps == 3 and seen[1] == (out, False)
    # one line says it all (before: a second, "pretrained 3 steps in 17 s; restoration loss (MSE) 0.5000")
    assert capsys.readouterr().out == (f"wrote {out / 'pretrained.pt'} (3 steps in 17 s, restoration MSE 0.5000); "
                                       f"start a run from it with train.init={out}\n")


@pytest.mark.parametrize("override, instead", [("train.seed=3", "use --seed instead"),
                                               ("train.lr=0.1", "use --lr instead"),
                                               ("train.epochs=2", "use --steps instead"),
                                               ("train.momentum=0.5", "drop the override")])
def test_pretrain_refuses_train_overrides_it_does_not_read(override: str, instead: str, tmp_path: Path,
                                                           capsys) -> None:
    assert main(["pretrain", "--recipe", "tiny", "--data", "D", "-o", str(tmp_path / "pre"), override]) == 2
    err = _error(capsys)
    assert f"covseg pretrain does not use {override.partition('=')[0]}" in err and err.endswith(instead)


def test_download_passes_the_mirror_and_ctrl_c_exits_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.download

    calls: list[tuple] = []

    class Report:
        def summary(self) -> str:
            return "done"

    def download(dataset, dest, mirror, progress=True):
        calls.append((dataset, dest, mirror, progress))
        return Report()

    monkeypatch.setattr(covseg.download, "download", download)
    assert main(["download", "--mirror", "M", "--data-dir", str(tmp_path), "--quiet"]) == 0
    assert calls == [("covid-semiseg", tmp_path, "M", False)]
    assert capsys.readouterr().out == "done\n"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(covseg.download, "download", interrupted)
    assert main(["download", "--data-dir", str(tmp_path)]) == 130
    assert capsys.readouterr().err == ("interrupted; run the same covseg download again to go on (the files verified "
                                       "so far are not fetched again)\n")


def test_no_data_given_and_none_downloaded_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.download

    monkeypatch.setattr(covseg.download, "default_data_dir", lambda: tmp_path)
    with pytest.raises(CovsegError, match="no --data given and"):
        cli._default_data()
    (tmp_path / "covid-semiseg").mkdir()
    with pytest.raises(CovsegError, match="is an unfinished download"):  # there, but empty
        cli._default_data()
    missing, _ = covseg.download.missing_required_files("covid-semiseg", tmp_path / "covid-semiseg")
    for rel in missing:
        (tmp_path / "covid-semiseg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "covid-semiseg" / rel).write_bytes(b"")
    assert cli._default_data() == str(tmp_path / "covid-semiseg")


# --- exit codes of errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("err, expected", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), True),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA error"), True),
    (RuntimeError("shape mismatch"), False)])
def test_torch_out_of_memory_is_recognised(err: RuntimeError, expected: bool) -> None:
    assert cli._is_torch_out_of_memory(err) is expected


def test_out_of_memory_in_a_command_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    def oom(args):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore")

    monkeypatch.setitem(cli.COMMANDS, "download", oom)
    assert main(["download", "--data-dir", str(tmp_path)]) == 2
    assert "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in _error(capsys)

    def other(args):
        raise RuntimeError("shape mismatch")

    monkeypatch.setitem(cli.COMMANDS, "download", other)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["download", "--data-dir", str(tmp_path)])


def test_evaluate_passes_every_option_to_evaluate_run(tmp_path: Path, monkeypatch, capsys) -> None:
    import covseg.experiment

    calls: list[tuple] = []
    metrics = {"per_image": {"dice": {"background": 0.9, "infection": 0.5, "mean_foreground": 0.5}},
               "pixel_accuracy": 0.95}

    def evaluate_run(models, data, split, output, checkpoint, device, precision, batch_size, tta, task, backend,
                     progress=True, lesion_model=None, force=False):
        calls.append((models, data, split, output, checkpoint, device, precision, batch_size, tta, task, backend,
                      progress, lesion_model, force))
        return metrics, tmp_path / "rep"

    monkeypatch.setattr(covseg.experiment, "evaluate_run", evaluate_run)
    a, b, les = tmp_path / "a", tmp_path / "b", tmp_path / "les"
    for folder in (a, b, les):
        folder.mkdir()
    assert main(["evaluate", str(a), str(b), "--data", "D", "--split", "val", "-o", str(tmp_path / "o"),
                 "--checkpoint", "ema", "--precision", "fp32", "--batch-size", "3", "--tta", "--task", "binary",
                 "--backend", "torch", "--quiet", "--lesion-model", str(les), "--force"]) == 0
    assert calls == [([a, b], "D", "val", tmp_path / "o", "ema", "cpu", "fp32", 3, True, "binary", "torch", False,
                      [les], True)]
    assert capsys.readouterr().out == ("Dice (per image): infection 0.5000; pixel accuracy 0.9500\n"
                                       f"report: {tmp_path / 'rep'}/metrics.md\n")


def test_a_file_in_the_way_of_a_folder_is_told_as_such(tmp_path: Path, capsys) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    assert cli._file_system_refusal(FileExistsError(17, "File exists", str(file))) == 2
    assert capsys.readouterr().err == f"covseg: error: {file} is a file, not a folder; give an output path outside it\n"
    assert cli._file_system_refusal(FileExistsError(17, "File exists", str(tmp_path))) == 2
    assert capsys.readouterr().err == f"covseg: error: {tmp_path}: File exists; check the path and permissions\n"


def test_cv_compare_refuses_one_folder_written_two_ways(tmp_path: Path, monkeypatch) -> None:
    # the refusal lives in covseg.paired (session 72), which compares the tables' resolved paths
    from covseg.errors import CovsegError
    from covseg.paired import PER_IMAGE, _check_two_runs

    table = tmp_path / "cv" / "fold-0" / PER_IMAGE
    table.parent.mkdir(parents=True)
    table.write_text("image,fg_dice\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CovsegError, match="^cv is both the reference and the candidate"):
        _check_two_runs(Path("cv"), tmp_path / "cv", ["fold-0"])


def test_a_bench_refusal_is_the_cli_s_one_line_and_exit_2(monkeypatch, capsys) -> None:
    import covseg.bench

    def refuse(argv, command="covseg bench"):
        raise SystemExit("covseg bench: --size must be positive")

    monkeypatch.setattr(covseg.bench, "main", refuse)
    assert main(["bench", "--size", "0"]) == 2
    assert capsys.readouterr().err == "covseg: error: --size must be positive\n"


def test_a_training_process_other_than_the_main_one_exits_0_quietly(tmp_path: Path, monkeypatch, capsys) -> None:
    # a finished run: a stopped one exits with the stop's status on every rank (tests/test_s75_cli.py)
    import covseg.run
    import covseg.runtime
    from covseg.run import RunResult

    _no_data(monkeypatch)

    class Peer:
        is_main = False

    monkeypatch.setattr(covseg.runtime, "init_distributed", lambda device: (Peer(), device))
    monkeypatch.setattr(covseg.runtime, "close_distributed", lambda wait_for_peers=False: None)
    monkeypatch.setattr(covseg.run, "train_run", lambda config, samples, run_dir, data, **kw: RunResult(
        run_dir, 2, 2, 0.5))
    assert main(["train", "--recipe", "tiny", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "r"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
