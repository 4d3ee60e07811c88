"""Training place: every TrainConfig option (presets Lego / Textual Inversion baseline), model and
device, start / pause / resume / cancel, progress with ETA, live loss curves, preview thumbnails,
and the project's runs — an interrupted run shows as resumable and continues from its checkpoint.

Training runs in a worker thread; the trainer's events come back as Qt signals, so the UI stays
responsive (a test measures the event-loop stall). A finished concept goes into the library.
No file work on the UI thread: the time figures for the estimate are read in a worker; Start checks
the library for the name, saves the project's settings and makes the run folder in the context's
serial writer, then starts the run.
"""

from __future__ import annotations

import html
import threading
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from lego_studio.core import runs
from lego_studio.core.errors import LegoError
from lego_studio.core.estimate import format_duration
from lego_studio.core.model_specs import BUILTIN_MODELS
from lego_studio.core import separation
from lego_studio.core.train_config import SETTINGS, TrainConfig
from lego_studio.ui import project_io
from lego_studio.ui.loss_chart import LossChart
from lego_studio.ui.mask_canvas import pil_to_qimage
from lego_studio.ui.model_cache import refill_model_combos
from lego_studio.ui.run_list import RunsList
from lego_studio.ui.train_form import (PRESETS, ConfigForm, app_defaults, explicit_memory_settings,
                                       settings_to_remember)
from lego_studio.ui.wheel_guard import guard_wheel
from lego_studio.ui.words_note import SubjectWordsNote
from lego_studio.ui.workers import LatestReader, TaskRunner
from lego_studio.ui.layouts import install_two_pane_layout

PREVIEW_THUMB = 96
# The estimate timed on the first steps is shown until this step; then the live ETA takes over.
ESTIMATE_SHOWN_UNTIL_STEP = 10
class TrainingView(QWidget):
    concept_trained = Signal(object)  # path of the library entry
    event_received = Signal(object)  # every TrainEvent, after the view handled it
    settings_requested = Signal()  # the foreign-images line's link

    def __init__(self, context, parent: QWidget | None = None):
        super().__init__(parent)
        self.context = context
        self.runner = TaskRunner(self)
        self._pause = threading.Event()  # read by the trainer between steps (its paused() control)
        self._asking = threading.Event()  # set by the worker while a long run waits for the user's answer
        self.check_runner = TaskRunner(self)  # the foreign-images check (judge), off the UI thread
        self.plan_runner = TaskRunner(self)  # the image-size notes before Start (reads image headers)
        self.runs_runner = LatestReader(self)  # reads the project's runs (run.json, log.jsonl) for the list
        self.figures_runner = LatestReader(self)  # reads the time figures (step_times.json) for the estimate
        self._figures: dict = {}  # the time figures, as last read
        self._figures_shown = True  # the reading in progress updates the estimate line
        self._starting = False  # Start is checking the name and making the run folder (in the writer)
        self._wanted_run: Path | None = None  # a run to select once the list has been read
        self._plan_key = None  # what the plan line shown was worked out for
        self._plan_pending = False
        self._foreign: dict = {}  # (spec, images) -> warning or ""
        self._foreign_pending = False
        self._long_confirmed = False
        self._run_dir: Path | None = None
        self._eta_before_pause = ""
        self._run_method = ""
        self._project_folder: Path | None = None
        self.last_concept_path: Path | None = None
        self.last_error = ""

        # --- left: options
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(PRESETS))
        self.preset_combo.setToolTip("Lego: all terms on. Textual Inversion baseline: one vector, no masks, no Lego terms.")
        self.preset_combo.currentTextChanged.connect(lambda text: self.form.apply_preset(PRESETS[text]))
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Base model (add models in Settings)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.device_combo.setToolTip("auto: CUDA, then Apple MPS, then CPU")
        top = QFormLayout()
        top.addRow("Preset:", self.preset_combo)
        top.addRow("Model:", self.model_combo)
        top.addRow("Device:", self.device_combo)
        self.form = ConfigForm()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.form)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addLayout(top)
        left_layout.addWidget(scroll, 1)
        left.setMinimumWidth(360)

        # --- right: controls, progress, chart, previews, runs
        self.start_button = QPushButton("Start training")
        self.start_button.clicked.connect(self.start)
        self.pause_button = QPushButton("Pause")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the current step; a checkpoint is written so the run can be resumed")
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        for button in (self.start_button, self.pause_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m steps")
        # Room for the widest count, centred: the text's leading digit was clipped at the bar's edge.
        self.progress.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.progress.setMinimumWidth(self.progress.fontMetrics().horizontalAdvance("888888 / 888888 steps") + 40)
        self.eta_label = QLabel("ETA —")
        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)
        self.estimate_label = QLabel()
        self.estimate_label.setWordWrap(True)
        self.estimate_label.setToolTip("Measured on this machine: an earlier run's time per step, or this run's first steps")
        self.plan_label = QLabel()
        self.plan_label.setWordWrap(True)
        self.plan_label.hide()
        # Vague subject words ("an object"), or words that name no colour where the masks show one:
        # said before Start, with a suggestion (a colour is a link that adds it); Start still runs.
        self.words_note = SubjectWordsNote(context, on_word=self.add_subject_word, on_read=self.update_estimate)
        self.words_label = self.words_note.label
        # After a run: the words closest to the learned concept, and what a subject word there means.
        self.closest_label = QLabel()
        self.closest_label.setWordWrap(True)
        self.closest_label.setTextFormat(Qt.TextFormat.RichText)
        self.closest_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.closest_label.setToolTip("The vocabulary words whose embeddings point most nearly the way the learned "
                                      "vector does. A word for your subject's own look here is a look the subject "
                                      "words left out, gone into the concept. After a Lego run, click it to add it to "
                                      "the subject words.")
        self.closest_label.linkActivated.connect(self.add_subject_word)
        self.closest_label.hide()
        self.foreign_label = QLabel()
        self.foreign_label.setWordWrap(True)
        self.foreign_label.setTextFormat(Qt.TextFormat.RichText)
        self.foreign_label.setStyleSheet("color: #a15c00;")
        self.foreign_label.linkActivated.connect(lambda _link: self.settings_requested.emit())
        self.foreign_label.hide()
        progress_row = QHBoxLayout()
        progress_row.addWidget(self.progress, 1)
        progress_row.addWidget(self.eta_label)
        self.chart = LossChart()
        self.previews = QListWidget()
        self.previews.setViewMode(QListView.ViewMode.IconMode)
        self.previews.setIconSize(QSize(PREVIEW_THUMB, PREVIEW_THUMB))
        self.previews.setFlow(QListView.Flow.LeftToRight)
        self.previews.setWrapping(False)
        self.previews.setFixedHeight(PREVIEW_THUMB + 40)
        self.runs_list = RunsList()
        self.runs_list.setMaximumHeight(130)
        self.runs_list.currentRowChanged.connect(lambda _: self._update_buttons())
        self.resume_button = QPushButton("Resume selected run")
        self.resume_button.setToolTip("Continue an interrupted or cancelled run from its last checkpoint")
        self.resume_button.clicked.connect(self.resume_selected)
        runs_header = QHBoxLayout()
        runs_header.addWidget(QLabel("<b>Runs</b>"))
        runs_header.addStretch(1)
        runs_header.addWidget(self.resume_button)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addLayout(buttons)
        right_layout.addLayout(progress_row)
        right_layout.addWidget(self.status_label)
        right_layout.addWidget(self.estimate_label)
        right_layout.addWidget(self.plan_label)
        right_layout.addWidget(self.words_label)
        right_layout.addWidget(self.closest_label)
        right_layout.addWidget(self.foreign_label)
        right_layout.addWidget(QLabel("<b>Loss</b> (smoothed)"))
        right_layout.addWidget(self.chart, 2)
        right_layout.addWidget(QLabel("<b>Previews</b>"))
        right_layout.addWidget(self.previews)
        right_layout.addLayout(runs_header)
        right_layout.addWidget(self.runs_list)

        install_two_pane_layout(self, left, right)

        context.project_changed.connect(self.set_project)
        context.project_edited.connect(self.refresh_runs)
        context.project_fields_changed.connect(self.show_project_fields)
        context.settings_changed.connect(self.refresh_models)
        context.project_edited.connect(self.check_foreign_images)
        context.project_edited.connect(self.update_plan)
        context.project_edited.connect(lambda: self.words_note.read_colour(context.project))
        context.masks_changed.connect(lambda _image: self.words_note.read_colour(context.project))
        self.form.changed.connect(self.update_estimate)
        self.form.changed.connect(self.update_words_note)
        self.form.widgets["resolution"].valueChanged.connect(lambda _v: self.update_plan())
        self.model_combo.currentIndexChanged.connect(
            lambda _i: (self.update_estimate(), self.check_foreign_images(), self.update_plan()))
        self.device_combo.currentIndexChanged.connect(lambda _i: self.update_estimate())
        # A run records its time figure: read them again when it ends, for the next Start's question.
        self.runner.busy_changed.connect(lambda busy: busy or self._read_figures(show=False))
        self.refresh_models()
        self.set_project(context.project)
        self.update_estimate()
        guard_wheel(self)  # the wheel scrolls the form; it edits a setting only when focused

    # ------------------------------------------------------------ state
    def is_running(self) -> bool:
        """Whether a run is starting or running."""
        return self.runner.busy or self._starting

    def refresh_models(self) -> None:
        refill_model_combos(self.model_combo, self.device_combo, self.context.settings)
        self.update_estimate()
        self.check_foreign_images()

    # ------------------------------------------------------------ estimate and checks
    def _choice(self) -> tuple[str, str]:
        return self.model_combo.currentData() or "shapeworld", self.device_combo.currentText() or "auto"

    def cached_estimate(self, config: TrainConfig | None = None):
        from lego_studio.core.estimate import estimate_from_cache, figure_key

        if config is None:
            try:
                config = self.form.config()
            except LegoError:
                return None
        spec, device = self._choice()
        key = figure_key(spec, device, config.method, config.resolution, config.batch_size)
        from lego_studio.core.subject_name import probe_steps_for

        return estimate_from_cache(key, config.total_steps, config.total_steps, device, figures=self._figures,
                                   probe_steps=probe_steps_for(config, self.words_note.has_masks))

    def update_estimate(self) -> None:
        """The expected duration of the run as set up now (a figure measured on this machine), from
        the figures as last read; they are read again in a worker (a run, here or in another
        process, may have recorded one) and the line follows."""
        if self.runner.busy:
            return
        self._show_estimate()
        self._read_figures()

    def _show_estimate(self) -> None:
        guess = self.cached_estimate()
        if guess is None:
            self.estimate_label.setText("Expected duration: measured on the first two steps after Start.")
        else:
            self.estimate_label.setText(guess.line()[0].upper() + guess.line()[1:] + ".")

    def _read_figures(self, show: bool = True) -> None:
        """Read the time figures again in the worker; with ``show``, the estimate line follows."""
        self._figures_shown = show or (self._figures_shown and self.figures_runner.loading)

        def read(state):
            from lego_studio.core.estimate import load_figures

            return load_figures()

        def done(figures) -> None:
            self._figures = figures
            if self._figures_shown and not self.runner.busy:
                self._show_estimate()

        self.figures_runner.read(read, on_done=done, on_error=lambda _message: None, name="figures")

    @property
    def estimate_loading(self) -> bool:
        """Whether the time figures are being read (the line shows the last reading meanwhile)."""
        return self.figures_runner.loading

    def is_shapeworld_model(self) -> bool:
        spec, _device = self._choice()
        if spec in BUILTIN_MODELS:
            return True
        entry = next((m for m in self.context.settings.models if m.spec == spec), None)
        return entry is not None and entry.family == "shapeworld"

    def check_foreign_images(self) -> None:
        """Warn (one line) when the built-in Shape World model would learn from pictures it does not
        know. The judge runs in a worker; the answer is remembered per model and image list."""
        project = self.context.project
        images = project_io.image_paths(project) if project is not None else []
        if not images or not self.is_shapeworld_model():
            self.foreign_label.hide()
            return
        key = (self._choice()[0], tuple(str(p) for p in images))
        if key in self._foreign:
            self._show_foreign(self._foreign[key])
            return
        if self.check_runner.busy:
            self._foreign_pending = True
            return

        def check(state):
            from lego_studio.shapeworld.recognise import foreign_images_warning

            return foreign_images_warning(images) or ""

        def done(warning):
            self._foreign[key] = warning
            self._after_check()

        self.check_runner.start(check, on_done=done, on_error=lambda _m: self._after_check(), name="foreign-images")

    def _after_check(self) -> None:
        self._foreign_pending = False
        self.check_foreign_images()  # shows the answer, or checks what changed meanwhile

    def _show_foreign(self, warning: str) -> None:
        if warning:
            self.foreign_label.setText(f'{warning} <a href="settings">Open Settings</a>')
            self.foreign_label.show()
        else:
            self.foreign_label.hide()

    def confirm_long_run(self, guess) -> bool:
        answer = QMessageBox.question(
            self,
            "A long training run",
            f"This run is expected to take about {format_duration(guess.seconds)} "
            f"({guess.seconds_per_step:.3g} s a step on {guess.device}, {guess.steps_left} steps).\n\n"
            f"The fastest option is {guess.fastest_option()}.\n\nTrain anyway?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    @property
    def _paused(self) -> bool:
        return self._pause.is_set()

    def set_project(self, project) -> None:
        """Show ``project``'s own training settings: the form is reset to the defaults, then the
        project's saved settings and fields are applied, so nothing leaks from the last project."""
        if project is not None and not self.runner.busy and project.folder != self._project_folder:
            self.clear_run_display()
        if project is not None and not self.runner.busy:
            saved = dict(project.train_defaults or {})
            method = saved.get("method") if saved.get("method") in PRESETS.values() else "lego"
            try:
                config = app_defaults(method, saved)
            except LegoError as exc:  # a hand-edited project.json: say so, use the defaults
                self.status_label.setText(str(exc))
                config = app_defaults(method)
            self.form.set_config(config)
            self.preset_combo.blockSignals(True)
            self.preset_combo.setCurrentText(next(k for k, v in PRESETS.items() if v == method))
            self.preset_combo.blockSignals(False)
            # The model this project last trained on (if still listed), else the default (listed first).
            listed = self.model_combo.findData(saved.get("model")) if saved.get("model") else -1
            self.model_combo.setCurrentIndex(max(0, listed))
            self.show_project_fields()
            self._project_folder = project.folder
        self.refresh_runs()
        self._update_buttons()
        self.check_foreign_images()
        self.update_plan()
        self.words_note.read_colour(self.context.project)
        self.update_words_note()

    def update_words_note(self) -> None:
        """The note on the subject words before Start (ui/words_note.py), when the run separates by them."""
        draft = self.form.draft()
        self.words_note.show(str(draft.subject or ""), separation.separates_by_words(draft), bool(draft.mask_colour),
                             bool(draft.mask_shape))

    def update_plan(self) -> None:
        """The plan line before Start: notes on the project's images at the training size (much
        smaller, far from square), worked out in a worker from the image headers and the chosen
        model's configs. A run shows its own plan (memory settings too) when it starts."""
        project = self.context.project
        if self.runner.busy:
            return
        images = project_io.image_paths(project) if project is not None else []
        resolution = self.form.value("resolution")
        spec = self._choice()[0]
        key = (spec, resolution, tuple(str(p) for p in images))
        if not images:
            self._plan_key = key
            self.plan_label.hide()
            return
        if key == self._plan_key:
            return
        if self.plan_runner.busy:
            self._plan_pending = True
            return

        def plan(state):
            from lego_studio.core.images import image_size_note
            from lego_studio.core.model_specs import native_resolution

            size = int(resolution or native_resolution(spec) or 0)
            note = image_size_note(images, size) if size else ""
            return note[0].upper() + note[1:] + "." if note else ""

        def done(note):
            self._plan_pending = False
            if not self.runner.busy:
                self._plan_key = key
                self.plan_label.setText(note)
                self.plan_label.setVisible(bool(note))
            self.update_plan()  # what changed meanwhile

        def failed(_message):
            self._plan_pending = False

        self.plan_runner.start(plan, on_done=done, on_error=failed, name="plan")

    def clear_run_display(self) -> None:
        """Forget the last run's progress, curves, previews and status: they belong to the project
        that ran it, not to the one opened now (and a new run starts from here too)."""
        self.chart.clear()
        self.previews.clear()
        self.progress.setRange(0, 100)
        self.progress.reset()  # as at start: an empty bar without a step count
        self.eta_label.setText("ETA —")
        self.status_label.setText("Ready.")
        self.plan_label.hide()
        self.closest_label.clear()
        self.closest_label.hide()
        self._plan_key = None  # the plan line before Start is worked out again

    def show_project_fields(self) -> None:
        """The project's name, subject and word lists (edited in Projects) into the form."""
        project = self.context.project
        if project is None or self.runner.busy:
            return
        self.form.set_value("name", project.concept_name)
        self.form.set_value("subject", project.subject)
        self.form.set_value("positive_words", project.positive_words)
        self.form.set_value("negative_words", project.negative_words or None)

    def remember_settings(self, project, config: TrainConfig, model: str | None = None) -> None:
        """Store the form's settings in the project (train_form.settings_to_remember: the fields
        typed here, the settings that differ from the app's defaults), in the writer; then
        ``project_fields_changed`` when fields changed (Start does the same in its own job)."""
        fields, store = self._settings_job(project, config, model)
        context = self.context

        def saved(_result) -> None:
            if fields:
                context.project_fields_changed.emit()

        context.writes.submit(store, on_done=saved)

    @staticmethod
    def _settings_job(project, config: TrainConfig, model: str | None):
        """``(fields, store)``: the project fields the form changed, and the writer job that stores
        them with the form's settings (train_form.settings_to_remember)."""
        fields, train_defaults = settings_to_remember(project, config, model)
        return fields, lambda: project_io.store_training_settings(project, fields, train_defaults)

    def refresh_runs(self) -> None:
        """Read the project's runs in a worker (every run's record and log: file work that grows
        with the runs) and show them; a refresh asked for meanwhile reads again after."""
        project = self.context.project
        if project is None:
            self.runs_list.fill([], None, "")
            return

        def done(result):
            infos, resumable = result
            if self.context.project is project:
                ours = self._run_dir if self.runner.busy else None
                self.runs_list.fill(infos, ours, self._our_status(), resumable)
                if ours is not None and self.progress.maximum() > 0:  # steps seen since the reading
                    self._show_current_run_step(self.progress.value(), self.progress.maximum())
                if self._wanted_run is not None:
                    self.runs_list.select(self._wanted_run)
                    self._wanted_run = None
                self._update_buttons()

        def failed(message):
            self.status_label.setText(f"Could not read the runs: {message}")

        def read(state):
            infos = project.runs()
            return infos, {info.path for info in infos if info.resumable}

        self.runs_runner.read(read, on_done=done, on_error=failed, name="runs")

    @property
    def runs_loading(self) -> bool:
        """Whether the runs list is being read (it shows the last reading meanwhile)."""
        return self.runs_runner.loading

    def _show_current_run_step(self, step: int, total: int) -> None:
        if self._run_dir is not None:
            self.runs_list.show_step(self._run_dir, self._run_method, self._our_status(), step, total)

    def _our_status(self) -> str:
        return "paused" if self._paused else "training now"

    def select_run(self, run_dir: Path) -> None:
        """Select ``run_dir``'s line now, and again when a reading in progress fills the list."""
        self.runs_list.select(run_dir)
        self._wanted_run = run_dir if self.runs_loading else None

    def resumable_runs(self) -> list[Path]:
        return self.runs_list.resumable()

    def _update_buttons(self) -> None:
        busy = self.is_running()
        has_project = self.context.project is not None
        self.start_button.setEnabled(has_project and not busy)
        self.pause_button.setEnabled(self.runner.busy)
        self.cancel_button.setEnabled(self.runner.busy)
        self.pause_button.setText("Resume" if self._paused else "Pause")
        self.resume_button.setEnabled(not busy and self.runs_list.selected_resumable() is not None)
        self.preset_combo.setEnabled(not busy)
        # The run uses the model and device it started with: changing them mid-run would only
        # mislead (the status bar names the chosen model).
        self.model_combo.setEnabled(not busy)
        self.device_combo.setEnabled(not busy)
        self.form.setEnabled(not busy)

    # ------------------------------------------------------------ commands
    def start(self) -> bool:
        """Start a run of the form's settings on the open project. What needs no file is checked
        here (the form, images listed, the long-run question from the figures read); then, off the
        UI thread, in the context's writer: the library is asked whether it has the concept's name
        (a taken name is asked about now, not after the whole run), the settings are stored in the
        project and the run folder is made; then the run starts. Returns whether Start went ahead
        (``is_running()`` from then on; the status line says why a run did not start after all)."""
        project = self.context.project
        if project is None:
            self.status_label.setText("Open a project first.")
            return False
        if self.is_running():
            return False
        try:
            config = self.form.config()
        except LegoError as exc:
            self.status_label.setText(str(exc))
            return False
        if not project.images:
            self.status_label.setText("The project has no images yet: add some in Projects.")
            return False
        guess = self.cached_estimate(config)
        if guess is not None and guess.long and not self.confirm_long_run(guess):
            self.status_label.setText(f"Not started: {guess.warning()}.")
            return False
        spec = self.model_combo.currentData() or "shapeworld"
        device = self.device_combo.currentText()
        confirmed = guess is not None and guess.long
        settings = self.context.settings

        def check_name():
            from lego_studio.core.library import ConceptLibrary, library_name

            library = ConceptLibrary(settings.library_path())
            wanted = library_name(config.name)
            return library, wanted, (library.free_name(wanted) if wanted in library else None)

        def checked(result) -> None:
            if self.context.project is not project:
                self._not_started("Not started: another project was opened meanwhile.")
                return
            library, wanted, free_name = result
            on_conflict = "error" if free_name is None else self.ask_name_clash(wanted, free_name)
            if on_conflict is None:
                self._not_started(f"Not started: the library already has <{config.name}>; "
                                  f'change "{SETTINGS["name"].label}" or choose Replace or Keep both.')
                return
            fields, store_settings = self._settings_job(project, config, spec)

            def prepare():
                store_settings()
                return project.new_run_dir(), project.training_inputs()

            def prepared(result) -> None:
                run_dir, images_and_masks = result
                if fields:
                    self.context.project_fields_changed.emit()
                if self.context.project is not project:
                    # Nothing ran in it: the empty run folder goes, so the runs list shows no ghost run.
                    self.context.writes.submit(lambda: project.discard_run_dir(run_dir))
                    self._not_started("Not started: another project was opened meanwhile.")
                    return
                self._starting = False
                self._launch(config, run_dir, resume=False, spec=spec, device=device, confirmed=confirmed,
                             on_conflict=on_conflict, library=library, images_and_masks=images_and_masks)

            self.context.writes.submit(prepare, on_done=prepared, on_error=self._not_started)

        self._starting = True
        self._update_buttons()
        self.status_label.setText(f"Starting {config.placeholder} ({config.method})…")
        self.context.writes.submit(check_name, on_done=checked, on_error=self._not_started)
        return True

    def _not_started(self, message: str) -> None:
        self._starting = False
        self.status_label.setText(message)
        self._update_buttons()

    def resume_selected(self) -> bool:
        run_dir = self.runs_list.selected_resumable()
        return self.resume_run(run_dir) if run_dir is not None else False

    def resume_run(self, run_dir: Path) -> bool:
        try:
            config = TrainConfig.load(run_dir / "config.json")
            saved = runs.run_inputs(run_dir)  # the model and device it was started with
        except LegoError as exc:
            self.status_label.setText(str(exc))
            return False
        spec = saved.get("model") or self.model_combo.currentData() or "shapeworld"
        device = saved.get("device") or self.device_combo.currentText()
        listed = self.model_combo.findData(spec)
        if listed >= 0:  # show the model the run continues on (and the status bar names it)
            self.model_combo.setCurrentIndex(listed)
        self.form.set_config(config)
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentText("Lego" if config.method == "lego" else "Textual Inversion baseline")
        self.preset_combo.blockSignals(False)
        return self._launch(config, run_dir, resume=True, spec=spec, device=device)

    def _launch(self, config: TrainConfig, run_dir: Path, resume: bool, spec: str, device: str,
                confirmed: bool = False, on_conflict: str = "error", library=None, images_and_masks=None) -> bool:
        """Start the run in the worker. ``library`` (the concept library) and ``images_and_masks``
        (the project's training images and their masks) are read there when not given."""
        project = self.context.project
        explicit = explicit_memory_settings(config)
        self._long_confirmed = confirmed
        subject_images = project_io.subject_image_paths(project)
        models = self.context.models
        settings = self.context.settings
        pause = self._pause
        pause.clear()
        asking = self._asking
        asking.clear()

        def train(state):
            from lego_studio.core.estimate import figure_key
            from lego_studio.core.library import ConceptLibrary
            from lego_studio.core.run_service import as_sentence, plan_run, start_run
            from lego_studio.core.run_files import TrainEvent

            images, masks = images_and_masks if images_and_masks is not None else project.training_inputs()
            concepts = library if library is not None else ConceptLibrary(settings.library_path())
            # The run's record (core/runs.py): which inputs, model and device, so that a resume
            # (also after a restart) uses the same ones. Written here: fsync is not for the UI thread.
            inputs = {"images": images, "masks": masks, "subject_images": subject_images, "model": spec, "device": device}
            runs.create_run(run_dir, inputs, config)
            with models.lease(spec, device, state=state) as model:
                state.check()
                # The Shape World check on the images ran before Start (check_foreign_images).
                plan = plan_run(model, config, images, masks, run_dir, inputs=inputs, subject_images=subject_images,
                                resume=resume, explicit=explicit,
                                figure_key=figure_key(spec, device, config.method, config.resolution, config.batch_size),
                                on_log=lambda line: state.emit(TrainEvent("log", message=line[0].upper() + line[1:])))
                if plan.notes:
                    state.emit(TrainEvent("plan", message=" ".join(as_sentence(note.text) for note in plan.notes)))

                def on_event(event):
                    if (resume and event.kind == "log" and str(event.message or "").startswith("resumed from")):
                        # The trainer has just cut its log back to the checkpoint: the run so far
                        # (losses and previews), read here, off the UI thread, goes first.
                        from lego_studio.core.run_history import read_history

                        state.emit(read_history(run_dir, upto=event.step))
                    state.emit(event)

                def on_estimate(guess):
                    # A long run stops between steps until the user has answered: set here, before
                    # the event reaches the UI thread, so a fast run cannot end before the question.
                    if guess.long and not confirmed:
                        asking.set()
                    state.emit(guess)

                concept = start_run(plan, on_event, cancel=lambda: state.cancelled,
                                    paused=lambda: pause.is_set() or asking.is_set(), on_estimate=on_estimate)
            from lego_studio.ui import library_io

            # A path, or NameTaken when a name taken meanwhile (or on a resume) is still to be asked about.
            return library_io.add_trained(concepts, plan.concept_path, concept, project, on_conflict=on_conflict)

        train = runs.holding(run_dir, train)  # one trainer per run folder; a failure before step 1 is recorded
        self._run_dir = run_dir
        self._run_method = config.method
        self.last_error = ""
        self.clear_run_display()
        self.chart.total_steps = config.total_steps
        self.progress.setRange(0, config.total_steps)
        self.progress.setValue(0)
        self.status_label.setText(("Resuming" if resume else "Starting") + f" {config.placeholder} ({config.method})…")
        started = self.runner.start(
            train,
            on_done=self._finished,
            on_error=self._failed,
            on_event=self._on_event,
            on_progress=lambda d, t, m: self.status_label.setText(m) if m else None,
            on_cancelled=self._cancelled,
            name="training",
        )
        self._update_buttons()
        self.refresh_runs()
        return started

    def toggle_pause(self) -> None:
        if not self.runner.busy:
            return
        if self._paused:
            self._pause.clear()
            self.status_label.setText("Training…")
            self.eta_label.setText(self._eta_before_pause or "ETA —")  # the next step brings a fresh one
        else:
            self._pause.set()
            self.status_label.setText("Paused after the current step. Press Resume to go on.")
            self._eta_before_pause = self.eta_label.text()
            self.eta_label.setText("paused")  # no time to count down while nothing runs
        self._show_current_run_step(self.progress.value(), self.progress.maximum())
        self._update_buttons()

    def cancel(self) -> None:
        # The trainer's cancel() control reads the task's cancel flag between steps; a paused
        # run wakes up to see it.
        self.runner.cancel()
        self.status_label.setText("Cancelling after the current step…")

    # ------------------------------------------------------------ events from the worker
    def _on_event(self, event) -> None:
        kind = getattr(event, "kind", "")
        if kind in ("step", "skipped"):
            self.progress.setMaximum(max(1, event.total))
            self.progress.setValue(event.step)
            if not self._paused:  # a step finishing just after Pause must not bring the ETA back
                self.eta_label.setText(f"ETA {format_duration(event.eta_s)}")
            self.chart.total_steps = event.total
            self.chart.add(event.step, event.losses)
            self._show_current_run_step(event.step, event.total)
            if event.eta_s is not None and event.step >= ESTIMATE_SHOWN_UNTIL_STEP:
                # From here the live ETA (measured over many steps) says it better than the
                # estimate timed on the first two; two different figures would only confuse.
                self.estimate_label.clear()
            if kind == "skipped":
                self.status_label.setText(event.message)
            elif not self._paused:
                rate = f" — {event.steps_per_s:.1f} steps/s" if event.steps_per_s else ""
                self.status_label.setText(f"Training: step {event.step} of {event.total}{rate}")
        elif kind == "preview":
            self._add_previews(event.step, event.images, event.path or "")
        elif kind == "history":  # a resumed run: everything before the checkpoint it continues from
            self.chart.clear()
            self.previews.clear()
            for step, losses in event.points:
                self.chart.add(step, losses)
            for step, images in event.previews:
                self._add_previews(step, images, "")
            self.progress.setValue(event.step)
        elif kind in ("log", "start"):
            if event.message:
                self.status_label.setText(event.message[0].upper() + event.message[1:])
        elif kind == "closest":  # the finished concept's closest words (core/separation.py)
            self._show_closest(event.words, event.trained_with)
        elif kind == "plan":  # notes on how the run was set up (memory settings, small images)
            self.plan_label.setText(event.message)
            self.plan_label.show()
        elif kind == "estimate":
            self._on_estimate(event)
        elif kind == "checkpoint":
            self.refresh_runs()
        self.event_received.emit(event)

    def _add_previews(self, step: int, images, path: str) -> None:
        for image in images:
            pixmap = QPixmap.fromImage(pil_to_qimage(image)).scaled(
                PREVIEW_THUMB, PREVIEW_THUMB, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation
            )
            item = QListWidgetItem(QIcon(pixmap), f"step {step}")
            item.setToolTip(path)
            self.previews.addItem(item)
        self.previews.scrollToBottom()

    def ask_name_clash(self, name: str, free_name: str) -> str | None:
        from lego_studio.ui.library_view import ask_name_clash

        return ask_name_clash(self, name, free_name)

    def _on_estimate(self, guess) -> None:
        """The first steps are timed: show the expected duration; a long run waits (paused) for
        the user's yes, and a no cancels it with a checkpoint (resumable)."""
        self.estimate_label.setText(guess.line()[0].upper() + guess.line()[1:] + ".")
        if not guess.long or self._long_confirmed or not self.runner.busy:
            self._asking.clear()
            return
        self._long_confirmed = True
        yes = self.confirm_long_run(guess)  # the worker waits between steps meanwhile (self._asking)
        if not yes:
            self.cancel()
            self.status_label.setText(f"Cancelling: {guess.warning()}.")
        self._asking.clear()  # a Pause the user pressed before stays in force (self._pause)

    def _show_closest(self, words: list[str], trained_with: str = "") -> None:
        """The closest-words line, after what the run added to the subject words (if anything); for
        a Lego run each word is a link that adds it to the subject words (the fix the line
        suggests), shown in the form for the next Start."""
        lego = self._run_method == "lego"
        text = separation.closest_words_note(words, self._run_method or "lego",
                                  shown=lambda w: f'<a href="{html.escape(w)}">{html.escape(w)}</a>' if lego else html.escape(w))
        text += " Click a word to add it." if lego and text else ""
        self.closest_label.setText(f"{html.escape(trained_with)} {text}".strip() if trained_with else text)
        self.closest_label.setVisible(bool(text))

    def add_subject_word(self, word: str) -> None:
        """Add ``word`` (a closest word or the masks' colour the user clicked) to the subject words in the form; the next
        Start trains with them and stores them in the project."""
        if self.runner.busy:
            return
        phrase = separation.add_subject_word(str(self.form.value("subject") or ""), word)
        self.form.set_value("subject", phrase)
        self.status_label.setText(f"Subject words: \u201c{phrase}\u201d. Start training to learn the concept with them.")

    def _finished(self, concept_path) -> None:
        from lego_studio.core.library import NameTaken

        if isinstance(concept_path, NameTaken):  # the library has a concept of this name: ask
            self._add_with_choice(concept_path)
            return
        self._pause.clear()
        self.last_concept_path = Path(concept_path)
        self.progress.setValue(self.progress.maximum())
        self.eta_label.setText("done")
        self.status_label.setText(f"Done. The concept is in your library: {Path(concept_path).name}")
        self.context.library_changed.emit()
        self.context.status_message.emit("Training finished; concept added to the library")
        self.concept_trained.emit(concept_path)
        self.refresh_runs()
        self._update_buttons()

    def _add_with_choice(self, clash) -> None:
        run_dir = self._run_dir
        choice = self.ask_name_clash(clash.name, clash.free_name)
        if choice is None:
            self._pause.clear()
            self.status_label.setText(f"Done. Not added to the library (it has a <{clash.name}>); "
                                      f"the concept is in {run_dir / 'concept.safetensors'}")
            self.refresh_runs()
            self._update_buttons()
            return
        library, project = self.context.library(), self.context.project

        def add(state):
            from lego_studio.core.concepts import load_concept
            from lego_studio.ui import library_io

            concept_file = run_dir / "concept.safetensors"
            return library_io.add_trained(library, concept_file, load_concept(concept_file), project, on_conflict=choice)

        self.runner.start(add, on_done=self._finished, on_error=self._failed, name="library-add")

    def _failed(self, message: str) -> None:
        self._pause.clear()
        self.last_error = message
        self.eta_label.setText("stopped")
        self.status_label.setText(f"Training stopped: {message}")
        self.refresh_runs()
        self._update_buttons()

    def _cancelled(self) -> None:
        self._pause.clear()
        self.eta_label.setText("cancelled")
        self.status_label.setText("Cancelled. The run can be resumed from its checkpoint.")
        self.refresh_runs()
        self._update_buttons()

    # ------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self.runner.shutdown(timeout_ms=120000)
        self.check_runner.shutdown()
        self.plan_runner.shutdown()
        self.runs_runner.shutdown()
        self.figures_runner.shutdown()

