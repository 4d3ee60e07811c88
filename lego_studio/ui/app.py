"""Desktop entry point: ``lego-studio gui`` or ``lego-studio-gui``.

The window is shown before torch/diffusers are imported (they take seconds); device detection
and every model load happen later, in workers.
"""

from __future__ import annotations

import sys


def create_app(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    import lego_studio.ui  # noqa: F401  (applies the Qt binding fixes before any signal fires)

    app = QApplication.instance() or QApplication(list(argv) if argv is not None else sys.argv)
    app.setApplicationName("Lego Studio")
    app.setOrganizationName("LegoStudio")
    return app


def main(argv: list[str] | None = None) -> int:
    app = create_app(argv)
    from PySide6.QtCore import QTimer

    from lego_studio.ui.main_window import MainWindow

    window = MainWindow()
    window.show()
    # After the first paint: the window is already on screen while torch loads.
    QTimer.singleShot(0, window.detect_device)
    return app.exec()


if __name__ == "__main__":
    raise SystemExit(main())
