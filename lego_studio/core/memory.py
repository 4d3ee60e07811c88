"""Settings that fit the machine: how much memory a training step needs, how much is free, and
which memory-saving settings to turn on before a run starts.

The need is traced, not guessed (``core/memory_trace.py``): the Trainer's own step runs on a
``meta``-device twin of the loaded model, which counts the bytes of every tensor the step creates
while it is alive, for the model's real architecture, resolution, batch, method and settings, in
seconds and without a GPU. Against a measured H100 run (SD-1.5-shaped, fp16, 512 px) the traced
peaks were within 2-4 % (docs/PERFORMANCE.md). The model weights are already loaded when a
run is planned, so only what the run adds has to fit into the memory still free:

    need = max(step, encoding one image into latents) + the device's allocator overhead

If a model cannot be traced (an architecture the meta device cannot build), the older calibrated
formula is the fallback: ``copies x ACTIVATION_BYTES_PER_PARAM_PIXEL x UNet parameters x latent
pixels x bytes per value``, x ``CHECKPOINTING_FACTOR`` with gradient checkpointing.

Free memory: CUDA ``torch.cuda.mem_get_info``; CPU and MPS (unified memory) the system's
available memory (psutil, else ``/proc/meminfo``). ``LEGO_STUDIO_MEMORY_LIMIT_GB`` caps what this
process may use in total (tests and the benchmark set it to act as a smaller machine).

:func:`fit_config` walks a ladder — split UNet batching, then gradient checkpointing, then a
smaller batch — and stops at the first configuration that fits. A setting the user chose
explicitly is never changed. An out-of-memory error mid-run is recognised by
:func:`is_out_of_memory`; :func:`oom_advice` names the setting that would fit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
LIMIT_ENV = "LEGO_STUDIO_MEMORY_LIMIT_GB"
OOM_FILE = "out_of_memory.json"  # written into the run folder when a run ran out of memory

# The fallback formula, calibrated on a random SD-1.5-shaped model (860 M UNet) at 512 px on CPU,
# fp32 (benchmarks/memory_fit.py, docs/PERFORMANCE.md table): bytes of activations kept per UNet parameter per
# latent pixel per byte of value, for one batch entry that carries gradient. Per parameter is a poor
# unit across architectures (traced, SDXL keeps 0.6x SD 1.5's per parameter, 0.4x with
# checkpointing), hence the trace.
ACTIVATION_BYTES_PER_PARAM_PIXEL = 1.55e-4
CHECKPOINTING_FACTOR = 0.45  # activations kept with gradient checkpointing, relative to without
NO_GRAD_COPY = 0.25  # a no-gradient call's transient activations, in grad-carrying copies
HEADROOM = 0.10  # fraction of free memory left for the allocator, the OS and the UI
MIN_HEADROOM_BYTES = 0.5 * GIB

# The settings the planner may change, in the order it tries them.
MEMORY_SETTINGS = ("unet_batching", "gradient_checkpointing", "batch_size")
SETTING_LABELS = {
    "unet_batching": "split UNet batching",
    "gradient_checkpointing": "gradient checkpointing",
    "batch_size": "batch size",
}


def format_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GB"


# ------------------------------------------------------------------------------ estimate


def unet_parameters(model) -> int:
    return sum(p.numel() for p in model.unet.parameters())


def planning_takes_a_while(model) -> bool:
    """Whether fit_config will take seconds (tracing an SD-size UNet: about 5 s a configuration
    for SDXL on a 2-core CPU), so the CLI and the app say what is happening meanwhile."""
    return unet_parameters(model) > 100_000_000


def latent_pixels(model, config) -> int:
    resolution = int(config.resolution or model.family.resolution)
    side = max(1, resolution // int(getattr(model, "vae_scale_factor", 8) or 8))
    return side * side


def value_bytes(model) -> int:
    import torch

    return torch.tensor([], dtype=model.dtype).element_size()


def grad_copies(config) -> float:
    batch = int(config.batch_size)
    if config.method == "ti":
        return float(batch)
    if config.unet_batching == "split":
        return batch * (2 + 2 * NO_GRAD_COPY)
    return 4.0 * batch


def estimate_step_memory(model, config) -> int:
    """Bytes a run of ``config`` needs on top of the loaded model: traced (see the module's
    docstring), or by the fallback formula when the model cannot be traced."""
    from lego_studio.core import memory_trace

    try:
        resolution = int(config.resolution or model.family.resolution)
        need = max(memory_trace.trace_step(model, config), memory_trace.trace_latent_encoding(model, resolution))
    except Exception:  # noqa: BLE001 - any architecture the meta device cannot build or run: the formula
        return formula_step_memory(model, config)
    return need + memory_trace.DEVICE_OVERHEAD_BYTES


def formula_step_memory(model, config) -> int:
    """The fallback: activations per the calibration above."""
    per_copy = ACTIVATION_BYTES_PER_PARAM_PIXEL * unet_parameters(model) * latent_pixels(model, config) * value_bytes(model)
    need = grad_copies(config) * per_copy
    if config.gradient_checkpointing:
        need *= CHECKPOINTING_FACTOR
    return int(need)


# ------------------------------------------------------------------------------ free memory


def _process_rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # psutil missing: no process figure, the limit then caps free memory alone
        return 0


def system_available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def free_memory(device) -> int | None:
    """Bytes still free for a step on ``device`` (a torch.device or its type), or None when unknown."""
    import torch

    kind = getattr(device, "type", str(device))
    used_by_us = 0
    if kind == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except Exception:
            return None
        used_by_us = int(torch.cuda.memory_allocated(device))
    else:  # cpu, and mps whose memory is the system's
        free = system_available_memory()
        used_by_us = _process_rss()
    limit = os.environ.get(LIMIT_ENV)
    if limit:
        try:
            capped = int(float(limit) * GIB) - used_by_us
        except ValueError:
            capped = None
        if capped is not None:
            free = capped if free is None else min(free, capped)
    return None if free is None else max(0, int(free))


# ------------------------------------------------------------------------------ fitting


@dataclass
class MemoryPlan:
    config: object  # the TrainConfig to run (a copy when something changed)
    need: int  # estimated bytes of the chosen configuration
    default_need: int  # estimated bytes of the configuration as asked
    free: int | None
    changed: dict  # setting -> new value
    fits: bool
    note: str  # one line for the UI and the CLI ("" when nothing to say)


def _candidates(config, explicit: set[str]):
    """Configurations to try, cheapest change first; explicit settings are left alone."""
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


def fit_config(model, config, explicit=(), free: int | None = None) -> MemoryPlan:
    """Pick memory settings for ``config`` on ``model``'s device that fit the free memory.

    ``explicit``: names of settings the user chose (never changed). ``free``: bytes free
    (default: measured now). Returns the plan with a one-line ``note`` when settings changed or
    nothing fits.
    """
    explicit = set(explicit)
    if free is None:
        free = free_memory(model.device)
    default_need = estimate_step_memory(model, config)
    if free is None:
        return MemoryPlan(config, default_need, default_need, None, {}, True, "")
    reserve = max(MIN_HEADROOM_BYTES, HEADROOM * free)
    budget = free - reserve
    last = None
    for candidate, changed in _candidates(config, explicit):
        need = estimate_step_memory(model, candidate)
        last = (candidate, changed, need)
        if need <= budget:
            if not changed:
                return MemoryPlan(config, need, default_need, free, {}, True, "")
            note = (f"memory: a step needs about {format_bytes(default_need)}, {format_bytes(free)} is free on "
                    f"{model.device.type}; turned on {describe_changes(changed)} (about {format_bytes(need)})")
            return MemoryPlan(candidate, need, default_need, free, changed, True, note)
    candidate, changed, need = last
    # The reserve is named: "needs 0.2 GB, 0.3 GB is free" alone would read as if it fitted.
    free_text = f"{format_bytes(free)} is free on {model.device.type}, " + (
        f"less than the {format_bytes(reserve)} kept for the system" if reserve >= free
        else f"{format_bytes(reserve)} of it kept for the system")
    note = (f"memory: a step needs about {format_bytes(need)} even with every saving on, but only {free_text}; "
            f"it may run out of memory (a lower resolution, or a GPU with more memory, would fit)")
    if changed:
        note = (f"memory: turned on {describe_changes(changed)}, but a step still needs about {format_bytes(need)} and only "
                f"{free_text}; it may run out of memory (a lower resolution would fit)")
    return MemoryPlan(candidate, need, default_need, free, changed, False, note)


# ------------------------------------------------------------------------------ out of memory


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
    for _candidate, changed in list(_candidates(config, set(explicit)))[1:]:
        return changed
    return {}


def as_train_flags(settings: dict) -> str:
    """The ``train`` flags that give these settings, e.g. "--unet-batching split --batch-size 1"
    (the flag names come from TrainConfig's descriptions)."""
    from lego_studio.core.training import SETTINGS

    parts = []
    for key, value in settings.items():
        flag = SETTINGS[key].cli_flag
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
        flags = as_train_flags(changed)
        line = (f"out of memory on {device_type} at step {step}; resume with {describe_changes(changed)} "
                f"({flags}), which needs less memory; nothing is lost")
    else:
        line = (f"out of memory on {device_type} at step {step} with every memory saving on; resume at a lower "
                f"resolution (--resolution) or on a device with more memory; nothing is lost")
    return line, changed


def write_oom_hint(run_dir: str | os.PathLike, step: int, changed: dict, message: str) -> None:
    from lego_studio.core.paths import atomic_write_json

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
