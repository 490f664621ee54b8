"""Cross-process locks on what qtui writes, and the clean-up of what a killed process left behind.

A variant (or a converted model) is written into a hidden temporary folder ``.NAME.tmp-XXXX``
beside its destination and renamed into place at the end. Whoever writes ``NAME`` first takes an
exclusive ``flock`` on ``.NAME.lock`` in the same folder (the file holds the writer's pid), so

* two processes writing the same variant at once cannot mix their files: the second one is told
  who holds it (:class:`Busy`), or waits for it when asked to;
* a temporary folder whose lock nobody holds belongs to a process that died (a SIGKILL, a power
  cut): :func:`clean_stale` removes it at the next start. The kernel drops a dead process's
  ``flock``, so a live writer's folder is never touched, however long it has been running.

Within one process the locks held are kept in a registry: a thread that takes a lock it already
holds (``quantize_and_save`` holds the variant's lock, and the store's writer under it takes it
again) gets a counted reference instead of a second ``flock``, which would conflict with the
first one (two open files of one process exclude each other). Another thread of the process
meets the lock as another process would: :class:`Busy`, or a wait.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Cancelled, StoreError

TMP_MARK = ".tmp-"  # ".NAME.tmp-XXXXXXXX": tempfile.mkdtemp(prefix=f".{NAME}.tmp-")


@dataclass
class _Held:
    """A lock this process holds: the fd with the ``flock``, the thread that took it, and how many
    ``with`` blocks of that thread are inside it."""

    fd: int
    owner: int
    count: int = 1


_held: dict[str, _Held] = {}  # the lock file's absolute path -> the lock held on it
_registry = threading.Lock()


class Busy(StoreError):
    """Another live process is writing the same destination."""


def lock_path(dest: Path) -> Path:
    """The lock file of ``dest``: ``.NAME.lock`` beside it."""
    return dest.parent / f".{dest.name}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _try_lock(path: Path) -> int | None:
    """An fd holding the exclusive lock on ``path``, or None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        # the previous holder unlinks the file before it unlocks: a lock on an unlinked file
        # protects nothing, so start again on the file now at ``path``
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _busy_message(path: Path, dest: Path, what: str) -> str:
    holder = ""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            holder = _holder(fd)
        finally:
            os.close(fd)
    if holder == f" (pid {os.getpid()})":
        return f"{dest} is being {what} by another task of this qtui process; wait for it to finish"
    return f"{dest} is being {what} by another qtui process{holder}; wait for it to finish"


@contextlib.contextmanager
def exclusive(
    dest: Path,
    what: str = "written",
    wait: bool = False,
    cancel: threading.Event | None = None,
    poll_s: float = 0.2,
) -> Iterator[None]:
    """Hold the lock on ``dest`` for the ``with`` block. Held by a live process (or by another
    thread of this one): :class:`Busy` at once, or (``wait``) wait until it is free (``cancel``
    stops the wait). Already held by this thread: a counted reference, released with the
    outermost block. A folder that cannot be written is a one-line :class:`StoreError`."""
    dest = Path(dest)
    path = lock_path(dest)
    key = os.path.abspath(path)
    me = threading.get_ident()
    with _registry:
        ours = _held.get(key)
        if ours is not None and ours.owner == me:
            ours.count += 1
        else:
            ours = None
    if ours is not None:  # this thread holds it already: the outermost block releases it
        try:
            yield
        finally:
            with _registry:
                ours.count -= 1
        return
    created = _missing_parents(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while (fd := _take(key, path, me)) is None:
            if not wait:
                raise Busy(_busy_message(path, dest, what))
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled while waiting for {dest.name}")
            time.sleep(poll_s)
    except OSError as exc:
        _remove_empty(created)
        raise write_error(exc, dest) from exc
    try:
        yield
    finally:
        _release(key, path, fd)
        _remove_empty(created)  # a run that saved nothing leaves no empty folders either


def _take(key: str, path: Path, me: int) -> int | None:
    """The ``flock`` on ``path``, registered as held by thread ``me``; None while another thread
    of this process or another process holds it."""
    with _registry:
        if key in _held:  # another thread of this process (``me`` re-enters in exclusive)
            return None
        fd = _try_lock(path)
        if fd is None:
            return None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)
            raise
        _held[key] = _Held(fd, me)
        return fd


def _release(key: str, path: Path, fd: int) -> None:
    with _registry:
        _held.pop(key, None)
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still held: see _try_lock
        os.close(fd)


def held(dest: Path) -> bool:
    """Whether this process holds the lock on ``dest`` (any of its threads)."""
    with _registry:
        return os.path.abspath(lock_path(Path(dest))) in _held


def _missing_parents(folder: Path) -> list[Path]:
    """The folders that creating ``folder`` would create, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; a folder something was saved in stays
        try:
            folder.rmdir()
        except OSError:
            return


def write_error(exc: BaseException, dest: Path) -> StoreError:
    """One line for an error met while writing ``dest``: an OSError, or a library's error that
    wraps one in its text (safetensors reports a full disk as ``SafetensorError: ... os error 28``)."""
    code = exc.errno if isinstance(exc, OSError) else None
    text = str(exc)
    if code == errno.ENOSPC or "No space left on device" in text or "os error 28" in text:
        return StoreError(f"disk full while saving {dest.name}; nothing was saved")
    if isinstance(exc, OSError) and code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(f"cannot write {dest}: {(exc.strerror or text).lower()}; nothing was saved")
    reason = (
        exc.strerror if isinstance(exc, OSError) and exc.strerror else text.splitlines()[0] if text else ""
    )
    return StoreError(f"could not save {dest}: {reason or type(exc).__name__}; nothing was saved")


def stale_name(folder: Path) -> str | None:
    """``NAME`` of a temporary folder ``.NAME.tmp-XXXX``, None for anything else."""
    name = folder.name
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    return name[1:].rsplit(TMP_MARK, 1)[0] or None


def clean_stale(root: Path, depth: int = 1) -> list[Path]:
    """Remove the temporary folders under ``root`` (its children, and their children when
    ``depth`` is 2) that no live process holds; returns what was removed. Folders that cannot be
    read or written are left alone: a clean-up never fails the command that asked for it."""
    patterns = [f".*{TMP_MARK}*"] + ([f"*/.*{TMP_MARK}*"] if depth >= 2 else [])
    removed: list[Path] = []
    for pattern in patterns:
        try:
            found = sorted(root.glob(pattern))
        except OSError:
            continue
        for tmp in found:
            name = stale_name(tmp)
            if name is None or not tmp.is_dir() or tmp.is_symlink():
                continue
            try:
                fd = _try_lock(lock_path(tmp.parent / name))
            except OSError:
                continue  # a read-only folder: nothing can be cleaned there
            if fd is None:
                continue  # a live writer
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                if not tmp.exists():
                    removed.append(tmp)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(lock_path(tmp.parent / name))
                os.close(fd)
    return removed
