"""Fetch a dataset listed in a SHA-256 manifest from upstream or a mirror, resumably and verified.

A mirror is either a local folder laid out like upstream or an ``http(s)://`` base URL. Every
manifest file is fetched to ``<final>.part``, checked against its SHA-256 and only then renamed
onto its final name, so a file under its final name is always a verified one. Files already
present with the right hash are skipped, which makes a rerun resume an interrupted download.

Layout: ``dataset_root(dest, name) / <manifest path>``, e.g.
``~/.cache/covseg/covid-semiseg/Dataset/TrainingSet/...``.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from .errors import CovsegError
from .fileio import file_sha256, folders_made_for, unwritable_reason
from .wording import counted

__all__ = [
    "DatasetSource",
    "DATASETS",
    "SplitReport",
    "DownloadReport",
    "read_manifest",
    "download",
    "default_data_dir",
    "resolve_mirror",
    "dataset_root",
    "missing_required_files",
]

MIRROR_ENV = "COVSEG_MIRROR"
HTTP_TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_RETRY_PAUSE_S = 0.25
"""Pause before asking again for a file the mirror failed to serve (HTTP 5xx): each file is asked twice at most."""
_RATE_LIMIT_PAUSE_S = 5.0
"""Pause before asking again for a file refused with HTTP 429 (a rate limit) that says no ``Retry-After``."""
_MAX_RATE_LIMIT_PAUSE_S = 60.0
"""The longest ``Retry-After`` (in seconds) waited for before asking again; a longer one is waited for this long."""
_GIVE_UP_AFTER = 3
"""Files of an optional split the mirror fails to serve (twice each) in a row, after which its others are not asked."""
_USER_AGENT = "covseg-download/0.1"
_MIRROR_HINT = f"pass --mirror DIR_OR_URL (or set {MIRROR_ENV})"


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how its files group into splits.

    ``splits`` maps a path prefix to a split name, in the order the summary reports them;
    ``required`` names the splits that must be complete; ``extra_dir`` is an optional folder
    without checksums (copied from directory mirrors only, since HTTP cannot list folders), holding ``extra_count``
    files upstream where known.
    """

    manifest: str
    base_url: str
    splits: tuple[tuple[str, str], ...]
    required: frozenset[str]
    extra_dir: str | None = None
    extra_label: str = "extra files"
    extra_count: int | None = None


DATASETS: dict[str, DatasetSource] = {
    "covid-semiseg": DatasetSource(
        manifest="covid-semiseg.sha256",
        base_url="https://raw.githubusercontent.com/DengPingFan/Inf-Net/"
        "fb3a03b5b2f70642fbf2a12cde9e5c41b5ebd28e/",
        splits=(("Dataset/TrainingSet/", "training"), ("Dataset/TestingSet/", "test")),
        required=frozenset({"training"}),
        extra_dir="Dataset/TrainingSet/LungInfection-Train/Pseudo-label/Imgs",
        extra_label="unlabelled slices",
        extra_count=1600,
    ),
}


@dataclass
class SplitReport:
    """Outcome for one split: relative paths per outcome."""

    fetched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """Files the mirror failed to serve (HTTP 5xx, 429, or a transfer cut short) when asked twice: it may have them,
    so a rerun asks again."""
    not_asked: list[str] = field(default_factory=list)
    """Files of an optional split not asked for once the mirror had failed several of them in a row."""

    @property
    def total(self) -> int:
        """Number of manifest files in this split."""
        return (len(self.fetched) + len(self.skipped) + len(self.missing) + len(self.corrupt) + len(self.failed)
                + len(self.not_asked))

    @property
    def complete(self) -> bool:
        """True when every file of the split is present and verified."""
        return not self.missing and not self.corrupt and not self.failed and not self.not_asked


@dataclass
class DownloadReport:
    """What :func:`download` did, grouped by split; flat views via the list properties."""

    dataset: str
    root: Path
    mirror: str
    splits: dict[str, SplitReport]
    required: frozenset[str]
    extra_label: str = "extra files"
    extra_copied: int = 0
    extra_present: int = 0
    notes: list[str] = field(default_factory=list)
    in_place: bool = False
    """The mirror is the data folder itself: its files were only verified, none fetched, replaced or deleted."""

    def _all(self, attr: str) -> list[str]:
        return [p for s in self.splits.values() for p in getattr(s, attr)]

    @property
    def fetched(self) -> list[str]:
        """Files downloaded or copied and verified in this run."""
        return self._all("fetched")

    @property
    def skipped(self) -> list[str]:
        """Files already present with the right hash."""
        return self._all("skipped")

    @property
    def missing(self) -> list[str]:
        """Files the mirror does not have."""
        return self._all("missing")

    @property
    def corrupt(self) -> list[str]:
        """Files whose fetched content failed the SHA-256 check (deleted; left as they are when ``in_place``)."""
        return self._all("corrupt")

    def summary(self) -> str:
        """Plain sentences, one per split, e.g. ``training split: 200 files verified (...)``."""
        parts = []
        for name, s in self.splits.items():
            ok = len(s.fetched) + len(s.skipped)
            if s.complete:
                text = (f"{name} split: {counted(ok, 'file')} verified "
                        f"({len(s.fetched)} fetched, {len(s.skipped)} already present)")
            elif ok == 0 and not s.corrupt and not s.failed and name not in self.required:
                text = (f"{name} split: {counted(len(s.missing), 'file')} missing from the mirror "
                        "(held out by this mirror; not required)")
            else:
                text = f"{name} split: {ok} of {counted(s.total, 'file')} verified"
                if s.missing:
                    text += f", {len(s.missing)} missing from the mirror"
                if s.corrupt:
                    one = len(s.corrupt) == 1
                    text += (f", {len(s.corrupt)} failed {'its' if one else 'their'} SHA-256 check"
                             + ((" (left as it is)" if one else " (left as they are)") if self.in_place
                                else " and was deleted" if one else " and were deleted"))
                if s.failed:
                    text += f", {len(s.failed)} the mirror failed to serve"
                if s.not_asked:
                    text += f", {len(s.not_asked)} not asked for"
                if name not in self.required:
                    text += " (not required)"
            parts.append(text)
        if self.extra_copied or self.extra_present:
            parts.append(f"{self.extra_label}: {counted(self.extra_copied + self.extra_present, 'file')} "
                         f"({self.extra_copied} copied, {self.extra_present} already present)")
        parts.extend(self.notes)
        return f"{self.dataset} in {self.root}: " + "; ".join(parts)


def _source(name: str) -> DatasetSource:
    try:
        return DATASETS[name]
    except KeyError:
        raise CovsegError(
            f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}"
        ) from None


def read_manifest(name: str) -> dict[str, str]:
    """Return ``{relative path: sha256 hex}`` for dataset ``name`` from its packaged manifest."""
    src = _source(name)
    text = (resources.files("covseg") / "manifests" / src.manifest).read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, path = line.partition(" ")
        path = path.strip().lstrip("*")
        digest = digest.lower()
        parts = Path(path).parts
        if (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not path
                or path.startswith("/") or ".." in parts):
            raise CovsegError(
                f"manifest {src.manifest} line {lineno} is malformed: expected "
                "'<sha256>  <relative path>'; reinstall covseg"
            )
        out[path] = digest
    return out


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/covseg``, else ``~/.cache/covseg``."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "covseg"


def resolve_mirror(cli_value: str | None) -> str | None:
    """The CLI value if given, else ``$COVSEG_MIRROR`` if set and non-empty, else None (upstream).

    An empty ``--mirror ""`` (or one of spaces only: an unset shell variable, say) is refused: it says nothing, and
    falling back to upstream would fetch from elsewhere than asked. An empty ``$COVSEG_MIRROR`` is as unset (the
    usual way to switch a variable off); one of white space only is refused, for the same reason as such a
    ``--mirror``: it is no folder anyone meant, and upstream is not what was set."""
    if cli_value is not None:
        if not cli_value.strip():
            raise CovsegError("--mirror is empty: give a folder or an http(s):// URL, or leave it out")
        return cli_value
    value = os.environ.get(MIRROR_ENV)
    if value and not value.strip():
        raise CovsegError(f"${MIRROR_ENV} holds only white space: set it to a folder or an http(s):// URL, or unset "
                          "it to fetch from upstream")
    return value or None


def dataset_root(dest: Path, dataset: str) -> Path:
    """Folder that holds ``dataset`` under the data directory ``dest``."""
    return Path(dest) / dataset


def _data_set_root(dest: Path, dataset: str, manifest: dict[str, str]) -> Path:
    """Where ``dataset`` lies for the data directory ``dest``: ``dataset_root(dest, dataset)``, or ``dest`` itself
    where ``dest`` already is the data set's own folder (``--data-dir ~/.cache/covseg/covid-semiseg``: it holds one of
    the manifest's files, e.g. ``Dataset/TrainingSet/...``, and no ``covid-semiseg/`` folder), so that it is checked
    and completed there instead of a second copy nested in it. Not the default data directory, where the other
    commands look for ``dataset_root`` (``--data`` left out)."""
    dest = Path(dest)
    if (dest.resolve() != default_data_dir().resolve() and not dataset_root(dest, dataset).exists()
            and any((dest / rel).is_file() for rel in manifest)):
        return dest
    return dataset_root(dest, dataset)


def _is_url(mirror: str) -> bool:
    return mirror.lower().startswith(("http://", "https://"))


def _check_url(url: str) -> None:
    """Refuse a mirror URL that urllib would choke on (no host, bad port, non-ASCII, a login: ``u:p@host`` is looked up
    as a host name) or that file paths cannot be added to (a ``?query`` or ``#fragment``, which the paths would land
    in) before any request."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        problem = ("it has no host" if not parts.hostname
                   else "it has non-ASCII characters or spaces; percent-encode them"
                   if not url.isascii() or any(c.isspace() for c in url)
                   else "it has a user name or password (USER@), which covseg does not send; use a mirror that needs "
                        "no login" if "@" in parts.netloc
                   else "it has a ?query or #fragment, after which the files' paths cannot be added; leave it out"
                   if "?" in url or "#" in url else "")
    except ValueError as e:
        problem = str(e)
    if problem:
        raise CovsegError(f"mirror URL {url} is not valid: {problem}; "
                          "pass --mirror http://HOST[:PORT]/PATH/ or a folder")


def _part(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _discard(part: Path) -> None:
    """Remove a half-written copy, if it can be removed (the error being reported matters more)."""
    try:
        part.unlink(missing_ok=True)
    except OSError:
        pass


def _copy(src: Path, part: Path) -> None:
    """``shutil.copyfile`` whose error names both ends (on Linux it blames ``src`` even for a full disk). A copy from
    a folder is never resumed, so a failed one (Ctrl-C too) removes ``part`` rather than leave it half-written."""
    try:
        shutil.copyfile(src, part)
    except OSError as e:
        _discard(part)
        raise CovsegError(f"cannot copy {src} to {part}: {e.strerror or e}; "
                          "check free space and permissions of the data folder") from None
    except BaseException:
        _discard(part)
        raise


def _fetch_copy(src_root: Path, rel: str, part: Path) -> bool:
    """Copy ``src_root/rel`` to ``part``; False if the mirror lacks it."""
    src = src_root / rel
    if not src.is_file():
        return False
    part.parent.mkdir(parents=True, exist_ok=True)
    _copy(src, part)
    return True


class _RangeRefused(Exception):
    """The server answered 416 to a resume request: restart from byte 0."""


def _open_url(url: str, start: int, optional: bool = False) -> http.client.HTTPResponse | None:
    """Open ``url`` (from byte ``start`` if > 0); None on 404/410, and for a file of an ``optional`` split also on
    401/403 (object stores such as S3 answer 403 for an object that is not there); :class:`_Unavailable` if
    unreachable or failing (5xx, or 429 Too Many Requests: a rate limit, e.g. upstream's), CovsegError for
    any other refusal."""
    headers = {"User-Agent": _USER_AGENT}
    if start > 0:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in (404, 410) or (optional and e.code in (401, 403)):
            return None
        if e.code == 416 and start > 0:
            raise _RangeRefused() from None
        if e.code >= 500 or e.code == 429:  # the mirror may have the file: worth asking again
            raise _Unavailable(f"cannot fetch {url}: HTTP {e.code} {e.reason}; {_MIRROR_HINT}",
                               f"answered HTTP {e.code} {e.reason}",
                               _rate_limit_pause(e.headers.get("Retry-After")) if e.code == 429 else None) from None
        raise CovsegError(f"cannot fetch {url}: HTTP {e.code} {e.reason}; {_MIRROR_HINT}") from None
    except urllib.error.URLError as e:
        raise _Unreachable(url, str(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:  # timeouts, resets, bad status lines
        raise _Unreachable(url, str(e or type(e).__name__)) from None


class _Unavailable(CovsegError):
    """The mirror did not serve a file though it may have it: it failed (HTTP 5xx, or 429: rate-limited), cut the
    transfer short (:class:`_Cut`) or could not be reached (:class:`_Unreachable`). Fatal for a required split's
    file, reported for an optional split's (:func:`_fetch_all`); ``what`` ends "the mirror ...", e.g. ``answered
    HTTP 503 Service Unavailable``."""

    def __init__(self, message: str, what: str, pause: float | None = None) -> None:
        super().__init__(message)
        self.what = what
        self.pause = pause  # seconds to wait before asking again (a 429's): None for the usual _RETRY_PAUSE_S


def _rate_limit_pause(retry_after: str | None) -> float:
    """Seconds to wait before asking again after an HTTP 429: its ``Retry-After`` in seconds (an HTTP date, or none,
    gives :data:`_RATE_LIMIT_PAUSE_S`), at most :data:`_MAX_RATE_LIMIT_PAUSE_S`."""
    try:
        seconds = float((retry_after or "").strip())
    except ValueError:
        seconds = _RATE_LIMIT_PAUSE_S
    if not seconds >= 0:  # NaN
        seconds = _RATE_LIMIT_PAUSE_S
    return min(seconds, _MAX_RATE_LIMIT_PAUSE_S)


class _Cut(_Unavailable):
    """The mirror cut a file's transfer short (the connection closed or failed before its ``Content-Length`` bytes
    came): the bytes received stay in its ``.part``, which the next request resumes."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "cut the transfer short")


class _Unreachable(_Unavailable):
    """The mirror at ``url`` could not be reached at all (no answer, a name that does not resolve, a reset)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach {url}: {reason}; {_MIRROR_HINT}", f"could not be reached ({reason})")
        self.reason = reason


def _fetch_http(base: str, rel: str, part: Path, resume: bool = True, optional: bool = False) -> str:
    """Download ``base + rel`` into ``part``; returns "missing", "resumed" or "fresh".

    A non-empty ``part`` is continued with a Range request when ``resume`` and the server
    answers 206 for the right offset; otherwise the file is restarted from byte 0. ``optional``: the file belongs to
    a split the data set does not require, so a refusal to serve it (401/403) means "missing" (:func:`_open_url`).
    """
    url = base + urllib.parse.quote(rel)
    start = part.stat().st_size if resume and part.exists() else 0
    try:
        resp = _open_url(url, start, optional)
    except _RangeRefused:
        return _fetch_http(base, rel, part, resume=False, optional=optional)
    if resp is None:
        return "missing"
    with resp:
        resumed = (start > 0 and resp.status == 206
                   and (resp.headers.get("Content-Range") or "").startswith(f"bytes {start}-"))
        length = resp.headers.get("Content-Length")
        received = 0
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Cut(f"download of {url} was interrupted "
                                   f"({e or type(e).__name__}); run again to resume") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    received += len(chunk)
        except OSError as e:  # the data folder's side: full disk, no permission (a read error is a CovsegError)
            raise CovsegError(f"cannot write {part}: {e.strerror or e}; check free space and "
                              "permissions of the data folder, then run again to resume") from None
        if length is not None and length.isdigit() and received < int(length):
            raise _Cut(f"download of {url} was interrupted after {received} of {length} bytes; run again to resume")
    return "resumed" if resumed else "fresh"


def _fetch_http_checked(base: str, rel: str, part: Path, digest: str, optional: bool) -> str:
    """:func:`_fetch_http`, once more from byte 0 where a resumed copy fails its SHA-256 check (the kept ``.part``
    may have had a bad prefix). A ``.part`` that already passes the check (a run stopped after its last byte) is
    finished as it is, "resumed", without a request (a Range past its end would get a 416 and the whole file)."""
    if part.is_file() and part.stat().st_size and file_sha256(part) == digest:
        return "resumed"
    outcome = _fetch_http(base, rel, part, optional=optional)
    if outcome == "resumed" and file_sha256(part) != digest:
        outcome = _fetch_http(base, rel, part, resume=False, optional=optional)
    return outcome


def _fetch_http_retried(base: str, rel: str, part: Path, digest: str, optional: bool) -> str:
    """:func:`_fetch_http_checked`, asked once more after :data:`_RETRY_PAUSE_S` where the mirror failed (HTTP 5xx,
    often passing) or cut the transfer short (:class:`_Cut`: the rest of the ``.part`` is asked for); a second
    failure raises its :class:`_Unavailable`. A mirror out of reach (:class:`_Unreachable`) is not asked again."""
    try:
        return _fetch_http_checked(base, rel, part, digest, optional)
    except _Unreachable:
        raise
    except _Unavailable as err:
        time.sleep(_RETRY_PAUSE_S if err.pause is None else err.pause)
    return _fetch_http_checked(base, rel, part, digest, optional)


def _extra_files(folder: Path) -> list[Path]:
    """The files in ``folder`` that count as its extra files (unlabelled slices), in name order: those the
    ``unlabelled`` split reads (an image's name, not hidden), not a ``.part`` left by an interrupted copy or a stray
    note; none when it is no folder. They have no checksums, so the name is all that tells them."""
    from .datasets import IMAGE_SUFFIXES  # numpy and the image readers: only where there are extra files

    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES))


def _count_files(folder: Path) -> int:
    """How many extra files (:func:`_extra_files`) ``folder`` holds."""
    return len(_extra_files(folder))


def _copy_extras(src_root: Path, root: Path, rel_dir: str, progress: bool) -> tuple[int, int]:
    """Copy the unverified extra folder from a directory mirror; returns (copied, present)."""
    src_dir, dst_dir = src_root / rel_dir, root / rel_dir
    files = _extra_files(src_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    copied = present = 0
    for src in tqdm(files, desc="extra", unit="file", disable=not progress or None, leave=False):
        dst = dst_dir / src.name
        if dst.is_file() and dst.stat().st_size == src.stat().st_size:
            present += 1
            continue
        part = _part(dst)
        _copy(src, part)
        os.replace(part, dst)
        copied += 1
    return copied, present


def download(dataset: str, dest: Path, mirror: str | None = None,
             progress: bool = True) -> DownloadReport:
    """Fetch ``dataset`` into ``dataset_root(dest, dataset)`` (``dest`` itself where it already is the data set's
    folder, holding its files) and verify every file.

    ``mirror`` is a local folder laid out like upstream or an ``http(s)://`` base URL; None
    means the upstream URL. Raises :class:`CovsegError` when a required split is incomplete,
    the mirror cannot be reached or fails (HTTP 5xx, or a transfer cut short, asked twice) for one of its files, or
    the mirror folder does not exist; a missing optional split (e.g. a held-out test split) or files of one the
    mirror fails to serve (named; its others are still fetched) are only reported.
    """
    src = _source(dataset)
    manifest = read_manifest(dataset)
    base = mirror if mirror is not None else src.base_url
    src_root: Path | None = None
    if _is_url(base):
        _check_url(base)
        base = base if base.endswith("/") else base + "/"
    else:
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", base)
        if scheme and scheme.group(1).lower() != "file":  # a folder path would be made of it, "ftp:/host/..."
            raise CovsegError(f"mirror URL {base} is not valid: covseg fetches over http:// and https:// only, not "
                              f"{scheme.group(1)}://; pass --mirror http://HOST[:PORT]/PATH/ or a folder")
        if base.lower().startswith("file://"):
            base = urllib.request.url2pathname(urllib.parse.urlparse(base).path)
        src_root = Path(base).expanduser()
        if not src_root.is_dir():
            what = "is a file, not a folder" if src_root.is_file() else "does not exist"
            raise CovsegError(f"mirror folder {src_root} {what}; pass --mirror with a "
                              "folder that holds Dataset/... or an http(s):// URL")
    root = _data_set_root(Path(dest), dataset, manifest)
    if src_root is not None and src_root.resolve() == root.resolve():
        # the mirror is the data folder (--mirror DIR/<dataset> --data-dir DIR): fetching would delete a bad file
        # from the mirror itself, so its files are only verified
        return _verify_in_place(dataset, src, manifest, root, progress)
    # a folder to make: refuse a file in the way or a folder above it that cannot be written, before anything is
    # fetched (an existing one is not probed: a complete download on a read-only mount is verified as before)
    why = None if root.is_dir() else unwritable_reason(root, folder=True)
    if why:
        raise CovsegError(f"{root}: cannot be written ({why}); give --data-dir a folder you can write")
    with folders_made_for(root):  # a failed first download leaves no empty folders behind
        root.mkdir(parents=True, exist_ok=True)
        return _fetch_all(dataset, src, manifest, base, src_root, root, progress)


def missing_required_files(dataset: str, root: Path) -> tuple[list[str], int]:
    """The files of ``dataset``'s required splits (its manifest paths) that are not in ``root``, and how many the
    splits hold: a cheap check (names only, no hashing) that a download into ``root`` was finished."""
    src = _source(dataset)
    split_name = _split_namer(src)
    required = [rel for rel in sorted(read_manifest(dataset)) if split_name(rel) in src.required]
    return [rel for rel in required if not (root / rel).is_file()], len(required)


def _new_report(dataset: str, src: DatasetSource, root: Path, mirror: str, in_place: bool = False) -> DownloadReport:
    """An empty report with one entry per split of ``src``."""
    return DownloadReport(dataset=dataset, root=root, mirror=mirror,
                          splits={name: SplitReport() for _, name in src.splits},
                          required=src.required, extra_label=src.extra_label, in_place=in_place)


def _split_namer(src: DatasetSource) -> Callable[[str], str]:
    """The name of the split a manifest path belongs to ("other" for none)."""
    return lambda rel: next((name for prefix, name in src.splits if rel.startswith(prefix)), "other")


def _verify_in_place(dataset: str, src: DatasetSource, manifest: dict[str, str], root: Path,
                     progress: bool) -> DownloadReport:
    """:func:`download` when the mirror folder is ``root`` itself: check every manifest file's SHA-256 and change
    nothing; a required split with a file missing or failing its check raises a one-line :class:`CovsegError`."""
    report = _new_report(dataset, src, root, str(root), in_place=True)
    split_name = _split_namer(src)
    for rel, digest in tqdm(sorted(manifest.items()), desc=dataset, unit="file", disable=not progress or None):
        bucket = report.splits.setdefault(split_name(rel), SplitReport())
        final = root / rel
        if not final.is_file():
            bucket.missing.append(rel)
        elif file_sha256(final) == digest:
            bucket.skipped.append(rel)
        else:
            bucket.corrupt.append(rel)
    if src.extra_dir:
        report.extra_present = _count_files(root / src.extra_dir)
    for name in src.required:
        s = report.splits[name]
        bad = sorted(s.missing + s.corrupt)
        if bad:
            why = "is missing" if bad[0] in s.missing else "fails its SHA-256 check"
            raise CovsegError(f"{name} split incomplete: {len(bad)} of {counted(s.total, 'file')} missing or corrupt, first "
                              f"{bad[0]} ({why}); --mirror is the data folder itself ({root}), so nothing was "
                              f"fetched or deleted: {_MIRROR_HINT} with another, complete copy")
    return report


def _fetch_all(dataset: str, src: DatasetSource, manifest: dict[str, str], base: str, src_root: Path | None,
               root: Path, progress: bool) -> DownloadReport:
    """:func:`download`'s work once ``root`` exists: fetch, verify and report every manifest file."""
    report = _new_report(dataset, src, root, str(src_root or base))
    split_name = _split_namer(src)

    # the required splits' files first: an optional split the mirror will not serve cannot stop them
    order = sorted(manifest.items(), key=lambda item: (split_name(item[0]) not in src.required, item[0]))
    # an optional split's files the mirror failed to serve (HTTP 5xx, twice each) are reported and its others asked
    # for; once the mirror is out of reach, or has failed _GIVE_UP_AFTER of them in a row, its others are not asked
    given_up: dict[str, str] = {}  # split: why, e.g. "answered HTTP 503 ... for 3 files in a row"
    out_of_reach: dict[str, str] = {}  # split: why, e.g. "could not be reached (...)"
    answers: dict[str, list[str]] = {}  # split: the mirror's failing answers, e.g. "answered HTTP 503 ..."
    in_a_row: dict[str, int] = {}  # split: files failed since the last one served
    for rel, digest in tqdm(order, desc=dataset, unit="file", disable=not progress or None):
        name = split_name(rel)
        optional = name not in src.required
        bucket = report.splits.setdefault(name, SplitReport())
        final = root / rel
        if src_root is not None and final.is_file() and (src_root / rel).is_file() \
                and os.path.samefile(src_root / rel, final):
            # the data folder reaches into the mirror through a link: this is the mirror's own copy, so it is only
            # verified, never replaced or deleted
            (bucket.skipped if file_sha256(final) == digest else bucket.corrupt).append(rel)
            continue
        if final.is_file():
            if file_sha256(final) == digest:
                bucket.skipped.append(rel)
                _part(final).unlink(missing_ok=True)  # a stale partial copy beside the verified file
                continue
            final.unlink()  # stale or damaged: never keep a bad file under the final name
        part = _part(final)
        if src_root is not None:
            outcome = "fresh" if _fetch_copy(src_root, rel, part) else "missing"
        elif optional and name in out_of_reach:
            outcome = "missing"
        elif optional and name in given_up:
            outcome = "not asked"
        else:
            try:
                outcome = _fetch_http_retried(base, rel, part, digest, optional)
                in_a_row[name] = 0
            except _Unavailable as err:
                # the required splits are done (they come first): a mirror out of reach (offline, say) or failing
                # (HTTP 5xx) leaves an optional split's files unfetched, reported, instead of failing a download
                # whose data is complete
                if not optional:
                    raise
                if isinstance(err, _Unreachable):
                    outcome = "missing"
                    out_of_reach[name] = err.what
                else:
                    outcome = "failed"
                    if err.what not in answers.setdefault(name, []):
                        answers[name].append(err.what)
                    in_a_row[name] = in_a_row.get(name, 0) + 1
                    if in_a_row[name] >= _GIVE_UP_AFTER:
                        given_up[name] = f"{err.what} for {_GIVE_UP_AFTER} files in a row"
        ok = outcome not in ("missing", "failed", "not asked") and file_sha256(part) == digest
        if ok:
            os.replace(part, final)
            bucket.fetched.append(rel)
        else:
            if not (outcome == "failed" and part.is_file() and part.stat().st_size):  # a cut transfer's bytes stay:
                part.unlink(missing_ok=True)  # the rerun the note asks for resumes them
            {"missing": bucket.missing, "failed": bucket.failed,
             "not asked": bucket.not_asked}.get(outcome, bucket.corrupt).append(rel)
    for name, s in report.splits.items():
        if s.failed:
            one = len(s.failed) == 1
            report.notes.append(f"{name} split: the mirror {' or '.join(answers[name])} for "
                                f"{counted(len(s.failed), 'file')}, asked twice: {', '.join(s.failed)}; run covseg "
                                f"download again to fetch {'it' if one else 'them'}")
        if s.not_asked:
            left = len(s.not_asked)
            report.notes.append(f"{name} split: the mirror {given_up[name]}, so its {left} other missing "
                                f"{'file was' if left == 1 else 'files were'} not asked for")
        if name in out_of_reach:  # whatever failed before it: the mirror went out of reach
            report.notes.append(f"{name} split: the mirror {out_of_reach[name]}, so its missing files were not "
                                "fetched")

    if src.extra_dir:
        mirrored = src_root is not None and (src_root / src.extra_dir).is_dir()
        if mirrored and (src_root / src.extra_dir).resolve() != (root / src.extra_dir).resolve():
            report.extra_copied, report.extra_present = _copy_extras(src_root, root, src.extra_dir, progress)
        else:  # the mirror's own folder, or a mirror that cannot give them: those an earlier download left are here
            report.extra_present = _count_files(root / src.extra_dir)
            upstream = src.extra_count or 1  # a part left by an interrupted copy is no whole set either
            if not mirrored and report.extra_present < upstream:
                have = f"{report.extra_present} of {upstream} here, " if report.extra_present else ""
                report.notes.append(f"{src.extra_label} ({src.extra_dir}): {have}" + (
                    "skipped, an HTTP mirror cannot list folders; use a folder mirror to get them" if src_root is None
                    else "not in the mirror"))

    for name in src.required:
        s = report.splits[name]
        bad = sorted(s.missing + s.corrupt)
        if bad:
            first = bad[0]
            why = "missing from" if first in s.missing else "fails its SHA-256 check in"
            # a mirror holding none of the split: given one level too deep (COPY/Dataset for COPY) or too high?
            at = _wrong_level(src_root, base, dataset, first) if len(s.missing) == s.total else None
            fix = at or f"{_MIRROR_HINT} with a complete copy"
            raise CovsegError(
                f"{name} split incomplete: {len(bad)} of {counted(s.total, 'file')} missing or corrupt, "
                f"first {first} ({why} {report.mirror}); {fix}"
            )
    return report


def _wrong_level(src_root: Path | None, base: str, dataset: str, rel: str) -> str | None:
    """How to fix a mirror (folder ``src_root``, else the URL ``base``) that holds none of a split, first file ``rel``:
    given one level or more too deep (``COPY/Dataset`` for ``COPY``) or one too high (``DIR`` for ``DIR/covid-semiseg``,
    another machine's data folder, or a server started above it); None when neither finds ``rel``. Over HTTP a
    request or two for ``rel`` where it would be."""
    if src_root is None:
        above = _url_above(base, rel)
        below = _url_below(base, dataset, rel) if above is None else None
    else:
        above = _mirror_folder_above(src_root, rel)
        below = _mirror_folder_below(src_root, rel) if above is None else None
    given, top = src_root or base, Path(rel).parts[0]
    if above is not None:
        return (f"{given} is the mirror's {top}/ folder or one inside it: pass --mirror {above}, the folder that holds "
                f"{top}/")
    if below is not None:
        return f"{given} is the folder above the mirror: pass --mirror {below}, the folder that holds {top}/"
    return None


def _mirror_folder_above(src_root: Path, rel: str) -> Path | None:
    """The folder above ``src_root`` that would be the mirror, where ``src_root`` holds ``rel`` less its first
    folders (``--mirror COPY/Dataset`` for the manifest path ``Dataset/TrainingSet/...``: ``COPY``); else None."""
    parts = Path(rel).parts
    above = src_root.resolve().parents
    for drop in range(1, min(len(parts) - 1, len(above) + 1)):  # no folder above the file system's root
        if (src_root.joinpath(*parts[drop:])).is_file():
            return above[drop - 1]
    return None


def _mirror_folder_below(src_root: Path, rel: str) -> Path | None:
    """The folder just inside ``src_root`` that holds ``rel`` (``--mirror DIR`` for the mirror ``DIR/covid-semiseg``,
    another machine's data folder, say), the first by name; None when none does or ``src_root`` cannot be listed."""
    try:
        folders = sorted(p for p in src_root.iterdir() if p.is_dir())
    except OSError:
        return None
    return next((folder for folder in folders if (folder / rel).is_file()), None)


def _url_serves(url: str) -> bool:
    """Whether ``url`` answers a GET with a file (its body is not read); False for 404 and for any failure."""
    try:
        resp = _open_url(url, 0)
    except CovsegError:
        return False
    if resp is None:
        return False
    resp.close()
    return True


def _url_above(base: str, rel: str) -> str | None:
    """The URL above ``base`` (``http://HOST/COPY/`` for ``http://HOST/COPY/Dataset/``) that serves ``rel``, nearest
    first, where ``base``'s path ends in ``rel``'s first folders; else None (:func:`_mirror_folder_above` over HTTP)."""
    parts = urllib.parse.urlsplit(base)
    folders = [f for f in parts.path.split("/") if f]
    rel_parts = Path(rel).parts
    for drop in range(1, min(len(rel_parts) - 1, len(folders)) + 1):
        if [urllib.parse.unquote(f) for f in folders[-drop:]] != list(rel_parts[:drop]):
            continue
        up = urllib.parse.urlunsplit(parts._replace(path="/" + "".join(f + "/" for f in folders[:-drop])))
        if _url_serves(up + urllib.parse.quote(rel)):
            return up
    return None


def _url_below(base: str, dataset: str, rel: str) -> str | None:
    """``base`` + ``dataset/`` where it serves ``rel`` (an HTTP server started in the folder above the data set's);
    else None. An HTTP mirror cannot be listed, so only the data set's own name is tried."""
    below = base + urllib.parse.quote(dataset) + "/"
    return below if _url_serves(below + urllib.parse.quote(rel)) else None
