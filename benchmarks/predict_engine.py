"""Which fp32 engine a 2-D ``covseg predict`` should use for a few slices: PyTorch, or ONNX Runtime traced in memory.

On a CPU, ``--backend auto`` runs a checkpoint's fp32 passes through ONNX Runtime, which first traces the model into
an ONNX graph (importing ``onnx`` and tracing take about 1.7 s on a 2-core AVX2 EPYC, session 71) and then runs each
slice faster than PyTorch, from :data:`covseg.predict.ONNX_MIN_SLICES` slices up. This times the whole program,
``covseg predict FOLDER``, as a user runs it, on the first N slices of a folder for each N, with the fp32 passes
in ONNX Runtime (``--backend auto`` with that limit set to 1) and in PyTorch (``--backend torch``), the two
alternating (their order swapped every round), and prints the median seconds and their ratio, so the crossover
that the limit encodes can be checked on another machine. Each run's engine is read from its
``predictions.json``.

    python benchmarks/predict_engine.py --images DIR [--model RUN_OR_PT] [--counts 1,8,32,100] [--rounds 3]

Without ``--model`` an untrained model of the ``default`` recipe is used (the same arithmetic as a trained one).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"predict_engine: --counts takes whole numbers separated by commas, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise SystemExit(f"predict_engine: --counts must be 1 or more slices each, not {text!r}")
    return counts


# `covseg predict` as the program runs it (covseg.cli.entry), with ONNX Runtime's fp32 engine from the first slice
_ONNX_FROM_ONE = ("import sys, covseg.predict; covseg.predict.ONNX_MIN_SLICES = 1; from covseg.cli import entry; "
                  "sys.exit(entry(sys.argv[1:]))")


def time_predict(images: Path, model: str, engine: str, out: Path) -> tuple[float, str]:
    """Seconds one ``covseg predict`` process took on the folder ``images`` with its fp32 passes in ``engine``
    (``onnxruntime`` or ``torch``) and the backend its report names."""
    shutil.rmtree(out, ignore_errors=True)
    start = [sys.executable, "-c", _ONNX_FROM_ONE] if engine == "onnxruntime" else [sys.executable, "-m", "covseg"]
    backend = "auto" if engine == "onnxruntime" else "torch"
    tick = time.perf_counter()
    proc = subprocess.run([*start, "predict", str(images), "--model", model, "-o", str(out), "--backend", backend,
                           "--precision", "fp32", "--quiet"], capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise SystemExit(f"predict_engine: covseg predict --backend {backend} failed: {last}")
    return seconds, json.loads((out / "predictions.json").read_text())["model"]["backend"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of CT slices (PNG/JPG), taken in name order")
    parser.add_argument("--model", help="run folder or .pt checkpoint (default: an untrained default-recipe model)")
    parser.add_argument("--counts", default="1,8,32,100", help="slice counts to time (default: 1,8,32,100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per engine and count (median)")
    args = parser.parse_args(argv)
    counts = _counts(args.counts)
    if args.rounds < 1:
        raise SystemExit(f"predict_engine: --rounds must be 1 or more, not {args.rounds}")
    from covseg.datasets import list_images
    from covseg.wording import counted

    if not args.images.is_dir():
        raise SystemExit(f"predict_engine: {args.images}: no such folder of CT slices")
    files = list_images(args.images)
    if len(files) < max(counts):
        raise SystemExit(f"predict_engine: {args.images} holds {len(files)} slices, fewer than the {max(counts)} "
                         "asked for; lower --counts")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from covseg.checkpoint import build_model, save_checkpoint
            from covseg.config import load_recipe

            config = load_recipe("default")
            model = str(Path(tmp) / "untrained.pt")
            save_checkpoint(Path(model), build_model(config), config, 0, None)
        print(f"covseg predict of N slices ({args.images}), model {args.model or 'untrained default'}, "
              f"median of {counted(args.rounds, 'run')} each, engines alternating")
        print("| slices | ONNX Runtime (s) | PyTorch (s) | PyTorch / ONNX Runtime | ran |")
        print("|---|---|---|---|---|")
        for n in counts:
            folder = Path(tmp) / f"in-{n}"
            folder.mkdir()
            for f in files[:n]:
                shutil.copy(f, folder / f.name)
            seconds: dict[str, list[float]] = {"onnxruntime": [], "torch": []}
            ran: set[str] = set()
            for r in range(args.rounds):
                for engine in (("onnxruntime", "torch") if r % 2 == 0 else ("torch", "onnxruntime")):
                    took, described = time_predict(folder, model, engine, Path(tmp) / "out")
                    seconds[engine].append(took)
                    ran.add(described)
            ort, plain = statistics.median(seconds["onnxruntime"]), statistics.median(seconds["torch"])
            print(f"| {n} | {ort:.2f} | {plain:.2f} | {plain / ort:.2f}× | {'; '.join(sorted(ran))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
