"""Entry point of the packaged app (PyInstaller runs this file as ``__main__``).

No argument opens the desktop app; ``--self-test`` and every ``lego-studio`` sub-command work too.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    # Data-loader worker processes re-run this executable; freeze_support routes them to their job.
    multiprocessing.freeze_support()
    from lego_studio.cli import main

    sys.exit(main())
