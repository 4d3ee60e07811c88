"""Spin boxes and combo boxes take the mouse wheel only when they have the keyboard focus.

Scrolling a long form (the Training settings) with the wheel must scroll the form, not change
whichever setting happens to pass under the pointer. Guarded widgets get ``Qt.StrongFocus`` (a
click or Tab focuses them, the wheel does not) and an event filter that ignores the wheel while
they are not focused, so the event goes on to the scroll area behind them.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QAbstractSpinBox, QComboBox, QWidget

GUARDED = (QAbstractSpinBox, QComboBox)


class WheelGuard(QObject):
    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.Wheel and isinstance(obj, QWidget) and not obj.hasFocus():
            event.ignore()  # not accepted: QApplication passes it on to the parent (the scroll area)
            return True
        return False


_GUARD: WheelGuard | None = None


def guard_widget(widget: QWidget) -> None:
    global _GUARD
    if _GUARD is None:
        _GUARD = WheelGuard()
    widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    widget.installEventFilter(_GUARD)


def guard_wheel(root: QWidget) -> None:
    """Guard every spin box and combo box in ``root`` (and ``root`` itself if it is one)."""
    widgets = [root] if isinstance(root, GUARDED) else []
    for kind in GUARDED:
        widgets += root.findChildren(kind)
    for widget in widgets:
        guard_widget(widget)
