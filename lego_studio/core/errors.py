"""User-facing errors.

Every problem a user can cause (a broken image, a wrong model path, a concept made for another
model) is raised as a :class:`LegoError` whose message is one line that names the file and the
problem. Front ends print the message without a traceback (CLI) or show it in a dialog (UI).
"""

from __future__ import annotations


class LegoError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str):
        # Keep it one line: front ends show it verbatim.
        super().__init__(" ".join(str(message).split()))


class InputError(LegoError):
    """A file or value supplied by the user is unusable (image, mask, concept, config)."""


class ModelError(LegoError):
    """A model cannot be found or loaded (offline only)."""


class TrainingError(LegoError):
    """Training cannot start or had to stop (e.g. repeated non-finite losses)."""


class Cancelled(LegoError):
    """A long job was cancelled by the user."""


class OutOfMemory(TrainingError):
    """A run ran out of memory; its checkpoint is saved and ``settings`` would need less."""

    def __init__(self, message: str, settings: dict | None = None):
        super().__init__(message)
        self.settings = dict(settings or {})


class DiskError(LegoError, OSError):
    """A file could not be written or read because of the disk or the folder (full, read-only,
    no permission, a folder where a file should be ...). Still an ``OSError`` (``errno`` is kept),
    so code that handles OS errors keeps working; front ends show it as one line like any
    :class:`LegoError`. Made by :func:`disk_error`, the one path from OS errors to messages."""

    def __init__(self, message: str, errno: int | None = None, path: str | None = None):
        super().__init__(message)
        self.errno = errno
        self.path = path


# One template per OS error: what happened and what to do ({doing} "writing", {path} the file).
_ADVICE = {
    "ENOSPC": "no space left on device {doing} {path}: free some space and try again (a run resumes with --resume)",
    "EDQUOT": "disk quota exceeded {doing} {path}: free some space and try again (a run resumes with --resume)",
    "EROFS": "read-only file system {doing} {path}: choose a folder on a writable disk",
    "EACCES": "permission denied {doing} {path}: choose a folder you can write to, or change its permissions",
    "EPERM": "operation not permitted {doing} {path}: choose a folder you can write to, or change its permissions",
    "EISDIR": "{path} is a folder where a file is expected: move that folder away or choose another name",
    "ENOTDIR": "{path}: a part of this path is a file, not a folder: choose another folder",
    "EEXIST": "{path} is a file where a folder is expected: move that file away or choose another folder",
    "ENOENT": "no such file or folder {doing} {path}: check the path",
}
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "storagefull", "code: 28", "disk quota exceeded", "os error 122")


def disk_error(exc: BaseException, path=None, doing: str = "writing") -> "DiskError | None":
    """The one-line :class:`DiskError` for an OS-level failure ``exc`` while ``doing`` ``path``
    (``path`` defaults to the file the error names), or None when ``exc`` is not one.

    Understands ``OSError`` (by errno), safetensors' ``SafetensorError`` (which wraps the OS error
    in its text: "No space left on device (os error 28)") and the C++ ``RuntimeError`` torch and
    PIL give for a failed stream ("basic_ios::clear: iostream error", "PytorchStreamWriter
    failed writing file"). A :class:`DiskError` comes back unchanged."""
    import errno as errno_module

    if isinstance(exc, DiskError):
        return exc
    code = None
    text = str(exc)
    if isinstance(exc, OSError):
        code = exc.errno
        if path is None or (code in (errno_module.EEXIST, errno_module.ENOTDIR) and exc.filename):
            path = exc.filename  # mkdir's own path: the file standing where a folder should be
    elif type(exc).__name__ == "SafetensorError" or isinstance(exc, RuntimeError):
        lowered = text.lower()
        if any(marker in lowered for marker in _DISK_FULL_TEXT):
            code = errno_module.ENOSPC
        elif "read-only file system" in lowered or "os error 30" in lowered:
            code = errno_module.EROFS
        elif "permission denied" in lowered or "os error 13" in lowered:
            code = errno_module.EACCES
        elif "basic_ios::clear" in lowered or "iostream error" in lowered or "failed writing file" in lowered \
                or "file write failed" in lowered:
            # The C++ stream does not say why; a full disk is by far the usual cause.
            where = f" {path}" if path is not None else ""
            return DiskError(f"could not write{where} (the disk is probably full or not writable): "
                             "free some space or choose another folder, then try again", errno_module.EIO,
                             None if path is None else str(path))
        else:
            return None
    else:
        return None
    name = errno_module.errorcode.get(code, "") if isinstance(code, int) else ""
    shown = str(path) if path is not None else "a file"
    if name in _ADVICE:
        return DiskError(_ADVICE[name].format(doing=doing, path=shown), code, None if path is None else str(path))
    reason = (getattr(exc, "strerror", None) or text or type(exc).__name__).strip()
    return DiskError(f"{reason} {doing} {shown}: check the disk and the folder, then try again", code,
                     None if path is None else str(path))


# ------------------------------------------------------------------- chained library errors

# diffusers/transformers wrap a failed lazy import as "Failed to import X because of the following
# error (look up to see its traceback):\n<the error>" and chain the real one; in a one-line message
# the words after the colon (and the chained error) are lost, so they are replaced by the cause.
_LOOK_UP_BOILERPLATE = " because of the following error (look up to see its traceback)"


def innermost_cause(exc: BaseException) -> BaseException:
    """The first exception of ``exc``'s chain: follows ``__cause__`` (``raise ... from``) and
    ``__context__`` (raised while handling another) to the end."""
    seen = {id(exc)}
    while True:
        nxt = exc.__cause__ if exc.__cause__ is not None else (
            None if exc.__suppress_context__ else exc.__context__)
        if nxt is None or id(nxt) in seen:
            return exc
        seen.add(id(nxt))
        exc = nxt


def _raised_in(exc: BaseException) -> str:
    """The module whose code raised ``exc`` (the last frame of its traceback), or ''."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__") or ""
    return "" if name in ("__main__", "builtins") else str(name)


def _one_line(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_exception(exc: BaseException, limit: int = 400) -> str:
    """One line for ``exc`` that keeps what a chained error hides: the first line of its own
    message and, when it wraps another exception, the innermost one: its type, the module that
    raised it and its message. E.g. a diffusers lazy import that failed because a bundled package
    lacks a data file reads ``Failed to import diffusers.models.autoencoders.autoencoder_kl:
    FileNotFoundError in kernels._internals.python_deps: [Errno 2] No such file or directory:
    '.../python_depends.json'``. The full chain is for the log (``traceback.format_exception``)."""
    lines = str(exc).strip().splitlines()
    head = lines[0] if lines else ""
    head = head.replace(_LOOK_UP_BOILERPLATE, "").rstrip(":").strip()
    root = innermost_cause(exc)
    if root is exc:
        if len(lines) > 1 and _LOOK_UP_BOILERPLATE in lines[0]:
            # The wrapped error's text is all the cause there is (no chained exception).
            return _one_line(f"{head}: {' '.join(lines[1:])}", limit)
        return _one_line(head or type(exc).__name__, limit)
    where = _raised_in(root)
    cause = f"{type(root).__name__}{f' in {where}' if where else ''}: {_one_line(str(root), limit) or 'no message'}"
    if not head or head == str(root).strip():
        return _one_line(cause, limit)
    return _one_line(f"{head}: {cause}", limit)


def exception_chain_text(exc: BaseException) -> str:
    """The full traceback of ``exc`` with every chained exception, as Python prints it."""
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
