"""PySide6 desktop app: views and the QThread workers that drive ``lego_studio.core``."""

from lego_studio.ui import qt_fixes as _qt_fixes

_qt_fixes.apply()
