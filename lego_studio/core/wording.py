"""Small wording helpers for messages (Qt-free, shared by the CLI and the app)."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 vector"``, ``"3 vectors"``, ``"0 images"``; ``many`` for irregular plurals."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
