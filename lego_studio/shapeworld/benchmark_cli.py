"""The Shape World benchmark's command line: the flags shared by ``lego-studio shapeworld benchmark``
and ``benchmarks/shapeworld_benchmark.py``, the config they describe, and ``main``.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from lego_studio.shapeworld import benchmark
from lego_studio.shapeworld.benchmark import (
    ALL_METHODS,
    DEFAULT_METHODS,
    DEFAULT_SEEDS,
    DEFAULT_BUDGET_MINUTES,
    DEFAULT_GEN_STEPS,
    DEFAULT_GUIDANCE,
    DEFAULT_LR,
    DEFAULT_STEPS,
    DEFAULT_VECTORS,
    HELD_OUT_CONCEPTS,
    DEFAULT_TRACKS,
    TRACKS,
    BenchmarkConfig,
)
from lego_studio.shapeworld.benchmark_runner import run_benchmark


def add_arguments(parser) -> None:
    """The benchmark's flags (shared by ``lego-studio shapeworld benchmark`` and the script)."""
    parser.add_argument("--concepts", nargs="+", metavar="C",
                        help=f"concepts (dashes for spaces) or tuning / held-out / all (default: held-out = {', '.join(HELD_OUT_CONCEPTS)})")
    parser.add_argument("--methods", nargs="+", metavar="M", help=f"from {', '.join(ALL_METHODS)} (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help=f"training seeds (default: {' '.join(map(str, DEFAULT_SEEDS))})")
    parser.add_argument("--steps", type=int, metavar="N", help=f"training steps per run (default: {DEFAULT_STEPS}, the app's default)")
    parser.add_argument("--vectors", type=int, default=DEFAULT_VECTORS, metavar="N", help="N of ti-N and lego (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="learning rate of every method (default: %(default)g)")
    parser.add_argument("--subjects", type=int, metavar="N", help="held-out subjects per run (default: 4)")
    parser.add_argument("--gen-seeds", nargs="+", type=int, metavar="N", help="generation seeds (default: 1000-1003)")
    parser.add_argument("--gen-steps", type=int, metavar="N", help=f"DDIM steps per image (default: {DEFAULT_GEN_STEPS})")
    parser.add_argument("--guidance", type=float, help=f"classifier-free guidance (default: {DEFAULT_GUIDANCE:g})")
    parser.add_argument("--model", default="shapeworld", help="model spec (default: the shipped Shape World model)")
    parser.add_argument("--judge", default=None, metavar="DIR", help="judge folder (default: resources/judge)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1; 0 = torch's choice)")
    parser.add_argument("--budget-minutes", type=float, default=None, help=f"time budget; the plan warns when the run will not fit it (default: {DEFAULT_BUDGET_MINUTES:g})")
    parser.add_argument("--tracks", nargs="+", metavar="T", choices=TRACKS,
                        help=f"subject-word tracks: {', '.join(TRACKS)} (default: {' '.join(DEFAULT_TRACKS)})")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="worker processes, each with --threads torch threads (default: 2 on a machine with 2+ cores, else 1)")
    parser.add_argument("--no-same-runs", dest="same_runs", action="store_false",
                        help="train and draw every run, even one whose settled subject words (after Colour and Shape "
                             "from masks) make it the same run as another track's of its seed (default: such a run "
                             "takes that run's vectors, pictures and verdicts: identical, measured once)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 1 concept, ti-1 vs lego, 10 steps, 1 seed, 2 subjects x 2 seeds")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")


def config_from_args(args) -> BenchmarkConfig:
    given = {
        "concepts": args.concepts, "methods": args.methods, "seeds": args.seeds, "steps": args.steps,
        "n_subjects": args.subjects, "gen_seeds": args.gen_seeds, "gen_steps": args.gen_steps, "guidance": args.guidance,
        "budget_minutes": args.budget_minutes, "tracks": args.tracks,
        "jobs": args.jobs if args.jobs is not None else (1 if args.quick else min(2, os.cpu_count() or 1)),
    }
    common = {"num_vectors": args.vectors, "lr": args.lr, "model": args.model, "judge": args.judge, "device": args.device,
              "threads": args.threads, "same_runs": args.same_runs}
    if args.quick:
        return BenchmarkConfig.quick_config(**given, **common)
    return BenchmarkConfig(**{k: v for k, v in given.items() if v is not None}, **common)


def run_from_args(args) -> int:
    config = config_from_args(args)
    # The command as the user typed it (set by the front end that parsed it), for reproduction.
    command = shlex.join(getattr(args, "invocation", None) or [Path(sys.argv[0]).name, *sys.argv[1:]])
    run_benchmark(config, args.out, log=lambda message: print(message, flush=True), command=command)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    from lego_studio.core.errors import LegoError

    parser = argparse.ArgumentParser(prog="shapeworld_benchmark", description=benchmark.__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.invocation = ["python benchmarks/shapeworld_benchmark.py", *(sys.argv[1:] if argv is None else argv)]
    try:
        return run_from_args(args)
    except LegoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
