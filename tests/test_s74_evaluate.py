"""`covseg evaluate` beyond one run (session 74): an ensemble's or a --lesion-model's figure on images some model
trained on (or on the validation images that chose a best.pt) carries caveats as one run's does; metrics.md names
every model file, its epoch and flip TTA; an ensemble of checkpoint files in their run folders is scored on their
held-out images; a run's own report folder takes no other model's report; a Ctrl-C while a report replaces an older
one leaves the new one whole."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

import covseg.evaluation as evaluation
from covseg.cli import main
from covseg.errors import CovsegError
import covseg.experiment as experiment
from covseg.evaluation import _markdown, evaluate_image, summarise, write_report
from covseg.experiment import select_samples
from covseg.labels import get_scheme

BINARY = get_scheme("binary")
FAST = ["--quiet", "--backend", "torch", "--precision", "fp32"]


def _twin(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of tiny_run (one split, one data folder) without its reports, each checkpoint's first weight nudged so
    that it is another model (an ensemble of identical checkpoints is refused): a second member of that split."""
    import torch

    twin = tmp_path / "twin"
    shutil.copytree(tiny_run, twin, ignore=shutil.ignore_patterns("eval-*"))
    for checkpoint in twin.glob("*.pt"):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        weight = next(iter(state["model"]))
        state["model"][weight] = state["model"][weight] + 1e-3
        torch.save(state, checkpoint)
        os.utime(checkpoint, ns=((tiny_run / checkpoint.name).stat().st_atime_ns,
                                 (tiny_run / checkpoint.name).stat().st_mtime_ns))
    return twin


def _evaluate(args: list[str], out: Path, capsys: pytest.CaptureFixture) -> tuple[dict, str, list[str]]:
    capsys.readouterr()
    assert main(["evaluate", *args, "-o", str(out), *FAST]) == 0, capsys.readouterr().err
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("covseg: warning:")]
    return json.loads((out / "metrics.json").read_text()), (out / "metrics.md").read_text(), warnings


def test_an_ensemble_on_its_members_training_images_is_told_so_and_names_its_models(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    twin = _twin(tiny_run, tmp_path)
    metrics, md, warnings = _evaluate([str(tiny_run), str(twin), "--split", "train"], tmp_path / "train", capsys)
    expected = (f"8 of these 8 images were training images of {tiny_run} and {twin}, so this is no held-out figure; "
                "score the models on images none of them trained on (--split heldout, the default, or test)")
    assert metrics["caveats"] == [expected] and warnings == [f"covseg: warning: {expected}"]
    assert f"**Caveat:** {expected}." in md
    epoch = metrics["model"]["members"][0]["epoch"]
    lines = md.splitlines()
    assert lines[0] == "# ensemble of unet (2 models) · binary · train (8 images) · best.pt"  # split train: best.pt
    assert lines[2] == (f"Scored by the mean probabilities of 2 models: `{tiny_run / 'best.pt'}` (epoch {epoch}), "
                        f"`{twin / 'best.pt'}` (epoch {epoch}); without flip TTA.")
    # the held-out images of one split: no caveat, and the final models
    metrics, md, warnings = _evaluate([str(tiny_run), str(twin)], tmp_path / "heldout", capsys)
    assert "caveats" not in metrics and warnings == [] and "Caveat" not in md
    assert md.splitlines()[0].endswith("· heldout (4 images) · last.pt")


def test_checkpoint_files_in_their_run_folders_are_scored_together_on_their_held_out_images(
        tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Before, their split was looked for beside the files' own paths ("needs run folders with split.json"), though
    a single checkpoint in its run folder is scored on the run's held-out images."""
    twin = _twin(tiny_run, tmp_path)
    metrics, md, warnings = _evaluate([str(tiny_run / "best.pt"), str(twin / "best.pt")], tmp_path / "e", capsys)
    assert metrics["n_images"] == 4 and metrics["split"] == "heldout"
    expected = (f"{tiny_run / 'best.pt'} and {twin / 'best.pt'} were chosen on these heldout images (the best "
                "validation epoch of its run), so this figure is optimistic; give the run folders instead of the "
                "checkpoint files to score each run's final model")
    assert metrics["caveats"] == [expected] and warnings == [f"covseg: warning: {expected}"]


def test_a_flip_tta_report_says_so_in_its_title_and_under_it(tiny_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    metrics, md, _ = _evaluate([str(tiny_run), "--tta"], tmp_path / "tta", capsys)
    assert metrics["model"]["flip_tta"] is True
    lines = md.splitlines()
    assert lines[0] == "# unet · binary · heldout (4 images) · last.pt · flip TTA"
    assert lines[2] == (f"Scored by `{tiny_run / 'last.pt'}` (epoch {metrics['model']['epoch']}); with flip TTA (each "
                        "prediction averaged with that of the left-right mirrored image).")


def test_the_models_sentence_names_each_side_of_a_lesion_model_and_an_onnx_file_s_checkpoint() -> None:
    one = {"file": "r/last.pt", "epoch": 3, "flip_tta": False}
    onnx = {"file": "m.onnx", "exported_from": "swa.pt", "epoch": 9}
    types = {"file": "a/last.pt", "flip_tta": True, "members": [{"file": "a/last.pt", "epoch": 2}, onnx]}
    assert evaluation.models_sentence(one) == "Scored by `r/last.pt` (epoch 3); without flip TTA."
    assert evaluation.models_sentence({**types, "lesion_model": {"file": "b/best.pt", "epoch": None}}) == (
        "Lesions found by `b/best.pt`; their types given by the mean probabilities of 2 models: `a/last.pt` "
        "(epoch 2), `m.onnx` (exported from swa.pt, epoch 9); with flip TTA (each prediction averaged with that of "
        "the left-right mirrored image).")
    # a report without a model (write_report called by itself) has no such line
    truth = np.array([[0, 1], [0, 1]])
    ev = summarise([evaluate_image("a", np.eye(2, dtype=np.float32)[truth].transpose(2, 0, 1), truth, BINARY)], BINARY)
    assert _markdown(ev, "t").splitlines()[2].startswith("1 image; ")
    assert _markdown(ev, "t", {**ev.to_dict(), "model": one}).splitlines()[2:5] == [
        "Scored by `r/last.pt` (epoch 3); without flip TTA.", "", f"1 image; {evaluation.EMPTY_TRUTH_RULE}."]


def test_scored_files_list_the_type_models_then_the_lesion_models_in_order() -> None:
    info = {"file": "a/last.pt", "members": [{"file": "a/last.pt"}, {"file": "b/last.pt"}],
            "lesion_model": {"file": "c/swa.pt"}}
    assert experiment._scored_files(info) == [Path("a/last.pt"), Path("b/last.pt"), Path("c/swa.pt")]
    assert experiment._scored_files({"file": "x.onnx"}) == [Path("x.onnx")]


def test_a_type_model_and_its_lesion_model_on_every_image_count_each_training_image_once(
        tiny_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    """As `covseg evaluate MC_RUN --lesion-model BIN_RUN --split all` (one split) and a model file kept elsewhere."""
    twin = _twin(tiny_run, tmp_path)
    loose = tmp_path / "loose.pt"
    samples = select_samples(tiny_run, str(tiny_data), "binary", "all")
    models = [(tiny_run, tiny_run / "last.pt"), (twin, twin / "last.pt"), (None, loose)]
    caveats = experiment._ensemble_caveats(models, "all", samples, str(tiny_data))
    assert caveats == [
        f"8 of these 12 images were training images of {tiny_run} and {twin}, so this is no held-out figure; score "
        "the models on images none of them trained on (--split heldout, the default, or test)",
        f"{loose} lies outside its run folder, so which of these 12 images it trained on is not known: if it was "
        "trained on them, this is no held-out figure; for a held-out figure, score the models on --split test"]
    # best.pt on every image: chosen on the validation images among them; another data folder's images: not matched
    caveats = experiment._ensemble_caveats([(tiny_run, tiny_run / "best.pt"), (twin, twin / "last.pt")], "all",
                                           samples, str(tmp_path))
    assert caveats == [f"{tiny_run / 'best.pt'} was chosen on the validation images among these (the best validation "
                       "epoch of its run), so this figure is optimistic; give the run folders without --checkpoint to "
                       "score each run's final model"]


def test_a_run_s_own_report_folder_takes_no_other_model_s_report(tiny_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """An ensemble's report in RUN/eval-heldout recorded its first member's file as its own: covseg cv took it
    for the fold's figure."""
    twin = _twin(tiny_run, tmp_path)
    capsys.readouterr()
    for out, models in [(twin / "eval-heldout", [tiny_run, twin]), (twin / "eval-test-last-tta", [tiny_run])]:
        assert main(["evaluate", *map(str, models), "-o", str(out), *FAST]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"covseg: error: {out}: is where covseg evaluate {twin} reports "
                                                   "that run's own model"), err
        assert not out.exists()
    # the run's own model (its folder or a checkpoint in it), or a folder of another name, is written as before
    experiment._refuse_another_runs_report_folder(twin / "eval-heldout-tta", [twin])
    experiment._refuse_another_runs_report_folder(twin / "eval-heldout-best", [twin / "best.pt"])
    experiment._refuse_another_runs_report_folder(twin / "eval-typed", [tiny_run, twin])
    experiment._refuse_another_runs_report_folder(tmp_path / "eval-heldout", [tiny_run, twin])  # in no run folder
    with pytest.raises(CovsegError, match="a report of these models there"):
        experiment._refuse_another_runs_report_folder(twin / "eval-all", [twin, twin / "best.pt"])


def _evaluation(perfect: bool) -> evaluation.Evaluation:
    """Two 8x8 binary images whose truth holds a 2x2 lesion: predicted exactly (``perfect``) or not at all."""
    truth = np.zeros((8, 8), np.int64)
    truth[:2, :2] = 1
    pred = truth.copy() if perfect else np.zeros((8, 8), np.int64)
    probs = np.eye(2, dtype=np.float32)[pred].transpose(2, 0, 1)
    return summarise([evaluate_image(f"im{i}", probs, truth, BINARY, np.zeros((8, 8), np.float32)) for i in range(2)],
                     BINARY)


def test_a_ctrl_c_while_a_report_replaces_an_older_one_waits_until_the_new_one_is_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "eval"
    write_report(_evaluation(False), out, "first")
    real = os.replace
    sent: list[str] = []

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        real(src, dst)
        if Path(dst).parent == out and not sent:  # the first new file in place: the old metrics.json is gone
            sent.append(Path(dst).name)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(evaluation.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_report(_evaluation(True), out, "second")
    monkeypatch.undo()
    assert sent == ["metrics.md"]
    assert (out / "metrics.md").read_text().startswith("# second")
    assert json.loads((out / "metrics.json").read_text())["per_image"]["dice"]["infection"] == 1.0  # the second's
    assert sorted(p.name for p in out.iterdir()) == ["best_worst.png", "metrics.json", "metrics.md", "per_image.csv"]


def test_a_training_split_s_name_given_to_evaluate_says_which_split_scores_a_fold() -> None:
    with pytest.raises(CovsegError) as caught:
        experiment._check_eval_split("cv:1")
    assert str(caught.value) == ("unknown evaluation split 'cv:1': use one of heldout, val, test, testset, train, all; a "
                                 "run's own held-out images (fold K of a cv:K run) are --split heldout, the default, "
                                 "and another fold's are scored by that fold's run")
    with pytest.raises(CovsegError) as caught:
        experiment._check_eval_split("bogus")
    assert str(caught.value).endswith("use one of heldout, val, test, testset, train, all")
