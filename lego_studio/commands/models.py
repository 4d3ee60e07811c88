"""``lego-studio make-tiny-model DIR`` and ``lego-studio models inspect SPEC``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    tiny = subparsers.add_parser(
        "make-tiny-model",
        help="write a random-weight tiny Stable Diffusion model (for tests and plumbing)",
        description="Write a random-weight tiny SD-architecture model in diffusers layout.",
    )
    tiny.add_argument("dir", help="output folder (created; an existing model folder is replaced)")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed (same seed, same model)")
    tiny.add_argument("--size", type=int, default=32, help="native image size in pixels (multiple of 16)")
    tiny.add_argument("--family", choices=("sd", "sdxl"), default="sd",
                      help="architecture: sd (one text encoder) or sdxl (two text encoders of widths 32 and 48)")
    tiny.set_defaults(func=run_make_tiny_model)

    models = subparsers.add_parser("models", help="inspect Stable Diffusion models", description="Model tools.")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="show a model's family, widths, prediction type, resolution and parameter counts",
        description="Load a model offline and describe it.",
    )
    inspect.add_argument("spec", help="diffusers folder, .safetensors/.ckpt file, cached model id, 'shapeworld' or 'shapeworld-xl'")
    inspect.add_argument("--device", default="cpu", help="auto | cuda | mps | cpu (default cpu)")
    inspect.add_argument(
        "--prediction-type", choices=("epsilon", "v_prediction"), default=None,
        help="override the detected prediction type (SD2 768-v vs 512-base)",
    )
    inspect.set_defaults(func=run_inspect)


def run(args: argparse.Namespace) -> int:
    """Dispatch for callers that use the module-level ``run`` convention."""
    return args.func(args)


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from lego_studio.core.tiny_models import make_tiny_model

    family = getattr(args, "family", "sd")
    out = make_tiny_model(args.dir, seed=args.seed, sample_size=args.size, family=family)
    label = "tiny SDXL model" if family == "sdxl" else "tiny model"
    print(f"wrote {label} (seed {args.seed}, {args.size} px) to {out}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from lego_studio.core.models import load_model, parameter_counts

    model = load_model(args.spec, device=args.device, prediction_type=args.prediction_type)
    family = model.family
    counts = parameter_counts(model)
    lines = [
        f"model:            {model.source}",
        f"family:           {family.name}",
        (f"text widths:      clip_l {family.text_width} (text_encoder), clip_g {family.text_width_2} "
         f"(text_encoder_2, pooled {model.text_encoder_2.config.projection_dim})"
         if model.is_sdxl else f"text width:       {family.text_width}"),
        f"cross-attention:  {model.unet.config.cross_attention_dim}",
        f"prediction type:  {family.prediction_type}",
        f"resolution:       {family.resolution} px (latents {family.resolution // model.vae_scale_factor} px, "
        f"VAE scale {model.vae_scale_factor})",
        f"vocabulary:       {len(model.tokenizer)} tokens",
        *(["micro-conditioning: original size, crop, target size (time ids); VAE latents encoded in fp32"]
          if model.is_sdxl else []),
        f"device / dtype:   {model.device} / {str(model.dtype).removeprefix('torch.')}",
        "parameters:       "
        + ", ".join(f"{name} {count:,}" for name, count in counts.items())
        + f" (total {sum(counts.values()):,})",
    ]
    print("\n".join(lines))
    return 0
