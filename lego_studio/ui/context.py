"""State shared by all views: settings, the open project, the concept library, and the one
writer (:class:`~lego_studio.ui.workers.SerialWriter`) that every write of the project, the library
and the settings goes through, in order, off the UI thread.

Views never talk to each other directly; they listen to these signals. Nothing here imports
torch: the window must appear before the heavy libraries load.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from lego_studio.core.settings import Settings


class AppContext(QObject):
    project_closing = Signal()  # another project is about to be opened: views hand in unsaved edits
    project_changed = Signal(object)  # the open Project, or None
    project_edited = Signal()  # images of the open project added or removed (views reload)
    masks_changed = Signal(object)  # the image (Path) whose mask was saved or cleared
    project_fields_changed = Signal()  # subject, concept name, word lists changed
    library_changed = Signal()
    settings_changed = Signal()
    status_message = Signal(str)  # one line for the status bar
    model_changed = Signal(str)  # name of the model now used
    recent_projects_changed = Signal()  # recent_projects was read again

    def __init__(self, settings: Settings | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings if settings is not None else Settings.load()
        self.project = None
        self.recent_projects: list[Path] = []  # the recent projects still on disk, as last read
        self._claimed = None  # the project whose lock this window holds (used by the writer only)
        self._library = None
        self._library_root: Path | None = None
        from lego_studio.ui.model_cache import ModelCache

        self.models = ModelCache()  # shared by training and gallery jobs
        from lego_studio.ui.workers import SerialWriter

        self.writes = SerialWriter(self)  # every project, library and settings write, in order
        self.writes.failed.connect(self.status_message)  # a failed write nobody else reports

    # ------------------------------------------------------------ settings
    def save_settings(self) -> None:
        """Write the settings, in the writer (after the writes before it); a failure is a status line."""
        self.writes.submit(self.settings.save)

    def apply_settings(self) -> None:
        """Persist settings and tell the views (library location, models, SAM may have changed)."""
        self.save_settings()
        if self._library_root != self.settings.library_path():
            self._library = None
            self.library_changed.emit()
        self.settings_changed.emit()
        self.model_changed.emit(self.model_name())

    def model_name(self) -> str:
        """The model Training and Gallery use unless another is picked: the default configured
        one, else the built-in Shape World model (the same list their choosers show)."""
        from lego_studio.ui.model_cache import model_choices

        choices = model_choices(self.settings)
        return choices[0][0] if choices else ""

    # ------------------------------------------------------------ project
    def set_project(self, project, on_done=None) -> None:
        """Open ``project`` (or close with None); see :meth:`switch_project`."""
        self.switch_project(lambda: project, on_done=on_done)

    def switch_project(self, load, on_done=None, on_error=None, keep_when_none: bool = False) -> None:
        """Open the project ``load()`` returns (None closes the open one; with ``keep_when_none``
        it leaves it open). The file work runs in the writer, after the writes already queued:
        ``load`` (reading project.json), giving the last project back, claiming this one (one
        writer per project, core/project.py: one another window holds, or on a read-only disk,
        opens read-only and the status bar says so; claiming also cleans stale temp files) and
        recording it as the last project in the settings, so the app reopens it on the next start.
        Then, on the UI thread, ``project_changed`` and ``on_done(project)``; a project that cannot
        be opened is ``on_error(message)`` (else a status line) and the open one stays."""
        self.project_closing.emit()  # pending edits of the open project are queued before the switch
        settings = self.settings

        def switch():
            project = load()
            if project is None and keep_when_none:
                return None
            previous = self._claimed
            if previous is not None and previous is not project and hasattr(previous, "release"):
                previous.release()
            read_only = project.claim() if project is not None and hasattr(project, "claim") else None
            self._claimed = project
            if project is not None:
                settings.add_recent_project(project.folder)
            settings.last_project = str(project.folder) if project is not None else None
            try:
                settings.save()
                problem = None
            except OSError as exc:  # a read-only or full data folder: say so, keep the project open
                problem = str(exc)
            return project, read_only, problem, settings.existing_recent_projects()

        def switched(outcome) -> None:
            if outcome is None:
                return
            project, read_only, problem, recent = outcome
            self.project = project
            self.recent_projects = recent
            if problem:
                self.status_message.emit(problem)
            self.project_changed.emit(project)
            self.recent_projects_changed.emit()
            if read_only:
                self.status_message.emit(read_only)
            if on_done is not None:
                on_done(project)

        self.writes.submit(switch, on_done=switched, on_error=on_error)

    def refresh_recent_projects(self) -> None:
        """Read which recent projects are still on disk (in the writer), then
        ``recent_projects_changed``."""
        settings = self.settings

        def read(recent) -> None:
            self.recent_projects = recent
            self.recent_projects_changed.emit()

        self.writes.submit(settings.existing_recent_projects, on_done=read)

    # ------------------------------------------------------------ library
    def library(self):
        """The concept library at the configured location (opened on first use)."""
        from lego_studio.core.library import ConceptLibrary

        root = self.settings.library_path()
        if self._library is None or self._library_root != root:
            self._library = ConceptLibrary(root)
            self._library_root = root
        return self._library
