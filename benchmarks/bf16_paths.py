"""bf16 inference of the default U-Net three ways, interleaved in one process: the trained model, batch norm
folded, and folded with each convolution + ReLU one oneDNN call (covseg's path on CPUs with native bf16), beside
fp32 NCHW. Interleaving puts every network through the same machine noise (after one untimed warm-up call each, in
an order reversed every other round); the medians and ratios are the figures.

    python benchmarks/bf16_paths.py [--size 512] [--batch 8] [--rounds 12] [--model unet16]

Freed memory is kept for reuse (as the ``covseg`` program does) for every network, fp32 included, so the fp32 row
is not the bench's fp32-naive (which runs with glibc's defaults).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from covseg.bench import MODELS, build_bench_model
    from covseg.models import fold_batch_norm, fuse_conv_relu_bf16
    from covseg.runtime import cpu_supports_bf16, keep_freed_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--model", default="unet16", choices=MODELS)
    args = parser.parse_args(argv)
    if args.rounds < 1:  # before any warm-up work: no median of no rounds
        raise SystemExit(f"bf16_paths: --rounds must be 1 or more, not {args.rounds}")
    if not cpu_supports_bf16():
        raise SystemExit("bf16_paths: this CPU has no native bf16 (AVX512-BF16 or AMX); nothing to compare")
    keep_freed_memory()
    torch.manual_seed(0)
    fp32 = build_bench_model(args.model)
    trained = copy.deepcopy(fp32).to(memory_format=torch.channels_last)
    folded = fold_batch_norm(trained).to(memory_format=torch.channels_last)
    fused = fuse_conv_relu_bf16(folded)
    x = torch.rand(args.batch, 1, args.size, args.size)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def bf16(network: torch.nn.Module):
        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
                return network(x_cl).float()
        return run

    def run_fp32() -> torch.Tensor:
        with torch.no_grad():
            return fp32(x)

    runs = {"fp32, NCHW": run_fp32, "bf16, trained model": bf16(trained), "bf16, batch norm folded": bf16(folded),
            "bf16, folded + conv-ReLU fused": bf16(fused)}
    for run in runs.values():  # one untimed call each: oneDNN primitive creation, first-touch allocations
        run()
    same = torch.equal(runs["bf16, batch norm folded"](), runs["bf16, folded + conv-ReLU fused"]())
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = list(runs.items())
    for round_ in range(args.rounds):  # the order flips every round, so no network always follows the same one
        for name, run in order[::1 if round_ % 2 == 0 else -1]:
            tick = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - tick) / args.batch)
    medians = {name: statistics.median(t) for name, t in times.items()}
    trained_ms = medians["bf16, trained model"]
    print(f"{args.model}, {args.size}x{args.size}, batch {args.batch}, {args.rounds} interleaved rounds (order "
          "reversed every other round, after one untimed call each), "
          f"{torch.get_num_threads()} threads; ms per slice")
    for name, t in times.items():
        print(f"{name:32s} median {medians[name]:7.1f}  min {min(t):7.1f}  max {max(t):7.1f}  "
              f"x trained bf16 {trained_ms / medians[name]:.2f}")
    print(f"fused logits equal folded logits bit for bit: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
