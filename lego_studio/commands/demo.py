"""``lego-studio demo``: Lego vs Textual Inversion on a Shape World concept, side by side."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train Lego and the Textual Inversion baseline on a Shape World concept and compare them",
        description=(
            "Builds a demo project (renders of a yellow star in a cage, with masks and the partial subject words "
            "\"a star\"), trains a Lego concept and a "
            "Textual Inversion concept on the Shape World model (same steps, same seed), draws both on subjects they "
            "never saw and writes gallery.png and index.html (with the judge's verdicts) to --out."
        ),
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument("--steps", type=int, default=None, metavar="N", help="training steps per method (default 300; --quick: 20)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, 2 subjects x 1 seed")
    parser.add_argument("--model", default="shapeworld", help="a Shape World model folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1; 0 = torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from lego_studio.core.errors import InputError
    from lego_studio.shapeworld.demo import TerminalProgress, run_demo

    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be at least 1 (got {args.steps})")
    progress = None if args.no_progress else TerminalProgress()
    result = run_demo(args.out, steps=args.steps, device=args.device, on_progress=progress, quick=args.quick,
                      model=args.model, threads=args.threads)
    print(f"gallery: {result.gallery}")
    print(f"page:    {result.index}")
    print(f"concepts: {', '.join(str(p) for p in result.concepts.values())}")
    if result.judge_note:
        print(result.judge_note, file=sys.stderr)
    judged = [r for r in result.images if r["verdict"] is not None]
    for method in ("lego", "ti"):
        mine = [r for r in judged if r["method"] == method]
        if mine:
            ok = sum(r["verdict"]["ok"] for r in mine)
            print(f"{'Lego' if method == 'lego' else 'TI':>4}: {ok}/{len(mine)} images judged right (subject and concept)")
    if result.trained_with:
        print(result.trained_with)
    if result.closest:
        print(result.closest)
    print(f"done in {result.seconds:.0f} s")
    return 0
