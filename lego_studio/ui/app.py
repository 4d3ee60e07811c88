"""Desktop entry point: ``lego-studio gui`` or ``lego-studio-gui``.

The window is shown before torch/diffusers are imported (they take seconds); device detection
and every model load happen later, in workers.
"""

from __future__ import annotations

import os
import sys


def create_app(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    import lego_studio.ui  # noqa: F401  (applies the Qt binding fixes before any signal fires)

    app = QApplication.instance() or QApplication(list(argv) if argv is not None else sys.argv)
    app.setApplicationName("Lego Studio")
    app.setOrganizationName("LegoStudio")
    return app


def main(argv: list[str] | None = None) -> int:
    from lego_studio.ui.system_libs import check_before_qt

    problem = check_before_qt()
    if problem is not None:  # Qt would abort with a message that names only one of them
        print(problem, file=sys.stderr)
        return 1
    app = create_app(argv)
    from PySide6.QtCore import QTimer

    from lego_studio.ui.main_window import MainWindow

    window = MainWindow()
    window.show()
    # After the first paint: the window is already on screen while torch loads.
    QTimer.singleShot(0, window.detect_device)
    if os.environ.get("LEGO_STUDIO_EXIT_AFTER_SHOW") != "1":
        # The last project reopened (in the context's writer); a run of it that the last session
        # left unfinished is offered.
        QTimer.singleShot(0, lambda: window.context.writes.after_pending(window.offer_interrupted_run))
    if os.environ.get("LEGO_STUDIO_EXIT_AFTER_SHOW") == "1":
        # Start-up timing (docs/PACKAGING.md figures): report once the window is up, then quit.
        # Queued after detect_device so that close() finds its worker and waits for it.
        from lego_studio.selftest import seconds_since_process_start

        def report_and_quit() -> None:
            print(f"first window after {seconds_since_process_start():.2f} s", flush=True)
            window.close()  # the normal way out: waits for the start-up workers, then Qt quits

        QTimer.singleShot(0, report_and_quit)
    from lego_studio.ui.errors import install_excepthook

    install_excepthook(lambda line: window.context.status_message.emit(line))
    # However the event loop ends (window closed, session logout, app.quit()), every worker
    # thread is stopped and joined while the widgets and the QApplication still exist.
    app.aboutToQuit.connect(window.shutdown_workers)
    code = app.exec()
    window.shutdown_workers()  # idempotent
    del window  # widgets before the QApplication
    import gc

    gc.collect()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
