"""The app's one error path.

* A **user error** (a :class:`~lego_studio.core.errors.LegoError`: a broken image, a wrong model
  path) is one line in a dialog or status line: the message says what and where.
* A **bug** (any other exception, in a worker or on the UI thread) goes with its full traceback to
  ``<data dir>/logs/lego-studio.log``; the user sees one line naming the error and that file.
  ``traceback.print_exc()`` alone is lost when the app is started from its menu entry.
"""

from __future__ import annotations

import sys
import traceback
from datetime import datetime
from pathlib import Path

LOG_NAME = "lego-studio.log"
MAX_LOG_BYTES = 2 * 1024 * 1024


def log_path() -> Path:
    from lego_studio.core import paths

    folder = paths.data_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / LOG_NAME


def log_bug(exc_type, exc, tb) -> str:
    """Append the traceback to the log file; return the one line to show the user."""
    from lego_studio.core.errors import describe_exception, innermost_cause

    # A chained error (a failed lazy import, say) is named by its innermost cause, in one line.
    headline = (describe_exception(exc, limit=300) if exc is not None and innermost_cause(exc) is not exc
                else f"{exc_type.__name__}: {exc}".splitlines()[0][:300])
    try:
        path = log_path()
        if path.exists() and path.stat().st_size > MAX_LOG_BYTES:
            path.replace(path.with_suffix(".log.1"))  # keep one older log
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"--- {datetime.now().isoformat(timespec='seconds')}\n")
            handle.write("".join(traceback.format_exception(exc_type, exc, tb)))
        where = f"details in {path}"
    except OSError:  # the log itself cannot be written: stderr is the last resort
        traceback.print_exception(exc_type, exc, tb)
        where = "details on the terminal"
    return f"Unexpected error (a bug): {headline} — {where}"


def install_excepthook(show=None) -> None:
    """Route exceptions that reach the Qt event loop on the UI thread through :func:`log_bug`;
    ``show(line)`` tells the user (a dialog in the app)."""
    from lego_studio.core.errors import LegoError

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        line = str(exc) if isinstance(exc, LegoError) else log_bug(exc_type, exc, tb)
        if show is not None:
            try:
                show(line)
            except Exception:  # noqa: BLE001 - never raise from the hook
                pass

    sys.excepthook = hook
