"""Cost of one training preview against one training step, on the Shape World demo project, on
the CPU with the app's thread count: what the app's "Preview every" default rests on.

    python scripts/measure_preview_cost.py

Measured 2026-11-27 on the 2-core CPU (1 torch thread, a busy machine): Lego step 182 ms, preview
(3 images, 10 steps) 1.21 s -> every 100 steps +6.6 %; TI step 75 ms, preview (1 image) 0.54 s ->
every 100 steps +7.2 % (every 50: +13-14 %).
"""
import sys, time, tempfile, statistics
from pathlib import Path
import torch
from lego_studio.core.devices import use_app_cpu_threads
use_app_cpu_threads()
from lego_studio.core.models import load_model
from lego_studio.core.train_config import TrainConfig
from lego_studio.core.training import Trainer
from lego_studio.shapeworld.demo import build_demo_project

tmp = Path(tempfile.mkdtemp())
project = build_demo_project(tmp / "p")
images, masks = project.training_inputs()
model = load_model("shapeworld", device="cpu")
d = project.train_defaults
print("threads", torch.get_num_threads(), flush=True)
for method in ("lego", "ti"):
    cfg = TrainConfig.preset(method, name="c" + method, subject=project.subject if method == "lego" else "",
                             steps=60, templates=d["templates"],
                             context_subjects=d["context_subjects"], checkpoint_every=0, preview_every=0)
    step_times = []
    t = Trainer(model, cfg, images, masks if method == "lego" else None, tmp / f"run-{method}",
                on_event=lambda e: step_times.append(time.perf_counter()) if e.kind == "step" else None)
    t.run()
    per_step = statistics.median([b - a for a, b in zip(step_times[10:], step_times[11:])])
    prev = []
    for i in range(5):
        s = time.perf_counter(); t._preview(1000 + i); prev.append(time.perf_counter() - s)
    per_preview = statistics.median(prev)
    print(f"{method}: step {per_step*1000:.1f} ms, preview ({len(cfg.effective_preview_prompts())} images, {cfg.preview_steps} steps) {per_preview*1000:.1f} ms", flush=True)
    for every in (10, 25, 50, 100):
        print(f"   preview every {every}: +{100*per_preview/(every*per_step):.1f} %", flush=True)
