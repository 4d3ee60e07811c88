"""Writing a model as one AUTOMATIC1111-style single-file checkpoint (the original LDM key layout):
the inverse of diffusers' single-file conversion. Only the tests use it, to make single-file
checkpoints of the tiny model that the loader in :mod:`lego_studio.core.models` must read back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from lego_studio.core.errors import InputError, ModelError
from lego_studio.core.model_specs import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
)
from lego_studio.core.models import SDModel
from lego_studio.core.paths import atomic_save


def _unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """Diffusers UNet weights -> original LDM names (the inverse of diffusers' conversion)."""
    per_block = int(config["layers_per_block"])
    n_blocks = len(config["block_out_channels"])
    up_has_attention = ["CrossAttn" in name for name in config["up_block_types"]]
    prefixes: list[tuple[str, str]] = []  # (diffusers prefix, ldm prefix)
    for i in range(n_blocks):
        for j in range(per_block):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(per_block + 1) * i + j + 1}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(per_block + 1) * i + j + 1}.1."))
        if i < n_blocks - 1:
            prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per_block + 1) * (i + 1)}.0.op."))
        for j in range(per_block + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(per_block + 1) * i + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(per_block + 1) * i + j}.1."))
        if i < n_blocks - 1:
            slot = 2 if up_has_attention[i] else 1
            prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per_block + 1) * i + per_block}.{slot}."))
    prefixes.append(("mid_block.attentions.0.", "middle_block.1."))
    for j in range(2):
        prefixes.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    top = {
        "time_embedding.linear_1.weight": "time_embed.0.weight",
        "time_embedding.linear_1.bias": "time_embed.0.bias",
        "time_embedding.linear_2.weight": "time_embed.2.weight",
        "time_embedding.linear_2.bias": "time_embed.2.bias",
        "conv_in.weight": "input_blocks.0.0.weight",
        "conv_in.bias": "input_blocks.0.0.bias",
        "conv_norm_out.weight": "out.0.weight",
        "conv_norm_out.bias": "out.0.bias",
        "conv_out.weight": "out.2.weight",
        "conv_out.bias": "out.2.bias",
        # SDXL: the pooled-text + time-ids embedding
        "add_embedding.linear_1.weight": "label_emb.0.0.weight",
        "add_embedding.linear_1.bias": "label_emb.0.0.bias",
        "add_embedding.linear_2.weight": "label_emb.0.2.weight",
        "add_embedding.linear_2.bias": "label_emb.0.2.bias",
    }
    resnet_parts = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                    ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
    result = {}
    for key, tensor in state.items():
        if key in top:
            result[UNET_PREFIX + top[key]] = tensor
            continue
        for diffusers_prefix, ldm_prefix in prefixes:
            if key.startswith(diffusers_prefix):
                rest = key[len(diffusers_prefix):]
                if ".resnets." in diffusers_prefix:
                    for new, old in resnet_parts:
                        if rest.startswith(new + "."):
                            rest = old + rest[len(new):]
                            break
                result[UNET_PREFIX + ldm_prefix + rest] = tensor
                break
        else:
            raise ModelError(f"cannot map UNet weight {key} to the LDM layout")
    return result


def _vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    n_blocks = len(config["block_out_channels"])
    renames = []
    for i in range(n_blocks):
        renames.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        renames.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        renames.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n_blocks - 1 - i}.block."))
        renames.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n_blocks - 1 - i}.upsample."))
    for side in ("encoder", "decoder"):
        for j in range(2):
            renames.append((f"{side}.mid_block.resnets.{j}.", f"{side}.mid.block_{j + 1}."))
        renames.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."))
    attention_parts = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                       ("to_out.0.", "proj_out.")]
    result = {}
    for key, tensor in state.items():
        new_key = key.replace(".conv_norm_out.", ".norm_out.")
        for old, new in renames:
            if key.startswith(old):
                new_key = new + key[len(old):]
                break
        if ".mid.attn_1." in new_key:
            for old, new in attention_parts:
                new_key = new_key.replace(".attn_1." + old, ".attn_1." + new)
            if tensor.ndim == 2:  # LDM stores the attention projections as 1x1 convolutions
                tensor = tensor[:, :, None, None]
        new_key = new_key.replace("conv_shortcut", "nin_shortcut")
        result[VAE_PREFIX + new_key] = tensor
    return result


def _clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + "text_model." + key.removeprefix("text_model."): t for key, t in state.items()}


def _open_clip_to_ldm(state: Mapping[str, torch.Tensor], width: int,
                      prefix: str = OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    flat = {key.removeprefix("text_model."): t for key, t in state.items()}
    # SDXL's second encoder has a real projection (the pooled embeddings): OpenCLIP stores
    # x @ text_projection, transformers a Linear (x @ W.T).
    projection = flat.pop("text_projection.weight", None)
    result = {
        prefix + "token_embedding.weight": flat.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": flat.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": flat.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": flat.pop("final_layer_norm.bias"),
        # OpenCLIP's projection is unused by SD (hidden states feed the UNet); keep its shape.
        prefix + "text_projection": torch.eye(width) if projection is None else projection.T.contiguous(),
    }
    layers = sorted({int(key.split(".")[2]) for key in flat if key.startswith("encoder.layers.")})
    for layer in layers:
        src = f"encoder.layers.{layer}."
        dst = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            result[dst + f"attn.in_proj_{kind}"] = torch.cat(
                [flat.pop(src + f"self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")], dim=0
            )
            result[dst + f"attn.out_proj.{kind}"] = flat.pop(src + f"self_attn.out_proj.{kind}")
            result[dst + f"ln_1.{kind}"] = flat.pop(src + f"layer_norm1.{kind}")
            result[dst + f"ln_2.{kind}"] = flat.pop(src + f"layer_norm2.{kind}")
            result[dst + f"mlp.c_fc.{kind}"] = flat.pop(src + f"mlp.fc1.{kind}")
            result[dst + f"mlp.c_proj.{kind}"] = flat.pop(src + f"mlp.fc2.{kind}")
    flat.pop("embeddings.position_ids", None)
    if flat:
        raise ModelError(f"cannot map text-encoder weight {next(iter(flat))} to the OpenCLIP layout")
    return result


def to_ldm_state_dict(model: SDModel, text_layout: str = "clip") -> dict[str, torch.Tensor]:
    """The model's weights in the original single-file (LDM) key layout.

    ``text_layout`` "clip" writes the text encoder like SD1 (``cond_stage_model.transformer.*``),
    "open_clip" like SD2 (``cond_stage_model.model.*``)."""
    state = {}
    state.update(_unet_to_ldm(model.unet.state_dict(), model.unet.config))
    state.update(_vae_to_ldm(model.vae.state_dict(), model.vae.config))
    text_state = {k: v for k, v in model.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    if getattr(model, "is_sdxl", False):
        state.update(_clip_to_ldm(text_state, SDXL_CLIP_PREFIX))
        second = {k: v for k, v in model.text_encoder_2.state_dict().items() if not k.endswith("position_ids")}
        state.update(_open_clip_to_ldm(second, model.family.text_width_2, SDXL_OPEN_CLIP_PREFIX))
    elif text_layout == "clip":
        state.update(_clip_to_ldm(text_state))
    elif text_layout == "open_clip":
        state.update(_open_clip_to_ldm(text_state, model.family.text_width))
    else:
        raise InputError(f"unknown text layout '{text_layout}' (choose clip or open_clip)")
    return {key: tensor.detach().to("cpu", torch.float32).contiguous() for key, tensor in state.items()}


def write_single_file_checkpoint(model: SDModel, path: str | os.PathLike, text_layout: str = "clip") -> Path:
    """Save ``model`` as one AUTOMATIC1111-style checkpoint (.safetensors, or a .ckpt holding
    ``{"state_dict": ...}``), written atomically."""
    path = Path(path)
    state = to_ldm_state_dict(model, text_layout)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        return atomic_save(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    if path.suffix.lower() in (".ckpt", ".pt", ".pth"):
        return atomic_save(path, lambda tmp: torch.save({"state_dict": state}, tmp))
    raise InputError(f"{path}: unsupported checkpoint extension (use .safetensors or .ckpt)")
