"""The training form: one row per TrainConfig setting, made from the settings' descriptions
(core/training.py SETTINGS: label, tooltip, range, choices), the presets (Lego / Textual Inversion
baseline) and the app's own defaults for a project."""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lego_studio.core.train_config import SETTINGS, SETTING_GROUPS, Setting, TrainConfig

PRESETS = {"Lego": "lego", "Textual Inversion baseline": "ti"}

# The app's form starts with previews on, so a new user sees the concept form while it trains.
# Measured on the Shape World demo on a 2-core CPU (scripts/measure_preview_cost.py): one preview
# costs about 7 training steps (Lego 1.21 s vs 182 ms a step; TI 0.54 s vs 75 ms), so previews
# every 100 steps slow a run by about 7 % (every 50: 13-14 %, too much).
APP_PREVIEW_EVERY = 100
# Fields the project owns (its page in Projects); the form shows them, a preset never changes them.
PROJECT_FIELDS = ("name", "subject", "positive_words", "negative_words")


def settings_to_remember(project, config: TrainConfig, model: str | None = None) -> tuple[dict, dict | None]:
    """What Start stores in ``project``: ``(fields, train_defaults)``. The project's own fields
    (subject words, concept name, word lists) typed in the form that differ from the project's are
    the project's, stored as if typed in Projects (which then shows them too); the form's settings
    that differ from the app's defaults, with the model, are its ``train_defaults`` (None:
    unchanged), so the project trains with them again after a restart."""
    typed = {"subject": config.subject, "concept_name": config.name, "positive_words": list(config.positive_words),
             "negative_words": list(config.negative_words or [])}
    fields = {key: value for key, value in typed.items() if getattr(project, key) != value}
    defaults = app_defaults(config.method).to_dict()
    changed = {k: v for k, v in config.to_dict().items() if k not in PROJECT_FIELDS and v != defaults.get(k)}
    changed["method"] = config.method
    if model:  # the form's settings do not hold it; the project does (not a TrainConfig field)
        changed["model"] = model
    elif "model" in project.train_defaults:
        changed["model"] = project.train_defaults["model"]
    return fields, (changed if changed != project.train_defaults else None)


def app_defaults(method: str = "lego", train_defaults: dict | None = None) -> TrainConfig:
    """What the form shows for a project: the method's preset, the app's own defaults
    (previews on), then the project's saved training settings."""
    data = {**TrainConfig.preset_values(method), "preview_every": APP_PREVIEW_EVERY}
    for key, value in (train_defaults or {}).items():
        if key in SETTINGS and key != "method":
            data[key] = value
    if method == "lego" and not data.get("subject"):
        data["subject"] = "a subject"
    return TrainConfig.from_dict(data, source="project training settings")


def tooltip(setting: Setting) -> str:
    """A setting's tooltip: its help (core/training.py) and details; how a list is typed. Rich
    text, so Qt wraps a long one instead of showing one line as wide as the screen."""
    text = setting.help[0].upper() + setting.help[1:]
    if setting.details:
        text += ". " + setting.details
    if setting.kind == "words":
        text += f". Separate them with '{setting.list_separator}'."
    return wrapping_tooltip(text)


def wrapping_tooltip(text: str) -> str:
    """``text`` as a rich-text tooltip (Qt word-wraps those), its characters shown as typed."""
    return "<qt>" + html.escape(text, quote=False).replace("\n", "<br>") + "</qt>"


def spin_range(setting: Setting) -> tuple[float, float]:
    """The spin box's range for a number setting: its valid range; the smallest value the box can
    show for a positive float; one step below the minimum for an optional int (that value shows
    ``none_text`` and means None); ``form_maximum`` where the config sets no maximum."""
    low = setting.minimum if setting.minimum is not None else 0
    if setting.positive:
        low = 10 ** -setting.decimals
    if setting.kind == "int" and setting.optional:
        low -= setting.multiple_of or 1
    high = setting.maximum if setting.maximum is not None else setting.form_maximum
    return low, high


class ConfigForm(QWidget):
    """Widgets for every TrainConfig field; ``config()`` reads them back (validated)."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.widgets: dict[str, QWidget] = {}
        layout = QVBoxLayout(self)
        forms: dict[str, QFormLayout] = {}
        used = {setting.group for setting in SETTINGS.values()}
        for group in SETTING_GROUPS:
            if group not in used:
                continue
            box = QGroupBox(group)
            forms[group] = QFormLayout(box)
            forms[group].setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            layout.addWidget(box)
        for setting in SETTINGS.values():
            widget = self._make_widget(setting)
            widget.setToolTip(tooltip(setting))
            self.widgets[setting.name] = widget
            label_widget = QLabel(setting.label + ":")
            label_widget.setToolTip(tooltip(setting))
            forms[setting.group].addRow(label_widget, widget)
        layout.addStretch(1)
        self.set_config(TrainConfig())

    def _make_widget(self, setting: Setting) -> QWidget:
        if setting.choices:
            combo = QComboBox()
            combo.addItems(list(setting.choices))
            combo.currentTextChanged.connect(self.changed)
            return combo
        if setting.kind == "bool":
            box = QCheckBox()
            box.toggled.connect(self.changed)
            return box
        if setting.kind == "int":
            spin = QSpinBox()
            spin.setRange(*(int(end) for end in spin_range(setting)))
            spin.setSingleStep(int(setting.step or setting.multiple_of or 1))
            if setting.optional:
                spin.setSpecialValueText(setting.none_text)  # shown at the minimum, which means None
            spin.valueChanged.connect(self.changed)
            return spin
        if setting.kind == "float":
            spin = QDoubleSpinBox()
            spin.setDecimals(setting.decimals)
            spin.setRange(*(float(end) for end in spin_range(setting)))
            spin.setSingleStep(float(setting.step or 0.1))
            spin.valueChanged.connect(self.changed)
            return spin
        edit = QLineEdit()
        edit.textChanged.connect(self.changed)
        return edit

    def set_config(self, config: TrainConfig) -> None:
        for name in SETTINGS:
            self.set_value(name, getattr(config, name))

    def set_value(self, name: str, value) -> None:
        widget = self.widgets[name]
        setting = SETTINGS[name]
        if isinstance(widget, QComboBox):
            widget.setCurrentText(str(value))
        elif isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
            widget.setValue(widget.minimum() if value is None else value)
        elif setting.kind == "words":
            widget.setText("" if value is None else f"{setting.list_separator} ".join(value))
            widget.setCursorPosition(0)  # a long list shows its start, not its end
        else:
            widget.setText("" if value is None else str(value))
            widget.setCursorPosition(0)

    def value(self, name: str):
        widget = self.widgets[name]
        setting = SETTINGS[name]
        if isinstance(widget, QComboBox):
            return widget.currentText()
        if isinstance(widget, QCheckBox):
            return widget.isChecked()
        if isinstance(widget, QSpinBox):
            if setting.optional and widget.value() == widget.minimum():
                return None
            return widget.value()
        if isinstance(widget, QDoubleSpinBox):
            return float(widget.value())
        text = widget.text().strip()
        if setting.kind == "words":
            items = [part.strip() for part in text.split(setting.list_separator) if part.strip()]
            return None if (setting.optional and not items) else items
        return None if (setting.optional and not text) else text

    def draft(self) -> TrainConfig:
        """The form as it stands, not validated (a half-filled form still says which terms are on)."""
        return TrainConfig(**{name: self.value(name) for name in SETTINGS})

    def config(self) -> TrainConfig:
        """The form as a validated TrainConfig; InputError (one line) when a value is wrong."""
        data = {name: self.value(name) for name in SETTINGS}
        return TrainConfig.from_dict(data, source="training settings")

    def apply_preset(self, method: str) -> None:
        """Switch the method: only the settings that differ between the methods change (vectors,
        loss weights, reconstruction region); everything else the user set stays, and so does
        what describes the project (name, subject, words, templates, context subjects)."""
        for key, value in TrainConfig.preset_values(method).items():
            self.set_value(key, value)
        if method == "lego" and not self.value("subject"):
            self.set_value("subject", "a subject")


def explicit_memory_settings(config: TrainConfig) -> set[str]:
    """Memory settings the user changed from the defaults in the form: the automatic choice keeps
    off them (turning a saving on is always explicit; leaving the default lets the app decide)."""
    defaults = TrainConfig()
    return {name for name in ("gradient_checkpointing", "unet_batching", "batch_size")
            if getattr(config, name) != getattr(defaults, name)}
