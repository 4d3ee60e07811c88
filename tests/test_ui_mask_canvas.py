"""The mask canvas, driven with real mouse/keyboard events (offscreen)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QColor, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from lego_studio.ui.mask_canvas import BRUSH, ERASER, FILL, SAM, MaskCanvas

pytestmark = pytest.mark.gui


def send_mouse(widget, kind, pos, button=Qt.MouseButton.LeftButton, buttons=None, modifiers=Qt.KeyboardModifier.NoModifier):
    buttons = button if buttons is None else buttons
    point = QPointF(pos)
    event = QMouseEvent(kind, point, widget.mapToGlobal(point), button, buttons, modifiers)
    QApplication.sendEvent(widget, event)


def drag(widget, points, button=Qt.MouseButton.LeftButton):
    send_mouse(widget, QEvent.Type.MouseButtonPress, points[0], button)
    for p in points[1:]:
        send_mouse(widget, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, button)
    send_mouse(widget, QEvent.Type.MouseButtonRelease, points[-1], button, Qt.MouseButton.NoButton)


def wheel(widget, pos, steps, modifiers=Qt.KeyboardModifier.NoModifier):
    point = QPointF(pos)
    event = QWheelEvent(point, widget.mapToGlobal(point), QPoint(0, 0), QPoint(0, 120 * steps),
                        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, event)


@pytest.fixture
def canvas(qtbot):
    widget = MaskCanvas()
    qtbot.addWidget(widget)
    widget.resize(400, 400)
    widget.show()
    # 100x100 image shown at 400x400 -> scale ~3.92, so widget coords = image coords * ~4.
    widget.set_image(Image.new("RGB", (100, 100), (0, 0, 255)))
    return widget


def widget_pos(canvas, x, y):
    p = canvas.image_to_widget(QPointF(x, y))
    return QPoint(round(p.x()), round(p.y()))


def test_brush_stroke_paints_subject_and_emits_edit(canvas, qtbot):
    canvas.set_brush_size(6)
    with qtbot.waitSignal(canvas.mask_edited, timeout=1000):
        drag(canvas, [widget_pos(canvas, 20, 50), widget_pos(canvas, 50, 50), widget_pos(canvas, 80, 50)])
    mask = canvas.mask()
    assert mask.dtype == np.uint8 and mask.shape == (100, 100)
    assert set(np.unique(mask)) == {0, 255}
    assert mask[50, 20:81].min() == 255  # the whole stroke, not just its points
    assert mask[10, 50] == 0 and mask[90, 50] == 0


def test_eraser_removes_and_undo_redo_restore(canvas):
    canvas.set_mask(np.full((100, 100), 255, np.uint8))
    canvas.set_tool(ERASER)
    canvas.set_brush_size(10)
    drag(canvas, [widget_pos(canvas, 50, 10), widget_pos(canvas, 50, 90)])
    assert canvas.mask()[50, 50] == 0 and canvas.mask()[50, 5] == 255
    canvas.undo()
    assert canvas.mask().min() == 255
    canvas.redo()
    assert canvas.mask()[50, 50] == 0


def test_undo_keeps_at_least_fifty_steps(canvas):
    canvas.set_brush_size(1)
    for i in range(60):
        canvas.set_tool(BRUSH)
        drag(canvas, [widget_pos(canvas, i + 0.5, 0.5)])
    assert canvas.mask()[0, :60].min() == 255
    for _ in range(55):
        canvas.undo()
    # 55 strokes undone: only the first five remain.
    row = canvas.mask()[0]
    assert row[:5].min() == 255 and row[5:60].max() == 0
    for _ in range(55):
        canvas.redo()
    assert canvas.mask()[0, :60].min() == 255


def test_flood_fill_fills_enclosed_region_only(canvas):
    ring = np.zeros((100, 100), np.uint8)
    ring[20:80, 20] = ring[20:80, 79] = ring[20, 20:80] = ring[79, 20:80] = 255
    canvas.set_mask(ring)
    canvas.set_tool(FILL)
    drag(canvas, [widget_pos(canvas, 50, 50)])
    mask = canvas.mask()
    assert mask[21:79, 21:79].min() == 255
    assert mask[5, 5] == 0 and mask[95, 95] == 0


def test_clear_invert_and_mask_only_rendering(canvas):
    canvas.set_mask_only(True)
    canvas.invert_mask()
    assert canvas.mask().min() == 255
    shot = canvas.grab().toImage()
    centre = shot.pixelColor(200, 200)
    assert centre.red() > 240 and centre.blue() > 240  # white subject in mask-only view
    canvas.clear_mask()
    assert canvas.mask().max() == 0


def test_overlay_colour_and_opacity_change_the_picture(canvas):
    canvas.set_mask(np.full((100, 100), 255, np.uint8))
    canvas.set_overlay_color(QColor(0, 255, 0))
    canvas.set_overlay_opacity(1.0)
    pixel = canvas.grab().toImage().pixelColor(200, 200)
    assert pixel.green() > 240 and pixel.blue() < 20
    canvas.set_overlay_opacity(0.0)
    pixel = canvas.grab().toImage().pixelColor(200, 200)
    assert pixel.blue() > 240 and pixel.green() < 20


def test_wheel_sizes_brush_and_ctrl_wheel_zooms_around_cursor(canvas):
    before = canvas.brush_size
    wheel(canvas, QPoint(200, 200), 1)
    assert canvas.brush_size > before
    wheel(canvas, QPoint(200, 200), -1)
    wheel(canvas, QPoint(200, 200), -1)
    assert canvas.brush_size < before
    zoom = canvas.zoom()
    anchor_before = canvas.widget_to_image(QPointF(100, 100))
    wheel(canvas, QPoint(100, 100), 2, Qt.KeyboardModifier.ControlModifier)
    assert canvas.zoom() > zoom * 1.5
    anchor_after = canvas.widget_to_image(QPointF(100, 100))
    assert abs(anchor_after.x() - anchor_before.x()) < 0.5


def test_middle_drag_pans(canvas):
    before = canvas.widget_to_image(QPointF(200, 200))
    drag(canvas, [QPoint(200, 200), QPoint(260, 200)], Qt.MouseButton.MiddleButton)
    after = canvas.widget_to_image(QPointF(200, 200))
    assert after.x() < before.x() - 10
    assert canvas.mask().max() == 0  # panning never paints


def test_sam_mode_clicks_and_box_build_prompt(canvas, qtbot):
    canvas.set_tool(SAM)
    with qtbot.waitSignal(canvas.sam_prompt_changed, timeout=1000) as blocker:
        drag(canvas, [widget_pos(canvas, 30, 30)])
    assert blocker.args[0].labels == [1]
    drag(canvas, [widget_pos(canvas, 70, 70)], Qt.MouseButton.RightButton)
    drag(canvas, [widget_pos(canvas, 10, 10), widget_pos(canvas, 40, 40), widget_pos(canvas, 90, 80)])
    prompt = canvas.sam_prompt()
    assert prompt.labels == [1, 0]
    assert abs(prompt.points[0][0] - 30) < 1.5 and abs(prompt.points[1][1] - 70) < 1.5
    x0, y0, x1, y1 = prompt.box
    assert abs(x0 - 10) < 1.5 and abs(y1 - 80) < 1.5
    assert canvas.mask().max() == 0  # SAM clicks never paint by themselves


def test_candidate_union_and_replace(canvas):
    painted = np.zeros((100, 100), np.uint8)
    painted[:10] = 255
    canvas.set_mask(painted)
    candidate = np.zeros((100, 100), np.uint8)
    candidate[50:60, 50:60] = 255
    canvas.set_candidate(candidate)
    assert canvas.accept_candidate("union")
    assert canvas.mask()[:10].min() == 255 and canvas.mask()[55, 55] == 255
    assert canvas.candidate() is None
    canvas.set_candidate(candidate)
    assert canvas.accept_candidate("replace")
    assert canvas.mask()[:10].max() == 0 and canvas.mask()[55, 55] == 255
    canvas.undo()
    assert canvas.mask()[:10].min() == 255  # accept is one undo step


def test_wrong_size_mask_is_rejected(canvas):
    with pytest.raises(ValueError):
        canvas.set_mask(np.zeros((10, 10), np.uint8))
