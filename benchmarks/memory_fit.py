"""Peak memory of a Lego step with the defaults against the automatic choice (core/memory.py).

Each configuration runs in its own process (so the resident-set high-water mark is its own): a
random-weight SD-1.5-shaped model (860 M UNet, CLIP ViT-L text encoder, SD VAE) is built on the
CPU, 4 random 512 px exemplars are encoded, and a few Lego steps run. ``--limit-gb L`` makes the
planner act as if the process could use at most L GB in total (``LEGO_STUDIO_MEMORY_LIMIT_GB``).

    nice -n 19 python benchmarks/memory_fit.py --steps 3 --limit-gb 10 --json benchmarks/results/memory_sd15_cpu.json

Also records each step's wall time, so the duration estimate (core/estimate.py: the first timed
step times the steps left) can be compared with the real run time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def one(mode: str, steps: int, limit_gb: float | None, threads: int) -> dict:
    import psutil
    import torch

    torch.set_num_threads(threads)
    from speed_lego_vs_ti import build_sd15_shaped, make_exemplars

    from lego_studio.core.memory import GIB, estimate_step_memory, fit_config, free_memory
    from lego_studio.core.train_config import TrainConfig
    from lego_studio.core.training import Trainer

    if limit_gb:
        os.environ["LEGO_STUDIO_MEMORY_LIMIT_GB"] = str(limit_gb)
    process = psutil.Process()
    t0 = time.perf_counter()
    model = build_sd15_shaped("cpu", torch.float32)
    build_s = time.perf_counter() - t0
    folder = Path(tempfile.mkdtemp(prefix="lego-memfit-"))
    images, masks = make_exemplars(folder, 512, count=4)
    config = TrainConfig.preset("lego", subject="a toy", steps=steps, checkpoint_every=0, preview_every=0)
    if mode == "auto":
        plan = fit_config(model, config)
        config, note, free = plan.config, plan.note, plan.free
    else:
        note, free = "defaults: nothing changed", free_memory(model.device)
    predicted = estimate_step_memory(model, config)
    baseline = process.memory_info().rss
    peak = [baseline]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    stamps = []

    def on_event(event):
        if event.kind in ("step", "start"):
            stamps.append((event.kind, event.step, time.perf_counter()))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    Trainer(model, config, images, masks, folder / "run", on_event=on_event).run()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    step_times = [b[2] - a[2] for a, b in zip(stamps, stamps[1:]) if b[0] == "step"]
    return {
        "mode": mode, "limit_gb": limit_gb, "threads": threads, "note": note,
        "settings": {"unet_batching": config.unet_batching, "gradient_checkpointing": config.gradient_checkpointing,
                     "batch_size": config.batch_size},
        "free_gb_at_plan": None if free is None else round(free / GIB, 2),
        "predicted_step_gb": round(predicted / GIB, 2),
        "rss_after_load_gb": round(baseline / GIB, 2), "peak_rss_gb": round(peak[0] / GIB, 2),
        "step_growth_gb": round((peak[0] - baseline) / GIB, 2),
        "build_s": round(build_s, 1), "run_wall_s": round(wall, 1),
        "step_times_s": [round(t, 1) for t in step_times],  # the first includes encoding the exemplars
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--limit-gb", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["defaults", "auto"])
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        limit = None if args.one == "defaults" else args.limit_gb
        print("RESULT " + json.dumps(one(args.one, args.steps, limit, args.threads)), flush=True)
        return 0
    rows = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--one", mode, "--steps", str(args.steps), "--limit-gb", str(args.limit_gb),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if not line:
            print(out.stdout[-2000:], out.stderr[-3000:], file=sys.stderr)
            rows.append({"mode": mode, "error": (out.stderr.strip().splitlines() or ["?"])[-1]})
            continue
        rows.append(json.loads(line[0][7:]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"rows": rows, "machine": f"{os.cpu_count()} CPU cores"}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
