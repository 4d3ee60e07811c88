"""One owner for training runs: the run record ``runs/<id>/run.json``.

A run folder holds what the trainer writes (``config.json``, ``log.jsonl``, ``checkpoints/``,
``previews/``, ``latents/``, ``concept.safetensors``) and **one record** of the run itself::

    run.json  {"schema": 1, "status": "running" | "finished" | "cancelled" | "failed",
               "message": one line (why it failed / where a cancelled run resumes),
               "config": the TrainConfig as a dict,
               "inputs": {"images", "masks", "subject_images", "model", "device", "precision", "out"},
               "pid", "host", "process_started": who is running it,
               "created", "started", "updated", "ended": UTC ISO times}

Who writes what:

* the front end (CLI, app, demo, benchmark) calls :func:`create_run` with the run's inputs before
  it starts the trainer, so a resume knows the images and the model without asking again;
* the :class:`~lego_studio.core.training.Trainer` calls :func:`begin_run` when it starts (status
  running, this process's pid/host) and :func:`end_run` with its end state: finished, cancelled
  (``Cancelled`` or Ctrl+C) or failed with the one-line reason;
* :func:`read_run` describes a run: a ``running`` record whose process is gone (same host, pid no
  longer alive, or alive but a different process) reads as **interrupted at once**, resumable
  from its last checkpoint.

One process at a time: whoever trains in a run folder holds its lock ``.run.lock``
(:func:`hold_run`, core/locks.py) from before ``create_run`` to the end state, so a second trainer
on a live folder refuses in one line naming the process; the OS drops the lock of a killed process,
so a dead run's folder is free at once. A held lock is also how :func:`read_run` tells a live run.
A failure before the first step (the model does not load, the folder is read-only) is recorded as
``failed`` by :func:`hold_run`; a record that could not be written (a full disk) reads as
``interrupted`` with that said. Paths in ``inputs`` are absolute, so a resume works from any folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import threading
from contextlib import contextmanager

from lego_studio.core import paths
from lego_studio.core.errors import Cancelled, InputError, LegoError, disk_error
from lego_studio.core.locks import ProcessLock, is_locked

RUN_FILE = "run.json"
RUN_LOCK = ".run.lock"
# The inputs that are file paths: stored absolute (a relative path would depend on the folder
# the command was started in).
PATH_INPUTS = ("images", "masks", "subject_images", "out")
SCHEMA = 1

RUN_RUNNING = "running"
RUN_FINISHED = "finished"
RUN_CANCELLED = "cancelled"
RUN_FAILED = "failed"
RUN_INTERRUPTED = "interrupted"  # read only: a running record whose process is gone
END_STATES = (RUN_FINISHED, RUN_CANCELLED, RUN_FAILED)
RESUMABLE = (RUN_INTERRUPTED, RUN_CANCELLED, RUN_FAILED)

# Only for runs without a pid we can check (another host, or folders from before run.json): one
# whose files have not changed for this long without a final event is not running any more.
RUN_STALE_SECONDS = 15 * 60

# Files of runs written before run.json existed.


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RunInfo:
    id: str
    path: Path
    status: str  # RUN_* constant
    step: int  # last step logged
    total_steps: int | None
    method: str | None  # "lego" | "ti"
    concept_path: Path | None  # the final concept, when the run finished
    created: str
    message: str = ""  # why it failed / where a cancelled run resumes

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE and (self.path / "config.json").is_file()


# ------------------------------------------------------------------------------- process identity


def _process_start(pid: int) -> str | None:
    """An identifier of when process ``pid`` started (Linux: /proc start time), to tell a live
    run from an unrelated process that got the same pid later. None where it cannot be read."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name (field 2) may hold spaces, so split after ")".
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _this_process() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "process_started": _process_start(pid)}


def process_alive(pid, host, process_started=None) -> bool | None:
    """True / False for a process on this host; None when it cannot be told (another host)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    if host and host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return None
    if process_started is not None:
        current = _process_start(pid)
        if current is not None and current != process_started:
            return False  # the pid was reused by another process
    return True


# ------------------------------------------------------------------------------- the record


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def read_record(run_dir: str | os.PathLike, strict: bool = False) -> dict:
    """The run's ``run.json`` as a dict ({} when there is none; also when it is unreadable, unless
    ``strict``: then :class:`InputError` says so in one line)."""
    path = Path(run_dir) / RUN_FILE
    data = _read_json(path)
    if isinstance(data, dict):
        return data
    if strict and path.exists():
        raise InputError(f"run.json in {Path(run_dir)} is unreadable: {record_problem(run_dir)}")
    return {}


def record_problem(run_dir: str | os.PathLike) -> str | None:
    """Why ``run.json`` cannot be used (None when it is fine or missing)."""
    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return str(disk_error(exc, path, "reading"))
    except UnicodeDecodeError:
        return "it is not text (damaged)"
    except ValueError as exc:
        return f"it is not valid JSON ({getattr(exc, 'msg', exc)}; truncated or damaged)"
    return None if isinstance(data, dict) else "it does not hold a run record"


# ------------------------------------------------------------------------------- one process per run


_ended_here: set[str] = set()  # run folders whose end state this process recorded (see hold_run)
_ended_lock = threading.Lock()
_pending_ends: dict[str, tuple[str, str]] = {}  # end states this process could not write yet


def run_lock(run_dir: str | os.PathLike) -> ProcessLock:
    run_dir = Path(run_dir)
    return ProcessLock(run_dir / RUN_LOCK,
                       f"{run_dir}: another training (process {{pid}}) is using this run folder; wait for it to "
                       "end or stop it, or choose another run folder")


def is_live(run_dir: str | os.PathLike) -> bool:
    """Whether a process (this one included) is training in ``run_dir`` now."""
    return is_locked(Path(run_dir) / RUN_LOCK)


PROBE_GRACE_S = 1.0  # how long hold_run waits out a probe (or a trainer just ending) before refusing


@contextmanager
def hold_run(run_dir: str | os.PathLike):
    """Hold the run folder for this process (and thread): raises a one-line
    :class:`~lego_studio.core.locks.LockBusy` naming the other process when one trains there.
    Re-entrant. The outermost hold removes temp files killed writes left in the folder, and
    records a failure (or cancel) that happens inside it when nothing recorded an end state, so
    a run that fails before its first step does not stay "running"."""
    run_dir = Path(run_dir)
    lock = run_lock(run_dir)
    outermost = not lock.held
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Not timeout=0: is_live() probes the lock by taking it for an instant, so a run list
        # refreshing at this moment (in this process or another) would read as a second trainer.
        lock.acquire(timeout=PROBE_GRACE_S)
    except OSError as exc:
        raise (disk_error(exc, run_dir, "creating the run folder") or exc) from exc
    key = os.path.abspath(run_dir)
    try:
        if outermost:
            with _ended_lock:
                _ended_here.discard(key)
            paths.clean_stale_temps(run_dir, recursive=True)
        yield run_dir
    except BaseException as exc:
        if outermost and key not in _ended_here and (run_dir / RUN_FILE).exists():
            cancelled = isinstance(exc, (Cancelled, KeyboardInterrupt))
            record_end(run_dir, RUN_CANCELLED if cancelled else RUN_FAILED, exc)
        raise
    finally:
        lock.release()


def holding(run_dir: str | os.PathLike, job):
    """``job`` wrapped in :func:`hold_run` (for a front end's worker: the folder is held from
    ``create_run`` to the trainer's end state, and an early failure is recorded)."""
    import functools

    @functools.wraps(job)
    def wrapped(*args, **kwargs):
        with hold_run(run_dir):
            return job(*args, **kwargs)

    return wrapped


def failure_reason(exc: BaseException) -> str:
    """The one-line reason a run stopped, for its record: a user error's message, an OS error's
    :func:`~lego_studio.core.errors.disk_error` line, else the exception's type and text."""
    if isinstance(exc, LegoError):
        return str(exc)
    problem = disk_error(exc)
    if problem is not None:
        return str(problem)
    if isinstance(exc, KeyboardInterrupt):
        return "cancelled (interrupted from the keyboard)"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_end(run_dir: str | os.PathLike, status: str, reason: "BaseException | str" = "") -> bool:
    """:func:`end_run` that never raises (it runs while another error is on its way up): False
    when the record could not be written, e.g. on a full disk; :func:`read_run` then reads the
    run as interrupted, saying that its end was not recorded."""
    message = reason if isinstance(reason, str) else failure_reason(reason)
    key = os.path.abspath(run_dir)
    try:
        end_run(run_dir, status, message)
    except Exception:  # noqa: BLE001 - the original error matters more than this one
        _pending_ends[key] = (status, " ".join(message.split()))  # read_run says it, and writes it later
        return False
    _pending_ends.pop(key, None)
    return True


def _write_record(run_dir: Path, record: dict) -> Path:
    record["schema"] = SCHEMA
    record["updated"] = now_iso()
    return paths.atomic_write_json(run_dir / RUN_FILE, record)


def create_run(run_dir: str | os.PathLike, inputs: dict | None = None, config=None) -> Path:
    """Record a run's inputs before training starts (keeps what an earlier record said that
    ``inputs`` does not override, so a resume may add the device without losing the images).
    Refuses (:class:`~lego_studio.core.locks.LockBusy`) while another process trains there."""
    run_dir = Path(run_dir)
    with hold_run(run_dir):
        record = read_record(run_dir)
        record.setdefault("created", now_iso())
        record.setdefault("status", RUN_RUNNING)
        merged = dict(record.get("inputs") or {})
        merged.update({k: _input_value(k, v) for k, v in (inputs or {}).items()})
        record["inputs"] = merged
        record["run_dir"] = os.path.abspath(run_dir)
        if config is not None:
            record["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        record.update(_this_process())
        return _write_record(run_dir, record)


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return str(value)
    return value


def _absolute(value):
    if isinstance(value, (list, tuple)):
        return [_absolute(v) for v in value]
    if isinstance(value, (str, os.PathLike)) and str(value):
        return os.path.abspath(os.path.expanduser(value))
    return value


def _input_value(key: str, value):
    if key in PATH_INPUTS:
        return _absolute(value)
    if key == "model" and isinstance(value, (str, os.PathLike)) and str(value) and Path(value).expanduser().exists():
        return os.path.abspath(os.path.expanduser(value))  # a model folder or file; names stay names
    return _jsonable(value)


def begin_run(run_dir: str | os.PathLike, config=None) -> Path:
    """The trainer starts (or resumes) the run in this process: status running, pid/host."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _ended_lock:
        _ended_here.discard(os.path.abspath(run_dir))
    record = read_record(run_dir)
    record.setdefault("created", now_iso())
    if config is not None:
        record["config"] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    record.update(_this_process())
    record.update(status=RUN_RUNNING, message="", started=now_iso(), ended=None)
    return _write_record(run_dir, record)


def end_run(run_dir: str | os.PathLike, status: str, message: str = "") -> Path:
    """The run's end state: finished, cancelled or failed (with its one-line reason)."""
    if status not in END_STATES:
        raise InputError(f"unknown end state {status!r} (one of {', '.join(END_STATES)})")
    run_dir = Path(run_dir)
    with _ended_lock:
        _ended_here.add(os.path.abspath(run_dir))  # hold_run must not record another end
    record = read_record(run_dir)
    record.setdefault("created", now_iso())
    record.update(status=status, message=" ".join(str(message).split()), ended=now_iso())
    return _write_record(run_dir, record)


def run_inputs(run_dir: str | os.PathLike, strict: bool = False) -> dict:
    """What the run was started with (images, masks, subject_images, model, device, out), from
    run.json. ``strict``: an unreadable run.json raises a one-line :class:`InputError` instead of
    reading as empty."""
    inputs = read_record(run_dir, strict=strict).get("inputs")
    return dict(inputs) if isinstance(inputs, dict) else {}


# ------------------------------------------------------------------------------- reading a run


def _last_events(log: Path, max_bytes: int = 65536) -> list[dict]:
    """The JSON events at the end of ``log.jsonl``; a half-written last line is ignored."""
    try:
        with open(log, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            tail = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    events = []
    for line in tail.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _mtime_or_zero(path: Path) -> float:
    """Modification time, or 0 for a file that vanished meanwhile (a live run replaces its files
    atomically, so a listing can name a file that is gone a moment later)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def record_status(run_dir: str | os.PathLike, record: dict | None = None) -> tuple[str, str]:
    """(status, message) of a run from its record; a running record whose process is gone is
    interrupted."""
    run_dir = Path(run_dir)
    record = read_record(run_dir) if record is None else record
    status = record.get("status")
    message = str(record.get("message") or "")
    if status in END_STATES:
        return status, message
    if status == RUN_RUNNING:
        if is_live(run_dir):
            return RUN_RUNNING, message
        pending = _pending_ends.get(os.path.abspath(run_dir))
        if pending is not None:  # this process could not write the end state: try again now
            if record_end(run_dir, *pending):
                _pending_ends.pop(os.path.abspath(run_dir), None)
            return pending
        alive = process_alive(record.get("pid"), record.get("host"), record.get("process_started"))
        if alive is False:
            return RUN_INTERRUPTED, ("the process that ran it is gone without recording how it ended (a crash, a kill, "
                                     "or a full disk); resume continues from its last checkpoint")
        if alive is None:  # another machine: fall back to the files' age
            updated = max(_mtime_or_zero(run_dir / RUN_FILE), _mtime_or_zero(run_dir / "log.jsonl"))
            if time.time() - updated >= RUN_STALE_SECONDS:
                return RUN_INTERRUPTED, message
        return RUN_RUNNING, message
    return RUN_INTERRUPTED, message


def read_run(run_dir: str | os.PathLike) -> RunInfo:
    """Describe one run from its record and files."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    config = record.get("config") if isinstance(record.get("config"), dict) else None
    if config is None:
        config = _read_json(run_dir / "config.json")
        config = config if isinstance(config, dict) else {}
    events = _last_events(run_dir / "log.jsonl")
    step, total = 0, config.get("steps") if isinstance(config.get("steps"), int) else None
    if total is not None and isinstance(config.get("subject_token_steps"), int):
        total += config["subject_token_steps"]  # stage 0 steps come first in the same count
    for event in events:
        if isinstance(event.get("step"), int):
            step = max(step, event["step"])
        if isinstance(event.get("total"), int):
            total = event["total"]
    concept = run_dir / "concept.safetensors"
    problem = None if record else record_problem(run_dir)
    if record:
        status, message = record_status(run_dir, record)
    else:  # no run.json, or a damaged one: running while its lock is held (being set up), else interrupted
        status = RUN_RUNNING if is_live(run_dir) else RUN_INTERRUPTED
        message = f"run.json is unreadable: {problem}" if problem is not None else ""
    if status == RUN_INTERRUPTED and message.startswith("the process that ran it is gone without"):
        message = message.replace("recording how it ended", f"recording how it ended, at step {step}"
                                  + (f" of {total}" if total else ""), 1)
    created = record.get("created") if isinstance(record.get("created"), str) else None
    created = created or (config.get("created") if isinstance(config.get("created"), str) else None)
    if not created:
        created = datetime.fromtimestamp(_mtime_or_zero(run_dir), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    method = config.get("method") if isinstance(config.get("method"), str) else None
    return RunInfo(
        id=run_dir.name,
        path=run_dir,
        status=status,
        step=step,
        total_steps=total,
        method=method,
        concept_path=concept if concept.is_file() else None,
        created=created,
        message=message,
    )


def list_runs(runs_dir: str | os.PathLike) -> list[RunInfo]:
    """Every run under ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    infos = []
    for path in runs_dir.iterdir():
        if path.is_dir() and not path.name.startswith("."):
            try:
                infos.append(read_run(path))
            except OSError:
                continue  # removed while listing
    return sorted(infos, key=lambda r: r.id, reverse=True)


def interrupted_runs(runs_dir: str | os.PathLike) -> list[RunInfo]:
    """Runs whose process is gone before they ended (offered for resume after a restart)."""
    return [info for info in list_runs(runs_dir) if info.status == RUN_INTERRUPTED and info.resumable]
