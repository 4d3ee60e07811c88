"""Gallery place: pick concepts from the library (several at once), type subjects (one per line),
seeds, steps, guidance; generate in a worker with progress and cancel. Results form a grid with
one column per concept (headed with its method, Lego or TI), so a Lego concept and its Textual
Inversion baseline sit side by side; "Together in one image" composes the chosen concepts in every
image instead ("a teapot <melting> <on-fire>"), and concepts may be typed in the template.
Every image is saved as a PNG carrying its prompt/seed/model/concept; open one large to read its
settings, copy the prompt, reuse the settings, or export the selection to a folder."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lego_studio.core.errors import InputError, LegoError
from lego_studio.core.model_specs import BUILTIN_MODELS
from lego_studio.core.wording import plural
from lego_studio.ui.model_cache import refill_model_combos
from lego_studio.ui.workers import TaskRunner
from lego_studio.ui.layouts import install_two_pane_layout
from lego_studio.ui.wheel_guard import guard_wheel

CELL = 160
# Default subjects of the grid's rows: for Stable Diffusion models, and for the Shape World models,
# which know only Shape World subjects.
GENERIC_SUBJECTS = "a teapot\na dog"
SHAPEWORLD_SUBJECTS = "a green square\na purple triangle"
DEFAULT_TEMPLATE = "a photo of {subject} {concept}"
PATH_ROLE = Qt.ItemDataRole.UserRole
REQUEST_ROLE = Qt.ItemDataRole.UserRole + 1
ORIGIN_ROLE = Qt.ItemDataRole.UserRole + 2  # (subject, template) the cell was made from


def parse_seeds(text: str) -> list[int]:
    """"0, 1, 2" or "0-3" or a mix; one-line InputError for anything else."""
    seeds: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                low, high = part.split("-", 1) if not part.startswith("-") else (part, "")
                low_i, high_i = int(low), int(high)
                if high_i < low_i or high_i - low_i > 1000:
                    raise ValueError
                seeds.extend(range(low_i, high_i + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise InputError(f"seeds: {part!r} is not a number or a range like 0-3") from None
    if not seeds:
        raise InputError("seeds: give at least one seed, e.g. 0, 1, 2")
    if any(s < 0 for s in seeds):
        raise InputError("seeds must be 0 or more")
    return seeds


class ImageDialog(QDialog):
    """One image large, with its generation settings."""

    reuse_requested = Signal(object)

    def __init__(self, path: Path, request, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(path.name)
        self.request = request
        picture = QLabel()
        pixmap = QPixmap(str(path))
        if not pixmap.isNull():
            side = max(512, pixmap.width())
            picture.setPixmap(pixmap.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation))
        picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        info = QLabel(self.describe(request, path))
        info.setWordWrap(True)
        info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        copy = QPushButton("Copy prompt")
        copy.clicked.connect(lambda: QGuiApplication.clipboard().setText(request.prompt))
        reuse = QPushButton("Reuse settings")
        reuse.clicked.connect(lambda: (self.reuse_requested.emit(request), self.accept()))
        close = QPushButton("Close")
        close.clicked.connect(self.accept)
        buttons = QHBoxLayout()
        buttons.addWidget(copy)
        buttons.addWidget(reuse)
        buttons.addStretch(1)
        buttons.addWidget(close)
        layout = QVBoxLayout(self)
        layout.addWidget(picture, 1)
        layout.addWidget(info)
        layout.addLayout(buttons)

    @staticmethod
    def describe(request, path: Path) -> str:
        concepts = ", ".join(c.get("placeholder", "?") for c in request.concepts) or "—"
        rows = [
            ("Prompt", request.prompt),
            ("Negative", request.negative_prompt or "—"),
            ("Seed", request.seed),
            ("Steps", request.steps),
            ("Guidance", request.guidance),
            ("Sampler", request.scheduler),
            ("Size", f"{request.width}×{request.height}"),
            ("Model", request.model),
            ("Concepts", concepts),
            ("File", path),
        ]
        return "".join(f"<b>{k}:</b> {html.escape(str(v))}<br>" for k, v in rows)


class GalleryView(QWidget):
    generation_finished = Signal()

    def __init__(self, context, parent: QWidget | None = None):
        super().__init__(parent)
        self.context = context
        self.runner = TaskRunner(self)
        self.library_runner = TaskRunner(self)
        self.results: list[dict] = []  # {path, request, column, row}
        self.last_error = ""

        # --- controls
        self.concept_list = QListWidget()
        self.concept_list.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.concept_list.setToolTip("Choose one or more concepts; each becomes a column of the grid")
        self.concept_list.setMinimumHeight(110)
        self.together_check = QCheckBox("Together in one image")
        self.together_check.setToolTip(
            "On: every image has all the chosen concepts (a teapot <melting> <on-fire>), one column. "
            "Off: one column per concept, side by side. Concepts can also be typed in the template.")
        self.subjects_edit = QPlainTextEdit()
        self.subjects_edit.setPlaceholderText("a teapot\na dog\na car")
        self.subjects_edit.setPlainText(GENERIC_SUBJECTS)
        self.subjects_edit.setToolTip("One subject per line; each becomes a row")
        self.subjects_edit.setMaximumHeight(90)
        self.template_edit = QLineEdit(DEFAULT_TEMPLATE)
        self.template_edit.setToolTip("{subject} and {concept} are filled in for every cell; concepts from the "
                                      "library can also be typed here, e.g. a photo of {subject} <melting> <on-fire>")
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("blurry, low quality")
        self.seeds_edit = QLineEdit("0")
        self.seeds_edit.setToolTip("Seeds: 0, 1, 2 or a range 0-3; same seed = same noise in every column")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1000)
        self.steps_spin.setValue(30)
        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(0.0, 30.0)
        self.guidance_spin.setSingleStep(0.5)
        self.guidance_spin.setValue(7.5)
        self.guidance_spin.setToolTip("Classifier-free guidance: higher follows the prompt more closely")
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        form = QFormLayout()
        form.addRow("Concepts:", self.concept_list)
        form.addRow("", self.together_check)
        form.addRow("Subjects:", self.subjects_edit)
        form.addRow("Template:", self.template_edit)
        form.addRow("Negative:", self.negative_edit)
        form.addRow("Seeds:", self.seeds_edit)
        form.addRow("Steps:", self.steps_spin)
        form.addRow("Guidance:", self.guidance_spin)
        form.addRow("Model:", self.model_combo)
        form.addRow("Device:", self.device_combo)
        self.generate_button = QPushButton("Generate")
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.runner.cancel)
        self.progress = QProgressBar()
        self.status_label = QLabel()
        self.status_label.setWordWrap(True)
        run_row = QHBoxLayout()
        run_row.addWidget(self.generate_button)
        run_row.addWidget(self.cancel_button)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addLayout(form)
        left_layout.addLayout(run_row)
        left_layout.addWidget(self.progress)
        left_layout.addWidget(self.status_label)
        left_layout.addStretch(1)
        left.setMinimumWidth(320)

        # --- results
        self.table = QTableWidget()
        self.table.setIconSize(QSize(CELL, CELL))
        self.table.horizontalHeader().setDefaultSectionSize(CELL + 12)
        self.table.verticalHeader().setDefaultSectionSize(CELL + 12)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.cellDoubleClicked.connect(self.open_cell)
        open_button = QPushButton("Open large")
        open_button.clicked.connect(lambda: self.open_cell(self.table.currentRow(), self.table.currentColumn()))
        copy_button = QPushButton("Copy prompt")
        copy_button.clicked.connect(self.copy_prompt)
        reuse_button = QPushButton("Reuse settings")
        reuse_button.clicked.connect(self._reuse_current)
        export_button = QPushButton("Export selected…")
        export_button.clicked.connect(self._export_dialog)
        result_buttons = QHBoxLayout()
        for button in (open_button, copy_button, reuse_button, export_button):
            result_buttons.addWidget(button)
        result_buttons.addStretch(1)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addLayout(result_buttons)
        right_layout.addWidget(self.table, 1)

        install_two_pane_layout(self, left, right)

        self._wanted: set[str] = set()  # concepts to select once the list (re)loads
        self._relist = False  # the library changed while it was being listed
        self._base_models: dict[str, str] = {}  # concept name -> the model spec it was trained on
        self._methods: dict[str, str] = {}  # concept name -> "Lego" / "TI"
        self.concept_list.itemSelectionChanged.connect(self._follow_concepts_model)
        context.library_changed.connect(self.refresh_concepts)
        context.settings_changed.connect(self.refresh_models)
        context.project_changed.connect(lambda _: self._select_project_concept())
        self.model_combo.currentIndexChanged.connect(lambda _: self._fit_subjects_to_model())
        self.refresh_models()
        self.refresh_concepts()
        self._fit_subjects_to_model()
        guard_wheel(self)  # spin and combo boxes take the wheel only when focused

    # ------------------------------------------------------------ choices
    def refresh_models(self) -> None:
        refill_model_combos(self.model_combo, self.device_combo, self.context.settings)

    def refresh_concepts(self) -> None:
        library = self.context.library()
        if self.library_runner.busy:
            # A change during a load: list again when it ends, or the change is never shown.
            self._relist = True
            return
        self._relist = False
        self.library_runner.start(lambda state: library.list(), on_done=self._concepts_loaded,
                                  on_error=lambda m: self.status_label.setText(m), name="gallery-library")

    def _fit_subjects_to_model(self) -> None:
        """A Shape World model knows only shapes: untouched default subjects follow the model
        (a teapot means nothing to it; a green square means nothing to Stable Diffusion)."""
        spec = self.model_combo.currentData() or "shapeworld"
        # A Shape World model added in Settings from its folder is one too (its family says so).
        shape_world = spec in BUILTIN_MODELS or any(
            entry.spec == spec and entry.family == "shapeworld" for entry in self.context.settings.models)
        wanted = SHAPEWORLD_SUBJECTS if shape_world else GENERIC_SUBJECTS
        if self.subjects_edit.toPlainText() in (GENERIC_SUBJECTS, SHAPEWORLD_SUBJECTS, ""):
            self.subjects_edit.setPlainText(wanted)

    def _follow_concepts_model(self) -> None:
        """Chosen concepts that were all trained on one listed model select that model: an SDXL
        concept is drawn with the SDXL model it was made for, not refused by the SD default."""
        models = {self._base_models.get(name, "") for name in self.chosen_concepts()}
        if len(models) == 1:
            index = self.model_combo.findData(models.pop())
            if index >= 0:
                self.model_combo.setCurrentIndex(index)

    def _select_project_concept(self) -> None:
        """With nothing chosen, the open project's own concept (when the library has it) is."""
        project = self.context.project
        if project is not None and not self.chosen_concepts():
            self.select_when_listed([project.concept_name])

    def select_when_listed(self, names) -> None:
        """Choose ``names`` now if listed, else as soon as the library list (re)loads, e.g. a
        concept that training has just added."""
        self._wanted |= set(names)
        self.choose_concepts(sorted(set(self.chosen_concepts()) | self._wanted))

    def _concepts_loaded(self, entries) -> None:
        if self._relist:
            QTimer.singleShot(0, self.refresh_concepts)  # after this task's runner is idle
        chosen = set(self.chosen_concepts()) | self._wanted
        if not chosen and self.context.project is not None:
            chosen = {self.context.project.concept_name}
        self._wanted = {name for name in self._wanted if name not in {entry.name for entry in entries}}
        self._base_models = {entry.name: str(entry.metadata.get("base_model") or "") for entry in entries}
        self.concept_list.clear()
        for entry in entries:
            method = {"lego": "Lego", "ti": "TI"}.get(str(entry.metadata.get("method")), "")
            self._methods[entry.name] = method
            item = QListWidgetItem(f"{entry.placeholder}  {method}".strip())
            item.setToolTip(f"{entry.placeholder}: {entry.badge}, {plural(entry.num_vectors, 'vector')}")
            item.setData(Qt.ItemDataRole.UserRole, entry.name)
            self.concept_list.addItem(item)
            item.setSelected(entry.name in chosen)

    def concept_names(self) -> list[str]:
        return [self.concept_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.concept_list.count())]

    def chosen_concepts(self) -> list[str]:
        return [i.data(Qt.ItemDataRole.UserRole) for i in self.concept_list.selectedItems()]

    def choose_concepts(self, names: list[str]) -> None:
        for i in range(self.concept_list.count()):
            item = self.concept_list.item(i)
            item.setSelected(item.data(Qt.ItemDataRole.UserRole) in names)

    def subjects(self) -> list[str]:
        return [line.strip() for line in self.subjects_edit.toPlainText().splitlines() if line.strip()]

    def _output_folder(self) -> Path:
        project = self.context.project
        if project is not None:
            return project.folder / "gallery"
        from lego_studio.core.paths import data_dir

        return data_dir() / "gallery"

    # ------------------------------------------------------------ generate
    def columns_for(self, names: list[str], template: str) -> list[list[str]]:
        """The grid's columns, each a list of concept names drawn together: one column per chosen
        concept, or one column with all of them when "Together in one image" is on; a template
        without ``{concept}`` (its concepts typed in it) makes one column."""
        if not names or "{concept}" not in template:
            return [[]]
        if self.together_check.isChecked() and len(names) > 1:
            return [list(names)]
        return [[name] for name in names]

    def column_label(self, names: list[str], typed: list[str]) -> str:
        """A column's header: its concepts, each with its method (Lego / TI)."""
        shown = [f"<{name}>" + (f" {self._methods[name]}" if self._methods.get(name) else "") for name in names]
        shown += [p for p in typed if p.strip("<>") not in names]
        return " + ".join(shown) if shown else "no concept"

    def generate(self) -> bool:
        names = self.chosen_concepts()
        subjects = self.subjects()
        template = self.template_edit.text().strip() or DEFAULT_TEMPLATE
        if "{subject}" not in template:
            subjects = [""]  # a fixed prompt: one row per seed
        try:
            if not subjects:
                raise InputError("subjects: type at least one subject, one per line")
            seeds = parse_seeds(self.seeds_edit.text())
            from lego_studio.core.generation import check_typed_placeholders, fill_template

            # Concepts typed in the template ("a teapot <melting> <on-fire>") must be in the
            # library: an unknown one is one line here, not silently plain words in the images.
            typed = check_typed_placeholders(template, [f"<{name}>" for name in self.concept_names()])
            fill_template(template, "", "")  # a template error before the model loads
        except LegoError as exc:
            self.status_label.setText(str(exc))
            return False
        negative = self.negative_edit.text().strip()
        steps, guidance = self.steps_spin.value(), self.guidance_spin.value()
        spec = self.model_combo.currentData() or "shapeworld"
        device = self.device_combo.currentText()
        library = self.context.library()
        models = self.context.models
        out_dir = self._output_folder()
        typed_names = [p.strip("<>") for p in typed]
        columns = self.columns_for(names, template)
        labels = [self.column_label(column, typed) for column in columns]
        rows = [(subject, seed) for subject in subjects for seed in seeds]
        total = len(columns) * len(rows) * steps

        def run(state):
            from lego_studio.core.concepts import check_concepts_fit
            from lego_studio.core.generation import generate_grid, save_generated
            from lego_studio.core.project import safe_folder_name

            with models.lease(spec, device, state=state) as model:
                loaded = {name: library.get(name) for name in dict.fromkeys(typed_names + [n for c in columns for n in c])}
                # Every column is drawn with this model: refuse a concept of another family (or
                # width) before the first image, naming both families.
                check_concepts_fit(model, list(loaded.values()))
                for column, column_names in enumerate(columns):
                    concepts = [loaded[name] for name in dict.fromkeys(column_names + typed_names)]
                    offset = column * len(rows) * steps
                    made = [0]

                    def progress(step, _total, offset=offset):
                        state.progress(offset + step, total, "Generating…")

                    def on_image(request, image, column=column, column_names=column_names):
                        row = made[0]
                        made[0] += 1
                        subject, seed = rows[row]
                        stem = safe_folder_name(f"{'+'.join(column_names + typed_names) or 'plain'}-{subject}-{seed}")[:60]
                        path = _unused(out_dir / f"{stem}.png")
                        save_generated(image, path)
                        state.emit({"column": column, "row": row, "path": path, "request": request,
                                    "subject": subject, "template": template})

                    generate_grid(model, concepts, subjects, seeds, template=template, negative_prompt=negative,
                                  steps=steps, guidance=guidance, progress=progress,
                                  cancel=lambda: state.cancelled, on_image=on_image)
            return len(columns) * len(rows)

        self._prepare_table(labels, rows)
        self.results = []
        self.last_error = ""
        self.progress.setRange(0, total)
        self.progress.setValue(0)
        self.status_label.setText("Loading the model…")
        started = self.runner.start(
            run,
            on_done=self._finished,
            on_error=self._failed,
            on_event=self._add_result,
            on_progress=lambda d, t, m: (self.progress.setValue(d), self.status_label.setText(f"{m} {d}/{t} steps")),
            on_cancelled=lambda: self._stopped("Cancelled."),
            name="generate",
        )
        self._set_busy(started)
        return started

    def _set_busy(self, busy: bool) -> None:
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _prepare_table(self, columns, rows) -> None:
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        # One concept a line, each elided to the column (the full label is the tooltip): two
        # composed concepts must not be cut off at the left edge of a 160 px column.
        metrics = self.table.horizontalHeader().fontMetrics()
        width = self.table.horizontalHeader().defaultSectionSize() - 8
        for index, label in enumerate(columns):
            lines = [metrics.elidedText(line, Qt.TextElideMode.ElideMiddle, width)
                     for line in str(label).replace(" + ", "\n+ ").split("\n")]
            header = QTableWidgetItem("\n".join(lines))
            header.setToolTip(str(label))
            self.table.setHorizontalHeaderItem(index, header)
        self.table.setVerticalHeaderLabels([f"{subject}\nseed {seed}".strip() for subject, seed in rows])

    def _add_result(self, result: dict) -> None:
        self.results.append(result)
        pixmap = QPixmap(str(result["path"]))
        item = QTableWidgetItem(QIcon(pixmap.scaled(CELL, CELL, Qt.AspectRatioMode.KeepAspectRatio)), "")
        item.setData(PATH_ROLE, str(result["path"]))
        item.setData(REQUEST_ROLE, result["request"])
        item.setData(ORIGIN_ROLE, (result["subject"], result["template"]))
        item.setToolTip(result["request"].prompt if result["request"] else "")
        self.table.setItem(result["row"], result["column"], item)

    def _finished(self, count: int) -> None:
        self._set_busy(False)
        self.progress.setValue(self.progress.maximum())
        self.status_label.setText(f"Made {plural(count, 'image')} in {self._output_folder()}")
        self.generation_finished.emit()

    def _failed(self, message: str) -> None:
        self.last_error = message
        self._stopped(message)

    def _stopped(self, message: str) -> None:
        self._set_busy(False)
        self.status_label.setText(message)
        self.generation_finished.emit()

    # ------------------------------------------------------------ results
    def _cell(self, row: int, column: int):
        item = self.table.item(row, column)
        if item is None or not item.data(PATH_ROLE):
            return None
        return Path(item.data(PATH_ROLE)), item.data(REQUEST_ROLE)

    def open_cell(self, row: int, column: int) -> ImageDialog | None:
        cell = self._cell(row, column)
        if cell is None:
            return None
        dialog = ImageDialog(cell[0], cell[1], self)
        dialog.reuse_requested.connect(self.reuse)
        dialog.open()
        return dialog

    def copy_prompt(self) -> None:
        cell = self._cell(self.table.currentRow(), self.table.currentColumn())
        if cell is not None and cell[1] is not None:
            QGuiApplication.clipboard().setText(cell[1].prompt)

    def _reuse_current(self) -> None:
        cell = self._cell(self.table.currentRow(), self.table.currentColumn())
        item = self.table.item(self.table.currentRow(), self.table.currentColumn())
        if cell is not None and cell[1] is not None:
            subject, template = item.data(ORIGIN_ROLE) or (None, None)
            self.reuse(cell[1], subject, template)

    def reuse(self, request, subject: str | None = None, template: str | None = None) -> None:
        """Put an image's settings back into the controls (seed, steps, guidance, negative,
        concepts, prompt), so one click on Generate makes it again."""
        self.seeds_edit.setText(str(request.seed))
        self.steps_spin.setValue(int(request.steps))
        self.guidance_spin.setValue(float(request.guidance))
        self.negative_edit.setText(request.negative_prompt)
        from lego_studio.core.generation import typed_placeholders

        placeholders = [c.get("placeholder", "") for c in request.concepts if c.get("placeholder")]
        if subject is not None and template is not None:
            self.template_edit.setText(template)
            self.subjects_edit.setPlainText(subject)
        else:
            # Only the prompt is known (an image from elsewhere): it becomes the template, its
            # one concept as {concept}; several stay typed in it (drawn together again).
            prompt = request.prompt
            if len(placeholders) == 1:
                prompt = prompt.replace(placeholders[0], "{concept}")
            self.template_edit.setText(prompt)
            self.subjects_edit.setPlainText("")
        typed = set(typed_placeholders(self.template_edit.text()))
        chosen = [p for p in placeholders if p not in typed]
        self.choose_concepts([p.strip("<>") for p in chosen])
        self.together_check.setChecked(len(chosen) > 1)
        self.status_label.setText(f"Settings of seed {request.seed} loaded; press Generate.")

    def selected_paths(self) -> list[Path]:
        paths = []
        for item in self.table.selectedItems():
            if item.data(PATH_ROLE):
                paths.append(Path(item.data(PATH_ROLE)))
        return paths

    def export_selected(self, folder: Path) -> int:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        count = 0
        for path in self.selected_paths():
            # Plain copy keeps the PNG text chunks (prompt, seed, model, concept).
            shutil.copy2(path, _unused(folder / path.name))
            count += 1
        self.status_label.setText(f"Exported {plural(count, 'image')} to {folder}")
        return count

    def _export_dialog(self) -> None:
        if not self.selected_paths():
            self.status_label.setText("Select images in the grid first.")
            return
        folder = QFileDialog.getExistingDirectory(self, "Export images to")
        if folder:
            self.export_selected(Path(folder))

    def shutdown(self) -> None:
        self.runner.shutdown()
        self.library_runner.shutdown()


def _unused(path: Path) -> Path:
    candidate, counter = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{counter}{path.suffix}")
        counter += 1
    return candidate
