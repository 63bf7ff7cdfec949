"""The phantom's geometry pinned to hand-computed numbers, and covseg.parallel_runs' scheduling, worker body and
messages pinned with a stand-in process pool (no worker processes, no training)."""
from __future__ import annotations

import signal
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from covseg.errors import CovsegError, Terminated
from covseg.phantom import _ellipsoid, _tube, chest_phantom

# ---------------------------------------------------------------------------------------------------- phantom

# 60 x 125 x 125 voxels of 1 mm: D = 60, H = W = 125 mm. Voxel centres: z = k - 29.5, y = j - 62, x = i - 62 (mm).
# Hence: body half-axes 0.40 H = 50 (Y), 0.46 W = 57.5 (X); lung half-axes (0.4 D, 0.28 H, 0.15 W) = (24, 35, 18.75)
# centred at X = -+0.2 W = -+25; GGO centre (0, 0.05 H, -25) = (0, 6.25, -25), half-axes (0.15 D, 0.08 H, 0.05 W) =
# (9, 10, 6.25); dense ball centre X = 25 + 18.75 = 43.75, half-axes (8, 7, 7); trachea from (top + 1 = 30.5, -0.08 H
# = -10, 0) to the carina (0.15 D = 9, -10, 0), radius 0.035 W = 4.375; bronchi from the carina to (0, -0.02 H =
# -2.5, -+25), radius 0.02 W = 2.5.
SHAPE, SPACING = (60, 125, 125), (1.0, 1.0, 1.0)
Z = (np.arange(60) - 29.5)[:, None, None]
Y = (np.arange(125) - 62.0)[None, :, None]
X = (np.arange(125) - 62.0)[None, None, :]


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0)


def test_tube_is_the_closed_set_within_radius_mm_of_the_segment() -> None:
    # segment (0,0,0)-(0,3,4), length 5. (0,3,0): nearest point t = 9/25, (0, 1.08, 1.44), distance 2.4 mm.
    # (0,6,8) lies beyond the end and (0,-3,-4) before the start, 5 mm from the segment; (2,0,0) 2 mm from the start.
    z = np.array([0.0, 0.0, 0.0, 2.0, 0.0])
    y = np.array([3.0, 6.0, -3.0, 0.0, 1.5])
    x = np.array([0.0, 8.0, -4.0, 0.0, 2.0])

    def inside(radius: float) -> list[bool]:
        return _tube(z, y, x, (0, 0, 0), (0, 3, 4), radius).tolist()

    assert inside(2.35) == [False, False, False, True, True]
    assert inside(2.0) == [False, False, False, True, True]  # closed: 2 mm from the start is within 2 mm
    assert inside(1.99) == [False, False, False, False, True]
    assert inside(2.45) == [True, False, False, True, True]
    assert inside(4.99) == [True, False, False, True, True]
    assert inside(5.01) == [True, True, True, True, True]


def test_phantom_body_is_the_elliptic_cylinder_of_its_docstring(phantom) -> None:
    _, parts = phantom
    body = np.broadcast_to((Y / 50.0) ** 2 + (X / 57.5) ** 2 <= 1, SHAPE)
    assert np.array_equal(parts["body"], body)
    assert parts["body"][:, 62, :].sum(axis=1).tolist() == [115] * 60  # |x| <= 57: 115 voxels across the middle
    assert parts["body"][:, :, 62].sum(axis=1).tolist() == [101] * 60  # |y| <= 50
    # the body stays the ellipse where the lungs are set so far apart that they reach outside it
    _, apart = chest_phantom(shape=SHAPE, spacing=SPACING, noise=0.0, gap_mm=60.0)
    assert (apart["lungs"] & ~apart["body"]).any() and np.array_equal(apart["body"], body)


def test_phantom_lungs_and_lesions_are_the_ellipsoids_of_its_docstring(phantom) -> None:
    _, parts = phantom
    right = _ellipsoid(Z, Y, X, (0, 0, -25), (24, 35, 18.75))
    left = _ellipsoid(Z, Y, X, (0, 0, 25), (24, 35, 18.75))
    assert np.array_equal(parts["right"], right) and np.array_equal(parts["left"], left)
    assert np.array_equal(parts["ggo"], _ellipsoid(Z, Y, X, (0, 6.25, -25), (9, 10, 6.25)))  # wholly in the right lung
    ball = _ellipsoid(Z, Y, X, (0, 0, 43.75), (8, 7, 7))
    assert np.array_equal(parts["dense"], ball & left)
    # centred on the lung's lateral wall: a little under half of the ball (4/3 pi 8 7 7 = 1642 mm3) is in the lung
    assert ball.sum() == 1642 and parts["dense"].sum() == 764
    # the GGO is posterior (Y > 0): its centroid at Y = 6.25 mm (voxels at whole mm: within half a voxel)
    assert np.nonzero(parts["ggo"])[1].mean() - 62 == pytest.approx(6.25, abs=0.5)


def test_phantom_airways_are_the_tubes_of_its_docstring(phantom) -> None:
    hu, parts = phantom
    trachea = _tube(Z, Y, X, (30.5, -10, 0), (9, -10, 0), 4.375)
    bronchi = _tube(Z, Y, X, (9, -10, 0), (0, -2.5, -25), 2.5) | _tube(Z, Y, X, (9, -10, 0), (0, -2.5, 25), 2.5)
    assert np.array_equal(parts["airway_outside"], (trachea | bronchi) & ~parts["lungs"])
    # the midline column under the trachea (y = -10, x = 0): airway from the top slice down to 4.375 mm under the
    # carina (z = 9 - 4.375 = 4.625: the voxel at z = 5.5, index 35)
    assert np.nonzero(parts["airway_outside"][:, 52, 62])[0].tolist() == list(range(35, 60))
    # the bronchi reach into both lungs, at air's -1000 HU there too (not the lung's -850)
    for side in ("right", "left"):
        inside = bronchi & parts[side]
        assert inside.sum() > 300 and np.all(hu[inside] == -1000.0), side


# ---------------------------------------------------------------------------------------------------- parallel runs


class _Pool:
    """A stand-in for ProcessPoolExecutor: each submitted call runs at once, here (``pending``: left unfinished);
    ``broken_after``: submissions after that many raise BrokenProcessPool, as a pool whose worker died does."""

    made: list[_Pool] = []
    pending = False
    broken_after: int | None = None

    def __init__(self, max_workers: int, mp_context: object, initializer: object) -> None:
        self.max_workers, self.context, self.initializer = max_workers, mp_context, initializer
        self.submitted: list[tuple] = []
        self._processes = {0: SimpleNamespace(pid=101), 1: SimpleNamespace(pid=102)}
        _Pool.made.append(self)

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def submit(self, fn, *args) -> Future:
        if self.broken_after is not None and len(self.submitted) >= self.broken_after:
            raise BrokenProcessPool("a process in the process pool was terminated abruptly")
        self.submitted.append(args)
        future: Future = Future()
        if not self.pending:
            try:
                future.set_result(fn(*args))
            except Exception as error:  # noqa: BLE001 (a worker's error reaches the parent through its future)
                future.set_exception(error)
        return future


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> type[_Pool]:
    from covseg import parallel_runs

    monkeypatch.setattr(_Pool, "made", [])
    monkeypatch.setattr(parallel_runs, "ProcessPoolExecutor", _Pool)
    monkeypatch.setattr(parallel_runs, "threads_per_job", lambda jobs: 5)
    return _Pool


def _runs(tmp_path: Path, n: int) -> list:
    from covseg.config import load_recipe

    return [(load_recipe("tiny"), tmp_path / f"fold-{k}") for k in range(n)]


def test_threads_per_job_is_a_whole_number_rounded_down() -> None:
    from covseg.parallel_runs import threads_per_job

    assert threads_per_job(3, cores=10) == 3 and isinstance(threads_per_job(3, cores=10), int)  # not 3.33
    assert threads_per_job(4, cores=6) == 1 and threads_per_job(7, cores=6) == 1


def test_parallel_runs_use_spawned_workers_that_handle_ctrl_c_and_get_each_run_in_order(pool, tmp_path: Path,
                                                                                        monkeypatch) -> None:
    from covseg import parallel_runs

    monkeypatch.setattr(parallel_runs, "_train_in_worker", lambda *args: True)
    runs = _runs(tmp_path, 3)
    samples = ["a sample"]
    lines: list[str] = []
    assert parallel_runs.train_runs_in_parallel(runs, samples, "data", jobs=2, log=lines.append, again="go on") is None
    assert lines == ["training 3 runs, 2 at a time, 5 torch threads each"]
    (made,) = pool.made
    assert made.max_workers == 2 and made.context.get_start_method() == "spawn"
    assert made.initializer is parallel_runs._start_worker
    # each worker gets its run, the samples, the data, the share of threads (the worker lets a config's own
    # train.threads win) and how to go on after Ctrl-C
    assert made.submitted == [(config, samples, run_dir, "data", 5, "go on") for config, run_dir in runs]


def test_a_started_worker_handles_ctrl_c_itself() -> None:
    from covseg import parallel_runs

    before = signal.getsignal(signal.SIGINT)
    try:
        parallel_runs._start_worker()
        assert signal.getsignal(signal.SIGINT) is parallel_runs._on_interrupt
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_worker_error_is_raised_led_by_its_run_folder_and_a_defect_as_it_is(pool, tmp_path: Path,
                                                                               monkeypatch) -> None:
    from covseg import parallel_runs

    def worker(config, samples, run_dir, data, threads, again):
        if run_dir.name == "fold-1":
            raise CovsegError("no pretrained weights at x")
        return True

    monkeypatch.setattr(parallel_runs, "_train_in_worker", worker)
    runs = _runs(tmp_path, 3)
    with pytest.raises(CovsegError) as failed:
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=1, log=lambda message: None)
    assert str(failed.value) == f"{tmp_path / 'fold-1'}: no pretrained weights at x"
    assert [args[2].name for args in pool.made[0].submitted] == ["fold-0", "fold-1"]  # fold-2 never started

    def defect(*args):
        raise ValueError("a defect")

    monkeypatch.setattr(parallel_runs, "_train_in_worker", defect)
    with pytest.raises(ValueError, match=r"^a defect$"):
        parallel_runs.train_runs_in_parallel(runs, [], "data", jobs=2, log=lambda message: None)


def test_a_pool_broken_before_a_run_is_handed_over_is_one_line(pool, tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs

    monkeypatch.setattr(parallel_runs, "_train_in_worker", lambda *args: True)
    monkeypatch.setattr(_Pool, "broken_after", 1)  # the first run ended; its worker's death broke the pool
    with pytest.raises(CovsegError) as failed:
        parallel_runs.train_runs_in_parallel(_runs(tmp_path, 2), [], "data", jobs=1, log=lambda message: None)
    assert str(failed.value) == ("a training worker was killed (often out of memory), which stopped the other runs "
                                 "too; lower --jobs and run again to resume them")


@pytest.mark.parametrize("stop", [Terminated, KeyboardInterrupt])
def test_sigterm_is_passed_on_to_the_workers_as_ctrl_c(stop: type, pool, tmp_path: Path, monkeypatch) -> None:
    from covseg import parallel_runs

    monkeypatch.setattr(_Pool, "pending", True)
    waits: list[int] = []

    def wait(futures, return_when=None):
        waits.append(len(futures))
        if len(waits) == 1:
            raise stop()
        return set(futures), set()

    sent: list[tuple[int, int]] = []

    def kill(pid: int, sig: int) -> None:
        sent.append((pid, sig))
        if pid == 101:
            raise ProcessLookupError(pid)  # that worker had already ended: the others still get theirs

    monkeypatch.setattr(parallel_runs, "wait", wait)
    monkeypatch.setattr(parallel_runs.os, "kill", kill)
    with pytest.raises(stop):
        parallel_runs.train_runs_in_parallel(_runs(tmp_path, 3), [], "data", jobs=2, log=lambda message: None)
    # SIGTERM reached this process alone: each worker gets Ctrl-C (SIGINT), to save and stop; Ctrl-C reached them all
    assert sent == ([(101, signal.SIGINT), (102, signal.SIGINT)] if stop is Terminated else [])


def test_a_worker_logs_to_stderr_led_by_its_run_folder_and_neither_forces_nor_draws_bars(tmp_path: Path, capsys,
                                                                                           monkeypatch) -> None:
    import covseg.experiment
    from covseg import parallel_runs
    from covseg.config import load_recipe

    called: list[tuple] = []

    def train_or_resume(config, samples, run_dir, data, force, progress, log, again):
        called.append((run_dir, data, force, progress, again))
        log("epoch 1/3")

    monkeypatch.setattr(covseg.experiment, "train_or_resume", train_or_resume)
    monkeypatch.setattr(parallel_runs, "_training", False)
    monkeypatch.setattr(parallel_runs, "_interrupted", False)
    run = tmp_path / "fold-0"
    assert parallel_runs._train_in_worker(load_recipe("tiny"), [], run, "data", 1, "go on") is True
    assert called == [(run, "data", False, False, "go on")]
    out, err = capsys.readouterr()
    assert out == "" and err == f"[{run}] epoch 1/3\n"



def test_every_phantom_mask_is_an_ordinary_writable_array(phantom) -> None:
    # the body was np.broadcast_to's read-only view while the other masks were writable (helper 174)
    _, parts = phantom
    for name, mask in parts.items():
        assert mask.flags.writeable, name
        assert mask.dtype == bool and mask.shape == parts["lungs"].shape, name
    body = parts["body"].copy()
    parts["body"][0, 0, 0] = not parts["body"][0, 0, 0]  # would raise "assignment destination is read-only"
    parts["body"][0, 0, 0] = body[0, 0, 0]
