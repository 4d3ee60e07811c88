"""The model libraries (torch, diffusers, transformers), imported once, in one place.

diffusers and transformers resolve their public names lazily (``_LazyModule.__getattr__``), and
that is not thread-safe: two threads doing ``from diffusers import AutoencoderKL`` at the same
time can make one of them fail with ``ImportError: cannot import name 'AutoencoderKL'`` (the
app's start-up warm-up racing the first training run). Every path that needs the model stack
calls :func:`import_model_stack` first; it imports all the classes the app uses under one lock,
after which the names are plain module attributes and later imports are safe from any thread.

It also silences the libraries' chatter (``There are modules in UNet2DConditionModel that
should be kept in float32: [] …``, loading progress bars): their logging is set to errors only,
here, once.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

_LOCK = threading.Lock()
# Held while any torch module is built (a model from its files, the Shape World judge, Segment
# Anything): diffusers/accelerate build models inside an empty-weights context that patches
# torch's module construction process-wide, so a module built in another thread meanwhile would
# get ``meta`` parameters (and loading weights into it would silently do nothing).
MODEL_LOAD_LOCK = threading.RLock()
_STACK: SimpleNamespace | None = None

DIFFUSERS_NAMES = (
    "AutoencoderKL",
    "UNet2DConditionModel",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "PNDMScheduler",
    "StableDiffusionPipeline",
    "StableDiffusionXLPipeline",
)
TRANSFORMERS_NAMES = (
    "CLIPTextConfig",
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPTokenizer",
)


def import_model_stack() -> SimpleNamespace:
    """Import torch and the diffusers/transformers classes the app uses, once, thread-safely.

    Returns a namespace holding ``torch``, ``diffusers``, ``transformers`` and every class named
    in :data:`DIFFUSERS_NAMES` / :data:`TRANSFORMERS_NAMES`. Cheap after the first call."""
    global _STACK
    stack = _STACK
    if stack is not None:
        return stack
    with _LOCK:
        if _STACK is not None:
            return _STACK
        import torch
        import diffusers
        import transformers

        _quiet(diffusers, transformers)
        names: dict = {"torch": torch, "diffusers": diffusers, "transformers": transformers}
        for name in DIFFUSERS_NAMES:
            names[name] = getattr(diffusers, name)
        for name in TRANSFORMERS_NAMES:
            names[name] = getattr(transformers, name)
        # Submodules imported by name elsewhere (single-file conversion).
        import diffusers.loaders.single_file_utils  # noqa: F401

        _STACK = SimpleNamespace(**names)
        return _STACK


def _quiet(diffusers, transformers) -> None:
    """Warnings, info and loading progress bars ("Loading weights: 100%") from diffusers and
    transformers say nothing to a user: errors only. The app and the CLI show their own progress."""
    for library in (diffusers, transformers):
        try:
            library.utils.logging.set_verbosity_error()
            library.utils.logging.disable_progress_bar()
        except AttributeError:  # pragma: no cover - a version without these
            pass
