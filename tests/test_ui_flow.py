"""End to end on tiny models: create a project -> mask with the brush and with Segment Anything
(a tiny random SAM) -> train a few steps (cancel, resume from the checkpoint) while measuring the
UI event-loop stall -> the concept appears in the library -> the gallery renders it next to a
second concept."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image, ImageDraw
from PySide6.QtCore import QElapsedTimer, QEvent, QPointF, Qt, QTimer
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from lego_studio.core.segmentation import SamArchitecture, build_sam
from lego_studio.core.settings import Settings
from lego_studio.ui.gallery_view import ImageDialog
from lego_studio.ui.mask_canvas import SAM

pytestmark = pytest.mark.gui

TINY_SAM = SamArchitecture(
    encoder_embed_dim=16, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
    window_size=4, patch_size=128, image_size=1024, mlp_ratio=2.0, prompt_embed_dim=32, mask_in_chans=8,
    num_multimask_outputs=3, decoder_depth=1, decoder_mlp_dim=32, iou_head_depth=2, iou_head_hidden_dim=16,
)


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), path)
    return path


class StallMeter:
    """A 10 ms QTimer; the longest gap between its ticks is how long the UI was frozen."""

    def __init__(self):
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = 0
        self.worst = 0
        self.worst_at = ""
        self.phase = "start"
        self.ticks = 0

    def start(self):
        self.clock.start()
        self.last = self.clock.elapsed()
        self.timer.start()

    def _tick(self):
        now = self.clock.elapsed()
        if now - self.last > self.worst:
            self.worst, self.worst_at = now - self.last, self.phase
        self.last = now
        self.ticks += 1

    def stop(self):
        self.timer.stop()


def send_mouse(widget, kind, pos, button, buttons):
    point = QPointF(pos)
    QApplication.sendEvent(widget, QMouseEvent(kind, point, widget.mapToGlobal(point), button, buttons, Qt.KeyboardModifier.NoModifier))


def click_drag(widget, points, button=Qt.MouseButton.LeftButton):
    send_mouse(widget, QEvent.Type.MouseButtonPress, points[0], button, button)
    for p in points[1:]:
        send_mouse(widget, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, button)
    send_mouse(widget, QEvent.Type.MouseButtonRelease, points[-1], button, Qt.MouseButton.NoButton)


def make_images(folder, count=3):
    folder.mkdir()
    for i in range(count):
        image = Image.new("RGB", (48, 40), (40 + 60 * i, 120, 200))
        ImageDraw.Draw(image).ellipse((12, 8, 34, 30), fill=(220, 220, 40))
        image.save(folder / f"robot{i}.png")
    return folder


@pytest.fixture
def window(open_window, tiny_model_dir, tiny_sam_checkpoint):
    settings = Settings.load()
    settings.add_model(tiny_model_dir, name="tiny")
    settings.set_sam_checkpoint(tiny_sam_checkpoint)
    settings.default_device = "cpu"
    settings.save()
    win = open_window(settings, size=(1200, 800))
    win.detect_device()  # as app.main does: imports the model libraries behind the window
    return win


def test_create_mask_train_library_gallery(window, qtbot, tmp_path, monkeypatch):
    # --- create the project from a folder, describe it
    projects = window.projects_view
    project = window.create_project_and_wait("Frozen robots", [make_images(tmp_path / "examples")])
    assert project is not None and len(project.images) == 3
    projects.subject_edit.setText("a toy robot")
    projects.concept_edit.setText("frozen")
    projects.positive_edit.setText("ice, frost")
    projects.save_fields()
    window.settle()
    assert window.context.project.subject == "a toy robot"
    assert projects.images_grid.count() == 3

    # --- brush mask on the first image, autosaved
    window.show_place("masks")
    masks = window.masks_view
    canvas = masks.canvas
    assert canvas.image_size() == (48, 40)
    canvas.set_brush_size(8)
    to_widget = lambda x, y: canvas.image_to_widget(QPointF(x, y)).toPoint()  # noqa: E731
    click_drag(canvas, [to_widget(10, 20), to_widget(25, 20), to_widget(38, 20)])
    first = masks.current_image()
    qtbot.waitUntil(lambda: window.context.project.mask_status(first) == "painted", timeout=15000)
    stored = window.context.project.mask_for(first)
    assert stored[20, 25] == 255 and stored[0, 0] == 0

    # --- Segment Anything on the second image: click -> candidates -> union -> refine -> saved
    masks.next_image()
    window.settle()
    second = masks.current_image()
    assert second != first
    masks.set_tool(SAM)
    qtbot.waitUntil(lambda: masks.segmenter_name() == "Segment Anything", timeout=20000)
    qtbot.waitUntil(lambda: "ready" in masks.assist_status.text(), timeout=20000)
    click_drag(canvas, [to_widget(24, 20)])
    qtbot.waitUntil(lambda: len(masks.candidate_buttons) > 0, timeout=20000)
    assert "score" in masks.candidate_buttons[0].text()
    candidate = canvas.candidate()
    assert candidate is not None and candidate.shape == (40, 48)
    masks.choose_candidate(len(masks.candidate_buttons) - 1)
    chosen = canvas.candidate()
    masks.accept_candidate("union")
    assert (canvas.mask() >= chosen).all()
    masks.set_tool("brush")
    click_drag(canvas, [to_widget(5, 5)])  # refine with the brush
    assert canvas.mask()[5, 5] == 255
    masks.flush_autosave()
    window.settle()
    if canvas.mask().min() < 255:
        assert window.context.project.mask_status(second) == "painted"
    assert masks.image_list.item(0).text().endswith("✔ masked")

    # --- training: start, cancel at the first checkpoint, resume, finish; UI never stalls
    window.show_place("training")
    training = window.training_view
    training.model_combo.setCurrentIndex(training.model_combo.findData(str(window.context.settings.models[0].spec)))
    training.device_combo.setCurrentText("cpu")
    form = training.form
    assert form.value("subject") == "a toy robot" and form.value("name") == "frozen"
    for name, value in (("steps", 4), ("num_vectors", 2), ("checkpoint_every", 2), ("preview_every", 4),
                        ("preview_steps", 1), ("random_negatives", 2)):
        form.set_value(name, value)
    qtbot.waitUntil(lambda: window.warmed_up, timeout=60000)
    import torch

    from lego_studio.core.devices import app_cpu_threads

    assert torch.get_num_threads() == app_cpu_threads()  # one core left for the UI
    import gc

    gc_pauses = []
    gc_started = {}

    def gc_watch(phase, info):
        if phase == "start":
            gc_started["t"] = time.perf_counter()
        elif "t" in gc_started:
            gc_pauses.append((info["generation"], round((time.perf_counter() - gc_started.pop("t")) * 1000)))

    gc.callbacks.append(gc_watch)
    meter = StallMeter()
    meter.start()
    checkpoints = []

    def cancel_at_first_checkpoint(event):
        meter.phase = f"after {event.kind} {event.step}"
        if event.kind == "checkpoint" and not checkpoints:
            checkpoints.append(event.step)
            training.cancel()

    training.event_received.connect(cancel_at_first_checkpoint)
    # The trainer waits after its first checkpoint until the UI has seen it (as if the user had
    # pressed Pause): on a fast machine the 4 steps would otherwise end before the cancel arrives.
    from lego_studio.core.training import Trainer

    real_save = Trainer._save_checkpoint

    def save_then_wait(self, *args, **kwargs):
        path = real_save(self, *args, **kwargs)
        if not checkpoints:  # the first one only (the UI has not seen it yet)
            training._pause.set()
        return path

    monkeypatch.setattr(Trainer, "_save_checkpoint", save_then_wait)
    assert training.start()
    qtbot.waitUntil(lambda: not training.is_running(), timeout=60000)
    assert checkpoints == [2]
    assert "Cancelled" in training.status_label.text()
    # The trainer recorded its end state: the run reads "cancelled", not "interrupted".
    qtbot.waitUntil(lambda: not training.runs_loading, timeout=10000)
    assert " — cancelled — " in training.runs_list.item(0).text()
    meter.phase = "resuming"
    resumable = training.resumable_runs()
    assert len(resumable) == 1
    training.runs_list.setCurrentRow(0)
    assert training.resume_button.isEnabled()
    with qtbot.waitSignal(training.concept_trained, timeout=60000) as finished:
        assert training.resume_selected()
    meter.stop()
    gc.callbacks.remove(gc_watch)
    training.event_received.disconnect(cancel_at_first_checkpoint)
    assert meter.ticks > 10
    assert meter.worst < 100, (
        f"UI event loop stalled {meter.worst} ms during training ({meter.worst_at}); "
        f"longest garbage collections (generation, ms): {sorted(gc_pauses, key=lambda p: -p[1])[:3]}"
    )
    assert training.last_error == ""
    assert training.progress.value() == 4
    # The finished concept's closest words stay on the page, the words its file keeps.
    from lego_studio.core.concepts import load_concept

    words = load_concept(finished.args[0]).metadata["closest_words"]
    assert not training.closest_label.isHidden()
    shown = training.closest_label.text()
    assert shown.startswith("Closest words to the concept: ") and len(words) == 5
    assert all(f'<a href="{w}">{w}</a>' in shown for w in words)  # a Lego run: each word adds itself
    assert {"total", "rec"} <= set(training.chart.terms())
    assert training.previews.count() >= 1
    qtbot.waitUntil(lambda: not training.runs_loading, timeout=10000)
    assert training.resumable_runs() == []

    # --- the concept is in the library
    window.show_place("library")
    library_view = window.library_view
    qtbot.waitUntil(lambda: "frozen" in library_view.visible_names(), timeout=20000)
    assert finished.args[0].name == "frozen.safetensors"
    library_view.search_edit.setText("lego")  # tags carry the method
    assert library_view.visible_names() == ["frozen"]
    library_view.select("frozen")  # its details keep the closest words the Training page showed
    assert f"Closest words:</b> {', '.join(words)}</p>" in library_view.details.text()
    library_view.search_edit.setText("")

    # --- a second concept for side-by-side columns, then generate
    library = window.context.library()
    from lego_studio.core.concepts import Concept

    width = library.get("frozen").vectors.shape[1]
    library.add(Concept("melting", "<melting>", torch.randn(1, width), {"method": "ti", "family": "tiny"}))
    window.context.library_changed.emit()
    window.show_place("gallery")
    gallery = window.gallery_view
    qtbot.waitUntil(lambda: set(gallery.concept_names()) == {"frozen", "melting"}, timeout=20000)
    gallery.model_combo.setCurrentIndex(gallery.model_combo.findData(str(window.context.settings.models[0].spec)))
    gallery.device_combo.setCurrentText("cpu")
    gallery.choose_concepts(["frozen", "melting"])
    gallery.subjects_edit.setPlainText("a cup\na dog")
    gallery.seeds_edit.setText("0")
    gallery.steps_spin.setValue(2)
    with qtbot.waitSignal(gallery.generation_finished, timeout=60000):
        assert gallery.generate()
    assert gallery.last_error == ""
    assert gallery.table.columnCount() == 2 and gallery.table.rowCount() == 2
    headers = [gallery.table.horizontalHeaderItem(c).text() for c in range(2)]
    # Each column names its concept and the method that made it (Lego / TI).
    assert [h.split()[0] for h in headers] == ["<frozen>", "<melting>"]
    assert all(h.split()[-1] in ("Lego", "TI") for h in headers)
    placeholders = [h.split()[0] for h in headers]
    from lego_studio.core.generation import read_generation_metadata

    for row in range(2):
        for column in range(2):
            path, request = gallery._cell(row, column)
            assert path.is_file() and path.parent == window.context.project.folder / "gallery"
            stored_request = read_generation_metadata(path)
            assert stored_request.prompt == request.prompt
            assert placeholders[column] in stored_request.prompt
    assert "a dog" in gallery._cell(1, 0)[1].prompt

    # open one large: its settings are shown and "Reuse settings" fills the controls
    dialog = gallery.open_cell(1, 0)
    assert dialog.isVisible() and dialog.request.prompt == gallery._cell(1, 0)[1].prompt
    assert "&lt;frozen&gt;" in ImageDialog.describe(dialog.request, gallery._cell(1, 0)[0])
    dialog.accept()

    # export the selection, reuse settings
    gallery.table.setCurrentCell(0, 1)
    gallery.table.item(0, 0).setSelected(True)
    exported = gallery.export_selected(tmp_path / "export")
    assert exported == 2 and len(list((tmp_path / "export").glob("*.png"))) == 2
    gallery.seeds_edit.setText("5")
    gallery.table.setCurrentCell(1, 1)
    gallery._reuse_current()
    assert gallery.seeds_edit.text() == "0"
    assert gallery.chosen_concepts() == ["melting"]
    assert gallery.subjects() == ["a dog"]
