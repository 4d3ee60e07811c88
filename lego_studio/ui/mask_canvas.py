"""A raster mask-painting canvas (plain QWidget + QPainter, so it works offscreen).

The mask is a ``uint8`` HxW numpy array, 255 = subject, the same size as the image — the format
``masks/`` stores. Tools: brush, eraser, flood fill and the Segment Anything prompt mode (left
click = positive point, right click = negative point, drag = box). Undo/redo keeps bit-packed
snapshots so that 100 steps of a 12-megapixel mask cost ~150 MB, not 1.2 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

BRUSH = "brush"
ERASER = "eraser"
FILL = "fill"
SAM = "sam"
TOOLS = (BRUSH, ERASER, FILL, SAM)

UNDO_LIMIT = 100
MIN_BRUSH, MAX_BRUSH = 1, 400
MIN_ZOOM, MAX_ZOOM = 0.05, 40.0
DRAG_THRESHOLD_PX = 5  # a SAM press that moves less than this is a click, not a box


@dataclass
class SamPrompt:
    """Points and box in image pixel coordinates (what ``SamPredictor.predict`` wants)."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # 1 = subject, 0 = background
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None


def pil_to_qimage(image) -> QImage:
    """RGB PIL image -> deep-copied QImage (the numpy buffer may be freed afterwards)."""
    rgb = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
    h, w, _ = rgb.shape
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class MaskCanvas(QWidget):
    mask_edited = Signal()  # after every completed edit (stroke, fill, clear, undo...): autosave hook
    sam_prompt_changed = Signal(object)  # SamPrompt
    brush_size_changed = Signal(int)
    tool_changed = Signal(str)
    zoom_changed = Signal(float)
    history_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(200, 200)
        self._image: QImage | None = None
        self._mask: np.ndarray | None = None
        self._overlay_rgba: np.ndarray | None = None
        self._overlay_qimage: QImage | None = None
        self._candidate: np.ndarray | None = None
        self._candidate_qimage: QImage | None = None
        self._candidate_buf: np.ndarray | None = None
        self._undo: list[tuple[tuple[int, int], np.ndarray]] = []
        self._redo: list[tuple[tuple[int, int], np.ndarray]] = []
        self._tool = BRUSH
        self._brush = 24
        self._color = QColor(255, 60, 60)
        self._opacity = 0.5
        self._mask_only = False
        self._scale = 1.0
        self._offset = QPointF(0, 0)
        self._user_zoomed = False
        self._stroke_last: tuple[int, int] | None = None
        self._pan_anchor: QPointF | None = None
        self._space_down = False
        self._cursor_pos: QPointF | None = None
        self._sam_prompt = SamPrompt()
        self._sam_press: QPointF | None = None
        self._sam_drag_rect: QRectF | None = None
        self._rebuild_lut()

    # ------------------------------------------------------------------ content
    def set_image(self, image, mask: np.ndarray | None = None) -> None:
        """Show ``image`` (PIL image or QImage) with ``mask`` (uint8 HxW) or an empty mask.
        Clears undo history, SAM prompt and candidate: they belong to the previous image."""
        qimage = image if isinstance(image, QImage) else pil_to_qimage(image)
        self._image = qimage
        h, w = qimage.height(), qimage.width()
        if mask is None:
            mask = np.zeros((h, w), np.uint8)
        self._check_shape(mask)
        self._mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        self._undo.clear()
        self._redo.clear()
        self._candidate = None
        self._candidate_qimage = None
        self._sam_prompt = SamPrompt()
        self._user_zoomed = False
        self._refresh_overlay()
        self.fit_to_view()
        self.history_changed.emit()

    def clear_image(self) -> None:
        self._image = None
        self._mask = None
        self._overlay_qimage = None
        self._candidate = None
        self._undo.clear()
        self._redo.clear()
        self.update()

    def has_image(self) -> bool:
        return self._image is not None

    def image_size(self) -> tuple[int, int]:
        """(width, height) of the current image, (0, 0) without one."""
        if self._image is None:
            return (0, 0)
        return (self._image.width(), self._image.height())

    def mask(self) -> np.ndarray:
        if self._mask is None:
            raise RuntimeError("no image loaded")
        return self._mask.copy()

    def set_mask(self, mask: np.ndarray, *, record: bool = True) -> None:
        """Replace the mask (an undoable edit unless ``record`` is False)."""
        self._check_shape(mask)
        if record:
            self._push_undo()
        self._mask = np.where(mask > 127, 255, 0).astype(np.uint8)
        self._refresh_overlay()
        if record:
            self._edited()

    def _check_shape(self, mask: np.ndarray) -> None:
        w, h = self.image_size()
        if mask.ndim != 2 or mask.shape != (h, w):
            raise ValueError(f"mask shape {mask.shape} does not match image size {(h, w)}")

    # ------------------------------------------------------------------ tools
    @property
    def tool(self) -> str:
        return self._tool

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"unknown tool {tool!r}")
        if tool != self._tool:
            self._tool = tool
            self.tool_changed.emit(tool)
            self.update()

    @property
    def brush_size(self) -> int:
        return self._brush

    def set_brush_size(self, size: int) -> None:
        size = int(max(MIN_BRUSH, min(MAX_BRUSH, size)))
        if size != self._brush:
            self._brush = size
            self.brush_size_changed.emit(size)
            self.update()

    def grow_brush(self, steps: int = 1) -> None:
        # Proportional steps: fine control when small, fast when large.
        size = self._brush
        for _ in range(abs(steps)):
            delta = max(1, round(size * 0.15))
            size = size + delta if steps > 0 else size - delta
        self.set_brush_size(size)

    def set_overlay_color(self, color: QColor) -> None:
        self._color = QColor(color)
        self._rebuild_lut()
        self._refresh_overlay()

    def overlay_color(self) -> QColor:
        return QColor(self._color)

    def set_overlay_opacity(self, opacity: float) -> None:
        self._opacity = float(max(0.0, min(1.0, opacity)))
        self._rebuild_lut()
        self._refresh_overlay()

    def overlay_opacity(self) -> float:
        return self._opacity

    def set_mask_only(self, on: bool) -> None:
        self._mask_only = bool(on)
        self.update()

    # ------------------------------------------------------------------ mask operations
    def clear_mask(self) -> None:
        if self._mask is None:
            return
        self._push_undo()
        self._mask[:] = 0
        self._refresh_overlay()
        self._edited()

    def invert_mask(self) -> None:
        if self._mask is None:
            return
        self._push_undo()
        self._mask = (255 - self._mask).astype(np.uint8)
        self._refresh_overlay()
        self._edited()

    def flood_fill(self, x: int, y: int, value: int = 255) -> None:
        """Fill the 4-connected region of equal mask value around (x, y) with ``value``."""
        if self._mask is None:
            return
        h, w = self._mask.shape
        if not (0 <= x < w and 0 <= y < h) or self._mask[y, x] == value:
            return
        import cv2

        self._push_undo()
        work = self._mask.copy()
        flood_mask = np.zeros((h + 2, w + 2), np.uint8)
        cv2.floodFill(work, flood_mask, (int(x), int(y)), int(value), loDiff=0, upDiff=0, flags=4)
        self._mask = work
        self._refresh_overlay()
        self._edited()

    def paint_line(self, p0: tuple[int, int], p1: tuple[int, int], value: int) -> None:
        """Stamp a round brush of the current size from p0 to p1 (image pixels)."""
        import cv2

        radius = max(0, self._brush // 2)
        cv2.line(self._mask, p0, p1, int(value), thickness=max(1, self._brush), lineType=cv2.LINE_8)
        cv2.circle(self._mask, p1, radius, int(value), thickness=-1)
        cv2.circle(self._mask, p0, radius, int(value), thickness=-1)
        x0, x1 = sorted((p0[0], p1[0]))
        y0, y1 = sorted((p0[1], p1[1]))
        self._refresh_overlay((x0 - radius - 1, y0 - radius - 1, x1 + radius + 2, y1 + radius + 2))

    # ------------------------------------------------------------------ history
    def _push_undo(self) -> None:
        if self._mask is None:
            return
        self._undo.append(self._pack(self._mask))
        if len(self._undo) > UNDO_LIMIT:
            del self._undo[0]
        self._redo.clear()
        self.history_changed.emit()

    @staticmethod
    def _pack(mask: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
        return mask.shape, np.packbits(mask > 127)

    @staticmethod
    def _unpack(packed: tuple[tuple[int, int], np.ndarray]) -> np.ndarray:
        shape, bits = packed
        flat = np.unpackbits(bits, count=shape[0] * shape[1])
        return (flat.reshape(shape) * 255).astype(np.uint8)

    def can_undo(self) -> bool:
        return bool(self._undo)

    def can_redo(self) -> bool:
        return bool(self._redo)

    def undo(self) -> None:
        if not self._undo or self._mask is None:
            return
        self._redo.append(self._pack(self._mask))
        self._mask = self._unpack(self._undo.pop())
        self._refresh_overlay()
        self.history_changed.emit()
        self.mask_edited.emit()

    def redo(self) -> None:
        if not self._redo or self._mask is None:
            return
        self._undo.append(self._pack(self._mask))
        self._mask = self._unpack(self._redo.pop())
        self._refresh_overlay()
        self.history_changed.emit()
        self.mask_edited.emit()

    def _edited(self) -> None:
        self.history_changed.emit()
        self.mask_edited.emit()

    # ------------------------------------------------------------------ SAM prompt + candidate
    def sam_prompt(self) -> SamPrompt:
        return SamPrompt(list(self._sam_prompt.points), list(self._sam_prompt.labels), self._sam_prompt.box)

    def clear_sam_prompt(self) -> None:
        self._sam_prompt = SamPrompt()
        self.set_candidate(None)
        self.update()

    def add_sam_point(self, x: float, y: float, positive: bool) -> None:
        self._sam_prompt.points.append((float(x), float(y)))
        self._sam_prompt.labels.append(1 if positive else 0)
        self.update()
        self.sam_prompt_changed.emit(self.sam_prompt())

    def set_sam_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self._sam_prompt.box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        self.update()
        self.sam_prompt_changed.emit(self.sam_prompt())

    def set_candidate(self, mask: np.ndarray | None) -> None:
        """Preview a proposed mask (SAM/GrabCut) on top of the painted one, not yet applied."""
        if mask is None:
            self._candidate = None
            self._candidate_qimage = None
        else:
            self._check_shape(mask)
            self._candidate = np.where(mask > 127, 255, 0).astype(np.uint8)
            h, w = self._candidate.shape
            rgba = np.zeros((h, w, 4), np.uint8)
            on = self._candidate > 0
            rgba[on] = (40, 200, 255, 150)
            self._candidate_buf = rgba
            self._candidate_qimage = QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
        self.update()

    def candidate(self) -> np.ndarray | None:
        return None if self._candidate is None else self._candidate.copy()

    def accept_candidate(self, mode: str = "union") -> bool:
        """Merge the candidate into the mask: ``union`` adds it, ``replace`` swaps it in."""
        if self._candidate is None or self._mask is None:
            return False
        if mode == "union":
            merged = np.maximum(self._mask, self._candidate)
        elif mode == "replace":
            merged = self._candidate.copy()
        else:
            raise ValueError(f"unknown merge mode {mode!r}")
        self.set_mask(merged)
        self._sam_prompt = SamPrompt()
        self.set_candidate(None)
        return True

    # ------------------------------------------------------------------ view transform
    def fit_to_view(self) -> None:
        if self._image is None:
            return
        w, h = self.image_size()
        scale = min(self.width() / max(1, w), self.height() / max(1, h)) * 0.98
        self._set_view(max(MIN_ZOOM, min(MAX_ZOOM, scale)), None)
        self._user_zoomed = False

    def zoom(self) -> float:
        return self._scale

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the image point under ``anchor`` (widget coords) fixed."""
        if anchor is None:
            anchor = QPointF(self.width() / 2, self.height() / 2)
        image_point = self.widget_to_image(anchor)
        scale = max(MIN_ZOOM, min(MAX_ZOOM, self._scale * factor))
        self._scale = scale
        self._offset = anchor - QPointF(image_point.x() * scale, image_point.y() * scale)
        self._user_zoomed = True
        self.zoom_changed.emit(scale)
        self.update()

    def pan_by(self, dx: float, dy: float) -> None:
        self._offset += QPointF(dx, dy)
        self._user_zoomed = True
        self.update()

    def _set_view(self, scale: float, offset: QPointF | None) -> None:
        self._scale = scale
        if offset is None:
            w, h = self.image_size()
            offset = QPointF((self.width() - w * scale) / 2, (self.height() - h * scale) / 2)
        self._offset = offset
        self.zoom_changed.emit(scale)
        self.update()

    def widget_to_image(self, point: QPointF) -> QPointF:
        return QPointF((point.x() - self._offset.x()) / self._scale, (point.y() - self._offset.y()) / self._scale)

    def image_to_widget(self, point: QPointF) -> QPointF:
        return QPointF(point.x() * self._scale + self._offset.x(), point.y() * self._scale + self._offset.y())

    def _image_pixel(self, point: QPointF) -> tuple[int, int]:
        p = self.widget_to_image(point)
        return int(np.floor(p.x())), int(np.floor(p.y()))

    # ------------------------------------------------------------------ rendering
    def _rebuild_lut(self) -> None:
        lut = np.zeros((256, 4), np.uint8)
        lut[128:] = (self._color.red(), self._color.green(), self._color.blue(), int(round(255 * self._opacity)))
        self._lut = lut

    def _refresh_overlay(self, rect: tuple[int, int, int, int] | None = None) -> None:
        if self._mask is None:
            return
        h, w = self._mask.shape
        if self._overlay_rgba is None or self._overlay_rgba.shape[:2] != (h, w) or rect is None:
            self._overlay_rgba = self._lut[self._mask]
            self._overlay_qimage = QImage(self._overlay_rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888)
        else:
            x0, y0, x1, y1 = rect
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            if x1 > x0 and y1 > y0:
                self._overlay_rgba[y0:y1, x0:x1] = self._lut[self._mask[y0:y1, x0:x1]]
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt naming)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(45, 45, 48))
        if self._image is None or self._mask is None:
            painter.setPen(QColor(170, 170, 170))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No image")
            painter.end()
            return
        w, h = self.image_size()
        target = QRectF(self._offset.x(), self._offset.y(), w * self._scale, h * self._scale)
        smooth = self._scale < 1.0  # upscaled pixels stay crisp so the brush edge is visible
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        if self._mask_only:
            mono = QImage(self._mask.data, w, h, w, QImage.Format.Format_Grayscale8)
            painter.drawImage(target, mono)
        else:
            painter.drawImage(target, self._image)
            if self._overlay_qimage is not None:
                painter.drawImage(target, self._overlay_qimage)
        if self._candidate_qimage is not None:
            painter.drawImage(target, self._candidate_qimage)
        self._paint_sam_prompt(painter)
        self._paint_cursor(painter)
        painter.end()

    def _paint_sam_prompt(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        prompt = self._sam_prompt
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            painter.setPen(QPen(QColor(255, 220, 0), 2, Qt.PenStyle.DashLine))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(QRectF(self.image_to_widget(QPointF(x0, y0)), self.image_to_widget(QPointF(x1, y1))))
        if self._sam_drag_rect is not None:
            painter.setPen(QPen(QColor(255, 220, 0), 1, Qt.PenStyle.DotLine))
            painter.drawRect(self._sam_drag_rect)
        for (x, y), label in zip(prompt.points, prompt.labels):
            centre = self.image_to_widget(QPointF(x, y))
            painter.setPen(QPen(QColor(255, 255, 255), 2))
            painter.setBrush(QColor(40, 200, 60) if label else QColor(230, 40, 40))
            painter.drawEllipse(centre, 6, 6)

    def _paint_cursor(self, painter: QPainter) -> None:
        if self._cursor_pos is None or self._tool not in (BRUSH, ERASER):
            return
        radius = max(1.0, self._brush * self._scale / 2)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        painter.setPen(QPen(QColor(0, 0, 0), 3))
        painter.drawEllipse(self._cursor_pos, radius, radius)
        painter.setPen(QPen(QColor(255, 255, 255) if self._tool == BRUSH else QColor(255, 160, 0), 1))
        painter.drawEllipse(self._cursor_pos, radius, radius)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if not self._user_zoomed:
            self.fit_to_view()

    # ------------------------------------------------------------------ input
    def mousePressEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        button = event.button()
        if button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and self._space_down):
            self._pan_anchor = pos
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if self._mask is None:
            return
        x, y = self._image_pixel(pos)
        if self._tool in (BRUSH, ERASER) and button == Qt.MouseButton.LeftButton:
            self._push_undo()
            value = 255 if self._tool == BRUSH else 0
            self._stroke_last = (x, y)
            self.paint_line((x, y), (x, y), value)
        elif self._tool == FILL and button == Qt.MouseButton.LeftButton:
            erase = bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            self.flood_fill(x, y, 0 if erase else 255)
        elif self._tool == SAM:
            if button == Qt.MouseButton.LeftButton:
                self._sam_press = pos
            elif button == Qt.MouseButton.RightButton:
                p = self.widget_to_image(pos)
                self.add_sam_point(p.x(), p.y(), positive=False)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        self._cursor_pos = pos
        if self._pan_anchor is not None:
            delta = pos - self._pan_anchor
            self._pan_anchor = pos
            self.pan_by(delta.x(), delta.y())
            return
        if self._stroke_last is not None and self._mask is not None:
            x, y = self._image_pixel(pos)
            value = 255 if self._tool == BRUSH else 0
            self.paint_line(self._stroke_last, (x, y), value)
            self._stroke_last = (x, y)
            return
        if self._sam_press is not None:
            if (pos - self._sam_press).manhattanLength() >= DRAG_THRESHOLD_PX:
                self._sam_drag_rect = QRectF(self._sam_press, pos).normalized()
        self.update()

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        pos = event.position()
        if self._pan_anchor is not None:
            self._pan_anchor = None
            self.unsetCursor()
            return
        if self._stroke_last is not None:
            self._stroke_last = None
            self._edited()
            return
        if self._sam_press is not None and event.button() == Qt.MouseButton.LeftButton:
            press = self._sam_press
            self._sam_press = None
            self._sam_drag_rect = None
            if (pos - press).manhattanLength() >= DRAG_THRESHOLD_PX:
                a, b = self.widget_to_image(press), self.widget_to_image(pos)
                self.set_sam_box(a.x(), a.y(), b.x(), b.y())
            else:
                p = self.widget_to_image(pos)
                self.add_sam_point(p.x(), p.y(), positive=True)

    def leaveEvent(self, event) -> None:  # noqa: N802
        self._cursor_pos = None
        self.update()

    def wheelEvent(self, event) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps == 0:
            return
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.zoom_by(1.25**steps, event.position())
        else:
            self.grow_brush(1 if steps > 0 else -1)
        event.accept()

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_down = True
            self.setCursor(Qt.CursorShape.OpenHandCursor)
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_down = False
            self.unsetCursor()
            return
        super().keyReleaseEvent(event)
