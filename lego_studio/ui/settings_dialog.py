"""Settings: models (validated when added), SAM checkpoint (validated in a worker), default device,
library location. Edits a copy; OK writes it back, Cancel forgets it."""

from __future__ import annotations

import copy
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lego_studio.core.errors import LegoError
from lego_studio.core.settings import DEVICES
from lego_studio.ui.workers import TaskRunner
from lego_studio.ui.wheel_guard import guard_wheel

ERROR_STYLE = "color: #c0392b;"
OK_STYLE = "color: #2e7d32;"


def reserve_lines(label: QLabel, lines: int) -> None:
    """Keep room for ``lines`` lines of text in ``label`` even while it is empty."""
    label.setMinimumHeight(label.fontMetrics().lineSpacing() * lines + 2)
    label.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)


class SettingsDialog(QDialog):
    def __init__(self, context, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.setMinimumWidth(640)
        self.context = context
        self.draft = copy.deepcopy(context.settings)
        self._runner = TaskRunner(self)
        self._sam_verdicts: dict[str, bool] = {}  # checkpoint path -> passed the check
        self._accept_after_check = False

        # --- models
        models_box = QGroupBox("Models")
        self.models_list = QListWidget()
        self.models_list.setMinimumHeight(120)
        self.model_input = QLineEdit()
        self.model_input.setPlaceholderText("diffusers folder, model file, Hugging Face id (org/name), or 'shapeworld'")
        # An empty list would read as "no model": say what is used until one is added.
        self.models_empty_label = QLabel(
            "No models added: Training and the Gallery use the built-in Shape World models. Add your own "
            "Stable Diffusion model (SD 1.x, SD 2.x or SDXL: a diffusers folder or a .safetensors file) to "
            "train on your pictures.")
        self.models_empty_label.setWordWrap(True)
        self.models_empty_label.setStyleSheet("color: #666;")
        add_spec = QPushButton("Add")
        add_spec.setToolTip("Check the folder, file or id (no weights are loaded) and add it")
        add_spec.clicked.connect(lambda: self.add_model(self.model_input.text()))
        add_folder = QPushButton("Add folder…")
        add_folder.clicked.connect(self._browse_model_folder)
        add_file = QPushButton("Add file…")
        add_file.clicked.connect(self._browse_model_file)
        self.remove_model_button = QPushButton("Remove")
        self.remove_model_button.clicked.connect(self._remove_model)
        self.default_model_button = QPushButton("Make default")
        self.default_model_button.clicked.connect(self._make_default)
        self.model_error = QLabel()
        self.model_error.setWordWrap(True)
        # After a model is added: the offer to make it the default (then Training and the Gallery
        # select it when the dialog is accepted).
        self.offer_default_button = QPushButton()
        self.offer_default_button.setToolTip("Training and the Gallery will select it")
        self.offer_default_button.clicked.connect(self._accept_default_offer)
        self.offer_default_button.hide()
        self._offered: str | None = None
        # Messages and the offer come and go; their room stays, so the dialog does not jump.
        keep = self.offer_default_button.sizePolicy()
        keep.setRetainSizeWhenHidden(True)
        self.offer_default_button.setSizePolicy(keep)
        reserve_lines(self.model_error, 2)
        row = QHBoxLayout()
        row.addWidget(self.model_input, 1)
        row.addWidget(add_spec)
        buttons = QHBoxLayout()
        for button in (add_folder, add_file, self.remove_model_button, self.default_model_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        models_layout = QVBoxLayout(models_box)
        models_layout.addWidget(self.models_list)
        models_layout.addWidget(self.models_empty_label)
        models_layout.addLayout(row)
        models_layout.addLayout(buttons)
        models_layout.addWidget(self.model_error)
        models_layout.addWidget(self.offer_default_button)

        # --- SAM
        sam_box = QGroupBox("Segment Anything")
        self.sam_input = QLineEdit(self.draft.sam_checkpoint or "")
        self.sam_input.setPlaceholderText("sam_vit_b_01ec64.pth (optional; without it the assist uses GrabCut)")
        sam_browse = QPushButton("Browse…")
        sam_browse.clicked.connect(self._browse_sam)
        self.sam_check_button = QPushButton("Check")
        self.sam_check_button.setToolTip("Load the checkpoint once to make sure it is a Segment Anything model")
        self.sam_check_button.clicked.connect(lambda: self.validate_sam(self.sam_input.text()))
        self.sam_status = QLabel()
        self.sam_status.setWordWrap(True)
        reserve_lines(self.sam_status, 2)
        sam_row = QHBoxLayout()
        sam_row.addWidget(self.sam_input, 1)
        sam_row.addWidget(sam_browse)
        sam_row.addWidget(self.sam_check_button)
        sam_layout = QVBoxLayout(sam_box)
        sam_layout.addLayout(sam_row)
        sam_layout.addWidget(self.sam_status)

        # --- general
        general = QGroupBox("General")
        form = QFormLayout(general)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setCurrentText(self.draft.default_device)
        self.device_combo.setToolTip("auto picks CUDA, then Apple MPS, then the CPU")
        form.addRow("Default device:", self.device_combo)
        self.library_input = QLineEdit(str(self.draft.library_path()))
        self.library_input.setToolTip("Folder holding your trained concepts (.safetensors + thumbnails)")
        library_browse = QPushButton("Browse…")
        library_browse.clicked.connect(self._browse_library)
        library_row = QHBoxLayout()
        library_row.addWidget(self.library_input, 1)
        library_row.addWidget(library_browse)
        form.addRow("Concept library:", library_row)
        self.projects_input = QLineEdit(str(self.draft.projects_path()))
        form.addRow("New projects in:", self.projects_input)

        self.button_box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.button_box.accepted.connect(self.accept)
        self.button_box.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(models_box)
        layout.addWidget(sam_box)
        layout.addWidget(general)
        layout.addWidget(self.button_box)
        self._refresh_models()
        guard_wheel(self)  # spin and combo boxes take the wheel only when focused

    # ------------------------------------------------------------ models
    def _refresh_models(self) -> None:
        self.models_list.clear()
        for entry in self.draft.models:
            default = "  ★ default" if entry.name == self.draft.default_model else ""
            family = entry.family or "family unknown"
            item = QListWidgetItem(f"{entry.name}  —  {entry.kind}, {family}{default}")
            item.setToolTip(entry.spec)
            item.setData(256, entry.name)
            self.models_list.addItem(item)
        self.models_empty_label.setVisible(not self.draft.models)

    def add_model(self, spec: str) -> bool:
        """Validate and add; the error (one line) is shown under the list. True on success."""
        try:
            # Never the default without asking: the offer below makes it one.
            entry = self.draft.add_model(spec.strip(), make_default=False)
        except LegoError as exc:
            self.model_error.setStyleSheet(ERROR_STYLE)
            self.model_error.setText(str(exc))
            return False
        self.model_error.setStyleSheet(OK_STYLE)
        family = f", {entry.family}" if entry.family else ""
        self.model_error.setText(f"Added {entry.name} ({entry.kind}{family}).")
        self.model_input.clear()
        self._refresh_models()
        self._select_model(entry.name)
        if self.draft.default_model != entry.name:
            self._offered = entry.name
            self.offer_default_button.setText(f"Make {entry.name} the default model (Training and the Gallery use it)")
            self.offer_default_button.show()
        return True

    def _select_model(self, name: str) -> None:
        for row in range(self.models_list.count()):
            if self.models_list.item(row).data(256) == name:
                self.models_list.setCurrentRow(row)

    def _accept_default_offer(self) -> None:
        if self._offered and self.draft.model(self._offered) is not None:
            self.draft.default_model = self._offered
            self.model_error.setStyleSheet(OK_STYLE)
            self.model_error.setText(f"{self._offered} is the default model: Training and the Gallery select it after OK.")
            self._refresh_models()
            self._select_model(self._offered)
        self._offered = None
        self.offer_default_button.hide()

    def _selected_model(self) -> str | None:
        item = self.models_list.currentItem()
        return item.data(256) if item is not None else None

    def _remove_model(self) -> None:
        name = self._selected_model()
        if name:
            self.draft.remove_model(name)
            self._refresh_models()

    def _make_default(self) -> None:
        name = self._selected_model()
        if name:
            self.draft.default_model = name
            self._refresh_models()

    def _browse_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Diffusers model folder")
        if folder:
            self.add_model(folder)

    def _browse_model_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "", "Models (*.safetensors *.ckpt *.pt *.bin)")
        if path:
            self.add_model(path)

    # ------------------------------------------------------------ SAM
    def _browse_sam(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Segment Anything checkpoint", "", "Checkpoints (*.pth *.pt *.safetensors)")
        if path:
            self.sam_input.setText(path)
            self.validate_sam(path)

    def validate_sam(self, path: str) -> None:
        """Load the checkpoint in a worker (seconds for real ones) and report in the label."""
        path = path.strip()
        if not path:
            self.sam_status.setStyleSheet("")
            self.sam_status.setText("No checkpoint: the assist uses GrabCut.")
            return
        if not Path(path).expanduser().is_file():
            self._sam_failed(path, f"{path}: no such file")
            return
        if self._runner.busy:
            return  # a check is running; accept() waits for it

        def check(state):
            from lego_studio.core.segmentation import load_sam_model

            _, arch = load_sam_model(path, device="cpu")
            return arch.model_type

        self.sam_status.setStyleSheet("")
        self.sam_status.setText("Checking…")
        self.sam_check_button.setEnabled(False)
        self._runner.start(check, on_done=lambda model_type: self._sam_ok(path, model_type),
                           on_error=lambda message: self._sam_failed(path, message), name="sam-check")

    def _sam_ok(self, path: str, model_type: str) -> None:
        self._sam_verdicts[path] = True
        self.sam_check_button.setEnabled(True)
        self.sam_status.setStyleSheet(OK_STYLE)
        self.sam_status.setText(f"OK: Segment Anything {model_type}")
        if self._accept_after_check:
            self.accept()

    def _sam_failed(self, path: str, message: str) -> None:
        self._sam_verdicts[path] = False
        self._accept_after_check = False
        self.sam_check_button.setEnabled(True)
        self.sam_status.setStyleSheet(ERROR_STYLE)
        self.sam_status.setText(message)

    def _sam_acceptable(self) -> bool:
        """OK saves a SAM checkpoint only once it has been checked and found good (or it is the
        one already saved); an unchecked one is checked first, and OK completes when it passes."""
        path = self.sam_input.text().strip()
        if not path or path == (self.context.settings.sam_checkpoint or ""):
            return True
        verdict = self._sam_verdicts.get(path)
        if verdict is None:
            self._accept_after_check = True
            self.validate_sam(path)
            return False
        if verdict is False:
            self.sam_status.setStyleSheet(ERROR_STYLE)
            if not self.sam_status.text() or self.sam_status.text().startswith("OK"):
                self.sam_status.setText(f"{path}: not a usable Segment Anything checkpoint")
            self.sam_input.setFocus()
        return verdict is True

    # ------------------------------------------------------------ library
    def _browse_library(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Concept library folder", self.library_input.text())
        if folder:
            self.library_input.setText(folder)

    # ------------------------------------------------------------ accept
    def accept(self) -> None:
        path = self.sam_input.text().strip()
        # A check still running for the typed checkpoint: OK does not wait for it. The dialog
        # closes with the other settings, and the checkpoint is saved only if the check passes.
        pending = (self._runner.busy and bool(path) and self._sam_verdicts.get(path) is None
                   and path != (self.context.settings.sam_checkpoint or ""))
        if not pending and not self._sam_acceptable():
            return  # the reason is in the SAM line; the dialog stays open
        try:
            if not pending:
                self.draft.set_sam_checkpoint(path or None)
        except LegoError as exc:
            self.sam_status.setStyleSheet(ERROR_STYLE)
            self.sam_status.setText(str(exc))
            return
        self.draft.default_device = self.device_combo.currentText()
        library = self.library_input.text().strip()
        default_library = str(self.context.settings.__class__().library_path())
        self.draft.library_dir = None if not library or library == default_library else library
        projects = self.projects_input.text().strip()
        self.draft.projects_dir = projects or None
        settings = self.context.settings
        for name in ("models", "default_model", "sam_checkpoint", "default_device", "library_dir", "projects_dir"):
            setattr(settings, name, getattr(self.draft, name))
        context = self.context

        def save_when_checked(_model_type) -> None:
            context.settings.sam_checkpoint = path
            context.apply_settings()

        self._runner.abandon(on_done=save_when_checked if pending else None)
        super().accept()

    def reject(self) -> None:
        self._runner.abandon()
        super().reject()

    def done(self, result: int) -> None:
        # Never wait for a running check (a SAM checkpoint load takes seconds, up to its timeout):
        # it finishes in the background and its answer is dropped. The path typed in the field
        # is what OK saves, checked or not, as before.
        self._runner.abandon()
        super().done(result)
