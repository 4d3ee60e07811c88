"""Render the app icon set from ``resources/icons/lego-studio.svg``.

Writes ``resources/icons/lego-studio-<size>.png`` for every size a desktop environment asks for
(hicolor theme sizes, Windows .ico and macOS .icns inputs). Run it after editing the SVG:

    QT_QPA_PLATFORM=offscreen python packaging/make_icons.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICON_DIR = Path(__file__).resolve().parents[1] / "resources" / "icons"
SOURCE = ICON_DIR / "lego-studio.svg"


def render_icons(source: Path = SOURCE, out_dir: Path = ICON_DIR, sizes=ICON_SIZES) -> list[Path]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841  (Qt needs one)
    renderer = QSvgRenderer(str(source))
    if not renderer.isValid():
        raise SystemExit(f"{source}: not a valid SVG")
    written = []
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        path = out_dir / f"lego-studio-{size}.png"
        # Written next to the target and renamed, so a failed run never leaves a half icon.
        tmp = path.with_suffix(".tmp.png")
        if not image.save(str(tmp), "PNG"):
            raise SystemExit(f"{path}: could not write the icon")
        os.replace(tmp, path)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in render_icons():
        print(path)
