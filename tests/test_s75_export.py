"""covseg export, session 75: the int8 agreement printed never rounds up (to 100.000 %, or to the 99.9 % bar it
is below), the checkpoint hash recorded is that of the bytes loaded (a file replaced while read is refused), and
best.pt and last.pt of one epoch — one network in two files — are one model to the ensemble duplicate check,
as checkpoints and as exports."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from covseg import export
from covseg.checkpoint import build_model, read_checkpoint, save_checkpoint
from covseg.cli import _Member, _one_network, _refuse_repeated_models, main
from covseg.config import apply_overrides, load_recipe
from covseg.errors import CovsegError
from covseg.export import export_onnx

from conftest import TINY_OVERRIDES
from test_export_mutants import _meta


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose best.pt and last.pt hold one network (both saved at epoch 2; last.pt with optimizer state,
    so the two files differ), and an other.pt of other weights: no training."""
    config = apply_overrides(load_recipe("tiny"), TINY_OVERRIDES)
    folder = tmp_path_factory.mktemp("s75-export") / "run"
    folder.mkdir()
    torch.manual_seed(0)
    model = build_model(config)
    save_checkpoint(folder / "best.pt", model, config, epoch=2, score=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(folder / "last.pt", model, config, epoch=2, score=0.5, optimizer=optimizer.state_dict())
    save_checkpoint(folder.parent / "other.pt", build_model(config), config, epoch=2, score=0.5)
    return folder


@pytest.mark.parametrize("share,shown", [(0.9999996, "99.999%"), (1.0, "100.000%"), (0.99854321, "99.854%"),
                                         (0.9989996, "99.899%"), (0.999, "99.900%"), (0.9, "90.000%"),
                                         (0.0, "0.000%"), (1 - 1e-12, "99.999%")])
def test_agreement_is_shown_rounded_down(share: float, shown: str) -> None:
    assert export.agreement_percent(share) == shown


def test_export_int8_does_not_print_100_percent_when_some_pixels_differ(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    """0.9999996 printed as 100.000 % (``.3%``) read as "every pixel agrees"; 0.9989996 as 99.900 % beside a
    warning that it is below 99.9 %."""
    for agreement, shown in (("0.9999996", "99.999%"), ("0.9989996", "99.899%")):
        monkeypatch.setattr(export, "export_onnx", lambda *args, **kwargs: {
            "covseg_int8_agreement": agreement, "covseg_int8_checked_on": "4 validation slices",
            "covseg_checkpoint": "best.pt"})
        assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx"), "--int8"]) == 0
        out = capsys.readouterr().out
        assert f"int8 labels agree with fp32 on {shown} of the pixels of 4 validation slices" in out
        assert "100.000%" not in out and "99.900%" not in out


def test_a_checkpoint_replaced_while_it_is_read_is_refused(run: Path, tmp_path: Path, monkeypatch) -> None:
    """The hash recorded must be that of the weights exported: a best.pt saved again between the load and the hash
    (a training still running) would record the new file's hash for the old file's weights."""
    work = tmp_path / "run"
    shutil.copytree(run, work)
    real = export.load_model

    def load_then_replace(path, *args, **kwargs):
        loaded = real(path, *args, **kwargs)
        shutil.copyfile(run.parent / "other.pt", path)  # the training saves a new best.pt
        return loaded

    monkeypatch.setattr(export, "load_model", load_then_replace)
    out = tmp_path / "m.onnx"
    with pytest.raises(CovsegError, match=r"best\.pt: changed while it was read \(is a training run still saving "
                                          r"it\?\); export again once it is finished$"):
        export_onnx(work, out)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_best_and_last_of_one_epoch_are_one_network(run: Path, tmp_path: Path) -> None:
    """Byte for byte the two files differ (last.pt holds the optimizer), so the file hashes did not catch them."""
    best, last = run / "best.pt", run / "last.pt"
    assert best.read_bytes() != last.read_bytes()
    with pytest.raises(CovsegError, match=rf"^--model names a model twice \({run} and {last} hold one network's "
                                          r"weights\); keep one of them$"):
        _refuse_repeated_models([run, last], "--model")
    _refuse_repeated_models([run, run.parent / "other.pt"], "--model")  # other weights: two networks

    exported = tmp_path / "best.onnx"
    meta = export_onnx(run, exported)
    assert meta["covseg_model_sha256"] == export.model_sha256(read_checkpoint(last)["model"]) == _meta(exported)[
        "covseg_model_sha256"]
    assert meta["covseg_model_sha256"] != export.model_sha256(read_checkpoint(run.parent / "other.pt")["model"])
    with pytest.raises(CovsegError, match=rf"\({last}, and {exported} exported from a checkpoint holding its "
                                          r"network's weights\)"):
        _refuse_repeated_models([exported, last], "--model")


def test_exports_of_best_and_last_of_one_epoch_are_one_network() -> None:
    """An int8 export of best.pt and a float32 one of last.pt: other checkpoint files, other graphs and weights,
    one network."""
    int8 = _Member(Path("best-int8.onnx"), None, None, {
        "covseg_checkpoint_sha256": "a", "covseg_model_sha256": "n", "covseg_precision": "int8",
        "covseg_weights_sha256": "w8", "covseg_graph_sha256": "g8"})
    fp32 = _Member(Path("last.onnx"), None, None, {
        "covseg_checkpoint_sha256": "b", "covseg_model_sha256": "n", "covseg_weights_sha256": "w",
        "covseg_graph_sha256": "g"})
    assert _one_network(int8, fp32) == ("best-int8.onnx and last.onnx, exported from checkpoints holding one "
                                        "network's weights")
    other = fp32._replace(onnx={**fp32.onnx, "covseg_model_sha256": "m"})
    assert _one_network(int8, other) is None
    older = fp32._replace(onnx={k: v for k, v in fp32.onnx.items() if k != "covseg_model_sha256"})
    assert _one_network(int8._replace(onnx={k: v for k, v in int8.onnx.items() if k != "covseg_model_sha256"}),
                        older) is None


def test_model_sha256_covers_names_shapes_dtypes_and_values() -> None:
    weights = {"a": torch.zeros(2, 3), "n": torch.tensor(0)}
    base = export.model_sha256(weights)
    assert export.model_sha256({"a": torch.zeros(2, 3), "n": torch.tensor(0)}) == base
    assert export.model_sha256({"b": torch.zeros(2, 3), "n": torch.tensor(0)}) != base
    assert export.model_sha256({"a": torch.zeros(3, 2), "n": torch.tensor(0)}) != base
    assert export.model_sha256({"a": torch.zeros(2, 3, dtype=torch.float64), "n": torch.tensor(0)}) != base
    assert export.model_sha256({"a": torch.zeros(3, 2).t(), "n": torch.tensor(0)}) == base  # a strided view
    changed = torch.zeros(2, 3)
    changed[1, 2] = 1e-30
    assert export.model_sha256({"a": changed, "n": torch.tensor(0)}) != base
    bf16 = {"a": torch.zeros(2, 3, dtype=torch.bfloat16), "n": torch.tensor(0)}
    assert export.model_sha256(bf16) != base  # bfloat16, which numpy has not, hashed too
