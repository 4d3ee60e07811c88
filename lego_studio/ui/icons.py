"""Icons from ``resources/icons`` (SVG). A missing file gives a painted stand-in, never a crash:
a broken install should still show a usable window."""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap

from lego_studio.core.paths import resource

_FALLBACK_COLOURS = {
    "projects": "#e8a33d",
    "masks": "#5b8def",
    "training": "#2f9e6a",
    "gallery": "#a062e0",
    "library": "#d9534f",
    "app": "#e3342f",
}


def _painted(name: str) -> QIcon:
    pixmap = QPixmap(32, 32)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QColor(_FALLBACK_COLOURS.get(name, "#888")))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.drawRoundedRect(2, 2, 28, 28, 6, 6)
    painter.setPen(QColor("white"))
    painter.drawText(pixmap.rect(), Qt.AlignmentFlag.AlignCenter, name[:1].upper())
    painter.end()
    return QIcon(pixmap)


@lru_cache(maxsize=None)
def icon(name: str) -> QIcon:
    path = resource("icons", f"{name}.svg")
    if path.is_file():
        loaded = QIcon(str(path))
        if not loaded.pixmap(16, 16).isNull():
            return loaded
    return _painted(name)


def place_icon(key: str) -> QIcon:
    return icon(key)


def app_icon() -> QIcon:
    return icon("app")
