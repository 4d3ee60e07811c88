"""Choosing the compute device and the weight precision.

``auto`` prefers CUDA, then Apple MPS, then the CPU. Half precision is only used on accelerators:
on the CPU fp16 matmuls are slow or unsupported, so the CPU always runs fp32.
"""

from __future__ import annotations

import os

import torch

from lego_studio.core.errors import ModelError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def use_app_cpu_threads() -> int:
    """Set torch's CPU thread count to :func:`app_cpu_threads` for the calling thread and for
    threads that have not used torch yet (torch keeps the count per OS thread once used)."""
    count = app_cpu_threads()
    torch.set_num_threads(count)
    return count


def app_cpu_threads(cpu_count: int | None = None) -> int:
    """Torch CPU threads for the desktop app: every core but one, at least one.

    The free core keeps the UI thread (and the rest of the desktop) responsive, and it keeps torch's
    OpenMP workers from spinning against another busy process: on a 2-core machine with one other
    CPU-bound job, a training run with torch's default 2 threads took over 300 s for what 1 thread
    did in about 30 s alone (scripts/screenshots.py, measured 2026-11-26)."""
    count = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, int(count) - 1)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` ("auto", "cuda", "cuda:1", "mps", "cpu").

    An explicit device that this machine does not have raises :class:`ModelError`.
    """
    choice = (name or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not _mps_available():
            raise ModelError("device 'mps' is not available on this machine (choose 'auto' or 'cpu')")
        return torch.device("mps")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ModelError(f"device '{name}' is not available: no CUDA GPU found (choose 'auto' or 'cpu')")
        device = torch.device(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"device '{name}' is not available: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
        return device
    raise ModelError(f"unknown device '{name}' (choose one of: {', '.join(DEVICE_CHOICES)})")


def pick_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """Weight dtype for ``device``: fp16 on CUDA/MPS unless bf16/fp32 is asked, always fp32 on CPU."""
    choice = (precision or "auto").strip().lower()
    if choice not in PRECISION_CHOICES:
        raise ModelError(f"unknown precision '{precision}' (choose one of: {', '.join(PRECISION_CHOICES)})")
    device_type = torch.device(device).type
    if choice == "fp32" or device_type == "cpu":
        return torch.float32
    if choice == "bf16":
        return torch.bfloat16
    return torch.float16
