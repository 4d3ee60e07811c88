"""State shared by all views: settings, the open project, the concept library, and the one
writer (:class:`~lego_studio.ui.workers.SerialWriter`) that the writes of the project, the library
and the settings go through, in order, off the UI thread.

Views never talk to each other directly; they listen to these signals. Nothing here imports
torch: the window must appear before the heavy libraries load.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from lego_studio.core.settings import Settings


class AppContext(QObject):
    project_changed = Signal(object)  # the open Project, or None
    project_edited = Signal()  # images of the open project added or removed (views reload)
    masks_changed = Signal(object)  # the image (Path) whose mask was saved or cleared
    project_fields_changed = Signal()  # subject, concept name, word lists changed
    library_changed = Signal()
    settings_changed = Signal()
    status_message = Signal(str)  # one line for the status bar
    model_changed = Signal(str)  # name of the model now used

    def __init__(self, settings: Settings | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.settings = settings if settings is not None else Settings.load()
        self.project = None
        self._library = None
        self._library_root: Path | None = None
        from lego_studio.ui.model_cache import ModelCache

        self.models = ModelCache()  # shared by training and gallery jobs
        from lego_studio.ui.workers import SerialWriter

        self.writes = SerialWriter(self)  # every project, library and settings write, in order
        self.writes.failed.connect(self.status_message)  # a failed write nobody else reports

    # ------------------------------------------------------------ settings
    def save_settings(self) -> None:
        self.settings.save()

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
    def set_project(self, project) -> None:
        """Open ``project`` (or close with None); it is remembered as the last project, so the
        app reopens it on the next start. The window claims it (one writer per project, core/project.py):
        one another window holds, or on a read-only disk, opens read-only and the status bar says so."""
        if self.project is not None and self.project is not project and hasattr(self.project, "release"):
            self.project.release()
        self.project = project
        read_only = project.claim() if project is not None and hasattr(project, "claim") else None
        if project is not None:
            self.settings.add_recent_project(project.folder)
        self.settings.last_project = str(project.folder) if project is not None else None
        try:
            self.save_settings()
        except OSError as exc:  # a read-only or full data folder: say so, keep the project open
            self.status_message.emit(str(exc))
        self.project_changed.emit(project)
        if read_only:
            self.status_message.emit(read_only)

    def last_project_folder(self) -> Path | None:
        """The project open when the app last closed, if it is still there."""
        folder = self.settings.last_project
        if folder and (Path(folder) / "project.json").is_file():
            return Path(folder)
        return None

    # ------------------------------------------------------------ library
    def library(self):
        """The concept library at the configured location (opened on first use)."""
        from lego_studio.core.library import ConceptLibrary

        root = self.settings.library_path()
        if self._library is None or self._library_root != root:
            self._library = ConceptLibrary(root)
            self._library_root = root
        return self._library
