"""A 300-slice scan's inference, fp32 against int8: 300 random 512×512 slices through covseg's Predictor, three
rounds alternating the fp32 path (``TorchBackend`` in fp32, run by ONNX Runtime, as ``covseg predict`` on a CPU when
bf16 is refused) and an int8 file from ``covseg export RUN --int8``.

    python benchmarks/scan_int8.py RUN_DIR model-int8.onnx [--slices 300] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    from covseg.checkpoint import load_model
    from covseg.errors import CovsegError
    from covseg.export import load_onnx
    from covseg.inference import Predictor, TorchBackend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for option, value in (("--slices", args.slices), ("--rounds", args.rounds)):
        if value < 1:
            raise SystemExit(f"scan_int8: {option} must be 1 or more, not {value}")
    try:  # a wrong run folder or ONNX file: one line, not a traceback
        model, config, _ = load_model(args.run, "last")
        int8_backend = load_onnx(args.int8)[0]
    except CovsegError as error:
        raise SystemExit(f"scan_int8: {error}")
    options = dict(normalize=config.data.normalize, resize=config.data.resize)
    paths = {"fp32": Predictor(TorchBackend(model, torch.device("cpu"), torch.float32, "onnxruntime"),
                               config.data.input_size, 8, **options),
             "int8": Predictor(int8_backend, config.data.input_size, 8, **options)}
    rng = np.random.default_rng(0)
    images = [rng.random((512, 512), dtype=np.float32) for _ in range(args.slices)]
    for predictor in paths.values():  # warm-up (and the fp32 path's tracing)
        list(predictor(images[:8]))
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, predictor in paths.items():
            tick = time.perf_counter()
            for _ in predictor(images):
                pass
            times[name].append(time.perf_counter() - tick)
    for name, seconds in times.items():
        print(f"{name}: {' / '.join(f'{s:.2f}' for s in seconds)} s, median {statistics.median(seconds):.2f} s "
              f"({paths[name].backend.description})")
    print(f"fp32 / int8: {statistics.median(times['fp32']) / statistics.median(times['int8']):.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
