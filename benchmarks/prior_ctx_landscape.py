"""Oracle landscape of a context loss measured on the other subjects' own pictures (no training).

    python benchmarks/prior_ctx_landscape.py --concepts tuning --tracks no-colour no-shape --out /tmp/prior

The default context loss compares the concept's effect on another subject R with its effect on the
exemplar S *at the exemplar's noisy latent*. There, a left-out colour ("blue" for a blue circle)
changes little on either prompt, so the leak costs the term little. Measured instead at R's own
picture (drawn by the frozen model from R's words, no concept), the same leak turns a red square
blue: a large effect the exemplar's side does not have. This scores, at the oracle candidates of
benchmarks/oracle_landscape.py (true words, true + left-out, left-out, start vector), the terms

- rec:       MSE(U(z_S, "S C"), noise)
- ctx:       MSE(U(z_S, "R C") - U(z_S, "R"), delta_S)     (the default L_ctx, at the exemplar's latent)
- ctx_prior: MSE(U(z_R, "R C") - U(z_R, "R"), delta_S)     (at R's own picture, same t and noise)
- cos, cos_prior: 1 - cosine of the same two effects (a scale-invariant form no zero effect meets)
- cos_out: cos outside the exemplar's subject mask only

with delta_S = U(z_S, "S C") - U(z_S, "S"), all on the same fixed batches for every candidate.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lego_studio.shapeworld import benchmark as bm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle_landscape import candidates  # noqa: E402


def prior_latents(model, subjects, config, cache):
    """One picture per context subject drawn by the frozen model (no concept), as latents."""
    from lego_studio.core.data import build_exemplars
    from lego_studio.shapeworld import benchmark_runner as br

    made = br.generate_images(model, None, list(subjects), [0] * len(subjects), config.gen_steps, config.guidance)
    return build_exemplars(model, [im for _, im in made], None, int(model.family.resolution), cache).latents[:, 0]


def score(model, cfg, images, masks, words, priors, batches, cache, b=4):
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
    p.add_argument("--batches", type=int, default=16)
    args, concepts, config, model, out = bm.tuning_setup(p, argv)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lego-prior-cache-") as root:
        for concept in concepts:
            exemplar, evaluation, images, masks = bm.concept_inputs(concept, config)
            cache = Path(root) / bm._slug(concept)
            for track in args.tracks:
                spec = bm.MethodSpec("lego", "lego", {}, True, "lego")
                cfg = bm.train_config(spec, exemplar, evaluation, bm.DEFAULT_STEPS, 0, track=track)
                priors = prior_latents(model, cfg.context_subjects, config, Path(root) / "priors")
                for label, words in candidates(concept, exemplar, track).items():
                    terms = score(model, cfg, images, masks, words, priors, args.batches, cache)
                    row = {"concept": concept, "track": track, "candidate": label, "words": " ".join(words or []),
                           **{k: round(v, 6) for k, v in terms.items()}}
                    with open(out / "prior_landscape.jsonl", "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"{concept:16s} {track:10s} {label:14s} " + " ".join(f"{k} {v:.5f}" for k, v in terms.items()),
                          flush=True)
    print(f"{(time.time() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
