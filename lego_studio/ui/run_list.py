"""The Training page's list of the project's runs: one line each (id, method, status, step), the
running one kept current between checkpoints, the resumable ones marked for the Resume button."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QListWidget, QListWidgetItem

from lego_studio.core import runs

PATH_ROLE = Qt.ItemDataRole.UserRole  # the run folder
RESUMABLE_ROLE = Qt.ItemDataRole.UserRole + 1


class RunsList(QListWidget):
    def fill(self, infos, ours: Path | None = None, our_status: str = "", resumable_runs=()) -> None:
        """One line per run (core/runs.RunInfo); ``ours`` is the run this window is training now,
        shown with ``our_status`` and never offered for resuming; ``resumable_runs`` the runs that
        can be resumed (``RunInfo.resumable``, read off the UI thread). The selected run stays selected."""
        current = self.currentItem()
        selected = current.data(PATH_ROLE) if current is not None else None
        self.clear()
        for info in infos:
            mine = ours is not None and info.path == ours
            status = our_status if mine else info.status
            if info.status == runs.RUN_RUNNING and not mine:
                status = "running in another process"
            total = info.total_steps or "?"
            text = f"{info.id} — {info.method or '?'} — {status} — step {info.step}/{total}"
            # Only a failure's reason goes on the line (the status says the rest); every message
            # is in the tooltip.
            if info.message and info.status == runs.RUN_FAILED:
                text += f" — {info.message}"
            item = QListWidgetItem(text)
            if info.message:
                item.setToolTip(info.message)
            item.setData(PATH_ROLE, str(info.path))
            resumable = not mine and info.path in resumable_runs
            item.setData(RESUMABLE_ROLE, resumable)
            if resumable:
                item.setToolTip("\n".join(filter(None, [info.message, "Resumable: select it and press Resume"])))
            self.addItem(item)
            if selected is not None and str(info.path) == selected:
                self.setCurrentItem(item)

    def show_step(self, run_dir: Path, method: str, status: str, step: int, total: int) -> None:
        """Keep the running run's line current between checkpoints (no disk reads per step)."""
        for i in range(self.count()):
            item = self.item(i)
            if Path(item.data(PATH_ROLE)) == Path(run_dir):
                item.setText(f"{Path(run_dir).name} — {method} — {status} — step {step}/{total}")
                return

    def select(self, run_dir: Path) -> None:
        for i in range(self.count()):
            if Path(self.item(i).data(PATH_ROLE)) == Path(run_dir):
                self.setCurrentRow(i)

    def resumable(self) -> list[Path]:
        return [Path(self.item(i).data(PATH_ROLE)) for i in range(self.count()) if self.item(i).data(RESUMABLE_ROLE)]

    def selected_resumable(self) -> Path | None:
        """The selected run when it can be resumed."""
        item = self.currentItem()
        return Path(item.data(PATH_ROLE)) if item is not None and item.data(RESUMABLE_ROLE) else None
