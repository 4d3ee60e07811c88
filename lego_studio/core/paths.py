"""Where things live on disk, and writing files so that a crash never leaves half a file.

``LEGO_STUDIO_HOME`` moves all user data (library, settings, default projects folder, caches);
tests and scripts set it. Without it the platformdirs user dirs are used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

APP_NAME = "LegoStudio"
HOME_ENV = "LEGO_STUDIO_HOME"
RESOURCES_ENV = "LEGO_STUDIO_RESOURCES"


def _home() -> Path | None:
    value = os.environ.get(HOME_ENV)
    return Path(value).expanduser() if value else None


def _user_dir(home_subdir: str, platform_dir) -> Path:
    """``$LEGO_STUDIO_HOME/<home_subdir>`` when the variable is set, else ``platform_dir()``
    (a platformdirs lookup, imported lazily to keep start-up fast); created on first use."""
    home = _home()
    path = home / home_subdir if home is not None else Path(platform_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only disk, a file in the way: one line naming the folder
        raise _disk_error(exc, path, "creating the folder") from exc
    return path


def data_dir() -> Path:
    """Root of user data (the concept library lives below it unless moved in settings)."""
    import platformdirs

    return _user_dir("data", lambda: platformdirs.user_data_dir(APP_NAME, appauthor=False))


def config_dir() -> Path:
    """Where settings.json lives."""
    import platformdirs

    return _user_dir("config", lambda: platformdirs.user_config_dir(APP_NAME, appauthor=False))


def cache_dir() -> Path:
    import platformdirs

    return _user_dir("cache", lambda: platformdirs.user_cache_dir(APP_NAME, appauthor=False))


def default_projects_dir() -> Path:
    import platformdirs

    return _user_dir("projects", lambda: Path(platformdirs.user_documents_dir()) / "Lego Studio Projects")


def resources_dir() -> Path:
    """The shipped ``resources/`` folder.

    In order: ``$LEGO_STUDIO_RESOURCES``; a PyInstaller bundle's ``sys._MEIPASS/resources``; an
    installed wheel's ``lego_studio/resources`` (setup.py copies it there); a source checkout's
    ``resources/`` next to the package (editable installs and ``python -m lego_studio``).
    """
    override = os.environ.get(RESOURCES_ENV)
    if override:
        return Path(override)
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    package = Path(__file__).resolve().parents[1]
    installed = package / "resources"
    if installed.is_dir():
        return installed
    return package.parent / "resources"


def resource(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks so large files never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- atomic writes


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); folders cannot be opened on Windows."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    mask = os.umask(0o022)  # read the umask (there is no other way), then put it back
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _new_file_mode()


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return _NEW_FILE_MODE


def atomic_save(path: str | os.PathLike, writer) -> Path:
    """The one atomic writer: ``writer(tmp_path)`` writes a temp file in the same folder, which is
    fsynced and then renamed over ``path`` (the folder is fsynced too), so a crash or power cut
    leaves either the old file or the new one, never an empty or half-written file.
    Libraries that write to a path themselves (safetensors, PIL, torch) use it directly.

    A failure of the disk or the folder (full, read-only, no permission, a folder in the way;
    also safetensors' and torch's wrapped forms of them) is raised as one-line
    :class:`~lego_studio.core.errors.DiskError` naming ``path`` (still an ``OSError``)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_MARK + path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _disk_error(exc, path) from exc
    try:
        writer(tmp)
        # mkstemp makes the file private (0600); the result gets the mode the file had, or a new
        # file's usual mode, so an exported concept can be shared like any file the user saves.
        os.chmod(tmp, _mode_for(path))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, Exception):
            translated = _disk_error(exc, path)
            if translated is not exc:
                raise translated from exc
        raise
    _fsync_dir(path.parent)
    return path


def _disk_error(exc: BaseException, path: Path, doing: str = "writing") -> BaseException:
    from lego_studio.core.errors import disk_error

    return disk_error(exc, path, doing) or exc


# Temp files of atomic_save are ``.<name>.<random>.tmp<suffix>``: hidden, and never taken for the
# real file. One left by a killed process is removed by clean_stale_temps when its owner starts.
TEMP_MARK = ".tmp"


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is an atomic_save temp file (``.index.json.k2j3_x.tmp.json``)."""
    if not name.startswith("."):
        return False
    stem, mark, rest = name[1:].rpartition(TEMP_MARK)
    return bool(mark) and "." in stem and (rest == "" or (rest.startswith(".") and "." not in rest[1:]))


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the atomic-write temp files a killed process left in ``folder`` (and below, with
    ``recursive``). Call it only while holding the folder's lock (core/locks.py), so no live
    writer's temp file is taken. Returns what was removed; files that cannot be removed stay."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive and not entry.name.startswith("."):
                    removed += clean_stale_temps(entry.path, recursive=True)
            elif is_temp_file(entry.name):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_save`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_save(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
