"""Checks that mutation testing of covseg.checkpoint, covseg.runtime and covseg.fileio found missing: what a checkpoint
holds and the one-line refusals of bad ones, device, precision and thread choices, and atomic writes."""
from __future__ import annotations

import os
import signal
import threading
import zipfile
from pathlib import Path

import pytest
import torch

import covseg.checkpoint as checkpoint
from covseg import __version__
import covseg.fileio as fileio
from covseg import runtime
from covseg.checkpoint import build_model, load_model, read_checkpoint, save_checkpoint
from covseg.config import apply_overrides, config_to_dict, load_recipe
from covseg.errors import CovsegError
from test_checkpoint_errors import _saved  # a tiny checkpoint, its entries changed
from test_runtime import _cgroup_tree  # a fake cgroup file system

FIX = "give a .pt file that covseg train wrote, or its run folder"


def _config(*overrides: str, task: str = "binary"):
    return apply_overrides(load_recipe("tiny", task=task), list(overrides))


# ---- covseg.checkpoint ------------------------------------------------------------------------------------------

def test_save_checkpoint_writes_the_weights_settings_and_the_extra_state(tmp_path: Path) -> None:
    config = _config()
    torch.manual_seed(0)
    model = build_model(config)
    path = tmp_path / "last.pt"
    save_checkpoint(path, model, config, 2, 0.5, optimizer={"lr": 0.125}, history=[{"epoch": 1, "loss": 0.25}])
    data = read_checkpoint(path)
    assert (data["format"], data["version"], data["epoch"], data["score"]) == ("covseg-checkpoint-1", __version__, 2,
                                                                                0.5)
    assert data["optimizer"] == {"lr": 0.125} and data["history"] == [{"epoch": 1, "loss": 0.25}]
    assert data["config"] == config_to_dict(config)
    state = model.state_dict()
    assert data["model"].keys() == state.keys() and all(torch.equal(data["model"][k], state[k]) for k in state)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_build_model_passes_every_architecture_option(tmp_path: Path) -> None:
    config = _config("model.depth=3", "model.dropout=0.25", "model.decoder_dropout=0.125", "model.attention=true",
                     "model.deep_supervision=true", task="multiclass")
    model = build_model(config)
    assert model.head.out_channels == 4  # background, GGO, consolidation, pleural effusion
    assert isinstance(model.dropout, torch.nn.Dropout2d) and model.dropout.p == 0.25
    assert [m.p for m in model.decoder_dropouts] == [0.125, 0.125]  # depth - 1 decoder levels below the top
    assert len(model.gates) == 3 and len(model.aux_heads) == 2
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, config, 1, None)
    loaded, _, _ = load_model(path)  # the same options rebuild a model the weights fit
    assert len(loaded.gates) == 3 and len(loaded.aux_heads) == 2 and loaded.dropout.p == 0.25


def test_find_checkpoint_explains_a_missing_ema_or_swa_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"")
    with pytest.raises(CovsegError, match=r"no ema\.pt in this folder; only runs trained with train\.ema=DECAY"):
        checkpoint.find_checkpoint(run, "ema")
    with pytest.raises(CovsegError, match=r"no swa\.pt in this folder; only finished runs trained with "
                                          r"train\.swa_epochs=N"):
        checkpoint.find_checkpoint(run, "swa")


def test_find_checkpoint_names_the_run_folder_only_where_both_run_files_are_there(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    (run / "config.yaml").write_text("recipe: tiny\n")  # config.yaml but no run.json: not a run folder
    with pytest.raises(CovsegError, match=r"checkpoint file already; drop --checkpoint$"):
        checkpoint.find_checkpoint(run / "best.pt", "last")
    (run / "config.yaml").unlink()
    (run / "run.json").write_text("{}")  # run.json alone: neither
    with pytest.raises(CovsegError, match=r"checkpoint file already; drop --checkpoint$"):
        checkpoint.find_checkpoint(run / "best.pt", "last")


@pytest.mark.parametrize("message, shown", [("12345678", "RuntimeError"), ("123456789", "RuntimeError: 123456789"),
                                            ("(101)", "RuntimeError"), ("", "RuntimeError")])
def test_a_torch_reason_of_eight_characters_or_fewer_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 message: str, shown: str) -> None:
    path = _saved(tmp_path)  # a sound zip archive: torch.load's failure is the reason shown

    def fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(checkpoint.torch, "load", fails)
    with pytest.raises(CovsegError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == f"{path}: not a readable covseg checkpoint ({shown}); {FIX}"


def test_a_long_torch_reason_is_cut_at_the_last_whole_word_that_fits_in_120_characters(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _saved(tmp_path)
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("word " * 40)))
    with pytest.raises(CovsegError) as caught:
        read_checkpoint(path)
    # "RuntimeError: " (14) + 21 words of 4 with 20 spaces between them (104) + " …" (2) = 120 characters
    why = "RuntimeError: " + " ".join(["word"] * 21) + " …"
    assert len(why) == 120
    assert str(caught.value) == f"{path}: not a readable covseg checkpoint ({why}); {FIX}"


def test_a_damaged_archive_member_is_refused_before_torch_loads_it(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest member: weights
        name = info.filename
    offset = info.header_offset  # the local header's own name and extra-field lengths (torch pads the extra field)
    start = offset + 30 + int.from_bytes(raw[offset + 26:offset + 28], "little") + int.from_bytes(
        raw[offset + 28:offset + 30], "little")
    raw[start + 8] ^= 0xFF  # one byte of the stored (uncompressed) data flipped: the CRC no longer matches
    path.write_bytes(bytes(raw))
    with pytest.raises(CovsegError) as caught:
        read_checkpoint(path)
    assert str(caught.value) == (f"{path}: a damaged covseg checkpoint: its part {name!r} fails its CRC check (the "
                                 f"file changed after it was written); {FIX}")


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path, format="covseg-checkpoint-0")
    with pytest.raises(CovsegError, match=r"c\.pt: not a covseg checkpoint \(format covseg-checkpoint-1 expected\); "
                                          r"give a \.pt file that covseg train wrote, or its run folder$"):
        read_checkpoint(path)


def test_settings_that_are_not_a_dict_are_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path, config="tiny")
    with pytest.raises(CovsegError, match=r"a covseg checkpoint without its run's settings \('config'\)"):
        read_checkpoint(path)


def test_a_single_nan_weight_is_refused(tmp_path: Path) -> None:
    config = _config()
    model = build_model(config).state_dict()
    name = next(k for k, v in model.items() if v.is_floating_point() and v.numel() > 1)
    weights = dict(model)
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")  # one value of many
    path = _saved(tmp_path, model=weights)
    with pytest.raises(CovsegError, match=rf"\({name.replace('.', '[.]')} holds NaN or inf; the training diverged\)"):
        read_checkpoint(path)


@pytest.mark.parametrize("epoch, shown", [("x" * 50, "str"), (torch.zeros(2, 2), "Tensor"),
                                          (torch.tensor(3), "tensor(3)"), ([1, 2], "[1, 2]"), (2.0, "2.0")])
def test_an_epoch_entry_too_long_or_multi_line_to_show_is_named_by_its_type(tmp_path: Path, epoch: object,
                                                                           shown: str) -> None:
    path = _saved(tmp_path, epoch=epoch)
    with pytest.raises(CovsegError) as caught:
        read_checkpoint(path)
    assert f"(its 'epoch' entry, {shown}, is not a whole number of epochs)" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_settings_this_covseg_cannot_read_are_named_with_the_file(tmp_path: Path) -> None:
    config = _config()
    data_config = config_to_dict(config)
    data_config["model"]["colour"] = "blue"  # an option no covseg knows
    path = _saved(tmp_path, config=data_config)
    with pytest.raises(CovsegError) as caught:
        load_model(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: its run settings cannot be read (")
    assert "colour" in message and message.endswith("or its run folder, or train it again")


def test_weights_mismatch_names_a_scalar_and_a_weight_the_model_has_not() -> None:
    err = RuntimeError("unused")
    assert checkpoint.weights_mismatch({"a": torch.zeros(2, 3)}, {"a": torch.tensor(1.0)}, err) == (
        "a is a scalar in the file but 2x3 in that model")
    assert checkpoint.weights_mismatch({"a": torch.zeros(2)}, {"a": torch.zeros(2), "b": torch.zeros(1)}, err) == (
        "the file holds b, which that model has not")
    assert checkpoint.weights_mismatch({"a": torch.zeros(2), "c": torch.zeros(1)}, {"a": torch.zeros(3)}, err) == (
        "a is 3 in the file but 2 in that model (and 1 more difference)")


def test_epochs_done_reads_the_epoch_of_last_pt(tmp_path: Path) -> None:
    config = _config()
    save_checkpoint(tmp_path / "last.pt", build_model(config), config, 7, None)
    assert checkpoint.epochs_done(tmp_path) == 7


# ---- covseg.runtime ---------------------------------------------------------------------------------------------

def test_auto_and_numbered_cuda_devices_are_taken_where_a_gpu_is_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert runtime.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda") == torch.device("cuda")
    assert runtime.resolve_device("cpu") == torch.device("cpu")


def _fake_x86_cpu(monkeypatch: pytest.MonkeyPatch, mkldnn: object = True, machine: str = "x86_64",
                  avx512_bf16: bool = True, amx: bool = False) -> None:
    def mkldnn_answer() -> bool:
        if isinstance(mkldnn, BaseException):
            raise mkldnn
        return bool(mkldnn)

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", mkldnn_answer)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_cpu_bf16_needs_onednn_s_yes_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_x86_cpu(monkeypatch, mkldnn=False, machine="aarch64")
    assert runtime.cpu_supports_bf16() is False
    _fake_x86_cpu(monkeypatch, mkldnn=False, machine="x86_64", avx512_bf16=True, amx=True)
    assert runtime.cpu_supports_bf16() is False
    _fake_x86_cpu(monkeypatch, mkldnn=RuntimeError("no mkldnn"))  # a build whose oneDNN cannot answer
    assert runtime.cpu_supports_bf16() is False


def test_an_upper_case_amd64_machine_is_an_x86_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_x86_cpu(monkeypatch, machine="AMD64", avx512_bf16=False, amx=False)  # Windows spells it so: emulated bf16
    assert runtime.cpu_supports_bf16() is False
    _fake_x86_cpu(monkeypatch, machine="AMD64", avx512_bf16=True)
    assert runtime.cpu_supports_bf16() is True


def test_a_onednn_cap_is_read_without_surrounding_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_x86_cpu(monkeypatch, avx512_bf16=True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", " all\n")
    assert runtime._onednn_isa_allows_bf16() is True and runtime.cpu_supports_bf16() is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", " avx2 ")
    assert runtime.cpu_supports_bf16() is False


class _FakeMallopt:
    """mallopt(3) that records its calls and accepts all but the parameters in ``refused``."""

    def __init__(self, refused: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refused = refused

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param in self.refused else 1


def _glibc_with(monkeypatch: pytest.MonkeyPatch, mallopt: _FakeMallopt) -> None:
    monkeypatch.setattr(runtime.platform, "system", lambda: "Linux")
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda name: type("Libc", (), {"mallopt": mallopt})())


def test_keep_freed_memory_sets_the_three_glibc_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    mallopt = _FakeMallopt()
    _glibc_with(monkeypatch, mallopt)
    assert runtime.keep_freed_memory() is True
    # M_MMAP_THRESHOLD (-3) 1 GiB first, then M_TRIM_THRESHOLD (-1) 2 GiB - 1 and M_TOP_PAD (-2) 1 GiB
    assert mallopt.calls == [(-3, 1073741824), (-1, 2147483647), (-2, 1073741824)]


def test_keep_freed_memory_stops_at_a_refused_mmap_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    mallopt = _FakeMallopt(refused=(-3,))  # an old glibc that caps the mmap threshold at 32 MiB
    _glibc_with(monkeypatch, mallopt)
    assert runtime.keep_freed_memory() is False
    assert mallopt.calls == [(-3, 1073741824)]  # nothing else changed


def test_a_zero_period_is_no_quota(tmp_path: Path) -> None:
    member = _cgroup_tree(tmp_path, {"cpu.max": "100000 0\n"}, "0::/\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) is None
    member = _cgroup_tree(tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "0\n"},
                     "2:cpu:/\n")
    assert runtime.cgroup_cpu_limit(tmp_path / "v1", member) is None


def test_a_hybrid_hierarchy_reads_cgroup_v2_under_unified(tmp_path: Path) -> None:
    member = _cgroup_tree(tmp_path, {"unified/cgroup.controllers": "cpu memory\n", "unified/box/cpu.max": "200000 100000\n",
                                "box/cpu.max": "100000 100000\n"}, "0::/box\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) == 2


def test_a_v1_cpu_controller_mounted_as_cpu_alone_is_found(tmp_path: Path) -> None:
    # /proc/self/cgroup lists "cpu,cpuacct" but the hierarchy is mounted at cpu/ (no cpu,cpuacct folder)
    # and the cpuset controller's cgroup (another path) is no cpu controller, though its name begins with "cpu"
    member = _cgroup_tree(tmp_path, {"cpu/box/cpu.cfs_quota_us": "300000\n", "cpu/box/cpu.cfs_period_us": "100000\n",
                                "cpu/other/cpu.cfs_quota_us": "100000\n", "cpu/other/cpu.cfs_period_us": "100000\n"},
                     "2:cpu,cpuacct:/box\n3:cpuset:/other\n")
    assert runtime.cgroup_cpu_limit(tmp_path, member) == 3


def test_autocast_computes_in_bf16_only_when_asked() -> None:
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with runtime.autocast(torch.device("cpu"), torch.float32):
        assert (a @ b).dtype == torch.float32


def test_dist_context_is_enabled_only_with_two_processes_or_more() -> None:
    assert runtime.DistContext().enabled is False and runtime.DistContext().is_main is True
    assert runtime.DistContext(0, 2).enabled is True and runtime.DistContext(1, 2).is_main is False


@pytest.mark.parametrize("world", ["0", "1"])
def test_one_process_or_none_is_not_distributed(monkeypatch: pytest.MonkeyPatch, world: str) -> None:
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", world)
    cpu = torch.device("cpu")
    assert runtime.init_distributed(cpu) == (runtime.DistContext(), cpu)


def test_one_missing_torchrun_variable_is_named_in_the_singular(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(CovsegError, match=r"^WORLD_SIZE=2 is set but MASTER_PORT is not: start the run with torchrun"):
        runtime.init_distributed(torch.device("cpu"))


def test_close_distributed_waits_for_its_peers_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("destroy"))
    runtime.close_distributed(wait_for_peers=True)
    runtime.close_distributed()
    assert calls == ["barrier", "destroy", "destroy"]


# ---- covseg.fileio ----------------------------------------------------------------------------------------------

def test_ctrl_c_while_writing_removes_the_folders_made_for_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_path(tmp_path / "new" / "deeper" / "out.png") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_entered_is_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "noexec").mkdir()
    real = os.access
    monkeypatch.setattr(fileio.os, "access", lambda p, mode: not (mode & os.X_OK) and real(p, mode))
    assert fileio.unwritable_reason(tmp_path / "noexec" / "x.png") == (
        f"{tmp_path / 'noexec'} is not a folder you can write into")


def test_a_name_whose_last_suffix_fills_the_name_gets_a_plain_part_suffix(tmp_path: Path) -> None:
    name = "x." + "a" * 240  # 242 bytes; ".part.aaa…" (246) + 8 random characters + ".." would not fit in 255
    with fileio.atomic_path(tmp_path / name) as tmp:
        # the name cut by 2 characters: "." + 240 + "." + 8 random characters + ".part" = 255 bytes
        assert tmp.name.startswith(f".{name[:-2]}.") and tmp.name.endswith(".part") and len(tmp.name) == 255
        tmp.write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == [name] and (tmp_path / name).read_text() == "x"


def test_atomic_dir_with_force_replaces_a_dangling_link(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.symlink_to(tmp_path / "gone")
    with fileio.atomic_dir(final, force=True) as staged:
        (staged / "new.txt").write_text("new")
    assert not final.is_symlink() and [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_interrupts_deferred_puts_the_previous_handler_back(tmp_path: Path) -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with fileio.interrupts_deferred():
            assert signal.getsignal(signal.SIGINT) is not mine
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


def test_interrupts_deferred_runs_unprotected_outside_the_main_thread() -> None:
    outcome: list[object] = []

    def work() -> None:
        try:
            with fileio.interrupts_deferred():
                outcome.append("ran")
        except BaseException as err:  # noqa: BLE001 - the outcome is checked below
            outcome.append(err)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert outcome == ["ran"]


def test_sync_of_a_missing_file_raises_but_an_unopenable_folder_is_let_be(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    sync = getattr(fileio, "sync_path", None) or fileio._sync  # (named sync_path in later versions)
    with pytest.raises(FileNotFoundError):
        sync(tmp_path / "missing.txt")
    real_open = os.open

    def refuse_folders(path: object, flags: int, *args: object) -> int:
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(fileio.os, "open", refuse_folders)
    sync(tmp_path)  # no error: the rename itself is still atomic


def test_file_sha256_of_an_empty_file() -> None:
    assert fileio.file_sha256(os.devnull) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
