"""Edge cases of covseg.intensity and covseg.runtime that mutation testing found unpinned (hand-computed values)."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from covseg import intensity, runtime
from covseg.errors import CovsegError
from covseg.intensity import (equalize, fill_non_finite, grey_quantiles, normalize_image, raw_ct_warning,
                              scale_stored_grey, stretch_percentiles, to_unit_range)


# ---------------------------------------------------------------- intensity


def test_fill_non_finite_counts_the_filled_voxels_and_fills_only_them() -> None:
    data = np.array([[np.nan, -800.0], [40.0, -1000.0], [-np.inf, 7.0]], np.float32)
    out, message = fill_non_finite(data, "ct.tif")
    # two non-finite voxels (of six) set to the finite minimum, -1000; the four finite ones untouched
    np.testing.assert_array_equal(out, [[-1000.0, -800.0], [40.0, -1000.0], [-1000.0, 7.0]])
    assert out.dtype == np.float32
    assert message == "ct.tif: 2 NaN/infinite voxels were set to -1000"


def test_scale_stored_grey_by_hand_and_clipped() -> None:
    np.testing.assert_allclose(scale_stored_grey(np.array([0, 51, 255], np.uint8)), [0.0, 0.2, 1.0], atol=1e-7)
    np.testing.assert_allclose(scale_stored_grey(np.array([0, 13107, 65535], np.uint16)), [0.0, 0.2, 1.0],
                               atol=1e-7)
    # Pillow's 16-bit mode "I" (signed 32-bit): / 65535, clipped to [0, 1] even past the 16-bit range
    np.testing.assert_allclose(scale_stored_grey(np.array([-5, 65535, 70000], np.int32), sixteen_bit=True),
                               [0.0, 1.0, 1.0])
    assert scale_stored_grey(np.array([0, 13107], np.int16)) is None  # signed samples: may be HU
    assert scale_stored_grey(np.array([0.5], np.float32)) is None


def test_raw_ct_warning_of_empty_16_bit_data_is_none() -> None:
    assert raw_ct_warning(np.zeros((0, 4), np.uint16), "empty.png") is None


def test_raw_ct_warning_for_data_starting_above_zero_names_both_ends() -> None:
    message = raw_ct_warning(np.array([[24, 1000]], np.uint16), "ct.png")
    assert message is not None and message.startswith("ct.png: 16-bit values 24..1000 ")


def test_to_unit_range_of_flat_or_empty_data_outside_0_to_255() -> None:
    flat = to_unit_range(np.full((2, 3), -5.0), is_hu=False)  # min == max: zeros, not 0 / 0
    assert flat.shape == (2, 3) and flat.dtype == np.float32 and not flat.any() and np.isfinite(flat).all()
    empty = to_unit_range(np.zeros((0, 3)), is_hu=False)
    assert empty.shape == (0, 3) and empty.dtype == np.float32


def test_to_unit_range_reads_uint8_as_8_bit_grey_even_when_it_stays_within_0_to_1() -> None:
    # a dark 8-bit slice holding only 0 and 1 is grey 0 and 1/255, not a [0, 1] image
    np.testing.assert_allclose(to_unit_range(np.array([[0, 1], [1, 0]], np.uint8), is_hu=False),
                               [[0.0, 1 / 255], [1 / 255, 0.0]], atol=1e-7)


def test_to_unit_range_keeps_whole_valued_float_data_in_0_to_1_as_it_is() -> None:
    # a float slice holding only 0 and 1 (or all 0) is [0, 1] data, not 8-bit grey to be divided by 255
    np.testing.assert_array_equal(to_unit_range(np.array([0.0, 1.0, 1.0]), is_hu=False), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(to_unit_range(np.array([1.0, 1.0]), is_hu=False), [1.0, 1.0])


def test_to_unit_range_overshoot_bound_is_2_inclusive_and_for_fractional_data_only() -> None:
    # fractional data reaching exactly 2: [0, 1] data with an overshoot, clipped
    np.testing.assert_allclose(to_unit_range(np.array([0.5, 2.0]), is_hu=False), [0.5, 1.0], atol=1e-7)
    # fractional data reaching 2.5: 8-bit grey, / 255
    np.testing.assert_allclose(to_unit_range(np.array([0.5, 2.5]), is_hu=False), [0.5 / 255, 2.5 / 255], atol=1e-7)
    # whole numbers up to 2: 8-bit grey too (a very dark slice), / 255, not clipped
    np.testing.assert_allclose(to_unit_range(np.array([0.0, 1.0, 2.0]), is_hu=False), [0.0, 1 / 255, 2 / 255],
                               atol=1e-7)


def test_to_unit_range_windows_hu_with_the_window_given() -> None:
    # level 40, width 400 (a soft-tissue window): -160 -> 0, 40 -> 0.5, 240 -> 1
    np.testing.assert_allclose(to_unit_range(np.array([-160.0, 40.0, 240.0]), is_hu=True, window=(40.0, 400.0)),
                               [0.0, 0.5, 1.0], atol=1e-6)


def test_equalize_puts_a_grey_level_of_exactly_1_in_the_last_bin() -> None:
    # 0.9995 and 1.0 share the last of 1024 bins ([1023/1024, 1]): one level of two pixels, mid-rank 0.5 each
    np.testing.assert_allclose(equalize(np.array([0.9995, 1.0], np.float32)), [0.5, 0.5])
    # and 0.5 / 0.5009 share bin 512 of 1024 (with 2048 bins they would not)
    np.testing.assert_allclose(equalize(np.array([0.0, 0.5, 0.5009, 0.9], np.float32)), [0.125, 0.5, 0.5, 0.875])


def test_equalize_of_an_empty_image_is_empty_and_quiet() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0 on the way
        out = equalize(np.zeros((0, 2), np.float32))
    assert out.shape == (0, 2) and out.dtype == np.float32


def test_stretch_percentiles_of_an_empty_image() -> None:
    out = stretch_percentiles(np.zeros((0, 5), np.float64))
    assert out.shape == (0, 5) and out.dtype == np.float32


def test_normalize_image_none_returns_float32() -> None:
    out = normalize_image(np.array([[0.25, 0.5]], np.float64), "none")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.25, 0.5]])


def test_grey_quantiles_default_levels_are_0_to_1_in_steps_of_1_256() -> None:
    assert intensity.QUANTILE_LEVELS == 257
    ramp = np.linspace(0.0, 1.0, 257).reshape(1, -1)
    reference = grey_quantiles([ramp])
    assert reference.shape == (257,)
    np.testing.assert_allclose(reference, np.arange(257) / 256, atol=1e-12)


# ---------------------------------------------------------------- runtime


def test_a_numbered_cuda_device_is_refused_without_a_gpu_and_kept_with_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(CovsegError, match="no GPU is visible"):
        runtime.resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert runtime.resolve_device("cpu") == torch.device("cpu")


def _x86(monkeypatch, machine: str = "x86_64", mkldnn: bool = True, avx512_bf16: bool = False,
         amx: bool = False) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_cpu_bf16_needs_onednn_support_first(monkeypatch) -> None:
    _x86(monkeypatch, machine="aarch64", mkldnn=False)
    assert runtime.cpu_supports_bf16() is False
    _x86(monkeypatch, machine="x86_64", mkldnn=False, avx512_bf16=True, amx=True)
    assert runtime.cpu_supports_bf16() is False


@pytest.mark.parametrize("machine", ["AMD64", "i386", "i686"])
def test_every_x86_name_needs_native_bf16_instructions(monkeypatch, machine: str) -> None:
    _x86(monkeypatch, machine=machine)  # plain AVX-512: oneDNN says yes, but bf16 is emulated
    assert runtime.cpu_supports_bf16() is False
    _x86(monkeypatch, machine=machine, avx512_bf16=True)
    assert runtime.cpu_supports_bf16() is True


def test_a_torch_without_the_cpu_probes_says_no_bf16(monkeypatch) -> None:
    _x86(monkeypatch)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert runtime.cpu_supports_bf16() is False


def test_an_onednn_cap_with_spaces_around_it_is_read(monkeypatch) -> None:
    _x86(monkeypatch, avx512_bf16=True, amx=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", " avx2\n")
    assert runtime._onednn_isa_allows_bf16() is False and runtime.cpu_supports_bf16() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", " all ")
    assert runtime._onednn_isa_allows_bf16() is True


def test_cuda_bf16_is_asked_of_the_device_given(monkeypatch) -> None:
    asked = []

    @contextlib.contextmanager
    def device(d):
        asked.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: not including_emulation)
    assert runtime.resolve_precision("auto", torch.device("cuda", 1)) == torch.bfloat16
    assert asked == [torch.device("cuda", 1)]
    assert runtime.resolve_precision("bf16", torch.device("cuda", 1)) == torch.bfloat16


def test_unknown_precision_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    with pytest.raises(CovsegError, match="unknown precision 'fp16': use auto, fp32 or bf16"):
        runtime.resolve_precision("fp16", torch.device("cpu"))


def _tree(root: Path, files: dict[str, str], membership: str) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "self-cgroup").write_text(membership)
    return root / "self-cgroup"


def test_a_zero_or_negative_cgroup_quota_is_no_quota(tmp_path: Path) -> None:
    member = _tree(tmp_path, {"cpu.max": "0 100000\n"}, "0::/\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) is None
    (tmp_path / "cpu.max").write_text("200000 0\n")  # a zero period: no quota either (no division by zero)
    assert runtime.cgroup_cpu_limit(tmp_path, member) is None


def test_cgroup_v2_under_a_hybrid_unified_mount(tmp_path: Path) -> None:
    # systemd's hybrid layout: v2 mounted at /sys/fs/cgroup/unified, which holds cgroup.controllers
    member = _tree(tmp_path, {"unified/cgroup.controllers": "cpu\n", "unified/app/cpu.max": "300000 100000\n",
                              "app/cpu.max": "100000 100000\n"}, "0::/app\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) == 3


def test_cgroup_v1_cpu_controller_mounted_as_cpu_only(tmp_path: Path) -> None:
    # /proc/self/cgroup names "cpu,cpuacct" but the hierarchy is mounted (or linked) at /sys/fs/cgroup/cpu
    member = _tree(tmp_path, {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"},
                   "3:cpu,cpuacct:/\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) == 2


def test_autocast_to_fp32_turns_nothing_on() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.autocast(dtype=float32) on CPU warns "Disabling autocast" every time
        with runtime.autocast(torch.device("cpu"), torch.float32):
            assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")


def test_dist_context_main_and_enabled() -> None:
    assert runtime.DistContext().is_main and not runtime.DistContext().enabled
    assert not runtime.DistContext(1, 2).is_main and runtime.DistContext(1, 2).enabled
    assert runtime.DistContext(0, 2).is_main


def _clear_torchrun_env(monkeypatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_world_size_1_is_not_distributed(monkeypatch) -> None:
    _clear_torchrun_env(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1 sets it without MASTER_ADDR checks here
    ctx, device = runtime.init_distributed(torch.device("cpu"))
    assert ctx == runtime.DistContext() and device == torch.device("cpu")


def test_one_missing_torchrun_variable_is_named_in_the_singular(monkeypatch) -> None:
    _clear_torchrun_env(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(CovsegError, match="WORLD_SIZE=2 is set but RANK is not: start the run with torchrun"):
        runtime.init_distributed(torch.device("cpu"))


def _fake_dist(monkeypatch, initialized: bool) -> dict:
    import torch.distributed as dist

    seen: dict = {}
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: initialized)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: seen.setdefault("backend", backend))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "barrier", lambda: seen.setdefault("calls", []).append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: seen.setdefault("calls", []).append("destroy"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault("set_device", d))
    return seen


@pytest.mark.parametrize("device, backend, used", [(torch.device("cpu"), "gloo", torch.device("cpu")),
                                                   (torch.device("cuda"), "nccl", torch.device("cuda", 1))])
def test_init_distributed_picks_backend_and_local_gpu(monkeypatch, device, backend, used) -> None:
    _clear_torchrun_env(monkeypatch)
    for name, value in {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    seen = _fake_dist(monkeypatch, initialized=False)
    ctx, got = runtime.init_distributed(device)
    assert ctx == runtime.DistContext(3, 4) and got == used and seen["backend"] == backend
    assert seen.get("set_device") == (used if device.type == "cuda" else None)


def test_rank_0_is_a_whole_number(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    assert runtime._whole_number_from_env("RANK", "0") == 0
    monkeypatch.setenv("RANK", "-1")
    with pytest.raises(CovsegError, match="RANK='-1' is not a whole number >= 0"):
        runtime._whole_number_from_env("RANK", "0")


@pytest.mark.parametrize("wait, calls", [(True, ["barrier", "destroy"]), (False, ["destroy"])])
def test_close_distributed_waits_for_peers_only_when_asked(monkeypatch, wait: bool, calls: list) -> None:
    seen = _fake_dist(monkeypatch, initialized=True)
    runtime.close_distributed(wait_for_peers=wait)
    assert seen["calls"] == calls


def test_keep_freed_memory_gives_mallopt_its_three_settings(monkeypatch) -> None:
    calls = []

    class Libc:
        @staticmethod
        def mallopt(param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(runtime.platform, "system", lambda: "Linux")
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: Libc())
    assert runtime.keep_freed_memory() is True
    # M_MMAP_THRESHOLD (-3) 1 GiB first, then M_TRIM_THRESHOLD (-1) 2 GiB - 1, then M_TOP_PAD (-2) 1 GiB
    assert calls == [(-3, 1 << 30), (-1, 2**31 - 1), (-2, 1 << 30)]
