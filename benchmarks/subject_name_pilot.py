"""Shape from masks, the pilot that chose it: at which probe length do the concept's closest words
hold the word the subject words left out, and does the masks' outline pick it out?

    python benchmarks/subject_name_pilot.py --concepts tuning --tracks no-shape-object \
        --seeds 0 --snapshots 50 100 150 200 --out /tmp/pilot

Each run trains the Lego defaults with Shape from masks off (the words as the track gives them),
keeps the vectors at every snapshot, takes their closest words (core/subject_name.candidate_words)
and scores each word's plain drawings against the exemplar masks (core/images.outline_match,
against the subject words' own drawings: the gain core/subject_name.choose_word needs MIN_GAIN of).
One JSON line per (run, snapshot) in ``pilot.jsonl``. Logs:
benchmarks/results/tuning/pilots/shape_from_masks_*.log.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402


def main(argv=None) -> int:
    p = bm.tuning_parser(__doc__.splitlines()[0])
    p.add_argument("--tracks", nargs="+", default=["no-shape-object"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--snapshots", nargs="+", type=int, default=[50, 100, 150, 200])

    from lego_studio.core import subject_name
    from lego_studio.core.concepts import closest_words
    from lego_studio.core.images import outline_match
    from lego_studio.core.separation import name_subject
    from lego_studio.core.training import Trainer

    args, concepts, config, model, out = bm.tuning_setup(p, argv)
    table = model.text_encoder.get_input_embeddings().weight.detach()
    snapshots = sorted(set(args.snapshots))
    for concept in concepts:
        exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
        resolution = int(model.family.resolution)

        def score(phrase):
            return outline_match(subject_name.draw(model, phrase, resolution), masks)

        for track in args.tracks:
            for seed in args.seeds:
                spec = bm.MethodSpec("lego", "lego", {}, True, "lego")
                cfg = dataclasses.replace(bm.train_config(spec, exemplar, evaluation, snapshots[-1], seed, track=track),
                                          mask_shape=False)
                kept, trainer = {}, None

                def on_event(event, kept=kept):
                    if event.kind == "step" and event.step in snapshots:
                        kept[event.step] = trainer.concept()

                with tempfile.TemporaryDirectory() as tmp:
                    trainer = Trainer(model, cfg, images, masks, Path(tmp) / "run", on_event=on_event)
                    trainer.run()
                own = score(cfg.subject)
                for step in snapshots:
                    words = subject_name.candidate_words(closest_words(kept[step].vectors, model.tokenizer, table, k=10),
                                                         cfg.subject)
                    gains = {w: round(score(name_subject(cfg.subject, w)) - own, 3) for w in words}
                    chosen = subject_name.choose_word(own, {w: own + g for w, g in gains.items()})
                    row = {"concept": concept, "track": track, "seed": seed, "step": step, "shape": exemplar[0],
                           "own": round(own, 3), "gains": gains, "chosen": chosen}
                    with open(out / "pilot.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"{concept:14s} {track:16s} s{seed} @{step}: shape={exemplar[0]} own {own:.2f} chosen {chosen} "
                          f"| {gains}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
