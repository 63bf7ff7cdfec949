"""Session 75 (helper r5): where a run's weights may come from. A pretraining's weights file named as a distillation
teacher is refused as its folder is; a lesion-type model (``train.types_only``) is no ``train.init`` whose heads a
whole-task run would copy; ``covseg pretrain`` refuses the ``data.*`` and ``model.*`` overrides it never reads, as it
refused the ``train.*`` ones; and an override's number may end in a tab."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from covseg.checkpoint import build_model, save_checkpoint
from covseg.cli import main
from covseg.config import apply_overrides, load_recipe
from covseg.distill import check_teachers
from covseg.errors import CovsegError
from covseg.pretrain import check_pretrained, refuse_unread_overrides

from conftest import TINY_OVERRIDES


def _config(*extra: str):
    return apply_overrides(load_recipe("tiny"), [*TINY_OVERRIDES, "data.split=cv:0", *extra])


def test_a_pretrained_file_named_as_a_teacher_is_refused_as_its_folder_is(tmp_path: Path) -> None:
    pre = tmp_path / "pre"
    pre.mkdir()
    torch.save({"format": "covseg-pretrained-1"}, pre / "pretrained.pt")
    file = pre / "pretrained.pt"
    with pytest.raises(CovsegError) as caught:
        check_teachers(_config(f"train.distill={file}"))
    # before: "...: not a covseg checkpoint (format covseg-checkpoint-1 expected); give a .pt file that covseg train
    # wrote, or its run folder", which did not say what the file is, nor where it may be used
    assert str(caught.value) == (f"train.distill: {file}: not a covseg checkpoint but the weights covseg pretrain "
                                 "wrote, which hold no segmentation model to learn from; give trained run folders "
                                 f"(start from it with train.init={file} instead)")


def _finished_run(folder: Path, *extra: str) -> Path:
    """A finished run's ``last.pt`` (multiclass, cv:0, 1 epoch) with ``extra`` settings, saved without training."""
    config = _config("data.task=multiclass", "train.epochs=1", *extra)
    torch.manual_seed(0)
    save_checkpoint(folder / "last.pt", build_model(config), config, 1, None, optimizer={})
    return folder / "last.pt"


def test_a_lesion_type_model_starts_no_run_that_would_copy_its_untrained_background_output(tmp_path: Path) -> None:
    types = _finished_run(tmp_path / "types", "train.types_only=true", "train.dice=present")
    with pytest.raises(CovsegError) as caught:  # before: accepted, and "every tensor copied"
        check_pretrained(types, _config("data.task=multiclass", f"train.init={types}"))
    assert str(caught.value) == (f"train.init: {types}: a lesion-type model (train.types_only), whose background "
                                 "output is untrained, so this run would start with that output as it was drawn at "
                                 "random; fine-tune a run trained on the whole task, take only its contracting path "
                                 "(train.init_parts=encoder), or train a type model again (train.types_only=true)")
    # its heads stay behind: only the encoder, or a binary run's heads of another shape; or a type model again
    for extra in (["train.init_parts=encoder"], ["train.types_only=true", "train.dice=present"]):
        assert check_pretrained(types, _config("data.task=multiclass", f"train.init={types}", *extra))[0] == types
    assert check_pretrained(types, _config(f"train.init={types}"))[0] == types
    whole = _finished_run(tmp_path / "whole")
    assert check_pretrained(whole, _config("data.task=multiclass", f"train.init={whole}"))[0] == whole


def test_pretrain_refuses_data_and_model_overrides_it_never_reads(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pre"
    assert main(["pretrain", "--recipe", "tiny", "--data", "D", "-o", str(out), "data.split=cv:1"]) == 2
    # before: recorded in pretrained.pt's run_config without a word, though no split is made
    assert capsys.readouterr().err == ("covseg: error: data.split=cv:1: covseg pretrain does not use data.split (of "
                                       "data.* it reads only task, input_size, resize, window_level, window_width and "
                                       "normalize; it reads no labels, so no split); drop the override\n")
    assert not out.exists()
    for item in ("data.folds=3", "data.val_fraction=0.2", "data.pseudo_labels=P", "model.deep_supervision=false",
                 "train.momentum=0.5"):
        with pytest.raises(CovsegError, match=f"^{item}: covseg pretrain does not use "):
            refuse_unread_overrides([item])
    with pytest.raises(CovsegError, match="; use --lr instead$"):
        refuse_unread_overrides(["train.lr=0.1"])
    # what it reads, and a misspelt key, which apply_overrides refuses suggesting the option meant
    refuse_unread_overrides(["data.task=multiclass", "data.input_size=32", "data.resize=pad", "data.window_level=-500",
                             "data.window_width=1400", "data.normalize=percentile", "model.width=4",
                             "model.dropout=0.1", "train.device=cpu", "train.precision=fp32", "train.threads=1",
                             "data.splitt=cv:1"])


def test_an_override_number_may_end_in_a_tab() -> None:
    # before: "override 'model.width=16\t': not a YAML value; close its brackets or quotes", though it has neither
    config = apply_overrides(load_recipe("tiny"), ["model.width=16\t", "model.attention=true\t", "train.lr=1e-3\t"])
    assert (config.model.width, config.model.attention, config.train.lr) == (16, True, 0.001)
