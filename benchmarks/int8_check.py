"""Accuracy of ``covseg export --int8`` against fp32, on trained runs and their own held-out slices.

For each run folder (e.g. the ``fold-K`` runs of a ``covseg cv`` folder) it exports the ``last.pt`` model to a
static-int8 ONNX file (calibrated on the run's training slices, as ``covseg export --int8`` does), then scores the
fp32 model (ONNX Runtime fp32) and the int8 file on the run's held-out slices at their own size, and prints
per-image Dice per class, the paired difference (mean ± sample standard deviation over the runs) and the share
of pixels whose label is the same.

    python benchmarks/int8_check.py runs/cv-binary/fold-0 runs/cv-binary/fold-1 ... [--data DIR]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def check_run(run: Path, data: str | None) -> dict:
    from covseg.evaluation import evaluate_image, summarise
    from covseg.experiment import select_samples
    from covseg.export import export_onnx, load_onnx
    from covseg.inference import Predictor
    from covseg.labels import get_scheme
    from covseg.predict import open_predictor
    from covseg.run import read_run_info

    data = data or read_run_info(run)["data"]
    fp32, config, _ = open_predictor(run, which="last", precision="fp32")
    samples = select_samples(run, data, config.data.task, "heldout", config.data.window)
    scheme = get_scheme(config.data.task)
    images = [s.image for s in samples]
    with tempfile.TemporaryDirectory() as tmp:
        meta = export_onnx(run, Path(tmp) / "int8.onnx", "last", int8=True, data=data)
        backend, _ = load_onnx(Path(tmp) / "int8.onnx")
        int8 = Predictor(backend, config.data.input_size, 8, False, config.data.normalize, config.data.resize)
        probs = {"fp32": list(fp32(images)), "int8": list(int8(images))}  # each path predicts once
    same = sum(int((a.argmax(0) == b.argmax(0)).sum()) for a, b in zip(probs["fp32"], probs["int8"]))
    total = sum(image.size for image in images)
    results = {}
    for name, path_probs in probs.items():
        ev = summarise([evaluate_image(s.name, p, s.mask, scheme) for s, p in zip(samples, path_probs)], scheme)
        results[name] = {k: v for k, v in ev.to_dict()["per_image"]["dice"].items()
                         if k != "background" and v is not None}
    return {"run": str(run), "agreement": same / total, "export_agreement": float(meta["covseg_int8_agreement"]),
            **results}


def report_lines(rows: list[dict]) -> list[str]:
    """The printed report of :func:`check_run`'s rows: per run, then per class over the runs, then the share of
    pixels labelled alike, each share rounded down (:func:`covseg.wording.agreement_percent`): as ``.4%`` a
    share just under covseg's 99.9 % bar (0.99899996) read "99.9000%", and one under 1 "100.0000%"."""
    from covseg.wording import agreement_percent

    classes = [c for c in rows[0]["fp32"] if c != "mean_foreground"]
    lines = []
    for r in rows:
        cells = "  ".join(f"{c} {r['fp32'][c]:.4f} -> {r['int8'][c]:.4f} ({r['int8'][c] - r['fp32'][c]:+.4f})"
                          for c in classes)
        lines.append(f"{r['run']}: {cells}  same label {agreement_percent(r['agreement'], 4)} "
                     f"(export check {agreement_percent(r['export_agreement'], 4)})")
    for c in classes:
        d = [r["int8"][c] - r["fp32"][c] for r in rows]
        spread = f" ± {statistics.stdev(d):.4f} (sample std)" if len(d) > 1 else ""  # as covseg cv-compare
        lines.append(f"{c}: fp32 {statistics.mean(r['fp32'][c] for r in rows):.4f}, int8 "
                     f"{statistics.mean(r['int8'][c] for r in rows):.4f}, paired {statistics.mean(d):+.4f}{spread} "
                     f"({sum(x > 0 for x in d)} of {len(d)} up)")
    lines.append(f"same label: {agreement_percent(statistics.mean(r['agreement'] for r in rows), 4)} of the held-out "
                 f"pixels (mean over runs); min {agreement_percent(min(r['agreement'] for r in rows), 4)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    from covseg.errors import CovsegError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    try:  # a wrong run folder or data set: one line, not a traceback
        rows = [check_run(run, args.data) for run in args.runs]
    except CovsegError as error:
        raise SystemExit(f"int8_check: {error}")
    print("\n".join(report_lines(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
