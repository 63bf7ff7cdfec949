"""covseg.download against the real local mirror, as a folder and over a loopback HTTP server."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from covseg import download as dl
from covseg.errors import CovsegError

from conftest import QuietHandler as _QuietHandler, RangeHandler, free_loopback_port, serving

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-semiseg"
NAME = "covid-semiseg"
N_TRAIN, N_TEST = 200, 192
EXTRA = "Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs"


@pytest.fixture(scope="module")
def mirror() -> Path:
    if not (MIRROR / "Dataset" / "TrainingSet").is_dir():
        pytest.skip(f"local mirror {MIRROR} not present")
    return MIRROR


class _RangeHandler(RangeHandler):
    """Serves single ``bytes=N-`` ranges; records the ranges asked for."""

    ranges: list[tuple[str, int]] = []

    def range_asked(self, start: int) -> None:
        type(self).ranges.append((self.path, start))


def _serve(root: Path, handler: type) -> Iterator[str]:
    with serving(root, handler) as url:
        yield url


@pytest.fixture(scope="module")
def http_mirror(mirror: Path) -> Iterator[str]:
    yield from _serve(mirror, _RangeHandler)


@pytest.fixture(scope="module")
def dir_download(mirror: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dl.DownloadReport]:
    dest = tmp_path_factory.mktemp("dir")
    return dest, dl.download(NAME, dest, mirror=str(mirror), progress=False)


def _parts(root: Path) -> list[Path]:
    return list(root.rglob("*.part"))


def _train_paths() -> list[str]:
    return sorted(p for p in dl.read_manifest(NAME) if p.startswith("Dataset/TrainingSet/"))


def _only_training_files(monkeypatch: pytest.MonkeyPatch, count: int) -> tuple[list[str], dict[str, str]]:
    """Make the manifest list only the first ``count`` training files; returns every training path (sorted) and
    that manifest subset."""
    train = _train_paths()
    subset = {p: h for p, h in dl.read_manifest(NAME).items() if p in train[:count]}
    monkeypatch.setattr(dl, "read_manifest", lambda name: subset)
    return train, subset


def _copy_files(mirror: Path, dest: Path, rels) -> None:
    """Copy each of ``rels`` (manifest paths) from the test mirror to the same place under ``dest``."""
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mirror / rel, dest / rel)


def _flip_a_byte(path: Path) -> bytes:
    """Corrupt ``path`` (one byte in its middle inverted); returns the corrupt bytes."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    return bytes(raw)


def test_manifest_and_paths(tmp_path: Path) -> None:
    manifest = dl.read_manifest(NAME)
    assert len(manifest) == N_TRAIN + N_TEST
    assert all(len(h) == 64 for h in manifest.values())
    assert dl.dataset_root(tmp_path, NAME) == tmp_path / NAME
    with pytest.raises(CovsegError, match="unknown dataset"):
        dl.read_manifest("nope")


def test_directory_mirror(dir_download: tuple[Path, dl.DownloadReport]) -> None:
    dest, report = dir_download
    root = dl.dataset_root(dest, NAME)
    train, test = report.splits["training"], report.splits["test"]
    assert len(train.fetched) == N_TRAIN and train.complete
    assert len(test.missing) == N_TEST and not test.fetched
    assert len(report.missing) == N_TEST and not report.corrupt and not report.skipped
    assert not _parts(root)
    assert (root / _train_paths()[0]).is_file()
    assert not (root / "Dataset" / "TestingSet").exists()
    assert report.extra_copied == 1600
    assert len(list((root / EXTRA).iterdir())) == 1600
    text = report.summary()
    assert f"training split: {N_TRAIN} files verified" in text
    assert f"test split: {N_TEST} files missing from the mirror" in text
    assert "\n" not in text


def test_resume_after_deleting(dir_download: tuple[Path, dl.DownloadReport], mirror: Path,
                               tmp_path: Path) -> None:
    src, _ = dir_download
    dest = tmp_path / "dest"
    shutil.copytree(src, dest)
    root = dl.dataset_root(dest, NAME)
    gone = _train_paths()[:2]
    for rel in gone:
        (root / rel).unlink()
    (root / EXTRA / "Data-1_coronacases_org_001_1.jpg").unlink()
    report = dl.download(NAME, dest, mirror=str(mirror), progress=False)
    assert sorted(report.fetched) == gone
    assert len(report.skipped) == N_TRAIN - 2
    assert (report.extra_copied, report.extra_present) == (1, 1599)
    assert not _parts(root)


def test_http_mirror_with_range_resume(http_mirror: str, mirror: Path, tmp_path: Path) -> None:
    root = dl.dataset_root(tmp_path, NAME)
    a, b = _train_paths()[:2]
    # a: a truthful truncated .part -> resumed with a Range request
    data_a = (mirror / a).read_bytes()
    (root / a).parent.mkdir(parents=True)
    (root / (a + ".part")).write_bytes(data_a[: len(data_a) // 2])
    # b: a .part with a wrong prefix -> resumed, fails the hash, refetched whole
    (root / (b + ".part")).write_bytes(b"\0" * 10)
    _RangeHandler.ranges.clear()

    report = dl.download(NAME, tmp_path, mirror=http_mirror, progress=False)
    assert len(report.splits["training"].fetched) == N_TRAIN
    assert len(report.splits["test"].missing) == N_TEST
    assert not report.corrupt and not _parts(root)
    assert (root / a).read_bytes() == data_a
    assert (root / b).read_bytes() == (mirror / b).read_bytes()
    asked = dict(_RangeHandler.ranges)
    assert asked == {"/" + a: len(data_a) // 2, "/" + b: 10}
    assert "HTTP mirror cannot list folders" in report.summary()
    assert not (root / EXTRA).exists()


def test_http_without_range_support_restarts(mirror: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    a = _train_paths()[0]
    monkeypatch.setattr(dl, "read_manifest", lambda name: {a: dl.file_sha256(mirror / a)})
    root = dl.dataset_root(tmp_path, NAME)
    (root / a).parent.mkdir(parents=True)
    (root / (a + ".part")).write_bytes(b"junk")
    for url in _serve(mirror, _QuietHandler):
        report = dl.download(NAME, tmp_path, mirror=url.rstrip("/"), progress=False)
    assert report.fetched == [a]
    assert (root / a).read_bytes() == (mirror / a).read_bytes()


class _ForbiddingHandler(_QuietHandler):
    """Answers 403, as object stores do for keys that are not there, for the test split and for any path in
    ``forbidden``."""

    forbidden: set[str] = set()

    def do_GET(self) -> None:
        if self.path.startswith("/Dataset/TestingSet/") or self.path in type(self).forbidden:
            self.send_error(403)
            return None
        return super().do_GET()


def test_a_mirror_that_forbids_the_held_out_split_still_serves_the_training_split(
        mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = dl.read_manifest(NAME)
    test_files = sorted(p for p in manifest if p.startswith("Dataset/TestingSet/"))[:2]
    train_files = _train_paths()[:3]
    # the test split sorts first: before, its 403 stopped the download before any training file was fetched
    assert test_files[0] < train_files[0]
    monkeypatch.setattr(dl, "read_manifest", lambda name: {p: manifest[p] for p in test_files + train_files})
    root = dl.dataset_root(tmp_path, NAME)
    (root / train_files[0]).parent.mkdir(parents=True)
    shutil.copyfile(mirror / train_files[0], root / train_files[0])  # verified already, with a stale partial copy
    (root / (train_files[0] + ".part")).write_bytes(b"junk")
    _ForbiddingHandler.forbidden = set()
    for url in _serve(mirror, _ForbiddingHandler):
        report = dl.download(NAME, tmp_path, mirror=url, progress=False)
        assert sorted(report.splits["training"].fetched) == train_files[1:]
        assert report.splits["training"].skipped == train_files[:1]
        assert sorted(report.splits["test"].missing) == test_files
        assert not _parts(root)
        # a training file the mirror forbids is still an error: the training split is required
        (root / train_files[2]).unlink()
        _ForbiddingHandler.forbidden = {"/" + train_files[2]}
        with pytest.raises(CovsegError, match="HTTP 403"):
            dl.download(NAME, tmp_path, mirror=url, progress=False)


def test_a_complete_download_checked_again_offline_passes_with_the_held_out_split_reported(
        mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = dl.read_manifest(NAME)
    test_files = sorted(p for p in manifest if p.startswith("Dataset/TestingSet/"))[:3]
    train_files = _train_paths()[:3]
    monkeypatch.setattr(dl, "read_manifest", lambda name: {p: manifest[p] for p in test_files + train_files})
    root = dl.dataset_root(tmp_path, NAME)
    _copy_files(mirror, root, train_files)  # the training split is there; the test split was never served
    offline = f"http://127.0.0.1:{free_loopback_port()}/"  # nothing listens: every request is refused
    report = dl.download(NAME, tmp_path, mirror=offline, progress=False)
    assert sorted(report.splits["training"].skipped) == train_files and not report.splits["training"].fetched
    assert sorted(report.splits["test"].missing) == test_files
    assert report.notes[0].startswith("test split: the mirror could not be reached (")
    assert sum("could not be reached" in note for note in report.notes) == 1  # said once, not per file
    assert "test split: 3 files missing from the mirror" in report.summary()
    # a missing training file still needs the mirror: unreachable, it is an error
    (root / train_files[1]).unlink()
    with pytest.raises(CovsegError, match=r"cannot reach http://127\.0\.0\.1:\d+/Dataset/TrainingSet/"):
        dl.download(NAME, tmp_path, mirror=offline, progress=False)


def test_corrupt_file_in_mirror(mirror: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    train, subset = _only_training_files(monkeypatch, 6)
    bad_mirror = tmp_path / "mirror"
    _copy_files(mirror, bad_mirror, subset)
    victim = train[3]
    _flip_a_byte(bad_mirror / victim)

    dest = tmp_path / "dest"
    with pytest.raises(CovsegError, match="training split incomplete") as info:
        dl.download(NAME, dest, mirror=str(bad_mirror), progress=False)
    message = str(info.value)
    assert victim in message and "1 of 6" in message and "--mirror" in message
    assert "\n" not in message
    root = dl.dataset_root(dest, NAME)
    assert not (root / victim).exists()
    assert not _parts(root)
    assert (root / train[0]).is_file()

    # a bad file already sitting under the final name is not kept either
    shutil.copyfile(bad_mirror / victim, root / victim)
    with pytest.raises(CovsegError):
        dl.download(NAME, dest, mirror=str(bad_mirror), progress=False)
    assert not (root / victim).exists()


def test_a_mirror_that_is_the_data_folder_is_only_verified(mirror: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    train, subset = _only_training_files(monkeypatch, 4)
    root = dl.dataset_root(tmp_path / "data", NAME)  # --data-dir tmp/data --mirror tmp/data/covid-semiseg
    _copy_files(mirror, root, subset)
    report = dl.download(NAME, tmp_path / "data", mirror=str(root), progress=False)
    assert sorted(report.skipped) == sorted(subset) and not report.fetched and report.in_place

    victim = train[1]
    raw = _flip_a_byte(root / victim)
    # the same folder by another spelling: it used to unlink the bad file, deleting it from the mirror, and call it
    # missing from the mirror
    with pytest.raises(CovsegError, match=rf"^training split incomplete: 1 of 4 files .*first {victim} \(fails its "
                                          r"SHA-256 check\); --mirror is the data folder itself .*--mirror"):
        dl.download(NAME, tmp_path / "data", mirror=str(tmp_path / "data" / "." / NAME), progress=False)
    assert (root / victim).read_bytes() == raw  # left as it was
    assert all((root / rel).is_file() for rel in subset) and not _parts(root)


def test_a_data_folder_linked_into_the_mirror_keeps_the_mirror_s_files(mirror: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    train, subset = _only_training_files(monkeypatch, 3)
    own = tmp_path / "mirror"
    _copy_files(mirror, own, subset)
    victim = own / train[1]
    raw = _flip_a_byte(victim)
    root = dl.dataset_root(tmp_path / "data", NAME)
    root.mkdir(parents=True)
    (root / "Dataset").symlink_to(own / "Dataset")  # not the data folder itself, so not caught as in place
    # it used to unlink the bad file through the link, deleting the mirror's own copy, and call it missing
    with pytest.raises(CovsegError, match=rf"^training split incomplete: 1 of 3 files .*first {train[1]} \(fails its "
                                          r"SHA-256 check in "):
        dl.download(NAME, tmp_path / "data", mirror=str(own), progress=False)
    assert victim.read_bytes() == raw  # left as it was
    assert all((own / rel).is_file() for rel in subset) and not _parts(own)


def test_missing_training_file_is_an_error(mirror: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    subset = {"Dataset/TrainingSet/nowhere.png": "0" * 64}
    monkeypatch.setattr(dl, "read_manifest", lambda name: subset)
    with pytest.raises(CovsegError, match="nowhere.png"):
        dl.download(NAME, tmp_path, mirror=str(mirror), progress=False)
    # an empty mirror: nothing fetched, so no empty data folder is left to be taken later for a finished download
    (tmp_path / "empty-mirror").mkdir()
    with pytest.raises(CovsegError, match="nowhere.png"):
        dl.download(NAME, tmp_path / "new", mirror=str(tmp_path / "empty-mirror"), progress=False)
    assert not (tmp_path / "new").exists()  # nor the folders made above it
    with pytest.raises(CovsegError, match="nowhere.png"):
        dl.download(NAME, tmp_path / "a" / "b", mirror=str(tmp_path / "empty-mirror"), progress=False)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(CovsegError, match="is a file, not a folder"):
        dl.download(NAME, tmp_path / "new", mirror=str(tmp_path / "file"), progress=False)
    kept = dl.dataset_root(tmp_path / "kept", NAME)
    kept.mkdir(parents=True)
    with pytest.raises(CovsegError, match="nowhere.png"):
        dl.download(NAME, tmp_path / "kept", mirror=str(tmp_path / "empty-mirror"), progress=False)
    assert kept.is_dir()  # a folder that was there before is never removed


def test_unreachable_url_and_missing_dir(tmp_path: Path) -> None:
    port = free_loopback_port()
    with pytest.raises(CovsegError, match=r"cannot reach http://127\.0\.0\.1:\d+/.*--mirror"):
        dl.download(NAME, tmp_path, mirror=f"http://127.0.0.1:{port}/", progress=False)
    assert not dl.dataset_root(tmp_path, NAME).exists()
    with pytest.raises(CovsegError, match="does not exist"):
        dl.download(NAME, tmp_path, mirror=str(tmp_path / "no-such-dir"), progress=False)


def test_resolve_mirror_and_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("COVSEG_MIRROR", raising=False)
    assert dl.resolve_mirror(None) is None
    assert dl.resolve_mirror("/data/m") == "/data/m"
    monkeypatch.setenv("COVSEG_MIRROR", "http://mirror.example/")
    assert dl.resolve_mirror(None) == "http://mirror.example/"
    assert dl.resolve_mirror("/data/m") == "/data/m"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dl.default_data_dir() == tmp_path / "covseg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dl.default_data_dir() == Path(os.path.expanduser("~")) / ".cache" / "covseg"


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:1/\u00fc/", "http://", "http://127.0.0.1:99999/"])
def test_malformed_mirror_url_is_a_one_line_error(url: str, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    assert main(["download", "--mirror", url, "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("covseg: error: mirror URL") and err.count("\n") == 1
    assert not dl.dataset_root(tmp_path, NAME).exists()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/covid-semiseg/", "s3://bucket/covid-semiseg"])
def test_a_mirror_url_of_another_scheme_is_named_as_typed_not_read_as_a_folder(url: str, tmp_path: Path,
                                                                               capsys) -> None:
    from covseg.cli import main

    assert main(["download", "--mirror", url, "--data-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    # it was "mirror folder ftp:/127.0.0.1/covid-semiseg does not exist": the URL read as a path, "//" collapsed
    assert err.startswith(f"covseg: error: mirror URL {url} is not valid: covseg fetches over http:// and https:// "
                          f"only, not {url.split('://')[0]}://") and err.count("\n") == 1
    assert not dl.dataset_root(tmp_path, NAME).exists()


def test_a_data_dir_that_cannot_hold_the_data_set_names_the_option(mirror: Path, tmp_path: Path, capsys) -> None:
    from covseg.cli import main

    (tmp_path / NAME).write_text("mine")  # a file where the data set's folder goes
    assert main(["download", "--mirror", str(mirror), "--data-dir", str(tmp_path), "--quiet"]) == 2
    # it was "... is a file, not a folder; give an output path outside it", and download has no output path option
    assert capsys.readouterr().err == (f"covseg: error: {tmp_path / NAME}: cannot be written ({tmp_path / NAME} is a "
                                       "file, not a folder); give --data-dir a folder you can write\n")
    assert (tmp_path / NAME).read_text() == "mine"


def test_disk_full_names_the_destination_not_the_mirror(mirror: Path, http_mirror: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import errno

    from covseg.cli import main

    a = _train_paths()[0]
    digest = dl.file_sha256(mirror / a)
    monkeypatch.setattr(dl, "read_manifest", lambda name: {a: digest})

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "sendfile", full)  # shutil.copyfile's fast path on Linux: it blames the source file
    assert main(["download", "--mirror", str(mirror), "--data-dir", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(tmp_path / "d") in err and err.count("\n") == 1

    class _FullFile:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> _FullFile:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dl, "open", _FullFile, raising=False)
    assert main(["download", "--mirror", http_mirror, "--data-dir", str(tmp_path / "h"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and str(tmp_path / "h") in err and err.count("\n") == 1


@pytest.mark.parametrize("failure", [OSError(28, os.strerror(28)), KeyboardInterrupt()])
def test_a_failed_copy_from_a_folder_mirror_leaves_no_part_file(failure: BaseException, mirror: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    a = _train_paths()[0]
    monkeypatch.setattr(dl, "read_manifest", lambda name: {a: dl.file_sha256(mirror / a)})
    real = os.sendfile

    def full(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        if os.lseek(out_fd, 0, os.SEEK_CUR) > 0:
            raise failure
        return real(out_fd, in_fd, offset, min(count, 4096))  # the first 4 KiB land, then the disk is full

    monkeypatch.setattr(os, "sendfile", full)
    error = CovsegError if isinstance(failure, OSError) else KeyboardInterrupt
    # a first download: a folder copy is never resumed, so neither the half-written .part nor the folders made
    # for it are kept
    with pytest.raises(error):
        dl.download(NAME, tmp_path / "d", mirror=str(mirror), progress=False)
    assert not (tmp_path / "d").exists()
    # into a data folder that was there before: it is kept, without the .part
    root = dl.dataset_root(tmp_path / "kept", NAME)
    root.mkdir(parents=True)
    with pytest.raises(error):
        dl.download(NAME, tmp_path / "kept", mirror=str(mirror), progress=False)
    assert root.is_dir() and not [p for p in root.rglob("*") if p.is_file()]


def test_commands_without_data_refuse_an_unfinished_download_and_say_to_resume_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    # fuzz helper 168: a download that failed part-way keeps its verified files; multiclass training then blamed
    # "GT/0.png: mask without an image", and binary evaluation ran on what was there without a word
    from covseg.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    root = dl.dataset_root(tmp_path / "covseg", "covid-semiseg")
    required = [rel for rel in sorted(dl.read_manifest("covid-semiseg")) if rel.startswith("Dataset/TrainingSet/")]
    for rel in required[1:]:  # every file but the first, by name
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    assert dl.missing_required_files("covid-semiseg", root) == ([required[0]], len(required))
    assert main(["train", "--recipe", "tiny", "-o", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        f"covseg: error: no --data given and {root} is an unfinished download (1 of {len(required)} files missing, "
        f"first {required[0]}); run `covseg download` again (it resumes) or pass --data DIR\n")
    assert not (tmp_path / "run").exists()
    (root / required[0]).write_bytes(b"")  # all there by name: the readers take it from here
    assert dl.missing_required_files("covid-semiseg", root) == ([], len(required))
