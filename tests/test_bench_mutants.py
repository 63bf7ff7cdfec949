"""The benchmark's arithmetic, table text and refusals, and the phantom's geometry, pinned with fakes (no timings).

Every figure here comes from an injected clock, fake child processes or fake rows: the expected values are worked
out by hand from the module's documented formulas (medians, ms per slice, images per second, ratios, rounding).
"""
from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import covseg.bench as bench
from covseg.phantom import chest_phantom


# ---------------------------------------------------------------------------------------------------- peak memory

def test_peak_rss_reads_vmhwm_in_kilobytes(monkeypatch: pytest.MonkeyPatch) -> None:
    status = "Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n"
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: status)
    assert bench.peak_rss_mb() == 2.0  # 2048 kB: the high-water mark, not VmPeak (virtual) nor VmRSS (now)


def test_reported_peak_is_the_last_figure_a_child_printed() -> None:
    assert bench._reported_peak("peak_rss_mb=10\nwarning: x\npeak_rss_mb=20.5\n") == 20.5
    assert math.isnan(bench._reported_peak("no figure\n  peak_rss_mb=3\n"))  # only at a line's start
    assert math.isnan(bench._reported_peak(""))


# ---------------------------------------------------------------------------------------------------- medians

def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [0.0]
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: now[0], strftime=lambda f: "2026-01-01"))
    return now


def test_median_seconds_is_the_median_of_the_timed_runs_after_one_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    now = _fake_clock(monkeypatch)
    durations = iter([100.0, 3.0, 1.0, 2.0, 10.0])  # warm-up, then four timed runs
    calls = []

    def fn():
        calls.append(1)
        now[0] += next(durations)

    # median of 3, 1, 2, 10 is 2.5 (mean 4, min 1; with the warm-up counted 3)
    assert bench._median_seconds(fn, 4) == 2.5
    assert len(calls) == 5


def test_measure_turns_medians_into_the_row_s_units(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple] = []

    def infer(batch):
        return ("infer", batch)

    def trainer(separate):
        seen.append(("trainer", separate))
        return ("train", None)

    seconds = {("infer", 1): 0.02, ("infer", 8): 0.4, ("train", None): 0.5}

    def median(fn, repeats, device=None):
        seen.append((fn, repeats))
        return seconds[fn]

    monkeypatch.setattr(bench, "path_runners", lambda *a, **k: bench.PathRunners("float32", infer, trainer))
    monkeypatch.setattr(bench, "_median_seconds", median)
    monkeypatch.setattr(bench, "_flops", lambda name, size: 2e9)
    monkeypatch.setattr(bench, "peak_rss_mb", lambda: 321.0)
    row = bench.measure("unet16", "fp32-naive", size=32, repeats=3, train_steps=2)
    assert row["infer_ms_b1"] == pytest.approx(20.0)  # 0.02 s for one slice
    assert row["infer_ms_b8"] == pytest.approx(50.0)  # 0.4 s for eight slices: 50 ms each
    assert row["gflop_per_slice"] == pytest.approx(2.0)
    assert row["gflops_per_s_b8"] == pytest.approx(40.0)  # 2 GFLOP per 0.05 s
    assert row["train_img_s"] == pytest.approx(8.0)  # a batch of 4 per 0.5 s
    assert row["peak_rss_mb"] == row["peak_rss_train_mb"] == 321.0
    assert seen == [(("infer", 1), 3), (("infer", 8), 3), ("trainer", False), (("train", None), 2)]
    model = bench.build_bench_model("unet16")
    assert row["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert 0.5 < row["params_m"] < 5  # a width-16 U-Net has about a million weights


# ---------------------------------------------------------------------------------------------------- paths

def test_path_runners_refuse_an_unknown_path_and_name_each_path_s_arithmetic() -> None:
    with pytest.raises(ValueError, match="unknown benchmark path 'fp16': use one of fp32-naive, fp32-cl, covseg"):
        bench.path_runners("unet16", "fp16", 32)
    from covseg.runtime import resolve_precision

    assert bench.path_runners("unet16", "fp32-naive", 32).dtype == "float32"
    assert bench.path_runners("unet16", "fp32-cl", 32).dtype == "float32"
    assert bench.path_runners("unet16", "covseg", 32).dtype == str(
        resolve_precision("auto", torch.device("cpu"))).removeprefix("torch.")
    assert bench.path_runners("unet16", "onnx-int8", 32).dtype == "int8"


class _Spy(torch.nn.Module):
    """A one-convolution 'model' that notes how each forward pass was called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.probe = torch.nn.Parameter(torch.zeros(2, 3, 4, 5))  # 4-D with channels: shows the memory format
        self.calls: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append({"channels_last": self.probe.is_contiguous(memory_format=torch.channels_last)
                           and not self.probe.is_contiguous(), "inference_mode": torch.is_inference_mode_enabled(),
                           "grad": torch.is_grad_enabled(), "batch": x.shape[0], "training": self.training})
        return self.conv(x)


@pytest.mark.parametrize("path, channels_last, inference_mode", [("fp32-naive", False, False),
                                                                 ("fp32-cl", True, True)])
def test_fp32_paths_run_in_their_memory_format_and_grad_mode(path: str, channels_last: bool, inference_mode: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy()
    monkeypatch.setattr(bench, "build_bench_model", lambda name: spy.eval())
    runners = bench.path_runners("unet16", path, 32)
    runners.infer(8)()
    runners.infer(8)()
    assert spy.calls[-1] == {"channels_last": channels_last, "inference_mode": inference_mode, "grad": False,
                             "batch": 8, "training": False}
    before = spy.conv.weight.detach().clone()
    runners.trainer(True)()  # a copy trains: the inference model is untouched
    assert torch.equal(spy.conv.weight, before) and not spy.training and len(spy.calls) == 2  # the two passes above
    runners.trainer(False)()  # the model itself trains
    assert not torch.equal(spy.conv.weight, before) and spy.training
    assert spy.calls[-1]["batch"] == bench.TRAIN_BATCH and spy.calls[-1]["grad"]


# ---------------------------------------------------------------------------------------------------- side by side

class _FakeWorker:
    def __init__(self, replies: str, status: int | None) -> None:
        self.stdin, self.stdout, self.status = io.StringIO(), io.StringIO(replies), status

    def poll(self):
        return self.status


def test_ask_returns_replies_and_names_a_failing_worker_in_one_line() -> None:
    proc = _FakeWorker("ready bfloat16\n0.25\nnonsense\n", 1)
    worker = bench._Worker("unet16", "covseg", proc, io.StringIO("a warning\nlast error\n"))
    assert bench._ask(worker, None) == "bfloat16"
    assert bench._ask(worker, "infer") == "0.25" and proc.stdin.getvalue() == "infer\n"
    with pytest.raises(SystemExit) as failed:
        bench._ask(worker, "train")
    assert str(failed.value) == "benchmark step side by side (unet16 covseg train) failed: last error (exit status 1)"
    silent = bench._Worker("segnet", "fp32-naive", _FakeWorker("huh\n", None), io.StringIO(""))
    with pytest.raises(SystemExit) as failed:  # alive, nothing on stderr: the reply itself is named
        bench._ask(silent, None)
    assert str(failed.value) == "benchmark step side by side (segnet fp32-naive start) failed: 'huh'"


class _FakePopen:
    """A :func:`covseg.bench.serve` worker: replies ``ready DTYPE`` then, per command, a time from ``TIMES``."""

    log: list = []
    live: set = set()
    TIMES = {"infer": [1000.0, 0.8, 0.4, 0.16], "train": [1000.0, 1.0, 2.0, 0.5]}  # round 0 (warm-up) first
    fail_at: tuple | None = None

    def __init__(self, cmd, stdin, stdout, stderr, text):
        self.cmd, self.model, self.path = cmd, cmd[4], cmd[5]
        self.scale = 1.0 if self.path == "fp32-naive" else 0.5
        self.counts = {"infer": 0, "train": 0}
        self.pending = [f"ready {'float32' if self.path == 'fp32-naive' else 'bfloat16'}\n"]
        self.killed = self.waited = False
        _FakePopen.log.append(("start", self.model, self.path, frozenset(_FakePopen.live)))
        _FakePopen.live.add((self.model, self.path))
        fake = self

        class In:
            def write(self, text):
                command = text.strip()
                _FakePopen.log.append((fake.model, fake.path, command))
                n = fake.counts[command]
                fake.counts[command] += 1
                reply = "garbage" if _FakePopen.fail_at == (fake.model, fake.path, command, n) else \
                    repr(fake.scale * _FakePopen.TIMES[command][n])
                fake.pending.append(reply + "\n")

            def flush(self):
                pass

            def close(self):
                pass

        class Out:
            def readline(self):
                return fake.pending.pop(0) if fake.pending else ""

            def close(self):
                pass

        self.stdin, self.stdout = In(), Out()

    def poll(self):
        return None

    def kill(self):
        self.killed = True
        _FakePopen.log.append(("kill", self.model, self.path))

    def wait(self):
        self.waited = True
        _FakePopen.live.discard((self.model, self.path))


@pytest.fixture
def fake_workers(monkeypatch: pytest.MonkeyPatch):
    _FakePopen.log, _FakePopen.live, _FakePopen.fail_at = [], set(), None
    monkeypatch.setattr(bench.subprocess, "Popen", _FakePopen)
    return _FakePopen


def test_side_by_side_takes_medians_of_the_rounds_after_the_warm_up(fake_workers) -> None:
    rows = bench.side_by_side(["unet16"], size=32, rounds=3)
    # infer medians 0.4 s (naive) and 0.2 s (covseg) per batch of 8; train medians 1.0 s and 0.5 s per batch of 4
    assert rows == [
        {"model": "unet16", "path": "fp32-naive", "dtype": "float32", "rounds": 3, "infer_ms_b8": 50.0,
         "train_img_s": 4.0},
        {"model": "unet16", "path": "covseg", "dtype": "bfloat16", "rounds": 3, "infer_ms_b8": 25.0,
         "train_img_s": 8.0}]
    commands = [(m, p, c) for m, p, c, *_ in [e for e in fake_workers.log if e[0] not in ("start", "kill")]]
    naive = [("unet16", "fp32-naive", "infer"), ("unet16", "fp32-naive", "train")]
    ours = [("unet16", "covseg", "infer"), ("unet16", "covseg", "train")]
    # four rounds (one untimed), every other one in reverse order, the first reversed
    assert commands == ours + naive + naive + ours + ours + naive + naive + ours
    starts = [e for e in fake_workers.log if e[0] == "start"]
    assert all(e[3] == frozenset() or e[3] == {("unet16", "fp32-naive")} for e in starts)
    assert not any(e[0] == "kill" for e in fake_workers.log)


def test_side_by_side_groups_a_model_with_its_monai_peer_and_keeps_the_asked_order(fake_workers) -> None:
    rows = bench.side_by_side(["unet16", "segnet", "monai-unet16"], size=64, rounds=1, device="cpu")
    assert [(r["model"], r["path"]) for r in rows] == [
        ("unet16", "fp32-naive"), ("unet16", "covseg"), ("segnet", "fp32-naive"), ("segnet", "covseg"),
        ("monai-unet16", "fp32-naive"), ("monai-unet16", "covseg")]
    starts = {(e[1], e[2]): e[3] for e in fake_workers.log if e[0] == "start"}
    # unet16's and monai-unet16's four processes are alive together; segnet's start once they are gone
    assert starts[("monai-unet16", "covseg")] == {("unet16", "fp32-naive"), ("unet16", "covseg"),
                                                  ("monai-unet16", "fp32-naive")}
    assert starts[("segnet", "fp32-naive")] == frozenset()
    # one timed round: the medians are that round's times
    assert rows[0]["infer_ms_b8"] == pytest.approx(100.0) and rows[0]["train_img_s"] == pytest.approx(4.0)


def test_a_worker_s_bad_reply_kills_every_worker_of_its_group(fake_workers) -> None:
    fake_workers.fail_at = ("unet16", "fp32-naive", "train", 1)
    with pytest.raises(SystemExit, match=r"side by side \(unet16 fp32-naive train\) failed: 'garbage'"):
        bench.side_by_side(["unet16"], size=32, rounds=2)
    assert sorted(e[1:] for e in fake_workers.log if e[0] == "kill") == [("unet16", "covseg"),
                                                                        ("unet16", "fp32-naive")]
    assert not fake_workers.live  # all waited for


# ---------------------------------------------------------------------------------------------------- tables

def _row(model, path, b8, train=None, **extra):
    row = {"model": model, "path": path, "dtype": "float32" if path != "covseg" else "bfloat16",
           "infer_ms_b1": 12.34, "infer_ms_b8": b8, "gflops_per_s_b8": 99.6, "peak_rss_mb": 1000.4}
    if train is not None:
        row |= {"train_img_s": train, "peak_rss_train_mb": 1500.0}
    return row | extra


def test_table_ratios_are_against_fp32_naive_of_the_same_model() -> None:
    rows = [_row("unet16", "fp32-naive", 10.0, 2.0), _row("unet16", "covseg", 4.0, 3.0, peak_gpu_mb=300.2),
            _row("unet16", "onnxruntime", 5.0), _row("segnet", "covseg", 8.0, 1.0)]
    lines = bench._table(rows)
    assert lines[2] == "| unet16 | fp32-naive | float32 | 12.3 | 10.0 | 2.00 | 100 | 1000 | 1500 | 1.0× / 1.0× |"
    assert lines[3] == "| unet16 | covseg | bfloat16 | 12.3 | 4.0 | 3.00 | 100 | 1000 (GPU 300) | 1500 | 2.5× / 1.5× |"
    assert lines[4] == "| unet16 | onnxruntime | float32 | 12.3 | 5.0 | – | 100 | 1000 | – | 2.0× / – |"
    assert lines[5] == "| segnet | covseg | bfloat16 | 12.3 | 8.0 | 1.00 | 100 | 1000 | 1500 | – |"  # no baseline
    assert len(lines) == 6


def test_side_by_side_table_says_one_round_in_the_singular() -> None:
    # before: "timed in turn for 1 rounds"
    rows = [_row("unet16", "fp32-naive", 10.0, 2.0, rounds=1), _row("unet16", "covseg", 4.0, 3.0, rounds=1)]
    assert "timed in turn for 1 round, each timed pass" in bench._side_by_side_table(rows)[0]


def test_side_by_side_table_ratios_and_the_monai_comparison() -> None:
    rows = [_row("unet16", "fp32-naive", 10.0, 2.0, rounds=3), _row("unet16", "covseg", 4.0, 3.0, rounds=3),
            _row("monai-unet16", "fp32-naive", 20.0, 1.0, rounds=3),
            _row("monai-unet16", "covseg", 10.0, 1.2, rounds=3)]
    lines = bench._side_by_side_table(rows)
    assert "timed in turn for 3 rounds" in lines[0]
    assert lines[4] == "| unet16 | 10.0 | 4.0 (bfloat16) | 2.5× | 2.00 | 3.00 | 1.5× |"
    assert lines[5] == "| monai-unet16 | 20.0 | 10.0 (bfloat16) | 2.0× | 1.00 | 1.20 | 1.2× |"
    assert lines[6:] == ["", "unet16 against monai-unet16 on covseg's path, side by side (>1 = covseg faster): "
                             "inference b8 2.50×, training 2.50×"]


# ---------------------------------------------------------------------------------------------------- main

def _fake_children(monkeypatch: pytest.MonkeyPatch, scan: dict | None = None, fail: str | None = None) -> list:
    """Replace every benchmark step's subprocess with one that answers fixed figures; returns the commands run."""
    cmds: list = []
    scan = scan or {"bf16_agreement": 0.99512, "bf16_folded": True}
    b8 = {"fp32-naive": 10.0, "fp32-cl": 8.0, "covseg": 4.0, "onnxruntime": 5.0, "onnx-int8": 2.0}

    def run(cmd, capture_output=True, text=True):
        cmds.append(cmd)
        if fail and fail in cmd:
            return SimpleNamespace(returncode=1, stdout="",
                                   stderr=f"Traceback\n  ...\nValueError: {fail}\n" if fail != "--e2e-only" else "")
        if "--one" in cmd:
            model, path = cmd[cmd.index("--one") + 1:][:2]
            slower = 2.5 if model.startswith("monai") else 1.0
            train = {"fp32-naive": 2.0, "fp32-cl": 2.5, "covseg": 3.0}.get(path)
            out = _row(model, path, slower * b8[path], None if train is None else train / (1.5 if slower > 1 else 1))
        elif "auto" in cmd:
            out = {"slices": 4, "seconds": 2.04, "slices_per_s": 1.96, "backend": "torch cpu bfloat16",
                   "input_size": 352, "images": "uniform noise", "peak_rss_mb": 512.4} | scan
        elif "fp32" in cmd:
            out = {"slices": 4, "seconds": 3.26, "slices_per_s": 1.2269, "peak_rss_mb": 400.6,
                   "backend": "onnxruntime cpu float32 (traced from torch)"}
        else:
            out = {"slices": 4, "seconds": 12.34, "status": 0, "stages": {"read": 0.51, "lungs": 2.0, "total": 9.9},
                   "peak_rss_mb": 700.4}
        return SimpleNamespace(returncode=0, stdout="noise\n" + json.dumps(out) + "\n", stderr="")

    monkeypatch.setattr(bench.subprocess, "run", run)
    monkeypatch.setattr(bench, "_monai_missing", lambda: None)
    return cmds


def test_main_runs_each_step_as_asked_and_writes_the_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    from covseg.inference import BF16_MIN_AGREEMENT

    cmds = _fake_children(monkeypatch)
    paired_args = []
    side = [_row("unet16", "fp32-naive", 10.0, 2.0, rounds=2), _row("unet16", "covseg", 4.0, 3.0, rounds=2)]
    monkeypatch.setattr(bench, "side_by_side", lambda *a: paired_args.append(a) or side)
    out = tmp_path / "new" / "sub" / "r.md"  # its folders are made
    argv = ["--models", "unet16,monai-unet16", "--size", "32", "--repeats", "1", "--train-steps", "3",
            "--scan-slices", "4", "--side-by-side", "2", "--out", str(out)]
    assert bench.main(argv) == 0
    text = out.read_text()
    assert capsys.readouterr().out.endswith(text + "\n")
    common = [sys.executable, "-m", "covseg.bench", "--size", "32", "--repeats", "1", "--train-steps", "3",
              "--scan-slices", "4", "--device", "cpu"]
    steps = [["--one", m, p] for m in ("unet16", "monai-unet16") for p in bench.PATHS]  # on a CPU: every path
    assert cmds == [common + s for s in steps + [["--scan-only", "auto"], ["--scan-only", "fp32"], ["--e2e-only"]]]
    assert paired_args == [(["unet16", "monai-unet16"], 32, 2, "cpu")]
    assert " threads · covseg's path in " in text and " · torch " in text
    assert " · 32×32 · inference median of 1 run, training median of 3 steps (batch 4, AdamW)" in text
    assert f"Command: `python benchmarks/bench.py {' '.join(argv)}`" in text
    assert "| monai-unet16 | covseg | bfloat16 | 12.3 | 10.0 | 2.00 | 100 | 1000 | 1500 | 2.5× / 1.5× |" in text
    comparison = text.split("covseg U-Net vs MONAI BasicUNet of matched width (same path; >1 = covseg faster):")[1]
    assert comparison.split("\n\n")[1].splitlines() == [
        "| width | path | inference b8 | training |", "|---|---|---|---|", "| 16 | fp32-naive | 2.50× | 1.50× |",
        "| 16 | fp32-cl | 2.50× | 1.50× |", "| 16 | covseg | 2.50× | 1.50× |", "| 16 | onnxruntime | 2.50× | – |",
        "| 16 | onnx-int8 | 2.50× | – |"]
    assert "timed in turn for 2 rounds" in text and "| unet16 | 10.0 | 4.0 (bfloat16) | 2.5× | 2.00 | 3.00 | 1.5× |" \
        in text
    assert ("Scan (inference only, untrained default model, slices: uniform noise, torch cpu bfloat16, input 352; "
            "bf16 check 99.512% of the first batch's labels alike, folded copy kept): 4 slices of 32×32 in 2.0 s "
            "(2.0 slices/s), peak RSS 512 MB. Forced to fp32 (the path used when bf16's labels agree with fp32's on "
            f"< {BF16_MIN_AGREEMENT:.1%} of the first batch's pixels; onnxruntime cpu float32 (traced from torch)): "
            "3.3 s (1.2 slices/s), peak RSS 401 MB.") in text
    assert ("Scan end to end (`covseg predict scan.nii.gz`, phantom 4×32×32, exit 0): 12.3 s (read 0.5 s, "
            "lungs 2.0 s), peak RSS 700 MB.") in text


@pytest.mark.parametrize("agreement, folded, said", [
    (None, None, "input 352): 4 slices"),
    (0.5, False, "input 352; bf16 check 50.000% of the first batch's labels alike, trained model kept): 4 slices"),
    (0.25, None, "input 352; bf16 check 25.000% of the first batch's labels alike, fp32 chosen): 4 slices"),
    # rounded down (session 75): `.3%` showed 100.000 % with pixels differing, and 99.900 % for a share under the bar
    (0.9999996, True, "bf16 check 99.999% of the first batch's labels alike, folded copy kept"),
    (0.9989996, True, "bf16 check 99.899% of the first batch's labels alike, folded copy kept")])
def test_main_names_the_bf16_check_s_outcome(agreement, folded, said: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_children(monkeypatch, {"bf16_agreement": agreement, "bf16_folded": folded})
    out = tmp_path / "r.md"
    assert bench.main(["--models", "unet16", "--paths", "covseg", "--size", "32", "--scan-slices", "4",
                       "--out", str(out)]) == 0
    assert said in out.read_text()


def test_main_without_scans_or_side_by_side_runs_only_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               tiny_data: Path) -> None:
    cmds = _fake_children(monkeypatch)
    monkeypatch.setattr(bench, "side_by_side", lambda *a: pytest.fail("side by side ran"))
    out = tmp_path / "r.md"
    assert bench.main(["--models", "unet16", "--paths", "fp32-cl", "--size", "16", "--scan-slices", "0",
                       "--out", str(out)]) == 0
    assert [c[-3:] for c in cmds] == [["--one", "unet16", "fp32-cl"]]
    text = out.read_text()
    assert "Scan" not in text and "Side by side" not in text and "MONAI" not in text
    # the scan benchmark's options travel to every step
    folder = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    cmds.clear()
    assert bench.main(["--models", "unet16", "--paths", "fp32-cl", "--size", "16", "--scan-slices", "2",
                       "--scan-images", str(folder), "--out", str(out)]) == 0
    assert len(cmds) == 4 and all(c[-2:] == ["--scan-images", str(folder)] for c in cmds)
    assert "slices: uniform noise" in out.read_text()  # as the (fake) scan step reported it


@pytest.mark.parametrize("fail, message", [("--one", "benchmark step --one unet16 fp32-cl failed: ValueError: --one"),
                                           ("--e2e-only", "benchmark step --e2e-only failed: exit status 1")])
def test_a_failing_step_ends_the_bench_in_one_line_before_out_is_written(fail: str, message: str, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_children(monkeypatch, fail=fail)
    out = tmp_path / "r.md"
    with pytest.raises(SystemExit) as failed:
        bench.main(["--models", "unet16", "--paths", "fp32-cl", "--size", "16", "--scan-slices", "2",
                    "--out", str(out)])
    assert str(failed.value) == message and not out.exists()


def test_side_by_side_without_both_paths_names_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_children(monkeypatch)
    with pytest.raises(SystemExit) as refused:
        bench.main(["--models", "unet16", "--paths", "fp32-cl", "--side-by-side", "1", "--scan-slices", "0",
                    "--out", str(tmp_path / "r.md")])
    assert str(refused.value) == ("covseg bench: --side-by-side times fp32-naive and covseg side by side, but --paths "
                                  "fp32-cl lacks fp32-naive and covseg; add them to --paths or drop --side-by-side")


def test_two_monai_models_without_monai_need_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "_monai_missing", lambda: "No module named 'monai'")
    with pytest.raises(SystemExit) as refused:
        bench.main(["--models", "monai-unet16,unet16,monai-unet32", "--paths", "fp32-naive", "--size", "32",
                    "--scan-slices", "0", "--out", str(tmp_path / "r.md")])
    assert str(refused.value).startswith("covseg bench: monai-unet16,monai-unet32 in --models need MONAI, which "
                                         "cannot be imported (No module named 'monai'); ")
    assert str(refused.value).endswith(" or drop monai-unet16,monai-unet32 from --models")


def test_monai_missing_gives_the_import_error_s_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(name):
        raise ImportError("cannot import name 'x' from 'monai'\nsee the traceback")

    monkeypatch.setattr(bench.importlib, "import_module", broken)
    assert bench._monai_missing() == "cannot import name 'x' from 'monai'"
    monkeypatch.setattr(bench.importlib, "import_module", lambda name: None)
    assert bench._monai_missing() is None


# ---------------------------------------------------------------------------------------------------- scans

def test_the_console_line_of_a_path_that_does_not_train_says_so_as_the_table_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    _fake_children(monkeypatch)
    assert bench.main(["--models", "unet16", "--paths", "covseg,onnxruntime", "--size", "32", "--scan-slices", "0",
                       "--out", str(tmp_path / "r.md")]) == 0
    lines = capsys.readouterr().out.splitlines()
    # before: "train    nan img/s" on the ONNX row, where the Markdown table says "–"
    assert "train   3.00 img/s  peak 1000 MB inference, 1500 MB after training" in lines[0]
    assert "train      – img/s  peak 1000 MB inference, – MB after training" in lines[1]
    assert "nan" not in "".join(lines)


def test_a_scan_whose_automatic_path_ran_fp32_is_not_timed_again_as_forced_fp32(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no bf16 on this CPU (or the check chose fp32): forcing fp32 would time the same backend a second time
    cmds = _fake_children(monkeypatch, {"backend": "onnxruntime cpu float32 (traced from torch)",
                                        "bf16_agreement": None, "bf16_folded": None})
    out = tmp_path / "r.md"
    assert bench.main(["--models", "unet16", "--paths", "covseg", "--size", "32", "--scan-slices", "4",
                       "--out", str(out)]) == 0
    assert [c[c.index("--device") + 2:] for c in cmds] == [["--one", "unet16", "covseg"], ["--scan-only", "auto"],
                                                          ["--e2e-only"]]
    text = out.read_text()
    assert ("onnxruntime cpu float32 (traced from torch), input 352): 4 slices of 32×32 in 2.0 s (2.0 slices/s), "
            "peak RSS 512 MB. The automatic path already ran in fp32, so no forced-fp32 figure is given.") in text
    assert "Forced to fp32" not in text


@pytest.mark.parametrize("name, head", [("model.onnx", b"anything"),  # by its suffix
                                        ("model.bin", b"\x08\x08\x12\x07pytorch\x1a\x062.13.0")])  # by its bytes
def test_an_onnx_graph_as_model_is_refused_as_such_before_any_step(name: str, head: bytes, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    graph = tmp_path / name
    graph.write_bytes(head)
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("a benchmark step ran"))
    with pytest.raises(SystemExit) as refused:
        bench.main(["--models", "unet16", "--paths", "covseg", "--size", "32", "--model", str(graph),
                    "--out", str(tmp_path / "r.md")])
    # before: "not a readable covseg checkpoint (no zip archive ...; UnpicklingError ...)"
    assert str(refused.value) == (f"covseg bench: {graph}: is an ONNX graph, but bench's --model takes a run folder "
                                  "or a .pt checkpoint (the scan benchmark runs it on covseg's own paths); give the run "
                                  "folder it was exported from")


def test_bench_help_explains_models_size_and_scan_slices(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        bench.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert f"--models MODELS comma-separated, of {', '.join(bench.MODELS)} (default: {bench.DEFAULT_MODELS})" in text
    assert "--size SIZE slice height and width in pixels: a multiple of 16, or of 32 with segnet (default: 512)" \
        in text
    assert "--scan-slices SCAN_SLICES slices of --size in the scan benchmarks, inference only and end to end " \
           "(default: 300; 0: skip them)" in text


def test_scan_files_takes_a_folder_holding_exactly_the_slices_asked_for(tiny_data: Path) -> None:
    from covseg.datasets import list_images

    folder = tiny_data / "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs"
    files = list_images(folder)
    assert bench.scan_files(str(folder), len(files)) == files
    assert bench.scan_files(str(folder), 3) == files[:3]


def test_scan_benchmark_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([10.0, 14.0])
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    monkeypatch.setattr(bench, "peak_rss_mb", lambda: 123.0)
    row = bench._scan_benchmark(slices=2, size=32, model_path=None, precision="fp32", fp32_engine="torch")
    assert row["seconds"] == 4.0 and row["slices_per_s"] == 0.5 and row["slices"] == 2
    assert row["images"] == "uniform noise" and row["peak_rss_mb"] == 123.0 and row["bf16_agreement"] is None


def test_end_to_end_scan_figures_and_the_phantom_it_writes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from covseg.errors import CovsegError
    from covseg.volumes import read_volume

    seen = []
    answer = {"returncode": 0, "stderr": "peak_rss_mb=99\nwarning: slow\npeak_rss_mb=111.5\n"}

    def run(cmd, capture_output=True, text=True):
        assert cmd[1:3] == ["-c", bench._PREDICT_AND_REPORT_PEAK] and cmd[3] == "predict"
        assert cmd[5:] == ["-o", cmd[6], "--model", "given.pt", "--device", "cpu", "--quiet"]
        volume = read_volume(cmd[4])
        seen.append(volume)
        Path(cmd[6]).mkdir()
        Path(cmd[6], "report.json").write_text(json.dumps({"seconds": {"read": 0.5, "total": 3.0}}))
        return SimpleNamespace(stdout="", **answer)

    monkeypatch.setattr(bench.subprocess, "run", run)
    ticks = iter([3.0, 10.0] * 3)
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    monkeypatch.setattr(bench, "peak_rss_mb", lambda: 55.0)
    row = bench._e2e_scan_benchmark(slices=3, size=32, model_path="given.pt")
    assert row == {"slices": 3, "seconds": 7.0, "status": 0, "stages": {"read": 0.5, "total": 3.0},
                   "peak_rss_mb": 111.5, "phantom_rss_mb": 55.0}
    hu, _ = chest_phantom(shape=(3, 32, 32), spacing=(1.0, 0.7, 0.7))
    # the scan is the phantom, read back in covseg's canonical orientation with its voxel size
    assert np.array_equal(seen[0].hu, hu.astype(np.int16)) and np.allclose(seen[0].spacing, (1.0, 0.7, 0.7))
    answer.update(returncode=3, stderr="warning: x\nerror one\nerror two  \npeak_rss_mb=90\n")
    with pytest.raises(CovsegError) as failed:
        bench._e2e_scan_benchmark(slices=3, size=32, model_path="given.pt")
    assert str(failed.value) == ("the end-to-end scan's covseg predict failed with exit status 3 (error two); fix what "
                                 "it names, or skip the scans with --scan-slices 0")
    answer.update(returncode=-9, stderr="peak_rss_mb=90\n")
    with pytest.raises(CovsegError, match=r"exit status -9 \(no error message\)"):
        bench._e2e_scan_benchmark(slices=3, size=32, model_path="given.pt")


# ---------------------------------------------------------------------------------------------------- phantom

SHAPE, SPACING = (8, 64, 96), (2.5, 0.7, 0.7)


def _x_mm(shape=SHAPE, spacing=SPACING) -> np.ndarray:
    return (np.arange(shape[2]) - (shape[2] - 1) / 2) * spacing[2]


def test_phantom_values_follow_its_parts() -> None:
    hu, parts = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0)
    assert hu.dtype == np.float32 and hu.shape == SHAPE
    assert set(parts) == {"right", "left", "lungs", "ggo", "dense", "airway_outside", "body"}
    assert all(parts[k].shape == SHAPE for k in parts)
    airway = (hu == -1000) & parts["body"]
    assert np.all(hu[~parts["body"]] == -1000)
    assert np.all(hu[parts["body"] & ~parts["lungs"] & ~airway] == 40)
    lung = parts["lungs"] & ~parts["ggo"] & ~parts["dense"] & ~airway
    assert lung.sum() > 1000 and np.all(hu[lung] == -850)
    assert parts["ggo"].any() and np.all(hu[parts["ggo"] & ~airway] == -500)
    assert parts["dense"].any() and np.all(hu[parts["dense"] & ~airway] == 20)
    assert parts["airway_outside"].any() and np.all(hu[parts["airway_outside"]] == -1000)
    assert not (parts["airway_outside"] & parts["lungs"]).any()
    assert np.array_equal(parts["lungs"], parts["right"] | parts["left"])
    assert not (parts["right"] & parts["left"]).any()
    assert not (parts["ggo"] & ~parts["right"]).any() and not (parts["dense"] & ~parts["left"]).any()


def test_phantom_right_lung_is_at_low_x_and_the_airways_stay_between_the_lungs() -> None:
    _, parts = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0)
    x = _x_mm()
    right_x = x[np.nonzero(parts["right"])[2]]
    left_x = x[np.nonzero(parts["left"])[2]]
    assert right_x.max() < 0 < left_x.min()
    assert x[np.nonzero(parts["ggo"])[2]].max() < 0 < x[np.nonzero(parts["dense"])[2]].min()
    # the dense ball sits on the left lung's lateral wall: farther out than the lung's centre
    assert x[np.nonzero(parts["dense"])[2]].mean() > left_x.mean()
    airway_x = x[np.nonzero(parts["airway_outside"])[2]]
    assert np.abs(airway_x).max() < left_x.mean()  # the bronchi end in the lungs: none beyond them


def test_phantom_trachea_starts_at_the_top_slice_with_its_radius() -> None:
    hu, parts = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0)
    top = parts["airway_outside"][-1]
    radius = 0.035 * SHAPE[2] * SPACING[2]  # mm
    area = top.sum() * SPACING[1] * SPACING[2]
    assert area == pytest.approx(math.pi * radius**2, rel=0.25)
    assert not parts["airway_outside"][0].any()  # the bottom slice: below the carina and the bronchi


@pytest.mark.parametrize("gap", [10.0, 4.0])
def test_phantom_gap_is_the_distance_between_the_lungs(gap: float) -> None:
    _, parts = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0, gap_mm=gap)
    x = _x_mm()
    between = x[np.nonzero(parts["left"])[2]].min() - x[np.nonzero(parts["right"])[2]].max()
    assert gap <= between < gap + 2 * SPACING[2]


def test_phantom_lungs_have_their_ellipsoids_volume() -> None:
    # each lung: an ellipsoid of half-axes 0.4 D, 0.28 H, 0.15 W (D, H, W: the volume's extent in mm)
    shape, spacing = (30, 96, 96), (2.5, 1.4, 1.4)
    _, parts = chest_phantom(shape=shape, spacing=spacing, noise=0.0)
    D, H, W = (n * s for n, s in zip(shape, spacing))
    volume = 4 / 3 * math.pi * (0.4 * D) * (0.28 * H) * (0.15 * W)
    for side in ("right", "left"):
        assert parts[side].sum() * np.prod(spacing) == pytest.approx(volume, rel=0.02), side


def test_phantom_with_a_negative_gap_has_touching_lungs() -> None:
    _, parts = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0, gap_mm=-3.0)
    assert (parts["right"] & parts["left"]).any()


def test_phantom_ellipsoids_are_closed() -> None:
    # 25 voxels of 1 mm: the right lung's axes are 10 mm (Z) and its centre X = -5 mm fall on voxel centres
    _, parts = chest_phantom(shape=(25, 25, 25), spacing=(1.0, 1.0, 1.0), noise=0.0)
    assert parts["right"][22, 12, 7] and parts["right"][2, 12, 7]  # the poles, on the surface
    assert not parts["right"][23, 12, 7]


def test_phantom_noise_is_seeded_and_of_the_given_scale() -> None:
    clean, _ = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0)
    a, _ = chest_phantom(shape=SHAPE, spacing=SPACING, noise=15.0, seed=1)
    b, _ = chest_phantom(shape=SHAPE, spacing=SPACING, noise=15.0, seed=1)
    c, _ = chest_phantom(shape=SHAPE, spacing=SPACING, noise=15.0, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32
    d = (a - clean).astype(np.float64)
    assert abs(d.mean()) < 0.5 and d.std() == pytest.approx(15.0, rel=0.03)
    default, _ = chest_phantom(shape=SHAPE, spacing=SPACING)
    assert (default - clean).std() == pytest.approx(15.0, rel=0.03)  # noise 15 HU unless told
