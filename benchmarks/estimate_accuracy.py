"""How good is the duration estimate? Time a real run and compare.

The estimate (core/estimate.py) is what the app and ``lego-studio train`` show after a run's
first two steps: the second step's wall time x the steps left. This script trains the Shape World
demo project (5 renders, Lego defaults) with the shipped model, takes the estimate exactly as
the CLI does, and prints it next to the measured time of the remaining steps.

    nice -n 19 python benchmarks/estimate_accuracy.py --steps 150 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    os.environ["LEGO_STUDIO_HOME"] = tempfile.mkdtemp(prefix="lego-est-")  # no cached figure
    import torch

    torch.set_num_threads(args.threads)
    from lego_studio.core.estimate import StepClock
    from lego_studio.core.models import load_model
    from lego_studio.core.train_config import TrainConfig
    from lego_studio.core.training import Trainer
    from lego_studio.shapeworld.demo import build_demo_project

    project = build_demo_project(Path(os.environ["LEGO_STUDIO_HOME"]) / "demo")
    images, masks = project.training_inputs()
    model = load_model("shapeworld", device="cpu")
    config = TrainConfig.preset("lego", subject=project.subject, steps=args.steps, name="frozen")
    clock = StepClock(None, "cpu")
    seen = {}

    def on_event(event):
        guess = clock.observe(event)
        if guess is not None:
            seen["estimate_s"], seen["at"], seen["steps_left"] = guess.seconds, time.perf_counter(), guess.steps_left
        if event.kind == "done":
            seen["end"] = time.perf_counter()

    started = time.perf_counter()
    Trainer(model, config, images, masks, Path(os.environ["LEGO_STUDIO_HOME"]) / "run", on_event=on_event).run()
    actual = seen["end"] - seen["at"]
    row = {"model": "shapeworld", "device": "cpu", "threads": args.threads, "steps": args.steps,
           "estimate_after_step_2_s": round(seen["estimate_s"], 1), "actual_remaining_s": round(actual, 1),
           "error_pct": round(100 * (seen["estimate_s"] - actual) / actual, 1),
           "run_wall_s": round(time.perf_counter() - started, 1)}
    print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
