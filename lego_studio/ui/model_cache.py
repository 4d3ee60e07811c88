"""The loaded model, shared by the views and leased to one job at a time.

Loading takes seconds to minutes and, inside transformers, parses the tokenizer JSON in one C
call that holds the GIL (measured 150-700 ms on 2 CPU cores): done in the middle of a session it
freezes the UI. So the app loads the default model once, right after start-up (see
``MainWindow.detect_device``), and every job borrows it. A job that needs the model while another
holds it (generating during training) gets a private copy instead of sharing one the other
thread is changing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class ModelCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, str, str] | None = None
        self._model = None
        self._leased = False

    @staticmethod
    def _load(spec: str, device: str, precision: str, state=None):
        if state is not None:
            state.progress(0, 0, f"Loading model {spec}…")
        from lego_studio.core.models import load_model

        return load_model(spec, device=device, precision=precision)

    @contextmanager
    def lease(self, spec: str, device: str = "auto", precision: str = "auto", state=None):
        """Use the model for ``spec`` on ``device`` for the duration of the ``with`` block.
        Call from a worker thread: a cache miss loads the model (SLOW)."""
        key = (str(spec), device, precision)
        with self._lock:
            shared = not self._leased
            if shared:
                self._leased = True
        if not shared:
            yield self._load(spec, device, precision, state)
            return
        try:
            if self._key != key or self._model is None:
                self._model = None  # free the previous one before loading the next
                self._key = None
                self._model = self._load(spec, device, precision, state)
                self._key = key
            yield self._model
        finally:
            with self._lock:
                self._leased = False

    def preload(self, spec: str, device: str = "auto", precision: str = "auto") -> None:
        with self.lease(spec, device, precision):
            pass


def model_choices(settings) -> list[tuple[str, str]]:
    """(label, spec) of every model the user can pick: the configured ones, else Shape World.
    The default model comes first."""
    choices = [(f"{m.name} ({m.family or m.kind})", m.spec) for m in settings.models]
    from lego_studio.core.paths import resource  # not core.models: the window opens before torch loads
    from lego_studio.core.model_specs import BUILTIN_MODELS

    listed = {spec for _, spec in choices}
    for spec, builtin in BUILTIN_MODELS.items():
        # Shape World is always offered (the app's model when none is added); the others when installed.
        if spec not in listed and (spec == "shapeworld" or resource("models", spec).is_dir()):
            choices.append((f"{builtin.label} (built in{', ' + builtin.note if builtin.note else ''})", spec))
    default = settings.model()
    if default is not None:
        choices.sort(key=lambda c: c[1] != default.spec)
    else:  # no default chosen (models added but not made the default): the built-in one stays first
        choices.sort(key=lambda c: c[1] != "shapeworld")
    return choices


def refill_model_combos(model_combo, device_combo, settings) -> None:
    """Refill a view's model and device choosers from the settings, keeping the chosen model
    when it is still configured (the training and gallery views share these two choosers).
    When the default model changed (a model just added and made the default in Settings), the
    new default is selected instead."""
    current = model_combo.currentData()
    default = settings.model()
    default_spec = default.spec if default is not None else None
    default_changed = model_combo.property("lego_default_spec") != default_spec
    model_combo.setProperty("lego_default_spec", default_spec)
    model_combo.clear()
    for label, spec in model_choices(settings):
        model_combo.addItem(label, spec)
    index = model_combo.findData(default_spec if default_changed and default_spec else current)
    if index >= 0:
        model_combo.setCurrentIndex(index)
    device_combo.setCurrentText(settings.default_device)
