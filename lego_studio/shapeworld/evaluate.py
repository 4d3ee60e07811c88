"""Base-model quality on Shape World: draw "a {colour} {shape} {concept}" and ask the judge.

    python -m lego_studio.shapeworld.evaluate --model resources/models/shapeworld --n 200 --device cuda

Reports the share of images whose concept the judge reads as the prompted one, and whose subject
(shape and colour both) is right; writes ``<out>/evaluation.json`` and a contact sheet PNG.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

from lego_studio.shapeworld.world import NO_CONCEPT, held_out_triples, trained_triples


def pick_triples(n: int, seed: int, which: str = "trained"):
    """``n`` (shape, colour, concept) triples with a concept: trained ones, held-out ones, or the
    plain subjects ("plain"). Cycles through a seeded shuffle so every combination is used before
    any repeats."""
    if which == "trained":
        pool = [t for t in trained_triples() if t.concept != NO_CONCEPT]
    elif which == "held_out":
        pool = held_out_triples()
    elif which == "plain":
        pool = [t for t in trained_triples() if t.concept == NO_CONCEPT]
    else:
        raise ValueError(f"unknown triple set {which!r}")
    rng = random.Random(f"eval/{seed}/{which}")
    order = pool[:]
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def generate_images(pipe, prompts: list[str], seed: int, device: str, steps: int = 30, guidance: float = 5.0,
                    batch_size: int = 64, negative_prompt: str = "") -> np.ndarray:
    """uint8 [N,H,W,3] images for ``prompts``; image i uses seed ``seed + i`` whatever the batching."""
    import torch

    out = []
    gen_device = "cuda" if str(device).startswith("cuda") else "cpu"
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        generators = [torch.Generator(gen_device).manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(chunk, negative_prompt=[negative_prompt] * len(chunk), num_inference_steps=steps,
                      guidance_scale=guidance, generator=generators, output_type="np").images
        out.append((np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out) if out else np.empty((0, 64, 64, 3), np.uint8)


def score(triples, predictions) -> dict:
    n = max(len(triples), 1)
    concept_ok = [p.concept == t.concept for t, p in zip(triples, predictions)]
    shape_ok = [p.shape == t.shape for t, p in zip(triples, predictions)]
    colour_ok = [p.colour == t.colour for t, p in zip(triples, predictions)]
    per_concept: dict[str, list[int]] = {}
    for t, ok in zip(triples, concept_ok):
        per_concept.setdefault(t.concept, [0, 0])
        per_concept[t.concept][0] += ok
        per_concept[t.concept][1] += 1
    return {
        "n": len(triples),
        "concept_accuracy": sum(concept_ok) / n,
        "subject_accuracy": sum(s and c for s, c in zip(shape_ok, colour_ok)) / n,
        "shape_accuracy": sum(shape_ok) / n,
        "colour_accuracy": sum(colour_ok) / n,
        "per_concept": {k: v[0] / v[1] for k, v in sorted(per_concept.items())},
    }


def score_prompts(pipe, judge_model, n: int, seed: int, device: str, steps: int = 30, guidance: float = 5.0,
                  which: str = "trained", batch_size: int = 64, return_images: bool = False):
    from lego_studio.shapeworld.judge import judge

    triples = pick_triples(n, seed, which)
    prompts = [t.prompt for t in triples]
    images = generate_images(pipe, prompts, seed, device, steps=steps, guidance=guidance, batch_size=batch_size)
    predictions = judge(images, judge_model)
    result = score(triples, predictions)
    result.update({"which": which, "steps": steps, "guidance": guidance, "seed": seed})
    result["samples"] = [{"prompt": p, "judged": {"shape": q.shape, "colour": q.colour, "concept": q.concept}}
                         for p, q in zip(prompts, predictions)]
    if return_images:
        return result, images, triples, predictions
    return result


def contact_sheet(images: np.ndarray, triples, predictions, columns: int = 10, scale: int = 2):
    """A grid of the generated images, each with a green (judge agrees) or red (disagrees) border
    and a line of text: the prompt's concept, then what the judge saw if different."""
    from PIL import Image, ImageDraw

    cell = images.shape[1] * scale
    label_h = 24
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * (cell + 4), rows * (cell + 4 + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, t, p) in enumerate(zip(images, triples, predictions)):
        x, y = (i % columns) * (cell + 4), (i // columns) * (cell + 4 + label_h)
        ok = p.concept == t.concept and p.shape == t.shape and p.colour == t.colour
        draw.rectangle([x, y, x + cell + 3, y + cell + 3], fill=(40, 170, 60) if ok else (210, 40, 40))
        sheet.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (x + 2, y + 2))
        draw.text((x + 2, y + cell + 4), f"{t.colour} {t.shape}"[:22], fill=(0, 0, 0))
        draw.text((x + 2, y + cell + 14), (t.concept if ok else f"->{p.colour} {p.shape} {p.concept}")[:22],
                  fill=(0, 0, 0) if ok else (200, 0, 0))
    return sheet


def load_pipeline(model_dir, device: str):
    """A StableDiffusionPipeline (DDIM) from a Shape World folder, fp32 (weights are stored fp16)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from lego_studio.core.errors import ModelError

    folder = Path(model_dir)
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"{folder}: not a diffusers model folder (no model_index.json)")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, local_files_only=True,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lego_studio.shapeworld.evaluate", add_help=add_help,
                                     description="Base-model quality: prompted concept and subject, as the judge reads them.")
    parser.add_argument("--model", default=None, help="Shape World model folder (default resources/models/shapeworld)")
    parser.add_argument("--judge", default=None, help="judge folder (default resources/judge)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--which", default="trained", choices=["trained", "held_out", "plain"])
    parser.add_argument("--out", default=None, help="folder for evaluation JSON + contact sheet (default: the model folder's eval/)")
    parser.add_argument("--threads", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args) -> int:
    import torch

    from lego_studio.core.paths import atomic_save, atomic_write_json
    from lego_studio.shapeworld.judge import load_judge

    if args.threads:
        torch.set_num_threads(args.threads)
    from lego_studio.core.paths import resource

    args.model = args.model or str(resource("models", "shapeworld"))
    t0 = time.time()
    pipe = load_pipeline(args.model, args.device)
    judge_model = load_judge(args.judge, device=args.device)
    result, images, triples, predictions = score_prompts(pipe, judge_model, args.n, args.seed, args.device, steps=args.steps,
                                                         guidance=args.guidance, which=args.which, return_images=True)
    result["model"] = str(args.model)
    result["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    atomic_write_json(out / f"evaluation_{args.which}.json", result)
    sheet = contact_sheet(images, triples, predictions)
    atomic_save(out / f"contact_sheet_{args.which}.png", lambda tmp: sheet.save(tmp, format="PNG"))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
