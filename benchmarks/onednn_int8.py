"""The default U-Net in static int8 through PyTorch's own oneDNN kernels (AMX-INT8 / VNNI), beside covseg's bf16
path: speed, interleaved in one process, and labels against fp32 on a trained run's own slices. An experiment
(session 34), not a covseg path.

    python benchmarks/onednn_int8.py speed [--rounds 15]
    python benchmarks/onednn_int8.py agreement RUN_DIR [--calibration minmax|percentile]

The int8 network is built from the batch-norm-folded U-Net: every 3x3 convolution (ReLU fused) and the 1x1 head
run as ``torch.ops.onednn.qconv2d_pointwise`` on uint8 activations (per-tensor scale and zero point, calibrated
on the run's training slices: min-max, or the 0.001 % / 99.999 % quantiles) and int8 weights (per output
channel); each transposed convolution (kernel 2, stride 2) runs as a 1x1 int8 convolution to 4x the channels
and a pixel shuffle, in one quantization shared with the skip it is concatenated with (a range covering both
the encoder block's output and the up-sampling's, which may be negative), so the concatenation is of uint8
tensors; max-pooling takes the uint8 maps; the head writes fp32 logits. Needs a CPU with oneDNN int8
(x86 with AVX512-VNNI or AMX for speed).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

OP = torch.ops.onednn


def _qparams(low: float, high: float) -> tuple[float, int]:
    """uint8 scale and zero point covering [low, high] (widened to hold 0)."""
    low, high = min(low, 0.0), max(high, 1e-8)
    scale = (high - low) / 255.0
    return scale, max(0, min(255, round(-low / scale)))


class _QConv:
    """One int8 convolution: uint8 input of ``x_q`` (scale, zero point) -> uint8 of ``out_q``, or fp32 logits."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, x_q: tuple[float, int], padding: int,
                 x_shape: list[int], out_q: tuple[float, int] = (1.0, 0), relu: bool = True,
                 out_dtype: torch.dtype | None = None) -> None:
        w = weight.detach().float()
        self.w_scale = (w.abs().amax(dim=(1, 2, 3)) / 127.0).clamp_min(1e-12)
        qw = torch.round(w / self.w_scale[:, None, None, None]).clamp(-128, 127).to(torch.int8)
        self.padding = [padding, padding]
        self.w = OP.qconv_prepack(qw, self.w_scale, x_q[0], x_q[1], [1, 1], self.padding, [1, 1], 1, x_shape)
        self.w_zero = torch.zeros(w.shape[0], dtype=torch.int64)
        self.bias = None if bias is None else bias.detach().float()
        self.x_q, self.out_q, self.out_dtype = x_q, out_q, out_dtype
        self.attr = "relu" if relu else "none"

    def __call__(self, qx: torch.Tensor) -> torch.Tensor:
        return OP.qconv2d_pointwise(qx, self.x_q[0], self.x_q[1], self.w, self.w_scale, self.w_zero, self.bias,
                                    [1, 1], self.padding, [1, 1], 1, self.out_q[0], self.out_q[1], self.out_dtype,
                                    self.attr, [], "")


def _ranges(folded: torch.nn.Module, batches: list[torch.Tensor], quantile: float | None) -> dict[str, tuple]:
    """(low, high) of the input, of each block's two ReLU outputs and of each up-sampling's output."""
    stats: dict[str, tuple[float, float]] = {}

    def note(name: str, t: torch.Tensor) -> None:
        flat = t.detach().float().flatten()
        if quantile is None:
            low, high = float(flat.min()), float(flat.max())
        else:
            pick = torch.randint(0, flat.numel(), (min(flat.numel(), 4_000_000),),
                                 generator=torch.Generator().manual_seed(0))
            low, high = (float(v) for v in torch.quantile(flat[pick], torch.tensor([1 - quantile, quantile])))
        old = stats.get(name, (low, high))
        stats[name] = (min(old[0], low), max(old[1], high))

    hooks = []
    for kind, blocks in (("enc", folded.encoders), ("dec", folded.decoders)):
        for i, block in enumerate(blocks):
            for tag, relu in (("a", block[2]), ("b", block[5])):
                hooks.append(relu.register_forward_hook(lambda m, a, out, n=f"{kind}{i}.{tag}": note(n, out)))
    for i, up in enumerate(folded.upsamplers):
        hooks.append(up.register_forward_hook(lambda m, a, out, n=f"up{i}": note(n, out)))
    with torch.inference_mode():
        for x in batches:
            note("input", x)
            folded(x)
    for hook in hooks:
        hook.remove()
    return stats


def _pool(q: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling of a channels-last uint8 map, by strided maxima (PyTorch's uint8 max-pool refuses maps of
    more than 65535 values per image)."""
    rows = torch.maximum(q[:, :, 0::2], q[:, :, 1::2])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2]).contiguous(memory_format=torch.channels_last)


def check_plain_folded(folded: torch.nn.Module) -> None:
    """Refuse (``SystemExit``, one line) a network this script cannot take: anything but a covseg U-Net whose
    blocks are plain ``DoubleConv`` s with batch norm folded away (convolution, identity, ReLU, twice)."""
    from covseg.models.unet import DoubleConv, UNet

    blocks = [*getattr(folded, "encoders", []), *getattr(folded, "decoders", [])]
    plain = isinstance(folded, UNet) and blocks and all(
        type(b) is DoubleConv and len(b) == 6 and [type(m) for m in b] == [torch.nn.Conv2d, torch.nn.Identity,
                                                                            torch.nn.ReLU] * 2 for b in blocks)
    if not plain:
        raise SystemExit("onednn_int8: only a U-Net of plain blocks with batch norm (model.block=plain, "
                         "model.batch_norm=true, model.norm=batch) can be run in int8 here")


class Int8UNet:
    """A folded plain-block covseg U-Net (eval mode, batch norm folded) in int8; ``shape`` the batch shape the
    convolutions are prepared for. Call with ``(B, 1, H, W)`` fp32; returns ``(B, classes, H, W)`` fp32 logits."""

    def __init__(self, folded: torch.nn.Module, calibration: list[torch.Tensor], shape: tuple[int, ...],
                 quantile: float | None = None, float_tail: int = 0) -> None:
        check_plain_folded(folded)
        self.float_tail = float_tail
        stats = _ranges(folded, calibration, quantile)
        depth, (batch, _, height, width) = folded.depth, shape
        self.in_q = _qparams(*stats["input"])
        skip_q = {i: _qparams(min(stats[f"enc{i}.b"][0], stats[f"up{depth - 1 - i}"][0]),
                              max(stats[f"enc{i}.b"][1], stats[f"up{depth - 1 - i}"][1])) for i in range(depth)}
        self.encoders, x_q = [], self.in_q
        for i, block in enumerate(folded.encoders):
            h, w = height >> i, width >> i
            a_q = _qparams(*stats[f"enc{i}.a"])
            b_q = skip_q[i] if i < depth else _qparams(*stats[f"enc{i}.b"])
            self.encoders.append((
                _QConv(block[0].weight, block[0].bias, x_q, 1, [batch, block[0].in_channels, h, w], a_q),
                _QConv(block[3].weight, block[3].bias, a_q, 1, [batch, block[3].in_channels, h, w], b_q)))
            x_q = b_q
        self.decoders = []
        for j, (up, block) in enumerate(zip(folded.upsamplers, folded.decoders)):
            i = depth - 1 - j
            h, w = height >> i, width >> i
            # ConvTranspose2d(k=2, s=2): out[c, 2y+a, 2x+b] = sum_k W[k, c, a, b] in[k, y, x] + bias[c], i.e. a 1x1
            # convolution to channels (c, a, b) followed by a pixel shuffle
            weight = up.weight.detach()
            c_in, c_out = weight.shape[:2]
            as_1x1 = weight.permute(1, 2, 3, 0).reshape(c_out * 4, c_in, 1, 1)
            a_q, b_q = _qparams(*stats[f"dec{j}.a"]), _qparams(*stats[f"dec{j}.b"])
            self.decoders.append((
                _QConv(as_1x1, up.bias.detach().repeat_interleave(4), x_q, 0, [batch, c_in, h // 2, w // 2],
                       skip_q[i], relu=False),
                _QConv(block[0].weight, block[0].bias, skip_q[i], 1, [batch, block[0].in_channels, h, w], a_q),
                _QConv(block[3].weight, block[3].bias, a_q, 1, [batch, block[3].in_channels, h, w], b_q)))
            x_q = b_q
        if float_tail:  # the last step(s) in float: the last decoder's second convolution writes fp32 (tail 2) or
            # bf16 (tail 1), the head runs as a float 1x1 convolution
            last = self.decoders[-1][2]
            last.out_q, last.out_dtype = (1.0, 0), torch.float32 if float_tail >= 2 else torch.bfloat16
            self.float_head = (folded.head.weight.detach().to(last.out_dtype).contiguous(memory_format=torch.channels_last),
                               folded.head.bias.detach().to(last.out_dtype))
        self.head = _QConv(folded.head.weight, folded.head.bias, x_q, 0, [batch, folded.head.in_channels, height,
                                                                          width], relu=False, out_dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = self.in_q
        q = (x / scale + zero).round_().clamp_(0, 255).to(torch.uint8).contiguous(memory_format=torch.channels_last)
        skips = []
        for k, (first, second) in enumerate(self.encoders):
            q = second(first(q))
            if k < len(self.encoders) - 1:
                skips.append(q)
                q = _pool(q)
        for up, first, second in self.decoders:
            upsampled = F.pixel_shuffle(up(q), 2).contiguous(memory_format=torch.channels_last)
            q = second(first(torch.cat([upsampled, skips.pop()], 1)))
        if self.float_tail:
            return F.conv2d(q, *self.float_head).float()
        return self.head(q)


def batch_line(split: str, batch: int, int8: float, bf16: float, bar: float) -> str:
    """One batch's agreement with fp32 (int8 flagged when under ``bar``), each share rounded down
    (:func:`covseg.wording.agreement_percent`): as ``.4%`` an int8 share just under the bar (0.99899996) read
    "99.9000% (< bar)", and one under 1 "100.0000%"."""
    from covseg.wording import agreement_percent

    return (f"{split:8s} batch of {batch}: int8 {agreement_percent(int8, 4)}{' (< bar)' if int8 < bar else ''}, "
            f"bf16 {agreement_percent(bf16, 4)}")


def _speed(rounds: int, float_tail: int = 0) -> None:
    from covseg.bench import build_bench_model
    from covseg.inference import label_agreement
    from covseg.models import fold_batch_norm, fuse_for_inference
    from covseg.runtime import keep_freed_memory
    from covseg.wording import agreement_percent

    keep_freed_memory()
    torch.manual_seed(0)
    folded = fold_batch_norm(build_bench_model("unet16")).to(memory_format=torch.channels_last)
    fused = fuse_for_inference(folded, torch.bfloat16, torch.device("cpu"))
    x = torch.rand(8, 1, 512, 512).contiguous(memory_format=torch.channels_last)
    int8 = Int8UNet(folded, [x[:2]], tuple(x.shape), float_tail=float_tail)

    def bf16() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            return fused(x).float()

    def quantized() -> torch.Tensor:
        with torch.inference_mode():
            return int8(x)

    with torch.inference_mode():
        reference = folded(x)
    print("random weights and input: labels alike with fp32, "
          f"bf16 {agreement_percent(label_agreement(bf16(), reference), 4)}, "
          f"int8 {agreement_percent(label_agreement(quantized(), reference), 4)}")
    times: dict[str, list[float]] = {"bf16 (covseg's path)": [], "int8 (oneDNN)": []}
    runs = list(zip(times.values(), (bf16, quantized)))
    for round_ in range(rounds):  # the order flips every round; each timed pass follows an untimed one of its own
        for record, run in runs[::1 if round_ % 2 else -1]:
            for _ in range(2):
                tick = time.perf_counter()
                run()
            record.append(1000 * (time.perf_counter() - tick) / 8)
    medians = [statistics.median(t) for t in times.values()]
    print(f"unet16, 512x512, batch 8, {rounds} interleaved rounds (each timed pass after an untimed one), "
          f"{torch.get_num_threads()} threads; ms per slice")
    for (name, t), median in zip(times.items(), medians):
        print(f"{name:22s} median {median:6.1f}  min {min(t):6.1f}  max {max(t):6.1f}")
    print(f"int8 / bf16 speed: {medians[0] / medians[1]:.2f}x")


def _agreement(run: Path, quantile: float | None, float_tail: int = 0) -> None:
    from covseg.checkpoint import load_model
    from covseg.errors import CovsegError
    from covseg.experiment import select_samples
    from covseg.inference import BF16_MIN_AGREEMENT, label_agreement, network_input
    from covseg.models import fold_batch_norm, fuse_for_inference
    from covseg.run import read_run_info

    try:
        model, config, _ = load_model(run, "best")
        data = read_run_info(run)["data"]
    except CovsegError as error:
        raise SystemExit(f"onednn_int8: {error}")
    folded = fold_batch_norm(model.eval()).to(memory_format=torch.channels_last)
    check_plain_folded(folded)
    fused = fuse_for_inference(folded, torch.bfloat16, torch.device("cpu"))

    def batches(split: str) -> list[torch.Tensor]:
        images = [s.image for s in select_samples(run, data, config.data.task, split, config.data.window)]
        return [network_input(images[i:i + 8], config.data.input_size, config.data.normalize, config.data.resize)
                .contiguous(memory_format=torch.channels_last) for i in range(0, len(images), 8)]

    train = batches("train")
    int8 = Int8UNet(folded, train, tuple(train[0].shape), quantile, float_tail)
    for split, xs in (("train", train), ("heldout", batches("heldout"))):
        for x in xs:
            with torch.inference_mode():
                reference = folded(x)
                low = int8(x)
                with torch.autocast("cpu", torch.bfloat16):
                    half = fused(x).float()
            a8, a16 = label_agreement(low, reference), label_agreement(half, reference)
            print(batch_line(split, x.shape[0], a8, a16, BF16_MIN_AGREEMENT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    speed = sub.add_parser("speed")
    speed.add_argument("--rounds", type=int, default=15)
    agree = sub.add_parser("agreement")
    agree.add_argument("run", type=Path)
    agree.add_argument("--calibration", choices=("minmax", "percentile"), default="minmax")
    for sub_parser in (speed, agree):
        sub_parser.add_argument("--float-tail", type=int, choices=(0, 1, 2), default=0,
                                help="1: the last decoder convolution writes bf16 and the head runs in bf16; 2: fp32")
    args = parser.parse_args(argv)
    if args.what == "speed" and args.rounds < 1:  # before any work: no median of no rounds
        raise SystemExit(f"onednn_int8: --rounds must be 1 or more, not {args.rounds}")
    if not hasattr(OP, "qconv2d_pointwise"):
        raise SystemExit("onednn_int8: this PyTorch has no oneDNN int8 convolution (torch.ops.onednn)")
    if args.what == "speed":
        _speed(args.rounds, args.float_tail)
    else:
        _agreement(args.run, None if args.calibration == "minmax" else 0.99999, args.float_tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
