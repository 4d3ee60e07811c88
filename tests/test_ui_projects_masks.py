"""Projects place (create/open/rename/duplicate/delete, recent list, badges, fields, demo) and the
Masks place (navigation, shortcuts, autosave, GrabCut fallback, broken SAM checkpoint)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication, QMessageBox

from lego_studio.core.project import Project
from lego_studio.ui.mask_canvas import ERASER, SAM

pytestmark = pytest.mark.gui


def make_images(folder, count=2, size=(64, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = Image.new("RGB", size, (30, 30 + 80 * i, 160))
        ImageDraw.Draw(image).rectangle((20, 12, 44, 36), fill=(240, 200, 30))
        image.save(folder / f"pic{i}.png")
    return folder


@pytest.fixture
def window(open_window, yes_to_questions, warnings):
    win = open_window(size=(1100, 760))
    win.warnings = warnings
    return win


def press(widget, kind, pos, button=Qt.MouseButton.LeftButton, buttons=None):
    point = QPointF(pos)
    buttons = button if buttons is None else buttons
    QApplication.sendEvent(widget, QMouseEvent(kind, point, widget.mapToGlobal(point), button, buttons, Qt.KeyboardModifier.NoModifier))


def stroke(canvas, image_points):
    points = [canvas.image_to_widget(QPointF(x, y)) for x, y in image_points]
    press(canvas, QEvent.Type.MouseButtonPress, points[0])
    for p in points[1:]:
        press(canvas, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, Qt.MouseButton.LeftButton)
    press(canvas, QEvent.Type.MouseButtonRelease, points[-1], Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton)


# ------------------------------------------------------------------------------ projects


def test_first_run_offers_the_demo_and_new_projects_hide_it(window, tmp_path):
    view = window.projects_view
    assert view.welcome.isVisibleTo(window)
    assert view.demo_button.text() == "Try the Shape World demo"
    assert not view.project_panel.isVisibleTo(window)
    window.create_project_and_wait("Melting", [make_images(tmp_path / "src")])
    assert not view.welcome.isVisibleTo(window)
    assert view.project_panel.isVisibleTo(window)
    assert view.title.text() == "Melting"


def test_demo_button_builds_the_demo_or_says_it_is_missing(window, qtbot, monkeypatch):
    view = window.projects_view
    if view.demo_builder() is None:
        infos = []
        monkeypatch.setattr(QMessageBox, "information", lambda parent, title, text: infos.append(text))
        view.build_demo()
        assert infos and "not part of this build" in infos[0]
        return
    view.build_demo()
    qtbot.waitUntil(lambda: window.context.project is not None, timeout=60000)
    assert window.context.project.images


def test_badges_fields_rename_duplicate_delete_and_recent(window, qtbot, tmp_path):
    view = window.projects_view
    project = window.create_project_and_wait("Frozen", [make_images(tmp_path / "src", 3)])
    first_image = project.folder / project.images[0].file
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:20] = 255
    project.save_mask(first_image, mask)
    window.context.project_edited.emit()
    window.settle()  # the badges are read off the UI thread
    assert "1 with a mask" in view.images_label.text()
    tips = [view.images_grid.item(i).toolTip() for i in range(3)]
    assert tips[0].endswith("mask painted") and tips[1].endswith("no mask yet")

    view.subject_edit.setText("a toy robot")
    view.concept_edit.setText("frozen ice")  # a space is not allowed in a concept name
    view.save_fields()
    window.settle()
    assert "frozen ice" in view.fields_status.text()
    assert Project.open(project.folder).concept_name != "frozen ice"
    view.concept_edit.setText("frozen")
    view.positive_edit.setText("ice, frost ,, cold")
    view.save_fields()
    window.settle()
    reopened = Project.open(project.folder)
    assert (reopened.subject, reopened.concept_name, reopened.positive_words) == ("a toy robot", "frozen", ["ice", "frost", "cold"])

    with qtbot.waitSignal(window.context.project_changed, timeout=15000):
        view.rename_project("Frozen solid")
    window.settle()
    renamed = window.context.project
    assert renamed.folder.name == "Frozen solid" and view.title.text() == "Frozen solid"
    assert str(renamed.folder) in [view.recent_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(view.recent_list.count())]

    with qtbot.waitSignal(window.context.project_changed, timeout=15000):
        view.duplicate_project()
    window.settle()
    copy = window.context.project
    assert copy.folder != renamed.folder and len(copy.images) == 3
    assert copy.mask_status(copy.images[0]) == "painted"

    with qtbot.waitSignal(window.context.project_changed, timeout=15000):
        view.delete_project_dialog()  # confirmation answered Yes by the fixture
    window.settle()
    assert window.context.project is None
    assert not copy.folder.exists()
    recent = [view.recent_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(view.recent_list.count())]
    assert str(copy.folder) not in recent and str(renamed.folder) in recent
    window.open_project_and_wait(renamed.folder)
    assert window.context.project.name == "Frozen solid"


def test_broken_inputs_give_one_line_messages(window, tmp_path):
    view = window.projects_view
    view.open_project(tmp_path)
    window.settle()
    assert window.context.project is None
    assert "project.json" in window.warnings[-1] and "\n" not in window.warnings[-1]
    window.create_project_and_wait("Pics", [make_images(tmp_path / "src")])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    view.add_paths([broken])
    window.settle()
    assert "broken.png" in window.warnings[-1]
    assert len(window.context.project.images) == 2


def test_subject_only_images(window, tmp_path):
    view = window.projects_view
    window.create_project_and_wait("With subject", [make_images(tmp_path / "src")])
    extra = make_images(tmp_path / "subject", 1, size=(40, 40))
    view.add_paths([extra / "pic0.png"], subject_only=True)
    window.settle()
    assert len(window.context.project.subject_images) == 1
    assert view.subject_grid.count() == 1 and view.images_grid.count() == 2


# ------------------------------------------------------------------------------ masks


def test_masks_navigation_shortcuts_and_autosave(window, qtbot, tmp_path):
    window.create_project_and_wait("Masks", [make_images(tmp_path / "src", 3)])
    window.show_place("masks")
    view = window.masks_view
    canvas = view.canvas
    assert view.image_list.count() == 3 and view.current_image().name == "pic0.png"
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_E)
    assert canvas.tool == ERASER
    qtbot.keyClick(canvas, Qt.Key.Key_B)
    assert canvas.tool == "brush"
    size = canvas.brush_size
    qtbot.keyClick(canvas, Qt.Key.Key_BracketRight)
    assert canvas.brush_size > size and view.size_spin.value() == canvas.brush_size
    canvas.set_brush_size(6)
    stroke(canvas, [(5, 5), (30, 5)])
    assert view.undo_action.isEnabled()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert canvas.mask().max() == 0
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert canvas.mask()[5, 20] == 255
    project = window.context.project
    qtbot.waitUntil(lambda: project.mask_status(project.images[0]) == "painted", timeout=15000)
    window.settle()
    assert "✔" in view.image_list.item(0).text()

    view.next_image()
    window.settle()
    assert view.current_image().name == "pic1.png" and canvas.mask().max() == 0
    stroke(canvas, [(40, 40)])
    view.previous_image()  # switching hands in the pending autosave at once
    window.settle()
    assert project.mask_status(project.images[1]) == "painted"
    assert canvas.mask()[5, 20] == 255  # the first image's mask came back from disk
    canvas.clear_mask()
    view.flush_autosave()
    window.settle()
    assert project.mask_status(project.images[0]) == "none"  # empty mask = no mask file


def test_assist_without_checkpoint_uses_grabcut_and_says_so(window, qtbot, tmp_path):
    window.create_project_and_wait("Grab", [make_images(tmp_path / "src", 1, size=(96, 72))])
    window.show_place("masks")
    view = window.masks_view
    view.set_tool(SAM)
    qtbot.waitUntil(lambda: view.segmenter_name() != "", timeout=20000)
    assert "GrabCut" in view.assist_status.text()
    canvas = view.canvas
    canvas.set_sam_box(14, 6, 52, 42)
    qtbot.waitUntil(lambda: len(view.candidate_buttons) > 0, timeout=20000)
    # GrabCut has no quality score; its figure is how many clicks the mask agrees with, and a box
    # alone has no clicks to agree with (the walkthrough's "agrees with 100% of the clicks").
    text = view.candidate_buttons[0].text()
    assert "from the box" in text and "score" not in text and "clicks" not in text
    view.accept_candidate("replace")
    mask = canvas.mask()
    assert mask[24, 32] == 255 and mask[2, 2] == 0 and mask[60, 80] == 0  # the yellow box only


def test_corrupt_sam_checkpoint_is_reported_not_fatal(window, qtbot, tmp_path):
    bad = tmp_path / "sam_vit_b.pth"
    bad.write_bytes(b"garbage" * 100)
    window.context.settings.set_sam_checkpoint(bad)
    window.create_project_and_wait("Bad SAM", [make_images(tmp_path / "src", 1)])
    window.show_place("masks")
    view = window.masks_view
    view.set_tool(SAM)
    qtbot.waitUntil(lambda: view.segmenter_name() != "", timeout=20000)
    text = view.assist_status.text()
    assert "Segment Anything unavailable" in text and "sam_vit_b.pth" in text and "GrabCut" in text
