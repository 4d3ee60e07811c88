"""Oracle landscape: does a loss have its minimum at the true concept words? No training.

    python benchmarks/oracle_landscape.py --concepts tuning --tracks no-colour no-shape --out /tmp/oracle

Shape World knows each concept's words, so a loss can be scored at candidate concepts whose
meaning is known: the concept's own words ("on fire"), the concept plus what the subject words left
out ("blue on fire": the leak), the left-out attribute alone ("blue": all leak, no concept), and
the trainer's own starting vector (the vocabulary mean: no concept yet). Each candidate is put in
the concept slot as its token embeddings (one vector per token) and every loss term is averaged
over the same batches (same generators: same images, timesteps, noise, templates and context
subjects for every candidate). A loss whose minimum is not at the true words cannot be trained to
them: it tells loss forms apart before any long run (issue 17).

Writes ``landscape.jsonl`` (one line per concept, track, variant, candidate: every term) and
``landscape.md`` (the total at the variant's weights and, per variant, the candidate it prefers).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402

# name -> TrainConfig overrides on the Lego preset (the benchmark's own train_config otherwise)
VARIANTS: dict[str, dict] = {
    "lego": {},
    "lego-ctx0": {"w_ctx": 0.0},
    "lego-ctx0.5": {"w_ctx": 0.5},
    "lego-out": {"ctx_region": "outside"},
    "rec-outside": {"rec_region": "concept"},  # L_rec outside the subject mask only
    "subj0.1": {"w_subj": 0.1},  # Subject Separation's L_subj on
    "subj0.3-rec-outside": {"w_subj": 0.3, "rec_region": "concept"},
    "subj1-rec-outside": {"w_subj": 1.0, "rec_region": "concept"},
    "rec-outside-ctx0": {"rec_region": "concept", "w_ctx": 0.0},
}


def candidates(concept: str, exemplar: tuple[str, str], track: str) -> dict[str, list[str] | None]:
    """Candidate concepts (words; None = the trainer's starting vector) for one track."""
    shape, colour = exemplar
    left_out = {"no-colour": colour, "full": None, "no-words": f"{colour} {shape}"}.get(track, shape)
    out: dict[str, list[str] | None] = {"true": concept.split(), "start": None}
    if left_out:
        out["true+left-out"] = left_out.split() + concept.split()
        out["left-out"] = left_out.split()
    return out


def score(model, cfg, images, masks, words, batches: int, cache: Path) -> dict[str, float]:
    """Every loss term of ``cfg`` with the concept slot set to ``words`` (their token embeddings;
    None: the trainer's starting vector), averaged over ``batches`` fixed batches."""
    import torch

    from lego_studio.core.data import build_exemplars
    from lego_studio.core.prompts import word_token_ids
    from lego_studio.core.training import Trainer

    n = len([i for w in words for i in word_token_ids(model.tokenizer, w)]) if words else 1
    cfg = type(cfg).from_dict({**cfg.to_dict(), "num_vectors": n, "init_words": list(words or [])})
    with tempfile.TemporaryDirectory(prefix="lego-oracle-") as tmp:
        trainer = Trainer(model, cfg, images, masks, Path(tmp))
        resolution = int(cfg.resolution or model.family.resolution)
        trainer.prepare(build_exemplars(model, images, masks, resolution, cache), start_vectors="run")
        totals: dict[str, float] = {}
        with torch.no_grad():
            for k in range(batches):
                terms = trainer.step_losses(torch.Generator().manual_seed(10_000 + k))
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + float(value) / batches
    return totals


def main(argv=None) -> int:
    p = bm.tuning_parser(__doc__.splitlines()[0])
    p.add_argument("--tracks", nargs="+", default=["no-colour", "no-shape"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--batches", type=int, default=24, help="fixed batches each candidate is scored on")

    args, concepts, config, model, out = bm.tuning_setup(p, argv)
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lego-oracle-cache-") as cache_root:
        for concept in concepts:
            exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
            cache = Path(cache_root) / bm._slug(concept)
            for track in args.tracks:
                for variant in args.variants:
                    spec = bm.MethodSpec(variant, "lego", VARIANTS[variant], True, variant)
                    cfg = bm.train_config(spec, exemplar, evaluation, bm.DEFAULT_STEPS, 0, track=track)
                    for label, words in candidates(concept, exemplar, track).items():
                        terms = score(model, cfg, images, masks, words, args.batches, cache)
                        row = {"concept": concept, "track": track, "variant": variant, "candidate": label,
                               "words": " ".join(words or []), **{k: round(v, 6) for k, v in terms.items()}}
                        rows.append(row)
                        with open(out / "landscape.jsonl", "a", encoding="utf-8") as fh:
                            fh.write(json.dumps(row) + "\n")
                        print(f"{concept:16s} {track:10s} {variant:12s} {label:14s} "
                              + " ".join(f"{k} {v:.5f}" for k, v in terms.items()), flush=True)
    (out / "landscape.md").write_text(report(rows, time.time() - started), encoding="utf-8")
    print(f"wrote {out / 'landscape.md'}")
    return 0


def report(rows: list[dict], seconds: float) -> str:
    lines = ["# Oracle landscape", "",
             f"Loss terms at candidate concepts (token embeddings of known words), {seconds / 60:.1f} min. "
             "`total` is the loss at the variant's own weights; the **bold** candidate is the variant's minimum. "
             "A loss can only be trained to the true words if `true` is its minimum.", ""]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["concept"], row["track"], row["variant"]), []).append(row)
    lines += ["| concept | track | variant | " + " | ".join(["true", "true+left-out", "left-out", "start"]) + " | minimum |",
              "|---|---|---|---|---|---|---|---|"]
    for (concept, track, variant), group in groups.items():
        by = {r["candidate"]: r for r in group}
        best = min(group, key=lambda r: r["total"])["candidate"]
        cells = []
        for name in ("true", "true+left-out", "left-out", "start"):
            r = by.get(name)
            text = "—" if r is None else f"{r['total']:.5f} (rec {r.get('rec', 0):.5f}, ctx {r.get('ctx', 0):.5f})"
            cells.append(f"**{text}**" if name == best else text)
        lines.append(f"| {concept} | {track} | {variant} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
