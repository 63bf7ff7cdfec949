"""One network named twice across backends: a checkpoint and its ONNX export, or two exports of one checkpoint
(float32 and int8 alike), in one ensemble or --lesion-model list, are refused before any model opens; and covseg
export's suggestion of an -o name."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from covseg import export
from covseg.checkpoint import build_model, save_checkpoint
from covseg.cli import _refuse_repeated_models, main
from covseg.config import apply_overrides, load_recipe
from covseg.errors import CovsegError
from covseg.export import export_onnx, load_onnx

from conftest import TINY_OVERRIDES, tiny_grey_image
from test_export_mutants import _meta, _save_with_meta


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with two checkpoints of different (untrained) weights, best.pt and last.pt: no training."""
    config = apply_overrides(load_recipe("tiny"), TINY_OVERRIDES)
    folder = tmp_path_factory.mktemp("s74-onnx-dup") / "run"
    folder.mkdir()
    torch.manual_seed(0)
    save_checkpoint(folder / "best.pt", build_model(config), config, epoch=1, score=0.5)
    save_checkpoint(folder / "last.pt", build_model(config), config, epoch=2, score=0.4)
    return folder


@pytest.fixture(scope="module")
def exported(run: Path) -> Path:
    """``run``'s best.pt exported (float32) beside the run folder."""
    out = run.parent / "best.onnx"
    export_onnx(run, out)
    return out


@pytest.fixture(scope="module")
def exported_last(run: Path) -> Path:
    """``run``'s last.pt exported (float32) beside the run folder."""
    out = run.parent / "last.onnx"
    export_onnx(run, out, which="last")
    return out


def _rewritten(source: Path, target: Path, **entries: str | None) -> Path:
    """A copy of the covseg ONNX file ``source`` at ``target`` with metadata ``entries`` set (None: removed) and its
    metadata checksum made again, as an export with those settings (or an older covseg) would have written it."""
    graph = onnx.load(str(source))
    meta = {p.key: p.value for p in graph.metadata_props}
    for key, value in entries.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    meta["covseg_metadata_sha256"] = export.metadata_sha256(meta)
    return _save_with_meta(graph, meta, target)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: ") and "Traceback" not in err[0], err
    return err[0]


def test_export_records_the_sha256_of_the_checkpoint_file_it_was_made_from(run: Path, exported: Path) -> None:
    # before: the file named its checkpoint (best.pt) but not which bytes, so no later check could tie it to them
    meta = _meta(exported)
    assert meta["covseg_checkpoint"] == "best.pt"
    assert meta["covseg_checkpoint_sha256"] == hashlib.sha256((run / "best.pt").read_bytes()).hexdigest()
    assert meta["covseg_checkpoint_sha256"] != hashlib.sha256((run / "last.pt").read_bytes()).hexdigest()
    load_onnx(exported)  # the new entry is covered by the settings checksum: the file loads


def test_predict_refuses_a_run_and_its_onnx_export_before_opening_either(run: Path, exported: Path, tmp_path: Path,
                                                                          capsys, monkeypatch) -> None:
    # before: predicted as a 2-model ensemble, the one network weighted twice
    import covseg.predict

    def never(*args, **kwargs):
        raise AssertionError("a model was opened")

    monkeypatch.setattr(covseg.predict, "open_predictor", never)
    image = tiny_grey_image(tmp_path / "in.png")
    out = tmp_path / "out"
    for first, second, checkpoint, said in ((run, exported, run, "its best.pt"),
                                            (exported, run / "best.pt", run / "best.pt", "it")):
        assert main(["predict", str(image), "-o", str(out), "--model", str(first), "--model", str(second),
                     "--quiet"]) == 2
        assert _one_line_error(capsys) == (f"covseg: error: --model names a model twice ({checkpoint}, and {exported} "
                                           f"exported from {said}); keep one of them")
        assert not out.exists()


def test_a_lesion_model_list_naming_a_checkpoint_and_its_export_is_refused(run: Path, exported: Path,
                                                                            tmp_path: Path, capsys) -> None:
    image = tiny_grey_image(tmp_path / "in.png")
    assert main(["predict", str(image), "-o", str(tmp_path / "out"), "--model", str(run), "--quiet",
                 "--lesion-model", str(run / "best.pt"), "--lesion-model", str(exported)]) == 2
    assert _one_line_error(capsys) == (f"covseg: error: --lesion-model names a model twice ({run / 'best.pt'}, and "
                                       f"{exported} exported from it); keep one of them")


def test_two_exports_of_one_checkpoint_int8_or_not_are_one_network(run: Path, exported: Path, tmp_path: Path) -> None:
    # an int8 export's weights differ (rounded, batch norm folded); it records the same checkpoint, so it is refused
    int8 = _rewritten(exported, tmp_path / "best-int8.onnx", covseg_precision="int8",
                      covseg_weights_sha256="0" * 64)
    with pytest.raises(CovsegError, match=rf"^--model names a model twice \({exported} and {int8}, exported from one "
                                          r"best.pt, an int8 and a float32 graph of one network\); keep one of them$"):
        _refuse_repeated_models([exported, int8], "--model")
    again = tmp_path / "again.onnx"  # a second float32 export of best.pt
    export_onnx(run, again)
    with pytest.raises(CovsegError, match=rf"^MODEL names a model twice \({exported} and {again}, exported from one "
                                          r"best.pt\); keep one of them$"):
        _refuse_repeated_models([exported, again], "MODEL")


def test_onnx_files_from_before_the_checkpoint_sha256_load_and_are_compared_by_graph(run: Path, exported: Path,
                                                                                      tmp_path: Path) -> None:
    old = _rewritten(exported, tmp_path / "old.onnx", covseg_checkpoint_sha256=None, covseg_model_sha256=None)
    load_onnx(old)  # still loads
    _refuse_repeated_models([run, old], "--model")  # nothing ties it to best.pt: not refused for the missing entry
    _refuse_repeated_models([old, run / "last.pt"], "--model")
    copy = shutil.copy(old, tmp_path / "copy.onnx")  # but a copy of it holds the same graph and weights
    with pytest.raises(CovsegError, match=rf"\({old} and {copy} hold one graph with the same weights\)"):
        _refuse_repeated_models([old, copy], "--model")


def test_other_networks_of_one_run_are_an_ensemble_still(run: Path, exported: Path, exported_last: Path) -> None:
    last = exported_last
    for models in ([exported, last], [run, last], [run / "last.pt", exported], [run / "best.pt", run / "last.pt"]):
        _refuse_repeated_models(models, "--model")  # not refused: different weights
    # but a run folder stands for the checkpoint the command opens of it
    with pytest.raises(CovsegError, match=rf"\({run}, and {last} exported from its last.pt\)"):
        _refuse_repeated_models([run, last], "--model", "last")


def test_evaluate_compares_the_checkpoint_it_scores_of_a_run(run: Path, exported_last: Path, tmp_path: Path,
                                                              capsys) -> None:
    # on the validation images evaluate scores a run's last.pt (its best.pt was chosen on them), so the run and an
    # export of its last.pt are one network there; with --checkpoint best the run stands for its best.pt
    last = exported_last
    out = tmp_path / "report"
    assert main(["evaluate", str(run), str(last), "--split", "val", "-o", str(out), "--quiet"]) == 2
    assert _one_line_error(capsys) == (f"covseg: error: MODEL names a model twice ({run}, and {last} exported from its "
                                       "last.pt); keep one of them")
    assert main(["evaluate", str(run), str(last), "--split", "val", "--checkpoint", "best", "-o", str(out),
                 "--quiet"]) == 2
    assert "names a model twice" not in _one_line_error(capsys)  # refused later, for another reason
    assert not out.exists()


def test_a_run_folder_and_its_checkpoint_or_a_copy_of_it_are_one_model(run: Path, tmp_path: Path) -> None:
    with pytest.raises(CovsegError, match=rf"^--model names a model twice \({run} and {run / 'best.pt'} are one "
                                          rf"checkpoint, {run / 'best.pt'}\); keep one of them$"):
        _refuse_repeated_models([run, run / "best.pt"], "--model")
    copy = shutil.copy(run / "best.pt", tmp_path / "mine.pt")
    with pytest.raises(CovsegError, match=rf"\({run} and {copy} hold identical checkpoints\)"):
        _refuse_repeated_models([run, copy], "--model")


@pytest.mark.parametrize("name, suggested", [(".onnx", "model.onnx"), ("model.", "model.onnx"),
                                             ("model.ONNX", "model.onnx"), ("model.pt", "model.onnx")])
def test_export_suggests_a_name_that_ends_in_onnx(name: str, suggested: str, tmp_path: Path) -> None:
    # before: -o .onnx (a hidden file's name, no suffix) was told "e.g. .onnx.onnx", -o model. "e.g. model..onnx"
    with pytest.raises(CovsegError, match=rf"^{tmp_path / name}: export writes an ONNX file; give -o a name ending in "
                                          rf"\.onnx, e\.g\. {tmp_path / suggested}$"):
        export_onnx(tmp_path, tmp_path / name)
