"""Session 76, covseg download: an HTTP 5xx on one file is asked again once, and on the optional test split a file
the mirror keeps failing no longer stops the split's other files (they are fetched; the failing ones are named, exit
0); and the count of unlabelled slices already here leaves out ``.part`` and stray files. Tiny fake data sets and a
loopback server."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import covseg.download as dl
from covseg.cli import main
from covseg.errors import CovsegError

from conftest import QuietHandler, fake_mirror, serving

NAME = "covid-semiseg"
TRAIN = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/1.jpg"
TESTS = [f"Dataset/TestingSet/LungInfection-Test/Imgs/{i}.jpg" for i in range(1, 6)]
EXTRA = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"
NO_EXTRAS = (f"unlabelled slices ({EXTRA}): skipped, an HTTP mirror cannot list folders; use a folder mirror to get "
             "them")  # an HTTP mirror's last note


class _Flaky(QuietHandler):
    """Serves its folder; answers ``failing[path]`` (an HTTP status) to the next ``times[path]`` requests for
    ``path`` (-1: to every one); records the path of every request."""

    requests: list[str] = []
    failing: dict[str, int] = {}
    times: dict[str, int] = {}

    def do_GET(self) -> None:
        cls = type(self)
        cls.requests.append(self.path)
        left = cls.times.get(self.path, 0)
        if left:
            cls.times[self.path] = left - 1
            self.send_error(cls.failing[self.path])
            return None
        return super().do_GET()


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, type[_Flaky]]]:
    """A mirror of one training file and five test files served on a loopback port (no pause before a retry): its
    URL and its handler class, whose ``fail`` is set by the test."""
    monkeypatch.setattr(dl, "_RETRY_PAUSE_S", 0.0, raising=False)
    monkeypatch.setattr(dl, "_RATE_LIMIT_PAUSE_S", 0.0, raising=False)
    fake_mirror(monkeypatch, tmp_path / "www", {TRAIN: b"train image", **{t: t.encode() for t in TESTS}})
    handler = type("H", (_Flaky,), {"requests": [], "failing": {}, "times": {}})
    with serving(tmp_path / "www", handler) as url:
        yield url, handler


def _fail(handler: type[_Flaky], rel: str, status: int = 503, times: int = -1) -> None:
    handler.failing["/" + rel], handler.times["/" + rel] = status, times


def _asked(handler: type[_Flaky], rel: str) -> int:
    return handler.requests.count("/" + rel)


# ------------------------------------------------------------------------------------- HTTP 5xx on one file


def test_a_test_file_the_mirror_keeps_failing_leaves_the_others_fetched(flaky, tmp_path: Path, capsys) -> None:
    url, handler = flaky
    _fail(handler, TESTS[1], 500)
    # it was: the test split's other 4 files not asked for, the whole split "missing", exit 0
    assert main(["download", "--mirror", url, "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("; test split: 4 of 5 files verified, 1 the mirror failed to serve (not required); test split: the mirror "
            f"answered HTTP 500 Internal Server Error for 1 file, asked twice: {TESTS[1]}; run covseg download again "
            f"to fetch it; {NO_EXTRAS}\n") in out
    root = tmp_path / "data" / NAME
    assert all((root / t).read_bytes() == t.encode() for t in TESTS if t != TESTS[1])
    assert not (root / TESTS[1]).exists() and not list(root.rglob("*.part"))
    assert _asked(handler, TESTS[1]) == 2 and all(_asked(handler, t) == 1 for t in TESTS if t != TESTS[1])
    report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)  # a second run asks for that one only
    assert report.splits["test"].failed == [TESTS[1]] and len(report.splits["test"].skipped) == 4


@pytest.mark.parametrize("rel", [TRAIN, TESTS[0]], ids=["training", "test"])
def test_a_single_5xx_is_asked_again_once(rel: str, flaky, tmp_path: Path) -> None:
    url, handler = flaky
    _fail(handler, rel, 503, times=1)
    # it was: a training file an error (exit 2), a test file the whole test split "missing"
    report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert sorted(report.fetched) == sorted([TRAIN, *TESTS]) and report.notes == [NO_EXTRAS]
    assert _asked(handler, rel) == 2


def test_a_training_file_failing_twice_is_still_an_error(flaky, tmp_path: Path) -> None:
    url, handler = flaky
    _fail(handler, TRAIN, 503)
    with pytest.raises(CovsegError, match=f"^cannot fetch {url}{TRAIN}: HTTP 503 Service Unavailable; pass --mirror"):
        dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert _asked(handler, TRAIN) == 2 and not any(r.startswith("/Dataset/TestingSet/") for r in handler.requests)


def test_a_mirror_failing_three_test_files_in_a_row_is_not_asked_for_the_rest(flaky, tmp_path: Path) -> None:
    url, handler = flaky
    for rel in TESTS:
        _fail(handler, rel, 503)
    report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    test = report.splits["test"]
    assert test.failed == TESTS[:3] and test.not_asked == TESTS[3:] and not test.missing and report.fetched == [TRAIN]
    assert [_asked(handler, t) for t in TESTS] == [2, 2, 2, 0, 0]
    assert report.notes == [f"test split: the mirror answered HTTP 503 Service Unavailable for 3 files, asked twice: "
                            f"{', '.join(TESTS[:3])}; run covseg download again to fetch them",
                            "test split: the mirror answered HTTP 503 Service Unavailable for 3 files in a row, so its "
                            "2 other missing files were not asked for", NO_EXTRAS]
    assert "test split: 0 of 5 files verified, 3 the mirror failed to serve, 2 not asked for (not required)" \
           in report.summary()


# ------------------------------------------------------------------------------------- unlabelled slices counted


def _extras(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"slice " + name.encode())


STRAYS = ["c.jpg.part", "notes.txt", ".DS_Store"]


@pytest.mark.parametrize("over", ["http", "folder", "in-place"])
def test_unlabelled_slices_counted_leave_out_part_and_stray_files(over: str, monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    www = fake_mirror(monkeypatch, tmp_path / "www", {TRAIN: b"train image"})
    root = tmp_path / "data" / NAME
    _extras(root / EXTRA, ["a.jpg", "b.jpg", *STRAYS])
    if over == "http":
        with serving(www) as url:
            report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
        # it was "5 of 1600 here": an interrupted copy's .part, a note and a hidden file counted as slices
        assert report.notes == [f"unlabelled slices ({EXTRA}): 2 of 1600 here, skipped, an HTTP mirror cannot list "
                                "folders; use a folder mirror to get them"]
        assert (report.extra_copied, report.extra_present) == (0, 2)
    elif over == "folder":  # the mirror's own strays are neither copied nor counted
        _extras(www / EXTRA, ["a.jpg", "b.jpg", "d.png", *STRAYS])
        report = dl.download(NAME, tmp_path / "data", mirror=str(www), progress=False)
        assert (report.extra_copied, report.extra_present) == (1, 2)
        assert sorted(p.name for p in (root / EXTRA).iterdir()) == sorted(["a.jpg", "b.jpg", "d.png", *STRAYS])
    else:
        (root / TRAIN).parent.mkdir(parents=True)
        (root / TRAIN).write_bytes(b"train image")
        report = dl.download(NAME, tmp_path / "data", mirror=str(root), progress=False)
        assert report.in_place and (report.extra_copied, report.extra_present) == (0, 2)
    assert report.summary().endswith(f"unlabelled slices: {report.extra_copied + 2} files "
                                     f"({report.extra_copied} copied, 2 already present)"
                                     + ("; " + report.notes[0] if report.notes else ""))


# ------------------------------------------------------------------------------------- HTTP 429 on the test split


def test_a_rate_limited_test_file_is_reported_not_an_error(flaky, tmp_path: Path, capsys) -> None:
    url, handler = flaky
    _fail(handler, TESTS[0], 429)
    # it was exit 2, "cannot fetch URL/Dataset/TestingSet/...: HTTP 429 Too Many Requests", the training split complete
    assert main(["download", "--mirror", url, "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    assert (f"; test split: the mirror answered HTTP 429 Too Many Requests for 1 file, asked twice: {TESTS[0]}; "
            "run covseg download again to fetch it") in capsys.readouterr().out
    assert _asked(handler, TESTS[0]) == 2 and (tmp_path / "data" / NAME / TESTS[4]).is_file()


@pytest.mark.parametrize("header, pause", [(None, 5.0), ("2", 2.0), ("3600", 60.0),
                                           ("Wed, 21 Oct 2026 07:28:00 GMT", 5.0), ("nan", 5.0)])
def test_a_rate_limited_file_is_asked_again_after_its_retry_after(monkeypatch, header: str | None,
                                                                  pause: float) -> None:
    assert dl._rate_limit_pause(header) == pause  # seconds, capped; a date or nothing: the default pause
    waits: list[float] = []
    monkeypatch.setattr(dl.time, "sleep", waits.append)
    calls = iter([dl._Unavailable("m", "answered HTTP 429 Too Many Requests", dl._rate_limit_pause(header)),
                  dl._Unavailable("m", "answered HTTP 503 Service Unavailable")])

    def fetch(*args, **kwargs) -> str:
        raise next(calls)

    monkeypatch.setattr(dl, "_fetch_http_checked", fetch)
    with pytest.raises(dl._Unavailable):
        dl._fetch_http_retried("http://127.0.0.1:9/", TRAIN, Path("x.part"), "0" * 64, False)
    assert waits == [pause]  # was the 0.25 s of a 5xx whatever Retry-After said


def test_a_mirror_out_of_reach_after_failing_the_last_test_file_is_said_so(monkeypatch, tmp_path: Path) -> None:
    """A 5xx on the test split's files, then the mirror out of reach on the last: both are in the notes (the out of
    reach was unmentioned when an earlier file had failed)."""
    fake_mirror(monkeypatch, tmp_path / "www", {TRAIN: b"train image", **{t: t.encode() for t in TESTS[:2]}})
    real = dl._fetch_http_retried

    def fetch(base: str, rel: str, *args, **kwargs) -> str:
        if rel == TESTS[0]:
            raise dl._Unavailable("m", "answered HTTP 503 Service Unavailable")
        if rel == TESTS[1]:
            raise dl._Unreachable(base, "Connection refused")
        return real(base, rel, *args, **kwargs)

    monkeypatch.setattr(dl, "_fetch_http_retried", fetch)
    with serving(tmp_path / "www", QuietHandler) as url:
        report = dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert report.splits["test"].failed == [TESTS[0]] and report.splits["test"].missing == [TESTS[1]]
    assert any("could not be reached (Connection refused), so its missing files were not fetched" in n
               for n in report.notes), report.notes
