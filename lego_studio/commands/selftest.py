"""``lego-studio selftest`` (also ``lego-studio --self-test``): check this install works offline."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "selftest",
        help="check that this install works offline (model, training, generation, masks, no network)",
        description=(
            "Loads the model, trains a few Lego steps on Shape World renders with masks, generates an image, "
            "checks the mask assist against a true mask and that nothing reached for the network. Prints one "
            "PASS/FAIL line per check; exit code 0 only when nothing failed. User data is not touched."
        ),
    )
    parser.add_argument("--model", default="shapeworld",
                        help="model to test with: 'shapeworld' (shipped, default), a diffusers folder or a checkpoint file")
    parser.add_argument("--steps", type=int, default=5, metavar="N", help="training steps (default 5)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    parser.add_argument("--sam-checkpoint", default=None, metavar="FILE",
                        help="also test Segment Anything with this checkpoint (default: the one in settings, if any)")
    parser.add_argument("--verbose", action="store_true", help="print a traceback for every failed check")
    parser.add_argument("--log", default=None, metavar="FILE",
                        help="write the full tracebacks of failed checks here (default: a new file in the temp folder)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from lego_studio.selftest import run_self_test

    return run_self_test(
        report=lambda line: print(line, flush=True),
        model=args.model,
        steps=args.steps,
        device=args.device,
        sam_checkpoint=args.sam_checkpoint,
        verbose=args.verbose,
        log=args.log,
    )
