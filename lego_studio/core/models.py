"""Loading Stable Diffusion models offline, and making tiny ones for tests.

A model spec is one of:

* a diffusers folder (``model_index.json``, or ``unet/ vae/ text_encoder/`` sub-folders; a missing
  ``tokenizer/`` falls back to the shipped CLIP tokenizer);
* a model id such as ``runwayml/stable-diffusion-v1-5``, looked up in the local Hugging Face cache
  only (``HF_HUB_CACHE`` / ``HF_HOME``) — nothing is ever downloaded;
* a single ``.safetensors`` / ``.ckpt`` file in the original LDM key layout, as AUTOMATIC1111 and
  Civitai ship them. It is converted with diffusers' key-conversion functions and the diffusers
  configs shipped in ``resources/configs/`` (chosen from the weights' shapes), so no config is
  fetched. ``.ckpt`` files are only unpickled with ``weights_only=True``;
* ``"shapeworld"``: the Shape World model shipped in ``resources/models/shapeworld``.

The model family (SD1, SD2 v-prediction, SD2 base, Shape World, tiny, custom) is read from the
weights and configs, or from an optional ``lego_studio.json`` in the model folder
(``{"family": "shapeworld", "resolution": 64}``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lego_studio.core.devices import pick_device, pick_dtype
from lego_studio.core.errors import InputError, LegoError, ModelError, describe_exception
from lego_studio.core.model_stack import MODEL_LOAD_LOCK, import_model_stack
from lego_studio.core.paths import atomic_save, atomic_write_json, resource
from lego_studio.core.settings import BUILTIN_MODELS

FAMILY_FILE = "lego_studio.json"
SD1_TEXT_WIDTH = 768
SD2_TEXT_WIDTH = 1024
PREDICTION_TYPES = ("epsilon", "v_prediction")
SCHEDULERS = ("ddim", "euler", "dpm", "pndm", "ddpm")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Stable Diffusion 2.0-base and 2.1-base were released at this step; diffusers uses the same rule
# to tell the 512-px epsilon models from the 768-px v-prediction ones.
SD2_BASE_GLOBAL_STEP = 875000

_UNET_PREFIX = "model.diffusion_model."
_VAE_PREFIX = "first_stage_model."
_CLIP_PREFIX = "cond_stage_model.transformer."
_OPEN_CLIP_PREFIX = "cond_stage_model.model."
_SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
_SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
_SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------- data classes


@dataclass
class ModelFamily:
    name: str  # "sd1" | "sd2" | "sd2-base" | "sdxl" | "shapeworld" | "tiny" | "custom"
    text_width: int  # 768 (SD1, SDXL clip_l) | 1024 (SD2) | small for shapeworld/tiny
    prediction_type: str  # "epsilon" | "v_prediction"
    resolution: int  # native pixel size (512, 768, 1024, 64, 32 ...)
    # SDXL only: the width of the second text encoder (clip_g, 1280 on real SDXL); 0 otherwise.
    text_width_2: int = 0

    @property
    def is_sdxl(self) -> bool:
        return self.name == "sdxl"

    @property
    def widths(self) -> tuple[int, ...]:
        """The text-encoder widths a concept of this family has: (d,) or (clip_l, clip_g)."""
        return (self.text_width, self.text_width_2) if self.text_width_2 else (self.text_width,)

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "text_width": self.text_width,
            "prediction_type": self.prediction_type,
            "resolution": self.resolution,
        }
        if self.text_width_2:
            data["text_width_2"] = self.text_width_2
        return data


@dataclass
class SDModel:
    tokenizer: Any  # transformers.CLIPTokenizer
    text_encoder: Any  # transformers.CLIPTextModel
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    noise_scheduler: Any  # diffusers.DDPMScheduler, prediction_type from the family
    family: ModelFamily
    source: str
    device: torch.device
    dtype: torch.dtype
    # The model's own scheduler settings (beta schedule, steps_offset, ...), which inference
    # schedulers are built from; DDPMScheduler drops the keys it does not know.
    scheduler_config: dict = field(default_factory=dict)
    # SDXL only: the second tokenizer / text encoder (OpenCLIP bigG, CLIPTextModelWithProjection).
    tokenizer_2: Any = None
    text_encoder_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def text_encoders(self) -> list:
        """[(tokenizer, text_encoder)] — one pair, or SDXL's two (clip_l, clip_g)."""
        pairs = [(self.tokenizer, self.text_encoder)]
        if self.text_encoder_2 is not None:
            pairs.append((self.tokenizer_2, self.text_encoder_2))
        return pairs

    @property
    def modules(self) -> list:
        """Every weight-holding module (UNet, VAE, the text encoder(s))."""
        return [self.unet, self.vae] + [encoder for _, encoder in self.text_encoders]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def sdxl_time_ids(self, height: int, width: int, batch: int = 1) -> torch.Tensor:
        """SDXL micro-conditioning ``[B, 6]``: original size, crop top-left, target size — the
        values the diffusers pipeline uses by default (original = target = the image size, no crop)."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        return ids.repeat(batch, 1)

    def pipeline(self, scheduler: str = "ddim"):
        """A diffusers ``StableDiffusionPipeline`` (``StableDiffusionXLPipeline`` for SDXL) sharing
        this model's modules (no copies), without safety checker, using ``scheduler`` (ddim |
        euler | dpm | pndm | ddpm)."""
        from diffusers import StableDiffusionPipeline

        if self.is_sdxl:
            from diffusers import StableDiffusionXLPipeline

            pipe = StableDiffusionXLPipeline(
                vae=self.vae,
                text_encoder=self.text_encoder,
                text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer,
                tokenizer_2=self.tokenizer_2,
                unet=self.unet,
                scheduler=self.make_scheduler(scheduler),
                force_zeros_for_empty_prompt=False,
                add_watermarker=False,
            )
            pipe.set_progress_bar_config(disable=True)
            return pipe
        pipe = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.make_scheduler(scheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def make_scheduler(self, name: str = "ddim"):
        """An inference scheduler configured like this model's own (prediction type included)."""
        import diffusers

        classes = {
            "ddim": diffusers.DDIMScheduler,
            "euler": diffusers.EulerDiscreteScheduler,
            "dpm": diffusers.DPMSolverMultistepScheduler,
            "pndm": diffusers.PNDMScheduler,
            "ddpm": diffusers.DDPMScheduler,
        }
        key = (name or "ddim").lower()
        if key not in classes:
            raise InputError(f"unknown scheduler '{name}' (choose one of: {', '.join(SCHEDULERS)})")
        config = dict(self.scheduler_config or self.noise_scheduler.config)
        config.pop("_class_name", None)
        config["prediction_type"] = self.family.prediction_type
        # SD latents are not bounded to [-1, 1]; DDIM/DDPM would clip them by default.
        config.setdefault("clip_sample", False)
        return classes[key].from_config(config)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder last hidden states ``[B, 77, d]``, computed exactly like the diffusers
        pipeline's ``encode_prompt`` (pad to 77, truncate). Gradients flow (the trainer needs them).

        Prompts are used token for token: multi-vector concept placeholders must already be
        expanded (``concepts.expand_prompt``).

        SDXL: both encoders' penultimate hidden states side by side ``[B, 77, d_l + d_g]``, as
        ``StableDiffusionXLPipeline.encode_prompt``; :meth:`encode_prompts_pooled` adds the pooled
        embeddings the SDXL UNet also needs."""
        if self.is_sdxl:
            return self.encode_prompts_pooled(prompts)[0]
        if isinstance(prompts, str):
            prompts = [prompts]
        inputs = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = inputs.attention_mask.to(self.device)
        hidden = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=attention_mask)[0]
        return hidden.to(dtype=self.text_encoder.dtype, device=self.device)

    def encode_prompts_pooled(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden [B, 77, d], pooled [B, p] or None)``. SDXL: exactly what
        ``StableDiffusionXLPipeline.encode_prompt`` computes for the same prompts (penultimate
        hidden states of both encoders concatenated; pooled = ``text_encoder_2``'s projection)."""
        if not self.is_sdxl:
            return self.encode_prompts(prompts), None
        if isinstance(prompts, str):
            prompts = [prompts]
        hidden, pooled = [], None
        for tokenizer, encoder in self.text_encoders:
            ids = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            output = encoder(ids.to(self.device), output_hidden_states=True)
            if output[0].ndim == 2:
                pooled = output[0]
            hidden.append(output.hidden_states[-2])
        return (torch.cat(hidden, dim=-1).to(dtype=self.text_encoder_2.dtype, device=self.device), pooled)

    def pipeline_prompt_kwargs(self, prompts: Sequence[str], negative_prompts: Sequence[str]) -> dict:
        """The diffusers pipeline's prompt arguments for expanded prompts: the embeddings, and for
        SDXL the pooled embeddings too (the pipeline adds the micro-conditioning itself)."""
        hidden, pooled = self.encode_prompts_pooled(prompts)
        negative_hidden, negative_pooled = self.encode_prompts_pooled(negative_prompts)
        kwargs = {"prompt_embeds": hidden, "negative_prompt_embeds": negative_hidden}
        if pooled is not None:
            kwargs.update(pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=negative_pooled)
        return kwargs


# ---------------------------------------------------------------------------- safe loading


def safe_torch_load(path: str | os.PathLike) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    A pickle that would run code is refused before anything runs, as :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower() or "global" in str(exc.__context__ or "").lower():
            raise InputError(
                f"{path}: refused to load: the file contains Python code (unsafe pickle); "
                "use a .safetensors version of it"
            ) from exc
        raise InputError(f"{path}: not a PyTorch checkpoint (it is some other kind of file)") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise InputError(f"{path}: not a PyTorch checkpoint, or a corrupt or truncated one{_detail(exc)}") from exc


# A safetensors header is JSON naming every tensor; a few MB even for SDXL. A larger length field
# means the file is not a safetensors file (or is damaged): never read that much to find out.
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024


def read_safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a ``.safetensors`` file, from its header only (no weights read).

    The header length is checked against the file size before anything is read; a file that is
    not a well-formed safetensors file is refused with one line (:class:`ModelError`)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ModelError(f"{path}: not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= min(size - 8, MAX_SAFETENSORS_HEADER):
                raise ModelError(f"{path}: not a safetensors file (no valid header)")
            raw = handle.read(length)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({_first_line(exc)})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelError(f"{path}: not a safetensors file (its header is not readable)") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: not a safetensors file (its header is not readable)")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ModelError(f"{path}: not a safetensors file (tensor {key!r} has no valid shape)")
        shapes[key] = tuple(shape)
    return shapes


def inspect_single_file(path: str | os.PathLike) -> ModelFamily | None:
    """Check a single-file model without loading its weights: a ``.safetensors`` file's header
    must describe a Stable Diffusion checkpoint this app can load (its family is returned); a
    ``.ckpt``/``.pt`` file must at least be a PyTorch file (None: its family shows on loading,
    since reading it means unpickling all of it). One-line :class:`ModelError` otherwise."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        shapes = read_safetensors_shapes(path)
        return detect_checkpoint_family(shapes, str(path))[1]
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({_first_line(exc)})") from exc
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ModelError(f"{path}: not a PyTorch checkpoint (it is some other kind of file)")
    return None


def native_resolution(spec: str | os.PathLike) -> int:
    """The size in pixels a model trains at by default, from its configs (or a single file's
    header) alone, no weights loaded: what the plan line before Start compares images with.
    0 when it cannot be told."""
    try:
        kind, path = resolve_spec(spec)
        if kind == "file":
            family = inspect_single_file(path)
            return int(family.resolution) if family is not None else 0
        overrides = _read_json(path / FAMILY_FILE) if (path / FAMILY_FILE).is_file() else {}
        if overrides.get("resolution"):
            return int(overrides["resolution"])
        unet = _read_json(path / "unet" / "config.json")
        vae = _read_json(path / "vae" / "config.json")
        return int(unet.get("sample_size") or 64) * 2 ** (len(vae.get("block_out_channels", (1,))) - 1)
    except (LegoError, OSError, ValueError, TypeError):
        return 0


def _detail(exc: BaseException) -> str:
    """" (reason)" when the library's message says something a user can read; nothing for bare
    internals such as a KeyError of a pickle opcode ("101") or torch's multi-line help text."""
    text = _first_line(exc).strip().strip("'\"")
    if isinstance(exc, KeyError) or len(text) < 12 or not any(ch.isalpha() for ch in text):
        return ""
    text = text.split(". ")[0].split("Weights only load failed")[0].strip()
    return f" ({text})" if text else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# ---------------------------------------------------------------------------- spec resolution


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def find_in_hf_cache(model_id: str) -> Path:
    """The local snapshot folder of ``model_id`` (``org/name``) in the Hugging Face cache; never
    downloads. Not cached -> :class:`ModelError`."""
    cache = hf_hub_cache_dir()
    not_found = ModelError(f"model id {model_id} not found in the local Hugging Face cache (offline): {cache}")
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_id, cache_dir=str(cache), local_files_only=True))
    except Exception:  # huggingface_hub raises several types for "not cached"
        folder = _scan_hf_cache(cache, model_id)
        if folder is None:
            raise not_found from None
    if not folder.is_dir():
        raise not_found
    return folder


def _scan_hf_cache(cache: Path, model_id: str) -> Path | None:
    """Fallback when huggingface_hub cannot resolve the snapshot: refs/main, else the newest."""
    repo = cache / ("models--" + model_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text(encoding="utf-8").strip()
        if candidate.is_dir():
            return candidate
    folders = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return folders[-1] if folders else None


def shapeworld_model_dir(name: str = "shapeworld") -> Path:
    """The shipped Shape World model: ``shapeworld`` (SD architecture) or ``shapeworld-xl`` (SDXL)."""
    return resource("models", name)


def is_shapeworld(model: "SDModel") -> bool:
    """Whether ``model`` is a Shape World model (SD or SDXL architecture): it only knows Shape
    World renders, so the app warns when it is asked to learn from other pictures."""
    if model.family.name == "shapeworld" or str(model.source).lower() in BUILTIN_MODELS:
        return True
    marker = Path(model.source) / FAMILY_FILE
    try:
        return marker.is_file() and _read_json(marker).get("shapeworld") is True
    except ModelError:
        return False


def resolve_spec(spec: str | os.PathLike) -> tuple[str, Path]:
    """``("folder" | "file", path)`` for a model spec; unknown -> :class:`ModelError`."""
    text = str(spec).strip()
    if not text:
        raise ModelError("no model given (a diffusers folder, a .safetensors/.ckpt file or a cached model id)")
    if text.lower() in BUILTIN_MODELS:
        folder = shapeworld_model_dir(text.lower())
        if not folder.is_dir():
            raise ModelError(
                f"{folder}: the {BUILTIN_MODELS[text.lower()].label} model is not installed "
                "(it is built by the Shape World training scripts)"
            )
        return "folder", folder
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", path
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelError(
                f"{path}: not a model file (expected a diffusers folder or {', '.join(CHECKPOINT_SUFFIXES)})"
            )
        return "file", path
    if path.exists():
        raise ModelError(f"{path}: not a model folder or file")
    if _MODEL_ID.match(text) and not text.lower().endswith(CHECKPOINT_SUFFIXES):
        return "folder", find_in_hf_cache(text)
    raise ModelError(f"{text}: no such model folder or file")


# ---------------------------------------------------------------------------- family detection


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable JSON ({_first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def family_from_configs(
    text_width: int,
    unet_config: Mapping,
    vae_config: Mapping,
    scheduler_config: Mapping,
    overrides: Mapping | None = None,
    prediction_type: str | None = None,
) -> ModelFamily:
    """The family of a model from its configs (and an optional ``lego_studio.json``)."""
    overrides = dict(overrides or {})
    vae_scale = 2 ** (len(vae_config.get("block_out_channels", (1,))) - 1)
    resolution = int(unet_config.get("sample_size") or 64) * vae_scale
    prediction = prediction_type or overrides.get("prediction_type") or scheduler_config.get("prediction_type")
    if text_width == SD1_TEXT_WIDTH:
        name = "sd1"
    elif text_width == SD2_TEXT_WIDTH:
        # Without a stated prediction type, SD 2.x at 768 px is the v-model, at 512 px the base.
        prediction = prediction or ("v_prediction" if resolution >= 768 else "epsilon")
        name = "sd2" if prediction == "v_prediction" else "sd2-base"
    else:
        name = "custom"
    name = overrides.get("family", name)
    resolution = int(overrides.get("resolution", resolution))
    return ModelFamily(name, int(text_width), prediction or "epsilon", resolution)


def detect_checkpoint_family(
    shapes: Mapping[str, Sequence[int]],
    filename: str = "",
    global_step: int | None = None,
    prediction_type: str | None = None,
) -> tuple[str, ModelFamily]:
    """Text-encoder layout and family of an LDM-layout checkpoint, from its tensor shapes alone.

    Returns ``(text_layout, family)`` with text_layout "clip" (SD1 style), "open_clip" (SD2) or
    "sdxl" (CLIP ViT-L + OpenCLIP bigG under ``conditioner.embedders.*``; an SDXL refiner, which has
    only the second, is refused).
    SD2 v-prediction vs epsilon: an explicit ``prediction_type`` wins; then the 2.x-base release
    step (875000); then the file name ("512"/"base" -> epsilon at 512 px, "768" -> v at 768 px);
    otherwise v-prediction at 768 px like SD 2.0/2.1.
    """
    label = filename or "checkpoint"
    if not any(key.startswith(_UNET_PREFIX) for key in shapes):
        raise ModelError(f"{label}: not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)")
    conv_in = shapes.get(_UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise ModelError(f"{label}: inpainting/special UNets ({conv_in[1]} input channels) are not supported")
    if not any(key.startswith(_VAE_PREFIX) for key in shapes):
        raise ModelError(f"{label}: the VAE weights (first_stage_model.*) are missing")
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        return "sdxl", _detect_sdxl(shapes, label, prediction_type)

    layout, width = None, None
    for key, shape in shapes.items():
        if key.startswith(_CLIP_PREFIX) and key.endswith("token_embedding.weight"):
            layout, width = "clip", int(shape[-1])
            break
        if key == _OPEN_CLIP_PREFIX + "token_embedding.weight":
            layout, width = "open_clip", int(shape[-1])
            break
    if layout is None:
        raise ModelError(f"{label}: the text-encoder weights (cond_stage_model.*) are missing")

    cross_dims = {int(shape[-1]) for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")}
    if cross_dims and cross_dims != {width}:
        raise ModelError(
            f"{label}: UNet cross-attention width {sorted(cross_dims)} does not match text-encoder width {width}"
        )

    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"unknown prediction type '{prediction_type}' (choose epsilon or v_prediction)")
    if width == SD1_TEXT_WIDTH:
        return layout, ModelFamily("sd1", width, prediction_type or "epsilon", 512)
    if width == SD2_TEXT_WIDTH:
        name_hint = Path(filename).name.lower()
        if prediction_type is None:
            if global_step == SD2_BASE_GLOBAL_STEP or ("512" in name_hint or "base" in name_hint):
                prediction_type = "epsilon"
            else:
                prediction_type = "v_prediction"
        if prediction_type == "epsilon":
            return layout, ModelFamily("sd2-base", width, "epsilon", 512)
        return layout, ModelFamily("sd2", width, "v_prediction", 768)
    return layout, ModelFamily("custom", width, prediction_type or "epsilon", 0)


def _detect_sdxl(shapes: Mapping[str, Sequence[int]], label: str, prediction_type: str | None) -> ModelFamily:
    if any(key.startswith(_SDXL_REFINER_PREFIX) for key in shapes) and not any(
            key.startswith(_SDXL_CLIP_PREFIX) for key in shapes):
        raise ModelError(f"{label}: this is an SDXL refiner (one text encoder, aesthetic-score conditioning); "
                         "concepts are trained on an SDXL base model or SD 1.x/2.x")
    clip_l = shapes.get(_SDXL_CLIP_PREFIX + "text_model.embeddings.token_embedding.weight")
    clip_g = shapes.get(_SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight")
    if clip_l is None or clip_g is None:
        missing = "the first (CLIP ViT-L, conditioner.embedders.0)" if clip_l is None else \
            "the second (OpenCLIP, conditioner.embedders.1)"
        raise ModelError(f"{label}: SDXL checkpoint without {missing} text encoder")
    width_l, width_g = int(clip_l[-1]), int(clip_g[-1])
    cross_dims = {int(shape[-1]) for key, shape in shapes.items() if key.endswith("attn2.to_k.weight")}
    if cross_dims and cross_dims != {width_l + width_g}:
        raise ModelError(f"{label}: UNet cross-attention width {sorted(cross_dims)} does not match the text "
                         f"encoders' {width_l} + {width_g}")
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"unknown prediction type '{prediction_type}' (choose epsilon or v_prediction)")
    # v-prediction SDXL fine-tunes carry a "v_pred" key (as the ComfyUI/A1111 convention has it).
    prediction = prediction_type or ("v_prediction" if "v_pred" in shapes else "epsilon")
    return ModelFamily("sdxl", width_l, prediction, 1024 if width_l == SD1_TEXT_WIDTH else 0, width_g)


def shipped_config_dir(family: ModelFamily) -> Path:
    """The shipped diffusers configs (unet/vae/text_encoder/scheduler) for a checkpoint family.

    SD1 and SD2 have their own; any other text width uses the shipped folder whose text encoder
    has that width (e.g. the tiny test model)."""
    root = resource("configs")
    if family.name == "sd1":
        return root / "sd1"
    if family.name in ("sd2", "sd2-base"):
        return root / "sd2"
    if root.is_dir():
        for folder in sorted(root.iterdir()):
            config = folder / "text_encoder" / "config.json"
            second = folder / "text_encoder_2" / "config.json"
            if not config.is_file() or _read_json(config).get("hidden_size") != family.text_width:
                continue
            if family.text_width_2:
                if second.is_file() and _read_json(second).get("hidden_size") == family.text_width_2:
                    return folder
            elif not second.exists():
                return folder
    widths = " + ".join(map(str, family.widths))
    raise ModelError(f"no shipped model config for text encoders of width {widths} in {root}")


# ---------------------------------------------------------------------------- loading


def load_model(
    spec: str | os.PathLike,
    device: str = "auto",
    precision: str = "auto",
    prediction_type: str | None = None,
    config: str | os.PathLike | None = None,
) -> SDModel:
    """Load a Stable Diffusion model offline (see the module docstring for ``spec``).

    ``prediction_type`` overrides the detected one (SD2 768-v vs 512-base); ``config`` is a
    folder of diffusers configs to use for a single-file checkpoint instead of the shipped ones.
    Every failure is a one-line :class:`ModelError` naming the path."""
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise ModelError(f"unknown prediction type '{prediction_type}' (choose epsilon or v_prediction)")
    import_model_stack()  # before any diffusers/transformers name: their lazy imports race across threads
    torch_device = pick_device(device)
    dtype = pick_dtype(torch_device, precision)
    kind, path = resolve_spec(spec)
    # One load at a time: transformers/diffusers build modules under torch's process-global
    # default-device context ("meta"), so two threads loading at once break each other.
    with MODEL_LOAD_LOCK:
        try:
            if kind == "folder":
                model = _load_folder(path, prediction_type)
            else:
                model = _load_single_file(path, prediction_type, Path(config) if config else None)
        except LegoError as exc:
            raise ModelError(str(exc)) from exc
        except (OSError, ValueError, RuntimeError, KeyError, ImportError) as exc:
            # diffusers/transformers report a failed lazy import as a RuntimeError chained to the
            # real error: name the innermost one (a missing module, data file or metadata in a bundle).
            raise ModelError(f"{path}: cannot load the model ({describe_exception(exc)})") from exc
    model.source = str(spec)
    _place(model, torch_device, dtype)
    return model


def _place(model: SDModel, device: torch.device, dtype: torch.dtype) -> None:
    import logging

    # diffusers warns on every dtype cast that SD's UNet/VAE have no fp32-only modules ("[]");
    # the warning says nothing to a user, so it is muted for these casts only.
    diffusers_logger = logging.getLogger("diffusers.models.modeling_utils")
    previous = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        for module in model.modules:
            if module.dtype != dtype or module.device != device:
                module.to(device=device, dtype=dtype)
            module.eval()
            module.requires_grad_(False)
    finally:
        diffusers_logger.setLevel(previous)
    model.device = device
    model.dtype = dtype


def _noise_scheduler(scheduler_config: Mapping, prediction_type: str):
    from diffusers import DDPMScheduler

    config = {k: v for k, v in scheduler_config.items() if k != "_class_name"}
    # Latents are not bounded to [-1, 1]: SD schedulers never clip the predicted sample.
    config.setdefault("clip_sample", False)
    config["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(config)


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or all(
        (path / name).is_dir() for name in ("unet", "vae", "text_encoder")
    )


def refuse_untrainable_folder(path: Path) -> None:
    """One line naming what a diffusers folder is when the app cannot train on it: an SDXL
    refiner, an inpainting UNet, an image-to-image or other special pipeline."""
    index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    pipeline = str(index.get("_class_name") or "")
    unet_file = path / "unet" / "config.json"
    unet_config = _read_json(unet_file) if unet_file.is_file() else {}
    has_te1 = (path / "text_encoder").is_dir() and (
        "text_encoder" not in index or (index.get("text_encoder") or [None])[0] is not None)
    has_te2 = (path / "text_encoder_2").is_dir()
    time_dim = unet_config.get("addition_time_embed_dim")
    projection = unet_config.get("projection_class_embeddings_input_dim")
    refiner = (
        bool(index.get("requires_aesthetics_score"))
        or (has_te2 and not has_te1)
        or (unet_config.get("addition_embed_type") == "text_time" and time_dim and projection
            and _read_projection_dim(path) and projection == _read_projection_dim(path) + 5 * int(time_dim))
    )
    if refiner:
        raise ModelError(
            f"{path}: this is an SDXL refiner (one text encoder, aesthetic-score conditioning); "
            "concepts are trained on an SDXL base model or SD 1.x/2.x"
        )
    channels = unet_config.get("in_channels")
    if channels is not None and int(channels) != 4:
        kind = "an inpainting" if int(channels) == 9 else "a special"
        raise ModelError(f"{path}: this is {kind} model ({channels} UNet input channels); "
                         "concepts are trained on a plain text-to-image model")
    if "Inpaint" in pipeline or "Img2Img" in pipeline or "Upscale" in pipeline or "InstructPix2Pix" in pipeline:
        raise ModelError(f"{path}: this is a {pipeline} model; concepts are trained on a text-to-image model")


def _read_projection_dim(path: Path) -> int:
    config = path / "text_encoder_2" / "config.json"
    if not config.is_file():
        return 0
    data = _read_json(config)
    return int(data.get("projection_dim") or data.get("text_config", {}).get("projection_dim") or 0)


def _is_sdxl_folder(path: Path) -> bool:
    unet_file = path / "unet" / "config.json"
    return (path / "text_encoder_2").is_dir() or (
        unet_file.is_file() and _read_json(unet_file).get("addition_embed_type") == "text_time")


def _load_folder(path: Path, prediction_type: str | None) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not _is_diffusers_folder(path) and not (path / "text_encoder_2").is_dir():
        singles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".safetensors", ".ckpt"))
        hint = f" (did you mean the file {singles[0]}?)" if singles else ""
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json or unet/vae/text_encoder){hint}")
    refuse_untrainable_folder(path)
    sdxl = _is_sdxl_folder(path)
    parts = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if sdxl else ())
    for part in parts:
        if not (path / part / "config.json").is_file():
            raise ModelError(f"{path}: the {part} component is missing ({part}/config.json)")

    overrides = _read_json(path / FAMILY_FILE) if (path / FAMILY_FILE).is_file() else {}
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = _read_json(scheduler_file) if scheduler_file.is_file() else {}
    text_config = _read_json(path / "text_encoder" / "config.json")
    unet_config = _read_json(path / "unet" / "config.json")
    vae_config = _read_json(path / "vae" / "config.json")
    if sdxl:
        family = sdxl_family(int(text_config.get("hidden_size", 0)),
                             int(_read_json(path / "text_encoder_2" / "config.json").get("hidden_size", 0)),
                             unet_config, vae_config, scheduler_config, overrides, prediction_type, str(path))
    else:
        family = family_from_configs(int(text_config.get("hidden_size", 0)), unet_config, vae_config,
                                     scheduler_config, overrides, prediction_type)

    unet = _from_pretrained_component(UNet2DConditionModel, path, "unet")
    vae = _from_pretrained_component(AutoencoderKL, path, "vae")
    text_encoder = _from_pretrained_component(CLIPTextModel, path, "text_encoder")
    tokenizer = _folder_tokenizer(path, "tokenizer", "sd1" if sdxl else family.name, CLIPTokenizer)
    if not scheduler_config:
        scheduler_config = _read_json(resource("configs", "sd1", "scheduler", "scheduler_config.json"))
    model = _loaded_on_cpu(tokenizer, text_encoder, unet, vae, scheduler_config, family, path)
    if sdxl:
        from transformers import CLIPTextModelWithProjection

        model.text_encoder_2 = _from_pretrained_component(CLIPTextModelWithProjection, path, "text_encoder_2")
        model.tokenizer_2 = _folder_tokenizer(path, "tokenizer_2", "sd2", CLIPTokenizer)
    return model


def _folder_tokenizer(path: Path, name: str, fallback_family: str, cls):
    if (path / name / "vocab.json").is_file() or (path / name / "tokenizer.json").is_file():
        return cls.from_pretrained(str(path / name), local_files_only=True)
    from lego_studio.core.tokenizer import load_tokenizer

    return load_tokenizer(fallback_family)


def sdxl_family(width_l: int, width_g: int, unet_config: Mapping, vae_config: Mapping, scheduler_config: Mapping,
                overrides: Mapping | None = None, prediction_type: str | None = None, label: str = "model") -> ModelFamily:
    """The SDXL family of a two-encoder model; a UNet that does not take both widths side by side
    is refused (naming the widths)."""
    overrides = dict(overrides or {})
    cross = unet_config.get("cross_attention_dim")
    if cross is not None and not isinstance(cross, (list, tuple)) and int(cross) != width_l + width_g:
        raise ModelError(f"{label}: UNet cross-attention width {cross} is not the two text encoders' "
                         f"{width_l} + {width_g}")
    vae_scale = 2 ** (len(vae_config.get("block_out_channels", (1,))) - 1)
    resolution = int(overrides.get("resolution") or int(unet_config.get("sample_size") or 128) * vae_scale)
    prediction = prediction_type or overrides.get("prediction_type") or scheduler_config.get("prediction_type") or "epsilon"
    return ModelFamily("sdxl", int(width_l), prediction, resolution, int(width_g))


def _loaded_on_cpu(tokenizer, text_encoder, unet, vae, scheduler_config: dict, family, path: Path) -> "SDModel":
    """The SDModel of freshly loaded parts: fp32 on the CPU until load_model moves it."""
    return SDModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        noise_scheduler=_noise_scheduler(scheduler_config, family.prediction_type),
        family=family,
        source=str(path),
        device=torch.device("cpu"),
        dtype=torch.float32,
        scheduler_config=dict(scheduler_config),
    )


def _from_pretrained_component(cls, path: Path, subfolder: str):
    folder = path / subfolder
    has_full = any(
        f.name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                   "pytorch_model.bin")
        or f.name.endswith(".index.json") and ".fp16." not in f.name
        for f in folder.iterdir()
    )
    has_fp16 = any(".fp16." in f.name for f in folder.iterdir())
    if not has_full and not has_fp16:
        raise ModelError(f"{path}: the {subfolder} weights are missing")
    kwargs: dict[str, Any] = {"local_files_only": True}
    if not has_full:
        kwargs["variant"] = "fp16"  # repos that ship only half-precision weights
    try:
        if cls.__module__.startswith("transformers"):
            return cls.from_pretrained(str(folder), **kwargs)
        return cls.from_pretrained(str(path), subfolder=subfolder, **kwargs)
    except LegoError:
        raise
    except Exception as exc:  # library errors vary by version; all mean "this component is broken"
        raise ModelError(f"{folder}: cannot load the {subfolder} weights ({describe_exception(exc)})") from exc


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """The flat tensor dict of a single-file checkpoint, and its global_step if recorded."""
    global_step = None
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:  # SafetensorError is not exported consistently across versions
            raise ModelError(f"{path}: cannot read: the file is corrupt or truncated ({_first_line(exc)})") from exc
    else:
        try:
            data = safe_torch_load(path)
        except InputError as exc:
            raise ModelError(str(exc)) from exc
        if not isinstance(data, dict):
            raise ModelError(f"{path}: not a Stable Diffusion checkpoint (no state dict inside)")
        if isinstance(data.get("global_step"), int):
            global_step = data["global_step"]
        while isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    return state, global_step


def _load_single_file(path: Path, prediction_type: str | None, config_dir: Path | None) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from lego_studio.core.tokenizer import load_tokenizer

    state, global_step = _read_checkpoint(path)
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    layout, family = detect_checkpoint_family(shapes, str(path), global_step, prediction_type)
    configs = config_dir or shipped_config_dir(family)
    parts = [("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
             ("scheduler", "scheduler_config.json")]
    if layout == "sdxl":
        parts.append(("text_encoder_2", "config.json"))
    for part, name in parts:
        if not (configs / part / name).is_file():
            raise ModelError(f"{configs}: config folder lacks {part}/{name}")
    unet_config = _read_json(configs / "unet" / "config.json")
    vae_config = _read_json(configs / "vae" / "config.json")
    scheduler_config = _read_json(configs / "scheduler" / "scheduler_config.json")
    overrides = _read_json(configs / FAMILY_FILE) if (configs / FAMILY_FILE).is_file() else {}
    if layout == "sdxl":
        family = sdxl_family(family.text_width, family.text_width_2, unet_config, vae_config,
                             {**scheduler_config, "prediction_type": family.prediction_type}, overrides,
                             prediction_type, str(path))
    elif family.name in ("sd1", "sd2", "sd2-base"):
        unet_config["sample_size"] = family.resolution // 8
        vae_config["sample_size"] = family.resolution
        # SD 2.x v-models attend in fp32 to avoid fp16 overflow (as diffusers' SD 2.1 config).
        unet_config["upcast_attention"] = family.name == "sd2"
    else:
        family = family_from_configs(family.text_width, unet_config, vae_config, scheduler_config, overrides,
                                     prediction_type)

    from accelerate import init_empty_weights

    # Build on the meta device: a random init of SD's 1 B parameters would take longer than
    # loading them, and the weights are assigned from the checkpoint anyway.
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(str(configs / "text_encoder" / "config.json")))
        if layout == "sdxl":
            from transformers import CLIPTextModelWithProjection

            text_encoder_2 = CLIPTextModelWithProjection(
                CLIPTextConfig.from_json_file(str(configs / "text_encoder_2" / "config.json")))
    _load_weights(unet, convert_ldm_unet_checkpoint(state, unet.config), path, "UNet")
    _load_weights(vae, convert_ldm_vae_checkpoint(state, vae.config), path, "VAE")
    if layout == "sdxl":
        _load_weights(text_encoder, _flat_text_state(text_encoder, convert_ldm_clip_checkpoint(state)), path,
                      "text encoder (clip_l)")
        second = convert_open_clip_checkpoint(text_encoder_2, state, prefix=_SDXL_OPEN_CLIP_PREFIX)
        _load_weights(text_encoder_2, _flat_text_state(text_encoder_2, second), path, "text encoder 2 (clip_g)")
        del state
        model = _loaded_on_cpu(load_tokenizer("sd1"), text_encoder, unet, vae, scheduler_config, family, path)
        model.text_encoder_2, model.tokenizer_2 = text_encoder_2, load_tokenizer("sd2")
        return model
    if layout == "clip":
        text_state = convert_ldm_clip_checkpoint(state)
    else:
        text_state = convert_open_clip_checkpoint(text_encoder, state, prefix=_OPEN_CLIP_PREFIX)
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        text_state = {k.removeprefix("text_model."): v for k, v in text_state.items()}
    _load_weights(text_encoder, text_state, path, "text encoder")
    del state
    return _loaded_on_cpu(load_tokenizer("sd2" if layout == "open_clip" else "sd1"), text_encoder, unet, vae,
                          scheduler_config, family, path)


def _flat_text_state(text_encoder, text_state: Mapping[str, torch.Tensor]) -> dict:
    if not hasattr(text_encoder, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        return {k.removeprefix("text_model."): v for k, v in text_state.items()}
    return dict(text_state)


def _load_weights(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, part: str) -> None:
    """Load converted weights; missing or mis-shaped tensors mean the file is not this model.

    Extra keys are fine: SD checkpoints carry EMA copies, position_ids and, for SD2, the unused
    last OpenCLIP layer."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    if missing:
        raise ModelError(f"{path}: the {part} weights are incomplete ({len(missing)} missing, e.g. {missing[0]})")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"{path}: {part} weight {key} has shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
    module.load_state_dict({key: state[key].contiguous() for key in expected}, strict=True, assign=True)


# ---------------------------------------------------------------------------- tiny model


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
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_diffusers_folder(out))):
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


def parameter_counts(model: SDModel) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoder),
                             ("text_encoder_2", model.text_encoder_2))
        if module is not None
    }
