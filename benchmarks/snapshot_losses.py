"""Snapshot losses: is the vector a run ends at cheaper for the loss than the concept's own words?

    python benchmarks/snapshot_losses.py "casting a shadow" full 0,1,2 '{"flip": true}'

Trains Lego (the benchmark's config for the track, plus the JSON overrides) for 500 steps on a
Shape World concept, once per seed, and at steps 100-500 judges the vectors with the benchmark's
protocol (held-out subjects x generation seeds: concept fidelity, success, the judge's labels) and
scores every loss term on 24 fixed batches (same images, noise levels, noise and templates for
every snapshot). Compare with ``benchmarks/oracle_landscape.py``, which scores the concept's own
words on the same kind of batches: a snapshot that the judge reads as another concept but whose
reconstruction loss is lower than the true words' shows the training data, not the optimiser, at
fault (docs/METHOD.md, "No mirrored exemplars"). One line per (seed, snapshot) on stdout.
Tuning pilots use any concept: it never runs the benchmark's decision protocol.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SNAPSHOTS = (100, 200, 300, 400, 500)
BATCHES = 24


def fixed_batch_losses(model, cfg, images, masks, vectors, cache: Path) -> dict[str, float]:
    """Every loss term with the concept slot set to ``vectors``, averaged over the fixed batches."""
    import torch

    from lego_studio.core.data import build_exemplars
    from lego_studio.core.training import Trainer

    cfg = type(cfg).from_dict({**cfg.to_dict(), "num_vectors": vectors.shape[0], "init_words": []})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model, cfg, images, masks, Path(tmp))
        trainer.prepare(build_exemplars(model, images, masks, int(model.family.resolution), cache), start_vectors="run")
        totals: dict[str, float] = {}
        with torch.no_grad():
            trainer.concept_vectors.copy_(vectors)
            for k in range(BATCHES):
                for name, value in trainer.step_losses(torch.Generator().manual_seed(10_000 + k)).items():
                    totals[name] = totals.get(name, 0.0) + float(value) / BATCHES
    return totals


def main(argv=None) -> int:
    import torch

    from lego_studio.core.concepts import closest_words
    from lego_studio.core.models import load_model
    from lego_studio.core.training import Trainer
    from lego_studio.shapeworld import benchmark as bm
    from lego_studio.shapeworld import benchmark_runner as br
    from lego_studio.shapeworld.judge import judge, load_judge

    argv = sys.argv[1:] if argv is None else argv
    concept, track = argv[0], argv[1]
    seeds = [int(s) for s in argv[2].split(",")]
    overrides = json.loads(argv[3]) if len(argv) > 3 else {}
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS", "1")))
    model = load_model("shapeworld", device="cpu", precision="fp32")
    judge_model = load_judge(None)
    config = bm.BenchmarkConfig(device="cpu")
    exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
    spec = bm.resolve_methods(["lego"])[0]
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for seed in seeds:
            cfg = bm.train_config(spec, exemplar, evaluation, SNAPSHOTS[-1], seed, lr=config.lr, track=track)
            cfg = type(cfg).from_dict({**cfg.to_dict(), **overrides})
            kept, trainer = {}, None

            def on_event(event, kept=kept):
                if event.kind == "step" and event.step in SNAPSHOTS:
                    kept[event.step] = trainer.concept()

            trainer = Trainer(model, cfg, images, masks, Path(tmp) / f"run{seed}", on_event=on_event)
            started = time.time()
            kept[SNAPSHOTS[-1]] = trainer.run()
            for step in SNAPSHOTS:
                learned = kept[step]
                requested = [pair for pair in evaluation for _ in config.gen_seeds]
                prompts = [bm.benchmark_prompt(s, c, learned.placeholder) for s, c in requested]
                gen_seeds = [s for _ in evaluation for s in config.gen_seeds]
                made = br.generate_images(model, learned, prompts, gen_seeds, config.gen_steps, config.guidance)
                predictions = judge([im for _, im in made], judge_model)
                scores = br.score_predictions(predictions, requested, exemplar, concept)
                losses = fixed_batch_losses(model, cfg, images, masks, learned.vectors, cache)
                words = closest_words(learned.vectors, model.tokenizer,
                                      model.text_encoder.get_input_embeddings().weight.detach())
                print(f"{concept} {track} s{seed} @{step}: concept {scores['concept_fidelity']:.2f} "
                      f"succ {scores['success']:.2f} labels {dict(Counter(p.concept for p in predictions))} "
                      f"loss {({k: round(v, 5) for k, v in losses.items()})} "
                      f"norm {float(learned.vectors.norm()):.3f} [{' '.join(words[:4])}] ({time.time() - started:.0f}s)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
