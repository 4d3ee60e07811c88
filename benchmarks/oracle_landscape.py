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

``--context-forms`` scores context-loss forms the trainer does not have instead, into
``prior_landscape.jsonl`` (docs/METHOD.md, "The context loss at the other subjects' own pictures").
The default context loss compares the concept's effect on another subject R with its effect on the
exemplar S *at the exemplar's noisy latent*; there a left-out colour ("blue" for a blue circle)
changes little on either prompt. At R's own picture (drawn by the frozen model from R's words, no
concept) the same leak turns a red square blue. Terms, on the same fixed batches for every candidate:

- rec:       MSE(U(z_S, "S C"), noise)
- ctx:       MSE(U(z_S, "R C") - U(z_S, "R"), delta_S)     (the default L_ctx, at the exemplar's latent)
- ctx_prior: MSE(U(z_R, "R C") - U(z_R, "R"), delta_S)     (at R's own picture, same t and noise)
- cos, cos_prior: 1 - cosine of the same two effects (a scale-invariant form no zero effect meets)
- cos_out:   cos outside the exemplar's subject mask only

with delta_S = U(z_S, "S C") - U(z_S, "S").
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402

# Fixed batches every candidate is scored on (seeds 10_000 + k: the same batches in every call).
DEFAULT_BATCHES = 24

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


def score(model, cfg, images, masks, words, batches: int, cache: Path, vectors=None) -> dict[str, float]:
    """Every loss term of ``cfg`` with the concept slot set to ``words`` (their token embeddings;
    None: the trainer's starting vector) or to ``vectors`` (a trained concept's, words ignored),
    averaged over ``batches`` fixed batches (the same for every call)."""
    import torch

    from lego_studio.core.data import build_exemplars
    from lego_studio.core.prompts import word_token_ids
    from lego_studio.core.training import Trainer

    if vectors is not None:
        n, words = int(vectors.shape[0]), None
    else:
        n = len([i for w in words for i in word_token_ids(model.tokenizer, w)]) if words else 1
    cfg = type(cfg).from_dict({**cfg.to_dict(), "num_vectors": n, "init_words": list(words or [])})
    with tempfile.TemporaryDirectory(prefix="lego-oracle-") as tmp:
        trainer = Trainer(model, cfg, images, masks, Path(tmp))
        resolution = int(cfg.resolution or model.family.resolution)
        trainer.prepare(build_exemplars(model, images, masks, resolution, cache), start_vectors="run")
        totals: dict[str, float] = {}
        with torch.no_grad():
            if vectors is not None:
                trainer.concept_vectors.copy_(vectors)
            for k in range(batches):
                terms = trainer.step_losses(torch.Generator().manual_seed(10_000 + k))
                for name, value in terms.items():
                    totals[name] = totals.get(name, 0.0) + float(value) / batches
    return totals


def prior_latents(model, subjects, config, cache):
    """One picture per context subject drawn by the frozen model (no concept), as latents."""
    from lego_studio.core.data import build_exemplars
    from lego_studio.shapeworld import benchmark_runner as br

    made = br.generate_images(model, None, list(subjects), [0] * len(subjects), config.gen_steps, config.guidance)
    return build_exemplars(model, [im for _, im in made], None, int(model.family.resolution), cache).latents[:, 0]


def score_context_forms(model, cfg, images, masks, words, priors, batches, cache, b=4):
    """The context-loss forms of ``--context-forms`` (module docstring) with the concept slot set to
    ``words``, averaged over ``batches`` fixed batches of ``b``."""
    import torch

    from lego_studio.core.data import build_exemplars
    from lego_studio.core.prompts import fill_template, word_token_ids
    from lego_studio.core.training import Trainer

    n = len([i for w in words for i in word_token_ids(model.tokenizer, w)]) if words else 1
    cfg = type(cfg).from_dict({**cfg.to_dict(), "num_vectors": n, "init_words": list(words or []), "batch_size": b})
    sums = {"rec": 0.0, "ctx": 0.0, "ctx_prior": 0.0, "cos": 0.0, "cos_prior": 0.0, "cos_out": 0.0}
    with tempfile.TemporaryDirectory(prefix="lego-prior-") as tmp, torch.no_grad():
        trainer = Trainer(model, cfg, images, masks, Path(tmp))
        trainer.prepare(build_exemplars(model, images, masks, int(cfg.resolution or model.family.resolution), cache),
                        start_vectors="run")
        scheduler = model.noise_scheduler
        for k in range(batches):
            g = torch.Generator().manual_seed(10_000 + k)
            z_t, t, target, mask, _, _ = trainer._noisy_batch(trainer.exemplars, g)
            picks = torch.randint(len(cfg.templates), (b,), generator=g).tolist()
            chosen = torch.randint(len(cfg.context_subjects), (b,), generator=g).tolist()
            noise = target  # epsilon prediction: the target is the noise
            z_r = scheduler.add_noise(priors[chosen], noise, t)
            tps = [cfg.templates[i] for i in picks]
            others = [cfg.context_subjects[i] for i in chosen]
            subject, concept = trainer._subject_phrase(), trainer._concept_slots()
            enc = trainer.encode
            sc = trainer._unet(z_t, t, enc([fill_template(tp, subject + concept) for tp in tps], grad=False), 1)
            s = trainer._unet(z_t, t, enc([fill_template(tp, subject) for tp in tps], grad=False), 1)
            rc_cond = enc([fill_template(tp, [o] + concept) for tp, o in zip(tps, others)], grad=False)
            r_cond = enc([fill_template(tp, [o]) for tp, o in zip(tps, others)], grad=False)
            rc, r = trainer._unet(z_t, t, rc_cond, 1), trainer._unet(z_t, t, r_cond, 1)
            rc_p, r_p = trainer._unet(z_r, t, rc_cond, 1), trainer._unet(z_r, t, r_cond, 1)
            delta_s = sc - s
            sums["rec"] += float(((sc - target) ** 2).mean()) / batches
            sums["ctx"] += float(((rc - r - delta_s) ** 2).mean()) / batches
            sums["ctx_prior"] += float(((rc_p - r_p - delta_s) ** 2).mean()) / batches
            cos = torch.nn.functional.cosine_similarity
            sums["cos"] += float((1 - cos((rc - r).flatten(1), delta_s.flatten(1))).mean()) / batches
            sums["cos_prior"] += float((1 - cos((rc_p - r_p).flatten(1), delta_s.flatten(1))).mean()) / batches
            out = 1.0 - mask  # outside the exemplar's subject mask
            sums["cos_out"] += float((1 - cos(((rc - r) * out).flatten(1), (delta_s * out).flatten(1))).mean()) / batches
    return sums


def main(argv=None) -> int:
    p = bm.tuning_parser(__doc__.splitlines()[0])
    p.add_argument("--tracks", nargs="+", default=["no-colour", "no-shape"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--batches", type=int, default=DEFAULT_BATCHES, help="fixed batches each candidate is scored on")
    p.add_argument("--context-forms", action="store_true",
                   help="score the context-loss forms of the module docstring instead of the variants")

    args, concepts, config, model, out = bm.tuning_setup(p, argv)
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lego-oracle-cache-") as cache_root:
        for concept in concepts:
            exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
            cache = Path(cache_root) / bm._slug(concept)
            for track in args.tracks:
                if args.context_forms:
                    context_forms(model, config, concept, exemplar, evaluation, images, masks, track, args.batches,
                                  Path(cache_root), out)
                    continue
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
    if args.context_forms:
        return 0
    (out / "landscape.md").write_text(report(rows, time.time() - started), encoding="utf-8")
    print(f"wrote {out / 'landscape.md'}")
    return 0


def context_forms(model, config, concept, exemplar, evaluation, images, masks, track, batches, root, out):
    """Score :func:`score_context_forms` at every candidate of one concept and track."""
    spec = bm.MethodSpec("lego", "lego", {}, True, "lego")
    cfg = bm.train_config(spec, exemplar, evaluation, bm.DEFAULT_STEPS, 0, track=track)
    priors = prior_latents(model, cfg.context_subjects, config, root / "priors")
    for label, words in candidates(concept, exemplar, track).items():
        terms = score_context_forms(model, cfg, images, masks, words, priors, batches, root / bm._slug(concept))
        row = {"concept": concept, "track": track, "candidate": label, "words": " ".join(words or []),
               **{k: round(v, 6) for k, v in terms.items()}}
        with open(out / "prior_landscape.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        print(f"{concept:16s} {track:10s} {label:14s} " + " ".join(f"{k} {v:.5f}" for k, v in terms.items()), flush=True)


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
