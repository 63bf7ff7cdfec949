"""Is torch.compile worth it for covseg's bf16 CPU inference? Times, interleaved in one process, covseg's own bf16
path (batch norm folded, convolution + ReLU fused: ``covseg.models.fuse_for_inference``) against ``torch.compile``
(inductor, ``freezing`` and weight prepacking on) of the folded network under the same bf16 autocast, on random
weights at 512x512, batch 8; each timed pass right after an untimed one, the order flipped every round.
Prints the compile time, the two networks' largest logit difference and label agreement, and each network's
median ms per slice. Usage: ``python benchmarks/compile_probe.py [MODEL] [ROUNDS]`` (defaults unet16, 12; MODEL
one of covseg.bench's names). Session 75, benchmarks/RESULTS.md ("An AMX Xeon of model 167")."""
import statistics, sys, time, torch
from covseg.bench import build_bench_model
from covseg.models import fold_batch_norm, fuse_for_inference
from covseg.runtime import autocast, keep_freed_memory
import torch._inductor.config as ic

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
print(f"compile {time.time()-t0:.1f} s; max |diff| {float((yc.float()-yf.float()).abs().max()):.4f}; "
      f"label agreement {float((yc.argmax(1)==yf.argmax(1)).float().mean()):.5f}", flush=True)
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
print(f"ratio fused/compiled: {statistics.median(times['covseg-fused'])/statistics.median(times['compiled']):.2f}x")
