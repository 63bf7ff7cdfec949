"""ONNX export and backend, and the bf16-vs-fp32 agreement check of the torch backend."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from covseg import inference
from covseg.checkpoint import load_model
from covseg.cli import main
from covseg.datasets import read_image
from covseg.errors import CovsegError
from covseg import export
from covseg.export import load_onnx
from covseg.predict import describe_after_use, open_predictor
from covseg.inference import TorchBackend, label_agreement
from covseg.models.fusion import FusedConvReLU, fused_conv_relu_available
from covseg.transforms import stack_resized

from conftest import REAL_SEMISEG


def _real_or_synthetic_slice(tiny_data: Path) -> Path:
    real = REAL_SEMISEG / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/3.jpg"
    return real if real.is_file() else tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/3.jpg"


@pytest.fixture(scope="module")
def onnx_file(tiny_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(["export", str(tiny_run), "-o", str(out)]) == 0
    return out


def test_onnx_logits_match_torch(onnx_file: Path, tiny_run: Path, tiny_data: Path) -> None:
    model, config, _ = load_model(tiny_run)
    image = read_image(_real_or_synthetic_slice(tiny_data))
    x, _ = stack_resized([image, image[::-1].copy()], None, config.data.input_size)
    backend, onnx_config = load_onnx(onnx_file)
    assert onnx_config == config
    with torch.inference_mode():
        expected = model(x)
    got = backend(x)
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    # dynamic batch and size: another size divisible by 2**depth runs too
    assert backend(torch.rand(3, 1, 48, 64)).shape == (3, 2, 48, 64)
    # a wrong shape is told as the torch models tell it, not as an ONNX Runtime exception
    with pytest.raises(CovsegError, match="the ONNX model with depth 2 needs height and width divisible by 4, got "
                                          "30x64; resize or pad to 32x64"):
        backend(torch.rand(1, 1, 30, 64))
    for shape in ((1, 3, 32, 32), (32, 32)):
        with pytest.raises(CovsegError, match=r"takes images of shape \(B, 1, H, W\), got"):
            backend(torch.rand(*shape))
    with pytest.raises(CovsegError, match=r"the ONNX model got an empty image \(0x64\); give it at least 4x4"):
        backend(torch.rand(1, 1, 0, 64))  # 0 is divisible by 4, and ONNX Runtime would fail on it


def test_predict_with_onnx_backend_equals_torch_fp32(onnx_file: Path, tiny_run: Path, tiny_data: Path,
                                                     tmp_path: Path) -> None:
    src = str(_real_or_synthetic_slice(tiny_data))
    assert main(["predict", src, "-o", str(tmp_path / "t"), "--model", str(tiny_run), "--precision", "fp32",
                 "--backend", "torch", "--quiet"]) == 0  # PyTorch itself: fp32 on a CPU defaults to ONNX Runtime
    assert main(["predict", src, "-o", str(tmp_path / "o"), "--model", str(onnx_file), "--quiet"]) == 0
    a = np.array(Image.open(tmp_path / "t" / "3.png"))
    b = np.array(Image.open(tmp_path / "o" / "3.png"))
    assert np.array_equal(a, b)


def test_onnx_of_other_task_or_origin_is_refused(onnx_file: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    imgs = str(tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs")
    assert main(["predict", imgs, "-o", str(tmp_path / "a"), "--model", str(onnx_file), "--task", "multiclass"]) == 2
    assert "binary task" in capsys.readouterr().err
    plain = onnx.load(str(onnx_file))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    assert main(["predict", imgs, "-o", str(tmp_path / "b"), "--model", str(tmp_path / "plain.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not exported by covseg" in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _with_metadata_of(graph: onnx.ModelProto, donor: Path, config: str | None = None) -> onnx.ModelProto:
    """``graph`` carrying ``donor``'s covseg metadata (its ``covseg_config`` replaced by ``config`` if given, with the
    settings' checksum an export of that config would store, so that the checks after it are what is tested)."""
    meta = {p.key: p.value for p in onnx.load(str(donor)).metadata_props}
    if config is not None:
        meta["covseg_config"] = config
        meta["covseg_metadata_sha256"] = export.metadata_sha256(meta)
    del graph.metadata_props[:]
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    return graph


def test_onnx_whose_graph_or_metadata_is_not_covseg_s_is_refused(onnx_file: Path, tiny_data: Path,
                                                                 tmp_path: Path, capsys) -> None:
    src = str(tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/0.jpg")
    # another network (three input channels, other tensor names) under a covseg file's metadata
    other = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 3, padding=1), (torch.rand(1, 3, 32, 32),), str(other), dynamo=False,
                      input_names=["input"], output_names=["out"])
    onnx.save(_with_metadata_of(onnx.load(str(other)), onnx_file), str(other))
    # the binary network labelled as a multiclass one: its 2 output channels are not the 4 classes
    config = json.loads(next(p.value for p in onnx.load(str(onnx_file)).metadata_props if p.key == "covseg_config"))
    config["data"]["task"] = "multiclass"
    relabelled = tmp_path / "relabelled.onnx"
    onnx.save(_with_metadata_of(onnx.load(str(onnx_file)), onnx_file, json.dumps(config)), str(relabelled))
    broken = tmp_path / "broken.onnx"
    onnx.save(_with_metadata_of(onnx.load(str(onnx_file)), onnx_file, "{not json"), str(broken))
    for model, message in ((other, "input"), (relabelled, "4 classes"), (broken, "covseg_config")):
        out = tmp_path / model.stem
        assert main(["predict", src, "-o", str(out), "--model", str(model), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"covseg: error: {model}: ") and message in err[0], err
        assert not out.exists()


def test_export_to_a_folder_or_of_an_onnx_file_is_refused_in_one_line(onnx_file: Path, tiny_run: Path,
                                                                     tmp_path: Path, capsys) -> None:
    assert main(["export", str(tiny_run), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {tmp_path}: is a folder; give -o an ONNX file name, e.g. "
                   f"{tmp_path / 'model.onnx'}"]
    assert main(["export", str(onnx_file), "-o", str(tmp_path / "again.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an ONNX file already" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_export_replaces_an_existing_onnx_file_only_with_force(tiny_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """As train and pretrain: an existing -o is refused in one line, before onnx or the model load, and kept
    as it was; --force replaces it (walkthrough helper 184 found export overwrote it silently)."""
    import sys

    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnx", None)  # the refusal must come before onnx loads
        assert main(["export", str(tiny_run), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {out}: exists; pass --force to replace it or choose another -o"]
    assert out.read_bytes() == b"an earlier export"
    assert main(["export", str(tiny_run), "-o", str(out), "--force"]) == 0
    assert out.read_bytes() != b"an earlier export" and out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary file left beside it


def test_export_writes_only_onnx_files_and_never_over_the_checkpoint(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    before = (run / "best.pt").read_bytes()
    for target in (run / "best.pt", run / "last.pt", tmp_path / "graph.txt"):
        assert main(["export", str(run), "-o", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "give -o a name ending in .onnx" in err[0], err
    assert (run / "best.pt").read_bytes() == before and not (tmp_path / "graph.txt").exists()


def test_checkpoint_option_is_refused_where_it_cannot_choose(onnx_file: Path, tiny_run: Path, tiny_data: Path,
                                                            tmp_path: Path, capsys) -> None:
    for argv in (["export", str(tiny_run / "best.pt"), "--checkpoint", "last", "-o", str(tmp_path / "m.onnx")],
                 ["evaluate", str(tiny_run / "best.pt"), "--checkpoint", "last", "-o", str(tmp_path / "e")],
                 ["evaluate", str(onnx_file), "--checkpoint", "last", "-o", str(tmp_path / "e")]):
        assert main([*argv, "--quiet", "--data", str(tiny_data)] if argv[0] == "evaluate" else argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--checkpoint last picks one of a run folder's checkpoints" in err[0], err
    assert list(tmp_path.iterdir()) == []
    # a --checkpoint that names the file given is what was asked for
    assert main(["export", str(tiny_run / "last.pt"), "--checkpoint", "last", "-o", str(tmp_path / "m.onnx")]) == 0


def test_a_graph_of_best_pt_is_refused_on_the_images_that_chose_it(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval-*"))
    assert main(["export", str(run), "--checkpoint", "best", "-o", str(run / "best.onnx")]) == 0
    assert main(["export", str(run), "--checkpoint", "last", "-o", str(run / "last.onnx")]) == 0
    assert export.exported_from(run / "best.onnx") == "best.pt" and export.exported_from(run / "last.onnx") == "last.pt"
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.onnx"), "--quiet"]) == 2  # cv:0's held-out images chose best.pt
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exported from best.pt, which the heldout images chose" in err[0], err
    assert main(["evaluate", str(run / "last.onnx"), "--quiet"]) == 0
    assert json.loads((run / "eval-heldout-last" / "metrics.json").read_text())["model"]["file"] == str(run / "last.onnx")
    assert main(["evaluate", str(run / "best.onnx"), "--split", "train", "--quiet"]) == 0  # not chosen on these


def test_a_file_outside_its_run_is_told_which_split_needs_the_run(onnx_file: Path, tiny_data: Path, capsys) -> None:
    assert main(["evaluate", str(onnx_file), "--data", str(tiny_data), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'heldout' needs a run folder with split.json" in err[0], err


def _model_and_slices(run: Path, data: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """A trained run's model and its data set's labelled slices as one input batch ``(N, 1, S, S)``."""
    model, config, _ = load_model(run)
    images = [read_image(p) for p in sorted((data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs").iterdir())]
    x, _ = stack_resized(images, None, config.data.input_size)
    return model, x


def test_bf16_path_agrees_with_fp32_on_a_trained_model(tiny_run: Path, tiny_data: Path) -> None:
    model, x = _model_and_slices(tiny_run, tiny_data)
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16)
    low = backend(x)
    assert backend.agreement is not None and backend.agreement >= inference.BF16_MIN_AGREEMENT
    with torch.inference_mode():
        assert label_agreement(low, model(x)) >= inference.BF16_MIN_AGREEMENT


def test_fp32_path_runs_folded_batch_norm_with_the_same_labels(tiny_run: Path, tiny_data: Path) -> None:
    model, x = _model_and_slices(tiny_run, tiny_data)
    backend = TorchBackend(model, torch.device("cpu"), torch.float32)
    out = backend(x)
    folded = backend._network(torch.float32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        reference = model(x)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    assert label_agreement(out, reference) == 1.0


def test_bf16_runs_the_folded_copy_when_its_labels_agree(tiny_run: Path, tiny_data: Path, monkeypatch) -> None:
    model, x = _model_and_slices(tiny_run, tiny_data)
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: 1.0)  # the choice, whatever this CPU's rounding
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16)
    first = backend(x)
    assert backend._onnx is None and (backend._folded is None) == (backend._fused is not backend._folded)
    assert backend.bf16_folded is True and backend.dtype == torch.bfloat16
    low, folded = backend._network(torch.bfloat16), backend._network(torch.float32)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in low.modules())
    # on a CPU with native bf16 each convolution + ReLU is one oneDNN call; elsewhere the folded copy runs as it is
    assert any(isinstance(m, FusedConvReLU) for m in low.modules()) == fused_conv_relu_available()
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        expected = folded(x).float()  # the fusion leaves the bf16 logits as they were
    torch.testing.assert_close(first, expected)  # the first batch's result is the folded bf16 pass checked
    torch.testing.assert_close(backend(x), expected)


def test_bf16_keeps_the_trained_model_when_only_it_agrees(tiny_run: Path, monkeypatch) -> None:
    """Folded weights rounded to bf16 may agree less with fp32: the trained model is tried before fp32."""
    model, config, _ = load_model(tiny_run)
    measured = iter([0.998, 0.9995])  # the folded copy's agreement, then the trained model's
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: next(measured))
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16)
    x = torch.rand(2, 1, config.data.input_size, config.data.input_size)
    out = backend(x)
    assert backend.bf16_folded is False and backend.dtype == torch.bfloat16 and backend.agreement == 0.9995
    assert backend._network(torch.bfloat16) is backend.model
    assert backend._folded is None and backend._fused is None  # the unused copies are dropped
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backend._network(torch.bfloat16).modules())
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        torch.testing.assert_close(out, model(x).float())


def test_bf16_falls_back_to_fp32_when_neither_network_agrees(tiny_run: Path, monkeypatch, capsys) -> None:
    model, config, _ = load_model(tiny_run)
    measured = iter([0.998, 0.9985])
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: next(measured))
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16, name="runs/x/last.pt")
    x = torch.rand(2, 1, config.data.input_size, config.data.input_size)
    out = backend(x)
    assert backend.dtype == torch.float32 and backend.agreement == 0.9985  # the better of the two tried
    # a warning like the others, naming the model (with a --lesion-model there are two)
    assert capsys.readouterr().err == ("covseg: warning: runs/x/last.pt: torch.bfloat16 labels agree with fp32 on "
                                       "only 99.8500% of pixels; using fp32\n")
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)  # fp32's logits (batch norm folded)
    assert backend._fused is None


def test_a_fused_copy_that_cannot_run_gives_way_to_the_unfused_one(tiny_run: Path, monkeypatch) -> None:
    from covseg.models import fusion

    model, config, _ = load_model(tiny_run)
    monkeypatch.setattr(fusion, "fused_conv_relu_available", lambda: True)  # fuse even where the op cannot run

    def fail(self, x):
        raise RuntimeError("mkldnn_convolution_pointwise: bf16 path needs the cpu support avx512bw")

    monkeypatch.setattr(fusion.FusedConvReLU, "forward", fail)
    monkeypatch.setattr(inference, "label_agreement", lambda a, b, pixels=None: 1.0)
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16)
    x = torch.rand(2, 1, config.data.input_size, config.data.input_size)
    out = backend(x)
    assert backend.dtype == torch.bfloat16 and backend.bf16_folded is True
    assert backend._network(torch.bfloat16) is backend._folded  # the folded copy, unfused
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        torch.testing.assert_close(out, backend._folded(x.contiguous(memory_format=torch.channels_last)).float())


def test_bf16_falls_back_to_fp32_when_labels_disagree(tiny_run: Path, monkeypatch, capsys) -> None:
    model, config, _ = load_model(tiny_run)
    monkeypatch.setattr(inference, "BF16_MIN_AGREEMENT", 1.01)  # impossible: forces the fallback
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16)
    x = torch.rand(2, 1, config.data.input_size, config.data.input_size)
    out = backend(x)
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x))
    assert backend.dtype == torch.float32 and "using fp32" in capsys.readouterr().err


def test_fp32_engine_onnxruntime_gives_torch_fp32_logits(tiny_run: Path, tiny_data: Path) -> None:
    model, x = _model_and_slices(tiny_run, tiny_data)
    backend = TorchBackend(model, torch.device("cpu"), torch.float32, fp32_engine="onnxruntime")
    out = backend(x)
    assert backend._onnx is not None and backend.description.startswith("onnxruntime cpu float32")
    with torch.inference_mode():
        reference = model(x)
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    assert label_agreement(out, reference) == 1.0
    # a batch of another size and shape goes through the same session
    torch.testing.assert_close(backend(x[:3, :, :64, :96]), model(x[:3, :, :64, :96]).detach(), atol=1e-4, rtol=1e-4)


def test_bf16_refused_falls_back_to_onnxruntime_fp32(tiny_run: Path, monkeypatch, capsys) -> None:
    model, config, _ = load_model(tiny_run)
    monkeypatch.setattr(inference, "BF16_MIN_AGREEMENT", 1.01)  # impossible: forces the fallback
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16, fp32_engine="onnxruntime")
    x = torch.rand(2, 1, config.data.input_size, config.data.input_size)
    out = backend(x)
    assert "using fp32" in capsys.readouterr().err and backend.description.startswith("onnxruntime")
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)


def test_untraceable_model_keeps_torch_fp32(tiny_run: Path, monkeypatch) -> None:
    model, config, _ = load_model(tiny_run)

    def refuse(*args, **kwargs):
        raise RuntimeError("tracer cannot take this model")

    monkeypatch.setattr(export, "onnx_backend_of", refuse)
    backend = TorchBackend(model, torch.device("cpu"), torch.float32, fp32_engine="onnxruntime")
    x = torch.rand(2, 1, config.data.input_size, config.data.input_size)
    out = backend(x)
    assert backend.fp32_engine == "torch" and backend.description == "torch cpu float32"
    with torch.inference_mode():
        torch.testing.assert_close(out, model(x), atol=1e-4, rtol=1e-4)


def test_auto_backend_runs_fp32_in_onnxruntime_and_torch_backend_does_not(tiny_run: Path) -> None:
    auto, _, _ = open_predictor(tiny_run, precision="fp32")
    forced, _, info = open_predictor(tiny_run, backend="torch", precision="fp32")
    assert auto.backend.fp32_engine == "onnxruntime" and forced.backend.fp32_engine == "torch"
    assert info["backend"] == "torch cpu float32"
    with pytest.raises(ValueError, match="CPU only"):
        TorchBackend(torch.nn.Conv2d(1, 2, 1), torch.device("cuda"), torch.float32, fp32_engine="onnxruntime")


def test_auto_keeps_pytorch_s_fp32_for_fewer_slices_than_pay_for_the_tracing(tiny_run: Path) -> None:
    from covseg.predict import ONNX_MIN_SLICES

    few, _, info = open_predictor(tiny_run, precision="fp32", slices=ONNX_MIN_SLICES - 1)
    assert few.backend.fp32_engine == "torch" and info["backend"] == "torch cpu float32"
    # with flip TTA each slice is two passes, which count
    half = (ONNX_MIN_SLICES + 1) // 2
    assert open_predictor(tiny_run, precision="fp32", slices=half, flip_tta=True)[0].backend.fp32_engine == "onnxruntime"
    assert open_predictor(tiny_run, precision="fp32", slices=half - 1, flip_tta=True)[0].backend.fp32_engine == "torch"
    for slices in (ONNX_MIN_SLICES, None):  # enough slices, or a number the caller does not know (a scan)
        many, _, info = open_predictor(tiny_run, precision="fp32", slices=slices)
        assert many.backend.fp32_engine == "onnxruntime", slices
        assert info["backend"] == "onnxruntime cpu float32 (traced from torch)", slices
    # predict's and evaluate's --backend help names the limit (cli.py keeps covseg.predict, and torch, unimported)
    import argparse

    from covseg.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    backend = next(a for a in commands.choices["predict"]._actions if "--backend" in a.option_strings)
    assert f"a predict of fewer than {ONNX_MIN_SLICES} 2-D slices keeps PyTorch" in " ".join(backend.help.split())


def test_predict_of_a_few_slices_runs_pytorch_and_says_so(tiny_run: Path, tiny_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import covseg.predict

    images = sorted((tiny_data / "Dataset" / "TrainingSet" / "LungInfection-Train" / "Doctor-label" / "Imgs").iterdir())
    assert main(["predict", *map(str, images[:2]), "--model", str(tiny_run), "-o", str(tmp_path / "few"),
                 "--precision", "fp32", "--quiet"]) == 0
    assert json.loads((tmp_path / "few" / "predictions.json").read_text())["model"]["backend"] == "torch cpu float32"
    monkeypatch.setattr(covseg.predict, "ONNX_MIN_SLICES", 2)  # the two files now count as enough
    assert main(["predict", *map(str, images[:2]), "--model", str(tiny_run), "-o", str(tmp_path / "many"),
                 "--precision", "fp32", "--quiet"]) == 0
    assert json.loads((tmp_path / "many" / "predictions.json").read_text())["model"]["backend"] == \
        "onnxruntime cpu float32 (traced from torch)"


def test_reports_name_the_backend_that_ran_after_a_fallback(tiny_run: Path, monkeypatch) -> None:
    model, config, _ = load_model(tiny_run)
    monkeypatch.setattr(inference, "BF16_MIN_AGREEMENT", 1.01)
    backend = TorchBackend(model, torch.device("cpu"), torch.bfloat16, fp32_engine="onnxruntime")
    one = inference.Predictor(backend, config.data.input_size)
    assert inference.backends_used(one) == "torch cpu bfloat16"
    list(one([np.random.default_rng(0).random((40, 50), dtype=np.float32)]))
    other = inference.Predictor(TorchBackend(model, torch.device("cpu"), torch.float32), config.data.input_size)
    assert inference.backends_used(inference.EnsemblePredictor([one, other])) == \
        "onnxruntime cpu float32 (traced from torch), torch cpu float32"


def test_describe_after_use_refreshes_every_backend_entry(tiny_run: Path, monkeypatch) -> None:
    model, config, _ = load_model(tiny_run)
    monkeypatch.setattr(inference, "BF16_MIN_AGREEMENT", 1.01)
    fallen = inference.Predictor(TorchBackend(model, torch.device("cpu"), torch.bfloat16, fp32_engine="onnxruntime"),
                                 config.data.input_size)
    list(fallen([np.random.default_rng(0).random((40, 50), dtype=np.float32)]))
    kept = inference.Predictor(TorchBackend(model, torch.device("cpu"), torch.float32), config.data.input_size)
    ortf32, torchf32 = "onnxruntime cpu float32 (traced from torch)", "torch cpu float32"
    opened = {"name": "pair", "backend": "torch cpu bfloat16, torch cpu float32",
              "members": [{"name": "a", "backend": "torch cpu bfloat16"}, {"name": "b", "backend": torchf32}]}
    after = describe_after_use(opened, inference.EnsemblePredictor([fallen, kept]))
    assert [m["backend"] for m in after["members"]] == [ortf32, torchf32]
    assert after["backend"] == f"{ortf32}, {torchf32}" and after["members"][0]["name"] == "a"
    assert opened["members"][0]["backend"] == "torch cpu bfloat16"  # the opened description is left as it was
    fused = {"name": "types", "backend": torchf32, "lesion_model": {"name": "lesion", "backend": "torch cpu bfloat16"}}
    after = describe_after_use(fused, inference.LesionTypePredictor(fallen, kept))
    assert after["lesion_model"]["backend"] == ortf32 and after["backend"] == f"{ortf32}, {torchf32}"


# ---- static int8 export (covseg export --int8) ----

@pytest.fixture(scope="module")
def int8_file(tiny_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    assert main(["export", str(tiny_run), "-o", str(out), "--int8"]) == 0
    return out


def test_int8_agreement_counts_the_slice_s_pixels_not_its_padding() -> None:
    from covseg.inference import image_pixels
    from covseg.quantize import int8_agreement
    from covseg.transforms import fit_box

    def _image_pixels(shape: tuple[int, int], size: int, resize: str) -> np.ndarray:
        return image_pixels([fit_box(*shape, size, resize)], size)[0].numpy()

    class Session:  # logits that call class 1 where the input is above ``cut``
        def __init__(self, cut: float) -> None:
            self.cut = cut

        def run(self, names, feed):
            x = feed["image"]
            return [np.concatenate([np.zeros_like(x), x - self.cut], axis=1)]

    # a 2 x 4 slice padded to 4 x 4 (``pad``): rows 1-2 hold it; the two sessions differ on one of its 8 pixels and
    # agree on the 8 padding pixels
    inside = _image_pixels((2, 4), 4, "pad")
    assert inside.tolist() == [[False] * 4, [True] * 4, [True] * 4, [False] * 4]
    assert _image_pixels((2, 4), 4, "stretch").all()
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1] = [0.1, 0.3, 0.6, 0.9]
    x[0, 0, 2] = [0.2, 0.8, 0.7, 0.95]
    fp32, int8 = Session(0.5), Session(0.65)  # only 0.6 lies between the cuts
    assert int8_agreement(fp32, int8, [x], [inside[None]]) == pytest.approx(7 / 8)
    assert int8_agreement(fp32, int8, [x]) == pytest.approx(15 / 16)  # with the padding: inflated


def test_int8_export_calibrates_on_the_training_slices_and_checks_on_the_validation_ones(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.quantize as quantize

    split = json.loads((tiny_run / "split.json").read_text())
    config = load_model(tiny_run)[1]
    train = np.concatenate(quantize.calibration_inputs(tiny_run, None, config, ("train",))["train"])
    calibrated: list[np.ndarray] = []
    real = quantize.quantize_network

    def spying(model, input_size, batches, out, fp32_out=None):
        calibrated.extend(batches)
        return real(model, input_size, batches, out, fp32_out)

    monkeypatch.setattr(quantize, "quantize_network", spying)
    out = tmp_path / "int8.onnx"
    assert main(["export", str(tiny_run), "-o", str(out), "--int8"]) == 0
    # calibrated on exactly the run's training slices (never the validation ones it is then checked on)
    np.testing.assert_array_equal(np.concatenate(calibrated), train)
    assert len(train) == len(split["train"])
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["covseg_int8_checked_on"] == f"{len(split['val'])} validation slices"


def test_int8_export_quantizes_all_but_the_first_and_last_convolution(int8_file: Path, tiny_run: Path,
                                                                      tmp_path: Path) -> None:
    from covseg.quantize import fp32_io_nodes

    graph = onnx.load(str(int8_file)).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    meta = {p.key: p.value for p in onnx.load(str(int8_file)).metadata_props}
    assert meta["covseg_precision"] == "int8" and meta["covseg_int8_checked_on"].endswith(" validation slices")
    assert 0.9 <= float(meta["covseg_int8_agreement"]) <= 1.0
    # an int8 convolution's weights come through DequantizeLinear (int8 per channel); the first and the last keep
    # fp32 weights
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = {n.name: n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")}
    kept = fp32_io_nodes(int8_file)
    assert len(kept) == 2 and len(convs) > 2
    for name, node in convs.items():
        int8_weights = produced_by.get(node.input[1]) == "DequantizeLinear"
        assert int8_weights == (name not in kept), name
    # the plain export keeps every convolution fp32 and says so
    plain = tmp_path / "fp32.onnx"
    assert main(["export", str(tiny_run), "-o", str(plain)]) == 0
    assert "QuantizeLinear" not in [n.op_type for n in onnx.load(str(plain)).graph.node]
    assert {p.key: p.value for p in onnx.load(str(plain)).metadata_props}["covseg_precision"] == "float32"


def test_int8_logits_follow_fp32_on_a_trained_model(int8_file: Path, tiny_run: Path, tiny_data: Path) -> None:
    model, x = _model_and_slices(tiny_run, tiny_data)
    backend, _ = load_onnx(int8_file)
    assert backend.description == "onnxruntime cpu int8 (static QDQ)"
    assert backend.agreement == float({p.key: p.value for p in onnx.load(str(int8_file)).metadata_props}[
        "covseg_int8_agreement"])
    with torch.inference_mode():
        expected = model(x)
    got = backend(x)
    spread = float(expected.abs().max())
    assert float((got - expected).abs().max()) < 0.1 * spread  # quantization error, not another model
    assert label_agreement(got, expected) >= 0.95


def test_int8_agreement_counts_the_pixels_whose_label_is_the_same() -> None:
    from covseg.quantize import int8_agreement

    class Fixed:
        def __init__(self, logits: np.ndarray) -> None:
            self.logits = logits

        def run(self, names, feed):
            return [self.logits[: len(feed["image"])]]

    a = np.zeros((2, 2, 2, 2), np.float32)
    a[:, 1] = 1.0  # every pixel label 1
    b = a.copy()
    b[0, 0, 0, :] = 2.0  # two pixels of image 0 become label 0
    b[1, 0, 1, 1] = 2.0  # one pixel of image 1
    batch = np.zeros((2, 1, 2, 2), np.float32)
    assert int8_agreement(Fixed(a), Fixed(b), [batch]) == pytest.approx(5 / 8)
    assert int8_agreement(Fixed(a), Fixed(a), [batch, batch]) == 1.0


def test_predict_with_int8_file_names_it_in_the_report(int8_file: Path, tiny_data: Path, tmp_path: Path) -> None:
    import json

    src = str(_real_or_synthetic_slice(tiny_data))
    assert main(["predict", src, "-o", str(tmp_path / "p"), "--model", str(int8_file), "--quiet"]) == 0
    report = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert report["model"]["backend"] == "onnxruntime cpu int8 (static QDQ)"
    assert 0.9 <= report["model"]["int8_agreement"] <= 1.0
    assert (tmp_path / "p" / "3.png").is_file()


def test_int8_export_without_its_run_or_data_is_refused(tiny_run: Path, tmp_path: Path, capsys) -> None:
    import json
    import shutil

    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tiny_run / "last.pt", lone / "last.pt")
    assert main(["export", str(lone / "last.pt"), "-o", str(tmp_path / "a.onnx"), "--int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no split.json" in err[0]
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run, moved)
    info = json.loads((moved / "run.json").read_text())
    info["data"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(info))
    assert main(["export", str(moved), "-o", str(tmp_path / "b.onnx"), "--int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pass --data" in err[0]
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "c.onnx"), "--int8", "--data", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "d.onnx"), "--data", str(tmp_path)]) == 2
    assert "only by --int8" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lone", "moved"]  # nothing written, no temp files left


def test_int8_export_of_a_run_without_training_slices_is_refused(tiny_run: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    split = json.loads((run / "split.json").read_text())
    split["train"] = []
    (run / "split.json").write_text(json.dumps(split))
    out = tmp_path / "out" / "m.onnx"
    # it used to reach the quantizer's ValueError: a traceback and exit 1
    assert main(["export", str(run), "-o", str(out), "--int8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(run) in err[0] and "no training slices to calibrate int8 on" in err[0]
    assert not out.exists() and not out.parent.exists()


def test_int8_export_warns_below_the_agreement_bar_and_keeps_the_root_logger(tiny_run: Path, tmp_path: Path,
                                                                             monkeypatch, capsys) -> None:
    import logging

    handlers = list(logging.getLogger().handlers)
    monkeypatch.setattr(inference, "BF16_MIN_AGREEMENT", 1.01)
    assert main(["export", str(tiny_run), "-o", str(tmp_path / "m.onnx"), "--int8"]) == 0
    captured = capsys.readouterr()
    assert "int8 labels agree with fp32 on" in captured.out and "warning: that is below" in captured.err
    assert logging.getLogger().handlers == handlers  # the quantizer's logging left no handler behind


@pytest.mark.parametrize("block,norm,attention", [("plain", "batch", False), ("residual", "batch", False),
                                                  ("plain", "instance", False), ("plain", "group", False),
                                                  ("plain", "batch", True)])
def test_every_unet_block_exports_with_folded_batch_norm_and_quantizes(block: str, norm: str, attention: bool,
                                                                       tmp_path: Path) -> None:
    """The fp32 ONNX graph of a batch-norm-folded U-Net (or an instance-norm one, whose norms stay) gives the torch
    model's logits at another size than it was traced at, and its static-int8 graph builds and keeps most labels
    (random weights, non-trivial statistics)."""
    from covseg.models import create_model, fold_batch_norm
    from covseg.quantize import quantize_network

    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, width=8, depth=2, block=block, norm=norm, attention=attention)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
    model.eval()
    x = torch.rand(2, 1, 24, 32)
    with torch.inference_mode():
        reference = model(x)
    backend = export.onnx_backend_of(fold_batch_norm(model), input_size=16)
    torch.testing.assert_close(backend(x), reference, atol=1e-4, rtol=1e-4)
    int8 = tmp_path / "int8.onnx"
    quantize_network(fold_batch_norm(model), 16, [x.numpy()], int8)
    out = export.ort_session(str(int8), 1).run(["logits"], {"image": x.numpy()})[0]
    assert out.shape == (2, 3, 24, 32) and label_agreement(torch.from_numpy(out), reference) > 0.8


@pytest.mark.parametrize("flag", [["--device", "cuda"], ["--precision", "bf16"]])
def test_an_onnx_model_refuses_a_device_or_precision_it_cannot_run_in(flag: list[str], onnx_file: Path,
                                                                     tiny_data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    assert main(["predict", str(_real_or_synthetic_slice(tiny_data)), "-o", str(out), "--model", str(onnx_file),
                 "--quiet", *flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an ONNX model runs on the CPU" in err[0] and flag[0] in err[0], err
    assert not out.exists()


def test_a_refused_int8_export_makes_no_folders(tiny_run: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "new" / "sub" / "i8.onnx"
    assert main(["export", str(tiny_run), "-o", str(target), "--int8", "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert not (tmp_path / "new").exists()


# ---- what an exported file carries: the classes its run learnt, a checksum of its weights ----

def test_an_onnx_type_model_keeps_its_learnt_classes_outside_its_run_folder(tiny_data: Path, tmp_path: Path) -> None:
    """A multiclass run that never saw pleural effusion (class 3, weight 0) exports its class weights, so that under
    --lesion-model the file types lesions among the classes it learnt wherever it lies, as its run folder does."""
    from conftest import TINY_OVERRIDES

    from covseg.predict import learnt_lesion_classes

    mc = tmp_path / "mc"
    assert main(["train", "--recipe", "tiny", "--task", "multiclass", "--data", str(tiny_data), "--split", "cv:0",
                 "--epochs", "1", "-o", str(mc), "--quiet", *TINY_OVERRIDES]) == 0
    assert learnt_lesion_classes({"file": str(mc / "last.pt")}) == [1, 2]
    elsewhere = tmp_path / "shipped" / "types.onnx"
    assert main(["export", str(mc), "-o", str(elsewhere)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(elsewhere)).metadata_props}
    weights = json.loads((mc / "class_weights.json").read_text())["weights"]
    assert json.loads(meta["covseg_class_weights"]) == pytest.approx(list(weights.values()))
    assert learnt_lesion_classes({"file": str(elsewhere)}) == [1, 2]
    assert learnt_lesion_classes({"members": [{"file": str(elsewhere)}, {"file": str(mc / "last.pt")}]}) == [1, 2]
    # a file exported before covseg recorded them, kept outside its run: nothing says, as before
    _without_metadata(elsewhere, "covseg_class_weights", tmp_path / "shipped" / "old.onnx")
    assert learnt_lesion_classes({"file": str(tmp_path / "shipped" / "old.onnx")}) is None


@pytest.mark.parametrize("value", ['"12"', '{"0": 1, "1": 0}', "[1, null]", "[1, Infinity]"])
def test_class_weights_metadata_that_is_not_a_list_of_finite_numbers_is_refused(value: str, monkeypatch) -> None:
    """A JSON string or object iterates (as characters, as keys) into numbers: it must be refused as damaged, not
    read as weights ("12" was read as [1, 2], {"0": 1, "1": 0} as [0, 1])."""
    monkeypatch.setattr(export, "_metadata", lambda path: {"covseg_class_weights": value})
    with pytest.raises(CovsegError, match="covseg_class_weights metadata is damaged"):
        export.exported_class_weights(Path("m.onnx"))
    monkeypatch.setattr(export, "_metadata", lambda path: {"covseg_class_weights": "[1, 0.5]"})
    assert export.exported_class_weights(Path("m.onnx")) == [1.0, 0.5]


def _without_metadata(source: Path, key: str, target: Path) -> None:
    """Save ``source`` without its metadata entry ``key`` as ``target``: a file from before covseg wrote it."""
    graph = onnx.load(str(source))
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key != key]
    del graph.metadata_props[:]
    for name, value in kept:
        entry = graph.metadata_props.add()
        entry.key, entry.value = name, value
    onnx.save(graph, str(target))


def _damaged_copy(source: Path, target: Path) -> Path:
    """``source`` with bytes in the middle of its largest initializer's raw data flipped (the graph still parses)."""
    largest = max(onnx.load(str(source)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    data = bytearray(source.read_bytes())
    at = data.find(largest) + len(largest) // 2
    assert at > len(largest) // 2
    for i in range(at, at + 64):
        data[i] ^= 0x5A
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_a_damaged_onnx_file_is_refused_not_run(which: str, request, tiny_data: Path, tmp_path: Path,
                                                capsys) -> None:
    source = request.getfixturevalue("onnx_file" if which == "fp32" else "int8_file")
    meta = {p.key: p.value for p in onnx.load(str(source)).metadata_props}
    assert meta["covseg_weights_sha256"] == export.weights_sha256(onnx.load(str(source)))
    load_onnx(source)  # intact: loads
    capsys.readouterr()  # what making the fixtures printed
    damaged = _damaged_copy(source, tmp_path / "damaged.onnx")
    out = tmp_path / "pred"
    assert main(["predict", str(_real_or_synthetic_slice(tiny_data)), "-o", str(out), "--model", str(damaged),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {damaged}: is damaged: its weights do not match the checksum stored at export; "
                   "export it again with covseg export"]
    assert not out.exists()
    # a file exported before covseg stored the checksum loads as before
    _without_metadata(source, "covseg_weights_sha256", tmp_path / "old.onnx")
    load_onnx(tmp_path / "old.onnx")


def _with_entry(source: Path, key: str, value: str, target: Path) -> Path:
    """Save ``source`` with its metadata entry ``key`` set to ``value`` (its checksums left as they are) as
    ``target``: a file whose stored settings were damaged after export."""
    graph = onnx.load(str(source))
    next(p for p in graph.metadata_props if p.key == key).value = value
    onnx.save(graph, str(target))
    return target


def test_an_onnx_file_whose_settings_were_damaged_is_refused_not_run(onnx_file: Path, tiny_run: Path,
                                                                    tiny_data: Path, tmp_path: Path, capsys) -> None:
    """The weights' checksum left ``covseg_config`` out: a file whose settings were damaged to ``{}`` ran, exit 0,
    with the default settings (input size, normalisation) instead of its run's, so with other results."""
    meta = {p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}
    assert meta["covseg_metadata_sha256"] == export.metadata_sha256(meta)
    # every covseg entry but the two checksums, in key order: the order the entries are stored in does not count
    assert export.metadata_sha256(dict(reversed(meta.items()))) == meta["covseg_metadata_sha256"]
    assert export.metadata_sha256({**meta, "covseg_weights_sha256": "0"}) == meta["covseg_metadata_sha256"]
    assert export.metadata_sha256({**meta, "other_key": "x"}) == meta["covseg_metadata_sha256"]
    capsys.readouterr()  # what making the fixtures printed
    damaged = _with_entry(onnx_file, "covseg_config", "{}", tmp_path / "damaged.onnx")
    out = tmp_path / "pred"
    assert main(["predict", str(_real_or_synthetic_slice(tiny_data)), "-o", str(out), "--model", str(damaged),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {damaged}: is damaged: its settings do not match the checksum stored at export; "
                   "export it again with covseg export"]
    assert not out.exists()
    for key, value in (("covseg_checkpoint", "last.pt"), ("covseg_precision", "int8"), ("covseg_epoch", "2"),
                       ("covseg_class_weights", "[0.5, 0.0]")):
        with pytest.raises(CovsegError, match="is damaged: its settings do not match the checksum"):
            load_onnx(_with_entry(onnx_file, key, value, tmp_path / f"{key}.onnx"))
    # a file exported before covseg stored the settings' checksum loads as before, its weights still checked
    old = tmp_path / "old.onnx"
    _without_metadata(onnx_file, "covseg_metadata_sha256", old)
    assert load_onnx(old)[1] == load_model(tiny_run)[1]
    with pytest.raises(CovsegError, match="is damaged: its weights do not match the checksum"):
        load_onnx(_damaged_copy(old, tmp_path / "old-damaged.onnx"))


def _with_node_attribute(source: Path, op_type: str, edit, target: Path) -> Path:
    """Save ``source`` with ``edit`` applied to the attributes of its first ``op_type`` node (initializers and
    metadata, checksums included, left as they are) as ``target``: a file whose graph was damaged after export."""
    graph = onnx.load(str(source))
    node = next(n for n in graph.graph.node if n.op_type == op_type)
    edit({a.name: a for a in node.attribute})
    onnx.save(graph, str(target))
    return target


def _shift_pads(attributes) -> None:
    attributes["pads"].ints[:] = [0, 0, 2, 2]


def _change_constant(attributes) -> None:
    value = attributes["value"].t
    array = onnx.numpy_helper.to_array(value)
    value.CopyFrom(onnx.numpy_helper.from_array(np.asarray(array + 1, dtype=array.dtype), value.name))


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_an_onnx_file_whose_graph_was_damaged_outside_its_weights_is_refused_not_run(
        which: str, request, tiny_data: Path, tmp_path: Path, capsys) -> None:
    """The weights' and settings' checksums left the nodes out: a file whose convolution padding was damaged loaded
    and ran silently, with other logits."""
    source = request.getfixturevalue("onnx_file" if which == "fp32" else "int8_file")
    load_onnx(source)  # intact: loads
    capsys.readouterr()  # what making the fixtures printed
    padded = _with_node_attribute(source, "Conv", _shift_pads, tmp_path / "padded.onnx")
    out = tmp_path / "pred"
    assert main(["predict", str(_real_or_synthetic_slice(tiny_data)), "-o", str(out), "--model", str(padded),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {padded}: is damaged: its graph does not match the checksum stored at export; "
                   "export it again with covseg export"]
    assert not out.exists()
    if any(n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)
           for n in onnx.load(str(source)).graph.node):
        with pytest.raises(CovsegError, match="is damaged: its graph does not match the checksum"):
            load_onnx(_with_node_attribute(source, "Constant", _change_constant, tmp_path / "constant.onnx"))
    # what onnx.load reads back hashes as what export stored, whatever the metadata holds
    stored = onnx.load(str(source))
    meta = {p.key: p.value for p in stored.metadata_props}
    assert meta["covseg_graph_sha256"] == export.graph_sha256(stored)
    del stored.metadata_props[:]
    assert export.graph_sha256(stored) == meta["covseg_graph_sha256"]
    assert export.metadata_sha256({**meta, "covseg_graph_sha256": "0"}) == meta["covseg_metadata_sha256"]
    # a file exported before covseg stored the graph's checksum loads as before, its weights still checked
    old = tmp_path / "old.onnx"
    _without_metadata(source, "covseg_graph_sha256", old)
    load_onnx(old)
    with pytest.raises(CovsegError, match="is damaged: its weights do not match the checksum"):
        load_onnx(_damaged_copy(old, tmp_path / "old-damaged.onnx"))
    _without_metadata(padded, "covseg_graph_sha256", tmp_path / "old-padded.onnx")
    load_onnx(tmp_path / "old-padded.onnx")


def test_graph_checksum_covers_constants_and_attributes_but_not_initializers_or_metadata() -> None:
    from onnx import TensorProto, helper, numpy_helper

    def model(constant: float, weight: float, pads: list[int], meta: dict[str, str]) -> onnx.ModelProto:
        nodes = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.float32([constant]), "c")),
                 helper.make_node("Conv", ["x", "w"], ["y"], pads=pads),
                 helper.make_node("Add", ["y", "c"], ["z"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                                  [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(np.full((1, 1, 3, 3), weight, np.float32), "w")])
        made = helper.make_model(graph)
        for key, value in meta.items():
            entry = made.metadata_props.add()
            entry.key, entry.value = key, value
        return made

    base = export.graph_sha256(model(1.0, 0.5, [1, 1, 1, 1], {}))
    assert export.graph_sha256(model(1.0, 0.25, [1, 1, 1, 1], {"covseg_graph_sha256": base, "x": "y"})) == base
    assert export.graph_sha256(onnx.load_model_from_string(
        model(1.0, 0.5, [1, 1, 1, 1], {}).SerializeToString())) == base
    assert export.graph_sha256(model(2.0, 0.5, [1, 1, 1, 1], {})) != base
    assert export.graph_sha256(model(1.0, 0.5, [0, 0, 2, 2], {})) != base


def test_an_int8_onnx_model_refuses_fp32_precision(int8_file: Path, onnx_file: Path, tiny_data: Path,
                                                   tmp_path: Path, capsys) -> None:
    src = str(_real_or_synthetic_slice(tiny_data))
    out = tmp_path / "pred"
    capsys.readouterr()  # what making the fixtures printed
    assert main(["predict", src, "-o", str(out), "--model", str(int8_file), "--quiet", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: error: {int8_file}: an int8 ONNX model") \
        and "--precision fp32 cannot apply" in err[0], err
    assert not out.exists()
    # an fp32 file runs in fp32 as asked
    assert main(["predict", src, "-o", str(out), "--model", str(onnx_file), "--quiet", "--precision", "fp32"]) == 0


def test_an_onnx_file_whose_input_size_its_depth_cannot_divide_is_refused_in_one_line(onnx_file: Path, tiny_data: Path,
                                                                                      tmp_path: Path, capsys) -> None:
    config = json.loads(next(p.value for p in onnx.load(str(onnx_file)).metadata_props if p.key == "covseg_config"))
    config["data"]["input_size"] = 30  # depth 2: a multiple of 4 needed
    odd = tmp_path / "odd.onnx"
    onnx.save(_with_metadata_of(onnx.load(str(onnx_file)), onnx_file, json.dumps(config)), str(odd))
    out = tmp_path / "pred"
    capsys.readouterr()  # what making the fixtures printed
    assert main(["predict", str(_real_or_synthetic_slice(tiny_data)), "-o", str(out), "--model", str(odd),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"covseg: error: {odd}: data.input_size is 30") \
        and "divisible by 4" in err[0], err
    assert not out.exists()


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")
def test_export_where_nothing_can_be_written_names_the_output_not_its_temporary_file(tiny_run: Path,
                                                                                     capsys) -> None:
    capsys.readouterr()  # what making the fixtures printed
    assert main(["export", str(tiny_run), "-o", "/proc/m.onnx"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("covseg: error: /proc/m.onnx: cannot write there") \
        and ".part" not in err[0], err


def test_bf16_check_counts_a_padded_slice_s_own_pixels_not_its_padding() -> None:
    """With ``data.resize=pad`` a tall slice fills a quarter of the input; bf16 flips the label of 3 of its 1024
    pixels (99.7 % agree, under the bar) while the zero padding agrees everywhere (99.93 % over the square). The
    check must fall back to fp32 as it does for the same slice stretched to the whole square."""
    def threshold_model() -> torch.nn.Module:  # foreground logit x - 0.5005; bf16 rounds 0.5009 and 0.5005 alike
        m = torch.nn.Conv2d(1, 2, 1)
        with torch.no_grad():
            m.weight.zero_()
            m.bias.zero_()
            m.weight[1] = 1.0
            m.bias[1] = -0.5005
        return m

    image = np.full((64, 16), 0.2, np.float32)
    image.flat[:3] = 0.5009
    for resize in ("pad", "stretch"):
        backend = TorchBackend(threshold_model(), torch.device("cpu"), torch.bfloat16)
        next(iter(inference.Predictor(backend, 64, resize=resize)([image])))
        assert backend.dtype == torch.float32, resize
        if resize == "pad":
            assert backend.agreement == pytest.approx(1021 / 1024)
        assert backend.agreement < inference.BF16_MIN_AGREEMENT, resize
    assert backend.agreement < 1 - 3 / 64 ** 2  # stretched, the 3 pixels spread over more than 3 of the 4096
    x = torch.rand(2, 1, 8, 8)
    pixels = torch.zeros(2, 8, 8, dtype=torch.bool)
    pixels[:, :, :2] = True
    other = torch.cat([x, x], 1)
    flipped = other.clone()
    flipped[0, 1, 0, 0] += 5  # one disagreeing pixel inside the mask, one outside
    flipped[1, 1, 0, 7] += 5
    assert inference.label_agreement(flipped, other) == pytest.approx(1 - 2 / 128)
    assert inference.label_agreement(flipped, other, pixels) == pytest.approx(1 - 1 / 32)


def test_int8_export_to_the_longest_file_name_works_as_fp32_does(tiny_run: Path, tmp_path: Path, capsys) -> None:
    """The fp32 graph quantize_run compares with was written beside -o as its temporary name + ".fp32": 5 bytes past
    the 255 that atomic_path had trimmed that name to, so --int8 failed ("File name too long", naming the hidden
    temporary file) where the same -o without it worked."""
    out = tmp_path / ("m" * 245 + ".onnx")
    assert len(out.name) == 250
    capsys.readouterr()  # what making the fixtures printed
    assert main(["export", str(tiny_run), "-o", str(out), "--int8"]) == 0, capsys.readouterr().err
    assert load_onnx(out)[0].int8
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary or fp32 file left beside it


def _fail_writing(what: Any, *args: Any) -> None:
    """A writer (``write_graph(model, input_size, target)``, ``onnx.save(graph, target)``) that fails part-way as on
    a full disk: a few bytes written, then an OSError that names no file (as torch.onnx.export's and onnx.save's)."""
    Path(args[-1]).write_bytes(b"\x08\x07")
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["write_graph", "onnx.save"])
def test_export_that_runs_out_of_space_names_the_output_and_leaves_nothing(writer: str, tiny_run: Path, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    """An OSError without a file name from the writer was re-raised: "covseg: error: No space left on device; check
    the path and permissions", naming no file and saying nothing of space."""
    if writer == "write_graph":
        monkeypatch.setattr(export, "write_graph", _fail_writing)
    else:
        monkeypatch.setattr(onnx, "save", _fail_writing)
    out = tmp_path / "sub" / "m.onnx"
    capsys.readouterr()  # what making the fixtures printed
    assert main(["export", str(tiny_run), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"covseg: error: {out}: could not be written (No space left on device); is the disk full? Free "
                   "space there or give -o another folder"], err
    assert list(tmp_path.iterdir()) == []  # no -o, no temporary file, not the folder made for it


def test_an_unreadable_onnx_file_or_config_says_to_export_it_again(onnx_file: Path, tiny_data: Path, tmp_path: Path,
                                                                    capsys) -> None:
    """Files that are not ONNX, and a covseg_config that is JSON but not a mapping, were refused saying what is wrong
    but not how to get a good file."""
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    graph = onnx.load(str(onnx_file))
    kept = [(p.key, p.value) for p in graph.metadata_props if p.key not in export.CHECKSUM_KEYS]
    del graph.metadata_props[:]
    for key, value in kept:
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, "[1]" if key == "covseg_config" else value
    listed = tmp_path / "listed.onnx"
    onnx.save(graph, str(listed))
    capsys.readouterr()  # what making the fixtures printed
    for model, what in ((garbage, "not a readable ONNX model ("), (listed, "expected a mapping, got [1]")):
        out = tmp_path / f"pred-{model.stem}"
        assert main(["predict", str(_real_or_synthetic_slice(tiny_data)), "-o", str(out), "--model", str(model),
                     "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"covseg: error: {model}: ") and what in err[0] \
            and err[0].endswith(f"; export the run again with covseg export RUN_DIR -o {model}"), err
        assert not out.exists()


def test_export_refuses_a_wrong_output_name_before_loading_onnx(tiny_run: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The name checks cost nothing, so they come before onnx (and the model) load (walkthrough helper 183)."""
    import sys

    from covseg.errors import CovsegError
    from covseg.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails: the refusal must come first
    with pytest.raises(CovsegError, match="give -o a name ending in .onnx"):
        export_onnx(tiny_run, tmp_path / "afile")
    with pytest.raises(CovsegError, match="is an ONNX file already"):
        export_onnx(tmp_path / "model.onnx", tmp_path / "out.onnx")
    with pytest.raises(ImportError):  # and a right name goes on to load onnx
        export_onnx(tiny_run, tmp_path / "out.onnx")
