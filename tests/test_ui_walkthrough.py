"""Faults found in a real-window walkthrough (issue 19): wheel, selectors during a run, model
checks, Gallery composition, resumed charts, tooltips and small visual faults."""

from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QComboBox, QMessageBox, QSpinBox

from lego_studio.core.settings import Settings
from lego_studio.ui.context import AppContext
from lego_studio.ui.main_window import MainWindow

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, monkeypatch):
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    win = MainWindow(AppContext(Settings.load()))
    qtbot.addWidget(win)
    win.show()
    yield win
    win.shutdown_workers()


def new_project(window, tmp_path, name="P", sizes=((32, 32),)):
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.new("RGB", size, "red").save(folder / f"a{i}.png")
    return window.projects_view.create_project(name, [folder])


def wheel(widget, up=True):
    centre = QPointF(widget.rect().center())
    event = QWheelEvent(centre, QPointF(widget.mapToGlobal(widget.rect().center())), QPoint(0, 0),
                        QPoint(0, 120 if up else -120), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


# ------------------------------------------------------------------------------ 2: the wheel


def test_the_wheel_over_an_unfocused_setting_leaves_it_alone(window):
    window.show_place("training")
    form = window.training_view.form
    spin = next(w for w in form.widgets.values() if isinstance(w, QSpinBox) and w.value() < w.maximum())
    combo = next(w for w in form.widgets.values() if isinstance(w, QComboBox) and w.count() > 1)
    window.training_view.start_button.setFocus()
    value, index = spin.value(), combo.currentIndex()
    wheel(spin)
    wheel(combo, up=False)
    assert spin.value() == value
    assert combo.currentIndex() == index
    assert spin.focusPolicy() == Qt.FocusPolicy.StrongFocus
    # Focused (clicked or tabbed into), the wheel edits it as usual.
    spin.setFocus()
    QApplication.processEvents()
    if spin.hasFocus():  # offscreen: focus needs an active window, which some platforms refuse
        wheel(spin)
        assert spin.value() != value


# ------------------------------------------------------------------------------ 3: selectors during a run


class BlockingModels:
    """Stands in for the model cache: the run waits on ``gate``, then fails (no model work)."""

    def __init__(self):
        import threading

        self.gate = threading.Event()

    from contextlib import contextmanager

    @contextmanager
    def lease(self, *args, **kwargs):
        self.gate.wait(30)
        raise RuntimeError("no model in this test")
        yield  # pragma: no cover

    def preload(self, *args, **kwargs):
        pass


def test_model_and_device_selectors_are_disabled_while_a_run_is_active(window, qtbot, tmp_path):
    new_project(window, tmp_path)
    view = window.training_view
    models = window.context.models = BlockingModels()
    view.form.set_value("subject", "a toy robot")
    assert view.model_combo.isEnabled() and view.device_combo.isEnabled()
    assert view.start(), view.status_label.text()
    assert view.runner.busy
    assert not view.model_combo.isEnabled()
    assert not view.device_combo.isEnabled()
    models.gate.set()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=20000)
    assert view.model_combo.isEnabled() and view.device_combo.isEnabled()


# ------------------------------------------------------------------------------ 4: adding a model


def test_a_random_file_is_refused_and_a_new_model_is_not_made_the_default_unasked(window, qtbot, tmp_path,
                                                                                    tiny_model_dir):
    import os

    from lego_studio.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(window.context, window)
    qtbot.addWidget(dialog)
    random_file = tmp_path / "holiday.safetensors"
    random_file.write_bytes(os.urandom(10000))
    assert not dialog.add_model(str(random_file))
    assert "holiday.safetensors" in dialog.model_error.text() and "\n" not in dialog.model_error.text()
    assert dialog.draft.models == []
    # The first model added is offered as the default, not made it.
    assert dialog.add_model(str(tiny_model_dir))
    assert dialog.draft.default_model is None
    assert not dialog.offer_default_button.isHidden()
    dialog.accept()
    window.context.apply_settings()
    assert window.training_view.model_combo.currentData() == "shapeworld"
    assert window.gallery_view.model_combo.currentData() == "shapeworld"
    assert window.context.model_name().startswith("Shape World") or "shapeworld" in window.context.model_name().lower()
