"""Device and precision requests: explained refusals, fallback only when asked."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covseg import runtime
from covseg.errors import CovsegError
from covseg.runtime import resolve_device, resolve_precision


def test_cuda_without_gpu_is_refused_and_auto_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CovsegError, match="no GPU is visible.*--device cpu or auto"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(CovsegError, match="unknown device"):
        resolve_device("tpu")


def test_bf16_without_support_is_refused_and_auto_uses_fp32(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    cpu = torch.device("cpu")
    with pytest.raises(CovsegError, match="no fast bf16 support"):
        resolve_precision("bf16", cpu)
    assert resolve_precision("auto", cpu) == torch.float32
    assert resolve_precision("fp32", cpu) == torch.float32
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == torch.bfloat16


def test_emulated_bf16_on_a_gpu_is_not_taken_for_fast_bf16(monkeypatch) -> None:
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:  # a T4: bf16 emulated, not native
        asked.append(including_emulation)
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu) == torch.float32 and asked == [False]
    with pytest.raises(CovsegError, match="cuda has no fast bf16 support"):
        resolve_precision("bf16", gpu)


@pytest.mark.parametrize("capability, expected", [("AVX512", torch.channels_last), ("AVX2", torch.contiguous_format),
                                                  ("DEFAULT", torch.channels_last), ("SVE256", torch.channels_last)])
def test_training_memory_format_follows_the_cpu(monkeypatch, capability: str, expected: torch.memory_format) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert runtime.training_memory_format(torch.device("cpu")) == expected
    assert runtime.training_memory_format(torch.device("cuda")) == torch.channels_last


_STEP_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from covseg.runtime import keep_freed_memory
    if not keep_freed_memory():
        raise SystemExit(3)  # this glibc refuses the settings
from covseg.models import create_model
torch.manual_seed(0)
model = create_model("unet", width=8, depth=3)
x, y = torch.rand(4, 1, 256, 256), torch.randint(0, 2, (4, 256, 256))
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(sum([step() for _ in range(4)][2:]))
"""


def _transparent_huge_pages_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.skipif(_transparent_huge_pages_always(), reason="with huge pages one fault maps 2 MiB: too few to count")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_training_steps() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def faults(mode: str) -> int:  # page faults in steps 3 and 4 of a small U-Net's training, in a fresh process
        done = subprocess.run([sys.executable, "-c", _STEP_FAULTS, mode], capture_output=True, text=True, env=env)
        if done.returncode == 3:
            pytest.skip("this glibc refuses keep_freed_memory's settings")
        assert done.returncode == 0, done.stderr
        return int(done.stdout.split()[-1])

    default = faults("default")
    assert default > 20_000  # glibc maps each large block afresh: its pages fault (and are zero-filled) every step
    # freed blocks are reused: usually 0-4096 faults against the default's 45 000-65 000. The better of two runs,
    # and a bar of a quarter of the default: a stray thread-pool or page-cache fault burst once put a run at 7168
    # against a bar of a tenth (6845), and a fresh clone's CI at 5120 in both runs against 4493
    assert faults("keep") < default / 4 or faults("keep") < default / 4  # the second run only where the first missed


def test_keep_freed_memory_changes_nothing_without_glibc(monkeypatch) -> None:
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.keep_freed_memory() is False


def _fake_x86_cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    """An x86 CPU whose oneDNN reports bf16 support, with or without AVX512-BF16 and AMX instructions."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, False), (True, False, True),
                                                        (False, True, True)])
def test_emulated_bf16_on_an_avx512_cpu_is_not_taken_for_fast_bf16(monkeypatch, avx512_bf16: bool, amx: bool,
                                                                   expected: bool) -> None:
    # oneDNN says yes on any AVX-512 x86 CPU (Skylake, Cascade Lake, Ice Lake emulate bf16, 1.8x slower than fp32)
    _fake_x86_cpu(monkeypatch, avx512_bf16, amx)
    assert runtime.cpu_supports_bf16() is expected
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # elsewhere oneDNN's own answer stands
    assert runtime.cpu_supports_bf16() is True


@pytest.mark.parametrize("variable", ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"])
@pytest.mark.parametrize("cap, expected", [("AVX512_CORE", False), ("avx2", False), ("AVX512_CORE_VNNI", False),
                                           ("SSE41", False), ("ALL", True), ("all", True), ("AVX512_CORE_BF16", True),
                                           ("AVX512_CORE_AMX", True), ("avx512_core_amx_fp16", True),
                                           ("AVX10_1_512_AMX", True), ("", True)])
def test_bf16_on_a_cpu_with_onednn_capped_below_bf16_is_not_taken_for_fast_bf16(monkeypatch, variable: str, cap: str,
                                                                                expected: bool) -> None:
    # an AMX CPU whose oneDNN is capped at AVX512_CORE emulates bf16 (1.8x slower than fp32); it said native before
    _fake_x86_cpu(monkeypatch, avx512_bf16=True, amx=True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv(variable, cap)
    assert runtime.cpu_supports_bf16() is expected


@pytest.mark.parametrize("cap, expected", [("DEFAULT", True), ("default", True), ("AVX512_CORE_FP16", True),
                                           ("avx512_core_fp16", True), ("AVX512_CORE_VNNI", False),
                                           ("AVX2_VNNI_2", False)])
def test_onednn_caps_at_or_above_avx512_core_bf16_allow_fast_bf16(monkeypatch, cap: str, expected: bool) -> None:
    # DEFAULT is no cap and AVX512_CORE_FP16 lies above AVX512_CORE_BF16 in oneDNN's ISA order: both were taken for
    # a cap below bf16; AVX2_VNNI_2 (an AVX2 ISA) and AVX512_CORE_VNNI stay below it
    _fake_x86_cpu(monkeypatch, avx512_bf16=True, amx=True)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert runtime._onednn_isa_allows_bf16() is expected
    assert runtime.cpu_supports_bf16() is expected


def test_onednn_max_cpu_isa_wins_over_dnnl_max_cpu_isa(monkeypatch) -> None:
    _fake_x86_cpu(monkeypatch, avx512_bf16=True, amx=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "ALL")
    assert runtime.cpu_supports_bf16() is False  # oneDNN reads ONEDNN_ first
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert runtime.cpu_supports_bf16() is True


@pytest.mark.parametrize("env, message", [({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
                                          ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT "
                                                                "are not: start the run with torchrun"),
                                          ({"WORLD_SIZE": "2", "RANK": "x", "MASTER_ADDR": "127.0.0.1",
                                            "MASTER_PORT": "29500"}, "RANK='x' is not a whole number")])
def test_a_torchrun_environment_that_is_not_one_is_refused_in_one_line(monkeypatch, env: dict, message: str) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(CovsegError, match=message):
        runtime.init_distributed(torch.device("cpu"))


def _cgroup_tree(root: Path, files: dict[str, str], membership: str) -> Path:
    """A fake cgroup file system under ``root`` (``files``: path under root -> contents) and a /proc/self/cgroup."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "self-cgroup").write_text(membership)
    return root / "self-cgroup"


def test_cgroup_cpu_limit_reads_v2_and_v1_quotas_the_tightest_rounded_down(tmp_path: Path) -> None:
    limit = runtime.cgroup_cpu_limit
    v2 = tmp_path / "v2"  # docker --cpus 2.5 under a parent limited to 4 (cgroup v2, no cgroup namespace)
    member = _cgroup_tree(v2, {"cpu.max": "max 100000\n", "kube/cpu.max": "400000 100000\n",
                               "kube/pod/cpu.max": "250000 100000\n"}, "0::/kube/pod\n")
    assert limit(v2, member) == 2  # 2.5 cores: two threads, not three (a third would be throttled)
    (v2 / "kube/cpu.max").write_text("150000 100000\n")  # the parent's quota is tighter: it wins
    assert limit(v2, member) == 1
    (v2 / "kube/cpu.max").write_text("max 100000\n")
    (v2 / "kube/pod/cpu.max").write_text("50000 100000\n")  # half a core: still one thread
    assert limit(v2, member) == 1
    (v2 / "kube/pod/cpu.max").write_text("max 100000\n")
    assert limit(v2, member) is None  # no quota anywhere
    (v2 / "kube/pod/cpu.max").write_text("garbage\n")
    assert limit(v2, member) is None  # an unreadable file is no quota, not an error

    v1 = tmp_path / "v1"  # cgroup v1: the cpu controller mounted with cpuacct; the quota at the container's root
    member = _cgroup_tree(v1, {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
                               "memory/x": ""}, "4:memory:/a\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    assert limit(v1, member) == 3
    (v1 / "cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")
    assert limit(v1, member) is None
    assert limit(tmp_path / "none", tmp_path / "no-such-file") is None  # not Linux, no /proc


def test_fit_threads_to_cpu_quota_lowers_torch_threads_only_under_a_tighter_quota(tmp_path: Path, monkeypatch) -> None:
    member = _cgroup_tree(tmp_path, {"cpu.max": "100000 100000\n"}, "0::/\n")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert runtime.fit_threads_to_cpu_quota(tmp_path, member) == 1 and torch.get_num_threads() == 1
        assert runtime.fit_threads_to_cpu_quota(tmp_path, member) is None  # already within the quota
        torch.set_num_threads(4)
        monkeypatch.setenv("OMP_NUM_THREADS", "4")  # the user's explicit choice stands
        assert runtime.fit_threads_to_cpu_quota(tmp_path, member) is None and torch.get_num_threads() == 4
        monkeypatch.delenv("OMP_NUM_THREADS")
        (tmp_path / "cpu.max").write_text("800000 100000\n")  # 8 cores allowed: more than torch starts
        assert runtime.fit_threads_to_cpu_quota(tmp_path, member) is None and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)
