"""Main window: starts without torch, places and shortcuts, remembered state, drag and drop,
status bar, settings dialog."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

from lego_studio.core.settings import Settings
from lego_studio.ui.context import AppContext
from lego_studio.ui.main_window import PLACES, MainWindow, pack_window_state, unpack_window_state

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[1]


def test_window_appears_before_torch_is_imported(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from lego_studio.ui.app import create_app
        app = create_app([])
        from lego_studio.ui.main_window import MainWindow
        window = MainWindow()
        window.show()
        app.processEvents()
        print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_FREE", window.isVisible())
        window.shutdown_workers()
        """
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LEGO_STUDIO_HOME=str(tmp_path / "home"))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "TORCH_FREE True" in result.stdout


def test_ctrl_number_switches_places(window, qtbot):
    for index, (key, _) in enumerate(PLACES):
        window.place_actions[index].trigger()
        assert window.current_place() == key
    window.show_place("projects")
    qtbot.keyClick(window, Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)
    assert window.current_place() == "training"
    shortcuts = [a.shortcut().toString() for a in window.place_actions]
    assert shortcuts == ["Ctrl+1", "Ctrl+2", "Ctrl+3", "Ctrl+4", "Ctrl+5"]
    assert window.open_action.shortcut().toString() == "Ctrl+O"
    assert window.new_action.shortcut().toString() == "Ctrl+N"


def test_geometry_and_place_are_remembered(qtbot):
    first = MainWindow(AppContext(Settings.load()))
    qtbot.addWidget(first)
    first.resize(700, 520)
    first.show_place("gallery")
    first.close()  # closeEvent saves the state into settings.json
    second = MainWindow(AppContext(Settings.load()))
    qtbot.addWidget(second)
    assert second.current_place() == "gallery"
    assert (second.width(), second.height()) == (700, 520)
    second.shutdown_workers()


def test_window_state_blob_round_trip_and_garbage_is_ignored():
    blob = pack_window_state(b"geo", b"state!", 3)
    assert unpack_window_state(blob) == (b"geo", b"state!", 3)
    assert unpack_window_state(b"something else entirely") is None
    assert unpack_window_state(blob[:-1]) is None


def test_device_is_detected_in_a_worker(window, qtbot):
    window.detect_device()
    qtbot.waitUntil(lambda: window.device_name() != "", timeout=30000)
    assert window.device_name() in ("cpu", "cuda", "mps")
    assert window.device_label.text() == f"Device: {window.device_name()}"


def test_status_bar_shows_current_model(window, tiny_model_dir):
    # No model configured: Training and Gallery use the built-in Shape World model, and so says
    # the status bar (it used to say "none (add one in Settings)").
    assert window.model_label.text() == "Model: Shape World (built in)"
    assert window.training_view.model_combo.currentText() == "Shape World (built in)"
    window.context.settings.add_model(tiny_model_dir)
    window.context.apply_settings()
    assert window.model_label.text() == f"Model: {window.context.model_name()}"
    assert window.context.model_name() in window.model_label.text()


def _drop(widget, paths):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    # Qt only delivers a drop to a widget that accepted the drag entering it first.
    enter = QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def test_dropping_a_folder_creates_a_project_and_dropping_files_adds_them(window, tmp_path):
    folder = tmp_path / "melting"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (32, 32), (i * 100, 50, 50)).save(folder / f"img{i}.png")
    _drop(window, [folder])
    window.settle()
    project = window.context.project
    assert project is not None and project.name == "melting"
    assert len(project.images) == 2
    assert window.current_place() == "projects"
    extra = tmp_path / "extra.png"
    Image.new("RGB", (32, 32), (0, 0, 200)).save(extra)
    _drop(window, [extra])
    window.settle()
    assert len(window.context.project.images) == 3
    assert window.projects_view.images_grid.count() == 3


def test_settings_dialog_validates_models_and_sam(window, qtbot, tmp_path, tiny_model_dir):
    from lego_studio.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(window.context, window)
    qtbot.addWidget(dialog)
    # Walkthrough: an empty list read as "no model" while the built-in one was in use.
    assert not dialog.models_empty_label.isHidden() and "built-in Shape World" in dialog.models_empty_label.text()
    assert not dialog.add_model(str(tmp_path / "nowhere"))
    assert "nowhere" in dialog.model_error.text() and "no such" in dialog.model_error.text()
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    assert not dialog.add_model(str(not_a_model))
    assert "model_index.json" in dialog.model_error.text()
    assert dialog.add_model(str(tiny_model_dir))
    assert dialog.models_list.count() == 1
    assert dialog.models_empty_label.isHidden()

    corrupt = tmp_path / "sam.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    dialog.validate_sam(str(corrupt))
    qtbot.waitUntil(lambda: dialog.sam_status.text() not in ("", "Checking…"), timeout=30000)
    assert "sam.pth" in dialog.sam_status.text()
    assert "\n" not in dialog.sam_status.text()

    new_library = tmp_path / "my library"
    dialog.library_input.setText(str(new_library))
    dialog.device_combo.setCurrentText("cpu")
    dialog.accept()
    window.context.apply_settings()
    window.settle()  # settings are written off the UI thread
    saved = Settings.load()
    assert saved.default_device == "cpu"
    assert saved.library_path() == new_library
    assert [m.spec for m in saved.models] == [str(Path(tiny_model_dir).resolve())]
    assert str(new_library) in window.library_view.location_label.text()
