"""Loading Stable Diffusion models offline (:func:`load_model`) into an :class:`SDModel`.

What a spec names and which family it is are read without weights by
:mod:`lego_studio.core.model_specs`; this module loads the weights: a diffusers folder, or a single
``.safetensors`` / ``.ckpt`` file in the original LDM key layout, converted with diffusers'
key-conversion functions and the diffusers configs shipped in ``resources/configs/`` (so no config
is fetched). ``.ckpt`` files are only unpickled with ``weights_only=True`` (:func:`safe_torch_load`).
Tiny random models for tests are made by :mod:`lego_studio.core.tiny_models`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lego_studio.core.devices import pick_device, pick_dtype
from lego_studio.core.errors import InputError, LegoError, ModelError, describe_exception
from lego_studio.core.model_specs import (
    FAMILY_FILE,
    OPEN_CLIP_PREFIX,
    PREDICTION_TYPES,
    SDXL_OPEN_CLIP_PREFIX,
    ModelFamily,
    detect_checkpoint_family,
    family_from_configs,
    first_line,
    is_diffusers_folder,
    is_sdxl_folder,
    read_json,
    refuse_untrainable_folder,
    resolve_spec,
    sdxl_family,
    shipped_config_dir,
)
from lego_studio.core.model_stack import MODEL_LOAD_LOCK, import_model_stack
from lego_studio.core.paths import resource

SCHEDULERS = ("ddim", "euler", "dpm", "pndm", "ddpm")


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


# -------------------------------------------------------------------------------- safe loading


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


def _detail(exc: BaseException) -> str:
    """" (reason)" when the library's message says something a user can read; nothing for bare
    internals such as a KeyError of a pickle opcode ("101") or torch's multi-line help text."""
    text = first_line(exc).strip().strip("'\"")
    if isinstance(exc, KeyError) or len(text) < 12 or not any(ch.isalpha() for ch in text):
        return ""
    text = text.split(". ")[0].split("Weights only load failed")[0].strip()
    return f" ({text})" if text else ""


# ------------------------------------------------------------------------------------- loading


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


def _load_folder(path: Path, prediction_type: str | None) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if not is_diffusers_folder(path) and not (path / "text_encoder_2").is_dir():
        singles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".safetensors", ".ckpt"))
        hint = f" (did you mean the file {singles[0]}?)" if singles else ""
        raise ModelError(f"{path}: not a diffusers model folder (no model_index.json or unet/vae/text_encoder){hint}")
    refuse_untrainable_folder(path)
    sdxl = is_sdxl_folder(path)
    parts = ("unet", "vae", "text_encoder") + (("text_encoder_2",) if sdxl else ())
    for part in parts:
        if not (path / part / "config.json").is_file():
            raise ModelError(f"{path}: the {part} component is missing ({part}/config.json)")

    overrides = read_json(path / FAMILY_FILE) if (path / FAMILY_FILE).is_file() else {}
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    scheduler_config = read_json(scheduler_file) if scheduler_file.is_file() else {}
    text_config = read_json(path / "text_encoder" / "config.json")
    unet_config = read_json(path / "unet" / "config.json")
    vae_config = read_json(path / "vae" / "config.json")
    if sdxl:
        family = sdxl_family(int(text_config.get("hidden_size", 0)),
                             int(read_json(path / "text_encoder_2" / "config.json").get("hidden_size", 0)),
                             unet_config, vae_config, scheduler_config, overrides, prediction_type, str(path))
    else:
        family = family_from_configs(int(text_config.get("hidden_size", 0)), unet_config, vae_config,
                                     scheduler_config, overrides, prediction_type)

    unet = _from_pretrained_component(UNet2DConditionModel, path, "unet")
    vae = _from_pretrained_component(AutoencoderKL, path, "vae")
    text_encoder = _from_pretrained_component(CLIPTextModel, path, "text_encoder")
    tokenizer = _folder_tokenizer(path, "tokenizer", "sd1" if sdxl else family.name, CLIPTokenizer)
    if not scheduler_config:
        scheduler_config = read_json(resource("configs", "sd1", "scheduler", "scheduler_config.json"))
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
            raise ModelError(f"{path}: cannot read: the file is corrupt or truncated ({first_line(exc)})") from exc
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
    unet_config = read_json(configs / "unet" / "config.json")
    vae_config = read_json(configs / "vae" / "config.json")
    scheduler_config = read_json(configs / "scheduler" / "scheduler_config.json")
    overrides = read_json(configs / FAMILY_FILE) if (configs / FAMILY_FILE).is_file() else {}
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
        second = convert_open_clip_checkpoint(text_encoder_2, state, prefix=SDXL_OPEN_CLIP_PREFIX)
        _load_weights(text_encoder_2, _flat_text_state(text_encoder_2, second), path, "text encoder 2 (clip_g)")
        del state
        model = _loaded_on_cpu(load_tokenizer("sd1"), text_encoder, unet, vae, scheduler_config, family, path)
        model.text_encoder_2, model.tokenizer_2 = text_encoder_2, load_tokenizer("sd2")
        return model
    if layout == "clip":
        text_state = convert_ldm_clip_checkpoint(state)
    else:
        text_state = convert_open_clip_checkpoint(text_encoder, state, prefix=OPEN_CLIP_PREFIX)
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


def parameter_counts(model: SDModel) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoder),
                             ("text_encoder_2", model.text_encoder_2))
        if module is not None
    }
