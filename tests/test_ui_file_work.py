"""No file work on the UI thread: opening a project and painting masks leave every read and write
to workers and to the context's one serial writer, whose writes land in order, are finished when the
window closes, and keep a mask whose save failed (a full disk) until it is saved. Pressing Start is
in test_ui_fit_estimate.py (with the tiny CPU project)."""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest
from PIL import Image

from lego_studio.core.project import Project
from lego_studio.core.settings import Settings
from lego_studio.ui import project_io

pytestmark = pytest.mark.gui


def project_on_disk(folder, name, count=2, size=(48, 40)):
    """A project of ``count`` images made without the app, the first with a painted mask."""
    source = folder.parent / f"{folder.name}-src"
    source.mkdir()
    for i in range(count):
        Image.new("RGB", size, (40 + 90 * i, 120, 200)).save(source / f"pic{i}.png")
    project = Project.create(folder, name=name, subject="a toy")
    project.add_images(sorted(source.iterdir()))
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[5:20, 5:20] = 255
    project.save_mask(project.images[0], mask)
    return project


def a_mask(value_at, size=(48, 40)):
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[value_at[1]:value_at[1] + 6, value_at[0]:value_at[0] + 6] = 255
    return mask


def slow_mask_saves(monkeypatch, only_the_first=False):
    """Mask saves that take half a second (a slow disk). Returns what each save was given, as
    ``(mask value at (12, 12), on the UI thread?)``, and an Event set when a save starts."""
    real_save = project_io.save_mask
    saves, started = [], threading.Event()

    def slow_save(project, path, mask):
        saves.append((int(mask[12, 12]), threading.current_thread() is threading.main_thread()))
        started.set()
        if len(saves) == 1 or not only_the_first:
            threading.Event().wait(0.5)
        real_save(project, path, mask)

    monkeypatch.setattr(project_io, "save_mask", slow_save)
    return saves, started


def full_disk_mask_saves(monkeypatch):
    """Mask saves fail with the full-disk error while ``full[0]`` (the returned list) is True."""
    from lego_studio.core.errors import disk_error

    real_save = project_io.save_mask
    full = [True]

    def save(project, path, mask):
        if full[0]:
            raise disk_error(OSError(errno.ENOSPC, "No space left on device"), project.folder / "masks" / "pic0.png")
        real_save(project, path, mask)

    monkeypatch.setattr(project_io, "save_mask", save)
    return full


def masks_page_of_a_new_project(open_window, tmp_path):
    """A window of its own on the Masks page of a fresh two-image project: (project, window, view)."""
    project = project_on_disk(tmp_path / "P", "P")
    window = open_window()
    window.open_project_and_wait(project.folder)
    window.show_place("masks")
    return project, window, window.masks_view


def stored_mask(project, index=0):
    reopened = Project.open(project.folder)
    return reopened.mask_for(reopened.images[index])


def test_opening_a_project_does_no_file_work_on_the_ui_thread(window, tmp_path, ui_thread_file_work):
    first = project_on_disk(tmp_path / "First", "First")
    second = project_on_disk(tmp_path / "Second", "Second", count=3)
    window.show_place("masks")  # every page follows the open project; the Masks page loads an image
    window.settle()
    seen = ui_thread_file_work(str(tmp_path))  # the projects, and the settings, cache and library under the home
    Project.open(first.folder).mask_status(first.images[0])  # the recorder sees reads on this thread...
    assert ("open", str(first.folder / "project.json")) in seen and ("os.stat", str(first.folder / "masks" / "pic0.png")) in seen
    seen.clear()
    window.open_project_and_wait(first.folder)  # ...and none from opening projects
    window.projects_view.open_project(second.folder)  # and straight on to another one
    window.settle()
    opened = window.context.project
    window.masks_view.next_image()
    window.settle()
    assert seen == []
    ui_thread_file_work()  # stop recording: the checks below read files themselves

    assert opened.folder == second.folder and opened.read_only is None
    assert window.projects_view.images_grid.count() == 3
    assert "1 with a mask" in window.projects_view.images_label.text()  # the badges were read
    assert window.masks_view.image_list.item(0).text().endswith("✔ masked")
    assert window.masks_view.canvas.image_size() == (48, 40)
    assert Settings.load().last_project == str(second.folder)  # the settings write landed
    assert str(second.folder.resolve()) in Settings.load().recent_projects
    assert Project.open(first.folder).claim() is None  # the first project was given back...
    assert Project.open(second.folder).claim() is not None  # ...and the second one is held


def test_painting_a_mask_and_its_autosave_do_no_file_work_on_the_ui_thread(window, qtbot, tmp_path,
                                                                           ui_thread_file_work):
    project = project_on_disk(tmp_path / "P", "P")
    window.open_project_and_wait(project.folder)
    window.show_place("masks")
    view = window.masks_view
    view.next_image()
    window.settle()
    seen = ui_thread_file_work(str(tmp_path))
    view.canvas.set_mask(a_mask((10, 10)))  # an edit: autosaved after a short delay
    qtbot.waitUntil(lambda: not view._autosave.isActive(), timeout=5000)
    window.settle()
    view.previous_image()  # the first image's mask comes back (read off the UI thread too)
    window.settle()
    view.next_image()
    window.settle()
    assert seen == []
    ui_thread_file_work()
    assert view.canvas.mask()[12, 12] == 255
    assert stored_mask(project, 1)[12, 12] == 255
    assert view.image_list.item(1).text().endswith("✔ masked")
    window.show_place("projects")
    assert "2 with a mask" in window.projects_view.images_label.text()


def test_two_quick_saves_of_one_mask_land_in_order(window, tmp_path, monkeypatch):
    project = project_on_disk(tmp_path / "P", "P")
    window.open_project_and_wait(project.folder)
    window.show_place("masks")
    view = window.masks_view
    saves, _started = slow_mask_saves(monkeypatch, only_the_first=True)  # the second must still land after it
    view.canvas.set_mask(a_mask((10, 10)))
    view.save_current_mask()
    view.canvas.set_mask(a_mask((30, 30)))
    view.save_current_mask()
    window.settle()
    assert saves == [(255, False), (0, False)]  # in the order made, both off the UI thread
    stored = stored_mask(project)
    assert stored[32, 32] == 255 and stored[12, 12] == 0  # the second mask is the one on disk


def test_closing_the_window_finishes_a_pending_write(open_window, tmp_path, monkeypatch):
    project, window, view = masks_page_of_a_new_project(open_window, tmp_path)
    _saves, started = slow_mask_saves(monkeypatch)
    view.canvas.set_mask(a_mask((30, 30)))
    view.save_current_mask()  # handed to the writer: still being written...
    assert started.wait(5)
    assert stored_mask(project)[32, 32] == 0
    window.close()  # ...when the window closes: the close waits for it
    stored = stored_mask(project)
    assert stored[32, 32] == 255 and stored[10, 10] == 0
    assert window.context.writes.pending == 0
    assert Settings.load().window_state  # and the window's state, queued by the close, landed too


def test_a_full_disk_keeps_the_mask_and_saves_it_on_the_next_change(window, tmp_path, monkeypatch):
    project = project_on_disk(tmp_path / "P", "P")
    window.open_project_and_wait(project.folder)
    window.show_place("masks")
    view = window.masks_view
    full = full_disk_mask_saves(monkeypatch)
    view.canvas.set_mask(a_mask((30, 30)))
    view.save_current_mask()
    window.settle()
    line = view.info_label.text()
    assert line.startswith("Could not save the mask: no space left on device writing ") and "\n" not in line
    assert view.canvas.mask()[32, 32] == 255 and stored_mask(project)[32, 32] == 0
    view.next_image()  # away and back: the unsaved mask comes back from memory, not the old one from disk
    window.settle()
    view.previous_image()
    window.settle()
    assert view.canvas.mask()[32, 32] == 255
    full[0] = False  # space was freed
    view.canvas.set_mask(view.canvas.mask() | a_mask((2, 30)))  # the next change saves it
    view.save_current_mask()
    window.settle()
    stored = stored_mask(project)
    assert stored[32, 32] == 255 and stored[32, 4] == 255
    assert not view.info_label.text().startswith("Could not save")


def test_quitting_with_a_mask_the_full_disk_refused_asks_first(open_window, tmp_path, monkeypatch):
    # A mask whose save failed lives only in memory: quitting used to drop it with a line on stderr.
    from PySide6.QtWidgets import QMessageBox

    project, window, view = masks_page_of_a_new_project(open_window, tmp_path)
    full = full_disk_mask_saves(monkeypatch)
    asked = []

    def answer(reply):
        def question(parent, title, text, *args, **kwargs):
            asked.append((title, text))
            return reply
        return question

    view.canvas.set_mask(a_mask((30, 30)))
    view.save_current_mask()
    window.settle()
    monkeypatch.setattr(QMessageBox, "question", answer(QMessageBox.StandardButton.No))
    window.close()
    assert window.isVisible()  # "No": the window stays, the mask is still in the canvas
    assert asked and asked[0][0] == "Masks not saved" and "pic0.png" in asked[0][1] and "no space left" in asked[0][1]
    assert view.canvas.mask()[32, 32] == 255
    full[0] = False  # space freed; the next stroke saves it, and quitting asks nothing
    view.canvas.set_mask(view.canvas.mask() | a_mask((2, 30)))
    view.save_current_mask()
    window.settle()
    asked.clear()
    window.close()
    assert not window.isVisible() and asked == []
    assert stored_mask(project)[32, 32] == 255
