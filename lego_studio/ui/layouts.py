"""Layout helpers shared by the main views."""

from __future__ import annotations

from PySide6.QtWidgets import QSplitter, QVBoxLayout, QWidget


def install_two_pane_layout(view: QWidget, left: QWidget, right: QWidget) -> QSplitter:
    """Give ``view`` the layout every place uses: controls on the left, content on the right,
    split by a user-resizable splitter where the content pane takes the extra width."""
    splitter = QSplitter()
    splitter.addWidget(left)
    splitter.addWidget(right)
    splitter.setStretchFactor(1, 1)
    layout = QVBoxLayout(view)
    layout.addWidget(splitter)
    return splitter
