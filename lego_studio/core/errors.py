"""User-facing errors.

Every problem a user can cause (a broken image, a wrong model path, a concept made for another
model) is raised as a :class:`LegoError` whose message is one line that names the file and the
problem. Front ends print the message without a traceback (CLI) or show it in a dialog (UI).
"""

from __future__ import annotations


class LegoError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str):
        # Keep it one line: front ends show it verbatim.
        super().__init__(" ".join(str(message).split()))


class InputError(LegoError):
    """A file or value supplied by the user is unusable (image, mask, concept, config)."""


class ModelError(LegoError):
    """A model cannot be found or loaded (offline only)."""


class TrainingError(LegoError):
    """Training cannot start or had to stop (e.g. repeated non-finite losses)."""


class Cancelled(LegoError):
    """A long job was cancelled by the user."""


class OutOfMemory(TrainingError):
    """A run ran out of memory; its checkpoint is saved and ``settings`` would need less."""

    def __init__(self, message: str, settings: dict | None = None):
        super().__init__(message)
        self.settings = dict(settings or {})
