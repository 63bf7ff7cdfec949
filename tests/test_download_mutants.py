"""covseg.download edge cases that mutation testing found unpinned: small mirrors written to tmp_path (a folder, or a
loopback HTTP server whose answers the test chooses), exact reports and messages."""
from __future__ import annotations

import functools
import http.server
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from covseg import download as dl
from covseg.errors import CovsegError

from conftest import free_loopback_port

NAME = "covid-semiseg"
TRAIN = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/1.jpg"
TEST = "Dataset/TestingSet/LungInfection-Test/Imgs/1.jpg"
EXTRA = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"
BODY = bytes(range(256)) * 4  # 1 KiB


def _mirror(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _use_manifest(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> None:
    import hashlib

    manifest = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    monkeypatch.setattr(dl, "read_manifest", lambda name: manifest)


# ---------------------------------------------------------------------------------- manifest parsing


def _packaged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    """Make read_manifest read ``text`` as the packaged covid-semiseg manifest."""
    (tmp_path / "manifests").mkdir(exist_ok=True)
    (tmp_path / "manifests" / "covid-semiseg.sha256").write_text(text, encoding="utf-8")
    monkeypatch.setattr(dl, "resources", SimpleNamespace(files=lambda package: tmp_path))


def test_manifest_lines_comments_case_and_binary_marker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a, b = "ab" * 32, "CD" * 32
    _packaged(monkeypatch, tmp_path, f"# sha256sum output\n\n{a}  Dataset/x.png\n{b} *Dataset/y y.png\n")
    assert dl.read_manifest(NAME) == {"Dataset/x.png": a, "Dataset/y y.png": "cd" * 32}


@pytest.mark.parametrize("line", ["ab" * 32 + "a  Dataset/x.png", "ab" * 32 + "  ../x.png",
                                  "ab" * 32 + "  Dataset/../../x.png", "ab" * 32 + "  /etc/passwd"],
                         ids=["65-hex-digits", "parent", "parent-inside", "absolute"])
def test_a_malformed_manifest_line_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, line: str) -> None:
    _packaged(monkeypatch, tmp_path, "ab" * 32 + "  Dataset/ok.png\n" + line + "\n")
    with pytest.raises(CovsegError, match=r"^manifest covid-semiseg\.sha256 line 2 is malformed: expected "
                                          r"'<sha256>  <relative path>'; reinstall covseg$"):
        dl.read_manifest(NAME)


# ---------------------------------------------------------------------------------- mirror arguments


def test_an_empty_mirror_variable_means_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dl.MIRROR_ENV, "")
    assert dl.resolve_mirror(None) is None
    # an empty --mirror is refused, not taken as upstream or as $COVSEG_MIRROR (tests/test_s72_fixes.py)
    for env in ("", "http://mirror.example/"):
        monkeypatch.setenv(dl.MIRROR_ENV, env)
        with pytest.raises(CovsegError, match=r"^--mirror is empty: give a folder or an http\(s\):// URL, or leave "
                                              r"it out$"):
            dl.resolve_mirror("")


def test_an_upper_case_url_scheme_is_a_url(tmp_path: Path) -> None:
    port = free_loopback_port()
    with pytest.raises(CovsegError, match=rf"^cannot reach HTTP://127\.0\.0\.1:{port}/Dataset/"):
        dl.download(NAME, tmp_path, mirror=f"HTTP://127.0.0.1:{port}/", progress=False)


def test_a_url_with_a_space_is_refused_before_any_request(tmp_path: Path) -> None:
    url = "http://127.0.0.1:1/my mirror/"
    with pytest.raises(CovsegError, match=re.escape(f"mirror URL {url} is not valid: it has non-ASCII characters "
                                                    "or spaces; percent-encode them; pass --mirror")):
        dl.download(NAME, tmp_path, mirror=url, progress=False)


def test_a_file_url_mirror_is_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)
    mirror = _mirror(tmp_path / "my mirror", files)
    report = dl.download(NAME, tmp_path / "data", mirror=mirror.as_uri(), progress=False)
    assert report.fetched == [TRAIN]
    assert (tmp_path / "data" / NAME / TRAIN).read_bytes() == BODY


# ---------------------------------------------------------------------------------- extra (unverified) files


def test_an_extra_file_of_another_size_is_copied_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)
    mirror = _mirror(tmp_path / "mirror", {**files, f"{EXTRA}/a.jpg": b"aaaa", f"{EXTRA}/b.jpg": b"bbbb"})
    root = _mirror(tmp_path / "data" / NAME, {f"{EXTRA}/a.jpg": b"aaaa", f"{EXTRA}/b.jpg": b"bb"})  # b cut short
    report = dl.download(NAME, tmp_path / "data", mirror=str(mirror), progress=False)
    assert (report.extra_copied, report.extra_present) == (1, 1)
    assert (root / EXTRA / "b.jpg").read_bytes() == b"bbbb"
    assert report.summary().endswith("unlabelled slices: 2 files (1 copied, 1 already present)")


def test_a_folder_inside_the_extra_folder_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)
    mirror = _mirror(tmp_path / "mirror", {**files, f"{EXTRA}/a.jpg": b"a", f"{EXTRA}/thumbs/a.jpg": b"t"})
    report = dl.download(NAME, tmp_path / "data", mirror=str(mirror), progress=False)
    assert (report.extra_copied, report.extra_present) == (1, 0)
    assert sorted(p.name for p in (tmp_path / "data" / NAME / EXTRA).iterdir()) == ["a.jpg"]


def test_a_mirror_that_is_the_data_folder_counts_its_extra_files(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)
    root = _mirror(tmp_path / "data" / NAME, {**files, f"{EXTRA}/a.jpg": b"a", f"{EXTRA}/b.jpg": b"b"})
    report = dl.download(NAME, tmp_path / "data", mirror=str(root), progress=False)
    assert report.in_place and report.skipped == [TRAIN] and report.extra_present == 2
    assert report.summary() == (f"{NAME} in {root}: training split: 1 file verified (0 fetched, 1 already present); "
                                "test split: 0 files verified (0 fetched, 0 already present); "
                                "unlabelled slices: 2 files (0 copied, 2 already present)")


# ---------------------------------------------------------------------------------- HTTP answers


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``answer(handler, data)`` may answer a GET itself (returning True). Records every GET as
    (path, Range header)."""

    answer: Callable[[http.server.SimpleHTTPRequestHandler, bytes], bool] = staticmethod(lambda h, data: False)
    requests: list[tuple[str, str | None]] = []

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:
        type(self).requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if path.is_file() and type(self).answer(self, path.read_bytes()):
            return None
        return super().do_GET()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path, Callable], str]]:
    servers = []

    def start(root: Path, answer: Callable) -> str:
        handler = type("H", (_Handler,), {"answer": staticmethod(answer), "requests": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread, handler))
        start.handler = handler
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread, _ in servers:
        server.shutdown()
        server.server_close()
        thread.join()


def _send(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> bool:
    h.send_response(status)
    for key, value in headers.items():
        h.send_header(key.replace("_", "-"), value)
    if "Content_Length" not in headers:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
    return True


def test_http_410_gone_is_a_missing_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, serve) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)
    url = serve(_mirror(tmp_path / "mirror", files), lambda h, data: _send(h, 410, b""))
    with pytest.raises(CovsegError, match=re.escape(f"training split incomplete: 1 of 1 file missing or corrupt, "
                                                    f"first {TRAIN} (missing from {url})")):
        dl.download(NAME, tmp_path / "data", mirror=url, progress=False)


def test_a_416_to_a_resume_restarts_from_byte_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, serve) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)

    def no_ranges(h, data: bytes) -> bool:
        return bool(h.headers.get("Range")) and _send(h, 416, b"", Content_Range=f"bytes */{len(data)}")

    url = serve(_mirror(tmp_path / "mirror", files), no_ranges)
    part = _mirror(tmp_path / "data" / NAME, {TRAIN + ".part": BODY + b"trailing junk"}) / (TRAIN + ".part")
    report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert report.fetched == [TRAIN] and not part.exists()
    assert serve.handler.requests == [("/" + TRAIN, f"bytes={len(BODY) + 13}-"), ("/" + TRAIN, None)]


def test_a_206_from_another_offset_is_not_appended(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, serve) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)

    def whole_as_206(h, data: bytes) -> bool:  # ignores the offset asked for, says so in Content-Range
        return bool(h.headers.get("Range")) and _send(h, 206, data, Content_Range=f"bytes 0-{len(data) - 1}/{len(data)}")

    url = serve(_mirror(tmp_path / "mirror", files), whole_as_206)
    _mirror(tmp_path / "data" / NAME, {TRAIN + ".part": b"junk"})
    report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert report.fetched == [TRAIN]
    assert (tmp_path / "data" / NAME / TRAIN).read_bytes() == BODY
    assert serve.handler.requests == [("/" + TRAIN, "bytes=4-")]  # written from byte 0 at once, no second request


def test_a_body_shorter_than_its_content_length_is_an_interrupted_download(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path, serve) -> None:
    files = {TRAIN: BODY}
    _use_manifest(monkeypatch, files)
    url = serve(_mirror(tmp_path / "mirror", files),
                lambda h, data: _send(h, 200, data[:100], Content_Length=str(len(data))))
    with pytest.raises(CovsegError, match=re.escape(f"download of {url}{TRAIN} was interrupted after 100 of "
                                                    f"{len(BODY)} bytes; run again to resume")):
        dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert (tmp_path / "data" / NAME / (TRAIN + ".part")).read_bytes() == BODY[:100]  # kept, to resume


def test_an_optional_split_the_mirror_fails_to_serve_is_reported_missing(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path, serve) -> None:
    files = {TEST: b"test", TRAIN: BODY}
    assert TEST < TRAIN
    _use_manifest(monkeypatch, files)
    url = serve(_mirror(tmp_path / "mirror", files),
                lambda h, data: h.path.startswith("/Dataset/TestingSet/") and _send(h, 500, b""))
    # session 75: an HTTP 5xx on the optional split is reported, as an unreachable mirror is (it was an error);
    # session 76: asked twice, and named as failed, not missing
    monkeypatch.setattr(dl, "_RETRY_PAUSE_S", 0.0)
    report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert (tmp_path / "data" / NAME / TRAIN).read_bytes() == BODY
    assert report.splits["test"].failed == [TEST] and not report.splits["test"].missing
    assert report.notes[0] == (f"test split: the mirror answered HTTP 500 Internal Server Error for 1 file, asked "
                               f"twice: {TEST}; run covseg download again to fetch it")


# ---------------------------------------------------------------------------------- summaries


def test_a_corrupt_optional_split_is_reported_as_corrupt_not_held_out(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    import hashlib

    manifest = {TRAIN: hashlib.sha256(BODY).hexdigest(), TEST: hashlib.sha256(b"test").hexdigest()}
    monkeypatch.setattr(dl, "read_manifest", lambda name: manifest)
    mirror = _mirror(tmp_path / "mirror", {TRAIN: BODY, TEST: b"TEST"})  # the test file fails its check
    report = dl.download(NAME, tmp_path / "data", mirror=str(mirror), progress=False)
    assert report.splits["test"].corrupt == [TEST] and not report.splits["test"].complete
    assert not (tmp_path / "data" / NAME / TEST).exists()
    assert report.summary() == (
        f"{NAME} in {tmp_path / 'data' / NAME}: training split: 1 file verified (1 fetched, 0 already present); "
        "test split: 0 of 1 file verified, 1 failed its SHA-256 check and was deleted (not required); "
        f"unlabelled slices ({EXTRA}): not in the mirror")
    # the same folder verified in place: the bad file is left as it is
    root = tmp_path / "data" / NAME
    _mirror(root, {TEST: b"TEST"})
    report = dl.download(NAME, tmp_path / "data", mirror=str(root), progress=False)
    assert report.in_place and report.splits["test"].corrupt == [TEST]
    assert (root / TEST).read_bytes() == b"TEST"
    assert report.summary() == (
        f"{NAME} in {root}: training split: 1 file verified (0 fetched, 1 already present); "
        "test split: 0 of 1 file verified, 1 failed its SHA-256 check (left as it is) (not required)")


def test_split_report_counts() -> None:
    report = dl.SplitReport(fetched=["a"], skipped=["b", "c"], missing=["d"], corrupt=["e", "f"])
    assert report.total == 6 and not report.complete
    assert not dl.SplitReport(corrupt=["e"]).complete
    assert dl.SplitReport(fetched=["a"]).complete


def test_summary_counts_one_file_in_the_singular_and_more_in_the_plural(tmp_path: Path) -> None:
    def summary(in_place: bool, corrupt: list[str], extra: int) -> str:
        splits = {"training": dl.SplitReport(skipped=["a"]), "test": dl.SplitReport(missing=["b"], corrupt=corrupt)}
        return dl.DownloadReport(NAME, tmp_path, "m", splits, frozenset({"training"}), "unlabelled slices",
                                 extra_copied=extra, in_place=in_place).summary()

    assert summary(False, ["c"], 1) == (f"{NAME} in {tmp_path}: training split: 1 file verified (0 fetched, 1 already "
                                        "present); test split: 0 of 2 files verified, 1 missing from the mirror, 1 "
                                        "failed its SHA-256 check and was deleted (not required); unlabelled slices: "
                                        "1 file (1 copied, 0 already present)")
    assert "2 failed their SHA-256 check and were deleted" in summary(False, ["c", "d"], 0)
    assert "2 failed their SHA-256 check (left as they are)" in summary(True, ["c", "d"], 0)
    assert "1 failed its SHA-256 check (left as it is)" in summary(True, ["c"], 0)
