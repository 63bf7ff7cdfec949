"""bf16 against fp32 labels on a trained run's own slices, batch by batch, for the two bf16 networks covseg's
``TorchBackend`` may keep: the trained model, and its batch-norm-folded copy (fused where the CPU has native bf16;
the same logits as folded). fp32 is the folded copy in PyTorch, as the backend's reference. Prints, per network,
the share of pixels labelled alike in each batch of 8 (the backend checks the first) and how many reach
``BF16_MIN_AGREEMENT``.

    python benchmarks/bf16_check.py RUN_DIR [--split all|heldout|train] [--which last|best] [--data DIR]

``--which`` names the checkpoint: ``last`` (default) as ``covseg evaluate`` scores a run, ``best`` as ``covseg
predict`` and the bench's scan take one.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch


def summary_line(name: str, values: list[float], bar: float) -> str:
    """One network's line: its batches' agreement shares (median, min, each) and how many reach ``bar``, each
    share rounded down (:func:`covseg.wording.agreement_percent`): one just under the bar never reads as it
    (0.99899996 as ``.4%`` read "99.9000%" beside a count that left it out), one under 1 never as 100 %."""
    from covseg.wording import agreement_percent

    passing = sum(a >= bar for a in values)
    return (f"{name:8s} {len(values)} batches: median {agreement_percent(statistics.median(values), 4)}, "
            f"min {agreement_percent(min(values), 4)}, {passing} of {len(values)} >= {bar:.1%}: "
            + " ".join(agreement_percent(a, 4) for a in values))


def main(argv: list[str] | None = None) -> int:
    from covseg.checkpoint import load_model
    from covseg.errors import CovsegError
    from covseg.experiment import select_samples
    from covseg.inference import BF16_MIN_AGREEMENT, label_agreement, network_input
    from covseg.models import fold_batch_norm, fuse_conv_relu_bf16
    from covseg.run import read_run_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="all", choices=("all", "heldout", "train", "val"))
    parser.add_argument("--which", default="last", choices=("last", "best"))
    parser.add_argument("--data")
    args = parser.parse_args(argv)
    try:  # a wrong run folder or data set: one line, not a traceback
        model, config, _ = load_model(args.run, args.which)
        data = args.data or read_run_info(args.run)["data"]
        images = [s.image for s in select_samples(args.run, data, config.data.task, args.split, config.data.window)]
    except CovsegError as error:
        raise SystemExit(f"bf16_check: {error}")
    model = model.eval().to(memory_format=torch.channels_last)
    folded = fold_batch_norm(model).to(memory_format=torch.channels_last)
    networks = {"trained": model, "folded": fuse_conv_relu_bf16(folded)}
    agreement: dict[str, list[float]] = {name: [] for name in networks}
    for start in range(0, len(images), 8):
        x = network_input(images[start:start + 8], config.data.input_size, config.data.normalize, config.data.resize)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            reference = folded(x).float()
            with torch.autocast("cpu", torch.bfloat16):
                for name, network in networks.items():
                    agreement[name].append(label_agreement(network(x).float(), reference))
    for name, values in agreement.items():
        print(summary_line(name, values, BF16_MIN_AGREEMENT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
