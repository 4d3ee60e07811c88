"""Out of memory: the ladder of memory-saving settings, recognising an out-of-memory error, the
advice a run that ran out of memory stops with, and the hint it leaves for its resume.

The Trainer (core/training.py) uses it when a step runs out of memory; the planner
(core/memory.py) walks the same ladder before a run starts. It imports neither, so both can use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from lego_studio.core.paths import atomic_write_json

OOM_FILE = "out_of_memory.json"  # written into the run folder when a run ran out of memory

# The settings the planner may change, in the order it tries them.
MEMORY_SETTINGS = ("unet_batching", "gradient_checkpointing", "batch_size")
SETTING_LABELS = {
    "unet_batching": "split UNet batching",
    "gradient_checkpointing": "gradient checkpointing",
    "batch_size": "batch size",
}


def saving_ladder(config, explicit=()):
    """``(config, changes)`` to try, cheapest change first; explicit settings are left alone."""
    explicit = set(explicit)
    current = config
    yield current, {}
    changes: dict = {}
    if config.method == "lego" and config.unet_batching != "split" and "unet_batching" not in explicit:
        changes = {**changes, "unet_batching": "split"}
        yield dataclasses.replace(config, **changes), dict(changes)
    if not config.gradient_checkpointing and "gradient_checkpointing" not in explicit:
        changes = {**changes, "gradient_checkpointing": True}
        yield dataclasses.replace(config, **changes), dict(changes)
    if "batch_size" not in explicit:
        batch = int(config.batch_size)
        while batch > 1:
            batch = max(1, batch // 2)
            changes = {**changes, "batch_size": batch}
            yield dataclasses.replace(config, **changes), dict(changes)


def describe_changes(changed: dict) -> str:
    parts = []
    for key, value in changed.items():
        if key == "batch_size":
            parts.append(f"batch size {value}")
        else:
            parts.append(SETTING_LABELS[key])
    return " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else (parts[0] if parts else "")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA/MPS out-of-memory errors and the CPU allocator failing."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:
        pass
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory",
                                      "defaultcpuallocator", "failed to allocate"))
    return False


def next_saving(config, explicit=()) -> dict:
    """The next rung of the ladder after ``config``: the settings that would need less memory."""
    for _candidate, changed in list(saving_ladder(config, explicit))[1:]:
        return changed
    return {}


def as_train_flags(settings: dict, config) -> str:
    """The ``train`` flags that give these settings, e.g. "--unet-batching split --batch-size 1".
    The flag names come from the descriptions of ``config``'s fields (a TrainConfig or its class)."""
    described = {f.name: f.metadata["setting"] for f in dataclasses.fields(config)}
    parts = []
    for key, value in settings.items():
        flag = dataclasses.replace(described[key], name=key).cli_flag
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def oom_advice(config, step: int, device_type: str, explicit=()) -> tuple[str, dict]:
    """One line for a run that ran out of memory, naming the setting that would fit, and the
    settings themselves (saved next to the run so a resume applies them)."""
    changed = next_saving(config, explicit)
    if changed:
        flags = as_train_flags(changed, config)
        line = (f"out of memory on {device_type} at step {step}; resume with {describe_changes(changed)} "
                f"({flags}), which needs less memory; nothing is lost")
    else:
        line = (f"out of memory on {device_type} at step {step} with every memory saving on; resume at a lower "
                f"resolution (--resolution) or on a device with more memory; nothing is lost")
    return line, changed


def write_oom_hint(run_dir: str | os.PathLike, step: int, changed: dict, message: str) -> None:
    atomic_write_json(Path(run_dir) / OOM_FILE, {"step": step, "settings": changed, "message": message})


def read_oom_hint(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / OOM_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    settings = data.get("settings") if isinstance(data, dict) else None
    return dict(settings) if isinstance(settings, dict) else {}


def apply_oom_hint(config, run_dir, explicit=()) -> tuple[object, dict]:
    """On resume: the settings a previous out-of-memory stop recommended, unless set explicitly."""
    hint = {k: v for k, v in read_oom_hint(run_dir).items() if k in MEMORY_SETTINGS and k not in set(explicit)}
    if not hint:
        return config, {}
    if config.method == "ti":
        hint.pop("unet_batching", None)
    current = {k: getattr(config, k) for k in hint}
    hint = {k: v for k, v in hint.items() if current[k] != v}
    return (dataclasses.replace(config, **hint), hint) if hint else (config, {})
