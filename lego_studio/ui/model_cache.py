"""One loaded model per view, reused across jobs (loading takes seconds to minutes).

Only ever touched from that view's worker thread, one job at a time (TaskRunner guarantees it),
so the lock is a guard against misuse rather than a hot path.
"""

from __future__ import annotations

import threading


class ModelCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str, str] | None = None
        self._model = None

    def get(self, spec: str, device: str = "auto", precision: str = "auto", state=None):
        """The model for ``spec`` on ``device``; loads it (SLOW) when it differs from the last."""
        key = (str(spec), device, precision)
        with self._lock:
            if self._key != key or self._model is None:
                if state is not None:
                    state.progress(0, 0, f"Loading model {spec}…")
                from lego_studio.core.models import load_model

                self._model = None  # free the previous one before loading the next
                self._model = load_model(spec, device=device, precision=precision)
                self._key = key
            return self._model

    def forget(self) -> None:
        with self._lock:
            self._model = None
            self._key = None


def model_choices(settings) -> list[tuple[str, str]]:
    """(label, spec) of every model the user can pick: the configured ones, else Shape World."""
    choices = [(f"{m.name} ({m.family or m.kind})", m.spec) for m in settings.models]
    if not any(spec == "shapeworld" for _, spec in choices):
        choices.append(("Shape World (built in)", "shapeworld"))
    default = settings.model()
    if default is not None:
        choices.sort(key=lambda c: c[1] != default.spec)
    return choices
