"""The Training place before and during a run: the expected duration, the long-run question, the
memory line, and the warning when the built-in model meets pictures it does not know."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from PySide6.QtWidgets import QMessageBox

from lego_studio.core import estimate, memory
from lego_studio.core.project import Project
from lego_studio.core.settings import Settings

pytestmark = pytest.mark.gui


class Questions:
    def __init__(self, answer):
        self.answer, self.texts = answer, []

    def __call__(self, parent, title, text, *args, **kwargs):
        self.texts.append(text)
        return self.answer


@pytest.fixture
def make_window(open_window, tiny_model_dir):
    def make(with_tiny=False):
        settings = Settings.load()
        if with_tiny:
            settings.add_model(tiny_model_dir, name="tiny")
        return open_window(settings)

    return make


def open_project(window, tmp_path, images):
    folder = tmp_path / "src"
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"ex{i}.png")
    project, _problems = Project.create_from_folder(folder, tmp_path / "project", name="P", subject="a toy")
    return window.open_project_and_wait(project.folder)


def photos():
    import numpy as np

    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((48, 64, 3)) * 255).astype("uint8")) for _ in range(3)]


def tiny_cpu_project(make_window, tmp_path, steps):
    """A window training the random tiny model on the CPU, with a project of 3 photos open."""
    window = make_window(with_tiny=True)
    training = window.training_view
    open_project(window, tmp_path, photos())
    training.model_combo.setCurrentIndex(training.model_combo.findData(str(window.context.settings.models[0].spec)))
    training.device_combo.setCurrentText("cpu")
    training.form.set_value("steps", steps)
    return window, training


def test_small_images_are_named_beside_the_memory_plan(make_window, qtbot, tmp_path):
    import numpy as np

    window = make_window(with_tiny=True)
    training = window.training_view
    rng = np.random.default_rng(0)
    open_project(window, tmp_path, [Image.fromarray((rng.random((12, 12, 3)) * 255).astype("uint8")) for _ in range(2)])
    training.model_combo.setCurrentIndex(training.model_combo.findData(str(window.context.settings.models[0].spec)))
    training.device_combo.setCurrentText("cpu")
    training.form.set_value("steps", 1)
    assert training.start()
    qtbot.waitUntil(lambda: not training.is_running(), timeout=120000)
    assert not training.plan_label.isHidden(), training.status_label.text()
    assert "2 of 2 images are much smaller than the 32 px training size" in training.plan_label.text()


def test_start_does_no_file_work_on_the_ui_thread(make_window, qtbot, tmp_path, ui_thread_file_work):
    # Start used to save project.json (with fsync), make the run folder, read step_times.json and
    # ask the library about the name on the UI thread: a slow disk froze the window at every Start.
    window, training = tiny_cpu_project(make_window, tmp_path, steps=1)
    training.form.set_value("subject", "a toy robot")  # a field typed here is stored in the project too
    window.settle()
    seen = ui_thread_file_work(str(tmp_path))  # the project, step_times.json, the library, the settings
    assert training.start()
    qtbot.waitUntil(lambda: training.runner.busy, timeout=30000)  # the run has started
    found = list(seen)
    ui_thread_file_work()  # stop recording (the checks below read files)
    qtbot.waitUntil(lambda: not training.is_running(), timeout=120000)
    assert found == []
    project = Project.open(tmp_path / "project")
    assert project.subject == "a toy robot" and project.train_defaults["steps"] == 1
    runs = list((tmp_path / "project" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "run.json").is_file()
    assert training.last_concept_path is not None and training.last_concept_path.is_file(), training.status_label.text()


def test_shapeworld_model_with_foreign_images_says_so_and_points_to_settings(make_window, qtbot, tmp_path):
    window = make_window()
    training = window.training_view
    assert training.is_shapeworld_model()
    open_project(window, tmp_path, photos())
    qtbot.waitUntil(lambda: not training.foreign_label.isHidden(), timeout=30000)
    text = training.foreign_label.text()
    assert "only knows Shape World pictures" in text and "Settings" in text
    # The link opens Settings (where a Stable Diffusion model is added).
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    seen = []

    def close_dialog():
        dialog = QApplication.activeModalWidget()
        seen.append(dialog.windowTitle() if dialog is not None else None)
        if dialog is not None:
            dialog.reject()

    QTimer.singleShot(300, close_dialog)
    training.foreign_label.linkActivated.emit("settings")
    assert seen == ["Settings"]


def test_shapeworld_renders_raise_no_warning(make_window, qtbot, tmp_path):
    import random

    from lego_studio.shapeworld.render import render

    window = make_window()
    training = window.training_view
    rng = random.Random(0)
    open_project(window, tmp_path, [render("circle", "red", "frozen in ice", rng)[0] for _ in range(3)])
    qtbot.waitUntil(lambda: not training.check_runner.busy and bool(training._foreign), timeout=30000)
    assert list(training._foreign.values()) == [""]
    assert training.foreign_label.isHidden()


def test_a_long_run_asks_before_it_starts(make_window, qtbot, tmp_path, monkeypatch):
    window = make_window()
    training = window.training_view
    open_project(window, tmp_path, photos())
    training.form.set_value("steps", 500)
    key = estimate.figure_key("shapeworld", training.device_combo.currentText(), "lego", None, 1)
    estimate.record_figure(key, 70.0, 5, "cpu")
    training.update_estimate()  # the figures are read again off the UI thread
    qtbot.waitUntil(lambda: "about 9 h 43 min" in training.estimate_label.text(), timeout=10000)
    questions = Questions(QMessageBox.StandardButton.No)
    monkeypatch.setattr(QMessageBox, "question", questions)
    assert not training.start()
    assert len(questions.texts) == 1
    assert "about 9 h 43 min" in questions.texts[0] and "fewer steps (51 steps" in questions.texts[0]
    assert "a GPU" in questions.texts[0]
    assert training.status_label.text().startswith("Not started: this run is expected to take about 9 h 43 min")
    assert not training.runner.busy and not list((tmp_path / "project" / "runs").glob("*"))


def test_timed_estimate_memory_line_and_a_no_cancels_a_long_run(make_window, qtbot, tmp_path, monkeypatch):
    window, training = tiny_cpu_project(make_window, tmp_path, steps=6)
    training.form.set_value("checkpoint_every", 1)
    assert "measured on the first two steps" in training.estimate_label.text()
    # A machine with little memory free, and every run counts as long: the app must say both.
    monkeypatch.setattr(memory, "free_memory", lambda device: int(memory.MIN_HEADROOM_BYTES) + 1)
    monkeypatch.setattr(estimate, "LONG_RUN_SECONDS", 0.0)
    questions = Questions(QMessageBox.StandardButton.No)
    monkeypatch.setattr(QMessageBox, "question", questions)
    assert training.start()
    qtbot.waitUntil(lambda: not training.is_running(), timeout=120000)
    assert len(questions.texts) == 1 and "The fastest option is fewer steps" in questions.texts[0]
    assert training.estimate_label.text().startswith("Expected duration: about")
    assert "timed on its first steps" in training.estimate_label.text()
    assert not training.plan_label.isHidden()
    assert "turned on split UNet batching and gradient checkpointing" in training.plan_label.text()
    run_dir = training._run_dir
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["unet_batching"] == "split" and saved["gradient_checkpointing"] is True
    assert "Cancelled" in training.status_label.text()
    qtbot.waitUntil(lambda: not training.runs_loading, timeout=10000)
    assert run_dir in training.resumable_runs()
    # The figure is remembered: the next start shows the estimate before it runs.
    training.update_estimate()
    qtbot.waitUntil(lambda: "from an earlier run on this machine" in training.estimate_label.text(), timeout=10000)


def test_a_yes_to_the_long_run_question_trains_to_the_end_and_the_run_waits_while_asked(make_window, qtbot, tmp_path,
                                                                                     monkeypatch):
    """The run stops between steps while the question is open (even on a machine fast enough to
    finish all its steps before the UI thread sees the estimate), and a yes lets it run to the end."""
    import time

    window, training = tiny_cpu_project(make_window, tmp_path, steps=8)
    monkeypatch.setattr(estimate, "LONG_RUN_SECONDS", 0.0)
    steps_seen_by_the_worker = []
    seen = []
    training.event_received.connect(lambda event: seen.append(getattr(event, "step", 0)))

    class Slow(Questions):
        def __call__(self, *args, **kwargs):
            time.sleep(1.0)  # the question stays open; the worker must not train meanwhile
            log = training._run_dir / "log.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            steps_seen_by_the_worker.append(len([line for line in lines if '"step"' in line]))
            return super().__call__(*args, **kwargs)

    questions = Slow(QMessageBox.StandardButton.Yes)
    monkeypatch.setattr(QMessageBox, "question", questions)
    assert training.start()
    qtbot.waitUntil(lambda: not training.is_running(), timeout=120000)
    assert len(questions.texts) == 1
    assert steps_seen_by_the_worker and steps_seen_by_the_worker[0] <= 3, steps_seen_by_the_worker
    assert max(seen) == 8
    assert "Cancelled" not in training.status_label.text() and "paused" not in training.status_label.text().lower()
    assert len(window.context.library().names()) == 1  # the concept was trained and added


def test_a_start_overtaken_by_opening_another_project_leaves_no_empty_run(make_window, qtbot, tmp_path):
    # Start's file work runs in the background; a project opened meanwhile stops the start, and the
    # run folder already made for it used to stay behind, empty, in the first project's runs.
    window, training = tiny_cpu_project(make_window, tmp_path, steps=1)
    first = window.context.project
    other = window.create_project_and_wait("Other", [tmp_path / "project" / "images"])
    window.open_project_and_wait(first.folder)
    training.device_combo.setCurrentText("cpu")
    training.form.set_value("steps", 1)
    window.settle()
    assert training.start()
    window.projects_view.open_project(other.folder)  # queued right behind Start's first step
    window.settle()
    qtbot.waitUntil(lambda: not training.is_running(), timeout=60000)
    assert window.context.project.folder == other.folder
    assert "another project was opened" in training.status_label.text()
    runs = first.folder / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
