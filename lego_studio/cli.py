"""``lego-studio`` command line: every core capability, headless.

Each sub-command lives in ``lego_studio/commands/<name>.py`` and exposes
``register(subparsers)`` which adds its parser and sets ``func=run``. Imports of torch and
friends happen inside ``run`` so that ``lego-studio --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lego_studio import __version__
from lego_studio.core.errors import LegoError

# Order = order in --help.
COMMAND_MODULES = [
    "train",
    "runs",
    "generate",
    "concepts",
    "models",
    "demo",
    "shapeworld",
    "gui",
    "selftest",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lego-studio",
        description="Teach Stable Diffusion a concept that is not an object, offline.",
    )
    parser.add_argument("--version", action="version", version=f"lego-studio {__version__}")
    parser.add_argument(
        "--self-test", action="store_true", help="check this install works offline and exit (= the selftest command)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # A command module that fails to import is a broken install: let the error show.
        importlib.import_module(f"lego_studio.commands.{name}").register(sub)
    return parser


def _print_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.invocation = ["lego-studio", *(sys.argv[1:] if argv is None else argv)]
    if args.self_test and not getattr(args, "func", None):
        # The packaged app's smoke test: `LegoStudio --self-test`, with the selftest defaults.
        args = parser.parse_args(["selftest"])
    if not getattr(args, "func", None):
        # No sub-command: open the desktop app (the packaged LegoStudio binary starts this way).
        from lego_studio.ui.app import main as gui_main

        return int(gui_main() or 0)
    from lego_studio.core import settings as settings_module

    # A settings file the app would warn about is reported here too (once, on stderr), instead of
    # the command silently using the defaults (e.g. the default library).
    settings_module.add_warning_listener(_print_warning)
    try:
        result = args.func(args)
    except LegoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - OS-level failures become one line; bugs keep their traceback
        from lego_studio.core.errors import disk_error

        problem = disk_error(exc, doing="accessing")
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
