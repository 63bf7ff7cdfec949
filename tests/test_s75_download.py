"""Session 75, covseg download walked as a user: a --mirror URL holding a login or a ?query (one line, before any
request), and a mirror folder or URL given one level too high or too deep (the message names the one to give)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import covseg.download as dl
from covseg.cli import main
from covseg.errors import CovsegError

from conftest import fake_mirror, free_loopback_port, serving

NAME = "covid-semiseg"
TRAIN = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/Imgs/1.jpg"
TRAIN_GT = "Dataset/TrainingSet/LungInfection-Train/Doctor-label/GT/1.png"
FILES = {TRAIN: b"image bytes", TRAIN_GT: b"mask bytes"}


def _mirror(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """FILES written under ``root`` (a mirror laid out like upstream), and a manifest of just them."""
    return fake_mirror(monkeypatch, root, FILES)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """``tmp_path / "www"`` served on a loopback port: its base URL."""
    (tmp_path / "www").mkdir()
    with serving(tmp_path / "www") as url:
        yield url


# ------------------------------------------------------------------------------------- --mirror URLs refused


@pytest.mark.parametrize("login", ["user:secret@", "user@"])
def test_a_mirror_url_with_a_login_is_one_line_before_any_request(login: str, tmp_path: Path, capsys) -> None:
    url = f"http://{login}127.0.0.1:{free_loopback_port()}/covid-semiseg/"
    # it was "cannot reach http://user:secret@127.0.0.1:PORT/...: Name or service not known", for a host that is
    # fine, after a request, with the password in the message
    assert main(["download", "--mirror", url, "--data-dir", str(tmp_path / "data"), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"covseg: error: mirror URL {url} is not valid: it has a user name or password "
                                       "(USER@), which covseg does not send; use a mirror that needs no login; pass "
                                       "--mirror http://HOST[:PORT]/PATH/ or a folder\n")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("tail", ["?token=abc", "#top", "?"])
def test_a_mirror_url_with_a_query_or_fragment_is_refused(tail: str, tmp_path: Path, served: str) -> None:
    (tmp_path / "www" / "index.html").write_text("a page, not a data set")
    url = served + tail
    # the files' paths went into the query ("?token=abc/Dataset/..."): every request fetched the same page, and each
    # file "failed its SHA-256 check in" a mirror that was complete
    with pytest.raises(CovsegError, match=r"^mirror URL .* is not valid: it has a \?query or #fragment, after which "
                                          r"the files' paths cannot be added; leave it out; pass --mirror "):
        dl.download(NAME, tmp_path / "data", mirror=url, progress=False)
    assert not (tmp_path / "data").exists()


# ------------------------------------------------------------------------------------- --mirror at the wrong level


def test_a_mirror_folder_one_level_too_high_names_the_folder_to_give(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    # another machine's data folder (--data-dir there), given where its covid-semiseg/ folder was meant
    other = tmp_path / "other-cache"
    mirror = _mirror(monkeypatch, other / NAME)
    (other / "a-file").write_text("x")
    (other / "empty").mkdir()
    with pytest.raises(CovsegError) as info:
        dl.download(NAME, tmp_path / "data", mirror=str(other), progress=False)
    # it was "...; pass --mirror DIR_OR_URL (or set COVSEG_MIRROR) with a complete copy", though the copy is complete
    assert str(info.value) == (f"training split incomplete: 2 of 2 files missing or corrupt, first {TRAIN_GT} "
                               f"(missing from {other}); {other} is the folder above the mirror: pass --mirror "
                               f"{mirror}, the folder that holds Dataset/")
    assert not (tmp_path / "data").exists()
    assert dl.download(NAME, tmp_path / "data", mirror=str(mirror), progress=False).fetched == sorted(FILES)


def test_an_http_mirror_one_level_too_high_names_the_url_to_give(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                  served: str) -> None:
    _mirror(monkeypatch, tmp_path / "www" / NAME)  # `python -m http.server` started in the folder above the data set
    with pytest.raises(CovsegError) as info:
        dl.download(NAME, tmp_path / "data", mirror=served, progress=False)
    assert str(info.value).endswith(f"(missing from {served}); {served} is the folder above the mirror: pass --mirror "
                                    f"{served}{NAME}/, the folder that holds Dataset/")
    assert dl.download(NAME, tmp_path / "data", mirror=f"{served}{NAME}/", progress=False).fetched == sorted(FILES)


@pytest.mark.parametrize("deeper", ["Dataset/", "Dataset/TrainingSet"])
def test_an_http_mirror_too_deep_names_the_url_to_give(deeper: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       served: str) -> None:
    _mirror(monkeypatch, tmp_path / "www" / "copy")
    given = f"{served}copy/{deeper}"
    with pytest.raises(CovsegError) as info:
        dl.download(NAME, tmp_path / "data", mirror=given, progress=False)
    base = given if given.endswith("/") else given + "/"
    assert str(info.value).endswith(f"(missing from {base}); {base} is the mirror's Dataset/ folder or one inside it: "
                                    f"pass --mirror {served}copy/, the folder that holds Dataset/")


def test_an_http_mirror_without_the_files_keeps_the_plain_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               served: str) -> None:
    _mirror(monkeypatch, tmp_path / "elsewhere")
    (tmp_path / "www" / "Dataset").mkdir()
    with pytest.raises(CovsegError) as info:
        dl.download(NAME, tmp_path / "data", mirror=served + "Dataset/", progress=False)
    assert str(info.value).endswith(f"(missing from {served}Dataset/); pass --mirror DIR_OR_URL (or set "
                                    "COVSEG_MIRROR) with a complete copy")


# ------------------------------------------------------------------------------------- unlabelled slices already here


EXTRA = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"


@pytest.mark.parametrize("over", ["http", "folder"])
def test_unlabelled_slices_already_here_are_counted_not_called_skipped(over: str, monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path, served: str) -> None:
    # a first download from a folder mirror brought the slices; checked again from a mirror that cannot give them
    _mirror(monkeypatch, tmp_path / "www")  # served over HTTP, and a folder mirror without Pseudo-label/
    root = tmp_path / "data" / NAME
    for name in ("a.jpg", "b.jpg"):
        (root / EXTRA).mkdir(parents=True, exist_ok=True)
        (root / EXTRA / name).write_bytes(b"slice")
    report = dl.download(NAME, tmp_path / "data", mirror=served if over == "http" else str(tmp_path / "www"),
                         progress=False)
    # it was "unlabelled slices (...): skipped, an HTTP mirror cannot list folders; use a folder mirror to get them"
    # (or "...: not in the mirror"), with the 2 slices there
    assert "; unlabelled slices: 2 files (0 copied, 2 already present)" in report.summary()
    # and a part of the 1600 (an interrupted copy) is said to be one, not used as the whole set without a word
    why = ("skipped, an HTTP mirror cannot list folders; use a folder mirror to get them" if over == "http"
           else "not in the mirror")
    assert report.extra_present == 2 and report.notes == [f"unlabelled slices ({EXTRA}): 2 of 1600 here, {why}"]
