"""Masks place: the canvas, its tools, the project's images, and the Segment Anything assist.

Autosave: every completed edit restarts a short timer; when it fires the mask is handed to the
context's serial writer, which writes it to the project's ``masks/`` through ``core.project`` off
the UI thread, after the writes before it. Switching image, opening another project or closing
hands it in at once. A mask whose save failed (a full or read-only disk) stays in memory: it is
shown again with its image and saved on the next change. Images, masks and the mask badges are read
in the writer too (so they see the saves before them); thumbnails in a worker. The segmenter (SAM,
or GrabCut without a checkpoint) is built, fed and queried in a worker: ``set_image`` runs once per
image and is cached by the segmenter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, QTimer
from PySide6.QtGui import QAction, QColor, QIcon, QImage, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QButtonGroup,
    QColorDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lego_studio.core.errors import LegoError
from lego_studio.ui import operations, project_io
from lego_studio.ui.mask_canvas import BRUSH, ERASER, FILL, SAM, MaskCanvas, SamPrompt
from lego_studio.ui.thumbnails import ThumbnailLoader
from lego_studio.ui.workers import TaskRunner
from lego_studio.ui.wheel_guard import guard_wheel

AUTOSAVE_DELAY_MS = 400
ERROR_STYLE = "color: #c0392b;"
THUMB = 72


def masks_purpose(config) -> str:
    """The Masks page's line on what masks do: the sentence for the training settings in use
    (``config``; None = the defaults), so the page never claims more than training does."""
    from lego_studio.core.separation import masks_usage
    from lego_studio.core.train_config import TrainConfig

    return masks_usage(config if config is not None else TrainConfig())


def candidate_label(index: int, score: float, grabcut: bool, clicks: int) -> str:
    """A candidate button's text, two short lines that fit the assist panel. SAM's score is its
    own quality estimate; GrabCut's is the share of the clicks the mask agrees with, so it says
    that, and nothing about clicks when there were none (a box alone)."""
    if not grabcut:
        what = f"score {score:.2f}"
    elif clicks:
        what = f"fits {score:.0%} of your clicks"
    else:
        what = "from the box"
    return f"Candidate {index + 1}\n{what}"


class MasksView(QWidget):
    def __init__(self, context, parent: QWidget | None = None):
        super().__init__(parent)
        self.context = context
        self.canvas = MaskCanvas()
        self._images: list[Path] = []
        self._index = -1
        self._dirty = False
        self._shown: Path | None = None  # the image whose mask the canvas holds
        self._shown_project = None  # ... and its project (a save goes there, whatever is open by then)
        self._unsaved: dict[Path, np.ndarray] = {}  # masks handed to the writer and not on disk yet
        self._failed: set[Path] = set()  # images whose last save failed (saved again on the next change)
        self._last_failure = ""
        self._masked: dict[Path, bool] = {}  # the badges, as last read
        self._reads = 0  # image and badge readings queued in the writer
        self.thumbnails = ThumbnailLoader(THUMB, self)
        self.thumbnails.loaded.connect(self._show_thumbnails)
        self._segmenter = None
        self._segmenter_note: str | None = None
        self._segmenter_image_key: str | None = None
        self._pending_prompt: SamPrompt | None = None
        self._candidates: list[tuple[np.ndarray, float]] = []
        self.assist_runner = TaskRunner(self)
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave.timeout.connect(self.save_current_mask)

        # --- image strip
        self.image_list = QListWidget()
        self.image_list.setIconSize(QSize(THUMB, THUMB))
        self.image_list.setFixedWidth(THUMB + 120)
        self.image_list.currentRowChanged.connect(self._on_row_changed)

        # --- toolbar
        self.toolbar = QToolBar()
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.tool_buttons: dict[str, QToolButton] = {}
        group = QButtonGroup(self)
        for tool, text, key, tip in (
            (BRUSH, "Brush", "B", "Paint the subject (B). Wheel or [ ] change the size."),
            (ERASER, "Eraser", "E", "Erase the mask (E)."),
            (FILL, "Fill", "F", "Fill the clicked region with subject (F); Shift+click fills with background."),
            (SAM, "Assist", "S", "Segment Anything (S): left click = subject, right click = background, drag = box."),
        ):
            button = QToolButton()
            button.setText(text)
            button.setCheckable(True)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, t=tool: self.set_tool(t))
            group.addButton(button)
            self.toolbar.addWidget(button)
            self.tool_buttons[tool] = button
            shortcut = QShortcut(QKeySequence(key), self, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda t=tool: self.set_tool(t))
        self.tool_buttons[BRUSH].setChecked(True)
        self.toolbar.addSeparator()
        self.toolbar.addWidget(QLabel(" Size "))
        self.size_spin = QSpinBox()
        self.size_spin.setRange(1, 400)
        self.size_spin.setValue(self.canvas.brush_size)
        self.size_spin.setToolTip("Brush size in image pixels (mouse wheel, [ and ])")
        self.size_spin.valueChanged.connect(self.canvas.set_brush_size)
        self.canvas.brush_size_changed.connect(self.size_spin.setValue)
        self.toolbar.addWidget(self.size_spin)
        self.toolbar.addSeparator()
        self.undo_action = self._action("Undo", "Ctrl+Z", self.canvas.undo, "Undo the last edit (Ctrl+Z)")
        self.redo_action = self._action("Redo", "Ctrl+Shift+Z", self.canvas.redo, "Redo (Ctrl+Shift+Z)")
        self._action("Clear", None, self.canvas.clear_mask, "Remove the whole mask")
        self._action("Invert", "I", self.canvas.invert_mask, "Swap subject and background (I)")
        # Second row: how the mask is shown, and moving between images.
        self.view_toolbar = QToolBar()
        self.view_toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.prev_action = self._action("◀ Prev", "PgUp", self.previous_image, "Previous image (Page Up)", self.view_toolbar)
        self.next_action = self._action("Next ▶", "PgDown", self.next_image, "Next image (Page Down)", self.view_toolbar)
        self.view_toolbar.addSeparator()
        self.mask_only_action = self._action("Mask only", "M", None, "Show the mask alone, white = subject (M)", self.view_toolbar)
        self.mask_only_action.setCheckable(True)
        self.mask_only_action.toggled.connect(self.canvas.set_mask_only)
        self._action("Fit", "0", self.canvas.fit_to_view, "Fit the image in the view (0); Ctrl+wheel zooms, middle drag or Space+drag pans", self.view_toolbar)
        self.view_toolbar.addSeparator()
        self.view_toolbar.addWidget(QLabel(" Overlay "))
        self.color_button = QToolButton()
        self.color_button.setToolTip("Overlay colour")
        self.color_button.clicked.connect(self._choose_color)
        self._paint_color_button()
        self.view_toolbar.addWidget(self.color_button)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(round(self.canvas.overlay_opacity() * 100))
        self.opacity_slider.setFixedWidth(110)
        self.opacity_slider.setToolTip("Overlay opacity")
        self.opacity_slider.valueChanged.connect(lambda v: self.canvas.set_overlay_opacity(v / 100))
        self.view_toolbar.addWidget(self.opacity_slider)
        for key, step in (("[", -1), ("]", 1)):
            shortcut = QShortcut(QKeySequence(key), self, context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
            shortcut.activated.connect(lambda s=step: self.canvas.grow_brush(s))
        self.canvas.history_changed.connect(self._update_history_actions)
        self.canvas.mask_edited.connect(self._on_mask_edited)
        self.canvas.sam_prompt_changed.connect(self._on_sam_prompt)
        self.canvas.tool_changed.connect(self._on_tool_changed)

        # --- assist panel
        self.assist_panel = QWidget()
        self.assist_panel.setFixedWidth(230)
        assist = QVBoxLayout(self.assist_panel)
        title = QLabel("<b>Assist</b>")
        self.assist_status = QLabel("Choose Assist (S), then click the subject or drag a box around it.")
        self.assist_status.setWordWrap(True)
        self.candidates_box = QVBoxLayout()
        self.candidate_buttons: list[QPushButton] = []
        self.union_button = QPushButton("Add to mask")
        self.union_button.setToolTip("Merge the chosen candidate into the painted mask (union)")
        self.union_button.clicked.connect(lambda: self.accept_candidate("union"))
        self.replace_button = QPushButton("Replace mask")
        self.replace_button.setToolTip("Use the chosen candidate instead of the painted mask")
        self.replace_button.clicked.connect(lambda: self.accept_candidate("replace"))
        clear_clicks = QPushButton("Clear clicks")
        clear_clicks.clicked.connect(self.clear_assist)
        assist.addWidget(title)
        assist.addWidget(self.assist_status)
        assist.addLayout(self.candidates_box)
        assist.addWidget(self.union_button)
        assist.addWidget(self.replace_button)
        assist.addWidget(clear_clicks)
        assist.addStretch(1)
        self._update_candidate_buttons()

        self.info_label = QLabel()
        # Long messages (a path in an error) wrap; they never widen the window.
        self.info_label.setWordWrap(True)
        self.info_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.info_label.setMinimumWidth(1)
        # One line on why masks matter, so painting them does not feel like a chore of unclear use.
        # Set by the main window: the training form's current settings (None: the defaults).
        self.training_config = lambda: None
        self.purpose_label = QLabel(masks_purpose(None))
        self.purpose_label.setWordWrap(True)
        centre = QVBoxLayout()
        centre.addWidget(self.purpose_label)
        centre.addWidget(self.toolbar)
        centre.addWidget(self.view_toolbar)
        centre.addWidget(self.canvas, 1)
        centre.addWidget(self.info_label)
        layout = QHBoxLayout(self)
        layout.addWidget(self.image_list)
        layout.addLayout(centre, 1)
        layout.addWidget(self.assist_panel)

        context.project_closing.connect(self.flush_autosave)
        context.project_changed.connect(self.set_project)
        context.project_edited.connect(self.reload_images)
        context.masks_changed.connect(lambda _image: self._refresh_badges())
        context.settings_changed.connect(self._forget_segmenter)
        self.set_project(context.project)
        guard_wheel(self)  # spin and combo boxes take the wheel only when focused

    def _action(self, text, shortcut, slot, tip, toolbar: QToolBar | None = None) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        if slot is not None:
            action.triggered.connect(slot)
        self.addAction(action)
        (toolbar or self.toolbar).addAction(action)
        return action

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        """The page's line on masks follows the training settings the user has now."""
        try:
            config = self.training_config()
        except Exception:  # noqa: BLE001 - a half-typed form value: show the defaults' sentence
            config = None
        self.purpose_label.setText(masks_purpose(config))
        super().showEvent(event)

    # ------------------------------------------------------------ project + images
    def set_project(self, project) -> None:
        self.flush_autosave()
        self.reload_images()

    def reload_images(self) -> None:
        project = self.context.project
        current = self.current_image()
        self._images = project_io.image_paths(project) if project is not None else []
        self.image_list.blockSignals(True)
        self.image_list.clear()
        for path in self._images:
            item = QListWidgetItem(self._thumbnail(path), path.name)
            self.image_list.addItem(item)
        self.image_list.blockSignals(False)
        self.thumbnails.request(self._images)
        self._refresh_badges()
        if not self._images:
            self._index = -1
            self._shown = self._shown_project = None
            self.canvas.clear_image()
            self.info_label.setText("Open a project with images to paint masks.")
            return
        row = self._images.index(current) if current in self._images else 0
        self._index = -1
        self.image_list.setCurrentRow(row)
        if self._index != row:
            self._on_row_changed(row)

    def _thumbnail(self, path: Path) -> QIcon:
        image = self.thumbnails.get(path)
        return QIcon(QPixmap.fromImage(image)) if isinstance(image, QImage) else QIcon()

    def _show_thumbnails(self) -> None:
        for row, path in enumerate(self._images):
            item = self.image_list.item(row)
            if item is not None:
                item.setIcon(self._thumbnail(path))

    def _refresh_badges(self) -> None:
        """Show the badges known, and read them again in the writer (after the saves before)."""
        self._show_badges()
        project, images = self.context.project, list(self._images)
        if project is None or not images:
            return
        self._reads += 1

        def read(masked) -> None:
            self._reads -= 1
            if masked is not None and self.context.project is project:
                self._masked.update(masked)
                self._show_badges()

        operations.read_mask_badges(self.context, project, images, read)

    def _show_badges(self) -> None:
        for row, path in enumerate(self._images):
            item = self.image_list.item(row)
            if item is None:
                continue
            has_mask = self._masked.get(path)
            if has_mask is None:
                item.setText(path.name)
                continue
            item.setText(f"{path.name}\n{'✔ masked' if has_mask else '○ no mask'}")
            item.setForeground(QColor("#2e7d32") if has_mask else QColor("#9e9e9e"))

    @property
    def loading(self) -> bool:
        """Whether the image, its mask, the badges or the thumbnails are being read."""
        return self._reads > 0 or self.thumbnails.loading

    def current_image(self) -> Path | None:
        return self._images[self._index] if 0 <= self._index < len(self._images) else None

    def _on_row_changed(self, row: int) -> None:
        if row == self._index or not (0 <= row < len(self._images)):
            return
        self.flush_autosave()
        self._index = row
        self.load_current()

    def load_current(self) -> None:
        """Read the current image and its mask in the writer (after the saves before them; a mask
        not saved yet comes from memory), then show them. The canvas is empty meanwhile, so no
        stroke lands on the image the user has left."""
        path, project = self.current_image(), self.context.project
        if path is None or project is None:
            return
        self._shown = self._shown_project = None
        self._dirty = False
        self.canvas.clear_image()
        unsaved = self._unsaved.get(path)
        self._reads += 1

        def read():
            from lego_studio.core.images import load_image

            image = load_image(path)
            return image, unsaved if unsaved is not None else project_io.load_mask(project, path, image.size)

        def loaded(result) -> None:
            self._reads -= 1
            if self.current_image() != path or self.context.project is not project:
                return  # the user has moved on
            image, mask = result
            if mask is not None and mask.shape != (image.size[1], image.size[0]):
                mask = None
            self._current_pil = image
            self.canvas.set_image(image, mask)
            self._shown, self._shown_project = path, project
            self._dirty = path in self._failed  # a mask whose save failed is saved on the next change
            self._candidates = []
            self._update_candidate_buttons()
            self._show_info()
            if self.canvas.tool == SAM:
                self._prepare_segmenter()

        def failed(message) -> None:
            self._reads -= 1
            if self.current_image() != path:
                return
            self.canvas.clear_image()
            self.info_label.setStyleSheet(ERROR_STYLE)
            self.info_label.setText(message)

        self.context.writes.submit(read, on_done=loaded, on_error=failed)

    def _show_info(self) -> None:
        """The current image's name, size and place, in the plain style (clears an error)."""
        path = self.current_image()
        image = getattr(self, "_current_pil", None)
        if path is None or image is None or path != self._shown:
            return
        self.info_label.setStyleSheet("")
        self.info_label.setText(f"{path.name} — {image.size[0]}×{image.size[1]} — image {self._index + 1} of {len(self._images)}")

    def previous_image(self) -> None:
        if self._index > 0:
            self.image_list.setCurrentRow(self._index - 1)

    def next_image(self) -> None:
        if self._index + 1 < len(self._images):
            self.image_list.setCurrentRow(self._index + 1)

    # ------------------------------------------------------------ autosave
    def _on_mask_edited(self) -> None:
        self._dirty = True
        self._autosave.start()

    def save_current_mask(self) -> None:
        """Hand the canvas's mask to the writer (it lands after the saves before it)."""
        self._autosave.stop()
        path, project = self._shown, self._shown_project
        if not self._dirty or path is None or not self.canvas.has_image() or project is None:
            return
        mask = self.canvas.mask()  # a copy: later strokes do not change what is being written
        self._dirty = False
        self._unsaved[path] = mask

        def saved() -> None:
            if self._unsaved.get(path) is mask:  # no later save of this image is on its way
                del self._unsaved[path]
                self._failed.discard(path)
            if path == self._shown:
                self._show_info()  # an earlier save's error (e.g. before an Undo) is stale now
            self.context.status_message.emit(f"Saved mask for {path.name}")

        def failed(message: str) -> None:
            self._last_failure = f"the mask of {path.name}: {message}"
            if self._unsaved.get(path) is mask:  # the latest mask stays in memory, saved on the next change
                self._failed.add(path)
                if path == self._shown:
                    self._dirty = True
            self.info_label.setStyleSheet(ERROR_STYLE)
            self.info_label.setText(f"Could not save the mask: {message}")

        operations.save_mask(self.context, project, path, mask, on_done=saved, on_error=failed)

    def flush_autosave(self) -> None:
        if self._dirty:
            self.save_current_mask()

    def unsaved_masks(self) -> tuple[list[Path], str]:
        """The images whose latest mask is only in memory because saving it failed, and the last
        failure's line (for the question at quit)."""
        return sorted(path for path in self._failed if path in self._unsaved), self._last_failure

    # ------------------------------------------------------------ tools
    def set_tool(self, tool: str) -> None:
        self.canvas.set_tool(tool)

    def _on_tool_changed(self, tool: str) -> None:
        self.tool_buttons[tool].setChecked(True)
        if tool == SAM:
            self._prepare_segmenter()

    def _update_history_actions(self) -> None:
        self.undo_action.setEnabled(self.canvas.can_undo())
        self.redo_action.setEnabled(self.canvas.can_redo())

    def _paint_color_button(self) -> None:
        pixmap = QPixmap(16, 16)
        pixmap.fill(self.canvas.overlay_color())
        self.color_button.setIcon(QIcon(pixmap))

    def _choose_color(self) -> None:
        color = QColorDialog.getColor(self.canvas.overlay_color(), self, "Overlay colour")
        if color.isValid():
            self.canvas.set_overlay_color(color)
            self._paint_color_button()

    # ------------------------------------------------------------ assist (SAM / GrabCut)
    def _forget_segmenter(self) -> None:
        if not self.assist_runner.busy:
            self._segmenter = None
            self._segmenter_image_key = None

    def segmenter_name(self) -> str:
        return getattr(self._segmenter, "name", "") if self._segmenter is not None else ""

    def _prepare_segmenter(self) -> None:
        """Build the segmenter (loads SAM) and embed the current image, in the worker."""
        path = self.current_image()
        if path is None or not self.canvas.has_image():
            return
        key = str(path)
        if self._segmenter is not None and self._segmenter_image_key == key:
            return
        if self.assist_runner.busy:
            return  # the finishing task re-checks
        image = self._current_pil
        settings = self.context.settings
        segmenter = self._segmenter

        def prepare(state):
            note = None
            nonlocal segmenter
            if segmenter is None:
                state.progress(0, 2, "Loading the segmenter…")
                from lego_studio.core.segmentation import make_segmenter

                segmenter, note = make_segmenter(settings)
            state.progress(1, 2, "Analysing the image…")
            segmenter.set_image(np.asarray(image), key=key)
            return segmenter, note, key

        self.assist_status.setText("Preparing the assist…")
        self.assist_runner.start(prepare, on_done=self._segmenter_ready, on_error=self._assist_failed, name="assist")

    def _segmenter_ready(self, result) -> None:
        segmenter, note, key = result
        if self._segmenter is None or note is not None:
            self._segmenter_note = note
        self._segmenter = segmenter
        self._segmenter_image_key = key
        current = self.current_image()
        if current is not None and str(current) != key and self.canvas.tool == SAM:
            self._prepare_segmenter()
            return
        ready = f"{segmenter.name} is ready. Left click = subject, right click = background, drag = box."
        note = self._segmenter_note
        self.assist_status.setText(f"{note[:1].upper()}{note[1:]}.\n{ready}" if note else ready)
        self._run_pending_prompt()

    def _assist_failed(self, message: str) -> None:
        self.assist_status.setText(f"Assist failed: {message}")
        self.context.status_message.emit(f"Assist failed: {message}")

    def _on_sam_prompt(self, prompt: SamPrompt) -> None:
        self._pending_prompt = prompt
        self._run_pending_prompt()

    def _run_pending_prompt(self) -> None:
        if self._pending_prompt is None or self._pending_prompt.empty:
            return
        key = str(self.current_image())
        if self._segmenter is None or self._segmenter_image_key != key:
            self._prepare_segmenter()
            return
        if self.assist_runner.busy:
            return
        prompt, self._pending_prompt = self._pending_prompt, None
        segmenter = self._segmenter
        points = [(x, y, label) for (x, y), label in zip(prompt.points, prompt.labels)]
        self._prompt_clicks = len(points)  # a box alone has no clicks for a candidate to agree with

        def predict(state):
            return segmenter.predict(points=points or None, box=prompt.box, multimask=True)

        self.assist_runner.start(predict, on_done=self._show_candidates, on_error=self._assist_failed, name="assist")

    def _show_candidates(self, candidates) -> None:
        w, h = self.canvas.image_size()
        self._candidates = [(m, s) for m, s in candidates if m.shape == (h, w)]
        self._update_candidate_buttons()
        if self._candidates:
            self.choose_candidate(0)
        self._run_pending_prompt()

    def _update_candidate_buttons(self) -> None:
        for button in self.candidate_buttons:
            self.candidates_box.removeWidget(button)
            button.deleteLater()
        self.candidate_buttons = []
        for index, (mask, score) in enumerate(self._candidates):
            button = QPushButton(candidate_label(index, score, self.segmenter_name() == "GrabCut",
                                                 getattr(self, "_prompt_clicks", 0)))
            button.setCheckable(True)
            button.setToolTip(f"{int(mask.sum())} pixels")
            button.clicked.connect(lambda _=False, i=index: self.choose_candidate(i))
            self.candidates_box.addWidget(button)
            self.candidate_buttons.append(button)
        has = bool(self._candidates)
        self.union_button.setEnabled(has)
        self.replace_button.setEnabled(has)

    def choose_candidate(self, index: int) -> None:
        mask, _ = self._candidates[index]
        self.canvas.set_candidate(mask.astype(np.uint8) * 255)
        for i, button in enumerate(self.candidate_buttons):
            button.setChecked(i == index)

    def accept_candidate(self, mode: str) -> None:
        if self.canvas.accept_candidate(mode):
            self._candidates = []
            self._update_candidate_buttons()

    def clear_assist(self) -> None:
        self._pending_prompt = None
        self._candidates = []
        self._update_candidate_buttons()
        self.canvas.clear_sam_prompt()

    # ------------------------------------------------------------ lifecycle
    def shutdown(self) -> None:
        """Hand in the last edit and wait for the mask saves; one that failed is raised (the
        window reports it on quit)."""
        self.flush_autosave()
        self.assist_runner.shutdown()
        self.thumbnails.shutdown()
        self.context.writes.drain()
        if self._failed:
            raise LegoError(self._last_failure)
