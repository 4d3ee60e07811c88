"""A small live line chart of the loss terms, drawn with QPainter (no matplotlib)."""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

TERM_COLOURS = {
    "total": QColor("#222222"),
    "rec": QColor("#1f77b4"),
    "subj": QColor("#d62728"),
    "ctx": QColor("#2ca02c"),
    "words": QColor("#9467bd"),
    "subject_token": QColor("#ff7f0e"),
}
_EXTRA = [QColor("#8c564b"), QColor("#e377c2"), QColor("#17becf"), QColor("#bcbd22")]
SMOOTHING = 0.9  # exponential moving average: raw per-step losses are too noisy to read


def axis_label(value: float, span: float) -> str:
    """A loss-axis label: as many decimals as the axis' span needs (0.0097, 0.25, 12.5),
    scientific only for very small or very large values, never a bare ".00966"."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-4:
        return f"{value:.2e}"
    step = span / 2 if span > 0 else magnitude
    decimals = max(0, min(6, 2 - math.floor(math.log10(step)))) if step > 0 else 2
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


class LossChart(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumSize(320, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._series: dict[str, list[tuple[int, float]]] = {}
        self._smoothed: dict[str, float] = {}
        self.total_steps = 0

    def clear(self) -> None:
        self._series.clear()
        self._smoothed.clear()
        self.update()

    def add(self, step: int, losses: dict[str, float]) -> None:
        for term, value in losses.items():
            if value is None or not math.isfinite(value):
                continue
            previous = self._smoothed.get(term)
            smooth = value if previous is None else SMOOTHING * previous + (1 - SMOOTHING) * value
            self._smoothed[term] = smooth
            self._series.setdefault(term, []).append((step, smooth))
        self.update()

    @staticmethod
    def axis_labels(low: float, high: float) -> list[str]:
        """The labels of the loss axis at its bottom, middle and top."""
        return [axis_label(low + fraction * (high - low), high - low) for fraction in (0.0, 0.5, 1.0)]

    def terms(self) -> list[str]:
        return list(self._series)

    def points(self, term: str) -> list[tuple[int, float]]:
        return list(self._series.get(term, []))

    def _colour(self, term: str, index: int) -> QColor:
        return TERM_COLOURS.get(term, _EXTRA[index % len(_EXTRA)])

    def paintEvent(self, event) -> None:  # noqa: N802
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor("white"))
        plot = QRectF(48, 10, max(10, self.width() - 58), max(10, self.height() - 50))
        painter.setPen(QPen(QColor("#cccccc"), 1))
        painter.drawRect(plot)
        if not self._series:
            painter.setPen(QColor("#888888"))
            painter.drawText(plot, Qt.AlignmentFlag.AlignCenter, "Loss curves appear here while training")
            painter.end()
            return
        values = [v for series in self._series.values() for _, v in series]
        steps = [s for series in self._series.values() for s, _ in series]
        low, high = min(values), max(values)
        if high - low < 1e-12:
            low, high = low - 0.5, high + 0.5
        # The plot starts right of the widest axis label, so no label is clipped.
        labels = self.axis_labels(low, high)
        margin = max(painter.fontMetrics().horizontalAdvance(text) for text in labels) + 8
        plot = QRectF(margin + 4, 10, max(10, self.width() - margin - 14), max(10, self.height() - 50))
        painter.fillRect(self.rect(), QColor("white"))
        painter.setPen(QPen(QColor("#cccccc"), 1))
        painter.drawRect(plot)
        first = min(steps)
        last = max(max(steps), self.total_steps or 0, first + 1)

        def to_point(step: int, value: float) -> QPointF:
            x = plot.left() + (step - first) / (last - first) * plot.width()
            y = plot.bottom() - (value - low) / (high - low) * plot.height()
            return QPointF(x, y)

        painter.setPen(QColor("#666666"))
        for fraction, text in zip((0.0, 0.5, 1.0), labels):
            y = plot.bottom() - fraction * plot.height()
            painter.drawText(QRectF(0, y - 8, margin, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, text)
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, 80, 16), Qt.AlignmentFlag.AlignLeft, f"step {first}")
        painter.drawText(QRectF(plot.right() - 80, plot.bottom() + 2, 80, 16), Qt.AlignmentFlag.AlignRight, f"{last}")

        legend_x = plot.left()
        for index, (term, series) in enumerate(self._series.items()):
            colour = self._colour(term, index)
            path = QPainterPath()
            # Thin to at most ~2 points per pixel: long runs stay cheap to repaint.
            stride = max(1, len(series) // max(1, int(plot.width() * 2)))
            for i, (step, value) in enumerate(series[::stride] + ([series[-1]] if stride > 1 else [])):
                point = to_point(step, value)
                if i == 0:
                    path.moveTo(point)
                else:
                    path.lineTo(point)
            painter.setPen(QPen(colour, 2 if term == "total" else 1.4))
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(path)
            label = f"{term} {series[-1][1]:.3g}"
            y = self.height() - 18
            painter.fillRect(QRectF(legend_x, y + 4, 10, 10), colour)
            painter.setPen(QColor("#333333"))
            width = painter.fontMetrics().horizontalAdvance(label) + 24
            painter.drawText(QRectF(legend_x + 14, y, width, 18), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, label)
            legend_x += width
        painter.end()
