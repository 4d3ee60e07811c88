"""Training panel options and runs list, Concept Library view, Gallery controls (no heavy jobs:
the end-to-end flow test runs those)."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
import torch
from PIL import Image
from PySide6.QtGui import QTextDocument

from lego_studio.core.concepts import Concept, export_concept, load_concept
from lego_studio.core.errors import InputError
from lego_studio.core.estimate import format_duration
from lego_studio.core.run_files import TrainEvent
from lego_studio.core.train_config import SETTINGS, TrainConfig
from lego_studio.ui.gallery_view import parse_seeds

pytestmark = pytest.mark.gui


def plain(tip: str) -> str:
    """A (rich-text) tooltip as the user reads it."""
    document = QTextDocument()
    document.setHtml(tip)
    return document.toPlainText()


def new_project(window, tmp_path, name="P"):
    folder = tmp_path / f"src-{name}"
    folder.mkdir()
    Image.new("RGB", (32, 32), "red").save(folder / "a.png")
    return window.create_project_and_wait(name, [folder])


# ------------------------------------------------------------------------------ training


def test_every_engine_option_has_a_widget_with_a_tooltip(window):
    form = window.training_view.form
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(form.widgets) == set(names)
    for name in names:
        assert plain(form.widgets[name].toolTip()).lower().startswith(SETTINGS[name].help.lower()), name
    # The form round-trips a config exactly, including the "None" (use default) values.
    config = TrainConfig(subject="a cat", resolution=None, negative_words=None, preview_prompts=None,
                         templates=["a photo of {}", "a drawing of {}"], lr=0.00123, flip=False)
    form.set_config(config)
    assert form.config() == config
    changed = TrainConfig(subject="a cat", resolution=64, negative_words=["fur"], init_from="/x/c.safetensors")
    form.set_config(changed)
    assert form.config() == changed


def test_form_rows_are_made_from_the_descriptions(qtbot):
    """Labels, groups, tooltips, choices and spin-box ranges come from core/training.py SETTINGS,
    and no spin box offers a value at its ends that the config refuses."""
    from PySide6.QtWidgets import QCheckBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLineEdit, QSpinBox

    from lego_studio.core.train_config import SETTING_GROUPS
    from lego_studio.ui.train_form import ConfigForm

    form = ConfigForm()
    qtbot.addWidget(form)
    rows = {}
    for box in form.findChildren(QGroupBox):
        layout = box.layout()
        for row in range(layout.rowCount()):
            label = layout.itemAt(row, QFormLayout.ItemRole.LabelRole).widget()
            widget = layout.itemAt(row, QFormLayout.ItemRole.FieldRole).widget()
            name = next(n for n, w in form.widgets.items() if w is widget)
            rows[name] = (box.title(), label.text(), label.toolTip())
    assert list(rows) == [s.name for group in SETTING_GROUPS for s in SETTINGS.values() if s.group == group]
    form.set_value("subject", "a cat")
    base = form.config()
    for name, setting in SETTINGS.items():
        widget = form.widgets[name]
        assert rows[name][:2] == (setting.group, setting.label + ":"), name
        assert rows[name][2] == widget.toolTip() and setting.help[1:] in plain(widget.toolTip()), name
        if setting.choices:
            assert [widget.itemText(i) for i in range(widget.count())] == list(setting.choices), name
        elif setting.kind == "bool":
            assert isinstance(widget, QCheckBox), name
        elif setting.kind in ("int", "float"):
            assert isinstance(widget, QSpinBox if setting.kind == "int" else QDoubleSpinBox), name
            high = setting.maximum if setting.maximum is not None else setting.form_maximum
            if setting.kind == "float":
                low = 10 ** -setting.decimals if setting.positive else setting.minimum
                assert widget.decimals() == setting.decimals, name
            else:
                low = setting.minimum - (setting.multiple_of or 1) if setting.optional else setting.minimum
            assert (widget.minimum(), widget.maximum()) == pytest.approx((low, high)), name
            for end in (widget.minimum(), widget.maximum()):
                widget.setValue(end)
                expected = None if (setting.optional and end == widget.minimum()) else end
                value = getattr(form.config(), name)
                assert value is None if expected is None else value == pytest.approx(expected), name
            form.set_value(name, getattr(base, name))
        else:
            assert isinstance(widget, QLineEdit), name
    assert form.config() == base


def test_presets_switch_between_lego_and_the_ti_baseline(window, tmp_path):
    view = window.training_view
    new_project(window, tmp_path)
    view.form.set_value("subject", "a toy robot")
    view.form.set_value("steps", 123)
    # A project's own world (its caption templates and context subjects) survives preset switches.
    view.form.set_value("templates", ["a drawing of {}"])
    view.form.set_value("context_subjects", ["a blue star", "a green heart"])
    view.preset_combo.setCurrentText("Textual Inversion baseline")
    ti = view.form.config()
    assert (ti.method, ti.num_vectors, ti.w_subj, ti.w_ctx, ti.w_words, ti.rec_region) == ("ti", 1, 0, 0, 0, "full")
    assert ti.steps == 123 and ti.templates == ["a drawing of {}"]
    assert ti.flip  # the baseline's usual recipe: mirror images on
    view.preset_combo.setCurrentText("Lego")
    lego = view.form.config()
    assert lego.method == "lego" and lego.w_ctx > 0 and lego.subject_in_prompt and lego.subject == "a toy robot"
    # "Random flips" is off for Lego, as its tooltip says
    assert not lego.flip and "off by default" in view.form.widgets["flip"].toolTip()
    assert lego.templates == ["a drawing of {}"] and lego.context_subjects == ["a blue star", "a green heart"]


def test_invalid_settings_are_reported_and_nothing_starts(window, tmp_path):
    view = window.training_view
    new_project(window, tmp_path)
    view.form.set_value("context_subjects", [])  # the context loss (on by default) needs other subjects
    assert not view.start()
    assert "context subject" in view.status_label.text() and "\n" not in view.status_label.text()
    assert not view.is_running()


def test_interrupted_run_shows_as_resumable_when_the_project_is_opened(window, qtbot, tmp_path):
    project = new_project(window, tmp_path)
    run = project.new_run_dir()
    TrainConfig(subject="a cat", steps=10).save(run / "config.json")
    (run / "log.jsonl").write_text(json.dumps({"step": 4, "losses": {"total": 1.0}}) + "\n")
    old = time.time() - 3600
    for path in (run / "config.json", run / "log.jsonl", run):
        os.utime(path, (old, old))
    window.open_project_and_wait(project.folder)
    view = window.training_view
    qtbot.waitUntil(lambda: not view.runs_loading, timeout=10000)
    assert view.resumable_runs() == [run]
    view.runs_list.setCurrentRow(0)
    assert view.resume_button.isEnabled()
    assert "interrupted" in view.runs_list.item(0).text() and "step 4/10" in view.runs_list.item(0).text()


def test_eta_uses_the_one_duration_format(window):
    view = window.training_view
    view._on_event(TrainEvent("step", step=1, total=100, eta_s=7325.0, losses={"total": 0.1}))
    assert view.eta_label.text() == f"ETA {format_duration(7325)}" == "ETA 2 h 02 min"


def test_loss_chart_draws_each_term(qtbot):
    from lego_studio.ui.loss_chart import LossChart

    chart = LossChart()
    qtbot.addWidget(chart)
    chart.resize(400, 200)
    blank = chart.grab().toImage()
    for step in range(1, 30):
        chart.add(step, {"total": 1.0 / step, "rec": 0.5, "subj": float("nan")})
    assert chart.terms() == ["total", "rec"]  # non-finite values are skipped
    drawn = chart.grab().toImage()
    assert drawn != blank
    values = [v for _, v in chart.points("total")]
    assert values == sorted(values, reverse=True)


# ------------------------------------------------------------------------------ library


def add_concept(library, name, width=32, n=2, method="lego", family="tiny"):
    return library.add(Concept(name, f"<{name}>", torch.randn(n, width), {"method": method, "family": family}))


def test_library_lists_searches_renames_tags_and_deletes(window, qtbot):
    view = window.library_view
    library = window.context.library()
    add_concept(library, "frozen")
    add_concept(library, "melting", method="ti")
    window.context.library_changed.emit()
    qtbot.waitUntil(lambda: sorted(view.visible_names()) == ["frozen", "melting"], timeout=10000)
    assert str(library.root) in view.location_label.text()
    assert "tiny" in view.grid.item(0).toolTip()  # the family badge

    view.search_edit.setText("melt")
    assert view.visible_names() == ["melting"]
    view.search_edit.setText("")
    # A run that added the masks' colour to the subject words: the details say it trained with them.
    library.add(Concept("caged", "<caged>", torch.randn(1, 32), {"method": "lego", "family": "tiny", "subject": "a star",
                                                                 "training_subject": "a yellow star"}))
    window.context.library_changed.emit()
    qtbot.waitUntil(lambda: "caged" in view.visible_names(), timeout=10000)
    view.select("caged")
    shown = QTextDocument()
    shown.setHtml(view.details.text())
    assert "Subject: a star (trained as “a yellow star”: colour from the masks)" in shown.toPlainText()
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        view.delete_selected()
    assert sorted(view.visible_names()) == ["frozen", "melting"]

    view.select("frozen")
    shown = QTextDocument()
    shown.setHtml(view.details.text())
    assert "Type in prompts: <frozen>" in shown.toPlainText() and "Method: Lego" in shown.toPlainText()
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        assert view.set_tags_selected(["winter", "ice"])
    view.search_edit.setText("winter")
    assert view.visible_names() == ["frozen"]
    view.search_edit.setText("")

    view.select("frozen")
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        view.rename_selected("Frozen Solid")
    assert "frozen-solid" in view.visible_names() and "frozen" not in view.visible_names()
    assert library.get("frozen-solid").placeholder == "<frozen-solid>"

    view.select("melting")
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        view.delete_selected()
    assert view.visible_names() == ["frozen-solid"]
    assert "melting" not in library


def test_library_import_and_export_in_every_format(window, qtbot, tmp_path):
    view = window.library_view
    library = window.context.library()
    qtbot.waitUntil(lambda: not view.runner.busy, timeout=10000)  # the first listing
    source = Concept("sparkly", "<sparkly>", torch.randn(3, 32), {})
    a1111 = export_concept(source, tmp_path / "sparkly.pt", "a1111")
    with qtbot.waitSignal(view.entries_loaded, timeout=10000):
        assert view.import_files([a1111])
    assert view.visible_names() == ["sparkly"]
    assert torch.allclose(library.get("sparkly").vectors, source.vectors)
    view.select("sparkly")
    for fmt, suffix in (("lego", ".safetensors"), ("diffusers", ".safetensors"), ("a1111", ".pt"), ("kohya", ".safetensors")):
        target = tmp_path / f"out-{fmt}{suffix}"
        with qtbot.waitSignal(view.entries_loaded, timeout=10000):
            assert view.export_selected(fmt, target)
        assert torch.allclose(load_concept(target).vectors, source.vectors), fmt

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    assert view.import_files([junk])
    qtbot.waitUntil(lambda: "junk.safetensors" in view.status_label.text(), timeout=10000)
    assert "\n" not in view.status_label.text()


# ------------------------------------------------------------------------------ gallery


def test_library_operations_asked_for_while_busy_are_queued_not_dropped(window, qtbot, tmp_path):
    view = window.library_view
    files = [export_concept(Concept(n, f"<{n}>", torch.randn(1, 32), {}), tmp_path / f"{n}.pt", "a1111") for n in ("aa", "bb")]
    view.refresh()
    assert view.runner.busy
    assert view.import_files([files[0]]) and view.import_files([files[1]])
    qtbot.waitUntil(lambda: view.visible_names() == ["aa", "bb"], timeout=20000)


def test_seed_parsing():
    assert parse_seeds("0, 1, 5-7") == [0, 1, 5, 6, 7]
    assert parse_seeds("42") == [42]
    for bad in ("", "x", "7-3", "-1"):
        with pytest.raises(InputError):
            parse_seeds(bad)


def test_gallery_reports_bad_input_without_starting(window):
    view = window.gallery_view
    view.subjects_edit.setPlainText("  \n ")
    assert not view.generate()
    assert "subject" in view.status_label.text()
    view.subjects_edit.setPlainText("a cat")
    view.seeds_edit.setText("one")
    assert not view.generate()
    assert "'one'" in view.status_label.text()
    assert not view.runner.busy
