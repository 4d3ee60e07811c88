"""Exemplar images for training: load, crop, encode once with the VAE, cache.

Every image is centre-cropped to a square and resized to the training resolution; its mask goes
through the same crop with nearest-neighbour resizing, so mask and image stay aligned. The VAE
latent of the image and of its mirror image are computed once (the VAE is not exactly
flip-equivariant, so the mirror is encoded, not flipped in latent space) and kept as float32 on
the CPU. They are also cached on disk, keyed by the image's content hash, the resolution and the
model, so a resumed run does not re-encode.

Masks (255 = subject) become a soft subject-coverage map at latent size (area-averaged), with
1 = subject. An image without a mask gets an all-zero map: no subject marked, the whole image is
concept region.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np
from PIL import Image

from lego_studio.core.errors import InputError
from lego_studio.core.images import load_source, mask_array
from lego_studio.core.paths import atomic_save, file_sha256

if TYPE_CHECKING:  # torch is imported lazily; annotations only
    import torch

CACHE_FORMAT = "lego-studio-latents/1"


@dataclass
class ExemplarSet:
    """Cached training data, all float32 on the CPU. Index 0 of dim 1 = as is, 1 = mirrored."""

    latents: torch.Tensor  # [K, 2, C, h, w]
    masks: torch.Tensor  # [K, 2, 1, h, w] in [0, 1], 1 = subject
    has_mask: list[bool]
    sources: list[str]
    # [K, 2, 4] per image and mirror: original height, width, crop top, left (in the resized frame),
    # SDXL's size and crop micro-conditioning. None: original = training size, no crop.
    sizes: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.latents.shape[0])


def centre_square(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the largest centred square of a ``width`` x ``height`` image."""
    side = min(width, height)
    return (width - side) // 2, (height - side) // 2, side


def center_crop_resize(image: Image.Image, resolution: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """The largest centred square of ``image``, resized to ``resolution`` x ``resolution``."""
    left, top, side = centre_square(*image.size)
    square = image.crop((left, top, left + side, top + side))
    if square.size != (resolution, resolution):
        square = square.resize((resolution, resolution), resample=resample)
    return square


def size_conditioning(size: tuple[int, int], resolution: int) -> list[list[int]]:
    """SDXL's micro-conditioning of an image of ``size`` (width, height) that center_crop_resize
    turns into the training square: [original height, width, crop top, crop left] as the SDXL paper
    and diffusers' training scripts give it (the crop in the frame resized to the training scale),
    for the image and for its mirror. It tells the UNet that a small or cropped photo is one, so the
    concept does not have to explain its blur or its cut-off edges."""
    width, height = int(size[0]), int(size[1])
    left, top, side = centre_square(width, height)  # the crop center_crop_resize makes
    scale = resolution / side
    mirrored_left = width - side - left
    return [[height, width, round(top * scale), round(offset * scale)] for offset in (left, mirrored_left)]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [-1, 1] (what the VAE expects)."""
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _content_hash(image_source, image: Image.Image) -> str:
    if isinstance(image_source, (str, os.PathLike)):
        return file_sha256(image_source)
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _model_key(model) -> str:
    vae_config = model.vae.config
    return f"{model.source}|{model.family.name}|{vae_config.latent_channels}|{_scaling(model)}|{model.dtype}"


def _scaling(model) -> tuple[float, float]:
    config = model.vae.config
    scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
    shift = float(getattr(config, "shift_factor", 0.0) or 0.0)
    return scale, shift


def encoding_vae(model):
    """The VAE that encodes training images: the model's own, or for SDXL in half precision an
    fp32 copy (the SDXL VAE overflows in fp16: NaN latents), leaving the model's VAE untouched."""
    import torch

    vae = model.vae
    if vae.dtype != torch.float32 and getattr(vae.config, "force_upcast", False) and model.family.name == "sdxl":
        import copy

        vae = copy.deepcopy(vae).to(torch.float32)
    return vae


def encode_images(model, pixels: torch.Tensor, vae=None) -> torch.Tensor:
    """VAE latents (mean of the posterior, scaled like diffusers' training scripts), float32.
    ``vae``: an :func:`encoding_vae` made once for many calls."""
    import torch

    scale, shift = _scaling(model)
    vae = vae if vae is not None else encoding_vae(model)
    latents = []
    with torch.no_grad():
        # One image at a time: the encoder's full-resolution feature maps are the largest tensors
        # of a whole run (SDXL at 1024 px in fp32: 2.7 GiB per image, traced by memory_trace).
        for image in pixels.split(1):
            posterior = vae.encode(image.to(model.device, vae.dtype)).latent_dist
            latents.append(((posterior.mean - shift) * scale).float().cpu())
    return torch.cat(latents)


def _latent_mask(mask: np.ndarray | None, resolution: int, latent_size: int) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    if mask is None:
        return torch.zeros(1, latent_size, latent_size)
    cropped = center_crop_resize(Image.fromarray(mask, mode="L"), resolution, resample=Image.Resampling.NEAREST)
    full = torch.from_numpy((np.asarray(cropped) >= 128).astype(np.float32))[None, None]
    # Area averaging keeps partial coverage at the subject's edge instead of a jagged threshold.
    return F.interpolate(full, size=(latent_size, latent_size), mode="area")[0]


def _load_cached(path: Path):
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        return tensors["latent"], tensors["latent_flipped"]
    except Exception:  # noqa: BLE001 - a damaged cache file is simply recomputed
        return None


def build_exemplars(model, images, masks=None, resolution: int | None = None, cache_dir=None) -> ExemplarSet:
    """Load, crop and encode ``images`` (paths or PIL images) with optional ``masks``.

    ``masks`` is ``None`` or a list as long as ``images`` whose entries are a mask path, a uint8
    array at the image's size, or ``None`` (no subject marked on that image).
    """
    import torch
    from safetensors.torch import save_file

    images = list(images)
    if not images:
        raise InputError("no training images given")
    if masks is not None:
        masks = list(masks)
        if len(masks) != len(images):
            raise InputError(f"got {len(masks)} masks for {len(images)} images; give one per image (or None)")
    else:
        masks = [None] * len(images)
    resolution = int(resolution or model.family.resolution)
    factor = model.vae_scale_factor
    if resolution % factor:
        raise InputError(f"resolution {resolution} is not a multiple of the model's VAE factor {factor}")
    latent_size = resolution // factor
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    model_key = _model_key(model)

    latents, mask_maps, has_mask, sources, sizes = [], [], [], [], []
    vae = None
    for image_source, mask_source in zip(images, masks):
        image, name = load_source(image_source, "training image")
        mask = mask_array(mask_source, image, name)
        cropped = center_crop_resize(image, resolution)
        key = hashlib.sha256(
            f"{CACHE_FORMAT}|{_content_hash(image_source, image)}|{resolution}|{model_key}".encode()
        ).hexdigest()[:32]
        cached = _load_cached(cache_dir / f"{key}.safetensors") if cache_dir is not None else None
        if cached is None:
            pixels = torch.stack([image_to_tensor(cropped), image_to_tensor(cropped.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
            vae = vae if vae is not None else encoding_vae(model)  # made once, at the first image to encode
            encoded = encode_images(model, pixels, vae)
            cached = (encoded[0].contiguous(), encoded[1].contiguous())
            if cache_dir is not None:
                tensors = {"latent": cached[0], "latent_flipped": cached[1]}
                atomic_save(cache_dir / f"{key}.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"source": name}))
        latents.append(torch.stack(cached))
        subject = _latent_mask(mask, resolution, latent_size)
        mask_maps.append(torch.stack([subject, torch.flip(subject, dims=[-1])]))
        has_mask.append(mask is not None and bool(mask.any()))
        sources.append(name)
        sizes.append(size_conditioning(image.size, resolution))
    return ExemplarSet(
        latents=torch.stack(latents), masks=torch.stack(mask_maps), has_mask=has_mask, sources=sources,
        sizes=torch.tensor(sizes, dtype=torch.float32),
    )


def check_inputs(images, masks=None) -> None:
    """Open every image and mask once, so a broken file is reported before a slow model load.

    Every bad file is reported at once, not only the first: one file's problem is the one-line
    :class:`InputError` training would raise later; several make one error listing each of
    them on its own line."""
    images = list(images)
    masks = list(masks) if masks is not None else None
    if not images:
        raise InputError("no training images given")
    if masks is not None and len(masks) != len(images):
        raise InputError(f"got {len(masks)} masks for {len(images)} images; give one per image (or None)")
    problems = []
    for index, source in enumerate(images):
        try:
            image, name = load_source(source, "training image")
            if masks is not None:
                mask_array(masks[index], image, name)
        except InputError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        raise InputError(f"{len(problems)} of {len(images)} input files cannot be used:\n  " + "\n  ".join(problems))
