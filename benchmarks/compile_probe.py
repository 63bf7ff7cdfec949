"""Is torch.compile worth it for covseg's bf16 CPU inference? Times, interleaved in one process, covseg's own bf16
path (batch norm folded, convolution + ReLU fused: ``covseg.models.fuse_for_inference``) against ``torch.compile``
(inductor, ``freezing`` and weight prepacking on) of the folded network under the same bf16 autocast, on random
weights at 512x512, batch 8; each timed pass right after an untimed one, the order flipped every round.
Prints the compile time, the two networks' largest logit difference and label agreement, and each network's
median ms per slice. Usage: ``python benchmarks/compile_probe.py [MODEL] [ROUNDS]`` (defaults unet16, 12; MODEL
one of covseg.bench's names). Session 75, benchmarks/RESULTS.md ("An AMX Xeon of model 167")."""
import statistics, sys, time, torch
from covseg.bench import build_bench_model
from covseg.inference import label_agreement
from covseg.models import fold_batch_norm, fuse_for_inference
from covseg.runtime import autocast, keep_freed_memory
from covseg.wording import agreement_percent


def logits_line(compiled: torch.Tensor, fused: torch.Tensor) -> str:
    """The two networks' logits compared: largest difference and share of labels alike, counted exactly
    (:func:`covseg.inference.label_agreement`) and rounded down (:func:`covseg.wording.agreement_percent`): a
    float32 mean printed ``.5f`` read a few pixels differing among a batch's 2,097,152 as "1.00000"."""
    return (f"max |diff| {float((compiled.float() - fused.float()).abs().max()):.4f}; "
            f"label agreement {agreement_percent(label_agreement(compiled, fused))}")


def main() -> None:
    """Compile, compare the logits, time the two networks (the module's docstring)."""
    import torch._inductor.config as ic  # here: a slow import, not needed for logits_line
    keep_freed_memory()
    torch.manual_seed(0)
    dev = torch.device("cpu"); dt = torch.bfloat16
    name = sys.argv[1] if len(sys.argv) > 1 else "unet16"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    m = build_bench_model(name).eval().to(memory_format=torch.channels_last)
    folded = fold_batch_norm(m).to(memory_format=torch.channels_last).eval()
    fused = fuse_for_inference(folded, dt, dev)
    ic.freezing = True
    ic.cpp.weight_prepack = True
    t0 = time.time()
    comp = torch.compile(fold_batch_norm(m).to(memory_format=torch.channels_last).eval())
    x = torch.rand(8, 1, 512, 512).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(dev, dt):
        yc = comp(x); yf = fused(x)
    print(f"compile {time.time()-t0:.1f} s; {logits_line(yc, yf)}", flush=True)
    nets = {"covseg-fused": fused, "compiled": comp}
    times = {k: [] for k in nets}
    for r in range(rounds):
        order = list(nets) if r % 2 == 0 else list(nets)[::-1]
        for k in order:
            with torch.inference_mode(), autocast(dev, dt):
                nets[k](x)  # untimed
                s = time.perf_counter(); nets[k](x); times[k].append((time.perf_counter() - s) * 1000 / 8)
    for k, v in times.items():
        print(f"{k}: median {statistics.median(v):.1f} ms/slice (min {min(v):.1f}, max {max(v):.1f})")
    ratio = statistics.median(times["covseg-fused"]) / statistics.median(times["compiled"])
    print(f"ratio fused/compiled: {ratio:.2f}x")


if __name__ == "__main__":
    main()
