"""Projects place: create / open / rename / duplicate / delete projects, recent list, the
project's fields (subject words, concept name, positive/negative words), its images with a mask
badge each, and subject-only images. First run offers the Shape World demo project.

Creating, opening and changing a project, and reading the mask badges, run off the UI thread
(ui/operations.py); their results come back as callbacks and change notices. Thumbnails are read
in a worker (ui/thumbnails.py)."""

from __future__ import annotations

import importlib
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lego_studio.ui import operations, project_io
from lego_studio.ui.thumbnails import NOT_READ, ThumbnailLoader
from lego_studio.ui.workers import TaskRunner
from lego_studio.ui.layouts import install_two_pane_layout

THUMB = 112
PLACEHOLDER_COLOUR = "#a8a8a8"  # examples in empty fields: light, so they do not read as filled in


def badge_thumbnail(image, masked: bool | None, size: int = THUMB) -> QIcon:
    """Thumbnail (``image``: a QImage read by ui/thumbnails.py, None = unreadable, NOT_READ = still
    being read) with a corner badge: green check = mask painted, grey ring = no mask yet, none
    while the badge is being read (``masked`` None)."""
    canvas = QPixmap(size, size)
    canvas.fill(QColor(0, 0, 0, 0))
    painter = QPainter(canvas)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    if image is NOT_READ:
        pass  # an empty square until the worker has read it
    elif image is not None and not image.isNull():
        scaled = QPixmap.fromImage(image).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                                 Qt.TransformationMode.SmoothTransformation)
        painter.drawPixmap((size - scaled.width()) // 2, (size - scaled.height()) // 2, scaled)
    else:
        painter.fillRect(canvas.rect(), QColor("#555"))
        painter.setPen(QColor("white"))
        painter.drawText(canvas.rect(), Qt.AlignmentFlag.AlignCenter, "unreadable")
    if masked is not None:
        radius = max(9, size // 8)
        centre_x, centre_y = size - radius - 3, size - radius - 3
        painter.setPen(QColor("white"))
        painter.setBrush(QColor("#2e7d32") if masked else QColor("#757575"))
        painter.drawEllipse(centre_x - radius, centre_y - radius, 2 * radius, 2 * radius)
        painter.drawText(centre_x - radius, centre_y - radius, 2 * radius, 2 * radius,
                         Qt.AlignmentFlag.AlignCenter, "✔" if masked else "–")
    painter.end()
    return QIcon(canvas)


def _image_grid() -> QListWidget:
    grid = QListWidget()
    grid.setViewMode(QListView.ViewMode.IconMode)
    grid.setIconSize(QSize(THUMB, THUMB))
    grid.setGridSize(QSize(THUMB + 24, THUMB + 40))
    grid.setResizeMode(QListView.ResizeMode.Adjust)
    grid.setMovement(QListView.Movement.Static)
    grid.setWordWrap(True)
    grid.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
    return grid


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()]


class ProjectsView(QWidget):
    open_masks_requested = Signal()

    def __init__(self, context, parent: QWidget | None = None):
        super().__init__(parent)
        self.context = context
        self.runner = TaskRunner(self)
        self.thumbnails = ThumbnailLoader(THUMB, self)
        self.thumbnails.loaded.connect(self._show_images)
        self._masked: dict[Path, bool] = {}  # the mask badges, as last read (in the writer)
        self._badges_pending = 0  # badge readings queued in the writer

        # --- left column: welcome, actions, recent
        self.welcome = QGroupBox("Welcome")
        welcome_layout = QVBoxLayout(self.welcome)
        intro = QLabel(
            "Teach a model an adjective or a verb — “frozen in ice”, “melting” — from a few images. "
            "Start with the demo to see the whole flow in a minute."
        )
        intro.setWordWrap(True)
        self.demo_button = QPushButton("Try the Shape World demo")
        self.demo_button.setToolTip("Builds a small project of rendered shapes that you can mask and train at once")
        self.demo_button.clicked.connect(self.build_demo)
        welcome_layout.addWidget(intro)
        welcome_layout.addWidget(self.demo_button)

        self.new_button = QPushButton("New project…")
        self.new_button.setToolTip("Create an empty project (Ctrl+N); add images afterwards or drop them here")
        self.new_button.clicked.connect(self.new_project)
        self.new_from_folder_button = QPushButton("New from folder…")
        self.new_from_folder_button.setToolTip("Create a project from every image in a folder")
        self.new_from_folder_button.clicked.connect(self.new_project_from_folder)
        self.open_button = QPushButton("Open…")
        self.open_button.setToolTip("Open a project folder (Ctrl+O)")
        self.open_button.clicked.connect(self.open_project_dialog)
        self.rename_button = QPushButton("Rename…")
        self.rename_button.clicked.connect(self.rename_project_dialog)
        self.duplicate_button = QPushButton("Duplicate")
        self.duplicate_button.clicked.connect(self.duplicate_project)
        self.delete_button = QPushButton("Delete…")
        self.delete_button.clicked.connect(self.delete_project_dialog)
        self.recent_list = QListWidget()
        self.recent_list.setToolTip("Double-click to open")
        self.recent_list.itemActivated.connect(lambda item: self.open_project(Path(item.data(Qt.ItemDataRole.UserRole))))
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(self.welcome)
        for row in ((self.new_button, self.new_from_folder_button), (self.open_button, self.rename_button),
                    (self.duplicate_button, self.delete_button)):
            line = QHBoxLayout()
            for button in row:
                line.addWidget(button)
            left_layout.addLayout(line)
        left_layout.addWidget(QLabel("<b>Recent projects</b>"))
        left_layout.addWidget(self.recent_list, 1)
        left.setMinimumWidth(280)

        # --- right column: the open project
        self.title = QLabel()
        self.title.setStyleSheet("font-size: 16pt; font-weight: 600;")
        self.path_label = QLabel()
        self.path_label.setStyleSheet("color: #777;")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        fields = QGroupBox("What the images show")
        form = QFormLayout(fields)
        self.subject_edit = QLineEdit()
        self.subject_edit.setPlaceholderText("e.g. a toy robot")
        self.subject_edit.setToolTip("The subject in words. Its appearance is explained by these words, so it does not leak into the concept.")
        self.concept_edit = QLineEdit()
        self.concept_edit.setPlaceholderText("e.g. frozen")
        self.concept_edit.setToolTip("Name of the concept; you will type <name> in prompts")
        self.positive_edit = QLineEdit()
        # What training does with an empty field, not words that read as if typed in.
        self.positive_edit.setPlaceholderText("e.g. ice, frost (empty: no word guidance)")
        self.positive_edit.setToolTip("Words that describe the concept (comma separated); pull the concept towards them")
        self.negative_edit = QLineEdit()
        self.subject_edit.textChanged.connect(lambda _text: self._show_negative_default())
        self.negative_edit.setToolTip("Words for the subject's appearance (comma separated); pushed away from the concept")
        form.addRow("Subject:", self.subject_edit)
        form.addRow("Concept name:", self.concept_edit)
        form.addRow("Positive words:", self.positive_edit)
        form.addRow("Negative words:", self.negative_edit)
        for edit in (self.subject_edit, self.concept_edit, self.positive_edit, self.negative_edit):
            edit.editingFinished.connect(self.save_fields)
            light = edit.palette()
            light.setColor(QPalette.ColorRole.PlaceholderText, QColor(PLACEHOLDER_COLOUR))
            edit.setPalette(light)
        self._show_negative_default()
        self.fields_status = QLabel()
        self.fields_status.setWordWrap(True)
        form.addRow(self.fields_status)

        self.images_grid = _image_grid()
        self.images_grid.itemActivated.connect(lambda _: self.open_masks_requested.emit())
        self.subject_grid = _image_grid()
        self.subject_grid.setMaximumHeight(THUMB + 60)
        add_images = QPushButton("Add images…")
        add_images.clicked.connect(lambda: self._add_images_dialog(subject_only=False))
        add_folder = QPushButton("Add folder…")
        add_folder.clicked.connect(self._add_folder_dialog)
        remove = QPushButton("Remove selected")
        remove.clicked.connect(self.remove_selected_images)
        masks = QPushButton("Paint masks →")
        masks.setToolTip("Open the Masks place (Ctrl+2)")
        masks.clicked.connect(self.open_masks_requested.emit)
        add_subject = QPushButton("Add subject-only images…")
        add_subject.setToolTip("Optional: photos of the subject alone (no concept), used to learn the subject first")
        add_subject.clicked.connect(lambda: self._add_images_dialog(subject_only=True))
        image_buttons = QHBoxLayout()
        for button in (add_images, add_folder, remove, masks):
            image_buttons.addWidget(button)
        image_buttons.addStretch(1)
        self.images_label = QLabel()
        self.subject_label = QLabel("<b>Subject-only images</b> (optional)")
        subject_buttons = QHBoxLayout()
        subject_buttons.addWidget(self.subject_label)
        subject_buttons.addStretch(1)
        subject_buttons.addWidget(add_subject)

        self.project_panel = QWidget()
        right_layout = QVBoxLayout(self.project_panel)
        right_layout.addWidget(self.title)
        right_layout.addWidget(self.path_label)
        right_layout.addWidget(fields)
        right_layout.addWidget(self.images_label)
        right_layout.addLayout(image_buttons)
        right_layout.addWidget(self.images_grid, 3)
        right_layout.addLayout(subject_buttons)
        right_layout.addWidget(self.subject_grid, 1)
        self.empty_label = QLabel("No project open.\nCreate one, open one, or drop images or a folder here.")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setStyleSheet("color: #777; font-size: 13pt;")
        right = QWidget()
        right_stack = QVBoxLayout(right)
        right_stack.addWidget(self.empty_label, 1)
        right_stack.addWidget(self.project_panel, 1)

        install_two_pane_layout(self, left, right)

        context.project_changed.connect(lambda _: self.refresh())
        context.project_fields_changed.connect(self.show_fields)
        context.project_edited.connect(self.refresh_images)
        context.masks_changed.connect(lambda _image: self.refresh_images())
        context.recent_projects_changed.connect(self.show_recent)
        self.refresh()

    # ------------------------------------------------------------ display
    def refresh(self) -> None:
        project = self.context.project
        self.show_recent()
        has = project is not None
        self.project_panel.setVisible(has)
        self.empty_label.setVisible(not has)
        for button in (self.rename_button, self.duplicate_button, self.delete_button):
            button.setEnabled(has)
        if not has:
            return
        self.title.setText(project.name)
        self.path_label.setText(str(project.folder))
        self.show_fields()
        self.fields_status.clear()
        self.refresh_images()

    def show_recent(self) -> None:
        """The recent projects still on disk (as the context last read them) and the welcome box."""
        recent = self.context.recent_projects
        self.welcome.setVisible(self.context.settings.first_run or not recent)
        self.recent_list.clear()
        for folder in recent:
            item = QListWidgetItem(f"{folder.name}\n{folder.parent}")
            item.setData(Qt.ItemDataRole.UserRole, str(folder))
            item.setToolTip(str(folder))
            self.recent_list.addItem(item)

    def show_fields(self) -> None:
        """The project's subject, concept name and word lists into the edits (also after
        Training changed them)."""
        project = self.context.project
        if project is None:
            return
        fields = project_io.get_fields(project)
        self.subject_edit.setText(fields["subject"])
        self.concept_edit.setText(fields["concept_name"])
        self.positive_edit.setText(", ".join(fields["positive_words"]))
        self.negative_edit.setText(", ".join(fields["negative_words"]))

    def refresh_images(self) -> None:
        """Show the project's images now (with the badges and thumbnails known), then read the mask
        badges in the writer (after the mask saves before them) and the thumbnails in a worker."""
        project = self.context.project
        self._show_images()
        if project is None:
            return
        images = project_io.image_paths(project)
        self.thumbnails.request(images + project_io.subject_image_paths(project))
        self._badges_pending += 1

        def read(masked) -> None:
            self._badges_pending -= 1
            if masked is not None and self.context.project is project:
                self._masked = masked
                self._show_images()

        operations.read_mask_badges(self.context, project, images, read)

    @property
    def images_loading(self) -> bool:
        """Whether badges or thumbnails are being read (the grids show what is known meanwhile)."""
        return self._badges_pending > 0 or self.thumbnails.loading

    def _show_images(self) -> None:
        project = self.context.project
        selected = {item.data(Qt.ItemDataRole.UserRole) for grid in (self.images_grid, self.subject_grid)
                    for item in grid.selectedItems()}
        self.images_grid.clear()
        self.subject_grid.clear()
        if project is None:
            return
        images = project_io.image_paths(project)
        masked = 0
        for path in images:
            has_mask = self._masked.get(path)
            masked += bool(has_mask)
            item = QListWidgetItem(badge_thumbnail(self.thumbnails.get(path), has_mask), path.name)
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            if has_mask is not None:
                item.setToolTip(f"{path.name}: {'mask painted' if has_mask else 'no mask yet'}")
            self.images_grid.addItem(item)
            item.setSelected(str(path) in selected)
        for path in project_io.subject_image_paths(project):
            item = QListWidgetItem(badge_thumbnail(self.thumbnails.get(path), None), path.name)
            item.setData(Qt.ItemDataRole.UserRole, str(path))
            self.subject_grid.addItem(item)
            item.setSelected(str(path) in selected)
        known = all(path in self._masked for path in images)
        self.images_label.setText(f"<b>Concept images</b> — {len(images)} images, "
                                  + (f"{masked} with a mask" if known else "reading the masks…"))

    def save_fields(self) -> None:
        """Save the edited fields (in the writer); the line under them says Saved or the problem."""
        project = self.context.project
        if project is None:
            return
        fields = dict(
            subject=self.subject_edit.text().strip(),
            concept_name=self.concept_edit.text().strip(),
            positive_words=_words(self.positive_edit.text()),
            negative_words=_words(self.negative_edit.text()),
        )
        operations.set_fields(self.context, on_done=self._fields_saved, on_error=self._fields_refused, **fields)

    def _fields_saved(self) -> None:
        self.fields_status.setStyleSheet("color: #2e7d32;")
        self.fields_status.setText("Saved.")

    def _fields_refused(self, message: str) -> None:
        self.fields_status.setStyleSheet("color: #c0392b;")
        self.fields_status.setText(message)

    def _show_negative_default(self) -> None:
        """An empty Negative words field trains with the subject's appearance words: show those
        (core.prompts.appearance_words, what TrainConfig.effective_negative_words uses)."""
        from lego_studio.core.prompts import appearance_words

        words = appearance_words(self.subject_edit.text())
        self.negative_edit.setPlaceholderText(
            f"empty: the subject's words ({', '.join(words)})" if words else "e.g. robot, metal (empty: the subject's words)")

    # ------------------------------------------------------------ project commands
    def _error(self, title: str, exc) -> None:
        self.context.status_message.emit(str(exc))
        QMessageBox.warning(self, title, str(exc))

    def _report_skipped(self, added: int, problems: list) -> None:
        """Every skipped file with its reason (none hidden behind "and N more")."""
        if not problems:
            return
        summary = f"Added {added} image(s); skipped {len(problems)}:"
        self.context.status_message.emit(f"{summary} {problems[0][1]}" + (" …" if len(problems) > 1 else ""))
        self.skipped_report = f"{summary}\n{operations.describe_skipped(problems)}"
        QMessageBox.warning(self, "Some files were skipped", self.skipped_report)

    def create_project(self, name: str | None, sources: list[Path] | None = None) -> bool:
        """Create ``name`` (None: named after the first source) under the projects folder from
        image files/folders, in the worker, and open it; every file that was skipped is listed with
        its reason. Returns at once (False when a project is being created already)."""

        def created(project, problems) -> None:
            self._report_skipped(len(project.images) + len(project.subject_images), problems)

        started = operations.create_project(self.context, self.runner, name, list(sources or []), on_done=created,
                                            on_error=lambda message: self._error("Cannot create the project", message))
        if not started:
            self._error("Cannot create the project", "busy")
        return started

    def new_project(self) -> None:
        name, ok = QInputDialog.getText(self, "New project", "Project name:", text="My concept")
        if ok and name.strip():
            self.create_project(name.strip())

    def new_project_from_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of example images")
        if folder:
            self.create_project(Path(folder).name, [Path(folder)])

    def open_project_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open project folder", str(self.context.settings.projects_path()))
        if folder:
            self.open_project(Path(folder))

    def open_project(self, folder: Path) -> None:
        """Open the project in ``folder`` (read and claimed off the UI thread; project_changed)."""
        operations.open_project(self.context, Path(folder),
                                on_error=lambda message: self._error("Cannot open the project", message))

    def rename_project(self, new_name: str) -> None:
        """Rename the open project and its folder (in the writer, after its pending writes)."""
        project = self.context.project
        if project is None:
            return
        settings = self.context.settings

        def rename():
            old_root = project.folder
            project.rename(new_name)
            settings.replace_recent_project(old_root, project.folder)

        self.context.writes.submit(rename, on_done=lambda _: self.context.set_project(project),
                                   on_error=lambda message: self._error("Cannot rename the project", message))

    def rename_project_dialog(self) -> None:
        project = self.context.project
        if project is None:
            return
        name, ok = QInputDialog.getText(self, "Rename project", "New name:", text=project.name)
        if ok and name.strip():
            self.rename_project(name.strip())

    def duplicate_project(self) -> None:
        """Copy the open project (in the writer, after its pending writes) and open the copy."""
        project = self.context.project
        if project is None:
            return
        self.context.writes.submit(lambda: project_io.duplicate_project(project), on_done=self.context.set_project,
                                   on_error=lambda message: self._error("Cannot duplicate the project", message))

    def delete_project_dialog(self) -> None:
        project = self.context.project
        if project is None:
            return
        answer = QMessageBox.question(
            self,
            "Delete project",
            f"Delete the project “{project.name}” and all its images, masks, "
            f"runs and gallery?\n{project.folder}\nThis cannot be undone.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_project()

    def delete_project(self) -> None:
        """Move the open project to the trash (in the writer, after its pending writes) and close it."""
        project = self.context.project
        if project is None:
            return
        settings = self.context.settings

        def delete():
            root = project.folder
            project.delete()
            settings.remove_recent_project(root)

        self.context.writes.submit(delete, on_done=lambda _: self.context.set_project(None),
                                   on_error=lambda message: self._error("Cannot delete the project", message))

    # ------------------------------------------------------------ images
    def add_paths(self, paths: list[Path], subject_only: bool = False) -> None:
        """Add image files / folders (drag and drop, dialogs), off the UI thread. Without an open
        project, a new project is created and named after the first item."""
        if not paths:
            return
        if self.context.project is None:
            self.create_project(None, list(paths))
            return
        operations.add_images(self.context, list(paths), on_done=self._images_added,
                              on_error=lambda message: self._error("Cannot add the images", message),
                              subject_only=subject_only)

    def _images_added(self, added: int, problems: list) -> None:
        self.context.status_message.emit(f"Added {added} image(s)")
        self._report_skipped(added, problems)

    def _add_images_dialog(self, subject_only: bool) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add images", "", "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)")
        if files:
            self.add_paths([Path(f) for f in files], subject_only=subject_only)

    def _add_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of images")
        if folder:
            self.add_paths([Path(folder)])

    def remove_selected_images(self) -> None:
        project = self.context.project
        if project is None:
            return
        selected = [Path(i.data(Qt.ItemDataRole.UserRole)) for i in self.images_grid.selectedItems()]
        selected += [Path(i.data(Qt.ItemDataRole.UserRole)) for i in self.subject_grid.selectedItems()]
        if not selected:
            return
        answer = QMessageBox.question(self, "Remove images", f"Remove {len(selected)} image(s) and their masks from the project?")
        if answer != QMessageBox.StandardButton.Yes:
            return
        operations.remove_images(self.context, selected, on_done=lambda problems: problems and self._error(
            "Cannot remove the images", operations.describe_skipped(problems)))

    # ------------------------------------------------------------ demo
    @staticmethod
    def demo_builder():
        """The Shape World demo-project builder, or None when this build has none."""
        try:
            module = importlib.import_module("lego_studio.shapeworld.demo")
        except ModuleNotFoundError:
            return None
        return getattr(module, "build_demo_project", None)

    def build_demo(self) -> None:
        builder = self.demo_builder()
        if builder is None:
            QMessageBox.information(self, "Demo", "The Shape World demo is not part of this build.")
            return
        settings = self.context.settings

        def build(state):
            state.progress(0, 1, "Rendering the Shape World demo…")
            return builder(project_io.free_folder(settings.projects_path(), "Shape World demo"))

        self.demo_button.setEnabled(False)
        self.demo_button.setText("Building the demo…")
        self.runner.start(build, on_done=self._demo_built, on_error=self._demo_failed, name="demo")

    def _demo_built(self, result) -> None:
        self.demo_button.setEnabled(True)
        self.demo_button.setText("Try the Shape World demo")
        root = result.folder if not isinstance(result, (str, Path)) else Path(result)
        self.open_project(root)

    def _demo_failed(self, message: str) -> None:
        self.demo_button.setEnabled(True)
        self.demo_button.setText("Try the Shape World demo")
        QMessageBox.warning(self, "Demo", message)

    # ------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        self.save_fields()
        self.runner.shutdown()
