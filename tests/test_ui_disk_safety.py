"""The app with a read-only project, a failing last save, and two windows on one project (issue 18)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lego_studio.core.project import Project, ProjectReadOnly
from lego_studio.core.settings import Settings
from lego_studio.ui.context import AppContext

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[1]


def test_quitting_after_a_failed_last_save_stops_every_thread(window, qtbot, monkeypatch, capsys):
    def read_only_save():
        raise OSError(errno.EROFS, "Read-only file system", "/p/.project.json.x1.tmp.json")

    monkeypatch.setattr(window.projects_view, "shutdown", read_only_save)
    monkeypatch.setattr(window.masks_view, "flush_autosave", read_only_save)
    window._device_runner.start(lambda state: time.sleep(1.0), name="device")  # like 'lego-task-device'
    assert window._device_runner.busy
    window.close()  # must neither raise nor leave the thread running (Qt aborts: "Destroyed while ...")
    assert not window._device_runner.busy
    err = capsys.readouterr().err
    assert "warning: not saved on quit: read-only file system" in err and "Traceback" not in err


def test_a_second_window_opens_the_project_read_only_and_says_so(tmp_path, qtbot):
    folder = tmp_path / "proj"
    Project.create(folder, name="Proj", concept_name="frost")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from lego_studio.core.project import Project
        project = Project.open({str(folder)!r})
        assert project.claim() is None
        print("claimed", flush=True)
        time.sleep(120)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    context = AppContext(Settings.load())
    try:
        assert holder.stdout.readline().strip() == "claimed"
        messages = []
        context.status_message.connect(messages.append)
        project = Project.open(folder)
        with qtbot.waitSignal(context.project_changed, timeout=10000):
            context.set_project(project)  # claimed off the UI thread
        assert project.read_only and f"process {holder.pid}" in project.read_only
        assert any("opened read-only" in m and f"process {holder.pid}" in m for m in messages)
        project.subject = "a changed subject"
        with pytest.raises(ProjectReadOnly, match="open in another Lego Studio window"):
            project.save()  # never silently last-writer-wins
    finally:
        holder.kill()
        holder.wait()
        context.writes.shutdown()
    again = Project.open(folder)
    assert again.claim() is None  # the holder is gone: writable at once
    again.release()


@pytest.mark.slow  # the app in a subprocess
def test_the_app_quits_cleanly_with_a_read_only_project(tmp_path):
    """End to end, in its own process: open a read-only project, change a field, quit."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0 and sys.platform.startswith("linux")):
        pytest.skip("needs root for a read-only bind mount")
    folder = tmp_path / "proj"
    Project.create(folder, name="Proj", concept_name="frost")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)]).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)]).returncode != 0:
            pytest.skip("cannot remount read-only here")
        script = textwrap.dedent(f"""
            import faulthandler; faulthandler.dump_traceback_later(150, exit=True)  # a hang shows where
            from lego_studio.ui.app import create_app
            app = create_app([])
            from lego_studio.core.project import Project
            from lego_studio.ui.main_window import MainWindow
            window = MainWindow()
            messages = []
            window.context.status_message.connect(messages.append)
            window.show()
            window.detect_device()  # the 'lego-task-device' thread, still importing torch on quit
            window.context.set_project(Project.open({str(folder)!r}))
            window.context.writes.drain()  # claimed off the UI thread: its outcome is delivered here
            app.processEvents()
            print("MESSAGES", messages, flush=True)
            window.close()
            app.quit()
            window.shutdown_workers()
            print("CLEAN EXIT", flush=True)
        """)
        env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LEGO_STUDIO_HOME=str(tmp_path / "home"),
                   PYTHONPATH=str(REPO))
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=180)
    finally:
        subprocess.run(["umount", "-l", str(folder)])
    assert result.returncode == 0, result.stderr
    assert "CLEAN EXIT" in result.stdout and "opened read-only" in result.stdout
    assert "Unexpected error" not in result.stdout + result.stderr
    assert "QThread: Destroyed" not in result.stderr and "Traceback" not in result.stderr
