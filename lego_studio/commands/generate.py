"""``lego-studio generate``: a subjects x seeds grid of images with one or more concepts."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lego_studio.core.generation import DEFAULT_TEMPLATE  # light: torch is imported lazily there


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="make images of subjects with learned concepts",
        description=(
            "Generate one PNG per subject x seed plus grid.png. Each PNG carries its prompt, seed, "
            "model and concepts in PNG text chunks (AUTOMATIC1111 'parameters' + 'lego_studio')."
        ),
    )
    parser.add_argument("--model", required=True, help="diffusers folder, HF-cache model id, .safetensors/.ckpt file, 'shapeworld', 'shapeworld-xl' or 'tiny'")
    parser.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="FILE",
        help="concept file (any supported format) or library name; repeat for several",
    )
    parser.add_argument("--subjects", nargs="+", required=True, metavar="TEXT", help='e.g. "a teapot" "a dog"')
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N")
    parser.add_argument("--template", default=DEFAULT_TEMPLATE, help="prompt with {subject} and {concept} (default: %(default)r)")
    parser.add_argument("--negative", default="", help="negative prompt")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--scheduler", default="ddim", help="ddim | euler | dpm | pndm | ddpm (default: ddim)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's resolution)")
    parser.add_argument("--device", default="auto", help="auto | cuda | mps | cpu")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.set_defaults(func=run)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", text.casefold()).strip("-")[:40] or "subject"


def run(args) -> int:
    from lego_studio.commands.concepts import load_concept_spec
    from lego_studio.core.errors import InputError
    from lego_studio.core.generation import generate_grid, grid_image, save_generated
    from lego_studio.core.models import load_model
    from lego_studio.core.paths import atomic_save

    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"{args.out}: exists and is not a folder")
    concepts = [load_concept_spec(spec)[0] for spec in args.concept]
    print(f"loading model {args.model} ...", file=sys.stderr, flush=True)
    model = load_model(args.model, device=args.device, precision=args.precision)
    args.out.mkdir(parents=True, exist_ok=True)

    interactive = sys.stderr.isatty()
    subjects = list(args.subjects)
    count = len(subjects) * len(args.seeds)
    written: list[Path] = []

    def progress(step: int, total: int) -> None:
        if interactive:
            print(f"\r  step {step}/{total}", end="", file=sys.stderr, flush=True)

    def on_image(request, image) -> None:
        index = len(written) + 1
        path = args.out / f"{index:02d}_{_slug(subjects[(index - 1) // len(args.seeds)])}_seed{request.seed}.png"
        save_generated(image, path, request)
        written.append(path)
        if interactive:
            print("\r", end="", file=sys.stderr)
        print(f"[{index}/{count}] {path}  ({request.prompt!r}, seed {request.seed})", flush=True)

    results = generate_grid(
        model,
        concepts,
        subjects,
        args.seeds,
        template=args.template,
        negative_prompt=args.negative,
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        width=args.size,
        height=args.size,
        progress=progress,
        on_image=on_image,
    )
    grid = grid_image(results, subjects, args.seeds)
    grid_path = atomic_save(args.out / "grid.png", lambda tmp: grid.save(tmp, format="PNG"))
    print(f"grid: {grid_path}")
    return 0
