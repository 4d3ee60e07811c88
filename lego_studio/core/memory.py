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
smaller batch (the ladder of :mod:`lego_studio.core.oom`) — and stops at the first configuration
that fits. A setting the user chose explicitly is never changed. An out-of-memory error mid-run is
handled by :mod:`lego_studio.core.oom`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lego_studio.core.oom import describe_changes, saving_ladder

GIB = 1024**3
LIMIT_ENV = "LEGO_STUDIO_MEMORY_LIMIT_GB"

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
    for candidate, changed in saving_ladder(config, explicit):
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
