"""The benchmark runs end to end on a tiny size and writes its table (speed targets live in RESULTS.md)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg.bench import _e2e_scan_benchmark, _scan_benchmark, build_bench_model, main, measure, serve, side_by_side


def test_measure_reports_every_figure() -> None:
    row = measure("unet16", "covseg", size=32, repeats=1, train_steps=1)
    for key in ("infer_ms_b1", "infer_ms_b8", "train_img_s", "gflop_per_slice", "gflops_per_s_b8", "peak_rss_mb",
                "peak_rss_train_mb"):
        assert row[key] > 0, key
    # FLOPs of the default U-Net scale with the pixel count
    assert measure("unet16", "fp32-naive", size=64, repeats=1, train_steps=0)["gflop_per_slice"] == pytest.approx(
        4 * row["gflop_per_slice"], rel=1e-6)


def test_instance_norm_unet_is_benchmarked_with_its_norms_kept() -> None:
    import torch

    model = build_bench_model("unet16-instance")
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    row = measure("unet16-instance", "covseg", size=32, repeats=1, train_steps=1)
    assert row["infer_ms_b8"] > 0 and row["train_img_s"] > 0
    # the same convolutions as unet16 (the norms' FLOPs aside): the count differs by well under 1 %
    plain = measure("unet16", "fp32-naive", size=32, repeats=1, train_steps=0)["gflop_per_slice"]
    assert row["gflop_per_slice"] == pytest.approx(plain, rel=0.01)


def test_bench_main_writes_results(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    import covseg.bench

    # the side by side's own processes are timed by test_side_by_side_runs_each_path_in_its_own_process; here its
    # rows, as it returns them, go into the report (two more processes here took about 10 s on 2 AVX2 cores)
    asked = []

    def side_by_side_rows(model_names, size, rounds, device="cpu"):
        asked.append((model_names, size, rounds, device))
        return [{"model": "unet16", "path": path, "dtype": "float32", "infer_ms_b8": ms, "train_img_s": img_s,
                 "rounds": rounds} for path, ms, img_s in (("fp32-naive", 3.25, 57.5), ("covseg", 2.5, 53.25))]

    monkeypatch.setattr(covseg.bench, "side_by_side", side_by_side_rows)
    # one step runs as its own process, as every step does for a user (covseg.bench.run_step); the others run the
    # same `python -m covseg.bench` arguments in this process, each process's start costing about 5 s on 2 AVX2 cores
    # (the end-to-end step's own `covseg predict` stays a process of its own)
    steps: list[str] = []

    def run_step(cmd: list[str], step: str) -> dict:
        steps.append(step)
        assert cmd[1:3] == ["-m", "covseg.bench"], cmd
        if step == "--one unet16 fp32-naive":
            return real_run_step(cmd, step)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(cmd[3:]) == 0
        return json.loads(printed.getvalue().strip().splitlines()[-1])

    real_run_step = covseg.bench.run_step
    monkeypatch.setattr(covseg.bench, "run_step", run_step)
    out = tmp_path / "RESULTS.md"
    # one ONNX path: the onnxruntime row's runner has its own tests (test_the_onnxruntime_row_runs_covseg_s_exported_graph)
    assert main(["--models", "unet16", "--paths", "fp32-naive,covseg,onnx-int8", "--size", "32", "--repeats", "1",
                 "--train-steps", "1", "--scan-slices", "3", "--side-by-side", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "Command: `python benchmarks/bench.py --models unet16 --paths" in text
    assert "| unet16 | fp32-naive |" in text and "| unet16 | covseg |" in text
    assert "| unet16 | onnx-int8 | int8 |" in text and "| unet16 | onnxruntime |" not in text
    assert "Scan (inference only" in text and "Scan end to end" in text and "exit 0" in text
    from covseg.runtime import resolve_precision

    if resolve_precision("auto", torch.device("cpu")) == torch.float32:  # no bf16 here: fp32 is the automatic path
        assert "The automatic path already ran in fp32, so no forced-fp32 figure is given." in text
        assert "Forced to fp32" not in text
    else:  # the fallback path's scan figure sits beside covseg's path (the bf16 check passes on noise)
        assert "Forced to fp32" in text
    assert "Side by side (fp32-naive and covseg's path, each in its own process, timed in turn for 2 rounds, each " \
           "timed pass right after an untimed one" in text
    assert "| unet16 | 3.2 | 2.5 (float32) | 1.3× | 57.50 | 53.25 | 0.9× |" in text.split("Side by side", 1)[1]
    assert asked == [(["unet16"], 32, 2, "cpu")]
    assert steps[:3] == ["--one unet16 fp32-naive", "--one unet16 covseg", "--one unet16 onnx-int8"]
    assert steps[3:] == ["--scan-only auto", "--e2e-only"] or steps[3:] == ["--scan-only auto", "--scan-only fp32",
                                                                             "--e2e-only"]


def test_serve_times_the_second_of_two_runs_of_each_command(monkeypatch) -> None:
    import io
    from types import SimpleNamespace

    import covseg.bench as bench

    # a fake clock read by the bench alone: the untimed first run of each pair takes 100 "seconds", the second 1,
    # so the reply is 1 exactly, and a warm-up counted in the median would read 50.5 (no sleeping, no load effects)
    now = [0.0]
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    calls: list[str] = []
    real = bench.path_runners

    def slow_first(kind: str, run):
        def call():
            calls.append(kind)
            now[0] += 100.0 if calls.count(kind) % 2 == 1 else 1.0
            run()
        return call

    def patched(*args, **kwargs):
        runners = real(*args, **kwargs)
        return runners._replace(infer=lambda batch: slow_first("infer", runners.infer(batch)),
                                trainer=lambda separate: slow_first("train", runners.trainer(separate)))

    monkeypatch.setattr(bench, "path_runners", patched)
    replies = io.StringIO()
    serve("unet16", "covseg", 32, "cpu", io.StringIO("infer\ntrain\ninfer\n"), replies)
    lines = replies.getvalue().splitlines()
    assert lines[0].startswith("ready ") and len(lines) == 4
    assert [float(t) for t in lines[1:]] == [1.0, 1.0, 1.0]  # the second run of each pair alone, not the slow first
    assert calls == ["infer", "infer", "train", "train", "infer", "infer"]


def test_serve_refuses_onnx_paths_and_unknown_commands() -> None:
    import io

    with pytest.raises(ValueError, match="PyTorch paths only"):
        serve("unet16", "onnxruntime", 32, "cpu", io.StringIO(""), io.StringIO())
    with pytest.raises(ValueError, match="unknown command 'predict'"):
        serve("unet16", "fp32-naive", 32, "cpu", io.StringIO("predict\n"), io.StringIO())


def test_side_by_side_runs_each_path_in_its_own_process() -> None:
    import torch

    from covseg.runtime import resolve_precision

    # one model's two processes (the grouping and order of several models: tests/test_bench_mutants.py, with fake
    # workers); the default U-Net, whose passes at 32 x 32 cost little beside each process's start (segnet's took
    # about 19 s here against 10.5 s on 2 AVX2 cores)
    rows = side_by_side(["unet16"], size=32, rounds=2)
    assert [(r["model"], r["path"]) for r in rows] == [("unet16", "fp32-naive"), ("unet16", "covseg")]
    assert all(r["infer_ms_b8"] > 0 and r["train_img_s"] > 0 and r["rounds"] == 2 for r in rows)
    assert rows[0]["dtype"] == "float32"
    assert rows[1]["dtype"] == str(resolve_precision("auto", torch.device("cpu"))).removeprefix("torch.")
    with pytest.raises(ValueError, match="at least one round"):
        side_by_side(["unet16"], size=32, rounds=0)


def test_a_failing_side_by_side_worker_ends_the_run_in_one_line() -> None:
    with pytest.raises(SystemExit, match=r"side by side \(resnet fp32-naive start\) failed: .*unknown benchmark model"):
        side_by_side(["resnet"], size=32, rounds=1)


def test_side_by_side_rounds_below_zero_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--side-by-side must be 0 or more rounds"):
        main(["--models", "unet16", "--side-by-side", "-1", "--scan-slices", "0", "--out", str(tmp_path / "r.md")])
    assert not (tmp_path / "r.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--models", "unet16,resnet"], "unknown model 'resnet' in --models"),
    (["--paths", "fp32-naive,fp16"], "unknown path 'fp16' in --paths"),
    (["--repeats", "0"], "--repeats must be 1 or more"),
    (["--train-steps", "0"], "--train-steps must be 1 or more"),
    (["--size", "0"], "--size must be 1 or more"),
    (["--scan-slices", "-1"], "--scan-slices must be 0 or more"),
    (["--model", "NONE"], "no such checkpoint or run folder"),
    (["--model", "EMPTY"], "no best.pt in this folder"),
    # before: read by no step and left out without a word
    (["--scan-slices", "0", "--model", "NONE"], "--model is read only by the scan benchmark, which --scan-slices 0 "
                                                "skips; drop --model or give --scan-slices N"),
    (["--scan-slices", "0", "--scan-images", "NONE"], "--scan-images is read only by the scan benchmark"),
    (["--out", "FOLDER"], "is a folder; give --out a Markdown file name"),
    (["--out", "UNDER_A_FILE"], "is a file, not a folder"),
    (["--models", "unet16,segnet", "--size", "48"], "--size 48 is not a multiple of 32, which segnet needs; use 64"),
    (["--size", "40"], "--size 40 is not a multiple of 16, which unet16 needs; use 48"),
    (["--models", "monai-unet16", "--size", "40"], "which monai-unet16 needs"),  # the default U-Net's peer: known
    # once silently skipped: the side by side times both paths
    (["--side-by-side", "2"], "--side-by-side times fp32-naive and covseg side by side, but --paths fp32-naive lacks "
                              "covseg; add it to --paths or drop --side-by-side")])
def test_bad_options_are_refused_before_any_step(args: list[str], message: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # a bench takes many minutes: a bad --model or --out must not wait for its end, nor a bad name for its step
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    names = {"NONE": str(tmp_path / "none"), "EMPTY": str(tmp_path / "empty"), "FOLDER": str(tmp_path / "empty"),
             "UNDER_A_FILE": str(tmp_path / "a-file" / "r.md")}
    args = [names.get(a, a) for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.md")]

    def no_step(*_args, **_kwargs):
        raise AssertionError("a benchmark step ran")

    monkeypatch.setattr(subprocess, "run", no_step)
    with pytest.raises(SystemExit) as refused:
        main(["--models", "unet16", "--paths", "fp32-naive", *args, *out])
    text = str(refused.value)
    assert text.startswith("covseg bench: ") and message in text and "\n" not in text, text
    assert not (tmp_path / "r.md").exists()


def test_a_monai_model_without_monai_is_refused_before_any_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    # a `monai` that cannot be imported (here a package that raises on import, shadowing any installed one): without
    # this check unet16's row ran, monai-unet32's step failed and --out was never written
    fake = tmp_path / "shadow" / "monai"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'monai'\", name='monai')\n")
    monkeypatch.syspath_prepend(str(fake.parent))
    for name in [name for name in sys.modules if name == "monai" or name.startswith("monai.")]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test

    def no_step(*_args, **_kwargs):
        raise AssertionError("a benchmark step ran")

    monkeypatch.setattr(subprocess, "run", no_step)
    out = tmp_path / "r.md"
    with pytest.raises(SystemExit) as refused:
        main(["--models", "unet16,monai-unet32", "--paths", "fp32-naive", "--size", "32", "--scan-slices", "0",
              "--out", str(out)])
    text = str(refused.value)
    assert text == ("covseg bench: monai-unet32 in --models needs MONAI, which cannot be imported (No module named "
                    "'monai'); install it (pip install 'covseg[bench]', or pip install monai) or drop monai-unet32 "
                    "from --models"), text
    assert not out.exists()


def test_peak_memory_without_proc_reads_getrusage_in_each_platform_s_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from covseg.bench import peak_rss_mb

    def no_proc(*_args, **_kwargs):
        raise FileNotFoundError("/proc/self/status")

    monkeypatch.setattr(Path, "read_text", no_proc)  # macOS, the BSDs, Windows: no /proc
    usage = SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: SimpleNamespace(ru_maxrss=usage.maxrss))
    monkeypatch.setitem(sys.modules, "resource", usage)
    for platform, maxrss in (("linux", 512 * 1024), ("darwin", 512 * 2**20)):  # kB on Linux, bytes on macOS
        monkeypatch.setattr(sys, "platform", platform)
        usage.maxrss = maxrss
        assert peak_rss_mb() == 512.0, platform
    monkeypatch.setitem(sys.modules, "resource", None)  # Windows: no resource module, so no figure
    assert math.isnan(peak_rss_mb())


def test_the_bench_imports_without_the_resource_module() -> None:
    # Windows has no `resource`: importing covseg.bench (and so `covseg bench`) must not need it
    code = "import sys; sys.modules['resource'] = None; import covseg.bench; print('imported')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr


def test_monai_peer_matches_widths() -> None:
    pytest.importorskip("monai")

    def widths(model: torch.nn.Module) -> list[int]:
        return sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                       and m.kernel_size == (3, 3)})

    for width in (16, 32, 64):  # monai-unet16 is the default U-Net's peer (the README's bench commands name it)
        assert widths(build_bench_model(f"monai-unet{width}")) == widths(build_bench_model(f"unet{width}")) \
            == [width * 2**i for i in range(5)]


def test_scan_benchmark_forced_fp32_runs_fp32() -> None:
    row = _scan_benchmark(slices=2, size=32, model_path=None, precision="fp32")
    assert row["backend"] == "onnxruntime cpu float32 (traced from torch)" and row["slices"] == 2 and row["seconds"] > 0
    row = _scan_benchmark(slices=2, size=32, model_path=None, precision="fp32", fp32_engine="torch")
    assert row["backend"] == "torch cpu float32"


def test_end_to_end_scan_memory_is_the_prediction_process_own() -> None:
    ballast = np.ones(80_000_000)  # 640 MB resident in this process only, as a large phantom would be
    row = _e2e_scan_benchmark(slices=3, size=32, model_path=None)
    assert row["status"] == 0 and set(row["stages"]) >= {"read", "lungs", "lesions", "quantify"}
    assert row["phantom_rss_mb"] > 640 + 100
    assert 100 < row["peak_rss_mb"] < row["phantom_rss_mb"] - 300  # the predict process never held the ballast
    del ballast


def test_cuda_bench_without_a_gpu_or_with_onnx_paths_is_refused(monkeypatch, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "RESULTS.md"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no GPU is visible"):
        main(["--device", "cuda", "--out", str(out)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # refused before any CUDA call
    with pytest.raises(SystemExit, match="onnx-int8 path runs on the CPU only"):
        main(["--device", "cuda", "--paths", "covseg,onnx-int8", "--out", str(out)])
    with pytest.raises(ValueError, match="CPU only"):
        measure("unet16", "onnxruntime", size=32, repeats=1, train_steps=0, device="cuda")
    assert not out.exists()


def test_scan_benchmark_reads_real_ct_slices_resized(tiny_data: Path) -> None:
    from covseg.bench import scan_files, scan_slices
    from covseg.datasets import read_image

    folder = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    first = sorted(folder.iterdir())[0]
    slices = scan_slices(2, 48, str(folder))
    assert len(slices) == 2 and slices[0].shape == (48, 48) and slices[0].dtype == np.float32
    image = read_image(first)  # the same CT slice, brought to 48 x 48: its mean brightness is kept
    assert abs(float(slices[0].mean()) - float(image.mean())) < 0.02 and scan_files(str(folder), 2)[0] == first
    row = _scan_benchmark(slices=2, size=48, model_path=None, images_dir=str(folder))
    assert row["images"] == str(folder) and row["slices"] == 2
    import torch

    from covseg.runtime import resolve_precision

    if resolve_precision("auto", torch.device("cpu")) == torch.float32:  # no bf16 here: no check was run
        assert row["bf16_agreement"] is None and row["bf16_folded"] is None
    else:  # the check ran on the first batch of real slices, and its outcome is reported as the backend's
        assert 0.0 <= row["bf16_agreement"] <= 1.0
        assert (row["bf16_folded"] is None) == (row["backend"] != "torch cpu bfloat16")


def test_scan_images_missing_or_too_few_are_refused_before_any_step(tiny_data: Path, tmp_path: Path) -> None:
    folder = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    out = tmp_path / "RESULTS.md"
    with pytest.raises(SystemExit, match="no such folder of CT slices"):
        main(["--models", "unet16", "--scan-images", str(tmp_path / "none"), "--out", str(out)])
    count = sum(1 for _ in folder.iterdir())
    with pytest.raises(SystemExit, match=f"holds {count} CT slices, fewer than the {count + 1} asked for"):
        main(["--models", "unet16", "--scan-images", str(folder), "--scan-slices", str(count + 1), "--out", str(out)])
    assert not out.exists()


def test_scan_images_whose_slice_cannot_be_read_are_refused_in_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "slices"
    folder.mkdir()
    (folder / "1.png").write_bytes(b"not a png")
    out = tmp_path / "RESULTS.md"
    with pytest.raises(SystemExit) as refused:
        main(["--models", "unet16", "--scan-images", str(folder), "--scan-slices", "1", "--out", str(out)])
    message = str(refused.value)
    assert message.startswith("covseg bench: ") and "1.png" in message and "\n" not in message
    assert not out.exists()


def test_the_cli_reports_a_refusal_in_its_own_form_and_status(capsys) -> None:
    from covseg.cli import main as cli_main

    assert cli_main(["bench", "--repeats", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "covseg: error: --repeats must be 1 or more, not 0", err


def test_ctrl_c_during_the_bench_is_the_cli_s_interrupted_line(monkeypatch, capsys) -> None:
    from covseg import bench
    from covseg.cli import main as cli_main

    def interrupted(argv, command="python benchmarks/bench.py"):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "main", interrupted)
    assert cli_main(["bench", "--models", "unet16"]) == 130
    assert capsys.readouterr().err.strip() == "covseg: interrupted"


def test_covseg_bench_names_itself_in_the_results_header(monkeypatch) -> None:
    """Run as ``covseg bench`` the results file names that command, not ``python benchmarks/bench.py``."""
    import covseg.bench as bench
    from covseg.cli import main as cli_main

    seen: list[tuple[list[str], str]] = []
    monkeypatch.setattr(bench, "main", lambda argv, command="python benchmarks/bench.py": seen.append((argv, command)) or 0)
    assert cli_main(["bench", "--models", "unet16"]) == 0
    assert seen == [(["--models", "unet16"], "covseg bench")]


def test_peak_memory_is_read_after_inference_and_again_after_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak RSS column is inference's on every path (the ONNX rows never train); training's peak is its own."""
    import covseg.bench as bench

    trained: list[bool] = []
    real = bench.path_runners

    def noting_training(*args, **kwargs):
        runners = real(*args, **kwargs)

        def trainer(separate: bool):
            step = runners.trainer(separate)
            return lambda: (trained.append(True), step())
        return runners._replace(trainer=trainer)

    monkeypatch.setattr(bench, "path_runners", noting_training)
    monkeypatch.setattr(bench, "peak_rss_mb", lambda: 2000.0 if trained else 1000.0)  # training raises the mark
    row = measure("unet16", "fp32-naive", size=32, repeats=1, train_steps=1)
    assert trained and row["peak_rss_mb"] == 1000.0 and row["peak_rss_train_mb"] == 2000.0, row
    onnx = {k: v for k, v in row.items() if k not in ("train_img_s", "peak_rss_train_mb")} | {"path": "onnxruntime"}
    table = bench._table([row, onnx])
    assert "| peak RSS MB, inference | peak RSS MB, after training |" in table[0]
    assert "| 1000 | 2000 |" in table[2] and "| 1000 | – |" in table[3]


def test_a_failed_end_to_end_predict_is_an_error_not_a_time(tmp_path: Path) -> None:
    """A `covseg predict` that exits non-zero has no time to report: one line with its status and last error."""
    missing = tmp_path / "none.pt"
    with pytest.raises(SystemExit) as failed:
        main(["--e2e-only", "--scan-slices", "2", "--size", "32", "--model", str(missing)])
    message = str(failed.value)
    assert message.startswith("covseg bench: the end-to-end scan's covseg predict failed with exit status ")
    assert "none.pt: no such model file or folder" in message and "peak_rss_mb" not in message and "\n" not in message


def _ort_sessions(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every ONNX Runtime session made from here on, with the options it was given (``None``: none)."""
    import onnxruntime as ort

    made: list = []
    real = ort.InferenceSession

    def spy(source, sess_options=None, *args, **kwargs):
        session = real(source, sess_options, *args, **kwargs)
        made.append((session, sess_options))
        return session

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return made


@pytest.mark.parametrize("path", ["onnxruntime", "onnx-int8"])
def test_onnx_rows_run_with_the_thread_count_the_header_names(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from covseg.bench import path_runners

    made = _ort_sessions(monkeypatch)
    path_runners("unet16", path, 32)
    _, options = made[-1]  # the row's own session, made after any calibration's
    assert options is not None and options.intra_op_num_threads == torch.get_num_threads()


def test_the_onnxruntime_row_runs_covseg_s_exported_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """covseg.export.write_graph's graph (dynamic batch, height and width), as the int8 row and covseg's engine."""
    from covseg.bench import path_runners

    made = _ort_sessions(monkeypatch)
    path_runners("unet16", "onnxruntime", 32)
    session, _ = made[-1]
    assert session.get_inputs()[0].shape == ["batch", 1, "height", "width"]
    assert session.run(None, {"image": np.zeros((1, 1, 64, 64), np.float32)})[0].shape == (1, 2, 64, 64)


def _script(name: str):
    """A script of benchmarks/ as a module (they are not a package; some import a sibling, as they do when run)."""
    import importlib.util

    folder = str(Path(__file__).parents[1] / "benchmarks")
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", Path(folder) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script, args, message", [
    ("bf16_check", ["NONE"], "no such checkpoint or run folder"),
    ("int8_check", ["NONE"], "NONE"),
    ("scan_int8", ["NONE", "x.onnx"], "no such checkpoint or run folder"),
    ("scan_int8", ["NONE", "x.onnx", "--rounds", "0"], "--rounds must be 1 or more, not 0"),
    ("scan_int8", ["NONE", "x.onnx", "--slices", "0"], "--slices must be 1 or more, not 0"),
    ("bf16_paths", ["--rounds", "0"], "--rounds must be 1 or more, not 0"),
    ("onednn_int8", ["speed", "--rounds", "0"], "--rounds must be 1 or more, not 0"),
    ("speck_screen", ["NONE"], "NONE has no trained fold-0/last.pt"),
    ("speck_screen", ["NONE", "--folds", "1"], "--folds must be 2 or more"),
    ("gap_analysis", ["NONE"], "NONE has no trained fold-0/last.pt"),
    ("gap_analysis", ["NONE", "--folds", "0"], "--folds must be 1 or more"),
    ("smooth_screen", ["NONE"], "NONE has no trained fold-0/last.pt"),
    ("smooth_screen", ["NONE", "--folds", "1"], "--folds must be 2 or more"),
    ("hole_screen", ["NONE"], "NONE has no trained fold-0/last.pt"),
    ("hole_screen", ["NONE", "--folds", "1"], "--folds must be 2 or more"),
    ("predict_engine", ["--images", "NONE"], "NONE: no such folder of CT slices"),
    ("predict_engine", ["--images", "NONE", "--counts", "1,x"], "--counts takes whole numbers"),
    ("predict_engine", ["--images", "NONE", "--counts", "0"], "--counts must be 1 or more slices each"),
    ("predict_engine", ["--images", "NONE", "--rounds", "0"], "--rounds must be 1 or more, not 0")])
def test_benchmark_scripts_refuse_bad_input_in_one_line(script: str, args: list[str], message: str,
                                                        tmp_path: Path) -> None:
    none = str(tmp_path / "none")
    with pytest.raises(SystemExit) as refused:
        _script(script).main([none if a == "NONE" else a for a in args])
    text = str(refused.value).replace("NONE", none)
    assert text.startswith(f"{script}: ") and message.replace("NONE", none) in text and "\n" not in text, text


def test_predict_engine_alternates_the_engines_and_prints_medians(tiny_data: Path, monkeypatch, capsys) -> None:
    engine = _script("predict_engine")
    calls: list[tuple[int, str]] = []
    took = {"onnxruntime": iter([3.0, 1.0, 2.0]), "torch": iter([4.0, 6.0, 5.0])}

    def fake_predict(images: Path, model: str, which: str, out: Path) -> tuple[float, str]:
        calls.append((len(list(images.iterdir())), which))
        return next(took[which]), f"{which} backend"

    monkeypatch.setattr(engine, "time_predict", fake_predict)
    images = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    assert engine.main(["--images", str(images), "--model", "M", "--counts", "2", "--rounds", "3"]) == 0
    assert calls == [(2, "onnxruntime"), (2, "torch"), (2, "torch"), (2, "onnxruntime"), (2, "onnxruntime"),
                     (2, "torch")]
    assert "| 2 | 2.00 | 5.00 | 2.50× | onnxruntime backend; torch backend |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds 12 slices, fewer than the 13 asked for"):
        engine.main(["--images", str(images), "--counts", "13"])


def test_bf16_paths_refuses_an_unknown_model_by_name(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as refused:
        _script("bf16_paths").main(["--model", "resnet"])
    assert refused.value.code == 2 and "argument --model: invalid choice: 'resnet'" in capsys.readouterr().err


def test_scan_images_are_read_through_the_model_s_window(tmp_path: Path) -> None:
    """As `covseg predict` reads a folder: HU through the model's data.window, not the default lung window."""
    import nibabel as nib

    from covseg.bench import scan_slices
    from covseg.datasets import read_image

    (tmp_path / "slices").mkdir()
    file = tmp_path / "slices" / "0.nii.gz"
    nib.save(nib.Nifti1Image(np.linspace(-1000, 400, 32 * 32, dtype=np.float32).reshape(32, 32),
                             np.diag([-1.0, -1.0, 1.0, 1.0])), str(file))
    window = (-300.0, 800.0)
    assert np.allclose(scan_slices(1, 32, str(tmp_path / "slices"), window)[0], read_image(file, window), atol=1e-6)


def test_speck_screen_removes_whole_components_under_the_limit() -> None:
    """Hand-made: a 1-pixel speck, a 4-pixel square of two labels (one component) and a 2-pixel diagonal pair
    (8-connected: one component)."""
    remove_specks = _script("speck_screen").remove_specks
    labels = np.zeros((8, 8), np.int64)
    labels[0, 0] = 1
    labels[3:5, 3:5] = [[1, 2], [2, 2]]
    labels[7, 6], labels[6, 7] = 1, 1
    assert remove_specks(labels, "T", 0) is labels
    kept = remove_specks(labels, "T", 2)  # the speck goes; the pair (2) and the square (4) stay
    assert kept[0, 0] == 0 and (kept[3:5, 3:5] == labels[3:5, 3:5]).all() and kept[7, 6] == kept[6, 7] == 1
    assert remove_specks(labels, "T", 3).sum() == labels[3:5, 3:5].sum()  # only the square
    assert remove_specks(labels, "f", 0.5).sum() == labels.sum() - 1  # under half the largest (2): the speck only
    assert remove_specks(labels, "f", 0.6).sum() == labels[3:5, 3:5].sum()
    assert remove_specks(labels, "f", 0.25).sum() == labels.sum()  # 1 is not under 0.25 * 4
    assert labels[0, 0] == 1  # the input is not changed


def test_speck_screen_nested_choice_picks_on_the_other_folds_only() -> None:
    nested_choice = _script("speck_screen").nested_choice
    scores = np.array([[0.5, 0.9, 0.1],   # fold 0 alone favours candidate 1
                       [0.6, 0.5, 0.7],
                       [0.6, 0.5, 0.7]])
    # fold 0: others' means 0.6 / 0.5 / 0.7 -> 2; folds 1 and 2: others' means 0.55 / 0.7 / 0.4 -> 1
    assert nested_choice(scores) == [2, 1, 1]
    assert nested_choice(np.array([[0.5, 0.5], [0.5, 0.5]])) == [0, 0]  # ties to the first (milder) candidate


def test_gap_analysis_oracles_keep_only_the_other_half_s_errors() -> None:
    """Hand-made 1 x 6 maps (0 background, 1 GGO, 2 consolidation): the typing oracle fixes the types inside the
    model's lesion region only; the region oracle takes the truth's region with the model's likelier lesion type."""
    gap = _script("gap_analysis")
    truth = np.array([[0, 1, 1, 2, 2, 0]])
    pred = np.array([[2, 1, 2, 1, 0, 0]])  # a false consolidation, a right GGO, two mistyped, one miss
    assert gap.typing_oracle(pred, truth).tolist() == [[2, 1, 1, 2, 0, 0]]
    assert pred.tolist() == [[2, 1, 2, 1, 0, 0]]  # the input is not changed
    probs = np.array([[[0.9, 0.1, 0.1, 0.8, 0.7, 0.9]],    # background
                      [[0.05, 0.6, 0.2, 0.15, 0.1, 0.05]],  # GGO
                      [[0.05, 0.3, 0.7, 0.05, 0.2, 0.05]]])  # consolidation
    # background wins at pixels 3 and 4, yet the truth's region there takes the likelier lesion type: GGO, consolidation
    assert gap.region_oracle(probs, truth).tolist() == [[0, 1, 2, 1, 2, 0]]


def test_gap_analysis_per_image_dice_skips_classes_the_truth_lacks() -> None:
    gap = _script("gap_analysis")
    truth = np.array([[0, 1, 1, 1, 0, 0]])
    pred = np.array([[1, 1, 2, 0, 2, 0]])
    # GGO: 1 shared, 2 predicted, 3 true -> 2/5; consolidation: absent from the truth -> None;
    # lesion region: 2 shared (pixels 1, 2), 4 predicted, 3 true -> 4/7
    ggo, consolidation, region = gap.per_image_dice(pred, truth, [1, 2])
    assert ggo == pytest.approx(0.4) and consolidation is None and region == pytest.approx(4 / 7)
    assert gap.per_image_dice(pred, np.zeros_like(truth), [1, 2]) == [None, None, None]


def test_gap_analysis_as_is_row_reproduces_covseg_evaluate(tiny_data: Path, tmp_path: Path) -> None:
    """The "as is" row of a fold is the per-image GGO / consolidation Dice that covseg evaluate reports."""
    import json

    from conftest import TINY_OVERRIDES

    from covseg.cli import main

    fold = tmp_path / "cv" / "fold-0"
    assert main(["train", "--recipe", "tiny", "--task", "multiclass", "--data", str(tiny_data), "--split", "cv:0",
                 "--epochs", "12", "-o", str(fold), "--quiet", *TINY_OVERRIDES]) == 0
    assert main(["evaluate", str(fold), "--quiet"]) == 0  # last.pt and the precision covseg cv scores with, as the script
    reported = json.loads((fold / "eval-heldout" / "metrics.json").read_text())["per_image"]["dice"]
    table = _script("gap_analysis").fold_table(tmp_path / "cv", 0, None)
    assert table.shape == (3, 3)
    assert table[0, 0] == pytest.approx(reported["ggo"], abs=1e-6)
    assert table[0, 1] == pytest.approx(reported["consolidation"], abs=1e-6)
    assert (table[1, :2] >= table[0, :2] - 1e-9).all()  # perfect typing inside the same region cannot lose Dice


def test_smooth_screen_component_vote_types_each_component_whole_by_summed_probability() -> None:
    """Hand-made 1 x 7 probabilities (0 background, 1 GGO, 2 consolidation): two lesion components, pixels 1-3
    and 5-6. The first's arg-max types are GGO, consolidation, consolidation, yet GGO's summed probability
    (0.8 + 0.35 + 0.35 = 1.5) beats consolidation's (0.1 + 0.45 + 0.45 = 1.0): all GGO. The second is all
    consolidation by its sums (0.5 against 1.1)."""
    screen = _script("smooth_screen")
    probs = np.array([[[0.9, 0.1, 0.2, 0.2, 0.9, 0.2, 0.1]],
                      [[0.05, 0.8, 0.35, 0.35, 0.05, 0.3, 0.2]],
                      [[0.05, 0.1, 0.45, 0.45, 0.05, 0.5, 0.7]]])
    assert screen.label_map(probs, "as is", 0).tolist() == [[0, 1, 2, 2, 0, 2, 2]]
    assert screen.label_map(probs, "component vote", 0).tolist() == [[0, 1, 1, 1, 0, 2, 2]]
    assert screen.label_map(np.stack([np.ones((1, 3)), np.zeros((1, 3)), np.zeros((1, 3))]),
                            "component vote", 0).tolist() == [[0, 0, 0]]  # no lesion: nothing to vote on


def test_smooth_screen_type_blur_keeps_the_region_and_lets_neighbours_vote() -> None:
    """A 9 x 9 lesion of consolidation (0.6 against GGO's 0.3) with one GGO pixel (0.6 against 0.3) in its
    middle, in a background ring: type blur keeps the region exactly and the lone pixel takes its neighbours'
    type; the arg-max keeps it GGO. Probability blur moves the region itself (its corners go)."""
    screen = _script("smooth_screen")
    probs = np.zeros((3, 13, 13))
    probs[0] = 1.0
    probs[:, 2:11, 2:11] = np.array([0.1, 0.3, 0.6])[:, None, None]
    probs[:, 6, 6] = [0.1, 0.6, 0.3]
    as_is = screen.label_map(probs, "as is", 0)
    assert as_is[6, 6] == 1 and (as_is > 0).sum() == 81
    typed = screen.label_map(probs, "type blur", 2)
    assert ((typed > 0) == (as_is > 0)).all() and typed[6, 6] == 2 and set(np.unique(typed)) == {0, 2}
    moved = screen.label_map(probs, "prob blur", 2)
    assert moved[2, 2] == 0 and moved[6, 6] == 2


def test_hole_screen_fills_holes_up_to_their_area_and_types_added_pixels_by_lesion_probability() -> None:
    """A 7 x 7 image: a lesion ring (rows and columns 1-5) of GGO around a 3 x 3 hole (rows 2-4) whose pixels call
    background (0.6) but consolidation over GGO (0.3 against 0.1), and a border-touching background elsewhere. Filling
    holes of at most 9 pixels adds the hole, typed consolidation; a limit of 8 leaves it; the image's border
    background is never a hole. Closing with r = 1 bridges a one-pixel gap between two lesion columns."""
    screen = _script("hole_screen")
    probs = np.zeros((3, 7, 7))
    probs[0] = 1.0
    probs[:, 1:6, 1:6] = np.array([0.1, 0.8, 0.1])[:, None, None]  # GGO ring ...
    probs[:, 2:5, 2:5] = np.array([0.6, 0.1, 0.3])[:, None, None]  # ... around a background hole
    as_is = screen.label_map(probs, "as is", 0)
    assert (as_is[2:5, 2:5] == 0).all() and (as_is[1, 1:6] == 1).all() and as_is.sum() == 16
    filled = screen.label_map(probs, "fill holes", 9)
    assert (filled[2:5, 2:5] == 2).all() and (filled[1:6, 1:6] > 0).sum() == 25 and (filled[0] == 0).all()
    assert (screen.label_map(probs, "fill holes", 8) == as_is).all()  # the 9-pixel hole is over the limit
    assert (screen.label_map(probs, "fill holes", 0) == filled).all()  # no limit
    gap = np.zeros((3, 5, 5))
    gap[0] = 1.0
    gap[:, :, 1] = gap[:, :, 3] = np.array([0.2, 0.7, 0.1])[:, None]  # two GGO columns one pixel apart
    closed = screen.label_map(gap, "close", 1)
    # the gap joined between the columns; not at the image's top and bottom rows, beyond which lies background
    assert closed[:, 2].tolist() == [0, 1, 1, 1, 0] and (closed[:, [0, 4]] == 0).all()
    assert (closed[:, [1, 3]] == 1).all()  # the region's own pixels keep their class
    assert screen.disk(1).tolist() == [[False, True, False], [True, True, True], [False, True, False]]
