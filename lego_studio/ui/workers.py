"""Background work for the views: one QThread per task, results back on the UI thread.

The pattern follows Orange's ``ConcurrentWidgetMixin`` and Anki's ``QueryOp``: a view owns a
:class:`TaskRunner`, starts *one* task at a time with plain callbacks, and never touches widgets
from the worker. The task function receives a :class:`TaskState` through which it reports
progress, streams events (losses, previews, partial results) and checks for cancellation.

Every thread is quit and waited in :meth:`TaskRunner.shutdown`, which views call from their
``closeEvent`` (and tests from teardown), so no QThread outlives its widgets.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from lego_studio.core.errors import Cancelled, LegoError


def failure_message(exc: Exception) -> str:
    """The one line the user sees for a task's failure: a :class:`LegoError`'s message, the
    one-line :class:`~lego_studio.core.errors.DiskError` for a full or read-only disk, and for
    anything else (a bug) the line naming the error and the log file that has its traceback."""
    from lego_studio.core.errors import disk_error

    if isinstance(exc, LegoError):
        return str(exc)
    problem = disk_error(exc)
    if problem is not None:
        return str(problem)
    from lego_studio.ui.errors import log_bug

    return log_bug(type(exc), exc, exc.__traceback__)


class TaskState:
    """What a running task sees: report progress, emit events, check for cancel.

    Thread-safe: the UI thread sets ``cancel``; the worker thread reads it.
    """

    def __init__(self, worker: "Worker"):
        self._worker = worker
        self._cancel = threading.Event()

    # -- called from the worker thread
    def progress(self, done: int, total: int, message: str = "") -> None:
        self._worker.progress.emit(int(done), int(total), str(message))

    def emit(self, event: Any) -> None:
        self._worker.event.emit(event)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the user asked to stop (cooperative cancel point)."""
        if self._cancel.is_set():
            raise Cancelled("cancelled")

    # -- called from the UI thread
    def request_cancel(self) -> None:
        self._cancel.set()


BACKGROUND_NICENESS = 10


def _lower_this_threads_priority() -> None:
    """Let the UI thread win the CPU from heavy background work on a busy machine.

    Qt's thread priorities are ignored for normal threads on Linux, but a thread's own nice
    value can be raised (without privileges) through its thread id; threads it starts later,
    such as torch's OpenMP workers, inherit it. Elsewhere QThread.LowPriority (set in start)
    does the job.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), BACKGROUND_NICENESS))
    except (AttributeError, OSError):
        pass  # not allowed here: the work still runs, just at normal priority


class Worker(QObject):
    """Runs ``fn(state)`` once in the thread it was moved to."""

    progress = Signal(int, int, str)
    event = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    done = Signal()  # after any outcome; used to stop the thread

    def __init__(self, fn: Callable[[TaskState], Any]):
        super().__init__()
        self._fn = fn
        self.state = TaskState(self)

    @Slot()
    def run(self) -> None:
        _lower_this_threads_priority()
        try:
            result = self._fn(self.state)
        except Cancelled:
            self.cancelled.emit()
        except Exception as exc:  # noqa: BLE001 - a user error or a bug: one line, the UI stays alive
            self.failed.emit(failure_message(exc))
        else:
            if self.state.cancelled:
                self.cancelled.emit()
            else:
                self.finished.emit(result)
        finally:
            self.done.emit()


_ABANDONED: set = set()  # runners whose task finishes in the background (TaskRunner.abandon)


class TaskRunner(QObject):
    """One task at a time for one view.

    ``start`` returns False (and starts nothing) while a task is running, so a double click on
    "Generate" never launches two jobs. Callbacks run on the UI thread.
    """

    busy_changed = Signal(bool)
    progress = Signal(int, int, str)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: Worker | None = None
        self._callbacks: dict[str, Callable | None] = {}
        self._name = ""

    # ----------------------------------------------------------------- API
    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(
        self,
        fn: Callable[[TaskState], Any],
        *,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        on_progress: Callable[[int, int, str], None] | None = None,
        on_cancelled: Callable[[], None] | None = None,
        name: str = "",
    ) -> bool:
        if self.busy:
            return False
        self._name = name
        self._callbacks = dict(
            done=on_done, error=on_error, event=on_event, progress=on_progress, cancelled=on_cancelled
        )
        thread = QThread()
        thread.setObjectName(f"lego-task-{name or 'anon'}")
        worker = Worker(fn)
        worker.moveToThread(thread)
        # Bound methods of this QObject (which lives on the UI thread) -> queued connections.
        worker.progress.connect(self._on_progress)
        worker.event.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.done.connect(thread.quit)
        thread.started.connect(worker.run)
        thread.finished.connect(self._on_thread_finished)
        self._thread, self._worker = thread, worker
        thread.start(QThread.Priority.LowPriority)
        self.busy_changed.emit(True)
        return True

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.state.request_cancel()

    def shutdown(self, timeout_ms: int = 30000) -> None:
        """Cancel, then quit and wait for the thread. Safe to call twice."""
        thread = self._thread
        if thread is None:
            return
        self.cancel()
        thread.quit()
        if not thread.wait(timeout_ms):
            # Still busy: a task that cannot be interrupted (importing torch on a loaded machine took
            # longer than this). QThread.terminate() cannot stop Python code safely: a thread killed
            # holding the GIL or the import lock hung the quit for good. So say why, and wait.
            print(f"lego-studio: waiting for {thread.objectName() or 'a background task'} to finish…",
                  file=sys.stderr, flush=True)
            thread.wait()
        self._cleanup()

    def abandon(self, on_done: Callable | None = None) -> None:
        """Stop caring about the running task without waiting for it: its callbacks are dropped,
        cancel is requested, and the runner hands itself to the application object so that the
        thread can finish (and be cleaned up) after the view that started it is gone. For tasks
        that cannot be interrupted, such as loading a checkpoint to check it. ``on_done`` (which must
        not touch the view) still receives a successful result. No-op when idle."""
        if self._thread is None or self in _ABANDONED:
            return  # idle, or abandoned already (with the callback it was given then)
        from PySide6.QtCore import QCoreApplication

        self._callbacks = {"done": on_done} if on_done is not None else {}
        if on_done is None:
            self.cancel()
        app = QCoreApplication.instance()
        if app is not None and self.parent() is not app:
            self.setParent(app)
            _ABANDONED.add(self)
            self.busy_changed.connect(lambda busy: busy or self._forget_abandoned())

    def _forget_abandoned(self) -> None:
        _ABANDONED.discard(self)
        self.deleteLater()

    # ------------------------------------------------------------- private
    def _call(self, key: str, *args) -> None:
        callback = self._callbacks.get(key)
        if callback is not None:
            callback(*args)

    @Slot(int, int, str)
    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress.emit(done, total, message)
        self._call("progress", done, total, message)

    @Slot(object)
    def _on_event(self, event: object) -> None:
        self._call("event", event)

    @Slot(object)
    def _on_finished(self, result: object) -> None:
        self._finish_then("done", result)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        self._finish_then("error", message)

    @Slot()
    def _on_cancelled(self) -> None:
        self._finish_then("cancelled")

    def _finish_then(self, key: str, *args) -> None:
        # The outcome arrives before the thread has fully stopped; wait for it so that the
        # callback may start the next task straight away.
        callbacks = self._callbacks
        thread = self._thread
        if thread is not None:
            thread.quit()
            thread.wait()
        self._cleanup()
        callback = callbacks.get(key)
        if callback is not None:
            callback(*args)

    @Slot()
    def _on_thread_finished(self) -> None:
        # Thread stopped without an outcome signal reaching us (e.g. shutdown); nothing to do
        # beyond cleanup, which is idempotent.
        if self._thread is not None and self._thread.isFinished() and self._worker is None:
            self._cleanup()

    def _cleanup(self) -> None:
        """Forget the finished task's thread and worker.

        Teardown order matters: both are owned by Python (no Qt parent), so they are deleted
        when the last reference goes, and only after the thread has *finished* (every caller
        has waited for it). They are not also handed to ``deleteLater``: a deferred delete that
        Qt runs while Python still owns the object, or that Python pre-empts by deleting it
        directly, is the "shared QObject was deleted directly" warning seen on quit during
        training. The worker goes first (it lives in the thread), then the thread."""
        thread, worker = self._thread, self._worker
        self._thread = self._worker = None
        self._callbacks = {}
        if thread is not None and thread.isRunning():
            thread.quit()
            thread.wait()
        del worker
        if thread is not None:
            self.busy_changed.emit(False)


def shutdown_abandoned(timeout_ms: int = 30000) -> None:
    """Wait for the tasks that closed views abandoned (at application exit)."""
    for runner in list(_ABANDONED):
        runner.shutdown(timeout_ms)
        _ABANDONED.discard(runner)


class LatestReader(TaskRunner):
    """A :class:`TaskRunner` for readings that go stale (the runs list, the time figures):
    :meth:`read` while a reading runs does not start a second one but reads once more when it
    ends, with the latest request, so what is shown is never older than the last request."""

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._again: tuple | None = None

    @property
    def loading(self) -> bool:
        """A reading runs, or one more is due."""
        return self.busy or self._again is not None

    def read(self, fn: Callable[[TaskState], Any], on_done: Callable[[Any], None],
             on_error: Callable[[str], None] | None = None, name: str = "") -> None:
        if self.busy:
            self._again = (fn, on_done, on_error, name)
            return
        self._again = None

        def then(callback):
            def call(value) -> None:
                if callback is not None:
                    callback(value)
                if self._again is not None and not self.busy:
                    self.read(*self._again)
            return call

        self.start(fn, on_done=then(on_done), on_error=then(on_error), name=name)


class SerialWriter(QObject):
    """The one background writer of the open project, the library and the settings: a single
    thread that runs the jobs it is given one after the other, in the order they came (a FIFO).

    Two writes of the same file never interleave and always land in the order the user made them
    (two quick saves of one mask; a mask save and the ``project.json`` save of a field), and a
    read that must see them (a mask loaded back, the mask badges) is queued behind them.
    ``submit(fn, on_done, on_error)``: ``fn()`` runs on the writer thread; ``on_done(result)`` or
    ``on_error(message)`` (the line of :func:`failure_message`) then runs on the UI thread, also in
    order. A failure nobody handles is sent as ``failed(message)`` (the app shows it in the status
    bar). Jobs never wait for the UI thread.

    :meth:`drain` waits until every job submitted has run and delivers their outcomes;
    :meth:`shutdown` (the window's close) drains, then stops the thread, so no write is lost. A job
    submitted after that starts the thread again.
    """

    failed = Signal(str)
    _ready = Signal()  # outcomes are waiting (emitted by the writer thread, received on the UI thread)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        import collections
        import queue

        self._jobs: queue.Queue = queue.Queue()
        self._outcomes: collections.deque = collections.deque()  # (job id, ok, value), in order
        self._callbacks: dict[int, tuple] = {}  # job id -> (on_done, on_error), until delivered
        self._submitted = 0
        self._finished = 0
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._ready.connect(self._deliver)

    @property
    def pending(self) -> int:
        """Jobs submitted whose outcome has not been delivered yet."""
        return len(self._callbacks)

    def submit(self, fn: Callable[[], Any], on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[str], None] | None = None) -> None:
        with self._condition:
            self._submitted += 1
            job = self._submitted
        self._callbacks[job] = (on_done, on_error)
        if self._thread is None or not self._thread.is_alive():
            # A daemon thread: a write stuck on a dead network disk must not keep the app alive
            # (shutdown gives it time; a window's close never quits before its writes otherwise).
            self._thread = threading.Thread(target=self._run, name="lego-writes", daemon=True)
            self._thread.start()
        self._jobs.put((job, fn))

    def after_pending(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` on the UI thread once every job submitted so far is done and its
        outcome delivered (e.g. once the project being opened is open)."""
        self.submit(lambda: None, on_done=lambda _result: callback())

    def drain(self, timeout_ms: int = 30000) -> bool:
        """Wait (blocking the calling thread) until every job submitted so far has run, then deliver
        their outcomes. For the window's close and for tests; False when the time ran out."""
        with self._condition:
            target = self._submitted
            done = self._condition.wait_for(lambda: self._finished >= target, timeout_ms / 1000)
        self._deliver()
        return done

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Finish every pending write, then stop the thread. Safe to call twice."""
        done = self.drain(timeout_ms)
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout_ms / 1000)
        return done

    # ------------------------------------------------------------- private
    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, fn = item
            try:
                outcome = (job, True, fn())
            except Exception as exc:  # noqa: BLE001 - a user error or a bug: delivered as one line
                outcome = (job, False, failure_message(exc))
            del fn, item
            self._outcomes.append(outcome)
            with self._condition:
                self._finished += 1
                self._condition.notify_all()
            self._ready.emit()

    @Slot()
    def _deliver(self) -> None:
        while self._outcomes:
            job, ok, value = self._outcomes.popleft()
            on_done, on_error = self._callbacks.pop(job, (None, None))
            if ok:
                if on_done is not None:
                    on_done(value)
            elif on_error is not None:
                on_error(value)
            else:
                self.failed.emit(value)
