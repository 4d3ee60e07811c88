"""``lego-studio shapeworld ...``: the synthetic Shape World (benchmark of Lego vs Textual Inversion).

Sub-commands are added by ``_SUBCOMMANDS`` entries: (name, help, module with add_arguments and
run_from_args). Heavy imports happen inside the sub-command's run.
"""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "shapeworld",
        help="Shape World: the synthetic benchmark world (benchmark Lego vs Textual Inversion)",
        description="Shape World tools: coloured shapes with concepts (frozen in ice, in a cage, melting, ...).",
    )
    sub = parser.add_subparsers(dest="shapeworld_command", metavar="SUBCOMMAND", required=True)

    from lego_studio.shapeworld import benchmark, benchmark_cli  # light: torch is imported inside their functions

    bench = sub.add_parser(
        "benchmark",
        help="does Lego beat Textual Inversion? train every method, draw held-out subjects, ask the judge",
        description=benchmark.__doc__.split("\n\n")[0],
    )
    benchmark_cli.add_arguments(bench)
    bench.set_defaults(func=_run_benchmark)

    render = sub.add_parser("render", help="draw one Shape World image (and its subject mask)",
                            description="Draw a coloured shape, optionally with a concept, as a 64x64 PNG.")
    render.add_argument("--shape", required=True, help="square, circle, triangle, star, heart, cross, hexagon")
    render.add_argument("--colour", required=True, help="red, green, blue, yellow, purple, orange")
    render.add_argument("--concept", default=None, help='e.g. "frozen in ice" (omit for a plain subject)')
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--size", type=int, default=64)
    render.add_argument("--out", required=True, help="PNG to write")
    render.add_argument("--mask-out", default=None, help="also write the subject mask (255 = subject) here")
    render.set_defaults(func=_run_render)

    judge = sub.add_parser("judge", help="say which shape, colour and concept images show",
                           description="Classify images with the Shape World judge.")
    judge.add_argument("images", nargs="+", help="image files")
    judge.add_argument("--judge", default=None, help="judge folder (default resources/judge)")
    judge.add_argument("--json", action="store_true", help="machine-readable output")
    judge.set_defaults(func=_run_judge)

    from lego_studio.shapeworld import evaluate, model_training

    train = sub.add_parser("train-model", parents=[model_training.build_parser(add_help=False)],
                           help="train the Shape World text-to-image model and judge from scratch",
                           description=model_training.__doc__.split("\n\n")[0])
    train.set_defaults(func=_run_train_model)
    ev = sub.add_parser("evaluate", parents=[evaluate.build_parser(add_help=False)],
                        help="base-model quality: does it draw the prompted subject and concept?",
                        description="Draw 'a {colour} {shape} {concept}' prompts and score them with the judge.")
    ev.set_defaults(func=_run_evaluate)


def _run_render(args) -> int:
    import random

    from lego_studio.core.paths import atomic_save
    from lego_studio.shapeworld.render import render

    image, mask, caption = render(args.shape, args.colour, args.concept, random.Random(args.seed), size=args.size)
    atomic_save(args.out, lambda tmp: image.save(tmp, format="PNG"))
    if args.mask_out:
        from PIL import Image

        atomic_save(args.mask_out, lambda tmp: Image.fromarray(mask, mode="L").save(tmp, format="PNG"))
    print(f"{args.out}: {caption}")
    return 0


def _run_judge(args) -> int:
    import json

    from lego_studio.core.images import load_image
    from lego_studio.shapeworld.judge import judge, load_judge

    images = [load_image(path) for path in args.images]
    predictions = judge(images, load_judge(args.judge))
    for path, p in zip(args.images, predictions):
        if args.json:
            print(json.dumps({"image": str(path), **p.as_dict()}))
        else:
            concept = "" if p.concept == "none" else f" {p.concept}"
            print(f"{path}: {p.colour} {p.shape}{concept} (shape {p.shape_prob:.2f}, colour {p.colour_prob:.2f}, "
                  f"concept {p.concept_prob:.2f})")
    return 0


def _run_train_model(args) -> int:
    from lego_studio.shapeworld import model_training

    model_training.run(model_training.apply_defaults(args))
    return 0


def _run_evaluate(args) -> int:
    from lego_studio.shapeworld import evaluate

    return evaluate.run(args)


def _run_benchmark(args) -> int:
    from lego_studio.shapeworld.benchmark_cli import run_from_args

    return run_from_args(args)


def run(args) -> int:  # the convention of commands/: every module has run(); sub-commands set func
    return args.func(args)
