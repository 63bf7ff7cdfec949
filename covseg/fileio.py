"""Atomic file writing (outputs appear under their final name only once complete), file digests, and file names as
they can be written into a UTF-8 report."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from covseg.errors import CovsegError, Terminated

__all__ = ["atomic_path", "atomic_write_text", "atomic_dir", "staging_folder", "current_umask", "interrupts_deferred",
           "left_as_it_was",
           "sync_path", "sync_tree", "file_sha256", "unwritable_reason", "check_output_folder", "replacing_output", "folders_made_for",
           "display_text"]


def display_text(text: object) -> str:
    """``text`` as it can be shown in a UTF-8 page: a file name that is not UTF-8 (read by Python with its bytes
    as lone surrogates, ``os.fsdecode(b"M\\xfcller")``) gets U+FFFD for each such byte, as
    ``os.fsencode(path).decode("utf-8", "replace")`` would, instead of failing to encode."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate surrogateescape does not stand for: replaced too
        return text.encode("utf-8", "replace").decode("utf-8")


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file at ``path``, read in 64 KiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def folders_made_for(target: str | os.PathLike) -> Iterator[None]:
    """Around work that makes ``target`` (a folder) and the folders above it that do not exist yet: if the work
    fails (any exception, Ctrl-C too), the top-most of the folders it had to make is removed again, provided no
    file was written under it, so a failed command leaves no empty folders behind."""
    path = Path(target).absolute()
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        if made and made[-1].is_dir() and not any(p.is_file() for p in made[-1].rglob("*")):
            shutil.rmtree(made[-1], ignore_errors=True)
        raise


def unwritable_reason(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or with ``folder`` a folder, that may not exist yet) cannot be written, checked before
    any long work: the nearest existing folder it would go in (for a folder, itself once it exists) is not a folder,
    or not one this process may write into (a file is made there and removed: root passes ``os.access`` on
    read-only mounts and ``/proc``), or a link on the way leads back to itself; None when it looks writable."""
    target = Path(path).absolute()
    for part in (target, *target.parents):
        if part.is_symlink():
            try:
                part.stat()
            except OSError as err:
                if err.errno == errno.ELOOP:  # a link that leads back to itself (`ln -s out out`)
                    return f"{part} is a symbolic link loop (a link that leads back to itself)"
    existing = next(p for p in ((target,) if folder else ()) + (target.parent, *target.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not a folder you can write into"
    with interrupts_deferred():  # Ctrl-C between making and removing the file would leave it behind
        try:  # root passes os.access everywhere, also on /proc, /sys, read-only mounts: make (and remove) a file there
            handle, probe = tempfile.mkstemp(prefix=".covseg-probe-", dir=existing)
        except OSError as err:  # /proc answers "No such file or directory" for a file it will not make
            why = "it makes no new files" if err.errno == errno.ENOENT else (err.strerror or str(err))
            return f"{existing} is not a folder you can write into ({why})"
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


def left_as_it_was(out_dir: Path) -> str:
    """What a stopped command that wrote nothing says of its output folder ``out_dir``: that it is left as it was,
    or that it was not made."""
    return f"{out_dir} is left as it was" if Path(out_dir).exists() else f"{out_dir} was not made"


def check_output_folder(out_dir: Path) -> None:
    """Refuse, in one line (:class:`covseg.errors.CovsegError`), an output folder that is a file or that
    :func:`unwritable_reason` says cannot be written; checked before any long work."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CovsegError(f"{out_dir}: is a file; give -o a folder (it is made if missing)")
    why = unwritable_reason(out_dir, folder=True)
    if why:
        raise CovsegError(f"{out_dir}: cannot be written ({why}); give -o a folder you can write")


def refuse_output_in_data(out_dir: Path, data: str | os.PathLike) -> None:
    """Refuse an output folder in (or equal to) the data folder ``data`` (skipped when empty): its files would be read
    as images or masks by the next command given that folder."""
    if data and Path(out_dir).resolve().is_relative_to(Path(data).resolve()):  # the data folder itself too
        raise CovsegError(f"{out_dir}: is inside the data folder {data}, where its files would be read as images or "
                          "masks; give -o a folder outside it")


NAME_MAX = 255  # the longest file name, in bytes, that common file systems (ext4, XFS, APFS, NTFS) take
_RANDOM_CHARS = 8  # the characters tempfile.mkstemp / mkdtemp put between prefix and suffix


def _format_suffix(name: str) -> str:
    """The suffix that names ``name``'s format: ``.nii.gz`` for gzipped NIfTI, else the last suffix only (a
    dotted name such as a DICOM UID has many "suffixes" that are not formats)."""
    if name.lower().endswith(".nii.gz") and len(name) > len(".nii.gz"):
        return name[-len(".nii.gz"):]
    return Path(name).suffix


def _hidden_prefix(name: str, room: int) -> str:
    """``.{name}.``, with ``name`` cut short where needed so that the prefix plus ``room`` more bytes still fits in
    one file name (:data:`NAME_MAX` bytes): a temporary name beside a long final name can be made wherever the
    final name can."""
    while name and len(os.fsencode(f".{name}.")) + room > NAME_MAX:
        name = name[:-1]
    return f".{name}."


def _relabelled(err: OSError, filename: str) -> OSError:
    """A fresh copy of ``err`` (same type and errno) that names ``filename`` alone, to raise ``from None`` in its
    place: setting ``filename2 = None`` on ``err`` itself would print a trailing "-> None". An error without an
    errno keeps its message as the copy's ``strerror`` (setting a ``filename`` on it would print "[Errno None] None"
    instead). Where no copy can be made (a subclass with a constructor of its own), ``err`` itself, its ``filename``
    set."""
    with contextlib.suppress(Exception):
        message = err.strerror if err.errno is not None else str(err)
        return type(err)(err.errno, message, filename).with_traceback(err.__traceback__)
    err.filename = filename
    return err


def sync_path(path: Path) -> None:
    """Flush ``path`` (a file's contents, or a folder's entries after a rename) to the disk, so that a crash or power
    cut just after :func:`atomic_path` leaves the old file or the whole new one, not an empty one under the final
    name (a rename may reach the disk before the data it names). A folder that cannot be opened for reading, or a
    file system that cannot sync a folder, is let be: the rename itself is still atomic."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if not path.is_dir():
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` if the block succeeds.

    The temporary name (``.{name}.XXXXXXXX.part{format suffix}``, the name cut short to fit in 255 bytes) keeps
    ``final``'s format suffix (``.nii.gz`` for gzipped NIfTI, else the last one) so writers that pick a format by
    extension (PIL, nibabel, matplotlib) still work. On error the temporary file is removed, so are the folders
    made for ``final`` (when nothing else was written in them), and an OSError about the temporary file (a
    read-only folder, a full disk) names ``final`` instead. The file is synced to the disk before the rename, and
    its folder after it.
    """
    final = Path(final)
    suffix = f".part{_format_suffix(final.name)}"
    if len(os.fsencode(f"..{suffix}")) + _RANDOM_CHARS > NAME_MAX:  # no real format has so long a suffix
        suffix = ".part"
    prefix = _hidden_prefix(final.name, _RANDOM_CHARS + len(os.fsencode(suffix)))
    with folders_made_for(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=final.parent)
        except OSError as err:  # a read-only folder, no space: name the file the user asked for, not the temporary one
            raise _relabelled(err, str(final)) from None
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give outputs the usual permissions
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            sync_path(tmp_path)
            os.replace(tmp_path, final)
            sync_path(final.parent)
        except OSError as err:
            if err.filename is None or Path(os.fsdecode(err.filename)) != tmp_path:
                raise
            raise _relabelled(err, str(final)) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp_path.unlink()


def replacing_output(out_dir: Path, force: bool) -> bool:
    """For a command that writes the folder ``out_dir`` whole (staged, then moved in by :func:`atomic_dir`):
    refuse, in one line (:class:`covseg.errors.CovsegError`), a folder it cannot write or a non-empty one without
    ``force``; return whether a non-empty folder is there to replace, so that the caller checks it holds nothing
    but that command's own output before ``force`` deletes it."""
    why = unwritable_reason(out_dir, folder=True)
    if why:
        raise CovsegError(f"{out_dir}: cannot be written ({why}); give -o a folder you can write")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if not force:
        raise CovsegError(f"{out_dir}: exists; pass --force to replace it or choose another -o")
    return True


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it for good)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` atomically."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` whole.

    With ``force`` an existing ``final`` is replaced; the caller checks existence beforehand
    so that it can raise a helpful error instead. The old ``final`` is renamed aside (a hidden sibling) before the
    new folder is renamed in, and deleted only then, with Ctrl-C held back over the two renames and over the
    deletion (:func:`interrupts_deferred`): an interruption or a failed rename leaves the old folder or the new one,
    never neither, and no hidden part of the old one. The new folder gets the usual permissions (``0o777`` less the
    umask; ``mkdtemp`` makes ``0o700``). Every file and folder staged in it is synced to the disk before the rename,
    and ``final``'s folder after it, as :func:`atomic_path` does for one file. On failure the folders made for
    ``final`` are removed again when nothing else was written in them (:func:`folders_made_for`).
    """
    final = Path(final)
    with folders_made_for(final.parent):  # a failed first write leaves no empty folders behind
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_hidden_prefix(final.name, _RANDOM_CHARS + len(".part")), suffix=".part",
                                    dir=final.parent))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())
            yield tmp
            sync_tree(tmp)
            aside: Path | None = None
            swapped = False
            try:
                with interrupts_deferred():
                    if force and (final.exists() or final.is_symlink()):
                        tail = f"{os.getpid()}-{os.urandom(4).hex()}.old"
                        aside = final.parent / f"{_hidden_prefix(final.name, len(tail))}{tail}"
                        os.replace(final, aside)
                    os.replace(tmp, final)
                    swapped = True
                sync_path(final.parent)
            finally:
                with interrupts_deferred():  # a Ctrl-C while the old folder is deleted would leave part of it
                    if aside is not None and swapped:
                        _remove(aside)
                    elif aside is not None and not (final.exists() or final.is_symlink()):
                        os.replace(aside, final)  # the new folder did not go in: put the old one back
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def sync_tree(folder: Path) -> None:
    """Flush (:func:`sync_path`) every regular file under ``folder``, then every folder from the deepest up to
    ``folder`` itself (links are not followed), so that a crash after the folder's rename cannot leave files that
    are named but empty."""
    folders = [folder]
    for root, dirs, files in os.walk(folder):
        folders.extend(Path(root) / d for d in dirs if not (Path(root) / d).is_symlink())
        for name in files:
            path = Path(root) / name
            if path.is_file() and not path.is_symlink():
                sync_path(path)
    for path in reversed(folders):
        sync_path(path)


def _remove(path: Path) -> None:
    """Delete ``path`` (a folder, a file or a link), ignoring errors."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def staging_folder(out_dir: str | os.PathLike) -> Path:
    """A new temporary folder on ``out_dir``'s file system, so that files written there can be renamed into place:
    inside ``out_dir`` where it exists (it may be a mount point, a Docker volume, in a read-only folder), else beside
    it (its parent made as needed). An OSError names the folder it could not be made in, not the temporary name."""
    out_dir = Path(out_dir)
    if out_dir.is_dir():
        where, prefix = out_dir, ".covseg-"
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        where, prefix = out_dir.parent, _hidden_prefix(out_dir.name, _RANDOM_CHARS + len(".part"))
    try:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=where))
    except OSError as err:
        raise _relabelled(err, str(where)) from None


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) and SIGTERM while a group of files that must agree is written.

    A SIGINT that arrives inside the block is raised as ``KeyboardInterrupt`` once the block has finished, a SIGTERM
    as :class:`~covseg.errors.Terminated` (a ``KeyboardInterrupt`` too), so a checkpoint and the history beside it
    always describe the same epoch. A SIGTERM is held back only where a handler already turns it into an exception
    (the ``covseg`` program's); otherwise it ends the process as it would have. Outside the main thread (where
    Python cannot install signal handlers) the block runs unprotected. Inside another such block, a signal caught is
    handed to the outer one, which raises it once the whole outer block has finished.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    hold.holds_interrupts = True  # type: ignore[attr-defined]  # how an inner block knows an outer one
    held = [signal.SIGINT] + ([signal.SIGTERM] if callable(signal.getsignal(signal.SIGTERM)) else [])
    previous = {signum: signal.signal(signum, hold) for signum in held}
    outer: list[int] = []
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # handed on even where the block raised, so that code catching its error between the two blocks cannot lose it
        outer = [signum for signum in caught if getattr(previous[signum], "holds_interrupts", False)]
        for signum in outer:
            previous[signum](signum, None)
    if signal.SIGTERM in caught and signal.SIGTERM not in outer:
        raise Terminated
    if any(signum not in outer for signum in caught):
        raise KeyboardInterrupt
