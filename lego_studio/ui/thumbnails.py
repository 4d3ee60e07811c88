"""Thumbnails of image files for the image lists, decoded and scaled in a worker (a ``QImage`` may
be made off the UI thread; a ``QPixmap`` may not), kept per path so a list that refreshes (after a
mask save, say) does not decode its images again. Image files in a project never change in
place: an added image is a new file."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage

from lego_studio.ui.workers import TaskRunner

NOT_READ = object()  # get(): the thumbnail is still being read


def read_thumbnail(path: Path, size: int) -> QImage | None:
    """``path`` scaled to fit ``size`` x ``size``, or None when it cannot be read. Any thread."""
    image = QImage(str(path))
    if image.isNull():
        return None
    return image.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


class ThumbnailLoader(QObject):
    """``request(paths)`` reads the thumbnails not read yet in a worker and sends ``loaded`` when
    they are in; ``get(path)`` is the thumbnail, None (unreadable) or :data:`NOT_READ`."""

    loaded = Signal()

    def __init__(self, size: int, parent: QObject | None = None):
        super().__init__(parent)
        self.size = size
        self.runner = TaskRunner(self)
        self._images: dict[Path, QImage | None] = {}
        self._wanted: list[Path] = []

    @property
    def loading(self) -> bool:
        return self.runner.busy or bool(self._wanted)

    def get(self, path: Path):
        return self._images.get(Path(path), NOT_READ)

    def request(self, paths) -> None:
        wanted = [Path(p) for p in paths if Path(p) not in self._images]
        self._wanted = list(dict.fromkeys(self._wanted + wanted))
        if self._wanted and not self.runner.busy:
            self._start()

    def _start(self) -> None:
        paths, self._wanted, size = self._wanted, [], self.size

        def read(state):
            found = {}
            for path in paths:
                state.check()
                found[path] = read_thumbnail(path, size)
            return found

        self.runner.start(read, on_done=self._read, on_error=lambda _message: self._read({}), name="thumbnails")

    def _read(self, found: dict) -> None:
        self._images.update(found)
        if self._wanted:
            self._start()
        self.loaded.emit()

    def shutdown(self) -> None:
        self._wanted = []
        self.runner.shutdown()
