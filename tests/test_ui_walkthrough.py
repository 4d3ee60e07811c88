"""Faults found in a real-window walkthrough (issue 19): wheel, selectors during a run, model
checks, Gallery composition, resumed charts, tooltips and small visual faults."""

from __future__ import annotations

import pytest
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QComboBox, QSpinBox


pytestmark = pytest.mark.gui


def new_project(window, tmp_path, name="P", sizes=((32, 32),)):
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (200, 30 * i, 0)).save(folder / f"a{i}.png")  # no two alike
    return window.create_project_and_wait(name, [folder])


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
    assert view.is_running()
    assert not view.model_combo.isEnabled()
    assert not view.device_combo.isEnabled()
    qtbot.waitUntil(lambda: view.runner.busy, timeout=10000)  # started (the run folder made off the UI thread)
    assert not view.model_combo.isEnabled()
    models.gate.set()
    qtbot.waitUntil(lambda: not view.is_running(), timeout=20000)
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


# ------------------------------------------------------------------------------ 5, 10: Gallery composition


def _fake_generation(monkeypatch):
    """Record each image's prompt and concepts; no model work."""
    import json

    from lego_studio.core import concepts as core_concepts
    from lego_studio.core import generation

    made = []

    def fake_generate(model, request, concepts=(), progress=None, cancel=None):
        made.append((request.prompt, sorted(c.placeholder for c in concepts)))
        if progress is not None:
            progress(request.steps, request.steps)
        image = Image.new("RGB", (8, 8), "blue")
        record = request.to_dict()
        record["concepts"] = [{"name": c.name, "placeholder": c.placeholder} for c in concepts]
        image.info[generation.METADATA_KEY] = json.dumps({"version": 1, "request": record})
        return image

    monkeypatch.setattr(generation, "generate", fake_generate)
    monkeypatch.setattr(core_concepts, "check_concepts_fit", lambda model, concepts: None)
    return made


class FakeModels:
    from contextlib import contextmanager

    @contextmanager
    def lease(self, *args, **kwargs):
        yield object()

    def preload(self, *args, **kwargs):
        pass


def _library_with(window, qtbot, *names):
    import torch

    from lego_studio.core.concepts import Concept

    library = window.context.library()
    for name, method in names:
        library.add(Concept(name, f"<{name}>", torch.randn(1, 32), {"method": method, "family": "tiny"}))
    window.context.library_changed.emit()
    view = window.gallery_view
    qtbot.waitUntil(lambda: len(view.concept_names()) == len(names), timeout=10000)
    return view


def test_gallery_composes_two_concepts_in_one_image(window, qtbot, monkeypatch):
    made = _fake_generation(monkeypatch)
    window.context.models = FakeModels()
    view = _library_with(window, qtbot, ("melting", "lego"), ("on-fire", "ti"))
    view.choose_concepts(["melting", "on-fire"])
    view.subjects_edit.setPlainText("a teapot\na car")
    view.template_edit.setText("a photo of {subject} {concept}")
    view.steps_spin.setValue(2)
    # Side by side (one column each), the columns say which method made each concept.
    assert view.generate()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=20000)
    labels = [view.table.horizontalHeaderItem(i).text() for i in range(view.table.columnCount())]
    assert labels == ["<melting> Lego", "<on-fire> TI"]
    assert ("a photo of a teapot <melting>", ["<melting>"]) in made
    # Together: every image has both concepts.
    made.clear()
    view.together_check.setChecked(True)
    assert view.generate()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=20000)
    assert view.table.columnCount() == 1 and view.table.rowCount() == 2
    header = view.table.horizontalHeaderItem(0)
    assert header.text() == "<melting> Lego\n+ <on-fire> TI"  # one concept a line
    assert header.toolTip() == "<melting> Lego + <on-fire> TI"
    metrics = view.table.horizontalHeader().fontMetrics()
    assert all(metrics.horizontalAdvance(line) <= view.table.columnWidth(0) for line in header.text().splitlines())
    assert made == [("a photo of a teapot <melting> <on-fire>", ["<melting>", "<on-fire>"]),
                    ("a photo of a car <melting> <on-fire>", ["<melting>", "<on-fire>"])]
    assert len(view.results) == 2 and all(r["path"].is_file() for r in view.results)


def test_gallery_concepts_typed_in_the_template_are_used_and_unknown_ones_are_one_line(window, qtbot, monkeypatch):
    made = _fake_generation(monkeypatch)
    window.context.models = FakeModels()
    view = _library_with(window, qtbot, ("melting", "lego"), ("on-fire", "lego"))
    view.choose_concepts([])
    view.steps_spin.setValue(1)
    view.template_edit.setText("a teapot <melting> <on-fyre>")
    assert not view.generate()
    line = view.status_label.text()
    assert "<on-fyre>" in line and "not in your concept library" in line and "\n" not in line
    assert not view.runner.busy and made == []
    view.template_edit.setText("a teapot <melting> <on-fire>")
    assert view.generate()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=20000)
    assert made == [("a teapot <melting> <on-fire>", ["<melting>", "<on-fire>"])]


# ------------------------------------------------------------------------------ 6: a resumed run's history


def _run_with_history(project):
    import json

    from lego_studio.core.train_config import TrainConfig

    run = project.new_run_dir()
    TrainConfig(subject="a cat", steps=10).save(run / "config.json")
    lines = [json.dumps({"step": s, "stage": 1, "losses": {"total": 1.0 / s, "rec": 0.5 / s}, "lr": 0.01,
                         "time": 0.1, "skipped": False}) for s in range(1, 7)]
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    (run / "previews").mkdir()
    sheet = Image.new("RGB", (32, 16), "green")
    sheet.save(run / "previews" / "step-000002.png")
    sheet.save(run / "previews" / "step-000006.png")  # after the checkpoint: redone, not shown
    return run


def test_read_history_up_to_the_checkpoint(tmp_path, window):
    from lego_studio.core.run_history import read_history

    project = new_project(window, tmp_path)
    run = _run_with_history(project)
    history = read_history(run, upto=4)
    assert [step for step, _ in history.points] == [1, 2, 3, 4] and history.step == 4
    assert [step for step, _ in history.previews] == [2] and len(history.previews[0][1]) == 2


def test_a_resumed_run_shows_its_whole_history(window, qtbot, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from lego_studio.core import memory, run_files, run_service
    from lego_studio.core.errors import Cancelled

    class FakeTrainer:
        def __init__(self, model, config, images, masks, run_dir, on_event=None, **kwargs):
            self.on_event = on_event

        def run(self, resume=False):
            assert resume
            self.on_event(run_files.TrainEvent("log", step=4, total=10, message="resumed from step-000004"))
            raise Cancelled("stopped by the test")

    class Models(FakeModels):
        from contextlib import contextmanager

        @contextmanager
        def lease(self, *args, **kwargs):
            yield SimpleNamespace(family=SimpleNamespace(resolution=32), device=SimpleNamespace(type="cpu"))

    monkeypatch.setattr(run_service, "Trainer", FakeTrainer)
    monkeypatch.setattr(memory, "fit_config", lambda model, config, explicit: SimpleNamespace(config=config, note=""))
    monkeypatch.setattr(memory, "planning_takes_a_while", lambda model: False)
    window.context.models = Models()
    project = new_project(window, tmp_path)
    run = _run_with_history(project)
    view = window.training_view
    assert view.resume_run(run)
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=20000)
    assert [step for step, _ in view.chart.points("total")] == [1, 2, 3, 4]
    assert view.previews.count() == 2 and view.previews.item(0).text() == "step 2"


# ------------------------------------------------------------------------------ 7: Masks Fill, Undo; window size


def test_masks_fill_then_undo_clears_the_stale_error_and_messages_wrap(window, qtbot, tmp_path):
    new_project(window, tmp_path, sizes=((40, 30),))
    window.show_place("masks")
    view = window.masks_view
    qtbot.waitUntil(lambda: view.canvas.has_image(), timeout=5000)
    before = window.minimumSizeHint().width()
    view.canvas.flood_fill(1, 1, 255)  # an empty mask: the whole image becomes subject
    view.save_current_mask()
    window.settle()
    assert "Could not save" in view.info_label.text() and "c0392b" in view.info_label.styleSheet()
    view.canvas.undo()
    view.save_current_mask()
    window.settle()
    assert "Could not save" not in view.info_label.text() and view.info_label.styleSheet() == ""
    assert "image 1 of 1" in view.info_label.text()
    # A very long message wraps instead of widening the window.
    assert view.info_label.wordWrap()
    view.info_label.setText("Could not save the mask: " + "/very/long/path" * 60)
    assert window.minimumSizeHint().width() <= before + 1


def test_a_window_wider_than_the_screen_is_not_remembered(window):
    from lego_studio.ui.main_window import unpack_window_state

    available = window.screen().availableGeometry()
    window.resize(window.minimumSizeHint())
    window.save_state()
    saved = unpack_window_state(window.context.settings.window_state)[0]
    assert saved
    window.resize(available.width() + 900, 400)
    window.save_state()
    assert unpack_window_state(window.context.settings.window_state)[0] == saved


# ------------------------------------------------------------------------------ 9: the plan line before Start


def test_the_plan_line_shows_before_start(window, qtbot, tmp_path):
    view = window.training_view
    new_project(window, tmp_path, sizes=((64, 64), (64, 64), (20, 20), (200, 40)))
    view.form.set_value("resolution", 256)
    # The line for the project's own size may come first; the one for 256 px follows.
    qtbot.waitUntil(lambda: view.plan_label.isVisibleTo(view) and "256 px" in view.plan_label.text(), timeout=20000)
    text = view.plan_label.text()
    assert "256 px" in text and "a2.png" in text and "far from square" in text, text
    assert not view.runner.busy  # nothing started
    # Images that suit the size: no line.
    view.form.set_value("resolution", 16)
    qtbot.waitUntil(lambda: not view.plan_label.isVisibleTo(view) or "much smaller" not in view.plan_label.text(),
                    timeout=10000)


def test_the_plan_line_uses_the_models_own_size(window, qtbot, tmp_path):
    view = window.training_view
    assert view.model_combo.currentData() == "shapeworld"
    new_project(window, tmp_path, sizes=((64, 64), (20, 20)))
    view.form.set_value("resolution", None)  # the model's own size: Shape World's 64 px
    qtbot.waitUntil(lambda: "64 px" in view.plan_label.text() and view.plan_label.isVisibleTo(view), timeout=10000)


# ------------------------------------------------------------------------------ 10: a taken name, before the run


def test_a_taken_concept_name_is_asked_about_before_the_run_starts(window, qtbot, tmp_path):
    import torch

    from lego_studio.core.concepts import Concept

    new_project(window, tmp_path)
    view = window.training_view
    models = window.context.models = BlockingModels()
    window.context.library().add(Concept("frozen", "<frozen>", torch.randn(1, 32), {"method": "lego"}))
    view.form.set_value("subject", "a toy robot")
    view.form.set_value("name", "frozen")
    view.preset_combo.setCurrentText("Textual Inversion baseline")  # the name stays
    asked = []
    view.ask_name_clash = lambda name, free: asked.append((name, free, view.runner.busy)) or None
    assert view.start()  # the library is asked off the UI thread; the question comes before the run starts
    qtbot.waitUntil(lambda: not view.is_running(), timeout=10000)
    assert asked == [("frozen", "frozen-2", False)]
    assert "<frozen>" in view.status_label.text() and not view.runner.busy
    assert not list((window.context.project.folder / "runs").iterdir())  # no run folder made
    view.ask_name_clash = lambda name, free: asked.append((name, free, view.runner.busy)) or "rename"
    assert view.start()
    qtbot.waitUntil(lambda: view.runner.busy, timeout=10000)
    assert asked[-1] == ("frozen", "frozen-2", False)
    models.gate.set()
    qtbot.waitUntil(lambda: not view.is_running(), timeout=20000)


# ------------------------------------------------------------------------------ 12: long tooltips wrap


def test_setting_tooltips_are_rich_text_so_long_ones_wrap(window):
    from PySide6.QtGui import Qt as QtGuiQt

    from lego_studio.core.train_config import SETTINGS

    form = window.training_view.form
    longest = max(SETTINGS, key=lambda name: len(SETTINGS[name].help + SETTINGS[name].details))
    tip = form.widgets[longest].toolTip()
    assert QtGuiQt.mightBeRichText(tip)
    assert "&lt;" not in SETTINGS[longest].help and SETTINGS[longest].help[1:20] in tip


# ------------------------------------------------------------------------------ 13: small visual faults


def test_loss_axis_labels_are_whole_numbers_and_fit(qtbot):
    from lego_studio.ui.loss_chart import LossChart

    chart = LossChart()
    qtbot.addWidget(chart)
    labels = chart.axis_labels(0.00966, 0.0123)
    assert all(label.startswith("0.") for label in labels), labels
    assert chart.axis_labels(0.1, 0.35) == ["0.1", "0.225", "0.35"]
    for step, value in enumerate((0.0123, 0.011, 0.00966), start=1):
        chart.add(step, {"total": value})
    chart.resize(400, 200)
    assert not chart.grab().isNull()


def test_the_progress_text_has_room_for_its_digits(window):
    bar = window.training_view.progress
    bar.setRange(0, 12000)
    bar.setValue(11999)
    assert bar.minimumWidth() >= bar.fontMetrics().horizontalAdvance(bar.text()) + 20


def test_paused_shows_in_the_eta_and_the_run_list(window, qtbot, tmp_path):
    new_project(window, tmp_path)
    view = window.training_view
    models = window.context.models = BlockingModels()
    view.form.set_value("subject", "a toy robot")
    assert view.start()
    qtbot.waitUntil(lambda: view.runner.busy and not view.runs_loading, timeout=10000)
    view.eta_label.setText("ETA 1:05")
    view.toggle_pause()
    assert view.eta_label.text() == "paused"
    assert any("paused" in view.runs_list.item(i).text() and "training now" not in view.runs_list.item(i).text()
               for i in range(view.runs_list.count()))
    view.refresh_runs()
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    assert any("paused" in view.runs_list.item(i).text() for i in range(view.runs_list.count()))
    view.toggle_pause()
    assert view.eta_label.text() == "ETA 1:05"
    assert any("training now" in view.runs_list.item(i).text() for i in range(view.runs_list.count()))
    models.gate.set()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=20000)


def test_the_settings_dialog_keeps_its_size_as_messages_come_and_go(window, qtbot, tmp_path, tiny_model_dir):
    from lego_studio.ui.settings_dialog import SettingsDialog

    dialog = SettingsDialog(window.context, window)
    qtbot.addWidget(dialog)
    dialog.show()
    before = dialog.sizeHint().height()
    assert not dialog.add_model(str(tmp_path / "nowhere"))
    assert dialog.sizeHint().height() == before
    assert dialog.add_model(str(tiny_model_dir))  # a message and the offer to make it the default
    after_offer = dialog.sizeHint().height()
    dialog.offer_default_button.click()  # the offer goes away
    assert dialog.sizeHint().height() == after_offer


# ------------------------------------------------------------------------------ 14: examples, not values


def test_project_word_fields_show_examples_and_what_training_uses(window, tmp_path):
    from lego_studio.core.train_config import TrainConfig

    view = window.projects_view
    for edit in (view.subject_edit, view.concept_edit, view.positive_edit):
        assert edit.placeholderText().startswith("e.g. "), edit.placeholderText()
        placeholder = edit.palette().color(edit.palette().ColorRole.PlaceholderText)
        assert placeholder.lightness() > edit.palette().color(edit.palette().ColorRole.Text).lightness() + 80
    view.subject_edit.setText("a shiny toy robot")
    used = TrainConfig(subject="a shiny toy robot").effective_negative_words()
    assert view.negative_edit.placeholderText() == f"empty: the subject's words ({', '.join(used)})"


# ------------------------------------------------------------------------------ 15: Help


def test_help_says_the_version_what_to_do_first_and_where_files_live(window):
    from lego_studio import __version__
    from lego_studio.ui.errors import log_path

    about = window.about_text()
    assert __version__ in about and "lego-studio.log" in about
    guide = window.guide_text()
    for words in ("What to do first", "subject words", "Masks", "Where files live",
                  str(window.context.settings.library_path()), str(window.context.settings.projects_path())):
        assert words in guide, words
    assert str(log_path()) in guide
    # What the guide says masks do is what the training form's settings make them do.
    import html

    from lego_studio.core.separation import masks_usage

    assert html.escape(masks_usage(window.training_view.form.draft())) in guide
    window.training_view.form.set_value("ctx_region", "outside")
    assert "outside the subject" in window.guide_text()
    actions = [a.text() for a in window.menuBar().actions()[-1].menu().actions()]
    assert actions[0] == "&Getting Started"


# ------------------------------------------------------------------------------ 16: trained vs imported


def test_a_reimported_a1111_concept_keeps_its_training_time(window, qtbot, tmp_path):
    import torch

    from lego_studio.core.concepts import Concept, export_concept

    view = window.library_view
    trained = Concept("frost", "<frost>", torch.randn(1, 32),
                      {"method": "lego", "family": "tiny", "created": "2024-05-01T10:00:00+00:00"})
    plain = Concept("dust", "<dust>", torch.randn(1, 32), {})
    files = [export_concept(trained, tmp_path / "frost.pt", "a1111"), export_concept(plain, tmp_path / "dust.pt", "a1111")]
    with qtbot.waitSignal(view.entries_loaded, timeout=15000):
        view.import_files(files)
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=15000)
    view.select("frost")
    text = view.details.text()
    assert "Trained:</b> 2024-05-01T10:00:00+00:00" in text
    view.select("dust")
    text = view.details.text()
    assert "Trained" not in text and "Imported:</b>" in text


# ------------------------------------------------------------------------------ 8: Assist candidates


def test_assist_candidate_buttons_fit_and_a_box_alone_claims_no_clicks(window, qtbot, tmp_path):
    from types import SimpleNamespace

    import numpy as np

    new_project(window, tmp_path, sizes=((40, 30),))
    view = window.masks_view
    qtbot.waitUntil(lambda: view.canvas.has_image(), timeout=5000)
    view._segmenter = SimpleNamespace(name="GrabCut")
    mask = np.zeros((30, 40), bool)
    mask[5:20, 5:20] = True
    view._prompt_clicks = 0  # a box drag, no clicks
    view._candidates = [(mask, 1.0), (mask, 0.5)]
    view._update_candidate_buttons()
    texts = [button.text() for button in view.candidate_buttons]
    assert not any("clicks" in text or "%" in text for text in texts), texts
    view._prompt_clicks = 3
    view._update_candidate_buttons()
    button = view.candidate_buttons[0]
    assert "100% of your clicks" in button.text()
    room = view.assist_panel.width() - 2 * view.assist_panel.layout().contentsMargins().left() - 12
    for line in button.text().splitlines():
        assert button.fontMetrics().horizontalAdvance(line) <= room, line


# ------------------------------------------------------------------------------ vague subject words, before Start


def test_vague_subject_words_are_named_before_start_and_lego_only(window, qtbot, tmp_path):
    view = window.training_view
    new_project(window, tmp_path, sizes=((64, 64), (64, 64)))
    view.form.set_value("subject", "an object")
    assert view.words_label.isVisibleTo(view)
    assert "say almost nothing" in view.words_label.text() and "e.g." in view.words_label.text()
    view.form.set_value("subject", "a purple object")  # the look, not what it is: the shape can leak
    assert view.words_label.isVisibleTo(view)
    assert "not what it is" in view.words_label.text() and "&quot;a purple cat&quot;" in view.words_label.text()
    view.form.set_value("subject", "a red toy robot")
    assert not view.words_label.isVisibleTo(view)
    view.form.set_value("subject", "a thing")
    view.form.apply_preset("ti")  # the baseline does not separate by words: nothing to say
    assert not view.words_label.isVisibleTo(view)


def test_words_that_name_no_colour_are_offered_the_colour_the_masks_mark(window, qtbot, tmp_path):
    # A yellow subject on white, marked by masks, and the words "a star": before Start the page says
    # the marked subject is mostly yellow and the words name no colour; training adds it, or, with
    # Colour from masks off, a link adds it to the words.
    import numpy as np

    folder = tmp_path / "src"
    folder.mkdir()
    for i in range(2):
        picture = np.full((48, 48, 3), 255, np.uint8)
        picture[10:30, 10 + i:30 + i] = (242, 206, 22)
        Image.fromarray(picture).save(folder / f"s{i}.png")
    project = window.create_project_and_wait("Star", [folder])
    view = window.training_view
    view.form.set_value("subject", "a star")
    window.settle()
    assert not view.words_label.isVisibleTo(view)  # no masks yet: the colour is not known
    for i, entry in enumerate(project.images):
        mask = np.zeros((48, 48), np.uint8)
        mask[10:30, 10 + i:30 + i] = 255
        project.save_mask(project.folder / entry.file, mask)
    window.context.masks_changed.emit(project.folder / project.images[0].file)
    qtbot.waitUntil(lambda: view.words_label.isVisibleTo(view), timeout=5000)
    # By default training adds the colour itself (Colour from masks): the note says so, no link.
    text = view.words_label.text()
    assert "mostly yellow" in text and "training adds it" in text and "&quot;a yellow star&quot;" in text
    assert "<a href" not in text and "turn off Colour from masks" in text
    view.form.set_value("mask_colour", False)  # off: the user adds it, with a link
    text = view.words_label.text()
    assert "mostly yellow" in text and "name no colour" in text and '<a href="yellow">yellow</a>' in text
    view.words_label.linkActivated.emit("yellow")
    assert view.form.value("subject") == "a yellow star"
    assert not view.words_label.isVisibleTo(view)
    view.form.set_value("subject", "a blue star")  # words that name a colour: the user's call, no note
    assert not view.words_label.isVisibleTo(view)
    view.form.set_value("subject", "a star")
    assert view.words_label.isVisibleTo(view)
    # Words that do not say what the subject is: with masks, training looks for the word (Shape from masks).
    view.form.set_value("subject", "a yellow object")
    assert "not what it is" in view.words_label.text() and "training first looks for the word itself" in view.words_label.text()
    view.form.set_value("mask_shape", False)
    assert "not what it is" in view.words_label.text() and "Shape from masks" not in view.words_label.text()
    view.form.apply_preset("ti")  # the baseline does not separate by words: nothing to say
    assert not view.words_label.isVisibleTo(view)



def test_a_burst_of_mask_saves_reads_the_masks_colour_once_more_not_once_each(window, monkeypatch, tmp_path):
    # Painting autosaves a mask after each stroke; the colour is read from every image, so a burst
    # of saves must not queue a reading per save: one more reading after the one running, with the
    # latest masks.
    from lego_studio.core import images

    new_project(window, tmp_path)
    window.settle()
    calls = []
    monkeypatch.setattr(images, "subject_colour", lambda *a: calls.append(a) or "green")
    view = window.training_view
    for _ in range(5):
        window.context.masks_changed.emit(tmp_path / "any.png")
    window.settle()
    assert len(calls) == 2 and view.words_note.colour == "green"
