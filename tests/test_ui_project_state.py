"""What the pages keep for the open project and its runs: training settings and the model that
follow the project, run states and the runs list, the Projects page's mask count, reopening after a
restart, the status bar, Settings and SAM, skipped files, presets, library names, selection and
search, the gallery's choice of concept and subjects."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6.QtWidgets import QMessageBox

from lego_studio.core import runs
from lego_studio.core.concepts import Concept, export_concept
from lego_studio.core.project import Project
from lego_studio.core.settings import Settings
from lego_studio.core.train_config import TrainConfig
from lego_studio.ui.context import AppContext
from lego_studio.ui.main_window import MainWindow
from lego_studio.ui.train_form import APP_PREVIEW_EVERY

pytestmark = pytest.mark.gui


def image_folder(folder, count=2, size=(32, 32)):
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", size, (40 * i, 90, 200)).save(folder / f"pic{i}.png")
    return folder


def demo_like_project(tmp_path):
    """A project that saved its own training settings (like the Shape World demo)."""
    return Project.create(tmp_path / "demo", name="Demo", subject="a red circle", concept_name="ice", train_defaults={
        "steps": 300, "templates": ["a render of {}"], "context_subjects": ["a blue star", "a green heart"]})


# ------------------------------------------------------------------------------ 1: settings follow the project


def test_training_settings_do_not_leak_between_projects(window, tmp_path):
    view = window.training_view
    window.open_project_and_wait(demo_like_project(tmp_path).folder)
    assert view.form.value("context_subjects") == ["a blue star", "a green heart"]
    assert view.form.value("steps") == 300
    view.form.set_value("lr", 0.0123)  # an edit on the demo project stays with the demo project

    other = window.create_project_and_wait("Mine", [image_folder(tmp_path / "mine")])
    defaults = TrainConfig()
    assert view.form.value("context_subjects") == defaults.context_subjects
    assert view.form.value("templates") == defaults.templates
    assert view.form.value("steps") == defaults.steps
    assert view.form.value("lr") == pytest.approx(defaults.lr)
    # ...and so after a restart (the same project, the same settings).
    view.form.set_value("subject", "a cat")
    view.form.set_value("steps", 77)
    view.remember_settings(other, view.form.config())
    window.settle()
    window.open_project_and_wait(tmp_path / "demo")
    window.open_project_and_wait(other.folder)
    assert view.form.value("steps") == 77
    assert view.form.value("context_subjects") == defaults.context_subjects


# ------------------------------------------------------------------------------ 2: run states in the list


def test_runs_list_shows_cancelled_failed_and_a_dead_process_as_interrupted(window, qtbot, tmp_path):
    project = window.create_project_and_wait("Runs", [image_folder(tmp_path / "src")])
    config = TrainConfig(subject="a cat", steps=10)
    cancelled, failed, dead = (project.new_run_dir() for _ in range(3))
    for run in (cancelled, failed, dead):
        config.save(run / "config.json")
        runs.begin_run(run, config)
    runs.end_run(cancelled, runs.RUN_CANCELLED, "training cancelled at step 3 of 10")
    runs.end_run(failed, runs.RUN_FAILED, "the loss was not finite")
    record = runs.read_record(dead)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record["pid"] = gone.pid
    (dead / runs.RUN_FILE).write_text(json.dumps(record))
    view = window.training_view
    view.refresh_runs()
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    texts = {view.runs_list.item(i).data(0x0100): view.runs_list.item(i).text() for i in range(view.runs_list.count())}
    assert "— cancelled —" in texts[str(cancelled)]
    assert "training cancelled at step 3" not in texts[str(cancelled)]  # the status says it; the tooltip has it
    assert "— failed —" in texts[str(failed)] and "not finite" in texts[str(failed)]
    assert "— interrupted —" in texts[str(dead)]
    assert sorted(view.resumable_runs()) == sorted([cancelled, failed, dead])


def test_the_runs_list_is_read_off_the_ui_thread(window, qtbot, tmp_path, ui_thread_file_work):
    # Every run's run.json and log.jsonl are read for the list: with many runs that blocked the
    # window. The UI thread now only shows what a worker read.
    project = window.create_project_and_wait("Many runs", [image_folder(tmp_path / "src")])
    made = []
    for i in range(5):
        run = project.folder / "runs" / f"20260101-00000{i}"
        config = TrainConfig(subject="a cat", steps=10)
        runs.create_run(run, {"model": "shapeworld", "device": "cpu"}, config)
        runs.end_run(run, runs.RUN_CANCELLED, "cancelled at step 3")
        made.append(run)
    view = window.training_view
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    seen = ui_thread_file_work("run.json", "log.jsonl", "config.json", str(project.folder / "runs"))
    runs.read_run(made[0])  # the recorder sees a read on this thread...
    assert seen
    seen.clear()
    view.refresh_runs()  # ...and none from the list's refresh
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    assert seen == []
    lines = [view.runs_list.item(i).text() for i in range(view.runs_list.count())]
    assert len(lines) == 5 and all(" — cancelled — " in line for line in lines)
    # A refresh keeps the run the user selected.
    view.runs_list.setCurrentRow(2)
    chosen = view.runs_list.currentItem().data(0x0100)
    view.refresh_runs()
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    assert view.runs_list.currentItem() is not None and view.runs_list.currentItem().data(0x0100) == chosen


def test_the_running_runs_line_follows_its_steps_and_the_first_steps_estimate_gives_way_to_the_eta(window, qtbot, tmp_path):
    # Walkthrough: between checkpoints the list said "? — training now — step 0/?" while the bar
    # was at step 30, and "about 10 min" (timed on the first two steps) stayed beside a live ETA
    # of 2:38. The line follows the steps; the first-steps estimate goes once the ETA is measured.
    from lego_studio.core.run_files import TrainEvent

    project = window.create_project_and_wait("Live", [image_folder(tmp_path / "src")])
    run = project.new_run_dir()
    view = window.training_view
    view._run_dir, view._run_method = run, "lego"
    view.refresh_runs()
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    view.estimate_label.setText("Expected duration: about 10 min for 298 steps.")
    view._on_event(TrainEvent("step", step=3, total=300, eta_s=600.0, losses={"total": 0.1}))
    line = next(view.runs_list.item(i).text() for i in range(view.runs_list.count())
                if view.runs_list.item(i).data(0x0100) == str(run))
    assert "— lego — training now — step 3/300" in line
    assert "about 10 min" in view.estimate_label.text()  # still the only figure after 3 steps
    view._on_event(TrainEvent("step", step=30, total=300, eta_s=158.0, losses={"total": 0.1}))
    line = next(view.runs_list.item(i).text() for i in range(view.runs_list.count())
                if view.runs_list.item(i).data(0x0100) == str(run))
    assert "step 30/300" in line
    assert view.estimate_label.text() == "" and view.eta_label.text() == "ETA 3 min"


def test_another_project_does_not_show_the_last_projects_run(window, tmp_path):
    # Walkthrough: after cancelling a run of the demo and creating a new project, Training still
    # showed the demo's 194/300 bar, its loss curves, its previews and "Cancelled".
    first = window.create_project_and_wait("First", [image_folder(tmp_path / "a")])
    view = window.training_view
    view.set_project(first)
    view.progress.setRange(0, 300)
    view.progress.setValue(194)
    view.chart.add(1, {"total": 0.1})
    view.previews.addItem("step 100")
    view.status_label.setText("Cancelled. The run can be resumed from its checkpoint.")
    view.eta_label.setText("cancelled")
    from lego_studio.core.run_files import TrainEvent

    view._on_event(TrainEvent("closest", message="Closest words to the concept: cage, yellow.", words=["cage", "yellow"]))
    assert not view.closest_label.isHidden()
    window.create_project_and_wait("Second", [image_folder(tmp_path / "b")])
    assert view.progress.value() == -1 and view.previews.count() == 0
    assert view.closest_label.isHidden() and view.closest_label.text() == ""
    assert view.status_label.text() == "Ready." and view.eta_label.text() == "ETA —"
    window.open_project_and_wait(first.folder)  # its run is not shown again either, until it runs
    assert view.previews.count() == 0


def test_start_without_subject_words_says_so_and_names_the_field(window, tmp_path, qtbot):
    # Walkthrough: a new project without subject words answered Start with the config's own
    # "needs the subject in words ... or subject_token_steps > 0", a field name the user never sees.
    # Now the missing words are named before Start, with a suggestion, and the run still goes.
    project = window.create_project_and_wait("No words", [image_folder(tmp_path / "src")])
    view = window.training_view
    view.set_project(project)
    view.form.set_value("subject", "")
    assert view.words_label.isVisibleTo(view)
    assert "No subject words" in view.words_label.text() and "subject_token_steps" not in view.words_label.text()
    view.form.set_value("steps", 2)
    assert view.start() is True
    qtbot.waitUntil(lambda: not view.is_running(), timeout=60000)
    assert len(list(project.runs())) == 1


def test_subject_words_typed_in_training_stay_with_the_project(window, tmp_path):
    # Walkthrough: subject words typed in Training trained the run, but the project kept none, so
    # after a restart the form was empty again and Projects never showed them.
    project = window.create_project_and_wait("Typed", [image_folder(tmp_path / "src")])
    view = window.training_view
    view.set_project(project)
    view.form.set_value("subject", "a star")
    view.remember_settings(project, view.form.config())
    window.settle()
    assert project.subject == "a star"
    assert window.projects_view.subject_edit.text() == "a star"
    from lego_studio.core.project import Project

    assert Project.open(project.folder).subject == "a star"  # saved, so a restart shows it


# ------------------------------------------------------------------------------ 3: mask count


def test_projects_page_mask_count_follows_painted_masks(window, qtbot, tmp_path):
    window.create_project_and_wait("Masks", [image_folder(tmp_path / "src")])
    assert "0 with a mask" in window.projects_view.images_label.text()
    window.show_place("masks")
    masks = window.masks_view
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 4:20] = 255
    masks.canvas.set_mask(mask)  # an edit: autosaves (handed in here at once)
    masks.flush_autosave()
    window.settle()
    assert "1 with a mask" in window.projects_view.images_label.text()


# ------------------------------------------------------------------------------ 4: restart


def test_restart_reopens_the_last_project_and_offers_its_interrupted_run(qtbot, tmp_path, monkeypatch):
    first = MainWindow(AppContext(Settings.load()))
    qtbot.addWidget(first)
    with qtbot.waitSignal(first.context.project_changed, timeout=30000) as opened:
        first.projects_view.create_project("Again", [image_folder(tmp_path / "src")])
    project = opened.args[0]
    run = project.new_run_dir()
    config = TrainConfig(subject="a cat", steps=10)
    config.save(run / "config.json")
    runs.create_run(run, {"model": "shapeworld", "device": "cpu"}, config)
    record = runs.read_record(run)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record["pid"] = gone.pid  # the app that ran it is gone
    (run / runs.RUN_FILE).write_text(json.dumps(record))
    first.close()

    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: asked.append(a[2]) or QMessageBox.StandardButton.No)
    second = MainWindow(AppContext(Settings.load()))
    qtbot.addWidget(second)
    qtbot.waitUntil(lambda: second.context.project is not None, timeout=10000)  # reopened off the UI thread
    assert second.context.project is not None and second.context.project.folder == project.folder
    assert second.project_label.text() == "Project: Again"
    assert second.offer_interrupted_run() is None  # declined
    assert len(asked) == 1 and "interrupted" in asked[0]
    assert second.current_place() == "training"
    qtbot.waitUntil(lambda: second.training_view.runs_list.currentItem() is not None, timeout=10000)
    assert second.training_view.runs_list.currentItem().data(0x0100) == str(run)
    assert second.training_view.resume_button.isEnabled()
    second.shutdown_workers()


# ------------------------------------------------------------------------------ 5: status bar


def test_status_bar_names_the_built_in_model_training_uses(window):
    assert "none" not in window.model_label.text()
    assert window.model_label.text() == f"Model: {window.training_view.model_combo.currentText()}"
    # Walkthrough: with Shape World XL chosen in Training the status bar still named Shape World.
    combo = window.training_view.model_combo
    combo.setCurrentIndex(combo.findData("shapeworld-xl"))
    assert window.model_label.text() == "Model: Shape World XL (built in, SDXL architecture)"


# ------------------------------------------------------------------------------ 6: Settings and SAM


def test_settings_ok_does_not_save_a_sam_checkpoint_the_dialog_rejected(window, qtbot, tmp_path):
    from lego_studio.ui.settings_dialog import SettingsDialog

    bad = tmp_path / "notes.pth"
    bad.write_text("hello, not a checkpoint")
    dialog = SettingsDialog(window.context, window)
    qtbot.addWidget(dialog)
    dialog.sam_input.setText(str(bad))
    dialog.validate_sam(str(bad))
    qtbot.waitUntil(lambda: dialog.sam_status.text() not in ("", "Checking…"), timeout=30000)
    message = dialog.sam_status.text()
    assert "notes.pth" in message and "(101)" not in message and "checkpoint" in message
    dialog.accept()
    assert dialog.result() == 0 and dialog.isVisible() is not None  # stayed open
    assert window.context.settings.sam_checkpoint is None

    # OK on an unchecked file checks it first, and refuses it.
    other = tmp_path / "other.pth"
    other.write_text("also not one")
    dialog.sam_input.setText(str(other))
    dialog.accept()
    qtbot.waitUntil(lambda: "other.pth" in dialog.sam_status.text(), timeout=30000)
    assert window.context.settings.sam_checkpoint is None


# ------------------------------------------------------------------------------ 7: skipped files


def test_new_from_folder_lists_every_skipped_file_with_its_reason(window, warnings, tmp_path):
    folder = image_folder(tmp_path / "shots", count=2)
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "empty.jpg").write_bytes(b"")
    project = window.create_project_and_wait("Shots", [folder])
    assert project is not None and len(project.images) == 2
    assert warnings, "skipped files must be reported"
    report = warnings[-1]
    assert "broken.png" in report and "empty.jpg" in report and "more" not in report

    warnings.clear()
    bad = [tmp_path / "x.png", tmp_path / "y.png"]
    for path in bad:
        path.write_bytes(b"junk")
    window.projects_view.add_paths(bad)
    window.settle()
    assert "x.png" in warnings[-1] and "y.png" in warnings[-1] and "and 1 more" not in warnings[-1]


# ------------------------------------------------------------------------------ 8: presets, names


def test_switching_presets_keeps_unrelated_settings(window, tmp_path):
    window.create_project_and_wait("P", [image_folder(tmp_path / "src")])
    view = window.training_view
    view.form.set_value("preview_every", 40)
    view.form.set_value("checkpoint_every", 7)
    view.form.set_value("lr", 0.002)
    view.preset_combo.setCurrentText("Textual Inversion baseline")
    view.preset_combo.setCurrentText("Lego")
    config = view.form.config()
    assert (config.preview_every, config.checkpoint_every, config.lr) == (40, 7, 0.002)


def test_a_taken_library_name_is_asked_about(window, qtbot, tmp_path, monkeypatch):
    view = window.library_view
    library = window.context.library()
    library.add(Concept("ice", "<ice>", torch.randn(1, 32), {}))
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=10000)
    file = export_concept(Concept("ice", "<ice>", torch.randn(1, 32), {}), tmp_path / "ice.pt", "a1111")
    answers = ["rename"]
    asked = []
    monkeypatch.setattr(view, "ask_name_clash", lambda name, free: asked.append((name, free)) or answers.pop(0))
    view.import_files([file])
    qtbot.waitUntil(lambda: "ice-2" in view.visible_names(), timeout=15000)
    assert asked == [("ice", "ice-2")]
    # Declining adds nothing.
    asked.clear()
    answers.append(None)
    shown_while_asking = []
    monkeypatch.setattr(view, "ask_name_clash", lambda name, free: shown_while_asking.append(view.status_label.text())
                        or asked.append((name, free)) or answers.pop(0))
    view.import_files([file])
    qtbot.waitUntil(lambda: asked != [] and not view.runner.busy, timeout=15000)
    assert sorted(library.names()) == ["ice", "ice-2"]
    # Walkthrough: "Imported nothing" stood under the question before it was answered.
    assert shown_while_asking == [""]
    assert view.status_label.text() == "Not imported: ice.pt (the library already has <ice>)"


# ------------------------------------------------------------------------------ 11: previews on


def test_a_new_project_trains_with_previews(window, tmp_path):
    window.create_project_and_wait("P", [image_folder(tmp_path / "src")])
    assert window.training_view.form.value("preview_every") == APP_PREVIEW_EVERY > 0


# ------------------------------------------------------------------------------ 12: library selection and search


def test_library_rename_keeps_the_selection_and_an_import_shows_through_a_search(window, qtbot, tmp_path):
    view = window.library_view
    library = window.context.library()
    library.add(Concept("ice", "<ice>", torch.randn(1, 32), {}))
    library.add(Concept("fire", "<fire>", torch.randn(1, 32), {}))
    window.context.library_changed.emit()
    qtbot.waitUntil(lambda: sorted(view.visible_names()) == ["fire", "ice"] and not view.runner.busy, timeout=10000)
    view.select("ice")
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        view.rename_selected("frost")
    assert view.selected_name() == "frost"

    view.search_edit.setText("fire")
    assert view.visible_names() == ["fire"]
    file = export_concept(Concept("melt", "<melt>", torch.randn(1, 32), {}), tmp_path / "melt.pt", "a1111")
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        view.import_files([file])
    assert "melt" in view.visible_names() and view.selected_name() == "melt"


def test_a_trained_concept_whose_name_is_taken_is_asked_about(window, qtbot, tmp_path, monkeypatch):
    from lego_studio.core.concepts import save_concept
    from lego_studio.ui import library_io

    project = window.create_project_and_wait("P", [image_folder(tmp_path / "src")])
    library = window.context.library()
    library.add(Concept("ice", "<ice>", torch.randn(1, 32), {"method": "lego"}))
    run = project.new_run_dir()
    trained = Concept("ice", "<ice>", torch.randn(1, 32), {"method": "lego"})
    save_concept(trained, run / "concept.safetensors")
    clash = library_io.add_trained(library, run / "concept.safetensors", trained, project)  # what the worker returns
    assert sorted(library.names()) == ["ice"]  # nothing added behind the user's back

    view = window.training_view
    view._run_dir = run
    asked = []
    monkeypatch.setattr(view, "ask_name_clash", lambda name, free: asked.append((name, free)) or "rename")
    with qtbot.waitSignal(view.concept_trained, timeout=15000):
        view._finished(clash)
    assert asked == [("ice", "ice-2")] and sorted(library.names()) == ["ice", "ice-2"]


# ------------------------------------------------------------------------------ walkthrough: the gallery


def test_gallery_chooses_the_concept_just_trained_and_the_projects_own(window, qtbot, tmp_path):
    # Walkthrough: after training, Generate drew only a "no concept" column: the new concept was
    # listed but not chosen.
    gallery = window.gallery_view
    library = window.context.library()
    library.add(Concept("other", "<other>", torch.randn(1, 32), {}))
    window.training_view.concept_trained.emit(str(library.root / "fresh.safetensors"))
    library.add(Concept("fresh", "<fresh>", torch.randn(1, 32), {}))
    window.context.library_changed.emit()
    qtbot.waitUntil(lambda: "fresh" in gallery.concept_names() and not gallery.library_runner.busy, timeout=15000)
    assert gallery.chosen_concepts() == ["fresh"]
    # A project whose concept the library has: chosen when nothing else is.
    gallery.choose_concepts([])
    project = window.create_project_and_wait("Other", [image_folder(tmp_path / "src")])
    project.concept_name = "other"
    window.context.project_changed.emit(project)
    assert gallery.chosen_concepts() == ["other"]


def test_gallery_subjects_follow_a_shape_world_model_unless_typed(window):
    # Walkthrough: the built-in Shape World model was asked for "a teapot" and "a dog".
    gallery = window.gallery_view
    assert gallery.model_combo.currentData() == "shapeworld"
    assert gallery.subjects() == ["a green square", "a purple triangle"]
    gallery.subjects_edit.setPlainText("a red star")
    gallery._fit_subjects_to_model()
    assert gallery.subjects() == ["a red star"]  # typed by the user: kept


def test_gallery_subjects_follow_a_shape_world_model_added_from_its_folder(window):
    # Real-window walk: the Shape World model added in Settings by its folder (a user entry whose
    # family is "shapeworld", as the screenshot script sets it up) was asked for "a teapot".
    from lego_studio.core.paths import resource
    from lego_studio.core.settings import ModelEntry

    settings = window.context.settings
    folder = str(resource("models", "shapeworld"))
    settings.models.append(ModelEntry("My Shape World", folder, "diffusers", "shapeworld"))
    window.context.settings_changed.emit()
    gallery = window.gallery_view
    gallery.model_combo.setCurrentIndex(gallery.model_combo.findData(folder))
    assert gallery.model_combo.currentData() == folder
    assert gallery.subjects() == ["a green square", "a purple triangle"]


def test_a_library_change_during_the_gallerys_listing_is_not_lost(window, qtbot, monkeypatch):
    # The gallery skipped a refresh asked for while it was still listing the library, so a concept
    # added then never appeared (seen as a CI timeout of the test above).
    import threading

    gallery = window.gallery_view
    qtbot.waitUntil(lambda: not gallery.library_runner.busy, timeout=15000)
    library = window.context.library()
    release = threading.Event()
    real_list = type(library).list
    def slow_list(self):
        entries = real_list(self)  # read before "late" is added, handed back after
        release.wait(10)
        return entries

    monkeypatch.setattr(type(library), "list", slow_list)
    gallery.refresh_concepts()
    assert gallery.library_runner.busy
    library.add(Concept("late", "<late>", torch.randn(1, 32), {}))
    window.context.library_changed.emit()  # while the first listing runs
    release.set()
    qtbot.waitUntil(lambda: "late" in gallery.concept_names(), timeout=15000)


def test_resuming_a_run_shows_the_model_it_continues_on(window, tmp_path, monkeypatch):
    # Walkthrough: a Shape World XL run resumed after a restart continued on XL while the Model
    # box and the status bar said Shape World.
    project = window.create_project_and_wait("Resume XL", [image_folder(tmp_path / "src")])
    run = project.new_run_dir()
    config = TrainConfig(subject="a cat", steps=10)
    config.save(run / "config.json")
    runs.create_run(run, {"model": "shapeworld-xl", "device": "cpu"}, config)
    view = window.training_view
    launched = []
    monkeypatch.setattr(view, "_launch", lambda config, run_dir, resume, spec, device, confirmed=False:
                        launched.append(spec) or True)
    assert view.model_combo.currentData() == "shapeworld"
    assert view.resume_run(run)
    assert launched == ["shapeworld-xl"] and view.model_combo.currentData() == "shapeworld-xl"
    assert "Shape World XL" in window.model_label.text()


def test_choosing_a_concept_selects_the_model_it_was_trained_on(window, qtbot):
    # Walkthrough: an SDXL concept trained on Shape World XL was chosen in the Gallery with the SD
    # Shape World model still selected, so Generate only said the families differ.
    gallery = window.gallery_view
    library = window.context.library()
    library.add(Concept("xl-ice", "<xl-ice>", torch.randn(1, 32), {"base_model": "shapeworld-xl"}))
    window.context.library_changed.emit()
    qtbot.waitUntil(lambda: "xl-ice" in gallery.concept_names() and not gallery.library_runner.busy, timeout=15000)
    gallery.choose_concepts([])
    assert gallery.model_combo.currentData() == "shapeworld"
    gallery.choose_concepts(["xl-ice"])
    assert gallery.model_combo.currentData() == "shapeworld-xl"


def test_each_project_keeps_the_model_it_trains_on(window, tmp_path, monkeypatch):
    # A project trained on Shape World XL reopens with XL chosen; another project does not inherit it.
    view = window.training_view
    monkeypatch.setattr(view, "_launch", lambda *a, **k: True)
    xl_project = window.create_project_and_wait("On XL", [image_folder(tmp_path / "a")])
    view.set_project(xl_project)
    view.form.set_value("subject", "a star")
    view.model_combo.setCurrentIndex(view.model_combo.findData("shapeworld-xl"))
    assert view.start()
    window.settle()
    assert xl_project.train_defaults["model"] == "shapeworld-xl"
    other = window.create_project_and_wait("Plain", [image_folder(tmp_path / "b")])
    assert window.context.project.folder == other.folder
    assert view.model_combo.currentData() == "shapeworld"
    window.open_project_and_wait(xl_project.folder)
    assert view.model_combo.currentData() == "shapeworld-xl"


def test_a_closest_word_clicked_after_a_run_goes_into_the_subject_words(window, tmp_path):
    # The line after a Lego run names the closest words and says to add a subject word among them to
    # the subject words: each word is a link that does it, in the form the next Start uses.
    from lego_studio.core.run_files import TrainEvent

    view = window.training_view
    view.form.set_value("subject", "a star")
    view._run_method = "lego"
    view._on_event(TrainEvent("closest", message="Closest words to the concept: cage, yellow, melting. If one of them "
                              "describes your subject rather than the concept ...", words=["cage", "yellow", "melting"]))
    text = view.closest_label.text()
    assert '<a href="yellow">yellow</a>' in text and "Click a word to add it." in text
    view.closest_label.linkActivated.emit("yellow")
    assert view.form.value("subject") == "a yellow star"
    assert "a yellow star" in view.status_label.text() and "Start training" in view.status_label.text()
    # A run that added to the subject words from the masks says so first (separation.trained_with_line).
    from lego_studio.core.separation import trained_with_line

    line = trained_with_line({"subject": "a purple object", "training_subject": "a purple heart", "subject_name": "heart"})
    assert line == "Trained with the subject words \u201ca purple heart\u201d (\u201cheart\u201d from the masks' outline)."
    view._on_event(TrainEvent("closest", words=["melting", "jia"], trained_with=line))
    text = view.closest_label.text()
    assert text.startswith("Trained with the subject words \u201ca purple heart\u201d") and '<a href="jia">jia</a>' in text
    # Textual Inversion has no subject words: its words are shown, not linked.
    view._run_method = "ti"
    view._on_event(TrainEvent("closest", message="Closest words to the concept: cage, yellow.", words=["cage", "yellow"]))
    assert "<a " not in view.closest_label.text() and "cage, yellow" in view.closest_label.text()
