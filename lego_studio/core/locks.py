"""Cross-process locks: one writer at a time for the library index, a run folder and a project.

Why the standard library (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) and not the
``filelock`` package: the lock must name the process that holds it ("in use by process 1234"), so
the holder writes its pid into the lock file and a refused process reads it back. That needs full
control over how the file is opened (never truncated by a waiting process), which filelock does
not promise across its versions. An OS lock dies with its process: a lock left by a killed process
(``kill -9``, a power cut) is free again at once, with no stale-lock guessing.

The lock file is a hidden file next to what it guards (``.index.json.lock``, ``.run.lock``,
``.project.lock``); it stays on disk and holds ``pid host`` of the last holder. Locks are
re-entrant within one thread (a library rename that adds a thumbnail takes the library lock once);
another thread of the same process waits like another process would.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from lego_studio.core.errors import LegoError

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    _LOCK_OFFSET = 1 << 20  # lock a byte far past the pid text, which other processes must read

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
else:
    import errno
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


class LockBusy(LegoError):
    """Another process (or thread) holds the lock."""

    def __init__(self, message: str, pid: int | None = None):
        super().__init__(message)
        self.pid = pid


_held = threading.local()  # path -> [fd, depth] of the locks this thread holds


def _held_by_thread() -> dict:
    if getattr(_held, "pid", None) != os.getpid():
        # New thread, or a forked child: what the parent held is not this process's to re-enter
        # (and unlocking the inherited descriptor would release the parent's lock).
        _held.locks = {}
        _held.pid = os.getpid()
    return _held.locks


def _read_holder(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    first = text.split()[:1]
    return int(first[0]) if first and first[0].isdigit() else None


class ProcessLock:
    """An exclusive lock on ``path`` (the lock file), shared by every process on the machine.

    ``acquire(timeout=None)`` waits; ``timeout=0`` tries once. When the lock cannot be had,
    :class:`LockBusy` is raised with ``busy_message.format(path=..., pid=...)``."""

    def __init__(self, path: str | os.PathLike, busy_message: str = "{path}: in use by process {pid}; try again",
                 timeout: float | None = None, reentrant: bool = True):
        self.path = Path(path)
        self.busy_message = busy_message
        self.timeout = timeout  # what ``with lock:`` waits
        self.reentrant = reentrant  # False: a second holder in this very thread is refused too
        self._key = os.path.abspath(self.path)
        self._own_fd: int | None = None  # the descriptor of a non-reentrant hold

    @property
    def held(self) -> bool:
        """Whether this thread holds the lock (a non-reentrant lock: whether this object does)."""
        return self._own_fd is not None if not self.reentrant else self._key in _held_by_thread()

    def holder(self) -> int | None:
        """The pid written by the last holder (the current one while it is held)."""
        return _read_holder(self.path)

    def acquire(self, timeout: float | None = None) -> "ProcessLock":
        locks = _held_by_thread()
        if not self.reentrant:
            if self._own_fd is not None:
                return self
        elif self._key in locks:
            locks[self._key][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        try:
            while not _try_lock(fd):
                if deadline is not None and time.monotonic() >= deadline:
                    pid = self.holder()
                    message = self.busy_message.replace("{path}", str(self.path)).replace("{pid}", str(pid or "unknown"))
                    raise LockBusy(message, pid)
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            try:  # who holds it, for the message another process shows
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            except OSError:
                pass  # a full disk must not stop the lock itself
        except BaseException:
            os.close(fd)
            raise
        if self.reentrant:
            locks[self._key] = [fd, 1]
        else:
            self._own_fd = fd
        return self

    def release(self) -> None:
        if not self.reentrant:
            fd, self._own_fd = self._own_fd, None
            if fd is not None:
                try:
                    _unlock(fd)
                finally:
                    os.close(fd)
            return
        locks = _held_by_thread()
        entry = locks.get(self._key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del locks[self._key]
        try:
            _unlock(entry[0])
        finally:
            os.close(entry[0])

    def __enter__(self) -> "ProcessLock":
        return self.acquire(self.timeout)

    def __exit__(self, *exc) -> None:
        self.release()


def is_locked(path: str | os.PathLike) -> bool:
    """Whether some process (this one included) holds the lock at ``path``; a missing or
    unreadable lock file is not held. Used to tell a live run from a dead one."""
    path = Path(path)
    if os.path.abspath(path) in _held_by_thread():
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY)  # a read-only folder: flock works on a read-only fd
        except OSError:
            return False
    try:
        if os.name == "nt":  # pragma: no cover
            return not _try_lock(fd) or (_unlock(fd) or False)
        if _try_lock(fd):
            _unlock(fd)
            return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
