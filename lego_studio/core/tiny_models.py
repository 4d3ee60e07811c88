"""Tiny random-weight Stable Diffusion models (SD and SDXL architectures) for tests and demos:
a few MB, deterministic for a seed, loadable by :func:`lego_studio.core.models.load_model` and by
plain diffusers pipelines."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from lego_studio.core.errors import InputError
from lego_studio.core.model_specs import FAMILY_FILE, is_diffusers_folder
from lego_studio.core.model_stack import import_model_stack
from lego_studio.core.paths import atomic_write_json


def tiny_model_configs(sample_size: int = 32) -> dict[str, dict]:
    """Configs of the tiny SD-architecture test model (``sample_size`` = pixel size)."""
    if sample_size % 16:
        raise InputError(f"tiny model size {sample_size} must be a multiple of 16")
    text_width = 32
    return {
        "unet": dict(
            sample_size=sample_size // 2,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=text_width,
            attention_head_dim=4,
            norm_num_groups=32,
        ),
        "vae": dict(
            sample_size=sample_size,
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            scaling_factor=0.18215,
        ),
        "text_encoder": dict(
            hidden_size=text_width,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=text_width,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        "scheduler": dict(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            set_alpha_to_one=False,
            skip_prk_steps=True,
            steps_offset=1,
            prediction_type="epsilon",
        ),
    }


TINY_FAMILIES = ("sd", "sdxl")


# The tiny SDXL model's two text widths differ, so a swapped clip_l / clip_g is caught.
TINY_SDXL_WIDTHS = (32, 48)


def tiny_sdxl_configs(sample_size: int = 32) -> dict[str, dict]:
    """Configs of the tiny SDXL-architecture test model: two text encoders of different widths
    (the second with a projection, for the pooled embeddings), a ``text_time`` UNet."""
    if sample_size % 16:
        raise InputError(f"tiny model size {sample_size} must be a multiple of 16")
    width_l, width_g = TINY_SDXL_WIDTHS
    time_dim = 8
    base = tiny_model_configs(sample_size)
    encoder = dict(base["text_encoder"], hidden_act="gelu")
    return {
        # The SD tiny UNet plus SDXL's two-encoder width and micro-conditioning embedding.
        "unet": dict(
            base["unet"],
            cross_attention_dim=width_l + width_g,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=width_g + 6 * time_dim,
        ),
        "vae": dict(base["vae"], scaling_factor=0.13025, force_upcast=True),
        "text_encoder": dict(encoder, hidden_size=width_l, projection_dim=width_l),
        "text_encoder_2": dict(encoder, hidden_size=width_g, projection_dim=width_g, pad_token_id=0),
        "scheduler": dict(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
            prediction_type="epsilon",
        ),
    }


def make_tiny_model(out_dir: str | os.PathLike, seed: int = 0, sample_size: int = 32, family: str = "sd") -> Path:
    """Write a random-weight tiny SD-architecture model (diffusers layout, real CLIP tokenizer).

    Deterministic for a seed; a few MB; loads with :func:`load_model` and with plain
    ``StableDiffusionPipeline.from_pretrained(dir, safety_checker=None)``. ``family="sdxl"``
    writes the SDXL architecture instead (two text encoders of widths 32 and 48, pooled
    embeddings, micro-conditioning), which plain ``StableDiffusionXLPipeline`` loads."""
    import_model_stack()
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lego_studio.core.tokenizer import load_tokenizer

    if family not in TINY_FAMILIES:
        raise InputError(f"tiny model family must be one of {', '.join(TINY_FAMILIES)} (got {family!r})")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_diffusers_folder(out))):
        raise InputError(f"{out}: exists and is not an (empty) model folder; choose a new folder")
    if family == "sdxl":
        return _make_tiny_sdxl(out, seed, sample_size)
    configs = tiny_model_configs(sample_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
    scheduler = PNDMScheduler(**configs["scheduler"])
    # Like SD's own scheduler_config.json: schedulers built from it (DDIM, DDPM) must not clip
    # latents to [-1, 1], which they do by default.
    scheduler.register_to_config(clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_tokenizer("sd1"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the target and swap in with renames, so a crash never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(str(staging), safe_serialization=True)
        atomic_write_json(staging / FAMILY_FILE, {"family": "tiny", "resolution": sample_size})
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _make_tiny_sdxl(out: Path, seed: int, sample_size: int) -> Path:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lego_studio.core.tokenizer import load_tokenizer

    configs = tiny_sdxl_configs(sample_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"]))
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=load_tokenizer("sd1"),
        tokenizer_2=load_tokenizer("sd2"),  # SDXL's second tokenizer pads with "!" like SD 2.x
        unet=unet,
        scheduler=EulerDiscreteScheduler(**configs["scheduler"]),
        add_watermarker=False,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe.save_pretrained(str(staging), safe_serialization=True)
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _swap_in(staging: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
