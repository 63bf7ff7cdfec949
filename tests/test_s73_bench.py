"""`covseg bench` as a user on a CPU without bf16 meets it: where its table goes, what its header says, and its
figures computed as their columns name them (the steps' own processes are replaced by rows of known figures)."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import covseg.bench as bench
import covseg.runtime

ROOT = Path(__file__).resolve().parents[1]


def _row(path: str, b1: float, b8: float, train: float | None) -> dict[str, Any]:
    """A step's row as ``measure`` returns it: 0.5 GFLOP a slice, so GFLOP/s (b8) = 0.5 / (b8 / 1000)."""
    row = {"model": "unet16", "path": path, "dtype": "float32", "params_m": 1.9, "gflop_per_slice": 0.5,
           "infer_ms_b1": b1, "infer_ms_b8": b8, "gflops_per_s_b8": 0.5 / (b8 / 1000), "peak_rss_mb": 300.0}
    if train is not None:
        row |= {"train_img_s": train, "peak_rss_train_mb": 350.0}
    return row


ROWS = {"--one unet16 fp32-naive": _row("fp32-naive", 20.0, 12.5, 2.0),
        "--one unet16 covseg": _row("covseg", 8.0, 2.5, 5.0),
        "--one unet16 onnxruntime": _row("onnxruntime", 10.0, 5.0, None)}


@pytest.fixture
def known_rows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each step answers with its row of :data:`ROWS` instead of measuring; the steps asked for, in order."""
    steps: list[str] = []

    def run_step(cmd: list[str], step: str) -> dict[str, Any]:
        steps.append(step)
        return ROWS[step]

    monkeypatch.setattr(bench, "run_step", run_step)
    return steps


def test_bench_without_out_prints_the_table_and_writes_no_file(known_rows: list[str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # before: benchmarks/RESULTS.md under the current folder, made where covseg is installed and not run from a
    # checkout, and in a checkout the record of many sessions' runs replaced by this one table
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--models", "unet16", "--paths", "fp32-naive,covseg", "--scan-slices", "0"],
                      command="covseg bench") == 0
    assert list(tmp_path.iterdir()) == []
    printed = capsys.readouterr().out
    assert "Command: `covseg bench --models unet16 --paths fp32-naive,covseg --scan-slices 0`" in printed
    assert "| unet16 | covseg | float32 | 8.0 | 2.5 | 5.00 | 200 | 300 | 350 | 5.0× / 2.5× |" in printed
    assert known_rows == ["--one unet16 fp32-naive", "--one unet16 covseg"]


def test_the_table_s_figures_and_ratios_are_as_labelled(known_rows: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert bench.main(["--models", "unet16", "--paths", "fp32-naive,covseg,onnxruntime", "--scan-slices", "0",
                       "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    header = lines[lines.index("| model | path | dtype | infer ms/slice b1 | infer ms/slice b8 | train img/s | "
                               "GFLOP/s (b8) | peak RSS MB, inference | peak RSS MB, after training | "
                               "× fp32-naive (b8 / train) |"):]
    # GFLOP/s: 0.5 GFLOP / 12.5 ms = 40, / 2.5 ms = 200, / 5 ms = 100; ratios 12.5 / 2.5 = 5.0, 5 / 2 = 2.5,
    # 12.5 / 5 = 2.5 (no training on ONNX Runtime: "–")
    assert header[2:5] == ["| unet16 | fp32-naive | float32 | 20.0 | 12.5 | 2.00 | 40 | 300 | 350 | 1.0× / 1.0× |",
                           "| unet16 | covseg | float32 | 8.0 | 2.5 | 5.00 | 200 | 300 | 350 | 5.0× / 2.5× |",
                           "| unet16 | onnxruntime | float32 | 10.0 | 5.0 | – | 100 | 300 | – | 2.5× / – |"]


def test_the_header_names_the_date_cpu_and_repeats_in_words(known_rows: list[str], tmp_path: Path) -> None:
    out = tmp_path / "r.md"
    assert bench.main(["--models", "unet16", "--paths", "covseg", "--scan-slices", "0", "--repeats", "1",
                       "--train-steps", "1", "--out", str(out)]) == 0
    header = out.read_text().splitlines()[2]
    assert header.startswith(f"{time.strftime('%Y-%m-%d')} · {bench._cpu_model()} "
                             f"({torch.backends.cpu.get_cpu_capability()}) · {torch.get_num_threads()} threads · ")
    # before: "median of 1 runs, training median of 1 steps"
    assert header.endswith(f" · torch {torch.__version__} · 512×512 · inference median of 1 run, training median "
                           "of 1 step (batch 4, AdamW)"), header


@pytest.mark.parametrize("native", [False, True])
def test_the_header_says_what_covseg_s_path_computes_in_as_detected(native: bool, known_rows: list[str],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # before: only the dtype column said "float32", without saying that no bf16 was found rather than none tried
    monkeypatch.setattr(covseg.runtime, "cpu_supports_bf16", lambda: native)
    expected = ("covseg's path in bf16 (native bf16 on this CPU)" if native else
                "covseg's path in fp32 (no native bf16 on this CPU)")
    assert bench.covseg_precision("cpu") == expected
    out = tmp_path / "r.md"
    assert bench.main(["--models", "unet16", "--paths", "covseg", "--scan-slices", "0", "--out", str(out)]) == 0
    assert f" threads · {expected} · torch " in out.read_text().splitlines()[2]


def test_this_cpu_s_header_agrees_with_the_precision_covseg_picks() -> None:
    # detected, not assumed: the same answer as the `covseg` rows' own processes get (fp32 on an AVX2-only CPU)
    picked = covseg.runtime.resolve_precision("auto", torch.device("cpu"))
    assert bench.covseg_precision("cpu").startswith("covseg's path in " + ("bf16" if picked == torch.bfloat16
                                                                           else "fp32"))


def test_measure_turns_median_seconds_into_the_labelled_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def median_seconds(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
        asked.append(repeats)
        return 0.08  # every median: 80 ms a call

    monkeypatch.setattr(bench, "_median_seconds", median_seconds)
    row = bench.measure("unet16", "fp32-naive", size=32, repeats=10, train_steps=5)
    assert asked == [10, 10, 5]  # batch 1, batch 8, training
    assert row["infer_ms_b1"] == pytest.approx(80.0)  # one slice a call
    assert row["infer_ms_b8"] == pytest.approx(10.0)  # eight slices a call: ms per slice
    assert row["train_img_s"] == pytest.approx(bench.TRAIN_BATCH / 0.08)  # 4 images a step
    # the width-16 U-Net at 32×32, by hand: 2 × in × out × k² × pixels for each convolution (multiply-adds as 2)
    # encoders: 1 → 16 → 16 at 32², then c → 2c → 2c at a quarter of the pixels, the same count at each level
    encoders = 2 * 1 * 16 * 9 * 32**2 + 2 * 16 * 16 * 9 * 32**2 \
        + 4 * (2 * 16 * 32 * 9 * 16**2 + 2 * 32 * 32 * 9 * 16**2)
    upsamplers = 4 * 2 * 256 * 128 * 4 * 2**2  # 2c → c, 2×2 kernel over the coarse pixels, the same at each level
    decoders = 4 * (2 * 256 * 128 * 9 * 4**2 + 2 * 128 * 128 * 9 * 4**2)  # 2c → c → c, the same at each level
    head = 2 * 16 * 2 * 32**2  # 1×1, 16 → 2
    assert encoders + upsamplers + decoders + head == 94_208_000
    assert row["gflop_per_slice"] == pytest.approx(0.094208, rel=1e-9)
    assert row["gflops_per_s_b8"] == pytest.approx(0.094208 / 0.010, rel=1e-9)


def test_predict_engine_counts_its_runs_in_words(tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    spec = importlib.util.spec_from_file_location("predict_engine_s73", ROOT / "benchmarks" / "predict_engine.py")
    engine = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(engine)
    monkeypatch.setattr(engine, "time_predict", lambda images, model, which, out: (1.0, f"{which} backend"))
    images = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    assert engine.main(["--images", str(images), "--model", "M", "--counts", "1", "--rounds", "1"]) == 0
    assert ", median of 1 run each, engines alternating" in capsys.readouterr().out  # before: "1 runs"
