"""``lego-studio gui``: open the desktop app."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("gui", help="open the desktop app", description="Open the Lego Studio desktop app.")
    parser.set_defaults(func=run)


def run(args) -> int:
    from lego_studio.ui.app import main

    return main([])
