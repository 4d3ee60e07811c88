"""Concept Library place: thumbnails, search, tags, rename, delete (confirmed), import (any
format load_concept reads) and export (diffusers / a1111 / kohya / lego), a badge with the model
family each concept fits. Reading the library loads tensors (torch), so it happens in a worker."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lego_studio.core import separation
from lego_studio.core.wording import plural
from lego_studio.ui.workers import TaskRunner
from lego_studio.ui.wheel_guard import guard_wheel

THUMB = 128
EXPORT_FORMATS = {
    "lego": ("Lego Studio (.safetensors)", ".safetensors"),
    "diffusers": ("diffusers learned_embeds (.safetensors)", ".safetensors"),
    "a1111": ("AUTOMATIC1111 embedding (.pt)", ".pt"),
    "kohya": ("kohya / ComfyUI embedding (.safetensors)", ".safetensors"),
}
IMPORT_FILTER = "Concepts (*.safetensors *.pt *.bin *.ckpt);;All files (*)"


def entry_icon(entry, size: int = THUMB) -> QIcon:
    """Thumbnail with the model-family badge drawn in its corner."""
    canvas = QPixmap(size, size)
    canvas.fill(QColor("#3a3a3d"))
    painter = QPainter(canvas)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    source = QPixmap(str(entry.thumbnail)) if entry.thumbnail else QPixmap()
    if not source.isNull():
        scaled = source.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        painter.drawPixmap((size - scaled.width()) // 2, (size - scaled.height()) // 2, scaled)
    else:
        painter.setPen(QColor("#dddddd"))
        painter.drawText(canvas.rect(), Qt.AlignmentFlag.AlignCenter, entry.placeholder)
    metrics = painter.fontMetrics()
    badge = metrics.elidedText(entry.badge, Qt.TextElideMode.ElideRight, size - 14)
    width = min(size - 4, metrics.horizontalAdvance(badge) + 10)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor(20, 90, 200, 220))
    painter.drawRoundedRect(2, 2, width, metrics.height() + 4, 4, 4)
    painter.setPen(QColor("white"))
    painter.drawText(2, 2, width, metrics.height() + 4, Qt.AlignmentFlag.AlignCenter, badge)
    painter.end()
    return QIcon(canvas)


class ExportDialog(QDialog):
    def __init__(self, name: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Export {name}")
        self.format_combo = QComboBox()
        for key, (label, _) in EXPORT_FORMATS.items():
            self.format_combo.addItem(label, key)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QFormLayout(self)
        layout.addRow("Format:", self.format_combo)
        layout.addRow(buttons)

    def fmt(self) -> str:
        return self.format_combo.currentData()


def ask_name_clash(parent, name: str, free_name: str) -> str | None:
    """"replace", "rename" (keep both, the new one as ``free_name``) or None (do not add)."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("Name taken")
    box.setText(f"The library already has a concept named <{name}>.")
    box.setInformativeText(f"Replace it, or keep both (the new one as <{free_name}>)?")
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    keep = box.addButton(f"Keep both as <{free_name}>", QMessageBox.ButtonRole.AcceptRole)
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    clicked = box.clickedButton()
    return "replace" if clicked is replace else "rename" if clicked is keep else None


@dataclass
class LibraryChange:
    """What a library operation did: the status text, the concepts to select afterwards, and
    imports that found their name taken (asked about on the UI thread)."""

    text: str
    select: list = field(default_factory=list)
    clashes: list = field(default_factory=list)


class LibraryView(QWidget):
    settings_requested = Signal()
    entries_loaded = Signal()

    def __init__(self, context, parent: QWidget | None = None):
        super().__init__(parent)
        self.context = context
        self.runner = TaskRunner(self)
        self.entries: list = []
        self._refresh_again = False
        self._select_after: list[str] = []  # concepts to select once the list is reloaded
        self._queued: list = []  # operations asked for while another library task ran

        self.search_edit = QLineEdit()
        self.search_edit.setPlaceholderText("Search names, tags, subjects…")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(self._apply_filter)
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("Add concept files: Lego, diffusers learned_embeds, AUTOMATIC1111 .pt, kohya")
        self.import_button.clicked.connect(self._import_dialog)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_dialog)
        self.rename_button = QPushButton("Rename…")
        self.rename_button.clicked.connect(self._rename_dialog)
        self.tags_button = QPushButton("Tags…")
        self.tags_button.clicked.connect(self._tags_dialog)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(self._delete_dialog)
        top = QHBoxLayout()
        top.addWidget(self.search_edit, 1)
        for button in (self.import_button, self.export_button, self.rename_button, self.tags_button, self.delete_button):
            top.addWidget(button)

        self.grid = QListWidget()
        self.grid.setViewMode(QListView.ViewMode.IconMode)
        self.grid.setIconSize(QSize(THUMB, THUMB))
        self.grid.setGridSize(QSize(THUMB + 36, THUMB + 56))
        self.grid.setResizeMode(QListView.ResizeMode.Adjust)
        self.grid.setMovement(QListView.Movement.Static)
        self.grid.setWordWrap(True)
        self.grid.currentItemChanged.connect(lambda *_: self._show_details())

        self.details = QLabel("Select a concept.")
        self.details.setWordWrap(True)
        self.details.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details.setMinimumWidth(260)
        splitter = QSplitter()
        splitter.addWidget(self.grid)
        splitter.addWidget(self.details)
        splitter.setStretchFactor(0, 1)

        self.location_label = QLabel()
        self.location_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        change = QPushButton("Change…")
        change.setToolTip("The library location is set in Settings")
        change.clicked.connect(self.settings_requested.emit)
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        bottom = QHBoxLayout()
        bottom.addWidget(self.location_label, 1)
        bottom.addWidget(change)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.status_label)
        layout.addLayout(bottom)
        context.library_changed.connect(self.refresh)
        context.settings_changed.connect(self.refresh)
        self._update_buttons()
        self.refresh()
        guard_wheel(self)  # spin and combo boxes take the wheel only when focused

    # ------------------------------------------------------------ loading
    def refresh(self) -> None:
        library = self.context.library()
        self.location_label.setText(f"Library: {library.root}")
        if self.runner.busy:
            self._refresh_again = True
            return

        def load(state):
            return library.list(), library.problems()

        self.runner.start(load, on_done=self._loaded, on_error=self._failed, name="library")

    def _loaded(self, result) -> None:
        entries, problems = result
        self.entries = entries
        self._apply_filter()
        select, self._select_after = self._select_after, []
        if select:
            if not set(select) <= set(self.visible_names()):
                self.search_edit.setText("")  # a search that hides what was just added or renamed
            self.select(select[0])
        if problems:
            self.status_label.setText("Skipped unreadable files: " + "; ".join(reason for _path, reason in problems))
        self.entries_loaded.emit()
        self._next()

    def _failed(self, message: str) -> None:
        self._show_error(message)
        self._next()

    def _next(self) -> None:
        """Start what waited for the previous task: queued operations first, then a refresh."""
        if self.runner.busy:
            return
        if self._queued:
            self._start_op(*self._queued.pop(0))
        elif self._refresh_again:
            self._refresh_again = False
            self.refresh()

    def _apply_filter(self) -> None:
        words = self.search_edit.text().casefold().split()
        selected = self.selected_name()
        self.grid.clear()
        for entry in self.entries:
            haystack = " ".join([entry.name, entry.placeholder, entry.subject, entry.badge, *entry.tags]).casefold()
            if not all(word in haystack for word in words):
                continue
            tags = f"\n{', '.join(entry.tags)}" if entry.tags else ""
            item = QListWidgetItem(entry_icon(entry), f"{entry.placeholder}{tags}")
            item.setData(Qt.ItemDataRole.UserRole, entry.name)
            item.setToolTip(f"{entry.placeholder} — {entry.badge}, {plural(entry.num_vectors, 'vector')}")
            self.grid.addItem(item)
            if entry.name == selected:
                self.grid.setCurrentItem(item)
        self._update_buttons()

    def visible_names(self) -> list[str]:
        return [self.grid.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.grid.count())]

    def selected_name(self) -> str | None:
        item = self.grid.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def select(self, name: str) -> None:
        for i in range(self.grid.count()):
            if self.grid.item(i).data(Qt.ItemDataRole.UserRole) == name:
                self.grid.setCurrentRow(i)

    def _entry(self, name: str | None):
        return next((e for e in self.entries if e.name == name), None)

    def _show_details(self) -> None:
        entry = self._entry(self.selected_name())
        self._update_buttons()
        if entry is None:
            self.details.setText("Select a concept.")
            return
        meta = entry.metadata
        method = {"lego": "Lego", "ti": "Textual Inversion"}.get(str(meta.get("method")), str(meta.get("method") or "—"))
        rows = [
            ("Type in prompts", entry.placeholder),
            ("Fits", f"{entry.badge} (text width {' + '.join(map(str, entry.widths))})"),
            ("Vectors", str(entry.num_vectors)),
            ("Method", method),
            ("Steps", str(meta.get("steps", "—"))),
            ("Subject", _subject_shown(entry.subject, meta)),
            # What the vector holds (core/separation.py): a subject word here went into the concept.
            ("Closest words", ", ".join(map(str, meta.get("closest_words") or [])) or "—"),
            ("Tags", ", ".join(entry.tags) or "—"),
            # The training time where the file has it; an import without one says when it came in.
            ("Trained", str(meta["created"])) if meta.get("created") else ("Imported", entry.added),
            ("Source", entry.source or "—"),
            ("File", str(entry.path)),
        ]
        self.details.setText("".join(f"<p><b>{k}:</b> {html.escape(v)}</p>" for k, v in rows))

    def _update_buttons(self) -> None:
        has = self.selected_name() is not None
        for button in (self.export_button, self.rename_button, self.tags_button, self.delete_button):
            button.setEnabled(has)

    def _show_error(self, message: str) -> None:
        self.status_label.setStyleSheet("color: #c0392b;")
        self.status_label.setText(message)

    # ------------------------------------------------------------ operations (in the worker)
    def _run(self, fn, done_message: str) -> bool:
        """Run ``fn(library)`` in the worker, after whatever library task is running now."""
        if self.runner.busy:
            self._queued.append((fn, done_message))
        else:
            self._start_op(fn, done_message)
        return True

    def _start_op(self, fn, done_message: str) -> None:
        library = self.context.library()

        def task(state):
            return fn(library)

        def done(result):
            select, clashes = None, []
            if isinstance(result, LibraryChange):
                select, clashes, result = result.select, result.clashes, result.text
            self.status_label.setStyleSheet("color: #2e7d32;")
            # Only clashes: say nothing until the user has answered about them.
            self.status_label.setText("" if clashes and not select else done_message.format(result=result))
            if select:
                self._select_after = select
            self.context.library_changed.emit()  # -> refresh(), which then runs what is queued
            for path, clash in clashes:
                self._resolve_clash(path, clash)

        self.runner.start(task, on_done=done, on_error=self._failed, name="library-op")

    def ask_name_clash(self, name: str, free_name: str) -> str | None:
        return ask_name_clash(self, name, free_name)

    def _resolve_clash(self, path: Path, clash) -> None:
        choice = self.ask_name_clash(clash.name, clash.free_name)
        if choice is not None:
            self.import_files([path], on_conflict=choice)
        else:
            self.status_label.setText(f"Not imported: {path.name} (the library already has <{clash.name}>)")

    def import_files(self, files: list[Path], on_conflict: str = "error") -> bool:
        """Import concept files; a name the library already has is asked about, not renamed
        silently. The imported concepts are selected (and shown even when a search hides them)."""
        from lego_studio.core.library import NameTaken

        def add_all(library):
            names, clashes = [], []
            for f in files:
                try:
                    names.append(library.add(Path(f), on_conflict=on_conflict).name)
                except NameTaken as clash:
                    clashes.append((Path(f), clash))
            text = ", ".join(f"<{n}>" for n in names) or "nothing"
            return LibraryChange(text, names, clashes)

        return self._run(add_all, "Imported {result}")

    def export_selected(self, fmt: str, path: Path) -> bool:
        name = self.selected_name()
        if name is None:
            return False
        return self._run(lambda library: library.export(name, fmt, path), "Exported to {result}")

    def rename_selected(self, new_name: str) -> bool:
        name = self.selected_name()
        if name is None:
            return False
        def rename(library):
            entry = library.rename(name, new_name)
            return LibraryChange(entry.placeholder, [entry.name])

        return self._run(rename, "Renamed to {result}")

    def set_tags_selected(self, tags: list[str]) -> bool:
        name = self.selected_name()
        if name is None:
            return False
        return self._run(lambda library: library.set_tags(name, tags), "Tags saved")

    def delete_selected(self) -> bool:
        name = self.selected_name()
        if name is None:
            return False
        return self._run(lambda library: library.delete(name), f"Deleted <{name}>")

    # ------------------------------------------------------------ dialogs
    def _import_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Import concepts", "", IMPORT_FILTER)
        if files:
            self.import_files([Path(f) for f in files])

    def _export_dialog(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        dialog = ExportDialog(name, self)
        if not dialog.exec():
            return
        fmt = dialog.fmt()
        suffix = EXPORT_FORMATS[fmt][1]
        path, _ = QFileDialog.getSaveFileName(self, "Export concept", f"{name}{suffix}", f"*{suffix}")
        if path:
            self.export_selected(fmt, Path(path))

    def _rename_dialog(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        new, ok = QInputDialog.getText(self, "Rename concept", "New name (also the <placeholder>):", text=name)
        if ok and new.strip():
            self.rename_selected(new.strip())

    def _tags_dialog(self) -> None:
        entry = self._entry(self.selected_name())
        if entry is None:
            return
        text, ok = QInputDialog.getText(self, "Tags", "Tags (comma separated):", text=", ".join(entry.tags))
        if ok:
            self.set_tags_selected([t.strip() for t in text.split(",") if t.strip()])

    def _delete_dialog(self) -> None:
        name = self.selected_name()
        if name is None:
            return
        answer = QMessageBox.question(
            self, "Delete concept", f"Delete <{name}> from the library? The file is removed.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_selected()

    def shutdown(self) -> None:
        self.runner.shutdown()


def _subject_shown(subject: str, metadata: dict) -> str:
    """The concept's subject words, and the words its run trained with where the run added to them
    from the masks: "a star (trained as “a yellow star”: colour from the masks)"."""
    training_subject = separation.trained_with(metadata)
    if training_subject:
        return f"{subject or '—'} (trained as “{training_subject}”: {separation.masks_added_reason(metadata, short=True)})"
    return subject or "—"
