"""The main window: a sidebar of places (Projects, Masks, Training, Gallery, Concept Library),
a status bar with device and model, window state remembered in the core settings."""

from __future__ import annotations

import gc
import html
import struct
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QHBoxLayout,
    QStackedWidget,
    QWidget,
)

from lego_studio.ui import icons
from lego_studio.ui.context import AppContext
from lego_studio.ui.workers import TaskRunner

PLACES = [
    ("projects", "Projects"),
    ("masks", "Masks"),
    ("training", "Training"),
    ("gallery", "Gallery"),
    ("library", "Concept Library"),
]
_STATE_MAGIC = b"LSW1"


def pack_window_state(geometry: bytes, state: bytes, place: int) -> bytes:
    """Geometry + dock/toolbar state + current place in one blob (Settings.window_state)."""
    return _STATE_MAGIC + struct.pack(">III", len(geometry), len(state), place) + geometry + state


def unpack_window_state(blob: bytes | None) -> tuple[bytes, bytes, int] | None:
    if not blob or not blob.startswith(_STATE_MAGIC) or len(blob) < 16:
        return None
    glen, slen, place = struct.unpack(">III", blob[4:16])
    body = blob[16:]
    if len(body) != glen + slen:
        return None  # written by something else: ignore rather than restore garbage
    return body[:glen], body[glen:], place


def app_log_path() -> Path:
    """Where the app writes the details of unexpected errors (ui/errors.py), without creating it."""
    from lego_studio.core import paths
    from lego_studio.ui.errors import LOG_NAME

    return paths.data_dir() / "logs" / LOG_NAME


class MainWindow(QMainWindow):
    def __init__(self, context: AppContext | None = None):
        super().__init__()
        self.context = context if context is not None else AppContext()
        self.setWindowTitle("Lego Studio")
        self.setWindowIcon(icons.app_icon())
        self.setAcceptDrops(True)
        self.resize(1280, 820)
        self._device_runner = TaskRunner(self)
        self._device_name = ""
        self.warmed_up = False  # model libraries imported (see detect_device)

        # Views are imported here, not at module top, so a failure in one is easy to trace;
        # none of them imports torch at construction time.
        from lego_studio.ui.gallery_view import GalleryView
        from lego_studio.ui.library_view import LibraryView
        from lego_studio.ui.masks_view import MasksView
        from lego_studio.ui.projects_view import ProjectsView
        from lego_studio.ui.training_view import TrainingView

        self.projects_view = ProjectsView(self.context)
        self.masks_view = MasksView(self.context)
        self.training_view = TrainingView(self.context)
        self.masks_view.training_config = self.training_view.form.draft
        self.gallery_view = GalleryView(self.context)
        self.library_view = LibraryView(self.context)
        self.views = {
            "projects": self.projects_view,
            "masks": self.masks_view,
            "training": self.training_view,
            "gallery": self.gallery_view,
            "library": self.library_view,
        }
        # A concept just trained is the one the user wants to see composed next.
        self.training_view.concept_trained.connect(
            lambda path: self.gallery_view.select_when_listed([Path(path).stem]))

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setIconSize(QSize(22, 22))
        self.sidebar.setFixedWidth(170)
        self.sidebar.setSpacing(2)
        self.stack = QStackedWidget()
        for index, (key, title) in enumerate(PLACES):
            item = QListWidgetItem(icons.place_icon(key), title)
            item.setToolTip(f"{title} (Ctrl+{index + 1})")
            item.setSizeHint(QSize(150, 36))
            self.sidebar.addItem(item)
            self.stack.addWidget(self.views[key])
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)
        central = QWidget()
        row = QHBoxLayout(central)
        row.setContentsMargins(4, 4, 4, 0)
        row.addWidget(self.sidebar)
        row.addWidget(self.stack, 1)
        self.setCentralWidget(central)

        self._build_menus()
        self.device_label = QLabel("Device: detecting…")
        self.model_label = QLabel()
        self.project_label = QLabel()
        for label in (self.project_label, self.model_label, self.device_label):
            self.statusBar().addPermanentWidget(label)
        self.context.status_message.connect(lambda text: self.statusBar().showMessage(text, 8000))
        # The status bar names the model Training will use: the one chosen there, not only the default.
        self.context.model_changed.connect(lambda name: self._show_model(self.training_view.model_combo.currentText() or name))
        self.training_view.model_combo.currentIndexChanged.connect(
            lambda _: self._show_model(self.training_view.model_combo.currentText()))
        self.context.project_changed.connect(self._on_project_changed)
        self.projects_view.open_masks_requested.connect(lambda: self.show_place("masks"))
        self.library_view.settings_requested.connect(self.open_settings)
        self.training_view.settings_requested.connect(self.open_settings)
        self._show_model(self.training_view.model_combo.currentText() or self.context.model_name())
        self._on_project_changed(self.context.project)
        self._base_minimum = self.minimumSizeHint()  # before any message could widen it
        self.show_place("projects")
        self._restore_state()
        self.context.refresh_recent_projects()
        if self.context.project is None:
            self.reopen_last_project()
        if self.context.settings.load_warning:
            QTimer.singleShot(0, lambda: self.context.status_message.emit(self.context.settings.load_warning))

    # ------------------------------------------------------------ places
    def show_place(self, key: str) -> None:
        index = [k for k, _ in PLACES].index(key)
        self.sidebar.setCurrentRow(index)

    def current_place(self) -> str:
        return PLACES[self.stack.currentIndex()][0]

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.new_action = QAction("&New Project…", self, shortcut=QKeySequence("Ctrl+N"))
        self.new_action.triggered.connect(self.projects_view.new_project)
        self.open_action = QAction("&Open Project…", self, shortcut=QKeySequence("Ctrl+O"))
        self.open_action.triggered.connect(self.projects_view.open_project_dialog)
        self.settings_action = QAction("&Settings…", self, shortcut=QKeySequence("Ctrl+,"))
        self.settings_action.triggered.connect(self.open_settings)
        quit_action = QAction("&Quit", self, shortcut=QKeySequence("Ctrl+Q"))
        quit_action.triggered.connect(self.close)
        for action in (self.new_action, self.open_action):
            file_menu.addAction(action)
        file_menu.addSeparator()
        file_menu.addAction(self.settings_action)
        file_menu.addSeparator()
        file_menu.addAction(quit_action)

        view_menu = self.menuBar().addMenu("&View")
        self.place_actions = []
        for index, (key, title) in enumerate(PLACES):
            action = QAction(title, self, shortcut=QKeySequence(f"Ctrl+{index + 1}"))
            action.triggered.connect(lambda _=False, k=key: self.show_place(k))
            view_menu.addAction(action)
            self.place_actions.append(action)

        help_menu = self.menuBar().addMenu("&Help")
        self.guide_action = QAction("&Getting Started", self, shortcut=QKeySequence("F1"))
        self.guide_action.triggered.connect(self._guide)
        help_menu.addAction(self.guide_action)
        about = QAction("&About Lego Studio", self)
        about.triggered.connect(self._about)
        help_menu.addAction(about)

    def open_settings(self) -> None:
        from lego_studio.ui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.context, self)
        if dialog.exec():
            self.context.apply_settings()

    def about_text(self) -> str:
        from lego_studio import __version__

        return (
            f"<b>Lego Studio {html.escape(__version__)}</b><p>Lego Studio teaches Stable Diffusion concepts "
            "that are not objects (adjectives and verbs) from a few images, offline.</p>"
            "<p>Method: Lego (ECCV 2024, arXiv 2311.13833); baseline: Textual Inversion.</p>"
            f"<p>Log file (errors with details): {html.escape(str(app_log_path()))}</p>"
        )

    def guide_text(self) -> str:
        """What to do first, what masks and subject words are for, and where files live."""
        settings = self.context.settings
        from lego_studio.core.settings import settings_path

        where = [
            ("Projects", settings.projects_path()),
            ("Concept library", settings.library_path()),
            ("Settings", settings_path()),
            ("Log file", app_log_path()),
        ]
        rows = "".join(f"<li>{name}: {html.escape(str(path))}</li>" for name, path in where)
        return (
            "<b>What to do first</b><ol>"
            "<li><b>Projects</b>: New Project, then add 3-10 pictures that all show the concept "
            "(e.g. things that are frozen), on whatever subjects you have.</li>"
            "<li>Type the <b>subject words</b>: what is in the pictures apart from the concept "
            "(e.g. “a toy robot”). Training explains the subject with them, so the concept "
            "does not learn what your subject looks like.</li>"
            f"<li><b>Masks</b>: paint where the subject is. {html.escape(self._masks_sentence())}</li>"
            "<li><b>Training</b>: Start training. The concept goes into the Concept Library. At the end "
            "Training shows the words closest to the concept: one that describes your subject (its "
            "colour, its shape) went into the concept: click it to add it to the subject words, and train "
            "again.</li>"
            "<li><b>Gallery</b>: draw the concept on other subjects (“a teapot &lt;frozen&gt;”), "
            "side by side with its Textual Inversion baseline, or with another concept.</li></ol>"
            "<p>Models: the built-in Shape World model works at once; add your own Stable Diffusion "
            "model in File ▸ Settings.</p>"
            f"<b>Where files live</b><ul>{rows}</ul>"
        )

    def _masks_sentence(self) -> str:
        """What masks do under the training settings in the form (the Masks page says the same)."""
        from lego_studio.ui.masks_view import masks_purpose

        try:
            config = self.training_view.form.draft()
        except Exception:  # noqa: BLE001 - a form value that cannot be read: the defaults' sentence
            config = None
        return masks_purpose(config)

    def _guide(self) -> None:
        box = QMessageBox(self)
        box.setWindowTitle("Getting started")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(self.guide_text())
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.open()

    def _about(self) -> None:
        QMessageBox.about(self, "About Lego Studio", self.about_text())

    # ------------------------------------------------------------ the last session
    def reopen_last_project(self) -> None:
        """Open the project that was open when the app last closed, off the UI thread (quietly: a
        project that is gone is passed over, one that cannot be opened any more is only mentioned
        in the status bar)."""
        folder = self.context.settings.last_project
        if not folder:
            return
        from lego_studio.ui import operations

        operations.open_project(self.context, Path(folder), only_if_there=True,
                                on_error=lambda message: self.context.status_message.emit(message))

    def offer_interrupted_run(self):
        """After a restart: offer to resume the open project's newest run whose process is gone
        (the app was closed during training, crashed, or the machine went down). Returns the
        run folder that was resumed, else None."""
        project = self.context.project
        if project is None or self.training_view.is_running():
            return None
        from lego_studio.core.runs import interrupted_runs

        runs = interrupted_runs(project.folder / "runs")
        if not runs:
            return None
        info = runs[0]
        total = info.total_steps or "?"
        answer = QMessageBox.question(
            self,
            "Resume training?",
            f"A training run of “{project.name}” was interrupted at step {info.step} of {total} "
            f"({info.method or 'lego'}, {info.id}). Resume it from its last checkpoint?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.Yes,
        )
        self.show_place("training")
        self.training_view.select_run(info.path)
        if answer != QMessageBox.StandardButton.Yes:
            return None
        return info.path if self.training_view.resume_run(info.path) else None

    # ------------------------------------------------------------ status bar
    def _show_model(self, name: str) -> None:
        self.model_label.setText(f"Model: {name}" if name else "Model: none (add one in Settings)")

    def _on_project_changed(self, project) -> None:
        self.project_label.setText(f"Project: {project.name}" if project is not None else "No project open")
        self.setWindowTitle(f"{project.name} — Lego Studio" if project is not None else "Lego Studio")

    def detect_device(self) -> None:
        """Find the compute device in a worker, then import the model libraries there too.

        Importing torch/diffusers/transformers takes seconds and holds Python's import lock and,
        in stretches, the GIL; done at start-up, behind an already visible window, it no longer
        freezes the UI in the middle of the user's first training or generation.
        """
        wanted = self.context.settings.default_device
        from lego_studio.ui.model_cache import model_choices

        choices = model_choices(self.context.settings)
        default_spec = choices[0][1] if choices else None
        models = self.context.models

        def detect(state):
            from lego_studio.core.devices import pick_device, use_app_cpu_threads

            use_app_cpu_threads()  # before any model work: see app_cpu_threads

            device = str(pick_device(wanted).type)
            state.emit(device)
            from lego_studio.core.model_stack import import_model_stack

            import_model_stack()  # the one thread-safe import every model path shares
            import lego_studio.core.generation  # noqa: F401
            import lego_studio.core.models  # noqa: F401

            if default_spec is not None:
                state.emit(f"Loading {default_spec}…")
                try:
                    models.preload(default_spec, wanted)
                except Exception as exc:  # noqa: BLE001 - a bad model is reported when used, not here
                    state.emit(f"Model not preloaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            return device

        self.warmed_up = False
        self._device_runner.start(
            detect,
            on_event=self._device_detected,
            on_done=self._warm,
            on_error=lambda msg: self.device_label.setText(f"Device: unavailable ({msg})"),
            name="device",
        )

    def _warm(self, device: str) -> None:
        # torch/diffusers/transformers and the model add millions of long-lived objects; a full
        # garbage collection walking them all pauses whichever thread triggers it (the UI thread
        # too) for 100+ ms. Freezing moves them out of the collector's sight for good.
        gc.freeze()
        # The UI thread too (torch is imported by now), so work it starts follows the same rule.
        from lego_studio.core.devices import use_app_cpu_threads

        use_app_cpu_threads()
        self.warmed_up = True
        self.statusBar().clearMessage()

    def _device_detected(self, message: str) -> None:
        if message not in ("cpu", "cuda", "mps"):
            self.statusBar().showMessage(message, 5000)
            return
        device = message
        self._device_name = device
        self.device_label.setText(f"Device: {device}")

    def device_name(self) -> str:
        return self._device_name

    # ------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            self.projects_view.add_paths(paths)
            self.show_place("projects")
            event.acceptProposedAction()

    # ------------------------------------------------------------ state
    def _restore_state(self) -> None:
        unpacked = unpack_window_state(self.context.settings.window_state)
        if unpacked is None:
            return
        geometry, state, place = unpacked
        if geometry:
            self.restoreGeometry(QByteArray(geometry))
        self.restoreState(QByteArray(state))
        if 0 <= place < len(PLACES):
            self.sidebar.setCurrentRow(place)

    def fits_screen(self) -> bool:
        """Whether the window fits its screen: one that a long message once pushed wider (or
        taller) than the screen is not a size to come back to."""
        screen = self.screen()
        if screen is None:
            return True
        available = screen.availableGeometry()
        frame = self.frameGeometry()
        extra = frame.size() - self.size()  # the window frame
        base = self._base_minimum  # what the window needs by itself, before any message
        return (frame.width() <= max(available.width(), base.width() + extra.width())
                and frame.height() <= max(available.height(), base.height() + extra.height()))

    def save_state(self) -> None:
        geometry = bytes(self.saveGeometry().data())
        if not self.fits_screen():  # keep the size saved before (or none: the default size)
            previous = unpack_window_state(self.context.settings.window_state)
            geometry = previous[0] if previous is not None else b""
        self.context.settings.window_state = pack_window_state(
            geometry, bytes(self.saveState().data()), self.stack.currentIndex()
        )
        self.context.save_settings()

    def shutdown_workers(self) -> None:
        """Quit and wait every worker thread (views first: they may hold training runs). A view
        whose last save fails (a read-only or full disk) does not stop the others: a thread that
        outlives the window makes Qt abort. The failure is reported in one line afterwards."""
        from lego_studio.ui.workers import shutdown_abandoned

        problems = []
        for view in self.views.values():
            try:
                view.shutdown()
            except Exception as exc:  # noqa: BLE001 - reported below, after every thread stopped
                problems.append(exc)
        for runner in [self._device_runner, *self.findChildren(TaskRunner)]:
            runner.shutdown()  # also the runners of a view whose shutdown failed half-way
        shutdown_abandoned()  # checks a closed dialog left running (Settings: OK never waits for them)
        # Last, the writes still queued (the last mask, fields, window state) land, then the writer stops.
        from lego_studio.core.errors import LegoError

        failures: list[str] = []

        def failed(message: str) -> None:
            failures.append(message)

        writes = self.context.writes
        writes.failed.connect(failed)
        try:
            writes.shutdown()
        finally:
            writes.failed.disconnect(failed)
        problems += [LegoError(message) for message in failures]
        for exc in problems:
            _report_on_quit(exc)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802
        if self.training_view.is_running():
            answer = QMessageBox.question(
                self,
                "Training is running",
                "Training is running. Stop it and quit? It can be resumed from its last checkpoint.",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        try:
            self.masks_view.flush_autosave()
            self.context.writes.drain()  # the last mask's save: did it land?
        except Exception as exc:  # noqa: BLE001 - a read-only or full disk must not stop a clean quit
            _report_on_quit(exc)
        lost, reason = self.masks_view.unsaved_masks()
        if lost:
            names = ", ".join(path.name for path in lost[:3]) + (f" and {len(lost) - 3} more" if len(lost) > 3 else "")
            answer = QMessageBox.question(
                self,
                "Masks not saved",
                f"The masks of {names} could not be saved ({reason}). They are lost if you quit now. "
                "Quit anyway? (No: free some space or fix the folder, then paint a stroke to save again.)",
            )
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        try:
            self.save_state()
        except Exception as exc:  # noqa: BLE001 - a read-only or full disk must not stop a clean quit
            _report_on_quit(exc)
        self.shutdown_workers()
        event.accept()


def _report_on_quit(exc: Exception) -> None:
    """A failure while quitting (the last save): one line on stderr for a disk or user error,
    the bug log for anything else. Never raises: the window must still close cleanly."""
    import sys

    from lego_studio.core.errors import LegoError, disk_error

    try:
        if isinstance(exc, LegoError) or disk_error(exc) is not None:
            print(f"warning: not saved on quit: {disk_error(exc) or exc}", file=sys.stderr)
        else:
            from lego_studio.ui.errors import log_bug

            print(log_bug(type(exc), exc, exc.__traceback__), file=sys.stderr)
    except Exception:  # noqa: BLE001
        pass
