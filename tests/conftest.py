"""Shared fixtures: a tiny COVID-SemiSeg-layout data set made by the tests themselves."""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image
import torch

REAL_SEMISEG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "covid-semiseg"


class RecordingLoss(torch.nn.Module):
    """Cross-entropy that keeps each target ``(B, H, W)`` it scores, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[torch.Tensor] = []

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.targets.append(target.clone())
        return torch.nn.functional.cross_entropy(logits, target)


class InputRecorder(torch.nn.Module):
    """A 1x1 convolution to 2 classes that keeps each input batch ``(B, 1, H, W)`` it sees, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def fake_run_folder(parent: Path, split: dict, data: str) -> Path:
    """``parent/run`` holding only ``split.json`` (``split``) and a ``run.json`` naming its data folder ``data``: what
    :func:`covseg.quantize.calibration_inputs` reads of a run."""
    run = parent / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps(split), encoding="utf-8")
    (run / "run.json").write_text(json.dumps({"data": data}), encoding="utf-8")
    return run


def synthetic_slice(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey 'CT slice' (uint8) with a bright GGO ellipse (label 1) and a brighter consolidation disc (2)."""
    yy, xx = np.mgrid[:height, :width]
    image = rng.normal(60, 8, (height, width))
    labels = np.zeros((height, width), np.uint8)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.12, 0.25) * height, rng.uniform(0.12, 0.25) * width
    ggo = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    labels[ggo] = 1
    image[ggo] += 90
    cons = ((yy - cy) / (ry / 2)) ** 2 + ((xx - cx) / (rx / 2)) ** 2 <= 1
    if rng.random() < 0.7:
        labels[cons] = 2
        image[cons] += 80
    return np.clip(image, 0, 255).astype(np.uint8), labels


def write_semiseg(root: Path, n: int = 12, seed: int = 0) -> Path:
    """Write ``n`` synthetic slices in the COVID-SemiSeg training layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    train = root / "Dataset" / "TrainingSet"
    for sub in ("LungInfection-Train/Doctor-label/Imgs", "LungInfection-Train/Doctor-label/GT",
                "MultiClassInfection-Train/Imgs", "MultiClassInfection-Train/GT"):
        (train / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = int(rng.integers(40, 56)), int(rng.integers(40, 56))
        image, labels = synthetic_slice(rng, h, w)
        for folder in ("LungInfection-Train/Doctor-label/Imgs", "MultiClassInfection-Train/Imgs"):
            Image.fromarray(image).save(train / folder / f"{i}.jpg", quality=95)
        Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(train / "LungInfection-Train/Doctor-label/GT" / f"{i}.png")
        palette = Image.frombytes("P", (w, h), labels.tobytes())
        palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (3 * 253))
        palette.save(train / "MultiClassInfection-Train/GT" / f"{i}.png")
    return root


def add_unlabelled(root: Path, n: int, seed: int, height: int = 48, width: int = 44) -> Path:
    """Add ``n`` synthetic unlabelled slices (``u0.jpg`` …) to the COVID-SemiSeg tree at ``root``; returns ``root``."""
    folder = root / "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image, _ = synthetic_slice(rng, height, width)
        Image.fromarray(image).save(folder / f"u{i}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def unl_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_data`` (the teacher's labelled slices) plus four unlabelled 48x44 slices."""
    root = tmp_path_factory.mktemp("unl") / "data"
    shutil.copytree(tiny_data, root)
    return add_unlabelled(root, n=4, seed=7)


class ConstantBackend:
    """An inference backend (tests) whose logits ``(B, C, S, S)`` equal ``values`` (``C`` of them) at every pixel."""

    description = "constant"

    def __init__(self, values: tuple[float, ...]) -> None:
        self.values = torch.tensor(values).view(1, len(values), 1, 1)

    def __call__(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        return self.values.expand(x.shape[0], -1, *x.shape[-2:]).clone()


class ConstantLogits(torch.nn.Module):
    """A network (tests) whose logits ``(B, C, H, W)`` equal ``logits`` (``C`` of them, trainable) at every pixel."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, x.shape[2], x.shape[3])


def record_syncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """From now on, every ``os.fsync`` covseg.fileio makes and every ``os.replace`` anyone makes, in order:
    ``("fsync", path synced)`` / ``("replace", destination)``; both still run."""
    import os

    import covseg.fileio as fileio

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    return events


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder (``directory=``) without logging each request; no ranges: a ``Range`` gets the whole file."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class RangeHandler(QuietHandler):
    """:class:`QuietHandler` plus single ``bytes=N-`` ranges (206; 416 past the end), as a mirror that resumes does;
    :meth:`range_asked` is told each range's start."""

    def range_asked(self, start: int) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not rng or not path.is_file():
            return super().do_GET()
        start = int(rng.removeprefix("bytes=").split("-")[0])
        self.range_asked(start)
        data = path.read_bytes()
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        return None


@contextlib.contextmanager
def serving(root: Path, handler: type[QuietHandler] = QuietHandler) -> Iterator[str]:
    """``root`` served by ``handler`` on a loopback port for the ``with`` block: its base URL, ending in ``/``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fake_mirror(monkeypatch: pytest.MonkeyPatch, root: Path, files: dict[str, bytes]) -> Path:
    """``files`` (upstream path: bytes) written under ``root``, a mirror laid out like upstream, and
    ``covseg.download.read_manifest`` patched to list just them with their SHA-256: ``root``."""
    import hashlib

    import covseg.download

    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    monkeypatch.setattr(covseg.download, "read_manifest", lambda name: manifest)
    return root


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (just freed): a mirror URL that cannot be reached."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _figure_placeholder(self, fname, **kwargs) -> None:
    """What ``Figure.savefig`` does in tests not marked ``real_figures``: an 8 x 8 black PNG at ``fname`` (a path or a
    file object), the figure built but not drawn. Drawing (layout, text, the tight bounding box: about 0.5-1 s a
    figure on 2 cores) was a third of the CLI tests' time; the figures themselves are checked, drawn, by the tests
    marked ``real_figures``."""
    Image.new("RGB", (8, 8)).save(fname, format="png")


_DRAWN_SAVEFIG = Figure.savefig


@pytest.fixture(autouse=True, scope="session")
def _figures_built_not_drawn() -> Iterator[None]:
    """Every figure covseg makes in this process, fixtures' runs included, is built in full but saved as a
    placeholder (:func:`_figure_placeholder`). Runs in other processes (``--jobs`` workers, the CLI run as a
    program) draw theirs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", _figure_placeholder)
        yield


@pytest.fixture(autouse=True)
def _figures_drawn_where_marked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test marked ``real_figures`` draws and saves its figures for real."""
    if request.node.get_closest_marker("real_figures") is not None:
        monkeypatch.setattr(Figure, "savefig", _DRAWN_SAVEFIG)


@pytest.fixture(autouse=True)
def _torch_threads_restored() -> object:
    """Every test leaves torch's intra-op thread count as it found it: a run given ``train.threads`` in-process, or a
    test that sets it, would otherwise make later tests that compare an in-process run with a ``covseg`` subprocess
    (two threads) differ in the last digits."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _sigterm_handler_restored() -> object:
    """Every test leaves SIGTERM's handler as it found it: ``covseg.cli.entry`` installs the program's own (SIGTERM
    raises ``Terminated``), which must not outlive the test that called it."""
    import signal

    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-image synthetic data set in the COVID-SemiSeg layout (read-only for tests)."""
    return write_semiseg(tmp_path_factory.mktemp("semiseg"))


TINY_OVERRIDES = ["data.input_size=32", "model.width=4", "model.depth=2", "train.batch_size=4",
                  "train.precision=fp32", "train.lr=0.01", "data.folds=3"]


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-epoch binary run on ``tiny_data`` (fold 0 of 3), made through the CLI."""
    from covseg.cli import main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--recipe", "tiny", "--data", str(tiny_data), "--split", "cv:0", "--epochs", "3",
                 "-o", str(run), "--quiet", *TINY_OVERRIDES]) == 0
    return run


def ctrl_c_at_epoch(epoch: int, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException] = KeyboardInterrupt):
    """Make ``covseg.run.train_one_epoch`` raise ``stop`` (``KeyboardInterrupt``; ``covseg.errors.Terminated`` for
    SIGTERM) at the start of 0-based ``epoch``, as the signal there would, and train every other epoch as before;
    returns the real function, to put back."""
    import covseg.run

    real = covseg.run.train_one_epoch

    def stopped_there(*args, **kwargs):
        if args[6] == epoch:
            raise stop
        return real(*args, **kwargs)

    monkeypatch.setattr(covseg.run, "train_one_epoch", stopped_there)
    return real


def interrupt_after_touching(final: Path, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Send a real SIGINT (Ctrl-C) just after covseg.fileio first renames or deletes ``final`` (the old folder
    going). Returns a list that holds ``True`` once the signal was sent."""
    import covseg.fileio as fileio

    fired: list[bool] = []

    def wrap(real: Callable) -> Callable:
        def wrapper(path: str | os.PathLike, *args: object, **kwargs: object) -> object:
            result = real(path, *args, **kwargs)
            if Path(path) == final and not fired:
                fired.append(True)
                os.kill(os.getpid(), signal.SIGINT)
            return result
        return wrapper

    monkeypatch.setattr(fileio.os, "replace", wrap(os.replace))
    monkeypatch.setattr(fileio.os, "rename", wrap(os.rename))
    monkeypatch.setattr(fileio.shutil, "rmtree", wrap(shutil.rmtree))
    return fired


def binary_result(name: str, called: int, lesion: bool = True):
    """A scored binary 8x8 image (:class:`covseg.evaluation.ImageResult`) whose truth holds a 2x2 lesion (or none) and
    whose prediction calls ``called`` pixels, the lesion's first (Inf-Net figures: placeholders)."""
    from covseg.evaluation import ImageResult

    cm = np.zeros((2, 2), np.int64)
    truth = 4 if lesion else 0
    cm[1, 1] = min(called, truth)
    cm[0, 1] = called - cm[1, 1]
    cm[1, 0] = truth - cm[1, 1]
    cm[0, 0] = 64 - cm.sum()
    return ImageResult(name, cm, infnet={"meanDic": 0.5, "meanSen": 0.5, "meanSpe": 0.5, "mae": 0.1})


def tiny_air_scan(path: Path) -> Path:
    """A 4-slice NIfTI scan of air (-1000 HU; 24 x 20 voxels a slice, 0.7 x 0.7 x 2.5 mm) at ``path``."""
    import nibabel as nib

    hu = np.full((24, 20, 4), -1000, np.int16)  # (i, j, k): 4 axial slices
    nib.save(nib.Nifti1Image(hu, np.diag([0.7, 0.7, 2.5, 1.0])), str(path))
    return path


def tiny_grey_image(path: Path) -> Path:
    """An 8 x 8 8-bit grey ramp (0..63) saved at ``path`` (its suffix picks the format)."""
    from PIL import Image

    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(path)
    return path
