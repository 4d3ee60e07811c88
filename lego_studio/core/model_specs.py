"""What a model spec names, read from configs and file headers only: no torch, no weights.

A model spec is one of:

* a diffusers folder (``model_index.json``, or ``unet/ vae/ text_encoder/`` sub-folders; a missing
  ``tokenizer/`` falls back to the shipped CLIP tokenizer);
* a model id such as ``runwayml/stable-diffusion-v1-5``, looked up in the local Hugging Face cache
  only (``HF_HUB_CACHE`` / ``HF_HOME``) — nothing is ever downloaded;
* a single ``.safetensors`` / ``.ckpt`` file in the original LDM key layout, as AUTOMATIC1111 and
  Civitai ship them (read by :mod:`lego_studio.core.models` with the diffusers configs shipped in
  ``resources/configs/``, chosen here from the weights' shapes);
* a built-in name (:data:`BUILTIN_MODELS`): a Shape World model shipped in ``resources/models/``.

The model family (SD1, SD2 v-prediction, SD2 base, SDXL, Shape World, tiny, custom) is read from the
weights' shapes and the configs, or from an optional ``lego_studio.json`` in the model folder
(``{"family": "shapeworld", "resolution": 64}``). Settings, the UI and the CLI use this module to
check a model before torch is imported; :mod:`lego_studio.core.models` loads it.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lego_studio.core.errors import LegoError, ModelError
from lego_studio.core.paths import resource

if TYPE_CHECKING:
    from lego_studio.core.models import SDModel

FAMILY_FILE = "lego_studio.json"
SD1_TEXT_WIDTH = 768
SD2_TEXT_WIDTH = 1024
PREDICTION_TYPES = ("epsilon", "v_prediction")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# Stable Diffusion 2.0-base and 2.1-base were released at this step; diffusers uses the same rule
# to tell the 512-px epsilon models from the 768-px v-prediction ones.
SD2_BASE_GLOBAL_STEP = 875000

# Key prefixes of the original (LDM) single-file checkpoint layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
SDXL_REFINER_PREFIX = "conditioner.embedders.0.model."
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class BuiltinModel:
    label: str  # what the app calls it
    family: str  # the family of the concepts trained on it (SD-shaped or SDXL-shaped vectors)
    note: str = ""  # after "built in" in the model lists


# The names load_model resolves to the models shipped in resources/models/<name>.
BUILTIN_MODELS = {
    "shapeworld": BuiltinModel("Shape World", "shapeworld"),
    "shapeworld-xl": BuiltinModel("Shape World XL", "sdxl", note="SDXL architecture"),
}


# -------------------------------------------------------------------------------- data classes


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


# ---------------------------------------------------------------------- single-file inspection


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
        raise ModelError(f"{path}: cannot read ({first_line(exc)})") from exc
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
        raise ModelError(f"{path}: cannot read ({first_line(exc)})") from exc
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
        overrides = read_json(path / FAMILY_FILE) if (path / FAMILY_FILE).is_file() else {}
        if overrides.get("resolution"):
            return int(overrides["resolution"])
        unet = read_json(path / "unet" / "config.json")
        vae = read_json(path / "vae" / "config.json")
        return int(unet.get("sample_size") or 64) * 2 ** (len(vae.get("block_out_channels", (1,))) - 1)
    except (LegoError, OSError, ValueError, TypeError):
        return 0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


# -------------------------------------------------- spec resolution and the Hugging Face cache


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


def is_shapeworld(model: SDModel) -> bool:
    """Whether ``model`` is a Shape World model (SD or SDXL architecture): it only knows Shape
    World renders, so the app warns when it is asked to learn from other pictures."""
    if model.family.name == "shapeworld" or str(model.source).lower() in BUILTIN_MODELS:
        return True
    marker = Path(model.source) / FAMILY_FILE
    try:
        return marker.is_file() and read_json(marker).get("shapeworld") is True
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


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable JSON ({first_line(exc)})") from exc
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
    if not any(key.startswith(UNET_PREFIX) for key in shapes):
        raise ModelError(f"{label}: not a Stable Diffusion checkpoint (no model.diffusion_model.* weights)")
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise ModelError(f"{label}: inpainting/special UNets ({conv_in[1]} input channels) are not supported")
    if not any(key.startswith(VAE_PREFIX) for key in shapes):
        raise ModelError(f"{label}: the VAE weights (first_stage_model.*) are missing")
    if any(key.startswith("conditioner.embedders.") for key in shapes):
        return "sdxl", _detect_sdxl(shapes, label, prediction_type)

    layout, width = None, None
    for key, shape in shapes.items():
        if key.startswith(CLIP_PREFIX) and key.endswith("token_embedding.weight"):
            layout, width = "clip", int(shape[-1])
            break
        if key == OPEN_CLIP_PREFIX + "token_embedding.weight":
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
    if any(key.startswith(SDXL_REFINER_PREFIX) for key in shapes) and not any(
            key.startswith(SDXL_CLIP_PREFIX) for key in shapes):
        raise ModelError(f"{label}: this is an SDXL refiner (one text encoder, aesthetic-score conditioning); "
                         "concepts are trained on an SDXL base model or SD 1.x/2.x")
    clip_l = shapes.get(SDXL_CLIP_PREFIX + "text_model.embeddings.token_embedding.weight")
    clip_g = shapes.get(SDXL_OPEN_CLIP_PREFIX + "token_embedding.weight")
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
            if not config.is_file() or read_json(config).get("hidden_size") != family.text_width:
                continue
            if family.text_width_2:
                if second.is_file() and read_json(second).get("hidden_size") == family.text_width_2:
                    return folder
            elif not second.exists():
                return folder
    widths = " + ".join(map(str, family.widths))
    raise ModelError(f"no shipped model config for text encoders of width {widths} in {root}")


# --------------------------------------------------------------------------- diffusers folders


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or all(
        (path / name).is_dir() for name in ("unet", "vae", "text_encoder")
    )


def is_sdxl_folder(path: Path) -> bool:
    unet_file = path / "unet" / "config.json"
    return (path / "text_encoder_2").is_dir() or (
        unet_file.is_file() and read_json(unet_file).get("addition_embed_type") == "text_time")


def refuse_untrainable_folder(path: Path) -> None:
    """One line naming what a diffusers folder is when the app cannot train on it: an SDXL
    refiner, an inpainting UNet, an image-to-image or other special pipeline."""
    index = read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    pipeline = str(index.get("_class_name") or "")
    unet_file = path / "unet" / "config.json"
    unet_config = read_json(unet_file) if unet_file.is_file() else {}
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
    data = read_json(config)
    return int(data.get("projection_dim") or data.get("text_config", {}).get("projection_dim") or 0)
