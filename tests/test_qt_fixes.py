"""The Qt binding's reference leaks must not abort the app (PySide6 6.12 on CPython 3.11).

Found in the Xvfb walkthrough: after a Shape World XL run the app aborted in the loss chart's
paintEvent with "none_dealloc: deallocating None" — ``QPainterPath.lineTo`` drops a reference to
``None`` per call, and the chart draws its curves point by point on every repaint. Each check runs
in a child process, because the failure is an abort of the whole interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_child(body: str) -> subprocess.CompletedProcess:
    script = textwrap.dedent(
        """
        import sys
        from PySide6.QtWidgets import QApplication
        app = QApplication([])
        import lego_studio.ui  # applies the work-arounds
        """
    ) + textwrap.dedent(body)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_long_run_of_loss_chart_repaints_does_not_abort_the_app():
    # More repaints of a long curve than None has references at start-up.
    result = run_child(
        """
        from lego_studio.ui.loss_chart import LossChart
        chart = LossChart()
        chart.resize(600, 300)
        chart.total_steps = 3000
        for step in range(1, 3001):
            chart.add(step, {"total": 1.0 / step, "rec": 0.5 / step, "ctx": 0.1})
        before = sys.getrefcount(None)
        for _ in range(60):
            chart.grab()  # a full paintEvent
        print("OK", before)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


def test_many_signal_emits_and_path_points_do_not_abort_the_app():
    result = run_child(
        """
        from PySide6.QtCore import QObject, QPointF, Signal
        from PySide6.QtGui import QPainterPath

        class Source(QObject):
            event = Signal(object)

        source, path, point = Source(), QPainterPath(), QPointF(1.0, 2.0)
        for _ in range(200_000):
            source.event.emit(None)
            path.lineTo(point)
        print("OK")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
