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

    from lego_studio.shapeworld import benchmark  # light: torch is imported inside its functions

    bench = sub.add_parser(
        "benchmark",
        help="does Lego beat Textual Inversion? train every method, draw held-out subjects, ask the judge",
        description=benchmark.__doc__.split("\n\n")[0],
    )
    benchmark.add_arguments(bench)
    bench.set_defaults(func=_run_benchmark)


def _run_benchmark(args) -> int:
    from lego_studio.shapeworld.benchmark import run_from_args

    return run_from_args(args)


def run(args) -> int:  # the convention of commands/: every module has run(); sub-commands set func
    return args.func(args)
