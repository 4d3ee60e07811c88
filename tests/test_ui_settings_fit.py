"""Settings: OK and Cancel never wait for a running check; adding a model offers to make it the
default, and Training and the Gallery then select it."""

from __future__ import annotations

import time

import pytest

from lego_studio.core.settings import Settings
from lego_studio.ui import workers
from lego_studio.ui.settings_dialog import SettingsDialog

pytestmark = pytest.mark.gui


def slow_check(monkeypatch, passes: bool):
    import types

    import lego_studio.core.segmentation as segmentation

    def load_sam_model(path, device="cpu", **kwargs):
        time.sleep(3.0)
        if not passes:
            raise RuntimeError("not a Segment Anything checkpoint")
        return None, types.SimpleNamespace(model_type="vit_b")

    monkeypatch.setattr(segmentation, "load_sam_model", load_sam_model)


@pytest.mark.slow  # waits out a slow SAM check
@pytest.mark.parametrize("button,passes", [("ok", True), ("ok", False), ("cancel", True)])
def test_ok_and_cancel_do_not_wait_for_a_running_sam_check(window, qtbot, tmp_path, monkeypatch, button, passes):
    """OK and Cancel return at once; after OK the checkpoint is saved when (and only if) the
    check that was still running passes."""
    slow_check(monkeypatch, passes)
    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"x" * 100)
    dialog = SettingsDialog(window.context, window)
    dialog.sam_input.setText(str(checkpoint))
    dialog.validate_sam(str(checkpoint))
    assert dialog.sam_status.text() == "Checking…"
    started = time.perf_counter()
    if button == "ok":
        dialog.accept()
    else:
        dialog.reject()
    assert time.perf_counter() - started < 0.5
    assert not dialog.isVisible()
    assert window.context.settings.sam_checkpoint is None  # not checked yet: not saved yet
    # The abandoned check ends by itself in the background, without touching the dialog.
    qtbot.waitUntil(lambda: not workers._ABANDONED, timeout=20000)
    expected = str(checkpoint) if button == "ok" and passes else None
    assert window.context.settings.sam_checkpoint == expected
    window.settle()  # settings are written off the UI thread
    assert Settings.load().sam_checkpoint == expected


def test_adding_a_model_offers_default_and_training_and_gallery_select_it(window, qtbot, tiny_model_dir):
    window.context.settings.add_model("shapeworld", name="Shape World")
    window.context.apply_settings()
    training, gallery = window.training_view, window.gallery_view
    assert training.model_combo.currentData() == "shapeworld"

    dialog = SettingsDialog(window.context, window)
    qtbot.addWidget(dialog)
    assert dialog.add_model(str(tiny_model_dir))
    assert not dialog.offer_default_button.isHidden()
    assert "Make tiny" in dialog.offer_default_button.text() or "default" in dialog.offer_default_button.text()
    dialog.offer_default_button.click()
    assert dialog.offer_default_button.isHidden()
    assert "default" in dialog.model_error.text()
    dialog.accept()
    window.context.apply_settings()
    spec = window.context.settings.model().spec
    assert spec != "shapeworld"
    assert training.model_combo.currentData() == spec
    assert gallery.model_combo.currentData() == spec


def test_a_model_added_without_taking_the_offer_changes_no_selection(window, qtbot, tiny_model_dir):
    window.context.settings.add_model("shapeworld", name="Shape World")
    window.context.apply_settings()
    dialog = SettingsDialog(window.context, window)
    qtbot.addWidget(dialog)
    assert dialog.add_model(str(tiny_model_dir))
    dialog.accept()
    window.context.apply_settings()
    assert window.training_view.model_combo.currentData() == "shapeworld"
    combo = window.training_view.model_combo
    specs = [combo.itemData(i) for i in range(combo.count())]
    assert len(specs) == 3 and "shapeworld-xl" in specs  # the added one, and the built-in SDXL-shaped one
