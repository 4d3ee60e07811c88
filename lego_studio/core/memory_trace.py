"""How much memory a training step needs, traced instead of guessed.

The step is the Trainer's own code (text encoders with the splice hooks, the UNet calls of the
chosen batching, every loss term and the backward pass) run on a twin of the loaded model whose
tensors live on PyTorch's ``meta`` device: shapes and dtypes, no data and no arithmetic. A dispatch
mode counts the bytes of every tensor the step creates while it is alive, so the step's peak is
counted exactly, for any architecture (SD 1.x, 2.x, SDXL, fine-tunes, the user's resolution and
batch), in seconds on the CPU and without a GPU.

Two things differ from a real device, and both are handled:

- On ``meta`` PyTorch picks the "math" attention, which materialises every [tokens x tokens]
  score matrix; a GPU runs the flash or memory-efficient kernel, which keeps only the output and
  one log-sum-exp per row. :class:`fused_attention` routes attention to the CPU flash kernel (same
  footprint, has a meta implementation) while tracing.
- The device's own overhead (caching-allocator rounding, cuBLAS workspaces) is not a tensor:
  against ``torch.cuda.max_memory_allocated`` of a measured H100 run the traced peaks were 2-4 %
  low, 0.11-0.12 GiB in every configuration (``benchmarks/memory_trace.py --validate``);
  :data:`DEVICE_OVERHEAD_BYTES` adds it.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import weakref

GIB = 1024**3
DEVICE_OVERHEAD_BYTES = int(0.15 * GIB)  # measured 0.11-0.12 GiB on an H100 (module docstring), rounded up

# fused_attention swaps a function of torch.nn.functional: one trace at a time.
_TRACE_LOCK = threading.Lock()


def _peak_tensor_bytes_mode():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class PeakTensorBytes(TorchDispatchMode):
        """Bytes of tensor storage created inside the mode and still alive; ``peak`` is the most at
        any moment. An output sharing an input's storage (a view) is not new memory, nor is
        anything that existed before (the weights)."""

        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.current = 0
            self.peak = 0

        def _release(self, key: int) -> None:
            self.current -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for tensor in tree_leaves(out):
                if not isinstance(tensor, torch.Tensor):
                    continue
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key in inputs or key in self.live:
                    continue
                self.live[key] = storage.nbytes()
                self.current += self.live[key]
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, key)
            return out

    return PeakTensorBytes()


class fused_attention:
    """While tracing, attention on ``meta`` tensors runs as a fused kernel would on a GPU."""

    def __enter__(self):
        import torch
        import torch.nn.functional as F

        self._original = original = F.scaled_dot_product_attention

        def fused(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
            if query.device.type != "meta" or dropout_p or kwargs:
                return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                scale=scale, **kwargs)
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale)[0]

        F.scaled_dot_product_attention = fused
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F

        F.scaled_dot_product_attention = self._original


@contextlib.contextmanager
def counting():
    """``with counting() as tracker:`` — tracker.peak is the bytes the block's tensors peaked at."""
    with _TRACE_LOCK, fused_attention(), _peak_tensor_bytes_mode() as tracker:
        yield tracker


def meta_twin(model):
    """An SDModel with the same architecture, dtype and tokenizers as ``model``, its weights on
    ``meta`` (no memory). Kept on the model: building SDXL's takes a second or two."""
    twin = getattr(model, "_meta_twin", None)
    if twin is not None:
        return twin
    import dataclasses

    import torch

    def rebuild(module):
        if module is None:
            return None
        with torch.device("meta"):
            if hasattr(module, "from_config"):  # diffusers
                copy = type(module).from_config(module.config)
            else:  # transformers
                copy = type(module)(module.config)
        return copy.to(dtype=next(module.parameters()).dtype).eval()

    # Its own scheduler: add_noise moves the scheduler's tables to the samples' device (meta here).
    scheduler = type(model.noise_scheduler).from_config(model.noise_scheduler.config)
    twin = dataclasses.replace(
        model, noise_scheduler=scheduler, unet=rebuild(model.unet), vae=rebuild(model.vae),
        text_encoder=rebuild(model.text_encoder), text_encoder_2=rebuild(model.text_encoder_2),
        device=torch.device("meta"))
    model._meta_twin = twin
    return twin


def _memory_key(config) -> tuple:
    """The settings a step's memory depends on (not steps, learning rate, seed...)."""
    keep = ("method", "unet_batching", "gradient_checkpointing", "batch_size", "resolution", "num_vectors",
            "w_subj", "w_ctx", "w_words", "positive_words", "negative_words", "random_negatives",
            "subject")
    data = config.to_dict()
    return tuple((k, repr(data.get(k))) for k in keep)


def trace_step(model, config) -> int:
    """Bytes the tensors of one training step of ``config`` on ``model`` peak at (weights not
    counted): :func:`count_step` on the model's :func:`meta_twin`. Cached per model and settings."""
    cache = model.__dict__.setdefault("_step_memory", {})
    key = _memory_key(config)
    if key not in cache:
        cache[key] = count_step(meta_twin(model), config)
    return cache[key]


def count_step(model, config, images: int = 2) -> int:
    """Run one training step of ``config`` on ``model`` (any device; ``meta`` = traced) and return
    the bytes its tensors peaked at. The images are zero latents of the real shape, all with a mask
    so that every Lego term runs; the model's weights are not changed."""
    import torch

    from lego_studio.core.data import ExemplarSet
    from lego_studio.core.training import Trainer

    with tempfile.TemporaryDirectory(prefix="lego-trace-") as run_dir:
        trainer = Trainer(model, config.validate(), images=["traced"] * images, run_dir=run_dir)
        side = int(config.resolution or model.family.resolution) // model.vae_scale_factor
        channels = int(model.vae.config.latent_channels)
        trainer.prepare(ExemplarSet(
            latents=torch.zeros(images, 2, channels, side, side), masks=torch.full((images, 2, 1, side, side), 0.5),
            has_mask=[True] * images, sources=["traced"] * images))
        checkpointing_before = bool(getattr(model.unet, "is_gradient_checkpointing", False))
        if config.gradient_checkpointing and not checkpointing_before:
            model.unet.enable_gradient_checkpointing()
        try:
            with counting() as tracker:
                losses = trainer.step_losses(torch.Generator().manual_seed(0))
                losses["total"].backward()
                del losses
        finally:
            if config.gradient_checkpointing and not checkpointing_before:
                model.unet.disable_gradient_checkpointing()
    return int(tracker.peak)


def trace_latent_encoding(model, resolution: int) -> int:
    """Bytes encoding one training image into latents peaks at (as build_exemplars does it)."""
    cache = model.__dict__.setdefault("_step_memory", {})
    key = ("encoding", int(resolution))
    if key in cache:
        return cache[key]
    import torch

    from lego_studio.core.data import encode_images

    twin = meta_twin(model)
    with counting() as tracker:
        try:
            encode_images(twin, torch.zeros(2, 3, resolution, resolution, device="meta"))
        except NotImplementedError:  # its last move, to the CPU, has no data on meta; the peak is counted by then
            pass
    cache[key] = int(tracker.peak)
    return cache[key]


def weight_bytes(model) -> dict[str, int]:
    """Bytes of each part's weights and buffers."""
    parts = {"unet": model.unet, "vae": model.vae}
    for index, (_, encoder) in enumerate(model.text_encoders):
        parts["text_encoder_2" if index else "text_encoder"] = encoder
    return {name: sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
            for name, module in parts.items()}
