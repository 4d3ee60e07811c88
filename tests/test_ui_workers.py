"""Worker infrastructure: results, errors, cancel, one task at a time, threads cleaned up."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from PySide6.QtCore import QThread

from lego_studio.core.errors import InputError
from lego_studio.ui.workers import TaskRunner

pytestmark = pytest.mark.gui


@pytest.fixture
def runner(qtbot):
    task_runner = TaskRunner()
    yield task_runner
    task_runner.shutdown()


def test_result_progress_and_events_arrive_on_the_ui_thread(runner, qtbot):
    seen = {"progress": [], "events": [], "threads": set()}
    ui_thread = threading.get_ident()
    worker_thread = {}

    def task(state):
        worker_thread["id"] = threading.get_ident()
        for i in range(3):
            state.progress(i + 1, 3, f"step {i + 1}")
            state.emit({"i": i})
        return 42

    def on_event(event):
        seen["events"].append(event["i"])
        seen["threads"].add(threading.get_ident())

    result = {}
    assert runner.start(
        task,
        on_done=lambda value: result.setdefault("value", value),
        on_event=on_event,
        on_progress=lambda d, t, m: seen["progress"].append((d, t, m)),
    )
    qtbot.waitUntil(lambda: "value" in result, timeout=15000)
    assert result["value"] == 42
    assert seen["events"] == [0, 1, 2]
    assert seen["progress"][-1] == (3, 3, "step 3")
    assert seen["threads"] == {ui_thread}  # callbacks never run in the worker
    assert worker_thread["id"] != ui_thread
    assert not runner.busy


def test_user_error_is_reported_as_one_line(runner, qtbot):
    errors = []

    def task(state):
        raise InputError("photo.png: not a readable image\n(truncated)")

    runner.start(task, on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=15000)
    assert errors == ["photo.png: not a readable image (truncated)"]


def test_bug_in_task_does_not_kill_the_app(runner, qtbot):
    errors = []
    runner.start(lambda state: 1 / 0, on_error=errors.append)
    qtbot.waitUntil(lambda: bool(errors), timeout=15000)
    # One line for the user that names the log file; the traceback is in that file.
    from lego_studio.ui.errors import log_path

    assert "ZeroDivisionError" in errors[0] and str(log_path()) in errors[0] and "\n" not in errors[0]
    logged = log_path().read_text()
    assert "Traceback" in logged and "1 / 0" in logged


def test_the_serial_writer_runs_jobs_in_order_off_the_ui_thread_and_answers_on_it(qtbot):
    from lego_studio.ui.workers import SerialWriter

    writer = SerialWriter()
    ran, answered, unhandled = [], [], []
    writer.failed.connect(unhandled.append)

    def job(n, delay):
        def run():
            time.sleep(delay)  # the first is the slowest: a FIFO still lands it first
            ran.append((n, threading.current_thread() is threading.main_thread()))
            return n
        return run

    for n, delay in ((1, 0.3), (2, 0.0), (3, 0.1)):
        writer.submit(job(n, delay), on_done=lambda n: answered.append((n, threading.current_thread() is threading.main_thread())))
    writer.submit(lambda: 1 / 0, on_error=lambda message: answered.append(("error", message)))
    writer.submit(lambda: (_ for _ in ()).throw(InputError("a.png: no\nspace")))  # nobody handles it
    writer.after_pending(lambda: answered.append("after the jobs before"))
    assert writer.pending == 6
    qtbot.waitUntil(lambda: writer.pending == 0, timeout=15000)
    assert answered.pop() == "after the jobs before"
    assert ran == [(1, False), (2, False), (3, False)]
    assert answered[:3] == [(1, True), (2, True), (3, True)]  # on the UI thread, in order
    assert answered[3][0] == "error" and "ZeroDivisionError" in answered[3][1] and "\n" not in answered[3][1]
    assert unhandled == ["a.png: no space"]
    writer.shutdown()


def test_the_serial_writer_gives_a_full_disk_its_one_line_and_shutdown_finishes_the_writes(qtbot, tmp_path):
    import errno

    from lego_studio.ui.workers import SerialWriter

    writer = SerialWriter()
    errors, landed = [], []

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "masks" / "a.png"))

    writer.submit(full, on_error=errors.append)
    writer.submit(lambda: (time.sleep(0.3), (tmp_path / "late.txt").write_text("written"))[1], on_done=landed.append)
    assert writer.shutdown()  # waits for the queued writes, delivers their outcomes, stops the thread
    assert errors == [f"no space left on device writing {tmp_path / 'masks' / 'a.png'}: free some space and try "
                      "again (a run resumes with --resume)"]
    assert (tmp_path / "late.txt").read_text() == "written" and landed == [7]
    writer.submit(lambda: 8, on_done=landed.append)  # after a shutdown the thread starts again
    assert writer.drain() and landed == [7, 8]
    writer.shutdown()
    writer.shutdown()  # twice is fine


def test_cooperative_cancel_and_one_task_at_a_time(runner, qtbot):
    started = threading.Event()
    outcome = []

    def long_task(state):
        started.set()
        while True:
            state.check()
            QThread.msleep(2)

    assert runner.start(long_task, on_cancelled=lambda: outcome.append("cancelled"), on_done=outcome.append)
    assert not runner.start(lambda state: "second")  # refused while busy
    assert started.wait(5)
    runner.cancel()
    qtbot.waitUntil(lambda: bool(outcome), timeout=15000)
    assert outcome == ["cancelled"]
    # Idle again: the next task runs.
    assert runner.start(lambda state: "next", on_done=outcome.append)
    qtbot.waitUntil(lambda: len(outcome) == 2, timeout=15000)
    assert outcome[-1] == "next"


def test_shutdown_stops_a_running_task_and_waits(qtbot):
    runner = TaskRunner()
    started = threading.Event()
    stopped = threading.Event()

    def task(state):
        started.set()
        while not state.cancelled:
            QThread.msleep(2)
        stopped.set()

    runner.start(task)
    assert started.wait(5)
    runner.shutdown()
    assert stopped.is_set()  # shutdown returned only after the worker finished
    assert not runner.busy
    runner.shutdown()  # twice is fine


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are a Linux feature")
def test_background_work_runs_at_lower_priority_than_the_ui(runner, qtbot):
    import os

    ui_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []
    runner.start(lambda state: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), on_done=seen.append)
    qtbot.waitUntil(lambda: bool(seen), timeout=15000)
    assert seen[0] > ui_nice
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ui_nice  # the UI thread is untouched


def test_shutdown_during_a_task_tears_down_thread_then_objects_without_qt_warnings(qtbot, qtlog):
    # Quit during training: the worker and its thread must be gone (deleted by their owner,
    # after the thread finished) without Qt complaining that a QObject was deleted directly.
    import gc

    import shiboken6
    from PySide6.QtCore import QCoreApplication
    from PySide6.QtWidgets import QWidget

    for round_ in range(20):
        parent = QWidget()
        runner = TaskRunner(parent)
        started = threading.Event()

        def task(state):
            started.set()
            while not state.cancelled:
                state.emit("step")
                time.sleep(0.001)
            return None

        runner.start(task, on_event=lambda e: None)
        started.wait(5)
        thread, worker = runner._thread, runner._worker
        runner.shutdown()
        assert not runner.busy
        assert thread.isFinished()
        del worker, thread
        QCoreApplication.processEvents()
        gc.collect()
        parent.deleteLater()
        del runner, parent
    QCoreApplication.processEvents()
    gc.collect()
    bad = [r.message for r in qtlog.records if "QObject" in r.message or "QThread" in r.message]
    assert bad == []


def test_the_runner_does_not_hand_its_objects_to_deleteLater(qtbot, monkeypatch):
    # Python owns the worker and the thread; a deferred delete on top of that is the teardown
    # race behind "shared QObject was deleted directly".
    from PySide6.QtCore import QObject

    calls = []
    monkeypatch.setattr(QObject, "deleteLater", lambda self: calls.append(type(self).__name__))
    runner = TaskRunner()
    done = []
    runner.start(lambda state: 7, on_done=done.append)
    qtbot.waitUntil(lambda: done == [7] and not runner.busy, timeout=15000)
    assert calls == []


def test_a_chained_bug_is_named_by_its_innermost_cause_in_one_line(tmp_path, monkeypatch):
    from lego_studio.ui import errors

    monkeypatch.setattr(errors, "log_path", lambda: tmp_path / "lego-studio.log")
    try:
        try:
            raise FileNotFoundError(2, "No such file or directory", "python_depends.json")
        except FileNotFoundError as inner:
            raise RuntimeError("Failed to import diffusers.models.autoencoders.autoencoder_kl because of the "
                               "following error (look up to see its traceback):") from inner
    except RuntimeError as exc:
        line = errors.log_bug(type(exc), exc, exc.__traceback__)
    assert "FileNotFoundError" in line and "python_depends.json" in line and "\n" not in line
    assert "FileNotFoundError" in (tmp_path / "lego-studio.log").read_text()


def test_shutdown_waits_for_a_task_that_cannot_stop_and_never_kills_it(runner, qtbot, capfd):
    # A task that ignores cancel past the shutdown's time (importing torch on a loaded machine): it
    # used to be QThread.terminate()d, which hung the app's quit for good when the thread held the
    # GIL or the import lock. Now the quit says why it waits, and the task ends normally.
    ended = threading.Event()

    def slow(state):
        time.sleep(1.0)  # not a cancel point
        ended.set()
        return "done"

    assert runner.start(slow, name="slow-import")
    qtbot.waitUntil(lambda: runner.busy, timeout=5000)
    runner.shutdown(timeout_ms=100)
    assert ended.is_set() and not runner.busy
    assert "waiting for lego-task-slow-import to finish" in capfd.readouterr().err


def test_a_latest_reader_reads_once_more_after_a_busy_reading_with_the_latest_request(qtbot):
    from lego_studio.ui.workers import LatestReader

    reader = LatestReader()
    release = threading.Event()
    shown = []

    def reading(label, wait=False):
        def read(state):
            if wait:
                release.wait(5)
            return label
        return read

    reader.read(reading("first", wait=True), on_done=shown.append)
    reader.read(reading("second"), on_done=shown.append)  # asked while the first runs...
    reader.read(reading("third"), on_done=shown.append)  # ...and again: only the latest is read
    assert reader.loading
    release.set()
    qtbot.waitUntil(lambda: not reader.loading, timeout=5000)
    assert shown == ["first", "third"]
    reader.shutdown()
